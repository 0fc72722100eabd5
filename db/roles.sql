-- Least-privilege roles for Herald's two functions. Run it as the owner of Herald's tables,
-- after the migrations (again after each new migration; it is idempotent):
--   psql "$DATABASE_URL" -f db/roles.sql
-- then give each role a password and put it in that function's secret:
--   ALTER ROLE herald_scheduler PASSWORD '...';  ALTER ROLE herald_executor PASSWORD '...';
-- and let the executor read the relations your automations use for template variables,
-- and change the columns their update_field steps set, and use the schemas they live in
-- (herald_attach warns when it cannot):
--   GRANT USAGE ON SCHEMA club TO herald_executor;
--   GRANT SELECT ON public.job_context TO herald_executor;
--   GRANT SELECT (id), UPDATE (status) ON public.jobs TO herald_executor;

DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['herald_scheduler', 'herald_executor'] LOOP
    BEGIN
      EXECUTE format('CREATE ROLE %I LOGIN', r);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;  -- it exists (roles belong to the cluster: another database may have made it)
    END;
  END LOOP;
END
$$;

-- The scheduler: claims due logs, hands out leases, rescues expired ones. It sees no row
-- snapshots, template variables, recipients or definitions, and changes none of them.
GRANT SELECT (id, status, run_at, lease_token, lease_expires_at) ON automation_execution_logs TO herald_scheduler;
GRANT UPDATE (status, queued_at, updated_at, lease_token, lease_expires_at) ON automation_execution_logs TO herald_scheduler;
GRANT USAGE ON SEQUENCE herald_lease_tokens TO herald_scheduler;
GRANT EXECUTE ON FUNCTION herald_rescue(timestamptz) TO herald_scheduler;
GRANT EXECUTE ON FUNCTION herald_ingest_counted(integer) TO herald_scheduler;
GRANT EXECUTE ON FUNCTION herald_fire_dates(timestamptz) TO herald_scheduler;
GRANT EXECUTE ON FUNCTION herald_due_schedules() TO herald_scheduler;
GRANT EXECUTE ON FUNCTION herald_fire_schedule(bigint, timestamptz, timestamptz, timestamptz[], timestamptz[],
                                               timestamptz[], timestamptz) TO herald_scheduler;
-- Receipts are applied by a function of the owner's: the scheduler still reads no step runs
-- or definitions.
GRANT EXECUTE ON FUNCTION herald_apply_step_receipts(jsonb, timestamptz) TO herald_scheduler;

-- The executor: claims its logs, reads their definitions and template variables, records
-- their steps, writes the result. It cannot change definitions, and it does not
-- read the trigger's row snapshots (it reads fresh data through the context relations).
GRANT SELECT (id, automation_id, subject_schema, subject_table, subject_key_column, subject_id,
              event, old_status, new_status, status, attempts, run_at, lease_token)
  ON automation_execution_logs TO herald_executor;
GRANT UPDATE (status, attempts, started_at, completed_at, updated_at, run_at, lease_token,
              lease_expires_at, error, error_kind, error_code)
  ON automation_execution_logs TO herald_executor;
GRANT SELECT ON automations TO herald_executor;
GRANT USAGE ON SEQUENCE herald_lease_tokens TO herald_executor;

-- Workflow instances. The scheduler learns only whether a log is an instance (to tell the
-- executor); the executor loads the version an instance runs, keeps its place and records
-- its steps.
GRANT SELECT (version, automation_id, attempts) ON automation_execution_logs TO herald_scheduler;
GRANT SELECT (id, version) ON automations TO herald_scheduler;
GRANT SELECT (version, next_step, step_attempt, steps_run, outputs, started_at, parked_lease) ON automation_execution_logs
  TO herald_executor;
GRANT UPDATE (version, next_step, step_attempt, steps_run, outputs, exit_reason, parked_lease) ON automation_execution_logs
  TO herald_executor;
GRANT SELECT ON automation_versions TO herald_executor;
GRANT SELECT, INSERT, UPDATE ON automation_step_runs TO herald_executor;
GRANT USAGE ON SEQUENCE automation_step_runs_id_seq TO herald_executor;
GRANT EXECUTE ON FUNCTION herald_flow_start(bigint[], bigint[], timestamptz, timestamptz) TO herald_executor;
GRANT EXECUTE ON FUNCTION herald_flow_write(jsonb, timestamptz) TO herald_executor;

-- Holds: the executor reads whether an instance is paused or to be cancelled at each step,
-- and parks it so; it reads an instance's cascade depth and a manual start's payload.
GRANT SELECT (hold, held_from, cascade_depth, payload) ON automation_execution_logs TO herald_executor;
GRANT UPDATE (hold, held_from) ON automation_execution_logs TO herald_executor;

-- Steps that change this database: labels and tasks are Herald's own; update_field needs
-- UPDATE on what it sets, granted by you (`GRANT UPDATE (status) ON public.jobs TO
-- herald_executor`). A change it makes is captured like any other, as the executor, so the
-- executor may append to the inbox.
GRANT SELECT, INSERT, DELETE ON herald_labels TO herald_executor;
GRANT SELECT, INSERT ON herald_tasks TO herald_executor;
GRANT INSERT ON herald_inbox TO herald_executor;
DO $$
BEGIN
  EXECUTE format('GRANT USAGE ON SEQUENCE %s TO herald_executor',
                 pg_get_serial_sequence('automation_execution_logs', 'id'));
END
$$;
