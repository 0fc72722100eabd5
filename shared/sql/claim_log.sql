-- Executor: take a queued log whose lease the message names, with a new lease until $4,
-- and open its attempt. `attempt` is NULL when it was not claimable; `status` (as it was
-- before this statement) is NULL when there is no such log.
WITH claimed AS (
  UPDATE ONLY automation_execution_logs
  SET status = 'running', attempts = attempts + 1, started_at = $3::timestamptz, updated_at = $3::timestamptz,
      lease_token = nextval('herald_lease_tokens'), lease_expires_at = $4::timestamptz
  WHERE id = $1::bigint AND status = 'queued' AND lease_token = $2::bigint
  RETURNING id, attempts, lease_token
), opened AS (
  INSERT INTO automation_attempts (log_id, attempt, lease_token, started_at)
  SELECT id, attempts, lease_token, $3::timestamptz FROM claimed
)
SELECT (SELECT attempts FROM claimed) AS attempt,
       (SELECT lease_token FROM claimed) AS lease,
       (SELECT status FROM ONLY automation_execution_logs WHERE id = $1::bigint) AS status
