-- Executor: claim and load a batch of workflow instances (see herald_flow_start).
SELECT * FROM herald_flow_start($1::bigint[], $2::bigint[], $3::timestamptz, $4::timestamptz)
