//! `dklctl bounces` and `dklctl suppressions`: what came back, and who gets
//! no (bulk) mail because of it.

use chrono::{DateTime, Utc};
use dkl_worker::store::bounces;
use sqlx::PgPool;

use crate::table::{Table, truncate};

/// Bounces recorded since `since` (default: the last 7 days), newest first.
pub async fn bounces(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let since = since.unwrap_or_else(|| Utc::now() - chrono::Duration::days(7));
    let mut conn = pool.acquire().await?;
    let rows = bounces::list(&mut conn, since, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = Table::new(&[
        "when",
        "recipient",
        "kind",
        "action",
        "status",
        "format",
        "matched",
        "suppressed",
        "diagnostic",
    ]);
    for r in rows {
        table.row(vec![
            r.created_at.format("%Y-%m-%d %H:%M").to_string(),
            r.recipient,
            r.kind,
            r.action,
            r.status.unwrap_or_else(|| "-".into()),
            r.format,
            r.matched_by.unwrap_or_else(|| "not ours".into()),
            r.suppression.unwrap_or_else(|| "-".into()),
            truncate(r.diagnostic.as_deref().unwrap_or(""), 60),
        ]);
    }
    print!(
        "{}",
        table.render(&format!("no bounces since {}", since.to_rfc3339()))
    );
    Ok(())
}

/// The suppression list, newest first.
pub async fn suppressions(
    pool: &PgPool,
    reason: Option<&str>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let rows = bounces::suppressions(&mut conn, reason, limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut table = Table::new(&["since", "address", "scope", "reason", "source"]);
    for r in rows {
        table.row(vec![
            r.created_at.format("%Y-%m-%d %H:%M").to_string(),
            r.address,
            r.scope,
            r.reason,
            truncate(r.source.as_deref().unwrap_or(""), 70),
        ]);
    }
    print!("{}", table.render("no suppressed addresses"));
    Ok(())
}
