//! Every SQL statement on the scheduler's tables: `job_schedules`,
//! `job_schedule_runs`, `scheduled_jobs` and `scheduler_leader`
//! (migration `20261123000003_scheduler.sql`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The channel the tables' triggers notify when an admin changes a schedule
/// or a `scheduled_jobs` row becomes pending.
pub const CHANGED_CHANNEL: &str = "dkl::schedules";

/// The advisory lock (two-int form) whose holder is the leading scheduler.
/// Advisory locks are per database, so each database has its own leader.
pub const LEADER_LOCK: (i32, i32) = (0x646b_6c00, 1);

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
    /// `once` or `every`.
    pub catch_up: String,
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
    sqlx::query_as(concat!("SELECT ", schedule_columns!(), " FROM job_schedules WHERE enabled ORDER BY name"))
        .fetch_all(conn)
        .await
}

/// All schedules, by name.
pub async fn all_schedules(executor: impl PgExecutor<'_>) -> Result<Vec<Schedule>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", schedule_columns!(), " FROM job_schedules ORDER BY name")).fetch_all(executor).await
}

/// Enables or disables a schedule by name; false if there is none. (Enabling
/// makes the scheduler compute the next tick from now: see the trigger.)
pub async fn set_enabled(executor: impl PgExecutor<'_>, name: &str, enabled: bool) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE job_schedules SET enabled = $2 WHERE name = $1")
        .bind(name)
        .bind(enabled)
        .execute(executor)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// One schedule by name, locked for the rest of the transaction.
pub async fn schedule_for_update(conn: &mut PgConnection, name: &str) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", schedule_columns!(), " FROM job_schedules WHERE name = $1 FOR UPDATE"))
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// Sets the next tick, unless an admin changed the timing since `s` was read
/// (then the trigger has reset `next_run_at` and the next pass starts over).
pub async fn set_next_run(conn: &mut PgConnection, s: &Schedule, next: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE job_schedules SET next_run_at = $4 WHERE id = $1 AND cron = $2 AND time_zone = $3")
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
pub async fn set_schedule_error(conn: &mut PgConnection, id: Uuid, error: &str) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query("UPDATE job_schedules SET last_error = $2 WHERE id = $1 AND last_error IS DISTINCT FROM $2")
        .bind(id)
        .bind(error)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(changed > 0)
}

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
pub async fn runs_of(executor: impl PgExecutor<'_>, schedule: &str) -> Result<Vec<ScheduleRun>, sqlx::Error> {
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
    Ok(sqlx::query("DELETE FROM job_schedule_runs WHERE created_at < now() - make_interval(secs => $1)")
        .bind(age.as_secs_f64())
        .execute(executor)
        .await?
        .rows_affected())
}

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
    pub status: String,
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
    sqlx::query_as(concat!("INSERT INTO scheduled_jobs (job_kind, payload, run_at, created_by, note, queue)
         VALUES ($1, $2, COALESCE($3, now()), $4, $5, $6) RETURNING ", scheduled_job_columns!()))
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
pub async fn take_due_scheduled_jobs(conn: &mut PgConnection, limit: i64) -> Result<Vec<ScheduledJob>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", scheduled_job_columns!(), " FROM scheduled_jobs
          WHERE status = 'pending' AND run_at <= now()
          ORDER BY run_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks a row enqueued as job `job_id`.
pub async fn mark_enqueued(conn: &mut PgConnection, id: Uuid, job_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE scheduled_jobs SET status = 'enqueued', job_id = $2, enqueued_at = now() WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks a row rejected with the reason.
pub async fn mark_rejected(conn: &mut PgConnection, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE scheduled_jobs SET status = 'rejected', rejected_reason = $2 WHERE id = $1")
        .bind(id)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Cancels a pending row. Returns the row as it is afterwards (its status
/// says whether the cancel took), or `None` if there is no such row.
pub async fn cancel_scheduled_job(conn: &mut PgConnection, id: Uuid) -> Result<Option<ScheduledJob>, sqlx::Error> {
    let cancelled: Option<ScheduledJob> = sqlx::query_as(concat!("UPDATE scheduled_jobs SET status = 'cancelled' WHERE id = $1 AND status = 'pending'
         RETURNING ", scheduled_job_columns!()))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match cancelled {
        Some(row) => Ok(Some(row)),
        None => scheduled_job(conn, id).await,
    }
}

/// One admin row.
pub async fn scheduled_job(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ScheduledJob>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", scheduled_job_columns!(), " FROM scheduled_jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Admin rows, newest first.
pub async fn recent_scheduled_jobs(executor: impl PgExecutor<'_>, limit: i64) -> Result<Vec<ScheduledJob>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", scheduled_job_columns!(), " FROM scheduled_jobs ORDER BY run_at DESC LIMIT $1"))
        .bind(limit)
        .fetch_all(executor)
        .await
}

/// For admin rows that ran: (enqueued − run_at, job started − run_at) in ms,
/// by the database clock (`dklctl bench schedule`).
pub async fn admin_row_lateness(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<Vec<(f64, f64)>, sqlx::Error> {
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
pub async fn delete_scheduled_jobs(executor: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM scheduled_jobs WHERE id = ANY($1)").bind(ids).execute(executor).await?.rows_affected())
}

/// Seconds until the earliest pending row is due (negative if overdue), by
/// the database clock.
pub async fn next_scheduled_job_due_in(executor: impl PgExecutor<'_>) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM min(run_at) - clock_timestamp())::float8 FROM scheduled_jobs
          WHERE status = 'pending' AND isfinite(run_at)",
    )
    .fetch_one(executor)
    .await
}

/// Records a manual run's job as the schedule's latest (so `skip_if_running`
/// sees it).
pub async fn set_last_job(conn: &mut PgConnection, id: Uuid, job_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE job_schedules SET last_job_id = $2 WHERE id = $1").bind(id).bind(job_id).execute(conn).await?;
    Ok(())
}

/// Tries to take the leader lock on this session. True if this session now
/// holds it (it stays held until the session ends or unlocks).
pub async fn try_leader_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LEADER_LOCK.0)
        .bind(LEADER_LOCK.1)
        .fetch_one(conn)
        .await
}

/// Releases the leader lock held by this session.
pub async fn release_leader_lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1, $2)").bind(LEADER_LOCK.0).bind(LEADER_LOCK.1).execute(conn).await?;
    Ok(())
}

/// Ends the session of a leader whose heartbeat is older than `stale_after`
/// (a frozen process keeps its connection, and with it the lock, for ever).
/// Returns true if a session was ended; its lock is then free.
pub async fn depose_stale_leader(conn: &mut PgConnection, stale_after: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(bool_or(pg_terminate_backend(l.pid)), false)
           FROM pg_locks l, scheduler_leader s
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2
            AND l.pid <> pg_backend_pid() AND l.pid = s.backend_pid
            AND s.heartbeat_at < clock_timestamp() - make_interval(secs => $3)",
    )
    .bind(LEADER_LOCK.0)
    .bind(LEADER_LOCK.1)
    .bind(stale_after.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Writes this scheduler into `scheduler_leader`.
pub async fn claim_leader_row(conn: &mut PgConnection, scheduler_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scheduler_leader (only_row, scheduler_id, backend_pid, since, heartbeat_at)
         VALUES (true, $1, pg_backend_pid(), now(), now())
         ON CONFLICT (only_row) DO UPDATE
            SET scheduler_id = $1, backend_pid = pg_backend_pid(), since = now(), heartbeat_at = now()",
    )
    .bind(scheduler_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The leader's heartbeat. Returns the database's current time, or `None`
/// when the row names someone else (then the caller claims it again).
pub async fn leader_heartbeat(conn: &mut PgConnection, scheduler_id: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE scheduler_leader SET heartbeat_at = clock_timestamp() WHERE scheduler_id = $1 RETURNING heartbeat_at",
    )
    .bind(scheduler_id)
    .fetch_optional(conn)
    .await
}

/// Removes this scheduler's leader row (at shutdown).
pub async fn clear_leader_row(conn: &mut PgConnection, scheduler_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM scheduler_leader WHERE scheduler_id = $1").bind(scheduler_id).execute(conn).await?;
    Ok(())
}

/// Who leads, as far as the database knows.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Leadership {
    /// True if some session holds the leader lock right now.
    pub lock_held: bool,
    /// The leader's id, from `scheduler_leader`.
    pub scheduler_id: Option<String>,
    /// Since when it leads.
    pub since: Option<DateTime<Utc>>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: Option<f64>,
}

/// Reads the leader lock and the leader row.
pub async fn leadership(executor: impl PgExecutor<'_>) -> Result<Leadership, sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2) AS lock_held,
                l.scheduler_id, l.since,
                extract(epoch FROM clock_timestamp() - l.heartbeat_at)::float8 AS heartbeat_age_s
           FROM (SELECT 1) one LEFT JOIN scheduler_leader l ON true",
    )
    .bind(LEADER_LOCK.0)
    .bind(LEADER_LOCK.1)
    .fetch_one(executor)
    .await
}
