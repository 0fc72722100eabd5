-- Scheduler: applies receipts ($1, a JSON array as the executor wrote them) at $2 (see
-- herald_apply_receipts in db/migrations/0006); returns how many were applied.
SELECT count(*) FILTER (WHERE applied) FROM herald_apply_receipts($1::jsonb, $2::timestamptz)
