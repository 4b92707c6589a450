//! Fetching one mailbox: from the stored cursor to the newest message.
//!
//! 1. `SELECT` gives UIDVALIDITY; a value other than the cursor's starts a
//!    resync from UID 1 (duplicates are recognised by content and Message-ID).
//! 2. `UID FETCH n:* (UID RFC822.SIZE)` lists what is new. The server always
//!    returns the last message for `n:*`, so UIDs below `n` are dropped here.
//! 3. The list is cut into batches (by count and bytes); each batch is
//!    fetched, parsed and stored in one transaction that also moves the
//!    cursor. Storing batch k overlaps fetching batch k+1, and batches
//!    commit in order, so the cursor never passes a message not stored.
//! 4. Only then is the after-import action (\Seen, move) done; messages
//!    whose action a crash interrupted are finished on the next fetch.

use std::collections::VecDeque;
use std::time::Instant;

use chrono::{DateTime, Utc};
use dkl_shared::config::{AfterImport, ImapAccount, ImapConfig};
use futures::TryStreamExt;
use sqlx::PgPool;
use tokio::sync::oneshot;

use super::stats::ImapStats;
use super::{ImapError, Session, timed};
use crate::store::imap_cursors;
use crate::store::incoming_emails::{self, BatchOutcome, CursorAdvance, Incoming};

/// The most bytes of messages one batch holds in memory.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// Batches in memory at once: one being fetched while earlier ones are
/// parsed and stored.
const PIPELINE: usize = 3;

/// What one fetch of a mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// New messages stored (quarantined ones included).
    pub stored: usize,
    /// Of those, quarantined.
    pub quarantined: usize,
    /// Messages already stored, skipped.
    pub duplicates: usize,
    /// UIDVALIDITY changed since the last fetch: the mailbox was re-read.
    pub resynced: bool,
    /// After-import actions done.
    pub actions_done: usize,
    /// Why an after-import action failed (new mail was still stored).
    pub action_error: Option<String>,
    /// Another fetch of this mailbox was running; nothing was done.
    pub busy: bool,
}

impl FetchReport {
    fn note_actions(&mut self, result: Result<usize, ImapError>) {
        match result {
            Ok(n) => self.actions_done += n,
            Err(e) => {
                tracing::warn!(error = %e, "after-import action failed; new mail is still stored, the action is tried again on the next fetch");
                self.action_error = Some(format!("after-import action failed: {e}"));
            }
        }
    }
}

/// A message as the server gave it.
struct Fetched {
    uid: u32,
    size: u32,
    internal_date: Option<DateTime<Utc>>,
    /// The whole message, or only its header when it is too large.
    bytes: Vec<u8>,
    whole: bool,
    /// The server would not give its content.
    unreadable: bool,
}

/// Fetches `mailbox` of `account` into `incoming_emails` (see the module docs).
pub async fn fetch_mailbox(
    pool: &PgPool,
    session: &mut Session,
    account: &ImapAccount,
    mailbox: &str,
    config: &ImapConfig,
    stats: &ImapStats,
) -> Result<FetchReport, ImapError> {
    let t = config.timeout;
    // One fetch of a mailbox at a time, across processes: the IDLE watcher
    // and the fetch-mail job would otherwise download a backlog twice and
    // run its after-import actions twice.
    let Some(lock) = imap_cursors::MailboxLock::acquire(pool, &account.name, mailbox, t).await?
    else {
        return Ok(FetchReport {
            busy: true,
            ..FetchReport::default()
        });
    };
    let result = fetch_locked(pool, session, account, mailbox, config, stats).await;
    lock.release().await;
    result
}

