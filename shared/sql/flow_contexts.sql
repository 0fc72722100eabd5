-- Executor: the data of these instances, read fresh, for their next steps.
SELECT log_id, context FROM herald_contexts($1::bigint[])
