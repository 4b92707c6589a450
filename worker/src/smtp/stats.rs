//! What this worker process's mail sending did, for `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use dkl_shared::jobs::stats::Histogram;

/// How one message's attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SendOutcome {
    /// Accepted (250).
    Sent,
    /// Refused for good (5xx, or attempts used up).
    Failed,
    /// A passing failure (4xx, connection); will be retried.
    Deferred,
    /// Skipped: the address is suppressed.
    Suppressed,
    /// The server did not answer in time; a bulk message is not resent.
    Unknown,
}

impl SendOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Deferred => "deferred",
            Self::Suppressed => "suppressed",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    outcomes: BTreeMap<(String, &'static str, SendOutcome), u64>,
    durations: BTreeMap<String, Histogram>,
    reachable: BTreeMap<String, bool>,
    responses: BTreeMap<(&'static str, String), u64>,
}

/// Mail counters of one worker process. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct MailStats {
    inner: Mutex<Inner>,
}

/// A copy of [`MailStats`].
#[derive(Debug, Clone, Default)]
pub struct MailSnapshot {
    /// Messages by (SMTP configuration, mail kind, outcome).
    pub outcomes: BTreeMap<(String, &'static str, SendOutcome), u64>,
    /// SMTP transaction durations by configuration.
    pub durations: BTreeMap<String, Histogram>,
    /// Whether the last attempt to reach each configuration's server got an answer.
    pub reachable: BTreeMap<String, bool>,
    /// What incoming mail led to, by series and label: (`auto_replies`,
    /// `replied`), (`auto_replies_suppressed`, reason), (`bounces`, kind),
    /// (`complaints`, feedback type), (`unsubscribes`, `mailto`).
    pub responses: BTreeMap<(&'static str, String), u64>,
}

impl MailStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one message's attempt.
    pub fn record(&self, config: &str, kind: &'static str, outcome: SendOutcome) {
        *self
            .lock()
            .outcomes
            .entry((config.to_string(), kind, outcome))
            .or_default() += 1;
    }

    /// Notes an SMTP transaction's duration and whether the server answered.
    pub fn transaction(&self, config: &str, took: Duration, answered: bool) {
        let mut s = self.lock();
        s.durations
            .entry(config.to_string())
            .or_default()
            .observe(took.as_secs_f64());
        s.reachable.insert(config.to_string(), answered);
    }

    /// Counts something incoming mail led to (see [`MailSnapshot::responses`]).
    pub fn response(&self, series: &'static str, label: &str, n: u64) {
        if n > 0 {
            *self
                .lock()
                .responses
                .entry((series, label.to_string()))
                .or_default() += n;
        }
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> MailSnapshot {
        let s = self.lock();
        MailSnapshot {
            outcomes: s.outcomes.clone(),
            durations: s.durations.clone(),
            reachable: s.reachable.clone(),
            responses: s.responses.clone(),
        }
    }
}

impl MailSnapshot {
    /// Messages with this outcome, over every configuration and kind.
    pub fn count(&self, outcome: SendOutcome) -> u64 {
        self.outcomes
            .iter()
            .filter(|((_, _, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }
}
