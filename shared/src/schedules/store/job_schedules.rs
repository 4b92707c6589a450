//! `job_schedules`: recurring jobs, one row per schedule.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A `job_schedules` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Schedule {
    /// Row id.
    pub id: Uuid,
    /// Unique name (`dklctl run-now NAME`).
    pub name: String,
    /// Six-field cron expression.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub time_zone: String,
    /// The job kind it enqueues.
    pub job_kind: String,
    /// The job's payload.
    pub payload: serde_json::Value,
    /// Queue override.
    pub queue: Option<String>,
    /// Attempts override.
    pub max_attempts: Option<i32>,
    /// Disabled schedules are skipped.
    pub enabled: bool,
    /// What to do about ticks missed while no scheduler ran.
    pub catch_up: CatchUp,
    /// Skip a tick while the previous tick's job is live.
    pub skip_if_running: bool,
    /// Admin's note.
    pub note: Option<String>,
    /// The next tick to enqueue (NULL: compute from now).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The last tick enqueued.
    pub last_run_at: Option<DateTime<Utc>>,
    /// The job of the last tick enqueued.
    pub last_job_id: Option<String>,
    /// Why the schedule cannot run, if it cannot.
    pub last_error: Option<String>,
}

// Column lists as macros, so statements stay `&'static str` literals
// (sqlx refuses strings built at run time).
macro_rules! schedule_columns {
    () => {
        "id, name, cron, time_zone, job_kind, payload, queue, max_attempts, enabled, catch_up,
         skip_if_running, note, next_run_at, last_run_at, last_job_id, last_error"
    };
}

/// Enabled schedules, by name.
pub async fn enabled_schedules(conn: &mut PgConnection) -> Result<Vec<Schedule>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM job_schedules WHERE enabled ORDER BY name"
    ))
    .fetch_all(conn)
    .await
}

/// All schedules, by name.
pub async fn all_schedules(executor: impl PgExecutor<'_>) -> Result<Vec<Schedule>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM job_schedules ORDER BY name"
    ))
    .fetch_all(executor)
    .await
}

/// Enables or disables a schedule by name; false if there is none. (Enabling
/// makes the scheduler compute the next tick from now: see the trigger.)
pub async fn set_enabled(
    executor: impl PgExecutor<'_>,
    name: &str,
    enabled: bool,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE job_schedules SET enabled = $2 WHERE name = $1")
        .bind(name)
        .bind(enabled)
        .execute(executor)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// One schedule by name, locked for the rest of the transaction.
pub async fn schedule_for_update(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        schedule_columns!(),
        " FROM job_schedules WHERE name = $1 FOR UPDATE"
    ))
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// Sets the next tick, unless an admin changed the timing since `s` was read
/// (then the trigger has reset `next_run_at` and the next pass starts over).
pub async fn set_next_run(
    conn: &mut PgConnection,
    s: &Schedule,
    next: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_schedules SET next_run_at = $4 WHERE id = $1 AND cron = $2 AND time_zone = $3",
    )
    .bind(s.id)
    .bind(&s.cron)
    .bind(&s.time_zone)
    .bind(next)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that `tick` was handled and `next` is the next tick.
pub async fn record_tick(
    conn: &mut PgConnection,
    s: &Schedule,
    tick: DateTime<Utc>,
    job_id: Option<&str>,
    next: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_schedules
            SET next_run_at = $4, last_run_at = $5, last_job_id = COALESCE($6, last_job_id), last_error = NULL
          WHERE id = $1 AND cron = $2 AND time_zone = $3",
    )
    .bind(s.id)
    .bind(&s.cron)
    .bind(&s.time_zone)
    .bind(next)
    .bind(tick)
    .bind(job_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a schedule as unusable. Returns false if it already said so (the
/// caller logs only news).
pub async fn set_schedule_error(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE job_schedules SET last_error = $2 WHERE id = $1 AND last_error IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(error)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// Records a manual run's job as the schedule's latest (so `skip_if_running`
/// sees it).
pub async fn set_last_job(
    conn: &mut PgConnection,
    id: Uuid,
    job_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE job_schedules SET last_job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a schedule does about ticks missed while no scheduler ran
/// (`job_schedules.catch_up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// One job, stamped with the latest missed tick (the default).
    Once,
    /// One job per missed tick (at most 100 per pass).
    Every,
}

impl CatchUp {
    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Every => "every",
        }
    }
}

impl std::str::FromStr for CatchUp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "once" => Ok(Self::Once),
            "every" => Ok(Self::Every),
            other => Err(format!(
                "unknown catch_up `{other}` (expected `once` or `every`)"
            )),
        }
    }
}

crate::decode_from_text!(CatchUp);
