-- Upkeep: retention rules, leaderboard bookkeeping, when sessions and
-- tokens ended, images marked deleted, and a job's result in job_status.
-- See migrations/README.md, "Upkeep".

-- 1. A job's result (what an upkeep job counted) in the view admins read.
--    apalis's own `last_result` column (JSONB) was unused by our engine.
CREATE OR REPLACE VIEW job_status AS
SELECT j.id              AS job_id,
       j.job_type        AS kind,
       j.queue,
       CASE
           WHEN j.status = 'Pending' AND j.run_at > now() AND j.attempts > 0 THEN 'retrying'
           WHEN j.status = 'Pending' AND j.run_at > now() THEN 'scheduled'
           WHEN j.status = 'Pending' THEN 'pending'
           WHEN j.status = 'Running' THEN 'running'
           WHEN j.status = 'Done' THEN 'done'
           WHEN j.status = 'Killed' AND j.cancelled_at IS NOT NULL THEN 'cancelled'
           WHEN j.status = 'Killed' THEN 'discarded'
           ELSE lower(j.status)
       END               AS state,
       j.attempts,
       j.max_attempts,
       j.priority,
       j.run_at,
       j.lock_at         AS started_at,
       j.done_at         AS finished_at,
       j.last_error,
       j.lock_by         AS worker,
       j.idempotency_key AS dedup_key,
       s.name            AS schedule,
       r.tick_at         AS schedule_tick,
       sj.id             AS scheduled_job_id,
       sj.created_by     AS scheduled_by,
       j.rescues,
       m.status          AS mail_status,
       m.recipient_email AS mail_to,
       j.last_result     AS result
  FROM apalis.jobs j
  LEFT JOIN job_schedule_runs r ON r.job_id = j.id
  LEFT JOIN job_schedules s ON s.id = r.schedule_id
  LEFT JOIN scheduled_jobs sj ON sj.job_id = j.id
  LEFT JOIN LATERAL (
        SELECT v.status, v.recipient_email FROM verzonden_emails v
         WHERE v.job_id = j.id ORDER BY v.updated_at DESC LIMIT 1) m ON true;

-- 2. When a session or a refresh token ended. The design only has flags;
--    retention needs a time ("ended 30 days ago"), and the web application
--    flips the flags without writing one, so triggers record it.
ALTER TABLE sessions ADD COLUMN ended_at TIMESTAMPTZ;
ALTER TABLE refresh_tokens ADD COLUMN revoked_at TIMESTAMPTZ;
-- Existing rows: the best time known (the back-fill must not touch updated_at).
ALTER TABLE sessions DISABLE TRIGGER sessions_set_updated_at;
UPDATE sessions SET ended_at = updated_at WHERE NOT is_active;
ALTER TABLE sessions ENABLE TRIGGER sessions_set_updated_at;
UPDATE refresh_tokens SET revoked_at = created_at WHERE revoked;

CREATE FUNCTION dkl_sessions_mark_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.is_active AND NEW.ended_at IS NULL THEN
        NEW.ended_at := now();
    ELSIF NEW.is_active THEN
        NEW.ended_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER sessions_mark_ended BEFORE INSERT OR UPDATE OF is_active ON sessions
    FOR EACH ROW EXECUTE FUNCTION dkl_sessions_mark_ended();

CREATE FUNCTION dkl_refresh_tokens_mark_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revoked AND NEW.revoked_at IS NULL THEN
        NEW.revoked_at := now();
    ELSIF NOT NEW.revoked THEN
        NEW.revoked_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER refresh_tokens_mark_revoked BEFORE INSERT OR UPDATE OF revoked ON refresh_tokens
    FOR EACH ROW EXECUTE FUNCTION dkl_refresh_tokens_mark_revoked();

-- What expire_sessions walks: the live rows only.
CREATE INDEX idx_sessions_live_expiry ON sessions (expires_at) WHERE is_active OR is_current;
CREATE INDEX idx_refresh_tokens_live_expiry ON refresh_tokens (expires_at) WHERE NOT revoked;
CREATE INDEX idx_user_roles_live_expiry ON user_roles (expires_at)
    WHERE is_active AND expires_at IS NOT NULL;

