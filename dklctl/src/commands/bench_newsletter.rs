//! `dklctl bench newsletter`: a newsletter to 10,000 and then 100,000
//! subscribers, rendered per recipient, sent to a local `smtp-sink` and
//! recorded (deliveries and `verzonden_emails`), by the real lane jobs in
//! this process; then postfix's `smtp-source` with as many connections
//! against the same sink (the ceiling); and the process's peak memory
//! during each send.
//!
//! The benchmark's lanes run on a queue of their own and its recipients are
//! made-up addresses at example.org, removed afterwards, so a running system
//! never sends them.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dkl_shared::config::Config;
use dkl_shared::jobs::{JobKind, WorkerRuntime, admin};
use dkl_shared::kinds::SendNewsletter;
use dkl_worker::smtp::sink::{SMTP_SOURCE, SmtpSink};
use dkl_worker::store::newsletters::{self, NewsletterStatus};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Options of `dklctl bench newsletter`.
#[derive(clap::Args, Debug)]
pub struct NewsletterBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Recipients of the big run (the small one has a tenth).
    #[arg(long, default_value_t = 100_000)]
    recipients: usize,
    /// SMTP connections; smtp-source gets as many.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

const QUEUE: &str = "bench_newsletter";
const LANES: u8 = 4;

#[derive(serde::Serialize)]
struct Report {
    recipients: usize,
    connections: usize,
    lanes: u8,
    message_bytes: usize,
    newsletter_seconds: f64,
    newsletter_per_s: f64,
    smtp_source_per_s: f64,
    ratio: f64,
    small_run_recipients: usize,
    small_run_per_s: f64,
    peak_rss_mb_10k: f64,
    peak_rss_mb_100k: f64,
    peak_rss_growth_pct: f64,
}

/// One send: how long, how many, peak memory.
struct Run {
    recipients: usize,
    seconds: f64,
    peak_kib: u64,
    message_bytes: usize,
}

/// Runs the benchmark.
pub async fn run(pool: &PgPool, config: &Config, args: NewsletterBenchArgs) -> anyhow::Result<()> {
    if args.recipients < 100 || args.connections == 0 {
        bail!("--recipients must be at least 100 and --connections at least 1");
    }
    if dkl_worker::store::email_templates::by_name(pool, "newsletter")
        .await?
        .is_none()
    {
        bail!("no template `newsletter` in email_templates; run `dklctl templates sync` first");
    }
    let sink =
        SmtpSink::start_discarding(&[]).context("cannot start a local smtp-sink (postfix)")?;
    let mut config = config.clone();
    config
        .jobs
        .queue_concurrency
        .insert(QUEUE.into(), LANES as usize);
    for smtp in config.mail.all_mut() {
        smtp.host = "127.0.0.1".into();
        smtp.port = sink.port;
        smtp.pool_size = args.connections;
        smtp.rate_per_second = None;
        smtp.rate_per_hour = None;
        smtp.dkim = None;
    }
    // A configuration of its own, as a deployment has: then every
    // connection carries the newsletter (none is kept back for other mail).
    let mut own = config.mail.default.clone();
    own.name = "newsletter".into();
    config.mail.named.insert(own.name.clone(), own);
    let small = send_round(pool, &config, args.recipients / 10, args.json).await?;
    let big = send_round(pool, &config, args.recipients, args.json).await?;

    let source_started = Instant::now();
    let status = Command::new(SMTP_SOURCE)
        .args([
            "-s",
            &args.connections.to_string(),
            "-m",
            &big.recipients.to_string(),
            "-l",
            &big.message_bytes.to_string(),
            "-f",
            "nieuwsbrief@dekoninklijkeloop.nl",
            "-t",
            "deelnemer@example.org",
        ])
        .arg(format!("127.0.0.1:{}", sink.port))
        .status()
        .context("run smtp-source")?;
    let source_seconds = source_started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("smtp-source failed: {status}");
    }
    let per_s = big.recipients as f64 / big.seconds;
    let smtp_source_per_s = big.recipients as f64 / source_seconds;
    let mb = |kib: u64| kib as f64 / 1024.0;
    let report = Report {
        recipients: big.recipients,
        connections: args.connections,
        lanes: LANES,
        message_bytes: big.message_bytes,
        newsletter_seconds: big.seconds,
        newsletter_per_s: per_s,
        smtp_source_per_s,
        ratio: per_s / smtp_source_per_s,
        small_run_recipients: small.recipients,
        small_run_per_s: small.recipients as f64 / small.seconds,
        peak_rss_mb_10k: mb(small.peak_kib),
        peak_rss_mb_100k: mb(big.peak_kib),
        peak_rss_growth_pct: (big.peak_kib as f64 / small.peak_kib.max(1) as f64 - 1.0) * 100.0,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("MEASUREMENT                                      RESULT");
    println!(
        "recipients (rendered, sent, recorded)            {}",
        report.recipients
    );
    println!(
        "SMTP connections / lanes                         {} / {}",
        report.connections, report.lanes
    );
    println!(
        "message size                                     {} bytes",
        report.message_bytes
    );
    println!(
        "dkl-mail-worker                                  {:.0} messages/s ({:.1} s)",
        report.newsletter_per_s, report.newsletter_seconds
    );
    println!(
        "smtp-source, same sink, same connections         {:.0} messages/s (ceiling)",
        report.smtp_source_per_s
    );
    println!(
        "ratio                                            {:.2}",
        report.ratio
    );
    println!(
        "{:<7} recipients                               {:.0} messages/s",
        report.small_run_recipients, report.small_run_per_s
    );
    println!(
        "peak memory at {} / {} recipients        {:.1} / {:.1} MB ({:+.1}%)",
        report.small_run_recipients,
        report.recipients,
        report.peak_rss_mb_10k,
        report.peak_rss_mb_100k,
        report.peak_rss_growth_pct
    );
    Ok(())
}

