-- Scheduler: take up to $2 due logs (pending, or waiting instances whose time has come),
-- oldest first, mark them queued and give each a lease until $3. SKIP LOCKED lets
-- concurrent schedulers take disjoint sets. One fencing token serves the whole claim: a
-- token only has to be new for each claim of a log. Also says whether each log is a
-- workflow instance, for the executor: one that runs a version already, or one of an
-- automation with a definition that has not been tried yet. A log a one-shot executor
-- started before its automation had a definition (schema 16) stays a one-shot log.
WITH due AS (
  SELECT id, automation_id
  FROM ONLY automation_execution_logs
  WHERE status IN ('pending', 'waiting') AND run_at <= $1::timestamptz
  ORDER BY run_at, id
  LIMIT $2::bigint
  FOR UPDATE SKIP LOCKED
)
UPDATE ONLY automation_execution_logs l
SET status = 'queued', queued_at = $1::timestamptz, updated_at = $1::timestamptz,
    lease_token = (SELECT nextval('herald_lease_tokens')), lease_expires_at = $3::timestamptz
FROM due LEFT JOIN automations a ON a.id = due.automation_id
WHERE l.id = due.id
RETURNING l.id, l.lease_token, l.version IS NOT NULL OR (a.version IS NOT NULL AND l.attempts = 0)