-- 3. Images: a deletion mark (the image stays at the store until
--    cleanup_images destroyed it there), and where an image came from.
--    `uploaded_by` stays a nullable FK: the old system's made-up "system
--    user" is not needed, an upload made by a job has none.
ALTER TABLE uploaded_images
    ADD COLUMN deleted_at        TIMESTAMPTZ,
    -- set by cleanup_images just before it asks the store to destroy the image
    ADD COLUMN destroy_started_at TIMESTAMPTZ,
    ADD COLUMN incoming_email_id UUID REFERENCES incoming_emails (id) ON DELETE SET NULL,
    ADD COLUMN attachment_position INTEGER,
    ADD COLUMN source_path       TEXT,
    ADD COLUMN content_hash      BYTEA;
CREATE INDEX idx_uploaded_images_deleted ON uploaded_images (deleted_at) WHERE deleted_at IS NOT NULL;

-- Once cleanup_images asked the store to destroy an image, its row cannot
-- be restored: the row would survive an image that may be gone. The mark
-- is cleared only when the store refused (the image is still there); after
-- no answer it stays until a later cleanup gets "ok" or "not found" and
-- removes the row.
CREATE FUNCTION dkl_uploaded_images_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL
       AND OLD.destroy_started_at IS NOT NULL THEN
        RAISE EXCEPTION 'image % is being destroyed at the image store; upload it again instead of restoring it', OLD.public_id
            USING ERRCODE = 'object_in_use';
    END IF;
    IF NEW.deleted_at IS NULL THEN
        NEW.destroy_started_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER uploaded_images_guard BEFORE UPDATE OF deleted_at ON uploaded_images
    FOR EACH ROW EXECUTE FUNCTION dkl_uploaded_images_guard();
CREATE UNIQUE INDEX idx_uploaded_images_attachment
    ON uploaded_images (incoming_email_id, attachment_position) WHERE incoming_email_id IS NOT NULL;

-- 4. Retention. What may be deleted is a fixed list (retention_targets,
--    one row per table and condition, each with SQL written in the worker
--    for it); admins choose ages and switch rules on and off in
--    retention_rules. A rule naming anything else is refused by the FK.
CREATE TABLE retention_targets (
    table_name  TEXT NOT NULL,
    condition   TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (table_name, condition)
);

INSERT INTO retention_targets (table_name, condition, description) VALUES
    ('incoming_emails',  'processed',          'processed messages (and their attachments) by received_at'),
    ('verzonden_emails', 'any',                'every send log row, by sent_at'),
    ('refresh_tokens',   'revoked_or_expired', 'tokens by when they were revoked or expired, whichever came first'),
    ('sessions',         'ended',              'sessions by when they ended (made inactive) or expired, whichever came first'),
    ('notifications',    'read',               'read notifications, by read_at (created_at when unknown)'),
    ('uploaded_images',  'deleted',            'images marked deleted: destroyed at the store by cleanup_images, then their rows removed'),
    ('email_bounces',    'any',                'bounce records, by created_at'),
    ('email_complaints', 'any',                'complaint records, by created_at'),
    ('auto_reply_log',   'any',                'the automatic-reply ledger, by replied_at (keep it longer than any rule''s reply_window)'),
    ('apalis.jobs',      'done',               'finished jobs, by done_at (also the age prune_jobs uses)'),
    ('apalis.jobs',      'discarded',          'discarded and cancelled jobs, by done_at (also the age prune_jobs uses)');

CREATE TABLE retention_rules (
    name         TEXT PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$'),
    table_name   TEXT NOT NULL,
    condition    TEXT NOT NULL,
    keep_for     INTERVAL NOT NULL CHECK (keep_for >= interval '1 hour'),
    enabled      BOOLEAN NOT NULL DEFAULT true,
    description  TEXT,
    last_run_at  TIMESTAMPTZ,
    last_deleted BIGINT,
    last_error   TEXT,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT retention_rules_target_fkey FOREIGN KEY (table_name, condition)
        REFERENCES retention_targets (table_name, condition) ON UPDATE CASCADE
);

COMMENT ON TABLE retention_rules IS
    'What apply_retention deletes: rows of an allowed (table, condition) older than keep_for. See retention_targets.';

