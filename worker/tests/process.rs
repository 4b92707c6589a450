//! The real `dkl-worker` binary as a process: killed with SIGKILL mid-job,
//! stopped with SIGTERM mid-job, started with bad config or an unmigrated
//! database.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dkl_shared::jobs::ping::Ping;
use dkl_shared::jobs::{EnqueueOptions, JobClient};
use dkl_tests::{migrate, url_of, wait_status};
use sqlx::PgPool;

fn worker(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dkl-worker"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("DKL_HEARTBEAT_SECS", "1")
        .env("DKL_RESCUE_AFTER_SECS", "3")
        .env("DKL_SHUTDOWN_GRACE_SECS", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    cmd
}

/// Starts a worker in the background. Its log goes to a file, never to an
/// unread pipe: a full pipe would block the worker's logging, and the worker.
fn spawn_worker(url: &str, log: &std::path::Path) -> Reaper {
    let file = std::fs::File::create(log).expect("create log file");
    Reaper(worker(url).stderr(file).spawn().expect("spawn dkl-worker"))
}

fn log_path(name: &str) -> std::path::PathBuf {
    // Kept after the run for post-mortems, inside target/ where cargo cleans up.
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dkl-{name}-{}-{}.log", std::process::id(), ulid_like()))
}

fn ulid_like() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

struct Reaper(Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({sig}) failed");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < timeout, "process did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
