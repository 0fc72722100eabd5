-- An automation saved from a file may have no table: a schedule without an audience, or a
-- manual or label trigger without data. Its capture compiles nothing; the column form,
-- whose trigger is always a table's, still needs one.
ALTER TABLE automations ALTER COLUMN source_table DROP NOT NULL;
ALTER TABLE automations ADD CONSTRAINT automations_column_form_has_a_table
  CHECK (source_table IS NOT NULL OR (email_to IS NULL AND sms_to IS NULL));
