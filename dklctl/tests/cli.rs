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
    assert!(
        o.status.success(),
        "dklctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[sqlx::test(migrations = false)]
async fn admin_commands_do_what_they_say(pool: PgPool) {
    let url = url_of(&pool).await;

    let before = dklctl(&url, &["status"]);
    assert_eq!(before.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&before.stderr).contains("run `dklctl migrate`"));

    assert_eq!(stdout(&dklctl(&url, &["migrate"])), "database migrated");
    assert_eq!(
        stdout(&dklctl(&url, &["migrate"])),
        "database migrated",
        "migrate is repeatable"
    );
    stdout(&dklctl(&url, &["check"]));

    let id = stdout(&dklctl(
        &url,
        &["ping", "hello", "--at", "2099-01-01T00:00:00Z"],
    ));
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let shown = stdout(&dklctl(&url, &["show", &id]));
    assert!(
        shown.contains("job_type: \"ping\"") && shown.contains("status: \"Pending\""),
        "{shown}"
    );

    let status = stdout(&dklctl(&url, &["status"]));
    assert!(
        status.contains("default") && status.contains("scheduled"),
        "{status}"
    );

    assert!(stdout(&dklctl(&url, &["cancel", &id])).contains("CancelledBeforeStart"));
    let status = stdout(&dklctl(&url, &["status"]));
    assert!(status.contains("cancelled"), "{status}");

    let first = stdout(&dklctl(
        &url,
        &[
            "enqueue",
            "ping",
            "--payload",
            r#"{"message":"x"}"#,
            "--dedup",
            "k1",
        ],
    ));
    let second = stdout(&dklctl(
        &url,
        &[
            "enqueue",
            "ping",
            "--payload",
            r#"{"message":"x"}"#,
            "--dedup",
            "k1",
        ],
    ));
    assert!(
        second.starts_with(&first) && second.contains("existing live job"),
        "{first} / {second}"
    );

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
    let out = stdout(&dklctl(
        &url,
        &[
            "schedule",
            "ping",
            "--at",
            "2099-01-01T00:00:00Z",
            "--payload",
            r#"{"message":"later"}"#,
            "--note",
            "cli test",
            "--created-by",
            "anna",
        ],
    ));
    let row = out.split_whitespace().next().unwrap().to_string();
    assert_eq!(row.len(), 36, "a UUID: {out}");
    let status = stdout(&dklctl(&url, &["status"]));
    assert!(
        status.contains(&row) && status.contains("pending") && status.contains("anna"),
        "{status}"
    );
    assert!(
        status.contains("SCHEDULER LEADER: none"),
        "no scheduler runs in this test: {status}"
    );
    assert!(stdout(&dklctl(&url, &["cancel", &row])).contains("cancelled; it will not run"));
    assert!(
        stdout(&dklctl(&url, &["cancel", &row])).contains("cancelled"),
        "cancel is idempotent"
    );
    let missing = dklctl(&url, &["cancel", "00000000-0000-0000-0000-000000000000"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no scheduled_jobs row with id"));

    // The CLI refuses what the scheduler would reject.
    let bad = dklctl(&url, &["schedule", "sned_mail"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown job kind `sned_mail`"));
    let bad = dklctl(
        &url,
        &["schedule", "ping", "--payload", r#"{"sleep_ms":"x"}"#],
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not decode as job kind `ping`"));

    // Schedules: listed; run-now enqueues; jobs filters by schedule.
    let schedules = stdout(&dklctl(&url, &["schedules"]));
    for name in [
        "fetch-mail",
        "retention",
        "leaderboard-recompute",
        "session-expiry",
        "prune-jobs",
    ] {
        assert!(schedules.contains(name), "{name} missing: {schedules}");
    }
    let job = stdout(&dklctl(&url, &["run-now", "prune-jobs"]));
    let listed = stdout(&dklctl(&url, &["jobs", "--schedule", "prune-jobs"]));
    assert!(
        listed.contains(&job) && listed.contains("schedule prune-jobs"),
        "{listed}"
    );
    assert!(stdout(&dklctl(&url, &["pause", "fetch-mail"])).contains("paused"));
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM job_schedules WHERE name = 'fetch-mail'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!enabled);
    assert!(stdout(&dklctl(&url, &["resume", "fetch-mail"])).contains("resumed"));
    let (enabled, next): (bool, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT enabled, next_run_at FROM job_schedules WHERE name = 'fetch-mail'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        enabled && next.is_none(),
        "resuming starts from the next tick after now"
    );
    assert!(
        String::from_utf8_lossy(&dklctl(&url, &["pause", "nope"]).stderr)
            .contains("no schedule named `nope`")
    );
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
    let prune = stdout(&dklctl(
        &url,
        &["enqueue", "prune_jobs", "--at", "2099-01-01T00:00:00Z"],
    ));
    assert_eq!(max_attempts(prune).await, 3, "prune_jobs allows 3 attempts");
    let ping = stdout(&dklctl(
        &url,
        &["enqueue", "ping", "--at", "2099-01-01T00:00:00Z"],
    ));
    assert_eq!(max_attempts(ping).await, 5);
    let chosen = stdout(&dklctl(
        &url,
        &[
            "enqueue",
            "prune_jobs",
            "--max-attempts",
            "7",
            "--at",
            "2099-01-01T00:00:00Z",
        ],
    ));
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
            let prints = line.starts_with("log ")
                || line.starts_with("echo ")
                || line.starts_with("printf ");
            for var in ["DATABASE_URL", "PG_SERVER_URL", "url"] {
                let plain = format!("${var}");
                let braced = format!("${{{var}}}");
                let redacted = format!("${{{var}##*@}}");
                let shown =
                    line.contains(&plain) || (line.contains(&braced) && !line.contains(&redacted));
                assert!(
                    !(prints && shown),
                    "{} prints ${var}: {line}",
                    path.display()
                );
            }
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Copies the shipped templates to a temp folder a test may break.
fn templates_copy(name: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let dst = std::env::temp_dir().join(format!("dkl-templates-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    for entry in std::fs::read_dir(&src)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.path().is_dir())
    {
        let to = dst.join(entry.file_name());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(entry.path()).unwrap().map(Result::unwrap) {
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    }
    dst
}

#[sqlx::test(migrations = false)]
async fn templates_sync_check_and_render(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    let dir = templates_copy("sync");
    let dir_s = dir.to_str().unwrap();

    let first = stdout(&dklctl(&url, &["templates", "sync", "--dir", dir_s]));
    assert_eq!(
        first.lines().filter(|l| l.ends_with(" added")).count(),
        8,
        "{first}"
    );
    let again = stdout(&dklctl(&url, &["templates", "sync", "--dir", dir_s]));
    assert_eq!(
        again.lines().filter(|l| l.ends_with(" unchanged")).count(),
        8,
        "{again}"
    );

    // An admin edits a template in the database: sync keeps it ...
    sqlx::query(
        "UPDATE email_templates SET subject = 'Dank je, {{naam}}!' WHERE name = 'contact_email'",
    )
    .execute(&pool)
    .await
    .unwrap();
    std::fs::write(dir.join("contact_email/subject.hbs"), "Bedankt, {{naam}}\n").unwrap();
    let kept = stdout(&dklctl(&url, &["templates", "sync", "--dir", dir_s]));
    assert!(
        kept.contains("contact_email")
            && kept.contains("kept: changed in the database")
            && kept.contains("--force"),
        "{kept}"
    );
    let subject = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT subject FROM email_templates WHERE name = 'contact_email'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(subject().await, "Dank je, {{naam}}!");
    // ... a file change to an untouched template goes in ...
    std::fs::write(
        dir.join("auto_response/subject.hbs"),
        "Automatisch antwoord: {{onderwerp}}\n",
    )
    .unwrap();
    let updated = stdout(&dklctl(&url, &["templates", "sync", "--dir", dir_s]));
    assert!(
        updated
            .lines()
            .any(|l| l.starts_with("auto_response") && l.ends_with("updated")),
        "{updated}"
    );
    // ... and --force replaces the admin's version.
    let forced = stdout(&dklctl(
        &url,
        &["templates", "sync", "--dir", dir_s, "--force"],
    ));
    assert!(forced.contains("overwritten (--force)"), "{forced}");
    assert_eq!(subject().await, "Bedankt, {{naam}}");

    // A broken file: refused with the file and line, nothing written.
    std::fs::write(
        dir.join("newsletter/body.html.hbs"),
        "<h1>{{titel}}</h1>\n{{#if inhoud}}\n{{{inhoud}}}\n<a href=\"{{afmeld_link}}\">x</a>\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("contact_email/subject.hbs"),
        "Nog anders, {{naam}}\n",
    )
    .unwrap();
    let refused = dklctl(&url, &["templates", "sync", "--dir", dir_s]);
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(
        err.contains("newsletter/body.html.hbs")
            && err.contains("line")
            && err.contains("nothing written"),
        "{err}"
    );
    assert_eq!(
        subject().await,
        "Bedankt, {{naam}}",
        "a refused sync writes nothing"
    );

    // Check: all rows fine, then an admin saves a broken one.
    let checked = stdout(&dklctl(&url, &["templates", "check"]));
    assert_eq!(
        checked.lines().filter(|l| l.ends_with(" ok")).count(),
        8,
        "{checked}"
    );
    sqlx::query("INSERT INTO email_templates (name, subject, html_content, variables) VALUES ('kapot', 'Hoi {{naam', '<p>x</p>', '[\"naam\"]')")
        .execute(&pool)
        .await
        .unwrap();
    let broken = dklctl(&url, &["templates", "check"]);
    assert_eq!(broken.status.code(), Some(1));
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(
        out.contains("kapot") && out.contains("BROKEN") && out.contains("subject"),
        "{out}"
    );

    // Render with variables from a file.
    let vars = dir.join("vars.json");
    std::fs::write(&vars, r#"{"naam": "Anna <de Vries>", "ontvangen_op": "2026-05-17T09:30:00+02:00", "bericht": "Hallo"}"#).unwrap();
    let shown = stdout(&dklctl(
        &url,
        &[
            "templates",
            "render",
            "contact_email",
            "--vars",
            vars.to_str().unwrap(),
        ],
    ));
    assert!(
        shown.starts_with("Subject: Bedankt, Anna <de Vries>"),
        "{shown}"
    );
    assert!(
        shown.contains("Anna &lt;de Vries&gt;") && shown.contains("17 mei 2026 om 09:30"),
        "{shown}"
    );
    std::fs::write(&vars, r#"{"naam": "Anna"}"#).unwrap();
    let missing = dklctl(
        &url,
        &[
            "templates",
            "render",
            "contact_email",
            "--vars",
            vars.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&missing).contains("variable `ontvangen_op` is missing"),
        "{}",
        stderr(&missing)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[sqlx::test(migrations = false)]
async fn mail_send_log_and_suppressions(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    let dir = templates_copy("mail");
    stdout(&dklctl(
        &url,
        &["templates", "sync", "--dir", dir.to_str().unwrap()],
    ));
    let vars = dir.join("vars.json");
    std::fs::write(
        &vars,
        r#"{"naam": "Anna", "ontvangen_op": "2026-05-17T09:30:00+02:00", "bericht": "Hallo"}"#,
    )
    .unwrap();
    let vars = vars.to_str().unwrap();

    let job = stdout(&dklctl(
        &url,
        &[
            "mail",
            "send",
            "--template",
            "contact_email",
            "--to",
            "anna@example.org",
            "--vars",
            vars,
        ],
    ));
    let kind: String = sqlx::query_scalar("SELECT job_type FROM apalis.jobs WHERE id = $1")
        .bind(&job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kind, "send_email");
    let bad = dklctl(
        &url,
        &[
            "mail",
            "send",
            "--template",
            "contact",
            "--to",
            "anna@example.org",
        ],
    );
    assert!(
        stderr(&bad).contains("no active template named \"contact\""),
        "{}",
        stderr(&bad)
    );
    let bad = dklctl(
        &url,
        &[
            "mail",
            "send",
            "--template",
            "contact_email",
            "--to",
            "anna",
        ],
    );
    assert!(
        stderr(&bad).contains("\"anna\" is not an e-mail address"),
        "{}",
        stderr(&bad)
    );

    assert!(
        stdout(&dklctl(
            &url,
            &[
                "suppress",
                "Bram@Example.org",
                "--reason",
                "unsubscribe",
                "--scope",
                "bulk"
            ]
        ))
        .contains("suppressed (bulk, unsubscribe)")
    );
    let (scope, reason): (String, String) = sqlx::query_as(
        "SELECT scope, reason FROM email_suppressions WHERE address = 'bram@example.org'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((scope.as_str(), reason.as_str()), ("bulk", "unsubscribe"));
    assert!(
        stderr(&dklctl(
            &url,
            &["suppress", "x@example.org", "--reason", "bored"]
        ))
        .contains("unknown reason `bored`")
    );
    assert!(
        stdout(&dklctl(&url, &["unsuppress", "bram@example.org"])).contains("no longer suppressed")
    );
    assert!(
        stderr(&dklctl(&url, &["unsuppress", "bram@example.org"]))
            .contains("not on the suppression list")
    );

    sqlx::query(
        "INSERT INTO verzonden_emails (recipient_email, subject, status, mail_kind, smtp_config, smtp_code, error_message)
         VALUES ('cees@example.org', 'Welkom', 'failed', 'transactional', 'default', 550, '550 no such user')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let log = stdout(&dklctl(&url, &["mail", "log", "--status", "failed"]));
    assert!(
        log.contains("cees@example.org")
            && log.contains("550 no such user")
            && log.contains("STATUS"),
        "{log}"
    );
    // Resend: the job that sent a message is re-enqueued under a new key.
    let row: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO verzonden_emails (recipient_email, subject, status, mail_kind, job_id, dedup_key)
         VALUES ('anna@example.org', 'Bedankt', 'unknown', 'transactional', $1, 'orig') RETURNING id",
    )
    .bind(&job)
    .fetch_one(&pool)
    .await
    .unwrap();
    let resent = stdout(&dklctl(&url, &["mail", "resend", &row.to_string()]));
    assert!(resent.contains("was unknown"), "{resent}");
    let new_job = resent.split_whitespace().next().unwrap();
    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT convert_from(job, 'UTF8')::jsonb FROM apalis.jobs WHERE id = $1",
    )
    .bind(new_job)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(payload["to"], "anna@example.org");
    assert!(
        payload["dedup_key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("resend:{row}:")),
        "{payload}"
    );
    let missing = dklctl(
        &url,
        &["mail", "resend", "00000000-0000-0000-0000-000000000000"],
    );
    assert!(
        stderr(&missing).contains("no verzonden_emails row"),
        "{}",
        stderr(&missing)
    );

    let none = stdout(&dklctl(
        &url,
        &["mail", "log", "--to", "nobody@example.org"],
    ));
    assert!(none.contains("no mail logged yet"), "{none}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn fixtures_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../worker/tests/fixtures/mail")
}

/// `dklctl mail import` of an .eml file, a Maildir and an mbox (twice:
/// stored once), then `mail inbox` (all, quarantined) and `mail show`.
#[sqlx::test(migrations = false)]
async fn mail_import_inbox_and_show(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    let dir = tempfile::tempdir().unwrap();
    // A Maildir with two real messages, and an mbox with two more (one of
    // them starting with a quoted ">From " line in its body).
    let maildir = dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    for (i, name) in [
        "mailparser-thirdparty-019-nested-mixed-alt-related.eml",
        "mailparser-legacy-012-cp1252-qp.eml",
    ]
    .iter()
    .enumerate()
    {
        std::fs::copy(
            fixtures_dir().join(name),
            maildir.join("cur").join(format!("{i}.eml:2,S")),
        )
        .unwrap();
    }
    let mut mbox = Vec::new();
    for name in [
        "cpython-msg_07-no-message-id.eml",
        "mailparser-thirdparty-014-mailing-list-alternative.eml",
    ] {
        mbox.extend_from_slice(b"From sender@example.org Mon Nov 30 10:00:00 2026\n");
        mbox.extend_from_slice(&std::fs::read(fixtures_dir().join(name)).unwrap());
        mbox.extend_from_slice(b"\n");
    }
    let mbox_path = dir.path().join("archief.mbox");
    std::fs::write(&mbox_path, mbox).unwrap();
    let broken = dir.path().join("kapot.eml");
    std::fs::write(
        &broken,
        b"\x00\x01\x02\xff\xfe zonder kop, geen bericht\n\n\x00",
    )
    .unwrap();
    let eml = fixtures_dir().join("cpython-msg_43-dsn-report-type.eml");

    let paths = [
        maildir.to_str().unwrap(),
        mbox_path.to_str().unwrap(),
        broken.to_str().unwrap(),
        eml.to_str().unwrap(),
    ];
    let mut args = vec!["mail", "import", "--account", "info"];
    args.extend(paths);
    let first = stdout(&dklctl(&url, &args));
    assert!(first.contains("(maildir): 2 messages, 2 stored"), "{first}");
    assert!(first.contains("(mbox): 2 messages, 2 stored"), "{first}");
    assert!(
        first.contains("total: 6 stored (1 quarantined), 0 already stored"),
        "{first}"
    );
    let again = stdout(&dklctl(&url, &args));
    assert!(
        again.contains("total: 0 stored (0 quarantined), 6 already stored"),
        "{again}"
    );

    let inbox = stdout(&dklctl(&url, &["mail", "inbox"]));
    assert_eq!(
        inbox.lines().count(),
        7,
        "a header and six messages: {inbox}"
    );
    assert!(
        inbox.contains("unprocessed") && inbox.contains("quarantined: not a mail message"),
        "{inbox}"
    );
    let quarantined = stdout(&dklctl(&url, &["mail", "inbox", "--quarantined"]));
    assert_eq!(quarantined.lines().count(), 2, "{quarantined}");
    assert!(
        quarantined.contains("kapot") || quarantined.contains("not a mail"),
        "{quarantined}"
    );

    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM incoming_emails WHERE subject LIKE '30 plaintext%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let shown = stdout(&dklctl(&url, &["mail", "show", &id.to_string()]));
    assert!(shown.contains("account:       info / import"), "{shown}");
    assert!(
        shown.contains("--- attachments ---") && shown.contains("image/"),
        "{shown}"
    );
    assert!(
        shown.contains("waiting for process_incoming_email"),
        "{shown}"
    );
    let missing = dklctl(&url, &["mail", "show", &uuid::Uuid::nil().to_string()]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("dklctl mail inbox"),
        "{}",
        stderr(&missing)
    );
    // (one job follows up a stored batch; `also` lists all but its first)
    let jobs: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(1 + coalesce(jsonb_array_length(convert_from(job, 'UTF8')::jsonb -> 'also'), 0)), 0)::bigint
           FROM apalis.jobs WHERE job_type = 'process_incoming_email'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        jobs, 5,
        "a follow-up for each message that is not quarantined"
    );
}

/// `dklctl accounts` and `accounts check` against a real Dovecot: a right
/// account, a wrong password, a wrong TLS mode, a host that is not there.
#[sqlx::test(migrations = false)]
async fn accounts_and_accounts_check(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    let dovecot = dkl_worker::imap::dovecot::Dovecot::start(&[
        ("info@dkl.test", "goed"),
        ("in@dkl.test", "ook"),
    ])
    .unwrap();
    dovecot
        .deliver(
            "info@dkl.test",
            "INBOX",
            &std::fs::read(fixtures_dir().join("cpython-msg_07-no-message-id.eml")).unwrap(),
        )
        .unwrap();
    let port = dovecot.port.to_string();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let run = |extra: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dklctl"));
        cmd.args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .env("DKL_IMAP_ACCOUNTS", "info,inschrijving")
            .env("DKL_IMAP_INFO_HOST", "127.0.0.1")
            .env("DKL_IMAP_INFO_PORT", &port)
            .env("DKL_IMAP_INFO_TLS", "plain")
            .env("DKL_IMAP_INFO_USER", "info@dkl.test")
            .env("DKL_IMAP_INFO_PASSWORD", "goed")
            .env("DKL_IMAP_INSCHRIJVING_HOST", "127.0.0.1")
            .env("DKL_IMAP_INSCHRIJVING_PORT", &port)
            .env("DKL_IMAP_INSCHRIJVING_TLS", "plain")
            .env("DKL_IMAP_INSCHRIJVING_USER", "in@dkl.test")
            .env("DKL_IMAP_INSCHRIJVING_PASSWORD", "fout-wachtwoord")
            .env("DKL_IMAP_TIMEOUT_SECS", "3");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let ok = run(&[], &["accounts", "check", "info"]);
    let text = stdout(&ok);
    assert!(
        text.contains("info: OK") && text.contains("INBOX: 1 messages"),
        "{text}"
    );
    assert!(text.contains("IDLE: yes"), "{text}");

    let all = run(&[], &["accounts", "check"]);
    assert!(!all.status.success());
    let out = String::from_utf8_lossy(&all.stdout);
    assert!(
        out.contains("inschrijving: FAILED: login as `in@dkl.test` refused"),
        "{out}"
    );
    assert!(
        out.contains("DKL_IMAP_INSCHRIJVING_PASSWORD") && !out.contains("fout-wachtwoord"),
        "{out}"
    );

    let tls = run(
        &[("DKL_IMAP_INFO_TLS", "tls")],
        &["accounts", "check", "info"],
    );
    let out = String::from_utf8_lossy(&tls.stdout);
    assert!(!tls.status.success() && out.contains("TLS"), "{out}");
    assert!(out.contains("DKL_IMAP_INFO_TLS"), "the fix is named: {out}");

    let gone = run(
        &[("DKL_IMAP_INFO_PORT", &closed)],
        &["accounts", "check", "info"],
    );
    let out = String::from_utf8_lossy(&gone.stdout);
    assert!(
        out.contains("cannot connect") && out.contains("DKL_IMAP_INFO_HOST"),
        "{out}"
    );

    // The list shows each mailbox with its state (nothing fetched yet).
    let list = stdout(&run(&[], &["accounts"]));
    assert!(
        list.contains("info") && list.contains("inschrijving") && list.contains("never"),
        "{list}"
    );
    assert!(!list.contains("goed"), "no password in the list: {list}");
}

/// `dklctl newsletter …` as an admin types it: create, schedule (sent once
/// to each subscriber by a worker), status as JSON, pause refused on a sent
/// newsletter, send-test, list.
#[sqlx::test(migrations = false)]
async fn newsletter_create_schedule_status_and_send_test(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    let dir = templates_copy("newsletter");
    stdout(&dklctl(
        &url,
        &["templates", "sync", "--dir", dir.to_str().unwrap()],
    ));
    sqlx::query(
        "INSERT INTO gebruikers (naam, email, newsletter_subscribed)
         SELECT 'Lid ' || i, 'cli' || i || '@example.org', true FROM generate_series(1, 7) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let text = dir.join("nieuws.txt");
    std::fs::write(&text, "De inschrijving is open.\n\nTot ziens!").unwrap();
    let id = stdout(&dklctl(
        &url,
        &[
            "newsletter",
            "create",
            "--title",
            "Nieuws",
            "--text",
            text.to_str().unwrap(),
        ],
    ));
    let id: uuid::Uuid = id.parse().expect("a newsletter id");
    let sink = dkl_worker::smtp::sink::SmtpSink::start(&[]).expect("start smtp-sink");
    let scheduled = stdout(&dklctl(&url, &["newsletter", "schedule", &id.to_string()]));
    assert!(scheduled.contains("scheduled to go out now"), "{scheduled}");

    let vars: std::collections::BTreeMap<&str, String> = [
        ("DKL_SMTP_DEFAULT_PORT", sink.port.to_string()),
        ("DKL_UNSUBSCRIBE_SECRET", "c".repeat(40)),
    ]
    .into();
    let config = dkl_shared::config::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let rt = dkl_tests::start(
        &pool,
        dkl_worker::handlers::registry(&pool, &config),
        dkl_tests::fast_config(),
    );
    dkl_tests::wait_for(
        std::time::Duration::from_secs(60),
        "newsletter sent",
        || async {
            let status: String = sqlx::query_scalar("SELECT status FROM newsletters WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            (status == "sent").then_some(())
        },
    )
    .await;
    rt.stop().await;
    let json: serde_json::Value = serde_json::from_str(&stdout(&dklctl(
        &url,
        &["newsletter", "status", &id.to_string()],
    )))
    .expect("status prints JSON when not on a terminal");
    assert_eq!(json["status"], "sent");
    assert_eq!(
        (json["total"].as_i64(), json["sent"].as_i64()),
        (Some(7), Some(7))
    );
    let bar = stdout(&dklctl(
        &url,
        &["newsletter", "status", &id.to_string(), "--once"],
    ));
    assert!(bar.starts_with("sent") && bar.contains("7/7"), "{bar}");
    assert_eq!(sink.messages().len(), 7, "once each");

    let refused = dklctl(&url, &["newsletter", "pause", &id.to_string()]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("cannot go from sent to paused"),
        "{}",
        stderr(&refused)
    );

    let test_copy = Command::new(env!("CARGO_BIN_EXE_dklctl"))
        .args([
            "newsletter",
            "send-test",
            &id.to_string(),
            "--to",
            "beheer@example.org",
        ])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .env("DKL_SMTP_DEFAULT_PORT", sink.port.to_string())
        .output()
        .unwrap();
    assert!(stdout(&test_copy).contains("sent to beheer@example.org: 250"));
    assert_eq!(sink.messages().len(), 8);
    let counted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM newsletter_deliveries WHERE newsletter_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(counted, 7, "the test copy is not a delivery");
    assert!(stdout(&dklctl(&url, &["newsletter", "list"])).contains("Nieuws"));
}

#[sqlx::test(migrations = false)]
async fn retention_and_leaderboard_commands(pool: PgPool) {
    let url = url_of(&pool).await;
    stdout(&dklctl(&url, &["migrate"]));
    sqlx::raw_sql(
        "INSERT INTO verzonden_emails (recipient_email, subject, sent_at)
         SELECT 'oud' || i || '@example.org', 'oud', now() - interval '400 days' FROM generate_series(1, 3) i;
         INSERT INTO verzonden_emails (recipient_email, subject) VALUES ('nieuw@example.org', 'nieuw');
         INSERT INTO events (id, name, start_time)
              VALUES ('00000000-0000-0000-0000-0000000000e1', 'Loop', '2026-05-01 09:00+02');
         INSERT INTO participants (naam, email) VALUES ('Ann', 'ann@example.org'), ('Bob', 'bob@example.org'),
                                                      ('Cor', 'cor@example.org');
         INSERT INTO event_registrations (event_id, participant_id, steps)
         SELECT '00000000-0000-0000-0000-0000000000e1', id,
                CASE naam WHEN 'Ann' THEN 9000 ELSE 4000 END FROM participants;",
    )
    .execute(&pool)
    .await
    .unwrap();

    // A dry run counts per rule and deletes nothing.
    let dry = stdout(&dklctl(&url, &["retention", "--dry-run"]));
    let line = dry
        .lines()
        .find(|l| l.starts_with("verzonden_emails"))
        .unwrap_or_else(|| panic!("{dry}"));
    assert!(line.trim_end().ends_with(" 3"), "{line}");
    assert!(dry.contains("nothing was deleted"), "{dry}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM verzonden_emails")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 4);
    let json: serde_json::Value = serde_json::from_str(&stdout(&dklctl(
        &url,
        &["retention", "--dry-run", "--json"],
    )))
    .unwrap();
    let send_log = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "verzonden_emails")
        .unwrap();
    assert_eq!(send_log["would_delete"], 3);

    // Not computed yet, then computed: ties share a rank.
    let before = stdout(&dklctl(&url, &["leaderboard", "show", "all"]));
    assert!(before.contains("not computed yet"), "{before}");
    dkl_worker::store::leaderboards::recompute(&pool, Default::default())
        .await
        .unwrap();
    let board = stdout(&dklctl(
        &url,
        &[
            "leaderboard",
            "show",
            "event:00000000-0000-0000-0000-0000000000e1",
            "--top",
            "3",
        ],
    ));
    let ranks: Vec<&str> = board
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(ranks, ["1", "2", "2"], "{board}");
    assert!(board.contains("Ann"), "{board}");
    let periods = stdout(&dklctl(&url, &["leaderboard"]));
    assert!(
        periods.contains("year:2026") && periods.contains("all"),
        "{periods}"
    );

    // Bad input names the fix.
    let bad = dklctl(&url, &["leaderboard", "show", "week:3"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("use event:<uuid>, year:<yyyy> or all"),
        "{}",
        stderr(&bad)
    );
    let zero = dklctl(&url, &["leaderboard", "show", "all", "--top", "0"]);
    assert!(!zero.status.success());
}

#[sqlx::test(migrations = false)]
async fn dashboard_hash_password_and_bench(pool: PgPool) {
    use std::io::Write;
    let url = dkl_tests::url_of(&pool).await;
    let hash_of = |password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dklctl"))
            .args(["dashboard", "hash-password"])
            .env("DATABASE_URL", &url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = hash_of("wandelen voor het goede doel");
    let hash = stdout(&out);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("wandelen"));
    let config = dkl_shared::config::DashboardConfig {
        token: None,
        password_hash: Some(hash),
        secure_cookie: None,
    };
    let logins = dkl_worker::dashboard::auth::Logins::new(&config);
    assert!(logins.accepts("wandelen voor het goede doel").await);
    assert!(!logins.accepts("wandelen").await);
    let short = hash_of("kort");
    assert!(!short.status.success());
    assert!(stderr(&short).contains("at least 12 characters"));

    let out = dklctl(
        &url,
        &[
            "bench",
            "dashboard",
            "--jobs",
            "2000",
            "--send-log",
            "2000",
            "--samples",
            "5",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pages = report["page_p95_ms"].as_object().unwrap();
    assert_eq!(pages.len(), 21, "{report}");
    let worst = pages
        .values()
        .map(|v| v.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(report["worst_page_p95_ms"].as_f64().unwrap(), worst);
    assert!(report["ceiling_static_p95_ms"].as_f64().unwrap() > 0.0);
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'dkl_bench_dashboard_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the benchmark drops its database");
}
