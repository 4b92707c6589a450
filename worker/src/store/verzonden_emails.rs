//! `verzonden_emails`: one row per message, written before its SMTP
//! transaction starts, under the message's dedup key, so a repeated job
//! never sends a second copy of a message that was accepted.

use std::time::Duration;

use sqlx::PgExecutor;
use uuid::Uuid;

/// Where a message stands (`verzonden_emails.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Written; not (yet) accepted by the server.
    Queued,
    /// The server answered 250.
    Sent,
    /// Refused (5xx) or retries used up.
    Failed,
    /// A bounce came back.
    Bounced,
    /// The address is suppressed.
    Suppressed,
    /// A bulk mail whose worker died between the 250 and the commit.
    Unknown,
    /// The design's name for queued, from before this system.
    Pending,
}

impl SendStatus {
    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Bounced => "bounced",
            Self::Suppressed => "suppressed",
            Self::Unknown => "unknown",
            Self::Pending => "pending",
        }
    }
}

impl std::str::FromStr for SendStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Queued,
            Self::Sent,
            Self::Failed,
            Self::Bounced,
            Self::Suppressed,
            Self::Unknown,
            Self::Pending,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown verzonden_emails status `{s}`"))
    }
}

dkl_shared::decode_from_text!(SendStatus);

/// A message about to be sent.
#[derive(Debug)]
pub struct NewMessage<'a> {
    /// One row per key, ever.
    pub dedup_key: &'a str,
    /// Recipient.
    pub recipient: &'a str,
    /// Rendered subject.
    pub subject: &'a str,
    /// Template name, when rendered from one.
    pub template_name: Option<&'a str>,
    /// `transactional`, `admin`, `auto_reply` or `newsletter`.
    pub mail_kind: &'a str,
    /// SMTP configuration used.
    pub smtp_config: &'a str,
    /// The job sending it.
    pub job_id: &'a str,
    /// Our Message-ID (with angle brackets).
    pub message_id: &'a str,
    /// Reply-To, if any.
    pub reply_to: Option<&'a str>,
}

/// A configuration's rate limit, as `dkl_take_send_slot` takes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimit {
    /// Messages per second, all workers together.
    pub per_second: Option<u32>,
    /// Messages per hour, all workers together.
    pub per_hour: Option<u32>,
}

impl RateLimit {
    /// True when either limit is set.
    pub fn is_set(&self) -> bool {
        self.per_second.is_some() || self.per_hour.is_some()
    }
}

/// What `begin_send` found, and what the sender does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Begun {
    /// Another session sends this message right now; look again later.
    Busy,
    /// The key belongs to a message to this other address.
    OtherRecipient(String),
    /// Handled before, with this status: nothing to do.
    Done(SendStatus),
    /// The address is suppressed for this kind of mail (why); row marked.
    Suppressed(String),
    /// A bulk message whose sender died mid-transaction; row marked `unknown`.
    Unknown,
    /// The rate limit is reached: wait this long, then `start_send` (the
    /// message's lock stays held).
    Wait {
        /// Row id.
        id: Uuid,
        /// The Message-ID to send with (the first try's, on a resend).
        message_id: String,
        /// How long.
        wait: Duration,
    },
    /// Send it now: `smtp_started_at` is set and the lock is held.
    Send {
        /// Row id.
        id: Uuid,
        /// The Message-ID to send with (the first try's, on a resend).
        message_id: String,
    },
}

impl Begun {
    /// True when the session holds the message's lock (`dkl_finish_send`
    /// or the session's end releases it).
    pub fn holds_lock(&self) -> bool {
        matches!(self, Self::Wait { .. } | Self::Send { .. })
    }
}

/// How a message's SMTP transaction ended.
#[derive(Debug, Clone, Copy)]
pub enum Finish<'a> {
    /// Accepted with this reply.
    Sent {
        /// Reply code.
        code: u16,
        /// Reply text.
        reply: &'a str,
    },
    /// A passing failure: it stays `queued`, `retry_count` counts it.
    Retry {
        /// Reply code, if the server gave one.
        code: Option<u16>,
        /// What happened.
        error: &'a str,
    },
    /// Given up (`failed`), with the reason.
    Failed {
        /// Reply code, if the server gave one.
        code: Option<u16>,
        /// Why.
        error: &'a str,
    },
    /// Maybe delivered, not to be resent by itself (`unknown`), with why.
    Unknown {
        /// Why.
        error: &'a str,
    },
}

/// The server accepted it.
pub async fn mark_sent(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    code: u16,
    reply: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE verzonden_emails
            SET status = 'sent', sent_at = now(), smtp_code = $2, smtp_reply = $3, error_message = NULL, smtp_started_at = NULL
          WHERE id = $1",
    )
    .bind(id)
    .bind(i32::from(code))
    .bind(reply)
    .execute(executor)
    .await?;
    Ok(())
}

