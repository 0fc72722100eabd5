-- Executor: write a running log's result back, only while the lease $2 holds. $3 is
-- 'sent', 'failed' or 'retry'; a retry is scheduled with backoff, or the log is dead when
-- it has no attempts left. Returns the new status; no row means the lease was lost.
WITH log AS (
  SELECT l.id, l.attempts, a.max_attempts, a.retry_base, a.retry_cap
  FROM ONLY automation_execution_logs l
  LEFT JOIN automations a ON a.id = l.automation_id
  WHERE l.id = $1::bigint AND l.status = 'running' AND l.lease_token = $2::bigint
  FOR UPDATE OF l
), decided AS (
  SELECT id, attempts,
         CASE WHEN $3::text <> 'retry' THEN $3::text
              WHEN attempts >= coalesce(max_attempts, 1) THEN 'dead'
              ELSE 'pending' END AS status,
         herald_backoff(attempts, coalesce(retry_base, interval '30 seconds'), coalesce(retry_cap, interval '1 hour')) AS delay
  FROM log
), updated AS (
  UPDATE ONLY automation_execution_logs g
  SET status = d.status,
      error = $4::text, error_kind = $5::text, error_code = $6::text,
      run_at = CASE WHEN d.status = 'pending' THEN $7::timestamptz + d.delay ELSE g.run_at END,
      completed_at = CASE WHEN d.status IN ('sent', 'failed', 'dead') THEN $7::timestamptz END,
      lease_token = NULL, lease_expires_at = NULL, updated_at = $7::timestamptz
  FROM decided d
  WHERE g.id = d.id
  RETURNING g.id, g.status, g.attempts
), closed AS (
  UPDATE automation_attempts t
  SET outcome = CASE u.status WHEN 'pending' THEN 'retry' ELSE u.status END,
      finished_at = $7::timestamptz, error = $4::text, error_kind = $5::text, error_code = $6::text
  FROM updated u
  WHERE t.log_id = u.id AND t.attempt = u.attempts
)
SELECT status FROM updated
