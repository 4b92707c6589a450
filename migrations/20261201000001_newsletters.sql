-- Newsletters: statuses with checked transitions, recipients fixed when
-- sending starts (one `newsletter_deliveries` row per address), a delivery
-- marked `sending` in a committed transaction before its SMTP transaction
-- and final after it, and the lane jobs (`send_newsletter`) that do the work.
--
-- How a newsletter goes out (all three ways in end in the same jobs):
--   1. status = 'scheduled' (plain SQL, or `dklctl newsletter schedule`):
--      the trigger below enqueues its lane jobs at scheduled_send_time;
--   2. a `scheduled_jobs` row of kind send_newsletter: the scheduler
--      enqueues it at the row's time;
--   3. either way a lane job calls dkl_newsletter_start, which fixes the
--      recipients and moves the newsletter to `sending` in one transaction.

ALTER TABLE newsletters
    ADD CONSTRAINT newsletters_status_check
        CHECK (status IN ('draft', 'scheduled', 'sending', 'paused', 'sent', 'cancelled')),
    ADD COLUMN started_at       TIMESTAMPTZ,
    ADD COLUMN cancelled_at     TIMESTAMPTZ,
    ADD COLUMN recipients_total INT;

COMMENT ON COLUMN newsletters.status IS
    'draft → scheduled → sending → sent; paused (from sending, back to sending), cancelled (from any but sent). '
    'Set scheduled (with scheduled_send_time, NULL = now) to send; the worker sets sending and sent.';

-- Which worker session is sending: a delivery claimed or being sent names
-- its sender. The sender's session holds the advisory lock
-- dkl_newsletter_sender_key(id) for as long as it lives; when the session
-- is gone (its process died: kill -9 closes the socket, PostgreSQL ends the
-- backend) the lock is free and the sender is dead. (pid and backend_start
-- are for people reading the table.)
CREATE TABLE newsletter_senders (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    pid           INT NOT NULL,
    backend_start TIMESTAMPTZ NOT NULL,
    worker        TEXT,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION dkl_newsletter_sender_key(p_id UUID) RETURNS BIGINT
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('newsletter-sender:' || p_id::text, 0) $$;

-- One row per newsletter and address. `claimed`: taken by a sender, not yet
-- on the wire (returned to `pending` if its sender dies); `sending`: its SMTP
-- transaction may have begun (`unknown` if its sender dies: never resent by
-- itself); `skipped`: the address was suppressed meanwhile; `cancelled`: the
-- newsletter was cancelled before it went.
CREATE TABLE newsletter_deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    newsletter_id   UUID NOT NULL REFERENCES newsletters (id) ON DELETE CASCADE,
    email           TEXT NOT NULL CHECK (email = lower(email)),
    gebruiker_id    UUID REFERENCES gebruikers (id) ON DELETE SET NULL,
    naam            TEXT,
    status          TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'claimed', 'sending', 'sent', 'failed', 'skipped', 'unknown', 'cancelled')),
    sender_id       UUID,
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    message_id      TEXT,
    smtp_code       INT,
    smtp_reply      TEXT,
    error           TEXT,
    sending_at      TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (newsletter_id, email)
);

-- Every index is on columns that never change, and pages keep room: a
-- delivery's three status updates are then HOT (no index entries written,
-- dead versions pruned in the page without a vacuum). Measured: a status
-- index (even a partial one) made each update write every index, and the
-- claims walk entries of rows long sent.
ALTER TABLE newsletter_deliveries SET (fillfactor = 70);
CREATE INDEX idx_newsletter_deliveries_order ON newsletter_deliveries (newsletter_id, id);
-- For the foreign key: deleting a subscriber would otherwise scan every delivery.
CREATE INDEX idx_newsletter_deliveries_gebruiker
    ON newsletter_deliveries (gebruiker_id) WHERE gebruiker_id IS NOT NULL;

COMMENT ON TABLE newsletter_deliveries IS
    'One row per newsletter and recipient, fixed when sending starts. Final states: sent, failed, skipped, unknown, cancelled.';

