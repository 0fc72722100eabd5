-- Scheduler: fire a schedule's occurrences, record its missed ones and move it on (see
-- herald_fire_schedule in db/).
SELECT fired, missed
FROM herald_fire_schedule($1::bigint, $2::timestamptz, $3::timestamptz, $4::timestamptz[], $5::timestamptz[],
                          $6::timestamptz[], $7::timestamptz)
