//! `leaderboards`: rebuilt from `event_registrations` per period (each
//! event, each year, all time), only for periods whose registrations
//! changed (`leaderboard_changes`, written by triggers).
//!
//! Which registrations count and the points rule are the view
//! `leaderboard_source` (migrations/20261203000001_upkeep.sql). Ranks are
//! competition ranks by steps: equal steps share a rank and the next rank
//! skips (1, 2, 2, 4); distance does not break ties, it only orders the
//! tied rows on display.
//!
//! Atomic per period: the changed periods are rewritten by one statement
//! in one transaction, so a reader sees a period's old board or its new
//! one, never a mix; readers take no locks that writers wait for, and the
//! writer takes none that readers wait for (MVCC). Only rows whose rank,
//! steps, distance or points changed are written. While it runs, the rows
//! it writes hold a key-share lock on their participant (the foreign key):
//! deleting a participant then waits for the recompute to commit.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A leaderboard's period, as stored in `leaderboards.period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// One event: `event:<uuid>`.
    Event(Uuid),
    /// The events starting in one year (Europe/Amsterdam): `year:<yyyy>`.
    Year(i32),
    /// All time: `all`.
    All,
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event(id) => write!(f, "event:{id}"),
            Self::Year(y) => write!(f, "year:{y}"),
            Self::All => f.write_str("all"),
        }
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a period; use event:<uuid>, year:<yyyy> or all");
        match s.split_once(':') {
            None if s == "all" => Ok(Self::All),
            Some(("event", id)) => id.parse().map(Self::Event).map_err(|_| bad()),
            Some(("year", y)) => y
                .parse()
                .ok()
                .filter(|y| (1900..=9999).contains(y))
                .map(Self::Year)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// Which periods to rebuild besides the changed ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Also {
    /// Every period that has registrations or a board.
    pub all_periods: bool,
    /// This event's periods (its event, its year, all time).
    pub event: Option<Uuid>,
}

/// What a recompute did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Recomputed {
    /// Another recompute held the lock; nothing was done.
    pub busy: bool,
    /// Periods rebuilt, with their number of entries.
    pub periods: Vec<(String, i64)>,
    /// Rows inserted or changed.
    pub rows_written: i64,
    /// Rows of people no longer on a rebuilt board.
    pub rows_removed: i64,
    /// Known periods left alone because nothing changed.
    pub skipped: i64,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

/// Rebuilds the periods whose registrations changed (and those `also`
/// asks for) in one transaction. Concurrent calls do not queue: the second
/// returns `busy` and the changes wait for the next run.
pub async fn recompute(pool: &PgPool, also: Also) -> Result<Recomputed, sqlx::Error> {
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('dkl:leaderboards'))")
            .fetch_one(&mut *tx)
            .await?;
    if !locked {
        return Ok(Recomputed {
            busy: true,
            ..Recomputed::default()
        });
    }
    // Changes committed after this statement stay in the log for the
    // next run; those before it are in the data the rebuild reads (a
    // later snapshot), so nothing is missed.
    let logged: Vec<String> = sqlx::query_scalar(
        "WITH taken AS (DELETE FROM leaderboard_changes RETURNING period)
         SELECT DISTINCT period FROM taken",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut due: BTreeSet<Period> = logged.iter().filter_map(|p| parse_logged(p)).collect();
    if also.all_periods {
        due.extend(every_period(&mut tx).await?);
    }
    if let Some(event) = also.event {
        due.extend(periods_of_event(&mut tx, event).await?);
    }
    let mut done = Recomputed::default();
    if !due.is_empty() {
        rebuild(&mut tx, &due, &mut done).await?;
        record_periods(&mut tx, &done.periods, started.elapsed()).await?;
    }
    done.skipped =
        sqlx::query_scalar("SELECT count(*) FROM leaderboard_periods WHERE period <> ALL ($1)")
            .bind(
                done.periods
                    .iter()
                    .map(|(p, _)| p.clone())
                    .collect::<Vec<_>>(),
            )
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    done.took_ms = started.elapsed().as_millis() as u64;
    Ok(done)
}

fn parse_logged(period: &str) -> Option<Period> {
    match period.parse() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(period, error = %e, "ignoring a leaderboard change for an unknown period");
            None
        }
    }
}

