-- Herald schema 9: pause, resume and cancel, for automations and for single instances.
--
-- A paused log waits in the ledger with status `paused`; `held_from` keeps the status it
-- goes back to (pending, or waiting with its wake-up time in run_at), so the claim, which
-- reads pending and waiting logs only, passes it by at no cost. Who holds it: the
-- automation (hold NULL, automations.paused_at set) or an operator (hold 'instance').
-- A running instance is not interrupted: its hold ('instance' or 'cancel') or its
-- automation's pause is read by the executor's next write, at the instance's next step
-- boundary, and the instance parks there as paused or cancelled.

ALTER TABLE automations ADD COLUMN paused_at timestamptz;

ALTER TABLE automation_execution_logs
  ADD COLUMN held_from text,  -- a paused log: the status it is released to
  ADD COLUMN hold      text;  -- 'instance': paused by an operator; 'cancel': cancel at the next step
ALTER TABLE ONLY automation_execution_logs
  DROP CONSTRAINT automation_execution_logs_status_check,
  ADD CONSTRAINT automation_execution_logs_status_check CHECK
    (status IN ('pending', 'queued', 'running', 'waiting', 'paused', 'sent', 'completed', 'failed', 'exited', 'dead',
                'unknown', 'cancelled', 'suppressed')) NO INHERIT,
  ADD CONSTRAINT logs_hold_check CHECK (hold IN ('instance', 'cancel')) NO INHERIT,
  ADD CONSTRAINT logs_held_from_check CHECK (held_from IN ('pending', 'waiting')) NO INHERIT,
  ADD CONSTRAINT logs_paused_has_release CHECK ((status = 'paused') = (held_from IS NOT NULL)) NO INHERIT;

-- Paused logs of an automation, in the order they are released.
CREATE INDEX automation_execution_logs_paused ON automation_execution_logs (automation_id, run_at, id)
  WHERE status = 'paused';

