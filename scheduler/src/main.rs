//! `dkl-scheduler`: enqueues recurring jobs (`job_schedules`) and the jobs
//! admins schedule (`scheduled_jobs`). Run one or more; see the crate docs.

use std::process::ExitCode;

use dkl_scheduler::Scheduler;
use dkl_shared::config::Config;
use dkl_shared::{db, startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    startup::run_binary("dkl-scheduler", run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let pool = db::connect_migrated(&config).await?;
    let shutdown = telemetry::shutdown_on_signals();
    Scheduler::new(pool, dkl_shared::kinds::catalog(), config.scheduler)
        .run(shutdown)
        .await;
    Ok(())
}
