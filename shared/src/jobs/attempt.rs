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
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::retry_delay;
use super::error::JobError;
use super::kind::JobId;
use super::registry::{JobContext, Registry};
use super::runtime::Shared;
use super::state::JobState;
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
        f.debug_struct("Claimed")
            .field("id", &self.job.id)
            .field("kind", &self.job.job_type)
            .finish()
    }
}

/// Sends exactly one outcome for a job: the one given, or "released" on drop.
pub(crate) struct OutcomeSlot {
    claim: Option<ClaimRef>,
    tx: mpsc::UnboundedSender<OutcomeRow>,
}

impl OutcomeSlot {
    pub(crate) fn new(job: &ClaimedJob, tx: mpsc::UnboundedSender<OutcomeRow>) -> Self {
        Self {
            claim: Some(job.claim()),
            tx,
        }
    }

    fn finish(mut self, status: JobState, error: Option<String>, delay: Duration, refund: i32) {
        if let Some(claim) = self.claim.take() {
            // The writer only stops after every sender is gone, so this cannot fail
            // while the runtime runs; if it does, rescue recovers the job.
            let _ = self.tx.send(OutcomeRow {
                claim,
                status,
                error,
                delay,
                refund,
            });
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
    let Claimed {
        job,
        outcome,
        _permit,
    } = claimed;
    let claim = job.claim();
    let cancel = shared.cancels.register(&claim);
    let ctx = JobContext {
        id: JobId(job.id.clone()),
        attempt: job.attempts,
        max_attempts: job.max_attempts,
        cancel: cancel.clone(),
    };
    let span =
        tracing::info_span!("job", job_id = %job.id, kind = %job.job_type, attempt = job.attempts);
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
            let timeout = shared
                .config
                .kind_timeouts
                .get(&job.job_type)
                .copied()
                .unwrap_or(reg.timeout);
            // A handler may panic before it returns its future, too.
            match std::panic::catch_unwind(AssertUnwindSafe(|| (reg.handler)(&job.job, ctx))) {
                Ok(fut) => {
                    drive(fut, &cancel, timeout, &shared)
                        .instrument(span.clone())
                        .await
                }
                Err(panic) => Ending::Failed(JobError::retryable(format!(
                    "handler panicked: {}",
                    panic_message(&panic)
                ))),
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
        Ending::Failed(JobError::Retryable { .. }) if job.attempts < job.max_attempts => {
            AttemptOutcome::Retried
        }
        Ending::Failed(JobError::Snooze { .. }) => AttemptOutcome::Snoozed,
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
            outcome.finish(
                JobState::Killed,
                Some("cancelled while running".into()),
                Duration::ZERO,
                0,
            );
        }
        Ending::Released => {
            tracing::info!(parent: &span, elapsed_ms, "job released at shutdown; it will run again");
            drop(outcome); // the slot's drop records the release
        }
        Ending::Failed(JobError::Permanent(msg)) => {
            tracing::warn!(parent: &span, elapsed_ms, error = %msg, "job discarded: permanent error");
            outcome.finish(JobState::Killed, Some(msg), Duration::ZERO, 0);
        }
        Ending::Failed(JobError::Snooze { after, reason }) => {
            tracing::debug!(parent: &span, elapsed_ms, %reason, snooze_ms = after.as_millis() as u64, "job snoozed");
            outcome.finish(
                JobState::Pending,
                Some(format!("snoozed: {reason}")),
                after,
                1,
            );
        }
        Ending::Failed(JobError::Retryable {
            message,
            retry_after,
        }) => {
            if job.attempts >= job.max_attempts {
                tracing::warn!(parent: &span, elapsed_ms, error = %message, "job discarded: attempts used up");
                let msg = format!("{message} (gave up after {} attempts)", job.attempts);
                outcome.finish(JobState::Killed, Some(msg), Duration::ZERO, 0);
            } else {
                let delay = retry_delay(
                    job.attempts,
                    shared.config.retry_base,
                    shared.config.retry_max,
                    retry_after,
                );
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
    tokio::pin!(cancel_deadline, shutdown_deadline);
    let ended = |res: Result<Result<(), JobError>, Box<dyn Any + Send>>| match res {
        Ok(Ok(())) => Ending::Done,
        Ok(Err(_)) if cancel.is_cancelled() && !shared.shutdown.is_cancelled() => Ending::Cancelled,
        Ok(Err(e)) => Ending::Failed(e),
        Err(panic) => Ending::Failed(JobError::retryable(format!(
            "handler panicked: {}",
            panic_message(&panic)
        ))),
    };
    tokio::select! {
        res = &mut fut => return ended(res),
        _ = &mut cancel_deadline => return Ending::Cancelled,
        _ = &mut shutdown_deadline => return Ending::Released,
        _ = tokio::time::sleep(timeout) => {}
    }
    // Someone cancelled it before the timeout: it ends as cancelled, within
    // the grace that cancel started, not a second one.
    if cancel.is_cancelled() {
        return tokio::select! {
            res = &mut fut => ended(res),
            _ = &mut cancel_deadline => Ending::Cancelled,
            _ = &mut shutdown_deadline => Ending::Released,
        };
    }
    // Past the timeout: ask the handler to stop, then drop it after the grace.
    tracing::warn!(
        timeout_s = timeout.as_secs_f64(),
        "job ran past its kind's timeout; stopping it"
    );
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
/// past [`store::storable_text`], say) or for a row lock it could not get
/// within [`store::OUTCOME_LOCK_TIMEOUT`] is written row by row, so one bad
/// or locked row cannot hold back the others: a row refused for its content
/// is discarded with an error saying why; a locked row is tried again after
/// a backoff. A batch that fails for any other reason (connection lost,
/// server restarting) is retried with backoff: losing it would leave the
/// jobs running until rescue. Once the runtime is shutting down, rows that
/// still cannot be written after [`GIVE_UP_AFTER_SHUTDOWN`] are abandoned so
/// the process can exit; rescue then returns those jobs. `/healthz` reports
/// a writer that keeps failing or whose write hangs.
pub(crate) async fn write_outcomes(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<OutcomeRow>,
) {
    const MAX_BATCH: usize = 2000;
    let mut received = Vec::with_capacity(MAX_BATCH);
    // Rows whose job row someone else holds locked: tried again on their
    // own after a backoff, so they never hold up new outcomes.
    let mut deferred: Vec<OutcomeRow> = Vec::new();
    let mut deferred_backoff = Duration::from_millis(100);
    let mut deferred_due = tokio::time::Instant::now();
    let mut closed = false;
    let mut closed_at: Option<std::time::Instant> = None;
    loop {
        if !closed {
            let got = if deferred.is_empty() {
                rx.recv_many(&mut received, MAX_BATCH).await
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut received, MAX_BATCH) => n,
                    _ = tokio::time::sleep_until(deferred_due) => usize::MAX,
                }
            };
            closed = got == 0;
        }
        if closed && deferred.is_empty() {
            return;
        }
        if !received.is_empty() {
            let batch = std::mem::take(&mut received);
            let left = write_until_done(&shared, &batch).await;
            finish_written(&shared, &batch, &left);
            if deferred.is_empty() && !left.is_empty() {
                // Newly locked rows wait a backoff before their first retry.
                deferred_due = tokio::time::Instant::now() + deferred_backoff;
            }
            deferred.extend(left);
        }
        if closed {
            // Every sender is gone (the runtime stops): locked rows get until
            // the shutdown limit, then rescue returns their jobs.
            let since = *closed_at.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > GIVE_UP_AFTER_SHUTDOWN {
                tracing::error!(
                    rows = deferred.len(),
                    "giving up on locked job outcomes at shutdown; rescue will return these jobs"
                );
                shared.in_flight.finish(deferred.iter().map(|r| &r.claim));
                return;
            }
            tokio::time::sleep_until(deferred_due).await;
        }
        if !deferred.is_empty() && tokio::time::Instant::now() >= deferred_due {
            let retry = std::mem::take(&mut deferred);
            let left = write_until_done(&shared, &retry).await;
            finish_written(&shared, &retry, &left);
            deferred_backoff = if left.is_empty() {
                Duration::from_millis(100)
            } else {
                (deferred_backoff * 2).min(Duration::from_secs(10))
            };
            deferred = left;
        }
        if !deferred.is_empty() {
            if tokio::time::Instant::now() >= deferred_due {
                deferred_due = tokio::time::Instant::now() + deferred_backoff;
            }
            tracing::warn!(
                rows = deferred.len(),
                retry_in_ms = deferred_backoff.as_millis() as u64,
                "job rows locked by another session; their outcomes wait"
            );
        }
    }
}

/// Marks the claims of `batch` written, except those `left` for later.
fn finish_written(shared: &Shared, batch: &[OutcomeRow], left: &[OutcomeRow]) {
    let left: std::collections::HashSet<&ClaimRef> = left.iter().map(|r| &r.claim).collect();
    shared
        .in_flight
        .finish(batch.iter().map(|r| &r.claim).filter(|c| !left.contains(c)));
}

/// Writes `pending`, retrying with backoff while the database cannot be
/// reached. Returns the rows whose job rows are locked by someone else.
async fn write_until_done(shared: &Shared, pending: &[OutcomeRow]) -> Vec<OutcomeRow> {
    let mut backoff = Duration::from_millis(100);
    let mut failing_since_shutdown: Option<std::time::Instant> = None;
    loop {
        let e = match write_batch(shared, pending).await {
            Ok(left) => {
                shared.stats.outcome_writer_ok();
                return left;
            }
            Err(e) => e,
        };
        shared.stats.outcome_writer_failed();
        if shared.shutdown.is_cancelled() {
            let since = *failing_since_shutdown.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > GIVE_UP_AFTER_SHUTDOWN {
                tracing::error!(error = %e, rows = pending.len(), "giving up on job outcomes at shutdown; rescue will return these jobs");
                return Vec::new();
            }
        }
        tracing::error!(error = %e, rows = pending.len(), retry_in_ms = backoff.as_millis() as u64, "cannot record job outcomes; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Writes `batch`; returns the rows left for later (locked by someone else).
async fn write_batch(
    shared: &Shared,
    batch: &[OutcomeRow],
) -> Result<Vec<OutcomeRow>, sqlx::Error> {
    match write_statement(shared, batch).await {
        Ok(n) => {
            if (n as usize) < batch.len() {
                tracing::warn!(
                    written = n,
                    batch = batch.len(),
                    "some outcomes were not written: those jobs were rescued from this worker meanwhile"
                );
            }
            Ok(Vec::new())
        }
        Err(e) if is_content_error(&e) || is_lock_timeout(&e) => {
            tracing::error!(error = %e, batch = batch.len(), "a batch of job outcomes was refused; writing them one by one");
            write_one_by_one(shared, batch).await
        }
        Err(e) => Err(e),
    }
}

/// Writes each outcome on its own. A row the server refuses is replaced by a
/// discard that names the refusal; a locked row is returned for later. Fails
/// only for errors that are not one row's (then the caller retries).
async fn write_one_by_one(
    shared: &Shared,
    batch: &[OutcomeRow],
) -> Result<Vec<OutcomeRow>, sqlx::Error> {
    let mut left = Vec::new();
    for row in batch {
        let result = match write_statement(shared, std::slice::from_ref(row)).await {
            Err(e) if is_content_error(&e) => {
                tracing::error!(job_id = %row.claim.id, error = %e, "job outcome refused by the database; discarding the job");
                let why = format!(
                    "the outcome of this attempt ({}) could not be stored: {e}; the job was discarded so it cannot stall the others; fix the cause, then `dklctl retry {}`",
                    row.status, row.claim.id
                );
                let discard = OutcomeRow::discarded(row.claim.clone(), why);
                write_statement(shared, &[discard]).await
            }
            other => other,
        };
        match result {
            Ok(_) => {}
            Err(e) if is_lock_timeout(&e) => {
                tracing::warn!(job_id = %row.claim.id, "job row is locked by another session; its outcome waits");
                left.push(row.clone());
            }
            Err(e) if is_content_error(&e) => {
                tracing::error!(job_id = %row.claim.id, error = %e, "cannot even discard the job; rescue will return it");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(left)
}

/// One outcome statement, timed for `/healthz` and bounded: a write that
/// hangs (a half-open connection) fails after [`OUTCOME_WRITE_TIMEOUT`] and
/// is retried on another connection, so the writer, and shutdown, never wait
/// for ever.
async fn write_statement(shared: &Shared, rows: &[OutcomeRow]) -> Result<u64, sqlx::Error> {
    shared.stats.outcome_write_in_progress(true);
    let result = tokio::time::timeout(
        OUTCOME_WRITE_TIMEOUT,
        store::record_outcomes_guarded(&shared.pool, &shared.worker_id, rows),
    )
    .await;
    shared.stats.outcome_write_in_progress(false);
    result.unwrap_or_else(|_| {
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "writing job outcomes took longer than {}s",
                OUTCOME_WRITE_TIMEOUT.as_secs()
            ),
        )))
    })
}

/// The longest one outcome statement may take.
const OUTCOME_WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// True when the server refused the statement for the data in it (SQLSTATE
/// class 22, data exception; 23, integrity; 54, a limit), which retrying
/// cannot mend; false for lost connections, restarts, timeouts.
fn is_content_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// True for `lock_not_available` (55P03): `lock_timeout` ran out.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// How long the outcome writer keeps retrying after shutdown began.
pub const GIVE_UP_AFTER_SHUTDOWN: Duration = Duration::from_secs(30);
