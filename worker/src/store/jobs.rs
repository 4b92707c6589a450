//! What the dashboard reads of the job table (`apalis.jobs` through the
//! `job_status` view): per-queue figures, throughput per minute, filtered
//! pages of jobs and one job in full. Every query walks an index whatever
//! the table's size; none counts finished jobs beyond the last hour.

use chrono::{DateTime, Utc};
use dkl_shared::monitor::JobStatus;
use sqlx::PgExecutor;

/// One queue on the overview.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueFigures {
    /// The queue.
    pub queue: String,
    /// Due and waiting for a worker.
    pub pending: i64,
    /// Waiting for a later time (new or retry).
    pub scheduled: i64,
    /// Running now.
    pub running: i64,
    /// Discarded in the last hour.
    pub failed_last_hour: i64,
    /// Done in the last hour.
    pub done_last_hour: i64,
    /// How long the oldest due job has waited, in seconds (0 if none).
    pub oldest_pending_age_s: f64,
}

/// Figures of every queue that has live jobs, finished one in the last
/// hour, or is named in `known` (the queues this worker serves).
pub async fn queue_figures(
    executor: impl PgExecutor<'_>,
    known: &[String],
) -> Result<Vec<QueueFigures>, sqlx::Error> {
    sqlx::query_as(
        "WITH waiting AS (
             SELECT queue, count(*) FILTER (WHERE run_at <= now()) AS pending,
                    count(*) FILTER (WHERE run_at > now()) AS scheduled,
                    min(run_at) FILTER (WHERE run_at <= now()) AS oldest_due
               FROM apalis.jobs WHERE status = 'Pending' GROUP BY queue
         ), running AS (
             SELECT queue, count(*) AS running FROM apalis.jobs WHERE status = 'Running' GROUP BY queue
         ), finished AS (
             SELECT queue,
                    count(*) FILTER (WHERE status = 'Killed' AND cancelled_at IS NULL) AS failed,
                    count(*) FILTER (WHERE status = 'Done') AS done
               FROM apalis.jobs
              WHERE status IN ('Done', 'Killed') AND done_at > now() - interval '1 hour'
              GROUP BY queue
         ), queues AS (
             SELECT queue FROM waiting UNION SELECT queue FROM running
             UNION SELECT queue FROM finished UNION SELECT unnest($1::text[])
         )
         SELECT q.queue, coalesce(w.pending, 0) AS pending, coalesce(w.scheduled, 0) AS scheduled,
                coalesce(r.running, 0) AS running, coalesce(f.failed, 0) AS failed_last_hour,
                coalesce(f.done, 0) AS done_last_hour,
                coalesce(extract(epoch FROM now() - w.oldest_due), 0)::float8 AS oldest_pending_age_s
           FROM queues q
           LEFT JOIN waiting w ON w.queue = q.queue
           LEFT JOIN running r ON r.queue = q.queue
           LEFT JOIN finished f ON f.queue = q.queue
          ORDER BY q.queue",
    )
    .bind(known)
    .fetch_all(executor)
    .await
}

/// Jobs finished in one minute, by outcome.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct MinuteCounts {
    /// Minutes before now (0: the current minute).
    pub minutes_ago: i32,
    /// Done.
    pub done: i64,
    /// Discarded after errors.
    pub discarded: i64,
    /// Cancelled.
    pub cancelled: i64,
}

/// Jobs finished per minute over the last `minutes`, by outcome (minutes
/// with none absent).
pub async fn finished_per_minute(
    executor: impl PgExecutor<'_>,
    minutes: i32,
) -> Result<Vec<MinuteCounts>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (extract(epoch FROM date_trunc('minute', now()) - date_trunc('minute', done_at)) / 60)::int AS minutes_ago,
                count(*) FILTER (WHERE status = 'Done') AS done,
                count(*) FILTER (WHERE status = 'Killed' AND cancelled_at IS NULL) AS discarded,
                count(*) FILTER (WHERE status = 'Killed' AND cancelled_at IS NOT NULL) AS cancelled
           FROM apalis.jobs
          WHERE status IN ('Done', 'Killed')
            AND done_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1)
          GROUP BY 1",
    )
    .bind(minutes)
    .fetch_all(executor)
    .await
}

/// Which jobs a page lists.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state (one of [`dkl_shared::monitor::STATES`]).
    pub state: Option<String>,
    /// Only jobs enqueued by this schedule.
    pub schedule: Option<String>,
    /// Only ids below this one (the next page).
    pub before: Option<String>,
    /// At most this many.
    pub limit: i64,
}

/// The conditions on `apalis.jobs` that give a `job_status` state; they
/// must agree with the view's `CASE` (a test of every state checks they
/// do). Written on the table's own columns so the page's query walks an
/// index: a filter on the view's computed state cannot be estimated, and
/// the planner then sorted every matching job (150 ms at 1,000,000).
fn state_condition(state: &str) -> Option<&'static str> {
    Some(match state {
        "pending" => "j.status = 'Pending' AND j.run_at <= now()",
        "scheduled" => "j.status = 'Pending' AND j.run_at > now() AND j.attempts = 0",
        "retrying" => "j.status = 'Pending' AND j.run_at > now() AND j.attempts > 0",
        "running" => "j.status = 'Running'",
        "done" => "j.status = 'Done'",
        "discarded" => "j.status = 'Killed' AND j.cancelled_at IS NULL",
        "cancelled" => "j.status = 'Killed' AND j.cancelled_at IS NOT NULL",
        _ => return None,
    })
}

