-- Executor: one write-back for a batch (see herald_write_back in db/migrations/0006):
-- providers' answers ($1..$6), deliveries about to be sent ($7..$10) and attempts' results
-- ($11..$16), at $17. Safe to run again with the same arguments.
SELECT part, ord, status
FROM herald_write_back($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::bigint[], $8::bigint[], $9::text[], $10::text[],
                       $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::text[],
                       $17::timestamptz)
