//! Cron expressions with seconds, evaluated in a time zone.
//!
//! Parsing is croner's; this wrapper fixes the dialect (six fields, seconds
//! required, no year field, POSIX day numbers) so it matches what the
//! database's `dkl_cron_check` accepts on save, and does the time-zone
//! conversions (ticks are wall-clock times in the schedule's zone, stored as
//! UTC instants).

use chrono::{
    DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, SubsecRound, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule's timing cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression does not parse.
    #[error(
        "invalid cron expression \"{expr}\": {reason}; expected six fields: second minute hour day-of-month month day-of-week, e.g. \"0 */5 * * * *\""
    )]
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
    timing: Timing,
}

/// How a schedule meets daylight saving changes (README, "Scheduling").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// The hour field is `*` or has a step: ticks follow real time, so none
    /// fall in the hour skipped in spring and both copies of the hour
    /// repeated in autumn get theirs.
    Interval,
    /// The hour field names hours (`3`, `2,14`, `1-5`): wall-clock times.
    /// A time skipped in spring runs once, right after the gap; a time that
    /// happens twice in autumn runs once, the first time.
    FixedTime,
}

impl Timing {
    /// Reads the timing from a six-field expression's hour field. (croner
    /// has its own rule, which calls any list or range in the second, minute
    /// or hour field an interval; ours is the documented one.)
    fn of(expr: &str) -> Self {
        match expr.split_whitespace().nth(2) {
            Some(hour) if hour.contains('*') || hour.contains('/') => Self::Interval,
            _ => Self::FixedTime,
        }
    }
}

impl CronSchedule {
    /// Parses `expr` (six fields) for time zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, CronError> {
        let fields = expr.split_whitespace().count();
        if fields != 6 {
            return Err(CronError::Expression {
                expr: expr.into(),
                reason: format!("it has {fields} fields"),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| CronError::Expression {
                expr: expr.into(),
                reason: e.to_string(),
            })?;
        let tz: Tz = tz.parse().map_err(|_| CronError::TimeZone(tz.into()))?;
        Ok(Self {
            cron,
            tz,
            expr: expr.into(),
            timing: Timing::of(expr),
        })
    }

    /// How this schedule meets daylight saving changes.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The first tick strictly after `t`.
    ///
    /// Daylight saving as [`Timing`] says: fixed times (hours named in the
    /// hour field, lists and ranges too) run once a day each, a skipped one
    /// right after the gap; interval expressions (a `*` or step in the hour
    /// field, like `0 */5 * * * *`) tick by real time through both
    /// transitions. Always later than `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        let t = whole_seconds(t);
        match self.timing {
            Timing::FixedTime => self.next_fixed_time(t),
            Timing::Interval => self.next_by_real_time(t),
        }
    }

    fn never(&self) -> CronError {
        CronError::NeverMatches(self.expr.clone())
    }

