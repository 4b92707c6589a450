//! The states a job row moves through, as the engine compares them.
//!
//! SQL keeps apalis's status names (`Pending`, `Running`, `Done`, `Killed`);
//! Rust code never compares those strings, it uses [`JobState`].

use std::fmt;
use std::str::FromStr;

/// `apalis.jobs.status`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Waiting: due now, or at `run_at` (scheduled or backing off).
    Pending,
    /// Claimed by a worker and running.
    Running,
    /// Finished successfully.
    Done,
    /// Discarded (permanent error, attempts used up, rescued too often) or,
    /// with `cancelled_at` set, cancelled.
    Killed,
    /// apalis's own name for a job its fetch took; our engine never writes
    /// it, but a row written by apalis's API must still be readable.
    Queued,
    /// apalis's own name for a failed job (see [`JobState::Queued`]).
    Failed,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        Self::Pending,
        Self::Running,
        Self::Done,
        Self::Killed,
        Self::Queued,
        Self::Failed,
    ];

    /// The status name in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Done => "Done",
            Self::Killed => "Killed",
            Self::Queued => "Queued",
            Self::Failed => "Failed",
        }
    }

    /// True for the states a job never leaves by itself.
    pub const fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Killed | Self::Failed)
    }
}

// Debug output shows the table's name, quoted, as a string column did
// (`dklctl show` prints rows with `{:#?}`).
impl fmt::Debug for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name the engine does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status `{0}` (expected Pending, Running, Done, Killed, Queued or Failed)")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

// Tests compare rows with the names they see in psql. Only for tests:
// production code compares enums, and a typo there must not compile.
#[cfg(any(test, feature = "testing"))]
impl PartialEq<&str> for JobState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(any(test, feature = "testing"))]
impl PartialEq<str> for JobState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

crate::decode_from_text!(JobState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
            assert_eq!(state, state.as_str());
        }
        assert!(
            "pending".parse::<JobState>().is_err(),
            "the table's names are capitalised"
        );
    }
}