async fn fetch_locked(
    pool: &PgPool,
    session: &mut Session,
    account: &ImapAccount,
    mailbox: &str,
    config: &ImapConfig,
    stats: &ImapStats,
) -> Result<FetchReport, ImapError> {
    let t = config.timeout;
    // Unsolicited responses (EXISTS, EXPUNGE, …) are not used: a fetch
    // always starts from the cursor. Drop what earlier commands left.
    while session.unsolicited_responses.try_recv().is_ok() {}
    let selected = timed(t, "SELECT", session.select(mailbox))
        .await
        .map_err(|e| match e {
            ImapError::Protocol(
                e @ (async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_)),
            ) => ImapError::Mailbox {
                account: account.name.to_ascii_uppercase(),
                mailbox: mailbox.to_string(),
                reason: super::server_said(&e),
            },
            other => other,
        })?;
    let uid_validity = i64::from(selected.uid_validity.ok_or_else(|| ImapError::Mailbox {
        account: account.name.to_ascii_uppercase(),
        mailbox: mailbox.to_string(),
        reason: "the server sent no UIDVALIDITY for it".into(),
    })?);
    let cursor = imap_cursors::load(pool, &account.name, mailbox).await?;
    let (first_uid, resync) = match cursor {
        Some(c) if c.uid_validity == uid_validity => (c.last_uid + 1, false),
        Some(c) => {
            tracing::warn!(account = %account.name, mailbox, old = c.uid_validity, new = uid_validity,
                "UIDVALIDITY changed: re-reading the mailbox; messages already stored are recognised by content and Message-ID");
            (1, true)
        }
        None => (1, false),
    };
    let mut report = FetchReport {
        resynced: resync,
        ..FetchReport::default()
    };
    let actions = Actions {
        pool,
        account,
        mailbox,
        uid_validity,
        timeout: t,
    };
    // Actions a crash left undone; a failing action never stops new mail.
    report.note_actions(actions.finish(session, &[]).await);
    if selected.exists == 0 {
        return Ok(report);
    }
    let listing = list_new(session, first_uid, t).await?;
    if listing.is_empty() {
        return Ok(report);
    }
    let mut in_flight: VecDeque<StoreTask> = VecDeque::new();
    // A fetch dropped midway (shutdown) takes its unfinished batches with it:
    // their transactions roll back, the cursor stays at the last commit.
    let mut abort_on_drop = AbortOnDrop(Vec::new());
    let mut previous_commit: Option<oneshot::Receiver<bool>> = None;
    for batch in batches(&listing, config) {
        if in_flight.len() >= PIPELINE {
            let oldest = in_flight.pop_front().expect("len checked");
            match report_batch(&mut report, oldest.await, stats, &account.name) {
                // What is committed gets its after-import action now, so a
                // large mailbox is flagged (or moved) as it goes.
                Ok(uids) => report.note_actions(actions.finish(session, &uids).await),
                Err(e) => {
                    drain(&mut report, in_flight, stats, &account.name)
                        .await
                        .ok();
                    return Err(e);
                }
            }
        }
        let fetched = match fetch_batch(session, &batch, config).await {
            Ok(fetched) => fetched,
            Err(e) => {
                // What was fetched before the error is still stored.
                drain(&mut report, in_flight, stats, &account.name).await?;
                return Err(e);
            }
        };
        let (committed, commit_signal) = oneshot::channel();
        let after = previous_commit.replace(commit_signal);
        let advance = CursorAdvance {
            uid_validity,
            last_uid: i64::from(batch.iter().map(|(uid, _)| *uid).max().unwrap_or(0)),
            resync,
        };
        let pending = account.after_import != AfterImport::Leave;
        let (pool, name, mailbox) = (pool.clone(), account.name.clone(), mailbox.to_string());
        let task = tokio::spawn(async move {
            let whole_uids: Vec<u32> = fetched.iter().filter(|f| f.whole).map(|f| f.uid).collect();
            let parsing = {
                let mailbox = mailbox.clone();
                move || to_incoming(fetched, &mailbox, uid_validity, pending)
            };
            let messages = tokio::task::spawn_blocking(parsing)
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("parsing panicked: {e}")))?;
            // Batches commit in order: the cursor never passes a batch that
            // did not commit.
            if let Some(after) = after
                && after.await != Ok(true)
            {
                return Err(sqlx::Error::Protocol(
                    "an earlier batch was not stored; this one is fetched again next time".into(),
                ));
            }
            let stored = incoming_emails::store_batch_resilient(
                &pool,
                &name,
                Some((&mailbox, advance)),
                &messages,
            )
            .await;
            let _ = committed.send(stored.is_ok());
            stored.map(|outcome| (outcome, whole_uids))
        });
        abort_on_drop.0.push(task.abort_handle());
        in_flight.push_back(task);
    }
    let uids = drain(&mut report, in_flight, stats, &account.name).await?;
    report.note_actions(actions.finish(session, &uids).await);
    Ok(report)
}

