-- Scheduler: the queue rejected these messages; their logs are pending again.
UPDATE ONLY automation_execution_logs
SET status = 'pending', queued_at = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = $2::timestamptz
WHERE id = ANY($1::bigint[]) AND status = 'queued'
