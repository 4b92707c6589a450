//! What runs when a job of kind X is claimed: one file per job kind, and
//! [`registry`], the one place that registers them all.
//!
//! A kind's payload type lives in `dkl_shared::kinds` (the scheduler and
//! `dklctl` check payloads without linking this crate); its handler lives
//! here. Kinds that are declared but whose handlers come with later work are
//! listed in [`NOT_YET_HANDLED`]; a test keeps the catalog, the registry and
//! that list in step.

pub mod apply_retention;
pub mod cleanup_images;
pub mod expire_sessions;
pub mod fetch_mail;
pub mod ping;
pub mod process_incoming_email;
pub mod prune_jobs;
pub mod recompute_leaderboards;
pub mod send_email;
pub mod send_newsletter;
pub mod upload_image;

use dkl_shared::config::Config;
use dkl_shared::jobs::Registry;
use sqlx::PgPool;

/// Kinds in `dkl_shared::kinds::catalog()` that no handler runs yet (their
/// issues are open). The worker discards their jobs with "no handler for
/// kind …". Remove a kind from here when its handler is registered.
pub const NOT_YET_HANDLED: &[&str] = &[];

/// Every job kind this worker runs.
pub fn registry(pool: &PgPool, config: &Config) -> Registry {
    registry_with(
        pool,
        config,
        std::sync::Arc::default(),
        std::sync::Arc::default(),
    )
}

/// [`registry`], counting mail sent into `mail_stats` and mail received
/// into `imap_stats` (for `/metrics`).
pub fn registry_with(
    pool: &PgPool,
    config: &Config,
    mail_stats: std::sync::Arc<crate::smtp::stats::MailStats>,
    imap_stats: std::sync::Arc<crate::imap::stats::ImapStats>,
) -> Registry {
    let mut registry = Registry::new();
    let mail_stats_for_processing = mail_stats.clone();
    ping::register(&mut registry);
    prune_jobs::register(
        &mut registry,
        pool.clone(),
        config.jobs.prune_done_after,
        config.jobs.prune_discarded_after,
    );
    let smtp = std::sync::Arc::new(crate::smtp::Smtp::new(config.mail.clone(), mail_stats));
    let mailer = send_email::Mailer {
        pool: pool.clone(),
        smtp: smtp.clone(),
        renderer: crate::templates::Renderer::new(),
        templates: crate::store::email_templates::TemplateCache::new(
            crate::store::email_templates::TemplateCache::DEFAULT_TTL,
        ),
        send_log: crate::store::send_log::SendLog::new(pool),
        bounce_address: config.responses.bounce_address.clone(),
        verp: config.responses.verp,
        keys: crate::newsletter::token::TokenKey::new(config.newsletter.unsubscribe_secret.clone()),
    };
    send_email::register(&mut registry, std::sync::Arc::new(mailer));
    let newsletter_config = smtp.config_for(dkl_shared::kinds::MailKind::Newsletter);
    let lanes = send_newsletter::NewsletterSender {
        pool: pool.clone(),
        writers: (0..2)
            .map(|_| {
                crate::newsletter::writer::DeliveryWriter::new(
                    pool,
                    crate::store::newsletters::WriteSettings {
                        smtp: newsletter_config.name.clone(),
                        max_attempts: config.newsletter.max_attempts,
                        backoff_secs: config.newsletter.retry_after.as_secs() as u32,
                    },
                )
            })
            .collect(),
        senders: std::sync::Arc::new(tokio::sync::Semaphore::new(
            send_newsletter::sender_permits(&smtp),
        )),
        smtp,
        renderer: crate::templates::Renderer::new(),
        templates: crate::store::email_templates::TemplateCache::new(
            crate::store::email_templates::TemplateCache::DEFAULT_TTL,
        ),
        config: config.newsletter.clone(),
        keys: crate::newsletter::token::TokenKey::new(config.newsletter.unsubscribe_secret.clone()),
        bounce_address: config.responses.bounce_address.clone(),
        verp: config.responses.verp,
        unsubscribe_address: config.responses.unsubscribe_address.clone(),
    };
    send_newsletter::register(&mut registry, std::sync::Arc::new(lanes));
    let fetcher = fetch_mail::Fetcher {
        pool: crate::imap::ingest_pool(pool, &config.imap),
        config: config.imap.clone(),
        stats: imap_stats,
    };
    fetch_mail::register(&mut registry, std::sync::Arc::new(fetcher));
    let processor = process_incoming_email::Processor {
        stats: mail_stats_for_processing,
        ..process_incoming_email::Processor::new(pool, config)
    };
    process_incoming_email::register(&mut registry, std::sync::Arc::new(processor));
    apply_retention::register(
        &mut registry,
        std::sync::Arc::new(apply_retention::Retention {
            pool: pool.clone(),
            batching: crate::store::retention::Batching::default(),
        }),
    );
    recompute_leaderboards::register(&mut registry, pool.clone());
    expire_sessions::register(&mut registry, pool.clone());
    let images = std::sync::Arc::new(upload_image::Images::new(pool, &config.images));
    upload_image::register(&mut registry, images.clone());
    cleanup_images::register(&mut registry, images);
    registry
}

