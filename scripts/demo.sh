#!/usr/bin/env bash
# Brings up a working local dkl-mail-worker: PostgreSQL (started or installed
# if missing), database `dkl`, migrations, demo data, dkl-worker and
# dkl-scheduler, then shows jobs flowing. Ctrl-C stops everything.
# DKL_DEMO_SECONDS=N stops by itself after N seconds (used by CI).
source "$(dirname "$0")/lib.sh"
require_rust
ensure_postgres
ensure_database dkl
export DATABASE_URL="$PG_SERVER_URL/dkl"
cd "$REPO_ROOT"

log "building (debug)"
cargo build --workspace --locked --bins -q
BIN="$REPO_ROOT/target/debug"

log "migrating database dkl at ${PG_SERVER_URL##*@}"
"$BIN/dklctl" migrate
log "seeding demo data"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -f scripts/demo-seed.sql
psql "$DATABASE_URL" -Atc "select count(*) || ' gebruikers, ' || (select count(*) from events) || ' event(s), ' || (select count(*) from email_templates) || ' template(s)' from gebruikers"

mkdir -p "$DATA_DIR/logs"
SMTP_PORT="${DKL_DEMO_SMTP_PORT:-1025}"
WEB_PORT="${DKL_DEMO_MAIL_WEB_PORT:-1080}"
MAILDEV=""
if start_maildev "$SMTP_PORT" "$WEB_PORT"; then
  MAIL_URL="http://127.0.0.1:$WEB_PORT"
else
  MAIL_URL="(no mail catcher; see .data/logs/maildev.log)"
fi
export DKL_SMTP_DEFAULT_PORT="$SMTP_PORT"
log "loading the mail templates (dklctl templates sync)"
"$BIN/dklctl" templates sync >/dev/null

IMAP_PORT="${DKL_DEMO_IMAP_PORT:-1143}"
MAILS="$REPO_ROOT/worker/tests/fixtures/mail"
log "starting a local IMAP server (Dovecot) on 127.0.0.1:$IMAP_PORT with two accounts and real messages"
"$BIN/dklctl" demo imap-server --port "$IMAP_PORT" \
  --user info@demo.dkl.test:info-demo --user inschrijving@demo.dkl.test:inschrijving-demo \
  --deliver "info@demo.dkl.test:$MAILS/mailparser-thirdparty-019-nested-mixed-alt-related.eml" \
  --deliver "info@demo.dkl.test:$MAILS/mailparser-legacy-012-cp1252-qp.eml" \
  --deliver "inschrijving@demo.dkl.test:$MAILS/mailparser-malformed-014-missing-close-boundary.eml" \
  --deliver "inschrijving@demo.dkl.test:$MAILS/cpython-msg_16-dsn-mailing-list.eml" \
  >"$DATA_DIR/logs/dovecot.log" 2>&1 &
IMAP=$!
trap 'kill -TERM "$IMAP" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q '^ready' "$DATA_DIR/logs/dovecot.log" 2>/dev/null && break
  kill -0 "$IMAP" 2>/dev/null || { cat "$DATA_DIR/logs/dovecot.log" >&2; echo "the IMAP server did not start" >&2; exit 1; }
  sleep 0.2
done
export DKL_IMAP_ACCOUNTS=info,inschrijving
export DKL_IMAP_INFO_HOST=127.0.0.1 DKL_IMAP_INFO_PORT="$IMAP_PORT" DKL_IMAP_INFO_TLS=plain
export DKL_IMAP_INFO_USER=info@demo.dkl.test DKL_IMAP_INFO_PASSWORD=info-demo DKL_IMAP_INFO_AFTER_IMPORT=seen
export DKL_IMAP_INSCHRIJVING_HOST=127.0.0.1 DKL_IMAP_INSCHRIJVING_PORT="$IMAP_PORT" DKL_IMAP_INSCHRIJVING_TLS=plain
export DKL_IMAP_INSCHRIJVING_USER=inschrijving@demo.dkl.test DKL_IMAP_INSCHRIJVING_PASSWORD=inschrijving-demo
"$BIN/dklctl" accounts check

