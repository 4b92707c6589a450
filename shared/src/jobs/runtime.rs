//! A worker process's job runtime: one apalis worker per queue, plus the
//! tasks around them (NOTIFY listener, heartbeat and rescue, outcome writer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
use super::store::{self, ClaimRef, OutcomeRow};
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

/// Cancellation tokens of the jobs running in this process, by claim.
///
/// A cancel names the claim it was meant for (job id and `lock_at`), so a
/// cancel of one attempt can never stop a later claim of the same job (after
/// `dklctl retry`, a rescue or a release).
#[derive(Default)]
pub(crate) struct Cancels {
    inner: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    running: HashMap<ClaimRef, CancellationToken>,
    // A cancel can arrive between claim and start; remember it until start.
    early: HashSet<ClaimRef>,
}

impl Cancels {
    pub fn register(&self, claim: &ClaimRef) -> CancellationToken {
        let token = CancellationToken::new();
        let mut state = lock(&self.inner);
        if state.early.remove(claim) {
            token.cancel();
        }
        state.running.insert(claim.clone(), token.clone());
        token
    }

    pub fn remove(&self, claim: &ClaimRef) {
        lock(&self.inner).running.remove(claim);
    }

    fn signal(&self, claim: ClaimRef) {
        let mut state = lock(&self.inner);
        if let Some(token) = state.running.get(&claim) {
            token.cancel();
            return;
        }
        if state.early.len() > 10_000 {
            // Only claims of this worker get here, each at most once per
            // cancel; a full set means they were never started. Not precious.
            state.early.clear();
        }
        state.early.insert(claim);
    }
}

/// Claims this process made and has not yet written an outcome for. The
/// heartbeat compares them with the database to find claims whose reply was
/// lost (a connection reset after the claim committed). Keyed by claim, not
/// job id: a late outcome of an old claim must not hide a newer claim of the
/// same job.
#[derive(Default)]
pub(crate) struct InFlight {
    claims: Mutex<HashSet<ClaimRef>>,
}

impl InFlight {
    pub fn start(&self, claims: impl Iterator<Item = ClaimRef>) {
        lock(&self.claims).extend(claims);
    }

    pub fn finish<'a>(&self, claims: impl Iterator<Item = &'a ClaimRef>) {
        let mut set = lock(&self.claims);
        for claim in claims {
            set.remove(claim);
        }
    }

    fn contains(&self, claim: &ClaimRef) -> bool {
        lock(&self.claims).contains(claim)
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
    only_queues: Option<Vec<String>>,
}

