//! Every SQL statement the job engine runs, in one place.
//!
//! The table is apalis-postgres's `apalis.jobs` (plus the columns our
//! migration `20261123000002_job_engine.sql` adds); worker liveness uses
//! apalis's `apalis.workers`. Status names are apalis's: `Pending`,
//! `Running`, `Done`, `Killed`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::kind::JobId;
use super::state::JobState;

/// The channel our trigger notifies when a job becomes pending, due now or
/// later (payload: its queue). Workers listen here, not on apalis's own
/// `apalis::job::insert`, which names the kind but not the queue, so a job
/// enqueued on a queue other than its kind's would wait for a poll.
pub const SCHEDULED_CHANNEL: &str = "dkl::job::scheduled";
/// The channel on which cancel requests for running jobs are announced (payload: job id).
pub const CANCEL_CHANNEL: &str = "dkl::job::cancel";

/// One claim of one job: the job id and the claim's `lock_at`. A job claimed
/// again (after a rescue, a release or a retry) is a different claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    /// Row id.
    pub id: String,
    /// When the claim was made.
    pub lock_at: DateTime<Utc>,
}

impl ClaimRef {
    /// The NOTIFY payload of a cancel request for this claim held by `worker`:
    /// `lock_at_micros job_id worker_id`, space-separated (the worker id last,
    /// so nothing in it can shift the other fields).
    pub fn cancel_payload(&self, worker: &str) -> String {
        format!("{} {} {worker}", self.lock_at.timestamp_micros(), self.id)
    }

    /// Reads a cancel payload: the worker it is meant for and the claim.
    pub fn parse_cancel_payload(payload: &str) -> Option<(&str, ClaimRef)> {
        let mut parts = payload.splitn(3, ' ');
        let (micros, id, worker) = (parts.next()?, parts.next()?, parts.next()?);
        let lock_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some((
            worker,
            ClaimRef {
                id: id.to_string(),
                lock_at,
            },
        ))
    }
}

/// A job row as one attempt sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    /// Row id.
    pub id: String,
    /// `job_type`: the job kind.
    pub job_type: String,
    /// The JSON payload, as bytes (apalis's `job` column is `bytea`).
    pub job: Vec<u8>,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When this claim was made; identifies the claim in outcome writes.
    pub lock_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// This claim's identity.
    pub fn claim(&self) -> ClaimRef {
        ClaimRef {
            id: self.id.clone(),
            lock_at: self.lock_at,
        }
    }
}

/// Everything about one job, for status queries and tests.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    /// Row id.
    pub id: String,
    /// Job kind.
    pub job_type: String,
    /// Queue.
    pub queue: String,
    /// State (apalis's status name in the table).
    pub status: JobState,
    /// Attempts so far.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When the job is (or was) due.
    pub run_at: DateTime<Utc>,
    /// When the latest attempt started.
    pub lock_at: Option<DateTime<Utc>>,
    /// Which worker process runs or ran it.
    pub lock_by: Option<String>,
    /// When it finished (done, discarded or cancelled).
    pub done_at: Option<DateTime<Utc>>,
    /// Error of the latest failed attempt.
    pub last_error: Option<String>,
    /// When a cancel was requested.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The dedup key.
    pub idempotency_key: Option<String>,
    /// Labels (apalis's `metadata` hstore) as a JSON object.
    pub metadata: Option<serde_json::Value>,
    /// Times it was taken back from a worker that died running it.
    pub rescues: i32,
    /// What the job recorded as its result (`job_status.result`).
    pub result: Option<serde_json::Value>,
}

/// A new row for [`insert_job`].
#[derive(Debug)]
pub struct NewJob<'a> {
    /// Job kind.
    pub kind: &'a str,
    /// Queue.
    pub queue: &'a str,
    /// JSON payload bytes.
    pub payload: Vec<u8>,
    /// Due time; `None` is now (by the database clock).
    pub run_at: Option<DateTime<Utc>>,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Higher runs first.
    pub priority: i32,
    /// Dedup key: while a live job of this kind holds it, no second one is made.
    pub dedup_key: Option<&'a str>,
    /// Labels for the `metadata` hstore column.
    pub metadata: &'a [(String, String)],
}

