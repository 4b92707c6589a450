//! `auto_responses` (the rules) and `auto_reply_log` (the replies made),
//! and the answer recorded on an `incoming_emails` row.

use sqlx::PgConnection;
use uuid::Uuid;

/// A rule that is active now, with how its patterns judged one message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleVerdict {
    /// The message judged.
    pub email_id: Uuid,
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

/// For each of the messages `emails`, the rules of its account that are
/// active now, in priority order, each judged against the message
/// (PostgreSQL's `~*`, the engine that also checked the patterns when they
/// were saved). Ordered by message.
pub async fn judge(
    conn: &mut PgConnection,
    emails: &[Uuid],
) -> Result<Vec<RuleVerdict>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id AS email_id, r.id, r.name, t.name AS template,
                extract(epoch FROM r.reply_window)::float8 AS reply_window_secs,
                CASE WHEN r.from_pattern IS NULL THEN true
                     ELSE dkl_pattern_matches(r.from_pattern, e.sender_email) END AS from_ok,
                CASE WHEN r.subject_pattern IS NULL THEN true
                     ELSE dkl_pattern_matches(r.subject_pattern, e.subject) END AS subject_ok,
                CASE WHEN r.body_pattern IS NULL THEN true
                     ELSE dkl_pattern_matches(r.body_pattern, e.body) END AS body_ok
           FROM incoming_emails e
           JOIN auto_responses r ON r.is_active
                AND (r.account_type IS NULL OR r.account_type = e.account_type)
                AND (r.starts_at IS NULL OR r.starts_at <= now())
                AND (r.ends_at IS NULL OR r.ends_at > now())
           JOIN email_templates t ON t.id = r.template_id
          WHERE e.id = ANY($1)
          ORDER BY e.id, r.priority, r.name",
    )
    .bind(emails)
    .fetch_all(conn)
    .await
}

/// One answer to record in the ledger.
#[derive(Debug, Clone)]
pub struct ReplyRequest {
    /// The message answered.
    pub email: Uuid,
    /// The rule that answers it.
    pub rule: Uuid,
    /// Where the answer goes (the Return-Path).
    pub sender: String,
    /// The rule's reply window in seconds.
    pub window_secs: f64,
    /// The answer's `send_email` dedup key.
    pub dedup_key: String,
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

/// Records answers in the ledger (in the caller's transaction, before the
/// answers' jobs exist), or says for each why there is none. `requests`
/// must be sorted by sender (the locks are taken in that order).
pub async fn record_replies(
    conn: &mut PgConnection,
    requests: &[ReplyRequest],
    max_per_hour: u32,
) -> Result<Vec<Option<Refusal>>, sqlx::Error> {
    let rows: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT ord, refusal FROM dkl_auto_reply_record_many($1, $2, $3, $4, $5, $6) ORDER BY ord",
    )
    .bind(requests.iter().map(|r| r.email).collect::<Vec<_>>())
    .bind(requests.iter().map(|r| r.rule).collect::<Vec<_>>())
    .bind(
        requests
            .iter()
            .map(|r| r.sender.clone())
            .collect::<Vec<_>>(),
    )
    .bind(requests.iter().map(|r| r.window_secs).collect::<Vec<_>>())
    .bind(max_per_hour as i32)
    .bind(
        requests
            .iter()
            .map(|r| r.dedup_key.clone())
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(_, refusal)| match refusal.as_deref() {
            None => None,
            Some("already") => Some(Refusal::Already),
            Some("window") => Some(Refusal::Window),
            _ => Some(Refusal::HourlyCap),
        })
        .collect())
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

/// Records on the message what it is, whether and why it was (not)
/// answered, and that it is processed: one update of the row.
pub async fn record_outcome(
    conn: &mut PgConnection,
    email: Uuid,
    verdict: Option<&crate::mime::classify::Verdict>,
    outcome: ReplyOutcome,
    reason: &str,
    rule: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE incoming_emails
            SET classification = coalesce($5, classification),
                classification_reason = coalesce($6, classification_reason),
                processed = true, processed_at = now(),
                auto_reply = $2, auto_reply_reason = $3, auto_reply_rule_id = $4
          WHERE id = $1",
    )
    .bind(email)
    .bind(outcome.as_str())
    .bind(reason)
    .bind(rule)
    .bind(verdict.map(|v| v.class.as_str()))
    .bind(verdict.map(|v| v.reason.as_str()))
    .execute(conn)
    .await?;
    Ok(())
}

/// One message's follow-up, as recorded on its row.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The message.
    pub email: Uuid,
    /// What it is (None: unreadable).
    pub verdict: Option<crate::mime::classify::Verdict>,
    /// Answered or not.
    pub outcome: ReplyOutcome,
    /// Why.
    pub reason: String,
    /// The rule that decided, if any.
    pub rule: Option<Uuid>,
}

/// Records every message's follow-up and marks them processed, in one
/// statement.
pub async fn record_outcomes(
    conn: &mut PgConnection,
    outcomes: &[Outcome],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE incoming_emails e
            SET classification = coalesce(u.class, e.classification),
                classification_reason = coalesce(u.class_reason, e.classification_reason),
                processed = true, processed_at = now(),
                auto_reply = u.reply, auto_reply_reason = u.reason, auto_reply_rule_id = u.rule
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[])
                AS u(id, class, class_reason, reply, reason, rule)
          WHERE e.id = u.id",
    )
    .bind(outcomes.iter().map(|o| o.email).collect::<Vec<_>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.verdict.as_ref().map(|v| v.class.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.verdict.as_ref().map(|v| crate::mime::text(&v.reason)))
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.outcome.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| crate::mime::text(&o.reason))
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.rule).collect::<Vec<_>>())
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
