//! Newsletters against a real PostgreSQL and a real SMTP server (postfix's
//! smtp-sink): the three ways to schedule, exactly once per recipient (also
//! through kill -9, counted at the server), two workers on one newsletter,
//! pause, resume, cancel, 5xx and 4xx, suppressions, the list headers, and
//! the one-click unsubscribe pages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dkl_shared::config::Config;
use dkl_tests::{fast_config, migrate, wait_for};
use dkl_worker::smtp::sink::SmtpSink;
use dkl_worker::store::email_templates;
use dkl_worker::templates::files;
use sqlx::PgPool;
use uuid::Uuid;

const T: Duration = Duration::from_secs(60);

fn config(port: u16, extra: &[(&str, &str)]) -> Config {
    let mut vars: BTreeMap<String, String> = [
        ("DKL_SMTP_DEFAULT_PORT".to_string(), port.to_string()),
        (
            "DKL_PUBLIC_BASE_URL".to_string(),
            "https://dkl.example/mail".to_string(),
        ),
        ("DKL_UNSUBSCRIBE_SECRET".to_string(), "s".repeat(40)),
    ]
    .into();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

async fn sync_templates(pool: &PgPool) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let mut conn = pool.acquire().await.unwrap();
    for f in files::load_dir(&dir).unwrap() {
        email_templates::sync(&mut conn, &f.template, &f.variables, false)
            .await
            .unwrap();
    }
}

fn start_worker(pool: &PgPool, config: &Config) -> dkl_tests::RunningRuntime {
    let registry = dkl_worker::handlers::registry(pool, config);
    dkl_tests::start(pool, registry, fast_config())
}

