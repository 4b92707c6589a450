//! The worker's HTTP listener: `/healthz` for supervisors and load balancers,
//! `/metrics` for Prometheus (read-only, no secrets, so no auth; bind it to
//! loopback or a private network with `DKL_HTTP_ADDR`), `/unsubscribe` for
//! newsletter readers, and the operator dashboard under `/dashboard` (behind
//! its own login; see [`crate::dashboard`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dkl_shared::config::MonitorConfig;
use dkl_shared::jobs::RuntimeStats;
use dkl_shared::jobs::stats::StatsSnapshot;
use dkl_shared::monitor;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, DatabaseFigures};

/// How long a scrape or health check waits for the database.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Outcomes that cannot be written for this long make the worker unhealthy:
/// its jobs look running for ever and nothing finishes.
const OUTCOME_WRITER_STUCK_AFTER: Duration = Duration::from_secs(15);

/// What `/healthz` and `/metrics` read and how.
pub struct Monitoring {
    /// A pool of its own, so scrapes never take a connection from jobs.
    pub pool: PgPool,
    /// The runtime's counters and liveness.
    pub stats: Arc<RuntimeStats>,
    /// What mail sending did.
    pub mail: Arc<crate::smtp::stats::MailStats>,
    /// What mail fetching did.
    pub imap: Arc<crate::imap::stats::ImapStats>,
    /// A heartbeat older than this means the runtime is stuck.
    pub heartbeat_stale_after: Duration,
    /// Cache period and health limits.
    pub config: MonitorConfig,
}

#[derive(Clone)]
struct AppState {
    monitoring: Arc<Monitoring>,
    /// The last database reading; one refresh at a time, however many clients ask.
    cache: Arc<tokio::sync::Mutex<Option<Reading>>>,
    /// The last database check of `/healthz`, kept for [`DB_PING_CACHE`].
    ping: Arc<tokio::sync::Mutex<Option<DueReading>>>,
}

/// A database check of `/healthz` as read at its instant.
type DueReading = (Instant, Result<DueAges, String>);

/// Seconds the oldest due job of each queue has waited (queues with none absent).
type DueAges = Vec<(String, f64)>;

/// How long `/healthz` trusts its last answer from the database: short, so
/// an outage shows within a second or two; a cache all the same, so a storm
/// of health checks costs one query a second.
const DB_PING_CACHE: Duration = Duration::from_secs(1);

/// Database figures as read at `at`, or why they could not be.
#[derive(Clone)]
struct Reading {
    at: Instant,
    figures: Result<Arc<DatabaseFigures>, String>,
}

impl AppState {
    /// The database figures, at most `cache_for` old. Concurrent callers
    /// wait for the one refresh in progress instead of starting their own.
    async fn figures(&self) -> Result<Arc<DatabaseFigures>, String> {
        let mut cache = self.cache.lock().await;
        if let Some(r) = cache.as_ref()
            && r.at.elapsed() <= self.monitoring.config.cache_for
        {
            return r.figures.clone();
        }
        let figures = read_figures(&self.monitoring.pool).await;
        *cache = Some(Reading {
            at: Instant::now(),
            figures: figures.clone(),
        });
        figures
    }
}

impl AppState {
    /// Whether the database answers, and how long each queue's oldest due
    /// job has waited: two cheap reads, at most once per [`DB_PING_CACHE`].
    async fn database_answers(&self) -> Result<DueAges, String> {
        let mut ping = self.ping.lock().await;
        if let Some((at, result)) = ping.as_ref()
            && at.elapsed() <= DB_PING_CACHE
        {
            return result.clone();
        }
        let queues: Vec<String> = self
            .monitoring
            .stats
            .snapshot()
            .queues
            .into_keys()
            .collect();
        let result = match tokio::time::timeout(
            DB_TIMEOUT,
            monitor::oldest_due(&self.monitoring.pool, &queues),
        )
        .await
        {
            Ok(Ok(ages)) => Ok(ages),
            Ok(Err(e)) => Err(format!("error: {e}")),
            Err(_) => Err(format!("error: no answer within {}s", DB_TIMEOUT.as_secs())),
        };
        *ping = Some((Instant::now(), result.clone()));
        result
    }
}

