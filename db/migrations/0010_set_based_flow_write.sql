-- Schema 10: a round of instances is written set-based.
--
-- herald_flow_write answered the same way in schema 9, but applied its entries one at a
-- time: a locking read, an insert and an update per started effect, an update per ended
-- step and per park, each a statement of its own. Ended steps, started effects that leave
-- this database (email, SMS, webhooks) and parks are now one statement each for the whole
-- round; effects performed here (update_field, labels, tasks) keep their entry-by-entry
-- loop, since each runs in a subtransaction of its own. What each entry does, its locks and
-- its answer are unchanged (rows of instances are locked in id order), with one addition:
-- an ended step already recorded with the same result at the same time, under the same
-- lease, counts as written, so that a write whose commit landed but whose answer was lost
-- can be made again (the executor retries it; the scheduler applies receipts of it).
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
    ON g.id = (d ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (d ->> 'token')::bigint;

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
  ), placed AS (
    -- The instance's place as the effect starts: where a later invocation resumes.
    UPDATE ONLY automation_execution_logs g
    SET next_step = l.v ->> 'next_step', step_attempt = (l.v ->> 'step_attempt')::int,
        steps_run = (l.v ->> 'steps_run')::int, outputs = l.v -> 'outputs', updated_at = p_now
    FROM runs r
    JOIN l ON l.id = r.log_id
    WHERE g.id = r.log_id
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
      started := started || jsonb_build_object(k::text, false);
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
  SELECT coalesce(jsonb_agg(CASE WHEN d.n IS NULL THEN 'false'::jsonb ELSE coalesce(to_jsonb(d.held), 'true') END
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
