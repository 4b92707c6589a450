-- Outgoing mail: one `verzonden_emails` row per message, the suppression
-- list, and the SQL function the web application asks for a mail with.

-- Statuses: `queued` (row written, SMTP transaction not yet accepted),
-- `sent` (the server answered 250), `failed` (a 5xx, or retries used up),
-- `suppressed` (the address is on email_suppressions), `unknown` (a bulk
-- mail whose worker died between the server's 250 and the commit: never
-- resent by itself), `bounced` (later, from a bounce). The design's
-- `pending` stays valid for rows written before this migration.
ALTER TABLE verzonden_emails DROP CONSTRAINT verzonden_emails_status_check;
ALTER TABLE verzonden_emails
    ALTER COLUMN status SET DEFAULT 'queued',
    ADD CONSTRAINT verzonden_emails_status_check
        CHECK (status IN ('pending', 'queued', 'sent', 'failed', 'bounced', 'suppressed', 'unknown')),
    ADD COLUMN message_id    TEXT,
    ADD COLUMN mail_kind     TEXT NOT NULL DEFAULT 'transactional'
        CHECK (mail_kind IN ('transactional', 'admin', 'auto_reply', 'newsletter')),
    ADD COLUMN smtp_config   TEXT,
    ADD COLUMN smtp_code     INT,
    ADD COLUMN smtp_reply    TEXT,
    ADD COLUMN reply_to      TEXT,
    -- Set when an SMTP transaction starts, cleared when it ends without a
    -- 250: a row still carrying it was being sent when its worker died.
    ADD COLUMN smtp_started_at TIMESTAMPTZ,
    ADD COLUMN job_id        TEXT,
    ADD COLUMN template_id   UUID REFERENCES email_templates (id) ON DELETE SET NULL,
    ADD COLUMN newsletter_id UUID REFERENCES newsletters (id) ON DELETE SET NULL;

COMMENT ON COLUMN verzonden_emails.status IS
    'queued = written, not (yet) accepted by SMTP; sent = accepted (250); failed = refused (5xx) or retries used up; '
    'suppressed = address on email_suppressions; unknown = a bulk mail whose worker died between 250 and commit; '
    'bounced = a bounce came back; pending = the design''s name, from before queued existed.';

CREATE INDEX idx_verzonden_emails_job ON verzonden_emails (job_id);
CREATE UNIQUE INDEX idx_verzonden_emails_message_id ON verzonden_emails (message_id);

-- Addresses mail must skip. Stored lower-case.
CREATE TABLE email_suppressions (
    address    TEXT PRIMARY KEY CHECK (address = lower(address) AND position('@' IN address) > 1),
    scope      TEXT NOT NULL DEFAULT 'all' CHECK (scope IN ('all', 'bulk')),
    reason     TEXT NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'unsubscribe', 'manual')),
    source     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON TABLE email_suppressions IS
    'scope all: no mail at all (hard bounce, complaint); scope bulk: no newsletters, transactional mail still goes.';

-- Asks for a mail from SQL, inside the caller's transaction: a rolled-back
-- transaction sends nothing. Returns the job id (or the id of the live job
-- that already holds `p_dedup_key`). Unknown or inactive templates and
-- addresses without a domain fail at once; the worker checks the rest.
CREATE FUNCTION dkl_send_email(
    p_template  TEXT,
    p_to        TEXT,
    p_vars      JSONB DEFAULT '{}',
    p_dedup_key TEXT DEFAULT NULL,
    p_kind      TEXT DEFAULT 'transactional'
) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    v_id  TEXT;
    v_to  TEXT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM email_templates WHERE name = p_template AND is_active) THEN
        RAISE EXCEPTION 'dkl_send_email: no active template named "%"; `dklctl templates check` lists them', p_template
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_to IS NULL OR p_to !~ '^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$' THEN
        RAISE EXCEPTION 'dkl_send_email: "%" is not an e-mail address (expected name@domain.tld)', coalesce(p_to, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_kind NOT IN ('transactional', 'admin', 'auto_reply', 'newsletter') THEN
        RAISE EXCEPTION 'dkl_send_email: unknown mail kind "%" (transactional, admin, auto_reply or newsletter)', p_kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_dedup_key = '' THEN
        RAISE EXCEPTION 'dkl_send_email: the dedup key is empty; pass NULL or a key such as contact:1234'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(coalesce(p_vars, '{}')) <> 'object' THEN
        RAISE EXCEPTION 'dkl_send_email: variables must be a JSON object, got %', p_vars
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO apalis.jobs (id, job_type, queue, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
    VALUES (apalis.generate_ulid(), 'send_email', 'mail',
            convert_to(jsonb_strip_nulls(jsonb_build_object(
                'template', p_template, 'to', p_to, 'variables', coalesce(p_vars, '{}'),
                'dedup_key', p_dedup_key, 'kind', p_kind))::text, 'UTF8'),
            'Pending', 0, 8, now(), 0, p_dedup_key)
    ON CONFLICT (job_type, idempotency_key)
        WHERE status IN ('Pending', 'Running') AND idempotency_key IS NOT NULL
        DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id, convert_from(job, 'UTF8')::jsonb ->> 'to' INTO v_id, v_to FROM apalis.jobs
         WHERE job_type = 'send_email' AND idempotency_key = p_dedup_key AND status IN ('Pending', 'Running');
        IF lower(v_to) IS DISTINCT FROM lower(p_to) THEN
            RAISE EXCEPTION 'dkl_send_email: dedup key "%" is already used for a mail to %, not to %; give each message its own key',
                p_dedup_key, v_to, p_to USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    RETURN v_id;
END;
$$;
