//! `scheduled_jobs`: one-off jobs admins schedule by inserting a row.
//!
//! Every scheduler takes due rows with `FOR UPDATE SKIP LOCKED` and, in the
//! same transaction, enqueues the job and marks the row `enqueued` with the
//! job id, so a row becomes exactly one job even with many schedulers and
//! crashes at any point. A row whose kind is unknown or whose payload does not
//! decode is marked `rejected` with the reason; it never blocks the rows
//! behind it.

use std::sync::Arc;
use std::time::Duration;

use dkl_shared::jobs::{EngineError, EnqueueOptions, enqueue_raw_on};
use dkl_shared::schedules::store::{self, ScheduledJob};
use sqlx::PgConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Ctx, bounded, sleep_for};

/// Rows taken per transaction.
pub const BATCH: i64 = 100;

/// Takes due rows until shutdown.
pub(crate) async fn run(ctx: Arc<Ctx>, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let pause = match bounded(ctx.step_limit(), take_due(&ctx)).await {
            Ok(n) if n as i64 >= BATCH => Duration::ZERO,
            Ok(taken) => match bounded(
                ctx.step_limit(),
                store::next_scheduled_job_due_in(&ctx.pool),
            )
            .await
            {
                // Due rows we could not take are locked by another scheduler
                // (or an admin's open transaction): look again after a poll,
                // not at once, or this loop would spin until they are free.
                Ok(Some(due_in)) if taken == 0 && due_in <= 0.0 => ctx.config.poll_interval,
                Ok(due_in) => sleep_for(due_in, ctx.config.poll_interval),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read scheduled_jobs; retrying");
                    ctx.config.poll_interval
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot take due scheduled_jobs rows; retrying");
                ctx.config.poll_interval
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = wake.notified() => {},
            _ = shutdown.cancelled() => {},
        }
    }
}

/// Takes one batch of due rows; returns how many.
async fn take_due(ctx: &Ctx) -> Result<usize, EngineError> {
    let mut tx = ctx.pool.begin().await?;
    let rows = store::take_due_scheduled_jobs(&mut tx, BATCH).await?;
    for row in &rows {
        take_row(&mut tx, ctx, row).await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

async fn take_row(tx: &mut PgConnection, ctx: &Ctx, row: &ScheduledJob) -> Result<(), EngineError> {
    let spec = match ctx.catalog.resolve(&row.job_kind, &row.payload) {
        Ok(spec) => spec,
        Err(reason) => {
            tracing::warn!(scheduled_job_id = %row.id, kind = %row.job_kind, created_by = %row.created_by, %reason, "scheduled job rejected");
            store::mark_rejected(tx, row.id, &reason).await?;
            return Ok(());
        }
    };
    let opts = EnqueueOptions {
        metadata: vec![
            ("scheduled_job".into(), row.id.to_string()),
            ("created_by".into(), row.created_by.clone()),
        ],
        ..EnqueueOptions::default()
    };
    let queue = row.queue.as_deref().unwrap_or(spec.queue);
    let max_attempts = row.max_attempts.unwrap_or(spec.max_attempts);
    let job = enqueue_raw_on(tx, &row.job_kind, queue, &row.payload, max_attempts, opts).await?;
    store::mark_enqueued(tx, row.id, &job.id.0).await?;
    tracing::info!(scheduled_job_id = %row.id, kind = %row.job_kind, job_id = %job.id, created_by = %row.created_by, "scheduled job enqueued");
    Ok(())
}
