-- Herald schema 8: automations as workflow definitions, saved through one checked path.

-- Every saved definition of every automation; an instance keeps the version it started with.
CREATE TABLE automation_versions (
  automation_id bigint NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
  version       integer NOT NULL,
  definition    jsonb NOT NULL,
  checksum      text NOT NULL,  -- 'sha256:' and the hex digest of the definition as stored
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (automation_id, version)
);

ALTER TABLE automations ADD COLUMN version integer;

-- A span as definitions write it: "2 hours", "-1 day", "1 week 2 days", "30m", or ISO 8601
-- ("PT2H"). Herald reads the same forms; this is the subset both sides agree on.
CREATE FUNCTION herald_span_problem(p_value jsonb, p_what text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN jsonb_typeof(p_value) IS DISTINCT FROM 'string' THEN
      format('%s is a span such as "2 hours" or "-1 day"', p_what)
    WHEN p_value #>> '{}' ~* '^\s*[+-]?\s*(\d+\s*(years?|y|months?|mo|weeks?|w|days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)\s*,?\s*)+$'
      OR p_value #>> '{}' ~ '^[+-]?P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$'
         AND p_value #>> '{}' !~ '^[+-]?PT?$' THEN NULL
    ELSE format('`%s` is not a span such as "2 hours" or "-1 day"', p_value #>> '{}')
  END
$$;

-- One problem as a list of [path, message], or an empty list when there is no message.
CREATE FUNCTION herald_problem(p_path text, p_message text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_message IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(jsonb_build_array(p_path, p_message)) END
$$;

-- The kinds of value each column of a relation holds, as conditions compare them:
-- number, text, bool, time, list or other.
CREATE FUNCTION herald_column_kinds(p_relation regclass) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT coalesce(jsonb_object_agg(a.attname, CASE
           WHEN t.typcategory = 'N' THEN 'number'
           WHEN t.typcategory = 'S' THEN 'text'
           WHEN t.typcategory = 'B' THEN 'bool'
           WHEN t.typcategory = 'D' AND t.typname <> 'time' AND t.typname <> 'timetz' THEN 'time'
           WHEN t.typcategory = 'A' THEN 'list'
           ELSE 'other' END), '{}'::jsonb)
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
  WHERE a.attrelid = p_relation AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- A relation named in a definition, or NULL when there is none by that name.
CREATE FUNCTION herald_relation(p_name text) RETURNS regclass
LANGUAGE sql STABLE AS $$
  SELECT to_regclass(CASE WHEN position('.' IN p_name) > 0 THEN p_name ELSE 'public.' || p_name END)
$$;

-- The mistakes in a condition, as [path, message] pairs. p_kinds: the data's columns and
-- their kinds (NULL when the data's relation is not known when saving).
CREATE FUNCTION herald_condition_problems(p_cond jsonb, p_path text, p_depth integer, p_kinds jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  k        text;
  item     jsonb;
  i        integer := 0;
  op       text;
  val      jsonb;
  field    text[];
  kind     text;
  vkind    text;
BEGIN
  IF p_depth > 16 THEN
    RETURN jsonb_build_array(jsonb_build_array(p_path, 'conditions may nest at most 16 deep'));
  END IF;
  IF jsonb_typeof(p_cond) IS DISTINCT FROM 'object' THEN
    RETURN jsonb_build_array(jsonb_build_array(p_path,
      'a condition is an object: all, any, not, or {field, op, value}'));
  END IF;
  IF p_cond ?| ARRAY['all', 'any'] AND (SELECT count(*) FROM jsonb_object_keys(p_cond)) = 1 THEN
    k := CASE WHEN p_cond ? 'all' THEN 'all' ELSE 'any' END;
    IF jsonb_typeof(p_cond -> k) IS DISTINCT FROM 'array' OR jsonb_array_length(p_cond -> k) = 0 THEN
      RETURN jsonb_build_array(jsonb_build_array(p_path || '.' || k,
        format('`%s` takes a non-empty list of conditions', k)));
    END IF;
    FOR item IN SELECT value FROM jsonb_array_elements(p_cond -> k) LOOP
      problems := problems || herald_condition_problems(item, format('%s.%s[%s]', p_path, k, i), p_depth + 1, p_kinds);
      i := i + 1;
    END LOOP;
    RETURN problems;
  END IF;
  IF p_cond ? 'not' AND (SELECT count(*) FROM jsonb_object_keys(p_cond)) = 1 THEN
    RETURN herald_condition_problems(p_cond -> 'not', p_path || '.not', p_depth + 1, p_kinds);
  END IF;
  IF NOT (p_cond ? 'field' OR p_cond ? 'op') THEN
    RETURN jsonb_build_array(jsonb_build_array(p_path, format(
      'unknown condition with keys %s; expected all, any, not, or {field, op, value}',
      (SELECT string_agg(key, ', ' ORDER BY key) FROM jsonb_object_keys(p_cond) key))));
  END IF;
  FOR k IN SELECT key FROM jsonb_object_keys(p_cond) key WHERE key NOT IN ('field', 'op', 'value') ORDER BY 1 LOOP
    problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.' || k,
      'unknown key in a comparison; it takes field, op and value'));
  END LOOP;
  -- The field, and the kind of value it holds when the data's columns are known.
  IF jsonb_typeof(p_cond -> 'field') = 'string' THEN
    field := string_to_array(p_cond ->> 'field', '.');
  ELSIF jsonb_typeof(p_cond -> 'field') = 'array' THEN
    field := ARRAY(SELECT jsonb_array_elements_text(p_cond -> 'field'));
  END IF;
  IF field IS NULL OR cardinality(field) = 0 OR '' = ANY (field) THEN
    problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.field',
      'a comparison names its field: text ("starts_at", "herald.new_status") or a list of names'));
  ELSIF p_kinds IS NOT NULL AND field[1] NOT IN ('herald', 'steps', 'payload') THEN
    kind := p_kinds ->> field[1];
    IF kind IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.field',
        format('the data has no column `%s`', field[1])));
    ELSIF cardinality(field) > 1 THEN
      kind := NULL;  -- inside a json column: not known
    END IF;
  END IF;
  op := p_cond ->> 'op';
  val := p_cond -> 'value';
  vkind := CASE
    WHEN val IS NULL THEN NULL
    WHEN jsonb_typeof(val) = 'object' AND (val ? 'now' OR val ? 'at' OR val ? 'plus') THEN 'time'
    WHEN jsonb_typeof(val) = 'object' THEN 'field'
    WHEN jsonb_typeof(val) = 'boolean' THEN 'bool'
    WHEN jsonb_typeof(val) = 'string' THEN 'text'
    ELSE jsonb_typeof(val) END;
  IF op IS NULL THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.op',
      'a comparison has an operator, one of =, <>, <, <=, >, >=, in, contains, is null, is not null'));
  ELSIF op IN ('is null', 'is not null') THEN
    IF val IS NOT NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.value', format('`%s` takes no value', op)));
    END IF;
    RETURN problems;
  ELSIF op NOT IN ('=', '<>', '!=', '<', '<=', '>', '>=', 'in', 'contains') THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.op', format(
      'unknown operator `%s`; expected one of =, <>, <, <=, >, >=, in, contains, is null, is not null', op)));
  END IF;
  IF val IS NULL THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.value', format('`%s` compares with a value', op)));
  ELSIF vkind = 'null' THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.value',
      'compare with null by `is null` or `is not null`'));
  ELSIF op = 'in' AND vkind <> 'array' THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.value', '`in` takes a list of values'));
  ELSIF op <> 'in' AND vkind = 'array' THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.value', 'a list is the value of `in` only'));
  ELSIF op IN ('<', '<=', '>', '>=') AND vkind = 'bool' THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.value',
      'true/false can only be compared with = or <>'));
  ELSIF vkind = 'time' AND op IN ('in', 'contains') THEN
    RETURN problems || jsonb_build_array(jsonb_build_array(p_path || '.value',
      format('a time is compared with =, <>, <, <=, > or >=, not `%s`', op)));
  END IF;
  IF vkind = 'time' THEN
    IF val ? 'now' AND jsonb_typeof(val -> 'now') <> 'boolean' THEN
      problems := problems || herald_problem(p_path || '.value', herald_span_problem(val -> 'now', '`now`'));
    ELSIF val ? 'plus' THEN
      problems := problems || herald_problem(p_path || '.value', herald_span_problem(val -> 'plus', '`plus`'));
    ELSIF val ? 'at' AND (jsonb_typeof(val -> 'at') <> 'string'
                          OR (val ->> 'at') !~ '^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$') THEN
      problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.value',
        '`at` is a time with its offset, such as "2026-01-01T09:00:00Z"'));
    END IF;
  END IF;
  -- A field of a known kind compared with a value it can never equal or order against.
  IF kind IS NOT NULL AND kind <> 'other' AND vkind <> 'field' THEN
    IF op = 'in' THEN
      vkind := (SELECT CASE WHEN count(DISTINCT jsonb_typeof(e)) = 1 THEN min(jsonb_typeof(e)) END
                FROM jsonb_array_elements(val) e);
      vkind := CASE vkind WHEN 'string' THEN 'text' WHEN 'boolean' THEN 'bool' ELSE vkind END;
    END IF;
    IF op = 'contains' THEN
      IF kind NOT IN ('list', 'text') THEN
        problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.op',
          format('`%s` holds %s; `contains` looks in a list or in text', field[1], kind)));
      END IF;
    ELSIF NOT (vkind = kind OR (kind = 'time' AND vkind IN ('time', 'text'))) THEN
      problems := problems || jsonb_build_array(jsonb_build_array(p_path || '.value', format(
        '`%s` holds %s, so it cannot be compared with %s', field[1],
        CASE kind WHEN 'bool' THEN 'true/false' WHEN 'list' THEN 'a list' WHEN 'time' THEN 'a time' ELSE kind END,
        CASE vkind WHEN 'bool' THEN 'true/false' WHEN 'text' THEN 'text' WHEN 'time' THEN 'a time'
                   WHEN 'number' THEN 'a number' ELSE 'values of mixed kinds' END)));
    END IF;
  END IF;
  RETURN problems;
