//! The delivery writer: every newsletter sender of this process commits its
//! marks (`claimed` → `sending`, before the SMTP transaction) and outcomes
//! (after it) through one task on one connection of its own, many senders'
//! steps per round trip (`dkl_newsletter_write`).
//!
//! The connection's session is the process's *sender* (`newsletter_senders`):
//! deliveries are claimed in its name, and when the session is gone (the
//! process died, or the connection broke) any lane returns its claimed
//! deliveries to `pending` and marks its `sending` ones `unknown`. After a
//! reconnect the writer is a new sender: a mark asked for in the old one's
//! name is refused (the delivery is someone else's to return), so nothing
//! claimed before a break is ever sent by two processes. Outcomes are kept
//! and written on the next connection: an outcome needs no ownership (a
//! `sent` even overrides the `unknown` a reclaim may have written).

use std::time::Duration;

use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::store::newsletters::{self, Marked, Outcome, WriteSettings};

/// The most marks and outcomes in one round trip.
const MAX_BATCH: usize = 512;

/// A write that takes longer has a dead connection (or a lock it waits on):
/// the session is dropped and a new one made.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A write that could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("newsletter delivery writer: {0}")]
pub struct WriteError(String);

enum Request {
    Sender(oneshot::Sender<Result<Uuid, WriteError>>),
    Mark {
        sender: Uuid,
        id: i64,
        reply: oneshot::Sender<Result<Marked, WriteError>>,
    },
    Outcome(Outcome),
    Flush(oneshot::Sender<()>),
}

/// Handle on the writer task (started on first use, ends with the handle).
pub struct DeliveryWriter {
    pool: PgPool,
    settings: WriteSettings,
    tx: std::sync::OnceLock<mpsc::UnboundedSender<Request>>,
}

impl DeliveryWriter {
    /// A writer on a connection made from `pool`'s options.
    pub fn new(pool: &PgPool, settings: WriteSettings) -> Self {
        Self {
            pool: pool.clone(),
            settings,
            tx: std::sync::OnceLock::new(),
        }
    }

    fn tx(&self) -> &mpsc::UnboundedSender<Request> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = Task {
                pool: self.pool.clone(),
                settings: self.settings.clone(),
                conn: None,
                outcomes: Vec::new(),
                flushes: Vec::new(),
            };
            tokio::spawn(task.run(rx));
            tx
        })
    }

    fn gone() -> WriteError {
        WriteError("the writer task stopped".into())
    }

    /// The sender id of the writer's current session (connecting if needed).
    pub async fn sender(&self) -> Result<Uuid, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx()
            .send(Request::Sender(reply))
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    /// Commits delivery `id`, claimed by `sender`, as `sending` (or finds it
    /// suppressed, or no longer to send).
    pub async fn mark(&self, sender: Uuid, id: i64) -> Result<Marked, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx()
            .send(Request::Mark { sender, id, reply })
            .map_err(|_| Self::gone())?;
        answer.await.map_err(|_| Self::gone())?
    }

    /// Queues an outcome; [`DeliveryWriter::flush`] waits until it is written.
    pub fn outcome(&self, outcome: Outcome) {
        if self.tx().send(Request::Outcome(outcome)).is_err() {
            tracing::error!(
                "newsletter delivery writer stopped; an outcome is lost (its delivery becomes unknown)"
            );
        }
    }

    /// Waits until every outcome queued before is committed.
    pub async fn flush(&self) {
        let (reply, answer) = oneshot::channel();
        if self.tx().send(Request::Flush(reply)).is_ok() {
            let _ = answer.await;
        }
    }
}

type SenderReply = oneshot::Sender<Result<Uuid, WriteError>>;
type MarkRequest = (Uuid, i64, oneshot::Sender<Result<Marked, WriteError>>);

