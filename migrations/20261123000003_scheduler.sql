-- The scheduler's tables and the job status views.
--
-- * `job_schedules`: recurring work (cron with seconds, in a time zone).
--   dkl-scheduler reads it on every pass, so changes need no restart; a
--   trigger announces them so the leader recomputes at once.
-- * `job_schedule_runs`: one row per (schedule, tick) enqueued. Its primary
--   key is what makes a tick run once even if two schedulers both believe
--   they lead (a network partition outlives the advisory lock's session).
-- * `scheduled_jobs`: the admin's table. Insert a row, and at `run_at` the
--   scheduler enqueues the job in the same transaction that marks the row.
-- * `scheduler_leader`: who leads now, for status and metrics. The advisory
--   lock, not this row, decides leadership.
-- * Views `job_status` and `queue_summary`: what admins query.
--
-- Cron expressions are checked on save by `dkl_cron_check`, a deliberately
-- plain grammar: six fields (second minute hour day-of-month month
-- day-of-week), each a comma list of `*`, `?` (day fields), `N`, `N-M`,
-- optionally `/STEP`; month names JAN-DEC and day names SUN-SAT; day of week
-- 0-7 with 0 and 7 Sunday. The scheduler parses with the croner crate, which
-- accepts all of this (a test checks both on the same expressions).

CREATE FUNCTION dkl_cron_check(expr TEXT) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    names  TEXT[] := ARRAY['second', 'minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    lo     INT[]  := ARRAY[0, 0, 0, 1, 1, 0];
    hi     INT[]  := ARRAY[59, 59, 23, 31, 12, 7];
    hint   TEXT   := 'expected six fields: second minute hour day-of-month month day-of-week, e.g. ''0 */5 * * * *'' (every 5 minutes) or ''0 30 3 * * *'' (03:30 daily)';
    fields TEXT[];
    part   TEXT;
    m      TEXT[];
    parts  TEXT[];
    a      INT;
    b      INT;
    step   INT;
BEGIN
    IF expr IS NULL OR btrim(expr) = '' THEN
        RAISE EXCEPTION 'invalid cron expression "%": it is empty; %', coalesce(expr, ''), hint
            USING ERRCODE = 'check_violation';
    END IF;
    fields := regexp_split_to_array(btrim(expr), '\s+');
    IF array_length(fields, 1) <> 6 THEN
        RAISE EXCEPTION 'invalid cron expression "%": it has % fields; %', expr, array_length(fields, 1), hint
            USING ERRCODE = 'check_violation';
    END IF;
    FOR i IN 1..6 LOOP
        parts := string_to_array(upper(fields[i]), ',');
        FOREACH part IN ARRAY parts LOOP
            m := regexp_match(part, '^(\*|\?|([0-9]+|[A-Z]{3})(-([0-9]+|[A-Z]{3}))?)(/([0-9]+))?$');
            IF m IS NULL THEN
                RAISE EXCEPTION 'invalid cron expression "%": % field "%" is not *, N, N-M or one of those with /STEP; %',
                    expr, names[i], part, hint USING ERRCODE = 'check_violation';
            END IF;
            -- croner refuses these inside a list; refuse them on save too.
            IF m[1] IN ('*', '?') AND array_length(parts, 1) > 1 THEN
                RAISE EXCEPTION 'invalid cron expression "%": % field "%" mixes * or ? into a list; write the values out (e.g. 0-59/15,7); %',
                    expr, names[i], fields[i], hint USING ERRCODE = 'check_violation';
            END IF;
            IF m[1] = '?' AND i NOT IN (4, 6) THEN
                RAISE EXCEPTION 'invalid cron expression "%": "?" is allowed only in day-of-month and day-of-week, not in %; %',
                    expr, names[i], hint USING ERRCODE = 'check_violation';
            END IF;
            IF m[1] NOT IN ('*', '?') THEN
                a := dkl_cron_value(expr, names[i], i, m[2]);
                b := CASE WHEN m[4] IS NULL THEN a ELSE dkl_cron_value(expr, names[i], i, m[4]) END;
                -- As croner reads it: SUN closing a range is 7 (MON-SUN = 1-7).
                IF i = 6 AND m[4] = 'SUN' THEN
                    b := 7;
                END IF;
                IF a < lo[i] OR a > hi[i] OR b < lo[i] OR b > hi[i] THEN
                    RAISE EXCEPTION 'invalid cron expression "%": % value "%" is outside %-%; %',
                        expr, names[i], part, lo[i], hi[i], hint USING ERRCODE = 'check_violation';
                END IF;
                IF b < a THEN
                    RAISE EXCEPTION 'invalid cron expression "%": % range "%" runs backwards; write it low-high; %',
                        expr, names[i], part, hint USING ERRCODE = 'check_violation';
                END IF;
            END IF;
            IF m[6] IS NOT NULL THEN
                step := m[6]::INT;
                IF step < 1 OR step > hi[i] THEN
                    RAISE EXCEPTION 'invalid cron expression "%": % step "/%" must be 1-%; %',
                        expr, names[i], m[6], hi[i], hint USING ERRCODE = 'check_violation';
                END IF;
            END IF;
        END LOOP;
    END LOOP;
END;
$$;

-- One value of field number `field`: a number, or a month/day name where
-- those are allowed.
CREATE FUNCTION dkl_cron_value(expr TEXT, field_name TEXT, field INT, token TEXT) RETURNS INT
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    months TEXT[] := ARRAY['JAN','FEB','MAR','APR','MAY','JUN','JUL','AUG','SEP','OCT','NOV','DEC'];
    days   TEXT[] := ARRAY['SUN','MON','TUE','WED','THU','FRI','SAT'];
    pos    INT;
BEGIN
    IF token ~ '^[0-9]+$' THEN
        IF length(token) > 4 THEN
            RETURN 9999;  -- out of every range; reported by the caller
        END IF;
        RETURN token::INT;
    END IF;
    IF field = 5 THEN
        pos := array_position(months, token);
        IF pos IS NOT NULL THEN RETURN pos; END IF;
    ELSIF field = 6 THEN
        pos := array_position(days, token);
        IF pos IS NOT NULL THEN RETURN pos - 1; END IF;
    END IF;
    RAISE EXCEPTION 'invalid cron expression "%": "%" is not a valid % value (numbers%)',
        expr, token, field_name,
        CASE field WHEN 5 THEN ' or JAN-DEC' WHEN 6 THEN ' or SUN-SAT' ELSE '' END
        USING ERRCODE = 'check_violation';
END;
$$;

CREATE FUNCTION dkl_time_zone_check(tz TEXT) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- posix/ and right/ copies exist in some system tzdata trees; the
    -- scheduler's time zone database (chrono-tz) has only the plain names.
    IF tz ~ '^(posix|right)/' OR NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = tz) THEN
        RAISE EXCEPTION 'unknown time zone "%": use an IANA name such as ''Europe/Amsterdam'' or ''UTC''', tz
            USING ERRCODE = 'check_violation';
    END IF;
END;
$$;

CREATE TABLE job_schedules (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name              TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_.-]*$'),
    cron              TEXT NOT NULL,
    time_zone         TEXT NOT NULL DEFAULT 'Europe/Amsterdam',
    job_kind          TEXT NOT NULL,
    payload           JSONB NOT NULL DEFAULT '{}',
    -- NULL: the kind's own queue / attempts.
    queue             TEXT,
    max_attempts      INT CHECK (max_attempts > 0),
    enabled           BOOLEAN NOT NULL DEFAULT true,
    -- After downtime: 'once' enqueues one job for all missed ticks (stamped
    -- with the latest), 'every' one job per missed tick (at most 100 a pass).
    catch_up          TEXT NOT NULL DEFAULT 'once' CHECK (catch_up IN ('once', 'every')),
    -- Skip a tick while the previous tick's job is still pending or running
    -- (mail fetching: one fetch at a time is enough).
    skip_if_running   BOOLEAN NOT NULL DEFAULT false,
    note              TEXT,
    -- Maintained by dkl-scheduler:
    next_run_at       TIMESTAMPTZ,
    last_run_at       TIMESTAMPTZ,
    last_job_id       TEXT,
    last_error        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON TABLE job_schedules IS
    'Recurring jobs. Edit with SQL; dkl-scheduler picks changes up without a restart. next_run_at, last_* are the scheduler''s.';

-- Validate on save, and make the scheduler recompute the next tick when the
-- timing changes (NULL next_run_at = "compute from now").
CREATE FUNCTION dkl_job_schedules_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Checked when written, not on the scheduler's bookkeeping updates (a
    -- tzdata upgrade that drops a name must not break every later tick).
    IF TG_OP = 'INSERT' OR NEW.cron IS DISTINCT FROM OLD.cron THEN
        PERFORM dkl_cron_check(NEW.cron);
    END IF;
    IF TG_OP = 'INSERT' OR NEW.time_zone IS DISTINCT FROM OLD.time_zone THEN
        PERFORM dkl_time_zone_check(NEW.time_zone);
    END IF;
    IF jsonb_typeof(NEW.payload) <> 'object' THEN
        RAISE EXCEPTION 'payload of schedule "%" must be a JSON object, e.g. ''{}''; got %', NEW.name, NEW.payload
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.cron IS DISTINCT FROM OLD.cron
                             OR NEW.time_zone IS DISTINCT FROM OLD.time_zone
                             OR (NEW.enabled AND NOT OLD.enabled)) THEN
        NEW.next_run_at := NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.cron, NEW.time_zone, NEW.job_kind, NEW.payload, NEW.queue, NEW.enabled)
                 IS DISTINCT FROM (OLD.cron, OLD.time_zone, OLD.job_kind, OLD.payload, OLD.queue, OLD.enabled) THEN
        NEW.last_error := NULL;  -- the admin changed something; judge it afresh
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER job_schedules_check
    BEFORE INSERT OR UPDATE ON job_schedules
    FOR EACH ROW EXECUTE FUNCTION dkl_job_schedules_check();

