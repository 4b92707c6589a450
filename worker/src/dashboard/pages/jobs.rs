//! Jobs: a filtered list (newest first, keyset pages), one job in full, and
//! retry, cancel and run-now.

use std::collections::HashMap;

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use dkl_shared::jobs::{JobClient, JobId};
use dkl_shared::monitor::{JobStatus, STATES};
use serde::Deserialize;

use crate::dashboard::web::{self, App, ClientIp, Layout, PageError, PageResult, Viewer};
use crate::store::jobs::{self, JobQuery};

const PAGE: i64 = 50;

/// The list's filters, as the query string carries them.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    queue: Option<String>,
    kind: Option<String>,
    state: Option<String>,
    schedule: Option<String>,
    before: Option<String>,
    notice: Option<String>,
}

struct JobRow {
    id: String,
    kind: String,
    queue: String,
    state: String,
    attempts: String,
    due: String,
    finished: String,
    error: String,
    origin: String,
}

impl From<JobStatus> for JobRow {
    fn from(j: JobStatus) -> Self {
        let origin = origin(&j);
        Self {
            attempts: format!("{}/{}", j.attempts, j.max_attempts),
            due: web::ago(j.run_at),
            finished: j.finished_at.map_or_else(String::new, web::ago),
            error: j
                .last_error
                .map(|e| e.chars().take(160).collect())
                .unwrap_or_default(),
            origin,
            id: j.job_id,
            kind: j.kind,
            queue: j.queue,
            state: j.state,
        }
    }
}

