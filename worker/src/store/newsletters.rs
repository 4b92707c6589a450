//! `newsletters`, `newsletter_deliveries` and `newsletter_senders`: the
//! statements of the newsletter send path and of the admin commands. The
//! state machine itself lives in SQL (migration `…_newsletters.sql`), so an
//! admin's plain `UPDATE` obeys the same rules as `dklctl`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// `newsletters.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NewsletterStatus {
    /// Being written; nothing happens.
    Draft,
    /// Goes out at `scheduled_send_time` (NULL: now).
    Scheduled,
    /// Recipients fixed; deliveries going out.
    Sending,
    /// Stopped mid-send by an admin; resumes where it stopped.
    Paused,
    /// Every delivery final.
    Sent,
    /// Stopped for good; undelivered recipients are `cancelled`.
    Cancelled,
}

impl NewsletterStatus {
    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Scheduled => "scheduled",
            Self::Sending => "sending",
            Self::Paused => "paused",
            Self::Sent => "sent",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for NewsletterStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Draft,
            Self::Scheduled,
            Self::Sending,
            Self::Paused,
            Self::Sent,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown newsletter status `{s}`"))
    }
}

dkl_shared::decode_from_text!(NewsletterStatus);

/// `newsletter_deliveries.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting to be sent (or to be retried at `next_attempt_at`).
    Pending,
    /// Taken by a sender; not yet on the wire.
    Claimed,
    /// Its SMTP transaction may have begun.
    Sending,
    /// The server answered 250.
    Sent,
    /// Refused (5xx), retries used up, or not renderable.
    Failed,
    /// The address became suppressed before it went.
    Skipped,
    /// Its sender died mid-transaction: maybe delivered; never resent by itself.
    Unknown,
    /// The newsletter was cancelled before it went.
    Cancelled,
}

impl DeliveryStatus {
    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Claimed => "claimed",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Unknown => "unknown",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every state, in the order a delivery moves through them.
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Claimed,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Skipped,
        Self::Unknown,
        Self::Cancelled,
    ];
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown delivery status `{s}`"))
    }
}

dkl_shared::decode_from_text!(DeliveryStatus);

/// One `newsletters` row.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Newsletter {
    /// Its id.
    pub id: Uuid,
    /// Title; the subject of the mail.
    pub title: String,
    /// The content as text (used as the body when there is no HTML).
    pub content: String,
    /// The content as HTML, written by an admin.
    pub html_content: Option<String>,
    /// Where it is.
    pub status: NewsletterStatus,
    /// When it goes out (NULL with `scheduled`: now).
    pub scheduled_send_time: Option<DateTime<Utc>>,
    /// When its recipients were fixed.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last delivery became final.
    pub sent_at: Option<DateTime<Utc>>,
    /// Recipients fixed at the start.
    pub recipients_total: Option<i32>,
}

const COLUMNS: &str = "id, title, content, html_content, status, scheduled_send_time, started_at, sent_at, recipients_total";

