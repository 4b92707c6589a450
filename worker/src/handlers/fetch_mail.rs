//! `fetch_mail`: fetches every configured IMAP account (or the one named)
//! into `incoming_emails`; run by the `fetch-mail` schedule every minute,
//! next to the IDLE watchers. One failing account never stops the others:
//! each is fetched, and the job then fails naming the ones that did not
//! work (their error is also in `imap_account_status` and `imap_cursors`).

use std::sync::Arc;

use dkl_shared::config::{ImapAccount, ImapConfig};
use dkl_shared::jobs::{JobContext, JobError, Registry};
use dkl_shared::kinds::FetchMail;
use sqlx::PgPool;

use crate::imap::fetch::{FetchReport, fetch_mailbox};
use crate::imap::stats::ImapStats;
use crate::imap::{ImapError, connect};
use crate::store::imap_cursors;

/// What the handler needs.
pub struct Fetcher {
    /// The database.
    pub pool: PgPool,
    /// The accounts.
    pub config: ImapConfig,
    /// Counters for `/metrics`.
    pub stats: Arc<ImapStats>,
}

/// Registers the `fetch_mail` handler.
pub fn register(registry: &mut Registry, fetcher: Arc<Fetcher>) {
    registry.register::<FetchMail, _, _>(move |job: FetchMail, ctx: JobContext| {
        let fetcher = fetcher.clone();
        async move { fetcher.run(job, ctx).await }
    });
}

impl Fetcher {
    async fn run(&self, job: FetchMail, ctx: JobContext) -> Result<(), JobError> {
        let accounts: Vec<&ImapAccount> = match &job.account {
            Some(name) => vec![self.config.account(name).ok_or_else(|| {
                JobError::permanent(format!(
                    "no IMAP account `{name}` (configured: {}); see DKL_IMAP_ACCOUNTS",
                    self.names()
                ))
            })?],
            None => self.config.accounts.iter().collect(),
        };
        // Accounts are fetched side by side: a slow or unreachable server
        // never delays the others.
        let ctx = &ctx;
        let fetches = accounts.iter().map(|account| async move {
            tokio::select! {
                r = self.fetch_account(account) => Some((account, r)),
                _ = ctx.cancelled() => None,
            }
        });
        let mut failed = Vec::new();
        let mut transient = true;
        for result in futures::future::join_all(fetches).await {
            let Some((account, result)) = result else {
                return Err(JobError::retryable("fetch_mail cancelled"));
            };
            match result {
                Ok(report) => tracing::info!(account = %account.name, stored = report.stored,
                    quarantined = report.quarantined, duplicates = report.duplicates, "account fetched"),
                Err(e) => {
                    tracing::warn!(account = %account.name, error = %e, "account could not be fetched");
                    transient &= e.is_transient();
                    failed.push(format!("{}: {e}", account.name));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else if transient {
            Err(JobError::retryable(failed.join("; ")))
        } else {
            Err(JobError::permanent(failed.join("; ")))
        }
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self
            .config
            .accounts
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Fetches every mailbox of `account`, recording the result per account
    /// and per mailbox.
    pub async fn fetch_account(&self, account: &ImapAccount) -> Result<FetchReport, ImapError> {
        let result = self.fetch_mailboxes(account).await;
        let error = result.as_ref().err().map(ToString::to_string);
        if let Err(e) =
            imap_cursors::record_result(&self.pool, &account.name, None, error.as_deref()).await
        {
            tracing::warn!(account = %account.name, error = %e, "could not record the fetch result");
        }
        match &result {
            Ok(_) => self.stats.success(&account.name),
            Err(_) => self.stats.error(&account.name),
        }
        result
    }

    async fn fetch_mailboxes(&self, account: &ImapAccount) -> Result<FetchReport, ImapError> {
        let mut session = connect(account, self.config.timeout).await?;
        let mut total = FetchReport::default();
        let mut first_error = None;
        for mailbox in &account.mailboxes {
            match fetch_mailbox(
                &self.pool,
                &mut session,
                account,
                mailbox,
                &self.config,
                &self.stats,
            )
            .await
            {
                Ok(report) if report.busy => {
                    tracing::debug!(account = %account.name, mailbox, "another fetch of this mailbox is running; skipped");
                }
                Ok(report) => {
                    imap_cursors::record_result(
                        &self.pool,
                        &account.name,
                        Some(mailbox),
                        report.action_error.as_deref(),
                    )
                    .await?;
                    total.stored += report.stored;
                    total.quarantined += report.quarantined;
                    total.duplicates += report.duplicates;
                    total.actions_done += report.actions_done;
                    total.resynced |= report.resynced;
                    total.action_error = total.action_error.or(report.action_error);
                }
                Err(e) => {
                    let _ = imap_cursors::record_result(
                        &self.pool,
                        &account.name,
                        Some(mailbox),
                        Some(&e.to_string()),
                    )
                    .await;
                    // A missing mailbox or a refused message does not stop
                    // the account's others; a broken connection does.
                    let next = matches!(
                        e,
                        ImapError::Mailbox { .. }
                            | ImapError::Incomplete { .. }
                            | ImapError::Database(_)
                    );
                    first_error.get_or_insert(e);
                    if !next {
                        break;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(self.config.timeout, session.logout()).await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}
