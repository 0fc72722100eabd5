-- Schema 14: a workflow step whose effect fails transiently is tried again as a one-shot
-- log is.
--
-- herald_flow_start answers as in schema 9, with four more columns: the error kind of the
-- step run an instance resumes from (a failure recorded by an invocation that ended before
-- it decided what follows), and the automation's retries of transient failures
-- (max_attempts, and retry_base and retry_cap in seconds). The executor tries a step whose
-- effect failed transiently (a throttle, a 5xx, a timeout, a lost connection) again after
-- that backoff, up to max_attempts tries plus the retries the step's on_error adds, before
-- its on_error applies.
DROP FUNCTION herald_flow_start(bigint[], bigint[], timestamptz, timestamptz);
CREATE FUNCTION herald_flow_start(p_ids bigint[], p_leases bigint[], p_now timestamptz, p_until timestamptz)
RETURNS TABLE (lease bigint, attempt integer, status text, definition jsonb, next_step text, step_attempt integer,
               steps_run integer, outputs jsonb, context jsonb, run_status text, run_output jsonb, run_error text,
               event text, old_status text, new_status text, subject_table text, subject_id text, payload jsonb,
               run_error_kind text, max_attempts integer, retry_base_secs float8, retry_cap_secs float8)
LANGUAGE sql AS $$
  WITH msg AS (
    SELECT m.log_id, m.lease, m.ord, row_number() OVER (PARTITION BY m.log_id ORDER BY m.ord) AS nth
    FROM unnest(p_ids, p_leases) WITH ORDINALITY AS m(log_id, lease, ord)
  ), claimed AS (
    -- An instance takes its automation's current version at its first claim, and keeps it.
    UPDATE ONLY automation_execution_logs l
    SET status = 'running', attempts = l.attempts + 1, started_at = coalesce(l.started_at, p_now), updated_at = p_now,
        lease_token = (SELECT nextval('herald_lease_tokens')), lease_expires_at = p_until,
        version = coalesce(l.version, a.version),
        next_step = CASE WHEN l.version IS NULL THEN v.definition #>> '{steps,0,id}' ELSE l.next_step END
    FROM msg m, automations a
    LEFT JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
    WHERE m.nth = 1 AND l.id = m.log_id AND l.status = 'queued' AND l.lease_token = m.lease
      AND a.id = l.automation_id AND (l.version IS NOT NULL OR a.version IS NOT NULL)
    RETURNING l.id, l.attempts, l.lease_token, l.automation_id, l.version, l.next_step, l.step_attempt, l.steps_run, l.outputs,
              a.max_attempts, a.retry_base, a.retry_cap
  ), opened AS (
    INSERT INTO automation_attempts (log_id, attempt, lease_token, started_at)
    SELECT id, attempts, lease_token, p_now FROM claimed
  ), ctx AS (
    SELECT * FROM herald_contexts(ARRAY(SELECT id FROM claimed))
  )
  SELECT c.lease_token, c.attempts,
         CASE WHEN m.nth > 1 THEN 'claimed by another message of this batch' ELSE l.status END,
         v.definition, c.next_step, c.step_attempt, c.steps_run, c.outputs,
         -- A deleted row is gone: its instance's data is the row as it was deleted.
         CASE WHEN l.event = 'delete' THEN jsonb_build_object('context', l.payload) ELSE x.context END,
         r.status, r.output, r.error,
         l.event, l.old_status, l.new_status, format('%I.%I', l.subject_schema, l.subject_table), l.subject_id,
         CASE WHEN l.event = 'delete' THEN NULL ELSE l.payload END,
         r.error_kind, c.max_attempts, extract(epoch FROM c.retry_base)::float8, extract(epoch FROM c.retry_cap)::float8
  FROM msg m
  LEFT JOIN claimed c ON c.id = m.log_id AND m.nth = 1
  LEFT JOIN ctx x ON x.log_id = c.id
  LEFT JOIN ONLY automation_execution_logs l ON l.id = m.log_id
  LEFT JOIN automation_versions v ON v.automation_id = c.automation_id AND v.version = c.version
  -- The effect of the step the instance is at, if an earlier invocation started it and did
  -- not park the instance after it.
  LEFT JOIN automation_step_runs r
    ON r.log_id = c.id AND r.step_id = c.next_step AND r.attempt = c.step_attempt
   AND r.status IN ('started', 'done', 'failed')
   AND NOT EXISTS (SELECT 1 FROM automation_attempts t
                   WHERE t.log_id = r.log_id AND t.lease_token = r.lease_token AND t.outcome = 'parked')
  ORDER BY m.ord
$$;
-- The executor keeps its right to it (db/roles.sql grants it too).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'herald_executor') THEN
    GRANT EXECUTE ON FUNCTION herald_flow_start(bigint[], bigint[], timestamptz, timestamptz) TO herald_executor;
  END IF;
END
$$;
