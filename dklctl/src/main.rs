//! `dklctl`: the admin CLI of dkl-mail-worker.
//!
//! It lives in its own crate because it is neither worker nor scheduler: it
//! talks to the same database through `dkl-shared` and needs clap, which the
//! long-running binaries do not.

mod bench;
mod status;

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use dkl_shared::config::Config;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId, JobKind, ping::Ping, prune::PruneJobs};
use dkl_shared::{db, startup};

#[derive(Parser)]
#[command(name = "dklctl", version, about = "Admin CLI for dkl-mail-worker (reads DATABASE_URL and DKL_* like the binaries)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply all database migrations (apalis-postgres's, then ours). Safe to repeat.
    Migrate,
    /// Check configuration and that the database is reachable and migrated.
    Check,
    /// Enqueue a diagnostic `ping` job and print its id.
    Ping {
        /// Message the worker logs.
        #[arg(default_value = "hello from dklctl")]
        message: String,
        /// Fail (retryably) on this many attempts first, to watch backoff.
        #[arg(long, default_value_t = 0)]
        fail_attempts: i32,
        /// Take this long.
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
        /// Run at this time (RFC 3339, e.g. 2026-11-23T18:00:00Z).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// Enqueue a job by kind name with a JSON payload.
    Enqueue {
        /// Job kind, e.g. `ping` or `prune_jobs`.
        kind: String,
        /// Payload as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Queue; defaults to the kind's queue for known kinds, else `default`.
        #[arg(long)]
        queue: Option<String>,
        /// Run at this time (RFC 3339).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Dedup key: returns the live job holding it instead of adding one.
        #[arg(long)]
        dedup: Option<String>,
        /// Attempts before the job is discarded.
        #[arg(long, default_value_t = 5)]
        max_attempts: i32,
    },
    /// Cancel a job: pending ones never start, running ones are signalled.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Jobs per queue by state, and the most recent jobs.
    Status {
        /// How many recent jobs to list.
        #[arg(long, default_value_t = 10)]
        recent: i64,
    },
    /// Show one job.
    Show {
        /// Job id.
        id: String,
    },
    /// Enqueue the prune job now.
    Prune,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Queue throughput, pickup latency and scheduling lateness (use a release build).
    Queue(bench::QueueBenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    startup::run_binary("dklctl", |config| run(cli.command, config)).await
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let pool = db::connect(&config).await?;
    if !matches!(command, Command::Migrate) {
        db::ensure_migrated(&pool).await?;
    }
    let client = JobClient::new(pool.clone());
    match command {
        Command::Migrate => {
            db::migrate(&pool).await?;
            println!("database migrated");
        }
        Command::Check => println!("configuration valid; database reachable and migrated"),
        Command::Ping { message, fail_attempts, sleep_ms, at } => {
            let ping = Ping { message, sleep_ms, fail_attempts, permanent_error: None };
            let job = client.enqueue(&ping, EnqueueOptions { run_at: at, ..Default::default() }).await?;
            println!("{}", job.id);
        }
        Command::Enqueue { kind, payload, queue, at, dedup, max_attempts } => {
            let payload: serde_json::Value = serde_json::from_str(&payload)
                .with_context(|| format!("--payload is not valid JSON: {payload}"))?;
            let queue = queue.unwrap_or_else(|| known_queue(&kind).to_string());
            let opts = EnqueueOptions { run_at: at, dedup_key: dedup, ..Default::default() };
            let job = client.enqueue_raw(&kind, &queue, &payload, max_attempts, opts).await?;
            if job.created {
                println!("{}", job.id);
            } else {
                println!("{} (existing live job with this dedup key)", job.id);
            }
        }
        Command::Cancel { id } => {
            let outcome = client.cancel(&JobId(id.clone())).await?;
            println!("{id}: {outcome:?}");
        }
        Command::Status { recent } => status::print(&pool, recent).await?,
        Command::Show { id } => {
            let job = client.job(&JobId(id)).await?;
            println!("{job:#?}");
        }
        Command::Prune => {
            let job = client.enqueue(&PruneJobs::default(), EnqueueOptions::dedup("prune_jobs")).await?;
            println!("{}", job.id);
        }
        Command::Bench { what: BenchCommand::Queue(args) } => bench::queue(&pool, &config, args).await?,
    }
    Ok(())
}

/// The queue of the kinds this CLI knows by type.
fn known_queue(kind: &str) -> &'static str {
    match kind {
        k if k == Ping::KIND => Ping::QUEUE,
        k if k == PruneJobs::KIND => PruneJobs::QUEUE,
        _ => "default",
    }
}
