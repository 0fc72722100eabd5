-- Definitions: checking a document before it is saved, saving it as a new version,
-- and the column form saved as its two-step definition.
-- Each object here is defined in this file only; herald-migrate re-applies the file when
-- it changes (see docs/deploying.md).

-- The shape of a definition: its keys, each trigger type and each step type with the keys
-- it takes (in the order messages list them), and which of a step's keys are templates.
-- Herald's two readers follow this one text: the checks in this file read it through this
-- function, and the executor's parser compiles in the JSON it selects, from this file
-- (shared/src/workflow/shape.rs). A new trigger or step type starts here. `regions` are the
-- codes a definition may name as the region phone numbers are read in: the ISO 3166 alpha-2
-- regions of libphonenumber's metadata, as Herald compiles it in (its tests hold the two
-- together).
CREATE OR REPLACE FUNCTION herald_definition_shape() RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $shape$ SELECT $json$
{
  "document": ["trigger", "data", "settings", "conditions", "exit", "timezone", "region", "admins", "steps"],
  "data": ["relation", "key"],
  "settings": ["suppression_window", "max_attempts", "retry_base", "retry_cap"],
  "triggers": [
    {"type": "status_change", "keys": ["type", "table", "column", "to", "from"]},
    {"type": "insert", "keys": ["type", "table", "to"]},
    {"type": "update", "keys": ["type", "table", "columns"]},
    {"type": "delete", "keys": ["type", "table"]},
    {"type": "tag_added", "keys": ["type", "tag"]},
    {"type": "tag_removed", "keys": ["type", "tag"]},
    {"type": "segment_joined", "keys": ["type", "segment"]},
    {"type": "segment_left", "keys": ["type", "segment"]},
    {"type": "date", "keys": ["type", "table", "column", "offset", "at", "timezone", "lateness"]},
    {"type": "schedule", "keys": ["type", "cron", "timezone", "lateness", "audience"]},
    {"type": "manual", "keys": ["type"]}
  ],
  "admins": ["emails", "phones"],
  "exit": ["if", "reason"],
  "retry": ["times", "backoff"],
  "step": ["id", "type", "on_error"],
  "steps": [
    {"type": "send_email", "keys": ["from", "to", "subject", "text", "html", "on_unknown"],
     "templates": ["from", "to", "subject", "text", "html"]},
    {"type": "send_sms", "keys": ["to", "body", "region", "on_unknown"], "templates": ["to", "body"]},
    {"type": "wait", "keys": ["for", "until"], "templates": []},
    {"type": "branch", "keys": ["if", "then", "else"], "templates": []},
    {"type": "update_field", "keys": ["table", "key", "set"], "templates": []},
    {"type": "add_tag", "keys": ["tag", "table", "key"], "templates": ["key"]},
    {"type": "remove_tag", "keys": ["tag", "table", "key"], "templates": ["key"]},
    {"type": "add_to_segment", "keys": ["segment", "table", "key"], "templates": ["key"]},
    {"type": "remove_from_segment", "keys": ["segment", "table", "key"], "templates": ["key"]},
    {"type": "webhook", "keys": ["url", "body", "secret", "timeout", "on_unknown"], "templates": ["url", "body"]},
    {"type": "create_task", "keys": ["title", "assignee", "due", "notes"], "templates": ["title", "assignee", "notes"]},
    {"type": "notify_admin", "keys": ["subject", "text", "on_unknown"], "templates": ["subject", "text"]}
  ],
  "regions": [
    "AC", "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD", "BE",
    "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BW", "BY", "BZ", "CA", "CC", "CD", "CF",
    "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO",
    "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG",
    "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GT", "GU", "GW", "GY", "HK", "HN", "HR", "HT", "HU", "ID", "IE", "IL",
    "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW",
    "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH",
    "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF",
    "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PR", "PS", "PT",
    "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM",
    "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TA", "TC", "TD", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "XK",
    "YE", "YT", "ZA", "ZM", "ZW"
  ]
}
$json$::jsonb $shape$;

