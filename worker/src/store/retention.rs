//! `retention_rules` and the deletes they ask for.
//!
//! A rule names a table and a condition from a fixed list
//! ([`Target`]); the SQL for each lives here, written by us, never taken
//! from a row. Deletes go in batches walked along the index of the row's
//! age (each batch starts where the last one ended), sized so one
//! statement stays well under a second, each in its own short
//! transaction with a lock timeout: the web application never waits long
//! on retention, and retention gives up on a table someone holds locked
//! rather than queue behind them.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What a rule may delete: one of these, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `incoming_emails` processed, by `received_at` (attachments go with them).
    IncomingProcessed,
    /// `verzonden_emails`, by `sent_at`.
    SendLog,
    /// `refresh_tokens` revoked or expired, by whichever came first.
    RefreshTokensEnded,
    /// `sessions` ended or expired, by whichever came first.
    SessionsEnded,
    /// `notifications` read, by `read_at`.
    NotificationsRead,
    /// `uploaded_images` marked deleted: handed to `cleanup_images`, which
    /// removes a row only once the store confirmed the image is gone.
    ImagesDeleted,
    /// `email_bounces`, by `created_at`.
    Bounces,
    /// `email_complaints`, by `created_at`.
    Complaints,
    /// `auto_reply_log`, by `replied_at`.
    AutoReplyLog,
    /// finished jobs, by `done_at`.
    JobsDone,
    /// discarded and cancelled jobs, by `done_at`.
    JobsDiscarded,
    /// `dashboard_sessions` expired, by `expires_at`.
    DashboardSessionsExpired,
    /// `dashboard_audit`, by `at`.
    DashboardAudit,
}

/// How a target's rows are found and deleted. `age` is an expression some
/// index is built on, so the batches walk that index in order.
struct Plan {
    table: &'static str,
    age: &'static str,
    filter: &'static str,
}

impl Target {
    /// The target a rule's `(table_name, condition)` names, if this version
    /// knows it.
    pub fn of(table: &str, condition: &str) -> Option<Self> {
        Some(match (table, condition) {
            ("incoming_emails", "processed") => Self::IncomingProcessed,
            ("verzonden_emails", "any") => Self::SendLog,
            ("refresh_tokens", "revoked_or_expired") => Self::RefreshTokensEnded,
            ("sessions", "ended") => Self::SessionsEnded,
            ("notifications", "read") => Self::NotificationsRead,
            ("uploaded_images", "deleted") => Self::ImagesDeleted,
            ("email_bounces", "any") => Self::Bounces,
            ("email_complaints", "any") => Self::Complaints,
            ("auto_reply_log", "any") => Self::AutoReplyLog,
            ("apalis.jobs", "done") => Self::JobsDone,
            ("apalis.jobs", "discarded") => Self::JobsDiscarded,
            ("dashboard_sessions", "expired") => Self::DashboardSessionsExpired,
            ("dashboard_audit", "any") => Self::DashboardAudit,
            _ => return None,
        })
    }

    /// The `(table_name, condition)` of `retention_targets` it stands for.
    pub fn name(self) -> (&'static str, &'static str) {
        let plan = self.plan();
        let condition = match self {
            Self::IncomingProcessed => "processed",
            Self::RefreshTokensEnded => "revoked_or_expired",
            Self::SessionsEnded => "ended",
            Self::NotificationsRead => "read",
            Self::ImagesDeleted => "deleted",
            Self::JobsDone => "done",
            Self::JobsDiscarded => "discarded",
            Self::DashboardSessionsExpired => "expired",
            Self::SendLog
            | Self::Bounces
            | Self::Complaints
            | Self::AutoReplyLog
            | Self::DashboardAudit => "any",
        };
        (plan.table, condition)
    }

