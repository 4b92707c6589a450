//! A worker process's job runtime: one apalis worker per queue, plus the
//! tasks around them (NOTIFY listener, heartbeat and rescue, outcome writer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::attempt::{Claimed, run_attempt, write_outcomes};
use super::error::EngineError;
use super::fetcher::Fetcher;
use super::registry::Registry;
use super::stats::RuntimeStats;
use super::store::{self, OutcomeRow};
use crate::config::JobsConfig;

/// State every part of one runtime shares.
pub(crate) struct Shared {
    pub pool: PgPool,
    pub config: JobsConfig,
    pub worker_id: String,
    /// Cancelled on external shutdown or when a queue's worker dies.
    pub shutdown: CancellationToken,
    pub cancels: Cancels,
    pub in_flight: InFlight,
    pub stats: Arc<RuntimeStats>,
}

/// Cancellation tokens of the jobs running in this process.
#[derive(Default)]
pub(crate) struct Cancels {
    inner: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    running: HashMap<String, CancellationToken>,
    // A cancel can arrive between claim and start; remember it until start.
    early: HashSet<String>,
}

impl Cancels {
    pub fn register(&self, id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        let mut state = lock(&self.inner);
        if state.early.remove(id) {
            token.cancel();
        }
        state.running.insert(id.to_string(), token.clone());
        token
    }

    pub fn remove(&self, id: &str) {
        lock(&self.inner).running.remove(id);
    }

    fn signal(&self, id: &str) {
        let mut state = lock(&self.inner);
        if let Some(token) = state.running.get(id) {
            token.cancel();
            return;
        }
        if state.early.len() > 10_000 {
            state.early.clear(); // ids of other processes' jobs; bounded, not precious
        }
        state.early.insert(id.to_string());
    }
}

/// Ids of jobs this process claimed and has not yet written an outcome for.
/// The heartbeat compares it with the database to find claims whose reply was
/// lost (a connection reset after the claim committed).
#[derive(Default)]
pub(crate) struct InFlight {
    ids: Mutex<HashSet<String>>,
}

impl InFlight {
    pub fn start(&self, ids: impl Iterator<Item = String>) {
        lock(&self.ids).extend(ids);
    }

