-- The columns of the relation a definition's templates read: the deleted row's table for a
-- delete trigger; else its data relation, its trigger's table, or its schedule's audience.
-- None for a schedule without an audience (its data is empty); NULL when no relation is
-- known (a manual or label trigger without data, or a name that is not a relation).
WITH d AS (SELECT $1::jsonb AS doc),
r AS (
  SELECT doc, herald_relation(CASE WHEN doc #>> '{trigger,type}' = 'delete' THEN doc #>> '{trigger,table}'
                                   ELSE coalesce(doc #>> '{data,relation}', doc #>> '{trigger,table}',
                                                 doc #>> '{trigger,audience,relation}') END) AS rel
  FROM d
)
SELECT CASE
  WHEN rel IS NOT NULL THEN (SELECT coalesce(array_agg(k ORDER BY k), '{}') FROM jsonb_object_keys(herald_column_kinds(rel)) k)
  WHEN doc #>> '{trigger,type}' = 'schedule' AND NOT doc -> 'trigger' ? 'audience' THEN '{}'::text[]
END
FROM r
