//! The helpers a Dutch mail needs. Dates are shown in Europe/Amsterdam, the
//! event's time zone, whatever zone the value carries.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Europe::Amsterdam;
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};

const MONTHS: [&str; 12] = [
    "januari",
    "februari",
    "maart",
    "april",
    "mei",
    "juni",
    "juli",
    "augustus",
    "september",
    "oktober",
    "november",
    "december",
];

/// The helpers' names (a template's `{{huidig_jaar}}` is no variable).
pub(super) const NAMES: &[&str] = &["datum", "huidig_jaar"];

pub(super) fn register(registry: &mut Handlebars<'static>) {
    registry.register_helper("datum", Box::new(datum));
    registry.register_helper("huidig_jaar", Box::new(huidig_jaar));
}

/// `{{datum x}}` → `30 november 2026`; `{{datum x tijd=true}}` →
/// `30 november 2026 om 14:05`. `x` is an RFC 3339 time or a `YYYY-MM-DD` date.
fn datum(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("datum", 0))?;
    let value = param.value();
    if value.is_null() {
        return Err(RenderErrorReason::MissingVariable(param.relative_path().cloned()).into());
    }
    let raw = value.as_str().ok_or_else(|| {
        RenderErrorReason::Other(format!("datum: `{value}` is not a date; give a text like 2026-05-17 or 2026-05-17T09:30:00+02:00"))
    })?;
    let with_time = h
        .hash_get("tijd")
        .is_some_and(|t| t.value().as_bool() == Some(true));
    out.write(&dutch_date(raw, with_time).map_err(RenderErrorReason::Other)?)?;
    Ok(())
}

/// `{{huidig_jaar}}` → the current year in Amsterdam.
fn huidig_jaar(
    _: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    out.write(&Utc::now().with_timezone(&Amsterdam).year().to_string())?;
    Ok(())
}

/// A date (and time) as a Dutch reader writes it.
pub(super) fn dutch_date(raw: &str, with_time: bool) -> Result<String, String> {
    let bad = || {
        format!(
            "datum: `{raw}` is not a date; give a text like 2026-05-17 or 2026-05-17T09:30:00+02:00"
        )
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(raw.trim()) {
        let local = t.with_timezone(&Amsterdam);
        let day = format!(
            "{} {} {}",
            local.day(),
            MONTHS[local.month0() as usize],
            local.year()
        );
        return Ok(if with_time {
            format!("{day} om {}", local.format("%H:%M"))
        } else {
            day
        });
    }
    let date = NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").map_err(|_| bad())?;
    if with_time {
        return Err(format!(
            "datum: `{raw}` has no time of day; give a time like 2026-05-17T09:30:00+02:00 or drop tijd=true"
        ));
    }
    Ok(format!(
        "{} {} {}",
        date.day(),
        MONTHS[date.month0() as usize],
        date.year()
    ))
}
