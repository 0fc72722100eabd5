-- Herald schema 12: capture by statement, a choice per attached table.
--
-- By row (the default, as before): a trigger per changed row, whose WHEN clause keeps other
-- changes from calling plpgsql at all, and one INSERT per event. Cheapest for tables changed
-- a row at a time.
--
-- By statement (herald_attach(..., capture => 'statement')): statement-level triggers with
-- transition tables. One INSERT ... SELECT per statement moves every event of that
-- statement into the inbox, so a bulk UPDATE of 10,000 rows costs one statement of 10,000
-- rows, not 10,000 statements of one. Every statement on the table pays for it a little:
-- Postgres keeps each changed row for the trigger, and the trigger runs even when no row
-- changed as anything listens for.
--
-- Both record the same events (one per row and automation that listens, with the same
-- columns, snapshot and times) in the transaction of the change, under the same trigger
-- names (herald_capture_insert, _update, _delete) and generated functions' names
-- (herald_cap_<table oid>_<op>); low-latency mode notifies once per statement that captured
-- something. By statement, the old and new rows of an UPDATE are paired by their position in
-- the transition tables, where Postgres writes them together row by row, so a statement that
-- changes the key column as well is captured as a row trigger sees it (the subject is the
-- new key), never by joining rows that merely share a key value.

ALTER TABLE herald_attachments
  ADD COLUMN capture text NOT NULL DEFAULT 'row' CHECK (capture IN ('row', 'statement'));

-- The row-level compiler of schema 9, kept as it is; herald_compile below chooses.
ALTER FUNCTION herald_compile(text, text) RENAME TO herald_compile_by_row;

