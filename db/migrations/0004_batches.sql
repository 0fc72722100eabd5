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