    fn plan(self) -> Plan {
        let (table, age, filter) = match self {
            Self::IncomingProcessed => ("incoming_emails", "received_at", "processed"),
            Self::SendLog => ("verzonden_emails", "sent_at", "true"),
            Self::RefreshTokensEnded => ("refresh_tokens", "LEAST(expires_at, revoked_at)", "true"),
            Self::SessionsEnded => ("sessions", "LEAST(expires_at, ended_at)", "true"),
            Self::NotificationsRead => ("notifications", "COALESCE(read_at, created_at)", "read"),
            Self::ImagesDeleted => ("uploaded_images", "deleted_at", "true"),
            Self::Bounces => ("email_bounces", "created_at", "true"),
            Self::Complaints => ("email_complaints", "created_at", "true"),
            Self::AutoReplyLog => ("auto_reply_log", "replied_at", "true"),
            Self::JobsDone => ("apalis.jobs", "done_at", "status = 'Done'"),
            Self::JobsDiscarded => ("apalis.jobs", "done_at", "status = 'Killed'"),
            Self::DashboardSessionsExpired => ("dashboard_sessions", "expires_at", "true"),
            Self::DashboardAudit => ("dashboard_audit", "at", "true"),
        };
        Plan { table, age, filter }
    }
}

/// A row of `retention_rules`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct Rule {
    /// The rule's name.
    pub name: String,
    /// The table it deletes from.
    pub table_name: String,
    /// Which rows (see `retention_targets`).
    pub condition: String,
    /// Rows older than this go, in seconds.
    pub keep_for_secs: f64,
    /// Off: never applied.
    pub enabled: bool,
    /// `now() - keep_for`, when read.
    pub cutoff: DateTime<Utc>,
    /// When it last ran.
    pub last_run_at: Option<DateTime<Utc>>,
    /// How many rows it deleted then.
    pub last_deleted: Option<i64>,
    /// Why it failed then.
    pub last_error: Option<String>,
}

impl Rule {
    /// The target this rule names, if this version knows it.
    pub fn target(&self) -> Option<Target> {
        Target::of(&self.table_name, &self.condition)
    }
}

/// Why a rule could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The rule names a table or condition this version has no SQL for.
    #[error(
        "retention rule `{rule}` names table `{table}` with condition `{condition}`, which this version cannot delete (see retention_targets); fix or disable the rule"
    )]
    UnknownTarget {
        /// The rule.
        rule: String,
        /// Its table.
        table: String,
        /// Its condition.
        condition: String,
    },
    /// Image rows go only after the store confirmed (`cleanup_images`).
    #[error(
        "retention rule `{rule}`: images are removed by cleanup_images once the store confirmed, never deleted here"
    )]
    NeedsTheStore {
        /// The rule.
        rule: String,
    },
    /// Someone held a lock on the table longer than the lock timeout.
    #[error(
        "retention rule `{rule}`: `{table}` stayed locked by another session for over {timeout_ms} ms; nothing more was deleted, it runs again next time"
    )]
    Locked {
        /// The rule.
        rule: String,
        /// Its table.
        table: String,
        /// The lock timeout.
        timeout_ms: u64,
    },
    /// The images' cleanup job could not be enqueued.
    #[error("retention rule `{rule}`: cannot hand the images to cleanup_images: {message}")]
    Handoff {
        /// The rule.
        rule: String,
        /// What went wrong.
        message: String,
    },
    /// Any other database error.
    #[error("retention rule `{rule}` on `{table}`: {source}")]
    Database {
        /// The rule.
        rule: String,
        /// Its table.
        table: String,
        /// What PostgreSQL said.
        source: sqlx::Error,
    },
}

impl RetentionError {
    /// Whether applying the rule again later may succeed (a lock, a
    /// dropped connection), as opposed to a rule that must be fixed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::UnknownTarget { .. } | Self::NeedsTheStore { .. } => false,
            Self::Locked { .. } | Self::Handoff { .. } => true,
            Self::Database { source, .. } => match source.as_database_error() {
                // Serialization failure, deadlock, cancelled (statement
                // timeout), lock not available, connection exceptions,
                // the server shutting down: another day may do.
                Some(db) => db.code().is_some_and(|code| {
                    matches!(
                        code.as_ref(),
                        "40001" | "40P01" | "57014" | "55P03" | "57P01" | "57P02" | "57P03"
                    ) || code.starts_with("08")
                }),
                // No answer at all (I/O, pool timeout).
                None => true,
            },
        }
    }
}