/// Inserts a job, or finds the live job that holds its dedup key.
///
/// Returns `(id, created)`; `None` when the key's holder finished between the
/// insert and the lookup (the caller tries again).
pub async fn insert_job(
    conn: &mut PgConnection,
    job: &NewJob<'_>,
) -> Result<Option<(String, bool)>, sqlx::Error> {
    // One statement, so it works on a pool connection and inside the caller's
    // transaction alike; ON CONFLICT targets the live-only partial index.
    sqlx::query_as(
        r#"
        WITH ins AS (
            INSERT INTO apalis.jobs
                (id, job_type, queue, job, status, attempts, max_attempts, run_at, priority, idempotency_key, metadata)
            VALUES ($1, $2, $3, $4, 'Pending', 0, $5, COALESCE($6, now()), $7, $8,
                    CASE WHEN cardinality($9::text[]) > 0 THEN hstore($9::text[], $10::text[]) END)
            ON CONFLICT (job_type, idempotency_key)
                WHERE status IN ('Pending', 'Running') AND idempotency_key IS NOT NULL
                DO NOTHING
            RETURNING id
        )
        SELECT id, true FROM ins
        UNION ALL
        SELECT id, false FROM apalis.jobs
         WHERE $8::text IS NOT NULL AND job_type = $2 AND idempotency_key = $8
           AND status IN ('Pending', 'Running') AND NOT EXISTS (SELECT 1 FROM ins)
        LIMIT 1
        "#,
    )
    .bind(JobId::generate().0)
    .bind(job.kind)
    .bind(job.queue)
    .bind(&job.payload)
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(job.priority)
    .bind(job.dedup_key)
    .bind(job.metadata.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
    .bind(job.metadata.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>())
    .fetch_optional(conn)
    .await
}

/// Inserts many jobs of one kind in one statement (no dedup keys), due now.
/// Returns their ids in payload order.
pub async fn insert_many(
    conn: &mut PgConnection,
    kind: &str,
    queue: &str,
    payloads: &[Vec<u8>],
    max_attempts: i32,
) -> Result<Vec<String>, sqlx::Error> {
    let ids: Vec<String> = payloads.iter().map(|_| JobId::generate().0).collect();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, queue, job, status, attempts, max_attempts, run_at, priority)
         SELECT u.id, $3, $4, u.job, 'Pending', 0, $5, now(), 0
           FROM unnest($1::text[], $2::bytea[]) AS u(id, job)",
    )
    .bind(&ids)
    .bind(payloads)
    .bind(kind)
    .bind(queue)
    .bind(max_attempts)
    .execute(conn)
    .await?;
    Ok(ids)
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was pending; it is now cancelled and will never start.
    CancelledBeforeStart,
    /// The job is running; its worker has been signalled.
    Signalled,
    /// The job had already finished; nothing changed.
    AlreadyFinished,
}

impl CancelOutcome {
    /// What happened, for an operator.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::CancelledBeforeStart => "cancelled; it will never start",
            Self::Signalled => "running; its worker was told to stop",
            Self::AlreadyFinished => "had already finished; nothing changed",
        }
    }
}

/// What a retry request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The finished (done, discarded or cancelled) job is pending again, due
    /// now, with a fresh attempt budget.
    Requeued,
    /// The job was waiting (for its time or a retry); it is now due.
    MadeDue,
    /// The job is running; nothing changed.
    Running,
}

impl RetryOutcome {
    /// What happened, for an operator.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Requeued => "pending again, due now, attempts reset",
            Self::MadeDue => "was waiting; now due",
            Self::Running => "is running; nothing changed (cancel it first to stop it)",
        }
    }
}

/// Runs a job again: a finished one from scratch (attempts 0, cancel
/// cleared), a waiting one now. A running job is left alone.
pub async fn retry(pool: &PgPool, id: &str) -> Result<Option<RetryOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<JobState> =
        sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let outcome = match before {
        None => return Ok(None),
        Some(JobState::Running) => RetryOutcome::Running,
        Some(JobState::Pending) => {
            make_due(&mut *tx, id).await?;
            RetryOutcome::MadeDue
        }
        Some(JobState::Done | JobState::Killed | JobState::Queued | JobState::Failed) => {
            // A live job holding the same dedup key makes this fail with a
            // unique violation; the caller reports it.
            sqlx::query(
                "UPDATE apalis.jobs
                    SET status = 'Pending', run_at = now(), attempts = 0, rescues = 0, done_at = NULL,
                        cancelled_at = NULL, lock_by = NULL, lock_at = NULL
                  WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            RetryOutcome::Requeued
        }
    };
    tx.commit().await?;
    Ok(Some(outcome))
}

