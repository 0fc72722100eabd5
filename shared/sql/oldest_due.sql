-- Scheduler, once per run, for the OldestDueAge metric: when the oldest log that is due at
-- $1 (pending, or a waiting instance whose time has come, as claim_due.sql reads them) became
-- due; null when none is. One probe of the index automation_execution_logs_due.
SELECT min(run_at)
FROM ONLY automation_execution_logs
WHERE status IN ('pending', 'waiting') AND run_at <= $1::timestamptz
