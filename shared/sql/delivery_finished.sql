-- Executor: recorded after the provider answered.
UPDATE automation_deliveries
SET status = $3::text, provider_message_id = $4::text, error = $5::text, completed_at = $6::timestamptz
WHERE log_id = $1::bigint AND channel = $2::text
