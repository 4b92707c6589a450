//! `recompute_leaderboards`: rebuilds the boards whose registrations
//! changed since their last computation (see [`crate::store::leaderboards`]);
//! the periods rebuilt and skipped are the job's result.

use dkl_shared::jobs::{self, JobError, Registry};
use dkl_shared::kinds::RecomputeLeaderboards;
use serde_json::json;
use sqlx::PgPool;

use crate::store::leaderboards::{self, Also};

/// Registers the `recompute_leaderboards` handler.
pub fn register(registry: &mut Registry, pool: PgPool) {
    registry.register::<RecomputeLeaderboards, _, _>(move |job, ctx| {
        let pool = pool.clone();
        async move {
            let also = Also {
                all_periods: job.force,
                event: job.event_id,
            };
            let done = leaderboards::recompute(&pool, also)
                .await
                .map_err(JobError::retryable)?;
            if done.busy {
                tracing::info!(
                    "another leaderboard recompute is running; its changes wait for the next run"
                );
            } else {
                tracing::info!(
                    periods = done.periods.len(),
                    skipped = done.skipped,
                    rows_written = done.rows_written,
                    rows_removed = done.rows_removed,
                    took_ms = done.took_ms,
                    "leaderboards recomputed"
                );
            }
            let periods: serde_json::Map<String, serde_json::Value> = done
                .periods
                .iter()
                .map(|(p, n)| (p.clone(), json!(n)))
                .collect();
            let result = json!({
                "busy": done.busy,
                "periods": periods,
                "skipped": done.skipped,
                "rows_written": done.rows_written,
                "rows_removed": done.rows_removed,
                "took_ms": done.took_ms,
            });
            jobs::admin::record_result(&pool, &ctx.id, &result)
                .await
                .map_err(JobError::retryable)?;
            Ok(())
        }
    });
}