/// The newsletter `id`.
pub async fn get(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Newsletter>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM newsletters WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Every newsletter, newest first.
pub async fn list(
    executor: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<Newsletter>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM newsletters ORDER BY created_at DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// A new draft.
pub async fn create(
    executor: impl PgExecutor<'_>,
    title: &str,
    content: &str,
    html_content: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO newsletters (title, content, html_content) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(title)
    .bind(content)
    .bind(html_content)
    .fetch_one(executor)
    .await
}

/// Schedules `id` at `at` (None: now): the same `UPDATE` an admin writes.
/// The table's trigger refuses what makes no sense (a sent newsletter).
pub async fn schedule(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    at: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE newsletters SET status = 'scheduled', scheduled_send_time = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(at)
    .execute(executor)
    .await?
    .rows_affected()
        == 1)
}

/// Sets `id`'s status (pause, resume, cancel); the trigger checks it.
pub async fn set_status(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    status: NewsletterStatus,
) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE newsletters SET status = $2 WHERE id = $1")
            .bind(id)
            .bind(status.as_str())
            .execute(executor)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Fixes the recipients and moves a draft or scheduled newsletter to
/// `sending`; returns its status afterwards (None: no such newsletter).
pub async fn start(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<NewsletterStatus>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT dkl_newsletter_start($1)")
        .bind(id)
        .fetch_one(executor)
        .await?;
    status
        .map(|s| s.parse().map_err(|e: String| sqlx::Error::Decode(e.into())))
        .transpose()
}

/// Enqueues `id`'s lane jobs (on the `newsletter` queue) to run now; lanes
/// that exist already keep running.
pub async fn enqueue_lanes(executor: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT dkl_newsletter_enqueue($1, now())")
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Registers the session of `conn` as a sender; its deliveries are
/// reclaimed once this session is gone.
pub async fn register_sender(conn: &mut PgConnection, worker: &str) -> Result<Uuid, sqlx::Error> {
    // The lock first: a sender row is never seen without its lock held.
    let id = Uuid::new_v4();
    sqlx::query("SELECT pg_advisory_lock(dkl_newsletter_sender_key($1))")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO newsletter_senders (id, pid, backend_start, worker)
         SELECT $1, pid, backend_start, $2 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .bind(id)
    .bind(worker)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

/// Deliveries of dead senders: claimed ones back to pending, sending ones
/// `unknown`. Returns (returned, unknown).
pub async fn reclaim(executor: impl PgExecutor<'_>) -> Result<(i32, i32), sqlx::Error> {
    sqlx::query_as("SELECT returned, unknown FROM dkl_newsletter_reclaim()")
        .fetch_one(executor)
        .await
}

/// A delivery taken by a sender.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// `newsletter_deliveries.id`.
    pub id: i64,
    /// Address (lower case).
    pub email: String,
    /// The recipient's name, when known.
    pub naam: Option<String>,
    /// The subscriber.
    pub gebruiker_id: Option<Uuid>,
    /// The Message-ID it goes out with (kept across a resend).
    pub message_id: String,
}

/// Claims up to `limit` due deliveries of a sending newsletter for `sender`.
/// New Message-IDs are made in `domain`. (Ordered as the pending index is,
/// so the claim walks the index to the first few instead of reading and
/// sorting every pending row: 15 ms a claim at 30,000 pending otherwise.)
///
/// `after`: only deliveries with a higher id (the caller's scan position,
/// so a claim does not walk past the index entries of everything already
/// sent, which stay until a vacuum: 8,500 buffers a claim at 20,000 sent).
/// A caller that finds nothing after its position looks again from 0.
pub async fn claim(
    executor: impl PgExecutor<'_>,
    newsletter: Uuid,
    sender: Uuid,
    domain: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // The limit is written into the statement: as a parameter, the
    // statement's generic plan (PostgreSQL's after five runs) assumes a
    // tenth of the table and hash-joins a sequential scan of every
    // delivery (30 ms a claim at 30,000).
    let limit = limit.clamp(1, 10_000);
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE newsletter_deliveries d
            SET status = 'claimed', sender_id = $2, updated_at = now(),
                message_id = coalesce(d.message_id, '<' || gen_random_uuid() || '@' || $3 || '>')
          WHERE d.id IN (SELECT p.id FROM newsletter_deliveries p
                          WHERE p.newsletter_id = $1 AND p.id > $4 AND p.status = 'pending'
                            AND p.next_attempt_at <= now()
                          ORDER BY p.newsletter_id, p.id LIMIT {limit} FOR UPDATE SKIP LOCKED)
            AND EXISTS (SELECT 1 FROM newsletters n WHERE n.id = $1 AND n.status = 'sending')
          RETURNING d.id, d.email, d.naam, d.gebruiker_id, d.message_id"
    )))
    .bind(newsletter)
    .bind(sender)
    .bind(domain)
    .bind(after)
    .fetch_all(executor)
    .await
}

/// Puts claimed deliveries that were not sent back to pending.
pub async fn release(
    executor: impl PgExecutor<'_>,
    sender: Uuid,
    ids: &[i64],
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE newsletter_deliveries SET status = 'pending', sender_id = NULL, updated_at = now()
          WHERE id = ANY ($2) AND status = 'claimed' AND sender_id IS NOT DISTINCT FROM $1",
    )
    .bind(sender)
    .bind(ids)
    .execute(executor)
    .await?
    .rows_affected())
}

/// What became of a mark (`claimed` → `sending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Committed as `sending`: send it now.
    Sending,
    /// Its address was suppressed meanwhile: not sent, recorded.
    Skipped,
    /// Not this sender's any more, or the newsletter stopped sending
    /// (paused, cancelled): put back, not sent.
    Released,
}

