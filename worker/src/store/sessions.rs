//! `sessions`, `refresh_tokens` and `user_roles` past their expiry: ended,
//! revoked, made inactive. In batches of rows locked with SKIP LOCKED, so
//! a session the web application is updating right now is left for the
//! next run instead of making either side wait.

use sqlx::PgPool;

/// Rows per statement.
const BATCH: i64 = 5_000;

/// What one expiry run changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    /// Sessions made inactive and not current.
    pub sessions: u64,
    /// Refresh tokens revoked.
    pub refresh_tokens: u64,
    /// Role assignments made inactive.
    pub user_roles: u64,
}

const END_SESSIONS: &str = "
WITH due AS (
    SELECT id FROM sessions
     WHERE (is_active OR is_current) AND expires_at <= now()
     ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE sessions s SET is_active = false, is_current = false
  FROM due WHERE s.id = due.id";

const REVOKE_TOKENS: &str = "
WITH due AS (
    SELECT id FROM refresh_tokens
     WHERE NOT revoked AND expires_at <= now()
     ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE refresh_tokens t SET revoked = true
  FROM due WHERE t.id = due.id";

const END_ROLES: &str = "
WITH due AS (
    SELECT id FROM user_roles
     WHERE is_active AND expires_at IS NOT NULL AND expires_at <= now()
     ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE user_roles r SET is_active = false
  FROM due WHERE r.id = due.id";

/// Ends what has expired. Running it again changes nothing more.
pub async fn expire(pool: &PgPool) -> Result<Expired, sqlx::Error> {
    Ok(Expired {
        sessions: in_batches(pool, END_SESSIONS).await?,
        refresh_tokens: in_batches(pool, REVOKE_TOKENS).await?,
        user_roles: in_batches(pool, END_ROLES).await?,
    })
}

/// How many rows `expire` would change now.
pub async fn count_due(pool: &PgPool) -> Result<Expired, sqlx::Error> {
    let (sessions, refresh_tokens, user_roles): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sessions WHERE (is_active OR is_current) AND expires_at <= now()),
                (SELECT count(*) FROM refresh_tokens WHERE NOT revoked AND expires_at <= now()),
                (SELECT count(*) FROM user_roles
                  WHERE is_active AND expires_at IS NOT NULL AND expires_at <= now())",
    )
    .fetch_one(pool)
    .await?;
    Ok(Expired {
        sessions: sessions as u64,
        refresh_tokens: refresh_tokens as u64,
        user_roles: user_roles as u64,
    })
}

async fn in_batches(pool: &PgPool, sql: &'static str) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        // Fewer than a batch: the rest (if any) is locked by someone else
        // and waits for the next run.
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}