/// A page of jobs, newest first: the page's ids are found on the table
/// alone (an index walk that stops after `limit`), then read through
/// `job_status`. Only the filters given are in the SQL: `$1 IS NULL OR
/// col = $1` keeps a plan from using any index.
pub async fn page(
    executor: impl PgExecutor<'_>,
    q: &JobQuery,
) -> Result<Vec<JobStatus>, sqlx::Error> {
    let mut sql = sqlx::QueryBuilder::new(
        "WITH page AS MATERIALIZED (SELECT j.id FROM apalis.jobs j WHERE true",
    );
    if let Some(queue) = &q.queue {
        sql.push(" AND j.queue = ").push_bind(queue);
    }
    if let Some(kind) = &q.kind {
        sql.push(" AND j.job_type = ").push_bind(kind);
    }
    if let Some(state) = &q.state {
        // An unknown state matches nothing (the page refuses it before).
        let condition = state_condition(state).unwrap_or("false");
        sql.push(" AND ").push(condition);
        if !matches!(state.as_str(), "done") {
            // Lets the planner use `jobs_not_done`, the small index of
            // every job that is not simply done.
            sql.push(" AND j.status <> 'Done'");
        }
    }
    if let Some(schedule) = &q.schedule {
        sql.push(
            " AND j.id IN (SELECT r.job_id FROM job_schedule_runs r JOIN job_schedules s ON s.id = r.schedule_id
                            WHERE r.job_id IS NOT NULL AND s.name = ",
        )
        .push_bind(schedule)
        .push(")");
    }
    if let Some(before) = &q.before {
        sql.push(" AND j.id < ").push_bind(before);
    }
    sql.push(" ORDER BY j.id DESC LIMIT ").push_bind(q.limit).push(
        ")
         SELECT v.job_id, v.kind, v.queue, v.state, v.attempts, v.max_attempts, v.run_at, v.started_at,
                v.finished_at, v.last_error, v.schedule, v.schedule_tick, v.scheduled_job_id, v.result
           FROM page p JOIN job_status v ON v.job_id = p.id
          ORDER BY p.id DESC",
    );
    sql.build_query_as().fetch_all(executor).await
}

/// Everything the job page shows beyond its `job_status` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobExtras {
    /// The payload as stored (JSON text).
    pub payload: String,
    /// Priority.
    pub priority: i32,
    /// The worker that runs or ran it.
    pub worker: Option<String>,
    /// The dedup key.
    pub dedup_key: Option<String>,
    /// Who wrote the admin row it came from.
    pub scheduled_by: Option<String>,
    /// Times it was taken back from a worker that died.
    pub rescues: i32,
    /// When a cancel was asked for.
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// One job: its status row and the rest.
pub async fn job(
    executor: impl PgExecutor<'_>,
    id: &str,
) -> Result<Option<(JobStatus, JobExtras)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        status: JobStatus,
        #[sqlx(flatten)]
        extras: JobExtras,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT v.job_id, v.kind, v.queue, v.state, v.attempts, v.max_attempts, v.run_at, v.started_at,
                v.finished_at, v.last_error, v.schedule, v.schedule_tick, v.scheduled_job_id, v.result,
                convert_from(j.job, 'UTF8') AS payload,
                j.priority, v.worker, v.dedup_key, v.scheduled_by, j.rescues, j.cancelled_at
           FROM apalis.jobs j JOIN job_status v ON v.job_id = j.id
          WHERE j.id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|r| (r.status, r.extras)))
}

/// The kinds and queues that have jobs, for the filter menus.
pub async fn kinds_and_queues(
    executor: impl PgExecutor<'_>,
) -> Result<(Vec<String>, Vec<String>), sqlx::Error> {
    // Skip scans over the two indexes: one probe per distinct value.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "WITH RECURSIVE kinds(k) AS (
             SELECT min(job_type) FROM apalis.jobs
             UNION ALL
             SELECT (SELECT min(job_type) FROM apalis.jobs WHERE job_type > k) FROM kinds WHERE k IS NOT NULL
         ), queues(q) AS (
             SELECT min(queue) FROM apalis.jobs
             UNION ALL
             SELECT (SELECT min(queue) FROM apalis.jobs WHERE queue > q) FROM queues WHERE q IS NOT NULL
         )
         SELECT 'kind', k FROM kinds WHERE k IS NOT NULL
         UNION ALL SELECT 'queue', q FROM queues WHERE q IS NOT NULL",
    )
    .fetch_all(executor)
    .await?;
    let (kinds, queues): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(what, _)| what == "kind");
    Ok((
        kinds.into_iter().map(|(_, k)| k).collect(),
        queues.into_iter().map(|(_, q)| q).collect(),
    ))
}
