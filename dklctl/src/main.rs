//! `dklctl`: the admin CLI of dkl-mail-worker.
//!
//! It lives in its own crate because it is neither worker nor scheduler: it
//! talks to the same database through `dkl-shared` and needs clap, which the
//! long-running binaries do not.

mod bench;
mod bench_schedule;
mod status;
mod table;

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use dkl_shared::config::Config;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId, RetryOutcome, catalog, ping::Ping, prune::PruneJobs};
use dkl_shared::monitor::JobFilter;
use dkl_shared::schedules::{self, store::NewScheduledJob};
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
        /// Attempts before the job is discarded; defaults to the kind's own
        /// (5 for kinds this build does not know).
        #[arg(long)]
        max_attempts: Option<i32>,
    },
    /// Cancel a job (by job id: pending ones never start, running ones are
    /// signalled) or an admin row (by its scheduled_jobs UUID, before it runs).
    Cancel {
        /// Job id, or scheduled_jobs id.
        id: String,
    },
    /// Run a job again: a discarded, cancelled or done job from scratch, a
    /// waiting one (scheduled or retrying) now.
    Retry {
        /// Job id.
        id: String,
    },
    /// Queues, scheduler leader, schedules, admin rows and recent jobs.
    Status {
        /// How many recent jobs to list.
        #[arg(long, default_value_t = 10)]
        recent: i64,
    },
    /// List jobs from the job_status view, newest first.
    Jobs {
        /// scheduled, pending, retrying, running, done, discarded or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Job kind.
        #[arg(long)]
        kind: Option<String>,
        /// Queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs of this schedule (job_schedules.name).
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one job.
    Show {
        /// Job id.
        id: String,
    },
    /// List the recurring schedules and who leads the schedulers.
    Schedules,
    /// Stop a schedule from ticking (job_schedules.enabled = false).
    Pause {
        /// job_schedules.name.
        schedule: String,
    },
    /// Let a paused schedule tick again, from its next tick after now.
    Resume {
        /// job_schedules.name.
        schedule: String,
    },
    /// Enqueue a schedule's job now, outside its timing (works when disabled too).
    RunNow {
        /// job_schedules.name, e.g. prune-jobs.
        schedule: String,
    },
    /// Schedule a one-off job: inserts a scheduled_jobs row (the same INSERT
    /// an admin can write in SQL); the scheduler enqueues it at its time.
    Schedule {
        /// Job kind, e.g. ping.
        kind: String,
        /// When (RFC 3339, e.g. 2026-11-23T18:00:00+01:00); now if absent.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Payload as a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Why (shown in status).
        #[arg(long)]
        note: Option<String>,
        /// Who schedules it; defaults to $USER.
        #[arg(long)]
        created_by: Option<String>,
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
    /// Admin rows (scheduled_jobs): run_at → job start, through a real scheduler and worker.
    Schedule(bench_schedule::ScheduleBenchArgs),
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
            let max_attempts = max_attempts.unwrap_or_else(|| known_max_attempts(&kind));
            let opts = EnqueueOptions { run_at: at, dedup_key: dedup, ..Default::default() };
            let job = client.enqueue_raw(&kind, &queue, &payload, max_attempts, opts).await?;
            if job.created {
                println!("{}", job.id);
            } else {
                println!("{} (existing live job with this dedup key)", job.id);
            }
        }
        Command::Cancel { id } => cancel(&pool, &client, &id).await?,
        Command::Retry { id } => {
            let outcome = client.retry(&JobId(id.clone())).await?;
            let text = match outcome {
                RetryOutcome::Requeued => "pending again, due now, attempts reset",
                RetryOutcome::MadeDue => "was waiting; now due",
                RetryOutcome::Running => "is running; nothing changed (cancel it first to stop it)",
            };
            println!("{id}: {text}");
        }
        Command::Status { recent } => status::print_status(&pool, recent).await?,
        Command::Jobs { state, kind, queue, schedule, limit } => {
            status::print_jobs(&pool, &JobFilter { state, kind, queue, schedule, limit }).await?
        }
        Command::Show { id } => {
            let job = client.job(&JobId(id)).await?;
            println!("{job:#?}");
        }
        Command::Schedules => status::print_schedules(&pool).await?,
        Command::Pause { schedule } => set_enabled(&pool, &schedule, false).await?,
        Command::Resume { schedule } => set_enabled(&pool, &schedule, true).await?,
        Command::RunNow { schedule } => {
            let job_id = schedules::run_now(&pool, &catalog::standard(), &schedule, &whoami()).await?;
            println!("{job_id}");
        }
        Command::Schedule { kind, at, payload, note, created_by } => {
            let payload: serde_json::Value = serde_json::from_str(&payload)
                .with_context(|| format!("--payload is not valid JSON: {payload}"))?;
            // Refuse now what the scheduler would reject later.
            catalog::standard().resolve(&kind, &payload).map_err(anyhow::Error::msg)?;
            let created_by = created_by.unwrap_or_else(whoami);
            let row = NewScheduledJob { job_kind: &kind, payload: &payload, run_at: at, created_by: &created_by, note: note.as_deref(), queue: None };
            let row = schedules::store::insert_scheduled_job(&pool, &row).await?;
            println!("{} (scheduled_jobs row; runs at {})", row.id, row.run_at.to_rfc3339());
        }
        Command::Prune => {
            let job = client.enqueue(&PruneJobs::default(), EnqueueOptions::dedup("prune_jobs")).await?;
            println!("{}", job.id);
        }
        Command::Bench { what: BenchCommand::Queue(args) } => bench::queue(&pool, &config, args).await?,
        Command::Bench { what: BenchCommand::Schedule(args) } => bench_schedule::run(&pool, &config, args).await?,
    }
    Ok(())
}

