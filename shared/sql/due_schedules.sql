-- Scheduler: the schedules of active automations and how far each was looked at (see
-- herald_due_schedules in db/).
SELECT automation_id, cron, zone, lateness_secs, scanned_to FROM herald_due_schedules()