CREATE FUNCTION dkl_notify_schedules_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dkl::schedules', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

-- Only admin edits wake the leader; its own bookkeeping updates (next_run_at,
-- last_*) do not match the WHEN clause.
CREATE TRIGGER job_schedules_changed_upd
    AFTER UPDATE ON job_schedules
    FOR EACH ROW
    WHEN ((NEW.cron, NEW.time_zone, NEW.job_kind, NEW.payload, NEW.queue, NEW.enabled, NEW.catch_up, NEW.next_run_at IS NULL)
          IS DISTINCT FROM (OLD.cron, OLD.time_zone, OLD.job_kind, OLD.payload, OLD.queue, OLD.enabled, OLD.catch_up, OLD.next_run_at IS NULL))
    EXECUTE FUNCTION dkl_notify_schedules_changed();
CREATE TRIGGER job_schedules_changed_ins_del
    AFTER INSERT OR DELETE ON job_schedules
    FOR EACH STATEMENT EXECUTE FUNCTION dkl_notify_schedules_changed();

CREATE TABLE job_schedule_runs (
    schedule_id  UUID NOT NULL REFERENCES job_schedules(id) ON DELETE CASCADE,
    -- The tick (cron time); for `dklctl run-now`, the time it was asked.
    tick_at      TIMESTAMPTZ NOT NULL,
    -- The job enqueued; NULL when the tick was skipped (skip_if_running).
    job_id       TEXT UNIQUE,
    outcome      TEXT NOT NULL CHECK (outcome IN ('enqueued', 'skipped', 'manual')),
    -- Missed ticks this run stands for (catch_up = 'once' after downtime).
    ticks_missed INT NOT NULL DEFAULT 0,
    scheduler_id TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, tick_at)
);
CREATE INDEX job_schedule_runs_created_at ON job_schedule_runs (created_at);

