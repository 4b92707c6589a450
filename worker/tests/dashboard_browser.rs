//! The operator dashboard in a real browser: Debian's headless Chromium,
//! driven by playwright-core (`tests/browser/dashboard.test.mjs`), against
//! the real `dkl-worker` binary with PostgreSQL and an SMTP server (postfix's
//! smtp-sink). This test prepares what the browser looks at (a job that
//! failed for a reason since fixed, a newsletter going out, a quarantined
//! message, a message whose HTML carries a script), runs the browser
//! script, and checks in the database and at the SMTP server that what was
//! clicked happened, once. Screenshots go to `.data/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dkl_shared::jobs::{EnqueueOptions, JobClient};
use dkl_shared::kinds::SendEmail;
use dkl_tests::process::{self, free_port, log_path};
use dkl_tests::{migrate, url_of, wait_for, wait_status};
use dkl_worker::smtp::sink::SmtpSink;
use dkl_worker::store::email_templates;
use dkl_worker::templates::files;
use sqlx::PgPool;
use uuid::Uuid;

const TOKEN: &str = "browser-test-token-0123456789abcdefghij";
const RECIPIENTS: i64 = 150;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Installs Chromium (Debian) and playwright-core (npm, pinned in
/// tests/browser/package-lock.json) when missing, as the other test
/// servers are installed.
fn ensure_browser() -> String {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        let script = "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null \
                      || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null)";
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .status()
            .expect("run apt-get");
        assert!(
            status.success() && Path::new(&chromium).exists(),
            "could not install chromium: apt-get ended with {status}"
        );
    }
    let browser = repo().join("tests/browser");
    if !browser.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&browser)
            .status()
            .expect("run npm (Node.js 20 is needed for the browser tests)");
        assert!(status.success(), "npm ci in tests/browser failed: {status}");
    }
    chromium
}

async fn sync_templates(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    for f in files::load_dir(&repo().join("templates")).unwrap() {
        email_templates::sync(&mut conn, &f.template, &f.variables, false)
            .await
            .unwrap();
    }
}

