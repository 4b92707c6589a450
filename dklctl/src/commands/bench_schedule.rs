//! `dklctl bench schedule`: how late admin rows (`scheduled_jobs`) start.
//!
//! Inserts rows due over the next seconds, as an admin would, and runs a real
//! in-process scheduler and worker runtime (the code `dkl-scheduler` and
//! `dkl-worker` run). Lateness is the job's start minus the row's `run_at`,
//! both by the database clock. The rows' jobs run on their own queue, so a
//! worker running elsewhere does not take them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use dkl_scheduler::Scheduler;
use dkl_shared::config::Config;
use dkl_shared::jobs::{Registry, WorkerRuntime, admin};
use dkl_shared::kinds;
use dkl_shared::schedules::store::{self, NewScheduledJob};
use dkl_worker::handlers::ping;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::bench::percentile;

const QUEUE: &str = "bench-admin";

/// Options of `dklctl bench schedule`.
#[derive(clap::Args, Debug)]
pub struct ScheduleBenchArgs {
    /// Admin rows to schedule.
    #[arg(long, default_value_t = 100)]
    rows: usize,
    /// Rows are due at random times 1 s to this many seconds ahead.
    #[arg(long, default_value_t = 10)]
    spread_secs: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    rows: usize,
    enqueue_lag_p50_ms: f64,
    enqueue_lag_p99_ms: f64,
    start_lateness_p50_ms: f64,
    start_lateness_p99_ms: f64,
    start_lateness_max_ms: f64,
}

/// Runs the measurement and prints it.
pub async fn run(pool: &PgPool, config: &Config, args: ScheduleBenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; benchmark figures need `cargo run --release -p dklctl -- bench schedule`"
        );
    }
    let shutdown = CancellationToken::new();
    let mut registry = Registry::new();
    ping::register(&mut registry);
    let mut jobs_config = config.jobs.clone();
    jobs_config.queue_concurrency = BTreeMap::from([(QUEUE.to_string(), 50)]);
    let runtime =
        tokio::spawn(WorkerRuntime::new(pool.clone(), registry, jobs_config).run(shutdown.clone()));
    let scheduler = tokio::spawn(
        Scheduler::new(pool.clone(), kinds::catalog(), config.scheduler.clone())
            .run(shutdown.clone()),
    );

    eprintln!(
        "scheduling {} admin rows 1–{} s ahead ...",
        args.rows, args.spread_secs
    );
    let payload = serde_json::json!({ "message": "bench schedule" });
    let mut ids = Vec::with_capacity(args.rows);
    for _ in 0..args.rows {
        let ahead = chrono::Duration::milliseconds(
            1000 + fastrand::i64(0..(args.spread_secs.max(2) as i64 - 1) * 1000),
        );
        let row = NewScheduledJob {
            job_kind: "ping",
            payload: &payload,
            run_at: Some(Utc::now() + ahead),
            created_by: "dklctl bench",
            note: Some("benchmark row"),
            queue: Some(QUEUE),
        };
        ids.push(store::insert_scheduled_job(pool, &row).await?.id);
    }

    let started = Instant::now();
    let lateness = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = store::admin_row_lateness(pool, &ids).await?;
        if done.len() == ids.len() {
            break done;
        }
        if started.elapsed() > Duration::from_secs(args.spread_secs + 60) {
            bail!(
                "only {} of {} rows ran within {} s",
                done.len(),
                ids.len(),
                args.spread_secs + 60
            );
        }
    };
    shutdown.cancel();
    let _ = scheduler.await;
    runtime.await??;
    store::delete_scheduled_jobs(pool, &ids).await?;
    admin::delete_queue(pool, QUEUE).await?;

    let (mut enqueue, mut start): (Vec<f64>, Vec<f64>) = lateness.into_iter().unzip();
    let report = Report {
        rows: ids.len(),
        enqueue_lag_p50_ms: percentile(&mut enqueue, 50.0),
        enqueue_lag_p99_ms: percentile(&mut enqueue, 99.0),
        start_lateness_p50_ms: percentile(&mut start, 50.0),
        start_lateness_p99_ms: percentile(&mut start, 99.0),
        start_lateness_max_ms: percentile(&mut start, 100.0),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "| measurement ({} admin rows due 1–{} s ahead) | value |",
            report.rows, args.spread_secs
        );
        println!("|---|---|");
        println!(
            "| run_at → enqueued p50 / p99 | {:.2} / {:.2} ms |",
            report.enqueue_lag_p50_ms, report.enqueue_lag_p99_ms
        );
        println!(
            "| run_at → job started p50 | {:.2} ms |",
            report.start_lateness_p50_ms
        );
        println!(
            "| run_at → job started p99 | {:.2} ms |",
            report.start_lateness_p99_ms
        );
        println!(
            "| run_at → job started max | {:.2} ms |",
            report.start_lateness_max_ms
        );
    }
    Ok(())
}
