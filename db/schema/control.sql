-- Operators' controls: pause, resume, cancel, retry and manual starts.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- What a running instance's hold makes of a stop at a step boundary: NULL when it parks as
-- it asked (`p_want`), else the status it parks in instead. An instance to be cancelled
-- whose last effect's outcome is unknown is cancelled: nobody will resend it.
CREATE OR REPLACE FUNCTION herald_held_status(p_want text, p_hold text, p_paused boolean) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_hold = 'cancel' AND p_want IN ('pending', 'waiting', 'unknown') THEN 'cancelled'
              WHEN p_want NOT IN ('pending', 'waiting') THEN NULL
              WHEN p_hold = 'instance' OR p_paused THEN 'paused' END
$$;

-- Operator: pause an automation. Its events are still recorded, as paused logs; its pending,
-- queued and waiting logs are held (a queued log's message is skipped); its running
-- instances stop at their next step. Returns how many logs it held now.
CREATE OR REPLACE FUNCTION herald_pause(p_automation text) RETURNS integer
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
CREATE OR REPLACE FUNCTION herald_resume(p_automation text) RETURNS integer
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
CREATE OR REPLACE FUNCTION herald_pause_instance(p_log_id bigint) RETURNS boolean
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
    AND status IN ('pending', 'queued', 'waiting', 'paused', 'running');
  RETURN FOUND;
END
$$;

-- Operator: resume one paused log or instance; it stays held while its automation is paused.
CREATE OR REPLACE FUNCTION herald_resume_instance(p_log_id bigint) RETURNS boolean
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
    AND status IN ('pending', 'queued', 'waiting', 'paused', 'unknown', 'running');
  RETURN FOUND;
END
$$;

-- Operator: cancel every open log and instance of one subject row, as herald_cancel does
-- each: herald_cancel_for('public.bookings', '42'). Returns how many.
CREATE OR REPLACE FUNCTION herald_cancel_for(p_table regclass, p_subject_id text) RETURNS integer
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
    AND status IN ('pending', 'queued', 'waiting', 'paused', 'unknown', 'running');
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;

-- Operators: runs a failed, dead or unknown instance again from the step it stopped at; the
-- step's next run counts its attempt on from the instance's.
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

-- Starts an instance of an automation whose trigger is `manual`, for one row:
--   SELECT herald_start('welcome-series', 'public.members', '42', '{"source": "signup form"}');
-- The row is found by the table's attached key column, else its one-column primary key;
-- templates and conditions see the payload (a JSON object) as `payload`. The start is an event
-- like a captured one: recorded now, in this transaction, and subject to the automation's
-- suppression window. Returns the instance's log id.
CREATE OR REPLACE FUNCTION herald_start(p_automation text, p_table regclass, p_key text, p_payload jsonb DEFAULT '{}')
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

-- Operator: moves the instances of automation p_name that hold another version and are not
-- mid-run (pending after an attempt, waiting, or paused) to version p_to, each at the step
-- it stands at. Every one of them moves, or none: an instance whose step id version p_to
-- does not have refuses the move (SQLSTATE 22023), listing each such step and its
-- instances. Instances mid-run (queued, running) are left on their version; `in_flight`
-- counts them, so the operator can move them once they park. Returns how many moved.
CREATE OR REPLACE FUNCTION herald_migrate_instances(p_name text, p_to integer)
RETURNS TABLE (moved integer, in_flight integer)
LANGUAGE plpgsql AS $$
DECLARE
  auto_id  bigint;
  target   jsonb;
  missing  text;
  n        integer;
BEGIN
  SELECT a.id INTO auto_id FROM automations a WHERE a.name = p_name;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'herald: no automation is named %', quote_literal(p_name) USING ERRCODE = '42704';
  END IF;
  SELECT v.definition INTO target FROM automation_versions v WHERE v.automation_id = auto_id AND v.version = p_to;
  IF target IS NULL THEN
    RAISE EXCEPTION 'herald: automation % has no version %', quote_literal(p_name), p_to USING ERRCODE = '22023';
  END IF;
  -- The instances to move, locked so no claim takes one while it moves (claims skip locked rows).
  CREATE TEMP TABLE IF NOT EXISTS herald_moving (id bigint, next_step text) ON COMMIT DROP;
  TRUNCATE herald_moving;
  INSERT INTO herald_moving
  SELECT l.id, l.next_step FROM ONLY automation_execution_logs l
  WHERE l.automation_id = auto_id AND l.version IS NOT NULL AND l.version <> p_to
    AND l.status IN ('pending', 'waiting', 'paused')
  FOR UPDATE;
  -- Every step id of the target version, branches' steps included.
  SELECT string_agg(format('step `%s`: %s instance(s) (%s)', m.next_step, m.n, m.ids), E'\n' ORDER BY m.next_step)
  INTO missing
  FROM (SELECT next_step, count(*) AS n,
               array_to_string((array_agg(id ORDER BY id))[1:10], ', ') || CASE WHEN count(*) > 10 THEN ', …' ELSE '' END AS ids
        FROM herald_moving
        WHERE next_step IS NOT NULL
          AND NOT jsonb_path_exists(target, 'strict $.steps.** ? (@.type() == "object" && @.id == $s)',
                                    jsonb_build_object('s', next_step))
        GROUP BY next_step) m;
  IF missing IS NOT NULL THEN
    RAISE EXCEPTION 'herald: instances of % cannot move to version %: it has no step they stand at', quote_literal(p_name), p_to
      USING ERRCODE = '22023', DETAIL = missing;
  END IF;
  UPDATE ONLY automation_execution_logs l SET version = p_to, updated_at = herald_now()
  FROM herald_moving m WHERE l.id = m.id;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN QUERY SELECT n, (SELECT count(*)::integer FROM ONLY automation_execution_logs l
                          WHERE l.automation_id = auto_id AND l.version IS NOT NULL AND l.version <> p_to
                            AND l.status IN ('queued', 'running'));
END
$$;
