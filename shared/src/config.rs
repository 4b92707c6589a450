//! Configuration from environment variables, validated once at start.
//!
//! Every binary calls [`Config::from_env`] before it touches the database, so a
//! typo in a variable stops the process with a message that names the variable
//! and what it accepts, instead of surfacing hours later as odd behaviour.
//! `.env.example` at the repository root documents every variable.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why a configuration value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {var}={value:?}: {expected}")]
pub struct ConfigError {
    /// The environment variable that holds the bad value.
    pub var: &'static str,
    /// The value as it was given.
    pub value: String,
    /// What the variable accepts, phrased as advice.
    pub expected: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Everything the binaries read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: where PostgreSQL is.
    pub database_url: String,
    /// `DKL_DB_MAX_CONNECTIONS`: size of each process's connection pool.
    pub db_max_connections: u32,
    /// `LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// Job engine settings.
    pub jobs: JobsConfig,
    /// dkl-scheduler settings.
    pub scheduler: SchedulerConfig,
    /// `DKL_HTTP_ADDR`: where dkl-worker serves `/healthz` and `/metrics`
    /// (`off` = nowhere; port 0 = any free port, logged at start).
    pub http_addr: Option<std::net::SocketAddr>,
    /// Settings of `/healthz` and `/metrics`.
    pub monitor: MonitorConfig,
}

/// Settings of dkl-worker's `/healthz` and `/metrics`.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// `DKL_MONITOR_CACHE_MS`: database figures are read at most once per
    /// this period, however many clients scrape.
    pub cache_for: Duration,
    /// `DKL_HEALTH_MAX_DUE_AGE_SECS`: `/healthz` fails when a job on a queue
    /// this worker serves has been due for longer (`0` = never).
    pub max_due_age: Option<Duration>,
    /// `DKL_MONITOR_DB_CONNECTIONS`: the monitoring pool's size, apart from
    /// the job runtime's pool so scrapes cannot starve jobs.
    pub db_connections: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self { cache_for: Duration::from_millis(5000), max_due_age: Some(Duration::from_secs(600)), db_connections: 2 }
    }
}

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

/// The address `/healthz` and `/metrics` listen on by default.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9464";

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
    /// `DKL_MAX_RESCUES`: a job whose worker died while running it this many
    /// times is not put back once more but discarded (it crashes workers).
    pub max_rescues: i32,
    /// `DKL_JOB_TIMEOUTS`: execution timeouts by kind, overriding each kind's own.
    pub kind_timeouts: BTreeMap<String, Duration>,
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
        }
    }
}

fn default_queue_concurrency() -> BTreeMap<String, usize> {
    [("default", 10), ("mail", 4), ("maintenance", 2)]
        .into_iter()
        .map(|(q, n)| (q.to_string(), n))
        .collect()
}

/// Every variable [`Config::from_lookup`] reads (`.env.example` documents each).
pub const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "DKL_DB_MAX_CONNECTIONS",
    "LOG_FORMAT",
    "DKL_QUEUE_CONCURRENCY",
    "DKL_POLL_INTERVAL_MS",
    "DKL_FETCH_BATCH",
    "DKL_FETCHERS_PER_QUEUE",
    "DKL_HEARTBEAT_SECS",
    "DKL_RESCUE_AFTER_SECS",
    "DKL_SHUTDOWN_GRACE_SECS",
    "DKL_CANCEL_GRACE_SECS",
    "DKL_RETRY_BASE_MS",
    "DKL_RETRY_MAX_SECS",
    "DKL_PRUNE_DONE_AFTER",
    "DKL_PRUNE_DISCARDED_AFTER",
    "DKL_MAX_RESCUES",
    "DKL_JOB_TIMEOUTS",
    "DKL_MONITOR_CACHE_MS",
    "DKL_HEALTH_MAX_DUE_AGE_SECS",
    "DKL_MONITOR_DB_CONNECTIONS",
    "DKL_SCHEDULER_POLL_MS",
    "DKL_SCHEDULER_LEADER_RETRY_MS",
    "DKL_SCHEDULER_LEADER_STALE_SECS",
    "DKL_HTTP_ADDR",
];

