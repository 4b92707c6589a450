//! Claiming jobs from PostgreSQL and handing them to apalis.
//!
//! One fetcher task per queue claims due jobs (`FOR UPDATE SKIP LOCKED`, in
//! batches no larger than the queue's free slots, so a claimed job is always a
//! job that is about to run) and sends them into a channel. [`QueueBackend`]
//! is the apalis `Backend` that reads that channel, so apalis's worker loop
//! drives our handlers. The fetcher sleeps until the earliest of: a NOTIFY for
//! its queue, the next scheduled job's due time, the poll interval.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::{Notify, Semaphore, mpsc};
use tower::layer::util::Identity;

use super::attempt::{Claimed, OutcomeSlot};
use super::runtime::Shared;
use super::store::{self, OutcomeRow};

/// The apalis backend of one queue: a stream of claimed jobs.
pub struct QueueBackend {
    rx: mpsc::Receiver<Claimed>,
}

impl Backend for QueueBackend {
    type Task = Task<Claimed>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<Claimed>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|claimed| claimed.map(|c| Ok(TaskBuilder::new(c).build())))
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        // Jobs still in the channel are dropped with the backend; their
        // OutcomeSlots release them without charging an attempt.
        self.rx.close();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for QueueBackend {
    type Args = Claimed;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}

/// The first wait of a fetcher that finds its only due jobs locked by someone
/// else; it doubles up to the poll interval while they stay locked.
const LOCKED_BACKOFF_START: Duration = Duration::from_millis(5);

/// While the queue has a backlog (the last claim got all it asked for), a
/// fetcher with one free slot waits up to this long for a quarter of its
/// slots to be free, and claims them in one query. Claiming each slot as it
/// frees made a claim per ~1.5 jobs at 64 slots, and the claims then cost
/// more database time than the jobs (measured with `dklctl bench send`).
/// A job of a backlog waits in the queue anyway; an idle queue's first job
/// is claimed at once.
const COALESCE_WINDOW: Duration = Duration::from_millis(2);

/// One queue's fetch loop and the channel it fills.
pub(crate) struct Fetcher {
    pub queue: String,
    pub concurrency: usize,
    pub shared: Arc<Shared>,
    pub wake: Arc<Notify>,
    pub outcomes: mpsc::UnboundedSender<OutcomeRow>,
}

impl Fetcher {
    /// Makes the backend for apalis and `loops` fetch loops that feed it.
    /// Several loops share the queue's slots; with SKIP LOCKED their claims
    /// never overlap, and a second loop keeps claiming while the first one's
    /// query runs, which keeps both database cores busy under load.
    pub(crate) fn split(
        self,
        loops: usize,
    ) -> (QueueBackend, Vec<impl Future<Output = ()> + use<>>) {
        let (tx, rx) = mpsc::channel(self.concurrency.max(1));
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let this = Arc::new(self);
        let loops = (0..loops.max(1))
            .map(|_| this.clone().run(tx.clone(), slots.clone()))
            .collect();
        (QueueBackend { rx }, loops)
    }

    async fn run(self: Arc<Self>, tx: mpsc::Sender<Claimed>, slots: Arc<Semaphore>) {
        let shutdown = self.shared.shutdown.clone();
        let batch = self.shared.config.fetch_batch;
        let mut error_backoff = Duration::from_millis(100);
        let mut locked_backoff = LOCKED_BACKOFF_START;
        let mut backlog = false;
        let gather = (self.concurrency / 4).clamp(1, batch.max(1));
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            if shutdown.is_cancelled() {
                break; // never claim after shutdown began
            }
            let mut permits = vec![first];
            if backlog && gather > 1 {
                let until = tokio::time::Instant::now() + COALESCE_WINDOW;
                while permits.len() < gather {
                    match tokio::time::timeout_at(until, slots.clone().acquire_owned()).await {
                        Ok(Ok(p)) => permits.push(p),
                        _ => break,
                    }
                }
            }
            if shutdown.is_cancelled() {
                break; // shutdown began while gathering slots
            }
            while permits.len() < batch {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let want = permits.len();
            self.shared.stats.claim_query();
            let claimed = store::claim(
                &self.shared.pool,
                &self.queue,
                want as i64,
                &self.shared.worker_id,
            )
            .await;
            let jobs = match claimed {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(queue = %self.queue, error = %e, retry_in_ms = error_backoff.as_millis() as u64, "cannot fetch jobs");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(error_backoff) => {},
                        _ = shutdown.cancelled() => break,
                    }
                    error_backoff = (error_backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            error_backoff = Duration::from_millis(100);
            let got = jobs.len();
            self.shared.stats.jobs_claimed(got as u64);
            self.shared.in_flight.start(jobs.iter().map(|j| j.claim()));
            // Every claimed job gets its outcome slot before any is sent, so a
            // failed send drops (and so releases) the rest of the batch too.
            let claimed: Vec<Claimed> = jobs
                .into_iter()
                .zip(permits.drain(..))
                .map(|(job, permit)| Claimed {
                    outcome: OutcomeSlot::new(&job, self.outcomes.clone()),
                    job,
                    _permit: permit,
                })
                .collect();
            for c in claimed {
                if tx.send(c).await.is_err() {
                    // apalis's worker has stopped; the dropped jobs were released.
                    return;
                }
            }
            drop(permits);
            backlog = got == want;
            if backlog {
                continue;
            }
            let poll = self.shared.config.poll_interval;
            let wait = match store::next_due_in(&self.shared.pool, &self.queue).await {
                // A job is due but the claim got none: someone else holds its
                // row lock (an admin's open transaction, another fetcher's
                // claim in flight). Looking again at once would spin until
                // the lock goes; back off instead, up to the poll interval.
                Ok(Some(due)) if got == 0 && due.is_zero() => {
                    let wait = locked_backoff.min(poll);
                    locked_backoff = (locked_backoff * 2).min(poll);
                    wait
                }
                Ok(Some(due)) => {
                    locked_backoff = LOCKED_BACKOFF_START;
                    due.min(poll)
                }
                _ => {
                    locked_backoff = LOCKED_BACKOFF_START;
                    poll
                }
            };
            if got > 0 {
                locked_backoff = LOCKED_BACKOFF_START;
            }
            tokio::select! {
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(wait) => {},
                _ = shutdown.cancelled() => break,
            }
        }
    }
}
