-- Scheduler: rescue logs whose lease ran out (see herald_rescue in db/).
SELECT requeued, retried, dead, unknown FROM herald_rescue($1::timestamptz)
