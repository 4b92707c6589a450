//! `dklctl bench send`: transactional mail rendered from a template, sent
//! over SMTP and logged in `verzonden_emails`, against a local `smtp-sink`;
//! and, in the same run against the same sink, postfix's `smtp-source` with
//! as many connections: the ceiling.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dkl_shared::config::Config;
use dkl_shared::jobs::{JobKind, WorkerRuntime, admin};
use dkl_shared::kinds::SendEmail;
use dkl_worker::smtp::sink::{SMTP_SOURCE, SmtpSink};
use dkl_worker::smtp::stats::{MailStats, SendOutcome};
use dkl_worker::store::{email_templates, verzonden_emails};
use dkl_worker::templates::MailTemplate;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Options of `dklctl bench send`.
#[derive(clap::Args, Debug)]
pub struct SendBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Mails to send.
    #[arg(long, default_value_t = 20_000)]
    mails: usize,
    /// SMTP connections; smtp-source gets as many.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Send jobs at once (the mail queue's concurrency); they share the SMTP
    /// connections, so a job renders and records while another one sends.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// The queue the benchmark's jobs use, so a running system's mail is never
/// touched (and never sent to the sink).
const QUEUE: &str = "bench_mail";
const TEMPLATE: &str = "bench_send";

#[derive(serde::Serialize)]
struct Report {
    mails: usize,
    connections: usize,
    concurrency: usize,
    message_bytes: usize,
    send_seconds: f64,
    send_per_s: f64,
    smtp_source_per_s: f64,
    ratio: f64,
    rss_kib_after_10pct: u64,
    rss_kib_at_end: u64,
    rss_growth_pct: f64,
}

