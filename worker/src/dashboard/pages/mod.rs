//! The dashboard's routes, one file per page family. Pages are `GET`;
//! everything that changes something is a `POST` to `…/{action}`.

mod audit;
mod jobs;
mod login;
mod mail;
mod newsletters;
mod overview;
mod schedules;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::web::App;

/// Every route under `/dashboard`.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/dashboard", get(overview::page))
        .route("/dashboard/", get(overview::page))
        .route("/dashboard/static/dashboard.css", get(stylesheet))
        .route("/dashboard/login", get(login::form).post(login::login))
        .route("/dashboard/logout", post(login::logout))
        .route("/dashboard/jobs", get(jobs::list))
        .route("/dashboard/jobs/{id}", get(jobs::show))
        .route("/dashboard/jobs/{id}/{action}", post(jobs::act))
        .route("/dashboard/schedules", get(schedules::list))
        .route("/dashboard/schedules/{name}/{action}", post(schedules::act))
        .route(
            "/dashboard/scheduled-jobs/{id}/cancel",
            post(schedules::cancel_row),
        )
        .route("/dashboard/newsletters", get(newsletters::list))
        .route("/dashboard/newsletters/{id}", get(newsletters::show))
        .route(
            "/dashboard/newsletters/{id}/{action}",
            post(newsletters::act),
        )
        .route("/dashboard/mail", get(mail::send_log))
        .route("/dashboard/mail/inbox", get(mail::inbox))
        .route("/dashboard/mail/bounces", get(mail::bounces))
        .route("/dashboard/mail/messages/{id}", get(mail::message))
        .route("/dashboard/audit", get(audit::list))
}

/// The one stylesheet, from the binary.
async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../templates/dashboard/dashboard.css"),
    )
}
