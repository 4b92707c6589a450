//! The real `dkl-worker` binary as a process: killed with SIGKILL mid-job,
//! stopped with SIGTERM mid-job, started with bad config or an unmigrated
//! database.

use std::process::Command;
use std::time::{Duration, Instant};

use dkl_shared::jobs::ping::Ping;
use dkl_shared::jobs::{EnqueueOptions, JobClient};
use dkl_tests::process::{self, Reaper, log_path, signal, wait_exit};
use dkl_tests::{migrate, url_of, wait_status};
use sqlx::PgPool;

fn worker(url: &str) -> Command {
    process::command(env!("CARGO_BIN_EXE_dkl-worker"), url)
}

fn spawn_worker(url: &str, log: &std::path::Path) -> Reaper {
    process::spawn_logged(worker(url), log)
}

#[sqlx::test(migrations = false)]
async fn kill_9_mid_job_is_rescued_and_finished_with_attempts_unchanged(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Ping { message: "survive".into(), sleep_ms: 3_000, ..Default::default() }, EnqueueOptions::default())
        .await
        .unwrap()
        .id;

    let mut first = spawn_worker(&url, &log_path("kill9-first"));
    let running = wait_status(&pool, &id, "Running", Duration::from_secs(20)).await;
    assert_eq!(running.attempts, 1);
    signal(&first.0, libc::SIGKILL);
    let status = wait_exit(&mut first.0, Duration::from_secs(5));
    assert!(!status.success(), "SIGKILL must not look like a clean exit");
    assert_eq!(crate::job_status(&pool, &id).await, "Running", "a killed worker cannot clean up");

    let killed_at = Instant::now();
    let _second = spawn_worker(&url, &log_path("kill9-second"));
    let done = wait_status(&pool, &id, "Done", Duration::from_secs(60)).await;
    assert!(killed_at.elapsed() < Duration::from_secs(60));
    assert_eq!(done.attempts, 1, "the rescue must not count as a failed attempt");
    assert_ne!(done.lock_by, running.lock_by, "the second worker finished it");
    assert!(done.last_error.is_none());
}

async fn job_status(pool: &PgPool, id: &dkl_shared::jobs::JobId) -> String {
    dkl_tests::job(pool, id).await.status
}

#[sqlx::test(migrations = false)]
async fn sigterm_mid_job_releases_it_and_exits_cleanly(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Ping { sleep_ms: 4_000, ..Default::default() }, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let mut first = spawn_worker(&url, &log_path("sigterm-first"));
    wait_status(&pool, &id, "Running", Duration::from_secs(20)).await;
    signal(&first.0, libc::SIGTERM);
    let status = wait_exit(&mut first.0, Duration::from_secs(10));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let row = dkl_tests::job(&pool, &id).await;
    assert_eq!(row.status, "Pending", "released for another worker");
    assert_eq!(row.attempts, 0, "graceful shutdown burns no attempt");

    let _second = spawn_worker(&url, &log_path("sigterm-second"));
    let done = wait_status(&pool, &id, "Done", Duration::from_secs(30)).await;
    assert_eq!(done.attempts, 1);
}

#[test]
fn bad_config_stops_with_a_message_naming_the_variable() {
    let out = worker("postgres://postgres@127.0.0.1:5432/postgres")
        .env("DKL_QUEUE_CONCURRENCY", "mail=lots")
        .output()
        .expect("run dkl-worker");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DKL_QUEUE_CONCURRENCY"), "{stderr}");
    assert!(stderr.contains("e.g. default=10,mail=4"), "{stderr}");

    let out = worker("mysql://root:secret@localhost/x").output().expect("run dkl-worker");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL") && !stderr.contains("secret"), "{stderr}");
}

#[sqlx::test(migrations = false)]
async fn unmigrated_database_is_refused_with_the_fix(pool: PgPool) {
    let url = url_of(&pool).await;
    let out = worker(&url).output().expect("run dkl-worker");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run `dklctl migrate`"), "{stderr}");
}

#[sqlx::test(migrations = false)]
async fn repeated_kill_9_loses_no_job_and_charges_no_attempt(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let jobs: Vec<Ping> = (0..300).map(|i| Ping { message: format!("job {i}"), sleep_ms: 40, ..Default::default() }).collect();
    client.enqueue_many(&jobs).await.unwrap();

    // Three workers in turn, each killed with SIGKILL while it has jobs running.
    for round in 0..3 {
        let mut w = spawn_worker(&url, &log_path(&format!("repeat-{round}")));
        dkl_tests::wait_for(Duration::from_secs(20), "a worker to run jobs", || async {
            let running: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Running'")
                .fetch_one(&pool)
                .await
                .unwrap();
            (running > 0).then_some(())
        })
        .await;
        std::thread::sleep(Duration::from_millis(300 + round * 100));
        signal(&w.0, libc::SIGKILL);
        wait_exit(&mut w.0, Duration::from_secs(5));
    }
    let _last = spawn_worker(&url, &log_path("repeat-last"));
    dkl_tests::wait_all_done(&pool, Duration::from_secs(90)).await;
    let (total, over_one): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE attempts <> 1) FROM apalis.jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(total, 300, "no job lost");
    assert_eq!(over_one, 0, "kills are rescues, not failed attempts");
}

