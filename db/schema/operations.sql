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

-- Each automation, its state (`active`; `paused` by herald_pause, its events kept and held;
-- `inactive`: is_active off, capturing nothing), and how many of its logs stand where: `pending` (captured, in the ledger
-- or still in its inbox, or to be retried), `due` (pending or waiting, and their time has come: the scheduler's next
-- claims), `waiting`, `running` (queued or running), `failed`, `dead`, `unknown` and
-- `paused`, and how long the oldest due log has been due. Counts every open or failed log
-- of each automation: a scan of the ledger, for operators, not for every minute.
CREATE OR REPLACE VIEW herald_status AS
SELECT a.name AS automation, a.version, a.is_active AS active,
       CASE WHEN NOT a.is_active THEN 'inactive' WHEN a.paused_at IS NOT NULL THEN 'paused' ELSE 'active' END AS state,
       count(*) FILTER (WHERE l.status = 'pending') AS pending,
       count(*) FILTER (WHERE l.status IN ('pending', 'waiting') AND l.run_at <= herald_now()) AS due,
       count(*) FILTER (WHERE l.status = 'waiting') AS waiting,
       count(*) FILTER (WHERE l.status IN ('queued', 'running')) AS running,
       count(*) FILTER (WHERE l.status = 'failed') AS failed,
       count(*) FILTER (WHERE l.status = 'dead') AS dead,
       count(*) FILTER (WHERE l.status = 'unknown') AS unknown,
       count(*) FILTER (WHERE l.status = 'paused') AS paused,
       herald_now() - min(l.run_at) FILTER (WHERE l.status IN ('pending', 'waiting') AND l.run_at <= herald_now())
         AS oldest_due_age
FROM automations a
LEFT JOIN (SELECT automation_id, status, run_at FROM ONLY automation_execution_logs
           WHERE status IN ('pending', 'waiting', 'queued', 'running', 'failed', 'dead', 'unknown', 'paused')
           UNION ALL
           SELECT automation_id, 'pending', run_at FROM herald_inbox) l
  ON l.automation_id = a.id
GROUP BY a.id;
