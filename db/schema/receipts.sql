-- Receipts: results an executor could not write back when it made them, applied later
-- by the scheduler, fenced by lease as the direct write-backs are.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- When the executor cannot write how a step's effect ended (the database is away for
-- longer than it may wait), it keeps the end on the receipts queue: a receipt with `steps`
-- (step, type, attempt, and output or error, as herald_flow_write's `ended` entries have
-- them). The scheduler applies receipts before it rescues leases, so the instance is rescued
-- with its step recorded as done or failed and goes on from there instead of being held as
-- unknown.
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
