//! Auto-responses, bounces, complaints and mailto unsubscribes against a
//! real PostgreSQL and a real SMTP server (postfix's smtp-sink). Bounces and
//! complaints are real captured messages from the sisimai corpus
//! (`tests/fixtures/bounces/`), with the recipient and the address they
//! were delivered to changed to ours.

use std::collections::BTreeMap;
use std::time::Duration;

use dkl_shared::config::Config;
use dkl_shared::jobs::{EnqueueOptions, JobClient};
use dkl_shared::kinds::{MailKind, ProcessIncomingEmail, SendEmail};
use dkl_tests::process::{self, log_path, signal, wait_exit};
use dkl_tests::{fast_config, migrate, url_of, wait_for};
use dkl_worker::handlers::process_incoming_email::Processor;
use dkl_worker::smtp::sink::SmtpSink;
use dkl_worker::store::{email_templates, incoming_emails};
use dkl_worker::templates::files;
use sqlx::PgPool;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);
const OURS: &str = "info@dekoninklijkeloop.nl";

fn vars(port: u16) -> BTreeMap<String, String> {
    [
        ("DKL_SMTP_DEFAULT_PORT", port.to_string()),
        (
            "DKL_SMTP_DEFAULT_FROM",
            format!("De Koninklijke Loop <{OURS}>"),
        ),
        ("DKL_UNSUBSCRIBE_SECRET", "s".repeat(40)),
        ("DKL_IMAP_ACCOUNTS", "info".into()),
        ("DKL_IMAP_INFO_HOST", "127.0.0.1".into()),
        ("DKL_IMAP_INFO_PORT", "1".into()),
        ("DKL_IMAP_INFO_TLS", "plain".into()),
        ("DKL_IMAP_INFO_IDLE", "false".into()),
        ("DKL_IMAP_INFO_USER", OURS.into()),
        ("DKL_IMAP_INFO_PASSWORD", "x".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn config(port: u16) -> Config {
    let vars = vars(port);
    Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

async fn setup(pool: &PgPool) {
    migrate(pool).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let mut conn = pool.acquire().await.unwrap();
    for f in files::load_dir(&dir).unwrap() {
        email_templates::sync(&mut conn, &f.template, &f.variables, false)
            .await
            .unwrap();
    }
}

async fn add_rule(pool: &PgPool, name: &str, priority: i32, subject_pattern: Option<&str>) {
    sqlx::query(
        "INSERT INTO auto_responses (name, subject_pattern, account_type, template_id, priority)
         SELECT $1, $2, 'info', id, $3 FROM email_templates WHERE name = 'auto_response'",
    )
    .bind(name)
    .bind(subject_pattern)
    .bind(priority)
    .execute(pool)
    .await
    .unwrap();
}

/// Stores `raw` as received by the `info` account (with its follow-up job).
async fn receive(pool: &PgPool, raw: &[u8]) -> Uuid {
    let incoming = dkl_worker::import::incoming(raw.to_vec(), 50 << 20);
    let hash = incoming.content_hash.clone();
    incoming_emails::store_batch(pool, "info", None, &[incoming])
        .await
        .unwrap();
    sqlx::query_scalar("SELECT id FROM incoming_emails WHERE content_hash = $1")
        .bind(hash)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn person(from: &str, message_id: &str, extra: &str) -> Vec<u8> {
    let date = chrono::Utc::now().to_rfc2822();
    format!(
        "Return-Path: <{from}>\r\nFrom: Anna de Vries <{from}>\r\nTo: DKL <{OURS}>\r\nSubject: Vraag over de route\r\nMessage-ID: <{message_id}>\r\nReferences: <eerder@example.nl>\r\nDate: {date}\r\n{extra}\r\nHoi, hoe laat begint de loop?\r\n"
    )
    .into_bytes()
}

#[derive(Debug, sqlx::FromRow)]
struct Answer {
    processed: bool,
    auto_reply: Option<String>,
    auto_reply_reason: Option<String>,
}

async fn answer(pool: &PgPool, id: Uuid) -> Answer {
    sqlx::query_as(
        "SELECT processed, auto_reply, auto_reply_reason FROM incoming_emails WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn processed(pool: &PgPool, id: Uuid) -> Answer {
    wait_for(T, "the message processed", || async {
        let a = answer(pool, id).await;
        a.processed.then_some(a)
    })
    .await
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The envelope sender smtp-sink recorded for a dumped message.
fn mail_from(dumped: &str) -> String {
    dumped
        .lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args: "))
        .unwrap_or("")
        .to_string()
}

#[sqlx::test(migrations = false)]
async fn a_persons_mail_is_answered_once_per_window_with_rfc_3834_headers(pool: PgPool) {
    setup(&pool).await;
    add_rule(&pool, "ontvangstbevestiging", 100, None).await;
    let sink = SmtpSink::start(&[]).unwrap();
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config(sink.port)),
        fast_config(),
    );
    let first = receive(&pool, &person("anna@example.nl", "m1@example.nl", "")).await;
    let a = processed(&pool, first).await;
    assert_eq!(a.auto_reply.as_deref(), Some("replied"), "{a:?}");
    wait_for(T, "the answer sent", || async {
        (count(&pool, "SELECT count(*) FROM verzonden_emails WHERE mail_kind = 'auto_reply' AND status = 'sent'").await == 1).then_some(())
    })
    .await;
    // A second mail within the window gets no second answer, and says why.
    let second = receive(&pool, &person("anna@example.nl", "m2@example.nl", "")).await;
    let b = processed(&pool, second).await;
    assert_eq!(b.auto_reply.as_deref(), Some("not_replied"));
    assert!(b.auto_reply_reason.unwrap().contains("window"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rt.stop().await;
    let messages = sink.stop_and_collect();
    assert_eq!(messages.len(), 1, "one answer in all");
    let m = &messages[0];
    assert!(
        mail_from(m).starts_with("<>"),
        "MAIL FROM:<> (RFC 3834 3.3): {}",
        mail_from(m)
    );
    assert!(m.contains("Auto-Submitted: auto-replied"));
    assert!(m.contains("In-Reply-To: <m1@example.nl>"));
    assert!(m.contains("References: <eerder@example.nl> <m1@example.nl>"));
    assert!(m.contains("Subject: Auto: Re: Vraag over de route"));
    assert!(m.contains("To: anna@example.nl"));
    assert!(m.contains("@dekoninklijkeloop.nl>"), "our own Message-ID");
}

#[sqlx::test(migrations = false)]
async fn an_out_of_office_reply_is_not_answered_and_the_reason_is_recorded(pool: PgPool) {
    setup(&pool).await;
    add_rule(&pool, "ontvangstbevestiging", 100, None).await;
    let processor = Processor::new(&pool, &config(1));
    let id = receive(
        &pool,
        &person(
            "anna@example.nl",
            "ooo@example.nl",
            "Auto-Submitted: auto-replied\r\n",
        ),
    )
    .await;
    processor.process(id).await.unwrap();
    let a = answer(&pool, id).await;
    assert_eq!(a.auto_reply.as_deref(), Some("not_replied"));
    assert!(
        a.auto_reply_reason
            .unwrap()
            .contains("Auto-Submitted: auto-replied")
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM auto_reply_log").await, 0);
}

/// The message an enqueued answer puts on the wire, as the other side
/// receives it: what `send_email` writes (From, To, Subject, the job's
/// headers) with the null return path it is sent with.
async fn answers_sent(pool: &PgPool, from: &str, seen: &mut usize) -> Vec<Vec<u8>> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT job FROM apalis.jobs WHERE job_type = 'send_email' ORDER BY run_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let new = payloads[*seen..].to_vec();
    *seen = payloads.len();
    new.iter()
        .map(|p| {
            let job: SendEmail = serde_json::from_slice(p).unwrap();
            assert_eq!(job.kind, MailKind::AutoReply);
            let mut head = format!(
                "Return-Path: <>\r\nFrom: {from}\r\nTo: {}\r\nSubject: Auto: Re: x\r\nMessage-ID: <{}@{}>\r\n",
                job.to,
                Uuid::new_v4(),
                from.split('@').nth(1).unwrap()
            );
            for (k, v) in &job.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            format!("{head}\r\nDit is een automatisch antwoord.\r\n").into_bytes()
        })
        .collect()
}

/// A relay that strips what marks mail automatic: the per-sender window
/// must hold on its own.
fn mangled(raw: &[u8], sender: &str) -> Vec<u8> {
    String::from_utf8_lossy(raw)
        .lines()
        .filter(|l| !l.starts_with("Auto-Submitted"))
        .map(|l| {
            if l.starts_with("Return-Path") {
                format!("Return-Path: <{sender}>")
            } else {
                l.replace("Subject: Auto: ", "Subject: ")
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

#[sqlx::test(migrations = false)]
async fn two_auto_responders_mailing_each_other_answer_at_most_once_per_window(pool: PgPool) {
    setup(&pool).await;
    add_rule(&pool, "ontvangstbevestiging", 100, None).await;
    // Two deployments that do not know each other, sharing nothing but mail:
    // responder A answers info@; responder B answers info@b.example (its own
    // account `info` too, in the same tables: the ledger is per sender).
    let a = Processor::new(&pool, &config(1));
    let mut b_vars = vars(1);
    b_vars.insert("DKL_SMTP_DEFAULT_FROM".into(), "B <info@b.example>".into());
    b_vars.insert("DKL_IMAP_INFO_USER".into(), "info@b.example".into());
    let b = Processor::new(
        &pool,
        &Config::from_lookup(|k| b_vars.get(k).cloned()).unwrap(),
    );
    let mut seen = 0;
    let mut counts = [0usize; 2];
    // B's person writes to A; then each side's answers go to the other side.
    let mut inbox_a = vec![format!(
        "Return-Path: <info@b.example>\r\nFrom: info@b.example\r\nTo: {OURS}\r\nSubject: Hallo\r\nMessage-ID: <start@b.example>\r\n\r\nHallo\r\n"
    )
    .into_bytes()];
    let mut inbox_b: Vec<Vec<u8>> = Vec::new();
    for round in 0..6 {
        for raw in std::mem::take(&mut inbox_a) {
            // Unchanged answers carry Auto-Submitted and <>: never answered.
            // The mangled copies must be stopped by the window.
            let id = receive(&pool, &mangled(&raw, "info@b.example")).await;
            a.process(id).await.unwrap();
        }
        let from_a = answers_sent(&pool, OURS, &mut seen).await;
        counts[0] += from_a.len();
        for raw in &from_a {
            let id = receive(&pool, &mangled(&rewrite_to(raw, "info@b.example"), OURS)).await;
            b.process(id).await.unwrap();
            inbox_b.push(raw.clone());
        }
        let from_b = answers_sent(&pool, "info@b.example", &mut seen).await;
        counts[1] += from_b.len();
        inbox_a.extend(from_b.iter().map(|r| rewrite_to(r, OURS)));
        if inbox_a.is_empty() {
            // Keep the loop going with the last answer: as if resent.
            inbox_a.push(format!("Return-Path: <info@b.example>\r\nFrom: info@b.example\r\nTo: {OURS}\r\nSubject: Re: Auto\r\nMessage-ID: <again{round}@b.example>\r\n\r\nnog eens\r\n").into_bytes());
        }
    }
    println!("answers: A {}, B {}", counts[0], counts[1]);
    assert_eq!(counts[0], 1, "A answered B at most once in the window");
    assert_eq!(counts[1], 1, "B answered A at most once in the window");
    // Unmangled, an answer is never answered at all.
    let unmangled = receive(&pool, &rewrite_to(&inbox_b[0], "info@b.example")).await;
    b.process(unmangled).await.unwrap();
    assert!(
        answer(&pool, unmangled)
            .await
            .auto_reply_reason
            .unwrap()
            .contains("Auto-Submitted")
    );
}

fn rewrite_to(raw: &[u8], to: &str) -> Vec<u8> {
    String::from_utf8_lossy(raw)
        .lines()
        .map(|l| {
            if l.starts_with("To: ") {
                format!("To: {to}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

#[sqlx::test(migrations = false)]
async fn a_worker_killed_between_recording_and_sending_an_answer_sends_at_most_one(pool: PgPool) {
    setup(&pool).await;
    add_rule(&pool, "ontvangstbevestiging", 100, None).await;
    let url = url_of(&pool).await;
    // The SMTP server is down at first: the answer is recorded and its job
    // fails to connect, again and again, until the worker is killed.
    let port = dkl_worker::smtp::sink::free_port().unwrap();
    let worker = |log: &str| {
        let mut cmd = process::command(env!("CARGO_BIN_EXE_dkl-worker"), &url);
        for (k, v) in vars(port) {
            cmd.env(k, v);
        }
        cmd.env("DKL_HTTP_ADDR", "off");
        process::spawn_logged(cmd, &log_path(log))
    };
    let mut first = worker("answer-kill-first");
    let id = receive(&pool, &person("anna@example.nl", "kill@example.nl", "")).await;
    wait_for(T, "the answer recorded and tried", || async {
        let tried = count(
            &pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'send_email' AND attempts >= 1",
        )
        .await;
        (tried == 1).then_some(())
    })
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM auto_reply_log").await, 1);
    signal(&first.0, libc::SIGKILL);
    wait_exit(&mut first.0, Duration::from_secs(5));
    // A replay of the follow-up (as after a crash before its job finished)
    // must not make a second answer.
    JobClient::new(pool.clone())
        .enqueue(
            &ProcessIncomingEmail {
                incoming_email_id: id,
                also: vec![],
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET run_at = now() WHERE status IN ('Pending', 'Failed')")
        .execute(&pool)
        .await
        .unwrap();
    let sink = SmtpSink::start_on(port, &[]).unwrap();
    let _second = worker("answer-kill-second");
    wait_for(T, "the answer sent", || async {
        (count(&pool, "SELECT count(*) FROM verzonden_emails WHERE mail_kind = 'auto_reply' AND status = 'sent'").await == 1).then_some(())
    })
    .await;
    wait_for(T, "the replayed follow-up done", || async {
        (count(&pool, "SELECT count(*) FROM apalis.jobs WHERE job_type = 'process_incoming_email' AND status <> 'Done'").await == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.stop_and_collect().len(), 1, "one answer, not two");
    assert_eq!(count(&pool, "SELECT count(*) FROM auto_reply_log").await, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'send_email'"
        )
        .await,
        1
    );
}

/// A real captured bounce with `original` replaced by `recipient`, sent
/// back to `to` (a VERP return path or any of our addresses).
fn corpus(name: &str, original: &str, recipient: &str, to: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bounces/sisimai")
        .join(name);
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).replace(original, recipient);
    // The first To: is the bounce's own recipient.
    let at = text.find("\nTo: ").expect("a To header") + 1;
    let end = at + text[at..].find('\n').unwrap();
    format!("{}To: {to}{}", &text[..at], &text[end..]).into_bytes()
}

async fn newsletter_to_everyone(pool: &PgPool, title: &str) -> Uuid {
    let id = dkl_worker::store::newsletters::create(pool, title, "Nieuws.", None)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE newsletters SET status = 'scheduled', scheduled_send_time = now() WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    wait_for(T, "the newsletter sent", || async {
        let s: String = sqlx::query_scalar("SELECT status FROM newsletters WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        (s == "sent").then_some(())
    })
    .await;
    id
}

#[sqlx::test(migrations = false)]
async fn a_hard_bounce_of_a_newsletter_suppresses_the_address_and_the_next_newsletter_skips_it(
    pool: PgPool,
) {
    setup(&pool).await;
    sqlx::query(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         VALUES ('Weg', 'weg@example.org', true), ('Blijft', 'blijft@example.org', true)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let sink = SmtpSink::start(&[]).unwrap();
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config(sink.port)),
        fast_config(),
    );
    let first = newsletter_to_everyone(&pool, "Eerste").await;
    // The return path the server saw for weg@: bounce+n<delivery>@…
    let verp = sink
        .messages()
        .iter()
        .filter(|m| m.contains("To: weg@example.org") || m.contains("To: Weg <weg@example.org>"))
        .map(|m| mail_from(m))
        .next()
        .expect("weg@ got the first newsletter");
    let verp = verp
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    assert!(verp.starts_with("bounce+n"), "VERP return path: {verp}");
    let bounce = receive(
        &pool,
        &corpus(
            "lhost-postfix-04.eml",
            "kijitora@example.co.jp",
            "weg@example.org",
            &verp,
        ),
    )
    .await;
    processed(&pool, bounce).await;
    let (kind, matched, suppression, delivery): (String, Option<String>, Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT kind, matched_by, suppression, newsletter_delivery_id FROM email_bounces WHERE incoming_email_id = $1",
    )
    .bind(bounce)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), matched.as_deref(), suppression.as_deref()),
        ("hard", Some("return_path"), Some("hard_bounce"))
    );
    assert!(delivery.is_some());
    let status: String = sqlx::query_scalar("SELECT status FROM verzonden_emails WHERE newsletter_id = $1 AND recipient_email = 'weg@example.org'")
        .bind(first)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "bounced");
    let scope: String = sqlx::query_scalar("SELECT scope FROM email_suppressions WHERE address = 'weg@example.org' AND reason = 'hard_bounce'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(scope, "all");
    let second = newsletter_to_everyone(&pool, "Tweede").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.stop().await;
    let all = sink.stop_and_collect();
    let to = |who: &str| {
        all.iter()
            .filter(|m| m.contains(&format!("<{who}>")))
            .count()
    };
    assert_eq!(
        to("weg@example.org"),
        1,
        "weg@ got the first newsletter only"
    );
    assert_eq!(to("blijft@example.org"), 2, "blijft@ got both");
    let weg: i64 = sqlx::query_scalar("SELECT count(*) FROM newsletter_deliveries WHERE newsletter_id = $1 AND email = 'weg@example.org' AND status = 'sent'")
        .bind(second)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(weg, 0);
}

#[sqlx::test(migrations = false)]
async fn a_4xx_bounce_found_by_message_id_is_recorded_soft_and_suppresses_nothing(pool: PgPool) {
    setup(&pool).await;
    let sink = SmtpSink::start(&[]).unwrap();
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config(sink.port)),
        fast_config(),
    );
    JobClient::new(pool.clone())
        .enqueue(
            &SendEmail {
                to: "traag@example.net".into(),
                subject: Some("Je inschrijving".into()),
                html: Some("<p>x</p>".into()),
                dedup_key: Some("inschrijving:1".into()),
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap();
    let message_id: String = wait_for(T, "the mail sent", || async {
        sqlx::query_scalar("SELECT message_id FROM verzonden_emails WHERE dedup_key = 'inschrijving:1' AND status = 'sent'")
            .fetch_optional(&pool)
            .await
            .unwrap()
    })
    .await;
    rt.stop().await;
    // rfc3464-07: Action: Delayed, Status 4.4.0; its returned header's
    // Message-ID becomes ours; delivered to our plain address (no VERP).
    let raw = String::from_utf8(corpus(
        "rfc3464-07.eml",
        "kijitora@example.net",
        "traag@example.net",
        OURS,
    ))
    .unwrap()
    .replace("<000000000000000@list.example.jp>", &message_id);
    let id = receive(&pool, raw.as_bytes()).await;
    Processor::new(&pool, &config(sink.port))
        .process(id)
        .await
        .unwrap();
    let (kind, action, status, matched, suppression): (String, String, Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT kind, action, status, matched_by, suppression FROM email_bounces WHERE incoming_email_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), action.as_str(), status.as_deref()),
        ("soft", "delayed", Some("4.4.0"))
    );
    assert_eq!(matched.as_deref(), Some("message_id"));
    assert_eq!(suppression, None);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM email_suppressions").await,
        0
    );
    let status: String = sqlx::query_scalar(
        "SELECT status FROM verzonden_emails WHERE dedup_key = 'inschrijving:1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "sent", "a delay is no bounce");
}

/// A `verzonden_emails` row of a newsletter we sent to `to`, with `message_id`.
async fn sent_newsletter_row(pool: &PgPool, to: &str, message_id: &str) {
    sqlx::query(
        "INSERT INTO verzonden_emails (recipient_email, subject, status, mail_kind, message_id, dedup_key)
         VALUES ($1, 'Nieuws', 'sent', 'newsletter', $2, 'test:' || $2)",
    )
    .bind(to)
    .bind(message_id)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrations = false)]
async fn an_arf_complaint_about_our_mail_suppresses_for_bulk_mail_only(pool: PgPool) {
    setup(&pool).await;
    sent_newsletter_row(
        &pool,
        "klager@example.org",
        "<nieuws-1@dekoninklijkeloop.nl>",
    )
    .await;
    let raw = String::from_utf8(corpus(
        "arf-21.eml",
        "kijitora@example.org",
        "klager@example.org",
        OURS,
    ))
    .unwrap()
    .replace(
        "<00000000000000000000000022222222@example.net>",
        "<nieuws-1@dekoninklijkeloop.nl>",
    );
    let id = receive(&pool, raw.as_bytes()).await;
    Processor::new(&pool, &config(1)).process(id).await.unwrap();
    let (scope, reason): (String, String) = sqlx::query_as(
        "SELECT scope, reason FROM email_suppressions WHERE address = 'klager@example.org'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((scope.as_str(), reason.as_str()), ("bulk", "complaint"));
    let (feedback, suppressed): (String, bool) = sqlx::query_as(
        "SELECT feedback_type, suppressed FROM email_complaints WHERE incoming_email_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((feedback.as_str(), suppressed), ("abuse", true));
    // Processing it again changes nothing.
    Processor::new(&pool, &config(1)).process(id).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM email_complaints").await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn forged_complaints_and_bounces_suppress_nobody(pool: PgPool) {
    setup(&pool).await;
    let processor = Processor::new(&pool, &config(1));
    // A complaint naming an address, about mail we never sent.
    let complaint = receive(
        &pool,
        &corpus(
            "arf-21.eml",
            "kijitora@example.org",
            "slachtoffer@example.org",
            OURS,
        ),
    )
    .await;
    processor.process(complaint).await.unwrap();
    // A bounce to a made-up return path (an unsigned, guessed tag), and
    // one with a real Message-ID of ours that names another address.
    sent_newsletter_row(&pool, "lid@example.org", "<nieuws-2@dekoninklijkeloop.nl>").await;
    let guessed = receive(
        &pool,
        &corpus(
            "lhost-postfix-04.eml",
            "kijitora@example.co.jp",
            "lid@example.org",
            "bounce+n1@dekoninklijkeloop.nl",
        ),
    )
    .await;
    processor.process(guessed).await.unwrap();
    let other = String::from_utf8(corpus(
        "lhost-postfix-04.eml",
        "kijitora@example.co.jp",
        "slachtoffer@example.org",
        OURS,
    ))
    .unwrap()
    .replace(
        "<A8F82EDD-E518-4F5C-8C70-BC4EFF24AB9F@example.ne.jp>",
        "<nieuws-2@dekoninklijkeloop.nl>",
    );
    let other = receive(&pool, other.as_bytes()).await;
    processor.process(other).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM email_suppressions").await,
        0,
        "nobody suppressed"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM email_complaints WHERE NOT suppressed"
        )
        .await,
        1,
        "the complaint is kept"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM email_bounces WHERE suppression IS NULL"
        )
        .await,
        2,
        "the bounces are kept"
    );
    let status: String = sqlx::query_scalar(
        "SELECT status FROM verzonden_emails WHERE recipient_email = 'lid@example.org'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "sent");
}

#[sqlx::test(migrations = false)]
async fn a_mailto_unsubscribe_works_and_a_forged_one_changes_nothing(pool: PgPool) {
    setup(&pool).await;
    let lid: Uuid = sqlx::query_scalar(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed) VALUES ('Lid', 'lid@example.org', true) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // The mailto address of a real newsletter's List-Unsubscribe.
    let sink = SmtpSink::start(&[]).unwrap();
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config(sink.port)),
        fast_config(),
    );
    newsletter_to_everyone(&pool, "Nieuws").await;
    rt.stop().await;
    let sent = sink.stop_and_collect();
    let parsed = mail_parser::MessageParser::default()
        .parse(sent[0].as_bytes())
        .unwrap();
    let header = parsed.header_raw("List-Unsubscribe").unwrap().to_string();
    let mailto = header
        .split("<mailto:")
        .nth(1)
        .and_then(|r| r.split(['?', '>']).next())
        .unwrap()
        .to_string();
    assert!(
        mailto.starts_with("info+u-") && mailto.ends_with("@dekoninklijkeloop.nl"),
        "{mailto}"
    );
    let token = dkl_worker::address::plus_tag(&mailto)
        .unwrap()
        .trim_start_matches("u-")
        .to_string();
    assert_eq!(
        dkl_worker::newsletter::token::TokenSigner::new(&"s".repeat(40))
            .verify_from_address(&token, dkl_worker::newsletter::token::today()),
        Ok(lid)
    );
    let mut forged = mailto.clone().into_bytes();
    forged[10] = if forged[10] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let request = |to: &str, n: u32| {
        format!("Return-Path: <lid@example.org>\r\nFrom: lid@example.org\r\nTo: <{to}>\r\nSubject: unsubscribe\r\nMessage-ID: <u{n}@example.org>\r\n\r\n\r\n").into_bytes()
    };
    let processor = Processor::new(&pool, &config(1));
    let subscribed = || async {
        sqlx::query_scalar::<_, bool>("SELECT newsletter_subscribed FROM gebruikers WHERE id = $1")
            .bind(lid)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let bad = receive(&pool, &request(&forged, 1)).await;
    processor.process(bad).await.unwrap();
    assert!(subscribed().await, "a forged token changes nothing");
    assert!(
        answer(&pool, bad)
            .await
            .auto_reply_reason
            .unwrap()
            .contains("refused")
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM email_suppressions").await,
        0
    );
    let good = receive(&pool, &request(&mailto, 2)).await;
    processor.process(good).await.unwrap();
    assert!(!subscribed().await, "unsubscribed");
    let reason: String = sqlx::query_scalar(
        "SELECT reason FROM email_suppressions WHERE address = 'lid@example.org'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reason, "unsubscribe");
}

#[sqlx::test(migrations = false)]
async fn a_bad_pattern_is_refused_when_saved_and_a_broken_rule_never_stops_the_others(
    pool: PgPool,
) {
    setup(&pool).await;
    let refused = sqlx::query(
        "INSERT INTO auto_responses (name, subject_pattern, template_id)
         SELECT 'kapot', 'route (', id FROM email_templates WHERE name = 'auto_response'",
    )
    .execute(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("route ("),
        "the pattern is shown: {refused}"
    );
    assert!(refused.contains("subject_pattern"), "{refused}");
    // A rule saved before the check existed (the trigger off) is skipped.
    sqlx::raw_sql(
        "ALTER TABLE auto_responses DISABLE TRIGGER auto_responses_check;
         INSERT INTO auto_responses (name, subject_pattern, account_type, template_id, priority)
         SELECT 'oud-kapot', 'route (', 'info', id, 1 FROM email_templates WHERE name = 'auto_response';
         ALTER TABLE auto_responses ENABLE TRIGGER auto_responses_check;",
    )
    .execute(&pool)
    .await
    .unwrap();
    add_rule(&pool, "route", 50, Some("route")).await;
    let id = receive(&pool, &person("anna@example.nl", "r@example.nl", "")).await;
    Processor::new(&pool, &config(1)).process(id).await.unwrap();
    let a = answer(&pool, id).await;
    assert_eq!(a.auto_reply.as_deref(), Some("replied"), "{a:?}");
    assert!(a.auto_reply_reason.unwrap().contains("route"));
}

#[sqlx::test(migrations = false)]
async fn a_batch_stored_together_is_followed_up_by_one_job_each_message_on_its_own_merits(
    pool: PgPool,
) {
    setup(&pool).await;
    add_rule(&pool, "ontvangstbevestiging", 100, None).await;
    let messages = [
        person("anna@example.nl", "b1@example.nl", ""),
        person("bert@example.nl", "b2@example.nl", ""),
        person("anna@example.nl", "b3@example.nl", ""),
        person(
            "carla@example.nl",
            "b4@example.nl",
            "Auto-Submitted: auto-replied\r\n",
        ),
    ]
    .map(|raw| dkl_worker::import::incoming(raw, 50 << 20));
    incoming_emails::store_batch(&pool, "info", None, &messages)
        .await
        .unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'process_incoming_email'"
        )
        .await,
        1
    );
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config(1)),
        fast_config(),
    );
    wait_for(T, "all processed", || async {
        (count(
            &pool,
            "SELECT count(*) FROM incoming_emails WHERE NOT processed",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
    rt.stop().await;
    let outcomes: BTreeMap<String, (String, String)> =
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT message_id, auto_reply, auto_reply_reason FROM incoming_emails",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(m, a, r)| (m, (a, r)))
        .collect();
    let replied = |m: &str| {
        outcomes
            .iter()
            .any(|(id, (a, _))| id.trim_matches(['<', '>']) == m && a == "replied")
    };
    assert!(
        replied("b1@example.nl") && replied("b2@example.nl"),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.values().filter(|(a, _)| a == "replied").count(),
        2,
        "anna once, bert once: {outcomes:?}"
    );
    assert!(
        outcomes.values().any(|(_, r)| r.contains("window")),
        "anna's second: {outcomes:?}"
    );
    assert!(
        outcomes.values().any(|(_, r)| r.contains("Auto-Submitted")),
        "carla's: {outcomes:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM auto_reply_log").await, 2);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'send_email'"
        )
        .await,
        2
    );
}
