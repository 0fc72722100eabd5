-- How many open instances of an automation stand at each step, by version and status.
SELECT l.version, coalesce(l.next_step, '(not started)') AS step, l.status, count(*) AS instances
FROM ONLY automation_execution_logs l
JOIN automations a ON a.id = l.automation_id
WHERE a.name = $1 AND l.status IN ('pending', 'queued', 'running', 'waiting', 'paused')
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
