//! `dklctl status`, `jobs` and `schedules`: the status views as readable tables.

use chrono::{DateTime, Utc};
use dkl_shared::monitor::{self, JobFilter, JobStatus};
use dkl_shared::schedules::store as schedules;
use sqlx::PgPool;

use crate::table::{Table, truncate};

/// Queues, scheduler leadership, schedules, admin rows and recent jobs.
pub async fn print_status(pool: &PgPool, recent: i64) -> anyhow::Result<()> {
    println!("QUEUES");
    print!("{}", queues_table(pool).await?);
    println!();
    println!("{}", leader_line(pool).await?);
    println!();
    println!("SCHEDULES");
    print!("{}", schedules_table(pool).await?);
    println!();
    println!("ADMIN ROWS (scheduled_jobs, newest first)");
    print!("{}", admin_rows_table(pool, 5).await?);
    println!();
    println!("RECENT JOBS");
    let jobs = monitor::jobs(
        pool,
        &JobFilter {
            limit: recent,
            ..JobFilter::default()
        },
    )
    .await?;
    print!("{}", jobs_table(&jobs));
    Ok(())
}

/// `dklctl jobs`.
pub async fn print_jobs(pool: &PgPool, filter: &JobFilter) -> anyhow::Result<()> {
    if let Some(state) = &filter.state
        && !monitor::STATES.contains(&state.as_str())
    {
        anyhow::bail!(
            "unknown state `{state}`; use one of: {}",
            monitor::STATES.join(", ")
        );
    }
    print!("{}", jobs_table(&monitor::jobs(pool, filter).await?));
    Ok(())
}

/// `dklctl schedules`.
pub async fn print_schedules(pool: &PgPool) -> anyhow::Result<()> {
    println!("{}", leader_line(pool).await?);
    print!("{}", schedules_table(pool).await?);
    Ok(())
}

async fn queues_table(pool: &PgPool) -> anyhow::Result<String> {
    let mut t = Table::new(&[
        "QUEUE",
        "PENDING",
        "SCHEDULED",
        "RUNNING",
        "DONE",
        "DISCARDED",
        "CANCELLED",
        "OLDEST PENDING",
        "FINISHED/5m",
    ]);
    for q in monitor::queue_summary(pool).await? {
        t.row(vec![
            q.queue,
            q.pending.to_string(),
            q.scheduled.to_string(),
            q.running.to_string(),
            q.done.to_string(),
            q.discarded.to_string(),
            q.cancelled.to_string(),
            if q.pending > 0 {
                format!("{:.1}s", q.oldest_pending_age_s)
            } else {
                "-".into()
            },
            q.finished_last_5m.to_string(),
        ]);
    }
    Ok(t.render("(no jobs)"))
}

async fn leader_line(pool: &PgPool) -> anyhow::Result<String> {
    let l = monitor::leadership(pool).await?;
    Ok(match (l.lock_held, l.scheduler_id, l.since, l.heartbeat_age_s) {
        (true, Some(id), Some(since), Some(age)) => {
            format!("SCHEDULER LEADER: {id} since {} (last pass {age:.1}s ago)", when(since))
        }
        (true, _, _, _) => "SCHEDULER LEADER: lock held, leader row not written yet".into(),
        (false, _, _, _) => {
            "SCHEDULER LEADER: none — no dkl-scheduler is running, recurring jobs are not being enqueued".into()
        }
    })
}

async fn schedules_table(pool: &PgPool) -> anyhow::Result<String> {
    let mut t = Table::new(&[
        "NAME",
        "CRON",
        "TIME ZONE",
        "KIND",
        "ON",
        "NEXT RUN",
        "LAST RUN",
        "LAST JOB",
        "ERROR",
    ]);
    for s in schedules::all_schedules(pool).await? {
        t.row(vec![
            s.name,
            s.cron,
            s.time_zone,
            s.job_kind,
            if s.enabled { "yes".into() } else { "no".into() },
            s.next_run_at.map_or("-".into(), when),
            s.last_run_at.map_or("-".into(), when),
            s.last_job_id.unwrap_or_else(|| "-".into()),
            truncate(s.last_error.as_deref().unwrap_or(""), 70),
        ]);
    }
    Ok(t.render("(no schedules)"))
}

async fn admin_rows_table(pool: &PgPool, limit: i64) -> anyhow::Result<String> {
    let mut t = Table::new(&[
        "ID",
        "KIND",
        "RUN AT",
        "STATUS",
        "JOB",
        "BY",
        "NOTE / REASON",
    ]);
    for r in schedules::recent_scheduled_jobs(pool, limit).await? {
        let note = r.rejected_reason.or(r.note).unwrap_or_default();
        t.row(vec![
            r.id.to_string(),
            r.job_kind,
            when(r.run_at),
            r.status.to_string(),
            r.job_id.unwrap_or_else(|| "-".into()),
            r.created_by,
            truncate(&note, 70),
        ]);
    }
    Ok(t.render("(none)"))
}

fn jobs_table(jobs: &[JobStatus]) -> String {
    let mut t = Table::new(&[
        "JOB",
        "KIND",
        "QUEUE",
        "STATE",
        "ATTEMPT",
        "RUN AT",
        "STARTED",
        "FINISHED",
        "FROM",
        "RESULT / LAST ERROR",
    ]);
    for j in jobs {
        let from = match (&j.schedule, &j.scheduled_job_id) {
            (Some(s), _) => format!("schedule {s}"),
            (None, Some(id)) => format!("admin row {}", &id.to_string()[..8]),
            (None, None) => "-".into(),
        };
        t.row(vec![
            j.job_id.clone(),
            j.kind.clone(),
            j.queue.clone(),
            j.state.clone(),
            format!("{}/{}", j.attempts, j.max_attempts),
            when(j.run_at),
            j.started_at.map_or("-".into(), clock),
            j.finished_at.map_or("-".into(), clock),
            from,
            result_or_error(j),
        ]);
    }
    t.render("(no jobs)")
}

/// A finished job's result (compact JSON), else its last error.
fn result_or_error(j: &JobStatus) -> String {
    match (&j.result, &j.last_error) {
        (Some(result), _) if j.state == "done" => truncate(&result.to_string(), 70),
        (_, Some(error)) => truncate(error, 70),
        (Some(result), None) => truncate(&result.to_string(), 70),
        (None, None) => String::new(),
    }
}

/// A date and time, to the second, UTC.
fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A time of day to the millisecond, UTC.
fn clock(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S%.3f").to_string()
}