/// Where a job came from: a schedule's tick, an admin row, or neither.
fn origin(j: &JobStatus) -> String {
    match (&j.schedule, j.schedule_tick, j.scheduled_job_id) {
        (Some(s), Some(tick), _) => format!("schedule {s} (tick {})", web::stamp(tick)),
        (Some(s), None, _) => format!("schedule {s}"),
        (None, _, Some(row)) => format!("admin row {row}"),
        _ => "enqueued directly".into(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/jobs.html")]
struct ListPage {
    layout: Layout,
    rows: Vec<JobRow>,
    queues: Vec<String>,
    kinds: Vec<String>,
    schedules: Vec<String>,
    states: &'static [&'static str],
    queue: String,
    kind: String,
    state: String,
    schedule: String,
    next: Option<String>,
}

/// `GET /dashboard/jobs`.
pub async fn list(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let state = web::filter_value(q.state);
    if let Some(s) = &state
        && !STATES.contains(&s.as_str())
    {
        return Err(PageError::BadRequest(format!(
            "no job state `{s}`; one of {}",
            STATES.join(", ")
        )));
    }
    let query = JobQuery {
        queue: web::filter_value(q.queue),
        kind: web::filter_value(q.kind),
        state,
        schedule: web::filter_value(q.schedule),
        before: web::filter_value(q.before),
        limit: PAGE,
    };
    let rows = jobs::page(&app.pool, &query).await?;
    let (kinds, queues) = jobs::kinds_and_queues(&app.pool).await?;
    let schedules = dkl_shared::schedules::store::all_schedules(&app.pool)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let next = (rows.len() as i64 == PAGE).then(|| {
        let last = rows.last().map(|r| r.job_id.clone()).unwrap_or_default();
        serde_urlencoded::to_string([
            ("queue", query.queue.as_deref().unwrap_or("")),
            ("kind", query.kind.as_deref().unwrap_or("")),
            ("state", query.state.as_deref().unwrap_or("")),
            ("schedule", query.schedule.as_deref().unwrap_or("")),
            ("before", last.as_str()),
        ])
        .unwrap_or_default()
    });
    web::render(&ListPage {
        layout: Layout::new("Jobs", "jobs", &op, q.notice),
        rows: rows.into_iter().map(JobRow::from).collect(),
        queues,
        kinds,
        schedules,
        states: STATES,
        queue: query.queue.unwrap_or_default(),
        kind: query.kind.unwrap_or_default(),
        state: query.state.unwrap_or_default(),
        schedule: query.schedule.unwrap_or_default(),
        next,
    })
}

#[derive(Template)]
#[template(path = "dashboard/job.html")]
struct ShowPage {
    layout: Layout,
    id: String,
    row: JobRow,
    facts: Vec<(&'static str, String)>,
    error: Option<String>,
    result: Option<String>,
    payload: String,
    can_retry: bool,
    can_run_now: bool,
    can_cancel: bool,
}

/// `GET /dashboard/jobs/{id}`.
pub async fn show(
    State(app): State<App>,
    Viewer(op): Viewer,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let Some((status, extras)) = jobs::job(&app.pool, &id).await? else {
        return Err(PageError::NotFound(format!(
            "no job {id} (finished jobs are pruned after their retention age)"
        )));
    };
    let state = status.state.clone();
    let facts = vec![
        ("Kind", status.kind.clone()),
        ("Queue", status.queue.clone()),
        ("State", state.clone()),
        (
            "Attempts",
            format!("{} of {}", status.attempts, status.max_attempts),
        ),
        (
            "Due",
            format!(
                "{} ({})",
                web::stamp(status.run_at),
                web::ago(status.run_at)
            ),
        ),
        ("Latest attempt started", web::stamp_opt(status.started_at)),
        ("Finished", web::stamp_opt(status.finished_at)),
        (
            "Took",
            match (status.started_at, status.finished_at) {
                (Some(s), Some(f)) => web::duration((f - s).num_milliseconds() as f64 / 1000.0),
                _ => "–".into(),
            },
        ),
        ("Came from", origin(&status)),
        (
            "Scheduled by",
            extras.scheduled_by.clone().unwrap_or_else(|| "–".into()),
        ),
        (
            "Worker",
            extras.worker.clone().unwrap_or_else(|| "–".into()),
        ),
        ("Priority", extras.priority.to_string()),
        (
            "Dedup key",
            extras.dedup_key.clone().unwrap_or_else(|| "–".into()),
        ),
        ("Rescued from dead workers", extras.rescues.to_string()),
        ("Cancel asked", web::stamp_opt(extras.cancelled_at)),
    ];
    let result = status
        .result
        .as_ref()
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_else(|_| r.to_string()));
    let error = status.last_error.clone();
    web::render(&ShowPage {
        layout: Layout::new(format!("Job {id}"), "jobs", &op, q.notice),
        id: id.clone(),
        row: JobRow::from(status),
        facts,
        error,
        result,
        payload: shown_payload(&extras.payload),
        can_retry: Action::Retry.allowed_in(&state),
        can_run_now: Action::RunNow.allowed_in(&state),
        can_cancel: Action::Cancel.allowed_in(&state),
    })
}

/// Keys whose values the job page never shows: a password-reset mail's
/// job carries a live reset link, and anyone who reads it can take the
/// account over.
const HIDDEN_KEYS: &[&str] = &[
    "password", "secret", "token", "link", "url", "key", "auth", "code",
];

/// The payload, pretty-printed, with the values of secret-looking keys
/// (at any depth) replaced.
fn shown_payload(raw: &str) -> String {
    fn mask(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    let key = key.to_ascii_lowercase();
                    if HIDDEN_KEYS.iter().any(|h| key.contains(h)) && !v.is_null() {
                        *v = serde_json::Value::String("•••• (hidden)".into());
                    } else {
                        mask(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(mask),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(mut json) => {
            mask(&mut json);
            serde_json::to_string_pretty(&json).unwrap_or_default()
        }
        Err(_) => format!("(not JSON: {} bytes, not shown)", raw.len()),
    }
}

/// What may be done to a job.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// A finished job from scratch.
    Retry,
    /// A waiting job now.
    RunNow,
    /// Never start, or stop.
    Cancel,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "retry" => Self::Retry,
            "run-now" => Self::RunNow,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }

    /// Whether the action makes sense for a job in `state` (checked again
    /// when it is posted: a page can be old). Retry is for jobs that did
    /// not finish well; a done job is not run again from here (it may have
    /// sent a mail), `dklctl retry` can.
    fn allowed_in(self, state: &str) -> bool {
        match self {
            Self::Retry => matches!(state, "discarded" | "cancelled"),
            Self::RunNow => matches!(state, "scheduled" | "retrying"),
            Self::Cancel => matches!(state, "pending" | "scheduled" | "retrying" | "running"),
        }
    }

    fn audit_name(self) -> &'static str {
        match self {
            Self::Retry => "job.retry",
            Self::RunNow => "job.run_now",
            Self::Cancel => "job.cancel",
        }
    }
}

/// `POST /dashboard/jobs/{id}/{retry|run-now|cancel}`.
pub async fn act(
    State(app): State<App>,
    ip: ClientIp,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let Some(action) = Action::parse(&action) else {
        return Err(PageError::NotFound(format!("no job action `{action}`")));
    };
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(PageError::BadRequest(format!("`{id}` is not a job id")));
    }
    let done = match web::authorize(&app, &headers, ip, &form, action.audit_name(), &id).await {
        Ok(done) => done,
        Err(refused) => return Ok(refused),
    };
    let state = match jobs::job(&app.pool, &id).await {
        Ok(found) => found.map(|(status, _)| status.state),
        Err(e) => {
            let result = Err(format!("Job {id} not read: {e}"));
            return Ok(web::finish(&app, &done, result, &format!("/dashboard/jobs/{id}")).await);
        }
    };
    let back = format!("/dashboard/jobs/{id}");
    let Some(state) = state else {
        return Ok(web::finish(&app, &done, Err(format!("No job {id}.")), "/dashboard/jobs").await);
    };
    if !action.allowed_in(&state) {
        let result = Err(format!(
            "Job {id} is {state}: {} is not for a job in that state.",
            action.audit_name()
        ));
        return Ok(web::finish(&app, &done, result, &back).await);
    }
    let client = JobClient::new(app.pool.clone());
    let job = JobId(id.clone());
    let result = match action {
        Action::Retry => client
            .retry(&job)
            .await
            .map(|outcome| format!("Job {id}: {}.", outcome.describe()))
            .map_err(|e| format!("Job {id} not retried: {e}")),
        Action::RunNow => match client.run_now(&job).await {
            Ok(true) => Ok(format!("Job {id}: was waiting; now due.")),
            Ok(false) => Err(format!("Job {id} is no longer waiting; nothing changed.")),
            Err(e) => Err(format!("Job {id} not made due: {e}")),
        },
        Action::Cancel => client
            .cancel(&job)
            .await
            .map(|outcome| format!("Job {id}: {}.", outcome.describe()))
            .map_err(|e| format!("Job {id} not cancelled: {e}")),
    };
    Ok(web::finish(&app, &done, result, &back).await)
}
