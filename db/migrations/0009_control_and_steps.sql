-- Herald schema 9: pause, resume and cancel, for automations and for single instances; the
-- workflow steps that change data in this database (update_field, tags and segments,
-- create_task), and the cascade guard for the changes they make.
--
-- Pause, resume and cancel.
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

-- A change made by a step of an instance (update_field) is captured with the instance's
-- cascade depth plus one and the instance's id, read from two settings the executor sets
-- around the change (column defaults of the inbox: the capture functions stay as they
-- are). An event deeper than the limit is recorded as suppressed by that instance.
ALTER TABLE automation_execution_logs
  ADD COLUMN cascade_depth integer NOT NULL DEFAULT 0,
  ADD COLUMN caused_by     bigint;
ALTER TABLE herald_inbox
  ALTER COLUMN cascade_depth SET DEFAULT coalesce(nullif(current_setting('herald.cascade_depth', true), '')::integer, 0),
  ALTER COLUMN caused_by SET DEFAULT nullif(current_setting('herald.caused_by', true), '')::bigint;
-- What a manual start (herald_start) gave its instance, for templates and conditions.
ALTER TABLE automation_execution_logs ADD COLUMN payload jsonb;

ALTER TABLE herald_settings
  ADD COLUMN cascade_limit integer NOT NULL DEFAULT 5 CHECK (cascade_limit >= 0);

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
  deepest integer := (SELECT cascade_limit FROM herald_settings);
  moved   integer;
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
  moved := cardinality(batch);

  -- Past the cascade limit: recorded as suppressed by the instance whose step made the
  -- change, with the reason; nothing fires and no window opens.
  INSERT INTO automation_execution_logs
    (id, automation_id, subject_schema, subject_table, subject_key_column, subject_id,
     event, old_status, new_status, snapshot, payload, status, suppressed_by, error, error_kind, error_code,
     cascade_depth, caused_by, run_at, created_at, completed_at, updated_at)
  SELECT b.id, b.automation_id, b.subject_schema, b.subject_table, b.subject_key_column, b.subject_id,
         b.event, b.old_status, b.new_status, b.snapshot, b.payload, 'suppressed', b.caused_by,
         format('cascade depth %s is past the limit of %s: a step of log %s made this change', b.cascade_depth,
                deepest, b.caused_by), 'permanent', 'CascadeLimit',
         b.cascade_depth, b.caused_by, b.run_at, b.created_at, b.created_at, b.updated_at
  FROM unnest(batch) b
  WHERE b.cascade_depth > deepest AND b.caused_by IS NOT NULL;
  IF FOUND THEN
    batch := ARRAY(SELECT b FROM unnest(batch) b WHERE NOT (b.cascade_depth > deepest AND b.caused_by IS NOT NULL));
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
     event, old_status, new_status, snapshot, payload, status, held_from, suppressed_by, cascade_depth, caused_by, run_at,
     created_at, completed_at, updated_at)
  SELECT b.id, b.automation_id, b.subject_schema, b.subject_table, b.subject_key_column, b.subject_id,
         b.event, b.old_status, b.new_status, b.snapshot, b.payload,
         CASE WHEN w.log_id <> b.id THEN 'suppressed' WHEN a.paused_at IS NOT NULL THEN 'paused' ELSE 'pending' END,
         CASE WHEN w.log_id = b.id AND a.paused_at IS NOT NULL THEN 'pending' END,
         CASE WHEN w.log_id = b.id THEN NULL ELSE w.log_id END,
         b.cascade_depth, b.caused_by, b.run_at, b.created_at,
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
         event, old_status, new_status, snapshot, payload, status, held_from, suppressed_by, cascade_depth, caused_by, run_at,
         created_at, completed_at, updated_at)
      VALUES
        (r.id, r.automation_id, r.subject_schema, r.subject_table, r.subject_key_column, r.subject_id,
         r.event, r.old_status, r.new_status, r.snapshot, r.payload,
         CASE WHEN holder IS NOT NULL THEN 'suppressed' WHEN r.paused THEN 'paused' ELSE 'pending' END,
         CASE WHEN holder IS NULL AND r.paused THEN 'pending' END,
         holder, r.cascade_depth, r.caused_by, r.run_at, r.created_at, CASE WHEN holder IS NULL THEN NULL ELSE r.created_at END, r.updated_at);
    END LOOP;
  END IF;
  RETURN moved;
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

