//! `auto_responses` (the rules) and `auto_reply_log` (the replies made),
//! and the answer recorded on an `incoming_emails` row.

use sqlx::PgConnection;
use uuid::Uuid;

/// A rule that is active now, with how its patterns judged one message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleVerdict {
    /// `auto_responses.id`.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The template it answers with (`email_templates.name`).
    pub template: String,
    /// Its reply window.
    pub reply_window_secs: f64,
    /// Whether each pattern matched (`None`: the pattern cannot be used).
    pub from_ok: Option<bool>,
    /// See `from_ok`.
    pub subject_ok: Option<bool>,
    /// See `from_ok`.
    pub body_ok: Option<bool>,
}

impl RuleVerdict {
    /// Some(true) when every pattern matched; None when one is broken.
    pub fn matches(&self) -> Option<bool> {
        let all = [self.from_ok, self.subject_ok, self.body_ok];
        if all.contains(&None) {
            return None;
        }
        Some(all.iter().all(|v| *v == Some(true)))
    }
}

/// The rules of the message's account that are active now, in priority
/// order, each judged against the message (PostgreSQL's `~*`, the engine
/// that also checked the patterns when they were saved).
pub async fn judge(conn: &mut PgConnection, email: Uuid) -> Result<Vec<RuleVerdict>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.name, t.name AS template,
                extract(epoch FROM r.reply_window)::float8 AS reply_window_secs,
                dkl_pattern_matches(r.from_pattern, e.sender_email) AS from_ok,
                dkl_pattern_matches(r.subject_pattern, e.subject) AS subject_ok,
                dkl_pattern_matches(r.body_pattern, e.body) AS body_ok
           FROM incoming_emails e
           JOIN auto_responses r ON r.is_active
                AND (r.account_type IS NULL OR r.account_type = e.account_type)
                AND (r.starts_at IS NULL OR r.starts_at <= now())
                AND (r.ends_at IS NULL OR r.ends_at > now())
           JOIN email_templates t ON t.id = r.template_id
          WHERE e.id = $1
          ORDER BY r.priority, r.name",
    )
    .bind(email)
    .fetch_all(conn)
    .await
}

/// Why the ledger refused a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This message was answered already.
    Already,
    /// The rule answered this sender within its window.
    Window,
    /// The sender got the hourly maximum of answers.
    HourlyCap,
}

/// Records a reply in the ledger (in the caller's transaction, before the
/// reply's job exists), or says why there is none.
pub async fn record_reply(
    conn: &mut PgConnection,
    email: Uuid,
    rule: Uuid,
    sender: &str,
    window_secs: f64,
    max_per_hour: u32,
    dedup_key: &str,
) -> Result<Option<Refusal>, sqlx::Error> {
    let refused: Option<String> = sqlx::query_scalar(
        "SELECT dkl_auto_reply_record($1, $2, $3, make_interval(secs => $4), $5, $6)",
    )
    .bind(email)
    .bind(rule)
    .bind(sender)
    .bind(window_secs)
    .bind(max_per_hour as i32)
    .bind(dedup_key)
    .fetch_one(conn)
    .await?;
    Ok(match refused.as_deref() {
        None => None,
        Some("already") => Some(Refusal::Already),
        Some("window") => Some(Refusal::Window),
        _ => Some(Refusal::HourlyCap),
    })
}

/// Whether the message was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// An answer was enqueued.
    Replied,
    /// No answer; the reason says why.
    NotReplied,
}

impl ReplyOutcome {
    /// The value in `incoming_emails.auto_reply`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Replied => "replied",
            Self::NotReplied => "not_replied",
        }
    }
}

/// Records on the message whether and why it was (not) answered.
pub async fn record_outcome(
    conn: &mut PgConnection,
    email: Uuid,
    outcome: ReplyOutcome,
    reason: &str,
    rule: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE incoming_emails SET auto_reply = $2, auto_reply_reason = $3, auto_reply_rule_id = $4 WHERE id = $1",
    )
    .bind(email)
    .bind(outcome.as_str())
    .bind(reason)
    .bind(rule)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether and why a message was answered (`None` before its follow-up).
pub async fn outcome_of(
    conn: &mut PgConnection,
    email: Uuid,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT auto_reply, coalesce(auto_reply_reason, '') FROM incoming_emails WHERE id = $1 AND auto_reply IS NOT NULL",
    )
    .bind(email)
    .fetch_optional(conn)
    .await
}
