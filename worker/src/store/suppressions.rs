//! `email_suppressions`: addresses mail must skip.

use sqlx::PgExecutor;

/// Why the address is suppressed, if it is, for a mail of this bulkness:
/// bulk mail skips every suppression, other mail only scope `all`.
pub async fn reason_for(executor: impl PgExecutor<'_>, address: &str, bulk: bool) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT reason || coalesce(' (' || source || ')', '') FROM email_suppressions
          WHERE address = lower($1) AND (scope = 'all' OR $2)",
    )
    .bind(address)
    .bind(bulk)
    .fetch_optional(executor)
    .await
}

/// Why an address is suppressed (`email_suppressions.reason`).
pub const REASONS: &[&str] = &["hard_bounce", "complaint", "unsubscribe", "manual"];
/// What a suppression covers (`email_suppressions.scope`).
pub const SCOPES: &[&str] = &["all", "bulk"];

/// Adds or replaces the suppression of `address` (stored lower-case).
pub async fn add(executor: impl PgExecutor<'_>, address: &str, scope: &str, reason: &str, source: &str) -> Result<(), sqlx::Error> {
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
    Ok(sqlx::query("DELETE FROM email_suppressions WHERE address = lower($1)")
        .bind(address.trim())
        .execute(executor)
        .await?
        .rows_affected()
        > 0)
}
