//! Upkeep: pruning the job table, retention, leaderboards, sessions.

use crate::jobs::JobKind;

/// Deletes done jobs older than `done_after` and discarded or cancelled jobs
/// older than `discarded_after` (both default to the configured ages), then
/// vacuums the job table.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneJobs {
    /// Overrides `DKL_PRUNE_DONE_AFTER`, in seconds.
    #[serde(default)]
    pub done_after_secs: Option<u64>,
    /// Overrides `DKL_PRUNE_DISCARDED_AFTER`, in seconds.
    #[serde(default)]
    pub discarded_after_secs: Option<u64>,
}

impl JobKind for PruneJobs {
    const KIND: &'static str = "prune_jobs";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Delete what `retention_rules` says is past its time (mail, send logs,
/// sessions, tokens, notifications, images, finished jobs), in short
/// batches; the counts per rule become the job's result.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRetention {
    /// Count what would be deleted, per rule, without deleting it.
    #[serde(default)]
    pub dry_run: bool,
    /// Only these rules (by `retention_rules.name`); empty = every enabled rule.
    #[serde(default)]
    pub rules: Vec<String>,
}

impl JobKind for ApplyRetention {
    const KIND: &'static str = "apply_retention";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: i32 = 3;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2 * 3600);
}

/// Rebuild the `leaderboards` whose registrations changed since they were
/// last computed (each event, each year, all time).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecomputeLeaderboards {
    /// Also this event's boards (its event, its year, all time), changed or not.
    #[serde(default)]
    pub event_id: Option<uuid::Uuid>,
    /// Every board, changed or not.
    #[serde(default)]
    pub force: bool,
}

impl JobKind for RecomputeLeaderboards {
    const KIND: &'static str = "recompute_leaderboards";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: i32 = 3;
}

/// End `sessions` past `expires_at`, revoke expired `refresh_tokens`, and
/// end `user_roles` past `expires_at`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireSessions {}

impl JobKind for ExpireSessions {
    const KIND: &'static str = "expire_sessions";
    const QUEUE: &'static str = "maintenance";
    const MAX_ATTEMPTS: i32 = 3;
}