/// Aborts the tasks when dropped (finished ones are not affected).
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A batch being parsed and stored: its outcome and the UIDs it holds whole.
type StoreTask = tokio::task::JoinHandle<Result<(BatchOutcome, Vec<u32>), sqlx::Error>>;

/// Waits for every batch in flight; their UIDs, or the first error after
/// all have ended.
async fn drain(
    report: &mut FetchReport,
    in_flight: VecDeque<StoreTask>,
    stats: &ImapStats,
    account: &str,
) -> Result<Vec<u32>, ImapError> {
    let mut first_error = None;
    let mut uids = Vec::new();
    for task in in_flight {
        match report_batch(report, task.await, stats, account) {
            Ok(batch) => uids.extend(batch),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(uids), Err)
}

fn report_batch(
    report: &mut FetchReport,
    joined: Result<Result<(BatchOutcome, Vec<u32>), sqlx::Error>, tokio::task::JoinError>,
    stats: &ImapStats,
    account: &str,
) -> Result<Vec<u32>, ImapError> {
    let (outcome, uids) = joined
        .map_err(|e| ImapError::Database(sqlx::Error::Protocol(format!("store task: {e}"))))??;
    report.stored += outcome.stored;
    report.quarantined += outcome.quarantined;
    report.duplicates += outcome.duplicates;
    stats.count(account, outcome.stored as u64, outcome.quarantined as u64);
    Ok(uids)
}

/// New UIDs and their sizes, from `first_uid` on, ascending. Read as a
/// stream and kept as two numbers each: a held response would keep its
/// whole read buffer alive (a 50,000-message mailbox cost 300 MB that way).
async fn list_new(
    session: &mut Session,
    first_uid: i64,
    t: std::time::Duration,
) -> Result<Vec<(u32, u32)>, ImapError> {
    let first = first_uid.clamp(1, i64::from(u32::MAX));
    let mut stream = timed(
        t,
        "UID FETCH (listing)",
        session.uid_fetch(format!("{first}:*"), "(UID RFC822.SIZE)"),
    )
    .await?;
    let mut listing: Vec<(u32, u32)> = Vec::new();
    while let Some(fetch) = timed(t, "UID FETCH (listing)", stream.try_next()).await? {
        if let Some(uid) = fetch.uid.filter(|uid| i64::from(*uid) >= first_uid) {
            listing.push((uid, fetch.size.unwrap_or(0)));
        }
    }
    listing.sort_unstable();
    listing.dedup_by_key(|(uid, _)| *uid);
    Ok(listing)
}

/// Cuts the listing into batches of at most `fetch_batch` messages and
/// [`BATCH_BYTES`] (a message too large to store counts as its header).
fn batches(listing: &[(u32, u32)], config: &ImapConfig) -> Vec<Vec<(u32, u32)>> {
    let mut out: Vec<Vec<(u32, u32)>> = Vec::new();
    let mut bytes = 0u64;
    for &(uid, size) in listing {
        let cost = if u64::from(size) > config.max_message_bytes {
            64 * 1024
        } else {
            u64::from(size)
        };
        let full = out.last().is_none_or(|b| {
            b.len() >= config.fetch_batch || (bytes + cost > BATCH_BYTES && !b.is_empty())
        });
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += cost;
        out.last_mut().expect("pushed above").push((uid, size));
    }
    out
}

/// `1:3,7,9:12` for the UIDs (sorted ascending).
pub(crate) fn uid_set(uids: impl IntoIterator<Item = u32>) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |out: &mut String, (a, b): (u32, u32)| {
        if !out.is_empty() {
            out.push(',');
        }
        if a == b {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&format!("{a}:{b}"));
        }
    };
    for uid in uids {
        run = match run {
            Some((a, b)) if uid == b + 1 => Some((a, uid)),
            Some(r) => {
                flush(&mut out, r);
                Some((uid, uid))
            }
            None => Some((uid, uid)),
        };
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out
}

