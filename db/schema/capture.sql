-- Capture: attaching tables, compiling their capture triggers from the automations
-- that listen to them, and the label triggers. Re-applying this file recompiles the
-- triggers of every attached table.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- The error a NULL key raises, as the row-level capture functions raised it. It is only
-- ever reached through a COALESCE in a select list, evaluated row by row. STABLE, not
-- VOLATILE: a volatile function would keep the query that reads the rows from being folded
-- into the one that inserts them.
CREATE OR REPLACE FUNCTION herald_null_key(p_column text, p_schema text, p_table text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RAISE EXCEPTION 'herald: key column "%" of %.% is NULL', p_column, p_schema, p_table;
END
$$;

-- The column a table's rows are found by: its attached key column, else its one-column
-- primary key; NULL when it has neither.
CREATE OR REPLACE FUNCTION herald_key_column(p_table regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT coalesce(
    (SELECT att.key_column FROM herald_attachments att
     JOIN pg_class c ON c.relname = att.table_name AND c.oid = p_table
     JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = att.table_schema),
    (SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
     WHERE i.indrelid = p_table AND i.indisprimary AND i.indnatts = 1))
$$;

-- The status column a table is attached with.
CREATE OR REPLACE FUNCTION herald_status_column(p_table regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT att.status_column FROM herald_attachments att
  JOIN pg_class c ON c.oid = p_table AND c.relname = att.table_name
  JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = att.table_schema
$$;

-- `expr = 'a'`, or `expr IN ('a', 'b')`, with the values quoted.
CREATE OR REPLACE FUNCTION herald_in_list(p_expr text, p_values text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN cardinality(p_values) = 1 THEN format('%s = %L', p_expr, p_values[1])
              ELSE format('%s IN (%s)', p_expr, (SELECT string_agg(format('%L', v), ', ') FROM unnest(p_values) v)) END
$$;

-- Which rows a trigger captures: a status change (optionally from / to some statuses), an
-- `update` of any of a named set of columns, an insert, a delete. A definition's trigger
-- (its version's document) decides what its automation listens to.
-- A trigger's list: NULL (absent), one string, or an array of strings.
CREATE OR REPLACE FUNCTION herald_trigger_list(p_value jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE jsonb_typeof(p_value)
           WHEN 'string' THEN ARRAY[p_value #>> '{}']
           WHEN 'array' THEN ARRAY(SELECT jsonb_array_elements_text(p_value)) END
$$;

-- One comparison of a field's value v (a jsonb expression, present and not null) with a
-- value of the definition, as the evaluator orders values: text by its bytes, true/false,
-- numbers (whole ones exactly, others as binary floating point: decided here only when both
-- have at most 15 digits, where the two agree). NULL when it cannot be decided here; the
-- expression is NULL when the field holds another kind of value (an error to the evaluator).
CREATE OR REPLACE FUNCTION herald_condition_compare(v text, op text, lit jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE jsonb_typeof(lit)
    WHEN 'string' THEN
      format('CASE jsonb_typeof(%1$s) WHEN ''string'' THEN (%1$s #>> ''{}'') COLLATE "C" %2$s %3$L COLLATE "C" END',
             v, op, lit #>> '{}')
    WHEN 'boolean' THEN
      CASE WHEN op IN ('=', '<>') THEN
        format('CASE jsonb_typeof(%1$s) WHEN ''boolean'' THEN %1$s %2$s %3$L::jsonb END', v, op, lit::text) END
    WHEN 'number' THEN
      CASE WHEN lit::text ~ '^-?[0-9]+(\.[0-9]+)?$' AND length(regexp_replace(lit::text, '\D', '', 'g')) <= 15 THEN
        format('CASE WHEN jsonb_typeof(%1$s) = ''number'' AND (%1$s)::text ~ ''^-?[0-9]+(\.[0-9]+)?$'' '
               'AND length(regexp_replace((%1$s)::text, ''\D'', '''', ''g'')) <= 15 '
               'THEN (%1$s)::text::numeric %2$s %3$s END', v, op, lit::text) END
  END
$$;

-- A definition's trigger `conditions` are tested when the change is captured, against the
-- row as the change left it (the snapshot recorded), so an event that fails them costs no
-- inbox row, ledger row or claim.
--
-- Only what the capture function can decide exactly as the executor's evaluator would is
-- tested there: comparisons of the row's own columns (top-level fields, not `herald.*` or
-- `payload`) with values written in the definition, `is null`, `in`, `contains`, and
-- all / any / not over them, for automations whose data is the trigger's table (no context
-- relation). A comparison with now, a time or another field, text that may be read as a time,
-- a number of more than 15 digits, or a value of another kind than the definition's is left
-- undecided, and so is every part after it in an `all` or `any` (the evaluator reads them in
-- order and stops at the first error). An undecided condition records the event, and the
-- executor decides, against fresh data at the first claim.
-- The SQL test of a trigger condition over p_row (a jsonb expression: the row's snapshot):
-- an expression that is true or false where the executor's evaluator would answer the same
-- for that data, and NULL where it might answer otherwise or fail. NULL when nothing of the
-- condition can be decided here. Values are written with %L, field names as literals: the
-- result never reads anything but p_row, and never raises.
CREATE OR REPLACE FUNCTION herald_condition_sql(p_cond jsonb, p_row text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  k     text;
  parts text[] := '{}';
  part  text;
  acc   text;
  name  text;
  v     text;
  op    text;
  lit   jsonb;
  cmp   text;
  i     integer;
BEGIN
  IF jsonb_typeof(p_cond) IS DISTINCT FROM 'object' THEN
    RETURN NULL;
  END IF;
  IF (SELECT count(*) FROM jsonb_object_keys(p_cond)) = 1 AND (p_cond ? 'all' OR p_cond ? 'any') THEN
    k := CASE WHEN p_cond ? 'all' THEN 'all' ELSE 'any' END;
    IF jsonb_typeof(p_cond -> k) IS DISTINCT FROM 'array' OR jsonb_array_length(p_cond -> k) = 0 THEN
      RETURN NULL;
    END IF;
    -- The parts up to the first undecidable one: what comes after it is never reached here.
    FOR part IN SELECT herald_condition_sql(x, p_row) FROM jsonb_array_elements(p_cond -> k) WITH ORDINALITY e(x, n)
                ORDER BY n LOOP
      parts := parts || part;
      EXIT WHEN part IS NULL;
    END LOOP;
    acc := CASE WHEN parts[cardinality(parts)] IS NULL THEN 'NULL::boolean'
                WHEN k = 'all' THEN 'true' ELSE 'false' END;
    FOR i IN REVERSE cardinality(parts) .. 1 LOOP
      CONTINUE WHEN parts[i] IS NULL;
      -- A simple CASE reads its part once; NULL (undecided) matches neither branch.
      acc := format(CASE k WHEN 'all' THEN 'CASE (%s) WHEN true THEN %s WHEN false THEN false END'
                           ELSE 'CASE (%s) WHEN true THEN true WHEN false THEN %s END' END,
                    parts[i], acc);
    END LOOP;
    RETURN CASE WHEN parts[1] IS NULL THEN NULL ELSE acc END;
  END IF;
  IF (SELECT count(*) FROM jsonb_object_keys(p_cond)) = 1 AND p_cond ? 'not' THEN
    part := herald_condition_sql(p_cond -> 'not', p_row);
    RETURN CASE WHEN part IS NOT NULL THEN format('(NOT (%s))', part) END;
  END IF;
  -- A comparison of one of the row's own columns.
  IF EXISTS (SELECT 1 FROM jsonb_object_keys(p_cond) x WHERE x NOT IN ('field', 'op', 'value')) THEN
    RETURN NULL;
  END IF;
  name := CASE jsonb_typeof(p_cond -> 'field')
            WHEN 'string' THEN p_cond ->> 'field'
            WHEN 'array' THEN CASE WHEN jsonb_array_length(p_cond -> 'field') = 1
                                        AND jsonb_typeof(p_cond -> 'field' -> 0) = 'string'
                                   THEN p_cond -> 'field' ->> 0 END
          END;
  IF name IS NULL OR name = '' OR position('.' IN name) > 0 AND jsonb_typeof(p_cond -> 'field') = 'string'
     OR name IN ('herald', 'payload') THEN
    RETURN NULL;
  END IF;
  op := p_cond ->> 'op';
  v := format('(%s -> %L)', p_row, name);
  IF op IN ('is null', 'is not null') AND NOT p_cond ? 'value' THEN
    -- A field the data lacks is an error to the evaluator: undecided.
    RETURN format('CASE WHEN %1$s IS NULL THEN NULL ELSE jsonb_typeof(%1$s) %2$s ''null'' END',
                  v, CASE op WHEN 'is null' THEN '=' ELSE '<>' END);
  END IF;
  lit := p_cond -> 'value';
  IF lit IS NULL THEN
    RETURN NULL;
  END IF;
  op := CASE op WHEN '!=' THEN '<>' ELSE op END;
  IF op IN ('=', '<>', '<', '<=', '>', '>=') THEN
    -- Text that might be read as a time compares as a time when the field's is one too.
    IF jsonb_typeof(lit) = 'string' AND (lit #>> '{}') ~ '^[[:space:][:digit:]+-]' THEN
      RETURN NULL;
    END IF;
    cmp := herald_condition_compare(v, op, lit);
  ELSIF op = 'in' AND jsonb_typeof(lit) = 'array' AND jsonb_array_length(lit) > 0 THEN
    -- In order, as the evaluator reads the list: the first equal item answers, the first
    -- item of another kind fails.
    parts := '{}';
    FOR part IN SELECT herald_condition_compare(v, '=', x) FROM jsonb_array_elements(lit) WITH ORDINALITY e(x, n)
                ORDER BY n LOOP
      parts := parts || part;
      EXIT WHEN part IS NULL;
    END LOOP;
    acc := CASE WHEN parts[cardinality(parts)] IS NULL THEN 'NULL::boolean' ELSE 'false' END;
    FOR i IN REVERSE cardinality(parts) .. 1 LOOP
      CONTINUE WHEN parts[i] IS NULL;
      acc := format('CASE (%s) WHEN true THEN true WHEN false THEN %s END', parts[i], acc);
    END LOOP;
    cmp := CASE WHEN parts[1] IS NOT NULL THEN acc END;
  ELSIF op = 'contains' AND jsonb_typeof(lit) = 'string' THEN
    cmp := format('CASE jsonb_typeof(%1$s) WHEN ''string'' THEN strpos((%1$s #>> ''{}'') COLLATE "C", %2$L) > 0 '
                  'WHEN ''array'' THEN %1$s @> jsonb_build_array(%3$L::jsonb) END',
                  v, lit #>> '{}', lit::text);
  ELSIF op = 'contains' AND jsonb_typeof(lit) = 'boolean' THEN
    cmp := format('CASE jsonb_typeof(%1$s) WHEN ''array'' THEN %1$s @> jsonb_build_array(%2$L::jsonb) END', v, lit::text);
  END IF;
  IF cmp IS NULL THEN
    RETURN NULL;
  END IF;
  -- A null field holds for `is null` only; a missing one is an error (undecided).
  RETURN format('CASE WHEN %1$s IS NULL THEN NULL WHEN jsonb_typeof(%1$s) = ''null'' THEN false ELSE %2$s END', v, cmp);
END
$$;

-- The active automations with a definition that capture an operation on a table, with their
-- trigger's statuses, columns and (when their data is the table itself) conditions.
CREATE OR REPLACE FUNCTION herald_automations_capturing(p_schema text, p_table text, p_op text)
RETURNS TABLE (id bigint, ev text, froms text[], tos text[], cols text[], conds jsonb)
LANGUAGE sql STABLE AS $$
  SELECT au.id, au.trigger_event,
         herald_trigger_list(v.definition #> '{trigger,from}'),
         herald_trigger_list(v.definition #> '{trigger,to}'),
         herald_trigger_list(v.definition #> '{trigger,columns}'),
         CASE WHEN au.context_relation IS NULL THEN v.definition -> 'conditions' END
  FROM automations au
  JOIN automation_versions v ON v.automation_id = au.id AND v.version = au.version
  WHERE au.is_active AND au.source_schema = p_schema AND au.source_table = p_table
    AND au.trigger_event = ANY (CASE p_op WHEN 'insert' THEN ARRAY['insert']
                                          WHEN 'update' THEN ARRAY['status_change', 'update']
                                          ELSE ARRAY['delete'] END)
  ORDER BY au.id
$$;

-- The row-level compiler: one trigger function per operation, with a block per automation
-- that tests its trigger's statuses and conditions against the snapshot.
CREATE OR REPLACE FUNCTION herald_compile_by_row(p_schema text, p_table text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  att       herald_attachments;
  tbl       regclass := to_regclass(format('%I.%I', p_schema, p_table));
  -- Herald's own schema: the generated functions live there and name it.
  hs        text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = 'herald_inbox'::regclass);
  inbox     text := format('%I.herald_inbox', hs);
  nowfn     text := 'herald_now()'::regprocedure::text;
  op        text;
  a         record;
  status_w  text[];  -- WHEN parts of status_change automations (the status changed, implied)
  other_w   text[];  -- WHEN parts of the others
  blocks    text;
  cond      text;
  w         text;
  fn        text;
  rec       text;
  by_column boolean;
  pre       text;      -- the trigger's conditions, as far as they can be tested here
  wake      text := CASE WHEN (SELECT notify FROM herald_settings) THEN '
  PERFORM pg_notify(''herald_inbox'', '''');' ELSE '' END;
  made      integer := 0;
BEGIN
  IF tbl IS NULL THEN
    RETURN 0;  -- the table is gone; nothing to compile
  END IF;
  PERFORM herald_uncompile(tbl);
  SELECT * INTO att FROM herald_attachments WHERE table_schema = p_schema AND table_name = p_table;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
    status_w := '{}';
    other_w := '{}';
    blocks := '';
    rec := CASE op WHEN 'delete' THEN 'OLD' ELSE 'NEW' END;
    -- Whether status_change blocks must test the change themselves (an update automation
    -- shares their trigger, whose WHEN then does not imply it).
    by_column := op = 'update' AND EXISTS (
      SELECT 1 FROM automations WHERE is_active AND source_schema = p_schema AND source_table = p_table
        AND trigger_event = 'update');
    FOR a IN SELECT * FROM herald_automations_capturing(p_schema, p_table, op) LOOP
      -- The WHEN clause tests the row; the function tests its variables.
      IF a.ev = 'update' THEN
        w := '(' || (SELECT string_agg(format('OLD.%I IS DISTINCT FROM NEW.%I', c, c), ' OR ') FROM unnest(a.cols) c) || ')';
        cond := w;
        other_w := other_w || w;
      ELSE
        w := concat_ws(' AND ',
          CASE WHEN a.froms IS NOT NULL THEN herald_in_list(format('OLD.%I::text', att.status_column), a.froms) END,
          CASE WHEN a.tos IS NOT NULL THEN herald_in_list(format('NEW.%I::text', att.status_column), a.tos) END);
        cond := concat_ws(' AND ',
          CASE WHEN by_column AND a.ev = 'status_change' THEN 'old_s IS DISTINCT FROM new_s' END,
          CASE WHEN a.froms IS NOT NULL THEN herald_in_list('old_s', a.froms) END,
          CASE WHEN a.tos IS NOT NULL THEN herald_in_list('new_s', a.tos) END);
        IF a.ev = 'status_change' THEN
          status_w := status_w || coalesce(nullif(w, ''), 'true');
        ELSE
          other_w := other_w || coalesce(nullif(w, ''), 'true');
        END IF;
      END IF;
      pre := herald_condition_sql(a.conds, 'snap');
      IF pre IS NOT NULL THEN
        cond := concat_ws(' AND ', nullif(cond, ''), format('coalesce(%s, true)', pre));
      END IF;
      blocks := blocks || format('
  IF %s THEN
    INSERT INTO %s (automation_id, subject_schema, subject_table, subject_key_column, subject_id,
      event, old_status, new_status, snapshot, payload, run_at, created_at, updated_at)
    VALUES (%s, TG_TABLE_SCHEMA, TG_TABLE_NAME, %L, subject, %L, old_s, new_s, snap, %s, ts, ts, ts);
  END IF;',
        coalesce(nullif(cond, ''), 'true'), inbox, a.id, att.key_column, a.ev,
        CASE op WHEN 'delete' THEN 'snap' ELSE 'NULL' END);
      made := made + 1;
    END LOOP;
    CONTINUE WHEN cardinality(status_w) + cardinality(other_w) = 0;
    fn := format('%I.%I', hs, format('herald_cap_%s_%s', tbl::oid, op));
    -- The body is passed as a quoted literal, so no name or value in it can end it early.
    EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS %L', fn, format('
DECLARE
  ts timestamptz := %s;
  snap jsonb := to_jsonb(%s);
  subject text := %s.%I::text;
  new_s text := %s;
  old_s text := %s;
BEGIN
  IF subject IS NULL THEN
    RAISE EXCEPTION ''herald: key column "%%" of %%.%% is NULL'', %L, TG_TABLE_SCHEMA, TG_TABLE_NAME;
  END IF;%s%s
  RETURN NULL;
END
',
      nowfn, rec, rec, att.key_column,
      CASE op WHEN 'delete' THEN 'NULL' ELSE format('NEW.%I::text', att.status_column) END,
      CASE op WHEN 'insert' THEN 'NULL' ELSE format('OLD.%I::text', att.status_column) END,
      att.key_column, blocks, wake));
    -- The WHEN clause: any automation's test (status_change ones under the status changing).
    IF cardinality(status_w) > 0 THEN
      w := format('OLD.%I IS DISTINCT FROM NEW.%I', att.status_column, att.status_column);
      IF NOT 'true' = ANY (status_w) THEN
        w := w || format(' AND (%s)', array_to_string(status_w, ' OR '));
      END IF;
      other_w := ('(' || w || ')') || other_w;
    END IF;
    w := CASE WHEN 'true' = ANY (other_w) THEN 'true' ELSE array_to_string(other_w, ' OR ') END;
    EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION %s()',
                   'herald_capture_' || op, upper(op), tbl, w, fn);
  END LOOP;
  RETURN made;
END
$$;

-- Compiles an attached table's capture triggers from the automations listening to it: by
-- statement (transition tables) or, for tables attached so, by row (herald_compile_by_row).
-- A trigger's conditions are tested in a branch of each automation that has them.
CREATE OR REPLACE FUNCTION herald_compile(p_schema text, p_table text) RETURNS integer
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
  pre       text;    -- the trigger's conditions, as far as they can be tested here
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
  SELECT * INTO att FROM herald_attachments WHERE table_schema = p_schema AND table_name = p_table;
  IF NOT FOUND OR att.capture = 'row' THEN
    -- The row compiler drops the table's triggers and reads its attachment itself; a table
    -- that is no longer attached is left with no triggers.
    made := herald_compile_by_row(p_schema, p_table);
    PERFORM herald_compile_waits(p_schema, p_table);
    PERFORM herald_compile_dates(p_schema, p_table);
    RETURN made;
  END IF;
  PERFORM herald_uncompile(tbl);
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
    FOR a IN SELECT * FROM herald_automations_capturing(p_schema, p_table, op) LOOP
      made := made + 1;
      pre := herald_condition_sql(a.conds, 'e.snap');
      IF a.ev = 'update' THEN
        -- A named column changed: the test reads the rows themselves, kept in e.o and e.n.
        by_column := true;
        w := '(' || (SELECT string_agg(format('(o.r).%I IS DISTINCT FROM (n.r).%I', c, c), ' OR ')
                     FROM unnest(a.cols) c) || ')';
        keep := keep || w;
        branches := branches || format(
          'SELECT %s AS id, %L AS ev, e.* FROM e WHERE %s', a.id, a.ev,
          concat_ws(' AND ', '(' || (SELECT string_agg(format('(e.o).%I IS DISTINCT FROM (e.n).%I', c, c), ' OR ')
                                     FROM unnest(a.cols) c) || ')',
                    CASE WHEN pre IS NOT NULL THEN format('coalesce(%s, true)', pre) END));
        CONTINUE;
      END IF;
      -- A status test: the status changed (updates), and it is among the from and to lists.
      w := concat_ws(' AND ',
        CASE WHEN a.froms IS NOT NULL AND op <> 'insert' THEN herald_in_list(st_old, a.froms) END,
        CASE WHEN a.tos IS NOT NULL AND op <> 'delete' THEN herald_in_list(st_new, a.tos) END);
      -- An automation with conditions to test is matched by a branch of its own.
      IF a.ev = 'status_change' AND a.tos IS NOT NULL AND a.froms IS NULL AND pre IS NULL THEN
        tos_only := tos_only || a.tos;
      ELSIF a.ev = 'status_change' THEN
        changed := changed || ('(' || coalesce(nullif(w, ''), 'true') || ')');
      ELSE
        keep := keep || ('(' || coalesce(nullif(w, ''), 'true') || ')');
      END IF;
      IF a.tos IS NOT NULL AND op <> 'delete' AND pre IS NULL THEN
        by_status := by_status || ARRAY(
          SELECT format('(%s, %L, %L, %L::text[])', a.id, a.ev, t,
                        CASE WHEN op <> 'insert' THEN a.froms END)
          FROM unnest(a.tos) t);
      ELSE
        cond := concat_ws(' AND ',
          CASE WHEN a.ev = 'status_change' THEN 'e.old_s IS DISTINCT FROM e.new_s' END,
          CASE WHEN a.froms IS NOT NULL AND op <> 'insert' THEN herald_in_list('e.old_s', a.froms) END,
          CASE WHEN a.tos IS NOT NULL AND op <> 'delete' THEN herald_in_list('e.new_s', a.tos) END,
          CASE WHEN pre IS NOT NULL THEN format('coalesce(%s, true)', pre) END);
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
    -- The body is passed as a quoted literal, so no name or value in it can end it early.
    EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SET enable_nestloop = off AS %L',
      fn, format('
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
',
      nowfn,
      -- read once for several branches; inlined into one
      CASE WHEN cardinality(branches) > 1 THEN 'MATERIALIZED' ELSE 'NOT MATERIALIZED' END,
      rec, rec, nullkey, att.key_column, st_new, st_old, cols, src,
      array_to_string(keep, ' OR '), inbox, att.key_column, payload,
      array_to_string(branches, '
    UNION ALL '), wake));
    EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                   'herald_capture_' || op, upper(op), tbl,
                   CASE op WHEN 'insert' THEN 'NEW TABLE AS herald_new'
                           WHEN 'delete' THEN 'OLD TABLE AS herald_old'
                           ELSE 'OLD TABLE AS herald_old NEW TABLE AS herald_new' END,
                   fn);
  END LOOP;
  PERFORM herald_compile_waits(p_schema, p_table);
  PERFORM herald_compile_dates(p_schema, p_table);
  RETURN made;
END
$$;

-- Waits that follow their data. An instance sleeping in a wait until a time read from its
-- data (the wait's `until.field`, and `until.timezone.field`) parks at that wait; when one of
-- those columns of its row changes, its wake-up becomes due at once, and the executor reads
-- the time again: it sleeps on to the new time, earlier or later, or goes on. Paused
-- instances that were waiting are woken too, so a resume finds the time read again. The
-- trigger's spec (its only argument): the table's key column, and the waits as
-- "automation id:step id".
CREATE OR REPLACE FUNCTION herald_follow_waits() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  spec    jsonb := TG_ARGV[0]::jsonb;
  subject text;
BEGIN
  EXECUTE format('SELECT ($1).%I::text', spec ->> 'key') INTO subject USING NEW;
  UPDATE ONLY automation_execution_logs g
  SET run_at = herald_now(), updated_at = herald_now()
  WHERE g.subject_schema = TG_TABLE_SCHEMA AND g.subject_table = TG_TABLE_NAME AND g.subject_id = subject
    AND (g.status = 'waiting' OR (g.status = 'paused' AND g.held_from = 'waiting'))
    AND g.run_at > herald_now()
    AND g.automation_id::text || ':' || g.next_step IN (SELECT jsonb_array_elements_text(spec -> 'waits'));
  RETURN NULL;
END
$$;

-- A field's first name: the column it reads (`"starts_at"`, `"a.b"` or `["a", "b"]`).
CREATE OR REPLACE FUNCTION herald_field_column(p_field jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE jsonb_typeof(p_field) WHEN 'string' THEN split_part(p_field #>> '{}', '.', 1)
                                    WHEN 'array' THEN p_field ->> 0 END
$$;

-- Compiles a table's follow-waits trigger (herald_compile calls it, after dropping the
-- table's triggers) from every version of the automations on it, as an instance keeps the
-- version it started with: an update of a column a wait reads its time or zone from wakes
-- the instances sleeping in that wait. No such wait: no trigger.
CREATE OR REPLACE FUNCTION herald_compile_waits(p_schema text, p_table text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  tbl   regclass := to_regclass(format('%I.%I', p_schema, p_table));
  key   text;
  waits jsonb;
  cols  text[];
BEGIN
  SELECT a.key_column INTO key FROM herald_attachments a WHERE a.table_schema = p_schema AND a.table_name = p_table;
  IF tbl IS NULL OR key IS NULL THEN
    RETURN;
  END IF;
  WITH w AS (
    SELECT au.id::text || ':' || (s ->> 'id') AS wait, c.col
    FROM automations au
    JOIN automation_versions v ON v.automation_id = au.id
    CROSS JOIN LATERAL jsonb_path_query(v.definition, 'strict $.** ? (@.type == "wait" && exists(@.until))') s
    CROSS JOIN LATERAL (VALUES (herald_field_column(s #> '{until,field}')),
                               (herald_field_column(s #> '{until,timezone,field}'))) c (col)
    WHERE au.source_schema = p_schema AND au.source_table = p_table
      AND EXISTS (SELECT 1 FROM pg_attribute
                  WHERE attrelid = tbl AND attname = c.col AND attnum > 0 AND NOT attisdropped)
  )
  SELECT jsonb_agg(DISTINCT w.wait ORDER BY w.wait), array_agg(DISTINCT w.col ORDER BY w.col)
  INTO waits, cols
  FROM w;
  IF waits IS NOT NULL THEN
    EXECUTE format('CREATE TRIGGER herald_follow_waits AFTER UPDATE ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION %s(%L)',
                   tbl, (SELECT string_agg(format('OLD.%I IS DISTINCT FROM NEW.%I', c, c), ' OR ') FROM unnest(cols) c),
                   'herald_follow_waits()'::regprocedure::oid::regproc,
                   jsonb_build_object('key', key, 'waits', waits));
  END IF;
END
$$;

-- Drops Herald's triggers from a table, and the functions generated for them.
CREATE OR REPLACE FUNCTION herald_uncompile(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  t record;
BEGIN
  FOR t IN
    SELECT tg.tgname, p.oid::regprocedure AS fn, p.proname LIKE 'herald\_cap\_%' AS generated
    FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
    WHERE tg.tgrelid = tbl
      AND (p.proname LIKE 'herald\_cap\_%' OR p.proname IN ('herald_capture', 'herald_follow_waits', 'herald_follow_dates'))
  LOOP
    EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, tbl);
    IF t.generated THEN
      EXECUTE format('DROP FUNCTION IF EXISTS %s', t.fn);
    END IF;
  END LOOP;
END
$$;

-- Attaches a table: records its status and key columns and how it is captured, compiles
-- its triggers, and warns when the executor's role cannot use the table's schema.
CREATE OR REPLACE FUNCTION herald_attach(tbl regclass, status_column text, key_column text DEFAULT 'id',
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
  -- The executor reads the table (and its context relations) by name: it needs its schema.
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'herald_executor')
     AND NOT has_schema_privilege('herald_executor', sch, 'USAGE') THEN
    RAISE WARNING 'herald_attach: the role herald_executor has no USAGE on schema %', quote_ident(sch)
      USING HINT = format('GRANT USAGE ON SCHEMA %I TO herald_executor;', sch),
            DETAIL = 'Without it every instance of this table fails with "permission denied for schema".';
  END IF;
END
$$;

CREATE OR REPLACE FUNCTION herald_detach(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM herald_attachments a
  USING pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.oid = tbl AND a.table_schema = n.nspname AND a.table_name = c.relname;
  PERFORM herald_uncompile(tbl);
END
$$;

-- When automations change, the tables whose matching rules changed get new triggers.
CREATE OR REPLACE FUNCTION herald_automations_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  t record;
BEGIN
  IF TG_OP = 'INSERT' THEN
    FOR t IN SELECT DISTINCT source_schema, source_table FROM new_rows WHERE source_table IS NOT NULL LOOP
      PERFORM herald_compile(t.source_schema, t.source_table);
    END LOOP;
  ELSIF TG_OP = 'DELETE' THEN
    FOR t IN SELECT DISTINCT source_schema, source_table FROM old_rows WHERE source_table IS NOT NULL LOOP
      PERFORM herald_compile(t.source_schema, t.source_table);
    END LOOP;
  ELSE
    FOR t IN
      SELECT DISTINCT source_schema, source_table FROM (
        (SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM new_rows
         EXCEPT SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM old_rows)
        UNION ALL
        (SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM old_rows
         EXCEPT SELECT id, source_schema, source_table, is_active, trigger_event, from_status, to_status FROM new_rows)
      ) changed
      WHERE source_table IS NOT NULL
    LOOP
      PERFORM herald_compile(t.source_schema, t.source_table);
    END LOOP;
  END IF;
  RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS herald_automations_inserted ON automations;
DROP TRIGGER IF EXISTS herald_automations_updated ON automations;
DROP TRIGGER IF EXISTS herald_automations_deleted ON automations;
CREATE TRIGGER herald_automations_inserted AFTER INSERT ON automations
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_automations_changed();
CREATE TRIGGER herald_automations_updated AFTER UPDATE ON automations
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_automations_changed();
CREATE TRIGGER herald_automations_deleted AFTER DELETE ON automations
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_automations_changed();

-- A label added or removed is an event of its subject row for every active automation whose
-- trigger is that change of that label (tag_added, tag_removed, segment_joined,
-- segment_left), recorded in the same transaction. A label changed by a step carries the
-- step's cascade depth, as an update_field's change does. Runs as Herald's owner: whoever
-- may change labels may record their events.
CREATE OR REPLACE FUNCTION herald_label_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  r      herald_labels;
  change text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    r := NEW;
    change := CASE r.kind WHEN 'tag' THEN 'tag_added' ELSE 'segment_joined' END;
  ELSE
    r := OLD;
    change := CASE r.kind WHEN 'tag' THEN 'tag_removed' ELSE 'segment_left' END;
  END IF;
  INSERT INTO herald_inbox (automation_id, subject_schema, subject_table, subject_key_column, subject_id, event,
                            snapshot, run_at, created_at, updated_at)
  SELECT a.id, r.subject_schema, r.subject_table,
         coalesce(herald_key_column(to_regclass(format('%I.%I', r.subject_schema, r.subject_table))), 'id'),
         r.subject_id, change, to_jsonb(r), herald_now(), herald_now(), herald_now()
  FROM automations a
  JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
  WHERE a.is_active AND a.trigger_event = change
    AND v.definition #>> ARRAY['trigger', r.kind] = r.name;
  RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS herald_label_changed ON herald_labels;
CREATE TRIGGER herald_label_changed AFTER INSERT OR DELETE ON herald_labels
  FOR EACH ROW EXECUTE FUNCTION herald_label_changed();

-- Low-latency mode on or off: SELECT herald_low_latency(true). Recompiles every attached
-- table's capture function (run it as their owner, like herald_attach).
CREATE OR REPLACE FUNCTION herald_low_latency(p_on boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE herald_settings SET notify = p_on;
  PERFORM herald_compile(table_schema, table_name) FROM herald_attachments;
END
$$;

-- Recompile the capture triggers of every attached table with the functions above.
SELECT herald_compile(table_schema, table_name) FROM herald_attachments;