/// Makes a job that waits for its time or its retry due now; false when it
/// is not waiting (already due, running, finished or cancelled): then
/// nothing changes, so a finished job never runs again through this.
pub async fn make_due(executor: impl sqlx::PgExecutor<'_>, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE apalis.jobs SET run_at = now()
          WHERE id = $1 AND status = 'Pending' AND run_at > now() AND cancelled_at IS NULL",
    )
    .bind(id)
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}

/// Cancels a job: a pending one at once, a running one by a NOTIFY to its worker.
pub async fn cancel(pool: &PgPool, id: &str) -> Result<Option<CancelOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<(JobState, Option<String>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT status, lock_by, lock_at FROM apalis.jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((status, lock_by, lock_at)) = before else {
        return Ok(None);
    };
    let outcome = match status {
        JobState::Pending => {
            sqlx::query(
                "UPDATE apalis.jobs SET status = 'Killed', cancelled_at = now(), done_at = now(),
                        last_error = COALESCE(last_error || E'\n', '') || 'cancelled before it started'
                  WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            CancelOutcome::CancelledBeforeStart
        }
        JobState::Running => {
            sqlx::query("UPDATE apalis.jobs SET cancelled_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // The payload names the claim, so the cancel stops this attempt
            // only: not a later claim of the same job after a retry.
            if let (Some(by), Some(at)) = (lock_by, lock_at) {
                let claim = ClaimRef {
                    id: id.to_string(),
                    lock_at: at,
                };
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CANCEL_CHANNEL)
                    .bind(claim.cancel_payload(&by))
                    .execute(&mut *tx)
                    .await?;
            }
            CancelOutcome::Signalled
        }
        JobState::Done | JobState::Killed | JobState::Queued | JobState::Failed => {
            CancelOutcome::AlreadyFinished
        }
    };
    tx.commit().await?;
    Ok(Some(outcome))
}

/// Reads one job.
pub async fn job(
    executor: impl PgExecutor<'_>,
    id: &str,
) -> Result<Option<JobRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, job_type, queue, status, attempts, max_attempts, run_at, lock_at, lock_by,
                done_at, last_error, cancelled_at, idempotency_key, hstore_to_jsonb(metadata) AS metadata, rescues,
                last_result AS result
           FROM apalis.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Registers (or re-registers) a worker process in `apalis.workers`.
pub async fn register_worker(
    executor: impl PgExecutor<'_>,
    worker_id: &str,
    queues: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen, started_at)
         VALUES ($1, 'dkl-worker', 'dkl-jobs', $2, now(), now())
         ON CONFLICT (id) DO UPDATE SET last_seen = now()",
    )
    .bind(worker_id)
    .bind(queues)
    .execute(executor)
    .await?;
    Ok(())
}

/// Records that a worker process is alive. Returns false if its row is gone.
pub async fn heartbeat(
    executor: impl PgExecutor<'_>,
    worker_id: &str,
) -> Result<bool, sqlx::Error> {
    let res = sqlx::query("UPDATE apalis.workers SET last_seen = now() WHERE id = $1")
        .bind(worker_id)
        .execute(executor)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Puts running jobs of silent workers back to pending without charging the
/// attempt the dead worker had claimed, and counts the rescue. A job rescued
/// more than `max_rescues` times keeps crashing its workers: it is discarded
/// with a `last_error` that says so. Returns the rescued and the discarded ids.
pub async fn rescue_orphans(
    executor: impl PgExecutor<'_>,
    silent_for: Duration,
    max_rescues: i32,
) -> Result<Vec<(String, bool)>, sqlx::Error> {
    sqlx::query_as(
        "WITH orphan AS (
            SELECT j.id, j.cancelled_at IS NULL AND j.rescues + 1 <= $2 AS back,
                   j.cancelled_at IS NULL AND j.rescues + 1 > $2 AS crash_loop
              FROM apalis.jobs j
             WHERE j.status = 'Running'
               AND NOT EXISTS (
                    SELECT 1 FROM apalis.workers w
                     WHERE w.id = j.lock_by AND w.last_seen >= now() - make_interval(secs => $1))
               FOR UPDATE OF j SKIP LOCKED
         )
         UPDATE apalis.jobs j
            SET status     = CASE WHEN o.back THEN 'Pending' ELSE 'Killed' END,
                done_at    = CASE WHEN o.back THEN NULL ELSE now() END,
                attempts   = CASE WHEN o.crash_loop THEN j.attempts ELSE GREATEST(j.attempts - 1, 0) END,
                rescues    = j.rescues + 1,
                run_at     = CASE WHEN o.back THEN now() ELSE j.run_at END,
                last_error = CASE WHEN o.crash_loop THEN concat_ws(E'\n', j.last_error, format(
                                 'its worker died %s times while running it (killed, out of memory or crashed); '
                                 'discarded after DKL_MAX_RESCUES=%s rescues so it cannot crash every worker in turn: '
                                 'find the cause in the workers'' logs, then `dklctl retry %s`',
                                 j.rescues + 1, $2, j.id))
                                 ELSE j.last_error END,
                lock_by    = CASE WHEN o.back THEN NULL ELSE j.lock_by END,
                lock_at    = CASE WHEN o.back THEN NULL ELSE j.lock_at END
           FROM orphan o
          WHERE j.id = o.id
          RETURNING j.id, o.crash_loop",
    )
    .bind(silent_for.as_secs_f64())
    .bind(max_rescues)
    .fetch_all(executor)
    .await
}

