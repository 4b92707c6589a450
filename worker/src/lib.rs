//! `dkl_worker`: the domain of dkl-mail-worker, and the `dkl-worker` binary
//! that runs it.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn demo(config: dkl_shared::config::Config) -> anyhow::Result<()> {
//! let pool = dkl_shared::db::connect_migrated(&config).await?;
//! let registry = dkl_worker::handlers::registry(&pool, &config);
//! let runtime = dkl_shared::jobs::WorkerRuntime::new(pool, registry, config.jobs.clone());
//! runtime.run(tokio_util::sync::CancellationToken::new()).await?;
//! # Ok(()) }
//! ```
//!
//! - [`handlers`]: one file per job kind, and the registry of them all;
//! - [`http`]: `/healthz` and `/metrics`, [`metrics`] their text format.
//!
//! Data access per table family (`store/`), IMAP, MIME, SMTP and templates
//! join as modules of their own with the mail work (ARCHITECTURE.md).

pub mod address;
pub mod handlers;
pub mod http;
pub mod metrics;
pub mod smtp;
pub mod store;
pub mod templates;
