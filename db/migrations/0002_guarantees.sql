-- Herald schema 2: retries with backoff, the dead and unknown states, leases with fencing
-- tokens, attempt history, and the operator functions herald_retry / herald_cancel.

-- Retry policy and the per-channel policy for an unknown outcome, per automation.
ALTER TABLE automations
  ADD COLUMN max_attempts     integer NOT NULL DEFAULT 5 CHECK (max_attempts BETWEEN 1 AND 100),
  ADD COLUMN retry_base       interval NOT NULL DEFAULT interval '30 seconds' CHECK (retry_base > interval '0'),
  ADD COLUMN retry_cap        interval NOT NULL DEFAULT interval '1 hour',
  -- What to do with a delivery whose send may or may not have happened (the executor
  -- died between calling the provider and recording the answer): 'resend' it, or 'hold'
  -- the log in status 'unknown' for an operator.
  ADD COLUMN email_on_unknown text NOT NULL DEFAULT 'resend' CHECK (email_on_unknown IN ('resend', 'hold')),
  ADD COLUMN sms_on_unknown   text NOT NULL DEFAULT 'hold' CHECK (sms_on_unknown IN ('resend', 'hold')),
  ADD CONSTRAINT automations_retry_cap CHECK (retry_cap >= retry_base);

ALTER TABLE automation_execution_logs DROP CONSTRAINT automation_execution_logs_status_check;
ALTER TABLE automation_execution_logs ADD CONSTRAINT automation_execution_logs_status_check
  CHECK (status IN ('pending', 'queued', 'running', 'sent', 'failed', 'dead', 'unknown', 'cancelled', 'suppressed'));

-- A lease: who may act on a queued or running log, and until when. Every claim takes a new
-- token; every write-back names its token, so a holder whose lease was taken over can no
-- longer change the log.
ALTER TABLE automation_execution_logs
  ADD COLUMN lease_token      bigint,
  ADD COLUMN lease_expires_at timestamptz;
CREATE SEQUENCE herald_lease_tokens;
CREATE INDEX automation_execution_logs_leases ON automation_execution_logs (lease_expires_at)
  WHERE status IN ('queued', 'running');

ALTER TABLE automation_deliveries DROP CONSTRAINT automation_deliveries_status_check;
ALTER TABLE automation_deliveries ADD CONSTRAINT automation_deliveries_status_check
  CHECK (status IN ('sending', 'sent', 'failed', 'unknown'));

-- Every attempt of every log.
CREATE TABLE automation_attempts (
  log_id      bigint NOT NULL REFERENCES automation_execution_logs (id) ON DELETE CASCADE,
  attempt     integer NOT NULL,
  lease_token bigint NOT NULL,
  started_at  timestamptz NOT NULL,
  finished_at timestamptz,
  -- sent | failed (permanent) | retry (transient, scheduled again) | dead (transient, no
  -- attempts left) | lease_expired (the executor vanished) | unknown (held for an operator)
  outcome     text CHECK (outcome IN ('sent', 'failed', 'retry', 'dead', 'lease_expired', 'unknown')),
  error       text,
  error_kind  text,
  error_code  text,
  PRIMARY KEY (log_id, attempt)
);

-- The delay before attempt n+1: exponential backoff with full jitter.
CREATE FUNCTION herald_backoff(attempts integer, base interval, cap interval) RETURNS interval
LANGUAGE sql VOLATILE AS $$
  SELECT least(cap, base * power(2, least(greatest(attempts - 1, 0), 30))) * random()
$$;