-- Steps that change data in this database. Each is performed by the executor's write that
-- records it, in the same transaction: it happens exactly once, or not at all.

-- Herald's labels: tags and segments of any subject row, for users to join in SQL.
CREATE TABLE herald_labels (
  subject_schema text NOT NULL,
  subject_table  text NOT NULL,
  subject_id     text NOT NULL,
  kind           text NOT NULL CHECK (kind IN ('tag', 'segment')),
  name           text NOT NULL,
  added_at       timestamptz NOT NULL DEFAULT herald_now(),
  added_by       bigint,  -- the instance whose step added it; NULL when added otherwise
  PRIMARY KEY (subject_schema, subject_table, subject_id, kind, name)
);
CREATE INDEX herald_labels_by_name ON herald_labels (kind, name);

-- Tasks for staff, made by create_task steps.
CREATE TABLE herald_tasks (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  subject_schema text NOT NULL,
  subject_table  text NOT NULL,
  subject_id     text NOT NULL,
  title          text NOT NULL,
  assignee       text,
  notes          text,
  due_at         timestamptz,
  status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done', 'cancelled')),
  created_at     timestamptz NOT NULL DEFAULT herald_now(),
  done_at        timestamptz,
  log_id         bigint,  -- the instance and step that made it
  step_id        text
);
CREATE INDEX herald_tasks_open ON herald_tasks (assignee, due_at) WHERE status = 'open';
CREATE INDEX herald_tasks_by_subject ON herald_tasks (subject_schema, subject_table, subject_id);

