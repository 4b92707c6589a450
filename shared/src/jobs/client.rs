//! The enqueue side: a small client, as in River's `Client::Insert`/`InsertTx`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::error::EngineError;
use super::kind::{JobId, JobKind};
use super::store::{self, CancelOutcome, JobRecord, NewJob, RetryOutcome};

/// Options for one enqueue. `Default` means: now, no dedup key, the kind's
/// attempt limit, priority 0.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Run no earlier than this; `None` is now.
    pub run_at: Option<DateTime<Utc>>,
    /// While a pending or running job of the same kind holds this key, enqueue
    /// returns that job instead of making a second one.
    pub dedup_key: Option<String>,
    /// Overrides [`JobKind::MAX_ATTEMPTS`].
    pub max_attempts: Option<i32>,
    /// Higher runs first within a queue.
    pub priority: i32,
    /// Labels stored with the job (apalis's `metadata` hstore), e.g. which
    /// schedule tick made it. Shown by `dklctl show`.
    pub metadata: Vec<(String, String)>,
}

impl EnqueueOptions {
    /// Run at `when`.
    pub fn at(when: DateTime<Utc>) -> Self {
        Self {
            run_at: Some(when),
            ..Self::default()
        }
    }

    /// Deduplicate on `key`.
    pub fn dedup(key: impl Into<String>) -> Self {
        Self {
            dedup_key: Some(key.into()),
            ..Self::default()
        }
    }
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id (the existing job's, when deduplicated).
    pub id: JobId,
    /// False when a live job already held the dedup key.
    pub created: bool,
}

/// A handle for enqueueing and managing jobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobClient {
    pool: PgPool,
}

impl JobClient {
    /// A client on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool this client uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Enqueues `job` on its own connection, committed at once.
    pub async fn enqueue<J: JobKind>(
        &self,
        job: &J,
        opts: EnqueueOptions,
    ) -> Result<Enqueued, EngineError> {
        let mut conn = self.pool.acquire().await?;
        enqueue_on(&mut conn, job, opts).await
    }

    /// Enqueues `job` inside the caller's transaction (pass `&mut *tx`): the
    /// job exists exactly when the caller's own rows commit.
    pub async fn enqueue_tx<J: JobKind>(
        &self,
        tx: &mut PgConnection,
        job: &J,
        opts: EnqueueOptions,
    ) -> Result<Enqueued, EngineError> {
        enqueue_on(tx, job, opts).await
    }

    /// Enqueues many jobs of one kind, due now, in one statement (e.g. one job
    /// per newsletter recipient). Returns their ids in order.
    pub async fn enqueue_many<J: JobKind>(&self, jobs: &[J]) -> Result<Vec<JobId>, EngineError> {
        let mut conn = self.pool.acquire().await?;
        enqueue_many_on(&mut conn, jobs).await
    }

    /// Enqueues a job by kind name with a raw JSON payload (for the CLI and the
    /// admin job table, where the type is known only by name).
    pub async fn enqueue_raw(
        &self,
        kind: &str,
        queue: &str,
        payload: &serde_json::Value,
        max_attempts: i32,
        opts: EnqueueOptions,
    ) -> Result<Enqueued, EngineError> {
        let mut conn = self.pool.acquire().await?;
        enqueue_raw_on(&mut conn, kind, queue, payload, max_attempts, opts).await
    }

    /// Cancels a job: a pending job never starts; a running job's handler sees
    /// its cancellation signal. `Err(NotFound)` for an unknown id.
    pub async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, EngineError> {
        store::cancel(&self.pool, &id.0)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.0.clone()))
    }

    /// Runs a job again: a finished one from scratch, a waiting one now
    /// (`dklctl retry`).
    pub async fn retry(&self, id: &JobId) -> Result<RetryOutcome, EngineError> {
        match store::retry(&self.pool, &id.0).await {
            Ok(Some(outcome)) => Ok(outcome),
            Ok(None) => Err(EngineError::NotFound(id.0.clone())),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("jobs_live_dedup_key") => {
                Err(EngineError::DedupTaken(id.0.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a waiting job (scheduled, or retrying later) due now; false
    /// when it is not waiting any more. Unlike [`JobClient::retry`], never
    /// runs a finished job again.
    pub async fn run_now(&self, id: &JobId) -> Result<bool, EngineError> {
        Ok(store::make_due(&self.pool, &id.0).await?)
    }

    /// Reads a job's row.
    pub async fn job(&self, id: &JobId) -> Result<JobRecord, EngineError> {
        store::job(&self.pool, &id.0)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.0.clone()))
    }
}

/// Enqueues many jobs of one kind, due now, on `conn` (inside the caller's
/// transaction when it is one): they exist exactly when the caller's rows
/// commit. Returns their ids in order.
pub async fn enqueue_many_on<J: JobKind>(
    conn: &mut PgConnection,
    jobs: &[J],
) -> Result<Vec<JobId>, EngineError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let payloads = jobs
        .iter()
        .map(|j| {
            serde_json::to_vec(j).map_err(|source| EngineError::Encode {
                kind: J::KIND.into(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids = store::insert_many(conn, J::KIND, J::QUEUE, &payloads, J::MAX_ATTEMPTS).await?;
    Ok(ids.into_iter().map(JobId).collect())
}

/// Enqueues on any connection (a pool connection or `&mut *tx`).
pub async fn enqueue_on<J: JobKind>(
    conn: &mut PgConnection,
    job: &J,
    opts: EnqueueOptions,
) -> Result<Enqueued, EngineError> {
    let bytes = serde_json::to_vec(job).map_err(|source| EngineError::Encode {
        kind: J::KIND.into(),
        source,
    })?;
    let max_attempts = opts.max_attempts.unwrap_or(J::MAX_ATTEMPTS);
    insert(conn, J::KIND, J::QUEUE, bytes, max_attempts, opts).await
}

/// [`JobClient::enqueue_raw`] on a given connection or transaction (the
/// scheduler enqueues in the transaction that records the tick).
pub async fn enqueue_raw_on(
    conn: &mut PgConnection,
    kind: &str,
    queue: &str,
    payload: &serde_json::Value,
    max_attempts: i32,
    opts: EnqueueOptions,
) -> Result<Enqueued, EngineError> {
    let bytes = serde_json::to_vec(payload).map_err(|source| EngineError::Encode {
        kind: kind.into(),
        source,
    })?;
    insert(conn, kind, queue, bytes, max_attempts, opts).await
}

async fn insert(
    conn: &mut PgConnection,
    kind: &str,
    queue: &str,
    payload: Vec<u8>,
    max_attempts: i32,
    opts: EnqueueOptions,
) -> Result<Enqueued, EngineError> {
    let new = NewJob {
        kind,
        queue,
        payload,
        run_at: opts.run_at,
        max_attempts: max_attempts.max(1),
        priority: opts.priority,
        dedup_key: opts.dedup_key.as_deref(),
        metadata: &opts.metadata,
    };
    // The key's holder can finish between our insert attempt and our read of
    // it; each retry is a new statement with a fresh snapshot.
    for _ in 0..3 {
        if let Some((id, created)) = store::insert_job(conn, &new).await? {
            return Ok(Enqueued {
                id: JobId(id),
                created,
            });
        }
    }
    Err(EngineError::DedupRace {
        kind: kind.into(),
        key: opts.dedup_key.unwrap_or_default(),
    })
}