/// Makes `n` subscribers and a newsletter, sends it with the lane jobs of a
/// runtime in this process, checks every delivery was sent, and cleans up.
async fn send_round(pool: &PgPool, config: &Config, n: usize, quiet: bool) -> anyhow::Result<Run> {
    let run = ulid::Ulid::generate().to_string().to_lowercase();
    sqlx::query(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         SELECT 'Deelnemer ' || i, 'nb-' || $1 || '-' || i || '@example.org', true FROM generate_series(1, $2) i",
    )
    .bind(&run)
    .bind(n as i64)
    .execute(pool)
    .await?;
    let html = "<p>De inschrijving voor De Koninklijke Loop 2027 is geopend. Loop mee en steun het goede doel!</p>\n"
        .repeat(20);
    let id =
        newsletters::create(pool, &format!("Benchmark {run}"), "zie HTML", Some(&html)).await?;
    let cleanup = Cleanup {
        pool: pool.clone(),
        run: run.clone(),
        id,
    };
    let result = send_newsletter(pool, config, &run, id, quiet).await;
    cleanup.run().await?;
    result
}

/// Sends the benchmark's newsletter `id` to the subscribers of `run` only.
async fn send_newsletter(
    pool: &PgPool,
    config: &Config,
    run: &str,
    id: Uuid,
    quiet: bool,
) -> anyhow::Result<Run> {
    newsletters::start(pool, id).await?;
    // Only the benchmark's own subscribers: never a real one.
    sqlx::query(
        "DELETE FROM newsletter_deliveries WHERE newsletter_id = $1 AND email NOT LIKE 'nb-' || $2 || '-%@example.org'",
    )
    .bind(id)
    .bind(run)
    .execute(pool)
    .await?;
    let total = newsletters::progress(pool, id)
        .await?
        .map_or(0, |p| p.total) as usize;
    let payloads: Vec<Vec<u8>> = (0..LANES)
        .map(|lane| {
            serde_json::to_vec(&SendNewsletter {
                newsletter_id: id,
                lane,
                by_status: false,
            })
        })
        .collect::<Result<_, _>>()?;
    let jobs = admin::insert_many(
        pool,
        SendNewsletter::KIND,
        QUEUE,
        &payloads,
        SendNewsletter::MAX_ATTEMPTS,
    )
    .await?;
    if !quiet {
        eprintln!("newsletter to {total} recipients …");
    }
    reset_peak_memory();
    let registry = dkl_worker::handlers::registry(pool, config);
    let runtime =
        WorkerRuntime::new(pool.clone(), registry, config.jobs.clone()).serve_only(&[QUEUE]);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let status: NewsletterStatus =
            sqlx::query_scalar("SELECT status FROM newsletters WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
        if status == NewsletterStatus::Sent {
            break;
        }
        if started.elapsed() > Duration::from_secs(1200) {
            bail!("the newsletter was not sent within 20 minutes");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_kib = super::bench_ingest::rss_kib("VmHWM:");
    shutdown.cancel();
    handle.await.context("runtime task")??;
    admin::delete_jobs(pool, &jobs).await?;
    let progress = newsletters::progress(pool, id)
        .await?
        .context("the newsletter went away")?;
    if progress.sent as usize != total {
        bail!(
            "only {} of {total} deliveries were sent: {progress:?}",
            progress.sent
        );
    }
    let message_bytes = message_size(pool, config, id).await?;
    Ok(Run {
        recipients: total,
        seconds,
        peak_kib,
        message_bytes,
    })
}

/// The size of one recipient's message as sent (for smtp-source's `-l`).
async fn message_size(pool: &PgPool, config: &Config, id: Uuid) -> anyhow::Result<usize> {
    use dkl_worker::newsletter::message::Edition;
    use dkl_worker::newsletter::token::{Subject, TokenKey};
    let newsletter = newsletters::get(pool, id)
        .await?
        .context("the newsletter went away")?;
    let template = dkl_worker::store::email_templates::by_name(pool, "newsletter")
        .await?
        .context("no template `newsletter`")?;
    let from = config
        .mail
        .smtp_for("newsletter")
        .from
        .parse()
        .map_err(|e| anyhow::anyhow!("the newsletter From address: {e}"))?;
    let signer = TokenKey::new(config.newsletter.unsubscribe_secret.clone())
        .signer(pool)
        .await?
        .clone();
    let edition = Edition::new(
        &newsletter,
        template.template(),
        from,
        &config.newsletter,
        signer,
    );
    let message = edition.build(
        &dkl_worker::templates::Renderer::new(),
        "deelnemer1@example.org",
        Some("Deelnemer 1"),
        &Subject::Address("deelnemer1@example.org".into()),
        "<bench@example.org>",
    )?;
    Ok(message.formatted().len())
}

/// Removes what a round made.
struct Cleanup {
    pool: PgPool,
    run: String,
    id: Uuid,
}

impl Cleanup {
    async fn run(self) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM verzonden_emails WHERE newsletter_id = $1")
            .bind(self.id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM newsletters WHERE id = $1")
            .bind(self.id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM gebruikers WHERE email LIKE 'nb-' || $1 || '-%@example.org'")
            .bind(&self.run)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Starts a new peak (`VmHWM`) from the current memory (Linux).
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
