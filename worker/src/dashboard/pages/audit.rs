//! The audit trail: every login and action, newest first.

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::dashboard::web::{self, App, Layout, PageResult, Viewer};
use crate::store::dashboard::{self as store, AuditRow};

const PAGE: i64 = 100;

/// `?before=` (the next page).
#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "dashboard/audit.html")]
struct AuditPage {
    layout: Layout,
    rows: Vec<AuditRow>,
    next: Option<i64>,
}

/// `GET /dashboard/audit`.
pub async fn list(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<AuditQuery>,
) -> PageResult {
    let rows = store::recent_audit(&app.pool, q.before, PAGE).await?;
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    web::render(&AuditPage {
        layout: Layout::new("Audit trail", "audit", &op, None),
        rows,
        next,
    })
}
