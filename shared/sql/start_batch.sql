-- Executor: claim the log of every message ($1 log ids, $2 the leases the messages name)
-- under a new lease until $4 (one new token for the batch), open its attempt, and load what
-- the attempt needs: the event, the definition, the channels already delivered and the
-- template variables, read fresh.
-- One row per message, in order. `attempt` is NULL when the log was not claimable (then
-- `status` is its status before this statement, or NULL when there is no such log); a log
-- named twice in one batch is claimed for its first message only.
WITH msg AS (
  SELECT m.log_id, m.lease, m.ord,
         row_number() OVER (PARTITION BY m.log_id ORDER BY m.ord) AS nth
  FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS m(log_id, lease, ord)
), claimed AS (
  UPDATE ONLY automation_execution_logs l
  SET status = 'running', attempts = l.attempts + 1, started_at = $3::timestamptz, updated_at = $3::timestamptz,
      lease_token = (SELECT nextval('herald_lease_tokens')), lease_expires_at = $4::timestamptz
  FROM msg m
  WHERE m.nth = 1 AND l.id = m.log_id AND l.status = 'queued' AND l.lease_token = m.lease
  RETURNING l.id, l.attempts, l.lease_token
), opened AS (
  INSERT INTO automation_attempts (log_id, attempt, lease_token, started_at)
  SELECT id, attempts, lease_token, $3::timestamptz FROM claimed
), ctx AS (
  SELECT * FROM herald_contexts(ARRAY(SELECT id FROM claimed))
)
SELECT c.attempts AS attempt, c.lease_token AS lease,
       CASE WHEN m.nth > 1 THEN 'claimed by another message of this batch' ELSE l.status END AS status,
       l.automation_id, l.event, l.old_status, l.new_status,
       CASE WHEN l.id IS NOT NULL THEN format('%I.%I', l.subject_schema, l.subject_table) END AS subject_table,
       l.subject_id,
       a.id IS NOT NULL AS has_automation, a.name, a.is_active,
       a.email_from, a.email_to, a.email_subject, a.email_text, a.email_html, a.sms_to, a.sms_body,
       CASE WHEN c.attempts > 1 THEN  -- a first attempt has sent nothing yet
         ARRAY(SELECT d.channel FROM automation_deliveries d
               WHERE d.log_id = m.log_id AND d.status = 'sent' ORDER BY d.channel)
       ELSE '{}' END AS delivered,
       x.context
FROM msg m
LEFT JOIN claimed c ON c.id = m.log_id AND m.nth = 1
LEFT JOIN ctx x ON x.log_id = c.id
LEFT JOIN ONLY automation_execution_logs l ON l.id = m.log_id
LEFT JOIN automations a ON a.id = l.automation_id
ORDER BY m.ord
