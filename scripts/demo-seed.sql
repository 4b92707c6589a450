-- Demo data for scripts/demo.sh: a few users, an event and a mail template.
-- Idempotent: running the demo again changes nothing here.
INSERT INTO gebruikers (naam, email, newsletter_subscribed) VALUES
    ('Demo Beheerder', 'beheer@demo.dkl.test', false),
    ('Anna de Vries',  'anna@demo.dkl.test',   true),
    ('Bram Jansen',    'bram@demo.dkl.test',   true)
ON CONFLICT (email) DO NOTHING;

-- Newsletter subscribers (the demo schedules a newsletter to them).
INSERT INTO gebruikers (naam, email, newsletter_subscribed)
SELECT 'Demolid ' || i, 'lid' || lpad(i::text, 2, '0') || '@demo.dkl.test', true FROM generate_series(1, 50) i
ON CONFLICT (email) DO NOTHING;

INSERT INTO events (name, description, start_time, end_time)
SELECT 'De Koninklijke Loop (demo)', 'Sponsorloop voor het goede doel',
       date_trunc('day', now()) + interval '30 days 9 hours',
       date_trunc('day', now()) + interval '30 days 17 hours'
WHERE NOT EXISTS (SELECT 1 FROM events WHERE name = 'De Koninklijke Loop (demo)');

INSERT INTO email_templates (name, subject, html_content, text_content, variables) VALUES
    ('demo_welcome', 'Welkom bij De Koninklijke Loop, {{naam}}!',
     '<p>Beste {{naam}},</p><p>Leuk dat je meeloopt!</p>',
     'Beste {{naam}}, leuk dat je meeloopt!', '["naam"]')
ON CONFLICT (name) DO NOTHING;

-- A recurring demo job, so the scheduler visibly ticks (every 5 seconds).
INSERT INTO job_schedules (name, cron, job_kind, payload, note) VALUES
    ('demo-ping', '*/5 * * * * *', 'ping', '{"message": "tik van het demo-schema"}', 'demo: shows recurring jobs')
ON CONFLICT (name) DO NOTHING;

-- Walkers of this year's demo event and of last year's (the leaderboards),
-- one of them in test mode (left off every board); Bram and Cor walked
-- the same number of steps this year (they share a rank).
INSERT INTO events (name, description, start_time, end_time, status)
SELECT 'De Koninklijke Loop 2025 (demo)', 'Vorige editie', timestamptz '2025-05-18 09:00 Europe/Amsterdam',
       timestamptz '2025-05-18 17:00 Europe/Amsterdam', 'completed'
WHERE NOT EXISTS (SELECT 1 FROM events WHERE name = 'De Koninklijke Loop 2025 (demo)');

INSERT INTO participants (naam, email, account_type, test_mode)
SELECT v.naam, v.email, 'full', v.test_mode
  FROM (VALUES ('Anna de Vries', 'anna@demo.dkl.test', false),
               ('Bram Jansen', 'bram@demo.dkl.test', false),
               ('Cor Bakker', 'cor@demo.dkl.test', false),
               ('Dewi Visser', 'dewi@demo.dkl.test', false),
               ('Eva Smit', 'eva@demo.dkl.test', false),
               ('Fenna de Boer', 'fenna@demo.dkl.test', false),
               ('Test Loper', 'test@demo.dkl.test', true)) v(naam, email, test_mode)
 WHERE NOT EXISTS (SELECT 1 FROM participants p WHERE p.email = v.email);

INSERT INTO event_registrations (event_id, participant_id, status, steps, total_distance, finish_time)
SELECT e.id, p.id, 'confirmed', v.steps, v.km, CASE WHEN v.finished THEN e.start_time + interval '4 hours' END
  FROM (VALUES ('De Koninklijke Loop (demo)', 'anna@demo.dkl.test', 18250, 13.1, true),
               ('De Koninklijke Loop (demo)', 'bram@demo.dkl.test', 15400, 11.0, true),
               ('De Koninklijke Loop (demo)', 'cor@demo.dkl.test', 15400, 11.4, true),
               ('De Koninklijke Loop (demo)', 'dewi@demo.dkl.test', 9800, 7.0, false),
               ('De Koninklijke Loop (demo)', 'test@demo.dkl.test', 99999, 80.0, true),
               ('De Koninklijke Loop 2025 (demo)', 'eva@demo.dkl.test', 21000, 15.0, true),
               ('De Koninklijke Loop 2025 (demo)', 'dewi@demo.dkl.test', 12000, 8.6, true),
               ('De Koninklijke Loop 2025 (demo)', 'fenna@demo.dkl.test', 7000, 5.0, false))
       v(event, email, steps, km, finished)
  JOIN events e ON e.name = v.event
  JOIN participants p ON p.email = v.email
ON CONFLICT (event_id, participant_id) DO NOTHING;

-- Sessions and refresh tokens: one session expired an hour ago but still
-- active, one that expires 20 seconds into the demo, one live; an expired
-- token. expire_sessions ends them (dklctl jobs --kind expire_sessions).
INSERT INTO sessions (owner_id, access_token, expires_at, is_current, user_agent)
SELECT g.id, v.token, now() + v.expires_in, v.current, 'demo browser'
  FROM gebruikers g
 CROSS JOIN (VALUES ('demo-session-expired', interval '-1 hour', true),
                    ('demo-session-20s', interval '20 seconds', true),
                    ('demo-session-live', interval '7 days', false)) v(token, expires_in, current)
 WHERE g.email = 'anna@demo.dkl.test'
ON CONFLICT (access_token) DO NOTHING;
INSERT INTO refresh_tokens (token, gebruiker_id, expires_at)
SELECT 'demo-refresh-expired', id, now() - interval '2 days' FROM gebruikers WHERE email = 'anna@demo.dkl.test'
ON CONFLICT (token) DO NOTHING;

-- Old rows, so `dklctl retention --dry-run` has something to show: mail
-- logged 400 days ago, notifications read 40 days ago.
INSERT INTO verzonden_emails (recipient_email, subject, status, sent_at)
SELECT 'oud' || i || '@demo.dkl.test', 'Inschrijving 2025 bevestigd', 'sent', now() - interval '400 days' - make_interval(hours => i)
  FROM generate_series(1, 3) i
 WHERE NOT EXISTS (SELECT 1 FROM verzonden_emails WHERE recipient_email = 'oud1@demo.dkl.test');
INSERT INTO notifications (user_id, type, title, message, read, read_at, created_at)
SELECT g.id, 'info', 'Startnummer bekend', 'Je startnummer is 1234.', true, now() - interval '40 days', now() - interval '41 days'
  FROM gebruikers g
 WHERE g.email = 'anna@demo.dkl.test'
   AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.title = 'Startnummer bekend');
