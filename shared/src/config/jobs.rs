//! The job engine's settings (`DKL_QUEUE_CONCURRENCY`, heartbeats, retries,
//! pruning, rescues, timeouts).

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;
use super::parse::{age, millis, number, secs};

/// Settings of the job engine (see [`crate::jobs`]).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// `DKL_QUEUE_CONCURRENCY`: how many jobs of each queue one worker process runs at once.
    pub queue_concurrency: BTreeMap<String, usize>,
    /// `DKL_POLL_INTERVAL_MS`: the longest an idle fetcher waits before it looks again,
    /// even when no NOTIFY arrived (safety net for lost notifications).
    pub poll_interval: Duration,
    /// `DKL_FETCH_BATCH`: the most jobs one fetch query claims.
    pub fetch_batch: usize,
    /// `DKL_FETCHERS_PER_QUEUE`: fetch loops per queue (claims in flight at once).
    pub fetchers_per_queue: usize,
    /// `DKL_HEARTBEAT_SECS`: how often a worker process says it is alive.
    pub heartbeat_interval: Duration,
    /// `DKL_RESCUE_AFTER_SECS`: a worker silent this long is dead; its running jobs are rescued.
    pub rescue_after: Duration,
    /// `DKL_SHUTDOWN_GRACE_SECS`: how long running jobs may finish after SIGTERM before
    /// they are stopped and put back (without using up an attempt).
    pub shutdown_grace: Duration,
    /// `DKL_CANCEL_GRACE_SECS`: how long a cancelled running job may wind down before it is dropped.
    pub cancel_grace: Duration,
    /// `DKL_RETRY_BASE_MS`: backoff before the second attempt; it doubles for each further one.
    pub retry_base: Duration,
    /// `DKL_RETRY_MAX_SECS`: backoff never grows past this.
    pub retry_max: Duration,
    /// `DKL_PRUNE_DONE_AFTER`: finished jobs older than this are deleted by the prune job.
    pub prune_done_after: Duration,
    /// `DKL_PRUNE_DISCARDED_AFTER`: discarded and cancelled jobs are kept this long (for post-mortems).
    pub prune_discarded_after: Duration,
    /// `DKL_MAX_RESCUES`: how many times a job is put back after its worker
    /// died running it; the next such death discards it (it crashes workers).
    pub max_rescues: i32,
    /// `DKL_JOB_TIMEOUTS`: execution timeouts by kind, overriding each kind's own.
    pub kind_timeouts: BTreeMap<String, Duration>,
    /// `DKL_QUEUE_VACUUM_EVERY`: after this many jobs claimed by this process,
    /// it vacuums the queue table (0: never; leave it to autovacuum).
    pub vacuum_every: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            queue_concurrency: default_queue_concurrency(),
            poll_interval: Duration::from_millis(500),
            fetch_batch: 200,
            fetchers_per_queue: 2,
            heartbeat_interval: Duration::from_secs(5),
            rescue_after: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            cancel_grace: Duration::from_secs(5),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(3600),
            prune_done_after: Duration::from_secs(7 * 86_400),
            prune_discarded_after: Duration::from_secs(30 * 86_400),
            max_rescues: 3,
            kind_timeouts: BTreeMap::new(),
            vacuum_every: 5_000,
        }
    }
}

fn default_queue_concurrency() -> BTreeMap<String, usize> {
    [
        ("default", 10),
        ("mail", 4),
        ("incoming", 8),
        ("newsletter", 2),
        ("maintenance", 2),
        ("images", 2),
    ]
    .into_iter()
    .map(|(q, n)| (q.to_string(), n))
    .collect()
}

