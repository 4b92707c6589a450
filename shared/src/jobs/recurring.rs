//! Payloads of the recurring jobs the default `job_schedules` rows enqueue.
//!
//! They are declared here, ahead of their handlers, so the scheduler and
//! `dklctl` can check schedules and admin rows that name them. Unknown fields
//! are refused, so a typo in an admin's payload is caught when the row is
//! taken, not silently ignored.

use super::kind::JobKind;

/// Fetch new mail from the IMAP accounts into `incoming_emails`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchMail {
    /// Only this account (by its configured name); all accounts when absent.
    #[serde(default)]
    pub account: Option<String>,
}

impl JobKind for FetchMail {
    const KIND: &'static str = "fetch_mail";
    const QUEUE: &'static str = "mail";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Delete mail, send logs and sessions past their retention period.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRetention {
    /// Report what would be deleted without deleting it.
    #[serde(default)]
    pub dry_run: bool,
}

impl JobKind for ApplyRetention {
    const KIND: &'static str = "apply_retention";
    const QUEUE: &'static str = "maintenance";
}

/// Recompute the `leaderboards` of one event, or of every open event.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecomputeLeaderboards {
    /// Only this event.
    #[serde(default)]
    pub event_id: Option<uuid::Uuid>,
}

impl JobKind for RecomputeLeaderboards {
    const KIND: &'static str = "recompute_leaderboards";
    const QUEUE: &'static str = "maintenance";
}

/// Delete expired `sessions` and `refresh_tokens`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireSessions {}

impl JobKind for ExpireSessions {
    const KIND: &'static str = "expire_sessions";
    const QUEUE: &'static str = "maintenance";
}
