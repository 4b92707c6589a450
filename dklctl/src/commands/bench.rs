//! `dklctl bench queue`: the job engine's numbers on this machine.
//!
//! Three measurements, each against the real database and a real in-process
//! worker runtime (the same code `dkl-worker` runs):
//! 1. throughput: no-op jobs drained from N pre-enqueued ones;
//! 2. pickup latency: enqueue → handler start, single jobs on an idle queue;
//! 3. lateness: handler start − due time, for jobs scheduled 1–3 s ahead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chrono::Utc;
use dkl_shared::config::Config;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobKind, Registry, WorkerRuntime, admin};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Options of `dklctl bench queue`.
#[derive(clap::Args, Debug)]
pub struct QueueBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Jobs pre-enqueued for the throughput run.
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// Single jobs timed for pickup latency.
    #[arg(long, default_value_t = 500)]
    latency_samples: usize,
    /// Jobs scheduled 1–3 s ahead for lateness.
    #[arg(long, default_value_t = 300)]
    scheduled: usize,
    /// Skip the VACUUM ANALYZE between enqueueing and draining (hint bits and
    /// statistics then get set by the drain itself; slower, see README).
    #[arg(long)]
    no_vacuum_before_drain: bool,
    /// Concurrency of the bench queue.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BenchProbe {
    seq: u64,
    /// Wall-clock µs of enqueue (latency probes) or due time (lateness probes).
    #[serde(default)]
    t0_us: Option<i64>,
}

