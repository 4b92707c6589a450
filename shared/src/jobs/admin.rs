//! What operators and their tools do to the job table as a whole: prune,
//! vacuum, clear a queue. (Per-job operations are on [`super::JobClient`].)

use std::time::Duration;

use sqlx::PgPool;

use super::store;
pub use super::store::Pruned;

/// Deletes done jobs older than `done_after` and discarded or cancelled jobs
/// older than `discarded_after`, in chunks so no lock is held long, and
/// worker rows silent for a day.
pub async fn prune(
    pool: &PgPool,
    done_after: Duration,
    discarded_after: Duration,
) -> Result<Pruned, sqlx::Error> {
    store::prune(pool, done_after, discarded_after).await
}

/// Records what a job's attempt found as its result (`job_status.result`):
/// upkeep jobs store their counts here.
pub async fn record_result(
    pool: &PgPool,
    id: &super::JobId,
    result: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    store::record_result(pool, id, result).await
}

/// Vacuums and analyzes the job table (what the prune job does after
/// deleting). Needs the table's owner.
pub async fn vacuum(pool: &PgPool) -> Result<(), sqlx::Error> {
    store::vacuum_jobs(pool).await
}

/// Deletes every job of `queue`, whatever its state (benchmarks clean up
/// with it). Returns how many.
pub async fn delete_queue(pool: &PgPool, queue: &str) -> Result<u64, sqlx::Error> {
    store::delete_queue(pool, queue).await
}

/// Inserts many jobs of one kind on `queue` in one statement, due now, and
/// returns their ids (benchmarks and bulk tools).
pub async fn insert_many(
    pool: &PgPool,
    kind: &str,
    queue: &str,
    payloads: &[Vec<u8>],
    max_attempts: i32,
) -> Result<Vec<String>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    store::insert_many(&mut conn, kind, queue, payloads, max_attempts).await
}

/// Deletes these jobs, whatever their state.
pub async fn delete_jobs(pool: &PgPool, ids: &[String]) -> Result<u64, sqlx::Error> {
    store::delete_jobs(pool, ids).await
}

/// Jobs of `queue` still pending or running.
pub async fn live_in_queue(pool: &PgPool, queue: &str) -> Result<i64, sqlx::Error> {
    store::live_in_queue(pool, queue).await
}

/// Jobs of `queue` not yet done.
pub async fn unfinished_in_queue(pool: &PgPool, queue: &str) -> Result<i64, sqlx::Error> {
    store::not_done_in_queue(pool, queue).await
}
