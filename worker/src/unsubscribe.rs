//! `/unsubscribe/{token}`: the links in every newsletter (RFC 8058).
//!
//! - `POST` unsubscribes at once: one click from the mail program's
//!   "Unsubscribe" button (body `List-Unsubscribe=One-Click`) or from the
//!   page's button. No cookie, no redirect. It sets
//!   `gebruikers.newsletter_subscribed = false` and records an `unsubscribe`
//!   suppression of scope `bulk`, and answers 200 with a short page.
//! - `GET` only shows a page with that button: mail scanners follow links,
//!   and a link that unsubscribed by itself would unsubscribe people who
//!   never asked.
//!
//! A forged, altered, cut-off or expired token changes nothing and gets a
//! 4xx page that says why.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::newsletter::token::{Subject, TokenError, TokenKey, today};
use crate::store::newsletters;

/// What the pages need.
pub struct Unsubscribe {
    /// The database.
    pub pool: PgPool,
    /// The token key.
    pub keys: TokenKey,
}

/// The routes, to merge into the worker's HTTP listener.
pub fn router(state: Arc<Unsubscribe>) -> Router {
    Router::new()
        .route("/unsubscribe/{token}", get(show).post(confirm))
        .with_state(state)
}

async fn show(State(app): State<Arc<Unsubscribe>>, Path(token): Path<String>) -> Response {
    match check(&app, &token).await {
        Ok(_) => page(
            StatusCode::OK,
            "Afmelden voor de nieuwsbrief",
            "Wil je de nieuwsbrief van De Koninklijke Loop niet meer ontvangen? \
             Klik op de knop; je kunt je later altijd opnieuw aanmelden.",
            true,
        ),
        Err(response) => response,
    }
}

async fn confirm(State(app): State<Arc<Unsubscribe>>, Path(token): Path<String>) -> Response {
    let subject = match check(&app, &token).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    let (gebruiker, address) = match &subject {
        Subject::Gebruiker(id) => (Some(*id), String::new()),
        Subject::Address(a) => (None, a.clone()),
    };
    let done = async {
        let mut conn = app.pool.acquire().await?;
        newsletters::unsubscribe(&mut conn, gebruiker, &address, "list-unsubscribe").await
    };
    match done.await {
        Ok(Some(address)) => {
            tracing::info!(recipient_domain = %address.rsplit('@').next().unwrap_or(""), "unsubscribed from the newsletter");
            page(
                StatusCode::OK,
                "Je bent afgemeld",
                "Je ontvangt de nieuwsbrief van De Koninklijke Loop niet meer. \
                 Berichten over je eigen inschrijving blijven komen.",
                false,
            )
        }
        Ok(None) => page(
            StatusCode::OK,
            "Geen aanmelding gevonden",
            "Bij deze link hoort geen account meer; je ontvangt de nieuwsbrief niet.",
            false,
        ),
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe: database error");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Even niet beschikbaar",
                "Afmelden lukt nu niet. Probeer het over een paar minuten opnieuw.",
                false,
            )
        }
    }
}

/// The token's subject, or the page that refuses it.
async fn check(app: &Unsubscribe, token: &str) -> Result<Subject, Response> {
    let signer = app.keys.signer(&app.pool).await.map_err(|e| {
        tracing::error!(error = %e, "unsubscribe: cannot read the token secret");
        page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Even niet beschikbaar",
            "Afmelden lukt nu niet. Probeer het over een paar minuten opnieuw.",
            false,
        )
    })?;
    signer.verify(token, today()).map_err(|e| {
        let code = match e {
            TokenError::Malformed => StatusCode::BAD_REQUEST,
            TokenError::BadSignature => StatusCode::FORBIDDEN,
            TokenError::Expired => StatusCode::GONE,
        };
        tracing::info!(reason = %e, "unsubscribe link refused");
        page(
            code,
            "Ongeldige afmeldlink",
            &format!("{e}. Deze link werkt niet; gebruik de afmeldlink onderaan een nieuwsbrief."),
            false,
        )
    })
}

fn page(code: StatusCode, title: &str, text: &str, button: bool) -> Response {
    // The form posts to the page's own URL, whatever prefix a proxy adds.
    let form = if button {
        r#"<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click"><button type="submit">Afmelden</button></form>"#
    } else {
        ""
    };
    let body = format!(
        "<!doctype html><html lang=\"nl\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body style=\"font-family:sans-serif;max-width:36em;margin:3em auto\">\
         <h1>{title}</h1><p>{text}</p>{form}</body></html>"
    );
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
