//! The `prune_jobs` job: deletes finished jobs past their keep time.
//! apalis never deletes rows; without this the table grows for ever.

use std::time::Duration;

use sqlx::PgPool;

use super::error::JobError;
use super::kind::JobKind;
use super::registry::Registry;
use super::store;

/// Deletes done jobs older than `done_after` and discarded or cancelled jobs
/// older than `discarded_after` (both default to the configured ages).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneJobs {
    /// Overrides `DKL_PRUNE_DONE_AFTER`, in seconds.
    #[serde(default)]
    pub done_after_secs: Option<u64>,
    /// Overrides `DKL_PRUNE_DISCARDED_AFTER`, in seconds.
    #[serde(default)]
    pub discarded_after_secs: Option<u64>,
}

impl JobKind for PruneJobs {
    const KIND: &'static str = "prune_jobs";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Registers the `prune_jobs` handler with the configured default ages.
pub fn register(registry: &mut Registry, pool: PgPool, done_after: Duration, discarded_after: Duration) {
    registry.register::<PruneJobs, _, _>(move |job, _ctx| {
        let pool = pool.clone();
        async move {
            let done = job.done_after_secs.map_or(done_after, Duration::from_secs);
            let discarded = job.discarded_after_secs.map_or(discarded_after, Duration::from_secs);
            let pruned = store::prune(&pool, done, discarded).await.map_err(JobError::retryable)?;
            // Tick records only need to outlive the jobs they point at:
            // the schedule link of a discarded job stays as long as the job.
            let runs = crate::schedules::store::prune_runs(&pool, done.max(discarded)).await.map_err(JobError::retryable)?;
            tracing::info!(done = pruned.done, discarded = pruned.discarded, workers = pruned.workers, schedule_runs = runs, "pruned finished jobs");
            // Not fatal: the rows are gone; only the space reuse waits.
            if let Err(e) = store::vacuum_jobs(&pool).await {
                tracing::warn!(error = %e, "cannot VACUUM apalis.jobs (needs table owner); relying on autovacuum");
            }
            Ok(())
        }
    });
}
