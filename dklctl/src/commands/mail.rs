//! `dklctl mail send|log`, `dklctl suppress`, `dklctl unsuppress`.

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use dkl_worker::store::suppressions;
use dkl_worker::store::verzonden_emails::{self, LogFilter};
use sqlx::PgPool;

use crate::table::{Table, truncate};

/// What `dklctl mail send` was asked for.
pub struct SendRequest<'a> {
    pub template: &'a str,
    pub to: &'a str,
    pub vars: Option<&'a Path>,
    pub dedup: Option<&'a str>,
    pub kind: &'a str,
}

/// Asks for a mail exactly as the web application does: through the SQL
/// function `dkl_send_email`. Prints the job id.
pub async fn send(pool: &PgPool, req: SendRequest<'_>) -> anyhow::Result<()> {
    let vars: serde_json::Value = match req.vars {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => serde_json::json!({}),
    };
    let job: String = sqlx::query_scalar("SELECT dkl_send_email($1, $2, $3, $4, $5)")
        .bind(req.template)
        .bind(req.to)
        .bind(&vars)
        .bind(req.dedup)
        .bind(req.kind)
        .fetch_one(pool)
        .await
        .map_err(|e| match e.as_database_error() {
            Some(db) => anyhow::anyhow!("{}", db.message()),
            None => e.into(),
        })?;
    println!("{job}");
    Ok(())
}

/// The send log as a table.
pub async fn log(
    pool: &PgPool,
    status: Option<String>,
    to: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> anyhow::Result<()> {
    let rows = verzonden_emails::log(
        pool,
        &LogFilter {
            status,
            to,
            since,
            limit,
        },
    )
    .await?;
    let mut table = Table::new(&[
        "TIME", "STATUS", "TO", "KIND", "SMTP", "CODE", "RETRIES", "SUBJECT", "ERROR",
    ]);
    for r in rows {
        table.row(vec![
            r.sent_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            r.status.as_str().to_string(),
            r.recipient_email,
            r.mail_kind,
            r.smtp_config.unwrap_or_else(|| "-".into()),
            r.smtp_code.map_or_else(|| "-".into(), |c| c.to_string()),
            r.retry_count.to_string(),
            truncate(&r.subject, 40),
            truncate(r.error_message.as_deref().unwrap_or(""), 60),
        ]);
    }
    print!("{}", table.render("no mail logged yet"));
    Ok(())
}

/// Adds an address to the suppression list.
pub async fn suppress(
    pool: &PgPool,
    address: &str,
    reason: &str,
    scope: &str,
) -> anyhow::Result<()> {
    if !suppressions::REASONS.contains(&reason) {
        anyhow::bail!(
            "unknown reason `{reason}`; use one of: {}",
            suppressions::REASONS.join(", ")
        );
    }
    if !suppressions::SCOPES.contains(&scope) {
        anyhow::bail!("unknown scope `{scope}`; use `all` (no mail) or `bulk` (no newsletters)");
    }
    // Stored as mail is sent to it: an IDN domain in ASCII, lower case.
    let address = &dkl_worker::address::normalize(address)?;
    suppressions::add(pool, address, scope, reason, &super::whoami()).await?;
    println!("{address}: suppressed ({scope}, {reason})");
    Ok(())
}

/// Removes an address from the suppression list.
pub async fn unsuppress(pool: &PgPool, address: &str) -> anyhow::Result<()> {
    let address =
        &dkl_worker::address::normalize(address).unwrap_or_else(|_| address.trim().to_string());
    if !suppressions::remove(pool, address).await? {
        anyhow::bail!("{address} is not on the suppression list");
    }
    println!("{address}: no longer suppressed");
    Ok(())
}

/// Sends a logged message again, on purpose (for a message left `unknown`
/// by a worker that died mid-send, or one a recipient lost): a new job with
/// the original job's content under a new dedup key, so it gets a row of
/// its own. Prints the new job id.
pub async fn resend(
    pool: &PgPool,
    client: &dkl_shared::jobs::JobClient,
    id: uuid::Uuid,
) -> anyhow::Result<()> {
    let Some((status, payload)) = verzonden_emails::sending_job(pool, id).await? else {
        anyhow::bail!("no verzonden_emails row with id {id}; `dklctl mail log` lists them");
    };
    let Some(mut payload) = payload else {
        anyhow::bail!(
            "the job that sent {id} was pruned, so its content is gone; ask for the mail again (dkl_send_email) instead"
        );
    };
    payload["dedup_key"] =
        serde_json::Value::String(format!("resend:{id}:{}", Utc::now().timestamp_millis()));
    use dkl_shared::jobs::JobKind;
    use dkl_shared::kinds::SendEmail;
    let job = client
        .enqueue_raw(
            SendEmail::KIND,
            SendEmail::QUEUE,
            &payload,
            SendEmail::MAX_ATTEMPTS,
            dkl_shared::jobs::EnqueueOptions::default(),
        )
        .await?;
    println!(
        "{} (resending message {id}, which was {})",
        job.id,
        status.as_str()
    );
    Ok(())
}
