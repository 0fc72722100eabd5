-- Executor: take a queued log. `attempt` is NULL when it was not claimable; `status`
-- (as it was before this statement) is NULL when there is no such log.
WITH claimed AS (
  UPDATE automation_execution_logs
  SET status = 'running', attempts = attempts + 1, started_at = $2::timestamptz, updated_at = $2::timestamptz
  WHERE id = $1::bigint AND status = 'queued'
  RETURNING attempts
)
SELECT (SELECT attempts FROM claimed) AS attempt,
       (SELECT status FROM automation_execution_logs WHERE id = $1::bigint) AS status