/// The database a fresh checkout talks to when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/dkl";

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads and validates configuration from any key lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = JobsConfig::default();
        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: "DATABASE_URL",
                value: redact_url(&database_url),
                expected: "a URL starting with postgres:// (e.g. postgres://postgres@127.0.0.1:5432/dkl)".into(),
            });
        }
        let jobs = JobsConfig {
            queue_concurrency: match get("DKL_QUEUE_CONCURRENCY") {
                Some(v) => parse_concurrency(&v)?,
                None => d.queue_concurrency,
            },
            poll_interval: millis(&get, "DKL_POLL_INTERVAL_MS", d.poll_interval, 10, 60_000)?,
            fetch_batch: number(&get, "DKL_FETCH_BATCH", d.fetch_batch as u64, 1, 10_000)? as usize,
            fetchers_per_queue: number(&get, "DKL_FETCHERS_PER_QUEUE", d.fetchers_per_queue as u64, 1, 16)? as usize,
            heartbeat_interval: secs(&get, "DKL_HEARTBEAT_SECS", d.heartbeat_interval, 1, 300)?,
            rescue_after: secs(&get, "DKL_RESCUE_AFTER_SECS", d.rescue_after, 2, 3600)?,
            shutdown_grace: secs(&get, "DKL_SHUTDOWN_GRACE_SECS", d.shutdown_grace, 0, 3600)?,
            cancel_grace: secs(&get, "DKL_CANCEL_GRACE_SECS", d.cancel_grace, 0, 3600)?,
            retry_base: millis(&get, "DKL_RETRY_BASE_MS", d.retry_base, 1, 3_600_000)?,
            retry_max: secs(&get, "DKL_RETRY_MAX_SECS", d.retry_max, 1, 7 * 86_400)?,
            prune_done_after: age(&get, "DKL_PRUNE_DONE_AFTER", d.prune_done_after)?,
            prune_discarded_after: age(&get, "DKL_PRUNE_DISCARDED_AFTER", d.prune_discarded_after)?,
            max_rescues: number(&get, "DKL_MAX_RESCUES", d.max_rescues as u64, 1, 100)? as i32,
            kind_timeouts: match get("DKL_JOB_TIMEOUTS") {
                Some(v) => parse_kind_timeouts(&v)?,
                None => d.kind_timeouts,
            },
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
        let scheduler = SchedulerConfig {
            poll_interval: millis(&get, "DKL_SCHEDULER_POLL_MS", SchedulerConfig::default().poll_interval, 50, 60_000)?,
            leader_retry: millis(&get, "DKL_SCHEDULER_LEADER_RETRY_MS", SchedulerConfig::default().leader_retry, 50, 60_000)?,
            leader_stale_after: secs(&get, "DKL_SCHEDULER_LEADER_STALE_SECS", SchedulerConfig::default().leader_stale_after, 2, 3600)?,
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
        Ok(Self {
            database_url,
            db_max_connections: number(&get, "DKL_DB_MAX_CONNECTIONS", 20, 2, 500)? as u32,
            log_format: match get("LOG_FORMAT").as_deref() {
                None | Some("text") | Some("") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError {
                        var: "LOG_FORMAT",
                        value: other.into(),
                        expected: "`text` (default) or `json`".into(),
                    });
                }
            },
            jobs,
            scheduler,
            http_addr: parse_http_addr(get("DKL_HTTP_ADDR").as_deref().unwrap_or(DEFAULT_HTTP_ADDR))?,
            monitor: {
                let d = MonitorConfig::default();
                let max_due_secs = d.max_due_age.map_or(0, |a| a.as_secs());
                MonitorConfig {
                    cache_for: millis(&get, "DKL_MONITOR_CACHE_MS", d.cache_for, 0, 300_000)?,
                    max_due_age: match number(&get, "DKL_HEALTH_MAX_DUE_AGE_SECS", max_due_secs, 0, 30 * 86_400)? {
                        0 => None,
                        n => Some(Duration::from_secs(n)),
                    },
                    db_connections: number(&get, "DKL_MONITOR_DB_CONNECTIONS", d.db_connections as u64, 1, 20)? as u32,
                }
            },
        })
    }
}

fn parse_http_addr(raw: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| ConfigError {
        var: "DKL_HTTP_ADDR",
        value: raw.into(),
        expected: "IP:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464, 127.0.0.1:0 for any free port) or `off`".into(),
    })
}

/// Hides the password of a database URL (in the user part and in a
/// `password=` parameter), so it can go into logs and errors.
///
/// Everything between `://` and the *last* `@` is the user part: a password
/// may itself contain `@`, `?`, `/` or `#` when the writer did not encode
/// them, so no other character can be trusted to end it.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_string();
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            // A user name with `/` or `?` means the '@' was not the user part's.
            let user = if user.contains(['/', '?', '#']) { "***" } else { user };
            let masked = if userinfo.contains(':') || user == "***" { format!("{user}:***@") } else { format!("{user}@") };
            (masked, after)
        }
        None => (String::new(), rest),
    };
    let (host_path, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{user}{host_path}?{q}"),
        None => format!("{scheme}://{user}{host_path}"),
    }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(var) else { return Ok(default) };
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError {
            var,
            value: raw,
            expected: format!("a whole number from {min} to {max} (default {default})"),
        }),
    }
}

