-- Executor: the log's template variables, read fresh (see herald_context in db/).
SELECT herald_context($1::bigint)
