-- Schema 16: every automation is a workflow definition. The email and SMS columns of
-- `automations` are now a shorthand for the common two-step definition: a `send_email` step
-- (`on_error: continue`, so an email that cannot go out does not stop the SMS) and a
-- `send_sms` step, each with the automation's policy for an unknown outcome. Writing the
-- columns saves that definition as the automation's next version, as herald_save_automation
-- does for a document of one's own; saving a document clears the columns, which no longer
-- describe the automation.
--
-- Logs a one-shot executor has already started (attempts > 0) keep running as one-shot
-- logs, so an email that went out before the upgrade is not sent again by the workflow:
-- the scheduler only hands an unversioned log to the flow runner while it has not been
-- tried (shared/sql/claim_due.sql). Logs not yet tried become instances of the new
-- definition at their first claim, as any pending event does.

-- The document the column form stands for. A table attached with a status column of its
-- own names it, as herald_save_automation requires of a status_change trigger.
CREATE FUNCTION herald_column_definition(a automations) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'trigger', jsonb_strip_nulls(jsonb_build_object(
      'type', a.trigger_event,
      'table', format('%I.%I', a.source_schema, a.source_table),
      'column', CASE WHEN a.trigger_event = 'status_change' THEN
                  (SELECT att.status_column FROM herald_attachments att
                   WHERE att.table_schema = a.source_schema AND att.table_name = a.source_table
                     AND att.status_column <> 'status') END,
      'from', a.from_status,
      'to', a.to_status)),
    'steps', coalesce(jsonb_agg(s.step ORDER BY s.ord) FILTER (WHERE s.step IS NOT NULL), '[]'::jsonb))
  FROM (VALUES
    (1, CASE WHEN a.email_to IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
          'id', 'email', 'type', 'send_email',
          'from', a.email_from, 'to', a.email_to, 'subject', a.email_subject,
          'text', a.email_text, 'html', a.email_html,
          'on_unknown', a.email_on_unknown,
          'on_error', CASE WHEN a.sms_to IS NOT NULL THEN 'continue' END)) END),
    (2, CASE WHEN a.sms_to IS NOT NULL THEN jsonb_build_object(
          'id', 'sms', 'type', 'send_sms', 'to', a.sms_to, 'body', a.sms_body,
          'on_unknown', a.sms_on_unknown) END)
  ) AS s(ord, step)
$$;

-- Saves an automation's column form as its next version, unless that version is the one it
-- runs already (an update of another column changes nothing).
CREATE FUNCTION herald_save_column_form() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  doc jsonb := herald_column_definition(NEW);
  v   integer;
BEGIN
  IF NEW.version IS NOT NULL AND doc = (SELECT definition FROM automation_versions
                                        WHERE automation_id = NEW.id AND version = NEW.version) THEN
    RETURN NULL;
  END IF;
  SELECT coalesce(max(version), 0) + 1 INTO v FROM automation_versions WHERE automation_id = NEW.id;
  INSERT INTO automation_versions (automation_id, version, definition, checksum)
  VALUES (NEW.id, v, doc, 'sha256:' || encode(sha256(convert_to(doc::text, 'UTF8')), 'hex'));
  UPDATE automations SET version = v WHERE id = NEW.id;
  RETURN NULL;
END
$$;

-- Row triggers fire before the statement triggers that recompile the capture functions, so
-- those read the new version.
CREATE TRIGGER herald_column_form_saved
  AFTER INSERT OR UPDATE OF email_from, email_to, email_subject, email_text, email_html, sms_to, sms_body,
                            email_on_unknown, sms_on_unknown, trigger_event, from_status, to_status,
                            source_schema, source_table
  ON automations FOR EACH ROW
  WHEN (NEW.email_to IS NOT NULL OR NEW.sms_to IS NOT NULL)
  EXECUTE FUNCTION herald_save_column_form();

-- An automation may be written without a channel, to be given its document by
-- herald_save_automation (its context relation and settings first, so that the save checks
-- the document against them). Until it has a definition it captures nothing.
ALTER TABLE automations DROP CONSTRAINT automations_has_a_channel;

