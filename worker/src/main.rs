//! `dkl-worker`: runs every job kind of dkl-mail-worker until SIGTERM, and
//! serves `/healthz` and `/metrics` on `DKL_HTTP_ADDR`.

use std::process::ExitCode;

use anyhow::Context;
use dkl_shared::config::Config;
use dkl_shared::jobs::WorkerRuntime;
use dkl_shared::{db, startup, telemetry};
use dkl_worker::{handlers, http};

#[tokio::main]
async fn main() -> ExitCode {
    startup::run_binary("dkl-worker", run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    dkl_worker::smtp::check_config(&config.mail).map_err(anyhow::Error::msg)?;
    let pool = db::connect_migrated(&config).await?;
    let mail_stats = std::sync::Arc::new(dkl_worker::smtp::stats::MailStats::default());
    let imap_stats = std::sync::Arc::new(dkl_worker::imap::stats::ImapStats::default());
    let registry = handlers::registry_with(&pool, &config, mail_stats.clone(), imap_stats.clone());
    if !handlers::NOT_YET_HANDLED.is_empty() {
        tracing::warn!(kinds = ?handlers::NOT_YET_HANDLED, "no handler in this worker for these known kinds yet; their jobs will be discarded with \"no handler for kind …\"");
    }
    let shutdown = telemetry::shutdown_on_signals();
    // IDLE watchers stop with the runtime; the fetch-mail schedule covers
    // any account without IDLE.
    let watchers = dkl_worker::imap::watch::spawn_all(
        &dkl_worker::imap::ingest_pool(&pool, &config.imap),
        &config.imap,
        imap_stats.clone(),
        shutdown.clone(),
    );
    if !config.imap.accounts.is_empty() {
        tracing::info!(
            accounts = config.imap.accounts.len(),
            idle_watchers = watchers.len(),
            "incoming mail configured"
        );
    }
    let runtime = WorkerRuntime::new(pool.clone(), registry, config.jobs.clone());
    // The listener outlives the runtime's drain, so health checks keep
    // answering while running jobs finish.
    let http_stop = tokio_util::sync::CancellationToken::new();
    let server = match config.http_addr {
        Some(addr) => {
            let monitoring = http::Monitoring {
                pool: db::monitoring_pool(&config),
                stats: runtime.stats(),
                mail: mail_stats,
                imap: imap_stats,
                heartbeat_stale_after: config.jobs.rescue_after,
                config: config.monitor.clone(),
            };
            let unsubscribe = std::sync::Arc::new(dkl_worker::unsubscribe::Unsubscribe {
                pool: db::monitoring_pool(&config),
                keys: dkl_worker::newsletter::token::TokenKey::new(
                    config.newsletter.unsubscribe_secret.clone(),
                ),
            });
            let dashboard = dkl_worker::dashboard::Dashboard::new(
                &config.dashboard,
                db::dashboard_pool(&config),
                runtime.stats(),
                addr,
            )
            .map(std::sync::Arc::new);
            let dashboard_on = dashboard.is_some();
            let pages = http::Pages {
                unsubscribe: Some(unsubscribe),
                dashboard,
            };
            let (bound, server) = http::bind(addr, monitoring, pages).await.with_context(|| {
                format!(
                    "cannot listen on DKL_HTTP_ADDR={addr}; pick a free port or set it to `off`"
                )
            })?;
            tracing::info!(addr = %bound, public_base_url = %config.newsletter.public_base_url, "serving /healthz, /metrics and /unsubscribe");
            if dashboard_on {
                tracing::info!(url = %format!("http://{bound}/dashboard"), "serving the operator dashboard");
            } else {
                tracing::info!(
                    "dashboard off: set DKL_DASHBOARD_TOKEN or DKL_DASHBOARD_PASSWORD_HASH to serve /dashboard"
                );
            }
            Some(tokio::spawn(http::serve_until(server, http_stop.clone())))
        }
        None => None,
    };
    let result = runtime.run(shutdown).await.context("job runtime failed");
    // Watchers stop at once on shutdown (a fetch in progress is dropped;
    // what it committed stays); a stuck one does not hold the exit.
    for watcher in watchers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), watcher).await;
    }
    http_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    result
}
