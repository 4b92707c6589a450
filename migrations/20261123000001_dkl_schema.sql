-- 20261123000001_dkl_schema.sql
--
-- The application's own tables (schema public), taken from the DKL Email Service
-- database design (../shared/design/000_4b4ac67ab03e17c7.txt), with the design's
-- faults fixed. Every deviation from the design is listed in migrations/README.md.
--
-- Conventions used throughout:
--   * every primary key is UUID DEFAULT gen_random_uuid(), every FK to it is UUID;
--     lookup tables keep their natural text key (as in the design);
--   * every timestamp is TIMESTAMPTZ (the system runs in UTC);
--   * columns with a default are NOT NULL (booleans, counters, status, created_at, updated_at);
--   * updated_at is maintained by one shared trigger function, dkl_set_updated_at();
--   * indexes that would duplicate a PRIMARY KEY / UNIQUE index (same leading columns)
--     are not created again.
--
-- sqlx runs this file inside one transaction: no BEGIN/COMMIT here.

CREATE EXTENSION IF NOT EXISTS pgcrypto;  -- gen_random_uuid() is also built in since PG13

-- ---------------------------------------------------------------------------
-- Shared trigger functions
-- ---------------------------------------------------------------------------

CREATE FUNCTION dkl_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION dkl_set_updated_at() IS
    'BEFORE UPDATE trigger: sets NEW.updated_at to now(). Shared by every table with updated_at.';

-- sessions.owner_id points at gebruikers or participants depending on owner_type,
-- so it cannot carry a foreign key. This trigger gives it ON DELETE CASCADE semantics.
-- TG_ARGV[0] is the owner_type of the table the trigger is attached to.
CREATE FUNCTION dkl_delete_owner_sessions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sessions WHERE owner_type = TG_ARGV[0] AND owner_id = OLD.id;
    RETURN OLD;
END;
$$;

COMMENT ON FUNCTION dkl_delete_owner_sessions() IS
    'AFTER DELETE trigger on gebruikers/participants: removes the sessions owned by the deleted row.';

