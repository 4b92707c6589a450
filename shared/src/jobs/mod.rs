//! The job engine: typed jobs in PostgreSQL, run by apalis workers.
//!
//! # Quick start
//!
//! ```no_run
//! use dkl_shared::jobs::{EnqueueOptions, JobClient, JobError, JobKind, Registry, WorkerRuntime};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Greet { name: String }
//! impl JobKind for Greet { const KIND: &'static str = "greet"; }
//!
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! // Enqueue: returns the job id; inside your transaction with `enqueue_tx`.
//! let client = JobClient::new(pool.clone());
//! let job = client.enqueue(&Greet { name: "Ada".into() }, EnqueueOptions::default()).await?;
//!
//! // Work: register a handler per kind, run until shutdown.
//! let mut registry = Registry::new();
//! registry.register::<Greet, _, _>(|g, _ctx| async move {
//!     if g.name.is_empty() { return Err(JobError::permanent("empty name")); }
//!     Ok(())
//! });
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! WorkerRuntime::new(pool, registry, Default::default()).run(shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! # What apalis does, and what this layer adds
//!
//! **apalis-postgres** owns the storage: its migrations create `apalis.jobs`
//! and `apalis.workers` (and an insert trigger that NOTIFYs
//! `apalis::job::insert`, which our migration drops: nobody listens there). **apalis-core** runs the workers: for each queue an
//! apalis `Worker` polls our [`fetcher::QueueBackend`] and drives each job
//! through its tower service stack, and stops gracefully, draining running
//! jobs, when told to.
//!
//! At its defaults apalis-postgres is unsafe for mail; this layer fixes that
//! without forking it:
//!
//! | apalis-postgres 1.0 alone | this layer |
//! |---|---|
//! | failed jobs retried at once, back to back | backoff with jitter written to `run_at` ([`backoff`]) |
//! | every error retried | [`JobError::Permanent`] discards at once; attempts used up discard too, keeping `last_error` |
//! | new jobs seen at the 30 s heartbeat (or pubsub but then scheduled jobs wait) | our trigger NOTIFYs each job's queue as it becomes pending and wakes that queue's fetcher; an idle fetcher sleeps until the next job's due time or the poll interval, whichever is first |
//! | a dead worker's jobs wait 300 s and lose an attempt | heartbeats every `DKL_HEARTBEAT_SECS`; jobs of a worker silent for `DKL_RESCUE_AFTER_SECS` go back to pending with the attempt refunded; a rescuer must itself have heartbeated without a gap that long (so an outage it just came back from does not make live workers look dead); rescues are counted and past `DKL_MAX_RESCUES` the job is discarded (it crashes its workers) |
//! | a hung handler holds its slot for ever | each kind has an execution timeout ([`JobKind::TIMEOUT`], `DKL_JOB_TIMEOUTS`): the handler is cancelled, dropped after the cancel grace, and the attempt counts |
//! | graceful shutdown burns an attempt | a job that did not run to its end is released with its attempt refunded |
//! | one idempotency collision fails the whole batch; a key is taken for ever | dedup keys are unique among live jobs only; enqueue returns the live job's id |
//! | `push()` returns no id | [`JobClient::enqueue`] returns [`Enqueued`] with the id |
//! | no cancel | [`JobClient::cancel`]: pending jobs never start, running ones see [`JobContext::cancelled`] |
//! | finished jobs kept for ever | the `prune_jobs` kind (its handler in `dkl-worker` calls [`admin::prune`]), which also vacuums the table |
//! | one ack query per small batch | outcomes of many jobs written in one UPDATE ([`attempt`]), matched to the claim (`lock_by` + `lock_at`) so a stale worker cannot overwrite a newer claim; error texts made storable (NUL, length) and delays capped; a batch refused for its content is written row by row so one bad row is discarded with the reason and the rest written |
//! | fetch query planned from table statistics | the claim is an SQL function with a pinned plan (`apalis.dkl_claim`), fast with stale statistics too |
//! | scheduled jobs seen only by polling | a trigger announces jobs due later; idle fetchers sleep until the next due time |
//! | handlers share one task per worker | each attempt runs on its own tokio task; a queue whose worker dies stops the runtime (the process exits, its supervisor restarts it) |
//!
//! Delivery is at least once: a process that dies after a handler finished
//! but before the outcome was written runs the job again after rescue.
//! Handlers with outside effects (sending mail) record each effect under a
//! unique key first.
//!
//! All SQL is in the private `store` module; the runtime (`runtime`,
//! `fetcher`, `attempt`) is private too, so handlers cannot claim jobs or
//! write outcomes behind its back. Tests reach them through [`testing`]
//! (feature `testing`).

// The public face: what handlers, the scheduler and tools use.
pub mod admin;
pub mod backoff;
pub mod catalog;
pub mod client;
pub mod error;
pub mod kind;
pub mod registry;
pub mod state;
pub mod stats;
#[cfg(feature = "testing")]
pub mod testing;

// The machinery: only the runtime claims jobs and writes outcomes.
mod attempt;
mod fetcher;
mod runtime;
mod store;

pub use catalog::{Catalog, KindSpec};
pub use client::{
    EnqueueOptions, Enqueued, JobClient, enqueue_many_on, enqueue_on, enqueue_raw_on,
};
pub use error::{EngineError, JobError};
pub use kind::{JobId, JobKind};
pub use registry::{JobContext, Registry};
pub use runtime::WorkerRuntime;
pub use state::JobState;
pub use stats::RuntimeStats;
pub use store::{
    CANCEL_CHANNEL, CancelOutcome, JobRecord, MAX_ERROR_BYTES, MAX_RETRY_DELAY, RetryOutcome,
    SCHEDULED_CHANNEL, storable_text,
};