-- Moves captured events to the ledger as schema 3 did; an event of a paused automation is
-- recorded as paused (held, never dropped) instead of pending.
CREATE OR REPLACE FUNCTION herald_ingest(p_limit integer DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  batch  herald_inbox[];
  placed integer;
  r      record;
  holder bigint;
BEGIN
  -- The migration runner's key ("herald" in ASCII) plus one; pausing takes it too.
  PERFORM pg_advisory_xact_lock(114784919972965);
  WITH taken AS (
    DELETE FROM herald_inbox
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM herald_inbox LIMIT p_limit))
    RETURNING *
  )
  SELECT array_agg(taken) INTO batch FROM taken;
  IF batch IS NULL THEN
    RETURN 0;
  END IF;

  -- The first event of each (automation, row) opens its window, unless one is open.
  INSERT INTO automation_suppression_windows AS w
    (automation_id, subject_schema, subject_table, subject_id, log_id, opened_at, closes_at)
  SELECT DISTINCT ON (b.automation_id, b.subject_schema, b.subject_table, b.subject_id)
         b.automation_id, b.subject_schema, b.subject_table, b.subject_id, b.id, b.created_at,
         b.created_at + coalesce(a.suppression_window, interval '0')
  FROM unnest(batch) b
  LEFT JOIN automations a ON a.id = b.automation_id
  ORDER BY b.automation_id, b.subject_schema, b.subject_table, b.subject_id, b.created_at, b.id
  ON CONFLICT (automation_id, subject_schema, subject_table, subject_id) DO UPDATE
    SET log_id = excluded.log_id, opened_at = excluded.opened_at, closes_at = excluded.closes_at
    WHERE w.closes_at <= excluded.opened_at;

  -- Every event that opened a window is pending (paused, when its automation is); every
  -- event inside a window is suppressed.
  INSERT INTO automation_execution_logs
    (id, automation_id, subject_schema, subject_table, subject_key_column, subject_id,
     event, old_status, new_status, snapshot, status, held_from, suppressed_by, run_at,
     created_at, completed_at, updated_at)
  SELECT b.id, b.automation_id, b.subject_schema, b.subject_table, b.subject_key_column, b.subject_id,
         b.event, b.old_status, b.new_status, b.snapshot,
         CASE WHEN w.log_id <> b.id THEN 'suppressed' WHEN a.paused_at IS NOT NULL THEN 'paused' ELSE 'pending' END,
         CASE WHEN w.log_id = b.id AND a.paused_at IS NOT NULL THEN 'pending' END,
         CASE WHEN w.log_id = b.id THEN NULL ELSE w.log_id END,
         b.run_at, b.created_at,
         CASE WHEN w.log_id = b.id THEN NULL ELSE b.created_at END,
         b.updated_at
  FROM unnest(batch) b
  JOIN automation_suppression_windows w
    ON w.automation_id = b.automation_id AND w.subject_schema = b.subject_schema
   AND w.subject_table = b.subject_table AND w.subject_id = b.subject_id
  LEFT JOIN automations a ON a.id = b.automation_id
  WHERE w.log_id = b.id OR b.created_at < w.closes_at;
  GET DIAGNOSTICS placed = ROW_COUNT;

  -- The rest came after their row's window closed (a short window, or a long backlog):
  -- decided one at a time, in order, each opening the next window or falling inside it.
  IF placed < cardinality(batch) THEN
    FOR r IN
      SELECT b.*, coalesce(a.suppression_window, interval '0') AS win, a.paused_at IS NOT NULL AS paused
      FROM unnest(batch) b
      LEFT JOIN automations a ON a.id = b.automation_id
      WHERE NOT EXISTS (SELECT 1 FROM ONLY automation_execution_logs l WHERE l.id = b.id)
      ORDER BY b.created_at, b.id
    LOOP
      INSERT INTO automation_suppression_windows AS w
        (automation_id, subject_schema, subject_table, subject_id, log_id, opened_at, closes_at)
      VALUES (r.automation_id, r.subject_schema, r.subject_table, r.subject_id, r.id, r.created_at,
              r.created_at + r.win)
      ON CONFLICT (automation_id, subject_schema, subject_table, subject_id) DO UPDATE
        SET log_id = excluded.log_id, opened_at = excluded.opened_at, closes_at = excluded.closes_at
        WHERE w.closes_at <= excluded.opened_at
      RETURNING w.log_id INTO holder;
      IF holder IS NULL THEN
        SELECT w.log_id INTO holder FROM automation_suppression_windows w
        WHERE w.automation_id = r.automation_id AND w.subject_schema = r.subject_schema
          AND w.subject_table = r.subject_table AND w.subject_id = r.subject_id;
      ELSE
        holder := NULL;  -- this event opened the window
      END IF;
      INSERT INTO automation_execution_logs
        (id, automation_id, subject_schema, subject_table, subject_key_column, subject_id,
         event, old_status, new_status, snapshot, status, held_from, suppressed_by, run_at,
         created_at, completed_at, updated_at)
      VALUES
        (r.id, r.automation_id, r.subject_schema, r.subject_table, r.subject_key_column, r.subject_id,
         r.event, r.old_status, r.new_status, r.snapshot,
         CASE WHEN holder IS NOT NULL THEN 'suppressed' WHEN r.paused THEN 'paused' ELSE 'pending' END,
         CASE WHEN holder IS NULL AND r.paused THEN 'pending' END,
         holder, r.run_at, r.created_at, CASE WHEN holder IS NULL THEN NULL ELSE r.created_at END, r.updated_at);
    END LOOP;
  END IF;
  RETURN cardinality(batch);
END
$$;
REVOKE EXECUTE ON FUNCTION herald_ingest(integer) FROM PUBLIC;