async fn import(pool: &PgPool, fixture: &str, max_bytes: u64) -> Uuid {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mail")
        .join(fixture);
    dkl_worker::import::import_path(pool, "info", &path, max_bytes, &mut |_| {})
        .await
        .unwrap();
    sqlx::query_scalar("SELECT id FROM incoming_emails ORDER BY created_at DESC LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_dashboard_works_in_a_real_browser(pool: PgPool) {
    let chromium = ensure_browser();
    migrate(&pool).await;
    dkl_tests::disable_default_schedules(&pool).await;
    let url = url_of(&pool).await;
    let sink = SmtpSink::start(&[]).expect("start smtp-sink");

    // A confirmation mail whose template is not loaded yet: it fails for good.
    let failed = JobClient::new(pool.clone())
        .enqueue(
            &SendEmail {
                to: "anna@example.org".into(),
                template: Some("contact_email".into()),
                variables: serde_json::json!({
                    "naam": "Anna de Vries",
                    "ontvangen_op": "2026-05-17T09:30:00+02:00",
                    "bericht": "Kan ik mijn startnummer nog wijzigen?"
                })
                .as_object()
                .cloned()
                .unwrap_or_default(),
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;

    let port = free_port();
    let mut worker = process::command(env!("CARGO_BIN_EXE_dkl-worker"), &url);
    worker
        .env("DKL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DKL_DASHBOARD_TOKEN", TOKEN)
        .env("DKL_SMTP_DEFAULT_PORT", sink.port.to_string())
        // Slow enough that the browser finds the newsletter mid-send.
        .env("DKL_SMTP_DEFAULT_RATE_PER_SECOND", "10")
        .env("DKL_PUBLIC_BASE_URL", "https://dkl.example/mail")
        .env("DKL_UNSUBSCRIBE_SECRET", "s".repeat(40));
    let _worker = process::spawn_logged(worker, &log_path("dashboard-browser-worker"));
    wait_status(&pool, &failed, "Killed", Duration::from_secs(60)).await;
    // The operator fixes the cause; the browser will retry the job.
    sync_templates(&pool).await;

    let quarantined = import(
        &pool,
        "mailparser-thirdparty-019-nested-mixed-alt-related.eml",
        512,
    )
    .await;
    let scripted = import(&pool, "mailparser-legacy-012-cp1252-qp.eml", 10 << 20).await;
    // As if the sanitiser had missed it: the page must still not run it.
    sqlx::query("UPDATE incoming_emails SET html_body = $2 WHERE id = $1")
        .bind(scripted)
        .bind(r#"<p>Hallo</p><script>document.body.dataset.ran = "yes"; parent.document.title = "pwned"; alert(1)</script><img src="x" onerror="alert(2)">"#)
        .execute(&pool)
        .await
        .unwrap();

    sqlx::query(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         SELECT 'Lid ' || i, 'lezer' || i || '@example.org', true FROM generate_series(1, $1) i",
    )
    .bind(RECIPIENTS)
    .execute(&pool)
    .await
    .unwrap();
    let newsletter = dkl_worker::store::newsletters::create(
        &pool,
        "Inschrijving 2027 geopend",
        "Beste lezer,\n\nDe inschrijving is open.",
        Some("<p>De inschrijving voor <b>2027</b> is open.</p>"),
    )
    .await
    .unwrap();
    dkl_worker::store::newsletters::schedule(&pool, newsletter, None)
        .await
        .unwrap();

    let screenshots = repo().join(".data/screenshots");
    let (job_id, shots_dir) = (failed.0.clone(), screenshots.clone());
    let output = tokio::task::spawn_blocking(move || {
        // `timeout`: a browser that hangs fails the test instead of CI.
        Command::new("timeout")
            .args([
                "600",
                "node",
                "--test",
                "--test-concurrency=1",
                "tests/browser/dashboard.test.mjs",
            ])
            .current_dir(repo())
            .env("CHROMIUM", chromium)
            .env("DKL_DASHBOARD_URL", format!("http://127.0.0.1:{port}"))
            .env("DKL_DASHBOARD_TOKEN", TOKEN)
            .env("DKL_FAILED_JOB", job_id)
            .env("DKL_NEWSLETTER", newsletter.to_string())
            .env("DKL_QUARANTINED", quarantined.to_string())
            .env("DKL_SCRIPT_MESSAGE", scripted.to_string())
            .env("DKL_SCREENSHOTS", shots_dir)
            .output()
            .expect("run node (Node.js 20)")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the browser tests failed:\n{report}"
    );
    assert!(report.contains("# fail 0"), "{report}");

    // What the clicks did, as the database and the SMTP server saw it.
    let job = dkl_tests::job(&pool, &failed).await;
    assert_eq!(job.status.as_str(), "Done", "the retried job finished");
    let (sent, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FROM newsletter_deliveries WHERE newsletter_id = $1",
    )
    .bind(newsletter)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((sent, total), (RECIPIENTS, RECIPIENTS));
    let messages = wait_for(
        Duration::from_secs(10),
        "the server to have every message",
        || async {
            let m = sink.messages();
            (m.len() as i64 > RECIPIENTS).then_some(m)
        },
    )
    .await;
    let mut per_recipient = std::collections::BTreeMap::<String, usize>::new();
    for m in &messages {
        if let Some(to) = m.lines().find_map(|l| l.strip_prefix("To: ")) {
            *per_recipient.entry(to.trim().to_lowercase()).or_default() += 1;
        }
    }
    let readers: Vec<_> = per_recipient
        .iter()
        .filter(|(to, _)| to.contains("lezer"))
        .collect();
    assert_eq!(readers.len() as i64, RECIPIENTS, "every reader got it");
    assert!(
        readers.iter().all(|(_, n)| **n == 1),
        "nobody got it twice: {readers:?}"
    );
    let audited: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, outcome FROM dashboard_audit WHERE actor LIKE 'Browser test%' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for want in [
        ("login", "refused"),
        ("login", "ok"),
        ("newsletter.pause", "ok"),
        ("newsletter.resume", "ok"),
        ("job.retry", "ok"),
        ("job.cancel", "refused"),
    ] {
        assert!(
            audited
                .iter()
                .any(|(a, o)| (a.as_str(), o.as_str()) == want),
            "{want:?} not in the audit trail: {audited:?}"
        );
    }
    for shot in [
        "overview",
        "overview-phone",
        "jobs",
        "job-done",
        "schedules",
        "newsletters",
        "mail-send-log",
        "message-html",
        "message-quarantined",
        "audit",
    ] {
        assert!(
            screenshots.join(format!("{shot}.png")).exists(),
            "screenshot {shot}"
        );
    }
}
