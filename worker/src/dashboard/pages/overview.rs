//! The overview: every queue at a glance, the scheduler leader, and what
//! finished and what was sent in the last hour.

use askama::Template;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::dashboard::chart::{self, Series};
use crate::dashboard::web::{self, App, Layout, PageResult, Viewer};
use crate::store::{jobs, newsletters, verzonden_emails};

const MINUTES: i32 = 60;

struct QueueRow {
    queue: String,
    pending: i64,
    scheduled: i64,
    running: i64,
    failed_last_hour: i64,
    done_last_hour: i64,
    oldest: String,
    stuck: bool,
    served: bool,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct OverviewPage {
    layout: Layout,
    queues: Vec<QueueRow>,
    leader: String,
    leader_ok: bool,
    jobs_chart: String,
    jobs_total: [i64; 3],
    mail_chart: String,
    mail_total: i64,
    progress: Vec<super::newsletters::ProgressRow>,
}

/// `?notice=` after an action.
#[derive(Deserialize)]
pub struct NoticeQuery {
    pub(super) notice: Option<String>,
}

/// `GET /dashboard`.
pub async fn page(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let served: Vec<String> = app.stats.snapshot().queues.into_keys().collect();
    let figures = jobs::queue_figures(&app.pool, &served).await?;
    let leadership = dkl_shared::monitor::leadership(&app.pool).await?;
    let finished = jobs::finished_per_minute(&app.pool, MINUTES).await?;
    let sent = verzonden_emails::sent_per_minute(&app.pool, MINUTES).await?;
    let sending = newsletters::active_progress(&app.pool).await?;

    let minutes = MINUTES as usize;
    let pick = |f: fn(&jobs::MinuteCounts) -> i64| {
        chart::by_minute(minutes, finished.iter().map(|m| (m.minutes_ago, f(m))))
    };
    let series = [
        Series {
            name: "done",
            colour: "#2e7d32",
            values: pick(|m| m.done),
        },
        Series {
            name: "discarded",
            colour: "#c62828",
            values: pick(|m| m.discarded),
        },
        Series {
            name: "cancelled",
            colour: "#9e9e9e",
            values: pick(|m| m.cancelled),
        },
    ];
    let jobs_total = [0, 1, 2].map(|i| series[i].values.iter().sum());
    let jobs_chart = chart::stacked_minutes("Jobs finished per minute, last hour", &series);
    let mail = chart::by_minute(minutes, sent);
    let mail_total = mail.iter().sum();
    let mail_chart = chart::stacked_minutes(
        "Mail sent per minute, last hour",
        &[Series {
            name: "sent",
            colour: "#0b5cad",
            values: mail,
        }],
    );
    let leader_ok = leadership.lock_held;
    let leader = match (&leadership.scheduler_id, leadership.heartbeat_age_s) {
        (Some(id), Some(age)) if leader_ok => {
            format!("{id} (heartbeat {} ago)", web::duration(age))
        }
        (Some(id), _) => format!("none holds the lock (last leader: {id})"),
        _ => "no scheduler has led yet".into(),
    };
    let queues = figures
        .into_iter()
        .map(|f| QueueRow {
            stuck: f.oldest_pending_age_s > 60.0,
            served: served.contains(&f.queue),
            oldest: if f.pending == 0 {
                "–".into()
            } else {
                web::duration(f.oldest_pending_age_s)
            },
            queue: f.queue,
            pending: f.pending,
            scheduled: f.scheduled,
            running: f.running,
            failed_last_hour: f.failed_last_hour,
            done_last_hour: f.done_last_hour,
        })
        .collect();
    web::render(&OverviewPage {
        layout: Layout::new("Overview", "overview", &op, q.notice),
        queues,
        leader,
        leader_ok,
        jobs_chart,
        jobs_total,
        mail_chart,
        mail_total,
        progress: sending
            .into_iter()
            .map(super::newsletters::ProgressRow::from)
            .collect(),
    })
}