/// `n` active subscribers `<prefix><i>@example.org`.
async fn subscribers(pool: &PgPool, prefix: &str, n: i64) {
    sqlx::query(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         SELECT 'Lid ' || i, $1 || i || '@example.org', true FROM generate_series(1, $2) i",
    )
    .bind(prefix)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

async fn draft(pool: &PgPool, title: &str) -> Uuid {
    dkl_worker::store::newsletters::create(
        pool,
        title,
        "Beste lezer,\n\nDe inschrijving is open.",
        Some("<p>De inschrijving voor <b>2027</b> is open.</p>"),
    )
    .await
    .unwrap()
}

async fn scalar_i64(pool: &PgPool, sql: &'static str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn status(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM newsletters WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_newsletter(pool: &PgPool, id: Uuid, want: &str, timeout: Duration) {
    wait_for(timeout, &format!("newsletter {want}"), || async {
        (status(pool, id).await == want).then_some(())
    })
    .await;
}

async fn deliveries(pool: &PgPool, id: Uuid) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM newsletter_deliveries WHERE newsletter_id = $1 GROUP BY status",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Recipients of every complete message the server received, with how many
/// times each got one.
fn received(messages: &[String]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for m in messages {
        let parsed = mail_parser::MessageParser::default().parse(m.as_bytes());
        let Some(parsed) = parsed else { continue };
        // A message cut off when its sender died was never accepted: a
        // complete one ends with its multipart's closing boundary.
        let last = m.trim_end().lines().last().unwrap_or("");
        if !(last.starts_with("--") && last.ends_with("--")) {
            continue;
        }
        if let Some(to) = parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
        {
            *seen.entry(to.to_lowercase()).or_insert(0) += 1;
        }
    }
    seen
}

fn header<'a>(message: &'a mail_parser::Message<'a>, name: &str) -> Option<String> {
    message
        .header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[sqlx::test(migrations = false)]
async fn scheduled_by_sql_goes_once_to_each_subscriber_with_list_headers(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    subscribers(&pool, "lid", 25).await;
    // Not recipients: inactive, not subscribed, suppressed (bulk).
    sqlx::raw_sql(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed, is_actief) VALUES
            ('Weg', 'weg@example.org', true, false),
            ('Nee', 'nee@example.org', false, true),
            ('Stil', 'Stil@Example.org', true, true);
         INSERT INTO email_suppressions (address, scope, reason) VALUES ('stil@example.org', 'bulk', 'unsubscribe');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let config = config(sink.port, &[]);
    let id = draft(&pool, "Nieuws van De Koninklijke Loop").await;
    let rt = start_worker(&pool, &config);
    // What an admin writes.
    sqlx::query("UPDATE newsletters SET status = 'scheduled', scheduled_send_time = now() + interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    // Someone who subscribes once sending has started does not get it.
    wait_for(T, "sending started", || async {
        (status(&pool, id).await != "scheduled").then_some(())
    })
    .await;
    subscribers(&pool, "laat", 1).await;
    wait_newsletter(&pool, id, "sent", T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rt.stop().await;

    let messages = sink.stop_and_collect();
    let got = received(&messages);
    assert_eq!(got.len(), 25, "{got:?}");
    assert!(got.values().all(|n| *n == 1), "each once: {got:?}");
    assert!(got.keys().all(|a| a.starts_with("lid")), "{got:?}");
    assert_eq!(
        deliveries(&pool, id).await,
        BTreeMap::from([("sent".into(), 25)])
    );
    let (total, sent_at_set): (i32, bool) = sqlx::query_as(
        "SELECT recipients_total, sent_at IS NOT NULL FROM newsletters WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((total, sent_at_set), (25, true));
    let logged = scalar_i64(
        &pool,
        "SELECT count(*) FROM verzonden_emails WHERE newsletter_id = $1 AND status = 'sent' AND mail_kind = 'newsletter' AND smtp_code = 250",
        id,
    )
    .await;
    assert_eq!(logged, 25);

    // The headers of RFC 2369, 2919 and 8058, and the body.
    let raw = messages
        .iter()
        .find(|m| m.contains("lid7@example.org"))
        .unwrap();
    let m = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .unwrap();
    let unsubscribe = header(&m, "List-Unsubscribe").expect("List-Unsubscribe");
    let (https, mailto) = unsubscribe.split_once(", ").expect("two URIs");
    assert!(
        https.starts_with("<https://dkl.example/mail/unsubscribe/") && https.ends_with('>'),
        "{unsubscribe}"
    );
    assert!(
        mailto.starts_with("<mailto:") && mailto.contains("?subject=unsubscribe"),
        "{unsubscribe}"
    );
    assert_eq!(
        header(&m, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let list_id = header(&m, "List-Id").unwrap();
    assert!(
        list_id.ends_with("<nieuwsbrief.dekoninklijkeloop.nl>"),
        "{list_id}"
    );
    assert_eq!(
        header(&m, "Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert_eq!(m.subject(), Some("Nieuws van De Koninklijke Loop"));
    let html = m.body_html(0).unwrap();
    assert!(html.contains("Beste Lid 7"), "{html}");
    assert!(html.contains("<b>2027</b>"), "the admin's HTML as written");
    let link = &https[1..https.len() - 1];
    assert!(html.contains(link), "the visible link is the header's link");
    assert!(m.body_text(0).unwrap().contains(link));

    // A sent newsletter is not sent again.
    let err = sqlx::query("UPDATE newsletters SET status = 'scheduled' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stays sent"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn transitions_that_make_no_sense_are_refused(pool: PgPool) {
    migrate(&pool).await;
    let id = draft(&pool, "Regels").await;
    let try_sql = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).bind(id).execute(&pool).await }
    };
    let err = try_sql("UPDATE newsletters SET status = 'sending' WHERE id = $1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("set status = 'scheduled'"),
        "{err}"
    );
    let err = try_sql("UPDATE newsletters SET status = 'sent' WHERE id = $1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot go from draft to sent"),
        "{err}"
    );
    let err = try_sql("UPDATE newsletters SET status = 'verstuurd' WHERE id = $1")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot go from draft to verstuurd")
            || err.to_string().contains("newsletters_status_check"),
        "{err}"
    );
    let err =
        sqlx::query("INSERT INTO newsletters (title, content, status) VALUES ('x', 'y', 'sent')")
            .execute(&pool)
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("starts as draft or scheduled"),
        "{err}"
    );
    // Scheduling and unscheduling are fine; content can change until sending starts.
    try_sql("UPDATE newsletters SET status = 'scheduled', scheduled_send_time = now() + interval '1 day' WHERE id = $1").await.unwrap();
    try_sql("UPDATE newsletters SET content = 'nieuw' WHERE id = $1")
        .await
        .unwrap();
    try_sql("UPDATE newsletters SET status = 'draft' WHERE id = $1")
        .await
        .unwrap();
    // Once sending has started, the content is fixed.
    dkl_worker::store::newsletters::start(&pool, id)
        .await
        .unwrap();
    assert_eq!(status(&pool, id).await, "sending");
    let err = try_sql("UPDATE newsletters SET html_content = '<p>anders</p>' WHERE id = $1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("content cannot change"), "{err}");
    try_sql("UPDATE newsletters SET status = 'cancelled' WHERE id = $1")
        .await
        .unwrap();
    let err = try_sql("UPDATE newsletters SET status = 'scheduled' WHERE id = $1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stays cancelled"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn scheduled_by_an_admin_row_sends_once(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    dkl_tests::disable_default_schedules(&pool).await;
    subscribers(&pool, "rij", 12).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let id = draft(&pool, "Via een rij").await;
    sqlx::query(
        "INSERT INTO scheduled_jobs (job_kind, payload, run_at, created_by)
         VALUES ('send_newsletter', jsonb_build_object('newsletter_id', $1::uuid), now() + interval '1 second', 'test-admin')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let scheduler = dkl_tests::start_scheduler(&pool);
    let rt = start_worker(&pool, &config(sink.port, &[]));
    wait_newsletter(&pool, id, "sent", T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    rt.stop().await;
    scheduler.stop().await;
    let got = received(&sink.stop_and_collect());
    assert_eq!(got.len(), 12, "{got:?}");
    assert!(got.values().all(|n| *n == 1), "{got:?}");
}

#[sqlx::test(migrations = false)]
async fn two_workers_share_one_newsletter_and_send_each_once(pool: PgPool) {
    use dkl_tests::process::{self, log_path, spawn_logged};
    migrate(&pool).await;
    sync_templates(&pool).await;
    subscribers(&pool, "twee", 3000).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let id = draft(&pool, "Twee werkers").await;
    let url = dkl_tests::url_of(&pool).await;
    // Two worker processes (the real binary), each with its own senders.
    let worker = |name: &str| {
        let mut cmd = process::command(env!("CARGO_BIN_EXE_dkl-worker"), &url);
        cmd.env("DKL_SMTP_DEFAULT_PORT", sink.port.to_string())
            .env("DKL_UNSUBSCRIBE_SECRET", "t".repeat(40));
        spawn_logged(cmd, &log_path(name))
    };
    let _a = worker("newsletter-two-a");
    let _b = worker("newsletter-two-b");
    dkl_worker::store::newsletters::schedule(&pool, id, None)
        .await
        .unwrap();
    wait_newsletter(&pool, id, "sent", T).await;
    // While both live: the deliveries were sent by senders of both processes.
    let processes = scalar_i64(
        &pool,
        "SELECT count(DISTINCT s.worker) FROM newsletter_deliveries d
           JOIN newsletter_senders s ON s.id = d.sender_id
          WHERE d.newsletter_id = $1 AND d.status = 'sent'",
        id,
    )
    .await;
    assert_eq!(processes, 2, "both worker processes sent part of it");
    let got = received(&sink.stop_and_collect());
    assert_eq!(got.len(), 3000);
    assert!(got.values().all(|n| *n == 1), "duplicates");
}

#[sqlx::test(migrations = false)]
async fn pause_stops_within_two_seconds_resume_goes_on_cancel_stops_for_good(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    subscribers(&pool, "pauze", 400).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    // 100 messages a second, so the send takes seconds.
    let config = config(sink.port, &[("DKL_SMTP_DEFAULT_RATE_PER_SECOND", "100")]);
    let id = draft(&pool, "Pauze").await;
    let rt = start_worker(&pool, &config);
    dkl_worker::store::newsletters::schedule(&pool, id, None)
        .await
        .unwrap();
    let sent = |pool: PgPool| async move {
        scalar_i64(&pool, "SELECT count(*) FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'sent'", id).await
    };
    wait_for(T, "some sent", || async {
        (sent(pool.clone()).await >= 50).then_some(())
    })
    .await;
    sqlx::query("UPDATE newsletters SET status = 'paused' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_pause = sent(pool.clone()).await;
    let on_wire_at_pause = sink.messages().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sent(pool.clone()).await,
        at_pause,
        "nothing sent after 2 s of pause"
    );
    assert_eq!(
        sink.messages().len(),
        on_wire_at_pause,
        "nothing reached the server"
    );
    assert!(at_pause < 400, "paused mid-send ({at_pause})");
    let d = deliveries(&pool, id).await;
    assert_eq!(
        d.get("claimed"),
        None,
        "claimed deliveries went back: {d:?}"
    );
    assert_eq!(d.get("sending"), None, "{d:?}");
    // Resume: goes on where it stopped.
    dkl_worker::store::newsletters::set_status(
        &pool,
        id,
        dkl_worker::store::newsletters::NewsletterStatus::Sending,
    )
    .await
    .unwrap();
    wait_newsletter(&pool, id, "sent", T).await;

    // Cancel mid-send: the rest is cancelled, never sent.
    let other = draft(&pool, "Afgelast").await;
    dkl_worker::store::newsletters::schedule(&pool, other, None)
        .await
        .unwrap();
    let sent_other = |pool: PgPool| async move {
        scalar_i64(&pool, "SELECT count(*) FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'sent'", other).await
    };
    wait_for(T, "some sent", || async {
        (sent_other(pool.clone()).await >= 30).then_some(())
    })
    .await;
    sqlx::query("UPDATE newsletters SET status = 'cancelled' WHERE id = $1")
        .bind(other)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    rt.stop().await;
    let d = deliveries(&pool, other).await;
    let sent_n = d.get("sent").copied().unwrap_or(0);
    assert!(d.get("cancelled").copied().unwrap_or(0) > 0, "{d:?}");
    assert_eq!(
        sent_n + d.get("cancelled").copied().unwrap_or(0),
        400,
        "{d:?}"
    );
    assert_eq!(status(&pool, other).await, "cancelled");

    let got = received(&sink.stop_and_collect());
    assert!(got.values().all(|n| *n == 1 || *n == 2), "{got:?}");
    // Each address got the first newsletter once and the second at most once.
    assert_eq!(got.len(), 400);
    let twice = got.values().filter(|n| **n == 2).count() as i64;
    assert_eq!(
        twice, sent_n,
        "the second newsletter reached exactly its sent recipients"
    );
}

#[sqlx::test(migrations = false)]
async fn refusals_fail_retries_back_off_and_suppressed_addresses_are_skipped(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    subscribers(&pool, "vijf", 6).await;
    // 5xx at RCPT for every recipient of this server.
    let refusing = SmtpSink::start(&["-f", "rcpt"]).expect("start smtp-sink");
    let id = draft(&pool, "Geweigerd").await;
    let rt = start_worker(&pool, &config(refusing.port, &[]));
    dkl_worker::store::newsletters::schedule(&pool, id, None)
        .await
        .unwrap();
    wait_newsletter(&pool, id, "sent", T).await;
    rt.stop().await;
    assert_eq!(
        deliveries(&pool, id).await,
        BTreeMap::from([("failed".into(), 6)])
    );
    let (error, code): (String, i32) = sqlx::query_as(
        "SELECT error, smtp_code FROM newsletter_deliveries WHERE newsletter_id = $1 LIMIT 1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(code >= 500, "{code} {error}");
    let logged = scalar_i64(&pool, "SELECT count(*) FROM verzonden_emails WHERE newsletter_id = $1 AND status = 'failed' AND error_message IS NOT NULL", id).await;
    assert_eq!(logged, 6);

    // 4xx: tried again after the backoff, failed after the last attempt.
    let busy = SmtpSink::start(&["-r", "rcpt"]).expect("start smtp-sink");
    let id = draft(&pool, "Later").await;
    let retrying = config(
        busy.port,
        &[
            ("DKL_NEWSLETTER_MAX_ATTEMPTS", "2"),
            ("DKL_NEWSLETTER_RETRY_SECS", "1"),
        ],
    );
    let rt = start_worker(&pool, &retrying);
    dkl_worker::store::newsletters::schedule(&pool, id, None)
        .await
        .unwrap();
    wait_newsletter(&pool, id, "sent", T).await;
    rt.stop().await;
    let (attempts, error): (i32, String) = sqlx::query_as(
        "SELECT attempts, error FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'failed' LIMIT 1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(attempts, 2);
    assert!(error.starts_with("gave up after 2 attempts"), "{error}");
    assert_eq!(
        deliveries(&pool, id).await,
        BTreeMap::from([("failed".into(), 6)])
    );

    // Suppressed after the recipients were fixed: skipped, with the reason.
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let id = draft(&pool, "Overgeslagen").await;
    dkl_worker::store::newsletters::start(&pool, id)
        .await
        .unwrap();
    dkl_worker::store::suppressions::add(&pool, "vijf3@example.org", "all", "hard_bounce", "test")
        .await
        .unwrap();
    dkl_worker::store::newsletters::enqueue_lanes(&pool, id)
        .await
        .unwrap();
    let rt = start_worker(&pool, &config(sink.port, &[]));
    wait_newsletter(&pool, id, "sent", T).await;
    rt.stop().await;
    let d = deliveries(&pool, id).await;
    assert_eq!(
        d,
        BTreeMap::from([("sent".into(), 5), ("skipped".into(), 1)])
    );
    let got = received(&sink.stop_and_collect());
    assert!(!got.contains_key("vijf3@example.org"));
    let why: String = sqlx::query_scalar(
        "SELECT error FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'skipped'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(why.contains("hard_bounce"), "{why}");
}

/// A raw HTTP/1.1 request; returns (status, body).
async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

#[sqlx::test(migrations = false)]
async fn one_click_post_unsubscribes_get_never_does_forged_tokens_change_nothing(pool: PgPool) {
    use dkl_worker::newsletter::token::{Subject, TokenKey};
    migrate(&pool).await;
    subscribers(&pool, "klik", 2).await;
    let (anna, bert): (Uuid, Uuid) = sqlx::query_as(
        "SELECT (SELECT id FROM gebruikers WHERE email = 'klik1@example.org'), (SELECT id FROM gebruikers WHERE email = 'klik2@example.org')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // No secret configured: one is made and kept in the database.
    let pages = std::sync::Arc::new(dkl_worker::unsubscribe::Unsubscribe {
        pool: pool.clone(),
        keys: TokenKey::new(None),
    });
    let signer = TokenKey::new(None).signer(&pool).await.unwrap().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        async move { axum::serve(listener, dkl_worker::unsubscribe::router(pages)).await },
    );
    let subscribed = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT newsletter_subscribed FROM gebruikers WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let token = signer.sign_now(&Subject::Gebruiker(anna));
    let path = format!("/unsubscribe/{token}");

    // GET shows a button and changes nothing (mail scanners follow links).
    let (code, body) = http(port, "GET", &path, "").await;
    assert_eq!(code, 200);
    assert!(body.contains("<form method=\"post\""), "{body}");
    assert!(subscribed(anna).await, "GET must not unsubscribe");

    // Forged (Bert's id with Anna's signature), altered, truncated.
    let (_, tag) = token.split_once('.').unwrap();
    let bert_token = signer.sign_now(&Subject::Gebruiker(bert));
    let (bert_payload, _) = bert_token.split_once('.').unwrap();
    let forged = format!("/unsubscribe/{bert_payload}.{tag}");
    let (code, _) = http(port, "POST", &forged, "List-Unsubscribe=One-Click").await;
    assert_eq!(code, 403);
    let (code, body) = http(
        port,
        "POST",
        &format!("/unsubscribe/{}", &token[..token.len() - 4]),
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("incomplete or damaged"), "{body}");
    assert!(
        subscribed(anna).await && subscribed(bert).await,
        "nothing changed"
    );
    let suppressed = scalar_i64(
        &pool,
        "SELECT count(*) FROM email_suppressions WHERE $1::uuid IS NOT NULL",
        anna,
    )
    .await;
    assert_eq!(suppressed, 0);

    // One click: unsubscribed, suppressed for bulk mail only, 200, no redirect.
    let (code, body) = http(port, "POST", &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("afgemeld"), "{body}");
    assert!(!subscribed(anna).await);
    assert!(subscribed(bert).await, "only Anna");
    let (scope, reason): (String, String) = sqlx::query_as(
        "SELECT scope, reason FROM email_suppressions WHERE address = 'klik1@example.org'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((scope.as_str(), reason.as_str()), ("bulk", "unsubscribe"));
    // Clicking again is fine.
    assert_eq!(http(port, "POST", &path, "").await.0, 200);
}

/// Three kill -9s of the real worker binary during a 10,000-recipient
/// newsletter, a fresh worker after each: no address gets two copies at the
/// server, every delivery ends sent, failed or unknown, and unknown ones are
/// no more than the messages that can be in flight at a kill.
#[sqlx::test(migrations = false)]
async fn kill_9_three_times_during_a_10000_recipient_newsletter_sends_nobody_two(pool: PgPool) {
    use dkl_tests::process::{self, log_path, signal, spawn_logged};
    migrate(&pool).await;
    sync_templates(&pool).await;
    const N: i64 = 10_000;
    const POOL: i64 = 4;
    subscribers(&pool, "k", N).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let url = dkl_tests::url_of(&pool).await;
    let worker = || {
        let mut cmd = process::command(env!("CARGO_BIN_EXE_dkl-worker"), &url);
        cmd.env("DKL_SMTP_DEFAULT_PORT", sink.port.to_string())
            .env("DKL_SMTP_DEFAULT_POOL_SIZE", POOL.to_string())
            .env("DKL_UNSUBSCRIBE_SECRET", "k".repeat(40));
        cmd
    };
    let id = draft(&pool, "Kill -9").await;
    dkl_worker::store::newsletters::schedule(&pool, id, None)
        .await
        .unwrap();
    let sent = |pool: PgPool| async move {
        scalar_i64(&pool, "SELECT count(*) FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'sent'", id).await
    };
    let mut unknown_after = Vec::new();
    for (round, at_least) in [1500, 4000, 6500].into_iter().enumerate() {
        let mut child = spawn_logged(worker(), &log_path(&format!("newsletter-kill9-{round}")));
        wait_for(
            Duration::from_secs(120),
            "deliveries being sent",
            || async { (sent(pool.clone()).await >= at_least).then_some(()) },
        )
        .await;
        signal(&child.0, libc::SIGKILL);
        let _ = child.0.wait();
        let d = deliveries(&pool, id).await;
        assert!(
            d.get("sent").copied().unwrap_or(0) < N,
            "round {round}: killed mid-send: {d:?}"
        );
        unknown_after.push(d.get("sending").copied().unwrap_or(0));
    }
    let _last = spawn_logged(worker(), &log_path("newsletter-kill9-last"));
    wait_newsletter(&pool, id, "sent", Duration::from_secs(180)).await;
    drop(_last);
    let d = deliveries(&pool, id).await;
    let sent_n = d.get("sent").copied().unwrap_or(0);
    let failed = d.get("failed").copied().unwrap_or(0);
    let unknown = d.get("unknown").copied().unwrap_or(0);
    assert_eq!(sent_n + failed + unknown, N, "every delivery final: {d:?}");
    // In flight at a kill, per SMTP connection: the message on the wire,
    // the next one already marked, and the previous one's outcome not yet
    // committed.
    assert!(
        unknown <= 3 * 3 * POOL,
        "unknown {unknown} > what can be in flight at three kills ({d:?}; sending at the kills {unknown_after:?})"
    );
    let messages = sink.stop_and_collect();
    let got = received(&messages);
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "duplicates at the server: {twice:?}");
    // Every delivery recorded as sent reached the server; the server got
    // nothing that is not sent or unknown.
    let sent_addresses: BTreeSet<String> = sqlx::query_scalar(
        "SELECT email FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'sent'",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let at_server: BTreeSet<String> = got.keys().cloned().collect();
    assert!(
        sent_addresses.is_subset(&at_server),
        "a `sent` delivery never reached the server"
    );
    assert!(at_server.len() as i64 <= sent_n + unknown);
    eprintln!(
        "kill -9 ×3 during {N}: sent {sent_n}, failed {failed}, unknown {unknown}, at the server {}, duplicates 0",
        at_server.len()
    );
}

#[sqlx::test(migrations = false)]
async fn unscheduling_stops_a_scheduled_newsletter(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    subscribers(&pool, "terug", 5).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let id = draft(&pool, "Toch niet").await;
    let rt = start_worker(&pool, &config(sink.port, &[]));
    sqlx::query("UPDATE newsletters SET status = 'scheduled', scheduled_send_time = now() + interval '2 seconds' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let lanes = scalar_i64(&pool, "SELECT count(*) FROM apalis.jobs WHERE job_type = 'send_newsletter' AND convert_from(job, 'UTF8')::jsonb ->> 'newsletter_id' = $1::text", id).await;
    assert_eq!(lanes, 4, "four lanes enqueued by scheduling");
    sqlx::query("UPDATE newsletters SET status = 'draft' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    rt.stop().await;
    assert_eq!(status(&pool, id).await, "draft");
    assert!(deliveries(&pool, id).await.is_empty(), "never started");
    assert!(received(&sink.stop_and_collect()).is_empty());
}

/// The delivery writer's database session is cut off mid-send while the
/// worker lives (a network blip, a proxy restart): its deliveries on the
/// wire become unknown, its claimed ones go back, it goes on under a new
/// session, and no address gets two copies.
#[sqlx::test(migrations = false)]
async fn a_cut_off_writer_session_sends_nobody_two(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    const N: i64 = 2000;
    subscribers(&pool, "knip", N).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let id = draft(&pool, "Knip").await;
    let rt = start_worker(&pool, &config(sink.port, &[]));
    dkl_worker::store::newsletters::schedule(&pool, id, None)
        .await
        .unwrap();
    for at_least in [300, 1000] {
        wait_for(T, "some sent", || async {
            (scalar_i64(&pool, "SELECT count(*) FROM newsletter_deliveries WHERE newsletter_id = $1 AND status = 'sent'", id).await >= at_least)
                .then_some(())
        })
        .await;
        let cut: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(s.pid)) FROM newsletter_senders s
               JOIN pg_stat_activity a ON a.pid = s.pid AND a.backend_start = s.backend_start",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(cut >= 1);
    }
    wait_newsletter(&pool, id, "sent", T).await;
    rt.stop().await;
    let d = deliveries(&pool, id).await;
    let total: i64 = d.values().sum();
    assert_eq!(total, N);
    assert_eq!(
        d.get("sent").copied().unwrap_or(0) + d.get("unknown").copied().unwrap_or(0),
        N,
        "{d:?}"
    );
    let got = received(&sink.stop_and_collect());
    assert!(got.values().all(|n| *n == 1), "duplicates at the server");
    assert!(got.len() as i64 >= d.get("sent").copied().unwrap_or(0));
}
