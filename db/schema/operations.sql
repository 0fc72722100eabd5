-- Views for operators.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- Every email and SMS: send steps, and each admin a notify_admin step reached or tried.
CREATE OR REPLACE VIEW herald_sends AS
SELECT r.log_id, r.step_id, r.attempt, CASE r.step_type WHEN 'send_email' THEN 'email' ELSE 'sms' END AS channel,
       r.effect ->> 'to' AS recipient,
       CASE r.status WHEN 'started' THEN 'sending' WHEN 'done' THEN 'sent' ELSE r.status END AS status,
       r.output ->> 'message_id' AS provider_message_id, r.error, r.started_at, r.finished_at AS completed_at
FROM automation_step_runs r
WHERE r.step_type IN ('send_email', 'send_sms') AND r.status <> 'decided'
UNION ALL
SELECT r.log_id, r.step_id, r.attempt, a.channel, a.recipient,
       CASE WHEN r.status = 'started' THEN 'sending'
            WHEN r.status = 'done' AND miss.error IS NULL THEN 'sent'
            WHEN r.status = 'done' THEN 'failed'
            ELSE r.status END,
       hit.message_id, coalesce(miss.error, CASE WHEN r.status <> 'done' THEN r.error END), r.started_at, r.finished_at
FROM automation_step_runs r
CROSS JOIN LATERAL (
  SELECT 'email' AS channel, e AS recipient FROM jsonb_array_elements_text(r.effect -> 'emails') e
  UNION ALL
  SELECT 'sms', p FROM jsonb_array_elements_text(r.effect -> 'phones') p
) a
LEFT JOIN LATERAL (SELECT s ->> 'message_id' AS message_id FROM jsonb_array_elements(r.output -> 'sent') s
                   WHERE s ->> 'to' = a.recipient LIMIT 1) hit ON true
LEFT JOIN LATERAL (SELECT s ->> 'error' AS error FROM jsonb_array_elements(r.output -> 'not_reached') s
                   WHERE s ->> 'to' = a.recipient LIMIT 1) miss ON true
WHERE r.step_type = 'notify_admin' AND r.status <> 'decided';
