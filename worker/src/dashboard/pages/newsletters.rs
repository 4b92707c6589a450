//! Newsletters: progress by delivery state, rate and time left; pause,
//! resume and cancel.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use uuid::Uuid;

use super::overview::NoticeQuery;
use crate::dashboard::chart;
use crate::dashboard::web::{self, App, ClientIp, Layout, PageError, PageResult, Viewer};
use crate::store::newsletters::{self, NewsletterStatus, Progress};

/// A newsletter's progress as the pages show it.
pub struct ProgressRow {
    pub(super) id: Uuid,
    pub(super) title: String,
    pub(super) status: &'static str,
    pub(super) total: i64,
    pub(super) pending: i64,
    pub(super) in_flight: i64,
    pub(super) sent: i64,
    pub(super) failed: i64,
    pub(super) skipped: i64,
    pub(super) unknown: i64,
    pub(super) cancelled: i64,
    /// The bar by delivery state (SVG).
    pub(super) bar: String,
    pub(super) rate: String,
    pub(super) eta: String,
    pub(super) when: String,
    pub(super) can_pause: bool,
    pub(super) can_resume: bool,
    pub(super) can_cancel: bool,
}

impl From<Progress> for ProgressRow {
    fn from(p: Progress) -> Self {
        let bar = chart::progress_bar(
            &format!("{} of {} sent", p.sent, p.total),
            p.total,
            &[
                ("sent", "#2e7d32", p.sent),
                ("failed", "#c62828", p.failed),
                ("skipped", "#6a4fb3", p.skipped),
                ("unknown", "#b26a00", p.unknown),
                ("cancelled", "#9e9e9e", p.cancelled),
                ("in flight", "#0b5cad", p.in_flight),
            ],
        );
        let when = match (p.sent_at, p.started_at, p.scheduled_send_time) {
            (Some(t), _, _) => format!("finished {}", web::ago(t)),
            (None, Some(t), _) => format!("started {}", web::ago(t)),
            (None, None, Some(t)) => format!("goes out {}", web::ago(t)),
            _ => String::new(),
        };
        let status = p.status;
        Self {
            id: p.newsletter_id,
            title: p.title,
            status: status.as_str(),
            total: p.total,
            pending: p.pending,
            in_flight: p.in_flight,
            sent: p.sent,
            failed: p.failed,
            skipped: p.skipped,
            unknown: p.unknown,
            cancelled: p.cancelled,
            bar,
            rate: format!("{:.1}/s", p.per_second),
            eta: p.eta_secs.map_or_else(|| "–".into(), web::duration),
            when,
            // A scheduled one is cancelled, or unscheduled by an admin
            // (`dklctl newsletter`); only one going out can pause.
            can_pause: status == NewsletterStatus::Sending,
            can_resume: status == NewsletterStatus::Paused,
            can_cancel: matches!(
                status,
                NewsletterStatus::Sending | NewsletterStatus::Scheduled | NewsletterStatus::Paused
            ),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/newsletters.html")]
struct ListPage {
    layout: Layout,
    progress: Vec<ProgressRow>,
}

/// `GET /dashboard/newsletters`.
pub async fn list(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    // Each row counts its deliveries: the newest 20 only.
    let rows = newsletters::progress_list(&app.pool, false, 20).await?;
    web::render(&ListPage {
        layout: Layout::new("Newsletters", "newsletters", &op, q.notice),
        progress: rows.into_iter().map(ProgressRow::from).collect(),
    })
}

#[derive(Template)]
#[template(path = "dashboard/newsletter.html")]
struct ShowPage {
    layout: Layout,
    progress: Vec<ProgressRow>,
    content: String,
}

/// `GET /dashboard/newsletters/{id}`.
pub async fn show(
    State(app): State<App>,
    Viewer(op): Viewer,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let id = parse_id(&id)?;
    let (Some(progress), Some(letter)) = (
        newsletters::progress(&app.pool, id).await?,
        newsletters::get(&app.pool, id).await?,
    ) else {
        return Err(PageError::NotFound(format!("no newsletter {id}")));
    };
    web::render(&ShowPage {
        layout: Layout::new(
            format!("Newsletter: {}", letter.title),
            "newsletters",
            &op,
            q.notice,
        ),
        progress: vec![ProgressRow::from(progress)],
        content: letter.content,
    })
}

/// What may be done to a newsletter.
#[derive(Debug, Clone, Copy)]
enum Action {
    Pause,
    Resume,
    Cancel,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }

    fn audit_name(self) -> &'static str {
        match self {
            Self::Pause => "newsletter.pause",
            Self::Resume => "newsletter.resume",
            Self::Cancel => "newsletter.cancel",
        }
    }
}

/// `POST /dashboard/newsletters/{id}/{pause|resume|cancel}`.
pub async fn act(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let Some(action) = Action::parse(&action) else {
        return Err(PageError::NotFound(format!(
            "no newsletter action `{action}`"
        )));
    };
    let id = parse_id(&id)?;
    let done = match web::authorize(
        &app,
        &headers,
        ip,
        &form,
        action.audit_name(),
        &id.to_string(),
    )
    .await
    {
        Ok(done) => done,
        Err(refused) => return Ok(refused),
    };
    let (status, what) = match action {
        Action::Pause => (
            NewsletterStatus::Paused,
            "paused; resume goes on where it stopped",
        ),
        Action::Resume => (NewsletterStatus::Sending, "resumed"),
        Action::Cancel => (
            NewsletterStatus::Cancelled,
            "cancelled; recipients not yet sent to are marked cancelled",
        ),
    };
    let result = match newsletters::set_status(&app.pool, id, status).await {
        Ok(true) => Ok(format!("Newsletter {what}.")),
        Ok(false) => Err(format!("No newsletter {id}.")),
        // The table's trigger names what is not allowed (e.g. resuming a sent one).
        Err(sqlx::Error::Database(e)) => Err(format!("Not done: {}", e.message())),
        Err(e) => Err(format!("Not done: {e}")),
    };
    let back = format!("/dashboard/newsletters/{id}");
    Ok(web::finish(&app, &done, result, &back).await)
}

fn parse_id(id: &str) -> Result<Uuid, PageError> {
    id.parse()
        .map_err(|_| PageError::BadRequest(format!("`{id}` is not a newsletter id (a UUID)")))
}
