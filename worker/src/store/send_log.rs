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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dkl_shared::jobs::storable_text;
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
        /// The begin it ends (see `Writer::held`); not read by SQL.
        token: u64,
        status: &'static str,
        code: Option<u16>,
        reply: Option<String>,
        error: Option<String>,
    },
    Unlock {
        dedup_key: String,
        /// The begin it ends (see `Writer::held`); not read by SQL.
        token: u64,
    },
}

impl Step {
    fn key(&self) -> Option<&str> {
        match self {
            Self::Begin { dedup_key, .. }
            | Self::Finish { dedup_key, .. }
            | Self::Unlock { dedup_key, .. } => Some(dedup_key),
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

/// A step's row, and for a begin that took the key's lock, its guard. The
/// writer makes the guard, so a sender that went away before it got the
/// answer (its job timed out) drops it unread, and the lock is released.
struct Answer {
    row: StepRow,
    guard: Option<KeyGuard>,
}

type Reply = oneshot::Sender<Result<Answer, SendLogError>>;

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
    token: u64,
    id: Uuid,
    tx: mpsc::UnboundedSender<Request>,
    done: bool,
    on_the_wire: bool,
}

impl KeyGuard {
    /// Notes that the message's SMTP transaction begins: from now on a
    /// sender that goes away may have delivered it.
    pub fn on_the_wire(&mut self) {
        self.on_the_wire = true;
    }
}

impl std::fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGuard").field("key", &self.key).finish()
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let dedup_key = std::mem::take(&mut self.key);
        // Gone during the transaction: the row keeps `smtp_started_at` (it
        // may have been delivered) and only the lock goes. Gone before it:
        // nothing left, and the row says so.
        let token = self.token;
        let step = if self.on_the_wire {
            Step::Unlock { dedup_key, token }
        } else {
            released(self.id, dedup_key, token)
        };
        let _ = self.tx.send(Request { step, reply: None });
    }
}

