-- Scheduler: take up to $2 due logs (pending, or waiting instances whose time has come),
-- oldest first, mark them queued and give each a lease until $3. SKIP LOCKED lets
-- concurrent schedulers take disjoint sets. One fencing token serves the whole claim: a
-- token only has to be new for each claim of a log.
WITH due AS (
  SELECT id
  FROM ONLY automation_execution_logs
  WHERE status IN ('pending', 'waiting') AND run_at <= $1::timestamptz
  ORDER BY run_at, id
  LIMIT $2::bigint
  FOR UPDATE SKIP LOCKED
)
UPDATE ONLY automation_execution_logs l
SET status = 'queued', queued_at = $1::timestamptz, updated_at = $1::timestamptz,
    lease_token = (SELECT nextval('herald_lease_tokens')), lease_expires_at = $3::timestamptz
FROM due
WHERE l.id = due.id
RETURNING l.id, l.lease_token
