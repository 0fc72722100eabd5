-- Executor: one write of a round of workflow instances (see herald_flow_write).
SELECT herald_flow_write($1::jsonb, $2::timestamptz)