CREATE TABLE scheduled_jobs (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    job_kind     TEXT NOT NULL,
    payload      JSONB NOT NULL DEFAULT '{}',
    run_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by   TEXT NOT NULL DEFAULT current_user,
    note         TEXT,
    -- NULL: the kind's own queue / attempts.
    queue        TEXT,
    max_attempts INT CHECK (max_attempts > 0),
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'enqueued', 'cancelled', 'rejected')),
    job_id       TEXT UNIQUE,
    enqueued_at  TIMESTAMPTZ,
    cancelled_at TIMESTAMPTZ,
    rejected_reason TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT scheduled_jobs_run_at_finite CHECK (isfinite(run_at)),
    CONSTRAINT scheduled_jobs_enqueued_has_job CHECK ((status = 'enqueued') = (job_id IS NOT NULL)),
    CONSTRAINT scheduled_jobs_rejected_has_reason CHECK ((status = 'rejected') = (rejected_reason IS NOT NULL))
);

COMMENT ON TABLE scheduled_jobs IS
    'One-off jobs admins schedule: INSERT (job_kind, payload, run_at, created_by, note). Cancel with UPDATE ... SET status = ''cancelled'' WHERE status = ''pending''.';

-- What the scheduler walks: pending rows by due time.
CREATE INDEX scheduled_jobs_due ON scheduled_jobs (run_at) WHERE status = 'pending';

