//! `dklctl newsletter …`: what admins do with newsletters. Every command is
//! the SQL an admin could write by hand (README, "Newsletters"); the table's
//! trigger refuses what makes no sense, and its message is printed as is.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use dkl_shared::config::Config;
use dkl_shared::kinds::MailKind;
use dkl_worker::newsletter::message::Edition;
use dkl_worker::newsletter::token::{Subject, TokenKey};
use dkl_worker::store::newsletters::{self, NewsletterStatus, Progress};
use sqlx::PgPool;
use uuid::Uuid;

use crate::table::{Table, truncate};

/// A database refusal as its own message (the trigger says what is allowed).
fn plain(e: sqlx::Error) -> anyhow::Error {
    match e.as_database_error() {
        Some(db) => anyhow::anyhow!("{}", db.message()),
        None => e.into(),
    }
}

/// Creates a draft; prints its id.
pub async fn create(
    pool: &PgPool,
    title: &str,
    text: &std::path::Path,
    html: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let content =
        std::fs::read_to_string(text).with_context(|| format!("cannot read {}", text.display()))?;
    let html = html
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()?;
    let id = newsletters::create(pool, title, &content, html.as_deref())
        .await
        .map_err(plain)?;
    println!("{id}");
    Ok(())
}

/// The newsletters with their progress.
pub async fn list(pool: &PgPool, limit: i64) -> anyhow::Result<()> {
    let mut table = Table::new(&["id", "status", "scheduled", "sent", "of", "title"]);
    for n in newsletters::list(pool, limit).await? {
        let p = newsletters::progress(pool, n.id).await?;
        table.row(vec![
            n.id.to_string(),
            n.status.as_str().to_string(),
            n.scheduled_send_time
                .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
                .unwrap_or_default(),
            p.as_ref().map_or(0, |p| p.sent).to_string(),
            p.as_ref().map_or(0, |p| p.total).to_string(),
            truncate(&n.title, 50),
        ]);
    }
    print!("{}", table.render("no newsletters"));
    Ok(())
}

/// Schedules `id` at `at` (now when absent).
pub async fn schedule(pool: &PgPool, id: Uuid, at: Option<DateTime<Utc>>) -> anyhow::Result<()> {
    if !newsletters::schedule(pool, id, at).await.map_err(plain)? {
        anyhow::bail!("no newsletter {id}; `dklctl newsletter list` shows them");
    }
    match at {
        Some(at) if at > Utc::now() => println!("newsletter {id} scheduled for {at}"),
        _ => println!("newsletter {id} scheduled to go out now"),
    }
    Ok(())
}

/// Pauses, resumes or cancels `id`.
pub async fn set_status(pool: &PgPool, id: Uuid, status: NewsletterStatus) -> anyhow::Result<()> {
    if !newsletters::set_status(pool, id, status)
        .await
        .map_err(plain)?
    {
        anyhow::bail!("no newsletter {id}; `dklctl newsletter list` shows them");
    }
    let what = match status {
        NewsletterStatus::Paused => "paused; `dklctl newsletter resume` goes on where it stopped",
        NewsletterStatus::Sending => "resumed",
        NewsletterStatus::Cancelled => "cancelled; recipients not yet sent to are marked cancelled",
        _ => status.as_str(),
    };
    println!("newsletter {id} {what}");
    Ok(())
}

/// Resends deliveries whose outcome is unknown.
pub async fn resend_unknown(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    let n = newsletters::resend_unknown(pool, id).await.map_err(plain)?;
    println!("{n} deliveries of newsletter {id} put back to send (with their first Message-ID)");
    Ok(())
}