END
$$;

-- A template's text: required, non-empty text. (Whether it compiles is checked where
-- templates run, in the executor; this checks what SQL can.)
CREATE FUNCTION herald_text_problem(p_step jsonb, p_key text, p_path text, p_required boolean DEFAULT true)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN NOT p_step ? p_key THEN
      CASE WHEN p_required THEN jsonb_build_array(jsonb_build_array(p_path || '.' || p_key, 'is required')) ELSE '[]' END
    WHEN jsonb_typeof(p_step -> p_key) <> 'string' THEN jsonb_build_array(jsonb_build_array(p_path || '.' || p_key, 'is text'))
    WHEN btrim(p_step ->> p_key) = '' THEN jsonb_build_array(jsonb_build_array(p_path || '.' || p_key, 'is empty'))
    ELSE '[]' END
$$;

-- The mistakes in a list of steps, and the ids they use in order:
-- {"problems": [[path, message], ...], "ids": [[path, id], ...]}.
CREATE FUNCTION herald_steps_problems(p_steps jsonb, p_path text, p_depth integer, p_kinds jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  ids      jsonb := '[]';
  step     jsonb;
  i        integer := 0;
  path     text;
  kind     text;
  allowed  text[];
  k        text;
  inner_r  jsonb;
  arm      text;
  retry    jsonb;
BEGIN
  IF jsonb_typeof(p_steps) IS DISTINCT FROM 'array' THEN
    RETURN jsonb_build_object('problems', jsonb_build_array(jsonb_build_array(p_path, 'is a list of steps')), 'ids', '[]'::jsonb);
  END IF;
  FOR step IN SELECT value FROM jsonb_array_elements(p_steps) LOOP
    path := format('%s[%s]', p_path, i);
    i := i + 1;
    IF jsonb_typeof(step) <> 'object' THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path, 'a step is an object'));
      CONTINUE;
    END IF;
    IF jsonb_typeof(step -> 'id') = 'string' THEN
      IF (step ->> 'id') !~ '^[A-Za-z0-9_-]{1,64}$' THEN
        problems := problems || jsonb_build_array(jsonb_build_array(path || '.id',
          format('`%s`: a step id is 1 to 64 letters, digits, - and _', step ->> 'id')));
      ELSE
        ids := ids || jsonb_build_array(jsonb_build_array(path || '.id', step ->> 'id'));
      END IF;
    ELSE
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.id', 'is required'));
    END IF;
    -- on_error
    IF step ? 'on_error' THEN
      IF step -> 'on_error' IN ('"stop"', '"continue"') THEN
        NULL;
      ELSIF jsonb_typeof(step #> '{on_error,retry}') = 'object' THEN
        retry := step #> '{on_error,retry}';
        IF jsonb_typeof(retry -> 'times') IS DISTINCT FROM 'number'
           OR (retry ->> 'times')::numeric NOT IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_error.retry.times', 'is a count from 1 to 10'));
        END IF;
        IF retry ? 'backoff' AND herald_span_problem(retry -> 'backoff', 'a backoff') IS NOT NULL THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_error.retry.backoff',
            herald_span_problem(retry -> 'backoff', 'a backoff')));
        END IF;
      ELSE
        problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_error',
          'is "stop", "continue" or {"retry": {"times": 3, "backoff": "1 minute"}}'));
      END IF;
    END IF;
    kind := step ->> 'type';
    allowed := CASE kind
      WHEN 'send_email' THEN ARRAY['from', 'to', 'subject', 'text', 'html']
      WHEN 'send_sms' THEN ARRAY['to', 'body']
      WHEN 'wait' THEN ARRAY['for', 'until']
      WHEN 'branch' THEN ARRAY['if', 'then', 'else']
      WHEN 'update_field' THEN ARRAY['table', 'key', 'set']
      WHEN 'add_tag' THEN ARRAY['tag'] WHEN 'remove_tag' THEN ARRAY['tag']
      WHEN 'add_to_segment' THEN ARRAY['segment'] WHEN 'remove_from_segment' THEN ARRAY['segment']
      WHEN 'webhook' THEN ARRAY['url', 'body', 'secret', 'timeout']
      WHEN 'create_task' THEN ARRAY['title', 'assignee', 'due', 'notes']
      WHEN 'notify_admin' THEN ARRAY['subject', 'text']
    END;
    IF kind IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.type', 'is required'));
      CONTINUE;
    ELSIF allowed IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.type', format(
        'unknown step type `%s`; expected one of send_email, send_sms, wait, branch, update_field, add_tag, '
        'remove_tag, add_to_segment, remove_from_segment, webhook, create_task, notify_admin', kind)));
      CONTINUE;
    END IF;
    FOR k IN SELECT key FROM jsonb_object_keys(step) key
             WHERE key <> ALL (allowed || ARRAY['id', 'type', 'on_error']) ORDER BY 1 LOOP
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.' || k,
        format('unknown key; expected %s', array_to_string(ARRAY['id', 'type', 'on_error'] || allowed, ', '))));
    END LOOP;
    CASE kind
      WHEN 'send_email' THEN
        problems := problems || herald_text_problem(step, 'to', path) || herald_text_problem(step, 'subject', path)
          || herald_text_problem(step, 'from', path, false) || herald_text_problem(step, 'text', path, false)
          || herald_text_problem(step, 'html', path, false);
        IF NOT (step ? 'text' OR step ? 'html') THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'an email has `text`, `html` or both'));
        END IF;
      WHEN 'send_sms' THEN
        problems := problems || herald_text_problem(step, 'to', path) || herald_text_problem(step, 'body', path);
      WHEN 'wait' THEN
        IF step ? 'for' AND step ? 'until' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'a wait has `for` or `until`, not both'));
        ELSIF step ? 'for' THEN
          IF herald_span_problem(step -> 'for', 'a wait''s `for`') IS NOT NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for', herald_span_problem(step -> 'for', 'a wait''s `for`')));
          ELSIF (step ->> 'for') ~ '^\s*-' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for', 'a wait cannot last a negative span'));
          END IF;
        ELSIF jsonb_typeof(step -> 'until') = 'object' THEN
          IF jsonb_typeof(step #> '{until,field}') IS DISTINCT FROM 'string' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.field', '`until` names the field that holds the time'));
          ELSIF p_kinds IS NOT NULL AND split_part(step #>> '{until,field}', '.', 1) NOT IN ('herald', 'steps', 'payload') THEN
            IF p_kinds ->> split_part(step #>> '{until,field}', '.', 1) IS NULL THEN
              problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.field',
                format('the data has no column `%s`', split_part(step #>> '{until,field}', '.', 1))));
            ELSIF position('.' IN step #>> '{until,field}') = 0
                  AND p_kinds ->> (step #>> '{until,field}') NOT IN ('time', 'text', 'other') THEN
              problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.field',
                format('`%s` holds %s, not a time', step #>> '{until,field}', p_kinds ->> (step #>> '{until,field}'))));
            END IF;
          END IF;
          IF step #> '{until}' ? 'offset' AND herald_span_problem(step #> '{until,offset}', 'an offset') IS NOT NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.offset', herald_span_problem(step #> '{until,offset}', 'an offset')));
          END IF;
          IF step #> '{until}' ? 'at' AND coalesce(step #>> '{until,at}', '') !~ '^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.at', '`at` is a local time of day such as "18:00"'));
          END IF;
          IF jsonb_typeof(step #> '{until,timezone}') = 'string'
             AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = step #>> '{until,timezone}') THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.until.timezone',
              format('`%s` is not a time zone name such as "Europe/London"', step #>> '{until,timezone}')));
          END IF;
        ELSIF step ? 'until' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.until', '`until` is an object with at least a field'));
        ELSE
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'a wait has `for` (a span) or `until` (a time from the data)'));
        END IF;
      WHEN 'branch' THEN
        IF p_depth + 1 > 8 THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'branches may nest at most 8 deep'));
          CONTINUE;
        END IF;
        IF step ? 'if' THEN
          problems := problems || herald_condition_problems(step -> 'if', path || '.if', 1, p_kinds);
        ELSE
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.if', 'is required: the condition that chooses `then`'));
        END IF;
        FOREACH arm IN ARRAY ARRAY['then', 'else'] LOOP
          IF step ? arm THEN
            inner_r := herald_steps_problems(step -> arm, path || '.' || arm, p_depth + 1, p_kinds);
            problems := problems || (inner_r -> 'problems');
            ids := ids || (inner_r -> 'ids');
          END IF;
        END LOOP;
      WHEN 'update_field' THEN
        IF jsonb_typeof(step -> 'set') IS DISTINCT FROM 'object' OR step -> 'set' = '{}' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.set', 'is an object of column → template, with at least one column'));
        END IF;
        IF step ? 'table' AND (jsonb_typeof(step -> 'table') <> 'string' OR herald_relation(step ->> 'table') IS NULL) THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.table', format('no table `%s`', step ->> 'table')));
        END IF;
      WHEN 'webhook' THEN
        problems := problems || herald_text_problem(step, 'url', path) || herald_text_problem(step, 'body', path)
          || herald_text_problem(step, 'secret', path);
        IF jsonb_typeof(step -> 'url') = 'string' AND (step ->> 'url') NOT LIKE 'https://%' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.url', 'a webhook is sent over https://'));
        END IF;
        IF step ? 'timeout' AND herald_span_problem(step -> 'timeout', 'a timeout') IS NOT NULL THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.timeout', herald_span_problem(step -> 'timeout', 'a timeout')));
        END IF;
      WHEN 'create_task' THEN
        problems := problems || herald_text_problem(step, 'title', path) || herald_text_problem(step, 'assignee', path, false)
          || herald_text_problem(step, 'notes', path, false);
        IF step ? 'due' AND (herald_span_problem(step -> 'due', 'a due time') IS NOT NULL OR (step ->> 'due') ~ '^\s*-') THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path || '.due', 'is a span after the step runs, such as "2 days"'));
        END IF;
      WHEN 'notify_admin' THEN
        problems := problems || herald_text_problem(step, 'subject', path) || herald_text_problem(step, 'text', path);
      ELSE
        problems := problems || herald_text_problem(step, CASE WHEN kind LIKE '%tag' THEN 'tag' ELSE 'segment' END, path);
    END CASE;
  END LOOP;
  RETURN jsonb_build_object('problems', problems, 'ids', ids);
END
$$;

-- Every mistake in a definition, each with its path in the document. p_data: the relation
-- the templates' data comes from when it is not the trigger's table (an automation's
-- context relation); conditions and waits are checked against its columns.
CREATE FUNCTION herald_definition_problems(p_definition jsonb, p_data regclass DEFAULT NULL)
RETURNS TABLE (path text, message text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  trig     jsonb := p_definition -> 'trigger';
  rel      regclass;
  kinds    jsonb;
  tkinds   jsonb;
  k        text;
  steps_r  jsonb;
  item     jsonb;
  i        integer := 0;
  col      text;
BEGIN
  IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object' THEN
    RETURN QUERY SELECT '(document)'::text, 'a definition is an object'::text;
    RETURN;
  END IF;
  FOR k IN SELECT key FROM jsonb_object_keys(p_definition) key
           WHERE key NOT IN ('trigger', 'conditions', 'exit', 'timezone', 'admins', 'steps') ORDER BY 1 LOOP
    problems := problems || jsonb_build_array(jsonb_build_array(k,
      'unknown key; expected trigger, conditions, exit, timezone, admins, steps'));
  END LOOP;
  -- The trigger, and the relation whose columns conditions and waits read.
  IF jsonb_typeof(trig) IS DISTINCT FROM 'object' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('trigger', 'is required: an object with a type'));
  ELSIF trig ->> 'type' IN ('status_change', 'insert', 'update', 'delete') THEN
    IF jsonb_typeof(trig -> 'table') IS DISTINCT FROM 'string' THEN
      problems := problems || jsonb_build_array(jsonb_build_array('trigger.table', 'is required'));
    ELSE
      rel := herald_relation(trig ->> 'table');
      IF rel IS NULL THEN
        problems := problems || jsonb_build_array(jsonb_build_array('trigger.table', format('no table `%s`', trig ->> 'table')));
      ELSE
        tkinds := herald_column_kinds(rel);
      END IF;
    END IF;
    IF tkinds IS NOT NULL AND trig ->> 'type' = 'status_change' AND NOT tkinds ? coalesce(trig ->> 'column', 'status') THEN
      problems := problems || jsonb_build_array(jsonb_build_array('trigger.column',
        format('`%s` has no column `%s`', trig ->> 'table', coalesce(trig ->> 'column', 'status'))));
    END IF;
    IF trig ->> 'type' = 'update' THEN
      IF jsonb_typeof(trig -> 'columns') IS DISTINCT FROM 'array' OR jsonb_array_length(trig -> 'columns') = 0 THEN
        problems := problems || jsonb_build_array(jsonb_build_array('trigger.columns', 'names the columns whose change starts a flow'));
      ELSIF tkinds IS NOT NULL THEN
        FOR col IN SELECT jsonb_array_elements_text(trig -> 'columns') LOOP
          IF NOT tkinds ? col THEN
            problems := problems || jsonb_build_array(jsonb_build_array('trigger.columns',
              format('`%s` has no column `%s`', trig ->> 'table', col)));
          END IF;
        END LOOP;
      END IF;
    END IF;
  ELSIF trig ->> 'type' IN ('tag_added', 'tag_removed', 'segment_joined', 'segment_left') THEN
    problems := problems || herald_text_problem(trig, CASE WHEN trig ->> 'type' LIKE 'tag%' THEN 'tag' ELSE 'segment' END, 'trigger');
  ELSIF trig ->> 'type' IS DISTINCT FROM 'manual' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('trigger.type', format(
      'unknown trigger type `%s`; expected one of status_change, insert, update, delete, tag_added, tag_removed, '
      'segment_joined, segment_left, manual', coalesce(trig ->> 'type', ''))));
  END IF;
  -- What conditions and waits read: the data's relation, else the trigger's table.
  kinds := CASE WHEN p_data IS NOT NULL THEN herald_column_kinds(p_data) ELSE tkinds END;
  IF p_definition ? 'conditions' THEN
    problems := problems || herald_condition_problems(p_definition -> 'conditions', 'conditions', 1, kinds);
  END IF;
  IF p_definition ? 'exit' THEN
    IF jsonb_typeof(p_definition -> 'exit') <> 'array' THEN
      problems := problems || jsonb_build_array(jsonb_build_array('exit', 'is a list of {if, reason}'));
    ELSE
      FOR item IN SELECT value FROM jsonb_array_elements(p_definition -> 'exit') LOOP
        IF NOT item ? 'if' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(format('exit[%s].if', i), 'is required: the condition that ends the flow'));
        ELSE
          problems := problems || herald_condition_problems(item -> 'if', format('exit[%s].if', i), 1, kinds);
        END IF;
        problems := problems || herald_text_problem(item, 'reason', format('exit[%s]', i));
        i := i + 1;
      END LOOP;
    END IF;
  END IF;
  IF p_definition ? 'timezone' AND NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = p_definition ->> 'timezone') THEN
    problems := problems || jsonb_build_array(jsonb_build_array('timezone',
      format('`%s` is not a time zone name such as "Europe/London"', p_definition ->> 'timezone')));
  END IF;
  IF NOT p_definition ? 'steps' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('steps', 'is required: a list of steps'));
  ELSE
    steps_r := herald_steps_problems(p_definition -> 'steps', 'steps', 0, kinds);
    problems := problems || (steps_r -> 'problems');
    IF jsonb_array_length(steps_r -> 'ids') > 200 THEN
      problems := problems || jsonb_build_array(jsonb_build_array('steps', 'a definition may have at most 200 steps'));
    END IF;
    -- Each id once: a repeat is reported where it repeats.
    problems := problems || coalesce((
      SELECT jsonb_agg(jsonb_build_array(e ->> 0, format('`%s` is the id of an earlier step; step ids are unique', e ->> 1)) ORDER BY n)
      FROM (SELECT e, n, row_number() OVER (PARTITION BY e ->> 1 ORDER BY n) AS seen
            FROM jsonb_array_elements(steps_r -> 'ids') WITH ORDINALITY AS x(e, n)) d
      WHERE seen > 1), '[]');
    IF jsonb_path_exists(p_definition -> 'steps', 'strict $.** ? (@.type == "notify_admin")')
       AND coalesce(jsonb_array_length(p_definition #> '{admins,emails}'), 0) + coalesce(jsonb_array_length(p_definition #> '{admins,phones}'), 0) = 0 THEN
      problems := problems || jsonb_build_array(jsonb_build_array('admins', 'notify_admin steps need admins.emails or admins.phones'));
    END IF;
  END IF;
  RETURN QUERY SELECT e ->> 0, e ->> 1 FROM jsonb_array_elements(problems) e;
END
$$;

-- Saves an automation's definition as its next version, or refuses it with every mistake
-- (SQLSTATE 22023, one "path: message" line each in the error's detail). Returns the version.
CREATE FUNCTION herald_save_automation(p_name text, p_definition jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  mistakes text;
  n        integer;
  auto_id  bigint;
  v        integer;
BEGIN
  SELECT string_agg(path || ': ' || message, E'\n'), count(*) INTO mistakes, n
  FROM (
    SELECT * FROM herald_definition_problems(p_definition,
                                             (SELECT to_regclass(context_relation) FROM automations WHERE name = p_name))
    UNION ALL
    -- What the language has but this version of Herald cannot run yet.
    SELECT 'trigger.type', format('`%s` triggers cannot be used yet; status_change and insert can', p_definition #>> '{trigger,type}')
    WHERE p_definition #>> '{trigger,type}' NOT IN ('status_change', 'insert')
    UNION ALL
    SELECT 'steps', format('`%s` steps cannot run yet', t)
    FROM (SELECT DISTINCT t #>> '{}' AS t FROM jsonb_path_query(p_definition, 'lax $.steps.**.type') t) types
    WHERE t IN ('webhook', 'update_field', 'add_tag', 'remove_tag', 'add_to_segment', 'remove_from_segment', 'create_task')
    UNION ALL
    SELECT 'trigger.' || k, format('one status for now, not %s', p_definition #> ARRAY['trigger', k])
    FROM unnest(ARRAY['from', 'to']) k
    WHERE CASE WHEN jsonb_typeof(p_definition #> ARRAY['trigger', k]) = 'array'
               THEN jsonb_array_length(p_definition #> ARRAY['trigger', k]) > 1 ELSE false END
    UNION ALL
    -- The capture trigger watches the status column the table was attached with.
    SELECT 'trigger.column', format('%s is attached with status column `%s`', att.table_schema || '.' || att.table_name,
                                    att.status_column)
    FROM herald_attachments att
    JOIN pg_class c ON c.relname = att.table_name
    JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = att.table_schema
    WHERE p_definition #>> '{trigger,type}' = 'status_change'
      AND c.oid = herald_relation(p_definition #>> '{trigger,table}')
      AND att.status_column <> coalesce(p_definition #>> '{trigger,column}', 'status')
  ) p;
  IF n > 0 THEN
    RAISE EXCEPTION 'automation % refused: % mistake(s) in its definition', p_name, n
      USING ERRCODE = '22023', DETAIL = mistakes;
  END IF;
  SELECT id INTO auto_id FROM automations WHERE name = p_name FOR UPDATE;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'no automation named %', p_name USING ERRCODE = '22023';
  END IF;
  SELECT coalesce(max(version), 0) + 1 INTO v FROM automation_versions WHERE automation_id = auto_id;
  INSERT INTO automation_versions (automation_id, version, definition, checksum)
  VALUES (auto_id, v, p_definition, 'sha256:' || encode(sha256(convert_to(p_definition::text, 'UTF8')), 'hex'));
  -- Status-change and insert triggers are captured as the column form's are.
  UPDATE automations
  SET version = v, updated_at = now(),
      source_schema = coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                WHERE c.oid = herald_relation(p_definition #>> '{trigger,table}')), source_schema),
      source_table = coalesce((SELECT c.relname FROM pg_class c
                               WHERE c.oid = herald_relation(p_definition #>> '{trigger,table}')), source_table),
      trigger_event = CASE WHEN p_definition #>> '{trigger,type}' IN ('status_change', 'insert')
                           THEN p_definition #>> '{trigger,type}' ELSE trigger_event END,
      to_status = CASE jsonb_typeof(p_definition #> '{trigger,to}')
                    WHEN 'string' THEN p_definition #>> '{trigger,to}'
                    WHEN 'array' THEN p_definition #>> '{trigger,to,0}' END,
      from_status = CASE jsonb_typeof(p_definition #> '{trigger,from}')
                      WHEN 'string' THEN p_definition #>> '{trigger,from}'
                      WHEN 'array' THEN p_definition #>> '{trigger,from,0}' END
  WHERE id = auto_id;
  RETURN v;
END
$$;

-- Saving is for the owner of Herald's tables (and whom they grant it), not the functions.
REVOKE EXECUTE ON FUNCTION herald_save_automation(text, jsonb) FROM PUBLIC;

-- Instances: a ledger row that runs a version of a workflow definition keeps its place.
ALTER TABLE automation_execution_logs
  ADD COLUMN version      integer,                       -- NULL: a one-shot log of the column form
  ADD COLUMN next_step    text,                          -- the step to run next (NULL: none left)
  ADD COLUMN step_attempt integer NOT NULL DEFAULT 0,    -- attempts of next_step so far
  ADD COLUMN steps_run    integer NOT NULL DEFAULT 0,    -- steps run, retries included
  ADD COLUMN outputs      jsonb NOT NULL DEFAULT '{}',   -- each finished step's output, by id
  ADD COLUMN exit_reason  text;
ALTER TABLE ONLY automation_execution_logs
  DROP CONSTRAINT automation_execution_logs_status_check,
  ADD CONSTRAINT automation_execution_logs_status_check CHECK
    (status IN ('pending', 'queued', 'running', 'waiting', 'sent', 'completed', 'failed', 'exited', 'dead', 'unknown',
                'cancelled', 'suppressed')) NO INHERIT;

-- A waiting instance is due at its wake-up time, as a pending log is at its run_at.
DROP INDEX automation_execution_logs_due;
CREATE INDEX automation_execution_logs_due ON automation_execution_logs (run_at, id)
  WHERE status IN ('pending', 'waiting');

-- Every step an instance ran: effects recorded as started before they are performed and
-- as done or failed after; decisions made without an effect (an exit condition, a branch,
-- a wait) recorded as decided, with what they saw.
CREATE TABLE automation_step_runs (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  log_id      bigint NOT NULL REFERENCES automation_execution_logs (id) ON DELETE CASCADE,
  step_id     text NOT NULL,
  step_type   text NOT NULL,
  attempt     integer NOT NULL,
  lease_token bigint NOT NULL,
  status      text NOT NULL CHECK (status IN ('started', 'done', 'failed', 'decided', 'unknown')),
  started_at  timestamptz NOT NULL,
  finished_at timestamptz,
  effect      jsonb,   -- what it was about to do
  output      jsonb,   -- what it did: a provider's message id, a webhook's answer, the values a condition saw
  error       text,
  error_kind  text CHECK (error_kind IN ('permanent', 'transient')),
  error_code  text
);
CREATE INDEX automation_step_runs_by_log ON automation_step_runs (log_id, id);
CREATE UNIQUE INDEX automation_step_runs_effect ON automation_step_runs (log_id, step_id, attempt)
  WHERE status <> 'decided';

-- Executor: claims each message's instance (p_ids, under the leases p_leases name) until
-- p_until with one new token, opens its attempt, and loads the definition of its version,
-- its place and its data. One row per message, in order; lease NULL when not claimable.
CREATE FUNCTION herald_flow_start(p_ids bigint[], p_leases bigint[], p_now timestamptz, p_until timestamptz)
RETURNS TABLE (lease bigint, attempt integer, status text, definition jsonb, next_step text, step_attempt integer,
               steps_run integer, outputs jsonb, context jsonb, run_status text, run_output jsonb, run_error text,
               event text, old_status text, new_status text, subject_table text, subject_id text)
LANGUAGE sql AS $$
  WITH msg AS (
    SELECT m.log_id, m.lease, m.ord, row_number() OVER (PARTITION BY m.log_id ORDER BY m.ord) AS nth
    FROM unnest(p_ids, p_leases) WITH ORDINALITY AS m(log_id, lease, ord)
  ), claimed AS (
    -- An instance takes its automation's current version at its first claim, and keeps it.
    UPDATE ONLY automation_execution_logs l
    SET status = 'running', attempts = l.attempts + 1, started_at = coalesce(l.started_at, p_now), updated_at = p_now,
        lease_token = (SELECT nextval('herald_lease_tokens')), lease_expires_at = p_until,
        version = coalesce(l.version, a.version),
        next_step = CASE WHEN l.version IS NULL THEN v.definition #>> '{steps,0,id}' ELSE l.next_step END
    FROM msg m, automations a
    LEFT JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
    WHERE m.nth = 1 AND l.id = m.log_id AND l.status = 'queued' AND l.lease_token = m.lease
      AND a.id = l.automation_id AND (l.version IS NOT NULL OR a.version IS NOT NULL)
    RETURNING l.id, l.attempts, l.lease_token, l.automation_id, l.version, l.next_step, l.step_attempt, l.steps_run, l.outputs
  ), opened AS (
    INSERT INTO automation_attempts (log_id, attempt, lease_token, started_at)
    SELECT id, attempts, lease_token, p_now FROM claimed
  ), ctx AS (
    SELECT * FROM herald_contexts(ARRAY(SELECT id FROM claimed))
  )
  SELECT c.lease_token, c.attempts,
         CASE WHEN m.nth > 1 THEN 'claimed by another message of this batch' ELSE l.status END,
         v.definition, c.next_step, c.step_attempt, c.steps_run, c.outputs, x.context,
         r.status, r.output, r.error,
         l.event, l.old_status, l.new_status, format('%I.%I', l.subject_schema, l.subject_table), l.subject_id
  FROM msg m
  LEFT JOIN claimed c ON c.id = m.log_id AND m.nth = 1
  LEFT JOIN ctx x ON x.log_id = c.id
  LEFT JOIN ONLY automation_execution_logs l ON l.id = m.log_id
  LEFT JOIN automation_versions v ON v.automation_id = c.automation_id AND v.version = c.version
  -- The effect of the step the instance is at, if an earlier invocation started it.
  LEFT JOIN automation_step_runs r
    ON r.log_id = c.id AND r.step_id = c.next_step AND r.attempt = c.step_attempt
   AND r.status IN ('started', 'done', 'failed')
  ORDER BY m.ord
$$;

-- Executor: one write of a round. Every entry names its instance's lease and is applied only
-- while that lease holds (the instance is running under it). Returns, per part, whether each
-- entry was applied: {"ended": [...], "started": [...], "parked": [...]}.
CREATE FUNCTION herald_flow_write(p_write jsonb, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  e       jsonb;
  ok      boolean;
  ended   jsonb := '[]';
  started jsonb := '[]';
  parked  jsonb := '[]';
BEGIN
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'ended') LOOP
    UPDATE automation_step_runs r
    SET status = CASE WHEN e ? 'error' THEN 'failed' ELSE 'done' END, finished_at = p_now,
        output = e -> 'output', error = e ->> 'error', error_kind = e ->> 'error_kind', error_code = e ->> 'error_code'
    FROM ONLY automation_execution_logs l
    WHERE r.log_id = (e ->> 'log_id')::bigint AND r.step_id = e ->> 'step' AND r.attempt = (e ->> 'attempt')::int
      AND r.status = 'started' AND l.id = r.log_id AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint;
    ok := FOUND;
    IF NOT ok AND e ? 'error' THEN
      -- A step that failed before its effect started (it could not be made ready).
      INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at,
                                        error, error_kind, error_code)
      SELECT l.id, e ->> 'step', e ->> 'type', (e ->> 'attempt')::int, l.lease_token, 'failed', p_now, p_now,
             e ->> 'error', e ->> 'error_kind', e ->> 'error_code'
      FROM ONLY automation_execution_logs l
      WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint
      ON CONFLICT DO NOTHING;
      ok := FOUND;
    END IF;
    ended := ended || to_jsonb(ok);
  END LOOP;
  INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, finished_at, output)
  SELECT l.id, d ->> 'step', d ->> 'kind', l.step_attempt, l.lease_token, 'decided', p_now, p_now, d -> 'detail'
  FROM jsonb_array_elements(p_write -> 'decided') d
  JOIN ONLY automation_execution_logs l
    ON l.id = (d ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (d ->> 'token')::bigint;
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'started') LOOP
    INSERT INTO automation_step_runs (log_id, step_id, step_type, attempt, lease_token, status, started_at, effect)
    SELECT l.id, e ->> 'step', e ->> 'type', (e ->> 'attempt')::int, l.lease_token, 'started', p_now, e -> 'effect'
    FROM ONLY automation_execution_logs l
    WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint
    ON CONFLICT DO NOTHING;
    ok := FOUND;
    IF ok THEN
      -- The instance's place as the effect starts: where a later invocation resumes.
      UPDATE ONLY automation_execution_logs
      SET next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int,
          steps_run = (e ->> 'steps_run')::int, outputs = e -> 'outputs', updated_at = p_now
      WHERE id = (e ->> 'log_id')::bigint;
    END IF;
    started := started || to_jsonb(ok);
  END LOOP;
  FOR e IN SELECT value FROM jsonb_array_elements(p_write -> 'parked') LOOP
    UPDATE ONLY automation_execution_logs l
    SET status = e ->> 'status', next_step = e ->> 'next_step', step_attempt = (e ->> 'step_attempt')::int,
        steps_run = (e ->> 'steps_run')::int, outputs = e -> 'outputs',
        run_at = CASE WHEN e ->> 'status' = 'pending' THEN p_now ELSE coalesce((e ->> 'run_at')::timestamptz, l.run_at) END, error = e ->> 'error', exit_reason = e ->> 'exit_reason',
        completed_at = CASE WHEN e ->> 'status' IN ('completed', 'failed', 'exited') THEN p_now END,
        updated_at = p_now, lease_token = NULL, lease_expires_at = NULL
    WHERE l.id = (e ->> 'log_id')::bigint AND l.status = 'running' AND l.lease_token = (e ->> 'token')::bigint;
    ok := FOUND;
    IF ok THEN
      UPDATE automation_attempts SET finished_at = p_now
      WHERE log_id = (e ->> 'log_id')::bigint AND lease_token = (e ->> 'token')::bigint AND finished_at IS NULL;
    END IF;
    parked := parked || to_jsonb(ok);
  END LOOP;
  RETURN jsonb_build_object('ended', ended, 'started', started, 'parked', parked);
END
$$;

-- The rescue, for instances too (see the first branch of the loop).
CREATE OR REPLACE FUNCTION herald_rescue(p_now timestamptz)
RETURNS TABLE (requeued integer, retried integer, dead integer, unknown integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  l        record;
  holds    text[];
  last     boolean;
BEGIN
  requeued := 0; retried := 0; dead := 0; unknown := 0;

  WITH lost AS (
    UPDATE ONLY automation_execution_logs
    SET status = 'pending', run_at = p_now, lease_token = NULL, lease_expires_at = NULL,
        queued_at = NULL, updated_at = p_now
    WHERE status = 'queued' AND lease_expires_at < p_now
    RETURNING 1
  )
  SELECT count(*) INTO requeued FROM lost;

  FOR l IN
    SELECT g.id, g.attempts, g.version, a.max_attempts, a.retry_base, a.retry_cap, a.email_on_unknown, a.sms_on_unknown
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.status = 'running' AND g.lease_expires_at < p_now
    FOR UPDATE OF g SKIP LOCKED
  LOOP
    -- A workflow instance goes back to pending at once. It resumes from its checkpoint; the
    -- claim that takes it finds any effect whose end was never recorded and holds it.
    IF l.version IS NOT NULL THEN
      UPDATE ONLY automation_execution_logs
      SET status = 'pending', run_at = p_now, lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = 'the executor vanished (lease expired); resuming', error_kind = 'transient', error_code = 'LeaseExpired'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'lease_expired', finished_at = p_now
      WHERE log_id = l.id AND attempt = l.attempts;
      retried := retried + 1;
      CONTINUE;
    END IF;
    -- Sends that were in flight: their outcome is unknown.
    WITH inflight AS (
      UPDATE automation_deliveries
      SET status = 'unknown', completed_at = p_now,
          error = 'the executor lost its lease while this send was in flight'
      WHERE log_id = l.id AND status = 'sending'
      RETURNING channel
    )
    SELECT coalesce(array_agg(channel) FILTER (WHERE
             (channel = 'email' AND coalesce(l.email_on_unknown, 'hold') = 'hold') OR
             (channel = 'sms' AND coalesce(l.sms_on_unknown, 'hold') = 'hold')), '{}')
    INTO holds
    FROM inflight;

    IF cardinality(holds) > 0 THEN
      UPDATE ONLY automation_execution_logs
      SET status = 'unknown', lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = format('outcome unknown for %s: the executor vanished during the send', array_to_string(holds, ', ')),
          error_kind = 'transient', error_code = 'OutcomeUnknown'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'unknown', finished_at = p_now,
             error = 'the executor vanished during the send'
      WHERE log_id = l.id AND attempt = l.attempts;
      unknown := unknown + 1;
    ELSE
      -- Retried after a backoff, or dead when that was the last attempt.
      last := l.attempts >= coalesce(l.max_attempts, 1);
      UPDATE ONLY automation_execution_logs
      SET status = CASE WHEN last THEN 'dead' ELSE 'pending' END,
          run_at = CASE WHEN last THEN run_at ELSE p_now + herald_backoff(l.attempts, l.retry_base, l.retry_cap) END,
          completed_at = CASE WHEN last THEN p_now END,
          lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = CASE WHEN last THEN 'the executor vanished (lease expired) on the last attempt'
                       ELSE 'the executor vanished (lease expired); retrying' END,
          error_kind = 'transient', error_code = 'LeaseExpired'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'lease_expired', finished_at = p_now
      WHERE log_id = l.id AND attempt = l.attempts;
      IF last THEN
        dead := dead + 1;
      ELSE
        retried := retried + 1;
      END IF;
    END IF;
  END LOOP;
  RETURN NEXT;
END
$$;

-- Operator: run a dead, failed or unknown log again. An instance runs the step it stopped
-- at again, as a new attempt (an effect whose outcome was unknown is marked so, and sent
-- again: the operator decided).
CREATE OR REPLACE FUNCTION herald_retry(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE automation_step_runs r SET status = 'unknown', finished_at = herald_now()
  FROM ONLY automation_execution_logs l
  WHERE r.log_id = p_log_id AND r.status = 'started' AND l.id = r.log_id AND l.status IN ('dead', 'failed', 'unknown');
  UPDATE ONLY automation_execution_logs
  SET status = 'pending', run_at = herald_now(), updated_at = herald_now(), completed_at = NULL,
      lease_token = NULL, lease_expires_at = NULL,
      step_attempt = CASE WHEN version IS NOT NULL THEN step_attempt + 1 ELSE step_attempt END
  WHERE id = p_log_id AND status IN ('dead', 'failed', 'unknown');
  RETURN FOUND;
END
$$;

-- Operator: cancel a log that has not been sent, or an instance that has not finished:
-- pending (in the ledger or still in the inbox), queued (its message will be skipped),
-- waiting, or unknown. Returns whether it did.
CREATE OR REPLACE FUNCTION herald_cancel(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM herald_inbox WHERE id = p_log_id) THEN
    PERFORM herald_ingest();
  END IF;
  UPDATE ONLY automation_execution_logs
  SET status = 'cancelled', updated_at = herald_now(), completed_at = herald_now(),
      lease_token = NULL, lease_expires_at = NULL
  WHERE id = p_log_id AND status IN ('pending', 'queued', 'waiting', 'unknown');
  RETURN FOUND;
END
$$;
