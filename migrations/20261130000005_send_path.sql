-- The send path in two round trips: dkl_begin_send before a message's SMTP
-- transaction, dkl_finish_send after it. Before, a message took eight
-- statements (advisory lock, insert, suppression check, rate slot, start
-- mark, outcome, unlock, plus the template row), and at ~800 messages/s the
-- machine spent two thirds of its CPU in PostgreSQL parsing, planning and
-- answering them. PL/pgSQL keeps each statement's plan for the session.

-- Takes the rate slot of `p_smtp` (when it has limits) and marks the SMTP
-- transaction of `p_id` as started. Returns 0 when started, else the seconds
-- to wait before asking again (nothing is marked then).
CREATE FUNCTION dkl_start_send(p_id UUID, p_job_id TEXT, p_smtp TEXT, p_rate_per_second INT, p_rate_per_hour INT)
RETURNS FLOAT8
LANGUAGE plpgsql AS $$
DECLARE
    v_wait FLOAT8 := 0;
BEGIN
    IF p_rate_per_second IS NOT NULL OR p_rate_per_hour IS NOT NULL THEN
        v_wait := dkl_take_send_slot(p_smtp, p_rate_per_second, p_rate_per_hour);
        IF v_wait > 0 THEN
            RETURN v_wait;
        END IF;
    END IF;
    UPDATE verzonden_emails SET smtp_started_at = now(), job_id = p_job_id WHERE id = p_id;
    RETURN 0;
END;
$$;