#[sqlx::test(migrations = false)]
async fn json_logs_are_json_and_carry_no_password(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    // Same server, with a password in the URL (trust auth ignores it).
    let with_password = url.replacen("postgres://postgres@", "postgres://postgres:hunter2@", 1);
    let log = log_path("json");
    let file = std::fs::File::create(&log).unwrap();
    let mut w = Reaper(worker(&with_password).env("LOG_FORMAT", "json").stderr(file).spawn().expect("spawn dkl-worker"));
    let client = JobClient::new(pool.clone());
    let id = client.enqueue(&Ping { message: "json please".into(), ..Default::default() }, EnqueueOptions::default()).await.unwrap().id;
    wait_status(&pool, &id, "Done", Duration::from_secs(20)).await;
    signal(&w.0, libc::SIGTERM);
    wait_exit(&mut w.0, Duration::from_secs(10));
    let stderr = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(!stderr.contains("hunter2"), "password leaked: {stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "pong" && l["text"] == "json please" && l["span"]["job_id"] == id.0.as_str()),
        "{stderr}"
    );
    assert!(lines.iter().any(|l| l["message"] == "worker started"), "{stderr}");
}

#[sqlx::test(migrations = false)]
async fn healthz_and_metrics_answer_with_the_right_content_and_figures(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let ok = |m: &str| Ping { message: m.into(), ..Default::default() };
    let a = client.enqueue(&ok("a"), EnqueueOptions::default()).await.unwrap().id;
    let b = client.enqueue(&ok("b"), EnqueueOptions::default()).await.unwrap().id;
    let bad = Ping { permanent_error: Some("broken on purpose".into()), ..Default::default() };
    let c = client.enqueue(&bad, EnqueueOptions::default()).await.unwrap().id;
    // Two jobs due later make a queue depth the metrics must show.
    let later = EnqueueOptions::at(chrono::Utc::now() + chrono::Duration::hours(1));
    client.enqueue(&ok("later"), later.clone()).await.unwrap();
    client.enqueue(&ok("later"), later).await.unwrap();

    let port = process::free_port();
    let mut cmd = worker(&url);
    cmd.env("DKL_HTTP_ADDR", format!("127.0.0.1:{port}"));
    let _w = process::spawn_logged(cmd, &log_path("http"));
    for id in [&a, &b] {
        wait_status(&pool, id, "Done", Duration::from_secs(20)).await;
    }
    wait_status(&pool, &c, "Killed", Duration::from_secs(20)).await;

    let (code, head, body) = dkl_tests::wait_for(Duration::from_secs(10), "a healthy /healthz", || async {
        process::http_get(port, "/healthz").await.ok().filter(|(code, _, _)| *code == 200)
    })
    .await;
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("healthz is JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["queues"]["default"], true, "{health}");

    let (code, head, metrics) = process::http_get(port, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    for line in [
        "dkl_jobs_total{kind=\"ping\",outcome=\"done\"} 2",
        "dkl_jobs_total{kind=\"ping\",outcome=\"discarded\"} 1",
        "dkl_job_duration_seconds_count{kind=\"ping\"} 3",
        "dkl_queue_jobs{queue=\"default\",state=\"scheduled\"} 2",
        "dkl_queue_jobs{queue=\"default\",state=\"done\"} 2",
        "dkl_queue_jobs{queue=\"default\",state=\"discarded\"} 1",
        "dkl_queue_depth{queue=\"default\"} 0",
        "dkl_worker_queue_running{queue=\"default\"} 1",
        "dkl_database_up 1",
        "dkl_scheduler_leader_present 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in:\n{metrics}");
    }
    // Every sample line is `name{labels} number`.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit_once(' ').map(|(_, v)| v).unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {l}");
    }

    // Database unreachable: no new connections, existing ones cut. Done from
    // the server's maintenance database, since this one refuses connections.
    use sqlx::Connection;
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&std::env::var("DATABASE_URL").unwrap()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();
    let (_, _, body) = dkl_tests::wait_for(Duration::from_secs(15), "/healthz to report the database down", || async {
        process::http_get(port, "/healthz").await.ok().filter(|(code, _, _)| *code == 503)
    })
    .await;
    assert!(body.contains("\"status\":\"unhealthy\"") && body.contains("\"database\":\"error"), "{body}");
    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))).execute(&mut admin).await.unwrap();
    dkl_tests::wait_for(Duration::from_secs(15), "/healthz to recover", || async {
        process::http_get(port, "/healthz").await.ok().filter(|(code, _, _)| *code == 200)
    })
    .await;
}
