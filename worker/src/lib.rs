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
//! - [`http`]: `/healthz` and `/metrics`, [`metrics`] their text format;
//! - [`store`]: data access per table family;
//! - [`smtp`] and [`templates`]: mail out; [`imap`] and [`mime`]: mail in;
//!   [`import`]: `.eml`, Maildir and mbox files stored as if fetched;
//! - [`images`]: signed uploads to and deletions from a Cloudinary-compatible
//!   image store;
//! - [`newsletter`]: newsletters sent once per recipient, and
//!   [`unsubscribe`]: the one-click unsubscribe pages.

pub mod address;
pub mod autoreply;
pub mod bounce;
pub mod dashboard;
pub mod handlers;
pub mod http;
pub mod images;
pub mod imap;
pub mod import;
pub mod metrics;
pub mod mime;
pub mod newsletter;
pub mod smtp;
pub mod store;
pub mod templates;
pub mod unsubscribe;