-- The lane jobs of a newsletter: four `send_newsletter` jobs (each worker
-- process runs as many as its `newsletter` queue allows), deduplicated per
-- lane, so enqueueing again while they live changes only their time.
-- `p_tag` gives a resume its own lanes: the lanes that found the newsletter
-- paused may still be finishing, and must not swallow the new ones.
-- `by_status`: a lane that finds the newsletter back in draft (unscheduled)
-- leaves it alone.
CREATE FUNCTION dkl_newsletter_enqueue(p_id UUID, p_at TIMESTAMPTZ, p_tag TEXT DEFAULT NULL) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO apalis.jobs (id, job_type, queue, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
    SELECT apalis.generate_ulid(), 'send_newsletter', 'newsletter',
           convert_to(jsonb_build_object('newsletter_id', p_id, 'lane', lane, 'by_status', true)::text, 'UTF8'),
           'Pending', 0, 25, greatest(coalesce(p_at, now()), now()), 0,
           'newsletter:' || p_id || ':' || lane || coalesce(':' || p_tag, '')
      FROM generate_series(0, 3) lane
    ON CONFLICT (job_type, idempotency_key)
        WHERE status IN ('Pending', 'Running') AND idempotency_key IS NOT NULL
        DO UPDATE SET run_at = EXCLUDED.run_at WHERE apalis.jobs.status = 'Pending';
$$;

-- Refuses transitions that make no sense, and content edits once recipients
-- may have the newsletter.
CREATE FUNCTION dkl_newsletter_check() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.title, NEW.content, NEW.html_content) IS DISTINCT FROM (OLD.title, OLD.content, OLD.html_content)
       AND (OLD.status IN ('sending', 'paused', 'sent') OR OLD.started_at IS NOT NULL) THEN
        RAISE EXCEPTION 'newsletter %: its content cannot change once sending has started (status %); make a new newsletter',
            OLD.id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF NOT coalesce((
        (OLD.status = 'draft' AND NEW.status IN ('scheduled', 'cancelled'))
     OR (OLD.status = 'scheduled' AND NEW.status IN ('draft', 'cancelled'))
     OR (OLD.status IN ('draft', 'scheduled') AND NEW.status = 'sending'
         AND coalesce(current_setting('dkl.newsletter_starting', true), '') = 'on')
     OR (OLD.status = 'sending' AND NEW.status IN ('paused', 'cancelled'))
     OR (OLD.status = 'sending' AND NEW.status = 'sent'
         AND NOT EXISTS (SELECT 1 FROM newsletter_deliveries d
                          WHERE d.newsletter_id = OLD.id AND d.status IN ('pending', 'claimed', 'sending')))
     OR (OLD.status = 'paused' AND NEW.status IN ('sending', 'cancelled'))
     -- resend-unknown puts deliveries back to pending first
     OR (OLD.status = 'sent' AND NEW.status = 'sending'
         AND EXISTS (SELECT 1 FROM newsletter_deliveries d WHERE d.newsletter_id = OLD.id AND d.status = 'pending'))
    ), false) THEN
        RAISE EXCEPTION 'newsletter %: cannot go from % to %; %', OLD.id, OLD.status, NEW.status,
            CASE
                WHEN NEW.status = 'sending' AND OLD.status IN ('draft', 'scheduled') THEN
                    'set status = ''scheduled'' (scheduled_send_time NULL sends now); the worker moves it to sending'
                WHEN OLD.status = 'sent' THEN 'a sent newsletter stays sent; make a new one (`dklctl newsletter resend-unknown` resends deliveries marked unknown)'
                WHEN OLD.status = 'cancelled' THEN 'a cancelled newsletter stays cancelled; make a new one'
                WHEN NEW.status = 'sent' THEN 'the worker sets sent when every delivery is final'
                ELSE 'allowed: draft→scheduled, scheduled→draft, sending→paused, paused→sending (resume), any but sent→cancelled'
            END USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'cancelled' THEN
        NEW.cancelled_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER newsletters_check BEFORE UPDATE ON newsletters
    FOR EACH ROW EXECUTE FUNCTION dkl_newsletter_check();

CREATE FUNCTION dkl_newsletter_insert_check() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('draft', 'scheduled') THEN
        RAISE EXCEPTION 'a new newsletter starts as draft or scheduled, not %', NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER newsletters_insert_check BEFORE INSERT ON newsletters
    FOR EACH ROW EXECUTE FUNCTION dkl_newsletter_insert_check();

