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
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::attempt::{Claimed, run_attempt, write_outcomes};
use super::error::EngineError;
use super::fetcher::Fetcher;
use super::registry::Registry;
use super::store;
use crate::config::JobsConfig;

/// State every part of one runtime shares.
pub(crate) struct Shared {
    pub pool: PgPool,
    pub config: JobsConfig,
    pub worker_id: String,
    pub shutdown: CancellationToken,
    pub cancels: Cancels,
}

/// Cancellation tokens of the jobs running in this process.
#[derive(Default)]
pub(crate) struct Cancels {
    running: Mutex<HashMap<String, CancellationToken>>,
    // A cancel can arrive between claim and start; remember it until start.
    early: Mutex<HashSet<String>>,
}

impl Cancels {
    pub fn register(&self, id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        if lock(&self.early).remove(id) {
            token.cancel();
        }
        lock(&self.running).insert(id.to_string(), token.clone());
        token
    }

    pub fn remove(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    fn signal(&self, id: &str) {
        if let Some(token) = lock(&self.running).get(id) {
            token.cancel();
            return;
        }
        let mut early = lock(&self.early);
        if early.len() > 10_000 {
            early.clear(); // ids of other processes' jobs; bounded, not precious
        }
        early.insert(id.to_string());
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
}

impl WorkerRuntime {
    /// A runtime for `registry`'s kinds.
    pub fn new(pool: PgPool, registry: Registry, config: JobsConfig) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let worker_id = format!("{}-{}-{}", host.trim(), std::process::id(), ulid::Ulid::generate());
        Self { pool, registry, config, worker_id }
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

        let shared = Arc::new(Shared {
            pool: self.pool.clone(),
            config: self.config.clone(),
            worker_id: self.worker_id.clone(),
            shutdown: shutdown.clone(),
            cancels: Cancels::default(),
        });
        let registry = Arc::new(self.registry);
        let wakers: HashMap<String, Arc<Notify>> =
            queues.keys().map(|q| (q.clone(), Arc::new(Notify::new()))).collect();

        let (outcome_tx, outcome_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_outcomes(self.pool.clone(), self.worker_id.clone(), outcome_rx));
        let background = CancellationToken::new();
        let listener = tokio::spawn(listen(shared.clone(), registry.clone(), wakers.clone(), background.clone()));
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), wakers.clone(), background.clone()));

        let mut tasks = Vec::new();
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
            let stop = shutdown.clone();
            tasks.extend(fetch_loops.into_iter().map(tokio::spawn));
            tasks.push(tokio::spawn(async move {
                let signal = async move {
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                };
                if let Err(e) = worker.run_until(signal).await {
                    tracing::error!(queue = %queue, error = %e, "apalis worker stopped with an error");
                }
            }));
        }
        drop(outcome_tx);
        for task in tasks {
            let _ = task.await;
        }
        background.cancel();
        let _ = listener.await;
        let _ = heartbeat.await;
        drop(shared);
        // Every OutcomeSlot is gone now, so the writer drains and ends.
        let _ = writer.await;
        tracing::info!(worker_id = %self.worker_id, "worker stopped; all outcomes written");
        Ok(())
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
        Box::pin(async move {
            run_attempt(shared, registry, task.args).await;
            Ok(())
        })
    }
}

/// Wakes fetchers on new-job notifications and signals cancelled jobs.
async fn listen(
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    wakers: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    let wake_all = || wakers.values().for_each(|w| w.notify_one());
    let mut listener = loop {
        match connect_listener(&shared.pool).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(error = %e, "cannot LISTEN for new jobs; polling meanwhile, retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    loop {
        let note = tokio::select! {
            n = listener.try_recv() => n,
            _ = stop.cancelled() => return,
        };
        match note {
            Ok(Some(n)) if n.channel() == store::CANCEL_CHANNEL => shared.cancels.signal(n.payload()),
            // A job due later: the queue's idle fetcher recomputes how long to sleep.
            Ok(Some(n)) if n.channel() == store::SCHEDULED_CHANNEL => {
                if let Some(w) = wakers.get(n.payload()) {
                    w.notify_one();
                }
            }
            Ok(Some(n)) => {
                let kind = serde_json::from_str::<serde_json::Value>(n.payload())
                    .ok()
                    .and_then(|v| v.get("job_type").and_then(|k| k.as_str()).map(str::to_string));
                match kind.as_deref().and_then(|k| registry.queue_of(k)).and_then(|q| wakers.get(q)) {
                    Some(w) => w.notify_one(),
                    None => wake_all(),
                }
            }
            Ok(None) => {
                tracing::warn!("LISTEN connection lost; reconnecting (jobs inserted meanwhile are found by polling)");
                wake_all();
            }
            Err(e) => {
                tracing::error!(error = %e, "LISTEN failed; retrying in 1s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([store::INSERT_CHANNEL, store::SCHEDULED_CHANNEL, store::CANCEL_CHANNEL]).await?;
    Ok(listener)
}

/// Keeps this process's `apalis.workers` row fresh and rescues jobs of silent workers.
async fn heartbeat(shared: Arc<Shared>, wakers: HashMap<String, Arc<Notify>>, stop: CancellationToken) {
    let queues = wakers.keys().cloned().collect::<Vec<_>>().join(",");
    loop {
        match store::heartbeat(&shared.pool, &shared.worker_id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(worker_id = %shared.worker_id, "worker row was pruned; registering again");
                if let Err(e) = store::register_worker(&shared.pool, &shared.worker_id, &queues).await {
                    tracing::error!(error = %e, "cannot register worker");
                }
            }
            Err(e) => tracing::error!(error = %e, "heartbeat failed"),
        }
        match store::rescue_orphans(&shared.pool, shared.config.rescue_after).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(count = ids.len(), job_ids = ?ids, "rescued jobs of a worker that stopped heartbeating");
                wakers.values().for_each(|w| w.notify_one());
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "rescue of orphaned jobs failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.heartbeat_interval) => {},
            _ = stop.cancelled() => return,
        }
    }
}
