//! Incoming mail: the IMAP accounts (`DKL_IMAP_ACCOUNTS=info,inschrijving`),
//! each from `DKL_IMAP_<NAME>_*` variables. An account's name is the
//! `incoming_emails.account_type` its messages are stored under.

use std::time::Duration;

use super::{ConfigError, TlsMode};

/// What is done on the server with a message once it is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterImport {
    /// Nothing: the message stays as it is.
    Leave,
    /// Set `\Seen`.
    MarkSeen,
    /// Move it to this folder (UID MOVE, or COPY + expunge without MOVE).
    MoveTo(String),
}

/// One IMAP account.
#[derive(Clone)]
pub struct ImapAccount {
    /// Its name: the `account_type` of its messages (`info`, `inschrijving`, …).
    pub name: String,
    /// Server host name or IP.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// How the connection is secured.
    pub tls: TlsMode,
    /// Login name.
    pub user: String,
    /// Password, from `DKL_IMAP_<NAME>_PASSWORD`; never logged, never stored.
    pub password: String,
    /// The mailboxes read (default `INBOX`).
    pub mailboxes: Vec<String>,
    /// What happens on the server after a message is stored.
    pub after_import: AfterImport,
    /// Keep an IDLE connection per mailbox (else: the `fetch-mail` schedule
    /// and polling only).
    pub idle: bool,
    /// Extra trusted root certificates (PEM) for a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// `DKL_IMAP_<NAME>_ADDRESS`: the address mail to this account is sent
    /// to (lower case); default: the login when it is an address. Only mail
    /// with it in To/Cc gets an automatic answer.
    pub address: Option<String>,
}

impl std::fmt::Debug for ImapAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapAccount")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &"***")
            .field("mailboxes", &self.mailboxes)
            .field("after_import", &self.after_import)
            .field("idle", &self.idle)
            .field("address", &self.address)
            .finish()
    }
}

/// Every IMAP account and the settings they share.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// The accounts, in the order of `DKL_IMAP_ACCOUNTS`.
    pub accounts: Vec<ImapAccount>,
    /// `DKL_IMAP_MAX_MESSAGE_MB`: a larger message is stored quarantined
    /// with its header only, and left on the server.
    pub max_message_bytes: u64,
    /// `DKL_IMAP_FETCH_BATCH`: messages fetched and stored per transaction.
    pub fetch_batch: usize,
    /// `DKL_IMAP_POLL_SECS`: how often a mailbox is polled when its server
    /// has no IDLE.
    pub poll_every: Duration,
    /// `DKL_IMAP_IDLE_RENEW_SECS`: IDLE is re-issued after this long (servers
    /// may drop an IDLE after 30 minutes, RFC 2177).
    pub idle_renew: Duration,
    /// `DKL_IMAP_TIMEOUT_SECS`: connecting, logging in and one command may take this long.
    pub timeout: Duration,
}

impl ImapConfig {
    /// The account named `name`.
    pub fn account(&self, name: &str) -> Option<&ImapAccount> {
        self.accounts.iter().find(|a| a.name == name)
    }

    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let number = |var: &'static str, default: u64, min: u64, max: u64| match get(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
        {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or(ConfigError {
                    var,
                    value: v,
                    expected: format!("a whole number from {min} to {max} (default {default})"),
                }),
        };
        let names_raw = get("DKL_IMAP_ACCOUNTS").unwrap_or_default();
        let mut accounts: Vec<ImapAccount> = Vec::new();
        for name in names_raw
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let valid = name.len() <= 50
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(ConfigError {
                    var: "DKL_IMAP_ACCOUNTS",
                    value: names_raw.clone(),
                    expected: format!(
                        "comma-separated account names of lowercase letters, digits and _ (at most 50), e.g. info,inschrijving (`{name}` is not)"
                    ),
                });
            }
            if accounts.iter().all(|a| a.name != name) {
                accounts.push(account(get, name)?);
            }
        }
        Ok(Self {
            accounts,
            max_message_bytes: number("DKL_IMAP_MAX_MESSAGE_MB", 25, 1, 2048)? * 1024 * 1024,
            fetch_batch: number("DKL_IMAP_FETCH_BATCH", 250, 1, 10_000)? as usize,
            poll_every: Duration::from_secs(number("DKL_IMAP_POLL_SECS", 30, 1, 3600)?),
            idle_renew: Duration::from_secs(number("DKL_IMAP_IDLE_RENEW_SECS", 1500, 5, 1740)?),
            timeout: Duration::from_secs(number("DKL_IMAP_TIMEOUT_SECS", 30, 1, 600)?),
        })
    }
}

