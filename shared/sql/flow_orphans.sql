-- Executor, before herald_flow_start in the same round trip: a message's log, queued under
-- the lease the message names ($1 log ids, $2 leases; a log named twice counts for its first
-- message), that has no version to run (its automation was deleted, and its versions with
-- it) fails at its claim at $3, in an attempt of its own, saying why. herald_flow_start then
-- finds it finished. Returns the logs failed, and why.
WITH m AS (
  SELECT DISTINCT ON (m.log_id) m.log_id, m.lease
  FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS m(log_id, lease, ord)
  ORDER BY m.log_id, m.ord
), orphan AS (
  SELECT l.id, m.lease,
         CASE WHEN EXISTS (SELECT 1 FROM automations a WHERE a.id = l.automation_id)
              THEN format('automation %s has no definition', l.automation_id)
              ELSE format('unknown automation %s', l.automation_id) END AS why
  FROM m
  JOIN ONLY automation_execution_logs l ON l.id = m.log_id
  WHERE l.status = 'queued' AND l.lease_token = m.lease
    AND NOT EXISTS (SELECT 1 FROM automations a
                    WHERE a.id = l.automation_id AND (l.version IS NOT NULL OR a.version IS NOT NULL))
), failed AS (
  UPDATE ONLY automation_execution_logs l
  SET status = 'failed', attempts = l.attempts + 1, started_at = coalesce(l.started_at, $3::timestamptz),
      completed_at = $3::timestamptz, updated_at = $3::timestamptz, lease_token = NULL, lease_expires_at = NULL,
      error = o.why, error_kind = 'permanent', error_code = NULL
  FROM orphan o
  WHERE l.id = o.id AND l.status = 'queued' AND l.lease_token = o.lease
  RETURNING l.id, l.attempts, o.lease, o.why
), recorded AS (
  INSERT INTO automation_attempts (log_id, attempt, lease_token, started_at, finished_at, outcome, error, error_kind)
  SELECT id, attempts, lease, $3::timestamptz, $3::timestamptz, 'failed', why, 'permanent' FROM failed
)
SELECT id, why FROM failed