/// The finish step of a message whose sender stopped before its SMTP
/// transaction began.
fn released(id: Uuid, dedup_key: String, token: u64) -> Step {
    Step::Finish {
        id,
        dedup_key,
        token,
        status: "released",
        code: None,
        reply: None,
        error: Some("its sender stopped (job timed out or cancelled) before the SMTP transaction began; its next attempt sends it".into()),
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
                    let writer = Writer {
                        pool: self.pool.clone(),
                        me: tx.downgrade(),
                        conn: None,
                        backend_pid: None,
                        held: HashMap::new(),
                        next_token: 0,
                    };
                    tokio::spawn(writer.run(rx));
                    tx
                })
                .collect()
        });
        let hash = key
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        &writers[(hash % writers.len() as u64) as usize]
    }

    async fn run(&self, key: &str, step: Step) -> Result<Answer, SendLogError> {
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
                    // jsonb refuses NUL, and one refused value would fail
                    // every step of the batch.
                    subject: storable_text(m.subject),
                    template: m.template_name.map(String::from),
                    kind: m.mail_kind.to_string(),
                    bulk,
                    smtp: m.smtp_config.to_string(),
                    job_id: m.job_id.to_string(),
                    message_id: m.message_id.to_string(),
                    reply_to: m.reply_to.map(storable_text),
                    rate_per_second: rate.per_second,
                    rate_per_hour: rate.per_hour,
                },
            )
            .await?;
        let Answer { row, guard } = row;
        let begun = begun_from(row, m.message_id)?;
        if begun.holds_lock() && guard.is_none() {
            return Err(SendLogError("the writer is shutting down".into()));
        }
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
            .await?
            .row;
        if row.outcome != "send" && row.outcome != "wait" {
            return Err(SendLogError(row.detail.unwrap_or_else(|| {
                format!("the start step answered `{}`", row.outcome)
            })));
        }
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
            token: guard.token,
            status: status.as_str(),
            code,
            reply: reply.map(storable_text),
            error: error.map(storable_text),
        };
        // Queued, the finish runs (and releases the lock) or its session
        // dies (and the lock with it): the guard must not queue an unlock of
        // its own after it, which could release a later begin's lock.
        guard.done = true;
        let row = self.run(&guard.key, step).await?.row;
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
    /// Its own queue, for the guards it hands out (weak: the writer ends
    /// when every handle and guard is gone).
    me: mpsc::WeakUnboundedSender<Request>,
    conn: Option<PgConnection>,
    /// The server process of `conn`: after a failure it may still hold the
    /// locks (a statement cut short by a timeout runs on), so the next
    /// connection ends it before taking them again.
    backend_pid: Option<i32>,
    /// Keys whose lock this session holds (between begin and finish), each
    /// with the token of the begin that took it. A finish or unlock with
    /// another token is stale (its begin's lock is long gone) and is dropped,
    /// so it can never release a later begin's lock.
    held: HashMap<String, u64>,
    next_token: u64,
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
        let requests = self.answer_without_the_database(batch);
        if requests.is_empty() {
            return;
        }
        let steps: Vec<&Step> = requests.iter().map(|r| &r.step).collect();
        match self.execute(&steps).await {
            Ok(rows) => self.answer(requests, rows),
            Err(e) => {
                // The connection goes (the locks its statement may have
                // taken with it); the next one takes the held keys again.
                self.conn = None;
                if requests.len() > 1 {
                    // One bad step must not fail the others: each alone.
                    tracing::warn!(error = %e, steps = requests.len(), "send log writer: a batch failed; writing its steps one by one");
                    for r in requests {
                        Box::pin(self.write(vec![r])).await;
                    }
                    return;
                }
                tracing::warn!(error = %e, "send log writer: a step failed; its sender retries");
                for r in requests {
                    if let Some(key) = r.step.key()
                        && !matches!(r.step, Step::Begin { .. })
                    {
                        self.held.remove(key);
                    }
                    answer(r.reply, Err(SendLogError(e.to_string())));
                }
            }
        }
    }

    /// Answers what needs no database: a begin for a key this session
    /// holds (or begins twice in this batch) is busy, since its advisory lock
    /// would be granted again (it is re-entrant); a stale finish or unlock
    /// is done. The rest is returned.
    fn answer_without_the_database(&mut self, batch: Vec<Request>) -> Vec<Request> {
        let mut beginning = HashSet::new();
        let mut requests = Vec::with_capacity(batch.len());
        for r in batch {
            let stale = match &r.step {
                Step::Begin { dedup_key, .. } => {
                    if self.held.contains_key(dedup_key) || !beginning.insert(dedup_key.clone()) {
                        answer(
                            r.reply,
                            Ok(Answer {
                                row: step_row("busy"),
                                guard: None,
                            }),
                        );
                        continue;
                    }
                    false
                }
                Step::Finish {
                    dedup_key, token, ..
                }
                | Step::Unlock { dedup_key, token } => self.held.get(dedup_key) != Some(token),
                Step::Start { .. } => false,
            };
            if stale {
                answer(
                    r.reply,
                    Ok(Answer {
                        row: step_row("done"),
                        guard: None,
                    }),
                );
                continue;
            }
            requests.push(r);
        }
        requests
    }

    fn answer(&mut self, requests: Vec<Request>, rows: Vec<StepRow>) {
        let mut by_n: HashMap<i32, StepRow> = rows.into_iter().map(|row| (row.n, row)).collect();
        for (n, r) in requests.into_iter().enumerate() {
            let Some(row) = by_n.remove(&(n as i32 + 1)) else {
                // Not run (it cannot happen with dkl_send_steps); a begin
                // that may have locked is released by its guard's absence
                // only if we unlock here.
                if let Step::Begin { dedup_key, .. } = &r.step {
                    self.unlock_later(dedup_key);
                }
                answer(
                    r.reply,
                    Err(SendLogError(
                        "dkl_send_steps returned no row for a step".into(),
                    )),
                );
                continue;
            };
            let mut guard = None;
            match &r.step {
                Step::Begin { dedup_key, .. }
                    if matches!(row.outcome.as_str(), "send" | "wait") =>
                {
                    self.next_token += 1;
                    let token = self.next_token;
                    self.held.insert(dedup_key.clone(), token);
                    guard = match (row.id, self.me.upgrade()) {
                        (Some(id), Some(tx)) => Some(KeyGuard {
                            key: dedup_key.clone(),
                            token,
                            id,
                            tx,
                            done: false,
                            on_the_wire: false,
                        }),
                        _ => None,
                    };
                }
                Step::Finish { dedup_key, .. } | Step::Unlock { dedup_key, .. } => {
                    self.held.remove(dedup_key);
                }
                _ => {}
            }
            // A sender that went away meanwhile drops the answer unread,
            // and with it the guard, which releases the key.
            answer(r.reply, Ok(Answer { row, guard }));
        }
    }

    /// Queues an unlock of `key` whatever begin holds it.
    fn unlock_later(&mut self, key: &str) {
        self.next_token += 1;
        let token = self.next_token;
        self.held.insert(key.to_string(), token);
        if let Some(tx) = self.me.upgrade() {
            let _ = tx.send(Request {
                step: Step::Unlock {
                    dedup_key: key.to_string(),
                    token,
                },
                reply: None,
            });
        }
    }

    async fn execute(&mut self, steps: &[&Step]) -> Result<Vec<StepRow>, sqlx::Error> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
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

    /// A new connection that holds the locks of the keys in flight again.
    async fn connect(&mut self) -> Result<PgConnection, sqlx::Error> {
        let options = self.pool.connect_options();
        let connecting = options.connect();
        let mut conn = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no connection within 10 s",
                ))
            })??;
        if let Some(old) = self.backend_pid.take() {
            // Waits (up to 5 s) until the old session is gone with its locks.
            let _: Option<bool> = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(old)
                .fetch_one(&mut conn)
                .await
                .ok();
        }
        self.backend_pid = Some(
            sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await?,
        );
        if !self.held.is_empty() {
            let keys: Vec<&String> = self.held.keys().collect();
            let lost: Vec<String> =
                sqlx::query_scalar("SELECT k FROM unnest($1::text[]) k WHERE NOT pg_try_advisory_lock(hashtextextended(k, 1937))")
                    .bind(&keys)
                    .fetch_all(&mut conn)
                    .await?;
            if !lost.is_empty() {
                tracing::warn!(keys = ?lost, "send log writer reconnected; another session took these messages' locks meanwhile");
            }
        }
        Ok(conn)
    }
}

fn step_row(outcome: &str) -> StepRow {
    StepRow {
        n: 0,
        outcome: outcome.into(),
        id: None,
        message_id: None,
        detail: None,
        wait_secs: None,
    }
}

fn answer(reply: Option<Reply>, result: Result<Answer, SendLogError>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}
