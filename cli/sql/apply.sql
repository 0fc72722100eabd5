SELECT outcome, version, checksum FROM herald_apply_automation($1, $2::jsonb, $3)
