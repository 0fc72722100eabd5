-- Scheduler: applies receipts ($1, a JSON array as the executor wrote them: each an
-- instance's steps whose ends it could not write) at $2, through herald_apply_step_receipts
-- (db/schema/receipts.sql). Returns how many were applied.
SELECT count(*) FILTER (WHERE applied) FROM herald_apply_step_receipts($1::jsonb, $2::timestamptz)
