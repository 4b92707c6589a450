//! Counters of incoming mail for `/metrics`: messages stored and
//! quarantined per account, the last successful fetch, IDLE connections up.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One account's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountCounters {
    /// Messages stored since start.
    pub fetched: u64,
    /// Of those, quarantined.
    pub quarantined: u64,
    /// Unix time of the last fetch that ended without error.
    pub last_success_unix: Option<i64>,
    /// Mailboxes with an IDLE connection up now.
    pub idle_up: u64,
    /// Fetches (or IDLE connections) that ended in an error.
    pub errors: u64,
}

/// Shared by the fetch job, the IDLE watchers and `/metrics`.
#[derive(Debug, Default)]
pub struct ImapStats {
    accounts: Mutex<BTreeMap<String, AccountCounters>>,
}

impl ImapStats {
    fn with(&self, account: &str, f: impl FnOnce(&mut AccountCounters)) {
        let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(account.to_string()).or_default());
    }

    /// Counts stored messages.
    pub fn count(&self, account: &str, stored: u64, quarantined: u64) {
        self.with(account, |c| {
            c.fetched += stored;
            c.quarantined += quarantined;
        });
    }

    /// A fetch of `account` ended without error.
    pub fn success(&self, account: &str) {
        self.with(account, |c| {
            c.last_success_unix = Some(chrono::Utc::now().timestamp());
        });
    }

    /// A fetch of `account`, or its IDLE connection, failed.
    pub fn error(&self, account: &str) {
        self.with(account, |c| c.errors += 1);
    }

    /// An IDLE connection of `account` came up (`true`) or went down.
    pub fn idle(&self, account: &str, up: bool) {
        self.with(account, |c| {
            if up {
                c.idle_up += 1;
            } else {
                c.idle_up = c.idle_up.saturating_sub(1);
            }
        });
    }

    /// Every account's counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, AccountCounters> {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
