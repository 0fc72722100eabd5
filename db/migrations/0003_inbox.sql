-- Herald schema 3: capture through an inbox.
--
-- The capture trigger used to match automations, open suppression windows and write
-- ledger rows inside every status-changing UPDATE. Now:
--   * each attached table gets a capture function of its own, generated from its active
--     automations (herald_compile): column names and each automation's statuses are
--     compiled in, so the trigger makes no reads; the statuses that any automation listens
--     to are also in the trigger's WHEN clause, so other changes never call plpgsql;
--   * the trigger appends one row per matching automation (table, key, old and new status,
--     the row as jsonb, time) to herald_inbox, in the same transaction as the change;
--   * herald_ingest(), run by the scheduler before it claims, moves the inbox to the ledger
--     in bulk: suppression windows and ledger rows are made set-based, serialized by a lock.
-- herald_inbox inherits from automation_execution_logs, so a plain
-- `SELECT count(*) FROM automation_execution_logs WHERE status = 'pending'` still counts
-- events that wait in the inbox. Herald's own statements read the ledger with ONLY.

-- The ledger's CHECK constraints stay on the ledger (NO INHERIT): inbox rows are written by
-- the capture functions only, and every check costs the writer of the watched table.
ALTER TABLE automation_execution_logs
  DROP CONSTRAINT automation_execution_logs_status_check,
  DROP CONSTRAINT automation_execution_logs_error_kind_check,
  DROP CONSTRAINT logs_suppressed_has_holder;
ALTER TABLE automation_execution_logs
  ADD CONSTRAINT automation_execution_logs_status_check CHECK
    (status IN ('pending', 'queued', 'running', 'sent', 'failed', 'dead', 'unknown', 'cancelled', 'suppressed')) NO INHERIT,
  ADD CONSTRAINT automation_execution_logs_error_kind_check CHECK (error_kind IN ('permanent', 'transient')) NO INHERIT,
  ADD CONSTRAINT logs_suppressed_has_holder CHECK ((status = 'suppressed') = (suppressed_by IS NOT NULL)) NO INHERIT;

CREATE TABLE herald_inbox () INHERITS (automation_execution_logs);
-- Inbox rows keep their id when they move to the ledger.
DO $$
BEGIN
  EXECUTE format('ALTER TABLE herald_inbox ALTER COLUMN id SET DEFAULT nextval(%L::regclass)',
                 pg_get_serial_sequence('automation_execution_logs', 'id'));
END
$$;
COMMENT ON TABLE herald_inbox IS
  'Captured events not yet moved to the ledger by herald_ingest(); rows live here until the next scheduler run.';

-- The tables Herald is attached to.
CREATE TABLE herald_attachments (
  table_schema  text NOT NULL,
  table_name    text NOT NULL,
  status_column text NOT NULL,
  key_column    text NOT NULL,
  PRIMARY KEY (table_schema, table_name)
);