fn account(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<ImapAccount, ConfigError> {
    let upper = name.to_ascii_uppercase();
    // Names are built per account; `leak` gives the error the `&'static str`
    // it keeps (a handful of names, once, at start).
    let var = |field: &str| -> &'static str {
        Box::leak(format!("DKL_IMAP_{upper}_{field}").into_boxed_str())
    };
    let value = |field: &str| {
        get(var(field))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let required = |field: &str, what: &str| {
        value(field).ok_or_else(|| ConfigError {
            var: var(field),
            value: String::new(),
            expected: format!(
                "{what} for IMAP account `{name}` (it is listed in DKL_IMAP_ACCOUNTS)"
            ),
        })
    };
    let host = required("HOST", "the IMAP server's host name, e.g. imap.example.org")?;
    let tls = match value("TLS").as_deref() {
        None | Some("tls" | "implicit" | "imaps") => TlsMode::Tls,
        Some("starttls") => TlsMode::StartTls,
        Some("plain") => TlsMode::Plain,
        Some(other) => {
            return Err(ConfigError {
                var: var("TLS"),
                value: other.into(),
                expected: "`tls` (implicit TLS, port 993; the default), `starttls` (STARTTLS required, port 143) or `plain` (loopback only unless ..._ALLOW_PLAIN=true)".into(),
            });
        }
    };
    let port = match value("PORT") {
        None => match tls {
            TlsMode::Tls => 993,
            TlsMode::StartTls | TlsMode::Plain => 143,
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
                "`tls` or `starttls` for a server that is not on this machine ({host}); plain IMAP would send the password and mail in the clear (set {}=true to allow it anyway)",
                var("ALLOW_PLAIN")
            ),
        });
    }
    let user = required("USER", "the login name")?;
    // Taken as it is: spaces may be part of a password.
    let password = get(var("PASSWORD"))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ConfigError {
            var: var("PASSWORD"),
            value: String::new(),
            expected: format!(
                "the password of IMAP account `{name}` (only ever read from the environment)"
            ),
        })?;
    let mailboxes: Vec<String> = value("MAILBOXES")
        .unwrap_or_else(|| "INBOX".into())
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect();
    if mailboxes.is_empty() {
        return Err(ConfigError {
            var: var("MAILBOXES"),
            value: String::new(),
            expected: "comma-separated mailbox names, e.g. INBOX,Aanmeldingen (default INBOX)"
                .into(),
        });
    }
    let after_import = match value("AFTER_IMPORT").as_deref() {
        None | Some("leave") => AfterImport::Leave,
        Some("seen") => AfterImport::MarkSeen,
        Some(other) => match other.strip_prefix("move:").map(str::trim) {
            Some(folder) if !folder.is_empty() && !mailboxes.iter().any(|m| m == folder) => {
                AfterImport::MoveTo(folder.to_string())
            }
            _ => {
                return Err(ConfigError {
                    var: var("AFTER_IMPORT"),
                    value: other.into(),
                    expected: "`leave` (default), `seen` (set \\Seen) or `move:FOLDER` (a folder that is not one of the account's MAILBOXES)".into(),
                });
            }
        },
    };
    let idle = match value("IDLE").as_deref() {
        None | Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        Some(other) => {
            return Err(ConfigError {
                var: var("IDLE"),
                value: other.into(),
                expected: "`true` (default: new mail within seconds) or `false` (fetch on the fetch-mail schedule only)".into(),
            });
        }
    };
    let ca_pem = match value("CA_FILE") {
        None => None,
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| ConfigError {
                var: var("CA_FILE"),
                value: path.clone(),
                expected: format!("a readable PEM file with certificates ({e})"),
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError {
                    var: var("CA_FILE"),
                    value: path,
                    expected: "a PEM file with at least one -----BEGIN CERTIFICATE----- block"
                        .into(),
                });
            }
            Some(pem)
        }
    };
    let address = match value("ADDRESS") {
        Some(a) if a.contains('@') && !a.contains([' ', '<', '>', ',']) => {
            Some(a.trim().to_ascii_lowercase())
        }
        Some(other) => {
            return Err(ConfigError {
                var: var("ADDRESS"),
                value: other,
                expected: "the account's mail address, e.g. info@dekoninklijkeloop.nl".into(),
            });
        }
        None => user.contains('@').then(|| user.trim().to_ascii_lowercase()),
    };
    Ok(ImapAccount {
        address,
        name: name.to_string(),
        host,
        port,
        tls,
        user,
        password,
        mailboxes,
        after_import,
        idle,
        ca_pem,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn imap(vars: &[(&str, &str)]) -> Result<ImapConfig, ConfigError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ImapConfig::from_lookup(&|k| map.get(k).cloned())
    }

    const INFO: &[(&str, &str)] = &[
        ("DKL_IMAP_ACCOUNTS", "info"),
        ("DKL_IMAP_INFO_HOST", "127.0.0.1"),
        ("DKL_IMAP_INFO_TLS", "plain"),
        ("DKL_IMAP_INFO_USER", "info@dkl.test"),
        ("DKL_IMAP_INFO_PASSWORD", "geheim wachtwoord"),
    ];

    #[test]
    fn no_accounts_by_default() {
        let c = imap(&[]).unwrap();
        assert!(c.accounts.is_empty());
        assert_eq!(c.max_message_bytes, 25 * 1024 * 1024);
    }

    #[test]
    fn an_account_with_defaults() {
        let c = imap(INFO).unwrap();
        let a = c.account("info").unwrap();
        assert_eq!((a.port, a.tls), (143, TlsMode::Plain));
        assert_eq!(a.mailboxes, vec!["INBOX".to_string()]);
        assert_eq!(a.after_import, AfterImport::Leave);
        assert_eq!(a.password, "geheim wachtwoord");
        assert!(
            !format!("{a:?}").contains("geheim"),
            "Debug hides the password"
        );
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let e = imap(&[("DKL_IMAP_ACCOUNTS", "info")]).unwrap_err();
        assert_eq!(e.var, "DKL_IMAP_INFO_HOST");
        let mut vars = INFO.to_vec();
        vars.retain(|(k, _)| *k != "DKL_IMAP_INFO_PASSWORD");
        assert_eq!(imap(&vars).unwrap_err().var, "DKL_IMAP_INFO_PASSWORD");
        let mut vars = INFO.to_vec();
        vars[1] = ("DKL_IMAP_INFO_HOST", "imap.example.org");
        let e = imap(&vars).unwrap_err();
        assert_eq!(e.var, "DKL_IMAP_INFO_TLS");
        assert!(e.expected.contains("ALLOW_PLAIN"), "{}", e.expected);
        vars.push(("DKL_IMAP_INFO_ALLOW_PLAIN", "true"));
        assert!(imap(&vars).is_ok());
        let mut vars = INFO.to_vec();
        vars.push(("DKL_IMAP_INFO_AFTER_IMPORT", "move:INBOX"));
        assert_eq!(imap(&vars).unwrap_err().var, "DKL_IMAP_INFO_AFTER_IMPORT");
        let mut vars = INFO.to_vec();
        vars.push(("DKL_IMAP_INFO_AFTER_IMPORT", "move:Verwerkt"));
        assert_eq!(
            imap(&vars).unwrap().accounts[0].after_import,
            AfterImport::MoveTo("Verwerkt".into())
        );
        let e = imap(&[("DKL_IMAP_ACCOUNTS", "Info")]).unwrap_err();
        assert!(e.expected.contains("`Info` is not"), "{}", e.expected);
        assert_eq!(
            imap(&[("DKL_IMAP_FETCH_BATCH", "0")]).unwrap_err().var,
            "DKL_IMAP_FETCH_BATCH"
        );
    }
}
