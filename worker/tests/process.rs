//! The real `dkl-worker` binary as a process: killed with SIGKILL mid-job,
//! stopped with SIGTERM mid-job, started with bad config or an unmigrated
//! database.

use std::process::Command;
use std::time::{Duration, Instant};

use dkl_shared::jobs::{EnqueueOptions, JobClient};
use dkl_shared::kinds::Ping;
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
        .enqueue(
            &Ping {
                message: "survive".into(),
                sleep_ms: 3_000,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;

    let mut first = spawn_worker(&url, &log_path("kill9-first"));
    let running = wait_status(&pool, &id, "Running", Duration::from_secs(20)).await;
    assert_eq!(running.attempts, 1);
    signal(&first.0, libc::SIGKILL);
    let status = wait_exit(&mut first.0, Duration::from_secs(5));
    assert!(!status.success(), "SIGKILL must not look like a clean exit");
    assert_eq!(
        crate::job_status(&pool, &id).await,
        "Running",
        "a killed worker cannot clean up"
    );

    let killed_at = Instant::now();
    let _second = spawn_worker(&url, &log_path("kill9-second"));
    let done = wait_status(&pool, &id, "Done", Duration::from_secs(60)).await;
    assert!(killed_at.elapsed() < Duration::from_secs(60));
    assert_eq!(
        done.attempts, 1,
        "the rescue must not count as a failed attempt"
    );
    assert_ne!(
        done.lock_by, running.lock_by,
        "the second worker finished it"
    );
    assert!(done.last_error.is_none());
}

async fn job_status(pool: &PgPool, id: &dkl_shared::jobs::JobId) -> dkl_shared::jobs::JobState {
    dkl_tests::job(pool, id).await.status
}

#[sqlx::test(migrations = false)]
async fn sigterm_mid_job_releases_it_and_exits_cleanly(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(
            &Ping {
                sleep_ms: 4_000,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
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

    let out = worker("mysql://root:secret@localhost/x")
        .output()
        .expect("run dkl-worker");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DATABASE_URL") && !stderr.contains("secret"),
        "{stderr}"
    );

    // Durations: a multi-byte unit panicked (exit 101); huge ones were
    // accepted or wrapped around.
    for bad in ["7é", "3650000d", "213503982334602d"] {
        let out = worker("postgres://postgres@127.0.0.1:5432/postgres")
            .env("DKL_PRUNE_DONE_AFTER", bad)
            .output()
            .expect("run dkl-worker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("DKL_PRUNE_DONE_AFTER") && stderr.contains("from 1s to 3650d"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Defect 4: a password with an unencoded `?` was printed in full.
#[test]
fn a_password_with_unencoded_characters_never_reaches_the_output() {
    let port = process::free_port();
    for password in ["s3cr?tPW", "s3cr/tPW", "s3cr#tPW", "s3cr@tPW"] {
        let out = worker(&format!("postgres://dkl:{password}@127.0.0.1:{port}/dkl"))
            .env("LOG_FORMAT", "json")
            .output()
            .expect("run dkl-worker");
        assert_eq!(out.status.code(), Some(1));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("s3cr") && !all.contains("tPW"),
            "password leaked: {all}"
        );
        assert!(all.contains("dkl:***@"), "{all}");
    }
}

/// Defect 8: rescue always refunded the attempt, so a job that crashes its
/// worker looped for ever. Rescues are counted; past DKL_MAX_RESCUES the job
/// is discarded, and each kill before that still costs no attempt.
#[sqlx::test(migrations = false)]
async fn a_job_that_keeps_killing_its_worker_is_discarded_after_max_rescues(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(
            &Ping {
                message: "crashes its worker".into(),
                sleep_ms: 600_000,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let spawn = |round: u32| {
        let mut cmd = worker(&url);
        cmd.env("DKL_MAX_RESCUES", "2");
        process::spawn_logged(cmd, &log_path(&format!("crash-loop-{round}")))
    };
    // Three workers in turn each take the job and are killed running it.
    for round in 0..3 {
        let mut w = spawn(round);
        let row = dkl_tests::wait_for(
            Duration::from_secs(30),
            "the job to run on this worker",
            || async {
                let j = dkl_tests::job(&pool, &id).await;
                (j.status == "Running" && j.rescues == round as i32).then_some(j)
            },
        )
        .await;
        assert_eq!(
            row.attempts, 1,
            "round {round}: a kill -9 never costs an attempt"
        );
        signal(&w.0, libc::SIGKILL);
        wait_exit(&mut w.0, Duration::from_secs(5));
    }
    // The next worker finds it rescued twice already: the third rescue discards it.
    let _last = spawn(3);
    let row = wait_status(&pool, &id, "Killed", Duration::from_secs(30)).await;
    assert_eq!(row.rescues, 3);
    assert_eq!(row.attempts, 1);
    assert!(row.cancelled_at.is_none());
    let error = row.last_error.unwrap_or_default();
    assert!(
        error.contains("died 3 times")
            && error.contains("DKL_MAX_RESCUES=2")
            && error.contains("dklctl retry"),
        "{error}"
    );
}

/// Defect 9: `/metrics` read the slow views on the workers' own pool; 40
/// scrapers starved jobs and `/healthz`. Now the figures come from a pool of
/// their own, at most once per cache period, through indexes.
#[sqlx::test(migrations = false)]
async fn scrapers_cannot_starve_jobs_or_health(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    // A long-running system: 500k finished jobs kept for post-mortems.
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, queue, job, status, attempts, max_attempts, run_at, done_at, lock_at, lock_by)
         SELECT apalis.generate_ulid(), 'ping', 'default', '\\x7b7d', 'Done', 1, 5, now() - g * interval '1 ms',
                now() - g * interval '1 ms', now() - g * interval '1 ms', 'old-worker'
           FROM generate_series(1, 500000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE apalis.jobs")
        .execute(&pool)
        .await
        .unwrap();

    let port = process::free_port();
    let mut cmd = worker(&url);
    cmd.env("DKL_HTTP_ADDR", format!("127.0.0.1:{port}"));
    let _w = process::spawn_logged(cmd, &log_path("scrapers"));
    dkl_tests::wait_for(Duration::from_secs(20), "a healthy /healthz", || async {
        process::http_get(port, "/healthz")
            .await
            .ok()
            .filter(|(code, _, _)| *code == 200)
    })
    .await;

    let stop = tokio_util::sync::CancellationToken::new();
    let scrapers: Vec<_> = (0..40)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut ok = 0u32;
                while !stop.is_cancelled() {
                    if let Ok((200, _, body)) = process::http_get(port, "/metrics").await {
                        ok +=
                            u32::from(body.contains(
                                "dkl_queue_jobs{queue=\"default\",state=\"done\"} 500000",
                            ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ok
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = JobClient::new(pool.clone());
    let mut worst_start_ms = 0.0f64;
    let mut health = Vec::new();
    for i in 0..10 {
        let id = client
            .enqueue(
                &Ping {
                    message: format!("during scrapes {i}"),
                    ..Default::default()
                },
                EnqueueOptions::default(),
            )
            .await
            .unwrap()
            .id;
        wait_status(&pool, &id, "Done", Duration::from_secs(20)).await;
        let start_ms: f64 = sqlx::query_scalar("SELECT extract(epoch FROM lock_at - run_at)::float8 * 1000 FROM apalis.jobs WHERE id = $1")
            .bind(&id.0)
            .fetch_one(&pool)
            .await
            .unwrap();
        worst_start_ms = worst_start_ms.max(start_ms);
        health.push(
            process::http_get(port, "/healthz")
                .await
                .map(|(code, _, _)| code)
                .unwrap_or(0),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let mut answered = 0;
    for s in scrapers {
        answered += s.await.unwrap();
    }
    assert!(answered > 200, "scrapes with the right figures: {answered}");
    assert!(
        health.iter().all(|c| *c == 200),
        "/healthz during the scrapes: {health:?}"
    );
    assert!(
        worst_start_ms < 250.0,
        "a ping started {worst_start_ms:.0} ms after it was due while 40 clients scraped"
    );
}

/// Defect 10: `/healthz` said ok while work was stuck. It fails while a due
/// job on a served queue waits past DKL_HEALTH_MAX_DUE_AGE_SECS, and
/// recovers when the queue moves.
#[sqlx::test(migrations = false)]
async fn healthz_fails_while_a_due_job_waits_too_long(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let port = process::free_port();
    let mut cmd = worker(&url);
    cmd.env("DKL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DKL_QUEUE_CONCURRENCY", "default=1")
        .env("DKL_HEALTH_MAX_DUE_AGE_SECS", "2")
        .env("DKL_MONITOR_CACHE_MS", "200");
    let _w = process::spawn_logged(cmd, &log_path("health-waiting"));
    let client = JobClient::new(pool.clone());
    let blocker = client
        .enqueue(
            &Ping {
                sleep_ms: 8_000,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    wait_status(&pool, &blocker, "Running", Duration::from_secs(20)).await;
    let waiting = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let (_, _, body) = dkl_tests::wait_for(
        Duration::from_secs(10),
        "/healthz to report the waiting job",
        || async {
            process::http_get(port, "/healthz")
                .await
                .ok()
                .filter(|(code, _, _)| *code == 503)
        },
    )
    .await;
    assert!(
        body.contains("DKL_HEALTH_MAX_DUE_AGE_SECS=2 on default"),
        "{body}"
    );
    wait_status(&pool, &waiting, "Done", Duration::from_secs(20)).await;
    dkl_tests::wait_for(Duration::from_secs(10), "/healthz to recover", || async {
        process::http_get(port, "/healthz")
            .await
            .ok()
            .filter(|(code, _, _)| *code == 200)
    })
    .await;
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
    let jobs: Vec<Ping> = (0..300)
        .map(|i| Ping {
            message: format!("job {i}"),
            sleep_ms: 40,
            ..Default::default()
        })
        .collect();
    client.enqueue_many(&jobs).await.unwrap();

    // Three workers in turn, each killed with SIGKILL while it has jobs running.
    for round in 0..3 {
        let mut w = spawn_worker(&url, &log_path(&format!("repeat-{round}")));
        dkl_tests::wait_for(Duration::from_secs(20), "a worker to run jobs", || async {
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Running'")
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
    let mut w = Reaper(
        worker(&with_password)
            .env("LOG_FORMAT", "json")
            .stderr(file)
            .spawn()
            .expect("spawn dkl-worker"),
    );
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(
            &Ping {
                message: "json please".into(),
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
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
        lines.iter().any(|l| l["message"] == "pong"
            && l["text"] == "json please"
            && l["span"]["job_id"] == id.0.as_str()),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "worker started"),
        "{stderr}"
    );
}

#[sqlx::test(migrations = false)]
async fn healthz_and_metrics_answer_with_the_right_content_and_figures(pool: PgPool) {
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let client = JobClient::new(pool.clone());
    let ok = |m: &str| Ping {
        message: m.into(),
        ..Default::default()
    };
    let a = client
        .enqueue(&ok("a"), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let b = client
        .enqueue(&ok("b"), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let bad = Ping {
        permanent_error: Some("broken on purpose".into()),
        ..Default::default()
    };
    let c = client
        .enqueue(&bad, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
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

    let (code, head, body) =
        dkl_tests::wait_for(Duration::from_secs(10), "a healthy /healthz", || async {
            process::http_get(port, "/healthz")
                .await
                .ok()
                .filter(|(code, _, _)| *code == 200)
        })
        .await;
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let health: serde_json::Value = serde_json::from_str(&body).expect("healthz is JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["queues"]["default"], true, "{health}");

    let (code, head, metrics) = process::http_get(port, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
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
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in:\n{metrics}"
        );
    }
    // Every sample line is `name{labels} number`.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit_once(' ').map(|(_, v)| v).unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {l}");
    }

    // Database unreachable: no new connections, existing ones cut. Done from
    // the server's maintenance database, since this one refuses connections.
    use sqlx::Connection;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();
    let (_, _, body) = dkl_tests::wait_for(
        Duration::from_secs(15),
        "/healthz to report the database down",
        || async {
            process::http_get(port, "/healthz")
                .await
                .ok()
                .filter(|(code, _, _)| *code == 503)
        },
    )
    .await;
    assert!(
        body.contains("\"status\":\"unhealthy\"") && body.contains("\"database\":\"error"),
        "{body}"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    dkl_tests::wait_for(Duration::from_secs(15), "/healthz to recover", || async {
        process::http_get(port, "/healthz")
            .await
            .ok()
            .filter(|(code, _, _)| *code == 200)
    })
    .await;
}

/// Issue 9: a worker killed with kill -9 in the middle of 1,000 mails. Every
/// message is sent; a transactional one may go twice only if its SMTP
/// transaction was in flight at the kill (README's rule), a newsletter never
/// twice (it is marked `unknown` instead).
#[sqlx::test(migrations = false)]
async fn kill_9_in_the_middle_of_1000_mails_sends_each_once_but_the_ones_in_flight(pool: PgPool) {
    use dkl_shared::kinds::{MailKind, SendEmail};
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let sink = dkl_worker::smtp::sink::SmtpSink::start(&[]).expect("start smtp-sink");
    let client = JobClient::new(pool.clone());
    let mails: Vec<SendEmail> = (0..1000)
        .map(|i| SendEmail {
            to: format!("deelnemer{i}@example.org"),
            subject: Some(format!("mail {i}")),
            html: Some(format!("<p>bericht {i}</p>")),
            kind: if i % 5 == 0 {
                MailKind::Newsletter
            } else {
                MailKind::Transactional
            },
            dedup_key: Some(format!("m{i}")),
            ..Default::default()
        })
        .collect();
    client.enqueue_many(&mails).await.unwrap();
    let spawn = |name: &str| {
        let mut cmd = worker(&url);
        cmd.env("DKL_SMTP_DEFAULT_PORT", sink.port.to_string());
        process::spawn_logged(cmd, &log_path(name))
    };
    let mut first = spawn("mail-kill-first");
    dkl_tests::wait_for(
        Duration::from_secs(60),
        "a third of the mail to be sent",
        || async {
            let sent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM verzonden_emails WHERE status = 'sent'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (sent >= 300).then_some(())
        },
    )
    .await;
    signal(&first.0, libc::SIGKILL);
    wait_exit(&mut first.0, Duration::from_secs(5));
    // What was between "SMTP transaction started" and "sent committed" at the kill.
    let (in_flight_transactional, in_flight_bulk): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE mail_kind = 'transactional'), count(*) FILTER (WHERE mail_kind = 'newsletter')
           FROM verzonden_emails WHERE status = 'queued' AND smtp_started_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let _second = spawn("mail-kill-second");
    dkl_tests::wait_all_done(&pool, Duration::from_secs(120)).await;
    let mut copies = vec![0u32; 1000];
    for message in sink.messages() {
        let n: usize = message
            .lines()
            .find_map(|l| l.strip_prefix("Subject: mail "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("a message without our subject: {message}"));
        copies[n] += 1;
    }
    let (statuses, unknown): (Vec<(String, i64)>, i64) = (
        sqlx::query_as("SELECT status, count(*) FROM verzonden_emails GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap(),
        sqlx::query_scalar("SELECT count(*) FROM verzonden_emails WHERE status = 'unknown'")
            .fetch_one(&pool)
            .await
            .unwrap(),
    );
    let doubled_transactional = (0..1000).filter(|i| i % 5 != 0 && copies[*i] > 1).count() as i64;
    let doubled_bulk = (0..1000).filter(|i| i % 5 == 0 && copies[*i] > 1).count();
    let never_sent_transactional = (0..1000).filter(|i| i % 5 != 0 && copies[*i] == 0).count();
    let summary = format!(
        "in flight at the kill: {in_flight_transactional} transactional, {in_flight_bulk} newsletter; \
         sent twice: {doubled_transactional} transactional, {doubled_bulk} newsletter; unknown: {unknown}; rows: {statuses:?}"
    );
    eprintln!("{summary}");
    let _ = std::fs::write(
        log_path("mail-kill-summary").with_extension("txt"),
        &summary,
    );
    assert_eq!(never_sent_transactional, 0, "{summary}");
    assert_eq!(
        doubled_bulk, 0,
        "a newsletter is never sent twice: {summary}"
    );
    assert!(
        doubled_transactional <= in_flight_transactional,
        "only mail in flight at the kill may go twice: {summary}"
    );
    assert_eq!(
        unknown, in_flight_bulk,
        "newsletters in flight at the kill are marked unknown: {summary}"
    );
    let not_final: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM verzonden_emails WHERE status NOT IN ('sent', 'unknown')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(not_final, 0, "{summary}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM verzonden_emails")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1000);
}

/// Issue 9: one provider's rate limit shared by two worker processes: the
/// server sees at most the limit in any second, and close to it.
#[sqlx::test(migrations = false)]
async fn two_workers_together_respect_one_smtp_rate_limit(pool: PgPool) {
    use dkl_shared::kinds::SendEmail;
    migrate(&pool).await;
    let url = url_of(&pool).await;
    let sink = dkl_worker::smtp::sink::SmtpSink::start(&[]).expect("start smtp-sink");
    let client = JobClient::new(pool.clone());
    let mails: Vec<SendEmail> = (0..200)
        .map(|i| SendEmail {
            to: format!("deelnemer{i}@example.org"),
            subject: Some(format!("mail {i}")),
            html: Some("<p>x</p>".into()),
            dedup_key: Some(format!("r{i}")),
            ..Default::default()
        })
        .collect();
    client.enqueue_many(&mails).await.unwrap();
    const LIMIT: usize = 20;
    let spawn = |name: &str| {
        let mut cmd = worker(&url);
        cmd.env("DKL_SMTP_DEFAULT_PORT", sink.port.to_string())
            .env("DKL_SMTP_DEFAULT_RATE_PER_SECOND", LIMIT.to_string())
            .env("DKL_QUEUE_CONCURRENCY", "mail=8");
        process::spawn_logged(cmd, &log_path(name))
    };
    let _a = spawn("rate-a");
    let _b = spawn("rate-b");
    dkl_tests::wait_all_done(&pool, Duration::from_secs(60)).await;
    let workers: i64 = sqlx::query_scalar("SELECT count(DISTINCT lock_by) FROM apalis.jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 2, "both workers sent mail");
    let seconds = sink.arrival_seconds();
    assert_eq!(seconds.len(), 200);
    let mut per_second: Vec<(String, usize)> = Vec::new();
    for s in seconds {
        match per_second.last_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => per_second.push((s, 1)),
        }
    }
    let max = per_second.iter().map(|(_, n)| *n).max().unwrap();
    // Whole seconds only: the first and last are partial.
    let inner: Vec<usize> = per_second[1..per_second.len() - 1]
        .iter()
        .map(|(_, n)| *n)
        .collect();
    let mean = inner.iter().sum::<usize>() as f64 / inner.len() as f64;
    let summary = format!(
        "limit {LIMIT}/s: max {max} in a second, mean {mean:.1} over {} whole seconds: {per_second:?}",
        inner.len()
    );
    eprintln!("{summary}");
    assert!(max <= LIMIT, "never above the limit: {summary}");
    assert!(
        mean >= LIMIT as f64 * 0.9,
        "within 10% of the limit: {summary}"
    );
}
