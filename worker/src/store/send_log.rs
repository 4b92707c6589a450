//! The send log writer: the steps every send of this process takes in
//! `verzonden_emails` (begin before its SMTP transaction, finish after it,
//! and the rarer start and unlock), run by one task on one connection of its
//! own, many senders' steps per round trip (`dkl_send_steps`).
//!
//! One round trip per message step on a pooled connection each cost more
//! database time than the mail (two statements and two commits per
//! message, ~1,900 messages/s on 2 cores); under load the writer's batches
//! grow by themselves, because steps queue up while a batch runs.
//!
//! Locks: the writer's session holds the advisory lock on the dedup key of
//! every message between its begin and its finish, so a second job for the
//! same message (in any process) finds it busy. A session's advisory locks
//! are re-entrant, so the writer also keeps the keys it holds and answers a
//! second begin for one of them `Busy` itself. A sender that goes away
//! between begin and finish (its job timed out or was cancelled) drops its
//! [`KeyGuard`], which unlocks the key. If the writer's connection breaks,
//! its locks go with the session; on the next connection it takes the locks
//! of the sends still in flight again.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::verzonden_emails::{Begun, Finish, NewMessage, RateLimit, SendStatus};

/// The most steps in one round trip.
const MAX_BATCH: usize = 256;

/// Writers (each a task and a connection) per process. A message's steps
/// always go to the same one (by its key), whose session holds its lock;
/// with two, a step waits for at most one batch on another key.
const WRITERS: usize = 2;

/// A step that could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("send log: {0}")]
pub struct SendLogError(pub String);

#[derive(Debug, serde::Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Step {
    Begin {
        dedup_key: String,
        recipient: String,
        subject: String,
        template: Option<String>,
        kind: String,
        bulk: bool,
        smtp: String,
        job_id: String,
        message_id: String,
        reply_to: Option<String>,
        rate_per_second: Option<u32>,
        rate_per_hour: Option<u32>,
    },
    Start {
        id: Uuid,
        job_id: String,
        smtp: String,
        rate_per_second: Option<u32>,
        rate_per_hour: Option<u32>,
    },
    Finish {
        id: Uuid,
        dedup_key: String,
        status: &'static str,
        code: Option<u16>,
        reply: Option<String>,
        error: Option<String>,
    },
    Unlock {
        dedup_key: String,
    },
}

impl Step {
    fn key(&self) -> Option<&str> {
        match self {
            Self::Begin { dedup_key, .. }
            | Self::Finish { dedup_key, .. }
            | Self::Unlock { dedup_key } => Some(dedup_key),
            Self::Start { .. } => None,
        }
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct StepRow {
    n: i32,
    outcome: String,
    id: Option<Uuid>,
    message_id: Option<String>,
    detail: Option<String>,
    wait_secs: Option<f64>,
}

type Reply = oneshot::Sender<Result<StepRow, SendLogError>>;

struct Request {
    step: Step,
    reply: Option<Reply>,
}

/// Handle on the writer task, which starts with the first step.
pub struct SendLog {
    pool: PgPool,
    writers: std::sync::OnceLock<Vec<mpsc::UnboundedSender<Request>>>,
}

/// A message's lock, held by the writer's session between begin and finish.
/// Dropped without [`SendLog::finish`] (an early return, a job that timed
/// out), it unlocks the key.
pub struct KeyGuard {
    key: String,
    tx: mpsc::UnboundedSender<Request>,
    done: bool,
}

impl std::fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGuard").field("key", &self.key).finish()
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Request {
                step: Step::Unlock {
                    dedup_key: std::mem::take(&mut self.key),
                },
                reply: None,
            });
        }
    }
}

impl SendLog {
    /// A writer on a connection of its own (made from `pool`'s options),
    /// started on the first step (in the Tokio runtime that takes it). It
    /// ends when the handle and every guard are gone.
    pub fn new(pool: &PgPool) -> Self {
        Self {
            pool: pool.clone(),
            writers: std::sync::OnceLock::new(),
        }
    }

