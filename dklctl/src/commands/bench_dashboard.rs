//! `dklctl bench dashboard`: how fast every dashboard page answers on big
//! tables. In a database of its own it writes 1,000,000 finished jobs and
//! 1,000,000 send-log rows (plus an inbox, bounces, suppressions and a
//! newsletter mid-send), serves the dashboard as dkl-worker does (its own
//! 3-connection pool, the real HTTP listener), logs in, and fetches each
//! page `--samples` times in turn. It prints p50/p95/max per page, and as
//! the ceiling of the same run the stylesheet (the listener without the
//! database) and a `SELECT 1` through the dashboard's pool.
//!
//! Target (issue 14): every page's p95 under 200 ms.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use dkl_shared::config::DashboardConfig;
use dkl_worker::dashboard::Dashboard;
use dkl_worker::http;
use sqlx::PgPool;

use super::scratch_db::ScratchDb;

/// Options of `dklctl bench dashboard`.
#[derive(clap::Args, Debug)]
pub struct DashboardBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Finished jobs in the job table.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: i64,
    /// Rows in the send log (`verzonden_emails`).
    #[arg(long, default_value_t = 1_000_000)]
    send_log: i64,
    /// Requests per page (after 3 to warm up).
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Keep the benchmark's database afterwards (its name is printed), to
    /// look at query plans.
    #[arg(long)]
    keep_database: bool,
}

#[derive(serde::Serialize)]
struct PageTiming {
    page: String,
    path: String,
    p50_ms: f64,
    p95_ms: f64,
    max_ms: f64,
    bytes: usize,
}

#[derive(serde::Serialize)]
struct Report {
    jobs: i64,
    send_log: i64,
    samples: usize,
    target_ms: f64,
    pages: Vec<PageTiming>,
    page_p95_ms: std::collections::BTreeMap<String, f64>,
    worst_page: String,
    worst_page_p95_ms: f64,
    ceiling_static_p95_ms: f64,
    ceiling_select_1_p95_ms: f64,
}

const TOKEN: &str = "bench-dashboard-token-0123456789abcdef";

/// Runs the benchmark in a database of its own.
pub async fn run(database_url: &str, args: DashboardBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.jobs >= 1_000 && args.send_log >= 1_000 && args.samples >= 5,
        "--jobs and --send-log must be at least 1000, --samples at least 5"
    );
    let scratch = ScratchDb::create(database_url, "dashboard").await?;
    let outcome = measure(&scratch.pool, &args).await;
    if args.keep_database {
        eprintln!("kept database {}", scratch.name());
    } else {
        scratch.drop().await;
    }
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn progress(args: &DashboardBenchArgs, what: &str) {
    if !args.json {
        eprintln!("… {what}");
    }
}

async fn measure(pool: &PgPool, args: &DashboardBenchArgs) -> anyhow::Result<Report> {
    progress(args, &format!("writing {} finished jobs", args.jobs));
    seed_jobs(pool, args.jobs).await?;
    progress(args, &format!("writing {} send-log rows", args.send_log));
    seed_send_log(pool, args.send_log).await?;
    progress(
        args,
        "writing an inbox, bounces, suppressions and a newsletter",
    );
    let ids = seed_the_rest(pool).await?;
    sqlx::raw_sql("ANALYZE").execute(pool).await?;

    // Served as dkl-worker serves it: its own small pool.
    let dashboard_pool = dkl_shared::db::dashboard_pool_on((*pool.connect_options()).clone());
    let listen = "127.0.0.1:0".parse()?;
    let config = DashboardConfig {
        token: Some(TOKEN.into()),
        password_hash: None,
        secure_cookie: None,
    };
    let dashboard = Dashboard::new(&config, dashboard_pool.clone(), Arc::default(), listen)
        .context("dashboard config")?;
    let (addr, server) = http::bind_dashboard(listen, dashboard).await?;
    let server = tokio::spawn(server);
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = client
        .post(format!("{base}/dashboard/login"))
        .form(&[("secret", TOKEN), ("name", "bench")])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .context("login gave no cookie")?
        .to_string();

    let mut timings = Vec::new();
    for (name, path) in page_list(&ids) {
        progress(args, &format!("timing {name}"));
        timings.push(time_page(&client, &base, &cookie, name, &path, args.samples).await?);
    }
    let ceiling_static = time_page(
        &client,
        &base,
        "",
        "static",
        "/dashboard/static/dashboard.css",
        args.samples,
    )
    .await?;
    let mut select_1 = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let started = Instant::now();
        sqlx::query("SELECT 1").execute(&dashboard_pool).await?;
        select_1.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    server.abort();
    dashboard_pool.close().await;

    let worst = timings
        .iter()
        .max_by(|a, b| a.p95_ms.total_cmp(&b.p95_ms))
        .context("no pages")?;
    Ok(Report {
        jobs: args.jobs,
        send_log: args.send_log,
        samples: args.samples,
        target_ms: 200.0,
        page_p95_ms: timings.iter().map(|t| (t.page.clone(), t.p95_ms)).collect(),
        worst_page: worst.page.clone(),
        worst_page_p95_ms: worst.p95_ms,
        ceiling_static_p95_ms: ceiling_static.p95_ms,
        ceiling_select_1_p95_ms: percentile(&mut select_1, 0.95),
        pages: timings,
    })
}

