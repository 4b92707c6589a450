//! `dklctl mail inbox|show|import`: the messages that came in.

use std::path::PathBuf;

use anyhow::Context;
use dkl_shared::config::Config;
use dkl_worker::import;
use dkl_worker::store::incoming_emails::{self, InboxFilter};
use sqlx::PgPool;

use crate::table::{Table, truncate};

/// The inbox, newest first.
pub async fn inbox(pool: &PgPool, filter: InboxFilter) -> anyhow::Result<()> {
    let rows = incoming_emails::inbox(pool, &filter).await?;
    let mut table = Table::new(&[
        "id", "received", "account", "mailbox", "from", "subject", "att", "state",
    ]);
    for r in rows {
        let state = match (&r.quarantine_reason, r.processed, r.classification) {
            (Some(reason), _, _) => format!("quarantined: {}", truncate(reason, 60)),
            (None, true, Some(class)) => class.as_str().to_string(),
            (None, true, None) => "processed".into(),
            (None, false, _) => "unprocessed".into(),
        };
        table.row(vec![
            r.id.to_string(),
            r.received_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.account_type,
            r.mailbox,
            truncate(&r.sender_email, 32),
            truncate(r.subject.as_deref().unwrap_or("(no subject)"), 48),
            r.attachments.to_string(),
            state,
        ]);
    }
    let empty = if filter.quarantined {
        "no quarantined messages"
    } else {
        "no messages"
    };
    print!("{}", table.render(empty));
    Ok(())
}

/// One message: headers, text, attachments, what it was found to be.
pub async fn show(pool: &PgPool, id: uuid::Uuid) -> anyhow::Result<()> {
    let mail = incoming_emails::get(pool, id).await?.with_context(|| {
        format!("no incoming email with id {id}; `dklctl mail inbox` lists them")
    })?;
    let attachments = incoming_emails::attachments(pool, id).await?;
    println!("id:            {}", mail.id);
    println!(
        "account:       {} / {} (UIDVALIDITY {}, UID {})",
        mail.account_type,
        mail.mailbox,
        mail.uid_validity.map_or("-".into(), |v| v.to_string()),
        mail.uid.as_deref().unwrap_or("-")
    );
    println!(
        "from:          {}{}",
        mail.sender_name
            .as_deref()
            .map(|n| format!("{n} "))
            .unwrap_or_default(),
        format_args!("<{}>", mail.sender_email)
    );
    println!("to:            {}", mail.to_addresses.join(", "));
    if !mail.cc_addresses.is_empty() {
        println!("cc:            {}", mail.cc_addresses.join(", "));
    }
    println!(
        "subject:       {}",
        mail.subject.as_deref().unwrap_or("(no subject)")
    );
    println!(
        "message-id:    {}",
        mail.message_id.as_deref().unwrap_or("(none)")
    );
    println!("received:      {}", mail.received_at.to_rfc3339());
    println!("size:          {} bytes", mail.raw_size);
    match (&mail.quarantine_reason, mail.processed, mail.classification) {
        (Some(reason), _, _) => println!("state:         quarantined: {reason}"),
        (None, true, Some(class)) => println!(
            "state:         processed: {} ({})",
            class.as_str(),
            mail.classification_reason.as_deref().unwrap_or("")
        ),
        (None, processed, _) => println!(
            "state:         {}",
            if processed {
                "processed"
            } else {
                "waiting for process_incoming_email"
            }
        ),
    }
    let mut conn = pool.acquire().await?;
    if let Some((outcome, reason)) =
        dkl_worker::store::auto_responses::outcome_of(&mut conn, id).await?
    {
        println!("auto-reply:    {outcome}: {reason}");
    }
    for b in dkl_worker::store::bounces::of_message(&mut conn, id).await? {
        println!(
            "bounce:        {} {} {} ({}{})",
            b.recipient,
            b.kind,
            b.status.as_deref().unwrap_or("no status"),
            b.matched_by
                .as_deref()
                .map_or("not tied to our mail".to_string(), |m| format!(
                    "our send, by {m}"
                )),
            b.suppression
                .as_deref()
                .map(|s| format!("; suppressed: {s}"))
                .unwrap_or_default()
        );
    }
    println!("\n--- headers ---");
    println!("{}", mail.headers.as_deref().unwrap_or("").trim_end());
    println!("\n--- text ---");
    println!("{}", mail.body.as_deref().unwrap_or("(no text)").trim_end());
    if mail.html_body.is_some() {
        println!("\n(an HTML body is stored too, sanitised: incoming_emails.html_body)");
    }
    println!("\n--- attachments ---");
    let mut table = Table::new(&["#", "file name", "type", "bytes", "inline", "content-id"]);
    for a in attachments {
        table.row(vec![
            a.position.to_string(),
            a.file_name.unwrap_or_else(|| "(none)".into()),
            a.content_type,
            a.size.to_string(),
            if a.is_inline { "yes" } else { "no" }.into(),
            a.content_id.unwrap_or_default(),
        ]);
    }
    print!("{}", table.render("(none)"));
    Ok(())
}

/// Imports files, Maildir folders and mbox files into `account`.
pub async fn import(
    pool: &PgPool,
    config: &Config,
    account: &str,
    paths: &[PathBuf],
) -> anyhow::Result<()> {
    if account.is_empty() || account.len() > 50 {
        anyhow::bail!(
            "--account must name the account_type to store under (at most 50 characters), e.g. info"
        );
    }
    if config.imap.account(account).is_none() {
        eprintln!(
            "note: `{account}` is not in DKL_IMAP_ACCOUNTS; the messages are stored under it anyway"
        );
    }
    let mut total = incoming_emails::BatchOutcome::default();
    for path in paths {
        let report = import::import_path(
            pool,
            account,
            path,
            config.imap.max_message_bytes,
            &mut |r| {
                eprint!(
                    "\r{}: {} read, {} stored, {} already there",
                    r.path.display(),
                    r.messages,
                    r.outcome.stored,
                    r.outcome.duplicates
                )
            },
        )
        .await
        .with_context(|| format!("importing {}", path.display()))?;
        eprintln!();
        println!(
            "{} ({}): {} messages, {} stored ({} quarantined), {} already stored",
            path.display(),
            report.format,
            report.messages,
            report.outcome.stored,
            report.outcome.quarantined,
            report.outcome.duplicates
        );
        total += report.outcome;
    }
    if paths.len() > 1 {
        println!(
            "total: {} stored ({} quarantined), {} already stored",
            total.stored, total.quarantined, total.duplicates
        );
    }
    Ok(())
}