    /// The writer of `key`'s steps.
    fn sender(&self, key: &str) -> &mpsc::UnboundedSender<Request> {
        let writers = self.writers.get_or_init(|| {
            (0..WRITERS)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(
                        Writer {
                            pool: self.pool.clone(),
                            conn: None,
                            held: HashSet::new(),
                        }
                        .run(rx),
                    );
                    tx
                })
                .collect()
        });
        let hash = key
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        &writers[(hash % writers.len() as u64) as usize]
    }

    async fn run(&self, key: &str, step: Step) -> Result<StepRow, SendLogError> {
        let (reply, answer) = oneshot::channel();
        self.sender(key)
            .send(Request {
                step,
                reply: Some(reply),
            })
            .map_err(|_| SendLogError("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| SendLogError("the writer has stopped".into()))?
    }

    /// Everything before a message's SMTP transaction (`dkl_begin_send`):
    /// with `Begun::Send` or `Begun::Wait` the key's lock is held, and the
    /// guard that releases it comes along.
    pub async fn begin(
        &self,
        m: &NewMessage<'_>,
        bulk: bool,
        rate: RateLimit,
    ) -> Result<(Begun, Option<KeyGuard>), SendLogError> {
        let row = self
            .run(
                m.dedup_key,
                Step::Begin {
                    dedup_key: m.dedup_key.to_string(),
                    recipient: m.recipient.to_string(),
                    subject: m.subject.to_string(),
                    template: m.template_name.map(String::from),
                    kind: m.mail_kind.to_string(),
                    bulk,
                    smtp: m.smtp_config.to_string(),
                    job_id: m.job_id.to_string(),
                    message_id: m.message_id.to_string(),
                    reply_to: m.reply_to.map(String::from),
                    rate_per_second: rate.per_second,
                    rate_per_hour: rate.per_hour,
                },
            )
            .await?;
        let begun = begun_from(row, m.message_id)?;
        let guard = begun.holds_lock().then(|| KeyGuard {
            key: m.dedup_key.to_string(),
            tx: self.sender(m.dedup_key).clone(),
            done: false,
        });
        Ok((begun, guard))
    }

    /// After `Begun::Wait`: takes a rate slot and marks the transaction
    /// started; `Some(wait)` while the limit is still reached.
    pub async fn start_send(
        &self,
        guard: &KeyGuard,
        id: Uuid,
        job_id: &str,
        smtp: &str,
        rate: RateLimit,
    ) -> Result<Option<Duration>, SendLogError> {
        let row = self
            .run(
                &guard.key,
                Step::Start {
                    id,
                    job_id: job_id.to_string(),
                    smtp: smtp.to_string(),
                    rate_per_second: rate.per_second,
                    rate_per_hour: rate.per_hour,
                },
            )
            .await?;
        let wait = row.wait_secs.unwrap_or(0.0);
        Ok((wait > 0.0).then(|| Duration::from_secs_f64(wait)))
    }

    /// Records how the transaction ended and releases the key's lock.
    pub async fn finish(
        &self,
        mut guard: KeyGuard,
        id: Uuid,
        how: Finish<'_>,
    ) -> Result<(), SendLogError> {
        let (status, code, reply, error) = match how {
            Finish::Sent { code, reply } => (SendStatus::Sent, Some(code), Some(reply), None),
            Finish::Retry { code, error } => (SendStatus::Queued, code, None, Some(error)),
            Finish::Failed { code, error } => (SendStatus::Failed, code, None, Some(error)),
            Finish::Unknown { error } => (SendStatus::Unknown, None, None, Some(error)),
        };
        let step = Step::Finish {
            id,
            dedup_key: guard.key.clone(),
            status: status.as_str(),
            code,
            reply: reply.map(String::from),
            error: error.map(String::from),
        };
        let row = self.run(&guard.key, step).await?;
        // The step ran (and, failed or not, released the lock).
        guard.done = true;
        match row.outcome.as_str() {
            "done" => Ok(()),
            _ => Err(SendLogError(
                row.detail
                    .unwrap_or_else(|| "the finish step failed".into()),
            )),
        }
    }
}

fn begun_from(row: StepRow, our_message_id: &str) -> Result<Begun, SendLogError> {
    let detail = row.detail.unwrap_or_default();
    let with_id = |what: &str| -> Result<(Uuid, String), SendLogError> {
        let id = row.id.ok_or_else(|| {
            SendLogError(format!("dkl_begin_send answered `{what}` without a row id"))
        })?;
        Ok((
            id,
            row.message_id
                .clone()
                .unwrap_or_else(|| our_message_id.to_string()),
        ))
    };
    Ok(match row.outcome.as_str() {
        "busy" => Begun::Busy,
        "other_recipient" => Begun::OtherRecipient(detail),
        "done" => Begun::Done(detail.parse().map_err(SendLogError)?),
        "suppressed" => Begun::Suppressed(detail),
        "unknown" => Begun::Unknown,
        "wait" => {
            let (id, message_id) = with_id("wait")?;
            Begun::Wait {
                id,
                message_id,
                wait: Duration::from_secs_f64(row.wait_secs.unwrap_or(1.0).max(0.001)),
            }
        }
        "send" => {
            let (id, message_id) = with_id("send")?;
            Begun::Send { id, message_id }
        }
        "error" => return Err(SendLogError(detail)),
        other => {
            return Err(SendLogError(format!(
                "dkl_begin_send answered an unknown outcome `{other}`"
            )));
        }
    })
}

struct Writer {
    pool: PgPool,
    conn: Option<PgConnection>,
    /// Keys whose lock this session holds (between begin and finish).
    held: HashSet<String>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.write(batch).await;
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    async fn write(&mut self, batch: Vec<Request>) {
        // A key this session holds, or begins twice in one batch, is busy:
        // its advisory lock would be granted again (it is re-entrant).
        let mut beginning = HashSet::new();
        let mut requests = Vec::with_capacity(batch.len());
        for r in batch {
            if let Step::Begin { dedup_key, .. } = &r.step
                && (self.held.contains(dedup_key) || !beginning.insert(dedup_key.clone()))
            {
                answer(
                    r.reply,
                    Ok(StepRow {
                        n: 0,
                        outcome: "busy".into(),
                        id: None,
                        message_id: None,
                        detail: None,
                        wait_secs: None,
                    }),
                );
                continue;
            }
            requests.push(r);
        }
        if requests.is_empty() {
            return;
        }
        let steps: Vec<&Step> = requests.iter().map(|r| &r.step).collect();
        let rows = match self.execute(&steps).await {
            Ok(rows) => rows,
            Err(e) => {
                // The connection is dropped (its locks with it); the keys
                // of this batch are no longer held, the others are taken
                // again on the next connection.
                self.conn = None;
                for r in &requests {
                    if let Some(key) = r.step.key()
                        && !matches!(r.step, Step::Begin { .. })
                    {
                        self.held.remove(key);
                    }
                }
                tracing::warn!(error = %e, steps = requests.len(), "send log writer: a batch failed; its senders retry");
                for r in requests {
                    answer(r.reply, Err(SendLogError(e.to_string())));
                }
                return;
            }
        };
        let mut rows = rows.into_iter();
        for (n, r) in requests.into_iter().enumerate() {
            let row = rows.next().filter(|row| row.n as usize == n + 1);
            let Some(row) = row else {
                answer(
                    r.reply,
                    Err(SendLogError(
                        "dkl_send_steps returned fewer rows than steps".into(),
                    )),
                );
                continue;
            };
            match &r.step {
                Step::Begin { dedup_key, .. }
                    if matches!(row.outcome.as_str(), "send" | "wait") =>
                {
                    self.held.insert(dedup_key.clone());
                }
                Step::Finish { dedup_key, .. } | Step::Unlock { dedup_key } => {
                    self.held.remove(dedup_key);
                }
                _ => {}
            }
            answer(r.reply, Ok(row));
        }
    }

    async fn execute(&mut self, steps: &[&Step]) -> Result<Vec<StepRow>, sqlx::Error> {
        if self.conn.is_none() {
            let mut conn = self.pool.connect_options().connect().await?;
            if !self.held.is_empty() {
                let keys: Vec<&String> = self.held.iter().collect();
                let lost: Vec<String> =
                    sqlx::query_scalar("SELECT k FROM unnest($1::text[]) k WHERE NOT pg_try_advisory_lock(hashtextextended(k, 1937))")
                        .bind(&keys)
                        .fetch_all(&mut conn)
                        .await?;
                if !lost.is_empty() {
                    tracing::warn!(keys = ?lost, "send log writer reconnected; another session took these messages' locks meanwhile");
                }
            }
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let running = sqlx::query_as::<_, StepRow>("SELECT * FROM dkl_send_steps($1)")
            .bind(sqlx::types::Json(steps))
            .fetch_all(conn);
        match tokio::time::timeout(Duration::from_secs(20), running).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 20 s",
            ))),
        }
    }
}

fn answer(reply: Option<Reply>, result: Result<StepRow, SendLogError>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}
