-- The send rate limit's end-of-second margin grows from 50 to 200 ms:
-- with two worker processes on a loaded 2-core machine a message whose slot
-- was taken 50 ms before the second ended sometimes reached the server in
-- the next second (21 in one second under a limit of 20). A full second's
-- slots still fit in its first 800 ms at any limit a provider sets. The
-- time is looked at again once the window's row is locked: the lock may
-- have been waited for (a worker's send log commits many steps at once),
-- and the time read before it then named a second already over.

CREATE OR REPLACE FUNCTION dkl_take_send_slot(p_config TEXT, p_per_second INT, p_per_hour INT) RETURNS FLOAT8
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
        -- No slots in the last 200 ms of a second: a message's SMTP
        -- transaction then reaches the server in the second its slot was
        -- counted in, as the provider counts, even on a busy machine.
        IF t > sec_start + interval '800 milliseconds' THEN
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
        -- The window's row lock may have been waited for (another worker's
        -- batch holds it until its commit): a slot of a second that is about
        -- to end is given back.
        IF clock_timestamp() > sec_start + interval '800 milliseconds' THEN
            UPDATE smtp_rate_windows SET used = used - 1
             WHERE smtp_config = p_config AND window_secs = 1 AND window_start = sec_start;
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