-- What a running instance's hold makes of a stop at a step boundary: NULL when it parks as
-- it asked (`p_want`), else the status it parks in instead. An instance to be cancelled
-- whose last effect's outcome is unknown is cancelled: nobody will resend it.
CREATE FUNCTION herald_held_status(p_want text, p_hold text, p_paused boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_hold = 'cancel' AND p_want IN ('pending', 'waiting', 'unknown') THEN 'cancelled'
              WHEN p_want NOT IN ('pending', 'waiting') THEN NULL
              WHEN p_hold = 'instance' OR p_paused THEN 'paused' END
$$;

-- Executor: one write of a round, as schema 8 wrote it, with holds read at each step
-- boundary: an effect about to start on an instance that is paused (by itself or by its
-- automation) or to be cancelled does not start; the instance parks at that step as paused
-- or cancelled. A park as pending or waiting becomes paused or cancelled the same way. Such
-- entries return the status they parked in ("paused", "cancelled") instead of true.
CREATE OR REPLACE FUNCTION herald_flow_write(p_write jsonb, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  e       jsonb;
  ok      boolean;
  held    text;
  want    text;
  ended   jsonb := '[]';
  started jsonb := '[]';
  parked  jsonb := '[]';
BEGIN
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'ended') LOOP
    UPDATE automation_step_runs r
    SET status = CASE WHEN e ? 'error' THEN 'failed' ELSE 'done' END, finished_at = p_now,
        output = e -> 'output', error = e ->> 'error', error_kind = e ->> 'error_kind', error_code = e ->> 'error_code'
    FROM ONLY automation_execution_logs l
    WHERE r.log_id = (e ->> 'log_id')::bigint AND r.step_id = e ->> 'step' AND r.attempt = (e ->> 'attempt')::int
      AND r.status = 'started' AND l.id = r.log_id AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint;
    ok := FOUND;
    IF NOT ok AND e ? 'error' THEN
      -- A step that failed before its effect started (it could not be made ready).
      INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at,
                                        error, error_kind, error_code)
      SELECT l.id, e ->> 'step', e ->> 'type', (e ->> 'attempt')::int, l.lease_token, 'failed', p_now, p_now,
             e ->> 'error', e ->> 'error_kind', e ->> 'error_code'
      FROM ONLY automation_execution_logs l
      WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint
      ON CONFLICT DO NOTHING;
      ok := FOUND;
    END IF;
    ended := ended || to_jsonb(ok);
  END LOOP;
  INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at, output)
  SELECT l.id, d ->> 'step', d ->> 'kind', l.step_attempt, l.lease_token, 'decided', p_now, p_now, d -> 'detail'
  FROM jsonb_array_elements(p_write -> 'decided') d
  JOIN ONLY automation_execution_logs l
    ON l.id = (d ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (d ->> 'token')::bigint;
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'started') LOOP
    -- The row lock orders this write with a pause or cancel of the instance.
    SELECT herald_held_status('pending', l.hold, a.paused_at IS NOT NULL) INTO held
    FROM ONLY automation_execution_logs l
    LEFT JOIN automations a ON a.id = l.automation_id
    WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint
    FOR UPDATE OF l;
    IF NOT FOUND THEN
      started := started || to_jsonb(false);
      CONTINUE;
    END IF;
    IF held IS NOT NULL THEN
      -- Stopped before the effect: it runs when the instance is resumed.
      UPDATE ONLY automation_execution_logs
      SET status = held, held_from = CASE held WHEN 'paused' THEN 'pending' END,
          hold = CASE held WHEN 'paused' THEN hold END,
          next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int - 1,
          steps_run = (e ->> 'steps_run')::int - 1, outputs = e -> 'outputs', run_at = p_now,
          completed_at = CASE held WHEN 'cancelled' THEN p_now END,
          updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
      WHERE id = (e ->> 'log_id')::bigint;
      UPDATE automation_attempts SET finished_at = p_now
      WHERE log_id = (e ->> 'log_id')::bigint AND lease_token = (e ->> 'token')::bigint AND finished_at IS NULL;
      started := started || to_jsonb(held);
      CONTINUE;
    END IF;
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect)
    SELECT l.id, e ->> 'step', e ->> 'type', (e ->> 'attempt')::int, l.lease_token, 'started', p_now, e -> 'effect'
    FROM ONLY automation_execution_logs l
    WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint
    ON CONFLICT DO NOTHING;
    ok := FOUND;
    IF ok THEN
      -- The instance's place as the effect starts: where a later invocation resumes.
      UPDATE ONLY automation_execution_logs
      SET next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int,
          steps_run = (e ->> 'steps_run')::int, outputs = e -> 'outputs', updated_at = p_now
      WHERE id = (e ->> 'log_id')::bigint;
    END IF;
    started := started || to_jsonb(ok);
  END LOOP;
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'parked') LOOP
    want := e ->> 'status';
    SELECT herald_held_status(want, l.hold, a.paused_at IS NOT NULL) INTO held
    FROM ONLY automation_execution_logs l
    LEFT JOIN automations a ON a.id = l.automation_id
    WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint
    FOR UPDATE OF l;
    IF NOT FOUND THEN
      parked := parked || to_jsonb(false);
      CONTINUE;
    END IF;
    UPDATE ONLY automation_execution_logs l
    SET status = coalesce(held, want), held_from = CASE held WHEN 'paused' THEN want END,
        hold = CASE held WHEN 'paused' THEN l.hold END,
        next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int,
        steps_run = (e ->> 'steps_run')::int, outputs = e -> 'outputs',
        run_at = CASE WHEN want = 'pending' THEN p_now ELSE coalesce((e ->> 'run_at')::timestamptz, l.run_at) END,
        error = e ->> 'error', exit_reason = e ->> 'exit_reason',
        completed_at = CASE WHEN coalesce(held, want) IN ('completed', 'failed', 'exited', 'cancelled') THEN p_now END,
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
    WHERE l.id = (e ->> 'log_id')::bigint;
    UPDATE automation_attempts SET finished_at = p_now
    WHERE log_id = (e ->> 'log_id')::bigint AND lease_token = (e ->> 'token')::bigint AND finished_at IS NULL;
    parked := parked || coalesce(to_jsonb(held), to_jsonb(true));
  END LOOP;
  RETURN jsonb_build_object('ended', ended, 'started', started, 'parked', parked);
