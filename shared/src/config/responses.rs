//! Answers and bounces: the hourly cap on automatic answers, the return
//! path bounces come back to, the address mailto unsubscribes go to, and
//! when soft bounces suppress an address.

use super::ConfigError;
use super::parse::number;

/// Settings of auto-responses, bounce and unsubscribe handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsesConfig {
    /// `DKL_AUTOREPLY_MAX_PER_HOUR`: automatic answers to one sender in any
    /// hour, over all rules (a loop breaker beside each rule's window).
    pub max_replies_per_hour: u32,
    /// `DKL_BOUNCE_ADDRESS`: the base of the VERP return path of outgoing
    /// mail (`bounce@…` becomes `bounce+<id>@…`); unset: `bounce@` the
    /// domain of each SMTP configuration's From. Route it (or the domain's
    /// `+` subaddresses) to a fetched IMAP account.
    pub bounce_address: Option<String>,
    /// False with `DKL_BOUNCE_ADDRESS=off`: mail keeps its From as return
    /// path (for a provider that refuses any other envelope sender, such as
    /// Office 365 submission); bounces are then found by Message-ID only.
    pub verp: bool,
    /// `DKL_UNSUBSCRIBE_ADDRESS`: where a newsletter's `List-Unsubscribe`
    /// mailto goes (`+u-<token>` added); unset: the newsletter's From.
    pub unsubscribe_address: Option<String>,
    /// `DKL_SOFT_BOUNCE_LIMIT`: this many soft bounces of one address …
    pub soft_bounce_limit: u32,
    /// `DKL_SOFT_BOUNCE_DAYS`: … within this many days suppress it for bulk mail.
    pub soft_bounce_days: u32,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            max_replies_per_hour: 3,
            bounce_address: None,
            verp: true,
            unsubscribe_address: None,
            soft_bounce_limit: 3,
            soft_bounce_days: 30,
        }
    }
}

impl ResponsesConfig {
    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            max_replies_per_hour: number(
                get,
                "DKL_AUTOREPLY_MAX_PER_HOUR",
                d.max_replies_per_hour.into(),
                1,
                1000,
            )? as u32,
            verp: get("DKL_BOUNCE_ADDRESS").is_none_or(|v| v.trim() != "off"),
            bounce_address: match get("DKL_BOUNCE_ADDRESS") {
                Some(v) if v.trim() == "off" => None,
                _ => address(get, "DKL_BOUNCE_ADDRESS")?,
            },
            unsubscribe_address: address(get, "DKL_UNSUBSCRIBE_ADDRESS")?,
            soft_bounce_limit: number(
                get,
                "DKL_SOFT_BOUNCE_LIMIT",
                d.soft_bounce_limit.into(),
                1,
                100,
            )? as u32,
            soft_bounce_days: number(
                get,
                "DKL_SOFT_BOUNCE_DAYS",
                d.soft_bounce_days.into(),
                1,
                365,
            )? as u32,
        })
    }
}

/// A plain address whose local part leaves room for a `+` tag of 50
/// characters within RFC 5321's 64.
fn address(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    let Some(raw) = get(var).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let value = raw.trim().to_ascii_lowercase();
    let ok = value.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && local.len() <= 12
            && !local.contains('+')
            && domain.contains('.')
            && !value.contains([' ', '<', '>', ','])
    });
    if !ok {
        return Err(ConfigError {
            var,
            value: raw,
            expected: "a plain address with a local part of at most 12 characters and no `+`, e.g. bounce@dekoninklijkeloop.nl (a `+` tag is added to it)".into(),
        });
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<ResponsesConfig, ConfigError> {
        ResponsesConfig::from_lookup(&|k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_values_and_refusals() {
        assert_eq!(read(&[]).unwrap(), ResponsesConfig::default());
        let c = read(&[
            ("DKL_BOUNCE_ADDRESS", "Bounce@DKL.nl"),
            ("DKL_SOFT_BOUNCE_LIMIT", "5"),
        ])
        .unwrap();
        assert_eq!(c.bounce_address.as_deref(), Some("bounce@dkl.nl"));
        assert_eq!(c.soft_bounce_limit, 5);
        assert!(c.verp);
        assert!(!read(&[("DKL_BOUNCE_ADDRESS", "off")]).unwrap().verp);
        for (var, value) in [
            ("DKL_BOUNCE_ADDRESS", "bounce+x@dkl.nl"),
            ("DKL_UNSUBSCRIBE_ADDRESS", "no-domain"),
            ("DKL_AUTOREPLY_MAX_PER_HOUR", "0"),
            ("DKL_SOFT_BOUNCE_DAYS", "1000"),
        ] {
            assert_eq!(read(&[(var, value)]).unwrap_err().var, var);
        }
    }
}
