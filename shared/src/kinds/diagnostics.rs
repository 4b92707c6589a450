//! `ping`: a diagnostic job kind. An operator enqueues one (`dklctl ping`) to
//! see the whole path work: enqueue, pickup, run, outcome. Its knobs make it
//! fail or take time on purpose, which is how the demo and the tests show
//! retries, discards, cancellation and crash recovery on a real worker.

use crate::jobs::JobKind;

/// A job that logs its message, optionally after misbehaving on purpose.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ping {
    /// Logged when the job runs.
    #[serde(default)]
    pub message: String,
    /// Take this long (cancellable).
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail with a retryable error on attempts 1..=fail_attempts.
    #[serde(default)]
    pub fail_attempts: i32,
    /// Fail with this permanent error.
    #[serde(default)]
    pub permanent_error: Option<String>,
}

impl JobKind for Ping {
    const KIND: &'static str = "ping";
    const QUEUE: &'static str = "default";
    const MAX_ATTEMPTS: i32 = 5;
}