-- What a status change sets going: lanes for a scheduled (or rescheduled)
-- or resumed newsletter; cancelled deliveries for a cancelled one.
CREATE FUNCTION dkl_newsletter_changed() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'scheduled'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'scheduled'
            OR OLD.scheduled_send_time IS DISTINCT FROM NEW.scheduled_send_time) THEN
        PERFORM dkl_newsletter_enqueue(NEW.id, NEW.scheduled_send_time);
    ELSIF TG_OP = 'UPDATE' AND NEW.status = 'sending' AND OLD.status IN ('paused', 'sent') THEN
        PERFORM dkl_newsletter_enqueue(NEW.id, now(), 'resumed-' || (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    ELSIF TG_OP = 'UPDATE' AND NEW.status = 'draft' AND OLD.status = 'scheduled' THEN
        -- Unscheduled: its lanes that have not started go.
        DELETE FROM apalis.jobs
         WHERE job_type = 'send_newsletter' AND status = 'Pending'
           AND idempotency_key LIKE 'newsletter:' || NEW.id || ':%';
    ELSIF TG_OP = 'UPDATE' AND NEW.status = 'cancelled' THEN
        UPDATE newsletter_deliveries
           SET status = 'cancelled', sender_id = NULL, error = 'newsletter cancelled', updated_at = now()
         WHERE newsletter_id = NEW.id AND status IN ('pending', 'claimed');
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.status <> OLD.status THEN
        PERFORM pg_notify('dkl_newsletters', NEW.id::text || ' ' || NEW.status);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER newsletters_changed AFTER INSERT OR UPDATE ON newsletters
    FOR EACH ROW EXECUTE FUNCTION dkl_newsletter_changed();

-- Fixes the recipients and starts sending, in one transaction: active
-- subscribers minus suppressed addresses. Returns the newsletter's status
-- after the call ('sending' when it started or was already sending).
CREATE FUNCTION dkl_newsletter_start(p_id UUID) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_status TEXT;
    v_total  INT;
BEGIN
    SELECT status INTO v_status FROM newsletters WHERE id = p_id FOR UPDATE;
    IF v_status IS NULL OR v_status NOT IN ('draft', 'scheduled') THEN
        RETURN v_status;
    END IF;
    INSERT INTO newsletter_deliveries (newsletter_id, email, gebruiker_id, naam)
    SELECT DISTINCT ON (lower(g.email)) p_id, lower(g.email), g.id, g.naam
      FROM gebruikers g
     WHERE g.is_actief AND g.newsletter_subscribed
       AND NOT EXISTS (SELECT 1 FROM email_suppressions s WHERE s.address = lower(g.email))
     ORDER BY lower(g.email), g.created_at
    ON CONFLICT DO NOTHING;
    SELECT count(*) INTO v_total FROM newsletter_deliveries WHERE newsletter_id = p_id;
    -- Fresh statistics for the claims that follow: planned on a table the
    -- planner still thinks small, each claim would read every pending row
    -- and sort them (36 ms per batch at 50,000) instead of walking the
    -- index to the first few.
    ANALYZE newsletter_deliveries;
    PERFORM set_config('dkl.newsletter_starting', 'on', true);
    UPDATE newsletters SET status = 'sending', started_at = now(), recipients_total = v_total WHERE id = p_id;
    PERFORM set_config('dkl.newsletter_starting', 'off', true);
    RETURN 'sending';
END;
$$;

-- Deliveries of senders whose session is gone: claimed ones go back to
-- pending (they never left), sending ones become unknown (they may have).
-- Returns how many of each.
CREATE FUNCTION dkl_newsletter_reclaim(OUT returned INT, OUT unknown INT)
LANGUAGE plpgsql AS $$
DECLARE
    v_dead UUID[];
    v_live UUID[];
BEGIN
    -- A free lock: its session is gone (the try takes it for this
    -- transaction only). A delivery naming no registered sender counts too.
    SELECT coalesce(array_agg(s.id), '{}') INTO v_dead FROM newsletter_senders s
     WHERE pg_try_advisory_xact_lock(dkl_newsletter_sender_key(s.id));
    -- Deliveries in flight are found through their newsletters: those
    -- sending or paused, or finished (sent, cancelled) in the last day.
    SELECT coalesce(array_agg(n.id), '{}') INTO v_live FROM newsletters n
     WHERE n.status IN ('sending', 'paused')
        OR (n.status IN ('sent', 'cancelled') AND coalesce(n.sent_at, n.cancelled_at, now()) > now() - interval '1 day');
    SELECT v_dead || coalesce(array_agg(DISTINCT d.sender_id), '{}') INTO v_dead
      FROM newsletter_deliveries d
     WHERE d.newsletter_id = ANY (v_live) AND d.status IN ('claimed', 'sending') AND d.sender_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM newsletter_senders s WHERE s.id = d.sender_id);
    IF cardinality(v_dead) = 0 THEN
        returned := 0; unknown := 0;
        RETURN;
    END IF;
    UPDATE newsletter_deliveries SET status = 'pending', sender_id = NULL, updated_at = now()
     WHERE newsletter_id = ANY (v_live) AND sender_id = ANY (v_dead) AND status = 'claimed';
    GET DIAGNOSTICS returned = ROW_COUNT;
    WITH lost AS (
        UPDATE newsletter_deliveries
           SET status = 'unknown', updated_at = now(),
               error = 'its worker died during the SMTP transaction; it may have been delivered, so it is not resent by itself'
         WHERE newsletter_id = ANY (v_live) AND sender_id = ANY (v_dead) AND status = 'sending'
        RETURNING *)
    INSERT INTO verzonden_emails AS v
        (dedup_key, recipient_email, subject, template_name, status, error_message, mail_kind, smtp_config,
         message_id, newsletter_id, sent_at)
    SELECT 'newsletter:' || l.newsletter_id || ':' || l.email, left(l.email, 255), left(n.title, 255), 'newsletter', 'unknown', l.error,
           'newsletter', 'newsletter', l.message_id, l.newsletter_id, l.sending_at
      FROM lost l JOIN newsletters n ON n.id = l.newsletter_id
    ON CONFLICT (dedup_key) DO UPDATE SET status = 'unknown', error_message = EXCLUDED.error_message,
                                          updated_at = now();
    GET DIAGNOSTICS unknown = ROW_COUNT;
    DELETE FROM newsletter_senders s WHERE s.id = ANY (v_dead);
END;
$$;

-- A sender's writes in one round trip: marks (claimed → sending, or
-- skipped when the address was suppressed meanwhile; those of a newsletter
-- no longer sending go back to pending, or cancelled) and outcomes (sent,
-- failed, unknown, or retry: back to pending after a backoff, failed after
-- p_max_attempts). Final outcomes are logged in verzonden_emails. Returns
-- one row per mark with what became of it.
CREATE FUNCTION dkl_newsletter_write(
    p_sender UUID, p_smtp TEXT, p_max_attempts INT, p_backoff_secs INT,
    p_mark_ids BIGINT[],
    p_out_ids BIGINT[], p_out_senders UUID[], p_out_status TEXT[], p_out_code INT[], p_out_reply TEXT[],
    p_out_error TEXT[])