impl JobsConfig {
    /// Reads the job engine's variables.
    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let jobs = Self {
            queue_concurrency: match get("DKL_QUEUE_CONCURRENCY") {
                Some(v) => parse_concurrency(&v)?,
                None => d.queue_concurrency,
            },
            poll_interval: millis(get, "DKL_POLL_INTERVAL_MS", d.poll_interval, 10, 60_000)?,
            fetch_batch: number(get, "DKL_FETCH_BATCH", d.fetch_batch as u64, 1, 10_000)? as usize,
            fetchers_per_queue: number(
                get,
                "DKL_FETCHERS_PER_QUEUE",
                d.fetchers_per_queue as u64,
                1,
                16,
            )? as usize,
            heartbeat_interval: secs(get, "DKL_HEARTBEAT_SECS", d.heartbeat_interval, 1, 300)?,
            rescue_after: secs(get, "DKL_RESCUE_AFTER_SECS", d.rescue_after, 2, 3600)?,
            shutdown_grace: secs(get, "DKL_SHUTDOWN_GRACE_SECS", d.shutdown_grace, 0, 3600)?,
            cancel_grace: secs(get, "DKL_CANCEL_GRACE_SECS", d.cancel_grace, 0, 3600)?,
            retry_base: millis(get, "DKL_RETRY_BASE_MS", d.retry_base, 1, 3_600_000)?,
            retry_max: secs(get, "DKL_RETRY_MAX_SECS", d.retry_max, 1, 7 * 86_400)?,
            prune_done_after: age(get, "DKL_PRUNE_DONE_AFTER", d.prune_done_after)?,
            prune_discarded_after: age(get, "DKL_PRUNE_DISCARDED_AFTER", d.prune_discarded_after)?,
            max_rescues: number(get, "DKL_MAX_RESCUES", d.max_rescues as u64, 1, 100)? as i32,
            kind_timeouts: match get("DKL_JOB_TIMEOUTS") {
                Some(v) => parse_kind_timeouts(&v)?,
                None => d.kind_timeouts,
            },
            vacuum_every: number(get, "DKL_QUEUE_VACUUM_EVERY", d.vacuum_every, 0, 10_000_000)?,
        };
        if jobs.rescue_after < jobs.heartbeat_interval * 2 {
            return Err(ConfigError {
                var: "DKL_RESCUE_AFTER_SECS",
                value: jobs.rescue_after.as_secs().to_string(),
                expected: format!(
                    "at least twice DKL_HEARTBEAT_SECS ({}s), or live workers' jobs would be rescued",
                    jobs.heartbeat_interval.as_secs()
                ),
            });
        }
        Ok(jobs)
    }
}

/// Parses `ping=30,fetch_mail=120`: execution timeouts in seconds by kind.
fn parse_kind_timeouts(raw: &str) -> Result<BTreeMap<String, Duration>, ConfigError> {
    let pairs = NamedNumbers {
        var: "DKL_JOB_TIMEOUTS",
        what: "kind=seconds",
        name: "job kind name",
        range: 1..=86_400,
        example: "fetch_mail=120,send_email=60",
    };
    Ok(pairs
        .parse(raw)?
        .into_iter()
        .map(|(kind, secs)| (kind, Duration::from_secs(secs)))
        .collect())
}

/// Parses `mail=7,bulk=3` over the default queues.
fn parse_concurrency(raw: &str) -> Result<BTreeMap<String, usize>, ConfigError> {
    let pairs = NamedNumbers {
        var: "DKL_QUEUE_CONCURRENCY",
        what: "queue=number",
        name: "queue name (letters, digits, _ and -)",
        range: 1..=1000,
        example: "default=10,mail=4,maintenance=2",
    };
    let mut map = default_queue_concurrency();
    map.extend(
        pairs
            .parse(raw)?
            .into_iter()
            .map(|(queue, n)| (queue, n as usize)),
    );
    Ok(map)
}

/// A comma-separated list of `name=number` pairs in one variable.
struct NamedNumbers {
    var: &'static str,
    what: &'static str,
    name: &'static str,
    range: std::ops::RangeInclusive<u64>,
    example: &'static str,
}

impl NamedNumbers {
    fn parse(&self, raw: &str) -> Result<Vec<(String, u64)>, ConfigError> {
        let (lo, hi) = (self.range.start(), self.range.end());
        let bad = |why: String| ConfigError {
            var: self.var,
            value: raw.to_string(),
            expected: format!(
                "comma-separated {} pairs with numbers {lo}..={hi}, e.g. {} ({why})",
                self.what, self.example
            ),
        };
        let mut out = Vec::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, n) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("`{pair}` has no `=`")))?;
            let name = name.trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(format!("`{name}` is not a {}", self.name)));
            }
            let n: u64 = n
                .trim()
                .parse()
                .ok()
                .filter(|n| self.range.contains(n))
                .ok_or_else(|| bad(format!("`{}` is not a number from {lo} to {hi}", n.trim())))?;
            out.push((name.to_string(), n));
        }
        Ok(out)
    }
}
