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
    /// Implicit TLS ("SMTPS", usually port 465): TLS from the first byte.
    Tls,
}

/// DKIM signing of one configuration's mail (RFC 6376), for its From domain.
#[derive(Clone)]
pub struct DkimConfig {
    /// The selector: the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key file's path (for messages).
    pub key_file: std::path::PathBuf,
    /// Its content: an RSA key as PKCS#1 PEM, or an Ed25519 key as the raw
    /// 32 bytes in base64.
    pub key: String,
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
    /// Extra trusted root certificates (PEM, from `DKL_SMTP_<NAME>_CA_FILE`)
    /// for a server whose certificate a private CA signed.
    pub ca_pem: Option<Vec<u8>>,
    /// DKIM signing, when `DKL_SMTP_<NAME>_DKIM_KEY_FILE` is set.
    pub dkim: Option<DkimConfig>,
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
            .field("ca_file", &self.ca_pem.is_some())
            .field(
                "dkim_selector",
                &self.dkim.as_ref().map(|d| d.selector.as_str()),
            )
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
    let tls = match value("TLS").as_deref() {
        None | Some("plain") => TlsMode::Plain,
        Some("starttls") => TlsMode::StartTls,
        Some("tls" | "implicit" | "smtps") => TlsMode::Tls,
        Some(other) => {
            return Err(ConfigError {
                var: var("TLS"),
                value: other.into(),
                expected: "`tls` (implicit TLS, port 465), `starttls` (STARTTLS required, port 587) or `plain` (loopback only unless ..._ALLOW_PLAIN=true)".into(),
            });
        }
    };
    let port = match value("PORT") {
        None => match tls {
            TlsMode::Plain => 1025,
            TlsMode::StartTls => 587,
            TlsMode::Tls => 465,
        },
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
                "`tls` or `starttls` for a server that is not on this machine ({host}); plain SMTP would send passwords and mail in the clear (set {}=true to allow it anyway)",
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
    let read_file =
        |field: &str, what: &str| -> Result<Option<(std::path::PathBuf, Vec<u8>)>, ConfigError> {
            let Some(path) = value(field) else {
                return Ok(None);
            };
            std::fs::read(&path)
                .map(|bytes| Some((path.clone().into(), bytes)))
                .map_err(|e| ConfigError {
                    var: var(field),
                    value: path,
                    expected: format!("a readable file with {what} ({e})"),
                })
        };
    let ca_pem = match read_file("CA_FILE", "PEM certificates")? {
        Some((path, pem))
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") =>
        {
            return Err(ConfigError {
                var: var("CA_FILE"),
                value: path.display().to_string(),
                expected: "a PEM file with at least one -----BEGIN CERTIFICATE----- block".into(),
            });
        }
        other => other.map(|(_, pem)| pem),
    };
    let dkim = match read_file(
        "DKIM_KEY_FILE",
        "a DKIM private key (RSA PKCS#1 PEM, or Ed25519 as 32 bytes in base64)",
    )? {
        None => None,
        Some((key_file, key)) => {
            let key = String::from_utf8(key).map_err(|_| ConfigError {
                var: var("DKIM_KEY_FILE"),
                value: key_file.display().to_string(),
                expected: "a text file: an RSA key as PKCS#1 PEM (-----BEGIN RSA PRIVATE KEY-----) or an Ed25519 key as base64".into(),
            })?;
            let selector = value("DKIM_SELECTOR").ok_or_else(|| ConfigError {
                var: var("DKIM_SELECTOR"),
                value: String::new(),
                expected: format!(
                    "the DKIM selector published in DNS (e.g. `dkl2026`), needed with {}",
                    var("DKIM_KEY_FILE")
                ),
            })?;
            Some(DkimConfig {
                selector,
                key_file,
                key,
            })
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
        ca_pem,
        dkim,
    })
}