async fn every_period(tx: &mut sqlx::PgConnection) -> Result<Vec<Period>, sqlx::Error> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT 'event:' || e.id FROM events e
          WHERE EXISTS (SELECT 1 FROM event_registrations r WHERE r.event_id = e.id)
         UNION SELECT DISTINCT 'year:' || dkl_leaderboard_year(e.start_time) FROM events e
          WHERE EXISTS (SELECT 1 FROM event_registrations r WHERE r.event_id = e.id)
         UNION SELECT 'all'
         UNION SELECT period FROM leaderboard_periods",
    )
    .fetch_all(tx)
    .await?;
    Ok(rows.iter().filter_map(|p| parse_logged(p)).collect())
}

async fn periods_of_event(
    tx: &mut sqlx::PgConnection,
    event: Uuid,
) -> Result<Vec<Period>, sqlx::Error> {
    let year: Option<i32> =
        sqlx::query_scalar("SELECT dkl_leaderboard_year(start_time) FROM events WHERE id = $1")
            .bind(event)
            .fetch_optional(tx)
            .await?;
    Ok(year
        .map(|y| vec![Period::Event(event), Period::Year(y), Period::All])
        .unwrap_or_default())
}

/// One statement: the new boards of `due` (ranked), compared with the
/// stored ones; only entries that are new or differ are written, and
/// entries no longer on a board are removed. (Not ON CONFLICT DO UPDATE:
/// it row-locks every conflicting row even when its WHERE is false, which
/// writes to every page of every board rebuilt: 59 s instead of 49.5 s for
/// 1M registrations, and 12 s to find nothing changed.) Only one recompute runs at a time (the advisory
/// lock), so the stored rows the comparison read are the ones written.
const REBUILD: &str = "
WITH fresh AS MATERIALIZED (
    SELECT period, participant_id, steps, distance, points,
           rank() OVER (PARTITION BY period ORDER BY steps DESC) AS rank
      FROM (SELECT 'event:' || s.event_id AS period, s.participant_id,
                   s.steps::bigint AS steps, s.distance::numeric AS distance,
                   s.points::bigint AS points
              FROM leaderboard_source s
             WHERE s.event_id = ANY ($1)
            UNION ALL
            SELECT 'year:' || s.year, s.participant_id, sum(s.steps), sum(s.distance), sum(s.points)
              FROM leaderboard_source s
             WHERE s.year = ANY ($2)
             GROUP BY s.year, s.participant_id
            UNION ALL
            SELECT 'all', s.participant_id, sum(s.steps), sum(s.distance), sum(s.points)
              FROM leaderboard_source s
             WHERE $3
             GROUP BY s.participant_id) boards
),
stored AS MATERIALIZED (
    SELECT id, period, participant_id, steps, distance, rank, points
      FROM leaderboards
     WHERE period = ANY ($4)
),
changed AS MATERIALIZED (
    SELECT f.*, s.id AS stored_id
      FROM fresh f
      LEFT JOIN stored s ON s.period = f.period AND s.participant_id = f.participant_id
     WHERE s.id IS NULL
        OR (s.steps, s.distance, s.rank, s.points) IS DISTINCT FROM (f.steps, f.distance, f.rank, f.points)
),
updated AS (
    UPDATE leaderboards l
       SET steps = c.steps, distance = c.distance, rank = c.rank, points = c.points
      FROM changed c
     WHERE c.stored_id IS NOT NULL AND l.id = c.stored_id
    RETURNING 1
),
inserted AS (
    INSERT INTO leaderboards (period, participant_id, steps, distance, rank, points)
    SELECT period, participant_id, steps, distance, rank, points
      FROM changed
     WHERE stored_id IS NULL
    RETURNING 1
),
removed AS (
    DELETE FROM leaderboards l
     USING stored s
     WHERE l.id = s.id
       AND NOT EXISTS (SELECT 1 FROM fresh f
                        WHERE f.period = s.period AND f.participant_id = s.participant_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted),
       (SELECT count(*) FROM removed),
       (SELECT coalesce(jsonb_object_agg(period, n), '{}')
          FROM (SELECT period, count(*) AS n FROM fresh GROUP BY period) c)";

async fn rebuild(
    tx: &mut sqlx::PgConnection,
    due: &BTreeSet<Period>,
    done: &mut Recomputed,
) -> Result<(), sqlx::Error> {
    let events: Vec<Uuid> = due
        .iter()
        .filter_map(|p| match p {
            Period::Event(id) => Some(*id),
            _ => None,
        })
        .collect();
    let years: Vec<i32> = due
        .iter()
        .filter_map(|p| match p {
            Period::Year(y) => Some(*y),
            _ => None,
        })
        .collect();
    let names: Vec<String> = due.iter().map(Period::to_string).collect();
    let (written, removed, entries): (
        i64,
        i64,
        sqlx::types::Json<std::collections::HashMap<String, i64>>,
    ) = sqlx::query_as(REBUILD)
        .bind(&events)
        .bind(&years)
        .bind(due.contains(&Period::All))
        .bind(&names)
        .fetch_one(&mut *tx)
        .await?;
    done.rows_written = written;
    done.rows_removed = removed;
    done.periods = names
        .into_iter()
        .map(|p| {
            let n = entries.0.get(&p).copied().unwrap_or(0);
            (p, n)
        })
        .collect();
    Ok(())
}

/// Records each rebuilt period; a period left without entries (its event
/// deleted, every walker in test mode) is forgotten.
async fn record_periods(
    tx: &mut sqlx::PgConnection,
    periods: &[(String, i64)],
    took: Duration,
) -> Result<(), sqlx::Error> {
    let (names, entries): (Vec<String>, Vec<i64>) = periods.iter().cloned().unzip();
    sqlx::query(
        "WITH rebuilt AS (SELECT p, n FROM unnest($1::text[], $2::int8[]) u(p, n)),
              gone AS (DELETE FROM leaderboard_periods
                        WHERE period IN (SELECT p FROM rebuilt WHERE n = 0))
         INSERT INTO leaderboard_periods (period, entries, computed_at, took_ms)
         SELECT p, n, now(), $3 FROM rebuilt WHERE n > 0
         ON CONFLICT (period) DO UPDATE
            SET entries = EXCLUDED.entries, computed_at = EXCLUDED.computed_at,
                took_ms = EXCLUDED.took_ms",
    )
    .bind(&names)
    .bind(&entries)
    .bind(took.as_millis().min(i32::MAX as u128) as i32)
    .execute(tx)
    .await?;
    Ok(())
}

/// One line of a board, in reading order.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Entry {
    /// Competition rank (ties share it).
    pub rank: i32,
    /// The participant's name.
    pub name: String,
    /// Steps in the period.
    pub steps: i32,
    /// Distance in the period (km).
    pub distance: f64,
    /// Points in the period.
    pub points: i32,
    /// The participant.
    pub participant_id: Uuid,
}

