-- Executor: one write-back for a batch, each entry only while its lease holds:
--   providers' answers ($1..$6: log, lease, channel, 'sent' or 'failed', message id, error),
--   deliveries about to be sent ($7..$10: log, lease, channel, recipient),
--   attempts' results ($11..$16: log, lease, 'sent', 'failed' or 'retry', error, kind, code;
--   a retry is scheduled with backoff, or the log is dead when it has no attempts left),
-- at $17. Returns what was written: ('finished' | 'started' | 'result', the entry's position
-- from 1, the log's new status for results). An entry not returned lost its lease.
WITH fin AS (
  SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
    WITH ORDINALITY AS f(log_id, lease, channel, status, message_id, error, ord)
), finished AS (
  UPDATE automation_deliveries d
  SET status = f.status, provider_message_id = f.message_id, error = f.error, completed_at = $17::timestamptz
  FROM fin f, ONLY automation_execution_logs l
  WHERE d.log_id = f.log_id AND d.channel = f.channel
    AND l.id = f.log_id AND l.status = 'running' AND l.lease_token = f.lease
  RETURNING f.ord
), st AS (
  SELECT * FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::text[])
    WITH ORDINALITY AS s(log_id, lease, channel, recipient, ord)
), started AS (
  INSERT INTO automation_deliveries AS d (log_id, channel, recipient, status, started_at)
  SELECT s.log_id, s.channel, s.recipient, 'sending', $17::timestamptz
  FROM st s JOIN ONLY automation_execution_logs l
    ON l.id = s.log_id AND l.status = 'running' AND l.lease_token = s.lease
  ON CONFLICT (log_id, channel) DO UPDATE
  SET recipient = excluded.recipient, status = 'sending', provider_message_id = NULL,
      error = NULL, started_at = excluded.started_at, completed_at = NULL
  RETURNING d.log_id, d.channel
), res AS (
  SELECT * FROM unnest($11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::text[])
    WITH ORDINALITY AS r(log_id, lease, outcome, error, kind, code, ord)
), log AS (
  SELECT l.id, l.attempts, r.outcome, r.error, r.kind, r.code, r.ord, a.max_attempts, a.retry_base, a.retry_cap
  FROM res r
  JOIN ONLY automation_execution_logs l ON l.id = r.log_id AND l.status = 'running' AND l.lease_token = r.lease
  LEFT JOIN automations a ON a.id = l.automation_id
  FOR UPDATE OF l
), decided AS (
  SELECT log.*,
         CASE WHEN outcome <> 'retry' THEN outcome
              WHEN attempts >= coalesce(max_attempts, 1) THEN 'dead'
              ELSE 'pending' END AS new_status,
         herald_backoff(attempts, coalesce(retry_base, interval '30 seconds'), coalesce(retry_cap, interval '1 hour')) AS delay
  FROM log
), updated AS (
  UPDATE ONLY automation_execution_logs g
  SET status = d.new_status, error = d.error, error_kind = d.kind, error_code = d.code,
      run_at = CASE WHEN d.new_status = 'pending' THEN $17::timestamptz + d.delay ELSE g.run_at END,
      completed_at = CASE WHEN d.new_status IN ('sent', 'failed', 'dead') THEN $17::timestamptz END,
      lease_token = NULL, lease_expires_at = NULL, updated_at = $17::timestamptz
  FROM decided d
  WHERE g.id = d.id
  RETURNING g.id, g.status, g.attempts, d.ord, d.error, d.kind, d.code
), closed AS (
  UPDATE automation_attempts t
  SET outcome = CASE u.status WHEN 'pending' THEN 'retry' ELSE u.status END,
      finished_at = $17::timestamptz, error = u.error, error_kind = u.kind, error_code = u.code
  FROM updated u
  WHERE t.log_id = u.id AND t.attempt = u.attempts
)
SELECT 'finished' AS part, ord, NULL::text AS status FROM finished
UNION ALL
SELECT 'started', s.ord, NULL FROM started x JOIN st s ON s.log_id = x.log_id AND s.channel = x.channel
UNION ALL
SELECT 'result', ord, status FROM updated
