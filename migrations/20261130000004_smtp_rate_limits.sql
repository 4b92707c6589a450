-- A send rate limit per SMTP configuration that holds across every worker
-- process: providers limit messages per second and per hour per account,
-- whatever the number of machines sending. Each send takes a slot of the
-- current one-second and one-hour windows; the row locks serialise the
-- workers. A full window makes the sender wait (a second) or snooze (an
-- hour), never fail.
CREATE TABLE smtp_rate_windows (
    smtp_config  TEXT NOT NULL,
    window_secs  INT NOT NULL CHECK (window_secs IN (1, 3600)),
    window_start TIMESTAMPTZ NOT NULL,
    used         INT NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (smtp_config, window_secs, window_start)
);

-- Takes one send slot for `p_config` under the given limits (NULL = none).
-- Returns 0 when taken, else the seconds to wait for the next window.
CREATE FUNCTION dkl_take_send_slot(p_config TEXT, p_per_second INT, p_per_hour INT) RETURNS FLOAT8
LANGUAGE plpgsql AS $$
DECLARE
    t          TIMESTAMPTZ := clock_timestamp();
    sec_start  TIMESTAMPTZ := date_trunc('second', t);
    hour_start TIMESTAMPTZ := date_trunc('hour', t);
    v_used     INT;
    v_new      INT;
BEGIN
    IF p_per_hour IS NOT NULL THEN
        INSERT INTO smtp_rate_windows VALUES (p_config, 3600, hour_start, 0) ON CONFLICT DO NOTHING;
        SELECT used INTO v_used FROM smtp_rate_windows
         WHERE smtp_config = p_config AND window_secs = 3600 AND window_start = hour_start FOR UPDATE;
        IF v_used >= p_per_hour THEN
            RETURN extract(epoch FROM hour_start + interval '1 hour' - clock_timestamp());
        END IF;
    END IF;
    IF p_per_second IS NOT NULL THEN
        -- No slots in the last 50 ms of a second: a message's SMTP
        -- transaction (milliseconds on a good link) then reaches the server
        -- in the second its slot was counted in, as the provider counts.
        IF t > sec_start + interval '950 milliseconds' THEN
            RETURN extract(epoch FROM sec_start + interval '1 second' - t);
        END IF;
        INSERT INTO smtp_rate_windows VALUES (p_config, 1, sec_start, 0) ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_new = ROW_COUNT;
        IF v_new > 0 THEN
            -- Once per second per configuration: old windows go.
            DELETE FROM smtp_rate_windows
             WHERE smtp_config = p_config AND window_secs = 1 AND window_start < sec_start - interval '10 seconds';
        END IF;
        UPDATE smtp_rate_windows SET used = used + 1
         WHERE smtp_config = p_config AND window_secs = 1 AND window_start = sec_start AND used < p_per_second;
        IF NOT FOUND THEN
            RETURN greatest(extract(epoch FROM sec_start + interval '1 second' - clock_timestamp()), 0.001);
        END IF;
    END IF;
    IF p_per_hour IS NOT NULL THEN
        UPDATE smtp_rate_windows SET used = used + 1
         WHERE smtp_config = p_config AND window_secs = 3600 AND window_start = hour_start;
        DELETE FROM smtp_rate_windows
         WHERE smtp_config = p_config AND window_secs = 3600 AND window_start < hour_start - interval '2 hours';
    END IF;
    RETURN 0;
END;
$$;

-- What a send job did, in the view admins read: the status and recipient of
-- the message it recorded (NULL for other kinds).
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
       m.recipient_email AS mail_to
  FROM apalis.jobs j
  LEFT JOIN job_schedule_runs r ON r.job_id = j.id
  LEFT JOIN job_schedules s ON s.id = r.schedule_id
  LEFT JOIN scheduled_jobs sj ON sj.job_id = j.id
  LEFT JOIN LATERAL (
        SELECT v.status, v.recipient_email FROM verzonden_emails v
         WHERE v.job_id = j.id ORDER BY v.updated_at DESC LIMIT 1) m ON true;
