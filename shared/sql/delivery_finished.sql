-- Executor: recorded after the provider answered, only while the lease $7 holds.
UPDATE automation_deliveries
SET status = $3::text, provider_message_id = $4::text, error = $5::text, completed_at = $6::timestamptz
WHERE log_id = $1::bigint AND channel = $2::text
  AND EXISTS (SELECT 1 FROM ONLY automation_execution_logs
              WHERE id = $1::bigint AND status = 'running' AND lease_token = $7::bigint)
