//! dkl-worker's HTTP listener: where it listens, and how `/healthz` and
//! `/metrics` read the database.

use std::time::Duration;

use super::ConfigError;
use super::parse::{millis, number};

/// The address `/healthz` and `/metrics` listen on by default.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9464";

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
        Self {
            cache_for: Duration::from_millis(5000),
            max_due_age: Some(Duration::from_secs(600)),
            db_connections: 2,
        }
    }
}

impl MonitorConfig {
    /// Reads the variables of `/healthz` and `/metrics`.
    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_due_secs = d.max_due_age.map_or(0, |a| a.as_secs());
        Ok(Self {
            cache_for: millis(get, "DKL_MONITOR_CACHE_MS", d.cache_for, 0, 300_000)?,
            max_due_age: match number(
                get,
                "DKL_HEALTH_MAX_DUE_AGE_SECS",
                max_due_secs,
                0,
                30 * 86_400,
            )? {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            db_connections: number(
                get,
                "DKL_MONITOR_DB_CONNECTIONS",
                d.db_connections as u64,
                1,
                20,
            )? as u32,
        })
    }
}

pub(crate) fn parse_http_addr(raw: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| ConfigError {
        var: "DKL_HTTP_ADDR",
        value: raw.into(),
        expected:
            "IP:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464, 127.0.0.1:0 for any free port) or `off`"
                .into(),
    })
}
