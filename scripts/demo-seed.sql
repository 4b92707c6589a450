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