async fn read_figures(pool: &PgPool) -> Result<Arc<DatabaseFigures>, String> {
    let read = async {
        let queues = monitor::queue_summary(pool).await?;
        let leadership = monitor::leadership(pool).await?;
        let newsletter_deliveries = crate::store::newsletters::deliveries_by_state(pool).await?;
        Ok::<_, sqlx::Error>(DatabaseFigures {
            queues,
            leadership,
            newsletter_deliveries,
        })
    };
    match tokio::time::timeout(DB_TIMEOUT, read).await {
        Ok(Ok(f)) => Ok(Arc::new(f)),
        Ok(Err(e)) => Err(format!("error: {e}")),
        Err(_) => Err(format!("error: no answer within {}s", DB_TIMEOUT.as_secs())),
    }
}

/// The pages served beside `/healthz` and `/metrics`.
#[derive(Default)]
pub struct Pages {
    /// `/unsubscribe/{token}`.
    pub unsubscribe: Option<Arc<crate::unsubscribe::Unsubscribe>>,
    /// `/dashboard`.
    pub dashboard: Option<Arc<crate::dashboard::Dashboard>>,
}

/// Binds `addr` (failing fast if it is taken) and serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    monitoring: Monitoring,
    pages: Pages,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(AppState {
            monitoring: Arc::new(monitoring),
            cache: Arc::default(),
            ping: Arc::default(),
        });
    let app = match pages.unsubscribe {
        Some(state) => app.merge(crate::unsubscribe::router(state)),
        None => app,
    };
    let app = match pages.dashboard {
        Some(state) => app.merge(crate::dashboard::router(state)),
        None => app,
    };
    // The dashboard slows failed logins down per client address.
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    Ok((local, async move { axum::serve(listener, service).await }))
}

/// Serves the dashboard alone (with `/healthz` and `/metrics` reading on
/// its pool) on `addr`: what tests and `dklctl bench dashboard` measure,
/// without a job runtime.
pub async fn bind_dashboard(
    addr: SocketAddr,
    dashboard: crate::dashboard::Dashboard,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let monitoring = Monitoring {
        pool: dashboard.pool.clone(),
        stats: Arc::default(),
        mail: Arc::default(),
        imap: Arc::default(),
        heartbeat_stale_after: Duration::from_secs(30),
        config: MonitorConfig::default(),
    };
    let pages = Pages {
        unsubscribe: None,
        dashboard: Some(Arc::new(dashboard)),
    };
    bind(addr, monitoring, pages).await
}

/// Serves until the token is cancelled.
pub async fn serve_until(
    server: impl Future<Output = std::io::Result<()>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tokio::select! {
        r = server => r,
        _ = shutdown.cancelled() => Ok(()),
    }
}

/// 200 when the database answers, every queue's worker runs, the heartbeat
/// is recent, outcomes are being written and no served queue has a job due
/// for longer than `DKL_HEALTH_MAX_DUE_AGE_SECS`; 503 otherwise. The JSON
/// body says which part failed.
async fn healthz(State(app): State<AppState>) -> Response {
    let due_ages = app.database_answers().await;
    let snap = app.monitoring.stats.snapshot();
    let (healthy, body) = judge_health(&snap, &due_ages, &app.monitoring);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Whether the worker is healthy, and the JSON that says which part is not.
fn judge_health(
    snap: &StatsSnapshot,
    due_ages: &Result<DueAges, String>,
    m: &Monitoring,
) -> (bool, serde_json::Value) {
    let database = match due_ages {
        Ok(_) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    let stopped: Vec<&String> = snap
        .queues
        .iter()
        .filter(|(_, up)| !**up)
        .map(|(q, _)| q)
        .collect();
    let workers = if snap.queues.is_empty() {
        "error: not started".to_string()
    } else if stopped.is_empty() {
        "ok".to_string()
    } else {
        format!("error: stopped queues {stopped:?}")
    };
    let heartbeat = match snap.since_heartbeat {
        Some(age) if age <= m.heartbeat_stale_after => "ok".to_string(),
        Some(age) => format!("error: last heartbeat {}s ago", age.as_secs()),
        None => "error: no heartbeat yet".to_string(),
    };
    let outcomes = match (snap.outcome_writer_failing_for, snap.outcome_write_busy_for) {
        (Some(d), _) if d > OUTCOME_WRITER_STUCK_AFTER => {
            format!(
                "error: job outcomes cannot be written for {}s (see the log)",
                d.as_secs()
            )
        }
        (_, Some(d)) if d > OUTCOME_WRITER_STUCK_AFTER => {
            format!(
                "error: a write of job outcomes has hung for {}s (a lock or a dead connection)",
                d.as_secs()
            )
        }
        _ => "ok".to_string(),
    };
    let waiting = match (due_ages, m.config.max_due_age) {
        (Ok(ages), Some(limit)) => {
            let late: Vec<String> = ages
                .iter()
                .filter(|(queue, age)| {
                    snap.queues.get(queue) == Some(&true) && *age > limit.as_secs_f64()
                })
                .map(|(queue, age)| format!("{queue} ({age:.0}s)"))
                .collect();
            if late.is_empty() {
                "ok".to_string()
            } else {
                format!(
                    "error: due jobs waiting longer than DKL_HEALTH_MAX_DUE_AGE_SECS={} on {}",
                    limit.as_secs(),
                    late.join(", ")
                )
            }
        }
        _ => "ok".to_string(),
    };
    let healthy = [&database, &workers, &heartbeat, &outcomes, &waiting]
        .iter()
        .all(|s| *s == "ok");
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "database": database,
        "workers": workers,
        "heartbeat": heartbeat,
        "outcomes": outcomes,
        "waiting": waiting,
        "queues": snap.queues,
    });
    (healthy, body)
}

