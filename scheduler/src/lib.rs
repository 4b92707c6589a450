//! dkl-scheduler: turns schedules into jobs.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) {
//! use dkl_scheduler::Scheduler;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let scheduler = Scheduler::new(pool, dkl_shared::kinds::catalog(), Default::default());
//! scheduler.run(shutdown).await; // until shutdown is cancelled
//! # }
//! ```
//!
//! Run as many schedulers as you like; each does two things:
//!
//! - [`election`]: one scheduler at a time leads (it holds a PostgreSQL
//!   advisory lock on a connection of its own) and enqueues the ticks of
//!   `job_schedules` ([`recurring`]). The others retry the lock every
//!   `DKL_SCHEDULER_LEADER_RETRY_MS`, so when a leader dies, its session ends,
//!   the lock is free and another scheduler leads within about that time.
//! - [`admin_rows`]: every scheduler takes due `scheduled_jobs` rows with
//!   `FOR UPDATE SKIP LOCKED`; no leader is needed for rows, the row lock
//!   keeps two schedulers from taking the same one.
//!
//! Both sleep until the next thing is due, and wake early when a trigger on
//! the tables NOTIFYs a change ([`dkl_shared::schedules::store::CHANGED_CHANNEL`]).

pub mod admin_rows;
pub mod election;
pub mod recurring;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dkl_shared::config::SchedulerConfig;
use dkl_shared::jobs::{Catalog, EngineError};
use dkl_shared::schedules::store::CHANGED_CHANNEL;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the scheduler's loops share.
pub(crate) struct Ctx {
    pub pool: PgPool,
    pub catalog: Catalog,
    pub config: SchedulerConfig,
    pub id: String,
    pub leading: Arc<AtomicBool>,
}

impl Ctx {
    /// The longest one database step may take before the scheduler treats
    /// the connection as dead. Half the staleness limit, so a leader stuck
    /// on a lost reply gives up before the others depose it.
    pub(crate) fn step_limit(&self) -> Duration {
        self.config.leader_stale_after / 2
    }
}

/// Why a database step of the scheduler gave up.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The database or the job engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No reply in time: a reply lost to a network partition would otherwise
    /// block the scheduler for good (sqlx has no client-side timeout).
    #[error("no answer from the database within {0:?}; dropping the connection")]
    Stalled(Duration),
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        Self::Engine(EngineError::Sql(e))
    }
}

/// Runs one database step with a deadline.
pub(crate) async fn bounded<T, E: Into<StepError>>(
    limit: Duration,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(StepError::Stalled(limit)),
    }
}

/// A scheduler process's work: leader election with recurring ticks, and
/// admin rows.
pub struct Scheduler {
    ctx: Arc<Ctx>,
}

impl Scheduler {
    /// A scheduler that enqueues kinds of `catalog`.
    pub fn new(pool: PgPool, catalog: Catalog, config: SchedulerConfig) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let id = format!(
            "{}-{}-{}",
            host.trim(),
            std::process::id(),
            ulid::Ulid::generate()
        );
        Self {
            ctx: Arc::new(Ctx {
                pool,
                catalog,
                config,
                id,
                leading: Arc::default(),
            }),
        }
    }

    /// This scheduler's id (in `scheduler_leader` and `job_schedule_runs`).
    pub fn id(&self) -> &str {
        &self.ctx.id
    }

    /// A flag that is true while this scheduler leads.
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.ctx.leading.clone()
    }

    /// True while this scheduler leads.
    pub fn is_leader(&self) -> bool {
        self.ctx.leading.load(Ordering::SeqCst)
    }

    /// Runs until `shutdown` is cancelled. Database faults are logged and
    /// retried, never fatal: a scheduler that cannot reach the database
    /// simply does not lead until it can.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(scheduler_id = %self.ctx.id, kinds = ?self.ctx.catalog.kinds(), "scheduler started");
        let recurring_wake = Arc::new(Notify::new());
        let rows_wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            self.ctx.pool.clone(),
            vec![recurring_wake.clone(), rows_wake.clone()],
            shutdown.clone(),
        ));
        let election = tokio::spawn(election::run(
            self.ctx.clone(),
            recurring_wake,
            shutdown.clone(),
        ));
        let rows = tokio::spawn(admin_rows::run(
            self.ctx.clone(),
            rows_wake,
            shutdown.clone(),
        ));
        let _ = tokio::join!(listener, election, rows);
        tracing::info!(scheduler_id = %self.ctx.id, "scheduler stopped");
    }
}

/// Wakes the loops when a schedule or admin row changes (and after every
/// reconnect). Lost notifications only delay work until the next poll.
async fn listen(pool: PgPool, wakers: Vec<Arc<Notify>>, stop: CancellationToken) {
    dkl_shared::db::listen(&pool, &[CHANGED_CHANNEL], &stop, |_| {
        wakers.iter().for_each(|w| w.notify_one())
    })
    .await;
}

/// How long to sleep for something due in `secs` seconds, at most `cap`.
pub(crate) fn sleep_for(secs: Option<f64>, cap: Duration) -> Duration {
    match secs {
        // A millisecond late rather than a microsecond early: waking before
        // the due time would find nothing and sleep again.
        Some(s) if !s.is_finite() => cap,
        Some(s) if s <= 0.0 => Duration::ZERO,
        Some(s) => Duration::from_secs_f64(s)
            .saturating_add(Duration::from_millis(1))
            .min(cap),
        None => cap,
    }
}
