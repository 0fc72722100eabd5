-- Schema 14: what a workflow step does when its effect fails transiently, or when its
-- outcome is unknown; and two plans of the flow runner's statements made cheaper.
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
  -- (LIMIT keeps the lookup a probe of the runs' key index for each instance, rather than a
  -- read of every run that a join would filter.)
  LEFT JOIN LATERAL (
    SELECT x.status, x.output, x.error, x.error_kind
    FROM automation_step_runs x
    WHERE x.log_id = c.id AND x.step_id = c.next_step AND x.attempt = c.step_attempt
      AND x.status IN ('started', 'done', 'failed')
      AND NOT EXISTS (SELECT 1 FROM automation_attempts t
                      WHERE t.log_id = x.log_id AND t.lease_token = x.lease_token AND t.outcome = 'parked')
    LIMIT 1
  ) r ON true
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

-- A step whose effect leaves this database (send_email, send_sms, notify_admin, webhook) may
-- say what a later invocation does when the effect started and how it ended was never
-- recorded: "on_unknown": "hold" (the instance waits as unknown for an operator; the default
-- for messages to people) or "resend" (the default for webhooks). herald_steps_problems
-- checks it; the rest of the function is as schema 8 wrote it.
CREATE OR REPLACE FUNCTION herald_steps_problems(p_steps jsonb, p_path text, p_depth integer, p_kinds jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  ids      jsonb := '[]';
  step     jsonb;
  i        integer := 0;
  path     text;
  kind     text;
  allowed  text[];
  k        text;
  inner_r  jsonb;
  arm      text;
  retry    jsonb;
BEGIN
  IF jsonb_typeof(p_steps) IS DISTINCT FROM 'array' THEN
    RETURN jsonb_build_object('problems', jsonb_build_array(jsonb_build_array(p_path, 'is a list of steps')), 'ids', '[]'::jsonb);
  END IF;
  FOR step IN SELECT value FROM jsonb_array_elements(p_steps) LOOP
    path := format('%s[%s]', p_path, i);
    i := i + 1;
    IF jsonb_typeof(step) <> 'object' THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path, 'a step is an object'));
      CONTINUE;
    END IF;
    IF jsonb_typeof(step -> 'id') = 'string' THEN
      IF (step ->> 'id') !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        problems := problems || jsonb_build_array(jsonb_build_array(path || '.id',
          format('`%s`: a step id is 1 to 64 letters, digits, - and _', step ->> 'id')));
      ELSE
        ids := ids || jsonb_build_array(jsonb_build_array(path || '.id', step ->> 'id'));
      END IF;
    ELSE
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.id', 'is required'));
    END IF;
    -- on_error
    IF step ? 'on_error' THEN
      IF step -> 'on_error' IN ('"stop"', '"continue"') THEN
        NULL;
      ELSIF jsonb_typeof(step #> '{on_error,retry}') = 'object' THEN
        retry := step #> '{on_error,retry}';
        IF jsonb_typeof(retry -> 'times') IS DISTINCT FROM 'number'
           OR (retry ->> 'times')::numeric NOT IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_error.retry.times', 'is a count from 1 to 10'));
        END IF;
        IF retry ? 'backoff' AND herald_span_problem(retry -> 'backoff', 'a backoff') IS NOT NULL THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_error.retry.backoff',
            herald_span_problem(retry -> 'backoff', 'a backoff')));
        END IF;
      ELSE
        problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_error',
          'is "stop", "continue" or {"retry": {"times": 3, "backoff": "1 minute"}}'));
      END IF;
    END IF;
    kind := step ->> 'type';
    allowed := CASE kind
      WHEN 'send_email' THEN ARRAY['from', 'to', 'subject', 'text', 'html', 'on_unknown']
      WHEN 'send_sms' THEN ARRAY['to', 'body', 'on_unknown']
      WHEN 'wait' THEN ARRAY['for', 'until']
      WHEN 'branch' THEN ARRAY['if', 'then', 'else']
      WHEN 'update_field' THEN ARRAY['table', 'key', 'set']
      WHEN 'add_tag' THEN ARRAY['tag'] WHEN 'remove_tag' THEN ARRAY['tag']
      WHEN 'add_to_segment' THEN ARRAY['segment'] WHEN 'remove_from_segment' THEN ARRAY['segment']
      WHEN 'webhook' THEN ARRAY['url', 'body', 'secret', 'timeout', 'on_unknown']
      WHEN 'create_task' THEN ARRAY['title', 'assignee', 'due', 'notes']
      WHEN 'notify_admin' THEN ARRAY['subject', 'text', 'on_unknown']
    END;
    IF kind IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.type', 'is required'));
      CONTINUE;
    ELSIF allowed IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.type', format(
        'unknown step type `%s`; expected one of send_email, send_sms, wait, branch, update_field, add_tag, '
        'remove_tag, add_to_segment, remove_from_segment, webhook, create_task, notify_admin', kind)));
      CONTINUE;
    END IF;
    FOR k IN SELECT key FROM jsonb_object_keys(step) key
             WHERE key <> ALL (allowed || ARRAY['id', 'type', 'on_error']) ORDER BY 1 LOOP
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.' || k,
        format('unknown key; expected %s', array_to_string(ARRAY['id', 'type', 'on_error'] || allowed, ', '))));
    END LOOP;
    IF step ? 'on_unknown' AND 'on_unknown' = ANY (allowed) AND step -> 'on_unknown' NOT IN ('"hold"', '"resend"') THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_unknown', 'is "hold" or "resend"'));
    END IF;
    CASE kind
      WHEN 'send_email' THEN
        problems := problems || herald_text_problem(step, 'to', path) || herald_text_problem(step, 'subject', path)
          || herald_text_problem(step, 'from', path, false) || herald_text_problem(step, 'text', path, false)
          || herald_text_problem(step, 'html', path, false);
        IF NOT (step ? 'text' OR step ? 'html') THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'an email has `text`, `html` or both'));
        END IF;
      WHEN 'send_sms' THEN
        problems := problems || herald_text_problem(step, 'to', path) || herald_text_problem(step, 'body', path);
      WHEN 'wait' THEN
        IF step ? 'for' AND step ? 'until' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'a wait has `for` or `until`, not both'));
        ELSIF step ? 'for' THEN
          IF herald_span_problem(step -> 'for', 'a wait''s `for`') IS NOT NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for', herald_span_problem(step -> 'for', 'a wait''s `for`')));
          ELSIF (step ->> 'for') ~ '^\s*-' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for', 'a wait cannot last a negative span'));
          END IF;
        ELSIF jsonb_typeof(step -> 'until') = 'object' THEN
          IF jsonb_typeof(step #> '{until,field}') IS DISTINCT FROM 'string' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.field', '`until` names the field that holds the time'));
          ELSIF p_kinds IS NOT NULL AND split_part(step #>> '{until,field}', '.', 1) NOT IN ('herald', 'steps', 'payload') THEN
            IF p_kinds ->> split_part(step #>> '{until,field}', '.', 1) IS NULL THEN
              problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.field',
                format('the data has no column `%s`', split_part(step #>> '{until,field}', '.', 1))));
            ELSIF position('.' IN step #>> '{until,field}') = 0
                  AND p_kinds ->> (step #>> '{until,field}') NOT IN ('time', 'text', 'other') THEN
              problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.field',
                format('`%s` holds %s, not a time', step #>> '{until,field}', p_kinds ->> (step #>> '{until,field}'))));
            END IF;
          END IF;
          IF step #> '{until}' ? 'offset' AND herald_span_problem(step #> '{until,offset}', 'an offset') IS NOT NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.offset', herald_span_problem(step #> '{until,offset}', 'an offset')));
          END IF;
          IF step #> '{until}' ? 'at' AND coalesce(step #>> '{until,at}', '') !~ '^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.at', '`at` is a local time of day such as "18:00"'));
          END IF;
          IF jsonb_typeof(step #> '{until,timezone}') = 'string'
             AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = step #>> '{until,timezone}') THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.timezone',
              format('`%s` is not a time zone name such as "Europe/London"', step #>> '{until,timezone}')));
          END IF;
        ELSIF step ? 'until' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.until', '`until` is an object with at least a field'));
        ELSE
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'a wait has `for` (a span) or `until` (a time from the data)'));
        END IF;
      WHEN 'branch' THEN
        IF p_depth + 1 > 8 THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'branches may nest at most 8 deep'));
          CONTINUE;
        END IF;
        IF step ? 'if' THEN
          problems := problems || herald_condition_problems(step -> 'if', path || '.if', 1, p_kinds);
        ELSE
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.if', 'is required: the condition that chooses `then`'));
        END IF;
        FOREACH arm IN ARRAY ARRAY['then', 'else'] LOOP
          IF step ? arm THEN
            inner_r := herald_steps_problems(step -> arm, path || '.' || arm, p_depth + 1, p_kinds);
            problems := problems || (inner_r -> 'problems');
            ids := ids || (inner_r -> 'ids');
          END IF;
        END LOOP;
      WHEN 'update_field' THEN
        IF jsonb_typeof(step -> 'set') IS DISTINCT FROM 'object' OR step -> 'set' = '{}' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.set', 'is an object of column → template, with at least one column'));
        END IF;
        IF step ? 'table' AND (jsonb_typeof(step -> 'table') <> 'string' OR herald_relation(step ->> 'table') IS NULL) THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.table', format('no table `%s`', step ->> 'table')));
        END IF;
      WHEN 'webhook' THEN
        problems := problems || herald_text_problem(step, 'url', path) || herald_text_problem(step, 'body', path)
          || herald_text_problem(step, 'secret', path);
        IF jsonb_typeof(step -> 'url') = 'string' AND (step ->> 'url') NOT LIKE 'https://%' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.url', 'a webhook is sent over https://'));
        END IF;
        IF step ? 'timeout' AND herald_span_problem(step -> 'timeout', 'a timeout') IS NOT NULL THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.timeout', herald_span_problem(step -> 'timeout', 'a timeout')));
        END IF;
      WHEN 'create_task' THEN
        problems := problems || herald_text_problem(step, 'title', path) || herald_text_problem(step, 'assignee', path, false)
          || herald_text_problem(step, 'notes', path, false);
        IF step ? 'due' AND (herald_span_problem(step -> 'due', 'a due time') IS NOT NULL OR (step ->> 'due') ~ '^\s*-') THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.due', 'is a span after the step runs, such as "2 days"'));
        END IF;
      WHEN 'notify_admin' THEN
        problems := problems || herald_text_problem(step, 'subject', path) || herald_text_problem(step, 'text', path);
      ELSE
        problems := problems || herald_text_problem(step, CASE WHEN kind LIKE '%tag' THEN 'tag' ELSE 'segment' END, path);
    END CASE;
  END LOOP;
  RETURN jsonb_build_object('problems', problems, 'ids', ids);
END
$$;

-- herald_flow_write as schema 10 wrote it, with two changes.
-- A write made again after its commit landed and its answer was lost is taken as it was:
-- its decisions are not recorded twice, the effects it started (or, for this database's
-- own, performed) answer as they did, and so do its parks. The executor writes how a step ended and
-- the next step's start together, and retries such a write as it retries any.
-- How a started effect's place is written: the instances whose run was recorded are found
-- in an array of their ids instead of by a join of two CTEs, which the planner, seeing
-- neither's size, made a nested loop over every pair (10,000 for a round of 100
-- instances). About a fifth off a round that starts 100 effects, in psql on the bench's
-- database.
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
  WHERE NOT EXISTS (SELECT 1 FROM automation_step_runs x
                    WHERE x.log_id = g.id AND x.started_at = p_now AND x.lease_token = g.lease_token
                      AND x.status = 'decided' AND x.step_id = d ->> 'step' AND x.step_type = d ->> 'kind');

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
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect)
    SELECT l.id, l.v ->> 'step', l.v ->> 'type', (l.v ->> 'attempt')::int, l.lease_token, 'started', p_now, l.v -> 'effect'
    FROM l
    WHERE l.held IS NULL
    ORDER BY l.id
    ON CONFLICT DO NOTHING
    RETURNING log_id
  ), again AS (
    -- Runs this same write recorded before (its commit landed, its answer was lost): taken.
    SELECT l.id AS log_id
    FROM l
    JOIN automation_step_runs x
      ON x.log_id = l.id AND x.step_id = l.v ->> 'step' AND x.attempt = (l.v ->> 'attempt')::int
     AND x.status = 'started' AND x.lease_token = l.lease_token AND x.started_at = p_now
    WHERE l.held IS NULL
  ), placed AS (
    -- The instance's place as the effect starts: where a later invocation resumes.
    UPDATE ONLY automation_execution_logs g
    SET next_step = l.v ->> 'next_step', step_attempt = (l.v ->> 'step_attempt')::int,
        steps_run = (l.v ->> 'steps_run')::int, outputs = l.v -> 'outputs', updated_at = p_now
    FROM l
    WHERE g.id = l.id AND l.held IS NULL
      AND l.id = ANY (ARRAY(SELECT log_id FROM runs UNION ALL SELECT log_id FROM again))
    RETURNING l.n
  )
  SELECT coalesce(jsonb_object_agg(s.n::text, CASE WHEN h.n IS NOT NULL THEN to_jsonb(h.held)
                                                   ELSE to_jsonb(p.n IS NOT NULL) END), '{}')
  INTO started
  FROM s
  LEFT JOIN stopped h ON h.n = s.n
  LEFT JOIN placed p ON p.n = s.n;

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
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect)
    VALUES (loc.id, entry ->> 'step', entry ->> 'type', (entry ->> 'attempt')::int, loc.lease_token, 'started', p_now, entry -> 'effect')
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
    UPDATE ONLY automation_execution_logs
    SET next_step = entry ->> 'next_step', step_attempt = (entry ->> 'step_attempt')::int,
        steps_run = (entry ->> 'steps_run')::int, outputs = entry -> 'outputs', updated_at = p_now
    WHERE id = loc.id;
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
        error = l.v ->> 'error', exit_reason = l.v ->> 'exit_reason',
        completed_at = CASE WHEN coalesce(l.held, l.want) IN ('completed', 'failed', 'exited', 'cancelled') THEN p_now END,
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