async fn metrics_page(State(app): State<AppState>) -> Response {
    let figures = match app.figures().await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "/metrics: cannot read queue figures");
            None
        }
    };
    let mut body = metrics::render(
        &app.monitoring.stats.snapshot(),
        &app.monitoring.mail.snapshot(),
        figures.as_deref(),
    );
    body.push_str(&metrics::render_imap(&app.monitoring.imap.snapshot()));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitoring() -> Monitoring {
        Monitoring {
            pool: sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://nobody@127.0.0.1:1/none")
                .unwrap(),
            stats: Arc::default(),
            mail: Arc::default(),
            imap: Arc::default(),
            heartbeat_stale_after: Duration::from_secs(30),
            config: MonitorConfig::default(),
        }
    }

    fn figures() -> Result<DueAges, String> {
        Ok(Vec::new())
    }

    fn running_snapshot() -> StatsSnapshot {
        StatsSnapshot {
            queues: [("default".to_string(), true)].into(),
            since_heartbeat: Some(Duration::from_secs(1)),
            ..StatsSnapshot::default()
        }
    }

    #[tokio::test]
    async fn a_stuck_outcome_writer_makes_the_worker_unhealthy() {
        let m = monitoring();
        let mut snap = running_snapshot();
        assert!(judge_health(&snap, &figures(), &m).0);
        snap.outcome_writer_failing_for = Some(Duration::from_secs(5));
        assert!(
            judge_health(&snap, &figures(), &m).0,
            "a short hiccup is not a failure"
        );
        snap.outcome_writer_failing_for = Some(Duration::from_secs(20));
        let (healthy, body) = judge_health(&snap, &figures(), &m);
        assert!(!healthy);
        assert!(
            body["outcomes"]
                .as_str()
                .unwrap()
                .contains("cannot be written for 20s"),
            "{body}"
        );
        // A write that hangs (a row lock, a dead connection) without failing.
        snap.outcome_writer_failing_for = None;
        snap.outcome_write_busy_for = Some(Duration::from_secs(20));
        let (healthy, body) = judge_health(&snap, &figures(), &m);
        assert!(!healthy);
        assert!(
            body["outcomes"]
                .as_str()
                .unwrap()
                .contains("has hung for 20s"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_due_job_waiting_too_long_on_a_served_queue_makes_the_worker_unhealthy() {
        let m = monitoring();
        let snap = running_snapshot();
        let ages: Result<DueAges, String> = Ok(vec![
            ("default".into(), 700.0),
            ("elsewhere".into(), 9000.0),
        ]);
        let (healthy, body) = judge_health(&snap, &ages, &m);
        assert!(!healthy);
        let waiting = body["waiting"].as_str().unwrap();
        assert!(
            waiting.contains("default (700s)") && !waiting.contains("elsewhere"),
            "{body}"
        );
        let down: Result<DueAges, String> = Err("error: connection refused".into());
        let (healthy, body) = judge_health(&snap, &down, &m);
        assert!(
            !healthy && body["database"] == "error: connection refused",
            "{body}"
        );
    }
}
