-- Herald schema 7: fewer ledger indexes on the claim path.

-- A log's status changes three or four times (queued, running, sent), and each change writes
-- a new row version that every index of the ledger must point to: the status is in the due
-- index's predicate, so no change of it can be a heap-only update. Two of those indexes
-- served only reading by time: the newest logs, and one automation's logs of the last day.
-- Ids grow as logs are made, so the newest logs are the highest ids (the primary key); and
-- logs are appended in the order they are made, so a BRIN index on created_at finds a time
-- range for a few pages of index, and costs next to nothing when a row version is written.
DROP INDEX automation_execution_logs_recent;
DROP INDEX automation_execution_logs_by_automation;
CREATE INDEX automation_execution_logs_created ON automation_execution_logs USING brin (created_at);
