-- Scheduler: move up to $1 captured events from the inbox to the ledger (see herald_ingest
-- in db/).
SELECT herald_ingest($1::integer)
