//! One attempt of one job: running its handler and writing how it ended.
//!
//! Outcomes go through an unbounded channel to a single writer task that
//! records them in batches (one UPDATE for many jobs). An attempt that is
//! dropped without an outcome (never started because the worker stopped, or
//! stopped after the shutdown grace) is recorded as *released*: back to
//! pending with its attempt refunded. So a graceful stop never burns an
//! attempt, whatever path the job took out of the process.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tracing::Instrument;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::backoff::retry_delay;
use super::error::JobError;
use super::kind::JobId;
use super::registry::{JobContext, Registry};
use super::state::JobState;
use super::runtime::Shared;
use super::stats::AttemptOutcome;
use super::store::{self, ClaimRef, ClaimedJob, OutcomeRow};

/// A claimed job on its way to a handler, with the queue slot it holds.
pub struct Claimed {
    pub(crate) job: ClaimedJob,
    pub(crate) outcome: OutcomeSlot,
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed").field("id", &self.job.id).field("kind", &self.job.job_type).finish()
    }
}

/// Sends exactly one outcome for a job: the one given, or "released" on drop.
pub(crate) struct OutcomeSlot {
    claim: Option<ClaimRef>,
    tx: mpsc::UnboundedSender<OutcomeRow>,
}

impl OutcomeSlot {
    pub(crate) fn new(job: &ClaimedJob, tx: mpsc::UnboundedSender<OutcomeRow>) -> Self {
        Self { claim: Some(job.claim()), tx }
    }

    fn finish(mut self, status: JobState, error: Option<String>, delay: Duration, refund: i32) {
        if let Some(claim) = self.claim.take() {
            // The writer only stops after every sender is gone, so this cannot fail
            // while the runtime runs; if it does, rescue recovers the job.
            let _ = self.tx.send(OutcomeRow { claim, status, error, delay, refund });
        }
    }
}

impl Drop for OutcomeSlot {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            tracing::debug!(job_id = %claim.id, "attempt released without running to the end");
            let _ = self.tx.send(OutcomeRow::released(claim));
        }
    }
}

/// How a handler's run ended, before it is written.
enum Ending {
    Done,
    Failed(JobError),
    Cancelled,
    Released,
}

/// The message of an attempt stopped by its kind's timeout.
fn timed_out(timeout: Duration) -> JobError {
    JobError::retryable(format!(
        "timed out after {}s (the kind's execution timeout; raise it with DKL_JOB_TIMEOUTS=kind=seconds if the work is legitimately this long)",
        timeout.as_secs_f64()
    ))
}

