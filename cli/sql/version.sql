-- The document of one version of an automation (no row: no such version).
SELECT v.definition
FROM automation_versions v
JOIN automations a ON a.id = v.automation_id
WHERE a.name = $1 AND v.version = $2
