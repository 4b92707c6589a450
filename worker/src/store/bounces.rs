//! `email_bounces`, `email_complaints` and the suppressions they lead to.
//!
//! A bounce suppresses an address only when it is tied to one of our sends
//! (by the VERP return path or our Message-ID), and then the address we
//! sent to: a forged or misdirected report cannot suppress anyone else.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::bounce::arf::Complaint;
use crate::bounce::{Action, BounceReport, Kind, SendReference};

/// One of our sends a report is about.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OurSend {
    /// Its `verzonden_emails` row.
    pub verzonden_email_id: Option<Uuid>,
    /// Its `newsletter_deliveries` row (a newsletter).
    pub newsletter_delivery_id: Option<i64>,
    /// The address it was sent to (lower case).
    pub recipient: String,
    /// `return_path` or `message_id`.
    pub matched_by: String,
}

/// Finds the send by its VERP reference, else by a returned Message-ID.
pub async fn find_send(
    conn: &mut PgConnection,
    reference: Option<SendReference>,
    message_ids: &[String],
) -> Result<Option<OurSend>, sqlx::Error> {
    let by_reference = match reference {
        Some(SendReference::Message(id)) => {
            sqlx::query_as(
                "SELECT v.id AS verzonden_email_id, d.id AS newsletter_delivery_id,
                        lower(v.recipient_email) AS recipient, 'return_path' AS matched_by
                   FROM verzonden_emails v
                   LEFT JOIN newsletter_deliveries d
                          ON d.newsletter_id = v.newsletter_id AND d.email = lower(v.recipient_email)
                  WHERE v.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        }
        Some(SendReference::Delivery(id)) => {
            sqlx::query_as(
                "SELECT v.id AS verzonden_email_id, d.id AS newsletter_delivery_id,
                        d.email AS recipient, 'return_path' AS matched_by
                   FROM newsletter_deliveries d
                   LEFT JOIN verzonden_emails v
                          ON v.dedup_key = 'newsletter:' || d.newsletter_id || ':' || d.email
                  WHERE d.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        }
        None => None,
    };
    if by_reference.is_some() || message_ids.is_empty() {
        return Ok(by_reference);
    }
    sqlx::query_as(
        "SELECT v.id AS verzonden_email_id, d.id AS newsletter_delivery_id,
                lower(v.recipient_email) AS recipient, 'message_id' AS matched_by
           FROM verzonden_emails v
           LEFT JOIN newsletter_deliveries d
                  ON d.newsletter_id = v.newsletter_id AND d.email = lower(v.recipient_email)
          WHERE v.message_id = ANY($1)
          LIMIT 1",
    )
    .bind(message_ids)
    .fetch_optional(conn)
    .await
}

/// When soft bounces suppress an address for bulk mail.
#[derive(Debug, Clone, Copy)]
pub struct SoftBounceRule {
    /// This many soft bounces …
    pub limit: u32,
    /// … within this many days.
    pub days: u32,
}

/// What recording a bounce did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Rows written (`email_bounces`), by kind.
    pub hard: usize,
    /// See `hard`.
    pub soft: usize,
    /// Addresses suppressed now, with the reason.
    pub suppressed: Vec<(String, &'static str)>,
}

/// Records each failed or delayed recipient of `report` (once per message
/// and recipient, so a reprocessed bounce changes nothing), marks our send
/// `bounced` on a hard failure and suppresses as the rules say.
pub async fn record_bounce(
    conn: &mut PgConnection,
    email: Uuid,
    report: &BounceReport,
    send: Option<&OurSend>,
    soft_rule: SoftBounceRule,
) -> Result<Recorded, sqlx::Error> {
    let mut recorded = Recorded::default();
    for r in &report.recipients {
        // The report must name the address we sent to (as the final or
        // the original recipient): a report about another address, even
        // one tied to our send, suppresses nothing.
        let ours = send.filter(|s| {
            s.recipient == r.recipient
                || r.original_recipient.as_deref() == Some(s.recipient.as_str())
        });
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO email_bounces (incoming_email_id, recipient, original_recipient, status, action, kind,
                                        diagnostic, remote_mta, reporting_mta, format, verzonden_email_id,
                                        newsletter_delivery_id, matched_by)
             VALUES ($1, lower($2), lower($3), $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (incoming_email_id, recipient) DO NOTHING
             RETURNING id",
        )
        .bind(email)
        .bind(storable(&r.recipient, 320))
        .bind(r.original_recipient.as_deref().map(|o| storable(o, 320)))
        .bind(&r.status)
        .bind(r.action.as_str())
        .bind(r.kind.as_str())
        .bind(r.diagnostic.as_deref().map(|d| storable(d, 2000)))
        .bind(r.remote_mta.as_deref().map(|m| storable(m, 255)))
        .bind(report.reporting_mta.as_deref().map(|m| storable(m, 255)))
        .bind(&report.format)
        .bind(ours.and_then(|s| s.verzonden_email_id))
        .bind(ours.and_then(|s| s.newsletter_delivery_id))
        .bind(ours.map(|s| s.matched_by.as_str()))
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = inserted else { continue };
        match r.kind {
            Kind::Hard => recorded.hard += 1,
            Kind::Soft => recorded.soft += 1,
        }
        let Some(ours) = ours else { continue };
        let why = format!(
            "bounce {} ({}) in incoming email {email}",
            r.status.as_deref().unwrap_or("without status"),
            r.action.as_str()
        );
        let suppression = if r.kind == Kind::Hard && r.action == Action::Failed {
            if let Some(id) = ours.verzonden_email_id {
                sqlx::query(
                    "UPDATE verzonden_emails SET status = 'bounced', error_message = $2, updated_at = now()
                      WHERE id = $1 AND status IN ('sent', 'unknown')",
                )
                .bind(id)
                .bind(storable(
                    &format!(
                        "bounced: {} {}",
                        r.status.as_deref().unwrap_or(""),
                        r.diagnostic.as_deref().unwrap_or("")
                    ),
                    2000,
                ))
                .execute(&mut *conn)
                .await?;
            }
            suppress(conn, &ours.recipient, "all", "hard_bounce", &why).await?;
            Some("hard_bounce")
        } else {
            // Soft bounces of distinct sends: a server's repeated delay
            // warnings about one message count once.
            let soft: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT coalesce(verzonden_email_id::text, 'n' || newsletter_delivery_id))
                   FROM email_bounces
                  WHERE (recipient = $1 OR original_recipient = $1) AND kind = 'soft'
                    AND matched_by IS NOT NULL
                    AND created_at > now() - make_interval(days => $2)",
            )
            .bind(&ours.recipient)
            .bind(soft_rule.days as i32)
            .fetch_one(&mut *conn)
            .await?;
            if soft >= i64::from(soft_rule.limit) {
                let why = format!(
                    "{soft} soft bounces within {} days; last: {why}",
                    soft_rule.days
                );
                suppress(conn, &ours.recipient, "bulk", "soft_bounce", &why).await?;
                Some("soft_bounce")
            } else {
                None
            }
        };
        if let Some(reason) = suppression {
            sqlx::query("UPDATE email_bounces SET suppression = $2 WHERE id = $1")
                .bind(row)
                .bind(reason)
                .execute(&mut *conn)
                .await?;
            recorded.suppressed.push((ours.recipient.clone(), reason));
        }
    }
    Ok(recorded)
}

