//! `email_suppressions`: addresses mail must skip. The send path reads it
//! in `dkl_begin_send` (bulk mail skips every suppression, other mail only
//! scope `all`).

use sqlx::PgExecutor;

/// Why an address is suppressed (`email_suppressions.reason`).
pub const REASONS: &[&str] = &[
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "unsubscribe",
    "manual",
];
/// What a suppression covers (`email_suppressions.scope`).
pub const SCOPES: &[&str] = &["all", "bulk"];

/// Adds or replaces the suppression of `address` (stored lower-case).
pub async fn add(
    executor: impl PgExecutor<'_>,
    address: &str,
    scope: &str,
    reason: &str,
    source: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO email_suppressions (address, scope, reason, source) VALUES (lower($1), $2, $3, $4)
         ON CONFLICT (address) DO UPDATE SET scope = EXCLUDED.scope, reason = EXCLUDED.reason,
                                             source = EXCLUDED.source, created_at = now()",
    )
    .bind(address.trim())
    .bind(scope)
    .bind(reason)
    .bind(source)
    .execute(executor)
    .await?;
    Ok(())
}

/// Removes the suppression of `address`; false if there was none.
pub async fn remove(executor: impl PgExecutor<'_>, address: &str) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM email_suppressions WHERE address = lower($1)")
            .bind(address.trim())
            .execute(executor)
            .await?
            .rows_affected()
            > 0,
    )
}