/// What applying a rule did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// Rows deleted.
    pub deleted: u64,
    /// Statements run.
    pub batches: u32,
    /// The longest single delete statement.
    pub longest_statement: Duration,
}

/// Batch sizing and the lock timeout.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Rows in the first batch.
    pub first: i64,
    /// Never more rows than this in one statement.
    pub max: i64,
    /// Aim for statements about this long (the batch grows or shrinks).
    pub target: Duration,
    /// A statement waiting this long for a lock fails (and the rule with it).
    pub lock_timeout: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            first: 2_000,
            max: 50_000,
            target: Duration::from_millis(250),
            lock_timeout: Duration::from_secs(1),
        }
    }
}

/// Every rule, with its cutoff as of now, in name order.
pub async fn rules(pool: &PgPool) -> Result<Vec<Rule>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, table_name, condition,
                extract(epoch FROM keep_for)::float8 AS keep_for_secs,
                enabled, now() - keep_for AS cutoff, last_run_at, last_deleted, last_error
           FROM retention_rules ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

/// How many rows `rule` would delete now.
pub async fn count_due(pool: &PgPool, rule: &Rule) -> Result<i64, RetentionError> {
    let plan = plan_of(rule)?;
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {} < $1 AND {}",
        plan.table, plan.age, plan.filter
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(rule.cutoff)
        .fetch_one(pool)
        .await
        .map_err(|e| classify(rule, &plan, e, Duration::ZERO))
}

/// Deletes the rows `rule` says are due, in batches; stops at the first
/// failing batch (what was deleted stays deleted).
pub async fn apply(
    pool: &PgPool,
    rule: &Rule,
    batching: Batching,
    on_batch: &mut (dyn FnMut(u64) + Send),
) -> Result<Applied, RetentionError> {
    let plan = plan_of(rule)?;
    if rule.target() == Some(Target::ImagesDeleted) {
        return Err(RetentionError::NeedsTheStore {
            rule: rule.name.clone(),
        });
    }
    // Rows are deleted by their physical address (a TID scan, no second
    // index walk). The DELETE repeats the conditions: a row changed since
    // the subquery saw it (a notification marked unread, or updated to a
    // new address) is rechecked, not deleted on stale facts.
    let sql = format!(
        "WITH gone AS (
            DELETE FROM {t} WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM {t}
                 WHERE {a} >= COALESCE($1, '-infinity'::timestamptz) AND {a} < $2 AND {f}
                 ORDER BY {a} LIMIT $3))
              AND {a} < $2 AND {f}
            RETURNING {a} AS age)
         SELECT count(*), max(age) FROM gone",
        t = plan.table,
        a = plan.age,
        f = plan.filter,
    );
    let lock_timeout = format!(
        "SET LOCAL lock_timeout = '{}ms'",
        batching.lock_timeout.as_millis()
    );
    let mut applied = Applied::default();
    let mut from: Option<DateTime<Utc>> = None;
    let mut size = batching.first;
    loop {
        let started = Instant::now();
        let (n, last) = delete_batch(pool, &lock_timeout, &sql, from, rule.cutoff, size)
            .await
            .map_err(|e| classify(rule, &plan, e, batching.lock_timeout))?;
        let took = started.elapsed();
        applied.batches += 1;
        applied.deleted += n as u64;
        applied.longest_statement = applied.longest_statement.max(took);
        on_batch(applied.deleted);
        if n == 0 {
            return Ok(applied);
        }
        from = last;
        size = next_batch_size(size, took, batching);
    }
}

