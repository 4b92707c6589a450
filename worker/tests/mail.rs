//! Outgoing mail against a real SMTP server (postfix's smtp-sink) and a real
//! PostgreSQL: the SQL function, templates, verzonden_emails, 4xx and 5xx
//! replies, suppressions.

use std::collections::BTreeMap;
use std::time::Duration;

use dkl_shared::config::Config;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId};
use dkl_shared::kinds::{MailKind, SendEmail};
use dkl_tests::{fast_config, migrate, wait_for, wait_status};
use dkl_worker::smtp::sink::SmtpSink;
use dkl_worker::store::email_templates;
use dkl_worker::templates::files;
use sqlx::PgPool;

const T: Duration = Duration::from_secs(20);

fn config(port: u16) -> Config {
    let vars: BTreeMap<&str, String> = [("DKL_SMTP_DEFAULT_PORT", port.to_string())].into();
    Config::from_lookup(|k| vars.get(k).cloned()).unwrap()
}

/// A mail with a ready subject and a short HTML body (no template), under
/// its own dedup key.
fn ready_mail(
    to: impl Into<String>,
    subject: impl Into<String>,
    key: impl Into<String>,
) -> SendEmail {
    SendEmail {
        to: to.into(),
        subject: Some(subject.into()),
        html: Some("<p>x</p>".into()),
        dedup_key: Some(key.into()),
        ..Default::default()
    }
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

fn start_worker(pool: &PgPool, port: u16) -> dkl_tests::RunningRuntime {
    let registry = dkl_worker::handlers::registry(pool, &config(port));
    dkl_tests::start(pool, registry, fast_config())
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    status: String,
    smtp_code: Option<i32>,
    smtp_reply: Option<String>,
    error_message: Option<String>,
    retry_count: i32,
    message_id: Option<String>,
    subject: String,
}

async fn row(pool: &PgPool, dedup_key: &str) -> Row {
    try_row(pool, dedup_key)
        .await
        .expect("a verzonden_emails row")
}

async fn try_row(pool: &PgPool, dedup_key: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT status, smtp_code, smtp_reply, error_message, retry_count, message_id, subject
           FROM verzonden_emails WHERE dedup_key = $1",
    )
    .bind(dedup_key)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_mail_asked_for_in_sql_is_rendered_recorded_and_sent_once(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let vars = r#"{"naam": "Anna <de Vries>", "ontvangen_op": "2026-05-17T09:30:00+02:00", "bericht": "Hallo"}"#;
    let ask = "SELECT dkl_send_email('contact_email', 'anna@example.org', $1::jsonb, 'contact:1')";

    // Rolled back: nothing is sent.
    let mut tx = pool.begin().await.unwrap();
    let _: String = sqlx::query_scalar(ask)
        .bind(vars)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);

    let job: String = sqlx::query_scalar(ask)
        .bind(vars)
        .fetch_one(&pool)
        .await
        .unwrap();
    let job_id_first = job.clone();
    let rt = start_worker(&pool, sink.port);
    wait_status(&pool, &JobId(job), "Done", T).await;
    let sent = row(&pool, "contact:1").await;
    assert_eq!(sent.status, "sent", "{sent:?}");
    assert_eq!(sent.smtp_code, Some(250));
    assert!(sent.smtp_reply.is_some());
    assert_eq!(sent.subject, "Bedankt voor je bericht, Anna <de Vries>");
    let message_id = sent.message_id.unwrap();
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@dekoninklijkeloop.nl>"),
        "{message_id}"
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let text = &messages[0];
    assert!(
        text.contains(&format!("Message-ID: {message_id}")),
        "{text}"
    );
    assert!(
        text.contains("multipart/alternative") && text.contains("Anna &lt;de Vries&gt;"),
        "{text}"
    );

    // The job status view says what the send job did.
    let (mail_status, mail_to): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT mail_status, mail_to FROM job_status WHERE job_id = $1")
            .bind(&job_id_first)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (mail_status.as_deref(), mail_to.as_deref()),
        (Some("sent"), Some("anna@example.org"))
    );

    // The same key again (the web app retried): no second mail.
    let again: String = sqlx::query_scalar(ask)
        .bind(vars)
        .fetch_one(&pool)
        .await
        .unwrap();
    wait_status(&pool, &JobId(again), "Done", T).await;
    assert_eq!(sink.messages().len(), 1, "one message per dedup key");
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_sql_function_refuses_unknown_templates_and_bad_addresses(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    let err = sqlx::query_scalar::<_, String>(
        "SELECT dkl_send_email('contact_mail', 'anna@example.org')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no active template named \"contact_mail\""),
        "{err}"
    );
    let err = sqlx::query_scalar::<_, String>(
        "SELECT dkl_send_email('contact_email', 'anna.example.org')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"anna.example.org\" is not an e-mail address"),
        "{err}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_5xx_fails_at_once_with_the_servers_words(pool: PgPool) {
    migrate(&pool).await;
    let sink = SmtpSink::start(&["-f", "rcpt"]).expect("start smtp-sink");
    let client = JobClient::new(pool.clone());
    let mail = ready_mail("nobody@example.org", "Test", "hard");
    let job = client
        .enqueue(&mail, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let rt = start_worker(&pool, sink.port);
    let done = wait_status(&pool, &job, "Killed", T).await;
    assert_eq!(done.attempts, 1, "a 5xx is not retried");
    let failed = row(&pool, "hard").await;
    assert_eq!(failed.status, "failed");
    let code = failed.smtp_code.unwrap();
    assert!((500..600).contains(&code), "{failed:?}");
    assert!(failed.error_message.unwrap().contains(&code.to_string()));
    assert!(sink.messages().is_empty());

    // The address is fixed on the receiving side; an admin retries the job:
    // the failed row is tried again, and sent.
    let port = sink.port;
    drop(sink);
    let ok = SmtpSink::start_on(port, &[]).expect("start smtp-sink");
    client.retry(&job).await.unwrap();
    wait_status(&pool, &job, "Done", T).await;
    assert_eq!(row(&pool, "hard").await.status, "sent");
    assert_eq!(ok.messages().len(), 1);
    rt.stop().await;
}