fn secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(get, var, default.as_secs(), min, max).map(Duration::from_secs)
}

fn millis(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(get, var, default.as_millis() as u64, min, max).map(Duration::from_millis)
}

fn age(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = get(var) else { return Ok(default) };
    parse_age(&raw).ok_or(ConfigError {
        var,
        value: raw,
        expected: format!(
            "a duration such as 90s, 30m, 12h or 7d (a whole number with unit s, m, h or d, from 1s to {}d)",
            MAX_AGE.as_secs() / 86_400
        ),
    })
}

/// The longest age [`parse_age`] accepts (ten years): retention ages past it
/// would put timestamps out of PostgreSQL's range.
pub const MAX_AGE: Duration = Duration::from_secs(3650 * 86_400);

/// Parses `90s`, `30m`, `12h`, `7d` (at least 1s, at most [`MAX_AGE`]).
pub fn parse_age(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let unit = raw.chars().last()?;
    let num = &raw[..raw.len() - unit.len_utf8()];
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let unit_secs: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let secs = n.checked_mul(unit_secs)?;
    (n > 0 && secs <= MAX_AGE.as_secs()).then(|| Duration::from_secs(secs))
}

/// Parses `ping=30,fetch_mail=120`: execution timeouts in seconds by kind.
fn parse_kind_timeouts(raw: &str) -> Result<BTreeMap<String, Duration>, ConfigError> {
    let bad = |why: String| ConfigError {
        var: "DKL_JOB_TIMEOUTS",
        value: raw.to_string(),
        expected: format!("comma-separated kind=seconds pairs with seconds 1..=86400, e.g. fetch_mail=120,send_email=60 ({why})"),
    };
    let mut map = BTreeMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, secs) = pair.split_once('=').ok_or_else(|| bad(format!("`{pair}` has no `=`")))?;
        let kind = kind.trim();
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad(format!("`{kind}` is not a job kind name")));
        }
        let secs: u64 = secs
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=86_400).contains(n))
            .ok_or_else(|| bad(format!("`{}` is not a number of seconds from 1 to 86400", secs.trim())))?;
        map.insert(kind.to_string(), Duration::from_secs(secs));
    }
    Ok(map)
}