# The operator dashboard: a fresh admin token per demo (yours if set).
export DKL_DASHBOARD_TOKEN="${DKL_DASHBOARD_TOKEN:-demo-$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')}"
DASHBOARD_URL="http://${DKL_HTTP_ADDR:-127.0.0.1:9464}/dashboard"
printf '%s\n' "$DKL_DASHBOARD_TOKEN" >"$DATA_DIR/dashboard-token.txt"
log "starting dkl-worker and dkl-scheduler (logs in .data/logs/)"
DKL_RETRY_BASE_MS=1000 "$BIN/dkl-worker" >"$DATA_DIR/logs/worker.log" 2>&1 &
WORKER=$!
"$BIN/dkl-scheduler" >"$DATA_DIR/logs/scheduler.log" 2>&1 &
SCHEDULER=$!
stop() {
  log "stopping (SIGTERM: running jobs finish or are put back)"
  kill -TERM "$WORKER" "$SCHEDULER" 2>/dev/null || true
  wait "$WORKER" "$SCHEDULER" 2>/dev/null || true
  [ -n "$MAILDEV" ] && kill "$MAILDEV" 2>/dev/null || true
  kill -TERM "$IMAP" 2>/dev/null || true
  wait "$IMAP" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 0' INT TERM

for _ in $(seq 1 100); do
  grep -q "serving the operator dashboard" "$DATA_DIR/logs/worker.log" 2>/dev/null && break
  sleep 0.2
done
log "operator dashboard: $DASHBOARD_URL — log in with the token $DKL_DASHBOARD_TOKEN (also in .data/dashboard-token.txt)"
log "enqueueing demo jobs"
"$BIN/dklctl" ping "hallo van de demo" >/dev/null
"$BIN/dklctl" ping --fail-attempts 2 "lukt pas bij de derde poging (backoff)" >/dev/null
"$BIN/dklctl" ping --at "$(date -u -d '+8 seconds' +%Y-%m-%dT%H:%M:%SZ)" "gepland over 8 seconden" >/dev/null
"$BIN/dklctl" enqueue ping --payload '{"permanent_error":"demo: template bestaat niet"}' >/dev/null
# a kind no worker knows, as a web application of a newer version might write it
psql "$DATABASE_URL" -q -c "INSERT INTO apalis.jobs (id, job_type, queue, job, max_attempts) VALUES (apalis.generate_ulid(), 'make_thumbnail', 'default', convert_to('{}', 'UTF8'), 5)"
long=$("$BIN/dklctl" ping --sleep-ms 60000 "lange taak die we annuleren")
log "the web application asks for two mails, as it does after a contact form (SQL function dkl_send_email)"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<'SQL'
BEGIN;
-- (the application's own INSERT of the contact message would be here)
SELECT dkl_send_email('contact_email', 'anna@demo.dkl.test',
       jsonb_build_object('naam', 'Anna de Vries', 'ontvangen_op', now(), 'bericht', 'Kan ik mijn startnummer nog wijzigen?'),
       'demo-contact-' || extract(epoch FROM now())::bigint);
SELECT dkl_send_email('contact_admin_email', 'beheer@demo.dkl.test',
       jsonb_build_object('naam', 'Anna de Vries', 'email', 'anna@demo.dkl.test', 'ontvangen_op', now(),
                          'bericht', 'Kan ik mijn startnummer nog wijzigen?'),
       'demo-contact-admin-' || extract(epoch FROM now())::bigint, 'admin');
COMMIT;
SQL
log "an auto-response rule answers mail to info@ (auto_responses), and a mail goes to an address that no longer exists"
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO auto_responses (name, description, account_type, template_id, priority)
SELECT 'demo-ontvangstbevestiging', 'Bevestigt elke mail aan info@ (één keer per afzender per week)', 'info', id, 100
  FROM email_templates WHERE name = 'auto_response'
ON CONFLICT (name) DO NOTHING;
SELECT dkl_send_email('contact_email', 'oud-adres@demo.dkl.test',
       jsonb_build_object('naam', 'Oud Adres', 'ontvangen_op', now(), 'bericht', 'Dit adres bestaat niet meer.'),
       'demo-oud-adres-' || extract(epoch FROM now())::bigint);
SQL
BOUNCES="$REPO_ROOT/worker/tests/fixtures/bounces/sisimai"
NL_SECS="${DKL_DEMO_NEWSLETTER_SECS:-60}"
log "an admin schedules a newsletter to the demo's subscribers, $NL_SECS seconds from now (plain SQL)"
NL=$(psql "$DATABASE_URL" -qAt -v ON_ERROR_STOP=1 -c "
INSERT INTO newsletters (title, content, html_content, status, scheduled_send_time)
VALUES ('Nieuws van De Koninklijke Loop (demo)',
        'De inschrijving voor De Koninklijke Loop 2027 is geopend. Loop je mee?',
        '<p>De inschrijving voor <b>De Koninklijke Loop 2027</b> is geopend.</p><p>Loop je mee? Elke stap steunt het goede doel.</p>',
        'scheduled', now() + make_interval(secs => $NL_SECS))
RETURNING id")
log "upkeep now instead of at its schedule: leaderboards, session expiry (and what retention would delete)"
"$BIN/dklctl" run-now leaderboard-recompute >/dev/null
"$BIN/dklctl" run-now session-expiry >/dev/null
"$BIN/dklctl" retention --dry-run | tee "$DATA_DIR/retention-dry-run.txt"
log "an admin schedules a job for 10 seconds from now (a scheduled_jobs row)"
"$BIN/dklctl" schedule ping --at "$(date -u -d '+10 seconds' +%Y-%m-%dT%H:%M:%SZ)" \
  --payload '{"message":"door een beheerder ingepland"}' --note "demo: admin row" --created-by "demo-admin" >/dev/null

end=$(( $(date +%s) + ${DKL_DEMO_SECONDS:-1000000000} ))
round=0
APPENDED=""
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 2
  round=$((round + 1))
  [ "$round" -eq 3 ] && "$BIN/dklctl" cancel "$long" >/dev/null
  if [ "$round" -eq 4 ]; then
    "$BIN/dklctl" demo append --account info "$MAILS/mailparser-thirdparty-014-mailing-list-alternative.eml" >/dev/null
    APPENDED="a new mail reached info's INBOX at $(date -u +%H:%M:%S) UTC (IMAP APPEND); IDLE brings it in within seconds"
  fi
  if [ "$round" -eq 5 ]; then
    # A person writes to info@ (answered once), then her out-of-office
    # reply arrives (a real one, RFC 3834: never answered).
    printf 'Return-Path: <anna@demo.dkl.test>\r\nFrom: Anna de Vries <anna@demo.dkl.test>\r\nTo: DKL <info@demo.dkl.test>\r\nSubject: Vraag over mijn startnummer\r\nMessage-ID: <demo-%s@demo.dkl.test>\r\nDate: %s\r\n\r\nKan ik mijn startnummer nog wijzigen?\r\n' \
      "$(date +%s)" "$(date -R)" >"$DATA_DIR/demo-person.eml"
    "$BIN/dklctl" demo append --account info "$DATA_DIR/demo-person.eml" >/dev/null
    "$BIN/dklctl" demo append --account info "$BOUNCES/rfc3834-01.eml" >/dev/null
  fi
  if [ "$round" -eq 6 ]; then
    # The mail to oud-adres@ bounces: a real Postfix DSN, with our
    # Message-ID and that address in it.
    MID=$(psql "$DATABASE_URL" -qAt -c "SELECT message_id FROM verzonden_emails WHERE recipient_email = 'oud-adres@demo.dkl.test' AND message_id IS NOT NULL ORDER BY sent_at DESC LIMIT 1")
    if [ -n "$MID" ]; then
      sed -e "s/kijitora@example.co.jp/oud-adres@demo.dkl.test/g" \
          -e "s/<A8F82EDD-E518-4F5C-8C70-BC4EFF24AB9F@example.ne.jp>/$MID/" \
          "$BOUNCES/lhost-postfix-04.eml" >"$DATA_DIR/demo-bounce.eml"
      "$BIN/dklctl" demo append --account info "$DATA_DIR/demo-bounce.eml" >/dev/null
    fi
  fi
  if [ "$round" -eq 3 ]; then
    # Dewi walks on (the web application records steps); the next
    # recompute rebuilds only the boards her registration is on.
    psql "$DATABASE_URL" -q -c "UPDATE event_registrations r SET steps = steps + 9000 FROM participants p, events e WHERE p.id = r.participant_id AND e.id = r.event_id AND p.email = 'dewi@demo.dkl.test' AND e.name = 'De Koninklijke Loop (demo)'"
    "$BIN/dklctl" run-now leaderboard-recompute >/dev/null
  fi
  # Once the 20-second session has expired, end it without waiting for
  # the 15-minute schedule.
  if [ -z "${EXPIRED_RUN:-}" ] && [ "$(psql "$DATABASE_URL" -qAt -c "SELECT count(*) FROM sessions WHERE access_token = 'demo-session-20s' AND is_active AND expires_at <= now()")" = 1 ]; then
    "$BIN/dklctl" run-now session-expiry >/dev/null
    EXPIRED_RUN=1
  fi
  [ $((round % 5)) -eq 0 ] && "$BIN/dklctl" ping "nog een ping (ronde $round)" >/dev/null
  kill -0 "$WORKER" 2>/dev/null || { echo "dkl-worker exited; see .data/logs/worker.log" >&2; exit 1; }
  kill -0 "$SCHEDULER" 2>/dev/null || { echo "dkl-scheduler exited; see .data/logs/scheduler.log" >&2; exit 1; }
  printf '\033[2J\033[H'
  echo "dkl-mail-worker demo — $(date -u +%H:%M:%S) UTC — Ctrl-C to stop — logs: .data/logs/ — metrics: http://127.0.0.1:9464/metrics"
  echo "mail sent by the demo: open $MAIL_URL"
  echo "dashboard: $DASHBOARD_URL — token: $DKL_DASHBOARD_TOKEN"
  echo
  "$BIN/dklctl" status --recent 12
  echo
  echo "MAIL OUT (verzonden_emails, newest first)"
  "$BIN/dklctl" mail log --limit 5
  echo
  echo "MAIL IN (incoming_emails, newest first) ${APPENDED:-}"
  "$BIN/dklctl" mail inbox --limit 6
  echo
  echo "BOUNCES (dklctl bounces; dklctl suppressions; why a mail got no answer: dklctl mail show ID)"
  "$BIN/dklctl" bounces --limit 3
  echo
  echo "NEWSLETTER $NL (dklctl newsletter status; read it, and unsubscribe with its link, in $MAIL_URL)"
  "$BIN/dklctl" newsletter status "$NL" --once
  echo
  echo "UPKEEP: sessions ended (dklctl jobs --kind expire_sessions); all-time leaderboard (dklctl leaderboard show all); retention dry run in .data/retention-dry-run.txt"
  "$BIN/dklctl" jobs --kind expire_sessions --limit 2
  "$BIN/dklctl" leaderboard show all --top 5
done
