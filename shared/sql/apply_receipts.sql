-- Scheduler: applies receipts ($1, a JSON array as the executor wrote them) at $2: a
-- one-shot log's deliveries and result through herald_apply_receipts (db/migrations/0006),
-- a workflow instance's steps through herald_apply_step_receipts (0011). Returns how many
-- were applied.
SELECT count(*) FILTER (WHERE applied)
FROM (
  SELECT applied FROM herald_apply_receipts(
    (SELECT coalesce(jsonb_agg(r), '[]') FROM jsonb_array_elements($1::jsonb) r WHERE NOT r ? 'steps'),
    $2::timestamptz)
  UNION ALL
  SELECT applied FROM herald_apply_step_receipts(
    (SELECT coalesce(jsonb_agg(r), '[]') FROM jsonb_array_elements($1::jsonb) r WHERE r ? 'steps'),
    $2::timestamptz)
) a
