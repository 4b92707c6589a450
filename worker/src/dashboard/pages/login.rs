//! Logging in and out.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::dashboard::web::{self, App, ClientIp, PageError};
use crate::dashboard::{SESSION_LASTS, auth};
use crate::store::dashboard::{self as store, Outcome};

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    error: Option<String>,
}

/// The login form (the overview when already logged in).
pub async fn form(State(app): State<App>, headers: HeaderMap) -> Result<Response, PageError> {
    if web::operator(&app, &headers).await?.is_some() {
        return Ok(Redirect::to("/dashboard").into_response());
    }
    web::render(&LoginPage { error: None })
}

/// What the login form sends.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    secret: String,
    #[serde(default)]
    name: String,
}

/// Checks the secret; opens a session or answers 401. Each failed try from
/// an address makes its next try wait longer (up to 8 s).
pub async fn login(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let actor = actor_name(&form.name);
    if !web::same_origin(&headers) {
        web::record(
            &app,
            &actor,
            "login",
            None,
            Outcome::Refused,
            "cross-site login form",
            ip,
        )
        .await;
        return Ok((
            StatusCode::FORBIDDEN,
            Html(web::plain_page(
                "Refused",
                "The login came from another site.",
            )),
        )
            .into_response());
    }
    let Some(attempt) = app.throttle.attempt(ip.0) else {
        tracing::warn!(ip = %ip.0, "dashboard: login refused, tries from this address are already being checked");
        let why =
            "Too many login tries at once from this address; wait for the first to be answered.";
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "8")],
            Html(web::plain_page("Too many tries", why)),
        )
            .into_response());
    };
    if !attempt.wait.is_zero() {
        tokio::time::sleep(attempt.wait).await;
    }
    let Some(kind) = app.logins.check(&form.secret).await else {
        let next = app.throttle.next_wait(ip.0);
        tracing::warn!(ip = %ip.0, actor = %actor, "dashboard: login refused (wrong token or password)");
        web::record(
            &app,
            &actor,
            "login",
            None,
            Outcome::Refused,
            "wrong token or password",
            ip,
        )
        .await;
        let page = LoginPage {
            error: Some(format!(
                "Wrong token or password. The next try from this address waits {:.1} s.",
                next.as_secs_f64()
            )),
        };
        return Ok((StatusCode::UNAUTHORIZED, Html(page.render()?)).into_response());
    };
    let actor = format!("{actor} ({})", kind.as_str());
    let session = auth::new_secret();
    let csrf = auth::new_secret();
    let credential = app.logins.fingerprint(kind).unwrap_or_default();
    let new = store::NewSession {
        id_sha256: &auth::session_digest(&session),
        actor: &actor,
        csrf_token: &csrf,
        credential: &credential,
        ip: Some(ip.0),
        lasts: SESSION_LASTS,
    };
    store::create_session(&app.pool, &new).await?;
    app.throttle.succeeded(ip.0);
    tracing::info!(ip = %ip.0, actor = %actor, "dashboard: logged in");
    web::record(&app, &actor, "login", None, Outcome::Ok, "logged in", ip).await;
    let cookie = auth::session_cookie(Some(&session), app.secure_cookie, SESSION_LASTS);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/dashboard")).into_response())
}

/// Ends the session.
pub async fn logout(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let done = match web::authorize(&app, &headers, ip, &form, "logout", "session").await {
        Ok(done) => done,
        Err(refused) => return Ok(refused),
    };
    let result = store::end_session(&app.pool, &done.op.session)
        .await
        .map(|()| "Logged out.".to_string())
        .map_err(|e| format!("Could not end the session: {e}"));
    let ended = result.is_ok();
    let back = web::finish(&app, &done, result, "/dashboard/login").await;
    if !ended {
        return Ok(back);
    }
    let cookie = auth::session_cookie(None, app.secure_cookie, SESSION_LASTS);
    Ok(([(header::SET_COOKIE, cookie)], back).into_response())
}

/// The name given at login, as the audit trail shows it.
fn actor_name(given: &str) -> String {
    let name: String = given.chars().filter(|c| !c.is_control()).take(64).collect();
    let name = name.trim();
    if name.is_empty() {
        "admin".into()
    } else {
        name.into()
    }
}
