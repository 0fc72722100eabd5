-- The logs that match, oldest change first: the newest $6 of them, or, when $5 names a
-- change ((updated_at, id) as text and bigint: where `logs --follow` got to), those
-- changed after it.
SELECT * FROM (
  SELECT l.id, a.name AS automation, l.version, l.status, l.subject_table, l.subject_id, l.event,
         l.next_step, l.attempts, l.error,
         to_char(l.run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS run_at,
         l.updated_at::text AS updated_at, l.updated_at AS changed
  FROM ONLY automation_execution_logs l
  JOIN automations a ON a.id = l.automation_id
  WHERE ($1::text IS NULL OR a.name = $1)
    AND ($2::text IS NULL OR l.status = $2)
    AND ($3::text IS NULL OR l.subject_id = $3)
    AND ($4::text IS NULL OR l.updated_at >= $4::text::timestamptz)
    AND ($5::text IS NULL OR (l.updated_at, l.id) > ($5::text::timestamptz, $7::bigint))
  ORDER BY CASE WHEN $5::text IS NULL THEN l.updated_at END DESC,
           CASE WHEN $5::text IS NULL THEN l.id END DESC,
           l.updated_at, l.id
  LIMIT $6
) q
ORDER BY changed, id
