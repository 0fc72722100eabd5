-- The columns of the relation a definition's templates read: its data relation, else its
-- trigger's table, else its schedule's audience.
SELECT coalesce(array_agg(k ORDER BY k), '{}')
FROM jsonb_object_keys(herald_column_kinds(herald_relation(coalesce(
       $1::jsonb #>> '{data,relation}', $1::jsonb #>> '{trigger,table}', $1::jsonb #>> '{trigger,audience,relation}')))) k