RETURNS TABLE (id BIGINT, outcome TEXT)
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_mark_ids) > 0 THEN
        RETURN QUERY
        WITH marked AS (
            UPDATE newsletter_deliveries d
               SET status = CASE WHEN s.address IS NULL THEN 'sending' ELSE 'skipped' END,
                   error = CASE WHEN s.address IS NULL THEN d.error ELSE 'address suppressed: ' || s.reason END,
                   sending_at = now(), updated_at = now()
              FROM unnest(p_mark_ids) m(id)
              JOIN newsletter_deliveries x ON x.id = m.id
              JOIN newsletters n ON n.id = x.newsletter_id AND n.status = 'sending'
              LEFT JOIN email_suppressions s ON s.address = x.email
             -- (IS NOT DISTINCT FROM: found by id, never through the sender
             -- index, whose entries for rows long sent stay until a vacuum)
             WHERE d.id = m.id AND d.status = 'claimed' AND d.sender_id IS NOT DISTINCT FROM p_sender
            RETURNING d.id, d.status, d.newsletter_id, d.email, d.message_id, d.error),
        logged AS (
            INSERT INTO verzonden_emails AS v
                (dedup_key, recipient_email, subject, template_name, status, error_message, mail_kind, smtp_config,
                 message_id, newsletter_id, sent_at)
            SELECT 'newsletter:' || k.newsletter_id || ':' || k.email, left(k.email, 255), left(n.title, 255), 'newsletter', 'suppressed',
                   k.error, 'newsletter', p_smtp, k.message_id, k.newsletter_id, now()
              FROM marked k JOIN newsletters n ON n.id = k.newsletter_id
             WHERE k.status = 'skipped'
            ON CONFLICT (dedup_key) DO UPDATE SET status = 'suppressed', error_message = EXCLUDED.error_message,
                                                  updated_at = now()),
        released AS (
            UPDATE newsletter_deliveries d
               SET status = CASE WHEN n.status = 'cancelled' THEN 'cancelled' ELSE 'pending' END,
                   sender_id = NULL, updated_at = now()
              FROM newsletters n
             WHERE d.id = ANY (p_mark_ids) AND d.id NOT IN (SELECT k.id FROM marked k)
               AND n.id = d.newsletter_id AND d.status = 'claimed' AND d.sender_id IS NOT DISTINCT FROM p_sender
            RETURNING d.id)
        SELECT m.id, coalesce(k.status, 'released')
          FROM unnest(p_mark_ids) m(id)
          LEFT JOIN marked k ON k.id = m.id
          LEFT JOIN released r ON r.id = m.id;
    END IF;
    IF cardinality(p_out_ids) > 0 THEN
        WITH o AS (
            SELECT * FROM unnest(p_out_ids, p_out_senders, p_out_status, p_out_code, p_out_reply, p_out_error)
                       AS o(id, sender, status, code, reply, error)),
        done AS (
            UPDATE newsletter_deliveries d
               SET status = CASE
                       WHEN o.status <> 'retry' THEN o.status
                       WHEN d.attempts + 1 >= p_max_attempts THEN 'failed'
                       WHEN n.status = 'cancelled' THEN 'cancelled'
                       ELSE 'pending' END,
                   attempts = d.attempts + 1,
                   sender_id = CASE WHEN o.status = 'retry' AND d.attempts + 1 < p_max_attempts THEN NULL
                                    ELSE d.sender_id END,
                   next_attempt_at = CASE WHEN o.status = 'retry'
                       THEN now() + make_interval(secs => least(p_backoff_secs * 2 ^ d.attempts, 3600))
                       ELSE d.next_attempt_at END,
                   smtp_code = o.code, smtp_reply = o.reply,
                   error = CASE
                       WHEN o.status = 'retry' AND d.attempts + 1 >= p_max_attempts
                           THEN 'gave up after ' || (d.attempts + 1) || ' attempts: ' || o.error
                       ELSE o.error END,
                   sent_at = CASE WHEN o.status = 'sent' THEN now() END,
                   updated_at = now()
              FROM o, newsletters n
             -- Only the attempt the outcome belongs to: the sender that
             -- marked it. A sent message is recorded even after a reclaim
             -- marked it unknown (its sender's session broke meanwhile).
             WHERE d.id = o.id AND d.sender_id = o.sender AND n.id = d.newsletter_id
               AND (d.status = 'sending' OR (d.status = 'unknown' AND o.status = 'sent'))
            RETURNING d.*)
        INSERT INTO verzonden_emails AS v
            (dedup_key, recipient_email, subject, template_name, status, error_message, mail_kind, smtp_config,
             message_id, newsletter_id, smtp_code, smtp_reply, retry_count, sent_at)
        SELECT 'newsletter:' || d.newsletter_id || ':' || d.email, left(d.email, 255), left(n.title, 255), 'newsletter',
               d.status, d.error, 'newsletter', p_smtp, d.message_id, d.newsletter_id, d.smtp_code, d.smtp_reply,
               d.attempts - 1,
               coalesce(d.sent_at, now())
          FROM done d JOIN newsletters n ON n.id = d.newsletter_id
         WHERE d.status IN ('sent', 'failed', 'unknown')
        ON CONFLICT (dedup_key) DO UPDATE
            SET status = EXCLUDED.status, error_message = EXCLUDED.error_message, smtp_code = EXCLUDED.smtp_code,
                smtp_reply = EXCLUDED.smtp_reply, retry_count = EXCLUDED.retry_count, sent_at = EXCLUDED.sent_at,
                message_id = EXCLUDED.message_id, updated_at = now();
    END IF;
END;
$$;

-- Marks a sending newsletter sent when no delivery is left to send.
CREATE FUNCTION dkl_newsletter_finish(p_id UUID) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE newsletters SET status = 'sent', sent_at = now()
     WHERE id = p_id AND status = 'sending'
       AND NOT EXISTS (SELECT 1 FROM newsletter_deliveries d
                        WHERE d.newsletter_id = p_id AND d.status IN ('pending', 'claimed', 'sending'));
    RETURN FOUND;
END;
$$;

-- Resends, on purpose, the deliveries whose outcome is unknown (with their
-- first Message-ID, so a receiver that got both can tell). Returns how many.
CREATE FUNCTION dkl_newsletter_resend_unknown(p_id UUID) RETURNS INT
LANGUAGE plpgsql AS $$
DECLARE
    v_count  INT;
    v_status TEXT;
BEGIN
    SELECT status INTO v_status FROM newsletters WHERE id = p_id FOR UPDATE;
    IF v_status IS NULL THEN
        RAISE EXCEPTION 'no newsletter %', p_id USING ERRCODE = 'no_data_found';
    END IF;
    IF v_status = 'cancelled' THEN
        RAISE EXCEPTION 'newsletter % is cancelled; nothing is resent', p_id USING ERRCODE = 'check_violation';
    END IF;
    UPDATE newsletter_deliveries
       SET status = 'pending', attempts = 0, next_attempt_at = now(), sender_id = NULL, updated_at = now(),
           error = 'resent on purpose after an unknown outcome'
     WHERE newsletter_id = p_id AND status = 'unknown';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        IF v_status = 'sent' THEN
            UPDATE newsletters SET status = 'sending' WHERE id = p_id;
        ELSIF v_status = 'sending' THEN
            PERFORM dkl_newsletter_enqueue(p_id, now(), 'resend-' || (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
        END IF;
    END IF;
    RETURN v_count;
END;
$$;

-- Progress per newsletter: deliveries by state, the send rate over the last
-- minute and the time left at that rate.
CREATE VIEW newsletter_progress AS
SELECT n.id AS newsletter_id,
       n.title,
       n.status,
       n.scheduled_send_time,
       n.started_at,
       n.sent_at,
       coalesce(c.total, 0)     AS total,
       coalesce(c.pending, 0)   AS pending,
       coalesce(c.in_flight, 0) AS in_flight,
       coalesce(c.sent, 0)      AS sent,
       coalesce(c.failed, 0)    AS failed,
       coalesce(c.skipped, 0)   AS skipped,
       coalesce(c.unknown, 0)   AS unknown,
       coalesce(c.cancelled, 0) AS cancelled,
       round(coalesce(c.last_minute, 0) / 60.0, 1) AS per_second,
       CASE WHEN coalesce(c.last_minute, 0) > 0
            THEN make_interval(secs => round((c.pending + c.in_flight) * 60.0 / c.last_minute))
       END AS eta
  FROM newsletters n
  LEFT JOIN LATERAL (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE d.status = 'pending') AS pending,
               count(*) FILTER (WHERE d.status IN ('claimed', 'sending')) AS in_flight,
               count(*) FILTER (WHERE d.status = 'sent') AS sent,
               count(*) FILTER (WHERE d.status = 'failed') AS failed,
               count(*) FILTER (WHERE d.status = 'skipped') AS skipped,
               count(*) FILTER (WHERE d.status = 'unknown') AS unknown,
               count(*) FILTER (WHERE d.status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE d.status = 'sent' AND d.sent_at > now() - interval '1 minute') AS last_minute
          FROM newsletter_deliveries d WHERE d.newsletter_id = n.id) c ON true;

-- The secret unsubscribe tokens are signed with, when DKL_UNSUBSCRIBE_SECRET
-- is not set: made once, shared by every worker, kept across restarts.
CREATE TABLE dkl_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