/// Ids the detail pages and deep pages need.
struct SeededIds {
    job: String,
    middle_job: String,
    newsletter: uuid::Uuid,
    message: uuid::Uuid,
    deep_send_log: String,
}

fn page_list(ids: &SeededIds) -> Vec<(&'static str, String)> {
    vec![
        ("overview", "/dashboard".into()),
        ("jobs", "/dashboard/jobs".into()),
        ("jobs_discarded", "/dashboard/jobs?state=discarded".into()),
        ("jobs_cancelled", "/dashboard/jobs?state=cancelled".into()),
        (
            "jobs_kind_state",
            "/dashboard/jobs?kind=process_incoming_email&state=discarded".into(),
        ),
        ("jobs_queue", "/dashboard/jobs?queue=maintenance".into()),
        (
            "jobs_schedule",
            "/dashboard/jobs?schedule=fetch-mail".into(),
        ),
        ("jobs_pending", "/dashboard/jobs?state=pending".into()),
        (
            "jobs_page_deep",
            format!("/dashboard/jobs?before={}", ids.middle_job),
        ),
        ("job", format!("/dashboard/jobs/{}", ids.job)),
        ("schedules", "/dashboard/schedules".into()),
        ("newsletters", "/dashboard/newsletters".into()),
        (
            "newsletter",
            format!("/dashboard/newsletters/{}", ids.newsletter),
        ),
        ("send_log", "/dashboard/mail".into()),
        ("send_log_failures", "/dashboard/mail?failures=1".into()),
        (
            "send_log_deep",
            format!("/dashboard/mail?{}", ids.deep_send_log),
        ),
        ("inbox", "/dashboard/mail/inbox".into()),
        (
            "inbox_quarantined",
            "/dashboard/mail/inbox?quarantined=1".into(),
        ),
        ("bounces", "/dashboard/mail/bounces".into()),
        (
            "message",
            format!("/dashboard/mail/messages/{}", ids.message),
        ),
        ("audit", "/dashboard/audit".into()),
    ]
}

