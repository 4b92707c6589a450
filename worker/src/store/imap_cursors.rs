//! `imap_cursors` and `imap_account_status`: where fetching stands per
//! (account, mailbox), and each account's last success or error.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::incoming_emails::{BatchOutcome, CursorAdvance};

/// A mailbox's stored position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// UIDVALIDITY the position belongs to.
    pub uid_validity: i64,
    /// The highest UID stored.
    pub last_uid: i64,
}

/// The cursor of (account, mailbox), if it was ever fetched.
pub async fn load(
    pool: &PgPool,
    account: &str,
    mailbox: &str,
) -> Result<Option<Cursor>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT uid_validity, last_uid FROM imap_cursors WHERE account_type = $1 AND mailbox = $2",
    )
    .bind(account)
    .bind(mailbox)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(uid_validity, last_uid)| Cursor {
        uid_validity,
        last_uid,
    }))
}

/// Moves the cursor forward in the transaction that stored the batch. A
/// new UIDVALIDITY replaces the old position (a resync); otherwise the
/// position only ever grows (an IDLE fetch and a scheduled fetch may race).
pub(crate) async fn advance(
    conn: &mut PgConnection,
    account: &str,
    mailbox: &str,
    cursor: CursorAdvance,
    outcome: BatchOutcome,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO imap_cursors AS c (account_type, mailbox, uid_validity, last_uid,
                                        messages_stored, messages_quarantined, last_attempt_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, now(), now())
         ON CONFLICT (account_type, mailbox) DO UPDATE SET
             last_uid = CASE WHEN c.uid_validity = EXCLUDED.uid_validity
                             THEN greatest(c.last_uid, EXCLUDED.last_uid) ELSE EXCLUDED.last_uid END,
             resynced_from = CASE WHEN c.uid_validity = EXCLUDED.uid_validity
                                  THEN c.resynced_from ELSE c.uid_validity END,
             resynced_at = CASE WHEN c.uid_validity = EXCLUDED.uid_validity
                                THEN c.resynced_at ELSE now() END,
             uid_validity = EXCLUDED.uid_validity,
             messages_stored = c.messages_stored + EXCLUDED.messages_stored,
             messages_quarantined = c.messages_quarantined + EXCLUDED.messages_quarantined,
             updated_at = now()",
    )
    .bind(account)
    .bind(mailbox)
    .bind(cursor.uid_validity)
    .bind(cursor.last_uid)
    .bind(outcome.stored as i64)
    .bind(outcome.quarantined as i64)
    .execute(&mut *conn)
    .await?;
    if cursor.resync {
        // Old UIDs mean nothing under the new UIDVALIDITY: the messages'
        // actions are done through their new UIDs as they are re-read.
        sqlx::query(
            "UPDATE incoming_emails SET imap_action_pending = false
              WHERE account_type = $1 AND mailbox = $2 AND imap_action_pending
                AND uid_validity IS DISTINCT FROM $3",
        )
        .bind(account)
        .bind(mailbox)
        .bind(cursor.uid_validity)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Holds the right to fetch one (account, mailbox), across processes: a
/// session advisory lock on a pool connection (a fresh connection costs
/// ~90 ms here, on the path of new mail). The connection is in the guard
/// before the lock is asked for and stays there until the unlock is
/// confirmed: on any other path (an error, a cancelled fetch) the guard is
/// dropped and closes it, which releases the lock, so a connection never
/// goes back to the pool still holding one.
pub struct MailboxLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: String,
}

impl MailboxLock {
    /// Takes the lock, waiting at most `wait` for a fetch that holds it;
    /// `None` when it is still held then.
    pub async fn acquire(
        pool: &PgPool,
        account: &str,
        mailbox: &str,
        wait: std::time::Duration,
    ) -> Result<Option<Self>, sqlx::Error> {
        let mut lock = Self {
            conn: Some(pool.acquire().await?),
            key: format!("dkl-imap-fetch:{account}/{mailbox}"),
        };
        let deadline = std::time::Instant::now() + wait;
        loop {
            let conn = lock.conn.as_mut().expect("set above");
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&lock.key)
                    .fetch_one(&mut **conn)
                    .await?;
            if locked {
                return Ok(Some(lock));
            }
            if std::time::Instant::now() >= deadline {
                // Not locked: the connection may go back to the pool.
                if let Some(conn) = lock.conn.take() {
                    drop(conn);
                }
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Unlocks; the connection goes back to the pool only once the unlock
    /// is confirmed.
    pub async fn release(mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let unlocked: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(&self.key)
                .fetch_one(&mut **conn)
                .await;
        if unlocked.is_ok_and(|u| u) {
            drop(self.conn.take());
        }
    }
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Records the end of a fetch of (account, mailbox): a success clears the
/// last error; a failure keeps the position and records why.
pub async fn record_result(
    pool: &PgPool,
    account: &str,
    mailbox: Option<&str>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let error = error.map(crate::mime::text);
    sqlx::query(
        "INSERT INTO imap_account_status AS s (account_type, last_attempt_at, last_success_at, last_error, last_error_at)
         VALUES ($1, now(), CASE WHEN $2::text IS NULL THEN now() END, $2, CASE WHEN $2::text IS NOT NULL THEN now() END)
         ON CONFLICT (account_type) DO UPDATE SET
             last_attempt_at = now(),
             last_success_at = CASE WHEN $2::text IS NULL THEN now() ELSE s.last_success_at END,
             last_error = CASE WHEN $2::text IS NULL THEN NULL ELSE $2 END,
             last_error_at = CASE WHEN $2::text IS NULL THEN s.last_error_at ELSE now() END",
    )
    .bind(account)
    .bind(&error)
    .execute(pool)
    .await?;
    if let Some(mailbox) = mailbox {
        sqlx::query(
            "UPDATE imap_cursors SET
                 last_attempt_at = now(),
                 last_success_at = CASE WHEN $3::text IS NULL THEN now() ELSE last_success_at END,
                 last_error = $3,
                 last_error_at = CASE WHEN $3::text IS NULL THEN last_error_at ELSE now() END,
                 updated_at = now()
              WHERE account_type = $1 AND mailbox = $2",
        )
        .bind(account)
        .bind(mailbox)
        .bind(&error)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// One mailbox's state, for `dklctl accounts` and `/metrics`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MailboxState {
    /// Account.
    pub account_type: String,
    /// Mailbox.
    pub mailbox: String,
    /// UIDVALIDITY.
    pub uid_validity: i64,
    /// Highest stored UID.
    pub last_uid: i64,
    /// Messages stored through this cursor.
    pub messages_stored: i64,
    /// Of those, quarantined.
    pub messages_quarantined: i64,
    /// Last success.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Last error, if the last fetch failed.
    pub last_error: Option<String>,
}

/// Every mailbox's state.
pub async fn mailboxes(pool: &PgPool) -> Result<Vec<MailboxState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_type, mailbox, uid_validity, last_uid, messages_stored, messages_quarantined,
                last_success_at, last_error
           FROM imap_cursors ORDER BY account_type, mailbox",
    )
    .fetch_all(pool)
    .await
}

/// One account's state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountState {
    /// Account.
    pub account_type: String,
    /// Last attempt.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Last success.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Every account's state.
pub async fn accounts(pool: &PgPool) -> Result<Vec<AccountState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_type, last_attempt_at, last_success_at, last_error
           FROM imap_account_status ORDER BY account_type",
    )
    .fetch_all(pool)
    .await
}