-- Everything that happens before a message's SMTP transaction, in one
-- transaction. `outcome` says what the sender does:
--   busy            another session holds the message's lock: look again later
--   other_recipient the key belongs to a message to `detail`: refuse
--   done            the message was handled before (`detail` = its status)
--   suppressed      the address is suppressed (`detail` = why); row marked
--   unknown         a bulk message whose sender died mid-transaction; row marked
--   wait            the rate limit is reached: wait `wait_secs`, then call
--                   dkl_start_send (the lock stays held)
--   send            send it now with `message_id`; smtp_started_at is set
-- With `wait` and `send` the session holds the advisory lock on the key
-- (released by dkl_finish_send, or by the session's end); otherwise it is
-- already released. The lock is a session lock so that a sender that dies
-- frees it, and a row with smtp_started_at but no lock holder then really
-- means its sender died between starting and recording the outcome.
CREATE FUNCTION dkl_begin_send(
    p_dedup_key TEXT, p_recipient TEXT, p_subject TEXT, p_template TEXT, p_kind TEXT, p_bulk BOOLEAN,
    p_smtp TEXT, p_job_id TEXT, p_message_id TEXT, p_reply_to TEXT, p_rate_per_second INT, p_rate_per_hour INT)
RETURNS TABLE (outcome TEXT, id UUID, message_id TEXT, detail TEXT, wait_secs FLOAT8)
LANGUAGE plpgsql AS $$
DECLARE
    v_id          UUID;
    v_recipient   TEXT;
    v_status      TEXT;
    v_message_id  TEXT;
    v_interrupted BOOLEAN := false;
    v_reason      TEXT;
    v_start_now   BOOLEAN;
    v_wait        FLOAT8;
BEGIN
    IF NOT pg_try_advisory_lock(hashtextextended(p_dedup_key, 1937)) THEN
        RETURN QUERY SELECT 'busy', NULL::UUID, NULL::TEXT, NULL::TEXT, NULL::FLOAT8;
        RETURN;
    END IF;
    SELECT s.reason || coalesce(' (' || s.source || ')', '') INTO v_reason
      FROM email_suppressions s
     WHERE s.address = lower(p_recipient) AND (s.scope = 'all' OR p_bulk);
    -- The common case, a new message with no limit to wait for, is one
    -- insert that also marks the SMTP transaction started.
    v_start_now := v_reason IS NULL AND p_rate_per_second IS NULL AND p_rate_per_hour IS NULL;
    INSERT INTO verzonden_emails AS v
        (dedup_key, recipient_email, subject, template_name, status, error_message, mail_kind, smtp_config, job_id,
         message_id, reply_to, sent_at, smtp_started_at)
    VALUES (p_dedup_key, p_recipient, p_subject, p_template,
            CASE WHEN v_reason IS NULL THEN 'queued' ELSE 'suppressed' END,
            'address suppressed: ' || v_reason,
            p_kind, p_smtp, p_job_id, p_message_id, p_reply_to, now(),
            CASE WHEN v_start_now THEN now() END)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING v.id, v.message_id INTO v_id, v_message_id;
    IF v_id IS NOT NULL THEN
        IF v_reason IS NOT NULL THEN
            PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
            RETURN QUERY SELECT 'suppressed', v_id, v_message_id, v_reason, NULL::FLOAT8;
            RETURN;
        END IF;
        IF v_start_now THEN
            RETURN QUERY SELECT 'send', v_id, v_message_id, NULL::TEXT, 0::FLOAT8;
            RETURN;
        END IF;
        v_wait := dkl_start_send(v_id, p_job_id, p_smtp, p_rate_per_second, p_rate_per_hour);
        RETURN QUERY SELECT CASE WHEN v_wait > 0 THEN 'wait' ELSE 'send' END, v_id, v_message_id, NULL::TEXT, v_wait;
        RETURN;
    END IF;
    -- Asked for again: a failed or suppressed message is tried again (and
    -- its suppression looked at again).
    -- (Only the same recipient's message: a key reused for another address
    -- is refused below and must not change the row it names.)
    UPDATE verzonden_emails v
       SET status = CASE WHEN v.status IN ('failed', 'suppressed') AND lower(v.recipient_email) = lower(p_recipient)
                         THEN 'queued' ELSE v.status END
     WHERE v.dedup_key = p_dedup_key
    RETURNING v.id, v.recipient_email, v.status, v.message_id, v.smtp_started_at IS NOT NULL
      INTO v_id, v_recipient, v_status, v_message_id, v_interrupted;
    IF NOT FOUND THEN
        -- Deleted between the insert and the update (a prune): look again later.
        PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
        RETURN QUERY SELECT 'busy', NULL::UUID, NULL::TEXT, NULL::TEXT, NULL::FLOAT8;
        RETURN;
    END IF;
    IF lower(v_recipient) <> lower(p_recipient) THEN
        PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
        RETURN QUERY SELECT 'other_recipient', v_id, v_message_id, v_recipient, NULL::FLOAT8;
        RETURN;
    END IF;
    IF v_status NOT IN ('queued', 'pending') THEN
        PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
        RETURN QUERY SELECT 'done', v_id, v_message_id, v_status, NULL::FLOAT8;
        RETURN;
    END IF;
    IF v_reason IS NOT NULL THEN
        UPDATE verzonden_emails
           SET status = 'suppressed', error_message = 'address suppressed: ' || v_reason, smtp_started_at = NULL
         WHERE verzonden_emails.id = v_id;
        PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
        RETURN QUERY SELECT 'suppressed', v_id, v_message_id, v_reason, NULL::FLOAT8;
        RETURN;
    END IF;
    IF v_interrupted AND p_bulk THEN
        UPDATE verzonden_emails
           SET status = 'unknown', smtp_started_at = NULL,
               error_message = 'a worker died during this message''s SMTP transaction; it may have been delivered, so it is not resent by itself'
         WHERE verzonden_emails.id = v_id;
        PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
        RETURN QUERY SELECT 'unknown', v_id, v_message_id, NULL::TEXT, NULL::FLOAT8;
        RETURN;
    END IF;
    v_wait := dkl_start_send(v_id, p_job_id, p_smtp, p_rate_per_second, p_rate_per_hour);
    RETURN QUERY SELECT CASE WHEN v_wait > 0 THEN 'wait' ELSE 'send' END, v_id, v_message_id, NULL::TEXT, v_wait;
END;
$$;

-- Everything after a message's SMTP transaction, and the release of its
-- lock. `p_status`: 'sent'; 'queued' for a passing failure (counted in
-- retry_count, tried again by the job's next attempt); 'released' when the
-- sender stopped before the transaction began (status stays as it is); or a
-- final status ('failed', 'unknown') with the reason in `p_error`.
CREATE FUNCTION dkl_finish_send(p_id UUID, p_dedup_key TEXT, p_status TEXT, p_code INT, p_reply TEXT, p_error TEXT)
RETURNS VOID
LANGUAGE plpgsql AS $$
BEGIN
    IF p_status = 'sent' THEN
        UPDATE verzonden_emails
           SET status = 'sent', sent_at = now(), smtp_code = p_code, smtp_reply = p_reply, error_message = NULL,
               smtp_started_at = NULL
         WHERE id = p_id;
    ELSIF p_status = 'released' THEN
        -- The sender went away before its SMTP transaction began: nothing
        -- left, so the message is not `interrupted`; its next attempt sends it.
        UPDATE verzonden_emails SET error_message = p_error, smtp_started_at = NULL WHERE id = p_id;
    ELSIF p_status = 'queued' THEN
        UPDATE verzonden_emails
           SET retry_count = retry_count + 1, smtp_code = p_code, error_message = p_error, smtp_started_at = NULL
         WHERE id = p_id;
    ELSE
        UPDATE verzonden_emails
           SET status = p_status, smtp_code = coalesce(p_code, smtp_code), error_message = p_error, smtp_started_at = NULL
         WHERE id = p_id;
    END IF;
    PERFORM pg_advisory_unlock(hashtextextended(p_dedup_key, 1937));
END;
$$;

-- Many senders' steps in one round trip: a worker process's send log
-- writer collects the begin, start, finish and unlock steps of its
-- concurrent sends and runs them here, each in a subtransaction of its own
-- (one bad step, say a recipient too long for the column, fails alone).
-- The writer's session holds the advisory locks of every message it sends;
-- a step that fails releases the lock it may have taken (a session lock
-- outlives the rollback of the subtransaction that took it).
-- p_steps: a JSON array of objects with `op` ('begin' | 'start' | 'finish'
-- | 'unlock') and that step's arguments; the result has a row per step, in
-- order (`n`, from 1), with `outcome` 'error' and the reason in `detail`
-- for a step that failed.
CREATE FUNCTION dkl_send_steps(p_steps JSONB)
RETURNS TABLE (n INT, outcome TEXT, id UUID, message_id TEXT, detail TEXT, wait_secs FLOAT8)
LANGUAGE plpgsql AS $$
DECLARE
    v_step JSONB;
    v_n    INT := 0;
    v_wait FLOAT8;
BEGIN
    FOR v_step IN SELECT value FROM jsonb_array_elements(p_steps) LOOP
        v_n := v_n + 1;
        BEGIN
            CASE v_step->>'op'
            WHEN 'begin' THEN
                RETURN QUERY SELECT v_n, b.outcome, b.id, b.message_id, b.detail, b.wait_secs
                  FROM dkl_begin_send(v_step->>'dedup_key', v_step->>'recipient', v_step->>'subject',
                                      v_step->>'template', v_step->>'kind', (v_step->>'bulk')::BOOLEAN,
                                      v_step->>'smtp', v_step->>'job_id', v_step->>'message_id',
                                      v_step->>'reply_to', (v_step->>'rate_per_second')::INT,
                                      (v_step->>'rate_per_hour')::INT) b;
            WHEN 'start' THEN
                v_wait := dkl_start_send((v_step->>'id')::UUID, v_step->>'job_id', v_step->>'smtp',
                                         (v_step->>'rate_per_second')::INT, (v_step->>'rate_per_hour')::INT);
                RETURN QUERY SELECT v_n, CASE WHEN v_wait > 0 THEN 'wait' ELSE 'send' END, NULL::UUID, NULL::TEXT,
                                    NULL::TEXT, v_wait;
            WHEN 'finish' THEN
                PERFORM dkl_finish_send((v_step->>'id')::UUID, v_step->>'dedup_key', v_step->>'status',
                                        (v_step->>'code')::INT, v_step->>'reply', v_step->>'error');
                RETURN QUERY SELECT v_n, 'done', NULL::UUID, NULL::TEXT, NULL::TEXT, NULL::FLOAT8;
            WHEN 'unlock' THEN
                PERFORM pg_advisory_unlock(hashtextextended(v_step->>'dedup_key', 1937));
                RETURN QUERY SELECT v_n, 'done', NULL::UUID, NULL::TEXT, NULL::TEXT, NULL::FLOAT8;
            ELSE
                RAISE EXCEPTION 'unknown send step `%`', v_step->>'op';
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            IF v_step ? 'dedup_key' AND v_step->>'op' IN ('begin', 'finish') THEN
                PERFORM pg_advisory_unlock(hashtextextended(v_step->>'dedup_key', 1937));
            END IF;
            RETURN QUERY SELECT v_n, 'error', NULL::UUID, NULL::TEXT, SQLSTATE || ': ' || SQLERRM, NULL::FLOAT8;
        END;
    END LOOP;
END;
$$;
