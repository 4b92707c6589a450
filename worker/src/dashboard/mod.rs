//! The operator dashboard, served under `/dashboard` by dkl-worker's HTTP
//! listener (`DKL_HTTP_ADDR`, loopback by default).
//!
//! # Quick start
//!
//! ```text
//! DKL_DASHBOARD_TOKEN=$(openssl rand -hex 24) dkl-worker
//! # open http://127.0.0.1:9464/dashboard and log in with the token
//! ```
//!
//! Server-rendered HTML ([askama] templates in `worker/templates/dashboard`),
//! one stylesheet and no JavaScript, all served from the binary. Charts are
//! SVG drawn here ([`chart`]). Pages: overview, jobs (and one job), schedules
//! and admin rows, newsletters, mail (send log, inbox, bounces and
//! suppressions, one message) and the audit trail.
//!
//! # Safety
//!
//! - A login (the admin token or the password of `DKL_DASHBOARD_PASSWORD_HASH`)
//!   opens a session; its cookie is `HttpOnly`, `SameSite=Strict`, limited
//!   to `/dashboard`, and `Secure` unless the listener is on loopback.
//!   Wrong secrets get 401 and each further try from that address waits
//!   longer ([`auth::Throttle`]). A session ends after 12 h, after 2 h
//!   unused, or as soon as the secret it logged in with is changed.
//! - Every action is a `POST` carrying the session's CSRF token, from a page
//!   of the same origin (`Origin`/`Sec-Fetch-Site` checked); `GET` never
//!   changes anything. Every login and action, allowed or not, is a row of
//!   `dashboard_audit`.
//! - A strict Content-Security-Policy (no script at all); a message's HTML
//!   (already sanitised at ingest) is shown in a sandboxed frame without
//!   scripts.
//! - Pages read through a pool of their own ([`dkl_shared::db::dashboard_pool`])
//!   with a statement timeout, so the dashboard never takes a job's connection.

pub mod auth;
mod chart;
mod pages;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use dkl_shared::config::DashboardConfig;
use dkl_shared::jobs::RuntimeStats;
use sqlx::PgPool;

/// How long a login lasts at most.
pub const SESSION_LASTS: Duration = Duration::from_secs(12 * 3600);

/// A login not used for this long is over.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);

/// What the dashboard needs.
pub struct Dashboard {
    /// Its own small pool.
    pub pool: PgPool,
    /// Who may log in.
    logins: auth::Logins,
    /// Failed logins per address.
    throttle: auth::Throttle,
    /// Whether the cookie is sent with `Secure`.
    secure_cookie: bool,
    /// The runtime's queues (shown even while empty).
    stats: Arc<RuntimeStats>,
}

impl Dashboard {
    /// The dashboard for a listener on `listen`; `None` when no login is
    /// configured (then `/dashboard` is not served at all).
    pub fn new(
        config: &DashboardConfig,
        pool: PgPool,
        stats: Arc<RuntimeStats>,
        listen: SocketAddr,
    ) -> Option<Self> {
        if !config.enabled() {
            return None;
        }
        Some(Self {
            pool,
            logins: auth::Logins::new(config),
            throttle: auth::Throttle::default(),
            secure_cookie: config.secure_cookie.unwrap_or(!listen.ip().is_loopback()),
            stats,
        })
    }
}

/// The routes under `/dashboard`, to merge into the worker's listener
/// (which must be served with `ConnectInfo<SocketAddr>`).
pub fn router(dashboard: Arc<Dashboard>) -> Router {
    pages::routes()
        .layer(axum::middleware::map_response(web::security_headers))
        .with_state(dashboard)
}
