//! `job_schedule_runs`: one row per (schedule, tick) handled. Its primary key
//! is what makes a tick run once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// How a tick was handled (`job_schedule_runs.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// A job was enqueued for it.
    Enqueued,
    /// Skipped: the previous tick's job was still live (`skip_if_running`).
    Skipped,
    /// Enqueued by `dklctl run-now`.
    Manual,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::Skipped => "skipped",
            Self::Manual => "manual",
        }
    }
}

/// Claims (schedule, tick). False if it was claimed before: by this leader in
/// an earlier pass, or by a second scheduler that also thinks it leads.
pub async fn insert_run(
    conn: &mut PgConnection,
    schedule_id: Uuid,
    tick: DateTime<Utc>,
    outcome: RunOutcome,
    ticks_missed: i32,
    scheduler_id: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO job_schedule_runs (schedule_id, tick_at, outcome, ticks_missed, scheduler_id)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schedule_id, tick_at) DO NOTHING",
    )
    .bind(schedule_id)
    .bind(tick)
    .bind(outcome.as_str())
    .bind(ticks_missed)
    .bind(scheduler_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Stores the job a run enqueued.
pub async fn set_run_job(
    conn: &mut PgConnection,
    schedule_id: Uuid,
    tick: DateTime<Utc>,
    job_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE job_schedule_runs SET job_id = $3 WHERE schedule_id = $1 AND tick_at = $2")
        .bind(schedule_id)
        .bind(tick)
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// True if job `id` is pending or running.
pub async fn job_is_live(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE id = $1 AND status IN ('Pending', 'Running'))")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// One `job_schedule_runs` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRun {
    /// Schedule name.
    pub schedule: String,
    /// The tick.
    pub tick_at: DateTime<Utc>,
    /// The job enqueued.
    pub job_id: Option<String>,
    /// `enqueued`, `skipped` or `manual`.
    pub outcome: String,
    /// Missed ticks this run stands for.
    pub ticks_missed: i32,
    /// Which scheduler process wrote it.
    pub scheduler_id: String,
}

/// Runs of one schedule, oldest first.
pub async fn runs_of(
    executor: impl PgExecutor<'_>,
    schedule: &str,
) -> Result<Vec<ScheduleRun>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.name AS schedule, r.tick_at, r.job_id, r.outcome, r.ticks_missed, r.scheduler_id
           FROM job_schedule_runs r JOIN job_schedules s ON s.id = r.schedule_id
          WHERE s.name = $1 ORDER BY r.tick_at",
    )
    .bind(schedule)
    .fetch_all(executor)
    .await
}

/// Deletes run records older than `age`. Returns how many.
pub async fn prune_runs(executor: impl PgExecutor<'_>, age: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM job_schedule_runs WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(age.as_secs_f64())
    .execute(executor)
    .await?
    .rows_affected())
}