END
$$;

-- Operator: pause an automation. Its events are still recorded, as paused logs; its pending,
-- queued and waiting logs are held (a queued log's message is skipped); its running
-- instances stop at their next step. Returns how many logs it held now.
CREATE FUNCTION herald_pause(p_automation text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  auto_id bigint;
  n       integer;
BEGIN
  -- Serialized with herald_ingest: no event lands as pending after the pause.
  PERFORM pg_advisory_xact_lock(114784919972965);
  UPDATE automations SET paused_at = coalesce(paused_at, herald_now()), updated_at = herald_now()
  WHERE name = p_automation RETURNING id INTO auto_id;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'herald: no automation is named %', quote_literal(p_automation) USING ERRCODE = '42704';
  END IF;
  UPDATE ONLY automation_execution_logs
  SET status = 'paused', held_from = CASE status WHEN 'waiting' THEN 'waiting' ELSE 'pending' END,
      run_at = CASE status WHEN 'queued' THEN queued_at ELSE run_at END,
      queued_at = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = herald_now()
  WHERE automation_id = auto_id AND status IN ('pending', 'queued', 'waiting');
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;

-- Operator: resume a paused automation. Its held logs go back to pending or waiting with
-- their times, so the scheduler takes them in the order they came; logs an operator paused
-- one by one stay paused. Returns how many it released.
CREATE FUNCTION herald_resume(p_automation text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  auto_id bigint;
  n       integer;
BEGIN
  PERFORM pg_advisory_xact_lock(114784919972965);
  UPDATE automations SET paused_at = NULL, updated_at = herald_now()
  WHERE name = p_automation RETURNING id INTO auto_id;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'herald: no automation is named %', quote_literal(p_automation) USING ERRCODE = '42704';
  END IF;
  UPDATE ONLY automation_execution_logs
  SET status = held_from, held_from = NULL, updated_at = herald_now()
  WHERE automation_id = auto_id AND status = 'paused' AND hold IS NULL;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;

-- Operator: pause one log or instance. Pending, queued and waiting ones are held now; a
-- running instance stops at its next step. Returns whether it did.
CREATE FUNCTION herald_pause_instance(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM herald_inbox WHERE id = p_log_id) THEN
    PERFORM herald_ingest();
  END IF;
  UPDATE ONLY automation_execution_logs
  SET held_from = CASE WHEN status = 'paused' THEN held_from WHEN status = 'waiting' THEN 'waiting'
                       WHEN status IN ('pending', 'queued') THEN 'pending' END,
      run_at = CASE status WHEN 'queued' THEN queued_at ELSE run_at END,
      queued_at = CASE WHEN status = 'running' THEN queued_at END,
      lease_token = CASE WHEN status = 'running' THEN lease_token END,
      lease_expires_at = CASE WHEN status = 'running' THEN lease_expires_at END,
      status = CASE WHEN status = 'running' THEN status ELSE 'paused' END,
      hold = 'instance', updated_at = herald_now()
  WHERE id = p_log_id AND hold IS DISTINCT FROM 'cancel'
    AND (status IN ('pending', 'queued', 'waiting', 'paused') OR (status = 'running' AND version IS NOT NULL));
  RETURN FOUND;
END
$$;

-- Operator: resume one paused log or instance; it stays held while its automation is paused.
CREATE FUNCTION herald_resume_instance(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(114784919972965);
  UPDATE ONLY automation_execution_logs l
  SET hold = NULL,
      status = CASE WHEN l.status = 'paused' AND NOT held THEN l.held_from ELSE l.status END,
      held_from = CASE WHEN l.status = 'paused' AND NOT held THEN NULL ELSE l.held_from END,
      updated_at = herald_now()
  FROM (SELECT EXISTS (SELECT 1 FROM ONLY automation_execution_logs g JOIN automations a ON a.id = g.automation_id
                       WHERE g.id = p_log_id AND a.paused_at IS NOT NULL) AS held) h
  WHERE l.id = p_log_id AND l.hold = 'instance';
  RETURN FOUND;
END
$$;

-- Operator: cancel a log that has not been sent, or an instance that has not finished:
-- pending (in the ledger or still in the inbox), queued (its message will be skipped),
-- waiting, paused or unknown now; a running instance at its next step. Returns whether it did.
CREATE OR REPLACE FUNCTION herald_cancel(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM herald_inbox WHERE id = p_log_id) THEN
    PERFORM herald_ingest();
  END IF;
  UPDATE ONLY automation_execution_logs
  SET completed_at = CASE WHEN status = 'running' THEN completed_at ELSE herald_now() END,
      lease_token = CASE WHEN status = 'running' THEN lease_token END,
      lease_expires_at = CASE WHEN status = 'running' THEN lease_expires_at END,
      hold = CASE WHEN status = 'running' THEN 'cancel' END,
      held_from = NULL,
      status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
      updated_at = herald_now()
  WHERE id = p_log_id
    AND (status IN ('pending', 'queued', 'waiting', 'paused', 'unknown') OR (status = 'running' AND version IS NOT NULL));
  RETURN FOUND;
END
$$;

-- Operator: cancel every open log and instance of one subject row, as herald_cancel does
-- each: herald_cancel_for('public.bookings', '42'). Returns how many.
CREATE FUNCTION herald_cancel_for(p_table regclass, p_subject_id text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  s text;
  t text;
  n integer;
BEGIN
  SELECT ns.nspname, c.relname INTO s, t
  FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE c.oid = p_table;
  IF EXISTS (SELECT 1 FROM herald_inbox WHERE subject_schema = s AND subject_table = t AND subject_id = p_subject_id) THEN
    PERFORM herald_ingest();
  END IF;
  UPDATE ONLY automation_execution_logs
  SET completed_at = CASE WHEN status = 'running' THEN completed_at ELSE herald_now() END,
      lease_token = CASE WHEN status = 'running' THEN lease_token END,
      lease_expires_at = CASE WHEN status = 'running' THEN lease_expires_at END,
      hold = CASE WHEN status = 'running' THEN 'cancel' END,
      held_from = NULL,
      status = CASE WHEN status = 'running' THEN status ELSE 'cancelled' END,
      updated_at = herald_now()
  WHERE subject_schema = s AND subject_table = t AND subject_id = p_subject_id
    AND (status IN ('pending', 'queued', 'waiting', 'paused', 'unknown') OR (status = 'running' AND version IS NOT NULL));
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;