/// Progress: a live bar in a terminal (until the newsletter is final), one
/// JSON object otherwise or with `json`.
pub async fn status(pool: &PgPool, id: Uuid, json: bool, once: bool) -> anyhow::Result<()> {
    let read = || async {
        newsletters::progress(pool, id)
            .await?
            .with_context(|| format!("no newsletter {id}; `dklctl newsletter list` shows them"))
    };
    if json || (!once && !std::io::stdout().is_terminal()) {
        println!("{}", serde_json::to_string(&read().await?)?);
        return Ok(());
    }
    if once {
        println!("{}", bar_line(&read().await?));
        return Ok(());
    }
    let stop = dkl_shared::telemetry::shutdown_on_signals();
    loop {
        let p = read().await?;
        print!("\r\x1b[2K{}", bar_line(&p));
        std::io::stdout().flush()?;
        let finished = matches!(
            p.status,
            NewsletterStatus::Sent | NewsletterStatus::Cancelled
        ) || (p.status == NewsletterStatus::Draft);
        if finished || stop.is_cancelled() {
            println!();
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// One line: status, a bar, counts, rate and time left.
pub fn bar_line(p: &Progress) -> String {
    const WIDTH: usize = 30;
    let done = p.sent + p.failed + p.skipped + p.unknown + p.cancelled;
    let filled = if p.total > 0 {
        (done as usize * WIDTH) / p.total as usize
    } else {
        0
    };
    let eta = p
        .eta_secs
        .map(|s| format!(" eta {}m{:02}s", s as u64 / 60, s as u64 % 60))
        .unwrap_or_default();
    format!(
        "{:<9} [{}{}] {done}/{} sent {} failed {} skipped {} unknown {} in flight {} | {:.0}/s{eta}",
        p.status.as_str(),
        "#".repeat(filled.min(WIDTH)),
        "-".repeat(WIDTH - filled.min(WIDTH)),
        p.total,
        p.sent,
        p.failed,
        p.skipped,
        p.unknown,
        p.in_flight,
        p.per_second,
    )
}

/// Sends one copy of `id` to `to`, as a subscriber would get it, on the
/// `newsletter` SMTP configuration. Not a delivery: the newsletter's counts
/// do not change. Logged in `verzonden_emails`.
pub async fn send_test(pool: &PgPool, config: &Config, id: Uuid, to: &str) -> anyhow::Result<()> {
    dkl_worker::smtp::check_config(&config.mail).map_err(anyhow::Error::msg)?;
    let newsletter = newsletters::get(pool, id)
        .await?
        .with_context(|| format!("no newsletter {id}; `dklctl newsletter list` shows them"))?;
    let template = dkl_worker::store::email_templates::by_name(pool, "newsletter")
        .await?
        .context("no template `newsletter` in email_templates; `dklctl templates sync` loads the defaults")?;
    let smtp = dkl_worker::smtp::Smtp::new(config.mail.clone(), Default::default());
    let smtp_config = smtp.config_for(MailKind::Newsletter);
    let from = smtp_config.from.parse().map_err(|e| {
        anyhow::anyhow!(
            "DKL_SMTP_{}_FROM `{}` is not an address ({e})",
            smtp_config.name.to_uppercase(),
            smtp_config.from
        )
    })?;
    let keys = TokenKey::new(config.newsletter.unsubscribe_secret.clone());
    let signer = keys.signer(pool).await?.clone();
    let edition = Edition::new(
        &newsletter,
        template.template(),
        from,
        &config.newsletter,
        signer,
    );
    let to = dkl_worker::address::mailbox(to)?.email.to_string();
    let message_id = format!("<{}@{}>", Uuid::new_v4(), edition.from().email.domain());
    let renderer = dkl_worker::templates::Renderer::new();
    let mut message = edition.build(
        &renderer,
        &to,
        None,
        &Subject::Address(to.clone()),
        &message_id,
    )?;
    if let Some(signer) = smtp.signer(smtp_config) {
        signer.sign(&mut message);
    }
    let slot = smtp.reserve(smtp_config).await?;
    let sent = smtp
        .send(&slot, smtp_config, message.envelope(), &message.formatted())
        .await;
    let (status, code, reply) = match &sent {
        Ok(a) => ("sent", Some(a.code), a.text.clone()),
        Err(e) => ("failed", e.code(), e.to_string()),
    };
    sqlx::query(
        "INSERT INTO verzonden_emails (dedup_key, recipient_email, subject, template_name, status, error_message,
                                       mail_kind, smtp_config, message_id, newsletter_id, smtp_code, smtp_reply, sent_at)
         VALUES ($1, $2, $3, 'newsletter', $4, $5, 'newsletter', $6, $7, $8, $9, $10, now())",
    )
    .bind(format!("newsletter-test:{id}:{message_id}"))
    .bind(&to)
    .bind(&newsletter.title)
    .bind(status)
    .bind(sent.as_ref().err().map(|e| e.to_string()))
    .bind(&smtp_config.name)
    .bind(&message_id)
    .bind(id)
    .bind(code.map(i32::from))
    .bind(&reply)
    .execute(pool)
    .await?;
    match sent {
        Ok(a) => {
            println!(
                "test copy of newsletter {id} sent to {to}: {} {}",
                a.code, a.text
            );
            Ok(())
        }
        Err(e) => anyhow::bail!("test copy of newsletter {id} to {to} not sent: {e}"),
    }
}
