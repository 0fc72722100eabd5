-- Scheduler: move up to $1 captured events from the inbox to the ledger (see herald_ingest_counted
-- in db/).
SELECT moved, suppressed FROM herald_ingest_counted($1::integer)
