//! What a worker process has done since it started, for `/metrics`, and
//! whether its parts are alive, for `/healthz`.
//!
//! Counters live in memory: Prometheus expects a process's counters to start
//! at zero when it restarts, and nothing here is worth a database write per
//! job. Figures that are the same whichever process you ask (queue depth,
//! leadership) come from the database at scrape time instead.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the job duration histogram's buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How an attempt ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttemptOutcome {
    /// Handler succeeded.
    Done,
    /// Failed; will be tried again.
    Retried,
    /// Failed for good (permanent error, attempts used up, no handler).
    Discarded,
    /// Stopped by a cancel.
    Cancelled,
    /// Put back at shutdown, attempt refunded.
    Released,
    /// Asked to run later (a rate limit), attempt refunded.
    Snoozed,
}

impl AttemptOutcome {
    /// The label value in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retried => "retried",
            Self::Discarded => "discarded",
            Self::Cancelled => "cancelled",
            Self::Released => "released",
            Self::Snoozed => "snoozed",
        }
    }
}

/// A duration histogram (cumulative bucket counts as Prometheus wants them
/// are computed when rendering).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Count per bucket of [`DURATION_BUCKETS`] (not cumulative), plus one for +Inf.
    pub buckets: Vec<u64>,
    /// Sum of observed seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// Counts one observation of `secs`.
    pub fn observe(&mut self, secs: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

/// One kind's counters. Kept per kind so counting an attempt (on every
/// job's path) allocates nothing once the kind has been seen.
#[derive(Debug, Default)]
struct KindCounts {
    outcomes: BTreeMap<AttemptOutcome, u64>,
    durations: Histogram,
}

#[derive(Debug, Default)]
struct Inner {
    kinds: BTreeMap<String, KindCounts>,
    queues: BTreeMap<String, bool>,
    last_heartbeat: Option<Instant>,
    claim_queries: u64,
    jobs_claimed: u64,
    queue_vacuums: u64,
    outcome_writer_failing_since: Option<Instant>,
    outcome_write_started: Option<Instant>,
}

/// Counters and liveness of one worker runtime. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct RuntimeStats {
    inner: Mutex<Inner>,
}

/// A consistent copy of [`RuntimeStats`].
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    /// Attempts by (kind, outcome).
    pub outcomes: BTreeMap<(String, AttemptOutcome), u64>,
    /// Attempt durations by kind.
    pub durations: BTreeMap<String, Histogram>,
    /// Queue → its apalis worker is running.
    pub queues: BTreeMap<String, bool>,
    /// Time since the last successful heartbeat.
    pub since_heartbeat: Option<Duration>,
    /// Claim queries run by the fetchers (each looks for due jobs once).
    pub claim_queries: u64,
    /// Jobs claimed.
    pub jobs_claimed: u64,
    /// Vacuums of the queue table this process ran.
    pub queue_vacuums: u64,
    /// How long the outcome writer has been failing to write, if it is.
    pub outcome_writer_failing_for: Option<Duration>,
    /// How long the outcome write in progress has taken, if one is.
    pub outcome_write_busy_for: Option<Duration>,
}

impl RuntimeStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind; keep counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one attempt.
    pub fn record_attempt(&self, kind: &str, outcome: AttemptOutcome, took: Duration) {
        let mut s = self.lock();
        if !s.kinds.contains_key(kind) {
            s.kinds.insert(kind.to_string(), KindCounts::default());
        }
        if let Some(k) = s.kinds.get_mut(kind) {
            *k.outcomes.entry(outcome).or_default() += 1;
            k.durations.observe(took.as_secs_f64());
        }
    }

    /// Marks a queue's worker as running or stopped.
    pub fn set_queue_running(&self, queue: &str, running: bool) {
        self.lock().queues.insert(queue.to_string(), running);
    }

    /// Notes a successful heartbeat.
    pub fn heartbeat_ok(&self) {
        self.lock().last_heartbeat = Some(Instant::now());
    }

    /// Counts one claim query.
    pub fn claim_query(&self) {
        self.lock().claim_queries += 1;
    }

    /// Counts jobs claimed.
    pub fn jobs_claimed(&self, n: u64) {
        self.lock().jobs_claimed += n;
    }

    /// Jobs claimed so far (without copying the rest, as `snapshot` does).
    pub fn jobs_claimed_total(&self) -> u64 {
        self.lock().jobs_claimed
    }

    /// Notes a vacuum of the queue table.
    pub fn queue_vacuumed(&self) {
        self.lock().queue_vacuums += 1;
    }

    /// Notes that the outcome writer wrote a batch.
    pub fn outcome_writer_ok(&self) {
        self.lock().outcome_writer_failing_since = None;
    }

    /// Notes that a write of the outcome writer failed (it will retry).
    pub fn outcome_writer_failed(&self) {
        self.lock()
            .outcome_writer_failing_since
            .get_or_insert_with(Instant::now);
    }

    /// Notes that an outcome write starts (`true`) or has returned (`false`).
    pub fn outcome_write_in_progress(&self, busy: bool) {
        self.lock().outcome_write_started = busy.then(Instant::now);
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> StatsSnapshot {
        let s = self.lock();
        StatsSnapshot {
            outcomes: s
                .kinds
                .iter()
                .flat_map(|(kind, k)| k.outcomes.iter().map(|(o, n)| ((kind.clone(), *o), *n)))
                .collect(),
            durations: s
                .kinds
                .iter()
                .map(|(kind, k)| (kind.clone(), k.durations.clone()))
                .collect(),
            queues: s.queues.clone(),
            since_heartbeat: s.last_heartbeat.map(|t| t.elapsed()),
            claim_queries: s.claim_queries,
            jobs_claimed: s.jobs_claimed,
            queue_vacuums: s.queue_vacuums,
            outcome_writer_failing_for: s.outcome_writer_failing_since.map(|t| t.elapsed()),
            outcome_write_busy_for: s.outcome_write_started.map(|t| t.elapsed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_puts_each_duration_in_its_bucket() {
        let stats = RuntimeStats::default();
        stats.record_attempt("ping", AttemptOutcome::Done, Duration::from_millis(3));
        stats.record_attempt("ping", AttemptOutcome::Done, Duration::from_millis(700));
        stats.record_attempt("ping", AttemptOutcome::Retried, Duration::from_secs(1000));
        let snap = stats.snapshot();
        assert_eq!(
            snap.outcomes[&("ping".to_string(), AttemptOutcome::Done)],
            2
        );
        let h = &snap.durations["ping"];
        assert_eq!(
            (
                h.buckets[0],
                h.buckets[7],
                h.buckets[DURATION_BUCKETS.len()]
            ),
            (1, 1, 1)
        );
        assert_eq!(h.count, 3);
    }
}
