SELECT automation, version, state, pending, due, waiting, running, failed, dead, unknown, paused,
       extract(epoch FROM oldest_due_age)::float8 AS oldest_due_secs
FROM herald_status
ORDER BY automation
