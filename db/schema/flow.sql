-- The flow runner's reads and writes: claiming a batch of instances with their data,
-- writing a round's step runs and places, and the steps whose effect is in this database.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- Herald's own statements below read and change the ledger only (ONLY), never the inbox.
-- A log's template variables: its context relation's row (or the subject row) whose key
-- equals the subject's, cast to the key column's own type so that column's index finds it.
CREATE OR REPLACE FUNCTION herald_context(p_log_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  l       record;
  rel     regclass;
  keycol  text;
  keytype text;
  hits    jsonb[];
BEGIN
  SELECT g.subject_schema, g.subject_table, g.subject_key_column, g.subject_id,
         a.context_relation, a.context_key_column
  INTO l
  FROM ONLY automation_execution_logs g
  LEFT JOIN automations a ON a.id = g.automation_id
  WHERE g.id = p_log_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no execution log %', p_log_id USING ERRCODE = 'no_data_found';
  END IF;

  IF l.context_relation IS NOT NULL THEN
    rel := to_regclass(l.context_relation);
    keycol := l.context_key_column;
    IF rel IS NULL THEN
      RAISE EXCEPTION 'context relation % does not exist', l.context_relation
        USING ERRCODE = 'undefined_table';
    END IF;
  ELSE
    rel := to_regclass(format('%I.%I', l.subject_schema, l.subject_table));
    keycol := l.subject_key_column;
    IF rel IS NULL THEN
      RAISE EXCEPTION 'subject table %.% does not exist', l.subject_schema, l.subject_table
        USING ERRCODE = 'undefined_table';
    END IF;
  END IF;
  SELECT format_type(atttypid, atttypmod) INTO keytype
  FROM pg_attribute WHERE attrelid = rel AND attname = keycol AND attnum > 0 AND NOT attisdropped;
  IF keytype IS NULL THEN
    RAISE EXCEPTION 'column "%" of % does not exist', keycol, rel USING ERRCODE = 'undefined_column';
  END IF;

  EXECUTE format('SELECT array_agg(to_jsonb(c)) FROM (SELECT * FROM %s WHERE %I = $1::%s LIMIT 2) c',
                 rel, keycol, keytype)
    INTO hits USING l.subject_id;

  IF hits IS NULL THEN
    RAISE EXCEPTION 'no row in % where % = %', rel, keycol, l.subject_id USING ERRCODE = 'no_data_found';
  ELSIF array_length(hits, 1) > 1 THEN
    RAISE EXCEPTION 'more than one row in % where % = %', rel, keycol, l.subject_id
      USING ERRCODE = 'too_many_rows';
  END IF;
  RETURN hits[1];
END
$$;

-- A log's template variables (see herald_context), or why they could not be read, without
-- failing the statement that asks: {"context": {...}} or {"error": "...", "sqlstate": "..."}.
-- The executor reads a batch's contexts in the statement that claims it.
CREATE OR REPLACE FUNCTION herald_try_context(p_log_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN jsonb_build_object('context', herald_context(p_log_id));
EXCEPTION WHEN OTHERS THEN
  RETURN jsonb_build_object('error', SQLERRM, 'sqlstate', SQLSTATE);
END
$$;

-- The template variables of many logs at once: one row per log of p_log_ids that exists,
-- with {"context": {...}} or {"error": "...", "sqlstate": "..."} as herald_try_context
-- gives them. Logs that read the same relation by the same key column are read together
-- (one query, an index lookup per key). A log whose key matches no row or several, and
-- every log of a relation whose query fails (a missing relation or column, a key that does
-- not cast, an error raised by a view), is read alone by herald_try_context, so it gets
-- its own error and fails only itself.
CREATE OR REPLACE FUNCTION herald_contexts(p_log_ids bigint[])
RETURNS TABLE (log_id bigint, context jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  grp     record;
  rel     regclass;
  keytype text;
  got_ids bigint[];
  got     jsonb[];
BEGIN
  FOR grp IN
    -- (A schedule's instance with no audience has no row: relname '', and its data is empty.)
    SELECT CASE WHEN g.subject_table = '' THEN ''
                ELSE coalesce(a.context_relation, format('%I.%I', g.subject_schema, g.subject_table)) END AS relname,
           coalesce(a.context_key_column, g.subject_key_column) AS keycol,
           array_agg(g.id) AS ids, array_agg(g.subject_id) AS keys
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.id = ANY (p_log_ids)
    GROUP BY 1, 2
  LOOP
    IF grp.relname = '' THEN
      RETURN QUERY SELECT i, jsonb_build_object('context', '{}'::jsonb) FROM unnest(grp.ids) AS i;
      CONTINUE;
    END IF;
    rel := to_regclass(grp.relname);
    keytype := NULL;
    got_ids := NULL;
    IF rel IS NOT NULL THEN
      SELECT format_type(atttypid, atttypmod) INTO keytype
      FROM pg_attribute WHERE attrelid = rel AND attname = grp.keycol AND attnum > 0 AND NOT attisdropped;
    END IF;
    IF keytype IS NOT NULL THEN
      -- Collected in arrays first: rows already returned could not be taken back if the
      -- query failed halfway.
      BEGIN
        EXECUTE format(
          'SELECT array_agg(id), array_agg(ctx) FROM (
             SELECT k.id, CASE WHEN count(x.row) = 1 THEN jsonb_build_object(''context'', (array_agg(x.row))[1])
                               ELSE herald_try_context(k.id) END AS ctx
             FROM unnest($1::bigint[], $2::text[]) AS k(id, key)
             LEFT JOIN LATERAL (SELECT to_jsonb(c) AS row FROM %s c WHERE c.%I = k.key::%s LIMIT 2) x ON true
             GROUP BY k.id) r',
          rel, grp.keycol, keytype)
          INTO got_ids, got USING grp.ids, grp.keys;
      EXCEPTION WHEN OTHERS THEN
        got_ids := NULL;  -- read these logs one by one below, each with its own error
      END;
    END IF;
    IF got_ids IS NOT NULL THEN
      RETURN QUERY SELECT * FROM unnest(got_ids, got);
    ELSE
      RETURN QUERY SELECT i, herald_try_context(i) FROM unnest(grp.ids) AS i;
    END IF;
  END LOOP;
END
$$;

-- A started entry of herald_flow_write's document, as the place its run records. (STABLE,
-- as jsonb_build_object is: declared IMMUTABLE, it was not inlined but called once per row.)
CREATE OR REPLACE FUNCTION herald_place_of(p_entry jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('next_step', p_entry -> 'next_step', 'step_attempt', p_entry -> 'step_attempt',
                            'steps_run', p_entry -> 'steps_run', 'outputs', p_entry -> 'outputs')
$$;

-- Executor: claims a batch of instances (each message's log and lease) and loads what their
-- rounds need: the definition (once per version in the batch), the place, the data, and the
-- last effect an earlier invocation started. A message naming no log is answered as unknown;
-- an instance with no version to run fails, and `refused` says why.
CREATE OR REPLACE FUNCTION herald_flow_start(p_ids bigint[], p_leases bigint[], p_now timestamptz, p_until timestamptz)
RETURNS TABLE (lease bigint, attempt integer, status text, definition jsonb, next_step text, step_attempt integer,
               steps_run integer, outputs jsonb, context jsonb, run_status text, run_output jsonb, run_error text,
               event text, old_status text, new_status text, subject_table text, subject_id text, payload jsonb,
               run_error_kind text, max_attempts integer, retry_base_secs float8, retry_cap_secs float8,
               automation_id bigint, version integer, refused text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  -- Two messages of one log in a batch (one left in the queue from before a rescue): the one
  -- that holds the log's lease claims it, and the other is answered as claimed by it.
  WITH msg AS (
    SELECT m.log_id, m.lease, m.ord,
           row_number() OVER (PARTITION BY m.log_id ORDER BY cur.lease_token IS NOT DISTINCT FROM m.lease DESC, m.ord) AS nth
    FROM unnest(p_ids, p_leases) WITH ORDINALITY AS m(log_id, lease, ord)
    LEFT JOIN ONLY automation_execution_logs cur ON cur.id = m.log_id
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
              l.parked_lease, a.max_attempts, a.retry_base, a.retry_cap
  ), orphan AS (
    -- An instance with no version to run (its automation was deleted, or has no definition)
    -- fails at its claim, saying why. (Only messages the claim did not take are looked at.)
    SELECT l.id, m.lease,
           CASE WHEN EXISTS (SELECT 1 FROM automations a WHERE a.id = l.automation_id)
                THEN format('automation %s has no definition', l.automation_id)
                ELSE format('unknown automation %s', l.automation_id) END AS why
    FROM (SELECT * FROM msg WHERE msg.nth = 1 AND NOT EXISTS (SELECT 1 FROM claimed c WHERE c.id = msg.log_id)) m
    JOIN ONLY automation_execution_logs l ON l.id = m.log_id
    -- (Queued under the message's lease and not claimed: it has no version to run.)
    WHERE l.status = 'queued' AND l.lease_token = m.lease
  ), orphaned AS (
    UPDATE ONLY automation_execution_logs l
    SET status = 'failed', attempts = l.attempts + 1, started_at = coalesce(l.started_at, p_now), completed_at = p_now,
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL, error_kind = 'permanent', error_code = NULL,
        error = o.why
    FROM orphan o
    WHERE l.id = o.id AND l.status = 'queued' AND l.lease_token = o.lease
    RETURNING l.id, o.why AS error
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
         c.automation_id, c.version, o.error
  FROM msg m
  LEFT JOIN claimed c ON c.id = m.log_id AND m.nth = 1
  LEFT JOIN orphaned o ON o.id = m.log_id AND m.nth = 1
  LEFT JOIN ctx x ON x.log_id = c.id
  LEFT JOIN ONLY automation_execution_logs l ON l.id = m.log_id
  LEFT JOIN automation_versions v ON v.automation_id = c.automation_id AND v.version = c.version
  -- The last effect an earlier invocation started, if it did not park the instance after it
  -- (a park is the last write of an invocation: it records the place, and its lease as
  -- parked_lease, on the instance):
  -- the instance resumes at that effect's place. Lease tokens grow with every claim.
  -- (LIMIT, and the order of the runs' index by log, keep the lookup a probe of that index for
  -- each instance, rather than a walk back through every run.)
  LEFT JOIN LATERAL (
    SELECT x.status, x.output, x.error, x.error_kind, x.place
    FROM (SELECT * FROM automation_step_runs y
          WHERE y.log_id = c.id AND y.place IS NOT NULL
          ORDER BY y.log_id DESC, y.id DESC
          LIMIT 1) x
    WHERE x.lease_token > coalesce(c.parked_lease, 0)
  ) r ON true
  ORDER BY m.ord;
END
$$;

-- Performs a step whose effect is in this database (update_field, labels, tasks) and returns
-- its output; a label step may name another row than the subject.
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

-- Executor: writes a round of many instances in one call (steps started, ended and decided,
-- local effects performed, instances parked or ended), each fenced by its lease. A step that
-- fails in this database says its error once, and an instance that fails keeps its SQLSTATE.
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
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL, parked_lease = l.lease_token
    FROM l
    WHERE g.id = l.id AND l.held IS NOT NULL
    RETURNING l.n, l.held
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
          updated_at = p_now, lease_token = NULL, lease_expires_at = NULL, parked_lease = loc.lease_token
      WHERE id = loc.id;
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
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL, parked_lease = l.token
    FROM l
    WHERE g.id = l.id
    RETURNING l.n, l.held
  )
  -- A park this same write made before (its commit landed, its answer was lost) left its
  -- lease on the instance: taken. (A lease parks an instance once: parking ends the lease.)
  SELECT coalesce(jsonb_agg(CASE WHEN d.n IS NOT NULL THEN coalesce(to_jsonb(d.held), 'true')
                                 WHEN EXISTS (SELECT 1 FROM ONLY automation_execution_logs g
                                              WHERE g.id = p.log_id AND g.parked_lease = p.token) THEN 'true'
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
