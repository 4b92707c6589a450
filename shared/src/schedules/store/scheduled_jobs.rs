//! `scheduled_jobs`: one-off jobs admins schedule by inserting a row.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A `scheduled_jobs` row: a one-off job an admin scheduled.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduledJob {
    /// Row id.
    pub id: Uuid,
    /// The job kind to enqueue.
    pub job_kind: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// When to run it.
    pub run_at: DateTime<Utc>,
    /// Who asked.
    pub created_by: String,
    /// Why.
    pub note: Option<String>,
    /// Queue override.
    pub queue: Option<String>,
    /// Attempts override.
    pub max_attempts: Option<i32>,
    /// `pending`, `enqueued`, `cancelled` or `rejected`.
    pub status: ScheduledJobStatus,
    /// The job enqueued for it.
    pub job_id: Option<String>,
    /// When it was enqueued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Why it was rejected.
    pub rejected_reason: Option<String>,
}

macro_rules! scheduled_job_columns {
    () => {
        "id, job_kind, payload, run_at, created_by, note, queue, max_attempts, status, job_id, enqueued_at, rejected_reason"
    };
}

/// What `dklctl schedule` inserts (admins may write the same INSERT by hand).
#[derive(Debug, Clone)]
pub struct NewScheduledJob<'a> {
    /// Job kind.
    pub job_kind: &'a str,
    /// Payload.
    pub payload: &'a serde_json::Value,
    /// When; `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// Who asks.
    pub created_by: &'a str,
    /// Why.
    pub note: Option<&'a str>,
    /// Queue override (`None`: the kind's queue).
    pub queue: Option<&'a str>,
}

/// Inserts an admin row; returns it.
pub async fn insert_scheduled_job(
    executor: impl PgExecutor<'_>,
    row: &NewScheduledJob<'_>,
) -> Result<ScheduledJob, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO scheduled_jobs (job_kind, payload, run_at, created_by, note, queue)
         VALUES ($1, $2, COALESCE($3, now()), $4, $5, $6) RETURNING ",
        scheduled_job_columns!()
    ))
    .bind(row.job_kind)
    .bind(row.payload)
    .bind(row.run_at)
    .bind(row.created_by)
    .bind(row.note)
    .bind(row.queue)
    .fetch_one(executor)
    .await
}

/// Locks up to `limit` due pending rows that no other scheduler holds.
pub async fn take_due_scheduled_jobs(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<ScheduledJob>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        scheduled_job_columns!(),
        " FROM scheduled_jobs
          WHERE status = 'pending' AND run_at <= now()
          ORDER BY run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks a row enqueued as job `job_id`.
pub async fn mark_enqueued(
    conn: &mut PgConnection,
    id: Uuid,
    job_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE scheduled_jobs SET status = 'enqueued', job_id = $2, enqueued_at = now() WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks a row rejected with the reason.
pub async fn mark_rejected(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE scheduled_jobs SET status = 'rejected', rejected_reason = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels a pending row. Returns the row as it is afterwards (its status
/// says whether the cancel took), or `None` if there is no such row.
pub async fn cancel_scheduled_job(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<ScheduledJob>, sqlx::Error> {
    let cancelled: Option<ScheduledJob> = sqlx::query_as(concat!(
        "UPDATE scheduled_jobs SET status = 'cancelled' WHERE id = $1 AND status = 'pending'
         RETURNING ",
        scheduled_job_columns!()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match cancelled {
        Some(row) => Ok(Some(row)),
        None => scheduled_job(conn, id).await,
    }
}

/// One admin row.
pub async fn scheduled_job(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<ScheduledJob>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        scheduled_job_columns!(),
        " FROM scheduled_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Admin rows, newest first.
pub async fn recent_scheduled_jobs(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<ScheduledJob>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        scheduled_job_columns!(),
        " FROM scheduled_jobs ORDER BY run_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// For admin rows that ran: (enqueued − run_at, job started − run_at) in ms,
/// by the database clock (`dklctl bench schedule`).
pub async fn admin_row_lateness(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<(f64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (extract(epoch FROM s.enqueued_at - s.run_at) * 1000)::float8,
                (extract(epoch FROM j.lock_at - s.run_at) * 1000)::float8
           FROM scheduled_jobs s JOIN apalis.jobs j ON j.id = s.job_id
          WHERE s.id = ANY($1) AND j.status = 'Done'",
    )
    .bind(ids)
    .fetch_all(executor)
    .await
}

/// Deletes admin rows (bench cleanup).
pub async fn delete_scheduled_jobs(
    executor: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM scheduled_jobs WHERE id = ANY($1)")
        .bind(ids)
        .execute(executor)
        .await?
        .rows_affected())
}

/// Seconds until the earliest pending row is due (negative if overdue), by
/// the database clock.
pub async fn next_scheduled_job_due_in(
    executor: impl PgExecutor<'_>,
) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM min(run_at) - clock_timestamp())::float8 FROM scheduled_jobs
          WHERE status = 'pending' AND isfinite(run_at)",
    )
    .fetch_one(executor)
    .await
}

/// Where an admin row stands (`scheduled_jobs.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduledJobStatus {
    /// Waiting for its `run_at`.
    Pending,
    /// Its job was enqueued (`job_id`).
    Enqueued,
    /// Cancelled before it ran.
    Cancelled,
    /// Refused by the scheduler (`rejected_reason`).
    Rejected,
}

impl ScheduledJobStatus {
    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Enqueued => "enqueued",
            Self::Cancelled => "cancelled",
            Self::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for ScheduledJobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ScheduledJobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Pending,
            Self::Enqueued,
            Self::Cancelled,
            Self::Rejected,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown scheduled_jobs status `{s}`"))
    }
}

// Tests compare with the names they see in psql; production code compares enums.
#[cfg(any(test, feature = "testing"))]
impl PartialEq<&str> for ScheduledJobStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

crate::decode_from_text!(ScheduledJobStatus);
