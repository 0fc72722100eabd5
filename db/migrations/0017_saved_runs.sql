-- Schema 17: what is saved runs, and no message fails another.
--
-- * herald_flow_start answers a message naming a log that does not exist as unknown, instead
--   of raising on the missing row's table name and failing every message of its batch.
-- * A definition is checked at save for what Herald's reader refuses: a trigger's keys
--   (`insert` takes `to`), waits longer than 400 days, templates whose delimiters or blocks
--   do not close, and a label step's other row (`table` and `key`). A status_change trigger
--   without `column` watches the column its table is attached with.
-- * One default for a send whose outcome is unknown: `hold`, as a step's. A row saved as a
--   document shows NULL in the column form's policies, which do not apply to it.
-- * herald_sends lists notify_admin's emails and SMS too, one row per admin.
-- * A step that failed in this database reads once ("step `set` failed: invalid input…"), and
--   its instance keeps the SQLSTATE in `error_code`.
-- * herald_attach warns when herald_executor lacks USAGE on the table's schema.
-- * add_tag, remove_tag, add_to_segment and remove_from_segment may label another row.

-- The status column a table is attached with.
CREATE FUNCTION herald_status_column(p_table regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT att.status_column FROM herald_attachments att
  JOIN pg_class c ON c.oid = p_table AND c.relname = att.table_name
  JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = att.table_schema
$$;

-- Whether a span (as a definition writes it) is longer than p_limit, counted from a fixed
-- instant on the UTC calendar as Herald's reader counts it. NULL for a form Postgres cannot
-- read.
CREATE FUNCTION herald_span_exceeds(p_span text, p_limit interval) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN timestamp '1970-01-01' + regexp_replace(p_span, '(\d)\s*mo(?![a-z])', '\1 mons', 'gi')::interval
         > timestamp '1970-01-01' + p_limit;
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END
$$;

-- Why a template cannot compile, as far as its delimiters and blocks show; NULL when they
-- close. (Herald's reader compiles it whole; this catches what is most often mistyped.)
CREATE FUNCTION herald_template_problem(p_source text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  rest    text := p_source;
  i       integer;
  j       integer;
  opener  text;
  closer  text;
  inner_t text;
  tag     text;
  open_b  text[] := '{}';
BEGIN
  LOOP
    i := (SELECT min(p) FROM unnest(ARRAY[strpos(rest, '{{'), strpos(rest, '{%'), strpos(rest, '{#')]) p WHERE p > 0);
    EXIT WHEN i IS NULL;
    opener := substr(rest, i, 2);
    closer := CASE opener WHEN '{{' THEN '}}' WHEN '{%' THEN '%}' ELSE '#}' END;
    rest := substr(rest, i + 2);
    j := strpos(rest, closer);
    IF j = 0 THEN
      RETURN format('the template does not compile: `%s` is never closed by `%s`', opener, closer);
    END IF;
    inner_t := substr(rest, 1, j - 1);
    rest := substr(rest, j + 2);
    CONTINUE WHEN opener <> '{%';
    tag := lower(substring(inner_t FROM '^[-+]?\s*([A-Za-z_]+)'));
    IF tag IS NULL THEN
      RETURN 'the template does not compile: `{%` names no tag';
    ELSIF tag = 'raw' THEN
      j := strpos(rest, 'endraw');
      IF j = 0 THEN
        RETURN 'the template does not compile: `{% raw %}` is never closed by `{% endraw %}`';
      END IF;
      rest := substr(rest, j);
      rest := substr(rest, strpos(rest, '%}') + 2);
    ELSIF tag IN ('if', 'for', 'macro', 'call', 'filter', 'with', 'autoescape', 'block')
          OR (tag = 'set' AND strpos(inner_t, '=') = 0) THEN
      open_b := open_b || tag;
    ELSIF tag LIKE 'end%' THEN
      IF cardinality(open_b) = 0 OR open_b[cardinality(open_b)] <> substr(tag, 4) THEN
        RETURN format('the template does not compile: `{%% %s %%}` closes no `{%% %s %%}`', tag, substr(tag, 4));
      END IF;
      open_b := open_b[1:cardinality(open_b) - 1];
    END IF;
  END LOOP;
  IF cardinality(open_b) > 0 THEN
    RETURN format('the template does not compile: `{%% %s %%}` is never closed by `{%% end%s %%}`',
                  open_b[cardinality(open_b)], open_b[cardinality(open_b)]);
  END IF;
  RETURN NULL;
END
$$;

-- herald_flow_start as schema 15 wrote it, but a message naming no log is answered as unknown.
CREATE OR REPLACE FUNCTION herald_flow_start(p_ids bigint[], p_leases bigint[], p_now timestamptz, p_until timestamptz)
RETURNS TABLE (lease bigint, attempt integer, status text, definition jsonb, next_step text, step_attempt integer,
               steps_run integer, outputs jsonb, context jsonb, run_status text, run_output jsonb, run_error text,
               event text, old_status text, new_status text, subject_table text, subject_id text, payload jsonb,
               run_error_kind text, max_attempts integer, retry_base_secs float8, retry_cap_secs float8,
               automation_id bigint, version integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
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
         CASE WHEN row_number() OVER (PARTITION BY c.automation_id, c.version ORDER BY m.ord) = 1 THEN v.definition END,
         CASE WHEN r.place IS NULL THEN c.next_step ELSE r.place ->> 'next_step' END,
         CASE WHEN r.place IS NULL THEN c.step_attempt ELSE (r.place ->> 'step_attempt')::int END,
         CASE WHEN r.place IS NULL THEN c.steps_run ELSE (r.place ->> 'steps_run')::int END,
         CASE WHEN r.place IS NULL THEN c.outputs ELSE r.place -> 'outputs' END,
         -- A deleted row is gone: its instance's data is the row as it was deleted.
         CASE WHEN l.event = 'delete' THEN jsonb_build_object('context', l.payload) ELSE x.context END,
         r.status, r.output, r.error,
         l.event, l.old_status, l.new_status,
         CASE WHEN l.id IS NOT NULL THEN format('%I.%I', l.subject_schema, l.subject_table) END, l.subject_id,
         CASE WHEN l.event = 'delete' THEN NULL ELSE l.payload END,
         r.error_kind, c.max_attempts, extract(epoch FROM c.retry_base)::float8, extract(epoch FROM c.retry_cap)::float8,
         c.automation_id, c.version
  FROM msg m
  LEFT JOIN claimed c ON c.id = m.log_id AND m.nth = 1
  LEFT JOIN ctx x ON x.log_id = c.id
  LEFT JOIN ONLY automation_execution_logs l ON l.id = m.log_id
  LEFT JOIN automation_versions v ON v.automation_id = c.automation_id AND v.version = c.version
  -- The last effect an earlier invocation started, if it did not park the instance after it
  -- (a park is the last write of an invocation, and records the place on the instance):
  -- the instance resumes at that effect's place. Lease tokens grow with every claim.
  -- (LIMIT, and the order of the runs' index by log, keep the lookup a probe of that index for
  -- each instance, rather than a walk back through every run.)
  LEFT JOIN LATERAL (
    SELECT x.status, x.output, x.error, x.error_kind, x.place
    FROM (SELECT * FROM automation_step_runs y
          WHERE y.log_id = c.id AND y.place IS NOT NULL
          ORDER BY y.log_id DESC, y.id DESC
          LIMIT 1) x
    WHERE NOT EXISTS (SELECT 1 FROM automation_attempts t
                      WHERE t.log_id = x.log_id AND t.outcome = 'parked' AND t.lease_token >= x.lease_token)
  ) r ON true
  ORDER BY m.ord;
END
$$;

-- herald_flow_write as schema 16 wrote it, but a step that fails in this database says its
-- error once, and an instance that fails keeps its step's SQLSTATE.
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
      answer := jsonb_build_object('error', msg, 'error_code', code,
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
        -- A failed instance's SQLSTATE: that of the step it failed at, in this invocation.
        error_code = CASE WHEN l.want IN ('failed', 'dead') THEN
                       (SELECT r.error_code FROM automation_step_runs r
                        WHERE r.log_id = g.id AND r.step_id = l.v ->> 'next_step' AND r.lease_token = l.token
                          AND r.status = 'failed'
                        ORDER BY r.id DESC LIMIT 1) END,
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

-- herald_definition_problems as schema 8 wrote it, but a trigger's keys are checked as Herald's
-- reader checks them, and a status_change trigger's column defaults to the attached one.
CREATE OR REPLACE FUNCTION herald_definition_problems(p_definition jsonb, p_data regclass DEFAULT NULL)
RETURNS TABLE (path text, message text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  trig     jsonb := p_definition -> 'trigger';
  rel      regclass;
  kinds    jsonb;
  tkinds   jsonb;
  k        text;
  steps_r  jsonb;
  item     jsonb;
  i        integer := 0;
  col      text;
  tkeys    text[];
  status_c text;
BEGIN
  IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object' THEN
    RETURN QUERY SELECT '(document)'::text, 'a definition is an object'::text;
    RETURN;
  END IF;
  FOR k IN SELECT key FROM jsonb_object_keys(p_definition) key
           WHERE key NOT IN ('trigger', 'conditions', 'exit', 'timezone', 'admins', 'steps') ORDER BY 1 LOOP
    problems := problems || jsonb_build_array(jsonb_build_array(k,
      'unknown key; expected trigger, conditions, exit, timezone, admins, steps'));
  END LOOP;
  -- The trigger, and the relation whose columns conditions and waits read.
  IF jsonb_typeof(trig) IS DISTINCT FROM 'object' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('trigger', 'is required: an object with a type'));
  END IF;
  -- A trigger's keys, as Herald's reader takes them.
  tkeys := CASE trig ->> 'type'
    WHEN 'status_change' THEN ARRAY['type', 'table', 'column', 'to', 'from']
    WHEN 'insert' THEN ARRAY['type', 'table', 'to']
    WHEN 'update' THEN ARRAY['type', 'table', 'columns']
    WHEN 'delete' THEN ARRAY['type', 'table']
    WHEN 'tag_added' THEN ARRAY['type', 'tag'] WHEN 'tag_removed' THEN ARRAY['type', 'tag']
    WHEN 'segment_joined' THEN ARRAY['type', 'segment'] WHEN 'segment_left' THEN ARRAY['type', 'segment']
    WHEN 'manual' THEN ARRAY['type'] END;
  IF tkeys IS NOT NULL THEN
    FOR k IN SELECT key FROM jsonb_object_keys(trig) key WHERE key <> ALL (tkeys) ORDER BY 1 LOOP
      problems := problems || jsonb_build_array(jsonb_build_array('trigger.' || k,
        format('unknown key; expected %s', array_to_string(tkeys, ', '))));
    END LOOP;
    FOREACH k IN ARRAY ARRAY['to', 'from', 'columns'] LOOP
      IF trig ? k AND k = ANY (tkeys) AND NOT (jsonb_typeof(trig -> k) = 'string'
         OR (jsonb_typeof(trig -> k) = 'array' AND NOT jsonb_path_exists(trig -> k, 'strict $[*] ? (@.type() != "string")'))) THEN
        problems := problems || jsonb_build_array(jsonb_build_array('trigger.' || k, 'is a list of text'));
      END IF;
    END LOOP;
  END IF;
  IF jsonb_typeof(trig) IS DISTINCT FROM 'object' THEN
    NULL;
  ELSIF trig ->> 'type' IN ('status_change', 'insert', 'update', 'delete') THEN
    IF jsonb_typeof(trig -> 'table') IS DISTINCT FROM 'string' THEN
      problems := problems || jsonb_build_array(jsonb_build_array('trigger.table', 'is required'));
    ELSE
      rel := herald_relation(trig ->> 'table');
      IF rel IS NULL THEN
        problems := problems || jsonb_build_array(jsonb_build_array('trigger.table', format('no table `%s`', trig ->> 'table')));
      ELSE
        tkinds := herald_column_kinds(rel);
      END IF;
    END IF;
    -- A status_change trigger without a column watches the column its table is attached with.
    status_c := coalesce(trig ->> 'column', herald_status_column(rel), 'status');
    IF tkinds IS NOT NULL AND trig ->> 'type' = 'status_change' AND NOT tkinds ? status_c THEN
      problems := problems || jsonb_build_array(jsonb_build_array('trigger.column',
        format('`%s` has no column `%s`', trig ->> 'table', status_c)));
    END IF;
    IF trig ->> 'type' = 'update' THEN
      IF jsonb_typeof(trig -> 'columns') IS DISTINCT FROM 'array' OR jsonb_array_length(trig -> 'columns') = 0 THEN
        problems := problems || jsonb_build_array(jsonb_build_array('trigger.columns', 'names the columns whose change starts a flow'));
      ELSIF tkinds IS NOT NULL THEN
        FOR col IN SELECT jsonb_array_elements_text(trig -> 'columns') LOOP
          IF NOT tkinds ? col THEN
            problems := problems || jsonb_build_array(jsonb_build_array('trigger.columns',
              format('`%s` has no column `%s`', trig ->> 'table', col)));
          END IF;
        END LOOP;
      END IF;
    END IF;
  ELSIF trig ->> 'type' IN ('tag_added', 'tag_removed', 'segment_joined', 'segment_left') THEN
    problems := problems || herald_text_problem(trig, CASE WHEN trig ->> 'type' LIKE 'tag%' THEN 'tag' ELSE 'segment' END, 'trigger');
  ELSIF trig ->> 'type' IS DISTINCT FROM 'manual' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('trigger.type', format(
      'unknown trigger type `%s`; expected one of status_change, insert, update, delete, tag_added, tag_removed, '
      'segment_joined, segment_left, manual', coalesce(trig ->> 'type', ''))));
  END IF;
  -- What conditions and waits read: the data's relation, else the trigger's table.
  kinds := CASE WHEN p_data IS NOT NULL THEN herald_column_kinds(p_data) ELSE tkinds END;
  IF p_definition ? 'conditions' THEN
    problems := problems || herald_condition_problems(p_definition -> 'conditions', 'conditions', 1, kinds);
  END IF;
  IF p_definition ? 'exit' THEN
    IF jsonb_typeof(p_definition -> 'exit') <> 'array' THEN
      problems := problems || jsonb_build_array(jsonb_build_array('exit', 'is a list of {if, reason}'));
    ELSE
      FOR item IN SELECT value FROM jsonb_array_elements(p_definition -> 'exit') LOOP
        IF NOT item ? 'if' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(format('exit[%s].if', i), 'is required: the condition that ends the flow'));
        ELSE
          problems := problems || herald_condition_problems(item -> 'if', format('exit[%s].if', i), 1, kinds);
        END IF;
        problems := problems || herald_text_problem(item, 'reason', format('exit[%s]', i));
        i := i + 1;
      END LOOP;
    END IF;
  END IF;
  IF p_definition ? 'timezone' AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_definition ->> 'timezone') THEN
    problems := problems || jsonb_build_array(jsonb_build_array('timezone',
      format('`%s` is not a time zone name such as "Europe/London"', p_definition ->> 'timezone')));
  END IF;
  IF NOT p_definition ? 'steps' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('steps', 'is required: a list of steps'));
  ELSE
    steps_r := herald_steps_problems(p_definition -> 'steps', 'steps', 0, kinds);
    problems := problems || (steps_r -> 'problems');
    IF jsonb_array_length(steps_r -> 'ids') > 200 THEN
      problems := problems || jsonb_build_array(jsonb_build_array('steps', 'a definition may have at most 200 steps'));
    END IF;
    -- Each id once: a repeat is reported where it repeats.
    problems := problems || coalesce((
      SELECT jsonb_agg(jsonb_build_array(e ->> 0, format('`%s` is the id of an earlier step; step ids are unique', e ->> 1)) ORDER BY n)
      FROM (SELECT e, n, row_number() OVER (PARTITION BY e ->> 1 ORDER BY n) AS seen
            FROM jsonb_array_elements(steps_r -> 'ids') WITH ORDINALITY AS x(e, n)) d
      WHERE seen > 1), '[]');
    IF jsonb_path_exists(p_definition -> 'steps', 'strict $.** ? (@.type == "notify_admin")')
       AND coalesce(jsonb_array_length(p_definition #> '{admins,emails}'), 0) + coalesce(jsonb_array_length(p_definition #> '{admins,phones}'), 0) = 0 THEN
      problems := problems || jsonb_build_array(jsonb_build_array('admins', 'notify_admin steps need admins.emails or admins.phones'));
    END IF;
  END IF;
  RETURN QUERY SELECT e ->> 0, e ->> 1 FROM jsonb_array_elements(problems) e;
END
$$;

-- herald_steps_problems as schema 14 wrote it, with the longest wait, templates' delimiters
-- and blocks, and a label step's other row.
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
  why      text;
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
      WHEN 'add_tag' THEN ARRAY['tag', 'table', 'key'] WHEN 'remove_tag' THEN ARRAY['tag', 'table', 'key']
      WHEN 'add_to_segment' THEN ARRAY['segment', 'table', 'key']
      WHEN 'remove_from_segment' THEN ARRAY['segment', 'table', 'key']
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
    -- Templates: at least their delimiters and blocks must close (Herald compiles them).
    FOR k IN SELECT unnest(CASE kind
               WHEN 'send_email' THEN ARRAY['from', 'to', 'subject', 'text', 'html']
               WHEN 'send_sms' THEN ARRAY['to', 'body']
               WHEN 'webhook' THEN ARRAY['url', 'body']
               WHEN 'create_task' THEN ARRAY['title', 'assignee', 'notes']
               WHEN 'notify_admin' THEN ARRAY['subject', 'text']
               WHEN 'add_tag' THEN ARRAY['key'] WHEN 'remove_tag' THEN ARRAY['key']
               WHEN 'add_to_segment' THEN ARRAY['key'] WHEN 'remove_from_segment' THEN ARRAY['key'] END) LOOP
      why := CASE WHEN jsonb_typeof(step -> k) = 'string' THEN herald_template_problem(step ->> k) END;
      IF why IS NOT NULL THEN
        problems := problems || jsonb_build_array(jsonb_build_array(path || '.' || k, why));
      END IF;
    END LOOP;
    IF kind = 'update_field' AND jsonb_typeof(step -> 'set') = 'object' THEN
      problems := problems || coalesce((
        SELECT jsonb_agg(jsonb_build_array(path || '.set.' || s.key, w.why) ORDER BY s.key)
        FROM jsonb_each(step -> 'set') s
        CROSS JOIN LATERAL (SELECT herald_template_problem(s.value #>> '{}') AS why) w
        WHERE jsonb_typeof(s.value) = 'string' AND w.why IS NOT NULL), '[]');
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
          ELSIF herald_span_exceeds(step ->> 'for', '400 days') THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for',
              format('`%s` is longer than the longest wait, 400 days', step ->> 'for')));
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
        -- Another row than the instance's subject: a table and its key, both or neither.
        IF step ? 'table' OR step ? 'key' THEN
          problems := problems || herald_text_problem(step, 'table', path) || herald_text_problem(step, 'key', path);
          IF jsonb_typeof(step -> 'table') = 'string' AND herald_relation(step ->> 'table') IS NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.table', format('no table `%s`', step ->> 'table')));
          ELSIF jsonb_typeof(step -> 'table') = 'string' AND herald_key_column(herald_relation(step ->> 'table')) IS NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.table', format(
              '`%s` has no key column to find its row by: attach it with herald_attach or give it a one-column primary key',
              step ->> 'table')));
          END IF;
        END IF;
    END CASE;
  END LOOP;
  RETURN jsonb_build_object('problems', problems, 'ids', ids);