/// Runs one claimed job to its end and records the outcome.
pub(crate) async fn run_attempt(shared: Arc<Shared>, registry: Arc<Registry>, claimed: Claimed) {
    let Claimed { job, outcome, _permit } = claimed;
    let claim = job.claim();
    let cancel = shared.cancels.register(&claim);
    let ctx = JobContext {
        id: JobId(job.id.clone()),
        attempt: job.attempts,
        max_attempts: job.max_attempts,
        cancel: cancel.clone(),
    };
    let span = tracing::info_span!("job", job_id = %job.id, kind = %job.job_type, attempt = job.attempts);
    let started = std::time::Instant::now();
    let ending = match registry.get(&job.job_type) {
        None => Ending::Failed(JobError::permanent(format!(
            "no handler for kind `{}`: this worker runs {:?}; deploy a worker that knows the kind, then retry the job",
            job.job_type,
            registry.kinds()
        ))),
        // Cancelled between claim and start: do not run it at all.
        Some(_) if cancel.is_cancelled() => Ending::Cancelled,
        Some(reg) => {
            let timeout = shared.config.kind_timeouts.get(&job.job_type).copied().unwrap_or(reg.timeout);
            // A handler may panic before it returns its future, too.
            match std::panic::catch_unwind(AssertUnwindSafe(|| (reg.handler)(&job.job, ctx))) {
                Ok(fut) => drive(fut, &cancel, timeout, &shared).instrument(span.clone()).await,
                Err(panic) => Ending::Failed(JobError::retryable(format!("handler panicked: {}", panic_message(&panic)))),
            }
        }
    };
    shared.cancels.remove(&claim);
    let took = started.elapsed();
    let elapsed_ms = took.as_millis() as u64;
    let counted = match &ending {
        Ending::Done => AttemptOutcome::Done,
        Ending::Cancelled => AttemptOutcome::Cancelled,
        Ending::Released => AttemptOutcome::Released,
        Ending::Failed(JobError::Retryable { .. }) if job.attempts < job.max_attempts => AttemptOutcome::Retried,
        Ending::Failed(_) => AttemptOutcome::Discarded,
    };
    shared.stats.record_attempt(&job.job_type, counted, took);
    match ending {
        Ending::Done => {
            tracing::debug!(parent: &span, elapsed_ms, "job done");
            outcome.finish(JobState::Done, None, Duration::ZERO, 0);
        }
        Ending::Cancelled => {
            tracing::info!(parent: &span, elapsed_ms, "job cancelled while running");
            outcome.finish(JobState::Killed, Some("cancelled while running".into()), Duration::ZERO, 0);
        }
        Ending::Released => {
            tracing::info!(parent: &span, elapsed_ms, "job released at shutdown; it will run again");
            drop(outcome); // the slot's drop records the release
        }
        Ending::Failed(JobError::Permanent(msg)) => {
            tracing::warn!(parent: &span, elapsed_ms, error = %msg, "job discarded: permanent error");
            outcome.finish(JobState::Killed, Some(msg), Duration::ZERO, 0);
        }
        Ending::Failed(JobError::Retryable { message, retry_after }) => {
            if job.attempts >= job.max_attempts {
                tracing::warn!(parent: &span, elapsed_ms, error = %message, "job discarded: attempts used up");
                let msg = format!("{message} (gave up after {} attempts)", job.attempts);
                outcome.finish(JobState::Killed, Some(msg), Duration::ZERO, 0);
            } else {
                let delay = retry_delay(job.attempts, shared.config.retry_base, shared.config.retry_max, retry_after);
                tracing::info!(parent: &span, elapsed_ms, error = %message, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                outcome.finish(JobState::Pending, Some(message), delay, 0);
            }
        }
    }
}

/// Runs the handler future until it ends, is cancelled, runs past its kind's
/// timeout, or the worker's shutdown grace runs out.
///
/// A cancel and a timeout both fire the handler's [`JobContext::cancelled`]
/// and give it `DKL_CANCEL_GRACE_SECS` to stop before it is dropped; a
/// timeout counts as a failed attempt (retried with backoff), a cancel ends
/// the job.
async fn drive(
    fut: futures::future::BoxFuture<'static, Result<(), JobError>>,
    cancel: &CancellationToken,
    timeout: Duration,
    shared: &Shared,
) -> Ending {
    let mut fut = AssertUnwindSafe(fut).catch_unwind();
    let cancel_deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(shared.config.cancel_grace).await;
    };
    let shutdown_deadline = async {
        shared.shutdown.cancelled().await;
        tokio::time::sleep(shared.config.shutdown_grace).await;
    };
    tokio::pin!(shutdown_deadline);
    let ended = |res: Result<Result<(), JobError>, Box<dyn Any + Send>>| match res {
        Ok(Ok(())) => Ending::Done,
        Ok(Err(_)) if cancel.is_cancelled() && !shared.shutdown.is_cancelled() => Ending::Cancelled,
        Ok(Err(e)) => Ending::Failed(e),
        Err(panic) => Ending::Failed(JobError::retryable(format!("handler panicked: {}", panic_message(&panic)))),
    };
    tokio::select! {
        res = &mut fut => return ended(res),
        _ = cancel_deadline => return Ending::Cancelled,
        _ = &mut shutdown_deadline => return Ending::Released,
        _ = tokio::time::sleep(timeout) => {}
    }
    // Past the timeout: ask the handler to stop, then drop it after the grace.
    tracing::warn!(timeout_s = timeout.as_secs_f64(), "job ran past its kind's timeout; stopping it");
    cancel.cancel();
    tokio::select! {
        res = &mut fut => match res {
            Ok(Ok(())) => Ending::Done,
            _ => Ending::Failed(timed_out(timeout)),
        },
        _ = tokio::time::sleep(shared.config.cancel_grace) => Ending::Failed(timed_out(timeout)),
        _ = &mut shutdown_deadline => Ending::Released,
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// Writes outcomes in batches until every sender is gone.
///
/// A batch the server refuses for its content (a value out of range that got
/// past [`store::storable_text`], say) is written row by row, so one bad row
/// cannot hold back the others: a row that still fails is discarded with an
/// error saying why. A batch that fails for any other reason (connection
/// lost, server restarting) is retried with backoff: losing it would leave
/// the jobs running until rescue. Once the runtime is shutting down, a write
/// that keeps failing for [`GIVE_UP_AFTER_SHUTDOWN`] is abandoned so the
/// process can exit; rescue then returns those jobs. While a write keeps
/// failing, `/healthz` reports the writer stuck.
pub(crate) async fn write_outcomes(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<OutcomeRow>) {
    const MAX_BATCH: usize = 2000;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        let mut failing_since_shutdown: Option<std::time::Instant> = None;
        loop {
            let result = match store::record_outcomes(&shared.pool, &shared.worker_id, &batch).await {
                Err(e) if is_content_error(&e) => {
                    tracing::error!(error = %e, batch = batch.len(), "a batch of job outcomes was refused; writing them one by one");
                    write_one_by_one(&shared, &batch).await
                }
                other => other.map(|n| n as usize),
            };
            match result {
                Ok(n) => {
                    shared.stats.outcome_writer_ok();
                    if n < batch.len() {
                        tracing::warn!(
                            written = n,
                            batch = batch.len(),
                            "some outcomes were not written: those jobs were rescued from this worker meanwhile"
                        );
                    }
                    break;
                }
                Err(e) => {
                    shared.stats.outcome_writer_failed();
                    if shared.shutdown.is_cancelled() {
                        let since = *failing_since_shutdown.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() > GIVE_UP_AFTER_SHUTDOWN {
                            tracing::error!(error = %e, batch = batch.len(), "giving up on job outcomes at shutdown; rescue will return these jobs");
                            break;
                        }
                    }
                    tracing::error!(error = %e, batch = batch.len(), retry_in_ms = backoff.as_millis() as u64, "cannot record job outcomes; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        shared.in_flight.finish(batch.iter().map(|r| &r.claim));
        batch.clear();
    }
}

/// Writes each outcome on its own. A row the server refuses is replaced by a
/// discard that names the refusal. Fails only for errors that are not the
/// row's fault (then the caller retries the batch).
async fn write_one_by_one(shared: &Shared, batch: &[OutcomeRow]) -> Result<usize, sqlx::Error> {
    let mut written = 0;
    for row in batch {
        let result = match store::record_outcomes(&shared.pool, &shared.worker_id, std::slice::from_ref(row)).await {
            Err(e) if is_content_error(&e) => {
                tracing::error!(job_id = %row.claim.id, error = %e, "job outcome refused by the database; discarding the job");
                let why = format!(
                    "the outcome of this attempt ({}) could not be stored: {e}; the job was discarded so it cannot stall the others; fix the cause, then `dklctl retry {}`",
                    row.status, row.claim.id
                );
                store::record_outcomes(&shared.pool, &shared.worker_id, &[OutcomeRow::discarded(row.claim.clone(), why)]).await
            }
            other => other,
        };
        match result {
            Ok(n) => written += n as usize,
            Err(e) if is_content_error(&e) => {
                tracing::error!(job_id = %row.claim.id, error = %e, "cannot even discard the job; rescue will return it");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// True when the server refused the statement for the data in it (SQLSTATE
/// class 22, data exception; 23, integrity; 54, a limit), which retrying
/// cannot mend; false for lost connections, restarts, timeouts.
fn is_content_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// How long the outcome writer keeps retrying after shutdown began.
pub const GIVE_UP_AFTER_SHUTDOWN: Duration = Duration::from_secs(30);
