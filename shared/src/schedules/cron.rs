//! Cron expressions with seconds, evaluated in a time zone.
//!
//! Parsing is croner's; this wrapper fixes the dialect (six fields, seconds
//! required, no year field, POSIX day numbers) so it matches what the
//! database's `dkl_cron_check` accepts on save, and does the time-zone
//! conversions (ticks are wall-clock times in the schedule's zone, stored as
//! UTC instants).

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule's timing cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression does not parse.
    #[error("invalid cron expression \"{expr}\": {reason}; expected six fields: second minute hour day-of-month month day-of-week, e.g. \"0 */5 * * * *\"")]
    Expression {
        /// The expression as written.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone \"{0}\": use an IANA name such as \"Europe/Amsterdam\" or \"UTC\"")]
    TimeZone(String),
    /// The expression never matches (e.g. 31 February).
    #[error("cron expression \"{0}\" never matches a real time")]
    NeverMatches(String),
}

/// A parsed schedule timing.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
    expr: String,
}

impl CronSchedule {
    /// Parses `expr` (six fields) for time zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, CronError> {
        let fields = expr.split_whitespace().count();
        if fields != 6 {
            return Err(CronError::Expression { expr: expr.into(), reason: format!("it has {fields} fields") });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| CronError::Expression { expr: expr.into(), reason: e.to_string() })?;
        let tz: Tz = tz.parse().map_err(|_| CronError::TimeZone(tz.into()))?;
        Ok(Self { cron, tz, expr: expr.into() })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        self.cron
            .find_next_occurrence(&whole_seconds(t).with_timezone(&self.tz), false)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| CronError::NeverMatches(self.expr.clone()))
    }

    /// The latest tick at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        self.cron
            .find_previous_occurrence(&whole_seconds(t).with_timezone(&self.tz), true)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| CronError::NeverMatches(self.expr.clone()))
    }

    /// Ticks in `[from, to]`, at most `limit`.
    pub fn ticks_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DateTime<Utc>>, CronError> {
        let mut ticks = Vec::new();
        let mut t = self.cron
            .find_next_occurrence(&whole_seconds(from).with_timezone(&self.tz), true)
            .map_err(|_| CronError::NeverMatches(self.expr.clone()))?
            .with_timezone(&Utc);
        while t <= to && ticks.len() < limit {
            ticks.push(t);
            t = self.next_after(t)?;
        }
        Ok(ticks)
    }
}

/// Ticks are whole seconds; croner keeps a start time's fraction, which
/// would make every tick of `* * * * * *` "now" to the microsecond.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(0)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_five_minutes_in_amsterdam() {
        let c = CronSchedule::parse("0 */5 * * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(c.next_after(utc("2026-11-23T10:02:03Z")).unwrap(), utc("2026-11-23T10:05:00Z"));
        assert_eq!(c.latest_at_or_before(utc("2026-11-23T10:05:00Z")).unwrap(), utc("2026-11-23T10:05:00Z"));
    }

    #[test]
    fn wall_clock_time_follows_daylight_saving() {
        let c = CronSchedule::parse("0 30 3 * * *", "Europe/Amsterdam").unwrap();
        // Winter: 03:30 CET = 02:30 UTC; summer: 03:30 CEST = 01:30 UTC.
        assert_eq!(c.next_after(utc("2026-11-23T00:00:00Z")).unwrap(), utc("2026-11-23T02:30:00Z"));
        assert_eq!(c.next_after(utc("2026-07-01T00:00:00Z")).unwrap(), utc("2026-07-01T01:30:00Z"));
    }

    #[test]
    fn ticks_are_whole_seconds() {
        let c = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let t = utc("2026-11-23T10:00:00.465Z");
        assert_eq!(c.latest_at_or_before(t).unwrap(), utc("2026-11-23T10:00:00Z"));
        assert_eq!(c.next_after(t).unwrap(), utc("2026-11-23T10:00:01Z"));
    }

    #[test]
    fn ticks_between_is_inclusive_and_capped() {
        let c = CronSchedule::parse("*/1 * * * * *", "UTC").unwrap();
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let to = from + chrono::Duration::seconds(9);
        assert_eq!(c.ticks_between(from, to, 100).unwrap().len(), 10);
        assert_eq!(c.ticks_between(from, to, 3).unwrap().len(), 3);
    }

    #[test]
    fn bad_input_is_named() {
        let e = CronSchedule::parse("0 0 * * *", "UTC").unwrap_err();
        assert!(e.to_string().contains("\"0 0 * * *\": it has 5 fields"), "{e}");
        let e = CronSchedule::parse("0 0 0 * * *", "Mars/Base").unwrap_err();
        assert_eq!(e, CronError::TimeZone("Mars/Base".into()));
        assert!(CronSchedule::parse("0 70 * * * *", "UTC").is_err());
    }

    #[test]
    fn an_impossible_date_is_reported_not_searched_for_ever() {
        let c = CronSchedule::parse("0 0 0 31 2 *", "UTC").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(c.next_after(utc("2026-11-23T00:00:00Z")), Err(CronError::NeverMatches("0 0 0 31 2 *".into())));
        eprintln!("impossible date judged in {:?}", started.elapsed());
    }

    /// Every expression the database's `dkl_cron_check` accepts must parse
    /// here too (the same list is checked against the database in
    /// tests/tests/scheduler.rs).
    #[test]
    fn accepts_the_database_dialect() {
        for expr in crate::schedules::DIALECT_EXAMPLES {
            CronSchedule::parse(expr, "Europe/Amsterdam").unwrap_or_else(|e| panic!("{expr}: {e}"));
        }
    }
}
