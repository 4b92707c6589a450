//! `incoming_emails` and `incoming_email_attachments`: storing a batch of
//! received messages in one transaction, with their follow-up jobs and the
//! IMAP cursor, and reading them back for operators.

use chrono::{DateTime, Utc};
use dkl_shared::kinds::ProcessIncomingEmail;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::mime::ParsedEmail;

/// One received message, parsed, ready to store.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The mailbox it came from (`import` for `dklctl mail import`).
    pub mailbox: String,
    /// IMAP UIDVALIDITY (None when imported).
    pub uid_validity: Option<i64>,
    /// IMAP UID (None when imported).
    pub uid: Option<i64>,
    /// When the server received it (INTERNALDATE, else the Date header).
    pub received_at: DateTime<Utc>,
    /// The whole message; None when it is too large and left on the server.
    pub raw: Option<Vec<u8>>,
    /// Its size in bytes.
    pub raw_size: i64,
    /// SHA-256 of the message (of the header and size when only the header
    /// is kept): the same message is stored once per account.
    pub content_hash: Vec<u8>,
    /// What it says.
    pub parsed: ParsedEmail,
    /// The after-import action (\Seen, move) is still to be done.
    pub action_pending: bool,
}

/// Where the IMAP cursor goes with this batch.
#[derive(Debug, Clone, Copy)]
pub struct CursorAdvance {
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: i64,
    /// The highest UID in the batch (stored or skipped as a duplicate).
    pub last_uid: i64,
    /// The cursor was on another UIDVALIDITY: the mailbox is being re-read,
    /// and a message whose Message-ID is already stored from the old
    /// UIDVALIDITY is skipped (as well as one with the same content).
    pub resync: bool,
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// New rows.
    pub stored: usize,
    /// Of those, quarantined.
    pub quarantined: usize,
    /// Messages already stored (same UID, same content, or on resync the same Message-ID).
    pub duplicates: usize,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, other: Self) {
        self.stored += other.stored;
        self.quarantined += other.quarantined;
        self.duplicates += other.duplicates;
    }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Stores `messages` for `account` in one transaction: their rows, their