    /// The next wall-clock time that matches, searched on the local calendar
    /// (croner run on naive local times, so its own daylight saving rules do
    /// not apply) and then placed on the time line: a time that happens
    /// twice counts at its first instant only; a time in a spring gap runs at
    /// the first instant after the gap.
    fn next_fixed_time(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        let mut local = t.with_timezone(&self.tz).naive_local();
        // Each round skips one candidate whose first instant is already past
        // (the second copy of an autumn hour); a day has few of them.
        for _ in 0..MAX_FIXED_TIME_ROUNDS {
            let next = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&local), false)
                .map_err(|_| self.never())?
                .naive_utc();
            let instant = match self.tz.from_local_datetime(&next) {
                LocalResult::Single(d) => Some(d),
                LocalResult::Ambiguous(first, _) => Some(first),
                LocalResult::None => self.first_instant_after_gap(next),
            }
            .ok_or_else(|| self.never())?
            .with_timezone(&Utc);
            if instant > t {
                return Ok(instant);
            }
            local = next;
        }
        Err(self.never())
    }

    /// The first instant after the spring gap that swallowed local time
    /// `in_gap` (gaps end on a whole minute).
    fn first_instant_after_gap(&self, in_gap: NaiveDateTime) -> Option<DateTime<Tz>> {
        let minute = in_gap.with_second(0)?;
        (1..=24 * 60).find_map(|m| {
            self.tz
                .from_local_datetime(&(minute + chrono::Duration::minutes(m)))
                .earliest()
        })
    }

    /// Searches with the UTC offset in force at `from` held fixed; if the
    /// answer lies past an offset change, searches again from the change.
    fn next_by_real_time(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        let mut from = t;
        // Each round crosses one offset change; rare expressions (29 February)
        // can lie several changes ahead.
        for _ in 0..MAX_OFFSET_CHANGES {
            // The search covers the seconds from `start` on.
            let start = from + chrono::Duration::seconds(1);
            let offset = self.offset_at(start);
            let found = self
                .cron
                .find_next_occurrence(&from.with_timezone(&offset), false)
                .map_err(|_| self.never())?
                .with_timezone(&Utc);
            if self.offset_at(found) == offset {
                return Ok(found);
            }
            from = self.offset_change_after(start, found, offset) - chrono::Duration::seconds(1);
        }
        Err(self.never())
    }

    fn offset_at(&self, t: DateTime<Utc>) -> FixedOffset {
        self.tz.offset_from_utc_datetime(&t.naive_utc()).fix()
    }

    /// The first second in `(lo, hi]` whose offset is not `offset`, given
    /// that `lo` has it and `hi` does not.
    fn offset_change_after(
        &self,
        mut lo: DateTime<Utc>,
        mut hi: DateTime<Utc>,
        offset: FixedOffset,
    ) -> DateTime<Utc> {
        while hi - lo > chrono::Duration::seconds(1) {
            let mid = whole_seconds(lo + (hi - lo) / 2);
            if self.offset_at(mid) == offset {
                lo = mid
            } else {
                hi = mid
            }
        }
        whole_seconds(hi)
    }

    /// The latest tick at or before `t` (croner's search; near a daylight
    /// saving change it may answer an earlier tick, which callers accept:
    /// they only use it to stamp a catch-up run).
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, CronError> {
        self.cron
            .find_previous_occurrence(&whole_seconds(t).with_timezone(&self.tz), true)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| self.never())
    }

    /// `first` (a tick) and the ticks after it up to `to`, at most `limit`.
    pub fn ticks_from(
        &self,
        first: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DateTime<Utc>>, CronError> {
        let mut ticks = Vec::new();
        let mut t = first;
        while t <= to && ticks.len() < limit {
            ticks.push(t);
            t = self.next_after(t)?;
        }
        Ok(ticks)
    }
}

/// Candidates `next_fixed_time` may skip (second copies of autumn times).
const MAX_FIXED_TIME_ROUNDS: usize = 2 * 60 * 60 + 2;