INSERT INTO retention_rules (name, table_name, condition, keep_for, description) VALUES
    ('incoming_emails',  'incoming_emails',  'processed',          interval '180 days', 'Processed incoming mail with its attachments.'),
    ('verzonden_emails', 'verzonden_emails', 'any',                interval '365 days', 'The send log.'),
    ('refresh_tokens',   'refresh_tokens',   'revoked_or_expired', interval '30 days',  'Revoked or expired refresh tokens.'),
    ('sessions',         'sessions',         'ended',              interval '30 days',  'Ended sessions.'),
    ('notifications',    'notifications',    'read',               interval '30 days',  'Read notifications.'),
    ('uploaded_images',  'uploaded_images',  'deleted',            interval '90 days',  'Images marked deleted, once the store confirmed their removal.'),
    ('email_bounces',    'email_bounces',    'any',                interval '365 days', 'Bounce records.'),
    ('email_complaints', 'email_complaints', 'any',                interval '365 days', 'Complaint records.'),
    ('auto_reply_log',   'auto_reply_log',   'any',                interval '90 days',  'Who was answered automatically, and when.'),
    ('jobs_done',        'apalis.jobs',      'done',               interval '7 days',   'Finished jobs.'),
    ('jobs_discarded',   'apalis.jobs',      'discarded',          interval '30 days',  'Discarded and cancelled jobs.');

CREATE TRIGGER retention_rules_set_updated_at BEFORE UPDATE ON retention_rules
    FOR EACH ROW EXECUTE FUNCTION dkl_set_updated_at();

-- The index each rule's batches walk (in order of age), and the indexes
-- the foreign keys pointing at deleted rows need (without them every
-- deleted row costs a scan of the referencing table; email_bounces'
-- incoming_email_id and uploaded_images' are served by their unique
-- indexes).
CREATE INDEX idx_refresh_tokens_ended ON refresh_tokens ((LEAST(expires_at, revoked_at)));
CREATE INDEX idx_sessions_ended ON sessions ((LEAST(expires_at, ended_at)));
CREATE INDEX idx_notifications_read_at ON notifications ((COALESCE(read_at, created_at))) WHERE read;
CREATE INDEX idx_email_complaints_created ON email_complaints (created_at);
CREATE INDEX idx_auto_reply_log_replied ON auto_reply_log (replied_at);
CREATE INDEX idx_email_bounces_verzonden ON email_bounces (verzonden_email_id) WHERE verzonden_email_id IS NOT NULL;
CREATE INDEX idx_email_complaints_verzonden ON email_complaints (verzonden_email_id) WHERE verzonden_email_id IS NOT NULL;

-- 5. Leaderboards. Which registrations count, and the points rule, live
--    here so the worker, dklctl and a report all use one definition:
--    - a registration counts unless it, or its participant, is in test mode
--      or it was cancelled, and only once it has steps or distance;
--    - points: one per full 1,000 steps, plus 10 for a finished walk
--      (finish_time set);
--    - the year of an event is the year of its start in Europe/Amsterdam.
CREATE FUNCTION dkl_leaderboard_year(start_time TIMESTAMPTZ) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN extract(year FROM start_time AT TIME ZONE 'Europe/Amsterdam')::integer;

CREATE FUNCTION dkl_leaderboard_points(steps INTEGER, finish_time TIMESTAMPTZ) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN steps / 1000 + CASE WHEN finish_time IS NULL THEN 0 ELSE 10 END;

CREATE VIEW leaderboard_source AS
SELECT r.event_id,
       dkl_leaderboard_year(e.start_time) AS year,
       r.participant_id,
       r.steps,
       r.total_distance AS distance,
       dkl_leaderboard_points(r.steps, r.finish_time) AS points
  FROM event_registrations r
  JOIN participants p ON p.id = r.participant_id
  JOIN events e ON e.id = r.event_id
 WHERE NOT r.test_mode
   AND NOT p.test_mode
   AND r.status <> 'cancelled'
   AND (r.steps > 0 OR r.total_distance > 0);

