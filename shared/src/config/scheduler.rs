//! dkl-scheduler's settings.

use std::time::Duration;

use super::ConfigError;
use super::parse::{millis, secs};

/// Settings of dkl-scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// `DKL_SCHEDULER_POLL_MS`: the longest the scheduler sleeps between looks
    /// at `job_schedules` and `scheduled_jobs` when no NOTIFY wakes it.
    pub poll_interval: Duration,
    /// `DKL_SCHEDULER_LEADER_RETRY_MS`: how often a scheduler that is not the
    /// leader tries to become it; bounds the handover time after a leader dies.
    pub leader_retry: Duration,
    /// `DKL_SCHEDULER_LEADER_STALE_SECS`: a leader that has not finished a
    /// pass for this long (frozen, stuck) is disconnected by the others, which
    /// frees its lock.
    pub leader_stale_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(1000),
            leader_retry: Duration::from_millis(1000),
            leader_stale_after: Duration::from_secs(30),
        }
    }
}

impl SchedulerConfig {
    /// Reads dkl-scheduler's variables.
    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let scheduler = Self {
            poll_interval: millis(get, "DKL_SCHEDULER_POLL_MS", d.poll_interval, 50, 60_000)?,
            leader_retry: millis(
                get,
                "DKL_SCHEDULER_LEADER_RETRY_MS",
                d.leader_retry,
                50,
                60_000,
            )?,
            leader_stale_after: secs(
                get,
                "DKL_SCHEDULER_LEADER_STALE_SECS",
                d.leader_stale_after,
                2,
                3600,
            )?,
        };
        // A healthy leader updates its heartbeat once per pass and sleeps up
        // to a poll interval between passes.
        if scheduler.leader_stale_after < scheduler.poll_interval * 3 {
            return Err(ConfigError {
                var: "DKL_SCHEDULER_LEADER_STALE_SECS",
                value: scheduler.leader_stale_after.as_secs().to_string(),
                expected: format!(
                    "at least three times DKL_SCHEDULER_POLL_MS ({} ms), or an idle, healthy leader would be deposed",
                    scheduler.poll_interval.as_millis()
                ),
            });
        }
        Ok(scheduler)
    }
}
