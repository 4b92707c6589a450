//! The worker's HTTP listener: `/healthz` for supervisors and load balancers,
//! `/metrics` for Prometheus. Read-only, no secrets, so no auth; bind it to
//! loopback or a private network (`DKL_HTTP_ADDR`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dkl_shared::jobs::RuntimeStats;
use dkl_shared::monitor;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, DatabaseFigures};

/// How long a scrape or health check waits for the database.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    stats: Arc<RuntimeStats>,
    /// A heartbeat older than this means the runtime is stuck.
    heartbeat_stale_after: Duration,
}

/// Binds `addr` (failing fast if it is taken) and serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    pool: PgPool,
    stats: Arc<RuntimeStats>,
    heartbeat_stale_after: Duration,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_page))
        .with_state(AppState { pool, stats, heartbeat_stale_after });
    Ok((local, async move { axum::serve(listener, app).await }))
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

/// 200 when the database answers, every queue's worker runs and the
/// heartbeat is recent; 503 otherwise. The JSON body says which part failed.
async fn healthz(State(app): State<AppState>) -> Response {
    let database = match tokio::time::timeout(DB_TIMEOUT, sqlx::query("SELECT 1").execute(&app.pool)).await {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("error: no answer within {}s", DB_TIMEOUT.as_secs()),
    };
    let snap = app.stats.snapshot();
    let stopped: Vec<&String> = snap.queues.iter().filter(|(_, up)| !**up).map(|(q, _)| q).collect();
    let workers = if snap.queues.is_empty() {
        "error: not started".to_string()
    } else if stopped.is_empty() {
        "ok".to_string()
    } else {
        format!("error: stopped queues {stopped:?}")
    };
    let heartbeat = match snap.since_heartbeat {
        Some(age) if age <= app.heartbeat_stale_after => "ok".to_string(),
        Some(age) => format!("error: last heartbeat {}s ago", age.as_secs()),
        None => "error: no heartbeat yet".to_string(),
    };
    let healthy = [&database, &workers, &heartbeat].iter().all(|s| *s == "ok");
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "database": database,
        "workers": workers,
        "heartbeat": heartbeat,
        "queues": snap.queues,
    });
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn metrics_page(State(app): State<AppState>) -> Response {
    let figures = tokio::time::timeout(DB_TIMEOUT, async {
        let queues = monitor::queue_summary(&app.pool).await?;
        let leadership = monitor::leadership(&app.pool).await?;
        Ok::<_, sqlx::Error>(DatabaseFigures { queues, leadership })
    })
    .await;
    let figures = match figures {
        Ok(Ok(f)) => Some(f),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "/metrics: cannot read queue figures");
            None
        }
        Err(_) => {
            tracing::warn!("/metrics: database did not answer in time");
            None
        }
    };
    let body = metrics::render(&app.stats.snapshot(), figures.as_ref());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}
