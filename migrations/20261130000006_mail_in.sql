-- Mail in: what a fetched message keeps (the raw message, headers, addresses,
-- attachments, quarantine), the IMAP cursor per (account, mailbox), and the
-- follow-up classification. See migrations/README.md, "Mail in".

ALTER TABLE incoming_emails
    ADD COLUMN in_reply_to        TEXT,
    ADD COLUMN message_references TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN to_addresses       TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN cc_addresses       TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN reply_to           TEXT,
    ADD COLUMN return_path        TEXT,
    -- the Date header, when it has one that parses (received_at is when the
    -- server got it: INTERNALDATE, else the Date header, else the import time)
    ADD COLUMN sent_at            TIMESTAMPTZ,
    ADD COLUMN raw_size           BIGINT NOT NULL DEFAULT 0 CHECK (raw_size >= 0),
    -- the header block as received, decoded leniently to text
    ADD COLUMN headers            TEXT,
    -- the whole message as received (NULL only when quarantined as too large:
    -- then the message stays on the server and `headers` holds its header)
    ADD COLUMN raw                BYTEA,
    -- SHA-256 of the raw message: the same message is stored once per account
    ADD COLUMN content_hash       BYTEA,
    ADD COLUMN quarantine_reason  TEXT,
    -- after-import action (\Seen or move) still to do on the IMAP server
    ADD COLUMN imap_action_pending BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN classification     TEXT
        CHECK (classification IN ('person', 'auto_submitted', 'delivery_status',
                                  'feedback_report', 'mailing_list')),
    ADD COLUMN classification_reason TEXT,
    ADD COLUMN processed_at       TIMESTAMPTZ;

COMMENT ON COLUMN incoming_emails.html_body IS
    'The HTML body sanitised for display (ammonia); the original is in raw.';
COMMENT ON COLUMN incoming_emails.quarantine_reason IS
    'Why the message could not be imported normally (too large, unparsable, no sender); NULL = a normal message.';
COMMENT ON COLUMN incoming_emails.classification IS
    'What process_incoming_email found the message to be; NULL until processed.';

-- Big values are written once and read rarely: lz4 compresses them at a
-- fraction of pglz's CPU (ingest measured 2,730 -> 3,060 messages/s).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
                WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE incoming_emails
            ALTER COLUMN raw SET COMPRESSION lz4,
            ALTER COLUMN body SET COMPRESSION lz4,
            ALTER COLUMN html_body SET COMPRESSION lz4,
            ALTER COLUMN headers SET COMPRESSION lz4;
    END IF;
END;
$$;

-- Indexes every insert pays for and no query uses: the UID alone (it is
-- only unique per account, mailbox and UIDVALIDITY, which the unique index
-- covers) and the account alone (the leading column of three others).
-- "Not processed" is the only question asked of `processed`.
DROP INDEX idx_incoming_emails_uid;
DROP INDEX idx_incoming_emails_account;
DROP INDEX idx_incoming_emails_processed;
CREATE INDEX idx_incoming_emails_unprocessed ON incoming_emails(received_at) WHERE NOT processed;

CREATE UNIQUE INDEX idx_incoming_emails_account_hash
    ON incoming_emails(account_type, content_hash) WHERE content_hash IS NOT NULL;
CREATE INDEX idx_incoming_emails_quarantined
    ON incoming_emails(created_at) WHERE quarantine_reason IS NOT NULL;
CREATE INDEX idx_incoming_emails_action_pending
    ON incoming_emails(account_type, mailbox, uid_validity) WHERE imap_action_pending;
-- the inbox listing: newest first, per account
CREATE INDEX idx_incoming_emails_account_received
    ON incoming_emails(account_type, received_at DESC, id);

CREATE TABLE incoming_email_attachments (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    incoming_email_id UUID NOT NULL REFERENCES incoming_emails(id) ON DELETE CASCADE,
    -- order within the message, from 0
    position          INTEGER NOT NULL CHECK (position >= 0),
    file_name         TEXT,
    content_type      TEXT NOT NULL,
    size              BIGINT NOT NULL CHECK (size >= 0),
    content_id        TEXT,
    is_inline         BOOLEAN NOT NULL DEFAULT false,
    -- the decoded content; NULL when it lives in an external store (store_ref)
    content           BYTEA,
    store_ref         TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (incoming_email_id, position),
    CONSTRAINT incoming_email_attachments_has_content CHECK (content IS NOT NULL OR store_ref IS NOT NULL)
);

COMMENT ON TABLE incoming_email_attachments IS
    'Attachments and inline parts (images) of incoming_emails, decoded; deleted with their message.';

-- Where fetching stands per (account, mailbox): the UIDVALIDITY and the highest
-- UID stored, advanced only in the transaction that stores the messages.
CREATE TABLE imap_cursors (
    account_type      VARCHAR(50) NOT NULL,
    mailbox           TEXT NOT NULL,
    uid_validity      BIGINT NOT NULL CHECK (uid_validity > 0),
    last_uid          BIGINT NOT NULL DEFAULT 0 CHECK (last_uid >= 0),
    messages_stored   BIGINT NOT NULL DEFAULT 0,
    messages_quarantined BIGINT NOT NULL DEFAULT 0,
    -- a UIDVALIDITY change: the previous value and when it was seen
    resynced_from     BIGINT,
    resynced_at       TIMESTAMPTZ,
    last_attempt_at   TIMESTAMPTZ,
    last_success_at   TIMESTAMPTZ,
    last_error        TEXT,
    last_error_at     TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (account_type, mailbox)
);

COMMENT ON TABLE imap_cursors IS
    'Fetch position per IMAP (account, mailbox): UIDVALIDITY + the highest stored UID, and the last success or error.';

-- An account's errors before any mailbox was selected (wrong password, host
-- unreachable) have no cursor row yet; they are kept per account here.
CREATE TABLE imap_account_status (
    account_type    VARCHAR(50) PRIMARY KEY,
    last_attempt_at TIMESTAMPTZ,
    last_success_at TIMESTAMPTZ,
    last_error      TEXT,
    last_error_at   TIMESTAMPTZ
);

CREATE VIEW incoming_emails_quarantined AS
SELECT id, account_type, mailbox, uid, sender_email, subject, raw_size, quarantine_reason, received_at, created_at
  FROM incoming_emails
 WHERE quarantine_reason IS NOT NULL
 ORDER BY created_at DESC;

COMMENT ON VIEW incoming_emails_quarantined IS
    'Incoming messages stored without normal processing, with the reason; `dklctl mail inbox --quarantined`.';
