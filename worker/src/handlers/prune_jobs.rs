//! `prune_jobs`: deletes finished jobs past their keep time (the
//! `retention_rules` of `apalis.jobs` when enabled, else
//! `DKL_PRUNE_DONE_AFTER`/`DKL_PRUNE_DISCARDED_AFTER`), and the
//! scheduler's tick records with them. apalis never deletes rows; without
//! this the table grows for ever. First it marks `unknown` the mail whose
//! job ended in the middle of its SMTP transaction (so no row says `queued`
//! for a message nobody will send).

use std::time::Duration;

use dkl_shared::jobs::{self, JobError, Registry};
use dkl_shared::kinds::PruneJobs;
use dkl_shared::schedules;
use sqlx::PgPool;

/// A message whose SMTP transaction started this long ago, and whose job
/// has ended, was abandoned (a live transaction takes seconds at most).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// Registers the `prune_jobs` handler with the configured default ages.
pub fn register(
    registry: &mut Registry,
    pool: PgPool,
    done_after: Duration,
    discarded_after: Duration,
) {
    registry.register::<PruneJobs, _, _>(move |job, _ctx| {
        let pool = pool.clone();
        async move {
            // The payload, else the retention rules, else the configuration.
            use crate::store::retention::{Target, enabled_age};
            let rule_done = enabled_age(&pool, Target::JobsDone).await.map_err(JobError::retryable)?;
            let rule_discarded = enabled_age(&pool, Target::JobsDiscarded).await.map_err(JobError::retryable)?;
            let done = job.done_after_secs.map(Duration::from_secs).or(rule_done.map(Duration::from_secs_f64)).unwrap_or(done_after);
            let discarded = job.discarded_after_secs.map(Duration::from_secs).or(rule_discarded.map(Duration::from_secs_f64)).unwrap_or(discarded_after);
            let abandoned = crate::store::verzonden_emails::mark_abandoned(&pool, ABANDONED_AFTER).await.map_err(JobError::retryable)?;
            if abandoned > 0 {
                tracing::warn!(messages = abandoned, "mail whose job ended mid-send marked unknown");
            }
            let pruned = jobs::admin::prune(&pool, done, discarded).await.map_err(JobError::retryable)?;
            // Tick records only need to outlive the jobs they point at:
            // the schedule link of a discarded job stays as long as the job.
            let runs = schedules::store::prune_runs(&pool, done.max(discarded)).await.map_err(JobError::retryable)?;
            tracing::info!(done = pruned.done, discarded = pruned.discarded, workers = pruned.workers, schedule_runs = runs, "pruned finished jobs");
            // Not fatal: the rows are gone; only the space reuse waits.
            if let Err(e) = jobs::admin::vacuum(&pool).await {
                tracing::warn!(error = %e, "cannot VACUUM apalis.jobs (needs table owner); relying on autovacuum");
            }
            Ok(())
        }
    });
}