/// attachments, a `process_incoming_email` job for each new one that is not
/// quarantined, and the cursor. A message already stored is skipped.
pub async fn store_batch(
    pool: &PgPool,
    account: &str,
    cursor: Option<(&str, CursorAdvance)>,
    messages: &[Incoming],
) -> Result<BatchOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let outcome = store_batch_on(&mut tx, account, cursor, messages).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// [`store_batch`], and when the database refuses the batch (a value it
/// cannot take), the messages one by one: one it refuses is stored
/// quarantined with the reason instead, so one bad message never stops its
/// mailbox.
pub async fn store_batch_resilient(
    pool: &PgPool,
    account: &str,
    cursor: Option<(&str, CursorAdvance)>,
    messages: &[Incoming],
) -> Result<BatchOutcome, sqlx::Error> {
    let refused = match store_batch(pool, account, cursor, messages).await {
        // Data errors (22), constraint violations (23), values too large for
        // an index (54): this batch's content. Anything else (a deadlock, a
        // timeout, a lost connection) is retried with the batch as it is.
        Err(sqlx::Error::Database(e))
            if e.code().is_some_and(|c| {
                c.starts_with("22") || c.starts_with("23") || c.starts_with("54")
            }) =>
        {
            e.to_string()
        }
        other => return other,
    };
    tracing::warn!(account, error = %refused, "the database refused a batch; storing its messages one by one");
    let mut tx = pool.begin().await?;
    let mut outcome = BatchOutcome::default();
    // Each message is stored with the batch's cursor (same resync rules; the
    // cursor moves in this one transaction, to the batch's end).
    for message in messages {
        sqlx::query("SAVEPOINT one_message")
            .execute(&mut *tx)
            .await?;
        match store_batch_on(&mut tx, account, cursor, std::slice::from_ref(message)).await {
            Ok(o) => {
                sqlx::query("RELEASE SAVEPOINT one_message")
                    .execute(&mut *tx)
                    .await?;
                outcome += o;
            }
            Err(sqlx::Error::Database(e)) => {
                sqlx::query("ROLLBACK TO SAVEPOINT one_message")
                    .execute(&mut *tx)
                    .await?;
                let kept = Incoming {
                    parsed: crate::mime::ParsedEmail {
                        headers: message.parsed.headers.clone(),
                        quarantine: Some(format!(
                            "the database refused this message as parsed ({e}); stored as it came"
                        )),
                        ..crate::mime::ParsedEmail::default()
                    },
                    ..message.clone()
                };
                outcome +=
                    store_batch_on(&mut tx, account, cursor, std::slice::from_ref(&kept)).await?;
            }
            Err(other) => return Err(other),
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

/// [`store_batch`] inside the caller's transaction.
pub async fn store_batch_on(
    conn: &mut PgConnection,
    account: &str,
    cursor: Option<(&str, CursorAdvance)>,
    messages: &[Incoming],
) -> Result<BatchOutcome, sqlx::Error> {
    let mut outcome = BatchOutcome::default();
    if !messages.is_empty() {
        let hashes: Vec<Option<Vec<u8>>> = messages
            .iter()
            .map(|m| Some(m.content_hash.clone()))
            .collect();
        let inserted: Vec<(Uuid, Option<Vec<u8>>, bool)> = sqlx::query_as(
            "INSERT INTO incoming_emails (
                 account_type, mailbox, uid_validity, uid, message_id, sender_email, sender_name,
                 subject, body, html_body, received_at, in_reply_to, message_references,
                 to_addresses, cc_addresses, reply_to, return_path, sent_at, raw_size, headers,
                 raw, content_hash, quarantine_reason, imap_action_pending)
             SELECT $1, u.mailbox, u.uid_validity, u.uid::text, u.message_id, u.sender_email, u.sender_name,
                    u.subject, u.body, u.html_body, u.received_at, u.in_reply_to,
                    ARRAY(SELECT jsonb_array_elements_text(u.refs::jsonb)),
                    ARRAY(SELECT jsonb_array_elements_text(u.to_list::jsonb)),
                    ARRAY(SELECT jsonb_array_elements_text(u.cc_list::jsonb)),
                    u.reply_to, u.return_path, u.sent_at, u.raw_size, u.headers,
                    u.raw, u.content_hash, u.quarantine_reason, u.action_pending
               FROM unnest($2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[],
                           $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::text[],
                           $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                           $18::timestamptz[], $19::int8[], $20::text[], $21::bytea[], $22::bytea[],
                           $23::text[], $24::bool[])
                    WITH ORDINALITY AS u(mailbox, uid_validity, uid, message_id, sender_email, sender_name,
                           subject, body, html_body, received_at, in_reply_to,
                           refs, to_list, cc_list, reply_to, return_path,
                           sent_at, raw_size, headers, raw, content_hash,
                           quarantine_reason, action_pending, n)
              WHERE NOT ($25 AND u.message_id IS NOT NULL AND EXISTS (
                        SELECT 1 FROM incoming_emails e
                         WHERE e.account_type = $1 AND e.message_id = u.message_id
                           AND e.mailbox = u.mailbox AND e.raw_size = u.raw_size
                           AND e.uid_validity IS DISTINCT FROM u.uid_validity))
              ORDER BY u.n
             ON CONFLICT DO NOTHING
             RETURNING id, content_hash, quarantine_reason IS NOT NULL",
        )
        .bind(account)
        .bind(messages.iter().map(|m| m.mailbox.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.uid_validity).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.uid).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.message_id.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.sender_email.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.sender_name.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.subject.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.text_body.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.html_body.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.received_at).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.in_reply_to.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| json_list(&m.parsed.references)).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| json_list(&m.parsed.to)).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| json_list(&m.parsed.cc)).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.reply_to.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.return_path.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.sent_at).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.raw_size).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.parsed.headers.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.raw.as_deref()).collect::<Vec<_>>())
        .bind(&hashes)
        .bind(messages.iter().map(|m| m.parsed.quarantine.clone()).collect::<Vec<_>>())
        .bind(messages.iter().map(|m| m.action_pending).collect::<Vec<_>>())
        .bind(cursor.is_some_and(|(_, c)| c.resync))
        .fetch_all(&mut *conn)
        .await?;
        outcome.stored = inserted.len();
        outcome.quarantined = inserted.iter().filter(|(_, _, q)| *q).count();
        outcome.duplicates = messages.len() - inserted.len();
        store_attachments(&mut *conn, messages, &hashes, &inserted).await?;
        let to_follow: Vec<Uuid> = inserted
            .iter()
            .filter(|(_, _, quarantined)| !quarantined)
            .map(|(id, _, _)| *id)
            .collect();
        let follow_ups = ProcessIncomingEmail::batches(&to_follow);
        dkl_shared::jobs::enqueue_many_on(&mut *conn, &follow_ups)
            .await
            .map_err(|e| match e {
                dkl_shared::jobs::EngineError::Sql(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
    }
    if let Some((mailbox, cursor)) = cursor {
        super::imap_cursors::advance(&mut *conn, account, mailbox, cursor, outcome).await?;
    }
    Ok(outcome)
}

async fn store_attachments(
    conn: &mut PgConnection,
    messages: &[Incoming],
    hashes: &[Option<Vec<u8>>],
    inserted: &[(Uuid, Option<Vec<u8>>, bool)],
) -> Result<(), sqlx::Error> {
    let mut email_ids = Vec::new();
    let mut positions = Vec::new();
    let mut names = Vec::new();
    let mut types = Vec::new();
    let mut sizes = Vec::new();
    let mut cids = Vec::new();
    let mut inline = Vec::new();
    let mut contents: Vec<&[u8]> = Vec::new();
    for (id, hash, _) in inserted {
        let Some(hash) = hash else { continue };
        let Some(index) = hashes.iter().position(|h| h.as_ref() == Some(hash)) else {
            continue;
        };
        for (position, a) in messages[index].parsed.attachments.iter().enumerate() {
            email_ids.push(*id);
            positions.push(position as i32);
            names.push(a.file_name.clone());
            types.push(a.content_type.clone());
            sizes.push(a.content.len() as i64);
            cids.push(a.content_id.clone());
            inline.push(a.inline);
            contents.push(&a.content);
        }
    }
    if email_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO incoming_email_attachments
             (incoming_email_id, position, file_name, content_type, size, content_id, is_inline, content)
         SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::int8[],
                              $6::text[], $7::bool[], $8::bytea[])",
    )
    .bind(&email_ids)
    .bind(&positions)
    .bind(&names)
    .bind(&types)
    .bind(&sizes)
    .bind(&cids)
    .bind(&inline)
    .bind(&contents)
    .execute(conn)
    .await?;
    Ok(())
}