/// Two jobs for one message running at once (the same key asked for twice,
/// no job-level dedup): one sends, the other waits and then finds it sent.
#[sqlx::test(migrations = false)]
async fn two_jobs_for_one_message_send_it_once(pool: PgPool) {
    migrate(&pool).await;
    // Answers DATA after 2 s, so the first sender is mid-transaction when
    // the second starts.
    let sink = SmtpSink::start(&["-w", "2"]).expect("start smtp-sink");
    let client = JobClient::new(pool.clone());
    let mail = ready_mail("anna@example.org", "Eén keer", "once");
    let a = client
        .enqueue(&mail, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let b = client
        .enqueue(&mail, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let rt = start_worker(&pool, sink.port);
    wait_status(&pool, &a, "Done", Duration::from_secs(30)).await;
    wait_status(&pool, &b, "Done", Duration::from_secs(30)).await;
    assert_eq!(
        sink.messages().len(),
        1,
        "one message, whatever the number of jobs"
    );
    assert_eq!(row(&pool, "once").await.status, "sent");
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_dedup_key_cannot_be_reused_for_another_recipient(pool: PgPool) {
    migrate(&pool).await;
    sync_templates(&pool).await;
    let ask = "SELECT dkl_send_email('auto_response', $1, '{\"naam\": \"A\", \"onderwerp\": \"x\"}', 'same-key')";
    let _: String = sqlx::query_scalar(ask)
        .bind("anna@example.org")
        .fetch_one(&pool)
        .await
        .unwrap();
    let err = sqlx::query_scalar::<_, String>(ask)
        .bind("bram@example.org")
        .fetch_one(&pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already used for a mail to anna@example.org, not to bram@example.org"),
        "{err}"
    );
    let err = sqlx::query_scalar::<_, String>(
        "SELECT dkl_send_email('auto_response', 'a@example.org', '{}', '')",
    )
    .fetch_one(&pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("dedup key is empty"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn a_4xx_is_retried_with_backoff_then_sent(pool: PgPool) {
    migrate(&pool).await;
    let busy = SmtpSink::start(&["-r", "rcpt"]).expect("start smtp-sink");
    let port = busy.port;
    let client = JobClient::new(pool.clone());
    let mail = ready_mail("anna@example.org", "Later", "soft");
    let job = client
        .enqueue(&mail, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let rt = start_worker(&pool, port);
    wait_for(T, "a 4xx to be recorded", || async {
        try_row(&pool, "soft")
            .await
            .filter(|r| r.retry_count >= 1)
            .map(drop)
    })
    .await;
    let waiting = row(&pool, "soft").await;
    assert_eq!(waiting.status, "queued");
    assert!(
        (400..500).contains(&waiting.smtp_code.unwrap()),
        "{waiting:?}"
    );
    // The server recovers.
    drop(busy);
    let ok = SmtpSink::start_on(port, &[]).expect("start smtp-sink");
    wait_status(&pool, &job, "Done", T).await;
    let sent = row(&pool, "soft").await;
    assert_eq!(sent.status, "sent");
    assert!(sent.retry_count >= 1, "{sent:?}");
    assert_eq!(ok.messages().len(), 1);
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn suppressed_addresses_are_skipped_by_kind(pool: PgPool) {
    migrate(&pool).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    sqlx::query(
        "INSERT INTO email_suppressions (address, scope, reason, source) VALUES
            ('bulk-only@example.org', 'bulk', 'unsubscribe', 'test'),
            ('gone@example.org', 'all', 'hard_bounce', 'test')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let client = JobClient::new(pool.clone());
    let mail = |to: &str, kind: MailKind, key: &str| SendEmail {
        kind,
        ..ready_mail(to, "x", key)
    };
    let rt = start_worker(&pool, sink.port);
    for (to, kind, key) in [
        ("Bulk-Only@example.org", MailKind::Transactional, "a"),
        ("BULK-only@Example.org", MailKind::Newsletter, "b"),
        ("gone@example.org", MailKind::Transactional, "c"),
    ] {
        let job = client
            .enqueue(&mail(to, kind, key), EnqueueOptions::default())
            .await
            .unwrap()
            .id;
        wait_status(&pool, &job, "Done", T).await;
    }
    assert_eq!(
        row(&pool, "a").await.status,
        "sent",
        "transactional mail ignores a bulk-only suppression"
    );
    let b = row(&pool, "b").await;
    assert_eq!(b.status, "suppressed");
    assert!(b.error_message.unwrap().contains("unsubscribe"));
    assert_eq!(row(&pool, "c").await.status, "suppressed");
    assert_eq!(sink.messages().len(), 1);
    rt.stop().await;
}

/// The SMTP server down for 30 s in the middle of 1,000 mails: every mail
/// is sent afterwards, none twice, and the rows count the retries.
#[sqlx::test(migrations = false)]
async fn an_smtp_outage_of_30_s_in_the_middle_of_1000_mails_loses_none_and_doubles_none(
    pool: PgPool,
) {
    migrate(&pool).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let port = sink.port;
    let client = JobClient::new(pool.clone());
    let mails: Vec<SendEmail> = (0..1000)
        .map(|i| {
            ready_mail(
                format!("deelnemer{i}@example.org"),
                format!("mail {i}"),
                format!("m{i}"),
            )
        })
        .collect();
    client.enqueue_many(&mails).await.unwrap();
    // Backoff long enough to outlast the outage within the kind's 8 attempts.
    let jobs = dkl_shared::config::JobsConfig {
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(10),
        ..fast_config()
    };
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config(port)),
        jobs,
    );
    let sent = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM verzonden_emails WHERE status = 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_for(Duration::from_secs(60), "some mail to be sent", || async {
        (sent(pool.clone()).await >= 200).then_some(())
    })
    .await;
    let before = sink.stop_and_collect();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let retried: i64 =
        sqlx::query_scalar("SELECT count(*) FROM verzonden_emails WHERE retry_count > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    let back = SmtpSink::start_on(port, &[]).expect("start smtp-sink");
    dkl_tests::wait_all_done(&pool, Duration::from_secs(120)).await;
    rt.stop().await;
    let mut copies = vec![0u32; 1000];
    // A message the server was receiving when it was killed is a partial
    // file and was never accepted (no 250): the client sends it again.
    let complete = |m: &&String| {
        m.lines()
            .any(|l| l.len() > 4 && l.starts_with("--") && l.ends_with("--"))
    };
    for message in before
        .iter()
        .chain(back.stop_and_collect().iter())
        .filter(complete)
    {
        let n: usize = message
            .lines()
            .find_map(|l| l.strip_prefix("Subject: mail "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "a message without our subject ({} bytes): {message:?}",
                    message.len()
                )
            });
        copies[n] += 1;
    }
    assert!(retried > 0, "the outage must have made mail wait");
    assert!(
        copies.iter().all(|c| *c == 1),
        "each mail exactly once: {:?}",
        copies
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != 1)
            .take(10)
            .collect::<Vec<_>>()
    );
    assert_eq!(sent(pool.clone()).await, 1000);
}

/// An hourly limit reached: the mail waits for the next hour without using
/// up an attempt (the job is snoozed, not failed).
#[sqlx::test(migrations = false)]
async fn an_hourly_limit_snoozes_mail_without_burning_attempts(pool: PgPool) {
    migrate(&pool).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let vars: BTreeMap<&str, String> = [
        ("DKL_SMTP_DEFAULT_PORT", sink.port.to_string()),
        ("DKL_SMTP_DEFAULT_RATE_PER_HOUR", "2".into()),
    ]
    .into();
    let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let client = JobClient::new(pool.clone());
    let mut ids = Vec::new();
    for i in 0..3 {
        let mail = ready_mail(
            format!("p{i}@example.org"),
            format!("mail {i}"),
            format!("h{i}"),
        );
        ids.push(
            client
                .enqueue(&mail, EnqueueOptions::default())
                .await
                .unwrap()
                .id,
        );
    }
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config),
        fast_config(),
    );
    let snoozed = wait_for(T, "two sent and one snoozed", || async {
        let mut done = 0;
        let mut waiting = None;
        for id in &ids {
            let j = dkl_tests::job(&pool, id).await;
            if j.status == "Done" {
                done += 1;
            } else if j.status == "Pending"
                && j.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("hourly limit"))
            {
                waiting = Some(j);
            }
        }
        if done == 2 { waiting } else { None }
    })
    .await;
    rt.stop().await;
    assert_eq!(snoozed.attempts, 0, "a snooze uses no attempt");
    assert!(
        snoozed.run_at > chrono::Utc::now(),
        "it waits for the next hour"
    );
    assert_eq!(sink.messages().len(), 2);
}

#[sqlx::test(migrations = false)]
async fn an_idn_address_is_sent_to_in_ascii_and_a_non_ascii_local_part_is_refused(pool: PgPool) {
    migrate(&pool).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");
    let client = JobClient::new(pool.clone());
    let mail = |to: &str, key: &str| ready_mail(to, "Welkom", key);
    let idn = client
        .enqueue(
            &mail("Anna <anna@Bücher.example>", "idn"),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let utf8 = client
        .enqueue(
            &mail("jürgen@example.org", "utf8"),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let rt = start_worker(&pool, sink.port);
    wait_status(&pool, &idn, "Done", T).await;
    let refused = wait_status(&pool, &utf8, "Killed", T).await;
    assert!(refused.last_error.unwrap_or_default().contains("SMTPUTF8"));
    let recipient: String =
        sqlx::query_scalar("SELECT recipient_email FROM verzonden_emails WHERE dedup_key = 'idn'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recipient, "anna@xn--bcher-kva.example");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "only the IDN mail went out");
    assert!(
        messages[0].contains("anna@xn--bcher-kva.example"),
        "{}",
        messages[0]
    );
    rt.stop().await;
}

/// A server that takes the whole message and then never answers may or may
/// not have taken it: a newsletter is then marked `unknown` and never resent
/// by itself; a transactional mail is tried again (a second copy beats none).
#[sqlx::test(migrations = false)]
async fn an_unanswered_bulk_message_or_answer_is_unknown_and_a_transactional_one_is_retried(
    pool: PgPool,
) {
    migrate(&pool).await;
    // smtp-sink hangs up without a reply once it has the final ".".
    let sink = SmtpSink::start(&["-q", "."]).expect("start smtp-sink");
    let vars: BTreeMap<&str, String> = [
        ("DKL_SMTP_DEFAULT_PORT", sink.port.to_string()),
        ("DKL_SMTP_DEFAULT_COMMAND_TIMEOUT_SECS", "1".into()),
    ]
    .into();
    let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let client = JobClient::new(pool.clone());
    let mail = |kind: MailKind, key: &str| SendEmail {
        kind,
        ..ready_mail("lid@example.org", "Nieuws", key)
    };
    let bulk = client
        .enqueue(
            &mail(MailKind::Newsletter, "bulk"),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let single = client
        .enqueue(
            &mail(MailKind::Transactional, "single"),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    // An automatic answer is at most once too (RFC 3834: a second is worse than none).
    let auto = client
        .enqueue(
            &mail(MailKind::AutoReply, "auto"),
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config),
        fast_config(),
    );
    wait_status(&pool, &bulk, "Done", T).await;
    let unknown = row(&pool, "bulk").await;
    assert_eq!(unknown.status, "unknown", "{unknown:?}");
    assert!(
        unknown
            .error_message
            .unwrap_or_default()
            .contains("may or may not have been accepted")
    );
    wait_status(&pool, &auto, "Done", T).await;
    assert_eq!(row(&pool, "auto").await.status, "unknown");
    let retried = wait_for(T, "the transactional mail to be retried", || async {
        let r = row(&pool, "single").await;
        (r.retry_count >= 1).then_some(r)
    })
    .await;
    assert_eq!(retried.status, "queued", "{retried:?}");
    // Waiting for its next attempt, or already in it (the test's backoff is short).
    let state = dkl_tests::job(&pool, &single).await.status;
    assert!(
        state == "Pending" || state == "Running",
        "the job goes on: {state:?}"
    );
    rt.stop().await;
}

/// A send job cancelled or discarded in the middle of its SMTP transaction
/// leaves its row `queued` with `smtp_started_at`; the prune job marks it
/// `unknown`, and leaves alone rows whose job still runs or started lately.
#[sqlx::test(migrations = false)]
async fn prune_marks_mail_abandoned_mid_send_unknown(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, queue, job, status, attempts, max_attempts, run_at, lock_at, lock_by)
         VALUES ('killed-job', 'send_email', 'mail', '\\x7b7d', 'Killed', 1, 8, now(), now(), 'w'),
                ('running-job', 'send_email', 'mail', '\\x7b7d', 'Running', 1, 8, now(), now(), 'w')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (key, job, started) in [
        ("abandoned", "killed-job", "20 minutes"),
        ("running", "running-job", "20 minutes"),
        ("recent", "killed-job", "1 minute"),
    ] {
        sqlx::query(
            "INSERT INTO verzonden_emails (dedup_key, recipient_email, subject, status, mail_kind, job_id, smtp_started_at)
             VALUES ($1, 'lid@example.org', 'Nieuws', 'queued', 'newsletter', $2, now() - $3::interval)",
        )
        .bind(key)
        .bind(job)
        .bind(started)
        .execute(&pool)
        .await
        .unwrap();
    }
    let registry = dkl_worker::handlers::registry(&pool, &config(1025));
    let (ctx, _cancel) = dkl_shared::jobs::JobContext::for_test(1, 3);
    registry
        .call("prune_jobs", &serde_json::json!({}), ctx)
        .await
        .unwrap();
    let abandoned = row(&pool, "abandoned").await;
    assert_eq!(abandoned.status, "unknown", "{abandoned:?}");
    assert!(
        abandoned
            .error_message
            .unwrap()
            .contains("cancelled or discarded")
    );
    assert_eq!(row(&pool, "running").await.status, "queued");
    assert_eq!(row(&pool, "recent").await.status, "queued");
}

fn new_message<'a>(
    key: &'a str,
    recipient: &'a str,
    message_id: &'a str,
) -> dkl_worker::store::verzonden_emails::NewMessage<'a> {
    dkl_worker::store::verzonden_emails::NewMessage {
        dedup_key: key,
        recipient,
        subject: "Welkom",
        template_name: None,
        mail_kind: "transactional",
        smtp_config: "default",
        job_id: "job-1",
        message_id,
        reply_to: None,
    }
}

/// The send log writer's session holds every in-flight message's lock, and
/// session locks are re-entrant: the writer itself must answer a second
/// begin for a held key `Busy`; a sender that goes away must not leave its
/// key locked; a step that fails (a recipient too long for its column) must
/// fail alone and release what it took.
#[sqlx::test(migrations = false)]
async fn the_send_log_keeps_one_sender_per_message_and_leaks_no_lock(pool: PgPool) {
    use dkl_worker::store::send_log::SendLog;
    use dkl_worker::store::verzonden_emails::{Begun, Finish, RateLimit};
    migrate(&pool).await;
    let log = SendLog::new(&pool);
    let none = RateLimit::default();

    let (first, guard) = log
        .begin(&new_message("k1", "a@example.org", "<1@x>"), false, none)
        .await
        .unwrap();
    assert!(matches!(first, Begun::Send { .. }), "{first:?}");
    let (second, no_guard) = log
        .begin(&new_message("k1", "a@example.org", "<2@x>"), false, none)
        .await
        .unwrap();
    assert_eq!(
        second,
        Begun::Busy,
        "a held key is busy, also within the writer's own session"
    );
    assert!(no_guard.is_none());
    // Another session cannot take it either.
    let other: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('k1', 1937))")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!other, "the lock is held in PostgreSQL, for every process");

    // The sender goes away (its job timed out): the key is free again, and
    // the next attempt finds the interrupted row and sends it (transactional).
    drop(guard);
    let again = wait_for(T, "the dropped guard to unlock the key", || async {
        let (b, g) = log
            .begin(&new_message("k1", "a@example.org", "<3@x>"), false, none)
            .await
            .unwrap();
        (b != Begun::Busy).then_some((b, g))
    })
    .await;
    let Begun::Send { id, message_id } = again.0 else {
        panic!("{:?}", again.0)
    };
    assert_eq!(message_id, "<1@x>", "a resend keeps the first Message-ID");
    log.finish(
        again.1.unwrap(),
        id,
        Finish::Sent {
            code: 250,
            reply: "ok",
        },
    )
    .await
    .unwrap();
    let (done, _) = log
        .begin(&new_message("k1", "a@example.org", "<4@x>"), false, none)
        .await
        .unwrap();
    assert_eq!(
        done,
        Begun::Done(dkl_worker::store::verzonden_emails::SendStatus::Sent)
    );

    // A bad step fails alone, and leaves its key unlocked.
    let long = format!("{}@example.org", "x".repeat(300));
    let (bad_message, good_message) = (
        new_message("k2", &long, "<5@x>"),
        new_message("k3", "b@example.org", "<6@x>"),
    );
    let (bad, good) = tokio::join!(
        log.begin(&bad_message, false, none),
        log.begin(&good_message, false, none)
    );
    assert!(
        bad.unwrap_err().to_string().contains("22001"),
        "value too long"
    );
    assert!(matches!(good.unwrap().0, Begun::Send { .. }));
    let (fixed, _) = log
        .begin(&new_message("k2", "c@example.org", "<7@x>"), false, none)
        .await
        .unwrap();
    assert!(
        matches!(fixed, Begun::Send { .. }),
        "k2 is not left locked: {fixed:?}"
    );

    // A sender that goes away while its begin runs (its job timed out) never
    // gets the guard; the writer's answer, dropped unread, releases the key,
    // and the row says the message never left.
    let message = new_message("k4", "d@example.org", "<8@x>");
    let gave_up =
        tokio::time::timeout(Duration::from_micros(1), log.begin(&message, false, none)).await;
    assert!(gave_up.is_err(), "the sender stopped waiting");
    let (later, _guard) = wait_for(T, "k4 to be free again", || async {
        let (b, g) = log
            .begin(&new_message("k4", "d@example.org", "<9@x>"), false, none)
            .await
            .unwrap();
        (b != Begun::Busy).then_some((b, g))
    })
    .await;
    assert!(matches!(later, Begun::Send { .. }), "{later:?}");

    // A NUL in a text (here the subject) is stored, not a batch failure.
    let mut nul = new_message("k5", "e@example.org", "<10@x>");
    nul.subject = "Welkom\0";
    let (stored, _) = log.begin(&nul, false, none).await.unwrap();
    assert!(matches!(stored, Begun::Send { .. }), "{stored:?}");
}

/// Each mail kind goes out through its own SMTP configuration (newsletter →
/// `newsletter`, transactional → `registration`, admin and auto-reply →
/// `default`), each a real server of its own; a kind whose configuration is
/// not set falls back to `default`.
#[sqlx::test(migrations = false)]
async fn each_smtp_configuration_is_used_for_its_kind(pool: PgPool) {
    migrate(&pool).await;
    let default = SmtpSink::start(&[]).expect("start smtp-sink");
    let registration = SmtpSink::start(&[]).expect("start smtp-sink");
    let newsletter = SmtpSink::start(&[]).expect("start smtp-sink");
    let vars: BTreeMap<&str, String> = [
        (
            "DKL_SMTP_CONFIGS",
            "default,registration,newsletter".to_string(),
        ),
        ("DKL_SMTP_DEFAULT_PORT", default.port.to_string()),
        ("DKL_SMTP_REGISTRATION_PORT", registration.port.to_string()),
        ("DKL_SMTP_NEWSLETTER_PORT", newsletter.port.to_string()),
        (
            "DKL_SMTP_NEWSLETTER_FROM",
            "Nieuwsbrief DKL <nieuws@dekoninklijkeloop.nl>".to_string(),
        ),
    ]
    .into();
    let three = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let client = JobClient::new(pool.clone());
    let kinds = [
        (MailKind::Transactional, "k-transactional"),
        (MailKind::Newsletter, "k-newsletter"),
        (MailKind::Admin, "k-admin"),
        (MailKind::AutoReply, "k-auto"),
    ];
    let mut jobs = Vec::new();
    for (kind, key) in kinds {
        let mail = SendEmail {
            kind,
            ..ready_mail(format!("{key}@example.org"), format!("Soort {key}"), key)
        };
        jobs.push(
            client
                .enqueue(&mail, EnqueueOptions::default())
                .await
                .unwrap()
                .id,
        );
    }
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &three),
        fast_config(),
    );
    for job in &jobs {
        wait_status(&pool, job, "Done", T).await;
    }
    rt.stop().await;
    let used: Vec<(String, String)> =
        sqlx::query_as("SELECT dedup_key, smtp_config FROM verzonden_emails ORDER BY dedup_key")
            .fetch_all(&pool)
            .await
            .unwrap();
    let used: BTreeMap<String, String> = used.into_iter().collect();
    assert_eq!(used["k-transactional"], "registration");
    assert_eq!(used["k-newsletter"], "newsletter");
    assert_eq!(used["k-admin"], "default");
    assert_eq!(used["k-auto"], "default");
    let got = |sink: &SmtpSink| {
        let mut keys: Vec<String> = sink
            .messages()
            .iter()
            .filter_map(|m| {
                // (an automatic answer's subject says so: "Auto: …")
                m.lines()
                    .find_map(|l| {
                        l.strip_prefix("Subject: Auto: Soort ")
                            .or_else(|| l.strip_prefix("Subject: Soort "))
                    })
                    .map(|l| l.trim().to_string())
            })
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(got(&registration), ["k-transactional"]);
    assert_eq!(got(&newsletter), ["k-newsletter"]);
    assert_eq!(got(&default), ["k-admin", "k-auto"]);
    assert!(
        newsletter.messages()[0]
            .contains("From: \"Nieuwsbrief DKL\" <nieuws@dekoninklijkeloop.nl>"),
        "the newsletter configuration's From: {}",
        newsletter.messages()[0]
    );

    // Without a `registration` configuration, transactional mail uses `default`.
    let only_default = config(default.port);
    let mail = ready_mail("fallback@example.org", "Soort k-fallback", "k-fallback");
    let job = client
        .enqueue(&mail, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &only_default),
        fast_config(),
    );
    wait_status(&pool, &job, "Done", T).await;
    rt.stop().await;
    assert_eq!(got(&default), ["k-admin", "k-auto", "k-fallback"]);
}
