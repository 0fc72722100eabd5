-- Scheduler: start the instances of date triggers whose time has come, and record those
-- past their lateness as missed (see herald_fire_dates in db/).
SELECT fired, missed FROM herald_fire_dates($1::timestamptz)
