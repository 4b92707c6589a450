//! `dklctl accounts [check [NAME]]`: the IMAP accounts, their state, and a
//! live check of each.

use std::time::Instant;

use dkl_shared::config::{AfterImport, Config, ImapAccount, TlsMode};
use dkl_worker::imap::{self, timed};
use dkl_worker::store::imap_cursors;
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::table::{Table, truncate};

fn tls(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Plain => "plain",
        TlsMode::StartTls => "starttls",
        TlsMode::Tls => "tls",
    }
}

fn after(a: &AfterImport) -> String {
    match a {
        AfterImport::Leave => "leave".into(),
        AfterImport::MarkSeen => "seen".into(),
        AfterImport::MoveTo(f) => format!("move:{f}"),
    }
}

/// The configured accounts with each mailbox's cursor and last result.
pub async fn list(pool: &PgPool, config: &Config) -> anyhow::Result<()> {
    if config.imap.accounts.is_empty() {
        println!(
            "no IMAP accounts configured (set DKL_IMAP_ACCOUNTS=info,inschrijving and DKL_IMAP_<NAME>_HOST, _USER, _PASSWORD; see .env.example)"
        );
        return Ok(());
    }
    let cursors = imap_cursors::mailboxes(pool).await?;
    let states = imap_cursors::accounts(pool).await?;
    let mut table = Table::new(&[
        "account",
        "server",
        "tls",
        "user",
        "mailbox",
        "after",
        "idle",
        "uidvalidity",
        "last uid",
        "stored",
        "quarantined",
        "last success",
        "last error",
    ]);
    for a in &config.imap.accounts {
        let state = states.iter().find(|s| s.account_type == a.name);
        for mailbox in &a.mailboxes {
            let cursor = cursors
                .iter()
                .find(|c| c.account_type == a.name && &c.mailbox == mailbox);
            let error = cursor
                .and_then(|c| c.last_error.clone())
                .or_else(|| state.and_then(|s| s.last_error.clone()));
            let success = cursor
                .and_then(|c| c.last_success_at)
                .or_else(|| state.and_then(|s| s.last_success_at));
            table.row(vec![
                a.name.clone(),
                format!("{}:{}", a.host, a.port),
                tls(a.tls).into(),
                a.user.clone(),
                mailbox.clone(),
                after(&a.after_import),
                if a.idle { "yes" } else { "no" }.into(),
                cursor.map_or("-".into(), |c| c.uid_validity.to_string()),
                cursor.map_or("-".into(), |c| c.last_uid.to_string()),
                cursor.map_or("0".into(), |c| c.messages_stored.to_string()),
                cursor.map_or("0".into(), |c| c.messages_quarantined.to_string()),
                success.map_or("never".into(), |t| {
                    t.format("%Y-%m-%d %H:%M:%S").to_string()
                }),
                error.map_or(String::new(), |e| truncate(&e, 80)),
            ]);
        }
    }
    print!("{}", table.render(""));
    Ok(())
}

/// Logs in to each account (or the one named), lists its mailboxes and
/// examines the configured ones. Fails when any account fails.
pub async fn check(config: &Config, name: Option<&str>) -> anyhow::Result<()> {
    let accounts: Vec<&ImapAccount> = match name {
        Some(n) => vec![config.imap.account(n).ok_or_else(|| {
            anyhow::anyhow!(
                "no IMAP account `{n}` in DKL_IMAP_ACCOUNTS (configured: {})",
                config
                    .imap
                    .accounts
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?],
        None => config.imap.accounts.iter().collect(),
    };
    if accounts.is_empty() {
        anyhow::bail!("no IMAP accounts configured: set DKL_IMAP_ACCOUNTS (see .env.example)");
    }
    let mut failed = 0;
    for account in accounts {
        match check_one(account, config.imap.timeout).await {
            Ok(lines) => {
                println!("{}: OK", account.name);
                for line in lines {
                    println!("  {line}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("{}: FAILED: {e}", account.name);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} account(s) failed the check");
    }
    Ok(())
}

async fn check_one(
    account: &ImapAccount,
    timeout: std::time::Duration,
) -> Result<Vec<String>, imap::ImapError> {
    let started = Instant::now();
    let mut session = imap::connect(account, timeout).await?;
    let mut lines = vec![format!(
        "logged in to {}:{} ({}) as {} in {} ms",
        account.host,
        account.port,
        tls(account.tls),
        account.user,
        started.elapsed().as_millis()
    )];
    let idle = imap::has_idle(&mut session, timeout).await?;
    lines.push(format!(
        "IDLE: {}",
        if idle {
            "yes (new mail within seconds)"
        } else {
            "no (polled every DKL_IMAP_POLL_SECS)"
        }
    ));
    let names: Vec<String> = {
        let stream = timed(timeout, "LIST", session.list(None, Some("*"))).await?;
        let list: Vec<async_imap::types::Name> =
            timed(timeout, "LIST", stream.try_collect()).await?;
        list.iter().map(|n| n.name().to_string()).collect()
    };
    lines.push(format!("mailboxes on the server: {}", names.join(", ")));
    for mailbox in &account.mailboxes {
        match timed(timeout, "EXAMINE", session.examine(mailbox)).await {
            Ok(m) => lines.push(format!(
                "{mailbox}: {} messages, UIDVALIDITY {}, next UID {}",
                m.exists,
                m.uid_validity.map_or("?".into(), |v| v.to_string()),
                m.uid_next.map_or("?".into(), |v| v.to_string())
            )),
            Err(e) => {
                return Err(imap::ImapError::Mailbox {
                    account: account.name.to_ascii_uppercase(),
                    mailbox: mailbox.clone(),
                    reason: match &e {
                        imap::ImapError::Protocol(p) => imap::server_said(p),
                        other => other.to_string(),
                    },
                });
            }
        }
    }
    if let AfterImport::MoveTo(folder) = &account.after_import
        && !names.iter().any(|n| n == folder)
    {
        lines.push(format!(
            "after import: folder `{folder}` does not exist yet; it is created on the first move"
        ));
    }
    let _ = timed(timeout, "LOGOUT", session.logout()).await;
    Ok(lines)
}
