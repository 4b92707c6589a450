//! `dkl-scheduler`: enqueues the recurring work of dkl-mail-worker.
//!
//! For now it enqueues the `prune_jobs` job every `DKL_PRUNE_EVERY`. The
//! dedup key makes a second scheduler (or a restart) harmless: while one prune
//! job is pending or running, another enqueue returns that job.

use std::process::ExitCode;
use std::time::Duration;

use dkl_shared::config::Config;
use dkl_shared::jobs::prune::PruneJobs;
use dkl_shared::jobs::{EnqueueOptions, JobClient};
use dkl_shared::{db, startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    startup::run_binary("dkl-scheduler", run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let pool = db::connect_migrated(&config).await?;
    let client = JobClient::new(pool);
    let shutdown = telemetry::shutdown_on_signals();
    let every = config.jobs.prune_every;
    tracing::info!(prune_every_s = every.as_secs(), "scheduler started");
    loop {
        match client.enqueue(&PruneJobs::default(), EnqueueOptions::dedup("prune_jobs")).await {
            Ok(job) if job.created => tracing::info!(job_id = %job.id, "enqueued prune_jobs"),
            Ok(job) => tracing::debug!(job_id = %job.id, "prune_jobs already pending"),
            // A passing database fault must not end the scheduler; try again soon.
            Err(e) => {
                tracing::error!(error = %e, "cannot enqueue prune_jobs; retrying in 10 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("scheduler stopped");
    Ok(())
}