/// UIDs of `mailbox` (at `uid_validity`) whose after-import action is still
/// to be done: stored, but the worker stopped before the server confirmed.
pub async fn pending_actions(
    pool: &PgPool,
    account: &str,
    mailbox: &str,
    uid_validity: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT uid::int8 FROM incoming_emails
          WHERE account_type = $1 AND mailbox = $2 AND uid_validity = $3 AND imap_action_pending
          ORDER BY uid::int8",
    )
    .bind(account)
    .bind(mailbox)
    .bind(uid_validity)
    .fetch_all(pool)
    .await
}

/// The after-import action of these UIDs is done.
pub async fn actions_done(
    pool: &PgPool,
    account: &str,
    mailbox: &str,
    uid_validity: i64,
    uids: &[i64],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE incoming_emails SET imap_action_pending = false
          WHERE account_type = $1 AND mailbox = $2 AND uid_validity = $3 AND imap_action_pending
            AND uid = ANY($4::text[])",
    )
    .bind(account)
    .bind(mailbox)
    .bind(uid_validity)
    .bind(uids.iter().map(|u| u.to_string()).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// One row of the inbox listing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboxRow {
    /// `incoming_emails.id`.
    pub id: Uuid,
    /// Account.
    pub account_type: String,
    /// Mailbox.
    pub mailbox: String,
    /// Sender.
    pub sender_email: String,
    /// Subject.
    pub subject: Option<String>,
    /// Received.
    pub received_at: DateTime<Utc>,
    /// Processed.
    pub processed: bool,
    /// Classification.
    pub classification: Option<crate::mime::classify::Classification>,
    /// Quarantine reason.
    pub quarantine_reason: Option<String>,
    /// Attachments.
    pub attachments: i64,
}

/// Which messages the inbox listing shows.
#[derive(Debug, Clone, Default)]
pub struct InboxFilter {
    /// Only this account.
    pub account: Option<String>,
    /// Only messages not yet processed.
    pub unprocessed: bool,
    /// Only quarantined messages.
    pub quarantined: bool,
    /// At most this many, newest first.
    pub limit: i64,
}

/// The newest messages matching `filter`.
pub async fn inbox(pool: &PgPool, filter: &InboxFilter) -> Result<Vec<InboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.account_type, e.mailbox, e.sender_email, e.subject, e.received_at,
                e.processed, e.classification, e.quarantine_reason,
                (SELECT count(*) FROM incoming_email_attachments a WHERE a.incoming_email_id = e.id) AS attachments
           FROM incoming_emails e
          WHERE ($1::text IS NULL OR e.account_type = $1)
            AND (NOT $2 OR NOT e.processed)
            AND (NOT $3 OR e.quarantine_reason IS NOT NULL)
          ORDER BY e.received_at DESC, e.id
          LIMIT $4",
    )
    .bind(&filter.account)
    .bind(filter.unprocessed)
    .bind(filter.quarantined)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Everything stored about one message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEmail {
    /// Id.
    pub id: Uuid,
    /// Account.
    pub account_type: String,
    /// Mailbox.
    pub mailbox: String,
    /// UIDVALIDITY.
    pub uid_validity: Option<i64>,
    /// UID.
    pub uid: Option<String>,
    /// Message-ID.
    pub message_id: Option<String>,
    /// Sender.
    pub sender_email: String,
    /// Sender name.
    pub sender_name: Option<String>,
    /// To.
    pub to_addresses: Vec<String>,
    /// Cc.
    pub cc_addresses: Vec<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Text body.
    pub body: Option<String>,
    /// Sanitised HTML body.
    pub html_body: Option<String>,
    /// Header block.
    pub headers: Option<String>,
    /// Received.
    pub received_at: DateTime<Utc>,
    /// Size.
    pub raw_size: i64,
    /// Processed.
    pub processed: bool,
    /// Classification.
    pub classification: Option<crate::mime::classify::Classification>,
    /// Why.
    pub classification_reason: Option<String>,
    /// Quarantine reason.
    pub quarantine_reason: Option<String>,
}

