SELECT l.id, a.name AS automation, l.version, l.status, l.subject_schema, l.subject_table, l.subject_id, l.event,
       l.old_status, l.new_status, l.next_step, l.attempts, l.steps_run, l.exit_reason, l.error, l.error_kind,
       l.hold, l.payload,
       to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
       to_char(l.run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS run_at,
       to_char(l.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS completed_at
FROM automation_execution_logs l
JOIN automations a ON a.id = l.automation_id
WHERE l.id = $1
