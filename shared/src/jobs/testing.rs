//! Engine internals for tests that must reach under the runtime (claiming as
//! a made-up worker, writing a stale outcome, running rescue by hand).
//! Compiled only with the `testing` feature, which only the `dkl-tests`
//! crate turns on: production code cannot write outcomes or claim jobs
//! behind the runtime's back.
//!
//! To run one handler once in a test, use [`super::Registry::call`] with
//! [`super::JobContext::for_test`], or `dkl_tests::work_one` to run the next
//! due job of a queue through the engine and record its outcome.

pub use super::store::{
    ClaimRef, ClaimedJob, OutcomeRow, claim, job, record_outcomes, register_worker, rescue_orphans,
};

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::attempt::{Claimed, OutcomeSlot, run_attempt, write_outcomes};
use super::runtime::Shared;
use super::{EngineError, JobRecord, Registry, store};
use crate::config::JobsConfig;

/// Claims the next due job of `queue`, runs it with `registry` exactly as
/// the runtime would (timeout, cancel, panic and outcome rules included),
/// writes its outcome, and returns the row afterwards; `None` when no job is
/// due. The job's attempt counts as any other.
pub async fn work_one(
    pool: &PgPool,
    registry: Registry,
    queue: &str,
    config: JobsConfig,
) -> Result<Option<JobRecord>, EngineError> {
    let worker_id = format!("work-one-{}", ulid::Ulid::generate());
    store::register_worker(pool, &worker_id, queue).await?;
    let Some(job) = store::claim(pool, queue, 1, &worker_id).await?.pop() else {
        return Ok(None);
    };
    let id = job.id.clone();
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        config,
        worker_id,
        shutdown: CancellationToken::new(),
        cancels: Default::default(),
        in_flight: Default::default(),
        stats: Default::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_outcomes(shared.clone(), rx));
    let permit = Arc::new(Semaphore::new(1))
        .acquire_owned()
        .await
        .map_err(|_| EngineError::WorkerStopped {
            queue: queue.into(),
        })?;
    let claimed = Claimed {
        outcome: OutcomeSlot::new(&job, tx),
        job,
        _permit: permit,
    };
    run_attempt(shared, Arc::new(registry), claimed).await;
    // The attempt's outcome slot was the only sender: the writer drains and ends.
    let _ = writer.await;
    Ok(store::job(pool, &id).await?)
}