async fn fetch_batch(
    session: &mut Session,
    batch: &[(u32, u32)],
    config: &ImapConfig,
) -> Result<Vec<Fetched>, ImapError> {
    let (large, normal): (Vec<_>, Vec<_>) = batch
        .iter()
        .partition(|(_, size)| u64::from(*size) > config.max_message_bytes);
    let mut out = Vec::with_capacity(batch.len());
    let mut got = std::collections::HashSet::new();
    // A large body may take a while to arrive.
    let per_message = config.timeout * 4;
    for (uids, query, whole) in [
        (normal, "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[])", true),
        (
            large,
            "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])",
            false,
        ),
    ] {
        if uids.is_empty() {
            continue;
        }
        let wanted: std::collections::HashSet<u32> = uids.iter().map(|(u, _)| *u).collect();
        let set = uid_set(uids.iter().map(|(u, _)| *u));
        let mut stream = timed(config.timeout, "UID FETCH", session.uid_fetch(set, query)).await?;
        while let Some(fetch) = timed(per_message, "UID FETCH", stream.try_next()).await? {
            let Some(uid) = fetch.uid.filter(|u| wanted.contains(u)) else {
                continue;
            };
            // A response without the section asked for (a flag change the
            // server reports on its own) is not the message.
            let Some(bytes) = (if whole { fetch.body() } else { fetch.header() }) else {
                continue;
            };
            if !got.insert(uid) {
                continue;
            }
            out.push(Fetched {
                uid,
                size: fetch.size.unwrap_or(0),
                internal_date: fetch.internal_date().map(|d| d.with_timezone(&Utc)),
                bytes: bytes.to_vec(),
                whole,
                unreadable: false,
            });
        }
    }
    let missing: Vec<u32> = batch
        .iter()
        .map(|(uid, _)| *uid)
        .filter(|uid| !got.contains(uid))
        .collect();
    if !missing.is_empty() {
        // async-imap does not report a NO that ends a FETCH: ask whether
        // the missing messages still exist. Expunged ones are simply gone.
        let still_there = existing(session, &missing, config.timeout).await?;
        if still_there.len() < missing.len() {
            tracing::info!(
                expunged = missing.len() - still_there.len(),
                "messages expunged while being fetched; skipped"
            );
        }
        // One that exists is asked for once more, alone; a message the
        // server still will not give is stored quarantined (its UID named,
        // left on the server) so that it never stalls the mailbox.
        for uid in still_there {
            match fetch_one(session, uid, config).await? {
                Some(fetched) => out.push(fetched),
                None => out.push(Fetched {
                    uid,
                    size: 0,
                    internal_date: None,
                    bytes: Vec::new(),
                    whole: false,
                    unreadable: true,
                }),
            }
        }
    }
    out.sort_by_key(|f| f.uid);
    Ok(out)
}