-- The part of the shape for one trigger or step type (`triggers` or `steps`), or NULL.
CREATE OR REPLACE FUNCTION herald_shape_of(p_list text, p_type text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT s FROM jsonb_array_elements(herald_definition_shape() -> p_list) s WHERE s ->> 'type' = p_type
$$;

-- The types of a list of the shape, for messages: "status_change, insert, …".
CREATE OR REPLACE FUNCTION herald_shape_types(p_list text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT string_agg(s ->> 'type', ', ' ORDER BY n)
  FROM jsonb_array_elements(herald_definition_shape() -> p_list) WITH ORDINALITY AS x(s, n)
$$;

-- A JSON array of text as a text[].
CREATE OR REPLACE FUNCTION herald_texts(p_value jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ARRAY(SELECT jsonb_array_elements_text(p_value))
$$;

-- A problem for each key of an object that is not one of p_keys (a JSON array of text).
CREATE OR REPLACE FUNCTION herald_unknown_keys(p_object jsonb, p_keys jsonb, p_path text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_array(concat_ws('.', nullif(p_path, ''), k),
                                              'unknown key; expected ' || array_to_string(herald_texts(p_keys), ', '))
                            ORDER BY k), '[]')
  FROM jsonb_object_keys(CASE jsonb_typeof(p_object) WHEN 'object' THEN p_object ELSE '{}' END) k
  WHERE NOT p_keys ? k
$$;

-- One problem as a list of [path, message], or an empty list when there is no message.
CREATE OR REPLACE FUNCTION herald_problem(p_path text, p_message text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_message IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(jsonb_build_array(p_path, p_message)) END
$$;

-- A relation named in a definition, or NULL when there is none by that name.
CREATE OR REPLACE FUNCTION herald_relation(p_name text) RETURNS regclass
LANGUAGE sql STABLE AS $$
  SELECT to_regclass(CASE WHEN position('.' IN p_name) > 0 THEN p_name ELSE 'public.' || p_name END)
$$;

-- The kinds of value each column of a relation holds, as conditions compare them:
-- number, text, bool, time, list or other.
CREATE OR REPLACE FUNCTION herald_column_kinds(p_relation regclass) RETURNS jsonb
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

-- Why a region as a definition names it is not one; NULL when it is a code of the shape's
-- `regions`. p_step: a step's `region`, which may also be {"field": ...}.
CREATE OR REPLACE FUNCTION herald_region_problem(p_value jsonb, p_step boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN jsonb_typeof(p_value) = 'string' AND herald_definition_shape() -> 'regions' ? (p_value #>> '{}') THEN NULL
    WHEN jsonb_typeof(p_value) = 'string' THEN
      format('`%s` is not a region: an ISO 3166 code in capitals, such as "US" or "DE"', p_value #>> '{}')
    WHEN p_step THEN 'a region is a code ("US") or {"field": ...} naming a column that holds one'
    ELSE 'is a region code such as "US" or "DE"'
  END
$$;

-- A span as definitions write it: "2 hours", "-1 day", "1 week 2 days", "30m", or ISO 8601
-- ("PT2H"). Herald reads the same forms; this is the subset both sides agree on.
CREATE OR REPLACE FUNCTION herald_span_problem(p_value jsonb, p_what text) RETURNS text
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

-- Whether a span (as a definition writes it) is longer than p_limit, counted from a fixed
-- instant on the UTC calendar as Herald's reader counts it. NULL for a form Postgres cannot
-- read.
CREATE OR REPLACE FUNCTION herald_span_exceeds(p_span text, p_limit interval) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN timestamp '1970-01-01' + herald_span_interval(p_span) > timestamp '1970-01-01' + p_limit;
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END
$$;

-- The first mistake in the literal arguments of one block's calls of Herald's filters (see
-- "Filters" in docs/definitions.md), in the words of Herald's reader (render/filters.rs):
-- a currency that is not three capital letters, decimals outside 0 to 10, a strftime format
-- with an unknown directive, a tz= that names no zone. NULL when there is none. Arguments
-- read from variables are checked when the template renders.
CREATE OR REPLACE FUNCTION herald_filter_problem(p_block text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
  call   text[];
  filter text;
  args   text;
  lit    text[];
  quoted text;
BEGIN
  FOR call IN SELECT regexp_matches(p_block,
      '\|\s*(datetime|date|time|relative|number|money)\s*\(((?:"[^"]*"|''[^'']*''|[^"'')])*)\)', 'g') LOOP
    filter := call[1];
    args := call[2];
    -- The first argument, when it is a literal: text (2 or 3) or a whole number (4).
    lit := regexp_match(args, '^\s*(?:"([^"]*)"|''([^'']*)''|(-?[0-9]+))\s*(?:,|$)');
    quoted := coalesce(lit[1], lit[2]);
    IF filter = 'money' AND btrim(args) = '' THEN
      RETURN '`| money`: needs a currency code, as in money("EUR")';
    ELSIF filter = 'money' AND quoted IS NOT NULL AND quoted !~ '^[A-Z]{3}$' THEN
      RETURN format('`| money`: `%s` is not a currency code such as "EUR" (three capital letters)',
                    CASE WHEN length(quoted) > 40 THEN left(quoted, 40) || '…' ELSE quoted END);
    ELSIF filter = 'number' AND lit[3] IS NOT NULL AND NOT lit[3]::numeric BETWEEN 0 AND 10 THEN
      RETURN format('`| number`: %s decimals; from 0 to 10', lit[3]);
    ELSIF filter NOT IN ('money', 'number') AND quoted IS NOT NULL AND strpos(regexp_replace(quoted,
        '%[-_0^#]?[0-9]*(\.[0-9]*f|:{1,3}[zQ]|[%AaBbCcDdeFfGgHhIjklMmNnPpQqRrSsTtUuVWwXxYyZz])', '', 'g'), '%') > 0 THEN
      RETURN format('`| %s`: `%s` is not a strftime format such as "%%a %%-d %%b %%Y"', filter,
                    CASE WHEN length(quoted) > 40 THEN left(quoted, 40) || '…' ELSE quoted END);
    END IF;
    lit := regexp_match(args, '(?:^|,)\s*tz\s*=\s*(?:"([^"]*)"|''([^'']*)'')\s*(?:,|$)');
    quoted := coalesce(lit[1], lit[2]);
    IF filter NOT IN ('money', 'number') AND quoted IS NOT NULL
       AND NOT herald_zone_names() ? quoted THEN
      RETURN format('`| %s`: `%s` is not a time zone name such as "Europe/London"', filter, quoted);
    END IF;
  END LOOP;
  RETURN NULL;
END
$$;

-- Why a template cannot compile, as far as its delimiters and blocks show, or what its
-- filters' literal arguments get wrong (herald_filter_problem); NULL when nothing shows.
-- (Herald's reader compiles it whole; this catches what is most often mistyped.)
CREATE OR REPLACE FUNCTION herald_template_problem(p_source text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
  rest    text := p_source;
  i       integer;
  j       integer;
  opener  text;
  closer  text;
  inner_t text;
  tag     text;
  open_b  text[] := '{}';
  filters text;
BEGIN
  LOOP
    i := (SELECT min(p) FROM unnest(ARRAY[strpos(rest, '{{'), strpos(rest, '{%'), strpos(rest, '{#')]) p WHERE p > 0);
    EXIT WHEN i IS NULL;
    opener := substr(rest, i, 2);
    closer := CASE opener WHEN '{{' THEN '}}' WHEN '{%' THEN '%}' ELSE '#}' END;
    rest := substr(rest, i + 2);
    j := strpos(rest, closer);
    IF j = 0 THEN
      RETURN format('the template does not compile: `%s` is never closed by `%s`', opener, closer);
    END IF;
    inner_t := substr(rest, 1, j - 1);
    rest := substr(rest, j + 2);
    IF opener <> '{#' AND filters IS NULL THEN
      filters := herald_filter_problem(inner_t);
    END IF;
    CONTINUE WHEN opener <> '{%';
    tag := lower(substring(inner_t FROM '^[-+]?\s*([A-Za-z_]+)'));
    IF tag IS NULL THEN
      RETURN 'the template does not compile: `{%` names no tag';
    ELSIF tag = 'raw' THEN
      j := strpos(rest, 'endraw');
      IF j = 0 THEN
        RETURN 'the template does not compile: `{% raw %}` is never closed by `{% endraw %}`';
      END IF;
      rest := substr(rest, j);
      rest := substr(rest, strpos(rest, '%}') + 2);
    ELSIF tag IN ('if', 'for', 'macro', 'call', 'filter', 'with', 'autoescape', 'block')
          OR (tag = 'set' AND strpos(inner_t, '=') = 0) THEN
      open_b := open_b || tag;
    ELSIF tag LIKE 'end%' THEN
      IF cardinality(open_b) = 0 OR open_b[cardinality(open_b)] <> substr(tag, 4) THEN
        RETURN format('the template does not compile: `{%% %s %%}` closes no `{%% %s %%}`', tag, substr(tag, 4));
      END IF;
      open_b := open_b[1:cardinality(open_b) - 1];
    END IF;
  END LOOP;
  IF cardinality(open_b) > 0 THEN
    RETURN format('the template does not compile: `{%% %s %%}` is never closed by `{%% end%s %%}`',
                  open_b[cardinality(open_b)], open_b[cardinality(open_b)]);
  END IF;
  RETURN filters;
END
$$;

-- A template's text: required, non-empty text. (Whether it compiles is checked where
-- templates run, in the executor; this checks what SQL can.)
CREATE OR REPLACE FUNCTION herald_text_problem(p_step jsonb, p_key text, p_path text, p_required boolean DEFAULT true)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN NOT p_step ? p_key THEN
      CASE WHEN p_required THEN jsonb_build_array(jsonb_build_array(p_path || '.' || p_key, 'is required')) ELSE '[]' END
    WHEN jsonb_typeof(p_step -> p_key) <> 'string' THEN jsonb_build_array(jsonb_build_array(p_path || '.' || p_key, 'is text'))
    WHEN btrim(p_step ->> p_key) = '' THEN jsonb_build_array(jsonb_build_array(p_path || '.' || p_key, 'is empty'))
    ELSE '[]' END
$$;

-- The mistakes in a condition, as [path, message] pairs. p_kinds: the data's columns and
-- their kinds (NULL when the data's relation is not known when saving).
CREATE OR REPLACE FUNCTION herald_condition_problems(p_cond jsonb, p_path text, p_depth integer, p_kinds jsonb)
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

-- The checks of steps that need the catalog: the columns update_field steps name, checked
-- against the catalog (each column of `set` and the key column exist in the table the step
-- changes: its `table`, else the subject's, p_subject; p_key is the subject's key column,
-- the key of a named table when it names none); and the bounds of a webhook's timeout.
CREATE OR REPLACE FUNCTION herald_step_detail_problems(p_steps jsonb, p_path text, p_subject regclass, p_key text)
RETURNS TABLE (path text, message text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  i      integer;
  step   jsonb;
  p      text;
  target regclass;
  cols   jsonb;
  keycol text;
  secs   numeric;
BEGIN
  IF jsonb_typeof(p_steps) IS DISTINCT FROM 'array' THEN
    RETURN;
  END IF;
  FOR i IN 0 .. jsonb_array_length(p_steps) - 1 LOOP
    step := p_steps -> i;
    p := format('%s[%s]', p_path, i);
    IF step ->> 'type' = 'branch' THEN
      RETURN QUERY SELECT * FROM herald_step_detail_problems(step -> 'then', p || '.then', p_subject, p_key);
      RETURN QUERY SELECT * FROM herald_step_detail_problems(step -> 'else', p || '.else', p_subject, p_key);
    ELSIF step ->> 'type' = 'webhook' AND jsonb_typeof(step -> 'timeout') = 'string'
          AND herald_span_problem(step -> 'timeout', 'a timeout') IS NULL THEN
      BEGIN
        secs := extract(epoch FROM (step ->> 'timeout')::interval);
      EXCEPTION WHEN OTHERS THEN
        secs := NULL;  -- a form Postgres does not read; Herald reads it when it runs
      END;
      IF secs < 1 OR secs > 15 THEN
        RETURN QUERY SELECT p || '.timeout', 'is from 1 to 15 seconds';
      END IF;
    ELSIF step ->> 'type' = 'update_field' AND jsonb_typeof(step -> 'set') = 'object' THEN
      target := CASE WHEN step ? 'table' THEN herald_relation(step ->> 'table') ELSE p_subject END;
      CONTINUE WHEN target IS NULL;  -- a table that does not exist is reported by the shape check
      cols := herald_column_kinds(target);
      RETURN QUERY SELECT p || '.set.' || k, format('%s has no column `%s`', target, k)
                   FROM jsonb_object_keys(step -> 'set') k WHERE NOT cols ? k ORDER BY k;
      keycol := coalesce(step ->> 'key', p_key);
      IF keycol IS NOT NULL AND NOT cols ? keycol THEN
        RETURN QUERY SELECT p || CASE WHEN step ? 'key' THEN '.key' ELSE '.table' END,
          format('%s has no column `%s` to find the subject''s row by%s', target, keycol,
                 CASE WHEN step ? 'key' THEN '' ELSE ' (name it with `key`)' END);
      END IF;
    END IF;
  END LOOP;
END
$$;

-- Every problem of a list of steps (and of the steps nested in its branches), each with its
-- path: shapes and keys, ids, waits (at most 400 days), templates' delimiters and blocks,
-- webhooks, and a label step's other row.
CREATE OR REPLACE FUNCTION herald_steps_problems(p_steps jsonb, p_path text, p_depth integer, p_kinds jsonb)
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
  common   text[];
  shape    jsonb;
  k        text;
  inner_r  jsonb;
  arm      text;
  retry    jsonb;
  why      text;
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
        problems := problems || herald_unknown_keys(retry, herald_definition_shape() -> 'retry', path || '.on_error.retry');
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
    shape := herald_shape_of('steps', kind);
    allowed := herald_texts(shape -> 'keys');
    IF kind IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.type', 'is required'));
      CONTINUE;
    ELSIF shape IS NULL THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.type', format(
        'unknown step type `%s`; expected one of %s', kind, herald_shape_types('steps'))));
      CONTINUE;
    END IF;
    common := herald_texts(herald_definition_shape() -> 'step');
    problems := problems || herald_unknown_keys(step, to_jsonb(common || allowed), path);
    IF step ? 'on_unknown' AND 'on_unknown' = ANY (allowed) AND step -> 'on_unknown' NOT IN ('"hold"', '"resend"') THEN
      problems := problems || jsonb_build_array(jsonb_build_array(path || '.on_unknown', 'is "hold" or "resend"'));
    END IF;
    -- Templates: at least their delimiters and blocks must close (Herald compiles them).
    FOR k IN SELECT jsonb_array_elements_text(shape -> 'templates') LOOP
      why := CASE WHEN jsonb_typeof(step -> k) = 'string' THEN herald_template_problem(step ->> k) END;
      IF why IS NOT NULL THEN
        problems := problems || jsonb_build_array(jsonb_build_array(path || '.' || k, why));
      END IF;
    END LOOP;
    IF kind = 'update_field' AND jsonb_typeof(step -> 'set') = 'object' THEN
      problems := problems || coalesce((
        SELECT jsonb_agg(jsonb_build_array(path || '.set.' || s.key, w.why) ORDER BY s.key)
        FROM jsonb_each(step -> 'set') s
        CROSS JOIN LATERAL (SELECT herald_template_problem(s.value #>> '{}') AS why) w
        WHERE jsonb_typeof(s.value) = 'string' AND w.why IS NOT NULL), '[]');
    END IF;
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
        -- The region its number is read in: a code, or a column of the data holding one.
        IF jsonb_typeof(step -> 'region') = 'object' THEN
          IF (SELECT count(*) FROM jsonb_object_keys(step -> 'region')) <> 1 OR NOT step -> 'region' ? 'field' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.region',
              herald_region_problem(step -> 'region', true)));
          ELSIF NOT (jsonb_typeof(step #> '{region,field}') = 'string' AND step #>> '{region,field}' <> ''
                     OR jsonb_typeof(step #> '{region,field}') = 'array') THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.region.field',
              'a field is text ("country") naming the column that holds the region'));
          ELSIF p_kinds IS NOT NULL AND jsonb_typeof(step #> '{region,field}') = 'string' AND split_part(step #>> '{region,field}', '.', 1) NOT IN ('herald', 'steps', 'payload') THEN
            IF p_kinds ->> split_part(step #>> '{region,field}', '.', 1) IS NULL THEN
              problems := problems || jsonb_build_array(jsonb_build_array(path || '.region.field',
                format('the data has no column `%s`', split_part(step #>> '{region,field}', '.', 1))));
            ELSIF position('.' IN step #>> '{region,field}') = 0
                  AND p_kinds ->> (step #>> '{region,field}') NOT IN ('text', 'other') THEN
              problems := problems || jsonb_build_array(jsonb_build_array(path || '.region.field',
                format('`%s` holds %s, not a region code', step #>> '{region,field}', p_kinds ->> (step #>> '{region,field}'))));
            END IF;
          END IF;
        ELSIF step ? 'region' THEN
          problems := problems || herald_problem(path || '.region', herald_region_problem(step -> 'region', true));
        END IF;
      WHEN 'wait' THEN
        IF step ? 'for' AND step ? 'until' THEN
          problems := problems || jsonb_build_array(jsonb_build_array(path, 'a wait has `for` or `until`, not both'));
        ELSIF step ? 'for' THEN
          IF herald_span_problem(step -> 'for', 'a wait''s `for`') IS NOT NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for', herald_span_problem(step -> 'for', 'a wait''s `for`')));
          ELSIF (step ->> 'for') ~ '^\s*-' THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for', 'a wait cannot last a negative span'));
          ELSIF herald_span_exceeds(step ->> 'for', '400 days') THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.for',
              format('`%s` is longer than the longest wait, 400 days', step ->> 'for')));
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
             AND NOT herald_zone_names() ? (step #>> '{until,timezone}') THEN
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
        -- Another row than the instance's subject: a table and its key, both or neither.
        IF step ? 'table' OR step ? 'key' THEN
          problems := problems || herald_text_problem(step, 'table', path) || herald_text_problem(step, 'key', path);
          IF jsonb_typeof(step -> 'table') = 'string' AND herald_relation(step ->> 'table') IS NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.table', format('no table `%s`', step ->> 'table')));
          ELSIF jsonb_typeof(step -> 'table') = 'string' AND herald_key_column(herald_relation(step ->> 'table')) IS NULL THEN
            problems := problems || jsonb_build_array(jsonb_build_array(path || '.table', format(
              '`%s` has no key column to find its row by: attach it with herald_attach or give it a one-column primary key',
              step ->> 'table')));
          END IF;
        END IF;
    END CASE;
  END LOOP;
  RETURN jsonb_build_object('problems', problems, 'ids', ids);
END
$$;

-- A status_change trigger must watch the column its table is attached with (a trigger
-- without `column` watches that one).
CREATE OR REPLACE FUNCTION herald_capture_problems(p_definition jsonb) RETURNS TABLE (path text, message text)
LANGUAGE sql STABLE AS $$
  SELECT 'trigger.column', format('%s is attached with status column `%s`', att.table_schema || '.' || att.table_name,
                                  att.status_column)
  FROM herald_attachments att
  JOIN pg_class c ON c.relname = att.table_name
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = att.table_schema
  WHERE p_definition #>> '{trigger,type}' = 'status_change'
    AND c.oid = herald_relation(p_definition #>> '{trigger,table}')
    AND att.status_column <> coalesce(p_definition #>> '{trigger,column}', att.status_column)
$$;

-- The problem of a time trigger's `lateness`, if it has one: a span, not negative.
CREATE OR REPLACE FUNCTION herald_lateness_problem(p_trig jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_trig ? 'lateness' THEN
    herald_problem('trigger.lateness', coalesce(herald_span_problem(p_trig -> 'lateness', 'a lateness'),
      CASE WHEN herald_span_interval(p_trig ->> 'lateness') < interval '0' THEN 'a lateness cannot be negative' END))
  ELSE '[]'::jsonb END
$$;

-- The problems of a date trigger on table p_rel (whose columns' kinds are p_kinds): a
-- date or time column to fire by, an offset and lateness that are spans (the lateness not
-- negative), a local time of day, a zone named or read from a column, and a table that is
-- attached (its rows are found by its key).
CREATE OR REPLACE FUNCTION herald_date_trigger_problems(p_trig jsonb, p_rel regclass, p_kinds jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  col      text := p_trig ->> 'column';
  zcol     text := p_trig #>> '{timezone,field}';
BEGIN
  IF jsonb_typeof(p_trig -> 'column') IS DISTINCT FROM 'string' THEN
    problems := problems || herald_problem('trigger.column', 'is required: the date or timestamp column the trigger fires by');
  ELSIF p_kinds IS NOT NULL AND NOT p_kinds ? col THEN
    problems := problems || herald_problem('trigger.column', format('`%s` has no column `%s`', p_trig ->> 'table', col));
  ELSIF p_kinds IS NOT NULL AND p_kinds ->> col <> 'time' THEN
    problems := problems || herald_problem('trigger.column', format('`%s` holds %s, not a date or time', col, p_kinds ->> col));
  END IF;
  IF p_trig ? 'offset' THEN
    problems := problems || herald_problem('trigger.offset', herald_span_problem(p_trig -> 'offset', 'an offset'));
  END IF;
  problems := problems || herald_lateness_problem(p_trig);
  IF p_trig ? 'at' AND coalesce(p_trig ->> 'at', '') !~ '^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$' THEN
    problems := problems || herald_problem('trigger.at', '`at` is a local time of day such as "09:00"');
  END IF;
  IF jsonb_typeof(p_trig -> 'timezone') = 'string' THEN
    IF NOT herald_zone_names() ? (p_trig ->> 'timezone') THEN
      problems := problems || herald_problem('trigger.timezone',
        format('`%s` is not a time zone name such as "Europe/London"', p_trig ->> 'timezone'));
    END IF;
  ELSIF p_trig ? 'timezone' AND (jsonb_typeof(p_trig -> 'timezone') <> 'object' OR zcol IS NULL) THEN
    problems := problems || herald_problem('trigger.timezone', 'a timezone is a name ("Europe/London") or {"field": ...} naming one');
  ELSIF zcol IS NOT NULL AND p_kinds IS NOT NULL AND NOT p_kinds ? zcol THEN
    problems := problems || herald_problem('trigger.timezone.field', format('`%s` has no column `%s`', p_trig ->> 'table', zcol));
  END IF;
  IF p_rel IS NOT NULL AND NOT EXISTS (SELECT 1 FROM herald_attachments a JOIN pg_class c ON c.relname = a.table_name
                                       JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = a.table_schema
                                       WHERE c.oid = p_rel) THEN
    problems := problems || herald_problem('trigger.table', format(
      '`%s` is not attached: SELECT herald_attach(''%s'', ''<status column>'') first', p_trig ->> 'table', p_rel));
  END IF;
  RETURN problems;
END
$$;

-- The problems of a schedule trigger: a cron expression, a zone, a lateness, and an
-- audience (a relation, and the key column its rows are found by: the attached key or the
-- one-column primary key when `key` is left out).
CREATE OR REPLACE FUNCTION herald_schedule_problems(p_trig jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  aud      jsonb := p_trig -> 'audience';
  rel      regclass;
  keyc     text;
BEGIN
  IF jsonb_typeof(p_trig -> 'cron') IS DISTINCT FROM 'string' THEN
    problems := problems || herald_problem('trigger.cron', 'is required: a cron expression such as "0 9 * * MON"');
  ELSE
    problems := problems || herald_problem('trigger.cron', herald_cron_problem(p_trig ->> 'cron'));
  END IF;
  IF p_trig ? 'timezone' AND (jsonb_typeof(p_trig -> 'timezone') IS DISTINCT FROM 'string'
                              OR NOT herald_zone_names() ? (p_trig ->> 'timezone')) THEN
    problems := problems || herald_problem('trigger.timezone',
      format('`%s` is not a time zone name such as "Europe/London"', p_trig ->> 'timezone'));
  END IF;
  problems := problems || herald_lateness_problem(p_trig);
  IF aud IS NULL THEN
    RETURN problems;
  END IF;
  IF jsonb_typeof(aud) IS DISTINCT FROM 'object' THEN
    RETURN problems || herald_problem('trigger.audience', 'an audience is {"relation": ..., "key": ...}');
  END IF;
  problems := problems || herald_unknown_keys(aud, '["relation", "key"]', 'trigger.audience');
  IF jsonb_typeof(aud -> 'relation') IS DISTINCT FROM 'string' THEN
    RETURN problems || herald_problem('trigger.audience.relation', 'is required: the table or view whose rows are the audience');
  END IF;
  rel := herald_relation(aud ->> 'relation');
  IF rel IS NULL THEN
    RETURN problems || herald_problem('trigger.audience.relation', format('no table or view `%s`', aud ->> 'relation'));
  END IF;
  keyc := coalesce(aud ->> 'key', herald_key_column(rel));
  IF keyc IS NULL THEN
    problems := problems || herald_problem('trigger.audience.key',
      format('`%s` has no one-column primary key: name the column its rows are found by', aud ->> 'relation'));
  ELSIF NOT herald_column_kinds(rel) ? keyc THEN
    problems := problems || herald_problem('trigger.audience.key', format('`%s` has no column `%s`', aud ->> 'relation', keyc));
  END IF;
  RETURN problems;
END
$$;

-- The problems of a document's `data` (the relation its templates and conditions read, and
-- the column its rows are found by) and `settings` (how sends are spaced and retried).
CREATE OR REPLACE FUNCTION herald_data_settings_problems(p_definition jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  problems jsonb := '[]';
  d        jsonb := p_definition -> 'data';
  s        jsonb := p_definition -> 'settings';
  rel      regclass;
  k        text;
BEGIN
  IF p_definition ? 'data' THEN
    IF jsonb_typeof(d) IS DISTINCT FROM 'object' THEN
      problems := problems || herald_problem('data', 'is an object: {"relation": ..., "key": ...}');
    ELSE
      problems := problems || herald_unknown_keys(d, herald_definition_shape() -> 'data', 'data');
      IF jsonb_typeof(d -> 'relation') IS DISTINCT FROM 'string' THEN
        problems := problems || herald_problem('data.relation', 'is required: the table or view the templates read');
      ELSE
        rel := herald_relation(d ->> 'relation');
        IF rel IS NULL THEN
          problems := problems || herald_problem('data.relation', format('no table or view `%s`', d ->> 'relation'));
        END IF;
      END IF;
      IF jsonb_typeof(d -> 'key') IS DISTINCT FROM 'string' THEN
        problems := problems || herald_problem('data.key', 'is required: the column of `data.relation` that holds the subject''s key');
      ELSIF rel IS NOT NULL AND NOT herald_column_kinds(rel) ? (d ->> 'key') THEN
        problems := problems || herald_problem('data.key', format('`%s` has no column `%s`', d ->> 'relation', d ->> 'key'));
      END IF;
    END IF;
  END IF;
  IF p_definition ? 'settings' THEN
    IF jsonb_typeof(s) IS DISTINCT FROM 'object' THEN
      RETURN problems || herald_problem('settings', 'is an object of suppression_window, max_attempts, retry_base, retry_cap');
    END IF;
    problems := problems || herald_unknown_keys(s, herald_definition_shape() -> 'settings', 'settings');
    FOREACH k IN ARRAY ARRAY['suppression_window', 'retry_base', 'retry_cap'] LOOP
      IF s ? k THEN
        problems := problems || herald_problem('settings.' || k, herald_span_problem(s -> k, 'a ' || replace(k, '_', ' ')));
        IF herald_span_problem(s -> k, k) IS NULL AND (herald_span_interval(s ->> k) < interval '0'
           OR k = 'retry_base' AND herald_span_interval(s ->> k) = interval '0') THEN
          problems := problems || herald_problem('settings.' || k,
            CASE k WHEN 'retry_base' THEN 'must be longer than zero' ELSE 'cannot be negative' END);
        END IF;
      END IF;
    END LOOP;
    IF s ? 'max_attempts' AND NOT (jsonb_typeof(s -> 'max_attempts') = 'number'
       AND (s ->> 'max_attempts') ~ '^\d+$' AND (s ->> 'max_attempts')::numeric BETWEEN 1 AND 100) THEN
      problems := problems || herald_problem('settings.max_attempts', 'is a whole number from 1 to 100');
    END IF;
  END IF;
  RETURN problems;
END
$$;

-- Every problem of a definition, each with its path: the trigger's keys as Herald's reader
-- checks them, the data source, conditions, settings and steps. p_data: the relation
-- conditions read, when the document does not name one in `data`.
CREATE OR REPLACE FUNCTION herald_definition_problems(p_definition jsonb, p_data regclass DEFAULT NULL)
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
  tkeys    text[];
  status_c text;
BEGIN
  IF jsonb_typeof(p_definition) IS DISTINCT FROM 'object' THEN
    RETURN QUERY SELECT '(document)'::text, 'a definition is an object'::text;
    RETURN;
  END IF;
  problems := problems || herald_unknown_keys(p_definition, herald_definition_shape() -> 'document', '')
                       || herald_unknown_keys(p_definition -> 'admins', herald_definition_shape() -> 'admins', 'admins');
  -- The trigger, and the relation whose columns conditions and waits read.
  IF jsonb_typeof(trig) IS DISTINCT FROM 'object' THEN
    problems := problems || jsonb_build_array(jsonb_build_array('trigger', 'is required: an object with a type'));
  END IF;
  -- A trigger's keys, as Herald's reader takes them.
  tkeys := herald_texts(herald_shape_of('triggers', trig ->> 'type') -> 'keys');
  IF cardinality(tkeys) = 0 THEN
    tkeys := NULL;
  END IF;
  IF tkeys IS NOT NULL THEN
    problems := problems || herald_unknown_keys(trig, to_jsonb(tkeys), 'trigger');
    FOREACH k IN ARRAY ARRAY['to', 'from', 'columns'] LOOP
      IF trig ? k AND k = ANY (tkeys) AND NOT (jsonb_typeof(trig -> k) = 'string'
         OR (jsonb_typeof(trig -> k) = 'array' AND NOT jsonb_path_exists(trig -> k, 'strict $[*] ? (@.type() != "string")'))) THEN
        problems := problems || jsonb_build_array(jsonb_build_array('trigger.' || k, 'is a list of text'));
      END IF;
    END LOOP;
  END IF;
  IF jsonb_typeof(trig) IS DISTINCT FROM 'object' THEN
    NULL;
  ELSIF 'table' = ANY (tkeys) THEN
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
    -- A status_change trigger without a column watches the column its table is attached with.
    status_c := coalesce(trig ->> 'column', herald_status_column(rel), 'status');
    IF tkinds IS NOT NULL AND trig ->> 'type' = 'status_change' AND NOT tkinds ? status_c THEN
      problems := problems || jsonb_build_array(jsonb_build_array('trigger.column',
        format('`%s` has no column `%s`', trig ->> 'table', status_c)));
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
    IF trig ->> 'type' = 'date' THEN
      problems := problems || herald_date_trigger_problems(trig, rel, tkinds);
    END IF;
  ELSIF trig ->> 'type' = 'schedule' THEN
    problems := problems || herald_schedule_problems(trig);
    -- An audience's rows are the data conditions and waits read.
    rel := herald_relation(trig #>> '{audience,relation}');
    IF rel IS NOT NULL THEN
      tkinds := herald_column_kinds(rel);
    END IF;
  ELSIF tkeys && ARRAY['tag', 'segment'] THEN
    problems := problems || herald_text_problem(trig, CASE WHEN 'tag' = ANY (tkeys) THEN 'tag' ELSE 'segment' END, 'trigger');
  ELSIF tkeys IS NULL THEN
    problems := problems || jsonb_build_array(jsonb_build_array('trigger.type', format(
      'unknown trigger type `%s`; expected one of %s', coalesce(trig ->> 'type', ''), herald_shape_types('triggers'))));
  END IF;
  problems := problems || herald_data_settings_problems(p_definition);
  -- What conditions and waits read: the data's relation, else the trigger's table.
  p_data := coalesce(herald_relation(p_definition #>> '{data,relation}'), p_data);
  kinds := CASE WHEN p_data IS NOT NULL THEN herald_column_kinds(p_data) ELSE tkinds END;
  IF p_definition ? 'conditions' THEN
    problems := problems || herald_condition_problems(p_definition -> 'conditions', 'conditions', 1, kinds);
  END IF;
  IF p_definition ? 'exit' THEN
    IF jsonb_typeof(p_definition -> 'exit') <> 'array' THEN
      problems := problems || jsonb_build_array(jsonb_build_array('exit', 'is a list of {if, reason}'));
    ELSE
      FOR item IN SELECT value FROM jsonb_array_elements(p_definition -> 'exit') LOOP
        problems := problems || herald_unknown_keys(item, herald_definition_shape() -> 'exit', format('exit[%s]', i));
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
  IF p_definition ? 'timezone' AND NOT herald_zone_names() ? (p_definition ->> 'timezone') THEN
    problems := problems || jsonb_build_array(jsonb_build_array('timezone',
      format('`%s` is not a time zone name such as "Europe/London"', p_definition ->> 'timezone')));
  END IF;
  IF p_definition ? 'region' THEN
    problems := problems || herald_problem('region', herald_region_problem(p_definition -> 'region', false));
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

-- The checksum a saved document is known by: the SHA-256 of its jsonb text (keys in
-- Postgres's order, so the same document has one checksum however it was written).
CREATE OR REPLACE FUNCTION herald_checksum(p_definition jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT 'sha256:' || encode(sha256(convert_to(p_definition::text, 'UTF8')), 'hex')
$$;

-- Every problem a save would refuse a definition for, each with its path: its shape, the
-- columns and relations it names, and what its capture can test. (Its templates'
-- variables are checked by the herald command; see docs/definitions.md.)
CREATE OR REPLACE FUNCTION herald_definition_mistakes(p_definition jsonb)
RETURNS TABLE (path text, message text)
LANGUAGE sql STABLE AS $$
  SELECT * FROM herald_definition_problems(p_definition)
  UNION ALL
  SELECT * FROM herald_step_detail_problems(p_definition -> 'steps', 'steps', herald_relation(p_definition #>> '{trigger,table}'),
    (SELECT att.key_column FROM herald_attachments att
     JOIN pg_class c ON c.relname = att.table_name
     JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = att.table_schema
     WHERE c.oid = herald_relation(p_definition #>> '{trigger,table}')))
  UNION ALL
  SELECT * FROM herald_capture_problems(p_definition)
$$;

-- Refuses a definition with every problem and its path (SQLSTATE 22023), before anything
-- is stored.
CREATE OR REPLACE FUNCTION herald_refuse_mistakes(p_name text, p_definition jsonb) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  mistakes text;
  n        integer;
BEGIN
  SELECT string_agg(m.path || ': ' || m.message, E'\n'), count(*) INTO mistakes, n
  FROM herald_definition_mistakes(p_definition) m;
  IF n > 0 THEN
    RAISE EXCEPTION 'automation % refused: % mistake(s) in its definition', p_name, n
      USING ERRCODE = '22023', DETAIL = mistakes;
  END IF;
END
$$;

-- Stores a checked definition as an automation's next version and makes it the one that
-- runs: the automation's trigger, data and settings become the document's (a setting it
-- leaves out takes its default), and the column form's columns, which no longer describe
-- it, are cleared.
CREATE OR REPLACE FUNCTION herald_store_version(p_automation_id bigint, p_definition jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  v        integer;
  subject  regclass := herald_relation(coalesce(p_definition #>> '{trigger,table}',
                                                p_definition #>> '{trigger,audience,relation}'));
  settings jsonb := coalesce(p_definition -> 'settings', '{}');
BEGIN
  SELECT coalesce(max(version), 0) + 1 INTO v FROM automation_versions WHERE automation_id = p_automation_id;
  INSERT INTO automation_versions (automation_id, version, definition, checksum)
  VALUES (p_automation_id, v, p_definition, herald_checksum(p_definition));
  -- Status-change and insert triggers are captured as the column form's are.
  UPDATE automations
  SET version = v, updated_at = now(),
      email_from = NULL, email_to = NULL, email_subject = NULL, email_text = NULL, email_html = NULL,
      sms_to = NULL, sms_body = NULL, email_on_unknown = NULL, sms_on_unknown = NULL,
      source_schema = coalesce((SELECT ns.nspname FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                                WHERE c.oid = subject), source_schema),
      source_table = coalesce((SELECT c.relname FROM pg_class c WHERE c.oid = subject), source_table),
      trigger_event = p_definition #>> '{trigger,type}',
      to_status = CASE jsonb_typeof(p_definition #> '{trigger,to}')
                    WHEN 'string' THEN p_definition #>> '{trigger,to}'
                    WHEN 'array' THEN p_definition #>> '{trigger,to,0}' END,
      from_status = CASE jsonb_typeof(p_definition #> '{trigger,from}')
                      WHEN 'string' THEN p_definition #>> '{trigger,from}'
                      WHEN 'array' THEN p_definition #>> '{trigger,from,0}' END,
      context_relation = p_definition #>> '{data,relation}',
      context_key_column = p_definition #>> '{data,key}',
      -- The defaults are the table's (db/migrations/0001_baseline.sql).
      suppression_window = coalesce(herald_span_interval(settings ->> 'suppression_window'), interval '30 seconds'),
      max_attempts = coalesce((settings ->> 'max_attempts')::integer, 5),
      retry_base = coalesce(herald_span_interval(settings ->> 'retry_base'), interval '30 seconds'),
      retry_cap = coalesce(herald_span_interval(settings ->> 'retry_cap'), interval '1 hour')
  WHERE id = p_automation_id;
  -- What the capture listens to comes from the version's trigger (lists of statuses, columns).
  PERFORM herald_compile(source_schema, source_table) FROM automations
  WHERE id = p_automation_id AND source_table IS NOT NULL;
  PERFORM herald_schedule_saved(p_automation_id, p_definition);
  RETURN v;
END
$$;

-- Saves a definition as an existing automation's next version, whatever version it was
-- written against, and returns the version that runs; saving the document that runs
-- already changes nothing. herald_apply_automation is the same save, compare-and-set.
CREATE OR REPLACE FUNCTION herald_save_automation(p_name text, p_definition jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  auto_id bigint;
  current integer;
BEGIN
  PERFORM herald_refuse_mistakes(p_name, p_definition);
  SELECT id, version INTO auto_id, current FROM automations WHERE name = p_name FOR UPDATE;
  IF auto_id IS NULL THEN
    RAISE EXCEPTION 'no automation named %', p_name USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM automation_versions
             WHERE automation_id = auto_id AND version = current AND checksum = herald_checksum(p_definition)) THEN
    RETURN current;
  END IF;
  RETURN herald_store_version(auto_id, p_definition);
END
$$;
REVOKE EXECUTE ON FUNCTION herald_save_automation(text, jsonb) FROM PUBLIC;

-- Saves a document as automation p_name's next version if the version that runs is still
-- the one it was based on: p_base is that version's checksum (NULL: there is no automation
-- of that name yet, and this save creates it). Otherwise nothing changes and the save is
-- refused as stale (SQLSTATE ZS409), naming the checksum that runs now. Saving the document
-- that runs already changes nothing, whatever p_base says: outcome `unchanged`. Otherwise
-- `created` or `saved`, with the version that runs and its checksum.
CREATE OR REPLACE FUNCTION herald_apply_automation(p_name text, p_definition jsonb, p_base text)
RETURNS TABLE (outcome text, version integer, checksum text)
LANGUAGE plpgsql AS $$
DECLARE
  auto_id  bigint;
  current  integer;
  cur_sum  text;
  new_sum  text := herald_checksum(p_definition);
  subject  regclass := herald_relation(coalesce(p_definition #>> '{trigger,table}',
                                                p_definition #>> '{trigger,audience,relation}',
                                                p_definition #>> '{data,relation}'));
BEGIN
  PERFORM herald_refuse_mistakes(p_name, p_definition);
  SELECT a.id, a.version INTO auto_id, current FROM automations a WHERE a.name = p_name FOR UPDATE;
  IF auto_id IS NULL THEN
    IF p_base IS NOT NULL THEN
      RAISE EXCEPTION 'automation % is stale: it was based on %, and there is no automation of that name', p_name, p_base
        USING ERRCODE = 'ZS409', HINT = 'Read it again (herald diff) and save against what is there now.';
    END IF;
    -- Its table: the trigger's, a schedule's audience, or its data's; none for a schedule
    -- without an audience, or a manual or label trigger without data.
    INSERT INTO automations (name, source_schema, source_table, trigger_event)
    SELECT p_name, coalesce(ns.nspname, 'public'), c.relname, p_definition #>> '{trigger,type}'
    FROM (SELECT subject AS rel) s
    LEFT JOIN pg_class c ON c.oid = s.rel
    LEFT JOIN pg_namespace ns ON ns.oid = c.relnamespace
    ON CONFLICT (name) DO NOTHING
    RETURNING id INTO auto_id;
    IF auto_id IS NULL THEN
      RAISE EXCEPTION 'automation % is stale: it was saved as new, and another save created it first', p_name
        USING ERRCODE = 'ZS409', HINT = 'Read it again (herald diff) and save against what is there now.';
    END IF;
    RETURN QUERY SELECT 'created'::text, herald_store_version(auto_id, p_definition), new_sum;
    RETURN;
  END IF;
  SELECT v.checksum INTO cur_sum FROM automation_versions v WHERE v.automation_id = auto_id AND v.version = current;
  IF cur_sum = new_sum THEN
    RETURN QUERY SELECT 'unchanged'::text, current, cur_sum;
    RETURN;
  END IF;
  IF p_base IS DISTINCT FROM cur_sum THEN
    RAISE EXCEPTION 'automation % is stale: it was based on %, and version % (%) runs now',
      p_name, coalesce(p_base, 'no automation'), coalesce(current::text, 'none'), coalesce(cur_sum, 'no definition')
      USING ERRCODE = 'ZS409', HINT = 'Read it again (herald diff) and save against what is there now.';
  END IF;
  RETURN QUERY SELECT 'saved'::text, herald_store_version(auto_id, p_definition), new_sum;
END
$$;
REVOKE EXECUTE ON FUNCTION herald_apply_automation(text, jsonb, text) FROM PUBLIC;

-- The column form: the email and SMS columns of `automations` are a shorthand for the
-- common two-step definition: a `send_email` step (`on_error: continue`, so an email that
-- cannot go out does not stop the SMS) and a `send_sms` step, each with the automation's
-- policy for an unknown outcome. Writing the columns saves that definition as the
-- automation's next version, as herald_save_automation does for a document of one's own.
-- The document the column form stands for. A table attached with a status column of its
-- own names it, as herald_save_automation requires of a status_change trigger.
CREATE OR REPLACE FUNCTION herald_column_definition(a automations) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'trigger', jsonb_strip_nulls(jsonb_build_object(
      'type', a.trigger_event,
      'table', format('%I.%I', a.source_schema, a.source_table),
      'column', CASE WHEN a.trigger_event = 'status_change' THEN
                  (SELECT att.status_column FROM herald_attachments att
                   WHERE att.table_schema = a.source_schema AND att.table_name = a.source_table
                     AND att.status_column <> 'status') END,
      'from', a.from_status,
      'to', a.to_status)),
    'steps', coalesce(jsonb_agg(s.step ORDER BY s.ord) FILTER (WHERE s.step IS NOT NULL), '[]'::jsonb))
  FROM (VALUES
    (1, CASE WHEN a.email_to IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
          'id', 'email', 'type', 'send_email',
          'from', a.email_from, 'to', a.email_to, 'subject', a.email_subject,
          'text', a.email_text, 'html', a.email_html,
          'on_unknown', a.email_on_unknown,
          'on_error', CASE WHEN a.sms_to IS NOT NULL THEN 'continue' END)) END),
    (2, CASE WHEN a.sms_to IS NOT NULL THEN jsonb_build_object(
          'id', 'sms', 'type', 'send_sms', 'to', a.sms_to, 'body', a.sms_body,
          'on_unknown', a.sms_on_unknown) END)
  ) AS s(ord, step)
$$;

-- Saves an automation's column form as its next version, unless that version is the one it
-- runs already (an update of another column changes nothing).
CREATE OR REPLACE FUNCTION herald_save_column_form() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  doc jsonb := herald_column_definition(NEW);
  v   integer;
BEGIN
  IF NEW.version IS NOT NULL AND doc = (SELECT definition FROM automation_versions
                                        WHERE automation_id = NEW.id AND version = NEW.version) THEN
    RETURN NULL;
  END IF;
  SELECT coalesce(max(version), 0) + 1 INTO v FROM automation_versions WHERE automation_id = NEW.id;
  INSERT INTO automation_versions (automation_id, version, definition, checksum)
  VALUES (NEW.id, v, doc, herald_checksum(doc));
  UPDATE automations SET version = v WHERE id = NEW.id;
  RETURN NULL;
END
$$;

-- Row triggers fire before the statement triggers that recompile the capture functions, so
-- those read the new version.
DROP TRIGGER IF EXISTS herald_column_form_saved ON automations;
CREATE TRIGGER herald_column_form_saved
  AFTER INSERT OR UPDATE OF email_from, email_to, email_subject, email_text, email_html, sms_to, sms_body,
                            email_on_unknown, sms_on_unknown, trigger_event, from_status, to_status,
                            source_schema, source_table
  ON automations FOR EACH ROW
  WHEN (NEW.email_to IS NOT NULL OR NEW.sms_to IS NOT NULL)
  EXECUTE FUNCTION herald_save_column_form();
