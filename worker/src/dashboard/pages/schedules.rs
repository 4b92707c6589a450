//! Schedules (`job_schedules`) and admin rows (`scheduled_jobs`): next and
//! last run, last error; pause, resume and run-now; cancel a pending row.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use dkl_shared::kinds;
use dkl_shared::schedules::store::{self, ScheduledJobStatus};

use super::overview::NoticeQuery;
use crate::dashboard::web::{self, App, ClientIp, Layout, PageError, PageResult, Viewer};

struct ScheduleRow {
    name: String,
    cron: String,
    time_zone: String,
    kind: String,
    enabled: bool,
    next_run: String,
    last_run: String,
    last_job: Option<String>,
    last_error: Option<String>,
    note: String,
}

struct AdminRow {
    id: String,
    kind: String,
    run_at: String,
    created_by: String,
    status: String,
    job_id: Option<String>,
    why: String,
    pending: bool,
}

#[derive(Template)]
#[template(path = "dashboard/schedules.html")]
struct SchedulesPage {
    layout: Layout,
    schedules: Vec<ScheduleRow>,
    rows: Vec<AdminRow>,
}

/// `GET /dashboard/schedules`.
pub async fn list(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let schedules = store::all_schedules(&app.pool)
        .await?
        .into_iter()
        .map(|s| ScheduleRow {
            next_run: match (s.enabled, s.next_run_at) {
                (false, _) => "paused".into(),
                (true, Some(t)) => format!("{} ({})", web::stamp(t), web::ago(t)),
                (true, None) => "next tick after now".into(),
            },
            last_run: s.last_run_at.map_or_else(|| "never".into(), web::ago),
            name: s.name,
            cron: s.cron,
            time_zone: s.time_zone,
            kind: s.job_kind,
            enabled: s.enabled,
            last_job: s.last_job_id,
            last_error: s.last_error,
            note: s.note.unwrap_or_default(),
        })
        .collect();
    let rows = store::recent_scheduled_jobs(&app.pool, 50)
        .await?
        .into_iter()
        .map(|r| AdminRow {
            id: r.id.to_string(),
            kind: r.job_kind,
            run_at: format!("{} ({})", web::stamp(r.run_at), web::ago(r.run_at)),
            created_by: r.created_by,
            pending: r.status == ScheduledJobStatus::Pending,
            status: r.status.to_string(),
            job_id: r.job_id,
            why: r.rejected_reason.or(r.note).unwrap_or_default(),
        })
        .collect();
    web::render(&SchedulesPage {
        layout: Layout::new("Schedules", "schedules", &op, q.notice),
        schedules,
        rows,
    })
}

/// What may be done to a schedule.
#[derive(Debug, Clone, Copy)]
enum Action {
    Pause,
    Resume,
    RunNow,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "run-now" => Self::RunNow,
            _ => return None,
        })
    }

    fn audit_name(self) -> &'static str {
        match self {
            Self::Pause => "schedule.pause",
            Self::Resume => "schedule.resume",
            Self::RunNow => "schedule.run_now",
        }
    }
}

/// `POST /dashboard/schedules/{name}/{pause|resume|run-now}`.
pub async fn act(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let Some(action) = Action::parse(&action) else {
        return Err(PageError::NotFound(format!(
            "no schedule action `{action}`"
        )));
    };
    let done = match web::authorize(&app, &headers, ip, &form, action.audit_name(), &name).await {
        Ok(done) => done,
        Err(refused) => return Ok(refused),
    };
    let result = match action {
        Action::Pause | Action::Resume => {
            let enabled = matches!(action, Action::Resume);
            match store::set_enabled(&app.pool, &name, enabled).await {
                Ok(true) if enabled => Ok(format!(
                    "Schedule {name} resumed; it ticks from its next time after now."
                )),
                Ok(true) => Ok(format!("Schedule {name} paused.")),
                Ok(false) => Err(format!("No schedule named {name}.")),
                Err(e) => Err(format!("Schedule {name} not changed: {e}")),
            }
        }
        Action::RunNow => {
            let by = format!("{} (dashboard)", done.op.actor);
            dkl_shared::schedules::run_now(&app.pool, &kinds::catalog(), &name, &by)
                .await
                .map(|job| format!("Schedule {name} enqueued job {job}."))
                .map_err(|e| format!("Schedule {name} not run: {e}"))
        }
    };
    Ok(web::finish(&app, &done, result, "/dashboard/schedules").await)
}

/// `POST /dashboard/scheduled-jobs/{id}/cancel`: a pending admin row.
pub async fn cancel_row(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    const ACTION: &str = "scheduled_job.cancel";
    let row_id: uuid::Uuid = id
        .parse()
        .map_err(|_| PageError::BadRequest(format!("`{id}` is not an admin row id (a UUID)")))?;
    let done = match web::authorize(&app, &headers, ip, &form, ACTION, &id).await {
        Ok(done) => done,
        Err(refused) => return Ok(refused),
    };
    let cancelled = async {
        let mut conn = app.pool.acquire().await?;
        store::cancel_scheduled_job(&mut conn, row_id).await
    };
    let result = match cancelled.await {
        Err(e) => Err(format!("Admin row {id} not cancelled: {e}")),
        Ok(None) => Err(format!("No admin row {id}.")),
        Ok(Some(row)) if row.status == ScheduledJobStatus::Cancelled => {
            Ok(format!("Admin row {id} cancelled; it will not run."))
        }
        Ok(Some(row)) => Err(match row.job_id {
            Some(job) => {
                format!("Admin row {id} was already enqueued as job {job}; cancel the job instead.")
            }
            None => format!(
                "Admin row {id} is {}; only pending rows can be cancelled.",
                row.status
            ),
        }),
    };
    Ok(web::finish(&app, &done, result, "/dashboard/schedules").await)
}
