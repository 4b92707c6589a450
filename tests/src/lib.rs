//! Test harness shared by the integration tests of every crate.
//!
//! Each test gets its own database from `#[sqlx::test(migrations = false)]`
//! (created from `DATABASE_URL`'s server, dropped afterwards) and migrates it
//! with the same code `dklctl migrate` runs, so tests run in parallel and
//! leave nothing behind.

pub mod process;

use std::future::Future;
use std::time::{Duration, Instant};

use dkl_shared::config::JobsConfig;
use dkl_shared::jobs::testing as store;
use dkl_shared::jobs::{JobId, JobRecord, Registry, WorkerRuntime};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Applies every migration to the test database.
pub async fn migrate(pool: &PgPool) {
    dkl_shared::db::migrate(pool)
        .await
        .expect("migrations apply");
}

/// A URL for the test database, for processes the test spawns.
pub async fn url_of(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("db name");
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
    let (server, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL has a database part");
    format!("{server}/{db}")
}

/// Engine settings for tests: fast retries, fast heartbeats.
pub fn fast_config() -> JobsConfig {
    JobsConfig {
        retry_base: Duration::from_millis(100),
        heartbeat_interval: Duration::from_secs(1),
        rescue_after: Duration::from_secs(3),
        shutdown_grace: Duration::from_secs(1),
        cancel_grace: Duration::from_secs(1),
        poll_interval: Duration::from_millis(200),
        ..JobsConfig::default()
    }
}

/// A runtime running in the background of a test.
pub struct RunningRuntime {
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    /// Ends when the runtime has stopped.
    pub handle: JoinHandle<Result<(), dkl_shared::jobs::EngineError>>,
    /// Its worker id (`lock_by` of its jobs).
    pub worker_id: String,
    /// Its counters.
    pub stats: std::sync::Arc<dkl_shared::jobs::RuntimeStats>,
}

impl RunningRuntime {
    /// Shuts down and waits for the runtime to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("runtime task")
            .expect("runtime ran cleanly");
    }
}

/// Starts a runtime for `registry` with `config`.
pub fn start(pool: &PgPool, registry: Registry, config: JobsConfig) -> RunningRuntime {
    let runtime = WorkerRuntime::new(pool.clone(), registry, config);
    let worker_id = runtime.worker_id().to_string();
    let stats = runtime.stats();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    RunningRuntime {
        shutdown,
        handle,
        worker_id,
        stats,
    }
}

/// Runs the next due job of `queue` once through the engine (claim, handler,
/// outcome), with [`fast_config`]; returns its row afterwards, or `None`
/// when nothing is due. For testing one handler against a real database
/// without a running worker.
pub async fn work_one(pool: &PgPool, registry: Registry, queue: &str) -> Option<JobRecord> {
    store::work_one(pool, registry, queue, fast_config())
        .await
        .expect("work_one")
}

/// Reads a job row.
pub async fn job(pool: &PgPool, id: &JobId) -> JobRecord {
    store::job(pool, &id.0)
        .await
        .expect("query")
        .expect("job exists")
}

/// Polls `check` every 20 ms until it yields `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the job has `status`, returning its row.
pub async fn wait_status(pool: &PgPool, id: &JobId, status: &str, timeout: Duration) -> JobRecord {
    wait_for(timeout, &format!("job {id} to be {status}"), || async {
        let j = job(pool, id).await;
        (j.status == status).then_some(j)
    })
    .await
}

/// Waits until every job in the database is `Done`.
pub async fn wait_all_done(pool: &PgPool, timeout: Duration) {
    wait_for(timeout, "every job to be Done", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status <> 'Done'")
                .fetch_one(pool)
                .await
                .expect("count jobs");
        (left == 0).then_some(())
    })
    .await
}

/// Scheduler settings for tests: short polls and leader retries.
pub fn fast_scheduler_config() -> dkl_shared::config::SchedulerConfig {
    dkl_shared::config::SchedulerConfig {
        poll_interval: Duration::from_millis(200),
        leader_retry: Duration::from_millis(200),
        leader_stale_after: Duration::from_secs(30),
    }
}

/// A scheduler running in the background of a test.
pub struct RunningScheduler {
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    /// Ends when the scheduler has stopped.
    pub handle: JoinHandle<()>,
    /// True while it leads.
    pub leading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Its id.
    pub id: String,
}

impl RunningScheduler {
    /// True while it leads.
    pub fn is_leader(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Shuts down and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("scheduler task");
    }
}

/// Starts a scheduler with the standard catalog.
pub fn start_scheduler(pool: &PgPool) -> RunningScheduler {
    let scheduler = dkl_scheduler::Scheduler::new(
        pool.clone(),
        dkl_shared::kinds::catalog(),
        fast_scheduler_config(),
    );
    let leading = scheduler.leading();
    let id = scheduler.id().to_string();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(scheduler.run(shutdown.clone()));
    RunningScheduler {
        shutdown,
        handle,
        leading,
        id,
    }
}

/// Disables the seeded default schedules, so a test sees only its own.
pub async fn disable_default_schedules(pool: &PgPool) {
    sqlx::query("UPDATE job_schedules SET enabled = false")
        .execute(pool)
        .await
        .expect("disable schedules");
}

/// How many ticks of `schedule` have more than one job, counted from the job
/// table's metadata (independent of the scheduler's own tick records).
pub async fn doubled_ticks(pool: &PgPool, schedule: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM apalis.jobs WHERE metadata -> 'schedule' = $1
                                GROUP BY metadata -> 'tick' HAVING count(*) > 1) d",
    )
    .bind(schedule)
    .fetch_one(pool)
    .await
    .expect("count doubled ticks")
}

/// Makes the test's database unreachable (no new connections, existing ones
/// cut) until [`Outage::end`]: a database outage as every process sees it.
/// Done from the server's maintenance database, since this one refuses
/// connections meanwhile.
pub struct Outage {
    admin: sqlx::PgConnection,
    db: String,
}

impl Outage {
    /// Starts the outage of `pool`'s database.
    pub async fn begin(pool: &PgPool) -> Self {
        use sqlx::Connection;
        let db: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(pool)
            .await
            .expect("db name");
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for tests");
        let mut admin = sqlx::PgConnection::connect(&url)
            .await
            .expect("connect to the maintenance database");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"
        )))
        .execute(&mut admin)
        .await
        .expect("refuse connections");
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&db)
            .execute(&mut admin)
            .await
            .expect("cut connections");
        Self { admin, db }
    }

    /// Lets connections in again.
    pub async fn end(mut self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            self.db
        )))
        .execute(&mut self.admin)
        .await
        .expect("allow connections");
    }
}