/// The top `limit` of a period's board: rank, then distance, then name.
pub async fn top(pool: &PgPool, period: Period, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rank, name, steps, distance::float8 AS distance, points, participant_id
           FROM leaderboard_view
          WHERE period = $1
          ORDER BY rank, distance DESC, name, participant_id
          LIMIT $2",
    )
    .bind(period.to_string())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// When a period was last computed, and how many entries it had.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct PeriodInfo {
    /// The period.
    pub period: String,
    /// Entries on its board.
    pub entries: i32,
    /// When it was rebuilt.
    pub computed_at: DateTime<Utc>,
}

/// Every computed period, newest first.
pub async fn periods(pool: &PgPool) -> Result<Vec<PeriodInfo>, sqlx::Error> {
    sqlx::query_as("SELECT period, entries, computed_at FROM leaderboard_periods ORDER BY period")
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_back_as_written() {
        let id = Uuid::new_v4();
        for p in [Period::Event(id), Period::Year(2026), Period::All] {
            assert_eq!(p.to_string().parse::<Period>().unwrap(), p);
        }
        let e = "week:12".parse::<Period>().unwrap_err();
        assert!(e.contains("event:<uuid>, year:<yyyy> or all"), "{e}");
        assert!("year:twenty".parse::<Period>().is_err());
        assert!("event:nope".parse::<Period>().is_err());
    }
}