-- Attach (or re-attach) a table. `capture`: 'row' or 'statement'; NULL keeps the table's
-- current choice ('row' for a table attached for the first time).
DROP FUNCTION herald_attach(regclass, text, text);
CREATE FUNCTION herald_attach(tbl regclass, status_column text, key_column text DEFAULT 'id',
                              capture text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  col text;
  sch text;
  rel text;
BEGIN
  FOREACH col IN ARRAY ARRAY[status_column, key_column] LOOP
    PERFORM 1 FROM pg_attribute
    WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'herald_attach: % has no column "%"', tbl, col;
    END IF;
  END LOOP;
  IF capture IS NOT NULL AND capture NOT IN ('row', 'statement') THEN
    RAISE EXCEPTION 'herald_attach: capture is ''row'' or ''statement'', not %', quote_literal(capture)
      USING ERRCODE = '22023';
  END IF;
  -- Statement triggers on a partitioned table see only statements that name it, not those
  -- that change a partition directly; its row triggers are cloned onto every partition.
  IF capture = 'statement' AND (SELECT relkind FROM pg_class WHERE oid = tbl) = 'p' THEN
    RAISE EXCEPTION 'herald_attach: % is partitioned; capture it by row', tbl
      USING ERRCODE = '22023',
            DETAIL = 'By statement, a change made to a partition directly would not be captured.';
  END IF;
  SELECT n.nspname, c.relname INTO sch, rel
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
  INSERT INTO herald_attachments (table_schema, table_name, status_column, key_column, capture)
  VALUES (sch, rel, status_column, key_column, coalesce(capture, 'row'))
  ON CONFLICT (table_schema, table_name) DO UPDATE
    SET status_column = excluded.status_column, key_column = excluded.key_column,
        capture = coalesce(herald_attach.capture, herald_attachments.capture);
  PERFORM herald_compile(sch, rel);
END
$$;

-- The error a NULL key raises, as the row-level capture functions raised it. It is only
-- ever reached through a COALESCE in a select list, evaluated row by row. STABLE, not
-- VOLATILE: a volatile function would keep the query that reads the rows from being folded
-- into the one that inserts them.
CREATE FUNCTION herald_null_key(p_column text, p_schema text, p_table text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RAISE EXCEPTION 'herald: key column "%" of %.% is NULL', p_column, p_schema, p_table;
END
$$;

-- (Re)creates the capture triggers of one attached table from its active automations, by
-- row (herald_compile_by_row) or by statement as the attachment says. By statement: after
-- insert, after update and after delete, each FOR EACH STATEMENT with its transition
-- table(s), calling a function generated for the table. The function reads the changed
-- rows once, keeps those some automation listens to, and inserts their events with one
-- INSERT ... SELECT: automations listening for statuses are matched by a hash join on the
-- new status, the others by their own test. Identifiers are quoted with %I, values with %L.
-- A deleted row's snapshot is also its event's payload: the instance's data, as the row is
-- gone. Returns how many automations it compiled in.
CREATE FUNCTION herald_compile(p_schema text, p_table text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  att       herald_attachments;
  tbl       regclass := to_regclass(format('%I.%I', p_schema, p_table));
  -- Herald's own schema: the generated functions live there and name it.
  hs        text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = 'herald_inbox'::regclass);
  inbox     text := format('%I.herald_inbox', hs);
  nowfn     text := 'herald_now()'::regprocedure::text;
  nullkey   text := 'herald_null_key(text, text, text)'::regprocedure::oid::regproc::text;
  op        text;
  a         record;
  keep      text[];  -- the tests of every automation, over the transition rows: which rows to read
  tos_only  text[];  -- the to statuses of status_change automations with no other test
  changed   text[];  -- the other tests of status_change automations, under the status changing
  by_column boolean; -- some automation tests named columns: the old row is read whole too
  by_status text[];  -- VALUES rows (automation, event, to status, from statuses) of the hash join
  branches  text[];  -- SELECTs of the automations matched by their own test
  cond      text;
  w         text;
  fn        text;
  src       text;    -- the transition rows: n.r the new row (n.i its place), o.r the old one
  rec       text;    -- the row an event describes
  st_new    text;
  st_old    text;
  payload   text;
  cols      text;
  made      integer := 0;
  wake      text := CASE WHEN (SELECT notify FROM herald_settings) THEN '
  IF FOUND THEN
    PERFORM pg_notify(''herald_inbox'', '''');
  END IF;' ELSE '' END;
BEGIN
  IF tbl IS NULL THEN
    RETURN 0;  -- the table is gone; nothing to compile
  END IF;
  PERFORM herald_uncompile(tbl);
  SELECT * INTO att FROM herald_attachments WHERE table_schema = p_schema AND table_name = p_table;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  IF att.capture = 'row' THEN
    RETURN herald_compile_by_row(p_schema, p_table);
  END IF;
  FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
    keep := '{}';
    tos_only := '{}';
    changed := '{}';
    by_status := '{}';
    branches := '{}';
    by_column := false;
    rec := CASE op WHEN 'delete' THEN 'o' ELSE 'n' END;
    st_new := CASE op WHEN 'delete' THEN 'NULL::text' ELSE 'n.s' END;
    st_old := CASE op WHEN 'insert' THEN 'NULL::text' ELSE 'o.s' END;
    payload := CASE op WHEN 'delete' THEN 'x.snap' ELSE 'NULL::jsonb' END;
    FOR a IN
      SELECT au.id, au.trigger_event AS ev,
             herald_trigger_list(CASE WHEN v.definition IS NOT NULL THEN v.definition #> '{trigger,from}'
                                      ELSE to_jsonb(au.from_status) END) AS froms,
             herald_trigger_list(CASE WHEN v.definition IS NOT NULL THEN v.definition #> '{trigger,to}'
                                      ELSE to_jsonb(au.to_status) END) AS tos,
             herald_trigger_list(v.definition #> '{trigger,columns}') AS cols
      FROM automations au
      LEFT JOIN automation_versions v ON v.automation_id = au.id AND v.version = au.version
      WHERE au.is_active AND au.source_schema = p_schema AND au.source_table = p_table
        AND au.trigger_event = ANY (CASE op WHEN 'insert' THEN ARRAY['insert']
                                            WHEN 'update' THEN ARRAY['status_change', 'update']
                                            ELSE ARRAY['delete'] END)
      ORDER BY au.id
    LOOP
      made := made + 1;
      IF a.ev = 'update' THEN
        -- A named column changed: the test reads the rows themselves, kept in e.o and e.n.
        by_column := true;
        w := '(' || (SELECT string_agg(format('(o.r).%I IS DISTINCT FROM (n.r).%I', c, c), ' OR ')
                     FROM unnest(a.cols) c) || ')';
        keep := keep || w;
        branches := branches || format(
          'SELECT %s AS id, %L AS ev, e.* FROM e WHERE %s', a.id, a.ev,
          '(' || (SELECT string_agg(format('(e.o).%I IS DISTINCT FROM (e.n).%I', c, c), ' OR ')
                  FROM unnest(a.cols) c) || ')');
        CONTINUE;
      END IF;
      -- A status test: the status changed (updates), and it is among the from and to lists.
      w := concat_ws(' AND ',
        CASE WHEN a.froms IS NOT NULL AND op <> 'insert' THEN herald_in_list(st_old, a.froms) END,
        CASE WHEN a.tos IS NOT NULL AND op <> 'delete' THEN herald_in_list(st_new, a.tos) END);
      IF a.ev = 'status_change' AND a.tos IS NOT NULL AND a.froms IS NULL THEN
        tos_only := tos_only || a.tos;
      ELSIF a.ev = 'status_change' THEN
        changed := changed || ('(' || coalesce(nullif(w, ''), 'true') || ')');
      ELSE
        keep := keep || ('(' || coalesce(nullif(w, ''), 'true') || ')');
      END IF;
      IF a.tos IS NOT NULL AND op <> 'delete' THEN
        by_status := by_status || ARRAY(
          SELECT format('(%s, %L, %L, %L::text[])', a.id, a.ev, t,
                        CASE WHEN op <> 'insert' THEN a.froms END)
          FROM unnest(a.tos) t);
      ELSE
        cond := concat_ws(' AND ',
          CASE WHEN a.ev = 'status_change' THEN 'e.old_s IS DISTINCT FROM e.new_s' END,
          CASE WHEN a.froms IS NOT NULL AND op <> 'insert' THEN herald_in_list('e.old_s', a.froms) END);
        branches := branches || format('SELECT %s AS id, %L AS ev, e.* FROM e WHERE %s',
                                       a.id, a.ev, coalesce(nullif(cond, ''), 'true'));
      END IF;
    END LOOP;
    IF cardinality(tos_only) > 0 THEN
      changed := changed || herald_in_list(st_new, ARRAY(SELECT DISTINCT t FROM unnest(tos_only) t ORDER BY t));
    END IF;
    IF cardinality(changed) > 0 THEN
      keep := format('(%s IS DISTINCT FROM %s AND (%s))', st_old, st_new, array_to_string(changed, ' OR ')) || keep;
    END IF;
    CONTINUE WHEN cardinality(keep) = 0;
    IF cardinality(by_status) > 0 THEN
      branches := format(
        'SELECT a.id, a.ev, e.* FROM e JOIN (VALUES %s) AS a (id, ev, s, f) ON a.s = e.new_s
         WHERE (a.ev <> ''status_change'' OR e.old_s IS DISTINCT FROM e.new_s) AND (a.f IS NULL OR e.old_s = ANY (a.f))',
        array_to_string(by_status, ', ')) || branches;
    END IF;
    -- The rows, each with its status (s) and key (k) read once; an update's old and new rows
    -- paired by their places (i), the old row read whole only for tests of named columns.
    src := format('(SELECT %s t AS r, t.%I::text AS s, t.%I::text AS k FROM %s t) %s',
                  CASE op WHEN 'update' THEN 'row_number() OVER () AS i,' ELSE '' END,
                  att.status_column, att.key_column,
                  CASE op WHEN 'delete' THEN 'herald_old' ELSE 'herald_new' END, rec)
        || CASE WHEN op = 'update' THEN format('
    JOIN (SELECT row_number() OVER () AS i, %s t.%I::text AS s FROM herald_old t) o USING (i)',
                  CASE WHEN by_column THEN 't AS r,' ELSE '' END, att.status_column) ELSE '' END;
    cols := CASE WHEN by_column THEN ', o.r AS o, n.r AS n' ELSE '' END;
    fn := format('%I.%I', hs, format('herald_cap_%s_%s', tbl::oid, op));
    -- plpgsql keeps the plan it made for a table's first statements, and a plan made for
    -- one changed row may pair rows by a nested loop: quadratic in the rows of a later bulk
    -- statement. Without nested loops, pairing is a hash join whatever the sizes.
    EXECUTE format('CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off AS $f$
DECLARE
  ts timestamptz := %s;
  -- What the inbox column defaults would read for every row (see 0009), read once.
  depth integer := coalesce(nullif(current_setting(''herald.cascade_depth'', true), '''')::integer, 0);
  cause bigint := nullif(current_setting(''herald.caused_by'', true), '''')::bigint;
BEGIN
  WITH e AS %s (
    SELECT to_jsonb(%s.r) AS snap, coalesce(%s.k, %s(%L, TG_TABLE_SCHEMA, TG_TABLE_NAME)) AS subject,
           %s AS new_s, %s AS old_s%s
    FROM %s
    WHERE %s
  )
  INSERT INTO %s (automation_id, subject_schema, subject_table, subject_key_column, subject_id,
    event, old_status, new_status, snapshot, payload, cascade_depth, caused_by, run_at, created_at, updated_at)
  SELECT x.id, TG_TABLE_SCHEMA, TG_TABLE_NAME, %L, x.subject, x.ev, x.old_s, x.new_s, x.snap, %s, depth, cause,
         ts, ts, ts
  FROM (%s) AS x;%s
  RETURN NULL;
END
$f$',
      fn, nowfn,
      -- read once for several branches; inlined into one
      CASE WHEN cardinality(branches) > 1 THEN 'MATERIALIZED' ELSE 'NOT MATERIALIZED' END,
      rec, rec, nullkey, att.key_column, st_new, st_old, cols, src,
      array_to_string(keep, ' OR '), inbox, att.key_column, payload,
      array_to_string(branches, '
    UNION ALL '), wake);
    EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   'herald_capture_' || op, upper(op), tbl,
                   CASE op WHEN 'insert' THEN 'NEW TABLE AS herald_new'
                           WHEN 'delete' THEN 'OLD TABLE AS herald_old'
                           ELSE 'OLD TABLE AS herald_old NEW TABLE AS herald_new' END,
                   fn);
  END LOOP;
  RETURN made;
END
$$;

-- Attached tables keep their row triggers (capture 'row'); nothing to recompile.