/// One message asked for alone (whole, or its header when too large).
async fn fetch_one(
    session: &mut Session,
    uid: u32,
    config: &ImapConfig,
) -> Result<Option<Fetched>, ImapError> {
    let mut stream = timed(
        config.timeout,
        "UID FETCH",
        session.uid_fetch(uid.to_string(), "(UID RFC822.SIZE INTERNALDATE)"),
    )
    .await?;
    let mut size = None;
    while let Some(fetch) = timed(config.timeout, "UID FETCH", stream.try_next()).await? {
        if fetch.uid == Some(uid) {
            size = fetch.size;
        }
    }
    drop(stream);
    let whole = size.is_some_and(|s| u64::from(s) <= config.max_message_bytes);
    let query = if whole {
        "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[])"
    } else {
        "(UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER])"
    };
    let mut stream = timed(
        config.timeout,
        "UID FETCH",
        session.uid_fetch(uid.to_string(), query),
    )
    .await?;
    let mut found = None;
    while let Some(fetch) = timed(config.timeout * 4, "UID FETCH", stream.try_next()).await? {
        let bytes = if whole { fetch.body() } else { fetch.header() };
        if fetch.uid == Some(uid)
            && found.is_none()
            && let Some(bytes) = bytes
        {
            found = Some(Fetched {
                uid,
                size: fetch.size.unwrap_or(0),
                internal_date: fetch.internal_date().map(|d| d.with_timezone(&Utc)),
                bytes: bytes.to_vec(),
                whole,
                unreadable: false,
            });
        }
    }
    Ok(found)
}

