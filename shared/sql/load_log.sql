-- Executor: a log with its automation's templates and the channels already delivered.
SELECT l.automation_id,
       l.event, l.old_status, l.new_status,
       format('%I.%I', l.subject_schema, l.subject_table) AS subject_table,
       l.subject_id,
       a.id IS NOT NULL AS has_automation,
       a.name, a.is_active,
       a.email_from, a.email_to, a.email_subject, a.email_text, a.email_html,
       a.sms_to, a.sms_body,
       ARRAY(SELECT d.channel FROM automation_deliveries d
             WHERE d.log_id = l.id AND d.status = 'sent' ORDER BY d.channel) AS delivered
FROM ONLY automation_execution_logs l
LEFT JOIN automations a ON a.id = l.automation_id
WHERE l.id = $1::bigint