fn parse_concurrency(raw: &str) -> Result<BTreeMap<String, usize>, ConfigError> {
    let bad = |why: String| ConfigError {
        var: "DKL_QUEUE_CONCURRENCY",
        value: raw.to_string(),
        expected: format!(
            "comma-separated queue=number pairs with numbers 1..=1000, e.g. default=10,mail=4,maintenance=2 ({why})"
        ),
    };
    let mut map = default_queue_concurrency();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (queue, n) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("`{pair}` has no `=`")))?;
        let queue = queue.trim();
        if queue.is_empty() || !queue.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad(format!("`{queue}` is not a queue name (letters, digits, _ and -)")));
        }
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| bad(format!("`{}` is not a number from 1 to 1000", n.trim())))?;
        map.insert(queue.to_string(), n);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn env_example_documents_every_variable_with_a_valid_value() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../.env.example");
        let text = std::fs::read_to_string(path).expect(".env.example exists");
        let map: BTreeMap<String, String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        for var in VARIABLES {
            assert!(map.contains_key(*var), ".env.example lacks {var}");
        }
        // Every variable the code reads is in VARIABLES (checked against this file's source).
        let source = include_str!("config.rs");
        for quoted in source.split('"').skip(1).step_by(2) {
            let looks_like_var = quoted.starts_with("DKL_") && quoted.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            if looks_like_var {
                assert!(VARIABLES.contains(&quoted), "{quoted} is read but not listed in VARIABLES");
            }
        }
        Config::from_lookup(|k| map.get(k).cloned()).expect(".env.example values are valid");
    }

    #[test]
    fn defaults_are_valid() {
        let c = with(&[]).expect("defaults");
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.jobs.queue_concurrency["mail"], 4);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_number_names_variable_and_range() {
        let e = with(&[("DKL_FETCH_BATCH", "lots")]).unwrap_err();
        assert_eq!(e.var, "DKL_FETCH_BATCH");
        assert!(e.to_string().contains("a whole number from 1 to 10000"), "{e}");
    }

    #[test]
    fn bad_concurrency_pair_is_refused() {
        let e = with(&[("DKL_QUEUE_CONCURRENCY", "mail=0")]).unwrap_err();
        assert_eq!(e.var, "DKL_QUEUE_CONCURRENCY");
        assert!(e.to_string().contains("`0` is not a number"), "{e}");
        let c = with(&[("DKL_QUEUE_CONCURRENCY", "mail=7, bulk=3")]).unwrap();
        assert_eq!(c.jobs.queue_concurrency["mail"], 7);
        assert_eq!(c.jobs.queue_concurrency["bulk"], 3);
        assert_eq!(c.jobs.queue_concurrency["default"], 10);
    }

    #[test]
    fn ages_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_age("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_age("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("0h"), None);
        let e = with(&[("DKL_PRUNE_DONE_AFTER", "1 week")]).unwrap_err();
        assert_eq!(e.var, "DKL_PRUNE_DONE_AFTER");
    }

    #[test]
    fn leader_staleness_must_outlast_polls() {
        let e = with(&[("DKL_SCHEDULER_POLL_MS", "20000"), ("DKL_SCHEDULER_LEADER_STALE_SECS", "30")]).unwrap_err();
        assert_eq!(e.var, "DKL_SCHEDULER_LEADER_STALE_SECS");
        assert!(with(&[("DKL_SCHEDULER_POLL_MS", "10000"), ("DKL_SCHEDULER_LEADER_STALE_SECS", "30")]).is_ok());
    }

    #[test]
    fn rescue_must_outlast_heartbeats() {
        let e = with(&[("DKL_HEARTBEAT_SECS", "10"), ("DKL_RESCUE_AFTER_SECS", "15")]).unwrap_err();
        assert_eq!(e.var, "DKL_RESCUE_AFTER_SECS");
    }

    #[test]
    fn password_never_appears_in_errors() {
        let e = with(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(redact_url("postgres://u:pw@h:5432/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_url("postgres://u@h/d?sslmode=require&password=x"), "postgres://u@h/d?sslmode=require&password=***");
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        // Unencoded `?`, `/`, `#` in a password: still hidden.
        assert_eq!(redact_url("postgres://dkl:s3cr?tPW@db:5432/dkl"), "postgres://dkl:***@db:5432/dkl");
        assert_eq!(redact_url("postgres://dkl:a/b#c?d@db/dkl?sslmode=require"), "postgres://dkl:***@db/dkl?sslmode=require");
        assert_eq!(redact_url("postgres://dkl:x?password=y@db/dkl"), "postgres://dkl:***@db/dkl");
        for url in ["postgres://u:s3cr?tPW@h/d", "postgres://u:p@ss?w/rd@h/d?password=also&x=1"] {
            let shown = redact_url(url);
            assert!(!shown.contains("s3cr") && !shown.contains("tPW") && !shown.contains("rd@") && !shown.contains("also"), "{shown}");
        }
    }

    #[test]
    fn bad_ages_are_refused_not_panicked_on_or_wrapped() {
        for bad in ["7é", "é", "", "d", "-1d", "+1d", "3650000d", "213503982334602d", "18446744073709551615s", "1.5h", "0s"] {
            assert_eq!(parse_age(bad), None, "{bad:?}");
            let e = with(&[("DKL_PRUNE_DONE_AFTER", bad)]).unwrap_err();
            assert_eq!(e.var, "DKL_PRUNE_DONE_AFTER");
            assert!(e.to_string().contains("from 1s to 3650d"), "{e}");
        }
        assert_eq!(parse_age("3650d"), Some(MAX_AGE));
        assert_eq!(parse_age(" 12h "), Some(Duration::from_secs(43_200)));
    }

    #[test]
    fn job_timeouts_parse_and_bad_ones_are_refused() {
        let c = with(&[("DKL_JOB_TIMEOUTS", "ping=30, fetch_mail=120")]).unwrap();
        assert_eq!(c.jobs.kind_timeouts["ping"], Duration::from_secs(30));
        assert_eq!(c.jobs.kind_timeouts["fetch_mail"], Duration::from_secs(120));
        for bad in ["ping", "ping=0", "ping=lots", "p ng=3"] {
            let e = with(&[("DKL_JOB_TIMEOUTS", bad)]).unwrap_err();
            assert_eq!(e.var, "DKL_JOB_TIMEOUTS", "{bad}");
        }
        assert_eq!(with(&[("DKL_MAX_RESCUES", "0")]).unwrap_err().var, "DKL_MAX_RESCUES");
        assert_eq!(with(&[("DKL_HEALTH_MAX_DUE_AGE_SECS", "0")]).unwrap().monitor.max_due_age, None);
    }
}
