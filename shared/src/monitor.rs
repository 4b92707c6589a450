//! Job status queries: the `job_status` and `queue_summary` views and who
//! leads the schedulers. `dklctl status`/`jobs` print these; dkl-worker's
//! `/metrics` exports them. The views are in migration
//! `20261123000003_scheduler.sql`, so admins get the same answers from psql.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

pub use crate::schedules::store::{Leadership, leadership};

/// A `job_status` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobStatus {
    /// Job id.
    pub job_id: String,
    /// Job kind.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// `scheduled`, `pending`, `retrying`, `running`, `done`, `discarded` or `cancelled`.
    pub state: String,
    /// Attempts so far.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it is (was) due.
    pub run_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Error of the latest failed attempt.
    pub last_error: Option<String>,
    /// The `job_schedules` row it came from.
    pub schedule: Option<String>,
    /// The tick it was enqueued for.
    pub schedule_tick: Option<DateTime<Utc>>,
    /// The `scheduled_jobs` row it came from.
    pub scheduled_job_id: Option<uuid::Uuid>,
    /// What the job recorded as its result (upkeep jobs: their counts).
    pub result: Option<serde_json::Value>,
}

/// Which jobs `dklctl jobs` lists.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only jobs of this schedule.
    pub schedule: Option<String>,
    /// At most this many, newest first (by id: ids are ULIDs, in creation
    /// order, so the primary key serves the query on any table size).
    pub limit: i64,
}

/// The states `job_status.state` takes.
pub const STATES: &[&str] = &[
    "scheduled",
    "pending",
    "retrying",
    "running",
    "done",
    "discarded",
    "cancelled",
];

/// `job_status` rows matching `filter`, newest first.
pub async fn jobs(
    executor: impl PgExecutor<'_>,
    filter: &JobFilter,
) -> Result<Vec<JobStatus>, sqlx::Error> {
    sqlx::query_as(
        "SELECT job_id, kind, queue, state, attempts, max_attempts, run_at, started_at, finished_at, last_error,
                schedule, schedule_tick, scheduled_job_id, result
           FROM job_status
          WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
            AND ($3::text IS NULL OR queue = $3) AND ($4::text IS NULL OR schedule = $4)
          ORDER BY job_id DESC
          LIMIT $5",
    )
    .bind(&filter.state)
    .bind(&filter.kind)
    .bind(&filter.queue)
    .bind(&filter.schedule)
    .bind(filter.limit)
    .fetch_all(executor)
    .await
}

/// A `queue_summary` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueSummary {
    /// Queue.
    pub queue: String,
    /// Due and waiting for a worker.
    pub pending: i64,
    /// Waiting for a later time (new or retry).
    pub scheduled: i64,
    /// Running now.
    pub running: i64,
    /// Done (until pruned).
    pub done: i64,
    /// Discarded after errors.
    pub discarded: i64,
    /// Cancelled.
    pub cancelled: i64,
    /// How long the oldest due job has waited, in seconds (0 if none).
    pub oldest_pending_age_s: f64,
    /// Finished (done, discarded or cancelled) in the last five minutes.
    pub finished_last_5m: i64,
}

/// How long the oldest due job of each of `queues` has waited, in seconds
/// (queues with no due job are absent). One index probe per queue
/// (`jobs_next_due`), whatever the backlog: `/healthz` asks it every second.
pub async fn oldest_due(
    executor: impl PgExecutor<'_>,
    queues: &[String],
) -> Result<Vec<(String, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT q.queue, extract(epoch FROM now() - d.run_at)::float8
           FROM unnest($1::text[]) AS q(queue)
           CROSS JOIN LATERAL (
                SELECT j.run_at FROM apalis.jobs j
                 WHERE j.queue = q.queue AND j.status = 'Pending' AND j.run_at <= now()
                 ORDER BY j.run_at LIMIT 1) d
          ORDER BY q.queue",
    )
    .bind(queues)
    .fetch_all(executor)
    .await
}

/// The `queue_summary` view, by queue name.
pub async fn queue_summary(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<QueueSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT queue, pending, scheduled, running, done, discarded, cancelled, oldest_pending_age_s, finished_last_5m
           FROM queue_summary ORDER BY queue",
    )
    .fetch_all(executor)
    .await
}
