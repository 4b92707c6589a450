//! Schedules and admin rows: `pause`, `resume`, `run-now`, `schedule`, and
//! `cancel` of an admin row. (`schedules` itself prints through `status`.)

use chrono::{DateTime, Utc};
use dkl_shared::kinds;
use dkl_shared::schedules::store::{self, NewScheduledJob, ScheduledJobStatus};
use sqlx::PgPool;

use super::whoami;

/// Pauses or resumes a schedule.
pub async fn set_enabled(pool: &PgPool, name: &str, enabled: bool) -> anyhow::Result<()> {
    if !store::set_enabled(pool, name, enabled).await? {
        anyhow::bail!("no schedule named `{name}`; `dklctl schedules` lists them");
    }
    println!(
        "{name}: {}",
        if enabled {
            "resumed; it ticks from its next time after now"
        } else {
            "paused"
        }
    );
    Ok(())
}

/// Enqueues a schedule's job now.
pub async fn run_now(pool: &PgPool, schedule: &str) -> anyhow::Result<()> {
    let job_id =
        dkl_shared::schedules::run_now(pool, &kinds::catalog(), schedule, &whoami()).await?;
    println!("{job_id}");
    Ok(())
}

/// What `dklctl schedule` was asked for.
pub struct ScheduleRequest {
    pub kind: String,
    pub at: Option<DateTime<Utc>>,
    pub payload: serde_json::Value,
    pub note: Option<String>,
    pub created_by: Option<String>,
}

/// Inserts an admin row, refusing now what the scheduler would reject later.
pub async fn schedule(pool: &PgPool, req: ScheduleRequest) -> anyhow::Result<()> {
    kinds::catalog()
        .resolve(&req.kind, &req.payload)
        .map_err(anyhow::Error::msg)?;
    let created_by = req.created_by.unwrap_or_else(whoami);
    let row = NewScheduledJob {
        job_kind: &req.kind,
        payload: &req.payload,
        run_at: req.at,
        created_by: &created_by,
        note: req.note.as_deref(),
        queue: None,
    };
    let row = store::insert_scheduled_job(pool, &row).await?;
    println!(
        "{} (scheduled_jobs row; runs at {})",
        row.id,
        row.run_at.to_rfc3339()
    );
    Ok(())
}

/// Cancels a pending admin row.
pub async fn cancel_row(pool: &PgPool, row_id: uuid::Uuid) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    match store::cancel_scheduled_job(&mut conn, row_id).await? {
        None => anyhow::bail!("no scheduled_jobs row with id {row_id}"),
        Some(row) if row.status == ScheduledJobStatus::Cancelled => {
            println!("{row_id}: scheduled job cancelled; it will not run")
        }
        Some(row) => match row.job_id {
            Some(job_id) => anyhow::bail!(
                "{row_id} was already enqueued as job {job_id}; cancel the job instead: dklctl cancel {job_id}"
            ),
            None => anyhow::bail!(
                "{row_id} is {}; only pending rows can be cancelled",
                row.status
            ),
        },
    }
    Ok(())
}
