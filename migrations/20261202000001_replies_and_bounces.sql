-- Auto-responses, bounces and complaints (issue 12). Every change is listed
-- in README.md under this file's name.

-- 1. auto_responses: an optional date window ("out of office"), a reply
--    window per rule (RFC 3834 recommends 7 days), and patterns checked
--    when a rule is saved, by the same regular-expression engine that
--    matches them (PostgreSQL's, case-insensitive `~*`).
ALTER TABLE auto_responses
    ADD COLUMN starts_at    TIMESTAMPTZ,
    ADD COLUMN ends_at      TIMESTAMPTZ,
    ADD COLUMN reply_window INTERVAL NOT NULL DEFAULT interval '7 days',
    ADD CONSTRAINT auto_responses_dates_in_order
        CHECK (starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at),
    ADD CONSTRAINT auto_responses_reply_window_positive
        CHECK (reply_window >= interval '1 minute');

COMMENT ON COLUMN auto_responses.reply_window IS
    'At most one reply per sender per rule within this window (RFC 3834 section 2: 7 days recommended).';

CREATE FUNCTION dkl_auto_responses_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_field   TEXT;
    v_pattern TEXT;
BEGIN
    FOREACH v_field IN ARRAY ARRAY['from_pattern', 'subject_pattern', 'body_pattern'] LOOP
        v_pattern := to_jsonb(NEW) ->> v_field;
        CONTINUE WHEN v_pattern IS NULL;
        BEGIN
            PERFORM '' ~* v_pattern;
        EXCEPTION WHEN invalid_regular_expression OR program_limit_exceeded THEN
            RAISE EXCEPTION 'auto_responses.% of rule "%" is not a valid regular expression: %  (pattern: %)',
                v_field, NEW.name, SQLERRM, v_pattern
                USING ERRCODE = 'check_violation',
                      HINT = 'Patterns are PostgreSQL regular expressions, matched case-insensitively; escape ( ) [ ] + * ? . with a backslash to match them literally.';
        END;
    END LOOP;
    RETURN NEW;
END;
$$;

CREATE TRIGGER auto_responses_check
    BEFORE INSERT OR UPDATE OF from_pattern, subject_pattern, body_pattern ON auto_responses
    FOR EACH ROW EXECUTE FUNCTION dkl_auto_responses_check();

-- A pattern test that cannot fail the caller: NULL when the pattern cannot
-- be used (a rule saved before the check existed), so one bad rule is
-- reported and skipped while the others are still tried.
CREATE FUNCTION dkl_pattern_matches(p_pattern TEXT, p_value TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_pattern IS NULL THEN
        RETURN true;
    END IF;
    RETURN coalesce(p_value, '') ~* p_pattern;
EXCEPTION WHEN invalid_regular_expression OR program_limit_exceeded THEN
    RETURN NULL;
END;
$$;

-- 2. Why a message was or was not answered, on the message itself.
ALTER TABLE incoming_emails
    ADD COLUMN auto_reply        TEXT CHECK (auto_reply IN ('replied', 'not_replied')),
    ADD COLUMN auto_reply_reason TEXT,
    ADD COLUMN auto_reply_rule_id UUID REFERENCES auto_responses (id) ON DELETE SET NULL;

-- 3. The reply ledger: a row per reply, written in the transaction that
--    enqueues the reply's send_email job, before anything is sent. One per
--    incoming message (UNIQUE); the per-rule window and the per-sender
--    hourly cap are checked under a per-sender lock
--    (dkl_auto_reply_record), so two workers cannot both reply.
CREATE TABLE auto_reply_log (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incoming_email_id UUID UNIQUE REFERENCES incoming_emails (id) ON DELETE SET NULL,
    rule_id           UUID REFERENCES auto_responses (id) ON DELETE SET NULL,
    sender            TEXT NOT NULL CHECK (sender = lower(sender)),
    dedup_key         TEXT NOT NULL UNIQUE,
    replied_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_auto_reply_log_sender ON auto_reply_log (sender, replied_at);

-- Records a reply to `p_sender` for message `p_email` by rule `p_rule`, or
-- says why there is none ('window' | 'hourly_cap' | 'already'). The advisory
-- lock serialises every decision about one sender until the caller commits.
CREATE FUNCTION dkl_auto_reply_record(
    p_email UUID, p_rule UUID, p_sender TEXT, p_window INTERVAL, p_max_per_hour INT, p_dedup_key TEXT)
RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_sender    TEXT := lower(p_sender);
    v_in_window BOOLEAN;
    v_last_hour BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('dkl_auto_reply:' || v_sender, 0));
    SELECT coalesce(bool_or(rule_id = p_rule AND replied_at > now() - p_window), false),
           count(*) FILTER (WHERE replied_at > now() - interval '1 hour')
      INTO v_in_window, v_last_hour
      FROM auto_reply_log
     WHERE sender = v_sender AND replied_at > now() - greatest(p_window, interval '1 hour');
    IF EXISTS (SELECT 1 FROM auto_reply_log WHERE incoming_email_id = p_email) THEN
        RETURN 'already';
    END IF;
    IF v_in_window THEN
        RETURN 'window';
    END IF;
    IF v_last_hour >= p_max_per_hour THEN
        RETURN 'hourly_cap';
    END IF;
    INSERT INTO auto_reply_log (incoming_email_id, rule_id, sender, dedup_key)
    VALUES (p_email, p_rule, v_sender, p_dedup_key);
    RETURN NULL;
END;
$$;

-- dkl_auto_reply_record for many answers in one round trip (a batch of
-- follow-ups): element i of each array is one answer; returns (i, refusal).
-- Callers sort by sender, so two batches take the per-sender locks in the
-- same order and never deadlock.
CREATE FUNCTION dkl_auto_reply_record_many(
    p_emails UUID[], p_rules UUID[], p_senders TEXT[], p_window_secs FLOAT8[], p_max_per_hour INT, p_dedup_keys TEXT[])
RETURNS TABLE (ord INT, refusal TEXT)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_emails, 1), 0) LOOP
        ord := i;
        refusal := dkl_auto_reply_record(p_emails[i], p_rules[i], p_senders[i],
                                         make_interval(secs => p_window_secs[i]), p_max_per_hour, p_dedup_keys[i]);
        RETURN NEXT;
    END LOOP;
