-- Herald schema 5: the executor's claim finds its logs by id, and reads a batch's contexts
-- with one query per context relation.

-- The lease index was partial on `status IN ('queued', 'running')`. A claim by id that also
-- checks the status (`id = $1 AND status = 'queued' AND lease_token = $2`, which the
-- executor runs for every message) then matched the index's predicate, and when the
-- statistics said few logs were in flight the planner scanned every in-flight log through
-- it instead of looking the ids up: each batch cost time in proportion to the backlog.
-- Partial on the lease itself, the index still serves the rescue (`lease_expires_at < now`)
-- and can no longer be mistaken for a way to find a log by id.
DROP INDEX automation_execution_logs_leases;
CREATE INDEX automation_execution_logs_leases ON automation_execution_logs (lease_expires_at)
  WHERE lease_expires_at IS NOT NULL;

-- The template variables of many logs at once: one row per log of p_log_ids that exists,
-- with {"context": {...}} or {"error": "...", "sqlstate": "..."} as herald_try_context
-- gives them. Logs that read the same relation by the same key column are read together
-- (one query, an index lookup per key). A log whose key matches no row or several, and
-- every log of a relation whose query fails (a missing relation or column, a key that does
-- not cast, an error raised by a view), is read alone by herald_try_context, so it gets
-- its own error and fails only itself.
CREATE FUNCTION herald_contexts(p_log_ids bigint[])
RETURNS TABLE (log_id bigint, context jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  grp     record;
  rel     regclass;
  keytype text;
  got_ids bigint[];
  got     jsonb[];
BEGIN
  FOR grp IN
    SELECT coalesce(a.context_relation, format('%I.%I', g.subject_schema, g.subject_table)) AS relname,
           coalesce(a.context_key_column, g.subject_key_column) AS keycol,
           array_agg(g.id) AS ids, array_agg(g.subject_id) AS keys
    FROM ONLY automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.id = ANY (p_log_ids)
    GROUP BY 1, 2
  LOOP
    rel := to_regclass(grp.relname);
    keytype := NULL;
    got_ids := NULL;
    IF rel IS NOT NULL THEN
      SELECT format_type(atttypid, atttypmod) INTO keytype
      FROM pg_attribute WHERE attrelid = rel AND attname = grp.keycol AND attnum > 0 AND NOT attisdropped;
    END IF;
    IF keytype IS NOT NULL THEN
      -- Collected in arrays first: rows already returned could not be taken back if the
      -- query failed halfway.
      BEGIN
        EXECUTE format(
          'SELECT array_agg(id), array_agg(ctx) FROM (
             SELECT k.id, CASE WHEN count(x.row) = 1 THEN jsonb_build_object(''context'', (array_agg(x.row))[1])
                               ELSE herald_try_context(k.id) END AS ctx
             FROM unnest($1::bigint[], $2::text[]) AS k(id, key)
             LEFT JOIN LATERAL (SELECT to_jsonb(c) AS row FROM %s c WHERE c.%I = k.key::%s LIMIT 2) x ON true
             GROUP BY k.id) r',
          rel, grp.keycol, keytype)
          INTO got_ids, got USING grp.ids, grp.keys;
      EXCEPTION WHEN OTHERS THEN
        got_ids := NULL;  -- read these logs one by one below, each with its own error
      END;
    END IF;
    IF got_ids IS NOT NULL THEN
      RETURN QUERY SELECT * FROM unnest(got_ids, got);
    ELSE
      RETURN QUERY SELECT i, herald_try_context(i) FROM unnest(grp.ids) AS i;
    END IF;
  END LOOP;
END
$$;
