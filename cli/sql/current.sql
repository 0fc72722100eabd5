-- An automation's version that runs, its document and checksum (no row: no such automation).
SELECT a.version, v.definition, v.checksum
FROM automations a
LEFT JOIN automation_versions v ON v.automation_id = a.id AND v.version = a.version
WHERE a.name = $1