-- Which periods' sources changed since they were last computed: an
-- append-only log written by statement triggers (no row is ever updated,
-- so writers of registrations never wait on each other here), emptied by
-- recompute_leaderboards in the transaction that rewrites those periods.
CREATE TABLE leaderboard_changes (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period     VARCHAR(50) NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each period's last computation.
CREATE TABLE leaderboard_periods (
    period      VARCHAR(50) PRIMARY KEY,
    entries     INTEGER NOT NULL,
    computed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    took_ms     INTEGER NOT NULL DEFAULT 0
);

-- The periods an event's registrations feed.
CREATE FUNCTION dkl_leaderboard_log_events(event_ids UUID[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO leaderboard_changes (period)
    SELECT DISTINCT p.period
      FROM events e
     CROSS JOIN LATERAL (VALUES ('event:' || e.id),
                                ('year:' || dkl_leaderboard_year(e.start_time)),
                                ('all')) p(period)
     WHERE e.id = ANY (event_ids);
$$;

CREATE FUNCTION dkl_leaderboard_registrations_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed UUID[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT event_id) INTO changed FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT event_id) INTO changed FROM old_rows;
    ELSE
        SELECT array_agg(DISTINCT e) INTO changed
          FROM old_rows o JOIN new_rows n ON n.id = o.id
         CROSS JOIN LATERAL (VALUES (o.event_id), (n.event_id)) v(e)
         WHERE (o.event_id, o.participant_id, o.steps, o.total_distance, o.test_mode, o.status, o.finish_time)
               IS DISTINCT FROM
               (n.event_id, n.participant_id, n.steps, n.total_distance, n.test_mode, n.status, n.finish_time);
    END IF;
    IF changed IS NOT NULL THEN
        PERFORM dkl_leaderboard_log_events(changed);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER event_registrations_leaderboard_ins AFTER INSERT ON event_registrations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_leaderboard_registrations_changed();
CREATE TRIGGER event_registrations_leaderboard_upd AFTER UPDATE ON event_registrations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_leaderboard_registrations_changed();
CREATE TRIGGER event_registrations_leaderboard_del AFTER DELETE ON event_registrations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_leaderboard_registrations_changed();

-- A participant switched into or out of test mode changes every board it is on.
CREATE FUNCTION dkl_leaderboard_participants_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed UUID[];
BEGIN
    SELECT array_agg(DISTINCT r.event_id) INTO changed
      FROM old_rows o
      JOIN new_rows n ON n.id = o.id AND n.test_mode IS DISTINCT FROM o.test_mode
      JOIN event_registrations r ON r.participant_id = n.id;
    IF changed IS NOT NULL THEN
        PERFORM dkl_leaderboard_log_events(changed);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER participants_leaderboard_upd AFTER UPDATE ON participants
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_leaderboard_participants_changed();

-- An event moved to another year leaves its old year's board too.
CREATE FUNCTION dkl_leaderboard_events_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO leaderboard_changes (period)
    SELECT DISTINCT 'year:' || dkl_leaderboard_year(o.start_time)
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE dkl_leaderboard_year(o.start_time) <> dkl_leaderboard_year(n.start_time)
       AND EXISTS (SELECT 1 FROM event_registrations r WHERE r.event_id = n.id);
    PERFORM dkl_leaderboard_log_events(array_agg(n.id))
       FROM old_rows o JOIN new_rows n ON n.id = o.id
      WHERE dkl_leaderboard_year(o.start_time) <> dkl_leaderboard_year(n.start_time)
     HAVING count(*) > 0;
    RETURN NULL;
END;
$$;
-- A deleted event leaves its boards (its registrations are deleted by the
-- cascade, when the event row can no longer be read).
CREATE FUNCTION dkl_leaderboard_events_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO leaderboard_changes (period)
    SELECT DISTINCT p.period
      FROM old_rows o
     CROSS JOIN LATERAL (VALUES ('event:' || o.id),
                                ('year:' || dkl_leaderboard_year(o.start_time)),
                                ('all')) p(period);
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_leaderboard_del AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_leaderboard_events_deleted();

CREATE TRIGGER events_leaderboard_upd AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_leaderboard_events_changed();

-- Boards that already exist, and sources that have rows, are due once.
INSERT INTO leaderboard_changes (period)
SELECT DISTINCT period FROM leaderboards
UNION
SELECT DISTINCT p.period
  FROM event_registrations r
  JOIN events e ON e.id = r.event_id
 CROSS JOIN LATERAL (VALUES ('event:' || e.id), ('year:' || dkl_leaderboard_year(e.start_time)), ('all')) p(period);

-- The board in reading order; ties share a rank (1, 2, 2, 4) and are shown
-- by distance, then name.
CREATE VIEW leaderboard_view AS
SELECT l.period, l.rank, p.naam AS name, l.steps, l.distance, l.points, l.participant_id, l.updated_at
  FROM leaderboards l
  JOIN participants p ON p.id = l.participant_id;

-- The schedules' notes say what their jobs now do.
UPDATE job_schedules SET note = 'End expired sessions, revoke expired refresh tokens, end expired roles.'
 WHERE name = 'session-expiry';
UPDATE job_schedules SET note = 'Delete what retention_rules says is past its time.'
 WHERE name = 'retention';
UPDATE job_schedules SET note = 'Rebuild the leaderboards whose registrations changed.'
 WHERE name = 'leaderboard-recompute';