-- Settings of the capture functions. `notify`: low-latency mode, where each capture also
-- sends NOTIFY herald_inbox so that a waiting scheduler drains at once (set it with
-- herald_low_latency; it costs the watched table's writers a little, see the README).
CREATE TABLE herald_settings (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  notify   boolean NOT NULL DEFAULT false
);
INSERT INTO herald_settings DEFAULT VALUES;

-- Drops Herald's capture triggers from a table, and the functions generated for them
-- (schema 1's generic herald_capture() stays until the end of this migration).
CREATE FUNCTION herald_uncompile(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  t record;
BEGIN
  FOR t IN
    SELECT tg.tgname, p.oid::regprocedure AS fn, p.proname LIKE 'herald\_cap\_%' AS generated
    FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
    WHERE tg.tgrelid = tbl AND (p.proname LIKE 'herald\_cap\_%' OR p.proname = 'herald_capture')
  LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, tbl);
    IF t.generated THEN
      EXECUTE format('DROP FUNCTION IF EXISTS %s', t.fn);
    END IF;
  END LOOP;
END
$$;

-- (Re)creates the capture triggers of one attached table from its active automations:
-- one after update (when the status changed to what some automation listens to) and one
-- after insert, each calling a function generated for the table. Identifiers are quoted
-- with %I and statuses with %L. Returns how many automations it compiled in.
CREATE FUNCTION herald_compile(p_schema text, p_table text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  att     herald_attachments;
  tbl     regclass := to_regclass(format('%I.%I', p_schema, p_table));
  -- Herald's own schema: the generated functions live there and name it.
  hs      text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.oid = 'herald_inbox'::regclass);
  inbox   text := format('%I.herald_inbox', hs);
  nowfn   text := 'herald_now()'::regprocedure::text;
  ev      text;
  a       record;
  conds   text[];
  blocks  text;
  cond    text;
  fn      text;
  wake    text := CASE WHEN (SELECT notify FROM herald_settings) THEN '
  PERFORM pg_notify(''herald_inbox'', '''');' ELSE '' END;
  made    integer := 0;
BEGIN
  IF tbl IS NULL THEN
    RETURN 0;  -- the table is gone; nothing to compile
  END IF;
  PERFORM herald_uncompile(tbl);
  SELECT * INTO att FROM herald_attachments WHERE table_schema = p_schema AND table_name = p_table;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOREACH ev IN ARRAY ARRAY['status_change', 'insert'] LOOP
    conds := '{}';
    blocks := '';
    FOR a IN
      SELECT id, from_status, to_status FROM automations
      WHERE is_active AND source_schema = p_schema AND source_table = p_table AND trigger_event = ev
      ORDER BY id
    LOOP
      -- The WHEN clause tests the row; the function tests its variables.
      cond := concat_ws(' AND ',
        CASE WHEN a.from_status IS NOT NULL THEN format('OLD.%I::text = %L', att.status_column, a.from_status) END,
        CASE WHEN a.to_status IS NOT NULL THEN format('NEW.%I::text = %L', att.status_column, a.to_status) END);
      conds := conds || coalesce(nullif(cond, ''), 'true');
      cond := concat_ws(' AND ',
        CASE WHEN a.from_status IS NOT NULL THEN format('old_s = %L', a.from_status) END,
        CASE WHEN a.to_status IS NOT NULL THEN format('new_s = %L', a.to_status) END);
      blocks := blocks || format('
  IF %s THEN
    INSERT INTO %s (automation_id, subject_schema, subject_table, subject_key_column, subject_id,
      event, old_status, new_status, snapshot, run_at, created_at, updated_at)
    VALUES (%s, TG_TABLE_SCHEMA, TG_TABLE_NAME, %L, subject, %L, old_s, new_s, snap, ts, ts, ts);
  END IF;',
        coalesce(nullif(cond, ''), 'true'), inbox, a.id, att.key_column, ev);
      made := made + 1;
    END LOOP;
    CONTINUE WHEN cardinality(conds) = 0;
    fn := format('%I.%I', hs, format('herald_cap_%s_%s', tbl::oid, CASE ev WHEN 'insert' THEN 'insert' ELSE 'update' END));
    EXECUTE format('CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
  ts timestamptz := %s;
  snap jsonb := to_jsonb(NEW);
  subject text := NEW.%I::text;
  new_s text := NEW.%I::text;
  old_s text := %s;
BEGIN
  IF subject IS NULL THEN
    RAISE EXCEPTION ''herald: key column "%%" of %%.%% is NULL'', %L, TG_TABLE_SCHEMA, TG_TABLE_NAME;
  END IF;%s%s
  RETURN NULL;
END
$f$',
      fn, nowfn, att.key_column, att.status_column,
      CASE ev WHEN 'insert' THEN 'NULL' ELSE format('OLD.%I::text', att.status_column) END,
      att.key_column, blocks, wake);
    IF ev = 'insert' THEN
      cond := CASE WHEN 'true' = ANY (conds) THEN 'true' ELSE array_to_string(conds, ' OR ') END;
      EXECUTE format('CREATE TRIGGER herald_capture_insert AFTER INSERT ON %s FOR EACH ROW WHEN (%s) '
                     'EXECUTE FUNCTION %s()', tbl, cond, fn);
    ELSE
      cond := format('OLD.%I IS DISTINCT FROM NEW.%I', att.status_column, att.status_column);
      IF NOT 'true' = ANY (conds) THEN
        cond := cond || format(' AND (%s)', array_to_string(conds, ' OR '));
      END IF;
      EXECUTE format('CREATE TRIGGER herald_capture_update AFTER UPDATE ON %s FOR EACH ROW WHEN (%s) '
                     'EXECUTE FUNCTION %s()', tbl, cond, fn);
    END IF;
  END LOOP;
  RETURN made;
END
$$;

-- Attach Herald to a table: SELECT herald_attach('public.jobs', 'status', 'id');
-- Postgres calls the capture function only when the status changed to (and from) what an
-- active automation listens to, so other updates cost nothing. Changing automations
-- re-creates the triggers of their tables.
CREATE OR REPLACE FUNCTION herald_attach(tbl regclass, status_column text, key_column text DEFAULT 'id')
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
  SELECT n.nspname, c.relname INTO sch, rel
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
  INSERT INTO herald_attachments (table_schema, table_name, status_column, key_column)
  VALUES (sch, rel, status_column, key_column)
  ON CONFLICT (table_schema, table_name) DO UPDATE
    SET status_column = excluded.status_column, key_column = excluded.key_column;
  PERFORM herald_compile(sch, rel);
END
$$;

-- Low-latency mode on or off: SELECT herald_low_latency(true). Recompiles every attached
-- table's capture function (run it as their owner, like herald_attach).
CREATE FUNCTION herald_low_latency(p_on boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE herald_settings SET notify = p_on;
  PERFORM herald_compile(table_schema, table_name) FROM herald_attachments;
END
$$;

CREATE OR REPLACE FUNCTION herald_detach(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM herald_attachments a
  USING pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = tbl AND a.table_schema = n.nspname AND a.table_name = c.relname;
  PERFORM herald_uncompile(tbl);
END
$$;

-- When automations change, the tables whose matching rules changed get new triggers.
CREATE FUNCTION herald_automations_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  t record;
BEGIN
  IF TG_OP = 'INSERT' THEN
    FOR t IN SELECT DISTINCT source_schema, source_table FROM new_rows LOOP
      PERFORM herald_compile(t.source_schema, t.source_table);
    END LOOP;
  ELSIF TG_OP = 'DELETE' THEN
    FOR t IN SELECT DISTINCT source_schema, source_table FROM old_rows LOOP
      PERFORM herald_compile(t.source_schema, t.source_table);
    END LOOP;
  ELSE
    FOR t IN
      SELECT DISTINCT source_schema, source_table FROM (
        (SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM new_rows
         EXCEPT SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM old_rows)
        UNION ALL
        (SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM old_rows
         EXCEPT SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM new_rows)
      ) changed
    LOOP
      PERFORM herald_compile(t.source_schema, t.source_table);
    END LOOP;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER herald_automations_inserted AFTER INSERT ON automations
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_automations_changed();
CREATE TRIGGER herald_automations_updated AFTER UPDATE ON automations
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_automations_changed();
CREATE TRIGGER herald_automations_deleted AFTER DELETE ON automations
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_automations_changed();

-- Tables attached before this migration: record them and give them the new triggers.
INSERT INTO herald_attachments (table_schema, table_name, status_column, key_column)
SELECT n.nspname, c.relname, args[1], args[2]
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (SELECT string_to_array(encode(t.tgargs, 'escape'), '\000') AS args) a
WHERE t.tgname = 'herald_capture_update' AND t.tgfoid = 'herald_capture()'::regprocedure;
SELECT herald_compile(table_schema, table_name) FROM herald_attachments;
DROP FUNCTION herald_capture();

-- Moves up to p_limit events (all when NULL) from the inbox to the ledger: one log each,
-- pending, or suppressed inside an open window of its automation and row. Serialized by a
-- transaction lock, so windows are decided by one session at a time, in event order.
-- Returns how many events it moved. SECURITY DEFINER: the scheduler's role runs it without
-- rights of its own on snapshots and windows (see db/roles.sql).
CREATE FUNCTION herald_ingest(p_limit integer DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  batch  herald_inbox[];
  placed integer;
  r      record;
  holder bigint;
BEGIN
  -- The migration runner's key ("herald" in ASCII) plus one.
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

  -- Every event that opened a window is pending; every event inside a window is suppressed.
  INSERT INTO automation_execution_logs
    (id, automation_id, subject_schema, subject_table, subject_key_column, subject_id,
     event, old_status, new_status, snapshot, status, suppressed_by, run_at,
     created_at, completed_at, updated_at)
  SELECT b.id, b.automation_id, b.subject_schema, b.subject_table, b.subject_key_column, b.subject_id,
         b.event, b.old_status, b.new_status, b.snapshot,
         CASE WHEN w.log_id = b.id THEN 'pending' ELSE 'suppressed' END,
         CASE WHEN w.log_id = b.id THEN NULL ELSE w.log_id END,
         b.run_at, b.created_at,
         CASE WHEN w.log_id = b.id THEN NULL ELSE b.created_at END,
         b.updated_at
  FROM unnest(batch) b
  JOIN automation_suppression_windows w
    ON w.automation_id = b.automation_id AND w.subject_schema = b.subject_schema
   AND w.subject_table = b.subject_table AND w.subject_id = b.subject_id
  WHERE w.log_id = b.id OR b.created_at < w.closes_at;
  GET DIAGNOSTICS placed = ROW_COUNT;

  -- The rest came after their row's window closed (a short window, or a long backlog):
  -- decided one at a time, in order, each opening the next window or falling inside it.
  IF placed < cardinality(batch) THEN
    FOR r IN
      SELECT b.*, coalesce(a.suppression_window, interval '0') AS win
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
         event, old_status, new_status, snapshot, status, suppressed_by, run_at,
         created_at, completed_at, updated_at)
      VALUES
        (r.id, r.automation_id, r.subject_schema, r.subject_table, r.subject_key_column, r.subject_id,
         r.event, r.old_status, r.new_status, r.snapshot,
         CASE WHEN holder IS NULL THEN 'pending' ELSE 'suppressed' END, holder, r.run_at,
         r.created_at, CASE WHEN holder IS NULL THEN NULL ELSE r.created_at END, r.updated_at);
    END LOOP;
  END IF;
  RETURN cardinality(batch);
END
$$;
REVOKE EXECUTE ON FUNCTION herald_ingest(integer) FROM PUBLIC;

-- Herald's own statements below read and change the ledger only (ONLY), never the inbox.
-- herald_context used to compare the key as text (`key::text = $1`), which no index serves:
-- every message read its whole context relation. It casts the subject's key to the key
-- column's own type, so the relation's index on that column finds the row.
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

CREATE OR REPLACE FUNCTION herald_rescue(p_now timestamptz)
RETURNS TABLE (requeued integer, retried integer, dead integer, unknown integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  l        record;
  holds    text[];
  last     boolean;
BEGIN
  requeued := 0; retried := 0; dead := 0; unknown := 0;

  WITH lost AS (
    UPDATE ONLY automation_execution_logs
    SET status = 'pending', run_at = p_now, lease_token = NULL, lease_expires_at = NULL,
        queued_at = NULL, updated_at = p_now
    WHERE status = 'queued' AND lease_expires_at < p_now
    RETURNING 1
  )
  SELECT count(*) INTO requeued FROM lost;

  FOR l IN
    SELECT g.id, g.attempts, a.max_attempts, a.retry_base, a.retry_cap, a.email_on_unknown, a.sms_on_unknown
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.status = 'running' AND g.lease_expires_at < p_now
    FOR UPDATE OF g SKIP LOCKED
  LOOP
    -- Sends that were in flight: their outcome is unknown.
    WITH inflight AS (
      UPDATE automation_deliveries
      SET status = 'unknown', completed_at = p_now,
          error = 'the executor lost its lease while this send was in flight'
      WHERE log_id = l.id AND status = 'sending'
      RETURNING channel
    )
    SELECT coalesce(array_agg(channel) FILTER (WHERE
             (channel = 'email' AND coalesce(l.email_on_unknown, 'hold') = 'hold') OR
             (channel = 'sms' AND coalesce(l.sms_on_unknown, 'hold') = 'hold')), '{}')
    INTO holds
    FROM inflight;

    IF cardinality(holds) > 0 THEN
      UPDATE ONLY automation_execution_logs
      SET status = 'unknown', lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = format('outcome unknown for %s: the executor vanished during the send', array_to_string(holds, ', ')),
          error_kind = 'transient', error_code = 'OutcomeUnknown'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'unknown', finished_at = p_now,
             error = 'the executor vanished during the send'
      WHERE log_id = l.id AND attempt = l.attempts;
      unknown := unknown + 1;
    ELSE
      -- Retried after a backoff, or dead when that was the last attempt.
      last := l.attempts >= coalesce(l.max_attempts, 1);
      UPDATE ONLY automation_execution_logs
      SET status = CASE WHEN last THEN 'dead' ELSE 'pending' END,
          run_at = CASE WHEN last THEN run_at ELSE p_now + herald_backoff(l.attempts, l.retry_base, l.retry_cap) END,
          completed_at = CASE WHEN last THEN p_now END,
          lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = CASE WHEN last THEN 'the executor vanished (lease expired) on the last attempt'
                       ELSE 'the executor vanished (lease expired); retrying' END,
          error_kind = 'transient', error_code = 'LeaseExpired'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'lease_expired', finished_at = p_now
      WHERE log_id = l.id AND attempt = l.attempts;
      IF last THEN
        dead := dead + 1;
      ELSE
        retried := retried + 1;
      END IF;
    END IF;
  END LOOP;
  RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION herald_retry(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE ONLY automation_execution_logs
  SET status = 'pending', run_at = herald_now(), updated_at = herald_now(), completed_at = NULL,
      lease_token = NULL, lease_expires_at = NULL
  WHERE id = p_log_id AND status IN ('dead', 'failed', 'unknown');
  RETURN FOUND;
END
$$;

-- Operator: cancel a log that has not been sent: pending (in the ledger or still in the
-- inbox), queued (its message will be skipped), or unknown. Returns whether it did.
CREATE OR REPLACE FUNCTION herald_cancel(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM herald_inbox WHERE id = p_log_id) THEN
    PERFORM herald_ingest();
  END IF;
  UPDATE ONLY automation_execution_logs
  SET status = 'cancelled', updated_at = herald_now(), completed_at = herald_now(),
      lease_token = NULL, lease_expires_at = NULL
  WHERE id = p_log_id AND status IN ('pending', 'queued', 'unknown');
  RETURN FOUND;
END
$$;
