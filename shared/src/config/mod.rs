//! Configuration from environment variables, validated once at start.
//!
//! Every binary calls [`Config::from_env`] before it touches the database, so a
//! typo in a variable stops the process with a message that names the variable
//! and what it accepts, instead of surfacing hours later as odd behaviour.
//! `.env.example` at the repository root documents every variable.
//!
//! One file per area: [`jobs`] (the engine), [`scheduler`], [`http`]
//! (`/healthz` and `/metrics`); `parse` reads single values. Mail, IMAP,
//! newsletter, response and image settings have files of their own.

mod dashboard;
mod http;
mod images;
mod imap;
mod jobs;
mod mail;
mod newsletter;
mod parse;
mod responses;
mod scheduler;

pub use dashboard::DashboardConfig;
pub use http::{DEFAULT_HTTP_ADDR, MonitorConfig};
pub use images::{DEFAULT_CLOUDINARY_BASE_URL, ImagesConfig};
pub use imap::{AfterImport, ImapAccount, ImapConfig};
pub use jobs::JobsConfig;
pub use mail::{DkimConfig, MailConfig, SmtpConfig, TlsMode};
pub use newsletter::{DEFAULT_PUBLIC_BASE_URL, NewsletterConfig};
pub use parse::{MAX_AGE, parse_age};
pub use responses::ResponsesConfig;
pub use scheduler::SchedulerConfig;

use http::parse_http_addr;
use parse::number;

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
    /// Outgoing mail: the SMTP configurations.
    pub mail: MailConfig,
    /// Incoming mail: the IMAP accounts.
    pub imap: ImapConfig,
    /// Newsletters: unsubscribe links, List-Id, retries.
    pub newsletter: NewsletterConfig,
    /// Auto-responses, bounces and mailto unsubscribes.
    pub responses: ResponsesConfig,
    /// The image store (Cloudinary or compatible).
    pub images: ImagesConfig,
    /// The operator dashboard's logins.
    pub dashboard: DashboardConfig,
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
    "DKL_QUEUE_VACUUM_EVERY",
    "DKL_MONITOR_CACHE_MS",
    "DKL_HEALTH_MAX_DUE_AGE_SECS",
    "DKL_MONITOR_DB_CONNECTIONS",
    "DKL_SMTP_CONFIGS",
    "DKL_IMAP_ACCOUNTS",
    "DKL_IMAP_MAX_MESSAGE_MB",
    "DKL_IMAP_FETCH_BATCH",
    "DKL_IMAP_POLL_SECS",
    "DKL_IMAP_IDLE_RENEW_SECS",
    "DKL_IMAP_TIMEOUT_SECS",
    "DKL_PUBLIC_BASE_URL",
    "DKL_UNSUBSCRIBE_SECRET",
    "DKL_NEWSLETTER_LIST_ID",
    "DKL_NEWSLETTER_MAX_ATTEMPTS",
    "DKL_NEWSLETTER_RETRY_SECS",
    "DKL_AUTOREPLY_MAX_PER_HOUR",
    "DKL_BOUNCE_ADDRESS",
    "DKL_UNSUBSCRIBE_ADDRESS",
    "DKL_SOFT_BOUNCE_LIMIT",
    "DKL_SOFT_BOUNCE_DAYS",
    "DKL_CLOUDINARY_URL",
    "DKL_CLOUDINARY_BASE_URL",
    "DKL_IMAGE_FOLDER",
    "DKL_IMAGE_UPLOAD_ACCOUNTS",
    "DKL_IMAGE_MAX_MB",
    "DKL_IMAGE_TIMEOUT_SECS",
    "DKL_DASHBOARD_TOKEN",
    "DKL_DASHBOARD_PASSWORD_HASH",
    "DKL_DASHBOARD_SECURE_COOKIE",
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
        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError {
                var: "DATABASE_URL",
                value: redact_url(&database_url),
                expected:
                    "a URL starting with postgres:// (e.g. postgres://postgres@127.0.0.1:5432/dkl)"
                        .into(),
            });
        }
        let imap = ImapConfig::from_lookup(&get)?;
        let imap_names: Vec<String> = imap.accounts.iter().map(|a| a.name.clone()).collect();
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
            jobs: JobsConfig::from_lookup(&get)?,
            scheduler: SchedulerConfig::from_lookup(&get)?,
            http_addr: parse_http_addr(
                get("DKL_HTTP_ADDR").as_deref().unwrap_or(DEFAULT_HTTP_ADDR),
            )?,
            monitor: MonitorConfig::from_lookup(&get)?,
            mail: MailConfig::from_lookup(&get)?,
            newsletter: NewsletterConfig::from_lookup(&get)?,
            responses: ResponsesConfig::from_lookup(&get)?,
            images: ImagesConfig::from_lookup(&get, &imap_names)?,
            dashboard: DashboardConfig::from_lookup(&get)?,
            imap,
        })
    }
}