impl JobKind for BenchProbe {
    const KIND: &'static str = "bench_probe";
    const QUEUE: &'static str = "bench";
    const MAX_ATTEMPTS: i32 = 1;
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[derive(serde::Serialize)]
struct Report {
    jobs: usize,
    concurrency: usize,
    drain_seconds: f64,
    throughput_jobs_per_s: f64,
    latency_samples: usize,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    /// Of the latency, the enqueue call itself (INSERT + commit).
    enqueue_commit_p50_ms: f64,
    enqueue_commit_p99_ms: f64,
    scheduled: usize,
    lateness_p50_ms: f64,
    lateness_p99_ms: f64,
    lateness_max_ms: f64,
}

/// Runs the three measurements and prints them.
pub async fn queue(pool: &PgPool, config: &Config, args: QueueBenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; benchmark figures need `cargo run --release -p dklctl -- bench queue`"
        );
    }
    clean(pool).await?;
    let client = JobClient::new(pool.clone());
    let done = Arc::new(AtomicUsize::new(0));
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(u64, i64, i64)>();
    let mut registry = Registry::new();
    {
        let done = done.clone();
        registry.register::<BenchProbe, _, _>(move |probe, _ctx| {
            let started = now_us();
            done.fetch_add(1, Ordering::Relaxed);
            if let Some(t0) = probe.t0_us {
                let _ = probe_tx.send((probe.seq, t0, started));
            }
            async { Ok(()) }
        });
    }
    let mut jobs_config = config.jobs.clone();
    jobs_config.queue_concurrency = BTreeMap::from([("bench".to_string(), args.concurrency)]);

    eprintln!("enqueueing {} no-op jobs ...", args.jobs);
    let probes: Vec<BenchProbe> = (0..args.jobs as u64)
        .map(|seq| BenchProbe { seq, t0_us: None })
        .collect();
    for chunk in probes.chunks(5_000) {
        client.enqueue_many(chunk).await?;
    }

    if !args.no_vacuum_before_drain {
        admin::vacuum(pool).await?; // fresh statistics and hint bits, as after a prune
    }
    let shutdown = CancellationToken::new();
    let runtime = WorkerRuntime::new(pool.clone(), registry, jobs_config);
    let started = Instant::now();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));

    // 1. Drain: done when every job is Done in the database, not merely run.
    eprintln!("draining ...");
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if done.load(Ordering::Relaxed) < args.jobs {
            continue;
        }
        let left = admin::unfinished_in_queue(pool, BenchProbe::QUEUE).await?;
        if left == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("drain did not finish in 10 minutes ({left} jobs not done)");
        }
    }
    let drain = started.elapsed().as_secs_f64();

    // 2. Pickup latency on the now idle queue (after the drain's dead rows are
    // vacuumed, as the prune job does in production).
    eprintln!("measuring pickup latency ...");
    admin::delete_queue(pool, BenchProbe::QUEUE).await?;
    admin::vacuum(pool).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::with_capacity(args.latency_samples);
    let mut commits = Vec::with_capacity(args.latency_samples);
    for seq in 0..args.latency_samples as u64 {
        let t0 = now_us();
        client
            .enqueue(
                &BenchProbe {
                    seq,
                    t0_us: Some(t0),
                },
                EnqueueOptions::default(),
            )
            .await?;
        let committed = now_us();
        let (_, t0, start) = tokio::time::timeout(Duration::from_secs(5), probe_rx.recv())
            .await
            .context("a latency probe did not start within 5 s")?
            .context("bench runtime stopped")?;
        latencies.push((start - t0) as f64 / 1000.0);
        commits.push((committed - t0) as f64 / 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 3. Lateness of jobs scheduled 1–3 s ahead.
    eprintln!("measuring scheduling lateness ...");
    for seq in 0..args.scheduled as u64 {
        let ahead = Duration::from_millis(1000 + fastrand::u64(0..2000));
        let due = Utc::now() + ahead;
        let due_us = due.timestamp_micros();
        client
            .enqueue(
                &BenchProbe {
                    seq,
                    t0_us: Some(due_us),
                },
                EnqueueOptions::at(due),
            )
            .await?;
    }
    let mut lateness = Vec::with_capacity(args.scheduled);
    while lateness.len() < args.scheduled {
        let (_, due, start) = tokio::time::timeout(Duration::from_secs(10), probe_rx.recv())
            .await
            .context("scheduled probes stopped arriving")?
            .context("bench runtime stopped")?;
        lateness.push((start - due) as f64 / 1000.0);
    }

    shutdown.cancel();
    handle.await??;
    clean(pool).await?;

    let report = Report {
        jobs: args.jobs,
        concurrency: args.concurrency,
        drain_seconds: drain,
        throughput_jobs_per_s: args.jobs as f64 / drain,
        latency_samples: latencies.len(),
        latency_p50_ms: percentile(&mut latencies, 50.0),
        latency_p99_ms: percentile(&mut latencies, 99.0),
        latency_max_ms: percentile(&mut latencies, 100.0),
        enqueue_commit_p50_ms: percentile(&mut commits, 50.0),
        enqueue_commit_p99_ms: percentile(&mut commits, 99.0),
        scheduled: lateness.len(),
        lateness_p50_ms: percentile(&mut lateness, 50.0),
        lateness_p99_ms: percentile(&mut lateness, 99.0),
        lateness_max_ms: percentile(&mut lateness, 100.0),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn print_table(r: &Report) {
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| no-op jobs drained ({} jobs, concurrency {}) | {:.0} jobs/s ({:.2} s) |",
        r.jobs, r.concurrency, r.throughput_jobs_per_s, r.drain_seconds
    );
    println!(
        "| enqueue→start latency p50 ({} single jobs, idle queue) | {:.2} ms |",
        r.latency_samples, r.latency_p50_ms
    );
    println!("| enqueue→start latency p99 | {:.2} ms |", r.latency_p99_ms);
    println!("| enqueue→start latency max | {:.2} ms |", r.latency_max_ms);
    println!(
        "| of which the enqueue call (INSERT + commit) p50 / p99 | {:.2} / {:.2} ms |",
        r.enqueue_commit_p50_ms, r.enqueue_commit_p99_ms
    );
    println!(
        "| lateness p50 ({} jobs due 1–3 s ahead) | {:.2} ms |",
        r.scheduled, r.lateness_p50_ms
    );
    println!("| lateness p99 | {:.2} ms |", r.lateness_p99_ms);
    println!("| lateness max | {:.2} ms |", r.lateness_max_ms);
}

/// Removes bench jobs and vacuums, so every run starts from the same table
/// state (autovacuum may be off, as on the reference machine).
async fn clean(pool: &PgPool) -> anyhow::Result<()> {
    admin::delete_queue(pool, BenchProbe::QUEUE).await?;
    admin::vacuum(pool).await?;
    Ok(())
}
