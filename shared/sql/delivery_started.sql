-- Executor: recorded before the provider is called.
INSERT INTO automation_deliveries (log_id, channel, recipient, status, started_at)
VALUES ($1::bigint, $2::text, $3::text, 'sending', $4::timestamptz)
ON CONFLICT (log_id, channel) DO UPDATE
SET recipient = excluded.recipient, status = 'sending', provider_message_id = NULL,
    error = NULL, started_at = excluded.started_at, completed_at = NULL