END
$$;

-- herald_capture_problems as schema 9 wrote it, but a trigger without `column` watches the
-- attached one.
CREATE OR REPLACE FUNCTION herald_capture_problems(p_definition jsonb) RETURNS TABLE (path text, message text)
LANGUAGE sql STABLE AS $$
  SELECT 'trigger.column', format('%s is attached with status column `%s`', att.table_schema || '.' || att.table_name,
                                  att.status_column)
  FROM herald_attachments att
  JOIN pg_class c ON c.relname = att.table_name
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = att.table_schema
  WHERE p_definition #>> '{trigger,type}' = 'status_change'
    AND c.oid = herald_relation(p_definition #>> '{trigger,table}')
    AND att.status_column <> coalesce(p_definition #>> '{trigger,column}', att.status_column)
$$;

-- herald_save_automation as schema 16 wrote it, but the column form's unknown-outcome policies
-- are cleared with its templates.
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
      sms_to = NULL, sms_body = NULL, email_on_unknown = NULL, sms_on_unknown = NULL,
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

-- herald_attach as schema 12 wrote it, with a warning when the executor cannot use the
-- table's schema.
CREATE OR REPLACE FUNCTION herald_attach(tbl regclass, status_column text, key_column text DEFAULT 'id',
                              capture text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  col text;
  sch text;
  rel text;
BEGIN
  FOREACH col IN ARRAY ARRAY[status_column, key_column] LOOP
    PERFORM 1 FROM pg_attribute
    WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'herald_attach: % has no column "%"', tbl, col;
    END IF;
  END LOOP;
  IF capture IS NOT NULL AND capture NOT IN ('row', 'statement') THEN
    RAISE EXCEPTION 'herald_attach: capture is ''row'' or ''statement'', not %', quote_literal(capture)
      USING ERRCODE = '22023';
  END IF;
  -- Statement triggers on a partitioned table see only statements that name it, not those
  -- that change a partition directly; its row triggers are cloned onto every partition.
  IF capture = 'statement' AND (SELECT relkind FROM pg_class WHERE oid = tbl) = 'p' THEN
    RAISE EXCEPTION 'herald_attach: % is partitioned; capture it by row', tbl
      USING ERRCODE = '22023',
            DETAIL = 'By statement, a change made to a partition directly would not be captured.';
  END IF;
  SELECT n.nspname, c.relname INTO sch, rel
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
  INSERT INTO herald_attachments (table_schema, table_name, status_column, key_column, capture)
  VALUES (sch, rel, status_column, key_column, coalesce(capture, 'row'))
  ON CONFLICT (table_schema, table_name) DO UPDATE
    SET status_column = excluded.status_column, key_column = excluded.key_column,
        capture = coalesce(herald_attach.capture, herald_attachments.capture);
  PERFORM herald_compile(sch, rel);
  -- The executor reads the table (and its context relations) by name: it needs its schema.
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'herald_executor')
     AND NOT has_schema_privilege('herald_executor', sch, 'USAGE') THEN
    RAISE WARNING 'herald_attach: the role herald_executor has no USAGE on schema %', quote_ident(sch)
      USING HINT = format('GRANT USAGE ON SCHEMA %I TO herald_executor;', sch),
            DETAIL = 'Without it every instance of this table fails with "permission denied for schema".';
  END IF;
END
$$;

-- herald_perform_local as schema 9 wrote it, but a label step may name another row.
CREATE OR REPLACE FUNCTION herald_perform_local(p_type text, p_effect jsonb, p_log_id bigint, p_step text, p_schema text,
                                     p_table text, p_key_column text, p_subject text, p_now timestamptz)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  target  regclass;
  keycol  text;
  keytype text;
  cols    text;
  vals    text;
  n       bigint;
  made    bigint;
BEGIN
  -- A label step may name another row than the subject: a table and that row's key.
  IF p_type IN ('add_tag', 'remove_tag', 'add_to_segment', 'remove_from_segment') AND p_effect ? 'table' THEN
    target := herald_relation(p_effect ->> 'table');
    keycol := herald_key_column(target);
    IF target IS NULL OR keycol IS NULL THEN
      RAISE EXCEPTION 'no table % with a key column', p_effect ->> 'table' USING ERRCODE = '42P01';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
    FROM pg_attribute a WHERE a.attrelid = target AND a.attname = keycol AND a.attnum > 0 AND NOT a.attisdropped;
    -- The key as the table holds it, so that the label names the row as its triggers do.
    EXECUTE format('SELECT %I::text FROM %s WHERE %I = $1::%s LIMIT 1', keycol, target, keycol, keytype)
      INTO p_subject USING p_effect ->> 'key';
    IF p_subject IS NULL THEN
      RAISE EXCEPTION '% has no row whose % is %', target, quote_ident(keycol), quote_literal(p_effect ->> 'key')
        USING ERRCODE = 'P0002';
    END IF;
    SELECT ns.nspname, c.relname INTO p_schema, p_table
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE c.oid = target;
  END IF;
  CASE p_type
    WHEN 'update_field' THEN
      target := CASE WHEN p_effect ? 'table' AND p_effect ->> 'table' IS NOT NULL
                     THEN herald_relation(p_effect ->> 'table')
                     ELSE to_regclass(format('%I.%I', p_schema, p_table)) END;
      IF target IS NULL THEN
        RAISE EXCEPTION 'no table %', coalesce(p_effect ->> 'table', format('%I.%I', p_schema, p_table))
          USING ERRCODE = '42P01';
      END IF;
      keycol := coalesce(p_effect ->> 'key', p_key_column);
      SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
      FROM pg_attribute a WHERE a.attrelid = target AND a.attname = keycol AND a.attnum > 0 AND NOT a.attisdropped;
      IF keytype IS NULL THEN
        RAISE EXCEPTION '% has no column %', target, quote_ident(keycol) USING ERRCODE = '42703';
      END IF;
      SELECT string_agg(format('%I', k), ', ' ORDER BY k), string_agg(format('r.%I', k), ', ' ORDER BY k)
      INTO cols, vals FROM jsonb_object_keys(p_effect -> 'set') k;
      -- Values are bound, and read as their columns' types; identifiers are quoted.
      EXECUTE format('UPDATE %s t SET (%s) = (SELECT %s FROM jsonb_populate_record(NULL::%s, $1) r) WHERE t.%I = $2::%s',
                     target, cols, vals, target, keycol, keytype)
        USING p_effect -> 'set', p_subject;
      GET DIAGNOSTICS n = ROW_COUNT;
      RETURN jsonb_build_object('rows', n);
    WHEN 'add_tag', 'add_to_segment' THEN
      INSERT INTO herald_labels (subject_schema, subject_table, subject_id, kind, name, added_at, added_by)
      VALUES (p_schema, p_table, p_subject, p_effect ->> 'kind', p_effect ->> 'name', p_now, p_log_id)
      ON CONFLICT DO NOTHING;
      GET DIAGNOSTICS n = ROW_COUNT;
      RETURN jsonb_build_object('changed', n > 0);
    WHEN 'remove_tag', 'remove_from_segment' THEN
      DELETE FROM herald_labels
      WHERE subject_schema = p_schema AND subject_table = p_table AND subject_id = p_subject
        AND kind = p_effect ->> 'kind' AND name = p_effect ->> 'name';
      GET DIAGNOSTICS n = ROW_COUNT;
      RETURN jsonb_build_object('changed', n > 0);
    WHEN 'create_task' THEN
      INSERT INTO herald_tasks (subject_schema, subject_table, subject_id, title, assignee, notes, due_at, created_at,
                                log_id, step_id)
      VALUES (p_schema, p_table, p_subject, p_effect ->> 'title', p_effect ->> 'assignee', p_effect ->> 'notes',
              (p_effect ->> 'due')::timestamptz, p_now, p_log_id, p_step)
      RETURNING id INTO made;
      RETURN jsonb_build_object('task_id', made);
    ELSE
      RAISE EXCEPTION 'step type % is not performed in the database', quote_literal(p_type) USING ERRCODE = '22023';
  END CASE;
END
$$;

-- One default for a send whose outcome is unknown, as a step's: hold. The column form's
-- policies describe only the column form: a row saved as a document shows NULL.
ALTER TABLE automations ALTER COLUMN email_on_unknown SET DEFAULT 'hold',
                        ALTER COLUMN email_on_unknown DROP NOT NULL,
                        ALTER COLUMN sms_on_unknown DROP NOT NULL;
UPDATE automations SET email_on_unknown = NULL, sms_on_unknown = NULL
WHERE email_to IS NULL AND sms_to IS NULL;

-- Every email and SMS: one-shot deliveries, send steps, and each admin a notify_admin step
-- reached or tried.
CREATE OR REPLACE VIEW herald_sends AS
SELECT d.log_id, NULL::text AS step_id, NULL::integer AS attempt, d.channel, d.recipient, d.status,
       d.provider_message_id, d.error, d.started_at, d.completed_at
FROM automation_deliveries d
UNION ALL
SELECT r.log_id, r.step_id, r.attempt, CASE r.step_type WHEN 'send_email' THEN 'email' ELSE 'sms' END,
       r.effect ->> 'to',
       CASE r.status WHEN 'started' THEN 'sending' WHEN 'done' THEN 'sent' ELSE r.status END,
       r.output ->> 'message_id', r.error, r.started_at, r.finished_at
FROM automation_step_runs r
WHERE r.step_type IN ('send_email', 'send_sms') AND r.status <> 'decided'
UNION ALL
SELECT r.log_id, r.step_id, r.attempt, a.channel, a.recipient,
       CASE WHEN r.status = 'started' THEN 'sending'
            WHEN r.status = 'done' AND miss.error IS NULL THEN 'sent'
            WHEN r.status = 'done' THEN 'failed'
            ELSE r.status END,
       hit.message_id, coalesce(miss.error, CASE WHEN r.status <> 'done' THEN r.error END), r.started_at, r.finished_at
FROM automation_step_runs r
CROSS JOIN LATERAL (
  SELECT 'email' AS channel, e AS recipient FROM jsonb_array_elements_text(r.effect -> 'emails') e
  UNION ALL
  SELECT 'sms', p FROM jsonb_array_elements_text(r.effect -> 'phones') p
) a
LEFT JOIN LATERAL (SELECT s ->> 'message_id' AS message_id FROM jsonb_array_elements(r.output -> 'sent') s
                   WHERE s ->> 'to' = a.recipient LIMIT 1) hit ON true
LEFT JOIN LATERAL (SELECT s ->> 'error' AS error FROM jsonb_array_elements(r.output -> 'not_reached') s
                   WHERE s ->> 'to' = a.recipient LIMIT 1) miss ON true
WHERE r.step_type = 'notify_admin' AND r.status <> 'decided';
