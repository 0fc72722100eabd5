-- Receipts: results an executor could not write back when it made them, applied later
-- by the scheduler, fenced by lease as the direct write-backs are.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- Write-backs that outlive a database outage.
--
-- The executor's write-back becomes a function, so that the scheduler can apply receipts
-- (write-backs the executor could not make before its time ran out, kept in an SQS queue)
-- through the same statement without rights of its own on deliveries and attempts.
-- Running it again with the same entries and the same time gives the same answer: a
-- write-back whose commit reached the database but whose reply was lost is retried, and
-- what it already recorded (same time, same values, same lease) counts as written.
-- One write-back for a batch, each entry only while its lease holds:
--   providers' answers (f_*: log, lease, channel, 'sent' or 'failed', message id, error),
--   deliveries about to be sent (s_*: log, lease, channel, recipient),
--   attempts' results (r_*: log, lease, 'sent', 'failed' or 'retry', error, kind, code; a
--   retry is scheduled with backoff, or the log is dead when it has no attempts left),
-- at p_now. Returns what was written: ('finished' | 'started' | 'result', the entry's
-- position from 1, the log's new status for results). An entry not returned lost its lease.
CREATE OR REPLACE FUNCTION herald_write_back(
  f_log bigint[], f_lease bigint[], f_channel text[], f_status text[], f_message_id text[], f_error text[],
  s_log bigint[], s_lease bigint[], s_channel text[], s_recipient text[],
  r_log bigint[], r_lease bigint[], r_outcome text[], r_error text[], r_kind text[], r_code text[],
  p_now timestamptz)
RETURNS TABLE (part text, ord bigint, status text)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH fin AS (
    SELECT * FROM unnest(f_log, f_lease, f_channel, f_status, f_message_id, f_error)
      WITH ORDINALITY AS f(log_id, lease, channel, status, message_id, error, ord)
  ), finished AS (
    UPDATE automation_deliveries d
    SET status = f.status, provider_message_id = f.message_id, error = f.error, completed_at = p_now
    FROM fin f, ONLY automation_execution_logs l
    WHERE d.log_id = f.log_id AND d.channel = f.channel AND l.id = f.log_id
      AND ((l.status = 'running' AND l.lease_token = f.lease)
           OR (d.completed_at = p_now AND d.status = f.status
               AND d.provider_message_id IS NOT DISTINCT FROM f.message_id))
    RETURNING f.ord
  ), st AS (
    SELECT * FROM unnest(s_log, s_lease, s_channel, s_recipient)
      WITH ORDINALITY AS s(log_id, lease, channel, recipient, ord)
  ), started AS (
    INSERT INTO automation_deliveries AS d (log_id, channel, recipient, status, started_at)
    SELECT s.log_id, s.channel, s.recipient, 'sending', p_now
    FROM st s JOIN ONLY automation_execution_logs l
      ON l.id = s.log_id AND l.status = 'running' AND l.lease_token = s.lease
    ON CONFLICT (log_id, channel) DO UPDATE
    SET recipient = excluded.recipient, status = 'sending', provider_message_id = NULL,
        error = NULL, started_at = excluded.started_at, completed_at = NULL
    RETURNING d.log_id, d.channel
  ), res AS (
    SELECT * FROM unnest(r_log, r_lease, r_outcome, r_error, r_kind, r_code)
      WITH ORDINALITY AS r(log_id, lease, outcome, error, kind, code, ord)
  ), log AS (
    SELECT l.id, l.attempts, r.outcome, r.error, r.kind, r.code, r.ord, a.max_attempts, a.retry_base, a.retry_cap
    FROM res r
    JOIN ONLY automation_execution_logs l ON l.id = r.log_id AND l.status = 'running' AND l.lease_token = r.lease
    LEFT JOIN automations a ON a.id = l.automation_id
    FOR UPDATE OF l
  ), decided AS (
    SELECT log.*,
           CASE WHEN outcome <> 'retry' THEN outcome
                WHEN attempts >= coalesce(max_attempts, 1) THEN 'dead'
                ELSE 'pending' END AS new_status,
           herald_backoff(attempts, coalesce(retry_base, interval '30 seconds'), coalesce(retry_cap, interval '1 hour')) AS delay
    FROM log
  ), updated AS (
    UPDATE ONLY automation_execution_logs g
    SET status = d.new_status, error = d.error, error_kind = d.kind, error_code = d.code,
        run_at = CASE WHEN d.new_status = 'pending' THEN p_now + d.delay ELSE g.run_at END,
        completed_at = CASE WHEN d.new_status IN ('sent', 'failed', 'dead') THEN p_now END,
        lease_token = NULL, lease_expires_at = NULL, updated_at = p_now
    FROM decided d
    WHERE g.id = d.id
    RETURNING g.id, g.status, g.attempts, d.ord, d.error, d.kind, d.code
  ), replayed AS (
    -- Results this same write-back recorded before: the attempt of that lease ended at p_now.
    SELECT r.ord, CASE t.outcome WHEN 'retry' THEN 'pending' ELSE t.outcome END AS status
    FROM res r
    JOIN automation_attempts t ON t.log_id = r.log_id AND t.lease_token = r.lease
    WHERE t.finished_at = p_now
      AND (t.outcome = r.outcome OR (r.outcome = 'retry' AND t.outcome = 'dead'))
  ), closed AS (
    UPDATE automation_attempts t
    SET outcome = CASE u.status WHEN 'pending' THEN 'retry' ELSE u.status END,
        finished_at = p_now, error = u.error, error_kind = u.kind, error_code = u.code
    FROM updated u
    WHERE t.log_id = u.id AND t.attempt = u.attempts
  )
  SELECT 'finished' AS part, ord, NULL::text AS status FROM finished
  UNION ALL
  SELECT 'started', s.ord, NULL FROM started x JOIN st s ON s.log_id = x.log_id AND s.channel = x.channel
  UNION ALL
  SELECT 'result', ord, status FROM updated
  UNION ALL
  SELECT 'result', ord, status FROM replayed;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_write_back(bigint[], bigint[], text[], text[], text[], text[], bigint[], bigint[], text[], text[], bigint[], bigint[], text[], text[], text[], text[], timestamptz) FROM PUBLIC;

-- Scheduler: applies receipts (a JSON array, as the executor wrote them) through
-- herald_write_back, each at the time it was answered, and records them. Returns each
-- recorded receipt and whether all of it was applied. Receipts of logs that no longer exist
-- are skipped. Applying the same receipt twice changes nothing the first did not.
CREATE OR REPLACE FUNCTION herald_apply_receipts(p_receipts jsonb, p_now timestamptz)
RETURNS TABLE (log_id bigint, lease_token bigint, applied boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  at_us        bigint;
  at           timestamptz;
  batch        jsonb;  -- the receipts answered at `at`, of logs that exist
  f_receipt    bigint[];
  f_log        bigint[];
  f_lease      bigint[];
  f_channel    text[];
  f_status     text[];
  f_message_id text[];
  f_error      text[];
  r_receipt    bigint[];
  r_log        bigint[];
  r_lease      bigint[];
  r_outcome    text[];
  r_error      text[];
  r_kind       text[];
  r_code       text[];
BEGIN
  FOR at_us, batch IN
    SELECT (e->>'at_us')::bigint, jsonb_agg(e)
    FROM jsonb_array_elements(p_receipts) e
    WHERE EXISTS (SELECT 1 FROM ONLY automation_execution_logs l WHERE l.id = (e->>'log_id')::bigint)
    GROUP BY 1 ORDER BY 1
  LOOP
    at := timestamptz 'epoch' + at_us * interval '1 microsecond';
    SELECT array_agg(e.n ORDER BY e.n, d.k), array_agg((e.r->>'log_id')::bigint ORDER BY e.n, d.k),
           array_agg((e.r->>'lease')::bigint ORDER BY e.n, d.k), array_agg(d.x->>'channel' ORDER BY e.n, d.k),
           array_agg(d.x->>'status' ORDER BY e.n, d.k), array_agg(d.x->>'message_id' ORDER BY e.n, d.k),
           array_agg(d.x->>'error' ORDER BY e.n, d.k)
    INTO f_receipt, f_log, f_lease, f_channel, f_status, f_message_id, f_error
    FROM jsonb_array_elements(batch) WITH ORDINALITY e(r, n)
    CROSS JOIN LATERAL jsonb_array_elements(e.r->'deliveries') WITH ORDINALITY d(x, k);

    SELECT array_agg(e.n ORDER BY e.n), array_agg((e.r->>'log_id')::bigint ORDER BY e.n),
           array_agg((e.r->>'lease')::bigint ORDER BY e.n), array_agg(e.r#>>'{result,outcome}' ORDER BY e.n),
           array_agg(e.r#>>'{result,error}' ORDER BY e.n), array_agg(e.r#>>'{result,kind}' ORDER BY e.n),
           array_agg(e.r#>>'{result,code}' ORDER BY e.n)
    INTO r_receipt, r_log, r_lease, r_outcome, r_error, r_kind, r_code
    FROM jsonb_array_elements(batch) WITH ORDINALITY e(r, n)
    WHERE jsonb_typeof(e.r->'result') = 'object';

    RETURN QUERY
    WITH w AS (
      SELECT * FROM herald_write_back(f_log, f_lease, f_channel, f_status, f_message_id, f_error,
                                      NULL, NULL, NULL, NULL,
                                      r_log, r_lease, r_outcome, r_error, r_kind, r_code, at)
    ), entries AS (
      SELECT f_receipt[i] AS n, EXISTS (SELECT 1 FROM w WHERE w.part = 'finished' AND w.ord = i) AS ok
      FROM generate_subscripts(f_receipt, 1) i
      UNION ALL
      SELECT r_receipt[i], EXISTS (SELECT 1 FROM w WHERE w.part = 'result' AND w.ord = i)
      FROM generate_subscripts(r_receipt, 1) i
    ), verdict AS (
      SELECT n, bool_and(ok) AS ok FROM entries GROUP BY n
    ), recorded AS (
      INSERT INTO automation_receipts AS t
        (log_id, lease_token, attempt, answered_at, received_at, applied, receipt)
      SELECT (e.r->>'log_id')::bigint, (e.r->>'lease')::bigint, (e.r->>'attempt')::integer, at, p_now,
             coalesce(v.ok, false), e.r
      FROM jsonb_array_elements(batch) WITH ORDINALITY e(r, n)
      LEFT JOIN verdict v ON v.n = e.n
      ON CONFLICT (log_id, lease_token, answered_at) DO UPDATE
        SET applied = t.applied OR excluded.applied, received_at = excluded.received_at
      RETURNING t.log_id, t.lease_token, t.applied
    )
    SELECT * FROM recorded;
  END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_apply_receipts(jsonb, timestamptz) FROM PUBLIC;

-- Receipts for workflow instances.
--
-- When the executor cannot write how a step's effect ended (the database is away for
-- longer than it may wait), it keeps the end on the receipts queue, as it does for one-shot
-- logs: a receipt with `steps` (step, type, attempt, and output or error, as
-- herald_flow_write's `ended` entries have them) instead of deliveries and a result. The
-- scheduler applies receipts before it rescues leases, so the instance is rescued with its
-- step recorded as done or failed and goes on from there instead of being held as unknown.
-- Scheduler: applies workflow receipts (a JSON array, as the executor wrote them) through
-- herald_flow_write, each at the time it was answered, and records them. Returns each
-- recorded receipt and whether all of it was applied. Receipts of logs that no longer
-- exist are skipped; applying one again changes nothing (a write at the same time with the
-- same result counts as written).
CREATE OR REPLACE FUNCTION herald_apply_step_receipts(p_receipts jsonb, p_now timestamptz)
RETURNS TABLE (log_id bigint, lease_token bigint, applied boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  at_us   bigint;
  at      timestamptz;
  batch   jsonb;  -- the receipts answered at `at`, of logs that exist
  written jsonb;
BEGIN
  FOR at_us, batch IN
    SELECT (x.r ->> 'at_us')::bigint, jsonb_agg(x.r ORDER BY x.n)
    FROM jsonb_array_elements(p_receipts) WITH ORDINALITY x(r, n)
    WHERE EXISTS (SELECT 1 FROM ONLY automation_execution_logs l WHERE l.id = (x.r ->> 'log_id')::bigint)
    GROUP BY 1 ORDER BY 1
  LOOP
    at := timestamptz 'epoch' + at_us * interval '1 microsecond';
    written := herald_flow_write(jsonb_build_object('ended', (
      SELECT coalesce(jsonb_agg(s.x || jsonb_build_object('log_id', e.r -> 'log_id', 'token', e.r -> 'lease')
                                ORDER BY e.n, s.k), '[]')
      FROM jsonb_array_elements(batch) WITH ORDINALITY e(r, n)
      CROSS JOIN LATERAL jsonb_array_elements(e.r -> 'steps') WITH ORDINALITY s(x, k))), at);
    RETURN QUERY
    WITH entries AS (
      SELECT e.n, row_number() OVER (ORDER BY e.n, s.k) - 1 AS i
      FROM jsonb_array_elements(batch) WITH ORDINALITY e(r, n)
      CROSS JOIN LATERAL jsonb_array_elements(e.r -> 'steps') WITH ORDINALITY s(x, k)
    ), verdict AS (
      SELECT n, bool_and(coalesce((written -> 'ended' ->> i::int)::boolean, false)) AS ok
      FROM entries GROUP BY n
    ), recorded AS (
      INSERT INTO automation_receipts AS t
        (log_id, lease_token, attempt, answered_at, received_at, applied, receipt)
      SELECT (e.r ->> 'log_id')::bigint, (e.r ->> 'lease')::bigint, (e.r ->> 'attempt')::integer, at, p_now,
             coalesce(v.ok, false), e.r
      FROM jsonb_array_elements(batch) WITH ORDINALITY e(r, n)
      LEFT JOIN verdict v ON v.n = e.n
      ON CONFLICT (log_id, lease_token, answered_at) DO UPDATE
        SET applied = t.applied OR excluded.applied, received_at = excluded.received_at
      RETURNING t.log_id, t.lease_token, t.applied
    )
    SELECT * FROM recorded;
  END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_apply_step_receipts(jsonb, timestamptz) FROM PUBLIC;
