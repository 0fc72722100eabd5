-- Claims: moving captured events into the ledger, backoff and rescuing expired leases.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- Scheduler: moves captured events from the inbox to the ledger, applying suppression
-- windows; an event of a paused automation is recorded as paused (held, never dropped).
-- Returns how many it moved, and how many of those it recorded as suppressed.
CREATE OR REPLACE FUNCTION herald_ingest_counted(p_limit integer DEFAULT NULL)
RETURNS TABLE (moved integer, suppressed integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  batch  herald_inbox[];
  placed integer;
  held   integer := 0;
  r      record;
  holder bigint;
  deepest integer := (SELECT cascade_limit FROM herald_settings);
  n_moved integer;
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
    RETURN QUERY SELECT 0, 0;
    RETURN;
  END IF;
  n_moved := cardinality(batch);

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
  GET DIAGNOSTICS held = ROW_COUNT;
  IF held > 0 THEN
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
  WITH placed_logs AS (
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
  WHERE w.log_id = b.id OR b.created_at < w.closes_at
  RETURNING status
  )
  SELECT count(*), held + count(*) FILTER (WHERE status = 'suppressed') INTO placed, held FROM placed_logs;

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
      held := held + (holder IS NOT NULL)::integer;
    END LOOP;
  END IF;
  RETURN QUERY SELECT n_moved, held;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_ingest_counted(integer) FROM PUBLIC;

-- herald_ingest_counted's count of events moved, for operators and the other functions.
CREATE OR REPLACE FUNCTION herald_ingest(p_limit integer DEFAULT NULL) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
  SELECT moved FROM herald_ingest_counted(p_limit)
$$;
REVOKE EXECUTE ON FUNCTION herald_ingest(integer) FROM PUBLIC;

-- The delay before attempt n+1: exponential backoff with full jitter.
CREATE OR REPLACE FUNCTION herald_backoff(attempts integer, base interval, cap interval) RETURNS interval
LANGUAGE sql VOLATILE AS $$
  SELECT least(cap, base * power(2, least(greatest(attempts - 1, 0), 30))) * random()
$$;

-- Scheduler: logs whose lease ran out. A queued one (its message was never run) goes back to
-- pending as it was. A running one goes back to pending at once and resumes from its place;
-- the claim that takes it finds any effect whose end was never recorded and holds it as
-- unknown, or sends it again, by its step's policy.
CREATE OR REPLACE FUNCTION herald_rescue(p_now timestamptz)
RETURNS TABLE (requeued integer, resumed integer)
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
  WITH lost AS (
    UPDATE ONLY automation_execution_logs
    SET status = 'pending', run_at = p_now, lease_token = NULL, lease_expires_at = NULL,
        queued_at = NULL, updated_at = p_now
    WHERE status = 'queued' AND lease_expires_at < p_now
    RETURNING 1
  ), expired AS (
    -- (An instance locked by an executor's write is left for the next run.)
    SELECT id FROM ONLY automation_execution_logs
    WHERE status = 'running' AND lease_expires_at < p_now
    FOR UPDATE SKIP LOCKED
  ), vanished AS (
    UPDATE ONLY automation_execution_logs g
    SET status = 'pending', run_at = p_now, lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
        error = 'the executor vanished (lease expired); resuming', error_kind = 'transient', error_code = 'LeaseExpired'
    FROM expired e
    WHERE g.id = e.id
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM lost)::integer, (SELECT count(*) FROM vanished)::integer
$$;
REVOKE EXECUTE ON FUNCTION herald_rescue(timestamptz) FROM PUBLIC;