    pub fn finish<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut set = lock(&self.ids);
        for id in ids {
            set.remove(id);
        }
    }

    fn contains(&self, id: &str) -> bool {
        lock(&self.ids).contains(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the registered job kinds until shutdown.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), dkl_shared::jobs::EngineError> {
/// use dkl_shared::jobs::{Registry, WorkerRuntime};
/// let mut registry = Registry::new();
/// // registry.register::<MyJob, _, _>(|job, ctx| async move { Ok(()) });
/// let shutdown = tokio_util::sync::CancellationToken::new();
/// WorkerRuntime::new(pool, registry, Default::default()).run(shutdown).await
/// # }
/// ```
pub struct WorkerRuntime {
    pool: PgPool,
    registry: Registry,
    config: JobsConfig,
    worker_id: String,
    stats: Arc<RuntimeStats>,
}

impl WorkerRuntime {
    /// A runtime for `registry`'s kinds.
    pub fn new(pool: PgPool, registry: Registry, config: JobsConfig) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let worker_id = format!("{}-{}-{}", host.trim(), std::process::id(), ulid::Ulid::generate());
        Self { pool, registry, config, worker_id, stats: Arc::default() }
    }

    /// Counters and liveness of this runtime, for `/metrics` and `/healthz`.
    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.stats.clone()
    }

    /// This process's row id in `apalis.workers` (the `lock_by` of its jobs).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The queues this runtime serves and their concurrency: every configured
    /// queue, plus any queue a registered kind names (at concurrency 1).
    pub fn queues(&self) -> BTreeMap<String, usize> {
        let mut queues = self.config.queue_concurrency.clone();
        for kind in self.registry.kinds() {
            if let Some(q) = self.registry.queue_of(kind) {
                queues.entry(q.to_string()).or_insert_with(|| {
                    tracing::warn!(queue = q, kind, "queue not in DKL_QUEUE_CONCURRENCY; running it with concurrency 1");
                    1
                });
            }
        }
        queues
    }

    /// Runs until `shutdown` is cancelled, then stops gracefully: no new jobs
    /// start, running ones get `DKL_SHUTDOWN_GRACE_SECS` to finish, the rest are
    /// released without charging an attempt, and every outcome is written.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        let queues = self.queues();
        let queue_list = queues.iter().map(|(q, n)| format!("{q}={n}")).collect::<Vec<_>>().join(",");
        store::register_worker(&self.pool, &self.worker_id, &queue_list).await?;
        tracing::info!(worker_id = %self.worker_id, queues = %queue_list, kinds = ?self.registry.kinds(), "worker started");

        // `stop` ends everything: the caller's shutdown, or a queue's worker dying.
        let stop = shutdown.child_token();
        let shared = Arc::new(Shared {
            pool: self.pool.clone(),
            config: self.config.clone(),
            worker_id: self.worker_id.clone(),
            shutdown: stop.clone(),
            cancels: Cancels::default(),
            in_flight: InFlight::default(),
            stats: self.stats.clone(),
        });
        let registry = Arc::new(self.registry);
        let wakers: HashMap<String, Arc<Notify>> =
            queues.keys().map(|q| (q.clone(), Arc::new(Notify::new()))).collect();

        let (outcome_tx, outcome_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_outcomes(shared.clone(), outcome_rx));
        let background = CancellationToken::new();
        let listener = tokio::spawn(listen(shared.clone(), wakers.clone(), background.clone()));
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), wakers.clone(), queue_list, background.clone()));

        let mut fetch_tasks = Vec::new();
        let mut workers = Vec::new();
        for (queue, concurrency) in queues {
            let fetcher = Fetcher {
                wake: wakers[&queue].clone(),
                queue: queue.clone(),
                concurrency,
                shared: shared.clone(),
                outcomes: outcome_tx.clone(),
            };
            let (backend, fetch_loops) = fetcher.split(self.config.fetchers_per_queue);
            let service = AttemptService { shared: shared.clone(), registry: registry.clone() };
            let worker = WorkerBuilder::new(format!("{}/{queue}", self.worker_id).as_str())
                .backend(backend)
                .build(service);
            fetch_tasks.extend(fetch_loops.into_iter().map(tokio::spawn));
            let signal = {
                let stop = stop.clone();
                async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                }
            };
            let stats = self.stats.clone();
            stats.set_queue_running(&queue, true);
            workers.push(tokio::spawn(async move {
                let result = worker.run_until(signal).await;
                stats.set_queue_running(&queue, false);
                (queue, result)
            }));
        }
        drop(outcome_tx);

        // A queue whose apalis worker ends on its own would leave its jobs
        // unserved while the heartbeat says all is well: stop the whole
        // runtime instead, so the process exits and its supervisor restarts it.
        let mut failure = None;
        let mut pending = workers;
        while !pending.is_empty() {
            let (finished, _, rest) = futures::future::select_all(pending).await;
            pending = rest;
            let (queue, result) = match finished {
                Ok(done) => done,
                Err(join) => ("?".to_string(), Err(apalis_core::error::WorkerError::PanicError(join.to_string()))),
            };
            if !stop.is_cancelled() || result.is_err() {
                tracing::error!(queue = %queue, result = ?result, "a queue's worker stopped unexpectedly; stopping the runtime");
                failure.get_or_insert(EngineError::WorkerStopped { queue });
                stop.cancel();
            }
        }
        for task in fetch_tasks {
            let _ = task.await;
        }
        background.cancel();
        let _ = listener.await;
        let _ = heartbeat.await;
        drop(shared);
        // Every OutcomeSlot is gone now, so the writer drains and ends.
        let _ = writer.await;
        tracing::info!(worker_id = %self.worker_id, "worker stopped; all outcomes written");
        failure.map_or(Ok(()), Err)
    }
}