-- ---------------------------------------------------------------------------
-- Lookup tables (natural text keys, seeded with the design's values)
-- ---------------------------------------------------------------------------

CREATE TABLE event_status_types (
    status       VARCHAR(50) PRIMARY KEY,
    description  TEXT NOT NULL,
    display_name VARCHAR(100),
    color        VARCHAR(7) CHECK (color IS NULL OR color ~ '^#[0-9A-Fa-f]{6}$'),
    icon         VARCHAR(50),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO event_status_types (status, description, display_name, color) VALUES
    ('upcoming',  'Event is gepland maar nog niet gestart', 'Binnenkort',  '#3B82F6'),
    ('active',    'Event is momenteel gaande',              'Actief',      '#10B981'),
    ('completed', 'Event is afgelopen',                     'Voltooid',    '#6B7280'),
    ('cancelled', 'Event is geannuleerd',                   'Geannuleerd', '#EF4444');

CREATE TABLE registration_status_types (
    status       VARCHAR(50) PRIMARY KEY,
    description  TEXT NOT NULL,
    display_name VARCHAR(100),
    color        VARCHAR(7) CHECK (color IS NULL OR color ~ '^#[0-9A-Fa-f]{6}$'),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO registration_status_types (status, description, display_name, color) VALUES
    ('pending',   'Registratie in afwachting van bevestiging', 'In Afwachting', '#F59E0B'),
    ('confirmed', 'Registratie is bevestigd',                  'Bevestigd',     '#10B981'),
    ('cancelled', 'Registratie is geannuleerd',                'Geannuleerd',   '#EF4444'),
    ('completed', 'Deelnemer heeft event voltooid',            'Voltooid',      '#6B7280');

CREATE TABLE participant_roles (
    name        VARCHAR(100) PRIMARY KEY,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO participant_roles (name, description) VALUES
    ('deelnemer',    'Evenement deelnemer'),
    ('vrijwilliger', 'Evenement vrijwilliger'),
    ('begeleider',   'Evenement begeleider');

CREATE TABLE distances (
    name        VARCHAR(50) PRIMARY KEY,
    distance_km DECIMAL(5,2) NOT NULL CHECK (distance_km > 0),
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO distances (name, distance_km, description) VALUES
    ('5km',  5.00,  '5 kilometer route'),
    ('10km', 10.00, '10 kilometer route'),
    ('15km', 15.00, '15 kilometer route'),
    ('21km', 21.00, 'Halve marathon');

-- ---------------------------------------------------------------------------
-- Users, RBAC
-- ---------------------------------------------------------------------------

CREATE TABLE roles (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name           VARCHAR(100) NOT NULL UNIQUE,
    description    TEXT,
    is_system_role BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by     UUID  -- FK to gebruikers added below (circular reference)
);

CREATE TRIGGER roles_set_updated_at BEFORE UPDATE ON roles
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

INSERT INTO roles (name, description, is_system_role) VALUES
    ('admin',     'Full system access',        true),
    ('moderator', 'Content moderation access', true),
    ('user',      'Standard user access',      true),
    ('guest',     'Limited read-only access',  true);

CREATE TABLE gebruikers (
    id                    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    naam                  TEXT NOT NULL,
    email                 TEXT NOT NULL UNIQUE,
    wachtwoord_hash       TEXT,
    is_actief             BOOLEAN NOT NULL DEFAULT true,
    newsletter_subscribed BOOLEAN NOT NULL DEFAULT false,
    laatste_login         TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- RBAC backward compatibility (V38+); the authoritative assignment is user_roles
    role_id               UUID REFERENCES roles(id) ON DELETE SET NULL
);

-- idx_gebruikers_email: covered by the UNIQUE constraint on email
CREATE INDEX idx_gebruikers_is_actief ON gebruikers(is_actief);
CREATE INDEX idx_gebruikers_newsletter_subscribed ON gebruikers(newsletter_subscribed);
CREATE INDEX idx_gebruikers_role_id ON gebruikers(role_id);

CREATE TRIGGER gebruikers_set_updated_at BEFORE UPDATE ON gebruikers
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

ALTER TABLE roles
    ADD CONSTRAINT roles_created_by_fkey
    FOREIGN KEY (created_by) REFERENCES gebruikers(id) ON DELETE SET NULL;

CREATE TABLE permissions (
    id                   UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    resource             VARCHAR(100) NOT NULL,
    action               VARCHAR(50) NOT NULL,
    description          TEXT,
    is_system_permission BOOLEAN NOT NULL DEFAULT false,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX idx_permissions_resource_action ON permissions(resource, action);
-- idx_permissions_resource: covered by idx_permissions_resource_action
CREATE INDEX idx_permissions_action ON permissions(action);

CREATE TRIGGER permissions_set_updated_at BEFORE UPDATE ON permissions
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TABLE role_permissions (
    role_id       UUID NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    permission_id UUID NOT NULL REFERENCES permissions(id) ON DELETE CASCADE,
    PRIMARY KEY (role_id, permission_id)
);

-- idx_role_permissions_role: covered by the primary key
CREATE INDEX idx_role_permissions_permission ON role_permissions(permission_id);

CREATE TABLE user_roles (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     UUID NOT NULL REFERENCES gebruikers(id) ON DELETE CASCADE,
    role_id     UUID NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
    assigned_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    assigned_by UUID REFERENCES gebruikers(id) ON DELETE SET NULL,
    expires_at  TIMESTAMPTZ,
    is_active   BOOLEAN NOT NULL DEFAULT true
);

CREATE UNIQUE INDEX idx_user_roles_user_role ON user_roles(user_id, role_id) WHERE is_active = true;
CREATE INDEX idx_user_roles_user_id ON user_roles(user_id);
CREATE INDEX idx_user_roles_role_id ON user_roles(role_id);
CREATE INDEX idx_user_roles_expires_at ON user_roles(expires_at);

CREATE TABLE refresh_tokens (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    token        VARCHAR(500) NOT NULL UNIQUE,
    gebruiker_id UUID NOT NULL REFERENCES gebruikers(id) ON DELETE CASCADE,
    expires_at   TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked      BOOLEAN NOT NULL DEFAULT false
);

-- idx_refresh_tokens_token: covered by the UNIQUE constraint on token
CREATE INDEX idx_refresh_tokens_gebruiker ON refresh_tokens(gebruiker_id);
CREATE INDEX idx_refresh_tokens_expires ON refresh_tokens(expires_at);

-- ---------------------------------------------------------------------------
-- Participants and sessions
-- ---------------------------------------------------------------------------

CREATE TABLE participants (
    id                       UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    naam                     TEXT NOT NULL,
    email                    TEXT NOT NULL,
    telefoon                 TEXT,

    terms                    BOOLEAN NOT NULL DEFAULT false,
    gebruiker_id             UUID REFERENCES gebruikers(id) ON DELETE SET NULL,

    -- V30: dual registration system
    account_type             TEXT NOT NULL DEFAULT 'temporary' CHECK (account_type IN ('full', 'temporary')),
    registration_year        INTEGER,
    wachtwoord_hash          TEXT,
    has_app_access           BOOLEAN NOT NULL DEFAULT false,
    upgraded_to_gebruiker_id UUID REFERENCES gebruikers(id) ON DELETE SET NULL,
    upgraded_at              TIMESTAMPTZ,
    test_mode                BOOLEAN NOT NULL DEFAULT false
);

CREATE INDEX idx_participants_email ON participants(email);
CREATE INDEX idx_participants_account_type ON participants(account_type);
CREATE INDEX idx_participants_has_app_access ON participants(has_app_access);
CREATE INDEX idx_participants_registration_year ON participants(registration_year);
CREATE INDEX idx_participants_gebruiker_id ON participants(gebruiker_id);
CREATE INDEX idx_participants_upgraded_to_gebruiker_id ON participants(upgraded_to_gebruiker_id);

-- one temporary account per email per year
CREATE UNIQUE INDEX idx_participants_temp_year_unique
    ON participants(email, registration_year)
    WHERE account_type = 'temporary';

CREATE TRIGGER participants_set_updated_at BEFORE UPDATE ON participants
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TABLE sessions (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    -- gebruikers.id or participants.id, depending on owner_type (no FK possible;
    -- deletion of the owner removes its sessions via dkl_delete_owner_sessions())
    owner_id      UUID NOT NULL,
    owner_type    VARCHAR(20) NOT NULL DEFAULT 'gebruiker' CHECK (owner_type IN ('gebruiker', 'participant')),
    access_token  VARCHAR(500) UNIQUE,
    device_info   JSONB,
    ip_address    INET,
    user_agent    TEXT,
    location_info JSONB,
    is_active     BOOLEAN NOT NULL DEFAULT true,
    is_current    BOOLEAN NOT NULL DEFAULT false,
    expires_at    TIMESTAMPTZ NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_sessions_owner_id ON sessions(owner_id);
CREATE INDEX idx_sessions_owner_type ON sessions(owner_type);
-- idx_sessions_access_token: covered by the UNIQUE constraint on access_token
CREATE INDEX idx_sessions_is_active ON sessions(is_active);
CREATE INDEX idx_sessions_is_current ON sessions(is_current);
CREATE INDEX idx_sessions_expires_at ON sessions(expires_at);
CREATE INDEX idx_sessions_last_activity ON sessions(last_activity);
CREATE INDEX idx_sessions_active_recent ON sessions(owner_id, last_activity DESC)
    WHERE is_active = true;

CREATE TRIGGER sessions_set_updated_at BEFORE UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TRIGGER gebruikers_delete_sessions AFTER DELETE ON gebruikers
    FOR EACH ROW EXECUTE FUNCTION dkl_delete_owner_sessions('gebruiker');
CREATE TRIGGER participants_delete_sessions AFTER DELETE ON participants
    FOR EACH ROW EXECUTE FUNCTION dkl_delete_owner_sessions('participant');

-- ---------------------------------------------------------------------------
-- Events, registrations, leaderboards
-- ---------------------------------------------------------------------------

CREATE TABLE events (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name         TEXT NOT NULL,
    description  TEXT,
    start_time   TIMESTAMPTZ NOT NULL,
    end_time     TIMESTAMPTZ,
    status       TEXT NOT NULL DEFAULT 'upcoming'
                 REFERENCES event_status_types(status) ON UPDATE CASCADE ON DELETE RESTRICT,
    geofences    JSONB NOT NULL DEFAULT '[]',
    event_config JSONB NOT NULL DEFAULT '{}',
    is_active    BOOLEAN NOT NULL DEFAULT true,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by   UUID REFERENCES gebruikers(id) ON DELETE SET NULL,
    CONSTRAINT events_end_after_start CHECK (end_time IS NULL OR end_time >= start_time)
);

CREATE INDEX idx_events_start_time ON events(start_time);
CREATE INDEX idx_events_status ON events(status);
CREATE INDEX idx_events_is_active ON events(is_active);
CREATE INDEX idx_events_geofences ON events USING gin(geofences);
CREATE INDEX idx_events_created_by ON events(created_by);

CREATE TRIGGER events_set_updated_at BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TABLE event_registrations (
    id                    UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id              UUID NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    participant_id        UUID NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
    registered_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    check_in_time         TIMESTAMPTZ,
    start_time            TIMESTAMPTZ,
    finish_time           TIMESTAMPTZ,

    -- GPS tracking
    tracking_status       TEXT,
    last_location_update  TIMESTAMPTZ,
    total_distance        DECIMAL(10,2) NOT NULL DEFAULT 0 CHECK (total_distance >= 0),

    -- step tracking (per event)
    steps                 INTEGER NOT NULL DEFAULT 0 CHECK (steps >= 0),
    test_mode             BOOLEAN NOT NULL DEFAULT false,

    -- event-specific choices
    ondersteuning         TEXT,
    bijzonderheden        TEXT,
    terms                 BOOLEAN NOT NULL DEFAULT false,
    antwoorden_count      INTEGER NOT NULL DEFAULT 0 CHECK (antwoorden_count >= 0),
    heeft_vervoer         BOOLEAN,

    -- lookup foreign keys
    status                TEXT NOT NULL DEFAULT 'pending'
                          REFERENCES registration_status_types(status) ON UPDATE CASCADE ON DELETE RESTRICT,
    distance_route        TEXT
                          REFERENCES distances(name) ON UPDATE CASCADE ON DELETE RESTRICT,
    participant_role_name TEXT
                          REFERENCES participant_roles(name) ON UPDATE CASCADE ON DELETE RESTRICT,

    -- admin fields
    notities              TEXT,
    behandeld_door        TEXT,
    behandeld_op          TIMESTAMPTZ,
    email_verzonden       BOOLEAN NOT NULL DEFAULT false,
    email_verzonden_op    TIMESTAMPTZ,

    CONSTRAINT event_registrations_event_participant_key UNIQUE (event_id, participant_id)
);

-- idx_event_registrations_event: covered by the UNIQUE (event_id, participant_id) index
CREATE INDEX idx_event_registrations_participant ON event_registrations(participant_id);
CREATE INDEX idx_event_registrations_status ON event_registrations(status);
CREATE INDEX idx_event_registrations_participant_role ON event_registrations(participant_role_name);
CREATE INDEX idx_event_registrations_distance ON event_registrations(distance_route);
CREATE INDEX idx_event_registrations_steps ON event_registrations(steps) WHERE steps > 0;

CREATE TABLE leaderboards (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    period         VARCHAR(50) NOT NULL,
    participant_id UUID NOT NULL REFERENCES participants(id) ON DELETE CASCADE,
    steps          INTEGER NOT NULL DEFAULT 0 CHECK (steps >= 0),
    distance       DECIMAL(10,2) NOT NULL DEFAULT 0 CHECK (distance >= 0),
    rank           INTEGER CHECK (rank IS NULL OR rank > 0),
    points         INTEGER NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT leaderboards_period_participant_key UNIQUE (period, participant_id)
);

-- idx_leaderboards_period: covered by leaderboards_period_participant_key and idx_leaderboards_rank
CREATE INDEX idx_leaderboards_participant ON leaderboards(participant_id);
CREATE INDEX idx_leaderboards_rank ON leaderboards(period, rank);

CREATE TRIGGER leaderboards_set_updated_at BEFORE UPDATE ON leaderboards
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

-- ---------------------------------------------------------------------------
-- Mail: templates, sent log, incoming mail, auto responses, newsletters
-- ---------------------------------------------------------------------------

CREATE TABLE email_templates (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name         VARCHAR(100) NOT NULL UNIQUE,
    subject      VARCHAR(255) NOT NULL,
    html_content TEXT NOT NULL,
    text_content TEXT,
    variables    JSONB,
    is_active    BOOLEAN NOT NULL DEFAULT true,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- idx_email_templates_name: covered by the UNIQUE constraint on name
CREATE INDEX idx_email_templates_active ON email_templates(is_active);

CREATE TRIGGER email_templates_set_updated_at BEFORE UPDATE ON email_templates
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TABLE verzonden_emails (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient_email VARCHAR(255) NOT NULL,
    subject         TEXT NOT NULL,
    -- name, not FK: the log must survive renaming/removing a template
    template_name   VARCHAR(100),
    status          VARCHAR(50) NOT NULL DEFAULT 'sent'
                    CHECK (status IN ('pending', 'sent', 'failed')),
    sent_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    error_message   TEXT,
    retry_count     INTEGER NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    -- idempotency key: one row per recipient + purpose (NULL = no dedup)
    dedup_key       TEXT UNIQUE CHECK (dedup_key IS NULL OR dedup_key <> ''),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON COLUMN verzonden_emails.status IS
    'pending = recorded/claimed, not (yet) accepted by SMTP; sent = accepted by SMTP; failed = given up (see error_message).';
COMMENT ON COLUMN verzonden_emails.sent_at IS
    'Time the row was recorded; set to the time of the successful send when status becomes sent.';
COMMENT ON COLUMN verzonden_emails.dedup_key IS
    'Optional idempotency key identifying recipient + purpose (e.g. a job/registration/newsletter id and the address). '
    'UNIQUE: a mail with the same key is recorded, and therefore sent, at most once.';

CREATE INDEX idx_verzonden_emails_recipient ON verzonden_emails(recipient_email);
CREATE INDEX idx_verzonden_emails_template ON verzonden_emails(template_name);
CREATE INDEX idx_verzonden_emails_status ON verzonden_emails(status);
CREATE INDEX idx_verzonden_emails_sent ON verzonden_emails(sent_at);

CREATE TRIGGER verzonden_emails_set_updated_at BEFORE UPDATE ON verzonden_emails
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TABLE incoming_emails (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    account_type VARCHAR(50) NOT NULL,
    -- IMAP location of the message: a UID is only unique within (mailbox, UIDVALIDITY)
    mailbox      TEXT NOT NULL DEFAULT 'INBOX',
    uid_validity BIGINT CHECK (uid_validity IS NULL OR uid_validity > 0),
    uid          VARCHAR(255),
    message_id   TEXT,
    sender_email TEXT NOT NULL,
    sender_name  TEXT,
    subject      TEXT,
    body         TEXT,
    html_body    TEXT,
    received_at  TIMESTAMPTZ NOT NULL,
    processed    BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON COLUMN incoming_emails.account_type IS 'Mail account the message was fetched from.';
COMMENT ON COLUMN incoming_emails.message_id IS 'Message-ID header (informational, not unique: senders reuse them).';

-- a fetched message is stored once per account: re-fetching hits this index
-- (NULLS NOT DISTINCT: an unknown UIDVALIDITY still deduplicates on the UID)
CREATE UNIQUE INDEX idx_incoming_emails_account_uid
    ON incoming_emails(account_type, mailbox, uid_validity, uid) NULLS NOT DISTINCT
    WHERE uid IS NOT NULL;

CREATE INDEX idx_incoming_emails_account ON incoming_emails(account_type);
CREATE INDEX idx_incoming_emails_processed ON incoming_emails(processed);
CREATE INDEX idx_incoming_emails_uid ON incoming_emails(uid);
CREATE INDEX idx_incoming_emails_received ON incoming_emails(received_at);
CREATE INDEX idx_incoming_emails_message_id ON incoming_emails(account_type, message_id)
    WHERE message_id IS NOT NULL;

-- Not specified by the design (it only names migration V33 "create_auto_responses_table");
-- designed here in the style of the other tables.
CREATE TABLE auto_responses (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name            VARCHAR(100) NOT NULL UNIQUE,
    description     TEXT,
    -- match rules: each is a case-insensitive regular expression; NULL = not checked.
    -- A rule matches when every non-NULL pattern matches.
    from_pattern    TEXT,
    subject_pattern TEXT,
    body_pattern    TEXT,
    -- account filter: NULL = every account, else incoming_emails.account_type must equal it
    account_type    VARCHAR(50),
    template_id     UUID NOT NULL REFERENCES email_templates(id) ON DELETE RESTRICT,
    -- lower value = evaluated first; the first matching active rule wins
    priority        INTEGER NOT NULL DEFAULT 100,
    is_active       BOOLEAN NOT NULL DEFAULT true,
    created_by      UUID REFERENCES gebruikers(id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT auto_responses_patterns_not_empty CHECK (
        (from_pattern IS NULL OR from_pattern <> '')
        AND (subject_pattern IS NULL OR subject_pattern <> '')
        AND (body_pattern IS NULL OR body_pattern <> '')
    )
);

COMMENT ON TABLE auto_responses IS
    'Auto-reply rules for incoming_emails: patterns (case-insensitive regex, NULL = any), optional account filter, '
    'reply template; active rules are evaluated by ascending priority, the first match wins.';

CREATE INDEX idx_auto_responses_active_priority ON auto_responses(priority) WHERE is_active = true;
CREATE INDEX idx_auto_responses_account ON auto_responses(account_type);
CREATE INDEX idx_auto_responses_template ON auto_responses(template_id);

CREATE TRIGGER auto_responses_set_updated_at BEFORE UPDATE ON auto_responses
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

CREATE TABLE newsletters (
    id                  UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    title               VARCHAR(255) NOT NULL,
    content             TEXT NOT NULL,
    html_content        TEXT,
    status              VARCHAR(50) NOT NULL DEFAULT 'draft',
    scheduled_send_time TIMESTAMPTZ,
    sent_at             TIMESTAMPTZ,
    created_by          UUID REFERENCES gebruikers(id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_newsletters_status ON newsletters(status);
CREATE INDEX idx_newsletters_created_by ON newsletters(created_by);

CREATE TRIGGER newsletters_set_updated_at BEFORE UPDATE ON newsletters
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

-- ---------------------------------------------------------------------------
-- Images, notifications
-- ---------------------------------------------------------------------------

CREATE TABLE uploaded_images (
    id          UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    public_id   VARCHAR(255) NOT NULL UNIQUE,
    url         TEXT NOT NULL,
    secure_url  TEXT,
    format      VARCHAR(50),
    width       INTEGER CHECK (width IS NULL OR width >= 0),
    height      INTEGER CHECK (height IS NULL OR height >= 0),
    bytes       INTEGER CHECK (bytes IS NULL OR bytes >= 0),
    folder      VARCHAR(255),
    uploaded_by UUID REFERENCES gebruikers(id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- idx_uploaded_images_public_id: covered by the UNIQUE constraint on public_id
CREATE INDEX idx_uploaded_images_folder ON uploaded_images(folder);
CREATE INDEX idx_uploaded_images_uploaded_by ON uploaded_images(uploaded_by);

CREATE TABLE notifications (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    UUID NOT NULL REFERENCES gebruikers(id) ON DELETE CASCADE,
    type       VARCHAR(100) NOT NULL,
    title      VARCHAR(255) NOT NULL,
    message    TEXT NOT NULL,
    data       JSONB,
    read       BOOLEAN NOT NULL DEFAULT false,
    read_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_notifications_user ON notifications(user_id, read, created_at);
CREATE INDEX idx_notifications_type ON notifications(type);
CREATE INDEX idx_notifications_data ON notifications USING gin(data);
