//! `dklctl` as an admin types it, against a fresh database.

use std::process::{Command, Output};

use dkl_tests::url_of;
use sqlx::PgPool;

fn dklctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dklctl"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run dklctl")
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "dklctl failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[sqlx::test(migrations = false)]
async fn admin_commands_do_what_they_say(pool: PgPool) {
    let url = url_of(&pool).await;

    let before = dklctl(&url, &["status"]);
    assert_eq!(before.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&before.stderr).contains("run `dklctl migrate`"));

    assert_eq!(stdout(&dklctl(&url, &["migrate"])), "database migrated");
    assert_eq!(stdout(&dklctl(&url, &["migrate"])), "database migrated", "migrate is repeatable");
    stdout(&dklctl(&url, &["check"]));

    let id = stdout(&dklctl(&url, &["ping", "hello", "--at", "2099-01-01T00:00:00Z"]));
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let shown = stdout(&dklctl(&url, &["show", &id]));
    assert!(shown.contains("job_type: \"ping\"") && shown.contains("status: \"Pending\""), "{shown}");

    let status = stdout(&dklctl(&url, &["status"]));
    assert!(status.contains("default") && status.contains("scheduled"), "{status}");

    assert!(stdout(&dklctl(&url, &["cancel", &id])).contains("CancelledBeforeStart"));
    let status = stdout(&dklctl(&url, &["status"]));
    assert!(status.contains("cancelled"), "{status}");

    let first = stdout(&dklctl(&url, &["enqueue", "ping", "--payload", r#"{"message":"x"}"#, "--dedup", "k1"]));
    let second = stdout(&dklctl(&url, &["enqueue", "ping", "--payload", r#"{"message":"x"}"#, "--dedup", "k1"]));
    assert!(second.starts_with(&first) && second.contains("existing live job"), "{first} / {second}");

    let bad = dklctl(&url, &["enqueue", "ping", "--payload", "{not json"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--payload is not valid JSON"));

    let unknown = dklctl(&url, &["show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no job with id"));
}

#[sqlx::test(migrations = false)]
async fn scheduling_commands_do_what_they_say(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));

    // An admin row, listed, then cancelled before it runs.
    let out = stdout(&dklctl(&url, &[
        "schedule", "ping", "--at", "2099-01-01T00:00:00Z", "--payload", r#"{"message":"later"}"#,
        "--note", "cli test", "--created-by", "anna",
    ]));
    let row = out.split_whitespace().next().unwrap().to_string();
    assert_eq!(row.len(), 36, "a UUID: {out}");
    let status = stdout(&dklctl(&url, &["status"]));
    assert!(status.contains(&row) && status.contains("pending") && status.contains("anna"), "{status}");
    assert!(status.contains("SCHEDULER LEADER: none"), "no scheduler runs in this test: {status}");
    assert!(stdout(&dklctl(&url, &["cancel", &row])).contains("cancelled; it will not run"));
    assert!(stdout(&dklctl(&url, &["cancel", &row])).contains("cancelled"), "cancel is idempotent");
    let missing = dklctl(&url, &["cancel", "00000000-0000-0000-0000-000000000000"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no scheduled_jobs row with id"));

    // The CLI refuses what the scheduler would reject.
    let bad = dklctl(&url, &["schedule", "sned_mail"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown job kind `sned_mail`"));
    let bad = dklctl(&url, &["schedule", "ping", "--payload", r#"{"sleep_ms":"x"}"#]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not decode as job kind `ping`"));

    // Schedules: listed; run-now enqueues; jobs filters by schedule.
    let schedules = stdout(&dklctl(&url, &["schedules"]));
    for name in ["fetch-mail", "retention", "leaderboard-recompute", "session-expiry", "prune-jobs"] {
        assert!(schedules.contains(name), "{name} missing: {schedules}");
    }
    let job = stdout(&dklctl(&url, &["run-now", "prune-jobs"]));
    let listed = stdout(&dklctl(&url, &["jobs", "--schedule", "prune-jobs"]));
    assert!(listed.contains(&job) && listed.contains("schedule prune-jobs"), "{listed}");
    assert!(stdout(&dklctl(&url, &["pause", "fetch-mail"])).contains("paused"));
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM job_schedules WHERE name = 'fetch-mail'").fetch_one(&pool).await.unwrap();
    assert!(!enabled);
    assert!(stdout(&dklctl(&url, &["resume", "fetch-mail"])).contains("resumed"));
    let (enabled, next): (bool, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT enabled, next_run_at FROM job_schedules WHERE name = 'fetch-mail'").fetch_one(&pool).await.unwrap();
    assert!(enabled && next.is_none(), "resuming starts from the next tick after now");
    assert!(String::from_utf8_lossy(&dklctl(&url, &["pause", "nope"]).stderr).contains("no schedule named `nope`"));
    let unknown = dklctl(&url, &["run-now", "prune-job"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no schedule named `prune-job`"));

    // Retry: a cancelled job runs again.
    assert!(stdout(&dklctl(&url, &["cancel", &job])).contains("CancelledBeforeStart"));
    assert!(stdout(&dklctl(&url, &["jobs", "--state", "cancelled"])).contains(&job));
    assert!(stdout(&dklctl(&url, &["retry", &job])).contains("pending again"));
    assert!(stdout(&dklctl(&url, &["jobs", "--state", "pending"])).contains(&job));
    let bad_state = dklctl(&url, &["jobs", "--state", "failed"]);
    assert!(String::from_utf8_lossy(&bad_state.stderr).contains("use one of: scheduled, pending"));
}

/// `dklctl enqueue` without `--max-attempts` gives a job its kind's attempts
/// (it gave every kind 5).
#[sqlx::test(migrations = false)]
async fn enqueue_uses_the_kinds_own_attempts(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    let max_attempts = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT max_attempts FROM apalis.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let prune = stdout(&dklctl(&url, &["enqueue", "prune_jobs", "--at", "2099-01-01T00:00:00Z"]));
    assert_eq!(max_attempts(prune).await, 3, "prune_jobs allows 3 attempts");
    let ping = stdout(&dklctl(&url, &["enqueue", "ping", "--at", "2099-01-01T00:00:00Z"]));
    assert_eq!(max_attempts(ping).await, 5);
    let chosen = stdout(&dklctl(&url, &["enqueue", "prune_jobs", "--max-attempts", "7", "--at", "2099-01-01T00:00:00Z"]));
    assert_eq!(max_attempts(chosen).await, 7);
}

/// No script prints a database URL as it is (it may hold a password); they
/// print the part after the last `@` at most.
#[test]
fn scripts_never_print_a_database_url() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().map(str::trim_start) {
            let prints = line.starts_with("log ") || line.starts_with("echo ") || line.starts_with("printf ");
            for var in ["DATABASE_URL", "PG_SERVER_URL", "url"] {
                let plain = format!("${var}");
                let braced = format!("${{{var}}}");
                let redacted = format!("${{{var}##*@}}");
                let shown = line.contains(&plain) || (line.contains(&braced) && !line.contains(&redacted));
                assert!(!(prints && shown), "{} prints ${var}: {line}", path.display());
            }
        }
    }
}
