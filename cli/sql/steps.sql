-- An instance's step history, in the order it happened: effects and decisions.
SELECT r.step_id, r.step_type, r.attempt, r.status,
       to_char(r.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS started_at,
       to_char(r.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS finished_at,
       (extract(epoch FROM r.finished_at - r.started_at) * 1000)::float8 AS duration_ms,
       r.effect, r.output, r.error, r.error_kind
FROM automation_step_runs r
WHERE r.log_id = $1
ORDER BY r.id
