//! Request plumbing shared by every page: who is asking (session cookie),
//! whether an action may run (CSRF token, same origin), the audit line each
//! action writes, security headers, and how pages and errors are answered.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};

use super::auth;
use super::{Dashboard, SESSION_IDLE};
use crate::store::dashboard::{self as store, AuditEntry, Outcome};

/// The state every handler gets.
pub type App = Arc<Dashboard>;

/// A logged-in operator.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Who (as given at login).
    pub actor: String,
    /// The session's CSRF token.
    pub csrf_token: String,
    /// The digest the session is stored under.
    pub session: String,
}

/// The client's address (the listener is served with `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Ok(Self(ip))
    }
}

/// The session of a request, if its cookie names a live one.
pub async fn operator(app: &Dashboard, headers: &HeaderMap) -> Result<Option<Operator>, PageError> {
    let Some(id) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| auth::cookie_value(h, auth::COOKIE))
        .filter(|id| !id.is_empty())
    else {
        return Ok(None);
    };
    let session = auth::session_digest(id);
    let found = store::session(
        &app.pool,
        &session,
        &app.logins.fingerprints(),
        SESSION_IDLE,
    )
    .await?;
    Ok(found.map(|s| Operator {
        actor: s.actor,
        csrf_token: s.csrf_token,
        session,
    }))
}

/// A page's viewer: logged in, or sent to the login page.
pub struct Viewer(pub Operator);

impl FromRequestParts<App> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        match operator(app, &parts.headers).await {
            Ok(Some(op)) => Ok(Self(op)),
            Ok(None) => Err(Redirect::to("/dashboard/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// True unless the request says it comes from another site: browsers send
/// `Origin` on every POST and `Sec-Fetch-Site` on every request.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match (value("origin"), value("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
    }
}

/// An action that passed [`authorize`]: who asked, and the audit line
/// written (`started`) before it runs.
pub struct Authorized {
    /// Who.
    pub op: Operator,
    audit_id: i64,
    ip: ClientIp,
}

/// What an action may change: the operator, once the session, its CSRF
/// token and the origin are checked, and once its audit line is written
/// (no line, no action: 503). A refusal is answered with 401 (no session;
/// logged, not audited, so anonymous requests cannot fill the table) or
/// 403 (audited).
pub async fn authorize(
    app: &Dashboard,
    headers: &HeaderMap,
    ip: ClientIp,
    form: &HashMap<String, String>,
    action: &str,
    target: &str,
) -> Result<Authorized, Response> {
    let refuse = async |actor: &str, status: StatusCode, why: &str| {
        record(app, actor, action, Some(target), Outcome::Refused, why, ip).await;
        (status, Html(plain_page("Refused", why))).into_response()
    };
    let op = match operator(app, headers).await {
        Ok(Some(op)) => op,
        Ok(None) => {
            tracing::warn!(ip = %ip.0, action, target, "dashboard: action refused, not logged in");
            let why = "Not logged in: log in at /dashboard/login first.";
            return Err(
                (StatusCode::UNAUTHORIZED, Html(plain_page("Refused", why))).into_response()
            );
        }
        Err(e) => return Err(e.into_response()),
    };
    let csrf_ok = form
        .get("csrf")
        .is_some_and(|given| auth::same_secret(given, &op.csrf_token));
    if !csrf_ok {
        return Err(refuse(
            &op.actor,
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        )
        .await);
    }
    if !same_origin(headers) {
        return Err(refuse(
            &op.actor,
            StatusCode::FORBIDDEN,
            "The request came from another site.",
        )
        .await);
    }
    let entry = AuditEntry {
        actor: &op.actor,
        action,
        target: Some(target),
        outcome: Outcome::Started,
        details: serde_json::json!({}),
        ip: Some(ip.0),
    };
    match store::audit(&app.pool, &entry).await {
        Ok(audit_id) => Ok(Authorized { op, audit_id, ip }),
        Err(e) => {
            tracing::error!(error = %e, action, "dashboard: cannot write the audit trail; action not done");
            let why =
                "The audit trail cannot be written (database), so nothing was done; try again.";
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                Html(plain_page("Not done", why)),
            )
                .into_response())
        }
    }
}

