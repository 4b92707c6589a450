//! `verzonden_emails`: one row per message, written before its SMTP
//! transaction starts, under the message's dedup key, so a repeated job
//! never sends a second copy of a message that was accepted.

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
        [Self::Queued, Self::Sent, Self::Failed, Self::Bounced, Self::Suppressed, Self::Unknown, Self::Pending]
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

/// The row of a message as a new attempt finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    /// The recipient it was written for.
    pub recipient_email: String,
    /// Row id.
    pub id: Uuid,
    /// Status.
    pub status: SendStatus,
    /// The Message-ID it was (or will be) sent with.
    pub message_id: Option<String>,
    /// True when an SMTP transaction started and never ended (its worker died).
    pub interrupted: bool,
}

/// Writes the row of `m` if its key is new; else returns the existing row,
/// put back to `queued` if it had `failed` or was `suppressed` (someone asks
/// for the message again: try again, and check the suppression again).
pub async fn record(conn: &mut sqlx::PgConnection, m: &NewMessage<'_>) -> Result<MessageRow, sqlx::Error> {
    let inserted: Option<MessageRow> = sqlx::query_as(
        "INSERT INTO verzonden_emails
            (dedup_key, recipient_email, subject, template_name, status, mail_kind, smtp_config, job_id, message_id, reply_to, sent_at)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, now())
         ON CONFLICT (dedup_key) DO NOTHING
         RETURNING recipient_email, id, status, message_id, false AS interrupted",
    )
    .bind(m.dedup_key)
    .bind(m.recipient)
    .bind(m.subject)
    .bind(m.template_name)
    .bind(m.mail_kind)
    .bind(m.smtp_config)
    .bind(m.job_id)
    .bind(m.message_id)
    .bind(m.reply_to)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok(row);
    }
    sqlx::query_as(
        "UPDATE verzonden_emails
            SET status = CASE WHEN status IN ('failed', 'suppressed') THEN 'queued' ELSE status END
          WHERE dedup_key = $1
          RETURNING recipient_email, id, status, message_id, smtp_started_at IS NOT NULL AS interrupted",
    )
    .bind(m.dedup_key)
    .fetch_one(&mut *conn)
    .await
}

/// Marks `id` sent, trying a few times over half a minute: the server has
/// accepted the message, and a lost `sent` would send it again. The first
/// try uses the sender's own connection (taking a second one while holding
/// it could exhaust the pool); later tries use fresh pool connections.
pub async fn mark_sent_surely(
    conn: &mut sqlx::PgConnection,
    pool: &sqlx::PgPool,
    id: Uuid,
    code: u16,
    reply: &str,
) -> Result<(), sqlx::Error> {
    let Err(mut error) = mark_sent(&mut *conn, id, code, reply).await else { return Ok(()) };
    let mut wait = std::time::Duration::from_millis(100);
    for _ in 0..8 {
        tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "cannot record an accepted message as sent; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
        match mark_sent(pool, id, code, reply).await {
            Ok(()) => return Ok(()),
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// Notes that the SMTP transaction of `id` starts now (committed before it does).
pub async fn start_smtp(executor: impl PgExecutor<'_>, id: Uuid, job_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE verzonden_emails SET smtp_started_at = now(), job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// The server accepted it.
pub async fn mark_sent(executor: impl PgExecutor<'_>, id: Uuid, code: u16, reply: &str) -> Result<(), sqlx::Error> {
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

/// A passing failure (4xx, connection lost): it stays queued and counts a retry.
pub async fn mark_retry(executor: impl PgExecutor<'_>, id: Uuid, code: Option<u16>, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE verzonden_emails
            SET retry_count = retry_count + 1, smtp_code = $2, error_message = $3, smtp_started_at = NULL
          WHERE id = $1",
    )
    .bind(id)
    .bind(code.map(i32::from))
    .bind(error)
    .execute(executor)
    .await?;
    Ok(())
}

/// Given up: `status` is `failed`, `unknown` or `suppressed`, with the reason.
pub async fn mark_final(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    status: SendStatus,
    code: Option<u16>,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE verzonden_emails SET status = $2, smtp_code = coalesce($3, smtp_code), error_message = $4, smtp_started_at = NULL
          WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(code.map(i32::from))
    .bind(error)
    .execute(executor)
    .await?;
    Ok(())
}

/// A row of the send log, as `dklctl mail log` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LogRow {
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
        "SELECT sent_at, status, recipient_email, subject, template_name, mail_kind, smtp_config, smtp_code,
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

/// For `dklctl mail resend`: a message's status and the payload of the job
/// that sent it (`None` when that job was pruned), or `None` for no such row.
pub async fn sending_job(executor: impl PgExecutor<'_>, id: Uuid) -> Result<Option<(SendStatus, Option<serde_json::Value>)>, sqlx::Error> {
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
pub async fn count_by_status(executor: impl PgExecutor<'_>, prefix: &str) -> Result<Vec<(SendStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM verzonden_emails WHERE starts_with(dedup_key, $1) GROUP BY 1 ORDER BY 1")
        .bind(prefix)
        .fetch_all(executor)
        .await
}

/// Deletes the messages whose dedup keys start with `prefix` (benchmarks
/// clean up with it).
pub async fn delete_by_key_prefix(executor: impl PgExecutor<'_>, prefix: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM verzonden_emails WHERE starts_with(dedup_key, $1)").bind(prefix).execute(executor).await?.rows_affected())
}