/// Runs the benchmark.
pub async fn run(pool: &PgPool, config: &Config, args: SendBenchArgs) -> anyhow::Result<()> {
    if args.mails < 10 || args.connections == 0 || args.concurrency == 0 {
        bail!("--mails must be at least 10, --connections and --concurrency at least 1");
    }
    let sink =
        SmtpSink::start_discarding(&[]).context("cannot start a local smtp-sink (postfix)")?;
    let run_id = ulid::Ulid::generate().to_string();
    let prefix = format!("bench:{run_id}:");
    let body = "<p>Beste {{naam}},</p>\n".to_string()
        + &"<p>Dit is bericht {{n}} van de benchmark: een gewone transactionele mail met wat tekst, zodat hij ongeveer zo groot is als een echte bevestiging van De Koninklijke Loop.</p>\n".repeat(12);
    let template = MailTemplate {
        name: TEMPLATE.into(),
        subject: "Bevestiging {{n}} voor {{naam}}".into(),
        html: body,
        text: None,
    };
    let mut conn = pool.acquire().await?;
    email_templates::sync(&mut conn, &template, &["naam".into(), "n".into()], true).await?;
    drop(conn);

    let mut config = config.clone();
    config
        .jobs
        .queue_concurrency
        .insert(QUEUE.into(), args.concurrency.max(1));
    for smtp in config.mail.all_mut() {
        smtp.host = "127.0.0.1".into();
        smtp.port = sink.port;
        smtp.pool_size = args.connections;
        smtp.rate_per_second = None;
        smtp.rate_per_hour = None;
    }
    let payloads: Vec<Vec<u8>> = (0..args.mails)
        .map(|i| {
            let mail = SendEmail {
                to: format!("deelnemer{i}@example.org"),
                template: Some(TEMPLATE.into()),
                variables: serde_json::json!({"naam": format!("Deelnemer {i}"), "n": i})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                dedup_key: Some(format!("{prefix}{i}")),
                ..Default::default()
            };
            serde_json::to_vec(&mail)
        })
        .collect::<Result<_, _>>()?;
    let ids = admin::insert_many(
        pool,
        SendEmail::KIND,
        QUEUE,
        &payloads,
        SendEmail::MAX_ATTEMPTS,
    )
    .await?;
    if !args.json {
        eprintln!(
            "{} mails enqueued; sending to smtp-sink on 127.0.0.1:{} over {} connections",
            args.mails, sink.port, args.connections
        );
    }

    let stats = std::sync::Arc::new(MailStats::default());
    let registry =
        dkl_worker::handlers::registry_with(pool, &config, stats.clone(), Default::default());
    let runtime =
        WorkerRuntime::new(pool.clone(), registry, config.jobs.clone()).serve_only(&[QUEUE]);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    // Progress from the worker's own counters (a query per look would cost
    // the database more than the mail does); then the jobs' outcomes.
    let mut rss_10 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = stats.snapshot().count(SendOutcome::Sent) as usize;
        if rss_10 == 0 && sent >= args.mails / 10 {
            rss_10 = rss_kib();
        }
        if sent >= args.mails {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "the mails were not all sent within 15 minutes ({sent} of {})",
                args.mails
            );
        }
    }
    while admin::live_in_queue(pool, QUEUE).await? > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the send jobs did not all finish within 15 minutes");
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    let rss_end = rss_kib();
    shutdown.cancel();
    handle.await.context("runtime task")??;
    let counts = verzonden_emails::count_by_status(pool, &prefix).await?;
    let sent = counts
        .iter()
        .find(|(s, _)| s.as_str() == "sent")
        .map_or(0, |(_, n)| *n) as usize;
    admin::delete_jobs(pool, &ids).await?;
    verzonden_emails::delete_by_key_prefix(pool, &prefix).await?;
    if sent != args.mails {
        bail!("only {sent} of {} mails were sent: {counts:?}", args.mails);
    }

    // The same number of messages of the same size, through the same sink,
    // by postfix's own load generator with as many connections.
    let sample = dkl_worker::templates::Renderer::new()
        .render(
            &template,
            &serde_json::json!({"naam": "Deelnemer 1", "n": 1}),
        )
        .map_err(anyhow::Error::msg)?;
    let message_bytes = sample.html.len() + sample.text.len() + 800;
    let source_started = Instant::now();
    let status = Command::new(SMTP_SOURCE)
        .args([
            "-s",
            &args.connections.to_string(),
            "-m",
            &args.mails.to_string(),
            "-l",
            &message_bytes.to_string(),
        ])
        .args([
            "-f",
            "bench@dekoninklijkeloop.nl",
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
    let send_per_s = args.mails as f64 / send_seconds;
    let smtp_source_per_s = args.mails as f64 / source_seconds;
    let report = Report {
        mails: args.mails,
        connections: args.connections,
        concurrency: args.concurrency,
        message_bytes,
        send_seconds,
        send_per_s,
        smtp_source_per_s,
        ratio: send_per_s / smtp_source_per_s,
        rss_kib_after_10pct: rss_10,
        rss_kib_at_end: rss_end,
        rss_growth_pct: if rss_10 > 0 {
            (rss_end as f64 / rss_10 as f64 - 1.0) * 100.0
        } else {
            0.0
        },
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("MEASUREMENT                                     RESULT");
        println!(
            "mails rendered, sent and logged                 {}",
            report.mails
        );
        println!(
            "SMTP connections                                {}",
            report.connections
        );
        println!(
            "send jobs at once                               {}",
            report.concurrency
        );
        println!(
            "dkl-mail-worker                                 {:.0} messages/s ({:.1} s)",
            report.send_per_s, report.send_seconds
        );
        println!(
            "smtp-source, same sink, same connections        {:.0} messages/s (ceiling)",
            report.smtp_source_per_s
        );
        println!(
            "ratio                                           {:.2}",
            report.ratio
        );
        println!(
            "process memory after 10% / at the end          {} / {} KiB ({:+.1}%)",
            report.rss_kib_after_10pct, report.rss_kib_at_end, report.rss_growth_pct
        );
    }
    Ok(())
}

/// This process's resident memory in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