-- Performs one step of the subject (p_schema.p_table, key column p_key_column = p_subject)
-- and returns its output; raises when it cannot. Runs as the executor: an update_field
-- needs UPDATE on the columns it sets (see db/roles.sql).
CREATE FUNCTION herald_perform_local(p_type text, p_effect jsonb, p_log_id bigint, p_step text, p_schema text,
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

-- An invocation that parks an instance says so in its attempt: `parked`.
ALTER TABLE automation_attempts
  DROP CONSTRAINT automation_attempts_outcome_check,
  ADD CONSTRAINT automation_attempts_outcome_check
    CHECK (outcome IN ('sent', 'failed', 'retry', 'dead', 'lease_expired', 'unknown', 'parked'));

-- Executor: claims and loads instances as schema 8 did. The step run it resumes from is one
-- whose invocation stopped without parking the instance (it vanished between the run's end
-- and the next write): a run the instance already moved on from, such as a failure whose
-- retry it parked to wait for, is not resumed again.
DROP FUNCTION herald_flow_start(bigint[], bigint[], timestamptz, timestamptz);
CREATE FUNCTION herald_flow_start(p_ids bigint[], p_leases bigint[], p_now timestamptz, p_until timestamptz)
RETURNS TABLE (lease bigint, attempt integer, status text, definition jsonb, next_step text, step_attempt integer,
               steps_run integer, outputs jsonb, context jsonb, run_status text, run_output jsonb, run_error text,
               event text, old_status text, new_status text, subject_table text, subject_id text, payload jsonb)
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
    RETURNING l.id, l.attempts, l.lease_token, l.automation_id, l.version, l.next_step, l.step_attempt, l.steps_run, l.outputs
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
         CASE WHEN l.event = 'delete' THEN NULL ELSE l.payload END
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

-- Executor: one write of a round, as schema 8 wrote it, with two additions.
-- Holds are read at each step boundary: an effect about to start on an instance that is
-- paused (by itself or by its automation) or to be cancelled does not start; the instance
-- parks at that step as paused or cancelled. A park as pending or waiting becomes paused or
-- cancelled the same way. Such entries answer with the status they parked in ("paused",
-- "cancelled") instead of true.
-- Steps that change this database are performed here: an entry of `started` marked
-- "local" is recorded as started, performed, and recorded as done or failed, in this
-- transaction; it answers {"output": ...} or {"error", "error_kind", "error_code"}. The
-- change is made with the cascade settings that the capture of its events reads.
CREATE OR REPLACE FUNCTION herald_flow_write(p_write jsonb, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  e       jsonb;
  ok      boolean;
  held    text;
  want    text;
  l       record;
  run_id  bigint;
  answer  jsonb;
  msg     text;
  code    text;
  ended   jsonb := '[]';
  started jsonb := '[]';
  parked  jsonb := '[]';
BEGIN
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'ended') LOOP
    UPDATE automation_step_runs r
    SET status = CASE WHEN e ? 'error' THEN 'failed' ELSE 'done' END, finished_at = p_now,
        output = e -> 'output', error = e ->> 'error', error_kind = e ->> 'error_kind', error_code = e ->> 'error_code'
    FROM ONLY automation_execution_logs g
    WHERE r.log_id = (e ->> 'log_id')::bigint AND r.step_id = e ->> 'step' AND r.attempt = (e ->> 'attempt')::int
      AND r.status = 'started' AND g.id = r.log_id AND g.status = 'running' AND g.lease_token = (e ->> 'token')::bigint;
    ok := FOUND;
    IF NOT ok AND e ? 'error' THEN
      -- A step that failed before its effect started (it could not be made ready).
      INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at,
                                        error, error_kind, error_code)
      SELECT g.id, e ->> 'step', e ->> 'type', (e ->> 'attempt')::int, g.lease_token, 'failed', p_now, p_now,
             e ->> 'error', e ->> 'error_kind', e ->> 'error_code'
      FROM ONLY automation_execution_logs g
      WHERE g.id = (e ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (e ->> 'token')::bigint
      ON CONFLICT DO NOTHING;
      ok := FOUND;
    END IF;
    ended := ended || to_jsonb(ok);
  END LOOP;
  INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at, output)
  SELECT g.id, d ->> 'step', d ->> 'kind', g.step_attempt, g.lease_token, 'decided', p_now, p_now, d -> 'detail'
  FROM jsonb_array_elements(p_write -> 'decided') d
  JOIN ONLY automation_execution_logs g
    ON g.id = (d ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (d ->> 'token')::bigint;
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'started') LOOP
    -- The row lock orders this write with a pause or cancel of the instance.
    SELECT g.id, g.lease_token, g.cascade_depth, g.subject_schema, g.subject_table, g.subject_key_column,
           g.subject_id, herald_held_status('pending', g.hold, a.paused_at IS NOT NULL) AS held
    INTO l
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.id = (e ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (e ->> 'token')::bigint
    FOR UPDATE OF g;
    IF NOT FOUND THEN
      started := started || to_jsonb(false);
      CONTINUE;
    END IF;
    IF l.held IS NOT NULL THEN
      -- Stopped before the effect: it runs when the instance is resumed.
      UPDATE ONLY automation_execution_logs
      SET status = l.held, held_from = CASE l.held WHEN 'paused' THEN 'pending' END,
          hold = CASE l.held WHEN 'paused' THEN hold END,
          next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int - 1,
          steps_run = (e ->> 'steps_run')::int - 1, outputs = e -> 'outputs', run_at = p_now,
          completed_at = CASE l.held WHEN 'cancelled' THEN p_now END,
          updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
      WHERE id = l.id;
      UPDATE automation_attempts SET finished_at = p_now, outcome = 'parked'
      WHERE log_id = l.id AND lease_token = l.lease_token AND finished_at IS NULL;
      started := started || to_jsonb(l.held);
      CONTINUE;
    END IF;
    run_id := NULL;
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect)
    VALUES (l.id, e ->> 'step', e ->> 'type', (e ->> 'attempt')::int, l.lease_token, 'started', p_now, e -> 'effect')
    ON CONFLICT DO NOTHING
    RETURNING id INTO run_id;
    IF run_id IS NULL THEN
      started := started || to_jsonb(false);
      CONTINUE;
    END IF;
    -- The instance's place as the effect starts: where a later invocation resumes.
    UPDATE ONLY automation_execution_logs
    SET next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int,
        steps_run = (e ->> 'steps_run')::int, outputs = e -> 'outputs', updated_at = p_now
    WHERE id = l.id;
    IF NOT coalesce((e ->> 'local')::boolean, false) THEN
      started := started || to_jsonb(true);
      CONTINUE;
    END IF;
    BEGIN
      PERFORM set_config('herald.cascade_depth', (l.cascade_depth + 1)::text, true),
              set_config('herald.caused_by', l.id::text, true);
      answer := herald_perform_local(e ->> 'type', e -> 'effect', l.id, e ->> 'step', l.subject_schema,
                                     l.subject_table, l.subject_key_column, l.subject_id, p_now);
      UPDATE automation_step_runs SET status = 'done', finished_at = p_now, output = answer WHERE id = run_id;
      answer := jsonb_build_object('output', answer);
    EXCEPTION WHEN OTHERS THEN
      -- Undone with everything it changed; the step failed, and its instance's on_error decides.
      GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
      answer := jsonb_build_object('error', format('step `%s`: %s', e ->> 'step', msg), 'error_code', code,
        'error_kind', CASE WHEN code IN ('40001', '40P01', '55P03', '57014') THEN 'transient' ELSE 'permanent' END);
      UPDATE automation_step_runs
      SET status = 'failed', finished_at = p_now, error = answer ->> 'error', error_kind = answer ->> 'error_kind',
          error_code = code
      WHERE id = run_id;
    END;
    PERFORM set_config('herald.cascade_depth', '', true), set_config('herald.caused_by', '', true);
    started := started || answer;
  END LOOP;
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'parked') LOOP
    want := e ->> 'status';
    SELECT herald_held_status(want, g.hold, a.paused_at IS NOT NULL) INTO held
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.id = (e ->> 'log_id')::bigint AND g.status = 'running' AND g.lease_token = (e ->> 'token')::bigint
    FOR UPDATE OF g;
    IF NOT FOUND THEN
      parked := parked || to_jsonb(false);
      CONTINUE;
    END IF;
    UPDATE ONLY automation_execution_logs g
    SET status = coalesce(held, want), held_from = CASE held WHEN 'paused' THEN want END,
        hold = CASE held WHEN 'paused' THEN g.hold END,
        next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int,
        steps_run = (e ->> 'steps_run')::int, outputs = e -> 'outputs',
        run_at = CASE WHEN want = 'pending' THEN p_now ELSE coalesce((e ->> 'run_at')::timestamptz, g.run_at) END,
        error = e ->> 'error', exit_reason = e ->> 'exit_reason',
        completed_at = CASE WHEN coalesce(held, want) IN ('completed', 'failed', 'exited', 'cancelled') THEN p_now END,
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
    WHERE g.id = (e ->> 'log_id')::bigint;
    UPDATE automation_attempts SET finished_at = p_now, outcome = 'parked'
    WHERE log_id = (e ->> 'log_id')::bigint AND lease_token = (e ->> 'token')::bigint AND finished_at IS NULL;
    parked := parked || coalesce(to_jsonb(held), to_jsonb(true));
  END LOOP;
  RETURN jsonb_build_object('ended', ended, 'started', started, 'parked', parked);
