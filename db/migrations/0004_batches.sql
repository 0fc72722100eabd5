-- Herald schema 4: the executor claims, loads and writes back a whole queue batch at once.

-- A log's template variables (see herald_context), or why they could not be read, without
-- failing the statement that asks: {"context": {...}} or {"error": "...", "sqlstate": "..."}.
-- The executor reads a batch's contexts in the statement that claims it.
CREATE FUNCTION herald_try_context(p_log_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN jsonb_build_object('context', herald_context(p_log_id));
EXCEPTION WHEN OTHERS THEN
  RETURN jsonb_build_object('error', SQLERRM, 'sqlstate', SQLSTATE);
END
$$;

-- herald_context compared the key as text (`key::text = $1`), which no index serves: every
-- message read its whole context relation. It now casts the subject's key to the key
-- column's own type, so the relation's index on that column finds the row.
CREATE OR REPLACE FUNCTION herald_context(p_log_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  l       record;
  rel     regclass;
  keycol  text;
  keytype text;
  hits    jsonb[];
BEGIN
  SELECT g.subject_schema, g.subject_table, g.subject_key_column, g.subject_id,
         a.context_relation, a.context_key_column
  INTO l
  FROM ONLY automation_execution_logs g
  LEFT JOIN automations a ON a.id = g.automation_id
  WHERE g.id = p_log_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no execution log %', p_log_id USING ERRCODE = 'no_data_found';
  END IF;

  IF l.context_relation IS NOT NULL THEN
    rel := to_regclass(l.context_relation);
    keycol := l.context_key_column;
    IF rel IS NULL THEN
      RAISE EXCEPTION 'context relation % does not exist', l.context_relation
        USING ERRCODE = 'undefined_table';
    END IF;
  ELSE
    rel := to_regclass(format('%I.%I', l.subject_schema, l.subject_table));
    keycol := l.subject_key_column;
    IF rel IS NULL THEN
      RAISE EXCEPTION 'subject table %.% does not exist', l.subject_schema, l.subject_table
        USING ERRCODE = 'undefined_table';
    END IF;
  END IF;
  SELECT format_type(atttypid, atttypmod) INTO keytype
  FROM pg_attribute WHERE attrelid = rel AND attname = keycol AND attnum > 0 AND NOT attisdropped;
  IF keytype IS NULL THEN
    RAISE EXCEPTION 'column "%" of % does not exist', keycol, rel USING ERRCODE = 'undefined_column';
  END IF;

  EXECUTE format('SELECT array_agg(to_jsonb(c)) FROM (SELECT * FROM %s WHERE %I = $1::%s LIMIT 2) c',
                 rel, keycol, keytype)
    INTO hits USING l.subject_id;

  IF hits IS NULL THEN
    RAISE EXCEPTION 'no row in % where % = %', rel, keycol, l.subject_id USING ERRCODE = 'no_data_found';
  ELSIF array_length(hits, 1) > 1 THEN
    RAISE EXCEPTION 'more than one row in % where % = %', rel, keycol, l.subject_id
      USING ERRCODE = 'too_many_rows';
  END IF;
  RETURN hits[1];
END
$$;
