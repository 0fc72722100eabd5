-- Executor: write a running log's result back. 'queued' means a transient failure: the
-- redelivered message will claim it again.
UPDATE automation_execution_logs
SET status = $2::text,
    error = $3::text,
    error_kind = $4::text,
    error_code = $6::text,
    completed_at = CASE WHEN $2::text IN ('sent', 'failed') THEN $5::timestamptz END,
    updated_at = $5::timestamptz
WHERE id = $1::bigint AND status = 'running'
