-- Executor: recorded before the provider is called, only while the lease $5 holds.
INSERT INTO automation_deliveries (log_id, channel, recipient, status, started_at)
SELECT $1::bigint, $2::text, $3::text, 'sending', $4::timestamptz
FROM ONLY automation_execution_logs
WHERE id = $1::bigint AND status = 'running' AND lease_token = $5::bigint
ON CONFLICT (log_id, channel) DO UPDATE
SET recipient = excluded.recipient, status = 'sending', provider_message_id = NULL,
    error = NULL, started_at = excluded.started_at, completed_at = NULL