/// How a delivery's SMTP transaction ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The delivery.
    pub id: i64,
    /// The sender that marked it `sending` (the outcome is of that attempt only).
    pub sender: Uuid,
    /// What it became.
    pub result: OutcomeKind,
    /// The server's reply code.
    pub code: Option<u16>,
    /// The server's reply text.
    pub reply: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The outcome states a sender writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// 250.
    Sent,
    /// 5xx, or not renderable: final.
    Failed,
    /// Sent but never answered: maybe delivered.
    Unknown,
    /// 4xx or no connection: tried again after a backoff.
    Retry,
}

impl OutcomeKind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Retry => "retry",
        }
    }
}

/// Settings of a write.
#[derive(Debug, Clone)]
pub struct WriteSettings {
    /// The SMTP configuration, as logged in `verzonden_emails`.
    pub smtp: String,
    /// Tries before a retried delivery fails.
    pub max_attempts: u32,
    /// The first retry's wait.
    pub backoff_secs: u32,
}

/// Marks and outcomes of one sender in one round trip and one commit.
pub async fn write(
    conn: &mut PgConnection,
    sender: Uuid,
    settings: &WriteSettings,
    marks: &[i64],
    outcomes: &[Outcome],
) -> Result<Vec<(i64, Marked)>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, outcome FROM dkl_newsletter_write($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(sender)
    .bind(&settings.smtp)
    .bind(settings.max_attempts as i32)
    .bind(settings.backoff_secs as i32)
    .bind(marks)
    .bind(outcomes.iter().map(|o| o.id).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.sender).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.result.as_str()).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.code.map(i32::from)).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.reply.clone()).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.error.clone()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, outcome)| {
            let marked = match outcome.as_str() {
                "sending" => Marked::Sending,
                "skipped" => Marked::Skipped,
                _ => Marked::Released,
            };
            (id, marked)
        })
        .collect())
}

/// Marks a claimed delivery that cannot be rendered `failed` with the reason.
pub async fn fail_unsendable(
    executor: impl PgExecutor<'_>,
    sender: Uuid,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH f AS (
             UPDATE newsletter_deliveries SET status = 'failed', error = $3, attempts = attempts + 1, updated_at = now()
              WHERE id = $2 AND status = 'claimed' AND sender_id IS NOT DISTINCT FROM $1 RETURNING *)
         INSERT INTO verzonden_emails (dedup_key, recipient_email, subject, template_name, status, error_message,
                                       mail_kind, message_id, newsletter_id, sent_at)
         SELECT 'newsletter:' || f.newsletter_id || ':' || f.email, f.email, n.title, 'newsletter', 'failed', f.error,
                'newsletter', f.message_id, f.newsletter_id, now()
           FROM f JOIN newsletters n ON n.id = f.newsletter_id
         ON CONFLICT (dedup_key) DO UPDATE SET status = 'failed', error_message = EXCLUDED.error_message, updated_at = now()",
    )
    .bind(sender)
    .bind(id)
    .bind(error)
    .execute(executor)
    .await?;
    Ok(())
}

/// Marks `id` sent when no delivery is left; true when it did.
pub async fn finish(executor: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT dkl_newsletter_finish($1)")
        .bind(id)
        .fetch_one(executor)
        .await
}

/// What is left of a sending newsletter.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Remaining {
    /// Pending deliveries due now.
    pub due: i64,
    /// Claimed or being sent.
    pub in_flight: i64,
    /// The earliest retry still ahead.
    pub next_retry: Option<DateTime<Utc>>,
}

/// What is left of newsletter `id`.
pub async fn remaining(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Remaining, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due,
                count(*) FILTER (WHERE status IN ('claimed', 'sending')) AS in_flight,
                min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at > now()) AS next_retry
           FROM newsletter_deliveries WHERE newsletter_id = $1 AND status IN ('pending', 'claimed', 'sending')",
    )
    .bind(id)
    .fetch_one(executor)
    .await
}

/// Puts `id`'s unknown deliveries back to pending; returns how many.
pub async fn resend_unknown(executor: impl PgExecutor<'_>, id: Uuid) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT dkl_newsletter_resend_unknown($1)")
        .bind(id)
        .fetch_one(executor)
        .await
}

