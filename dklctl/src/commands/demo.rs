//! `dklctl demo imap-server|append`: what `scripts/demo.sh` needs to show
//! mail coming in: a local Dovecot with accounts and a few real messages,
//! and a new message APPENDed while the worker watches.

use std::path::PathBuf;

use anyhow::Context;
use dkl_shared::config::Config;
use dkl_worker::imap::dovecot::Dovecot;

/// Runs a local Dovecot on `port` with `users` (`login:password`), puts
/// `deliver` (`login:FILE`) into their INBOX, prints `ready` and runs until
/// SIGINT or SIGTERM.
pub async fn imap_server(port: u16, users: &[String], deliver: &[String]) -> anyhow::Result<()> {
    let pairs: Vec<(&str, &str)> = users
        .iter()
        .map(|u| {
            u.split_once(':')
                .with_context(|| format!("--user {u}: expected LOGIN:PASSWORD"))
        })
        .collect::<Result<_, _>>()?;
    let dovecot = tokio::task::spawn_blocking({
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        move || {
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(u, p)| (u.as_str(), p.as_str()))
                .collect();
            Dovecot::start_on(port, &refs)
        }
    })
    .await?
    .with_context(|| format!("cannot start Dovecot on 127.0.0.1:{port}"))?;
    for d in deliver {
        let (user, file) = d
            .split_once(':')
            .with_context(|| format!("--deliver {d}: expected LOGIN:FILE"))?;
        let raw =
            std::fs::read(PathBuf::from(file)).with_context(|| format!("cannot read {file}"))?;
        dovecot.deliver(user, "INBOX", &raw)?;
    }
    println!("ready: Dovecot on 127.0.0.1:{port} ({} users)", users.len());
    dkl_shared::telemetry::shutdown_on_signals()
        .cancelled()
        .await;
    drop(dovecot);
    Ok(())
}

/// APPENDs `file` to the INBOX of account `name` (as new mail arriving).
pub async fn append(config: &Config, name: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let account = config
        .imap
        .account(name)
        .with_context(|| format!("no IMAP account `{name}` in DKL_IMAP_ACCOUNTS"))?;
    let raw = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut session = dkl_worker::imap::connect(account, config.imap.timeout).await?;
    session.append("INBOX", None, None, &raw).await?;
    let _ = session.logout().await;
    println!("appended {} to {name}'s INBOX", file.display());
    Ok(())
}