/// Which of `uids` the selected mailbox still holds.
async fn existing(
    session: &mut Session,
    uids: &[u32],
    t: std::time::Duration,
) -> Result<Vec<u32>, ImapError> {
    let wanted: std::collections::HashSet<u32> = uids.iter().copied().collect();
    let mut stream = timed(
        t,
        "UID FETCH (UID)",
        session.uid_fetch(uid_set(uids.iter().copied()), "(UID)"),
    )
    .await?;
    let mut found = Vec::new();
    while let Some(fetch) = timed(t, "UID FETCH (UID)", stream.try_next()).await? {
        if let Some(uid) = fetch.uid.filter(|u| wanted.contains(u)) {
            found.push(uid);
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

fn to_incoming(
    fetched: Vec<Fetched>,
    mailbox: &str,
    uid_validity: i64,
    pending: bool,
) -> Vec<Incoming> {
    fetched
        .into_iter()
        .map(|f| {
            let (parsed, raw, content_hash) = if f.unreadable {
                let reason = format!(
                    "the server did not give this message's content (UID {} of UIDVALIDITY {uid_validity}, asked twice); it is still on the server",
                    f.uid
                );
                let key = format!("unreadable:{mailbox}:{uid_validity}:{}", f.uid);
                let parsed = crate::mime::ParsedEmail {
                    quarantine: Some(reason),
                    ..crate::mime::ParsedEmail::default()
                };
                (parsed, None, crate::mime::content_hash(key.as_bytes()))
            } else if f.whole {
                let hash = crate::mime::content_hash(&f.bytes);
                (crate::mime::parse(&f.bytes), Some(f.bytes), hash)
            } else {
                let reason = format!(
                    "too large to import: {:.1} MB, over DKL_IMAP_MAX_MESSAGE_MB; left on the server (UID {}), only its header is stored",
                    f64::from(f.size) / 1_048_576.0,
                    f.uid
                );
                // The header and the size tell this message from any other.
                let mut key = f.bytes.clone();
                key.extend_from_slice(format!("\0size={}", f.size).as_bytes());
                let hash = crate::mime::content_hash(&key);
                (crate::mime::parse_header_only(&f.bytes, reason), None, hash)
            };
            Incoming {
                content_hash,
                mailbox: mailbox.to_string(),
                uid_validity: Some(uid_validity),
                uid: Some(i64::from(f.uid)),
                received_at: f
                    .internal_date
                    .or(parsed.sent_at)
                    .unwrap_or_else(Utc::now),
                action_pending: pending && raw.is_some(),
                raw_size: i64::from(f.size.max(raw.as_ref().map_or(0, |r| r.len() as u32))),
                raw,
                parsed,
            }
        })
        .collect()
}

/// The after-import action of one mailbox.
struct Actions<'a> {
    pool: &'a PgPool,
    account: &'a ImapAccount,
    mailbox: &'a str,
    uid_validity: i64,
    timeout: std::time::Duration,
}

impl Actions<'_> {
    /// Does the after-import action for `committed` (UIDs whose messages are
    /// now stored, duplicates included) and for every stored message that
    /// still has it pending; returns how many.
    async fn finish(&self, session: &mut Session, committed: &[u32]) -> Result<usize, ImapError> {
        let (account, t) = (self.account, self.timeout);
        if account.after_import == AfterImport::Leave {
            return Ok(0);
        }
        let mut uids: Vec<u32> = incoming_emails::pending_actions(
            self.pool,
            &account.name,
            self.mailbox,
            self.uid_validity,
        )
        .await?
        .into_iter()
        .filter_map(|u| u32::try_from(u).ok())
        .chain(committed.iter().copied())
        .collect();
        uids.sort_unstable();
        uids.dedup();
        if uids.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let mut can_move = None;
        for chunk in uids.chunks(500) {
            let set = uid_set(chunk.iter().copied());
            match &account.after_import {
                AfterImport::Leave => {}
                AfterImport::MarkSeen => {
                    let stream = timed(
                        t,
                        "UID STORE",
                        session.uid_store(&set, "+FLAGS.SILENT (\\Seen)"),
                    )
                    .await?;
                    let _: Vec<_> = timed(t, "UID STORE", stream.try_collect()).await?;
                }
                AfterImport::MoveTo(folder) => {
                    if can_move.is_none() {
                        let caps = timed(t, "CAPABILITY", session.capabilities()).await?;
                        can_move = Some(caps.has_str("MOVE"));
                        // Creating a folder that exists fails harmlessly.
                        let _ = timed(t, "CREATE", session.create(folder)).await;
                    }
                    if can_move == Some(true) {
                        timed(t, "UID MOVE", session.uid_mv(&set, folder)).await?;
                    } else {
                        timed(t, "UID COPY", session.uid_copy(&set, folder)).await?;
                        let stream = timed(
                            t,
                            "UID STORE",
                            session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)"),
                        )
                        .await?;
                        let _: Vec<_> = timed(t, "UID STORE", stream.try_collect()).await?;
                        let stream = timed(t, "UID EXPUNGE", session.uid_expunge(&set)).await?;
                        let _: Vec<_> = timed(t, "UID EXPUNGE", stream.try_collect()).await?;
                    }
                }
            }
            let done: Vec<i64> = chunk.iter().map(|u| i64::from(*u)).collect();
            incoming_emails::actions_done(
                self.pool,
                &account.name,
                self.mailbox,
                self.uid_validity,
                &done,
            )
            .await?;
        }
        tracing::debug!(account = %account.name, mailbox = self.mailbox, done = uids.len(),
            ms = started.elapsed().as_millis() as u64, "after-import actions done");
        Ok(uids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compressed() {
        assert_eq!(uid_set([1, 2, 3, 7, 9, 10, 11, 12]), "1:3,7,9:12");
        assert_eq!(uid_set([5]), "5");
        assert_eq!(uid_set([]), "");
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let config = ImapConfig {
            accounts: Vec::new(),
            max_message_bytes: 40 * 1024 * 1024,
            fetch_batch: 3,
            poll_every: std::time::Duration::from_secs(1),
            idle_renew: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(1),
        };
        let listing: Vec<(u32, u32)> = (1..=7).map(|u| (u, 1000)).collect();
        let sizes: Vec<usize> = batches(&listing, &config).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        let big = vec![(1, 20 << 20), (2, 20 << 20), (3, 1)];
        let sizes: Vec<usize> = batches(&big, &config).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2], "32 MB per batch at most");
    }
}
