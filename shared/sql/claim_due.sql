-- Scheduler: take up to $2 due pending logs, oldest first, and mark them queued.
-- SKIP LOCKED lets concurrent schedulers take disjoint sets.
WITH due AS (
  SELECT id
  FROM automation_execution_logs
  WHERE status = 'pending' AND run_at <= $1::timestamptz
  ORDER BY run_at, id
  LIMIT $2::bigint
  FOR UPDATE SKIP LOCKED
)
UPDATE automation_execution_logs l
SET status = 'queued', queued_at = $1::timestamptz, updated_at = $1::timestamptz
FROM due
WHERE l.id = due.id
RETURNING l.id