/// Marks `unknown` the messages whose SMTP transaction started more than
/// `older_than` ago and whose job has ended without recording how (it was
/// cancelled, or discarded, mid-transaction): nobody will send them again,
/// and they may have been delivered. Returns how many.
pub async fn mark_abandoned(
    executor: impl PgExecutor<'_>,
    older_than: Duration,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE verzonden_emails v
            SET status = 'unknown', smtp_started_at = NULL,
                error_message = 'its job ended (cancelled or discarded) during the SMTP transaction; it may have been delivered, so it is not resent by itself'
          WHERE v.status IN ('queued', 'pending')
            AND v.smtp_started_at < now() - make_interval(secs => $1)
            AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.id = v.job_id AND j.status IN ('Pending', 'Running'))",
    )
    .bind(older_than.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// A row of the send log, as `dklctl mail log` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
    /// The row's id.
    pub id: Uuid,
    /// When recorded (or sent).
    pub sent_at: chrono::DateTime<chrono::Utc>,
    /// Status.
    pub status: SendStatus,
    /// Recipient.
    pub recipient_email: String,
    /// Subject.
    pub subject: String,
    /// Template, if any.
    pub template_name: Option<String>,
    /// Mail kind.
    pub mail_kind: String,
    /// SMTP configuration.
    pub smtp_config: Option<String>,
    /// Last reply code.
    pub smtp_code: Option<i32>,
    /// Passing failures so far.
    pub retry_count: i32,
    /// Why it failed or was skipped.
    pub error_message: Option<String>,
}

/// Which rows `log` returns.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this recipient (any case).
    pub to: Option<String>,
    /// Only rows since then.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// The send log, newest first.
pub async fn log(executor: impl PgExecutor<'_>, f: &LogFilter) -> Result<Vec<LogRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, sent_at, status, recipient_email, subject, template_name, mail_kind, smtp_config, smtp_code,
                retry_count, error_message
           FROM verzonden_emails
          WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR lower(recipient_email) = lower($2))
            AND ($3::timestamptz IS NULL OR sent_at >= $3)
          ORDER BY sent_at DESC, id DESC
          LIMIT $4",
    )
    .bind(&f.status)
    .bind(&f.to)
    .bind(f.since)
    .bind(f.limit)
    .fetch_all(executor)
    .await
}

/// A page of the send log, newest first, from below `before` (the last row
/// of the previous page): keyset pages over the `(sent_at, id)` index.
/// `failures_only`: failed, bounced and unknown rows (their own index).
pub async fn log_page(
    executor: impl PgExecutor<'_>,
    failures_only: bool,
    before: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let (before_at, before_id) = before.unzip();
    let sql = if failures_only {
        "SELECT id, sent_at, status, recipient_email, subject, template_name, mail_kind, smtp_config, smtp_code,
                retry_count, error_message
           FROM verzonden_emails
          WHERE status IN ('failed', 'bounced', 'unknown')
            AND ($1::timestamptz IS NULL OR (sent_at, id) < ($1, $2))
          ORDER BY sent_at DESC, id DESC LIMIT $3"
    } else {
        "SELECT id, sent_at, status, recipient_email, subject, template_name, mail_kind, smtp_config, smtp_code,
                retry_count, error_message
           FROM verzonden_emails
          WHERE ($1::timestamptz IS NULL OR (sent_at, id) < ($1, $2))
          ORDER BY sent_at DESC, id DESC LIMIT $3"
    };
    sqlx::query_as(sql)
        .bind(before_at)
        .bind(before_id)
        .bind(limit)
        .fetch_all(executor)
        .await
}

/// Messages accepted per minute over the last `minutes` (minutes with none
/// absent), as `(minutes ago, count)`.
pub async fn sent_per_minute(
    executor: impl PgExecutor<'_>,
    minutes: i32,
) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT (extract(epoch FROM date_trunc('minute', now()) - date_trunc('minute', sent_at)) / 60)::int,
                count(*)
           FROM verzonden_emails
          WHERE sent_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1) AND status = 'sent'
          GROUP BY 1",
    )
    .bind(minutes)
    .fetch_all(executor)
    .await
}

/// For `dklctl mail resend`: a message's status and the payload of the job
/// that sent it (`None` when that job was pruned), or `None` for no such row.
pub async fn sending_job(
    executor: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<(SendStatus, Option<serde_json::Value>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.status, convert_from(j.job, 'UTF8')::jsonb
           FROM verzonden_emails v LEFT JOIN apalis.jobs j ON j.id = v.job_id
          WHERE v.id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Counts of messages by status among dedup keys starting with `prefix`.
pub async fn count_by_status(
    executor: impl PgExecutor<'_>,
    prefix: &str,
) -> Result<Vec<(SendStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM verzonden_emails WHERE starts_with(dedup_key, $1) GROUP BY 1 ORDER BY 1")
        .bind(prefix)
        .fetch_all(executor)
        .await
}

/// Deletes the messages whose dedup keys start with `prefix` (benchmarks
/// clean up with it).
pub async fn delete_by_key_prefix(
    executor: impl PgExecutor<'_>,
    prefix: &str,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM verzonden_emails WHERE starts_with(dedup_key, $1)")
            .bind(prefix)
            .execute(executor)
            .await?
            .rows_affected(),
    )
}
