-- Date-relative triggers: when each row's date makes its automation fire, kept as the date
-- changes, and what became of each firing. The functions that keep and read these tables are
-- in db/schema/dates.sql.

-- One row per (automation, row, date value): `due` until its time comes, then `fired` (an
-- instance was started) or `missed` (its time passed more than the trigger's lateness ago,
-- as when the scheduler did not run). A value fires at most once; a row whose date moves
-- gets a new due occurrence for the new value, and its old due one is dropped. A schedule's
-- occurrences are recorded as they fire: per audience row (its key), or with subject ''
-- when it has no audience, and `occurs_on` the occurrence's time.
CREATE TABLE herald_occurrences (
  automation_id bigint NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
  subject_id    text NOT NULL,
  -- The date value the time was computed from, as the template data shows it (a
  -- schedule's: the occurrence).
  occurs_on     text NOT NULL,
  fire_at       timestamptz NOT NULL,
  -- The zone its local time was computed in.
  zone          text NOT NULL,
  state         text NOT NULL DEFAULT 'due' CHECK (state IN ('due', 'fired', 'missed')),
  done_at       timestamptz,
  PRIMARY KEY (automation_id, subject_id, occurs_on)
);
-- The scheduler reads only what is due.
CREATE INDEX herald_occurrences_due ON herald_occurrences (fire_at) WHERE state = 'due';

-- Each date-triggered automation's trigger as its occurrences were computed from it: a
-- save that changes it computes them again.
CREATE TABLE herald_date_triggers (
  automation_id bigint PRIMARY KEY REFERENCES automations (id) ON DELETE CASCADE,
  spec          jsonb NOT NULL,
  lateness      interval NOT NULL
);

-- Each scheduled automation's schedule as saved, and how far the scheduler has looked:
-- every occurrence up to `scanned_to` was fired or recorded missed. `next_fires` are the
-- next few, as the scheduler last computed them (for herald_next_fires).
CREATE TABLE herald_schedules (
  automation_id bigint PRIMARY KEY REFERENCES automations (id) ON DELETE CASCADE,
  spec          jsonb NOT NULL,
  scanned_to    timestamptz NOT NULL,
  next_fires    timestamptz[] NOT NULL DEFAULT '{}'
);

-- Date triggers and schedules are automations' triggers too.
ALTER TABLE automations DROP CONSTRAINT automations_trigger_event_check;
ALTER TABLE automations ADD CONSTRAINT automations_trigger_event_check
  CHECK (trigger_event IN ('status_change', 'insert', 'update', 'delete', 'manual',
                           'tag_added', 'tag_removed', 'segment_joined', 'segment_left', 'date', 'schedule'));
