-- Issue 14: the operator dashboard (served under /dashboard by dkl-worker).
-- Every change is written down in migrations/README.md.

-- Who is logged in. The cookie holds a random session id; the table keeps
-- only its SHA-256, so a read of this table (a backup, a replica) logs no
-- one in. Each session has its own CSRF token, sent back in every form.
CREATE TABLE dashboard_sessions (
    id_sha256    TEXT PRIMARY KEY CHECK (id_sha256 ~ '^[0-9a-f]{64}$'),
    actor        TEXT NOT NULL,
    csrf_token   TEXT NOT NULL CHECK (length(csrf_token) >= 32),
    -- A fingerprint of the secret it logged in with: a session whose secret
    -- is no longer configured (a changed token or password) is over.
    credential   TEXT NOT NULL,
    ip           INET,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);

-- What was done through the dashboard: every login (also refused ones) and
-- every action, with who, what, on which row, and how it ended. An action's
-- row is written `started` before the action runs (no row, no action) and
-- set to its outcome after; one left `started` ended without an answer.
CREATE TABLE dashboard_audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('started', 'ok', 'refused', 'failed')),
    details JSONB NOT NULL DEFAULT '{}'::jsonb,
    ip      INET
);
CREATE INDEX dashboard_audit_at ON dashboard_audit (at);

INSERT INTO retention_targets (table_name, condition, description) VALUES
    ('dashboard_sessions', 'expired', 'dashboard logins, by expires_at'),
    ('dashboard_audit',    'any',     'the dashboard''s audit trail, by at');
INSERT INTO retention_rules (name, table_name, condition, keep_for, description) VALUES
    ('dashboard_sessions', 'dashboard_sessions', 'expired', interval '1 day',   'Expired dashboard logins.'),
    ('dashboard_audit',    'dashboard_audit',    'any',     interval '365 days', 'Who did what through the dashboard.');

-- The job list filters by kind, queue or state and pages newest first by id
-- (keyset). Without these, a filter that matches few of 1,000,000 finished
-- jobs walked the whole primary key (measured with `dklctl bench dashboard`).
-- States other than done (pending, running, retrying, discarded, cancelled)
-- are few: one partial index holds them all, so a finished job costs no
-- entry there, and a kind or queue filter on those states walks it without
-- reading the table (the columns the filters and states need are included).
CREATE INDEX jobs_by_kind   ON apalis.jobs (job_type, id);
CREATE INDEX jobs_by_queue  ON apalis.jobs (queue, id);
CREATE INDEX jobs_not_done  ON apalis.jobs (status, id)
    INCLUDE (cancelled_at, run_at, attempts, job_type, queue) WHERE status <> 'Done';

-- The send log shows failures first: the few failed, bounced and unknown
-- rows among a million sent ones, newest first.
CREATE INDEX idx_verzonden_emails_failures ON verzonden_emails (sent_at DESC, id DESC)
    WHERE status IN ('failed', 'bounced', 'unknown');
-- Keyset pages of the whole log: (sent_at, id) in one index.
CREATE INDEX idx_verzonden_emails_sent_id ON verzonden_emails (sent_at DESC, id DESC);
DROP INDEX idx_verzonden_emails_sent;