/// Hides the password of a database URL (in the user part and in any
/// `password=` parameter), so it can go into logs and errors.
///
/// A password may contain `@`, `?`, `/` or `#` when the writer did not
/// encode them, and a query may contain `@` (`user=alice@corp`), so no single
/// character can be trusted to end the user part. The user part ends at the
/// last `@` that is followed by something shaped like a host list (letters,
/// digits, `.`, `-`, `:`, `,`, `[`, `]`, `%`) up to the path or the end; when
/// in doubt, more is hidden, never less.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_string();
    };
    // Both readings of an ambiguous URL are applied: a character is hidden
    // if either the user part or a `password=` parameter claims it.
    let mut hidden = vec![false; rest.len()];
    // An empty host (`@/db?host=/run/postgresql`) counts; `_` is common in
    // container host names.
    let host_like = |after: &str| {
        let host = after.split(['/', '?', '#']).next().unwrap_or("");
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:,[]%".contains(c))
    };
    let ats: Vec<usize> = rest.match_indices('@').map(|(i, _)| i).collect();
    // No `@` followed by a host: hide up to the last `@` anyway.
    if let Some(&at) = ats
        .iter()
        .rev()
        .find(|&&i| host_like(&rest[i + 1..]))
        .or(ats.last())
    {
        let userinfo = &rest[..at];
        let from = match userinfo.split_once(':') {
            // A plain user name stays readable; anything odd goes too.
            Some((user, _)) if !user.contains(['/', '?', '#', '&', '=']) => user.len() + 1,
            None if !userinfo.contains(['/', '?', '#', '&', '=']) => at,
            _ => 0,
        };
        hidden[from..at].iter_mut().for_each(|h| *h = true);
    }
    // Parameter keys as the driver reads them: percent-decoded, any case.
    let mut key_start = 0;
    for (i, c) in rest.char_indices() {
        if c == '?' || c == '&' {
            key_start = i + 1;
        } else if c == '='
            && percent_decoded(&rest[key_start..i]).eq_ignore_ascii_case("password")
            && key_start > 0
        {
            let end = rest[i + 1..].find('&').map_or(rest.len(), |j| i + 1 + j);
            hidden[i + 1..end].iter_mut().for_each(|h| *h = true);
        }
    }
    let mut out = format!("{scheme}://");
    let mut in_hidden = false;
    for (i, c) in rest.char_indices() {
        match (hidden[i], in_hidden) {
            (true, false) => out.push_str("***"),
            (true, true) => {}
            (false, _) => out.push(c),
        }
        in_hidden = hidden[i];
    }
    out
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
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
        // Every variable the code reads is in VARIABLES (checked against the module's sources).
        let source = [
            include_str!("mod.rs"),
            include_str!("jobs.rs"),
            include_str!("scheduler.rs"),
            include_str!("http.rs"),
            include_str!("mail.rs"),
            include_str!("imap.rs"),
            include_str!("newsletter.rs"),
            include_str!("responses.rs"),
            include_str!("images.rs"),
            include_str!("dashboard.rs"),
        ]
        .concat();
        for quoted in source.split('"').skip(1).step_by(2) {
            let looks_like_var = quoted.starts_with("DKL_")
                && quoted.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            if looks_like_var {
                assert!(
                    VARIABLES.contains(&quoted),
                    "{quoted} is read but not listed in VARIABLES"
                );
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

    /// `Config` with `DKL_SMTP_DEFAULT_<field>` variables (per-configuration
    /// names are built, so they are not listed in `VARIABLES`).
    fn smtp_default(fields: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = fields
            .iter()
            .map(|(f, v)| (format!("DKL_SMTP_DEFAULT_{f}"), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn smtp_tls_modes_pick_their_ports_and_files_are_checked_at_start() {
        let var = |f: &str| format!("DKL_SMTP_DEFAULT_{f}");
        let c = smtp_default(&[("TLS", "tls"), ("HOST", "smtp.example.org")]).unwrap();
        assert_eq!(
            (c.mail.default.tls, c.mail.default.port),
            (TlsMode::Tls, 465)
        );
        let c = smtp_default(&[("TLS", "starttls"), ("HOST", "smtp.example.org")]).unwrap();
        assert_eq!(
            (c.mail.default.tls, c.mail.default.port),
            (TlsMode::StartTls, 587)
        );
        let e = smtp_default(&[("TLS", "ssl")]).unwrap_err();
        assert!(e.to_string().contains("`tls` (implicit TLS"), "{e}");
        let e = smtp_default(&[("HOST", "smtp.example.org")]).unwrap_err();
        assert_eq!(e.var, var("TLS"), "plain to a remote host is refused");

        let e = smtp_default(&[("CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert_eq!(e.var, var("CA_FILE"));
        let dir = std::env::temp_dir().join(format!("dkl-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = smtp_default(&[("CA_FILE", not_pem.to_str().unwrap())]).unwrap_err();
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
        let key = dir.join("dkim.key");
        std::fs::write(&key, "MC4CAQAwBQYDK2VwBCIEIK9z").unwrap();
        let e = smtp_default(&[("DKIM_KEY_FILE", key.to_str().unwrap())]).unwrap_err();
        assert_eq!(e.var, var("DKIM_SELECTOR"), "a key needs its selector");
        let c = smtp_default(&[
            ("DKIM_KEY_FILE", key.to_str().unwrap()),
            ("DKIM_SELECTOR", "dkl"),
        ])
        .unwrap();
        assert_eq!(
            c.mail.default.dkim.as_ref().map(|d| d.selector.as_str()),
            Some("dkl")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_number_names_variable_and_range() {
        let e = with(&[("DKL_FETCH_BATCH", "lots")]).unwrap_err();
        assert_eq!(e.var, "DKL_FETCH_BATCH");
        assert!(
            e.to_string().contains("a whole number from 1 to 10000"),
            "{e}"
        );
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
        let e = with(&[
            ("DKL_SCHEDULER_POLL_MS", "20000"),
            ("DKL_SCHEDULER_LEADER_STALE_SECS", "30"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "DKL_SCHEDULER_LEADER_STALE_SECS");
        assert!(
            with(&[
                ("DKL_SCHEDULER_POLL_MS", "10000"),
                ("DKL_SCHEDULER_LEADER_STALE_SECS", "30")
            ])
            .is_ok()
        );
    }

    #[test]
    fn rescue_must_outlast_heartbeats() {
        let e = with(&[
            ("DKL_HEARTBEAT_SECS", "10"),
            ("DKL_RESCUE_AFTER_SECS", "15"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "DKL_RESCUE_AFTER_SECS");
    }

    #[test]
    fn password_never_appears_in_errors() {
        let e = with(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/d"),
            "postgres://u:***@h:5432/d"
        );
        assert_eq!(redact_url("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
        assert_eq!(
            redact_url("postgres://u@h/d?sslmode=require&password=x"),
            "postgres://u@h/d?sslmode=require&password=***"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        // Unencoded `?`, `/`, `#` in a password: still hidden.
        assert_eq!(
            redact_url("postgres://dkl:s3cr?tPW@db:5432/dkl"),
            "postgres://dkl:***@db:5432/dkl"
        );
        assert_eq!(
            redact_url("postgres://dkl:a/b#c?d@db/dkl?sslmode=require"),
            "postgres://dkl:***@db/dkl?sslmode=require"
        );
        // A password that looks like a parameter: hidden by both readings.
        assert_eq!(
            redact_url("postgres://dkl:x?password=y@db/dkl"),
            "postgres://dkl:***"
        );
        for url in [
            "postgres://u:s3cr?tPW@h/d",
            "postgres://u:p@ss?w/rd@h/d?password=also&x=1",
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("s3cr")
                    && !shown.contains("tPW")
                    && !shown.contains("rd@")
                    && !shown.contains("also"),
                "{shown}"
            );
        }
        // An `@` in the query (Azure-style user names) must not swallow the
        // query, or the `password=` parameter would go unmasked.
        let shown = redact_url("postgres://db/dkl?user=alice@corp&password=hunter2");
        assert!(
            shown.ends_with("&password=***") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(
            redact_url("postgres://dkl:pw@db/dkl?application_name=a@b&password=hunter2"),
            "postgres://dkl:***@db/dkl?application_name=a@b&password=***"
        );
        for url in [
            "postgres://db/dkl?password=hun@ter2",
            "postgres://db/dkl?PASSWORD=hunter2&sslmode=require",
            "postgres://u:hunter2@db1:5432,db2:5433/dkl",
            "postgres://u:hun@ter2@[::1]:5432/dkl",
            "postgres://dkl:hunter2@my_db/dkl",
            "postgres://dkl:hunter2@/dkl?host=/run/postgresql",
            "postgres://u:hunter2@cd/ef@my_db/d",
            "postgres://u@db/dkl?pass%77ord=hunter2",
            "postgres://u@db/dkl?sslmode=require&Password=hunter2",
            "postgres://dkl:hunter2@db!weird/dkl",
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("hunter2") && !shown.contains("ter2"),
                "{url} shown as {shown}"
            );
        }
    }

    #[test]
    fn bad_ages_are_refused_not_panicked_on_or_wrapped() {
        for bad in [
            "7é",
            "é",
            "",
            "d",
            "-1d",
            "+1d",
            "3650000d",
            "213503982334602d",
            "18446744073709551615s",
            "1.5h",
            "0s",
        ] {
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
        assert_eq!(
            with(&[("DKL_MAX_RESCUES", "0")]).unwrap_err().var,
            "DKL_MAX_RESCUES"
        );
        assert_eq!(
            with(&[("DKL_HEALTH_MAX_DUE_AGE_SECS", "0")])
                .unwrap()
                .monitor
                .max_due_age,
            None
        );
    }
}