END;
$$;

-- 4. Bounces: one row per failed or delayed recipient of a delivery status
--    notification (or of a plain-text bounce a heuristic understood).
CREATE TABLE email_bounces (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incoming_email_id      UUID REFERENCES incoming_emails (id) ON DELETE SET NULL,
    recipient              TEXT NOT NULL CHECK (recipient = lower(recipient)),
    original_recipient     TEXT,
    status                 TEXT CHECK (status ~ '^[245]\.[0-9]{1,3}\.[0-9]{1,3}$'),
    action                 TEXT NOT NULL CHECK (action IN ('failed', 'delayed')),
    kind                   TEXT NOT NULL CHECK (kind IN ('hard', 'soft')),
    diagnostic             TEXT,
    remote_mta             TEXT,
    reporting_mta          TEXT,
    format                 TEXT NOT NULL,
    verzonden_email_id     UUID REFERENCES verzonden_emails (id) ON DELETE SET NULL,
    newsletter_delivery_id BIGINT REFERENCES newsletter_deliveries (id) ON DELETE SET NULL,
    matched_by             TEXT CHECK (matched_by IN ('return_path', 'message_id')),
    suppression            TEXT CHECK (suppression IN ('hard_bounce', 'soft_bounce')),
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (incoming_email_id, recipient)
);

COMMENT ON COLUMN email_bounces.format IS
    'What the bounce was read as: dsn (RFC 3464) or the plain-text recogniser that understood it (qmail, exim, postfix, sendmail, exchange, yahoo, generic).';
COMMENT ON COLUMN email_bounces.matched_by IS
    'How the bounce was tied to our send: the VERP return path (bounce+<id>@…) or our Message-ID in the returned headers. NULL: not ours, or not found; such bounces suppress nothing.';

CREATE INDEX idx_email_bounces_recipient ON email_bounces (recipient, created_at);
CREATE INDEX idx_email_bounces_created ON email_bounces (created_at);

CREATE VIEW email_bounces_daily AS
SELECT date_trunc('day', created_at)::date AS day,
       kind,
       count(*) AS bounces,
       count(DISTINCT recipient) AS recipients,
       count(*) FILTER (WHERE suppression IS NOT NULL) AS suppressed
  FROM email_bounces
 GROUP BY 1, 2;

-- 5. Complaints (RFC 5965 feedback reports).
CREATE TABLE email_complaints (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incoming_email_id  UUID REFERENCES incoming_emails (id) ON DELETE SET NULL,
    recipient          TEXT CHECK (recipient = lower(recipient)),
    feedback_type      TEXT NOT NULL,
    user_agent         TEXT,
    verzonden_email_id UUID REFERENCES verzonden_emails (id) ON DELETE SET NULL,
    suppressed         BOOLEAN NOT NULL DEFAULT false,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (incoming_email_id)
);

-- 6. Suppressions learn a reason: too many soft bounces (scope bulk).
ALTER TABLE email_suppressions DROP CONSTRAINT email_suppressions_reason_check;
ALTER TABLE email_suppressions ADD CONSTRAINT email_suppressions_reason_check
    CHECK (reason IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe', 'manual'));

-- Suppresses `p_address` with `p_reason`/`p_scope`, never narrowing one
-- that exists (a hard bounce after a complaint widens bulk to all; a
-- soft-bounce suppression never replaces a hard one). Returns true when
-- the address was not suppressed this widely before.
CREATE FUNCTION dkl_suppress(p_address TEXT, p_scope TEXT, p_reason TEXT, p_source TEXT)
RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
DECLARE
    v_changed BOOLEAN;
BEGIN
    INSERT INTO email_suppressions AS s (address, scope, reason, source)
    VALUES (lower(p_address), p_scope, p_reason, p_source)
    ON CONFLICT (address) DO UPDATE
        SET scope = 'all', reason = EXCLUDED.reason, source = EXCLUDED.source, created_at = now()
        WHERE s.scope = 'bulk' AND EXCLUDED.scope = 'all'
    RETURNING true INTO v_changed;
    RETURN coalesce(v_changed, false);
END;
$$;