/// One message by id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<StoredEmail>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, account_type, mailbox, uid_validity, uid, message_id, sender_email, sender_name,
                to_addresses, cc_addresses, subject, body, html_body, headers, received_at, raw_size,
                processed, classification, classification_reason, quarantine_reason
           FROM incoming_emails WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// An attachment's description (without its content).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentInfo {
    /// Position in the message.
    pub position: i32,
    /// File name.
    pub file_name: Option<String>,
    /// Content type.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
    /// Content-ID.
    pub content_id: Option<String>,
    /// Inline.
    pub is_inline: bool,
}

/// The attachments of a message.
pub async fn attachments(pool: &PgPool, id: Uuid) -> Result<Vec<AttachmentInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, file_name, content_type, size, content_id, is_inline
           FROM incoming_email_attachments WHERE incoming_email_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// The raw message, for reprocessing.
pub async fn raw(pool: &PgPool, id: Uuid) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT raw FROM incoming_emails WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}

/// Records what the follow-up found and marks the message processed.
pub async fn mark_processed(
    conn: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    verdict: Option<&crate::mime::classify::Verdict>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE incoming_emails
            SET classification = $2, classification_reason = $3, processed = true, processed_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(verdict.map(|v| v.class.as_str()))
    .bind(verdict.map(|v| v.reason.as_str()))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes every message of `account` and their pending follow-up jobs
/// (benchmarks clean up after themselves with it). Returns the messages deleted.
pub async fn delete_account(pool: &PgPool, account: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // (a join, not `IN (subquery)`: with thousands of jobs the subquery
    // was run once per job)
    sqlx::query(
        "DELETE FROM apalis.jobs j USING incoming_emails e
          WHERE e.account_type = $1 AND j.job_type = 'process_incoming_email'
            AND convert_from(j.job, 'UTF8')::jsonb ->> 'incoming_email_id' = e.id::text",
    )
    .bind(account)
    .execute(&mut *tx)
    .await?;
    // What their follow-ups made: answers (ledger rows and their jobs),
    // bounces, complaints.
    sqlx::query(
        "DELETE FROM apalis.jobs j USING incoming_emails e
          WHERE e.account_type = $1 AND j.job_type = 'send_email'
            AND convert_from(j.job, 'UTF8')::jsonb ->> 'dedup_key' = 'auto_reply:' || e.id",
    )
    .bind(account)
    .execute(&mut *tx)
    .await?;
    for table in ["auto_reply_log", "email_bounces", "email_complaints"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE incoming_email_id IN (SELECT id FROM incoming_emails WHERE account_type = $1)"
        )))
        .bind(account)
        .execute(&mut *tx)
        .await?;
    }
    let deleted = sqlx::query("DELETE FROM incoming_emails WHERE account_type = $1")
        .bind(account)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for table in ["imap_cursors", "imap_account_status"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE account_type = $1"
        )))
        .bind(account)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Whether a message with this Message-ID is stored for `account`.
pub async fn has_message_id(
    pool: &PgPool,
    account: &str,
    message_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM incoming_emails WHERE account_type = $1 AND message_id = $2)",
    )
    .bind(account)
    .bind(message_id)
    .fetch_one(pool)
    .await
}

/// What answering a message needs from its row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplyContext {
    /// `incoming_emails.id`.
    pub id: Uuid,
    /// The account it came in on.
    pub account_type: String,
    /// The sender's name.
    pub sender_name: Option<String>,
    /// The sender's address.
    pub sender_email: String,
    /// Its subject.
    pub subject: Option<String>,
    /// Its Message-ID.
    pub message_id: Option<String>,
    /// Its References.
    pub message_references: Vec<String>,
    /// When it was received.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// The message as received (None: quarantined with its header only).
    pub raw: Option<Vec<u8>>,
}

/// The rows of `ids` that still exist, locked until the caller's
/// transaction ends (two follow-ups of one message never run side by
/// side), in id order (so two batches never wait on each other in a cycle).
pub async fn lock_for_processing(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
) -> Result<Vec<ReplyContext>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, account_type, sender_name, sender_email, subject, message_id, message_references, received_at, raw
           FROM incoming_emails WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}
