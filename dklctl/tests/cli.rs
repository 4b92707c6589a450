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