async fn time_page(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    name: &str,
    path: &str,
    samples: usize,
) -> anyhow::Result<PageTiming> {
    let mut ms = Vec::with_capacity(samples);
    let mut bytes = 0;
    for i in 0..samples + 3 {
        let started = Instant::now();
        let r = client
            .get(format!("{base}{path}"))
            .header(reqwest::header::COOKIE, cookie)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            status.is_success(),
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        bytes = body.len();
        if i >= 3 {
            ms.push(took);
        }
    }
    Ok(PageTiming {
        page: name.into(),
        path: path.into(),
        p50_ms: percentile(&mut ms, 0.50),
        p95_ms: percentile(&mut ms, 0.95),
        max_ms: percentile(&mut ms, 1.0),
        bytes,
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    (v[i] * 100.0).round() / 100.0
}

/// `n` finished jobs over the last 7 days (ids in time order, as ULIDs are):
/// mostly mail sends, 1.5 % discarded, 0.3 % cancelled; a tenth of the
/// fetches came from the `fetch-mail` schedule; and a few live jobs.
async fn seed_jobs(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE bench_jobs AS
         SELECT i, '01' || lpad(to_hex(i), 24, '0') AS id,
                now() - make_interval(secs => ({n} - i) * 604800.0 / {n}) AS done_at,
                CASE WHEN i % 10 < 7 THEN 'send_email' WHEN i % 10 < 9 THEN 'fetch_mail'
                     WHEN i % 50 = 9 THEN 'apply_retention' ELSE 'process_incoming_email' END AS kind,
                CASE WHEN i % 200 < 3 THEN 'discarded' WHEN i % 1000 < 13 AND i % 200 >= 3 THEN 'cancelled' ELSE 'done' END AS outcome
           FROM generate_series(1, {n}) i;
         INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, lock_at, lock_by,
                                  done_at, queue, last_error, cancelled_at)
         SELECT convert_to('{{\"to\":\"lid' || i || '@example.org\",\"template\":\"contact_email\"}}', 'UTF8'),
                id, kind, CASE WHEN outcome = 'done' THEN 'Done' ELSE 'Killed' END,
                CASE WHEN outcome = 'discarded' THEN 8 ELSE 1 END, 8,
                done_at - interval '2 seconds', done_at - interval '1 second', 'bench-worker',
                done_at,
                CASE kind WHEN 'send_email' THEN 'mail' WHEN 'fetch_mail' THEN 'incoming'
                          WHEN 'process_incoming_email' THEN 'incoming' ELSE 'maintenance' END,
                CASE WHEN outcome = 'discarded' THEN '550 5.1.1 <lid' || i || '@example.org>: mailbox unknown' END,
                CASE WHEN outcome = 'cancelled' THEN done_at END
           FROM bench_jobs;
         INSERT INTO job_schedule_runs (schedule_id, tick_at, job_id, outcome, scheduler_id)
         SELECT s.id, b.done_at, b.id, 'enqueued', 'bench'
           FROM bench_jobs b, job_schedules s
          WHERE s.name = 'fetch-mail' AND b.kind = 'fetch_mail' AND b.i % 100 = 7;
         INSERT INTO apalis.jobs (job, id, job_type, status, run_at, queue)
         SELECT convert_to('{{}}', 'UTF8'), '02' || lpad(to_hex(i), 24, '0'), 'send_email', 'Pending',
                now() + make_interval(secs => i), 'mail'
           FROM generate_series(1, 200) i;
         DROP TABLE bench_jobs;"
    )))
    .execute(pool)
    .await
    .context("seed jobs")?;
    Ok(())
}

/// `n` send-log rows over the last year: 0.4 % failed, 0.2 % bounced.
async fn seed_send_log(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO verzonden_emails (recipient_email, subject, template_name, status, sent_at, error_message,
                                       retry_count, mail_kind)
         SELECT 'lid' || i || '@example.org', 'Bevestiging van je inschrijving', 'aanmelding_email',
                CASE WHEN i % 500 < 2 THEN 'failed' WHEN i % 500 = 2 THEN 'bounced' ELSE 'sent' END,
                now() - make_interval(secs => ({n} - i) * 31536000.0 / {n}),
                CASE WHEN i % 500 < 3 THEN '550 5.1.1 mailbox unknown' END,
                CASE WHEN i % 500 < 2 THEN 3 ELSE 0 END, 'transactional'
           FROM generate_series(1, {n}) i"
    )))
    .execute(pool)
    .await
    .context("seed send log")?;
    Ok(())
}

