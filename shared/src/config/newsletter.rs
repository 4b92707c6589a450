//! Newsletters: the public base URL of the unsubscribe links, the secret
//! their tokens are signed with, `List-Id`, and how deliveries retry.

use std::time::Duration;

use super::ConfigError;
use super::parse::{number, secs};

/// The base URL unsubscribe links point at when none is configured: the
/// worker's own listener on its default address (fine on one machine; a
/// real deployment sets the site's https address).
pub const DEFAULT_PUBLIC_BASE_URL: &str = "http://127.0.0.1:9464";

/// Newsletter settings.
#[derive(Clone)]
pub struct NewsletterConfig {
    /// `DKL_PUBLIC_BASE_URL`: where `/unsubscribe/{token}` is reachable from
    /// a subscriber's mail program (`https://…` in production; only then
    /// does a message carry `List-Unsubscribe-Post`). No trailing slash.
    pub public_base_url: String,
    /// `DKL_UNSUBSCRIBE_SECRET`: the HMAC key of unsubscribe tokens (at
    /// least 32 characters). Unset: a random one kept in `dkl_secrets`.
    pub unsubscribe_secret: Option<String>,
    /// `DKL_NEWSLETTER_LIST_ID`: the `List-Id` identifier (RFC 2919), e.g.
    /// `nieuwsbrief.dekoninklijkeloop.nl`; unset: `nieuwsbrief.<domain of From>`.
    pub list_id: Option<String>,
    /// `DKL_NEWSLETTER_MAX_ATTEMPTS`: tries per recipient on 4xx and
    /// connection errors before the delivery is `failed`.
    pub max_attempts: u32,
    /// `DKL_NEWSLETTER_RETRY_SECS`: the first retry's wait (doubling, at
    /// most an hour).
    pub retry_after: Duration,
}

impl std::fmt::Debug for NewsletterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewsletterConfig")
            .field("public_base_url", &self.public_base_url)
            .field(
                "unsubscribe_secret",
                &self.unsubscribe_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("list_id", &self.list_id)
            .field("max_attempts", &self.max_attempts)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl Default for NewsletterConfig {
    fn default() -> Self {
        Self {
            public_base_url: DEFAULT_PUBLIC_BASE_URL.into(),
            unsubscribe_secret: None,
            list_id: None,
            max_attempts: 6,
            retry_after: Duration::from_secs(60),
        }
    }
}

impl NewsletterConfig {
    /// Whether links are https (one-click POST is only offered then).
    pub fn is_https(&self) -> bool {
        self.public_base_url.starts_with("https://")
    }

    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let public_base_url = match get("DKL_PUBLIC_BASE_URL") {
            None => d.public_base_url,
            Some(raw) => base_url(&raw)?,
        };
        let unsubscribe_secret = match get("DKL_UNSUBSCRIBE_SECRET")
            .filter(|v| !v.trim().is_empty())
        {
            None => None,
            Some(s) if s.trim().len() >= 32 => Some(s.trim().to_string()),
            Some(s) => {
                return Err(ConfigError {
                    var: "DKL_UNSUBSCRIBE_SECRET",
                    value: format!("<{} characters, hidden>", s.trim().len()),
                    expected: "at least 32 characters (e.g. `openssl rand -hex 32`), or unset for a random one kept in the database".into(),
                });
            }
        };
        let list_id = match get("DKL_NEWSLETTER_LIST_ID").filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(raw) => {
                let ok = !raw.is_empty()
                    && raw.len() <= 255
                    && raw.contains('.')
                    && raw
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if !ok {
                    return Err(ConfigError {
                        var: "DKL_NEWSLETTER_LIST_ID",
                        value: raw,
                        expected: "a dotted name of letters, digits and `-`, e.g. nieuwsbrief.dekoninklijkeloop.nl (RFC 2919)".into(),
                    });
                }
                Some(raw)
            }
        };
        Ok(Self {
            public_base_url,
            unsubscribe_secret,
            list_id,
            max_attempts: number(get, "DKL_NEWSLETTER_MAX_ATTEMPTS", 6, 1, 50)? as u32,
            retry_after: secs(get, "DKL_NEWSLETTER_RETRY_SECS", d.retry_after, 1, 86_400)?,
        })
    }
}

fn base_url(raw: &str) -> Result<String, ConfigError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    let host_ok = rest.is_some_and(|r| {
        let host = r.split('/').next().unwrap_or("");
        !host.is_empty()
            && !r.contains(['?', '#', ' ', '@'])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
    });
    if !host_ok {
        return Err(ConfigError {
            var: "DKL_PUBLIC_BASE_URL",
            value: raw.into(),
            expected: "an http(s) URL without query, e.g. https://dekoninklijkeloop.nl/mail (unsubscribe links are <it>/unsubscribe/<token>; https in production)".into(),
        });
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<NewsletterConfig, ConfigError> {
        NewsletterConfig::from_lookup(&|k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_and_values() {
        let d = read(&[]).unwrap();
        assert_eq!(d.public_base_url, DEFAULT_PUBLIC_BASE_URL);
        assert!(!d.is_https());
        let c = read(&[
            ("DKL_PUBLIC_BASE_URL", "https://dekoninklijkeloop.nl/mail/"),
            ("DKL_UNSUBSCRIBE_SECRET", &"x".repeat(40)),
            ("DKL_NEWSLETTER_LIST_ID", "nieuws.dekoninklijkeloop.nl"),
        ])
        .unwrap();
        assert_eq!(c.public_base_url, "https://dekoninklijkeloop.nl/mail");
        assert!(c.is_https());
        assert!(!format!("{c:?}").contains("xxxx"), "the secret is hidden");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("DKL_PUBLIC_BASE_URL", "ftp://x"),
            ("DKL_PUBLIC_BASE_URL", "https://"),
            ("DKL_PUBLIC_BASE_URL", "https://a.nl/?x=1"),
            ("DKL_UNSUBSCRIBE_SECRET", "short"),
            ("DKL_NEWSLETTER_LIST_ID", "no spaces allowed"),
            ("DKL_NEWSLETTER_MAX_ATTEMPTS", "0"),
        ] {
            let err = read(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(!err.to_string().contains("short"), "secrets are not echoed");
        }
    }
}