/// One row of the `newsletter_progress` view.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Progress {
    /// The newsletter.
    pub newsletter_id: Uuid,
    /// Its title.
    pub title: String,
    /// Its status.
    pub status: NewsletterStatus,
    /// When it goes out.
    pub scheduled_send_time: Option<DateTime<Utc>>,
    /// When sending started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it was done.
    pub sent_at: Option<DateTime<Utc>>,
    /// Recipients.
    pub total: i64,
    /// Waiting (including retries ahead).
    pub pending: i64,
    /// Claimed or on the wire.
    pub in_flight: i64,
    /// Accepted by the server.
    pub sent: i64,
    /// Refused or given up.
    pub failed: i64,
    /// Suppressed meanwhile.
    pub skipped: i64,
    /// Maybe delivered (a worker died mid-transaction).
    pub unknown: i64,
    /// Not sent because the newsletter was cancelled.
    pub cancelled: i64,
    /// Messages per second over the last minute.
    pub per_second: f64,
    /// Time left at that rate, in seconds.
    pub eta_secs: Option<f64>,
}

// The select list of `newsletter_progress`, as a macro so statements stay
// `&'static str` literals.
macro_rules! progress_select {
    () => {
        "SELECT newsletter_id, title, status, scheduled_send_time, started_at, sent_at, total, pending, in_flight,
                sent, failed, skipped, unknown, cancelled, per_second::float8 AS per_second,
                extract(epoch FROM eta)::float8 AS eta_secs
           FROM newsletter_progress"
    };
}

/// Progress of `id`.
pub async fn progress(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Progress>, sqlx::Error> {
    sqlx::query_as(concat!(progress_select!(), " WHERE newsletter_id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Progress of the newest `limit` newsletters (`active_only`: those
/// scheduled, sending or paused), newest first.
pub async fn progress_list(
    executor: impl PgExecutor<'_>,
    active_only: bool,
    limit: i64,
) -> Result<Vec<Progress>, sqlx::Error> {
    sqlx::query_as(concat!(
        progress_select!(),
        " WHERE NOT $1 OR status IN ('scheduled', 'sending', 'paused')
          ORDER BY coalesce(started_at, scheduled_send_time) DESC NULLS FIRST, newsletter_id
          LIMIT $2"
    ))
    .bind(active_only)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Progress of the newsletters scheduled, sending or paused.
pub async fn active_progress(executor: impl PgExecutor<'_>) -> Result<Vec<Progress>, sqlx::Error> {
    progress_list(executor, true, 20).await
}

/// Deliveries by state of the newsletters not finished long ago (sending,
/// paused, or sent or cancelled in the last day), for `/metrics`.
pub async fn deliveries_by_state(
    executor: impl PgExecutor<'_>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.status, count(*) FROM newsletter_deliveries d
           JOIN newsletters n ON n.id = d.newsletter_id
          WHERE n.status IN ('sending', 'paused')
             OR coalesce(n.sent_at, n.cancelled_at) > now() - interval '1 day'
          GROUP BY d.status",
    )
    .fetch_all(executor)
    .await
}

/// The secret unsubscribe tokens are signed with when none is configured:
/// made once (random), kept in `dkl_secrets`, the same for every worker.
pub async fn stored_unsubscribe_secret(pool: &sqlx::PgPool) -> Result<String, sqlx::Error> {
    // Two statements: the select sees a row another worker made at the same
    // moment (one statement's snapshot would not).
    sqlx::query(
        "INSERT INTO dkl_secrets (name, value)
         VALUES ('unsubscribe', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
         ON CONFLICT (name) DO NOTHING",
    )
    .execute(pool)
    .await?;
    sqlx::query_scalar("SELECT value FROM dkl_secrets WHERE name = 'unsubscribe'")
        .fetch_one(pool)
        .await
}

/// Unsubscribes subscriber `gebruiker` (or, without one, `address`) from
/// newsletters: `newsletter_subscribed = false` and an `unsubscribe`
/// suppression of scope `bulk` (an existing one of scope `all` stays).
/// Returns the address, or None when there is no such subscriber.
pub async fn unsubscribe(
    conn: &mut PgConnection,
    gebruiker: Option<Uuid>,
    address: &str,
    source: &str,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let found: Option<String> = match gebruiker {
        Some(id) => {
            sqlx::query_scalar(
                "UPDATE gebruikers SET newsletter_subscribed = false WHERE id = $1 RETURNING lower(email)",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => Some(address.to_lowercase()),
    };
    if let Some(address) = &found {
        sqlx::query(
            "UPDATE gebruikers SET newsletter_subscribed = false WHERE lower(email) = $1 AND newsletter_subscribed",
        )
        .bind(address)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO email_suppressions (address, scope, reason, source) VALUES ($1, 'bulk', 'unsubscribe', $2)
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(address)
        .bind(source)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
