-- A sample business schema with Herald attached: clients, their jobs, and one automation
-- that emails and texts the client when a job is completed. Run it after the migrations:
--   psql "$DATABASE_URL" -f db/examples/jobs.sql

CREATE TABLE clients (
  id        bigint PRIMARY KEY,
  name      text NOT NULL,
  email     text,
  phone     text,
  time_zone text NOT NULL DEFAULT 'America/Los_Angeles'
);

CREATE TABLE jobs (
  id        bigint PRIMARY KEY,
  client_id bigint NOT NULL REFERENCES clients (id),
  title     text NOT NULL,
  status    text NOT NULL DEFAULT 'scheduled',
  visit_at  timestamptz NOT NULL DEFAULT herald_now(),
  price     numeric(10, 2) NOT NULL DEFAULT 0
);

INSERT INTO clients (id, name, email, phone, time_zone) VALUES
  (1, 'Ann Lee', 'ann@example.com', '+14155550101', 'America/Los_Angeles'),
  (2, 'Bo Chen', 'bo@example.com', '+14155550102', 'America/New_York');

INSERT INTO jobs (id, client_id, title, status, visit_at, price) VALUES
  (1, 1, 'Fix the kitchen sink', 'scheduled', '2026-03-02 17:30+00', 1240.5),
  (2, 2, 'Service the boiler', 'scheduled', '2026-03-05 14:00+00', 180);

-- What the templates see at send time: one row per job, read fresh when the message is
-- rendered, so an edit made after the status change is still picked up.
CREATE VIEW job_context AS
SELECT j.id        AS job_id,
       j.title     AS job_title,
       j.status    AS job_status,
       j.visit_at,
       j.price,
       c.name      AS client_name,
       c.email     AS client_email,
       c.phone     AS client_phone,
       c.time_zone AS client_time_zone
FROM jobs j
JOIN clients c ON c.id = j.client_id;

-- Capture status changes of jobs.
SELECT herald_attach('public.jobs', status_column => 'status', key_column => 'id');

-- The column form: Herald saves it as a two-step workflow definition (email, then SMS, the
-- email's failure not stopping the SMS); see automation_versions. The filters show the
-- visit in the client's own zone and the price as money (docs/definitions.md, Filters).
INSERT INTO automations
  (name, source_table, to_status, context_relation, context_key_column,
   email_to, email_subject, email_text, email_html, sms_to, sms_body)
VALUES
  ('job-completed', 'jobs', 'completed', 'public.job_context', 'job_id',
   '{{ client_email }}',
   'Your job "{{ job_title }}" is done',
   E'Hi {{ client_name }},\n\n"{{ job_title }}", our visit of {{ visit_at | datetime(tz=client_time_zone) }}, '
     'is completed: {{ price | money("USD") }}. Thank you for your business.',
   '<p>Hi {{ client_name }},</p><p><b>{{ job_title }}</b>, our visit of {{ visit_at | datetime(tz=client_time_zone) }}, '
     'is completed: {{ price | money("USD") }}. Thank you for your business.</p>',
   '{{ client_phone }}',
   'Hi {{ client_name }}, "{{ job_title }}" ({{ visit_at | date("%a %-d %b", tz=client_time_zone) }}) is completed: '
     '{{ price | money("USD") }}.');
