//! Schedules: recurring jobs (`job_schedules`) and one-off jobs admins
//! schedule (`scheduled_jobs`).
//!
//! This module holds what the scheduler and `dklctl` share: the cron dialect
//! ([`cron`]), the SQL ([`store`]) and how one tick becomes one job
//! ([`enqueue_tick`]). The loops that decide *when* (leader election, sleeping
//! until the next tick) are in the `dkl-scheduler` crate.
//!
//! Exactly once per tick rests on two things: only the holder of an advisory
//! lock enqueues recurring ticks, and each tick is first claimed in
//! `job_schedule_runs`, whose primary key (schedule, tick) refuses a second
//! claim in the same transaction that enqueues the job. Either alone would
//! almost do; together even two schedulers that both believe they lead (the
//! old leader's connection half-dead) cannot enqueue a tick twice.

pub mod cron;
pub mod store;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::jobs::{Catalog, EngineError, EnqueueOptions, KindSpec, enqueue_raw_on};
use store::{RunOutcome, Schedule};

pub use cron::{CronError, CronSchedule};

/// Expressions the database's `dkl_cron_check` accepts; croner must accept
/// each too (checked by tests on both sides).
pub const DIALECT_EXAMPLES: &[&str] = &[
    "0 */5 * * * *",
    "*/1 * * * * *",
    "0 0 9 * * MON-FRI",
    "0 0 0 1 jan,jul ?",
    "0 0 0 ? * 7",
    "0 0 0 * * 0",
    "0 30 3 * * *",
    "5/15 * * * * *",
    "0 0 8-18/2 * * 1-5",
    "0 0 0 1-7 JAN-DEC/3 *",
    "0,30 * * * * *",
    "0 0 9 * * MON-SUN",
    "0 0 9 * * FRI-SUN",
];

/// Why a tick could not be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    /// The schedule's row cannot be used as it is (unknown kind, payload that
    /// does not decode, bad cron or time zone). Written to `last_error`.
    #[error("{0}")]
    BadSchedule(String),
    /// The database or the job engine failed; try again.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<sqlx::Error> for TickError {
    fn from(e: sqlx::Error) -> Self {
        Self::Engine(EngineError::Sql(e))
    }
}

impl From<CronError> for TickError {
    fn from(e: CronError) -> Self {
        Self::BadSchedule(e.to_string())
    }
}

/// The kind spec a schedule names, if the row is usable.
pub fn resolve_schedule<'c>(catalog: &'c Catalog, s: &Schedule) -> Result<&'c KindSpec, TickError> {
    catalog
        .resolve(&s.job_kind, &s.payload)
        .map_err(|reason| TickError::BadSchedule(format!("schedule `{}`: {reason}", s.name)))
}

/// What became of one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickResult {
    /// A job was enqueued.
    Enqueued(String),
    /// The previous tick's job is still live and the schedule skips.
    Skipped,
    /// This tick was claimed before (by this or another scheduler).
    AlreadyClaimed,
}

/// Claims `tick` of schedule `s` and enqueues its job, in the caller's
/// transaction: commit both or neither.
pub async fn enqueue_tick(
    tx: &mut PgConnection,
    spec: &KindSpec,
    s: &Schedule,
    tick: DateTime<Utc>,
    outcome: RunOutcome,
    ticks_missed: i32,
    scheduler_id: &str,
) -> Result<TickResult, TickError> {
    if outcome != RunOutcome::Manual
        && s.skip_if_running
        && let Some(last) = &s.last_job_id
        && store::job_is_live(tx, last).await?
    {
        let claimed = store::insert_run(
            tx,
            s.id,
            tick,
            RunOutcome::Skipped,
            ticks_missed,
            scheduler_id,
        )
        .await?;
        return Ok(if claimed {
            TickResult::Skipped
        } else {
            TickResult::AlreadyClaimed
        });
    }
    if !store::insert_run(tx, s.id, tick, outcome, ticks_missed, scheduler_id).await? {
        return Ok(TickResult::AlreadyClaimed);
    }
    let opts = EnqueueOptions {
        metadata: vec![
            ("schedule".into(), s.name.clone()),
            (
                "tick".into(),
                tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        ],
        ..EnqueueOptions::default()
    };
    let queue = s.queue.as_deref().unwrap_or(spec.queue);
    let max_attempts = s.max_attempts.unwrap_or(spec.max_attempts);
    let job = enqueue_raw_on(tx, &s.job_kind, queue, &s.payload, max_attempts, opts).await?;
    store::set_run_job(tx, s.id, tick, &job.id.0).await?;
    Ok(TickResult::Enqueued(job.id.0))
}

/// Why `run_now` did not enqueue.
#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    /// No schedule has this name.
    #[error("no schedule named `{name}`; `dklctl schedules` lists them: {known}")]
    UnknownSchedule {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// The schedule's row is unusable, or the database failed.
    #[error(transparent)]
    Tick(#[from] TickError),
}

/// Enqueues schedule `name`'s job now, outside its cron timing, recorded as a
/// `manual` run. Works whether or not the schedule is enabled.
pub async fn run_now(
    pool: &sqlx::PgPool,
    catalog: &Catalog,
    name: &str,
    requested_by: &str,
) -> Result<String, RunNowError> {
    let mut tx = pool.begin().await.map_err(TickError::from)?;
    let Some(s) = store::schedule_for_update(&mut tx, name)
        .await
        .map_err(TickError::from)?
    else {
        let known = store::all_schedules(pool).await.map_err(TickError::from)?;
        let known = known
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(RunNowError::UnknownSchedule {
            name: name.into(),
            known,
        });
    };
    let spec = resolve_schedule(catalog, &s)?;
    let now = Utc::now();
    let result = enqueue_tick(&mut tx, spec, &s, now, RunOutcome::Manual, 0, requested_by).await?;
    let TickResult::Enqueued(job_id) = result else {
        // A manual tick is stamped with the current microsecond; only a
        // second run-now in the same microsecond could collide.
        return Err(
            TickError::BadSchedule(format!("schedule `{name}` was just run; try again")).into(),
        );
    };
    store::set_last_job(&mut tx, s.id, &job_id)
        .await
        .map_err(TickError::from)?;
    tx.commit().await.map_err(TickError::from)?;
    Ok(job_id)
}
