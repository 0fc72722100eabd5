-- Scheduler: rescue logs whose lease ran out (see herald_rescue in db/): queued ones whose
-- message never came, and running instances whose executor vanished.
SELECT requeued, resumed FROM herald_rescue($1::timestamptz)