CREATE FUNCTION dkl_scheduled_jobs_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'cancelled' AND NEW.cancelled_at IS NULL THEN
        NEW.cancelled_at := now();
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
CREATE TRIGGER scheduled_jobs_touch
    BEFORE INSERT OR UPDATE ON scheduled_jobs
    FOR EACH ROW EXECUTE FUNCTION dkl_scheduled_jobs_touch();

-- Wake the schedulers when a row becomes pending or its time moves, so a
-- row due in 3 s does not wait for a poll.
CREATE TRIGGER scheduled_jobs_changed
    AFTER INSERT OR UPDATE OF run_at, status ON scheduled_jobs
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION dkl_notify_schedules_changed();

CREATE TABLE scheduler_leader (
    only_row     BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    scheduler_id TEXT NOT NULL,
    -- The leader's session (pg_backend_pid), so a stale leader is deposed
    -- only if the stale row is really that session's.
    backend_pid  INT NOT NULL,
    since        TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

-- One row per job, in words admins use.
CREATE VIEW job_status AS
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
       sj.created_by     AS scheduled_by
  FROM apalis.jobs j
  LEFT JOIN job_schedule_runs r ON r.job_id = j.id
  LEFT JOIN job_schedules s ON s.id = r.schedule_id
  LEFT JOIN scheduled_jobs sj ON sj.job_id = j.id;

-- Per queue: counts by state, how long the oldest due job has waited, and
-- how many finished in the last five minutes.
CREATE VIEW queue_summary AS
SELECT j.queue,
       count(*) FILTER (WHERE j.status = 'Pending' AND j.run_at <= now()) AS pending,
       count(*) FILTER (WHERE j.status = 'Pending' AND j.run_at > now())  AS scheduled,
       count(*) FILTER (WHERE j.status = 'Running')                       AS running,
       count(*) FILTER (WHERE j.status = 'Done')                          AS done,
       count(*) FILTER (WHERE j.status = 'Killed' AND j.cancelled_at IS NULL)     AS discarded,
       count(*) FILTER (WHERE j.status = 'Killed' AND j.cancelled_at IS NOT NULL) AS cancelled,
       coalesce(extract(epoch FROM now() - min(j.run_at) FILTER (WHERE j.status = 'Pending' AND j.run_at <= now())), 0)::float8
                                                                          AS oldest_pending_age_s,
       count(*) FILTER (WHERE j.status IN ('Done', 'Killed') AND j.done_at > now() - interval '5 minutes')
                                                                          AS finished_last_5m
  FROM apalis.jobs j
 GROUP BY j.queue;

-- The recurring work of dkl-mail-worker. Kinds whose handlers come with later
-- issues are discarded by the worker with "no handler for kind ..." until then.
INSERT INTO job_schedules (name, cron, job_kind, skip_if_running, note) VALUES
    ('fetch-mail',            '0 * * * * *',    'fetch_mail',             true,  'Fetch new mail from every IMAP account.'),
    ('retention',             '0 30 3 * * *',   'apply_retention',        true,  'Delete mail and logs past their retention period.'),
    ('leaderboard-recompute', '0 */5 * * * *',  'recompute_leaderboards', true,  'Recompute event leaderboards.'),
    ('session-expiry',        '0 */15 * * * *', 'expire_sessions',        true,  'Delete expired sessions and refresh tokens.'),
    ('prune-jobs',            '0 15 * * * *',   'prune_jobs',             true,  'Delete old finished jobs and vacuum the job table.');

-- A job whose queue is not its kind's usual one (an admin row or schedule
-- with a `queue` override) was only found by polling: apalis's insert
-- NOTIFY names the kind, not the queue, and our trigger announced only jobs
-- due later. Announce every job that becomes pending, now or later, with its
-- queue; claims and completions still do not match the WHEN clause.
-- (Measured with `dklctl bench schedule`: rows on an override queue started
-- 150-500 ms late, one poll interval; after this, a few ms.)
DROP TRIGGER jobs_notify_scheduled ON apalis.jobs;
CREATE TRIGGER jobs_notify_pending
    AFTER INSERT OR UPDATE OF status, run_at ON apalis.jobs
    FOR EACH ROW
    WHEN (NEW.status = 'Pending')
    EXECUTE FUNCTION apalis.dkl_notify_scheduled();
