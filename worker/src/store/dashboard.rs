//! `dashboard_sessions` and `dashboard_audit`: who is logged in to the
//! dashboard, and what was done through it.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A live dashboard session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    /// Who logged in (the name given at login, and how).
    pub actor: String,
    /// The token every form of this session must send back.
    pub csrf_token: String,
}

/// A session to record.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    /// SHA-256 (hex) of the session id.
    pub id_sha256: &'a str,
    /// Who logged in, and how.
    pub actor: &'a str,
    /// The session's CSRF token.
    pub csrf_token: &'a str,
    /// Which configured secret it logged in with (a fingerprint, see
    /// `dashboard::auth::Logins::fingerprints`): when that secret changes,
    /// the session ends.
    pub credential: &'a str,
    /// From where.
    pub ip: Option<IpAddr>,
    /// How long it lasts at most.
    pub lasts: Duration,
}

/// Records a new session under the digest of its id.
pub async fn create_session(
    executor: impl PgExecutor<'_>,
    s: &NewSession<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dashboard_sessions (id_sha256, actor, csrf_token, credential, ip, expires_at)
         VALUES ($1, $2, $3, $4, $5::inet, now() + make_interval(secs => $6))",
    )
    .bind(s.id_sha256)
    .bind(s.actor)
    .bind(s.csrf_token)
    .bind(s.credential)
    .bind(s.ip.map(|ip| ip.to_string()))
    .bind(s.lasts.as_secs_f64())
    .execute(executor)
    .await?;
    Ok(())
}

/// The session with this digest, marked as seen now, if it has not
/// expired, was used within `idle`, and logged in with one of the secrets
/// configured now (`credentials`).
pub async fn session(
    executor: impl PgExecutor<'_>,
    id_sha256: &str,
    credentials: &[String],
    idle: Duration,
) -> Result<Option<Session>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE dashboard_sessions SET last_seen_at = now()
          WHERE id_sha256 = $1 AND expires_at > now() AND credential = ANY($2)
            AND last_seen_at > now() - make_interval(secs => $3)
          RETURNING actor, csrf_token",
    )
    .bind(id_sha256)
    .bind(credentials)
    .bind(idle.as_secs_f64())
    .fetch_optional(executor)
    .await
}

/// Ends a session (logout).
pub async fn end_session(
    executor: impl PgExecutor<'_>,
    id_sha256: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE id_sha256 = $1")
        .bind(id_sha256)
        .execute(executor)
        .await?;
    Ok(())
}

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed and begun; set to its outcome when it ends.
    Started,
    /// Done as asked.
    Ok,
    /// Not allowed (no login, wrong token, missing CSRF token).
    Refused,
    /// Allowed, but it could not be done (no such row, wrong state).
    Failed,
}

impl Outcome {
    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// Who (the session's actor, or `anonymous`).
    pub actor: &'a str,
    /// What (`login`, `job.retry`, `newsletter.pause`, ...).
    pub action: &'a str,
    /// On which row.
    pub target: Option<&'a str>,
    /// How it ended.
    pub outcome: Outcome,
    /// Anything else worth keeping (never a secret).
    pub details: serde_json::Value,
    /// From where.
    pub ip: Option<IpAddr>,
}

/// Appends to the audit trail; returns the line's id.
pub async fn audit(executor: impl PgExecutor<'_>, e: &AuditEntry<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO dashboard_audit (actor, action, target, outcome, details, ip)
         VALUES ($1, $2, $3, $4, $5, $6::inet) RETURNING id",
    )
    .bind(e.actor)
    .bind(e.action)
    .bind(e.target)
    .bind(e.outcome.as_str())
    .bind(&e.details)
    .bind(e.ip.map(|ip| ip.to_string()))
    .fetch_one(executor)
    .await
}

/// Sets a `started` line's outcome once the action ended.
pub async fn audit_outcome(
    executor: impl PgExecutor<'_>,
    id: i64,
    outcome: Outcome,
    details: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dashboard_audit SET outcome = $2, details = $3 WHERE id = $1")
        .bind(id)
        .bind(outcome.as_str())
        .bind(details)
        .execute(executor)
        .await?;
    Ok(())
}

/// A line of the audit trail as the dashboard shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    /// Its id.
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On which row.
    pub target: Option<String>,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Details as JSON text.
    pub details: String,
    /// From where.
    pub ip: Option<String>,
}

/// The newest audit lines with an id below `before` (keyset pages).
pub async fn recent_audit(
    executor: impl PgExecutor<'_>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, action, target, outcome, details::text AS details, host(ip) AS ip
           FROM dashboard_audit WHERE $1::bigint IS NULL OR id < $1
          ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(executor)
    .await
}