/// The queue of a known kind; `default` for others.
fn known_queue(kind: &str) -> &'static str {
    catalog::standard().get(kind).map_or("default", |spec| spec.queue)
}

fn known_max_attempts(kind: &str) -> i32 {
    catalog::standard().get(kind).map_or(5, |spec| spec.max_attempts)
}

/// Who runs this command, for `created_by`.
fn whoami() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).map_or_else(|| "dklctl".into(), |u| format!("{u} (dklctl)"))
}

/// Pauses or resumes a schedule.
async fn set_enabled(pool: &sqlx::PgPool, name: &str, enabled: bool) -> anyhow::Result<()> {
    if !schedules::store::set_enabled(pool, name, enabled).await? {
        anyhow::bail!("no schedule named `{name}`; `dklctl schedules` lists them");
    }
    println!("{name}: {}", if enabled { "resumed; it ticks from its next time after now" } else { "paused" });
    Ok(())
}

/// Cancels a job by id, or an admin row by UUID.
async fn cancel(pool: &sqlx::PgPool, client: &JobClient, id: &str) -> anyhow::Result<()> {
    let Ok(row_id) = id.parse::<uuid::Uuid>() else {
        let outcome = client.cancel(&JobId(id.to_string())).await?;
        println!("{id}: {outcome:?}");
        return Ok(());
    };
    let mut conn = pool.acquire().await?;
    match schedules::store::cancel_scheduled_job(&mut conn, row_id).await? {
        None => anyhow::bail!("no scheduled_jobs row with id {id}"),
        Some(row) if row.status == "cancelled" => println!("{id}: scheduled job cancelled; it will not run"),
        Some(row) => match row.job_id {
            Some(job_id) => anyhow::bail!(
                "{id} was already enqueued as job {job_id}; cancel the job instead: dklctl cancel {job_id}"
            ),
            None => anyhow::bail!("{id} is {}; only pending rows can be cancelled", row.status),
        },
    }
    Ok(())
}