/// Our own addresses (SMTP From, IMAP accounts, the bounce and
/// unsubscribe bases) and Message-ID domains: mail from them is never
/// answered automatically.
pub fn our_identity(config: &Config) -> crate::autoreply::Us {
    let mut us = crate::autoreply::Us::default();
    for smtp in config.mail.all() {
        if let Ok(mailbox) = smtp.from.parse::<lettre::message::Mailbox>() {
            us.addresses
                .push(mailbox.email.to_string().to_ascii_lowercase());
            us.domains.push(mailbox.email.domain().to_ascii_lowercase());
        }
        us.addresses.push(crate::smtp::bounce_base(
            smtp,
            config.responses.bounce_address.as_deref(),
        ));
    }
    us.addresses.extend(
        config
            .imap
            .accounts
            .iter()
            .filter_map(|a| a.address.clone()),
    );
    us.addresses
        .extend(config.responses.unsubscribe_address.clone());
    us.addresses.sort();
    us.addresses.dedup();
    us.domains.sort();
    us.domains.dedup();
    us
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A kind declared but neither handled nor listed as not yet handled, or
    /// handled but not declared (the scheduler would reject its rows), fails
    /// here, not in production.
    #[tokio::test]
    async fn catalog_and_registry_name_the_same_kinds() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let config = Config::from_lookup(|_| None).unwrap();
        let handled: BTreeSet<&str> = registry(&pool, &config).kinds().into_iter().collect();
        let declared: BTreeSet<&str> = dkl_shared::kinds::catalog().kinds().into_iter().collect();
        let pending: BTreeSet<&str> = NOT_YET_HANDLED.iter().copied().collect();

        let undeclared: Vec<_> = handled.difference(&declared).collect();
        assert!(
            undeclared.is_empty(),
            "handled but not in kinds::catalog(): {undeclared:?}"
        );
        let unhandled: Vec<_> = declared
            .difference(&handled)
            .filter(|k| !pending.contains(*k))
            .collect();
        assert!(
            unhandled.is_empty(),
            "declared but neither handled nor in NOT_YET_HANDLED: {unhandled:?}"
        );
        let stale: Vec<_> = pending
            .iter()
            .filter(|k| handled.contains(*k) || !declared.contains(*k))
            .collect();
        assert!(
            stale.is_empty(),
            "NOT_YET_HANDLED names kinds that are handled or unknown: {stale:?}"
        );
    }

    /// A queue of the registry that DKL_QUEUE_CONCURRENCY does not know would
    /// run at concurrency 1 with a warning; the defaults cover every kind.
    #[tokio::test]
    async fn every_handled_kind_runs_on_a_configured_queue() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let config = Config::from_lookup(|_| None).unwrap();
        let registry = registry(&pool, &config);
        for kind in registry.kinds() {
            let queue = registry.queue_of(kind).unwrap();
            assert!(
                config.jobs.queue_concurrency.contains_key(queue),
                "{kind} runs on unconfigured queue {queue}"
            );
        }
    }
}
