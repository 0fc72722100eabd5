SELECT path, message FROM herald_definition_mistakes($1::jsonb)