/// Claims up to `limit` due jobs of `queue` for `worker_id`, counting the
/// attempt (`FOR UPDATE SKIP LOCKED`, highest priority then earliest first).
/// The statement is the function `apalis.dkl_claim` of our migration, which
/// pins its plan (see there).
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    limit: i64,
    worker_id: &str,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    sqlx::query_as("SELECT id, job_type, job, attempts, max_attempts, lock_at FROM apalis.dkl_claim($1, $2, $3)")
        .bind(queue)
        .bind(limit as i32)
        .bind(worker_id)
        .fetch_all(pool)
        .await
}

/// How long until the next pending job of `queue` is due (zero if one is due now).
pub async fn next_due_in(pool: &PgPool, queue: &str) -> Result<Option<Duration>, sqlx::Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT GREATEST(EXTRACT(EPOCH FROM (run_at - now())), 0)::float8
           FROM apalis.jobs WHERE queue = $1 AND status = 'Pending'
          ORDER BY run_at LIMIT 1",
    )
    .bind(queue)
    .fetch_optional(pool)
    .await?;
    // `try_`: a row due at 'infinity' must not panic the fetcher.
    Ok(secs.map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)))
}

/// The end state of one attempt, as written by [`record_outcomes`].
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    /// The claim this outcome belongs to.
    pub claim: ClaimRef,
    /// New state: `Done`, `Pending` (retry or release) or `Killed`.
    pub status: JobState,
    /// Error to keep, if any.
    pub error: Option<String>,
    /// For `Pending`: wait this long before the next attempt.
    pub delay: Duration,
    /// 1 when the attempt does not count (released on shutdown), else 0.
    pub refund: i32,
}

impl OutcomeRow {
    /// Back to pending at once, the attempt refunded.
    pub fn released(claim: ClaimRef) -> Self {
        Self {
            claim,
            status: JobState::Pending,
            error: None,
            delay: Duration::ZERO,
            refund: 1,
        }
    }

    /// Discarded with `error`.
    pub fn discarded(claim: ClaimRef, error: String) -> Self {
        Self {
            claim,
            status: JobState::Killed,
            error: Some(error),
            delay: Duration::ZERO,
            refund: 0,
        }
    }
}

