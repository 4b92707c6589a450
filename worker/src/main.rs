//! `dkl-worker`: runs every job kind of dkl-mail-worker until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use dkl_shared::config::Config;
use dkl_shared::jobs::{Registry, WorkerRuntime, ping, prune};
use dkl_shared::{db, startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    startup::run_binary("dkl-worker", run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let pool = db::connect_migrated(&config).await?;
    let registry = registry(&pool, &config);
    let shutdown = telemetry::shutdown_on_signals();
    WorkerRuntime::new(pool, registry, config.jobs)
        .run(shutdown)
        .await
        .context("job runtime failed")
}

/// Every job kind this worker runs.
fn registry(pool: &sqlx::PgPool, config: &Config) -> Registry {
    let mut registry = Registry::new();
    ping::register(&mut registry);
    prune::register(&mut registry, pool.clone(), config.jobs.prune_done_after, config.jobs.prune_discarded_after);
    registry
}