-- herald_automations_capturing as schema 13 wrote it, but only for automations with a
-- definition (the column form's included).
CREATE OR REPLACE FUNCTION herald_automations_capturing(p_schema text, p_table text, p_op text)
RETURNS TABLE (id bigint, ev text, froms text[], tos text[], cols text[], conds jsonb)
LANGUAGE sql STABLE AS $$
  SELECT au.id, au.trigger_event,
         herald_trigger_list(v.definition #> '{trigger,from}'),
         herald_trigger_list(v.definition #> '{trigger,to}'),
         herald_trigger_list(v.definition #> '{trigger,columns}'),
         CASE WHEN au.context_relation IS NULL THEN v.definition -> 'conditions' END
  FROM automations au
  JOIN automation_versions v ON v.automation_id = au.id AND v.version = au.version
  WHERE au.is_active AND au.source_schema = p_schema AND au.source_table = p_table
    AND au.trigger_event = ANY (CASE p_op WHEN 'insert' THEN ARRAY['insert']
                                          WHEN 'update' THEN ARRAY['status_change', 'update']
                                          ELSE ARRAY['delete'] END)
  ORDER BY au.id
$$;

-- herald_save_automation as schema 9 wrote it, but for the column form: a document saved
-- clears it.
CREATE OR REPLACE FUNCTION herald_save_automation(p_name text, p_definition jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  mistakes text;
  n        integer;
  auto_id  bigint;
  v        integer;
  subject  regclass := herald_relation(p_definition #>> '{trigger,table}');
BEGIN
  SELECT string_agg(path || ': ' || message, E'\n'), count(*) INTO mistakes, n
  FROM (
    SELECT * FROM herald_definition_problems(p_definition,
                                             (SELECT to_regclass(context_relation) FROM automations WHERE name = p_name))
    UNION ALL
    SELECT * FROM herald_step_detail_problems(p_definition -> 'steps', 'steps', subject,
      (SELECT att.key_column FROM herald_attachments att
       JOIN pg_class c ON c.relname = att.table_name
       JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = att.table_schema
       WHERE c.oid = subject))
    UNION ALL
    SELECT * FROM herald_capture_problems(p_definition)
  ) p;
  IF n > 0 THEN
    RAISE EXCEPTION 'automation % refused: % mistake(s) in its definition', p_name, n
      USING ERRCODE = '22023', DETAIL = mistakes;
  END IF;
  SELECT id INTO auto_id FROM automations WHERE name = p_name FOR UPDATE;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'no automation named %', p_name USING ERRCODE = '22023';
  END IF;
  SELECT coalesce(max(version), 0) + 1 INTO v FROM automation_versions WHERE automation_id = auto_id;
  INSERT INTO automation_versions (automation_id, version, definition, checksum)
  VALUES (auto_id, v, p_definition, 'sha256:' || encode(sha256(convert_to(p_definition::text, 'UTF8')), 'hex'));
  -- Status-change and insert triggers are captured as the column form's are.
  UPDATE automations
  SET version = v, updated_at = now(),
      email_from = NULL, email_to = NULL, email_subject = NULL, email_text = NULL, email_html = NULL,
      sms_to = NULL, sms_body = NULL,
      source_schema = coalesce((SELECT ns.nspname FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                                WHERE c.oid = subject), source_schema),
      source_table = coalesce((SELECT c.relname FROM pg_class c WHERE c.oid = subject), source_table),
      trigger_event = p_definition #>> '{trigger,type}',
      to_status = CASE jsonb_typeof(p_definition #> '{trigger,to}')
                    WHEN 'string' THEN p_definition #>> '{trigger,to}'
                    WHEN 'array' THEN p_definition #>> '{trigger,to,0}' END,
      from_status = CASE jsonb_typeof(p_definition #> '{trigger,from}')
                      WHEN 'string' THEN p_definition #>> '{trigger,from}'
                      WHEN 'array' THEN p_definition #>> '{trigger,from,0}' END
  WHERE id = auto_id;
  -- What the capture listens to comes from the version's trigger (lists of statuses, columns).
  PERFORM herald_compile(source_schema, source_table) FROM automations WHERE id = auto_id;
  RETURN v;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_save_automation(text, jsonb) FROM PUBLIC;

-- Automations saved as documents before this schema kept the columns they were first
-- written with; they no longer describe them.
UPDATE automations
SET email_from = NULL, email_to = NULL, email_subject = NULL, email_text = NULL, email_html = NULL,
    sms_to = NULL, sms_body = NULL
WHERE version IS NOT NULL;

-- The column form's automations get their definitions (the trigger above saves them).
UPDATE automations SET email_to = email_to WHERE version IS NULL;

-- Every attached table's capture functions follow the definitions.
SELECT herald_compile(table_schema, table_name) FROM herald_attachments;

-- Every email and SMS Herald sent or tried, whether by a one-shot log (a delivery) or by a
-- workflow step (its run): whom it went to, how it ended and the provider's id. Status as
-- a delivery's: sending (its outcome not recorded), sent, failed or unknown.
CREATE VIEW herald_sends AS
SELECT d.log_id, NULL::text AS step_id, NULL::integer AS attempt, d.channel, d.recipient, d.status,
       d.provider_message_id, d.error, d.started_at, d.completed_at
FROM automation_deliveries d
UNION ALL
SELECT r.log_id, r.step_id, r.attempt, CASE r.step_type WHEN 'send_email' THEN 'email' ELSE 'sms' END,
       r.effect ->> 'to',
       CASE r.status WHEN 'started' THEN 'sending' WHEN 'done' THEN 'sent' ELSE r.status END,
       r.output ->> 'message_id', r.error, r.started_at, r.finished_at
FROM automation_step_runs r
WHERE r.step_type IN ('send_email', 'send_sms') AND r.status <> 'decided';

-- herald_flow_write as schema 15 wrote it, but for how an instance stops: a failed one records
-- its error kind (permanent), and a dead one (a step that failed transiently on every try it
-- had) ends as dead, with the kind transient, as a one-shot log does.
CREATE OR REPLACE FUNCTION herald_flow_write(p_write jsonb, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  entry   jsonb;
  k       bigint;
  loc     record;
  run_id  bigint;
  answer  jsonb;
  msg     text;
  code    text;
  ended   jsonb;
  started jsonb;
  parked  jsonb;
BEGIN
  -- Steps that ended: their started run is closed, or, for a step that failed before its
  -- effect could start, a failed run is recorded.
  WITH e AS (
    SELECT t.n, (t.v ->> 'log_id')::bigint AS log_id, (t.v ->> 'token')::bigint AS token, t.v ->> 'step' AS step,
           (t.v ->> 'attempt')::int AS attempt, t.v ? 'error' AS failed, t.v
    FROM jsonb_array_elements(p_write -> 'ended') WITH ORDINALITY AS t(v, n)
  ), hit AS (
    -- Each entry's run, found by its key (LIMIT keeps the lookup a probe of that index,
    -- whatever the statistics say of the runs' statuses).
    SELECT e.n, r.id, e.failed, e.v
    FROM e
    JOIN ONLY automation_execution_logs g ON g.id = e.log_id
    CROSS JOIN LATERAL (
      SELECT x.id FROM automation_step_runs x
      WHERE x.log_id = e.log_id AND x.step_id = e.step AND x.attempt = e.attempt
        AND ((x.status = 'started' AND g.status = 'running' AND g.lease_token = e.token)
             -- This same write, made before (its commit landed, its answer was lost).
             OR (x.finished_at = p_now AND x.lease_token = e.token
                 AND x.status = CASE WHEN e.failed THEN 'failed' ELSE 'done' END))
      LIMIT 1
    ) r
  ), closed AS (
    UPDATE automation_step_runs r
    SET status = CASE WHEN h.failed THEN 'failed' ELSE 'done' END, finished_at = p_now,
        output = h.v -> 'output', error = h.v ->> 'error', error_kind = h.v ->> 'error_kind',
        error_code = h.v ->> 'error_code'
    FROM hit h
    WHERE r.id = h.id
    RETURNING h.n
  ), early AS (
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at,
                                      error, error_kind, error_code)
    SELECT g.id, e.step, e.v ->> 'type', e.attempt, g.lease_token, 'failed', p_now, p_now,
           e.v ->> 'error', e.v ->> 'error_kind', e.v ->> 'error_code'
    FROM e
    JOIN ONLY automation_execution_logs g ON g.id = e.log_id AND g.status = 'running' AND g.lease_token = e.token
    WHERE e.failed AND NOT EXISTS (SELECT 1 FROM closed c WHERE c.n = e.n)
    ON CONFLICT DO NOTHING
    RETURNING log_id, step_id, attempt
  )
  SELECT coalesce(jsonb_agg(to_jsonb(c.n IS NOT NULL OR x.log_id IS NOT NULL) ORDER BY e.n), '[]')
  INTO ended
  FROM e
  LEFT JOIN closed c ON c.n = e.n
  LEFT JOIN early x ON x.log_id = e.log_id AND x.step_id = e.step AND x.attempt = e.attempt;

  INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at, output)
  SELECT g.id, d ->> 'step', d ->> 'kind', g.step_attempt, g.lease_token, 'decided', p_now, p_now, d -> 'detail'
  FROM jsonb_array_elements(p_write -> 'decided') d
  JOIN ONLY automation_execution_logs g
    ON g.id = (d ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (d ->> 'token')::bigint
  -- Not again when this same write was made before (its commit landed, its answer was lost).
  -- (A LATERAL with LIMIT is planned as a probe of the instance's runs: as a plain NOT EXISTS
  -- its plan, cached while the table was small, scanned every run of the step's id.)
  LEFT JOIN LATERAL (SELECT true AS made FROM automation_step_runs x
                     WHERE x.log_id = g.id AND x.started_at = p_now AND x.lease_token = g.lease_token
                       AND x.status = 'decided' AND x.step_id = d ->> 'step' AND x.step_type = d ->> 'kind'
                     LIMIT 1) z ON true
  WHERE z.made IS NULL;

  -- Effects about to start elsewhere. The row lock orders this write with a pause or cancel
  -- of the instance: a held instance parks at this step instead, and its effect never starts.
  WITH s AS (
    SELECT t.n, (t.v ->> 'log_id')::bigint AS log_id, (t.v ->> 'token')::bigint AS token, t.v
    FROM jsonb_array_elements(p_write -> 'started') WITH ORDINALITY AS t(v, n)
    WHERE NOT coalesce((t.v ->> 'local')::boolean, false)
  ), l AS (
    SELECT s.n, s.v, g.id, g.lease_token, herald_held_status('pending', g.hold, a.paused_at IS NOT NULL) AS held
    FROM s
    JOIN ONLY automation_execution_logs g ON g.id = s.log_id AND g.status = 'running' AND g.lease_token = s.token
    LEFT JOIN automations a ON a.id = g.automation_id
    ORDER BY g.id
    FOR UPDATE OF g
  ), stopped AS (
    UPDATE ONLY automation_execution_logs g
    SET status = l.held, held_from = CASE l.held WHEN 'paused' THEN 'pending' END,
        hold = CASE l.held WHEN 'paused' THEN g.hold END,
        next_step = l.v ->> 'next_step', step_attempt = (l.v ->> 'step_attempt')::int - 1,
        steps_run = (l.v ->> 'steps_run')::int - 1, outputs = l.v -> 'outputs', run_at = p_now,
        completed_at = CASE l.held WHEN 'cancelled' THEN p_now END,
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
    FROM l
    WHERE g.id = l.id AND l.held IS NOT NULL
    RETURNING l.n, l.held
  ), stopped_attempts AS (
    UPDATE automation_attempts t SET finished_at = p_now, outcome = 'parked'
    FROM l
    WHERE l.held IS NOT NULL AND t.log_id = l.id AND t.lease_token = l.lease_token AND t.finished_at IS NULL
  ), runs AS (
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect, place)
    SELECT l.id, l.v ->> 'step', l.v ->> 'type', (l.v ->> 'attempt')::int, l.lease_token, 'started', p_now, l.v -> 'effect',
           herald_place_of(l.v)
    FROM l
    WHERE l.held IS NULL
    ORDER BY l.id
    ON CONFLICT DO NOTHING
    RETURNING log_id
  ), again AS (
    -- Runs this same write recorded before (its commit landed, its answer was lost): taken.
    SELECT l.id AS log_id
    FROM l
    CROSS JOIN LATERAL (SELECT 1 FROM automation_step_runs x
                        WHERE x.log_id = l.id AND x.step_id = l.v ->> 'step' AND x.attempt = (l.v ->> 'attempt')::int
                          AND x.status = 'started' AND x.lease_token = l.lease_token AND x.started_at = p_now
                        LIMIT 1) x
    WHERE l.held IS NULL
  )
  SELECT coalesce(jsonb_object_agg(s.n::text, CASE WHEN h.n IS NOT NULL THEN to_jsonb(h.held)
                                                   ELSE to_jsonb(r.log_id IS NOT NULL) END), '{}')
  INTO started
  FROM s
  LEFT JOIN stopped h ON h.n = s.n
  LEFT JOIN (SELECT log_id FROM runs UNION SELECT log_id FROM again) r ON r.log_id = s.log_id;

  -- Effects performed here, one by one, each undone alone if it fails.
  FOR entry, k IN SELECT t.v, t.n FROM jsonb_array_elements(p_write -> 'started') WITH ORDINALITY AS t(v, n)
              WHERE coalesce((t.v ->> 'local')::boolean, false) LOOP
    SELECT g.id, g.lease_token, g.cascade_depth, g.subject_schema, g.subject_table, g.subject_key_column,
           g.subject_id, herald_held_status('pending', g.hold, a.paused_at IS NOT NULL) AS held
    INTO loc
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.id = (entry ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (entry ->> 'token')::bigint
    FOR UPDATE OF g;
    IF NOT FOUND THEN
      started := started || jsonb_build_object(k::text, false);
      CONTINUE;
    END IF;
    IF loc.held IS NOT NULL THEN
      UPDATE ONLY automation_execution_logs
      SET status = loc.held, held_from = CASE loc.held WHEN 'paused' THEN 'pending' END,
          hold = CASE loc.held WHEN 'paused' THEN hold END,
          next_step = entry ->> 'next_step', step_attempt = (entry ->> 'step_attempt')::int - 1,
          steps_run = (entry ->> 'steps_run')::int - 1, outputs = entry -> 'outputs', run_at = p_now,
          completed_at = CASE loc.held WHEN 'cancelled' THEN p_now END,
          updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
      WHERE id = loc.id;
      UPDATE automation_attempts SET finished_at = p_now, outcome = 'parked'
      WHERE log_id = loc.id AND lease_token = loc.lease_token AND finished_at IS NULL;
      started := started || jsonb_build_object(k::text, loc.held);
      CONTINUE;
    END IF;
    run_id := NULL;
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect, place)
    VALUES (loc.id, entry ->> 'step', entry ->> 'type', (entry ->> 'attempt')::int, loc.lease_token, 'started', p_now,
            entry -> 'effect', herald_place_of(entry))
    ON CONFLICT DO NOTHING
    RETURNING id INTO run_id;
    IF run_id IS NULL THEN
      -- Performed by this same write, made before: answered as it was then.
      SELECT CASE x.status WHEN 'done' THEN jsonb_build_object('output', x.output)
                           WHEN 'failed' THEN jsonb_build_object('error', x.error, 'error_kind', x.error_kind,
                                                                 'error_code', x.error_code) END
      INTO answer
      FROM automation_step_runs x
      WHERE x.log_id = loc.id AND x.step_id = entry ->> 'step' AND x.attempt = (entry ->> 'attempt')::int
        AND x.lease_token = loc.lease_token AND x.started_at = p_now;
      started := started || jsonb_build_object(k::text, coalesce(answer, 'false'));
      CONTINUE;
    END IF;
    BEGIN
      PERFORM set_config('herald.cascade_depth', (loc.cascade_depth + 1)::text, true),
              set_config('herald.caused_by', loc.id::text, true);
      answer := herald_perform_local(entry ->> 'type', entry -> 'effect', loc.id, entry ->> 'step', loc.subject_schema,
                                     loc.subject_table, loc.subject_key_column, loc.subject_id, p_now);
      UPDATE automation_step_runs SET status = 'done', finished_at = p_now, output = answer WHERE id = run_id;
      answer := jsonb_build_object('output', answer);
    EXCEPTION WHEN OTHERS THEN
      -- Undone with everything it changed; the step failed, and its instance's on_error decides.
      GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
      answer := jsonb_build_object('error', format('step `%s`: %s', entry ->> 'step', msg), 'error_code', code,
        'error_kind', CASE WHEN code IN ('40001', '40P01', '55P03', '57014') THEN 'transient' ELSE 'permanent' END);
      UPDATE automation_step_runs
      SET status = 'failed', finished_at = p_now, error = answer ->> 'error', error_kind = answer ->> 'error_kind',
          error_code = code
      WHERE id = run_id;
    END;
    PERFORM set_config('herald.cascade_depth', '', true), set_config('herald.caused_by', '', true);
    started := started || jsonb_build_object(k::text, answer);
  END LOOP;

  -- Instances that park: their place, status and wake-up time; a park as pending or waiting
  -- of a held instance becomes paused or cancelled.
  WITH p AS (
    SELECT t.n, (t.v ->> 'log_id')::bigint AS log_id, (t.v ->> 'token')::bigint AS token, t.v ->> 'status' AS want, t.v
    FROM jsonb_array_elements(p_write -> 'parked') WITH ORDINALITY AS t(v, n)
  ), l AS (
    SELECT p.n, p.v, p.want, p.token, g.id, herald_held_status(p.want, g.hold, a.paused_at IS NOT NULL) AS held
    FROM p
    JOIN ONLY automation_execution_logs g ON g.id = p.log_id AND g.status = 'running' AND g.lease_token = p.token
    LEFT JOIN automations a ON a.id = g.automation_id
    ORDER BY g.id
    FOR UPDATE OF g
  ), done AS (
    UPDATE ONLY automation_execution_logs g
    SET status = coalesce(l.held, l.want), held_from = CASE l.held WHEN 'paused' THEN l.want END,
        hold = CASE l.held WHEN 'paused' THEN g.hold END,
        next_step = l.v ->> 'next_step', step_attempt = (l.v ->> 'step_attempt')::int,
        steps_run = (l.v ->> 'steps_run')::int, outputs = l.v -> 'outputs',
        run_at = CASE WHEN l.want = 'pending' THEN p_now ELSE coalesce((l.v ->> 'run_at')::timestamptz, g.run_at) END,
        error = l.v ->> 'error', error_kind = l.v ->> 'error_kind', exit_reason = l.v ->> 'exit_reason',
        completed_at = CASE WHEN coalesce(l.held, l.want) IN ('completed', 'failed', 'dead', 'exited', 'cancelled')
                            THEN p_now END,
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
    FROM l
    WHERE g.id = l.id
    RETURNING l.n, l.held
  ), closed AS (
    UPDATE automation_attempts t SET finished_at = p_now, outcome = 'parked'
    FROM l
    WHERE t.log_id = l.id AND t.lease_token = l.token AND t.finished_at IS NULL
  )
  -- A park this same write made before (its commit landed, its answer was lost) closed the
  -- attempt of its lease at this write's time: taken.
  SELECT coalesce(jsonb_agg(CASE WHEN d.n IS NOT NULL THEN coalesce(to_jsonb(d.held), 'true')
                                 WHEN EXISTS (SELECT 1 FROM automation_attempts t
                                              WHERE t.log_id = p.log_id AND t.lease_token = p.token
                                                AND t.finished_at = p_now AND t.outcome = 'parked') THEN 'true'
                                 ELSE 'false' END
                            ORDER BY p.n), '[]')
  INTO parked
  FROM p
  LEFT JOIN done d ON d.n = p.n;

  RETURN jsonb_build_object(
    'ended', ended,
    'started', (SELECT coalesce(jsonb_agg(started -> i::text ORDER BY i), '[]')
                FROM generate_series(1, jsonb_array_length(coalesce(p_write -> 'started', '[]'))) i),
    'parked', parked);
END
$$;

-- herald_retry as schema 8 wrote it, but an instance's step runs again as the attempt after
-- its last, not one later: the step's next run counts its attempt on from the instance's.
CREATE OR REPLACE FUNCTION herald_retry(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE automation_step_runs r SET status = 'unknown', finished_at = herald_now()
  FROM ONLY automation_execution_logs l
  WHERE r.log_id = p_log_id AND r.status = 'started' AND l.id = r.log_id AND l.status IN ('dead', 'failed', 'unknown');
  UPDATE ONLY automation_execution_logs
  SET status = 'pending', run_at = herald_now(), updated_at = herald_now(), completed_at = NULL,
      lease_token = NULL, lease_expires_at = NULL
  WHERE id = p_log_id AND status IN ('dead', 'failed', 'unknown');
  RETURN FOUND;
END
$$;

-- The scheduler reads whether a log has been tried, to say which executor path takes it
-- (db/roles.sql grants it too).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'herald_scheduler') THEN
    GRANT SELECT (attempts) ON automation_execution_logs TO herald_scheduler;
  END IF;
END
$$;