/// Sets the action's audit line to its outcome and sends the operator back
/// to `back` with a notice saying what happened.
pub async fn finish(
    app: &Dashboard,
    done: &Authorized,
    result: Result<String, String>,
    back: &str,
) -> Response {
    let (outcome, message) = match result {
        Ok(m) => (Outcome::Ok, m),
        Err(m) => (Outcome::Failed, m),
    };
    let details = serde_json::json!({ "message": message });
    if let Err(e) = store::audit_outcome(&app.pool, done.audit_id, outcome, &details).await {
        tracing::error!(error = %e, audit_id = done.audit_id, ip = %done.ip.0, "dashboard: cannot record an action's outcome (its audit line stays `started`)");
    }
    let query = serde_urlencoded::to_string([("notice", message.as_str())]).unwrap_or_default();
    Redirect::to(&format!("{back}?{query}")).into_response()
}

/// Writes an audit line; a failure to write it is logged, not shown.
pub async fn record(
    app: &Dashboard,
    actor: &str,
    action: &str,
    target: Option<&str>,
    outcome: Outcome,
    message: &str,
    ip: ClientIp,
) {
    let entry = AuditEntry {
        actor,
        action,
        target,
        outcome,
        details: serde_json::json!({ "message": message }),
        ip: Some(ip.0),
    };
    if let Err(e) = store::audit(&app.pool, &entry).await {
        tracing::error!(error = %e, action, "dashboard: cannot write the audit trail");
    }
}

/// What every dashboard page starts with.
pub struct Layout {
    /// The page's title.
    pub title: String,
    /// Which menu entry is current.
    pub nav: &'static str,
    /// Who is logged in.
    pub actor: String,
    /// The CSRF token the page's forms send.
    pub csrf: String,
    /// What the last action did.
    pub notice: Option<String>,
}

impl Layout {
    /// The layout of a page for `op`.
    pub fn new(
        title: impl Into<String>,
        nav: &'static str,
        op: &Operator,
        notice: Option<String>,
    ) -> Self {
        Self {
            title: title.into(),
            nav,
            actor: op.actor.clone(),
            csrf: op.csrf_token.clone(),
            notice: notice.filter(|n| !n.is_empty()),
        }
    }
}

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The database failed or timed out.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// No such row.
    #[error("{0}")]
    NotFound(String),
    /// A filter or id that makes no sense.
    #[error("{0}")]
    BadRequest(String),
    /// A template failed to render.
    #[error("template: {0}")]
    Template(#[from] askama::Error),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Database(_) | Self::Template(_) => {
                tracing::error!(error = %self, "dashboard page failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Html(plain_page("Error", &self.to_string()))).into_response()
    }
}

/// A page's answer.
pub type PageResult = Result<Response, PageError>;

/// Renders a template as the answer.
pub fn render(page: &impl Template) -> PageResult {
    Ok(Html(page.render()?).into_response())
}

/// A page of one message, for refusals and errors (no layout, no session).
pub fn plain_page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t}</title><link rel=\"stylesheet\" href=\"/dashboard/static/dashboard.css\"></head><body><main><h1>{t}</h1><p class=\"error\" role=\"alert\">{m}</p><p><a href=\"/dashboard\">Dashboard</a></p></main></body></html>",
        t = ammonia::clean_text(title),
        m = ammonia::clean_text(message)
    )
}

/// Headers on every dashboard answer: no script, no framing by others, no
/// caching of pages that show mail, no referrer leaking ids to other sites.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
         frame-src 'self'; frame-ancestors 'self'; base-uri 'none'",
    );
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "SAMEORIGIN");
    // Not `no-referrer`: with it browsers send `Origin: null` on our own form
    // posts, and the origin check refuses them.
    set(headers, "referrer-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

/// `2026-11-30 21:04:05 UTC`.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or a dash.
pub fn stamp_opt(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "–".into(), stamp)
}

/// How long ago (or from now) `t` is: `42s ago`, `in 3m`, `2h ago`, `5d ago`.
pub fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    let span = duration(secs.unsigned_abs() as f64);
    if secs >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// Seconds as `42s`, `3m 5s`, `2h 10m`, `5d 3h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// An empty query value is no filter.
pub fn filter_value(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
