//! One leader pass over `job_schedules`: enqueue every tick that is due.
//!
//! A schedule's `next_run_at` is the next tick to enqueue. When it is due,
//! the pass enqueues in one transaction: claim (schedule, tick) in
//! `job_schedule_runs`, insert the job, move `next_run_at` on. After downtime
//! `catch_up = 'once'` enqueues one job for all missed ticks (stamped with
//! the latest and counting the others in `ticks_missed`); `'every'` enqueues
//! each missed tick, at most [`MAX_CATCH_UP_PER_PASS`] per pass.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dkl_shared::schedules::store::{self, CatchUp, RunOutcome, Schedule};
use dkl_shared::schedules::{CronSchedule, TickError, TickResult, enqueue_tick, resolve_schedule};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::{Ctx, StepError, bounded};

/// Missed ticks a `catch_up = 'every'` schedule enqueues per pass; the next
/// pass follows at once, so a long backlog drains without one huge transaction.
pub const MAX_CATCH_UP_PER_PASS: usize = 100;

/// Missed ticks walked through for a `once` catch-up; past this many (a
/// 1-second schedule down for ~3 hours) `ticks_missed` says "at least".
const MAX_TICKS_COUNTED: usize = 10_000;

/// How long a schedule found unusable is left alone before it is judged
/// again (an admin's edit clears `last_error` and ends the wait at once).
/// Judging can be costly: croner searches years ahead before it calls a
/// date like 31 February impossible.
pub const RECHECK_BAD_AFTER: Duration = Duration::from_secs(60);

/// Schedules found unusable, and when: the leader's memory between passes.
#[derive(Debug, Default)]
pub(crate) struct BadSchedules(HashMap<Uuid, Instant>);

/// Enqueues what is due at `now` (the database's clock). Returns when the
/// next tick of any schedule is due. A bad schedule is marked and skipped;
/// only database faults end the pass.
pub(crate) async fn pass(
    conn: &mut PgConnection,
    ctx: &Ctx,
    now: DateTime<Utc>,
    bad: &mut BadSchedules,
) -> Result<Option<DateTime<Utc>>, StepError> {
    let limit = ctx.step_limit();
    let mut next_wake: Option<DateTime<Utc>> = None;
    let mut beat = Instant::now();
    for s in bounded(limit, store::enabled_schedules(conn)).await? {
        // A long pass (rows an admin holds locked cost lock_timeout each)
        // must not look like a frozen leader to the others.
        if beat.elapsed() > ctx.config.leader_stale_after / 3 {
            bounded(limit, store::leader_heartbeat(conn, &ctx.id)).await?;
            beat = Instant::now();
        }
        let recently_bad = bad
            .0
            .get(&s.id)
            .is_some_and(|at| at.elapsed() < RECHECK_BAD_AFTER);
        if s.last_error.is_some() && recently_bad {
            continue;
        }
        let Ok(result) = tokio::time::timeout(limit, run_schedule(conn, ctx, &s, now)).await else {
            return Err(StepError::Stalled(limit));
        };
        match result {
            Ok(next) => {
                bad.0.remove(&s.id);
                next_wake = next_wake.min(Some(next)).or(Some(next));
            }
            Err(TickError::Engine(e)) => skip_this_pass(&s, &e),
            Err(TickError::BadSchedule(msg)) => {
                bad.0.insert(s.id, Instant::now());
                match bounded(limit, store::set_schedule_error(conn, s.id, &msg)).await {
                    Ok(true) => {
                        tracing::warn!(schedule = %s.name, error = %msg, "schedule cannot run; fix the row (see job_schedules.last_error)")
                    }
                    Ok(false) => {}
                    Err(StepError::Stalled(d)) => return Err(StepError::Stalled(d)),
                    Err(e) => {
                        tracing::warn!(schedule = %s.name, error = %e, "cannot record why the schedule cannot run")
                    }
                }
            }
        }
    }
    Ok(next_wake)
}

/// One schedule's database trouble (a row an admin holds locked past the
/// leader connection's lock_timeout, a schedule deleted mid-pass) must not
/// starve the others: skip it until the next pass, at most a poll interval
/// away. A lost connection fails the next heartbeat and ends leadership.
fn skip_this_pass(s: &Schedule, e: &dyn std::fmt::Display) {
    tracing::warn!(schedule = %s.name, error = %e, "schedule skipped this pass; retrying next pass");
}

/// Handles one schedule; returns its next due time.
async fn run_schedule(
    conn: &mut PgConnection,
    ctx: &Ctx,
    s: &Schedule,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, TickError> {
    let spec = resolve_schedule(&ctx.catalog, s)?;
    let cron = CronSchedule::parse(&s.cron, &s.time_zone)?;
    let due = match s.next_run_at {
        // New or re-timed: the first tick is the next one from now.
        None => {
            let next = cron.next_after(now)?;
            store::set_next_run(conn, s, next).await?;
            return Ok(next);
        }
        Some(due) if due > now => return Ok(due),
        Some(due) => due,
    };
    let (ticks, missed) = if s.catch_up == CatchUp::Every {
        (cron.ticks_from(due, now, MAX_CATCH_UP_PER_PASS)?, 0)
    } else {
        // Walk forward from `due` (a tick) so the stamp is a real tick even
        // next to a daylight saving change; after a very long downtime of a
        // frequent schedule, ask croner for the latest tick instead.
        let walked = cron.ticks_from(due, now, MAX_TICKS_COUNTED)?;
        let latest = match walked.last() {
            Some(last) if walked.len() < MAX_TICKS_COUNTED => *last,
            _ => cron.latest_at_or_before(now)?.max(due),
        };
        (vec![latest], walked.len().saturating_sub(1))
    };
    let Some(&last_tick) = ticks.last().filter(|t| **t >= due) else {
        // `due` is not a tick of this expression any more; start afresh.
        let next = cron.next_after(now)?;
        store::set_next_run(conn, s, next).await?;
        return Ok(next);
    };
    let next = cron.next_after(if s.catch_up == CatchUp::Every {
        last_tick
    } else {
        now
    })?;

    let mut tx = conn.begin().await?;
    let mut last_job = None;
    // Carries the job enqueued for an earlier tick of this pass, so
    // `skip_if_running` sees it (catch_up = 'every').
    let mut s = s.clone();
    for tick in ticks {
        let result = enqueue_tick(
            &mut tx,
            spec,
            &s,
            tick,
            RunOutcome::Enqueued,
            missed as i32,
            &ctx.id,
        )
        .await?;
        match result {
            TickResult::Enqueued(job_id) => {
                tracing::info!(schedule = %s.name, %tick, %job_id, ticks_missed = missed, "enqueued scheduled job");
                s.last_job_id = Some(job_id.clone());
                last_job = Some(job_id);
            }
            TickResult::Skipped => {
                tracing::debug!(schedule = %s.name, %tick, "tick skipped: the previous job is still pending or running");
            }
            TickResult::AlreadyClaimed => {
                tracing::warn!(schedule = %s.name, %tick, "tick was already enqueued (another scheduler led meanwhile); not enqueued again");
            }
        }
    }
    store::record_tick(&mut tx, &s, last_tick, last_job.as_deref(), next).await?;
    tx.commit().await?;
    Ok(next)
}