/// Offset changes `next_after` crosses looking for a tick (eight years of
/// twice-yearly daylight saving changes).
const MAX_OFFSET_CHANGES: usize = 16;

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
        assert_eq!(
            c.next_after(utc("2026-11-23T10:02:03Z")).unwrap(),
            utc("2026-11-23T10:05:00Z")
        );
        assert_eq!(
            c.latest_at_or_before(utc("2026-11-23T10:05:00Z")).unwrap(),
            utc("2026-11-23T10:05:00Z")
        );
    }

    #[test]
    fn wall_clock_time_follows_daylight_saving() {
        let c = CronSchedule::parse("0 30 3 * * *", "Europe/Amsterdam").unwrap();
        // Winter: 03:30 CET = 02:30 UTC; summer: 03:30 CEST = 01:30 UTC.
        assert_eq!(
            c.next_after(utc("2026-11-23T00:00:00Z")).unwrap(),
            utc("2026-11-23T02:30:00Z")
        );
        assert_eq!(
            c.next_after(utc("2026-07-01T00:00:00Z")).unwrap(),
            utc("2026-07-01T01:30:00Z")
        );
    }

    #[test]
    fn ticks_are_whole_seconds() {
        let c = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let t = utc("2026-11-23T10:00:00.465Z");
        assert_eq!(
            c.latest_at_or_before(t).unwrap(),
            utc("2026-11-23T10:00:00Z")
        );
        assert_eq!(c.next_after(t).unwrap(), utc("2026-11-23T10:00:01Z"));
    }

    #[test]
    fn ticks_from_is_inclusive_and_capped() {
        let c = CronSchedule::parse("*/1 * * * * *", "UTC").unwrap();
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let to = from + chrono::Duration::seconds(9);
        assert_eq!(c.ticks_from(from, to, 100).unwrap().len(), 10);
        assert_eq!(c.ticks_from(from, to, 3).unwrap().len(), 3);
    }

    // Amsterdam 2026: summer time ends 25 Oct at 01:00Z (03:00 CEST → 02:00
    // CET, so 02:00–03:00 local happens twice), and starts 29 Mar at 01:00Z
    // (02:00 CET → 03:00 CEST, so 02:00–03:00 local does not exist).
    const AMS: &str = "Europe/Amsterdam";

    #[test]
    fn autumn_interval_ticks_run_through_both_copies_of_the_repeated_hour() {
        let c = CronSchedule::parse("0 * * * * *", AMS).unwrap();
        assert_eq!(
            c.next_after(utc("2026-10-25T00:59:30Z")).unwrap(),
            utc("2026-10-25T01:00:00Z")
        );
        // Inside the second copy: the next minute, not a time already past.
        assert_eq!(
            c.next_after(utc("2026-10-25T01:10:00Z")).unwrap(),
            utc("2026-10-25T01:11:00Z")
        );
        let ticks = c
            .ticks_from(
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T02:59:00Z"),
                1000,
            )
            .unwrap();
        assert_eq!(ticks.len(), 180, "one tick per real minute for three hours");
    }

    #[test]
    fn autumn_fixed_time_runs_once_and_never_goes_back() {
        let c = CronSchedule::parse("0 30 2 * * *", AMS).unwrap();
        // Before the first 02:30 (CEST): that one.
        assert_eq!(
            c.next_after(utc("2026-10-25T00:00:00Z")).unwrap(),
            utc("2026-10-25T00:30:00Z")
        );
        // Past the first, inside the repeated hour: tomorrow, not back in time.
        assert_eq!(
            c.next_after(utc("2026-10-25T01:10:00Z")).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
        assert_eq!(
            c.next_after(utc("2026-10-25T00:30:00Z")).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn spring_fixed_time_in_the_skipped_hour_runs_after_the_gap() {
        let c = CronSchedule::parse("0 30 2 * * *", AMS).unwrap();
        assert_eq!(
            c.next_after(utc("2026-03-29T00:00:00Z")).unwrap(),
            utc("2026-03-29T01:00:00Z")
        );
        assert_eq!(
            c.next_after(utc("2026-03-29T01:00:00Z")).unwrap(),
            utc("2026-03-30T00:30:00Z")
        );
    }

    #[test]
    fn spring_interval_ticks_skip_the_missing_hour() {
        let c = CronSchedule::parse("0 */30 * * * *", AMS).unwrap();
        assert_eq!(
            c.next_after(utc("2026-03-29T00:45:00Z")).unwrap(),
            utc("2026-03-29T01:00:00Z")
        );
        assert_eq!(
            c.next_after(utc("2026-03-29T01:00:00Z")).unwrap(),
            utc("2026-03-29T01:30:00Z")
        );
    }

    #[test]
    fn next_is_always_later_around_both_changes() {
        for expr in [
            "0 * * * * *",
            "0 30 2 * * *",
            "0 0 * * * *",
            "0 15 2 * * *",
            "0 */15 * * * *",
            "*/20 * 2 * * *",
            "0 15,45 2 * * *",
            "0 0 1-3 * * *",
        ] {
            let c = CronSchedule::parse(expr, AMS).unwrap();
            for (from, until) in [
                ("2026-03-28T22:00:00Z", "2026-03-29T04:00:00Z"),
                ("2026-10-24T22:00:00Z", "2026-10-25T04:00:00Z"),
            ] {
                let (mut t, until) = (utc(from), utc(until));
                while t < until {
                    let n = c.next_after(t).unwrap();
                    assert!(n > t, "{expr}: next after {t} was {n}");
                    t = n;
                }
            }
        }
    }

    /// All ticks of `expr` from `from` to `until` (UTC).
    fn ticks(expr: &str, from: &str, until: &str) -> Vec<DateTime<Utc>> {
        let c = CronSchedule::parse(expr, AMS).unwrap();
        let mut out = Vec::new();
        let (mut t, until) = (utc(from), utc(until));
        loop {
            t = c.next_after(t).unwrap();
            if t > until {
                return out;
            }
            out.push(t);
        }
    }

    #[test]
    fn timing_is_read_from_the_hour_field_as_documented() {
        for (expr, timing) in [
            ("0 15,45 2 * * *", Timing::FixedTime),
            ("0 0 1-3 * * *", Timing::FixedTime),
            ("*/20 * 2 * * *", Timing::FixedTime),
            ("0 30 3 * * *", Timing::FixedTime),
            ("0 * * * * *", Timing::Interval),
            ("0 0 */2 * * *", Timing::Interval),
            ("0 0 1-23/2 * * *", Timing::Interval),
        ] {
            assert_eq!(
                CronSchedule::parse(expr, AMS).unwrap().timing(),
                timing,
                "{expr}"
            );
        }
    }

    #[test]
    fn fixed_times_written_as_lists_run_once_each_in_autumn() {
        // 25 Oct 2026: 02:00-03:00 happens twice. 02:15 and 02:45 run once
        // each, in the first copy (CEST, UTC+2).
        let got = ticks(
            "0 15,45 2 * * *",
            "2026-10-24T23:00:00Z",
            "2026-10-25T23:00:00Z",
        );
        assert_eq!(
            got,
            vec![utc("2026-10-25T00:15:00Z"), utc("2026-10-25T00:45:00Z")]
        );
        // Same as the single time.
        let got = ticks(
            "0 15 2 * * *",
            "2026-10-24T23:00:00Z",
            "2026-10-25T23:00:00Z",
        );
        assert_eq!(got, vec![utc("2026-10-25T00:15:00Z")]);
        // A range over the repeated hour: 01:00, 02:00 (first copy), 03:00.
        let got = ticks(
            "0 0 1-3 * * *",
            "2026-10-24T22:00:00Z",
            "2026-10-25T22:00:00Z",
        );
        assert_eq!(
            got,
            vec![
                utc("2026-10-24T23:00:00Z"),
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T02:00:00Z")
            ]
        );
    }

    #[test]
    fn fixed_times_written_as_lists_run_after_the_spring_gap() {
        // 29 Mar 2026: 02:00-03:00 does not exist; 02:15 and 02:45 run right
        // after the gap (03:00 CEST = 01:00Z), once, not zero times.
        let got = ticks(
            "0 15,45 2 * * *",
            "2026-03-28T23:00:00Z",
            "2026-03-29T22:00:00Z",
        );
        assert_eq!(got, vec![utc("2026-03-29T01:00:00Z")]);
        let got = ticks(
            "0 15 2 * * *",
            "2026-03-28T23:00:00Z",
            "2026-03-29T22:00:00Z",
        );
        assert_eq!(got, vec![utc("2026-03-29T01:00:00Z")]);
        // The day after, both again at their times (CEST).
        let got = ticks(
            "0 15,45 2 * * *",
            "2026-03-29T22:00:00Z",
            "2026-03-30T22:00:00Z",
        );
        assert_eq!(
            got,
            vec![utc("2026-03-30T00:15:00Z"), utc("2026-03-30T00:45:00Z")]
        );
    }

    #[test]
    fn interval_expressions_with_lists_in_minutes_still_follow_real_time() {
        // Hour field `*`: ticks by real time, 4 per hour through both copies.
        let got = ticks(
            "0 0,15,30,45 * * * *",
            "2026-10-24T23:59:59Z",
            "2026-10-25T01:59:59Z",
        );
        assert_eq!(got.len(), 8);
        let got = ticks(
            "0 0,30 * * * *",
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:59:59Z",
        );
        assert_eq!(
            got,
            vec![
                utc("2026-03-29T00:30:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:30:00Z")
            ]
        );
    }

    #[test]
    fn the_second_before_an_offset_change_is_no_trap() {
        // A step in the hour field makes this an interval expression.
        let c = CronSchedule::parse("0 0 */12 1 1 *", AMS).unwrap();
        assert_eq!(
            c.next_after(utc("2026-03-29T00:59:59Z")).unwrap(),
            utc("2026-12-31T23:00:00Z")
        );
        // Its only times fall in the skipped hour next spring (a step makes
        // it an interval expression, whose search crosses offset changes):
        // no tick that day; the year after, 29 March 2027 is a Monday before
        // the change (28 March), so 02:00 CEST = 00:00Z.
        let c = CronSchedule::parse("0 0,30 2/24 29 3 *", AMS).unwrap();
        assert_eq!(c.timing(), Timing::Interval);
        assert_eq!(
            c.next_after(utc("2025-07-01T00:00:00Z")).unwrap(),
            utc("2027-03-29T00:00:00Z")
        );
        // The same times as a fixed time run right after the gap instead.
        let c = CronSchedule::parse("0 0,30 2 29 3 *", AMS).unwrap();
        assert_eq!(
            c.next_after(utc("2025-07-01T00:00:00Z")).unwrap(),
            utc("2026-03-29T01:00:00Z")
        );
        // 29 February, several changes ahead.
        let c = CronSchedule::parse("0 0 */12 29 2 *", AMS).unwrap();
        assert_eq!(
            c.next_after(utc("2026-03-01T00:00:00Z")).unwrap(),
            utc("2028-02-28T23:00:00Z")
        );
    }

    #[test]
    fn an_impossible_date_is_reported_not_searched_for_ever() {
        let c = CronSchedule::parse("0 0 0 31 2 *", "UTC").unwrap();
        assert_eq!(
            c.next_after(utc("2026-11-23T00:00:00Z")),
            Err(CronError::NeverMatches("0 0 0 31 2 *".into()))
        );
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