/// The tower service apalis calls for each claimed job.
#[derive(Clone)]
struct AttemptService {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

impl tower::Service<Task<Claimed>> for AttemptService {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<(), Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Concurrency is bounded by the fetcher's slots, not here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<Claimed>) -> Self::Future {
        let shared = self.shared.clone();
        let registry = self.registry.clone();
        // Each attempt on its own task: handlers run in parallel on all
        // threads, and one that blocks its thread cannot stall the queue.
        Box::pin(async move {
            if let Err(e) = tokio::spawn(run_attempt(shared, registry, task.args)).await {
                tracing::error!(error = %e, "job attempt task failed; the job was released");
            }
            Ok(())
        })
    }
}

/// Wakes fetchers on new-job notifications and signals cancelled jobs.
async fn listen(shared: Arc<Shared>, wakers: HashMap<String, Arc<Notify>>, stop: CancellationToken) {
    // Not apalis's insert channel: it names the kind, not the queue, and our
    // trigger announces every pending job with its queue.
    let channels = [store::SCHEDULED_CHANNEL, store::CANCEL_CHANNEL];
    crate::db::listen(&shared.pool, &channels, &stop, |note| match note {
        Some(n) if n.channel() == store::CANCEL_CHANNEL => shared.cancels.signal(n.payload()),
        // A job became pending in this queue: its idle fetcher looks again
        // (or recomputes how long to sleep, if the job is due later).
        Some(n) => {
            if let Some(w) = wakers.get(n.payload()) {
                w.notify_one();
            }
        }
        // (Re)connected: jobs enqueued meanwhile are found by looking.
        None => wakers.values().for_each(|w| w.notify_one()),
    })
    .await;
}

/// Keeps this process's `apalis.workers` row fresh, rescues jobs of silent
/// workers, re-signals cancels whose NOTIFY was missed and releases claims
/// this process lost track of.
///
/// It uses a connection of its own: a pool exhausted by busy handlers must
/// not delay the heartbeat, or live workers' jobs would be rescued.
async fn heartbeat(shared: Arc<Shared>, wakers: HashMap<String, Arc<Notify>>, queues: String, stop: CancellationToken) {
    let mut conn: Option<PgConnection> = None;
    loop {
        if conn.is_none() {
            match shared.pool.connect_options().connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::error!(error = %e, "heartbeat cannot connect"),
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = beat(c, &shared, &wakers, &queues).await
        {
            tracing::error!(error = %e, "heartbeat failed; reconnecting");
            conn = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.heartbeat_interval) => {},
            _ = stop.cancelled() => return,
        }
    }
}

async fn beat(
    conn: &mut PgConnection,
    shared: &Shared,
    wakers: &HashMap<String, Arc<Notify>>,
    queues: &str,
) -> Result<(), sqlx::Error> {
    if !store::heartbeat(&mut *conn, &shared.worker_id).await? {
        tracing::warn!(worker_id = %shared.worker_id, "worker row was pruned; registering again");
        store::register_worker(&mut *conn, &shared.worker_id, queues).await?;
    }
    shared.stats.heartbeat_ok();
    // All on the heartbeat's own connection: a busy pool must not delay it.
    let rescued = store::rescue_orphans(&mut *conn, shared.config.rescue_after).await?;
    if !rescued.is_empty() {
        tracing::warn!(count = rescued.len(), job_ids = ?rescued, "rescued jobs of a worker that stopped heartbeating");
        wakers.values().for_each(|w| w.notify_one());
    }
    for id in store::cancelled_running(&mut *conn, &shared.worker_id).await? {
        shared.cancels.signal(&id);
    }
    let lost: Vec<OutcomeRow> = store::running_claims(&mut *conn, &shared.worker_id, LOST_CLAIM_AGE)
        .await?
        .into_iter()
        .filter(|(id, _)| !shared.in_flight.contains(id))
        .map(|(id, lock_at)| OutcomeRow { id, lock_at, status: "Pending", error: None, delay: Duration::ZERO, refund: 1 })
        .collect();
    if !lost.is_empty() {
        tracing::warn!(count = lost.len(), "releasing jobs this worker claimed but lost track of");
        store::record_outcomes(&mut *conn, &shared.worker_id, &lost).await?;
        wakers.values().for_each(|w| w.notify_one());
    }
    Ok(())
}

/// A claim older than this that is not in flight was lost (its reply never
/// arrived); younger ones may still be on their way into the in-flight set.
const LOST_CLAIM_AGE: Duration = Duration::from_secs(60);