END
$$;

-- What schema 8's checks of steps left out: the columns update_field steps name, checked
-- against the catalog (each column of `set` and the key column exist in the table the step
-- changes: its `table`, else the subject's, p_subject; p_key is the subject's key column,
-- the key of a named table when it names none); and the bounds of a webhook's timeout.
CREATE FUNCTION herald_step_detail_problems(p_steps jsonb, p_path text, p_subject regclass, p_key text)
RETURNS TABLE (path text, message text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  i      integer;
  step   jsonb;
  p      text;
  target regclass;
  cols   jsonb;
  keycol text;
  secs   numeric;
BEGIN
  IF jsonb_typeof(p_steps) IS DISTINCT FROM 'array' THEN
    RETURN;
  END IF;
  FOR i IN 0 .. jsonb_array_length(p_steps) - 1 LOOP
    step := p_steps -> i;
    p := format('%s[%s]', p_path, i);
    IF step ->> 'type' = 'branch' THEN
      RETURN QUERY SELECT * FROM herald_step_detail_problems(step -> 'then', p || '.then', p_subject, p_key);
      RETURN QUERY SELECT * FROM herald_step_detail_problems(step -> 'else', p || '.else', p_subject, p_key);
    ELSIF step ->> 'type' = 'webhook' AND jsonb_typeof(step -> 'timeout') = 'string'
          AND herald_span_problem(step -> 'timeout', 'a timeout') IS NULL THEN
      BEGIN
        secs := extract(epoch FROM (step ->> 'timeout')::interval);
      EXCEPTION WHEN OTHERS THEN
        secs := NULL;  -- a form Postgres does not read; Herald reads it when it runs
      END;
      IF secs < 1 OR secs > 15 THEN
        RETURN QUERY SELECT p || '.timeout', 'is from 1 to 15 seconds';
      END IF;
    ELSIF step ->> 'type' = 'update_field' AND jsonb_typeof(step -> 'set') = 'object' THEN
      target := CASE WHEN step ? 'table' THEN herald_relation(step ->> 'table') ELSE p_subject END;
      CONTINUE WHEN target IS NULL;  -- a table that does not exist is reported by the shape check
      cols := herald_column_kinds(target);
      RETURN QUERY SELECT p || '.set.' || k, format('%s has no column `%s`', target, k)
                   FROM jsonb_object_keys(step -> 'set') k WHERE NOT cols ? k ORDER BY k;
      keycol := coalesce(step ->> 'key', p_key);
      IF keycol IS NOT NULL AND NOT cols ? keycol THEN
        RETURN QUERY SELECT p || CASE WHEN step ? 'key' THEN '.key' ELSE '.table' END,
          format('%s has no column `%s` to find the subject''s row by%s', target, keycol,
                 CASE WHEN step ? 'key' THEN '' ELSE ' (name it with `key`)' END);
      END IF;
    END IF;
  END LOOP;
END
$$;

-- What the capture trigger cannot watch: a status column other than the one the table was
-- attached with.
CREATE FUNCTION herald_capture_problems(p_definition jsonb) RETURNS TABLE (path text, message text)
LANGUAGE sql STABLE AS $$
  SELECT 'trigger.column', format('%s is attached with status column `%s`', att.table_schema || '.' || att.table_name,
                                  att.status_column)
  FROM herald_attachments att
  JOIN pg_class c ON c.relname = att.table_name
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = att.table_schema
  WHERE p_definition #>> '{trigger,type}' = 'status_change'
    AND c.oid = herald_relation(p_definition #>> '{trigger,table}')
    AND att.status_column <> coalesce(p_definition #>> '{trigger,column}', 'status')
$$;

-- Saves an automation's definition as its next version, or refuses it with every mistake,
-- as schema 8 did; the checks are now three functions.
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

-- The column a table's rows are found by: its attached key column, else its one-column
-- primary key; NULL when it has neither.
CREATE FUNCTION herald_key_column(p_table regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    (SELECT att.key_column FROM herald_attachments att
     JOIN pg_class c ON c.relname = att.table_name AND c.oid = p_table
     JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = att.table_schema),
    (SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = p_table AND i.indisprimary AND i.indnatts = 1))
$$;

-- A label added or removed is an event of its subject row for every active automation whose
-- trigger is that change of that label (tag_added, tag_removed, segment_joined,
-- segment_left), recorded in the same transaction. A label changed by a step carries the
-- step's cascade depth, as an update_field's change does. Runs as Herald's owner: whoever
-- may change labels may record their events.
CREATE FUNCTION herald_label_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  r      herald_labels;
  change text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    r := NEW;
    change := CASE r.kind WHEN 'tag' THEN 'tag_added' ELSE 'segment_joined' END;
  ELSE
    r := OLD;
    change := CASE r.kind WHEN 'tag' THEN 'tag_removed' ELSE 'segment_left' END;
  END IF;
  INSERT INTO herald_inbox (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event,
                            snapshot, run_at, created_at, updated_at)
  SELECT a.id, r.subject_schema, r.subject_table,
         coalesce(herald_key_column(to_regclass(format('%I.%I', r.subject_schema, r.subject_table))), 'id'),
         r.subject_id, change, to_jsonb(r), herald_now(), herald_now(), herald_now()
  FROM automations a
  JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
  WHERE a.is_active AND a.trigger_event = change
    AND v.definition #>> ARRAY['trigger', r.kind] = r.name;
  RETURN NULL;
END
$$;
CREATE TRIGGER herald_label_changed AFTER INSERT OR DELETE ON herald_labels
  FOR EACH ROW EXECUTE FUNCTION herald_label_changed();

-- Starts an instance of an automation whose trigger is `manual`, for one row:
--   SELECT herald_start('welcome-series', 'public.members', '42', '{"source": "signup form"}');
-- The row is found by the table's attached key column, else its one-column primary key;
-- templates and conditions see the payload (a JSON object) as `payload`. The start is an event
-- like a captured one: recorded now, in this transaction, and subject to the automation's
-- suppression window. Returns the instance's log id.
CREATE FUNCTION herald_start(p_automation text, p_table regclass, p_key text, p_payload jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  auto    automations;
  kind    text;
  s       text;
  t       text;
  keycol  text;
  keytype text;
  found_row boolean;
  made    bigint;
BEGIN
  SELECT * INTO auto FROM automations WHERE name = p_automation;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'herald: no automation is named %', quote_literal(p_automation) USING ERRCODE = '42704';
  END IF;
  SELECT v.definition #>> '{trigger,type}' INTO kind
  FROM automation_versions v WHERE v.automation_id = auto.id AND v.version = auto.version;
  IF kind IS DISTINCT FROM 'manual' THEN
    RAISE EXCEPTION 'herald: automation % is not started by hand: its trigger is %', quote_literal(p_automation),
      coalesce(kind, 'the columns of its row') USING ERRCODE = '22023';
  END IF;
  IF jsonb_typeof(p_payload) IS DISTINCT FROM 'object' THEN
    RAISE EXCEPTION 'herald: a payload is a JSON object, not %', coalesce(jsonb_typeof(p_payload), 'NULL')
      USING ERRCODE = '22023';
  END IF;
  SELECT ns.nspname, c.relname INTO s, t FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
  WHERE c.oid = p_table;
  keycol := herald_key_column(p_table);
  IF keycol IS NULL THEN
    RAISE EXCEPTION 'herald: % is not attached and has no one-column primary key to find row % by', p_table,
      quote_literal(p_key) USING ERRCODE = '22023';
  END IF;
  SELECT format_type(a.atttypid, a.atttypmod) INTO keytype
  FROM pg_attribute a WHERE a.attrelid = p_table AND a.attname = keycol;
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I = $1::%s)', p_table, keycol, keytype)
    INTO found_row USING p_key;
  IF NOT found_row THEN
    RAISE EXCEPTION 'herald: % has no row whose % is %', p_table, quote_ident(keycol), quote_literal(p_key)
      USING ERRCODE = '22023';
  END IF;
  INSERT INTO herald_inbox (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event,
                            snapshot, payload, run_at, created_at, updated_at)
  VALUES (auto.id, s, t, keycol, p_key, 'manual', '{}', p_payload, herald_now(), herald_now(), herald_now())
  RETURNING id INTO made;
  RETURN made;
END
$$;

-- Capture of the other row triggers: `update` of any of a named set of columns, `delete`,
-- and several `from` / `to` statuses in one trigger. The capture functions are generated as
-- schema 3 made them; a definition's trigger (its version's document) now decides what its
-- automation listens to, and the automation's columns do for the column form.

-- A trigger's list: NULL (absent), one string, or an array of strings.
CREATE FUNCTION herald_trigger_list(p_value jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE jsonb_typeof(p_value)
           WHEN 'string' THEN ARRAY[p_value #>> '{}']
           WHEN 'array' THEN ARRAY(SELECT jsonb_array_elements_text(p_value)) END
$$;

-- `expr = 'a'`, or `expr IN ('a', 'b')`, with the values quoted.
CREATE FUNCTION herald_in_list(p_expr text, p_values text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN cardinality(p_values) = 1 THEN format('%s = %L', p_expr, p_values[1])
              ELSE format('%s IN (%s)', p_expr, (SELECT string_agg(format('%L', v), ', ') FROM unnest(p_values) v)) END
$$;

-- (Re)creates the capture triggers of one attached table from its active automations: after
-- insert, after update (the status changed as a status_change automation listens for, or a
-- column an update automation names changed) and after delete, each calling a function
-- generated for the table, and each with a WHEN clause so that other changes never call
-- plpgsql. Identifiers are quoted with %I, values with %L. A deleted row's snapshot is also
-- its event's payload: the instance's data, as the row is gone. Returns how many automations
-- it compiled in.
CREATE OR REPLACE FUNCTION herald_compile(p_schema text, p_table text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  att       herald_attachments;
  tbl       regclass := to_regclass(format('%I.%I', p_schema, p_table));
  -- Herald's own schema: the generated functions live there and name it.
  hs        text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = 'herald_inbox'::regclass);
  inbox     text := format('%I.herald_inbox', hs);
  nowfn     text := 'herald_now()'::regprocedure::text;
  op        text;
  a         record;
  status_w  text[];  -- WHEN parts of status_change automations (the status changed, implied)
  other_w   text[];  -- WHEN parts of the others
  blocks    text;
  cond      text;
  w         text;
  fn        text;
  rec       text;
  by_column boolean;
  wake      text := CASE WHEN (SELECT notify FROM herald_settings) THEN '
  PERFORM pg_notify(''herald_inbox'', '''');' ELSE '' END;
  made      integer := 0;
BEGIN
  IF tbl IS NULL THEN
    RETURN 0;  -- the table is gone; nothing to compile
  END IF;
  PERFORM herald_uncompile(tbl);
  SELECT * INTO att FROM herald_attachments WHERE table_schema = p_schema AND table_name = p_table;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
    status_w := '{}';
    other_w := '{}';
    blocks := '';
    rec := CASE op WHEN 'delete' THEN 'OLD' ELSE 'NEW' END;
    -- Whether status_change blocks must test the change themselves (an update automation
    -- shares their trigger, whose WHEN then does not imply it).
    by_column := op = 'update' AND EXISTS (
      SELECT 1 FROM automations WHERE is_active AND source_schema = p_schema AND source_table = p_table
        AND trigger_event = 'update');
    FOR a IN
      SELECT au.id, au.trigger_event AS ev,
             herald_trigger_list(CASE WHEN v.definition IS NOT NULL THEN v.definition #> '{trigger,from}'
                                      ELSE to_jsonb(au.from_status) END) AS froms,
             herald_trigger_list(CASE WHEN v.definition IS NOT NULL THEN v.definition #> '{trigger,to}'
                                      ELSE to_jsonb(au.to_status) END) AS tos,
             herald_trigger_list(v.definition #> '{trigger,columns}') AS cols
      FROM automations au
      LEFT JOIN automation_versions v ON v.automation_id = au.id AND v.version = au.version
      WHERE au.is_active AND au.source_schema = p_schema AND au.source_table = p_table
        AND au.trigger_event = ANY (CASE op WHEN 'insert' THEN ARRAY['insert']
                                            WHEN 'update' THEN ARRAY['status_change', 'update']
                                            ELSE ARRAY['delete'] END)
      ORDER BY au.id
    LOOP
      -- The WHEN clause tests the row; the function tests its variables.
      IF a.ev = 'update' THEN
        w := '(' || (SELECT string_agg(format('OLD.%I IS DISTINCT FROM NEW.%I', c, c), ' OR ') FROM unnest(a.cols) c) || ')';
        cond := w;
        other_w := other_w || w;
      ELSE
        w := concat_ws(' AND ',
          CASE WHEN a.froms IS NOT NULL THEN herald_in_list(format('OLD.%I::text', att.status_column), a.froms) END,
          CASE WHEN a.tos IS NOT NULL THEN herald_in_list(format('NEW.%I::text', att.status_column), a.tos) END);
        cond := concat_ws(' AND ',
          CASE WHEN by_column AND a.ev = 'status_change' THEN 'old_s IS DISTINCT FROM new_s' END,
          CASE WHEN a.froms IS NOT NULL THEN herald_in_list('old_s', a.froms) END,
          CASE WHEN a.tos IS NOT NULL THEN herald_in_list('new_s', a.tos) END);
        IF a.ev = 'status_change' THEN
          status_w := status_w || coalesce(nullif(w, ''), 'true');
        ELSE
          other_w := other_w || coalesce(nullif(w, ''), 'true');
        END IF;
      END IF;
      blocks := blocks || format('
  IF %s THEN
    INSERT INTO %s (automation_id, subject_schema, subject_table, subject_key_column, subject_id,
      event, old_status, new_status, snapshot, payload, run_at, created_at, updated_at)
    VALUES (%s, TG_TABLE_SCHEMA, TG_TABLE_NAME, %L, subject, %L, old_s, new_s, snap, %s, ts, ts, ts);
  END IF;',
        coalesce(nullif(cond, ''), 'true'), inbox, a.id, att.key_column, a.ev,
        CASE op WHEN 'delete' THEN 'snap' ELSE 'NULL' END);
      made := made + 1;
    END LOOP;
    CONTINUE WHEN cardinality(status_w) + cardinality(other_w) = 0;
    fn := format('%I.%I', hs, format('herald_cap_%s_%s', tbl::oid, op));
    EXECUTE format('CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  ts timestamptz := %s;
  snap jsonb := to_jsonb(%s);
  subject text := %s.%I::text;
  new_s text := %s;
  old_s text := %s;
BEGIN
  IF subject IS NULL THEN
    RAISE EXCEPTION ''herald: key column "%%" of %%.%% is NULL'', %L, TG_TABLE_SCHEMA, TG_TABLE_NAME;
  END IF;%s%s
  RETURN NULL;
END
$f$',
      fn, nowfn, rec, rec, att.key_column,
      CASE op WHEN 'delete' THEN 'NULL' ELSE format('NEW.%I::text', att.status_column) END,
      CASE op WHEN 'insert' THEN 'NULL' ELSE format('OLD.%I::text', att.status_column) END,
      att.key_column, blocks, wake);
    -- The WHEN clause: any automation's test (status_change ones under the status changing).
    IF cardinality(status_w) > 0 THEN
      w := format('OLD.%I IS DISTINCT FROM NEW.%I', att.status_column, att.status_column);
      IF NOT 'true' = ANY (status_w) THEN
        w := w || format(' AND (%s)', array_to_string(status_w, ' OR '));
      END IF;
      other_w := ('(' || w || ')') || other_w;
    END IF;
    w := CASE WHEN 'true' = ANY (other_w) THEN 'true' ELSE array_to_string(other_w, ' OR ') END;
    EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION %s()',
                   'herald_capture_' || op, upper(op), tbl, w, fn);
  END LOOP;
  RETURN made;
END
$$;

-- Every trigger type of a definition; automations started by hand or by a label's change
-- capture nothing from their table.
ALTER TABLE automations
  DROP CONSTRAINT automations_trigger_event_check,
  ADD CONSTRAINT automations_trigger_event_check CHECK (trigger_event IN
    ('status_change', 'insert', 'update', 'delete', 'manual', 'tag_added', 'tag_removed', 'segment_joined',
     'segment_left'));

-- Every attached table gets its triggers from the function above.
SELECT herald_compile(table_schema, table_name) FROM herald_attachments;
