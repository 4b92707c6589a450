//! `scheduler_leader` and the advisory lock whose holder leads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// The advisory lock (two-int form) whose holder is the leading scheduler.
/// Advisory locks are per database, so each database has its own leader.
pub const LEADER_LOCK: (i32, i32) = (0x646b_6c00, 1);

/// Tries to take the leader lock on this session. True if this session now
/// holds it (it stays held until the session ends or unlocks).
pub async fn try_leader_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(LEADER_LOCK.0)
        .bind(LEADER_LOCK.1)
        .fetch_one(conn)
        .await
}

/// Releases the leader lock held by this session.
pub async fn release_leader_lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(LEADER_LOCK.0)
        .bind(LEADER_LOCK.1)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends the session of a leader whose heartbeat is older than `stale_after`
/// (a frozen process keeps its connection, and with it the lock, for ever).
/// Returns true if a session was ended; its lock is then free.
pub async fn depose_stale_leader(
    conn: &mut PgConnection,
    stale_after: Duration,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(bool_or(pg_terminate_backend(l.pid)), false)
           FROM pg_locks l, scheduler_leader s
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2
            AND l.pid <> pg_backend_pid() AND l.pid = s.backend_pid
            AND s.heartbeat_at < clock_timestamp() - make_interval(secs => $3)",
    )
    .bind(LEADER_LOCK.0)
    .bind(LEADER_LOCK.1)
    .bind(stale_after.as_secs_f64())
    .fetch_one(conn)
    .await
}

/// Writes this scheduler into `scheduler_leader`.
pub async fn claim_leader_row(
    conn: &mut PgConnection,
    scheduler_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO scheduler_leader (only_row, scheduler_id, backend_pid, since, heartbeat_at)
         VALUES (true, $1, pg_backend_pid(), now(), now())
         ON CONFLICT (only_row) DO UPDATE
            SET scheduler_id = $1, backend_pid = pg_backend_pid(), since = now(), heartbeat_at = now()",
    )
    .bind(scheduler_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The leader's heartbeat. Returns the database's current time, or `None`
/// when the row names someone else (then the caller claims it again).
pub async fn leader_heartbeat(
    conn: &mut PgConnection,
    scheduler_id: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE scheduler_leader SET heartbeat_at = clock_timestamp() WHERE scheduler_id = $1 RETURNING heartbeat_at",
    )
    .bind(scheduler_id)
    .fetch_optional(conn)
    .await
}

/// Removes this scheduler's leader row (at shutdown).
pub async fn clear_leader_row(
    conn: &mut PgConnection,
    scheduler_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM scheduler_leader WHERE scheduler_id = $1")
        .bind(scheduler_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Who leads, as far as the database knows.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Leadership {
    /// True if some session holds the leader lock right now.
    pub lock_held: bool,
    /// The leader's id, from `scheduler_leader`.
    pub scheduler_id: Option<String>,
    /// Since when it leads.
    pub since: Option<DateTime<Utc>>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: Option<f64>,
}

/// Reads the leader lock and the leader row.
pub async fn leadership(executor: impl PgExecutor<'_>) -> Result<Leadership, sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2) AS lock_held,
                l.scheduler_id, l.since,
                extract(epoch FROM clock_timestamp() - l.heartbeat_at)::float8 AS heartbeat_age_s
           FROM (SELECT 1) one LEFT JOIN scheduler_leader l ON true",
    )
    .bind(LEADER_LOCK.0)
    .bind(LEADER_LOCK.1)
    .fetch_one(executor)
    .await
}
