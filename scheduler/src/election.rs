//! Leader election: whoever holds the advisory lock enqueues recurring ticks.
//!
//! The lock lives on a connection of its own, and the leader does all its
//! work on that connection. So a leader that loses its connection cannot
//! enqueue anything any more, and the server frees the lock the moment the
//! session ends (a killed process's socket closes at once; a vanished host is
//! noticed through TCP keepalives). A scheduler that is not leading keeps its
//! candidate connection and retries the lock every
//! `DKL_SCHEDULER_LEADER_RETRY_MS`. A leader that is alive but stuck (a
//! frozen process keeps its socket open) stops updating its heartbeat; after
//! `DKL_SCHEDULER_LEADER_STALE_SECS` the others end its session, which frees
//! the lock. If it wakes up, its next statement fails and it competes again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use dkl_shared::schedules::store;
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Ctx, StepError, bounded, recurring, sleep_for};

/// Competes for leadership until shutdown; leads whenever it wins.
pub(crate) async fn run(ctx: Arc<Ctx>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut candidate: Option<PgConnection> = None;
    while !shutdown.is_cancelled() {
        let mut conn = match candidate.take() {
            Some(c) => c,
            None => match connect(&ctx).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to compete for scheduler leadership; retrying");
                    pause(&ctx, &shutdown).await;
                    continue;
                }
            },
        };
        match bounded(ctx.step_limit(), store::try_leader_lock(&mut conn)).await {
            Ok(true) => lead(&ctx, conn, &wake, &shutdown).await,
            Ok(false) => {
                match bounded(
                    ctx.step_limit(),
                    store::depose_stale_leader(&mut conn, ctx.config.leader_stale_after),
                )
                .await
                {
                    Ok(true) => {
                        tracing::warn!(
                            stale_after_s = ctx.config.leader_stale_after.as_secs(),
                            "the leading scheduler stopped making progress; disconnected it to take over"
                        );
                        candidate = Some(conn);
                    }
                    Ok(false) => candidate = Some(conn),
                    // A connection that does not answer is dropped, not kept.
                    Err(StepError::Stalled(_)) => {
                        tracing::warn!("candidate connection does not answer; reconnecting")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check the leader's heartbeat");
                        candidate = Some(conn);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot try the leader lock; reconnecting"),
        }
        pause(&ctx, &shutdown).await;
    }
}

async fn pause(ctx: &Ctx, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(ctx.config.leader_retry) => {},
        _ = shutdown.cancelled() => {},
    }
}

async fn connect(ctx: &Ctx) -> Result<PgConnection, sqlx::Error> {
    let opts = (*ctx.pool.connect_options())
        .clone()
        .application_name("dkl-scheduler leader");
    let mut conn = opts.connect().await?;
    // Let the server notice a vanished leader host within ~25 s and free the
    // lock (ignored on Unix sockets, where the kernel tells it at once).
    // lock_timeout: a schedule row an admin keeps locked costs that one
    // schedule a pass, not the leader its progress.
    sqlx::raw_sql(
        "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; \
         SET lock_timeout = '5s'",
    )
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Leads on `conn` (which holds the lock) until the connection fails or
/// shutdown; dropping `conn` gives the lock up.
async fn lead(ctx: &Ctx, mut conn: PgConnection, wake: &Notify, shutdown: &CancellationToken) {
    let limit = ctx.step_limit();
    if let Err(e) = bounded(limit, store::claim_leader_row(&mut conn, &ctx.id)).await {
        tracing::warn!(error = %e, "won the leader lock but cannot record it; giving it up");
        return;
    }
    ctx.leading.store(true, Ordering::SeqCst);
    let mut bad = recurring::BadSchedules::default();
    tracing::info!(scheduler_id = %ctx.id, "this scheduler now leads: it enqueues recurring jobs");
    loop {
        let now = match bounded(limit, store::leader_heartbeat(&mut conn, &ctx.id)).await {
            Ok(Some(now)) => now,
            // Someone overwrote the row (an admin, or a leader whose session
            // the server had not yet ended): we hold the lock, so claim it.
            Ok(None) => match bounded(limit, store::claim_leader_row(&mut conn, &ctx.id)).await {
                Ok(()) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "lost the database connection; no longer leading");
                    break;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "lost the database connection; no longer leading");
                break;
            }
        };
        let next = match recurring::pass(&mut conn, ctx, now, &mut bad).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "schedule pass failed; giving up leadership and competing again");
                break;
            }
        };
        let due_in = next.map(|t| (t - now).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
        tokio::select! {
            _ = tokio::time::sleep(sleep_for(due_in, ctx.config.poll_interval)) => {},
            _ = wake.notified() => {},
            _ = shutdown.cancelled() => {
                // Hand over at once instead of after the session ends.
                let _ = bounded(limit, store::clear_leader_row(&mut conn, &ctx.id)).await;
                let _ = bounded(limit, store::release_leader_lock(&mut conn)).await;
                break;
            }
        }
    }
    ctx.leading.store(false, Ordering::SeqCst);
    tracing::info!(scheduler_id = %ctx.id, "this scheduler no longer leads");
}
