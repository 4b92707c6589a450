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
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
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

    let mut first = Reaper(worker(&url).spawn().expect("spawn dkl-worker"));
    let running = wait_status(&pool, &id, "Running", Duration::from_secs(20)).await;
    assert_eq!(running.attempts, 1);
    signal(&first.0, libc::SIGKILL);
    let status = wait_exit(&mut first.0, Duration::from_secs(5));
    assert!(!status.success(), "SIGKILL must not look like a clean exit");
    assert_eq!(crate::job_status(&pool, &id).await, "Running", "a killed worker cannot clean up");

    let killed_at = Instant::now();
    let _second = Reaper(worker(&url).spawn().expect("spawn second dkl-worker"));
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
    let mut first = Reaper(worker(&url).spawn().expect("spawn dkl-worker"));
    wait_status(&pool, &id, "Running", Duration::from_secs(20)).await;
    signal(&first.0, libc::SIGTERM);
    let status = wait_exit(&mut first.0, Duration::from_secs(10));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let row = dkl_tests::job(&pool, &id).await;
    assert_eq!(row.status, "Pending", "released for another worker");
    assert_eq!(row.attempts, 0, "graceful shutdown burns no attempt");

    let _second = Reaper(worker(&url).spawn().expect("spawn second dkl-worker"));
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
