//! IMAP IDLE (RFC 2177): one connection per watched (account, mailbox)
//! that fetches as soon as the server reports new mail.
//!
//! The loop per mailbox: connect, fetch what is new, IDLE until the server
//! says something (or `DKL_IMAP_IDLE_RENEW_SECS` pass, before the server's
//! 30-minute limit), fetch, IDLE again. A server without IDLE is polled
//! every `DKL_IMAP_POLL_SECS`. A dropped connection is re-established
//! after a backoff with jitter (1 s doubling to 5 min); the `fetch-mail`
//! schedule fetches every minute regardless, so nothing waits on a watcher.

use std::sync::Arc;
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use dkl_shared::config::{ImapAccount, ImapConfig};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::stats::ImapStats;
use super::{ImapError, fetch, timed};
use crate::store::imap_cursors;

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Starts a watcher for every mailbox of every account with IDLE on; they
/// stop when `shutdown` is cancelled.
pub fn spawn_all(
    pool: &PgPool,
    config: &ImapConfig,
    stats: Arc<ImapStats>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for account in config.accounts.iter().filter(|a| a.idle) {
        for mailbox in &account.mailboxes {
            handles.push(tokio::spawn(watch_mailbox(
                pool.clone(),
                account.clone(),
                mailbox.clone(),
                config.clone(),
                stats.clone(),
                shutdown.clone(),
            )));
        }
    }
    handles
}

/// Watches one mailbox until `shutdown`.
pub async fn watch_mailbox(
    pool: PgPool,
    account: ImapAccount,
    mailbox: String,
    config: ImapConfig,
    stats: Arc<ImapStats>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let result = watch_once(
            &pool,
            &account,
            &mailbox,
            &config,
            &stats,
            &shutdown,
            &mut failures,
        )
        .await;
        let Err(error) = result else { break };
        failures += 1;
        stats.error(&account.name);
        let _ = imap_cursors::record_result(
            &pool,
            &account.name,
            Some(&mailbox),
            Some(&error.to_string()),
        )
        .await;
        let wait = backoff(failures);
        tracing::warn!(account = %account.name, mailbox, %error, retry_in_ms = wait.as_millis() as u64,
            "IMAP watcher lost its connection; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

/// 1 s, 2 s, 4 s … up to 5 minutes, each ±25 % so that many watchers of
/// one server do not reconnect in step.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(0.75 + fastrand::f64() * 0.5)
}

/// Marks an IDLE connection up in the stats while it lives.
struct IdleUp<'a> {
    stats: &'a ImapStats,
    account: &'a str,
}

impl Drop for IdleUp<'_> {
    fn drop(&mut self) {
        self.stats.idle(self.account, false);
    }
}

/// One connection's life: returns `Ok` on shutdown, `Err` when it broke.
async fn watch_once(
    pool: &PgPool,
    account: &ImapAccount,
    mailbox: &str,
    config: &ImapConfig,
    stats: &ImapStats,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> Result<(), ImapError> {
    let t = config.timeout;
    let mut session = super::connect(account, t).await?;
    let has_idle = super::has_idle(&mut session, t).await?;
    // A fetch of a big mailbox may take a while: shutdown does not wait for
    // it (its committed batches stay, the rest is fetched next time).
    macro_rules! fetch_or_stop {
        () => {
            tokio::select! {
                r = fetch_until_quiet(pool, &mut session, account, mailbox, config, stats) => { r?; }
                _ = shutdown.cancelled() => return Ok(()),
            }
        };
    }
    fetch_or_stop!();
    // A working connection clears the error a broken one left.
    imap_cursors::record_result(pool, &account.name, Some(mailbox), None).await?;
    *failures = 0;
    if !has_idle {
        tracing::info!(account = %account.name, mailbox, every_s = config.poll_every.as_secs(),
            "the IMAP server has no IDLE: polling");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(config.poll_every) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            fetch_or_stop!();
        }
    }
    stats.idle(&account.name, true);
    let _up = IdleUp {
        stats,
        account: &account.name,
    };
    tracing::info!(account = %account.name, mailbox, "IMAP IDLE watching");
    loop {
        let mut idle = session.idle();
        timed(t, "IDLE", idle.init()).await?;
        // Re-issued after idle_renew even when the server keeps talking
        // (Dovecot's "OK Still here" every 2 minutes would otherwise restart
        // async-imap's own timer forever).
        let renew_at = tokio::time::Instant::now() + config.idle_renew;
        let woke = {
            let (wait, _stop) = idle.wait_with_timeout(config.idle_renew);
            tokio::select! {
                r = wait => Some(r.map(|r| matches!(r, IdleResponse::NewData(_)))),
                _ = tokio::time::sleep_until(renew_at) => Some(Ok(false)),
                _ = shutdown.cancelled() => None,
            }
        };
        let Some(woke) = woke else {
            return Ok(());
        };
        let woke = woke?;
        session = timed(t, "DONE", idle.done()).await?;
        tracing::debug!(account = %account.name, mailbox, woke, "IDLE ended; fetching");
        fetch_or_stop!();
    }
}

/// Fetches until no EXISTS or RECENT arrived during the fetch, so a message
/// that came in between the listing and the next IDLE is not left waiting.
async fn fetch_until_quiet(
    pool: &PgPool,
    session: &mut super::Session,
    account: &ImapAccount,
    mailbox: &str,
    config: &ImapConfig,
    stats: &ImapStats,
) -> Result<(), ImapError> {
    for _ in 0..5 {
        fetch_and_record(pool, session, account, mailbox, config, stats).await?;
        let mut more = false;
        while let Ok(response) = session.unsolicited_responses.try_recv() {
            more |= matches!(
                response,
                async_imap::types::UnsolicitedResponse::Exists(_)
                    | async_imap::types::UnsolicitedResponse::Recent(_)
            );
        }
        if !more {
            break;
        }
    }
    Ok(())
}

async fn fetch_and_record(
    pool: &PgPool,
    session: &mut super::Session,
    account: &ImapAccount,
    mailbox: &str,
    config: &ImapConfig,
    stats: &ImapStats,
) -> Result<fetch::FetchReport, ImapError> {
    let report = fetch::fetch_mailbox(pool, session, account, mailbox, config, stats).await?;
    if report.busy {
        // The other fetch stores what is there; ours comes with the next wake.
        return Ok(report);
    }
    stats.success(&account.name);
    if report.stored > 0 || report.action_error.is_some() {
        tracing::info!(account = %account.name, mailbox, stored = report.stored,
            quarantined = report.quarantined, duplicates = report.duplicates, "new mail stored");
        imap_cursors::record_result(
            pool,
            &account.name,
            Some(mailbox),
            report.action_error.as_deref(),
        )
        .await?;
    }
    Ok(report)
}