async fn delete_batch(
    pool: &PgPool,
    lock_timeout: &str,
    sql: &str,
    from: Option<DateTime<Utc>>,
    cutoff: DateTime<Utc>,
    size: i64,
) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(lock_timeout.to_string()))
        .execute(&mut *tx)
        .await?;
    let row: (i64, Option<DateTime<Utc>>) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(from)
        .bind(cutoff)
        .bind(size)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

/// Grow fast statements, shrink slow ones, toward `target`.
fn next_batch_size(size: i64, took: Duration, batching: Batching) -> i64 {
    if took < batching.target / 2 {
        (size * 2).min(batching.max)
    } else if took > batching.target * 2 {
        (size / 2).max(100)
    } else {
        size
    }
}

/// The age an enabled rule of `target` keeps rows for, in seconds (the
/// shortest when several do); None when no enabled rule names it. The job
/// engine's prune ages and the images' grace period are read this way.
pub async fn enabled_age(pool: &PgPool, target: Target) -> Result<Option<f64>, sqlx::Error> {
    let (table, condition) = target.name();
    sqlx::query_scalar(
        "SELECT min(extract(epoch FROM keep_for))::float8 FROM retention_rules
          WHERE table_name = $1 AND condition = $2 AND enabled",
    )
    .bind(table)
    .bind(condition)
    .fetch_one(pool)
    .await
}

/// Stores the outcome of applying a rule on its row.
pub async fn record_outcome(
    pool: &PgPool,
    rule: &str,
    deleted: Option<u64>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE retention_rules
            SET last_run_at = now(), last_deleted = $2, last_error = $3
          WHERE name = $1",
    )
    .bind(rule)
    .bind(deleted.map(|n| n as i64))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

fn plan_of(rule: &Rule) -> Result<Plan, RetentionError> {
    rule.target()
        .map(Target::plan)
        .ok_or_else(|| RetentionError::UnknownTarget {
            rule: rule.name.clone(),
            table: rule.table_name.clone(),
            condition: rule.condition.clone(),
        })
}

fn classify(rule: &Rule, plan: &Plan, e: sqlx::Error, lock_timeout: Duration) -> RetentionError {
    // 55P03: lock_not_available (the lock timeout).
    let locked = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03");
    if locked {
        RetentionError::Locked {
            rule: rule.name.clone(),
            table: plan.table.to_string(),
            timeout_ms: lock_timeout.as_millis() as u64,
        }
    } else {
        RetentionError::Database {
            rule: rule.name.clone(),
            table: plan.table.to_string(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seeded_target_has_a_plan() {
        let migrations = [
            include_str!("../../../migrations/20261203000001_upkeep.sql"),
            include_str!("../../../migrations/20261204000001_dashboard.sql"),
        ];
        let seeded = migrations.iter().map(|migration| {
            migration
                .split("INSERT INTO retention_targets (table_name, condition, description) VALUES")
                .nth(1)
                .and_then(|s| s.split(';').next())
                .unwrap()
        });
        let mut n = 0;
        for line in seeded
            .flat_map(str::lines)
            .filter(|l| l.trim_start().starts_with("('"))
        {
            let fields: Vec<&str> = line.split('\'').collect();
            let (table, condition) = (fields[1], fields[3]);
            assert!(
                Target::of(table, condition).is_some(),
                "{table}/{condition} has no plan"
            );
            assert_eq!(
                Target::of(table, condition).map(Target::name),
                Some((table, condition))
            );
            n += 1;
        }
        assert_eq!(n, 13);
    }

    #[test]
    fn batches_grow_when_fast_and_shrink_when_slow() {
        let b = Batching::default();
        assert_eq!(next_batch_size(2_000, Duration::from_millis(10), b), 4_000);
        assert_eq!(
            next_batch_size(40_000, Duration::from_millis(10), b),
            50_000
        );
        assert_eq!(next_batch_size(2_000, Duration::from_millis(900), b), 1_000);
        assert_eq!(next_batch_size(2_000, Duration::from_millis(250), b), 2_000);
    }
}
