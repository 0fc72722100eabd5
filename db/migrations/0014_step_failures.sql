-- Schema 14: what a workflow step does when its effect fails transiently, or when its
-- outcome is unknown.
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
