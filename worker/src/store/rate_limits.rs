//! `smtp_rate_windows`: send slots per SMTP configuration, shared by every
//! worker process (function `dkl_take_send_slot`).

use std::time::Duration;

use sqlx::PgExecutor;

/// Takes one send slot of `config`; `None` when taken, else how long until
/// the next window opens.
pub async fn take_slot(
    executor: impl PgExecutor<'_>,
    config: &str,
    per_second: Option<u32>,
    per_hour: Option<u32>,
) -> Result<Option<Duration>, sqlx::Error> {
    let wait: f64 = sqlx::query_scalar("SELECT dkl_take_send_slot($1, $2, $3)")
        .bind(config)
        .bind(per_second.map(|n| n as i32))
        .bind(per_hour.map(|n| n as i32))
        .fetch_one(executor)
        .await?;
    Ok((wait > 0.0).then(|| Duration::from_secs_f64(wait)))
}
