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
