-- Time: date-relative triggers (the occurrences of db/migrations/0002_occurrences.sql), and
-- the one daylight-saving policy they share with waits (shared/src/workflow/wait.rs): a
-- local time that a clock change skips moves on by the gap's length (02:30 on a
-- spring-forward night is 03:30); one that happens twice is the first.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- A span as definitions write it (see herald_span_problem) as an interval: "30m" is 30
-- minutes and "1mo" a month, as Herald's reader takes them.
CREATE OR REPLACE FUNCTION herald_span_interval(p_span text) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
  SELECT regexp_replace(p_span, '(\d)\s*mo(?![a-z])', '\1 mons', 'gi')::interval
$$;

-- The instant of local time p_local in zone p_zone, by the policy above. (PostgreSQL's own
-- AT TIME ZONE moves a skipped time on by the gap's length, and takes the second of a
-- repeated one: an earlier instant with the same local time is looked for, up to the
-- largest shift any zone makes. Written as one expression, so the planner inlines it.)
CREATE OR REPLACE FUNCTION herald_local_instant(p_local timestamp, p_zone text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN ((p_local AT TIME ZONE p_zone) - interval '2 hours') AT TIME ZONE p_zone = p_local
      THEN (p_local AT TIME ZONE p_zone) - interval '2 hours'
    WHEN ((p_local AT TIME ZONE p_zone) - interval '1 hour') AT TIME ZONE p_zone = p_local
      THEN (p_local AT TIME ZONE p_zone) - interval '1 hour'
    WHEN ((p_local AT TIME ZONE p_zone) - interval '30 minutes') AT TIME ZONE p_zone = p_local
      THEN (p_local AT TIME ZONE p_zone) - interval '30 minutes'
    ELSE p_local AT TIME ZONE p_zone
  END
$$;

-- When a date trigger fires for a row: its date value p_value (as the template data shows
-- it: a date, a local timestamp read in p_zone, or a timestamp with an offset), moved by
-- p_offset (days, weeks, months and years on the zone's calendar, hours and shorter on the
-- clock), then, with p_at, at that local time of the day it lands on. As a wait's `until`
-- computes its end (shared/src/workflow/wait.rs), which a test holds this to.
CREATE OR REPLACE FUNCTION herald_date_fire_at(p_value text, p_offset interval, p_at time, p_zone text)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
  months   integer := extract(year FROM p_offset)::integer * 12 + extract(month FROM p_offset)::integer;
  days     integer := extract(day FROM p_offset)::integer;
  clock    interval := p_offset - make_interval(months => months, days => days);
  local    timestamp;
  t        timestamptz;
BEGIN
  IF p_value ~ '^\d{4}-\d{2}-\d{2}$' THEN
    t := herald_local_instant(p_value::date::timestamp, p_zone);
  ELSIF p_value ~ '(Z|[+-]\d{2}(:?\d{2})?)$' THEN
    t := p_value::timestamptz;
  ELSE
    t := herald_local_instant(p_value::timestamp, p_zone);
  END IF;
  IF months <> 0 OR days <> 0 THEN
    local := (t AT TIME ZONE p_zone) + make_interval(months => months, days => days);
    t := herald_local_instant(local, p_zone);
  END IF;
  t := t + clock;
  IF p_at IS NOT NULL THEN
    t := herald_local_instant((t AT TIME ZONE p_zone)::date + p_at, p_zone);
  END IF;
  RETURN t;
END
$$;

-- A date trigger's parts, as its automation's occurrences are computed from them: the
-- column, the offset, the local time, the zone (a name, or the column holding one) and the
-- lateness. NULL for any other trigger.
CREATE OR REPLACE FUNCTION herald_date_spec(p_definition jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_definition #>> '{trigger,type}' = 'date' THEN jsonb_build_object(
    'column', p_definition #>> '{trigger,column}',
    'offset', coalesce(p_definition #>> '{trigger,offset}', '0 seconds'),
    'at', p_definition #>> '{trigger,at}',
    'zone', CASE jsonb_typeof(p_definition #> '{trigger,timezone}')
              WHEN 'string' THEN p_definition #>> '{trigger,timezone}'
              WHEN 'object' THEN NULL
              ELSE coalesce(p_definition ->> 'timezone', 'UTC') END,
    'zone_column', p_definition #>> '{trigger,timezone,field}',
    'lateness', coalesce(p_definition #>> '{trigger,lateness}', '1 hour')) END
$$;

-- Every time zone name Postgres knows, as the keys of an object (looked up with `?`): made
-- here as a constant from pg_timezone_names, which is slow to read, so that a plan folds it
-- in once. (The names change only with Postgres's time zone data; applying this file again
-- reads them again.)
DO $zones$
BEGIN
  EXECUTE format('CREATE OR REPLACE FUNCTION herald_zone_names() RETURNS jsonb LANGUAGE sql IMMUTABLE AS %L',
                 format('SELECT %L::jsonb', (SELECT jsonb_object_agg(name, true) FROM pg_timezone_names)));
END
$zones$;

-- The occurrence of one row of a date trigger: when it fires for date value p_value in the
-- row's zone p_row_zone (read from the trigger's zone column) or the trigger's own. NULL
-- when the row has no date, or its zone column names no zone.
CREATE OR REPLACE FUNCTION herald_date_occurrence(p_spec jsonb, p_value text, p_row_zone text,
                                                  OUT fire_at timestamptz, OUT zone text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  zone := CASE WHEN p_spec ->> 'zone_column' IS NULL THEN p_spec ->> 'zone' ELSE p_row_zone END;
  IF p_value IS NULL OR zone IS NULL OR NOT herald_zone_names() ? zone THEN
    zone := NULL;
    RETURN;
  END IF;
  fire_at := herald_date_fire_at(p_value, herald_span_interval(p_spec ->> 'offset'), (p_spec ->> 'at')::time, zone);
END
$$;

-- Keeps a row's due occurrences as it changes: an insert, or an update of a column a date
-- trigger reads, computes the row's occurrence for each date-triggered automation of the
-- table (its due one for another value is dropped; a value that fired already does not fire
-- again); a delete drops them. The trigger's spec (its only argument): the table's key
-- column and each automation's id, spec and lateness.
CREATE OR REPLACE FUNCTION herald_follow_dates() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  spec     jsonb := TG_ARGV[0]::jsonb;
  key      text := spec ->> 'key';
  old_row  jsonb;
  new_row  jsonb;
  d        jsonb;
  occ      record;
  now_     timestamptz := herald_now();
BEGIN
  IF TG_OP <> 'INSERT' THEN
    old_row := to_jsonb(OLD);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    new_row := to_jsonb(NEW);
  END IF;
  FOR d IN SELECT jsonb_array_elements(spec -> 'dates') LOOP
    -- Nothing this trigger reads changed.
    CONTINUE WHEN TG_OP = 'UPDATE'
      AND old_row -> key = new_row -> key
      AND old_row -> (d #>> '{spec,column}') IS NOT DISTINCT FROM new_row -> (d #>> '{spec,column}')
      AND old_row -> (d #>> '{spec,zone_column}') IS NOT DISTINCT FROM new_row -> (d #>> '{spec,zone_column}');
    IF old_row IS NOT NULL THEN
      DELETE FROM herald_occurrences
      WHERE automation_id = (d ->> 'id')::bigint AND subject_id = old_row ->> key AND state = 'due';
    END IF;
    IF new_row IS NOT NULL THEN
      SELECT * INTO occ FROM herald_date_occurrence(d -> 'spec', new_row ->> (d #>> '{spec,column}'),
                                                    new_row ->> (d #>> '{spec,zone_column}'));
      IF occ.fire_at > now_ - (d ->> 'lateness')::interval THEN
        INSERT INTO herald_occurrences (automation_id, subject_id, occurs_on, fire_at, zone)
        VALUES ((d ->> 'id')::bigint, new_row ->> key, new_row ->> (d #>> '{spec,column}'), occ.fire_at, occ.zone)
        ON CONFLICT DO NOTHING;
      END IF;
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

-- Compiles a table's date triggers (herald_compile calls it, after dropping the table's
-- triggers): the automations on it whose current version has a date trigger get their
-- occurrences computed for every row, when their trigger is new or changed (each date once:
-- one that fired keeps its record), and the table gets the trigger that keeps them. An
-- automation whose trigger is no longer a date one loses its due occurrences.
CREATE OR REPLACE FUNCTION herald_compile_dates(p_schema text, p_table text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  tbl   regclass := to_regclass(format('%I.%I', p_schema, p_table));
  key   text;
  a     record;
  dates jsonb := '[]';
  cols  text[] := '{}';
BEGIN
  SELECT t.key_column INTO key FROM herald_attachments t WHERE t.table_schema = p_schema AND t.table_name = p_table;
  -- Automations of this table that no longer fire by a date (or are no longer attached).
  DELETE FROM herald_date_triggers d
  USING automations au
  LEFT JOIN automation_versions v ON v.automation_id = au.id AND v.version = au.version
  WHERE d.automation_id = au.id AND au.source_schema = p_schema AND au.source_table = p_table
    AND (tbl IS NULL OR key IS NULL OR herald_date_spec(v.definition) IS NULL);
  DELETE FROM herald_occurrences o
  USING automations au
  WHERE o.automation_id = au.id AND o.state = 'due' AND au.source_schema = p_schema AND au.source_table = p_table
    AND NOT EXISTS (SELECT 1 FROM herald_date_triggers d WHERE d.automation_id = au.id);
  IF tbl IS NULL OR key IS NULL THEN
    RETURN;
  END IF;
  FOR a IN
    SELECT au.id, herald_date_spec(v.definition) AS spec, d.spec AS was
    FROM automations au
    JOIN automation_versions v ON v.automation_id = au.id AND v.version = au.version
    LEFT JOIN herald_date_triggers d ON d.automation_id = au.id
    WHERE au.source_schema = p_schema AND au.source_table = p_table AND herald_date_spec(v.definition) IS NOT NULL
    ORDER BY au.id
  LOOP
    IF a.was IS DISTINCT FROM a.spec THEN
      INSERT INTO herald_date_triggers (automation_id, spec, lateness)
      VALUES (a.id, a.spec, herald_span_interval(a.spec ->> 'lateness'))
      ON CONFLICT (automation_id) DO UPDATE SET spec = excluded.spec, lateness = excluded.lateness;
      DELETE FROM herald_occurrences WHERE automation_id = a.id AND state = 'due';
      -- Each row's date as the template data shows it (to_jsonb's text); only the key, date
      -- and zone columns are read.
      EXECUTE format(
        'INSERT INTO herald_occurrences (automation_id, subject_id, occurs_on, fire_at, zone)
         SELECT $1, r.k, r.v, o.fire_at, o.zone
         FROM (SELECT t.%I::text AS k, to_jsonb(t.%I) #>> ''{}'' AS v, %s AS z FROM %s t WHERE t.%I IS NOT NULL) r
         CROSS JOIN LATERAL herald_date_occurrence($2, r.v, r.z) o
         WHERE o.fire_at > $3
         ON CONFLICT DO NOTHING',
        key, a.spec ->> 'column',
        CASE WHEN a.spec ->> 'zone_column' IS NULL THEN 'NULL::text' ELSE format('t.%I::text', a.spec ->> 'zone_column') END,
        tbl, a.spec ->> 'column')
        USING a.id, a.spec, herald_now() - herald_span_interval(a.spec ->> 'lateness');
    END IF;
    dates := dates || jsonb_build_object('id', a.id, 'spec', a.spec, 'lateness', herald_span_interval(a.spec ->> 'lateness'));
    cols := cols || (a.spec ->> 'column');
    IF a.spec ->> 'zone_column' IS NOT NULL THEN
      cols := cols || (a.spec ->> 'zone_column');
    END IF;
  END LOOP;
  IF jsonb_array_length(dates) > 0 THEN
    EXECUTE format('CREATE TRIGGER herald_follow_dates AFTER INSERT OR DELETE OR UPDATE OF %s ON %s
                    FOR EACH ROW EXECUTE FUNCTION %s(%L)',
                   (SELECT string_agg(DISTINCT quote_ident(c), ', ') FROM unnest(cols || key) c), tbl,
                   'herald_follow_dates()'::regprocedure::oid::regproc,
                   jsonb_build_object('key', key, 'dates', dates));
  END IF;
END
$$;

-- Scheduler: starts an instance for every occurrence whose time has come, of an active
-- automation; one whose time passed more than its trigger's lateness ago is recorded as
-- missed instead. The instance is an event `date` of its row, with the date value and the
-- time it was due as its payload (`payload.date`, `payload.due`), and goes through the
-- inbox as a captured change does, as if captured at the time it was due (the automation's
-- suppression window counts from then). Returns how many fired and how many were missed.
CREATE OR REPLACE FUNCTION herald_fire_dates(p_now timestamptz)
RETURNS TABLE (fired integer, missed integer)
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
  WITH due AS (
    SELECT o.ctid AS tid, o.fire_at > p_now - d.lateness AS in_time
    FROM herald_occurrences o
    JOIN herald_date_triggers d ON d.automation_id = o.automation_id
    JOIN automations au ON au.id = o.automation_id AND au.is_active
    WHERE o.state = 'due' AND o.fire_at <= p_now
    FOR UPDATE OF o SKIP LOCKED
  ), done AS (
    UPDATE herald_occurrences o
    SET state = CASE WHEN due.in_time THEN 'fired' ELSE 'missed' END, done_at = p_now
    FROM due
    WHERE o.ctid = due.tid
    RETURNING o.automation_id, o.subject_id, o.occurs_on, o.fire_at, o.state
  ), started AS (
    INSERT INTO herald_inbox (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event,
                              snapshot, payload, run_at, created_at, updated_at)
    SELECT x.automation_id, au.source_schema, au.source_table, t.key_column, x.subject_id, 'date',
           '{}', jsonb_build_object('date', x.occurs_on, 'due', x.fire_at), p_now, x.fire_at, p_now
    FROM done x
    JOIN automations au ON au.id = x.automation_id
    JOIN herald_attachments t ON t.table_schema = au.source_schema AND t.table_name = au.source_table
    WHERE x.state = 'fired'
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM started)::integer, (SELECT count(*) FROM done WHERE state = 'missed')::integer
$$;
REVOKE EXECUTE ON FUNCTION herald_fire_dates(timestamptz) FROM PUBLIC;

-- Operator: the next `p_limit` times automation p_name fires: for a date trigger, the rows
-- due next (the row, its date value, and the time in UTC and in the row's zone); for a
-- schedule, its next occurrences as the scheduler last computed them (each tick; subject_id
-- is NULL, and an audience's rows each get one).
CREATE OR REPLACE FUNCTION herald_next_fires(p_name text, p_limit integer DEFAULT 10)
RETURNS TABLE (subject_id text, occurs_on text, fire_at timestamptz, local_time text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  auto_id bigint;
  dates   jsonb;
  sched   herald_schedules;
BEGIN
  SELECT au.id, d.spec INTO auto_id, dates
  FROM automations au LEFT JOIN herald_date_triggers d ON d.automation_id = au.id
  WHERE au.name = p_name;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'no automation named %', p_name USING ERRCODE = '22023';
  END IF;
  IF dates IS NOT NULL THEN
    RETURN QUERY
    SELECT o.subject_id, o.occurs_on, o.fire_at,
           to_char(o.fire_at AT TIME ZONE o.zone, 'YYYY-MM-DD HH24:MI') || ' ' || o.zone
    FROM herald_occurrences o
    WHERE o.automation_id = auto_id AND o.state = 'due'
    ORDER BY o.fire_at, o.subject_id
    LIMIT p_limit;
    RETURN;
  END IF;
  SELECT * INTO sched FROM herald_schedules s WHERE s.automation_id = auto_id;
  IF FOUND THEN
    RETURN QUERY
    SELECT NULL::text, to_jsonb(t) #>> '{}', t,
           to_char(t AT TIME ZONE (sched.spec ->> 'zone'), 'YYYY-MM-DD HH24:MI') || ' ' || (sched.spec ->> 'zone')
    FROM unnest(sched.next_fires) t
    ORDER BY t
    LIMIT p_limit;
    RETURN;
  END IF;
  RAISE EXCEPTION 'automation % has no times of its own', p_name USING ERRCODE = '22023',
    HINT = 'Only date triggers and schedules do: other automations fire when their rows change.';
END
$$;

-- Why a cron expression of a schedule is refused, or NULL: five fields (minute hour
-- day-of-month month day-of-week), each a list of `*`, values, ranges `a-b` and steps `/n`,
-- with month names (JAN) and day names (MON), `L` and `nW` in the day of the month, `nL`
-- and `n#k` in the day of the week. Herald's reader (shared/src/workflow/schedule.rs) reads
-- the same forms; a test holds the two together.
CREATE OR REPLACE FUNCTION herald_cron_problem(p_cron text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  fields text[] := regexp_split_to_array(btrim(coalesce(p_cron, '')), '\s+');
  what   text[] := ARRAY['minute', 'hour', 'day of month', 'month', 'day of week'];
  lo     int[] := ARRAY[0, 0, 1, 1, 0];
  hi     int[] := ARRAY[59, 23, 31, 12, 7];
  months text[] := ARRAY['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
  days   text[] := ARRAY['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
  item   text;
  m      text[];
  i      integer;
  k      integer;
BEGIN
  IF cardinality(fields) <> 5 OR fields[1] = '' THEN
    RETURN format('`%s` is not a cron expression of 5 fields: minute hour day-of-month month day-of-week', p_cron);
  END IF;
  FOR i IN 1..5 LOOP
    FOREACH item IN ARRAY string_to_array(upper(fields[i]), ',') LOOP
      IF i = 4 THEN
        FOR k IN 1..12 LOOP item := replace(item, months[k], k::text); END LOOP;
      ELSIF i = 5 THEN
        FOR k IN 1..7 LOOP item := replace(item, days[k], (k - 1)::text); END LOOP;
      END IF;
      CONTINUE WHEN item ~ '^\*(/[1-9]\d*)?$'
        OR (i = 3 AND item ~ '^(L|([1-9]|[12]\d|3[01])W)$')
        OR (i = 5 AND item ~ '^[0-7](L|#[1-5])$');
      m := regexp_match(item, '^(\d+)(?:-(\d+))?(?:/([1-9]\d*))?$');
      IF m IS NULL THEN
        RETURN format('`%s`: the %s `%s` is not a value, a range, a step or `*`', p_cron, what[i], item);
      ELSIF length(m[1]) > 2 OR m[1]::int NOT BETWEEN lo[i] AND hi[i]
            OR (m[2] IS NOT NULL AND (length(m[2]) > 2 OR m[2]::int NOT BETWEEN lo[i] AND hi[i])) THEN
        RETURN format('`%s`: the %s `%s` is outside %s-%s', p_cron, what[i], item, lo[i], hi[i]);
      ELSIF m[2] IS NOT NULL AND m[2]::int < m[1]::int THEN
        RETURN format('`%s`: the %s range `%s` runs backwards', p_cron, what[i], item);
      END IF;
    END LOOP;
  END LOOP;
  -- Days of the month that none of its months has (30 February), with any day of the week.
  IF fields[5] IN ('*', '?') AND fields[3] ~ '^[0-9,]+$' AND upper(fields[4]) ~ '^[0-9A-Z,-]+$' THEN
    m := ARRAY(SELECT d FROM unnest(string_to_array(fields[3], ',')) d);
    item := upper(fields[4]);
    FOR k IN 1..12 LOOP item := replace(item, months[k], k::text); END LOOP;
    IF NOT EXISTS (
      SELECT 1
      FROM unnest(string_to_array(item, ',')) r,
           generate_series(split_part(r, '-', 1)::int, coalesce(nullif(split_part(r, '-', 2), ''), split_part(r, '-', 1))::int) mo,
           unnest(m) d
      WHERE d::int <= CASE WHEN mo = 2 THEN 29 WHEN mo IN (4, 6, 9, 11) THEN 30 ELSE 31 END) THEN
      RETURN format('`%s` never fires: no month it names has that day', p_cron);
    END IF;
  END IF;
  RETURN NULL;
END
$$;

-- A schedule's parts, as the scheduler reads them: the cron expression, the zone it is read
-- in, the lateness, and the audience (a relation and its key column), if any. NULL for any
-- other trigger. (plpgsql: it names functions of files applied after this one.)
CREATE OR REPLACE FUNCTION herald_schedule_spec(p_definition jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  trig jsonb := p_definition -> 'trigger';
  rel  regclass := herald_relation(trig #>> '{audience,relation}');
BEGIN
  IF trig ->> 'type' IS DISTINCT FROM 'schedule' THEN
    RETURN NULL;
  END IF;
  RETURN jsonb_build_object(
    'cron', trig ->> 'cron',
    'zone', coalesce(trig ->> 'timezone', p_definition ->> 'timezone', 'UTC'),
    'lateness', coalesce(trig ->> 'lateness', '1 hour'),
    'audience', CASE WHEN trig ? 'audience' THEN jsonb_build_object(
      'relation', rel::text, 'key', coalesce(trig #>> '{audience,key}', herald_key_column(rel))) END);
END
$$;

-- Keeps an automation's schedule as its current version says (herald_save_automation calls
-- it): a new or changed schedule counts from now (no occurrence before the save fires); an
-- unchanged one keeps how far the scheduler has looked; a version that is not a schedule
-- drops it.
CREATE OR REPLACE FUNCTION herald_schedule_saved(p_automation_id bigint, p_definition jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  spec jsonb := herald_schedule_spec(p_definition);
BEGIN
  IF spec IS NULL THEN
    DELETE FROM herald_schedules WHERE automation_id = p_automation_id;
    RETURN;
  END IF;
  INSERT INTO herald_schedules (automation_id, spec, scanned_to)
  VALUES (p_automation_id, spec, herald_now())
  ON CONFLICT (automation_id) DO UPDATE
    SET spec = excluded.spec, scanned_to = excluded.scanned_to, next_fires = '{}'
    WHERE herald_schedules.spec IS DISTINCT FROM excluded.spec;
END
$$;

-- Scheduler: the schedules of active automations, with how far each has been looked at.
CREATE OR REPLACE FUNCTION herald_due_schedules()
RETURNS TABLE (automation_id bigint, cron text, zone text, lateness_secs float8, scanned_to timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
  SELECT s.automation_id, s.spec ->> 'cron', s.spec ->> 'zone',
         extract(epoch FROM herald_span_interval(s.spec ->> 'lateness'))::float8, s.scanned_to
  FROM herald_schedules s JOIN automations a ON a.id = s.automation_id AND a.is_active
  ORDER BY s.automation_id
$$;
REVOKE EXECUTE ON FUNCTION herald_due_schedules() FROM PUBLIC;

-- Scheduler: a schedule's occurrences from p_from (exclusive, as herald_due_schedules gave
-- it) to p_to (inclusive), as the scheduler computed them from its cron: those in p_fire
-- start an instance each, one per audience row (the rows of the audience relation whose
-- key is not null, and for which the definition's conditions may hold, as far as SQL can
-- tell; the executor checks them again), or one with no row when there is no audience;
-- those in p_missed are recorded as missed. Each (row, occurrence) at most once, even when
-- two schedulers run at once; and only a scheduler that read p_from moves the schedule on.
-- Each instance is recorded as captured at its occurrence's time, so the automation's
-- suppression window (30 seconds by default) counts from it: occurrences caught up in one
-- tick are not suppressed by each other.
-- Returns the instances started and the occurrences missed.
CREATE OR REPLACE FUNCTION herald_fire_schedule(p_automation_id bigint, p_from timestamptz, p_to timestamptz,
                                                p_fire timestamptz[], p_missed timestamptz[], p_next timestamptz[],
                                                p_now timestamptz, OUT fired integer, OUT missed integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  s     herald_schedules;
  a     automations;
  rel   regclass;
  nsp   text;
  tbl   text;
  keyc  text;
  cond  text;
BEGIN
  fired := 0;
  missed := 0;
  UPDATE herald_schedules SET scanned_to = p_to, next_fires = p_next
  WHERE automation_id = p_automation_id AND scanned_to = p_from
  RETURNING * INTO s;
  IF NOT FOUND THEN
    RETURN;  -- another scheduler moved it on first
  END IF;
  SELECT * INTO a FROM automations WHERE id = p_automation_id;
  WITH m AS (
    INSERT INTO herald_occurrences (automation_id, subject_id, occurs_on, fire_at, zone, state, done_at)
    SELECT p_automation_id, '', to_jsonb(t) #>> '{}', t, s.spec ->> 'zone', 'missed', p_now FROM unnest(p_missed) t
    ON CONFLICT DO NOTHING
    RETURNING 1
  )
  SELECT count(*) INTO missed FROM m;
  IF cardinality(p_fire) = 0 THEN
    RETURN;
  END IF;
  IF s.spec -> 'audience' IS NULL OR s.spec -> 'audience' = 'null' THEN
    WITH m AS (
      INSERT INTO herald_occurrences (automation_id, subject_id, occurs_on, fire_at, zone, state, done_at)
      SELECT p_automation_id, '', to_jsonb(t) #>> '{}', t, s.spec ->> 'zone', 'fired', p_now FROM unnest(p_fire) t
      ON CONFLICT DO NOTHING
      RETURNING occurs_on, fire_at
    ), i AS (
      INSERT INTO herald_inbox (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event,
                                snapshot, payload, run_at, created_at, updated_at)
      SELECT p_automation_id, '', '', '', '', 'schedule', '{}',
             jsonb_build_object('occurrence', m.occurs_on), p_now, m.fire_at, p_now
      FROM m
      RETURNING 1
    )
    SELECT count(*) INTO fired FROM i;
    RETURN;
  END IF;
  rel := to_regclass(s.spec #>> '{audience,relation}');
  keyc := s.spec #>> '{audience,key}';
  IF rel IS NULL OR keyc IS NULL THEN
    RAISE EXCEPTION 'herald: the audience of automation % (%) is gone', a.name, s.spec #>> '{audience,relation}'
      USING ERRCODE = '42P01';
  END IF;
  SELECT n.nspname, c.relname INTO nsp, tbl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
  cond := herald_condition_sql((SELECT v.definition -> 'conditions' FROM automation_versions v
                                WHERE v.automation_id = a.id AND v.version = a.version), 'to_jsonb(r)');
  EXECUTE format(
    'WITH m AS (
       INSERT INTO herald_occurrences (automation_id, subject_id, occurs_on, fire_at, zone, state, done_at)
       SELECT $1, r.%1$I::text, to_jsonb(t) #>> ''{}'', t, $3, ''fired'', $4
       FROM %2$s r CROSS JOIN unnest($2::timestamptz[]) t
       WHERE r.%1$I IS NOT NULL AND %3$s
       ON CONFLICT DO NOTHING
       RETURNING subject_id, occurs_on, fire_at
     ), i AS (
       INSERT INTO herald_inbox (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event,
                                 snapshot, payload, run_at, created_at, updated_at)
       SELECT $1, $5, $6, $7, m.subject_id, ''schedule'', ''{}'', jsonb_build_object(''occurrence'', m.occurs_on),
              $4, m.fire_at, $4
       FROM m
       RETURNING 1
     )
     SELECT count(*)::integer FROM i',
    keyc, rel, CASE WHEN nullif(cond, '') IS NULL THEN 'true' ELSE format('coalesce(%s, true)', cond) END)
    INTO fired
    USING p_automation_id, p_fire, s.spec ->> 'zone', p_now, nsp, tbl, keyc;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_fire_schedule(bigint, timestamptz, timestamptz, timestamptz[], timestamptz[],
                                                timestamptz[], timestamptz) FROM PUBLIC;