/// 20,000 incoming messages (1 % quarantined), 5,000 bounces, 2,000
/// suppressions, and a newsletter to 50,000 subscribers, 80 % sent.
async fn seed_the_rest(pool: &PgPool) -> anyhow::Result<SeededIds> {
    sqlx::raw_sql(
        "INSERT INTO incoming_emails (account_type, mailbox, sender_email, subject, body, headers, received_at,
                                      raw_size, content_hash, processed, quarantine_reason)
         SELECT 'info', 'INBOX', 'afzender' || i || '@example.org', 'Vraag over de loop ' || i,
                'Beste organisatie,\n\nIk heb een vraag.', 'Subject: Vraag over de loop ' || i,
                now() - make_interval(mins => 20000 - i), 2048, sha256(i::text::bytea), i % 100 <> 0,
                CASE WHEN i % 100 = 0 THEN 'not a mail message: no header could be read' END
           FROM generate_series(1, 20000) i;
         INSERT INTO email_bounces (recipient, kind, action, status, format, diagnostic, created_at)
         SELECT 'lid' || i || '@example.org', CASE WHEN i % 3 = 0 THEN 'soft' ELSE 'hard' END,
                CASE WHEN i % 3 = 0 THEN 'delayed' ELSE 'failed' END, '5.1.1', 'dsn', 'mailbox unknown',
                now() - make_interval(mins => i * 10)
           FROM generate_series(1, 5000) i;
         INSERT INTO email_suppressions (address, scope, reason, source)
         SELECT 'lid' || i || '@example.org', 'all', 'hard_bounce', 'bench'
           FROM generate_series(1, 2000) i;
         INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         SELECT 'Lezer ' || i, 'lezer' || i || '@example.org', true FROM generate_series(1, 50000) i;",
    )
    .execute(pool)
    .await
    .context("seed inbox, bounces, suppressions, subscribers")?;
    let newsletter =
        dkl_worker::store::newsletters::create(pool, "Bench", "Beste lezer", None).await?;
    dkl_worker::store::newsletters::start(pool, newsletter).await?;
    sqlx::query(
        "UPDATE newsletter_deliveries SET status = 'sent', sent_at = now() - make_interval(secs => id % 60)
          WHERE newsletter_id = $1 AND id % 5 <> 0",
    )
    .bind(newsletter)
    .execute(pool)
    .await
    .context("seed deliveries")?;
    let job: String = sqlx::query_scalar("SELECT max(id) FROM apalis.jobs WHERE status = 'Killed'")
        .fetch_one(pool)
        .await?;
    let middle_job: String = sqlx::query_scalar(
        "SELECT id FROM apalis.jobs WHERE id < '02' ORDER BY id OFFSET (SELECT count(*) / 2 FROM apalis.jobs) LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    let message = sqlx::query_scalar("SELECT id FROM incoming_emails LIMIT 1")
        .fetch_one(pool)
        .await?;
    let (at, id): (chrono::DateTime<chrono::Utc>, uuid::Uuid) = sqlx::query_as(
        "SELECT sent_at, id FROM verzonden_emails ORDER BY sent_at LIMIT 1 OFFSET (SELECT count(*) / 3 FROM verzonden_emails)",
    )
    .fetch_one(pool)
    .await?;
    let deep_send_log = format!(
        "before_at={}&before_id={id}",
        at.to_rfc3339().replace('+', "%2B")
    );
    Ok(SeededIds {
        job,
        middle_job,
        newsletter,
        message,
        deep_send_log,
    })
}

fn print_table(r: &Report) {
    println!(
        "dashboard pages with {} finished jobs and {} send-log rows ({} requests each, after 3 to warm up)",
        r.jobs, r.send_log, r.samples
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9}  path",
        "page", "p50 ms", "p95 ms", "max ms", "bytes"
    );
    for t in &r.pages {
        println!(
            "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>9}  {}",
            t.page, t.p50_ms, t.p95_ms, t.max_ms, t.bytes, t.path
        );
    }
    println!(
        "worst p95: {} {:.1} ms (target < {:.0} ms)",
        r.worst_page, r.worst_page_p95_ms, r.target_ms
    );
    println!(
        "ceiling: the stylesheet (no database) p95 {:.2} ms; SELECT 1 through the dashboard's pool p95 {:.2} ms",
        r.ceiling_static_p95_ms, r.ceiling_select_1_p95_ms
    );
}
