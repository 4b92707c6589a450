//! Reading one variable: numbers in a range, durations, ages. Every refusal
//! names the variable and says what it accepts.

use std::time::Duration;

use super::ConfigError;

pub(crate) fn number(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError {
            var,
            value: raw,
            expected: format!("a whole number from {min} to {max} (default {default})"),
        }),
    }
}

pub(crate) fn secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(get, var, default.as_secs(), min, max).map(Duration::from_secs)
}

pub(crate) fn millis(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(get, var, default.as_millis() as u64, min, max).map(Duration::from_millis)
}

pub(crate) fn age(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
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