/// Writes many attempt outcomes in one statement.
///
/// Only rows still held by the same claim change (same `lock_by` and
/// `lock_at`): a job rescued from under a stalled worker, and perhaps claimed
/// again since, keeps its new claim's state. A job whose cancel was requested
/// never goes back to pending: a retry or release of it ends it as cancelled.
pub async fn record_outcomes(
    executor: impl PgExecutor<'_>,
    worker_id: &str,
    rows: &[OutcomeRow],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = rows.iter().map(|r| r.claim.id.as_str()).collect();
    let lock_ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.claim.lock_at).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    // Handlers' error texts and delays are bound as they come; PostgreSQL
    // refuses a NUL in text and a delay past its interval range, and one
    // refused row fails the whole statement. Make every row storable.
    let errors: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.error.as_deref().map(storable_text))
        .collect();
    let delays: Vec<f64> = rows
        .iter()
        .map(|r| r.delay.min(MAX_RETRY_DELAY).as_secs_f64())
        .collect();
    let refunds: Vec<i32> = rows.iter().map(|r| r.refund).collect();
    let res = sqlx::query(
        // "back" = (u.status = 'Pending' AND j.cancelled_at IS NULL): the job
        // returns to the queue. Spelled out per column; a join to compute it
        // once would cost a second row lookup per job.
        "UPDATE apalis.jobs j
            SET status     = CASE WHEN u.status <> 'Pending' THEN u.status
                                  WHEN j.cancelled_at IS NULL THEN 'Pending' ELSE 'Killed' END,
                attempts   = j.attempts - u.refund,
                last_error = CASE WHEN u.status = 'Pending' AND j.cancelled_at IS NOT NULL
                                  THEN concat_ws('; ', u.error, 'cancelled while running')
                                  ELSE COALESCE(u.error, j.last_error) END,
                run_at     = CASE WHEN u.status = 'Pending' AND j.cancelled_at IS NULL
                                  THEN now() + make_interval(secs => u.delay) ELSE j.run_at END,
                done_at    = CASE WHEN u.status = 'Pending' AND j.cancelled_at IS NULL THEN NULL ELSE now() END,
                lock_by    = CASE WHEN u.status = 'Pending' AND j.cancelled_at IS NULL THEN NULL ELSE j.lock_by END,
                lock_at    = CASE WHEN u.status = 'Pending' AND j.cancelled_at IS NULL THEN NULL ELSE j.lock_at END
           FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::float8[], $6::int4[])
                AS u(id, lock_at, status, error, delay, refund)
          WHERE j.id = ANY($1) AND j.id = u.id
            -- Plan shape matters here (EXPLAIN ANALYZE, 1000 outcomes, 50k rows):
            -- `id = ANY($1)` gives a primary-key index scan (~10 ms). The claim
            -- check sits in a CASE because, given `status = 'Running' AND
            -- lock_by = $7` bare, the planner picks the partial index
            -- jobs_running_by_worker, whose statistics often say 'no running
            -- jobs', and filters every running row against the whole array
            -- (116 ms; 670 ms per batch in the benchmark). Without the ANY it
            -- hash-joins over a full table scan (25 ms, growing with the table).
            AND CASE WHEN j.status = 'Running' AND j.lock_by = $7 AND j.lock_at = u.lock_at THEN true ELSE false END",
    )
    .bind(&ids)
    .bind(&lock_ats)
    .bind(&statuses)
    .bind(&errors)
    .bind(&delays)
    .bind(&refunds)
    .bind(worker_id)
    .execute(executor)
    .await?;
    Ok(res.rows_affected())
}

/// [`record_outcomes`] in a transaction that waits at most
/// `OUTCOME_LOCK_TIMEOUT` for a row lock: a job row someone holds (an
/// admin's open `SELECT … FOR UPDATE`) fails the write with SQLSTATE 55P03
/// instead of blocking the outcome writer, and every job behind it, for ever.
pub async fn record_outcomes_guarded(
    pool: &PgPool,
    worker_id: &str,
    rows: &[OutcomeRow],
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(OUTCOME_LOCK_TIMEOUT)
        .execute(&mut *tx)
        .await?;
    let n = record_outcomes(&mut *tx, worker_id, rows).await?;
    tx.commit().await?;
    Ok(n)
}

/// How long an outcome write waits for a locked job row. The engine's own
/// locks on a running job's row (cancel, rescue) last milliseconds; a row
/// held longer is someone else's, and its outcome is retried later.
pub const OUTCOME_LOCK_TIMEOUT: &str = "250ms";

/// The longest a retry is put off (a handler's `retry_after` hint is capped
/// to this; PostgreSQL's intervals and timestamps have a range).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30 * 86_400);

/// The most bytes of an error text kept in `last_error`.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// `text` as PostgreSQL can store it: NUL bytes shown as `\0` and at most
/// [`MAX_ERROR_BYTES`] bytes, cut at a character boundary.
pub fn storable_text(text: &str) -> String {
    let mut out = if text.contains('\0') {
        text.replace('\0', "\\0")
    } else {
        text.to_string()
    };
    if out.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(" … (truncated)");
    }
    out
}

