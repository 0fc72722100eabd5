-- Executor: the data of these instances, read fresh, for their next steps (a deleted row's
-- instance keeps the row as it was deleted).
SELECT c.log_id, CASE WHEN l.event = 'delete' THEN jsonb_build_object('context', l.payload) ELSE c.context END
FROM herald_contexts($1::bigint[]) c
JOIN ONLY automation_execution_logs l ON l.id = c.log_id