-- Rescue the logs whose lease ran out: queued ones whose message never came (back to
-- pending), running ones whose executor vanished (retried, dead, or held as unknown when a
-- send was in flight on a channel whose policy is 'hold').
-- SECURITY DEFINER: the scheduler's role may run it without rights of its own on
-- deliveries, attempts or definitions (see db/roles.sql).
CREATE FUNCTION herald_rescue(p_now timestamptz)
RETURNS TABLE (requeued integer, retried integer, dead integer, unknown integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  l        record;
  holds    text[];
  last     boolean;
BEGIN
  requeued := 0; retried := 0; dead := 0; unknown := 0;

  WITH lost AS (
    UPDATE automation_execution_logs
    SET status = 'pending', run_at = p_now, lease_token = NULL, lease_expires_at = NULL,
        queued_at = NULL, updated_at = p_now
    WHERE status = 'queued' AND lease_expires_at < p_now
    RETURNING 1
  )
  SELECT count(*) INTO requeued FROM lost;

  FOR l IN
    SELECT g.id, g.attempts, a.max_attempts, a.retry_base, a.retry_cap, a.email_on_unknown, a.sms_on_unknown
    FROM automation_execution_logs g
    LEFT JOIN automations a ON a.id = g.automation_id
    WHERE g.status = 'running' AND g.lease_expires_at < p_now
    FOR UPDATE OF g SKIP LOCKED
  LOOP
    -- Sends that were in flight: their outcome is unknown.
    WITH inflight AS (
      UPDATE automation_deliveries
      SET status = 'unknown', completed_at = p_now,
          error = 'the executor lost its lease while this send was in flight'
      WHERE log_id = l.id AND status = 'sending'
      RETURNING channel
    )
    SELECT coalesce(array_agg(channel) FILTER (WHERE
             (channel = 'email' AND coalesce(l.email_on_unknown, 'hold') = 'hold') OR
             (channel = 'sms' AND coalesce(l.sms_on_unknown, 'hold') = 'hold')), '{}')
    INTO holds
    FROM inflight;

    IF cardinality(holds) > 0 THEN
      UPDATE automation_execution_logs
      SET status = 'unknown', lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = format('outcome unknown for %s: the executor vanished during the send', array_to_string(holds, ', ')),
          error_kind = 'transient', error_code = 'OutcomeUnknown'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'unknown', finished_at = p_now,
             error = 'the executor vanished during the send'
      WHERE log_id = l.id AND attempt = l.attempts;
      unknown := unknown + 1;
    ELSE
      -- Retried after a backoff, or dead when that was the last attempt.
      last := l.attempts >= coalesce(l.max_attempts, 1);
      UPDATE automation_execution_logs
      SET status = CASE WHEN last THEN 'dead' ELSE 'pending' END,
          run_at = CASE WHEN last THEN run_at ELSE p_now + herald_backoff(l.attempts, l.retry_base, l.retry_cap) END,
          completed_at = CASE WHEN last THEN p_now END,
          lease_token = NULL, lease_expires_at = NULL, updated_at = p_now,
          error = CASE WHEN last THEN 'the executor vanished (lease expired) on the last attempt'
                       ELSE 'the executor vanished (lease expired); retrying' END,
          error_kind = 'transient', error_code = 'LeaseExpired'
      WHERE id = l.id;
      UPDATE automation_attempts SET outcome = 'lease_expired', finished_at = p_now
      WHERE log_id = l.id AND attempt = l.attempts;
      IF last THEN
        dead := dead + 1;
      ELSE
        retried := retried + 1;
      END IF;
    END IF;
  END LOOP;
  RETURN NEXT;
END
$$;

-- Operator: put a dead, failed or unknown log back to pending, due now. Deliveries that
-- were sent stay sent; unknown and failed ones are sent again. Returns whether it did.
CREATE FUNCTION herald_retry(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE automation_execution_logs
  SET status = 'pending', run_at = herald_now(), updated_at = herald_now(), completed_at = NULL,
      lease_token = NULL, lease_expires_at = NULL
  WHERE id = p_log_id AND status IN ('dead', 'failed', 'unknown');
  RETURN FOUND;
END
$$;

-- Operator: cancel a log that has not been sent: pending, queued (its message will be
-- skipped), or unknown. Returns whether it did.
CREATE FUNCTION herald_cancel(p_log_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE automation_execution_logs
  SET status = 'cancelled', updated_at = herald_now(), completed_at = herald_now(),
      lease_token = NULL, lease_expires_at = NULL
  WHERE id = p_log_id AND status IN ('pending', 'queued', 'unknown');
  RETURN FOUND;
END
$$;

REVOKE EXECUTE ON FUNCTION herald_rescue(timestamptz) FROM PUBLIC;
