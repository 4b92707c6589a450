//! Outgoing mail: the SMTP configurations (`default`, `registration`,
//! `newsletter`, …), each from `DKL_SMTP_<NAME>_*` variables.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;

/// How a connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: only to loopback, unless `DKL_SMTP_<NAME>_ALLOW_PLAIN=true`.
    Plain,
    /// STARTTLS, required: a server that does not offer it is refused.
    StartTls,
}

/// One SMTP configuration.
#[derive(Clone)]
pub struct SmtpConfig {
    /// Its name (`default`, `registration`, `newsletter`, …).
    pub name: String,
    /// Server host name or IP.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// How the connection is secured.
    pub tls: TlsMode,
    /// Login, if the server wants one.
    pub user: Option<String>,
    /// Password, from `DKL_SMTP_<NAME>_PASSWORD`; never logged (`Debug` hides it).
    pub password: Option<String>,
    /// The From address (`Naam <adres>` or an address).
    pub from: String,
    /// Connecting and the greeting may take this long.
    pub connect_timeout: Duration,
    /// Open connections kept for reuse.
    pub pool_size: usize,
    /// One SMTP command (the message's DATA included) may take this long.
    pub command_timeout: Duration,
    /// At most this many messages per second, across every worker process.
    pub rate_per_second: Option<u32>,
    /// At most this many messages per hour, across every worker process.
    pub rate_per_hour: Option<u32>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("from", &self.from)
            .finish()
    }
}

/// Every SMTP configuration: `default`, and the others by name.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `default`: used for any name without a configuration of its own.
    pub default: SmtpConfig,
    /// The others (`registration`, `newsletter`, …), by name.
    pub named: BTreeMap<String, SmtpConfig>,
}

impl MailConfig {
    /// The configuration for `name`, or `default` when there is none by that name.
    pub fn smtp_for(&self, name: &str) -> &SmtpConfig {
        self.named.get(name).unwrap_or(&self.default)
    }

    /// Every configuration, `default` first.
    pub fn all(&self) -> impl Iterator<Item = &SmtpConfig> {
        std::iter::once(&self.default).chain(self.named.values())
    }

    /// Every configuration, to adjust (benchmarks point them at a local server).
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut SmtpConfig> {
        std::iter::once(&mut self.default).chain(self.named.values_mut())
    }

    /// Reads `DKL_SMTP_CONFIGS` (default `default`) and each named configuration.
    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let names_raw = get("DKL_SMTP_CONFIGS").unwrap_or_else(|| "default".into());
        let mut named = BTreeMap::new();
        for name in names_raw
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError {
                    var: "DKL_SMTP_CONFIGS",
                    value: names_raw.clone(),
                    expected: format!(
                        "comma-separated names of letters, digits and _, e.g. default,registration,newsletter (`{name}` is not)"
                    ),
                });
            }
            if name != "default" && !named.contains_key(name) {
                named.insert(name.to_string(), smtp_config(get, name)?);
            }
        }
        Ok(Self {
            default: smtp_config(get, "default")?,
            named,
        })
    }
}

fn smtp_config(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<SmtpConfig, ConfigError> {
    let upper = name.to_ascii_uppercase();
    // Variable names are built per configuration; `leak` gives the error the
    // `&'static str` it keeps (a handful of names, once, at start).
    let var = |field: &str| -> &'static str {
        Box::leak(format!("DKL_SMTP_{upper}_{field}").into_boxed_str())
    };
    let value = |field: &str| {
        get(var(field))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let host = value("HOST").unwrap_or_else(|| "127.0.0.1".into());
    let port = match value("PORT") {
        None => 1025,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ConfigError {
                var: var("PORT"),
                value: p.clone(),
                expected: "a port number from 1 to 65535".into(),
            })?,
    };
    let tls = match value("TLS").as_deref() {
        None | Some("plain") => TlsMode::Plain,
        Some("starttls") => TlsMode::StartTls,
        Some(other) => {
            return Err(ConfigError {
                var: var("TLS"),
                value: other.into(),
                expected: "`starttls` (STARTTLS required) or `plain` (loopback only unless ..._ALLOW_PLAIN=true)".into(),
            });
        }
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let allow_plain = matches!(value("ALLOW_PLAIN").as_deref(), Some("true" | "1" | "yes"));
    if tls == TlsMode::Plain && !loopback && !allow_plain {
        return Err(ConfigError {
            var: var("TLS"),
            value: "plain".into(),
            expected: format!(
                "`starttls` for a server that is not on this machine ({host}); plain SMTP would send passwords and mail in the clear (set {}=true to allow it anyway)",
                var("ALLOW_PLAIN")
            ),
        });
    }
    let from = value("FROM")
        .unwrap_or_else(|| "De Koninklijke Loop <noreply@dekoninklijkeloop.nl>".into());
    if !from.contains('@') {
        return Err(ConfigError {
            var: var("FROM"),
            value: from,
            expected: "an address, e.g. De Koninklijke Loop <info@dekoninklijkeloop.nl>".into(),
        });
    }
    let number = |field: &str, default: u64, max: u64| -> Result<u64, ConfigError> {
        match value(field) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ConfigError {
                    var: var(field),
                    value: v.clone(),
                    expected: format!("a whole number from 1 to {max} (default {default})"),
                }),
        }
    };
    Ok(SmtpConfig {
        name: name.to_string(),
        host,
        port,
        tls,
        user: value("USER"),
        // Taken as it is: spaces may be part of a password.
        password: get(var("PASSWORD")).filter(|p| !p.is_empty()),
        from,
        connect_timeout: Duration::from_secs(number("CONNECT_TIMEOUT_SECS", 10, 300)?),
        pool_size: number("POOL_SIZE", 4, 100)? as usize,
        command_timeout: Duration::from_secs(number("COMMAND_TIMEOUT_SECS", 60, 600)?),
        rate_per_second: value("RATE_PER_SECOND")
            .map(|_| number("RATE_PER_SECOND", 0, 100_000))
            .transpose()?
            .map(|n| n as u32),
        rate_per_hour: value("RATE_PER_HOUR")
            .map(|_| number("RATE_PER_HOUR", 0, 10_000_000))
            .transpose()?
            .map(|n| n as u32),
    })
}