impl WorkerRuntime {
    /// A runtime for `registry`'s kinds.
    pub fn new(pool: PgPool, registry: Registry, config: JobsConfig) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let worker_id = format!(
            "{}-{}-{}",
            host.trim(),
            std::process::id(),
            ulid::Ulid::generate()
        );
        Self {
            pool,
            registry,
            config,
            worker_id,
            stats: Arc::default(),
            only_queues: None,
        }
    }

    /// Serves these queues and no others (a benchmark or a tool that must not
    /// take production jobs), at the configured concurrency or 1.
    pub fn serve_only(mut self, queues: &[&str]) -> Self {
        self.only_queues = Some(queues.iter().map(|q| q.to_string()).collect());
        self
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
        if let Some(only) = &self.only_queues {
            return only
                .iter()
                .map(|q| {
                    (
                        q.clone(),
                        self.config.queue_concurrency.get(q).copied().unwrap_or(1),
                    )
                })
                .collect();
        }
        let mut queues = self.config.queue_concurrency.clone();
        for kind in self.registry.kinds() {
            if let Some(q) = self.registry.queue_of(kind) {
                queues.entry(q.to_string()).or_insert_with(|| {
                    tracing::warn!(
                        queue = q,
                        kind,
                        "queue not in DKL_QUEUE_CONCURRENCY; running it with concurrency 1"
                    );
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
        let queue_list = queues
            .iter()
            .map(|(q, n)| format!("{q}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        let kinds = self.registry.kinds();
        let unknown: Vec<&String> = self
            .config
            .kind_timeouts
            .keys()
            .filter(|k| !kinds.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(kinds = ?unknown, runs = ?kinds, "DKL_JOB_TIMEOUTS names kinds this worker does not run; check the spelling");
        }
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
        let wakers: HashMap<String, Arc<Notify>> = queues
            .keys()
            .map(|q| (q.clone(), Arc::new(Notify::new())))
            .collect();

        let (outcome_tx, outcome_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_outcomes(shared.clone(), outcome_rx));
        let background = CancellationToken::new();
        let listener = tokio::spawn(listen(shared.clone(), wakers.clone(), background.clone()));
        let upkeep = tokio::spawn(vacuum_queue_table(shared.clone(), background.clone()));
        let heartbeat = tokio::spawn(heartbeat(
            shared.clone(),
            wakers.clone(),
            queue_list,
            background.clone(),
        ));

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
            let service = AttemptService {
                shared: shared.clone(),
                registry: registry.clone(),
            };
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
                Err(join) => (
                    "?".to_string(),
                    Err(apalis_core::error::WorkerError::PanicError(
                        join.to_string(),
                    )),
                ),
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
        let _ = upkeep.await;
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
async fn listen(
    shared: Arc<Shared>,
    wakers: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    // Not apalis's insert channel: it names the kind, not the queue, and our
    // trigger announces every pending job with its queue.
    let channels = [store::SCHEDULED_CHANNEL, store::CANCEL_CHANNEL];
    crate::db::listen(&shared.pool, &channels, &stop, |note| match note {
        Some(n) if n.channel() == store::CANCEL_CHANNEL => {
            match ClaimRef::parse_cancel_payload(n.payload()) {
                Some((worker, claim)) if worker == shared.worker_id => shared.cancels.signal(claim),
                Some(_) => {} // another worker's claim
                None => tracing::warn!(
                    payload = n.payload(),
                    "ignoring a malformed cancel notification"
                ),
            }
        }
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
/// Vacuums the queue table after every `vacuum_every` jobs this process
/// claimed. A claim walks the fetch index from its start, and every claimed
/// job leaves a dead entry there until a vacuum removes it: with autovacuum
/// off (as on the CI machines) or lagging behind a burst, claims walked
/// thousands of dead entries each (939–1,800 buffers per claim in `dklctl
/// bench send`, more than a third of the database's time).
async fn vacuum_queue_table(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.vacuum_every;
    if every == 0 {
        return;
    }
    let mut claimed_at_last = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
            _ = stop.cancelled() => return,
        }
        let claimed = shared.stats.jobs_claimed_total();
        if claimed - claimed_at_last < every {
            continue;
        }
        claimed_at_last = claimed;
        let started = Instant::now();
        match store::vacuum_queue_table(&shared.pool).await {
            Ok(()) => {
                shared.stats.queue_vacuumed();
                tracing::debug!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "queue table vacuumed"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot vacuum the queue table; claims slow down until it is vacuumed")
            }
        }
    }
}

async fn heartbeat(
    shared: Arc<Shared>,
    wakers: HashMap<String, Arc<Notify>>,
    queues: String,
    stop: CancellationToken,
) {
    let mut conn: Option<PgConnection> = None;
    let mut streak = Streak::default();
    loop {
        if conn.is_none() {
            match shared.pool.connect_options().connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::error!(error = %e, "heartbeat cannot connect"),
            }
        }
        // A beat that hangs (a dead connection that never resets) would let
        // this worker's heartbeat go stale while it runs its jobs; give up on
        // the connection in time to beat again on a new one.
        let deadline = shared.config.rescue_after / 2;
        let beat_ok = match conn.as_mut() {
            Some(c) => match tokio::time::timeout(
                deadline,
                beat(c, &shared, &wakers, &queues, &mut streak),
            )
            .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "heartbeat failed; reconnecting");
                    conn = None;
                    false
                }
                Err(_) => {
                    tracing::error!(
                        deadline_ms = deadline.as_millis() as u64,
                        "heartbeat hung; reconnecting"
                    );
                    conn = None;
                    false
                }
            },
            None => false,
        };
        if !beat_ok {
            streak.broken();
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.config.heartbeat_interval) => {},
            _ = stop.cancelled() => return,
        }
    }
}

/// How long this process has heartbeated without a gap.
///
/// Rescue judges other workers dead by the age of their last heartbeat. When
/// this process itself could not reach the database (an outage, a partition,
/// a frozen process), every other worker's heartbeat looks just as old the
/// moment it is back, though they are alive and still running their jobs.
/// So a worker rescues only after it has itself heartbeated without a gap for
/// a whole rescue period: by then every live worker has had the same time to
/// heartbeat again.
#[derive(Default)]
struct Streak {
    since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl Streak {
    /// Notes a successful heartbeat; a gap longer than `max_gap` since the
    /// previous one starts a new streak.
    fn ok(&mut self, now: Instant, max_gap: Duration) {
        let unbroken = self
            .last_ok
            .is_some_and(|t| now.duration_since(t) <= max_gap);
        if !unbroken {
            self.since = Some(now);
        }
        self.last_ok = Some(now);
    }

    fn broken(&mut self) {
        self.since = None;
        self.last_ok = None;
    }

    /// True once the streak has lasted `period`.
    fn lasted(&self, now: Instant, period: Duration) -> bool {
        self.since.is_some_and(|t| now.duration_since(t) >= period)
    }
}

async fn beat(
    conn: &mut PgConnection,
    shared: &Shared,
    wakers: &HashMap<String, Arc<Notify>>,
    queues: &str,
    streak: &mut Streak,
) -> Result<(), sqlx::Error> {
    if !store::heartbeat(&mut *conn, &shared.worker_id).await? {
        tracing::warn!(worker_id = %shared.worker_id, "worker row was pruned; registering again");
        store::register_worker(&mut *conn, &shared.worker_id, queues).await?;
    }
    shared.stats.heartbeat_ok();
    let config = &shared.config;
    // A beat may be late by a whole interval (a slow query) before the streak breaks.
    streak.ok(
        Instant::now(),
        config.heartbeat_interval * 2 + Duration::from_secs(1),
    );
    // All on the heartbeat's own connection: a busy pool must not delay it.
    if streak.lasted(Instant::now(), config.rescue_after) {
        let rescued =
            store::rescue_orphans(&mut *conn, config.rescue_after, config.max_rescues).await?;
        if !rescued.is_empty() {
            let (discarded, back): (Vec<_>, Vec<_>) =
                rescued.into_iter().partition(|(_, crash_loop)| *crash_loop);
            if !back.is_empty() {
                let ids: Vec<&str> = back.iter().map(|(id, _)| id.as_str()).collect();
                tracing::warn!(count = ids.len(), job_ids = ?ids, "rescued jobs of a worker that stopped heartbeating");
            }
            if !discarded.is_empty() {
                let ids: Vec<&str> = discarded.iter().map(|(id, _)| id.as_str()).collect();
                tracing::error!(
                    count = ids.len(), job_ids = ?ids, max_rescues = config.max_rescues,
                    "discarded jobs whose workers kept dying while running them"
                );
            }
            wakers.values().for_each(|w| w.notify_one());
        }
    }
    for claim in store::cancelled_running(&mut *conn, &shared.worker_id).await? {
        shared.cancels.signal(claim);
    }
    let lost: Vec<OutcomeRow> =
        store::running_claims(&mut *conn, &shared.worker_id, LOST_CLAIM_AGE)
            .await?
            .into_iter()
            .map(|(id, lock_at)| ClaimRef { id, lock_at })
            .filter(|claim| !shared.in_flight.contains(claim))
            .map(OutcomeRow::released)
            .collect();
    if !lost.is_empty() {
        tracing::warn!(
            count = lost.len(),
            "releasing jobs this worker claimed but lost track of"
        );
        store::record_outcomes(&mut *conn, &shared.worker_id, &lost).await?;
        wakers.values().for_each(|w| w.notify_one());
    }
    Ok(())
}

/// A claim older than this that is not in flight was lost (its reply never
/// arrived); younger ones may still be on their way into the in-flight set.
const LOST_CLAIM_AGE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, micros: i64) -> ClaimRef {
        ClaimRef {
            id: id.into(),
            lock_at: chrono::DateTime::from_timestamp_micros(micros).unwrap(),
        }
    }

    #[test]
    fn a_late_finish_of_an_old_claim_keeps_the_new_claim_in_flight() {
        let in_flight = InFlight::default();
        let (old, new) = (claim("01J", 1_000), claim("01J", 2_000));
        in_flight.start([old.clone()].into_iter());
        in_flight.start([new.clone()].into_iter());
        in_flight.finish([&old].into_iter());
        assert!(
            in_flight.contains(&new),
            "the newer claim of the same job is still running here"
        );
        assert!(!in_flight.contains(&old));
    }

    #[test]
    fn a_cancel_stops_only_the_claim_it_names() {
        let cancels = Cancels::default();
        let (old, new) = (claim("01J", 1_000), claim("01J", 2_000));
        // The cancel of an earlier claim arrives while no claim runs here ...
        cancels.signal(old.clone());
        // ... and a later claim of the same job must not inherit it.
        assert!(!cancels.register(&new).is_cancelled());
        // A cancel that arrives between claim and start still applies.
        let third = claim("01J", 3_000);
        cancels.signal(third.clone());
        assert!(cancels.register(&third).is_cancelled());
    }

    #[test]
    fn rescue_waits_for_an_unbroken_streak_of_heartbeats() {
        let mut streak = Streak::default();
        let t0 = Instant::now();
        let gap = Duration::from_secs(3);
        let period = Duration::from_secs(30);
        streak.ok(t0, gap);
        assert!(!streak.lasted(t0 + Duration::from_secs(29), period));
        for s in (1..=30).step_by(1) {
            streak.ok(t0 + Duration::from_secs(s), gap);
        }
        assert!(streak.lasted(t0 + Duration::from_secs(30), period));
        // A gap (this process could not reach the database) starts over.
        streak.ok(t0 + Duration::from_secs(60), gap);
        assert!(!streak.lasted(t0 + Duration::from_secs(61), period));
        streak.broken();
        assert!(!streak.lasted(t0 + Duration::from_secs(1000), period));
    }
}