/// Running jobs of `worker_id` whose cancel was requested (to re-signal any
/// whose NOTIFY was missed).
pub async fn cancelled_running(
    executor: impl PgExecutor<'_>,
    worker_id: &str,
) -> Result<Vec<ClaimRef>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, lock_at FROM apalis.jobs
          WHERE status = 'Running' AND lock_by = $1 AND cancelled_at IS NOT NULL AND lock_at IS NOT NULL",
    )
    .bind(worker_id)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, lock_at)| ClaimRef { id, lock_at })
        .collect())
}

/// Running jobs of `worker_id` claimed more than `older_than` ago, with their
/// claim time (to find claims the worker lost track of).
pub async fn running_claims(
    executor: impl PgExecutor<'_>,
    worker_id: &str,
    older_than: Duration,
) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, lock_at FROM apalis.jobs
          WHERE status = 'Running' AND lock_by = $1 AND lock_at < now() - make_interval(secs => $2)",
    )
    .bind(worker_id)
    .bind(older_than.as_secs_f64())
    .fetch_all(executor)
    .await
}

/// Rows removed by one prune.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Done jobs deleted.
    pub done: u64,
    /// Discarded or cancelled jobs deleted.
    pub discarded: u64,
    /// Worker rows deleted.
    pub workers: u64,
}

/// Deletes finished jobs past their keep time, in chunks so no lock is held long.
pub async fn prune(
    pool: &PgPool,
    done_after: Duration,
    discarded_after: Duration,
) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    for (status, age, counter) in [
        (JobState::Done, done_after, &mut pruned.done),
        (JobState::Killed, discarded_after, &mut pruned.discarded),
    ] {
        loop {
            let n = sqlx::query(
                "DELETE FROM apalis.jobs WHERE id IN (
                    SELECT id FROM apalis.jobs
                     WHERE status = $1 AND done_at < now() - make_interval(secs => $2)
                     LIMIT 5000)",
            )
            .bind(status.as_str())
            .bind(age.as_secs_f64())
            .execute(pool)
            .await?
            .rows_affected();
            *counter += n;
            if n < 5000 {
                break;
            }
        }
    }
    // Jobs keep the id of the worker that ran them as history; only the
    // worker rows go.
    pruned.workers =
        sqlx::query("DELETE FROM apalis.workers WHERE last_seen < now() - interval '1 day'")
            .execute(pool)
            .await?
            .rows_affected();
    Ok(pruned)
}

/// Vacuums and analyzes the job table. A queue table turns over its rows
/// constantly; where autovacuum is off or slow, dead entries pile up in the
/// fetch index and every claim walks them. (Cannot run in a transaction.)
pub async fn vacuum_jobs(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("VACUUM (ANALYZE) apalis.jobs")
        .execute(pool)
        .await?;
    Ok(())
}

/// `VACUUM (SKIP_LOCKED) apalis.jobs`: the engine's own upkeep of the queue
/// table (skipped, not waited for, when another session vacuums it).
pub async fn vacuum_queue_table(executor: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("VACUUM (SKIP_LOCKED) apalis.jobs")
        .execute(executor)
        .await?;
    Ok(())
}

/// Deletes every job of `queue` (the benchmark cleans up after itself with it).
pub async fn delete_queue(pool: &PgPool, queue: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM apalis.jobs WHERE queue = $1")
        .bind(queue)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Deletes these jobs, whatever their state.
pub async fn delete_jobs(pool: &PgPool, ids: &[String]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM apalis.jobs WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Stores what an attempt found (counts, ids) as the job's result, shown
/// as `job_status.result`. Written while the job runs: a later attempt
/// replaces it.
pub async fn record_result(
    pool: &PgPool,
    id: &JobId,
    result: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE apalis.jobs SET last_result = $2 WHERE id = $1")
        .bind(&id.0)
        .bind(result)
        .execute(pool)
        .await?;
    Ok(())
}

/// Jobs of `queue` still pending or running.
pub async fn live_in_queue(pool: &PgPool, queue: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE queue = $1 AND status IN ('Pending', 'Running')",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
}

/// Jobs of `queue` not yet done.
pub async fn not_done_in_queue(pool: &PgPool, queue: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE queue = $1 AND status <> 'Done'")
        .bind(queue)
        .fetch_one(pool)
        .await
}