struct Task {
    pool: PgPool,
    settings: WriteSettings,
    conn: Option<(PgConnection, Uuid)>,
    /// Outcomes not yet committed (kept across a reconnect).
    outcomes: Vec<Outcome>,
    /// Flushes waiting for `outcomes` to be empty.
    flushes: Vec<oneshot::Sender<()>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut failures = 0u32;
        loop {
            let first = if self.outcomes.is_empty() {
                match rx.recv().await {
                    Some(r) => Some(r),
                    None => break,
                }
            } else {
                rx.try_recv().ok()
            };
            let mut senders = Vec::new();
            let mut marks = Vec::new();
            if let Some(r) = first {
                self.take(r, &mut senders, &mut marks);
            }
            while marks.len() + self.outcomes.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => self.take(r, &mut senders, &mut marks),
                    Err(_) => break,
                }
            }
            let result = self.write(&mut senders, marks).await;
            if self.outcomes.is_empty() {
                self.answer_flushes();
            }
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "newsletter delivery writer: write failed; reconnecting");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        // The handle is gone: write what is left, once.
        if !self.outcomes.is_empty() {
            let _ = self.write(&mut Vec::new(), Vec::new()).await;
        }
    }

    fn take(&mut self, r: Request, senders: &mut Vec<SenderReply>, marks: &mut Vec<MarkRequest>) {
        match r {
            Request::Sender(reply) => senders.push(reply),
            Request::Mark { sender, id, reply } => marks.push((sender, id, reply)),
            Request::Outcome(o) => self.outcomes.push(storable(o)),
            Request::Flush(reply) => self.flushes.push(reply),
        }
    }

    async fn write(
        &mut self,
        senders: &mut Vec<SenderReply>,
        marks: Vec<MarkRequest>,
    ) -> Result<(), WriteError> {
        let me = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                for reply in senders.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, _, reply) in marks {
                    let _ = reply.send(Err(e.clone()));
                }
                return Err(e);
            }
        };
        for reply in senders.drain(..) {
            let _ = reply.send(Ok(me));
        }
        // A mark in an earlier session's name: that session's deliveries
        // are returned by whoever reclaims them, never sent from here.
        let (ours, stale): (Vec<_>, Vec<_>) = marks.into_iter().partition(|(s, _, _)| *s == me);
        for (_, _, reply) in stale {
            let _ = reply.send(Ok(Marked::Released));
        }
        if ours.is_empty() && self.outcomes.is_empty() {
            self.answer_flushes();
            return Ok(());
        }
        let ids: Vec<i64> = ours.iter().map(|(_, id, _)| *id).collect();
        let Some((conn, _)) = self.conn.as_mut() else {
            return Err(WriteError("not connected".into()));
        };
        let writing = newsletters::write(conn, me, &self.settings, &ids, &self.outcomes);
        let written = tokio::time::timeout(WRITE_TIMEOUT, writing)
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
        match written {
            Ok(rows) => {
                let marked: std::collections::HashMap<i64, Marked> = rows.into_iter().collect();
                for (_, id, reply) in ours {
                    let _ = reply.send(Ok(marked.get(&id).copied().unwrap_or(Marked::Released)));
                }
                self.outcomes.clear();
                self.answer_flushes();
                Ok(())
            }
            Err(e) => {
                // The session goes: its claimed deliveries are returned by
                // the next reclaim, never sent by this process.
                self.conn = None;
                let e = WriteError(e.to_string());
                for (_, _, reply) in ours {
                    let _ = reply.send(Err(e.clone()));
                }
                Err(e)
            }
        }
    }

    fn answer_flushes(&mut self) {
        for reply in self.flushes.drain(..) {
            let _ = reply.send(());
        }
    }

    /// Connects (registering a new sender) when not connected; returns the
    /// current sender.
    async fn connect(&mut self) -> Result<Uuid, WriteError> {
        if self.conn.is_none() {
            let connected = async {
                let mut conn = self.pool.connect_options().connect().await?;
                dkl_shared::db::disable_nagle(&mut conn).await?;
                // A write never waits long on a lock, nor outlives its client.
                sqlx::raw_sql(
                    "SET lock_timeout = '10s'; SET statement_timeout = '25s';
                     SET idle_in_transaction_session_timeout = '30s'",
                )
                .execute(&mut conn)
                .await?;
                let me = newsletters::register_sender(&mut conn, &worker_name()).await?;
                Ok::<_, sqlx::Error>((conn, me))
            };
            let (conn, me) = tokio::time::timeout(Duration::from_secs(10), connected)
                .await
                .map_err(|_| WriteError("no database connection within 10 s".into()))?
                .map_err(|e| WriteError(e.to_string()))?;
            tracing::debug!(sender = %me, "newsletter delivery writer connected");
            self.conn = Some((conn, me));
        }
        self.conn
            .as_ref()
            .map(|(_, me)| *me)
            .ok_or_else(|| WriteError("not connected".into()))
    }
}

/// An outcome whose server text can be stored (a NUL byte in a reply would
/// make PostgreSQL refuse the whole batch, again and again).
fn storable(mut o: Outcome) -> Outcome {
    o.reply = o.reply.map(|r| dkl_shared::jobs::storable_text(&r));
    o.error = o.error.map(|e| dkl_shared::jobs::storable_text(&e));
    o
}

/// `host:pid`, as `newsletter_senders.worker` shows it.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}