async fn suppress(
    conn: &mut PgConnection,
    address: &str,
    scope: &str,
    reason: &str,
    source: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT dkl_suppress($1, $2, $3, $4)")
        .bind(address)
        .bind(scope)
        .bind(reason)
        .bind(source)
        .fetch_one(conn)
        .await
}

/// Records a feedback report. A spam complaint about one of our sends
/// (found by the Message-ID of the returned message) suppresses the
/// address we sent it to for bulk mail; a report about mail we did not
/// send (or made up) is recorded and suppresses nothing. Returns the
/// address suppressed, if any.
pub async fn record_complaint(
    conn: &mut PgConnection,
    email: Uuid,
    complaint: &Complaint,
    send: Option<&OurSend>,
) -> Result<Option<String>, sqlx::Error> {
    let recipient = send
        .map(|s| s.recipient.clone())
        .or_else(|| complaint.recipient.clone());
    let suppress_now = complaint.is_complaint() && send.is_some();
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO email_complaints (incoming_email_id, recipient, feedback_type, user_agent, verzonden_email_id, suppressed)
         VALUES ($1, lower($2), $3, $4, $5, $6)
         ON CONFLICT (incoming_email_id) DO NOTHING RETURNING id",
    )
    .bind(email)
    .bind(recipient.as_deref().map(|r| storable(r, 320)))
    .bind(storable(&complaint.feedback_type, 64))
    .bind(complaint.user_agent.as_deref().map(|a| storable(a, 255)))
    .bind(send.and_then(|s| s.verzonden_email_id))
    .bind(suppress_now)
    .fetch_optional(&mut *conn)
    .await?;
    match (inserted, send) {
        (Some(_), Some(ours)) if suppress_now => {
            let why = format!(
                "feedback report ({}) in incoming email {email}",
                storable(&complaint.feedback_type, 64)
            );
            suppress(conn, &ours.recipient, "bulk", "complaint", &why).await?;
            Ok(Some(ours.recipient.clone()))
        }
        _ => Ok(None),
    }
}

/// `text` as PostgreSQL stores it: no NUL bytes, at most `max` characters.
fn storable(text: &str, max: usize) -> String {
    crate::mime::text(text).chars().take(max).collect()
}

/// A bounce as `dklctl bounces` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct BounceRow {
    /// When it was recorded.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The failed address.
    pub recipient: String,
    /// hard | soft.
    pub kind: String,
    /// failed | delayed.
    pub action: String,
    /// Enhanced status code.
    pub status: Option<String>,
    /// dsn or the plain-text reader.
    pub format: String,
    /// How it was tied to our send.
    pub matched_by: Option<String>,
    /// The suppression it caused.
    pub suppression: Option<String>,
    /// The server's words.
    pub diagnostic: Option<String>,
}

/// Bounces recorded since `since`, newest first.
pub async fn list(
    conn: &mut PgConnection,
    since: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<Vec<BounceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT created_at, recipient, kind, action, status, format, matched_by, suppression, diagnostic
           FROM email_bounces WHERE created_at >= $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A suppression as `dklctl suppressions` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct SuppressionRow {
    /// The address.
    pub address: String,
    /// all | bulk.
    pub scope: String,
    /// Why.
    pub reason: String,
    /// What caused it.
    pub source: Option<String>,
    /// Since when.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Suppressions, newest first, optionally of one reason.
pub async fn suppressions(
    conn: &mut PgConnection,
    reason: Option<&str>,
    limit: i64,
) -> Result<Vec<SuppressionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT address, scope, reason, source, created_at FROM email_suppressions
          WHERE $1::text IS NULL OR reason = $1 ORDER BY created_at DESC LIMIT $2",
    )
    .bind(reason)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The bounces one incoming message reported.
pub async fn of_message(
    conn: &mut PgConnection,
    email: Uuid,
) -> Result<Vec<BounceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT created_at, recipient, kind, action, status, format, matched_by, suppression, diagnostic
           FROM email_bounces WHERE incoming_email_id = $1 ORDER BY id",
    )
    .bind(email)
    .fetch_all(conn)
    .await
}
