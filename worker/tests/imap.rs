//! Mail in against a real Dovecot (started per test on a port of its own)
//! and a real PostgreSQL: two accounts, the same UID in two mailboxes, a
//! UIDVALIDITY reset, Dovecot killed mid-fetch, after-import actions,
//! quarantine, IDLE and a dropped IDLE connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dkl_shared::config::{AfterImport, ImapAccount, ImapConfig};
use dkl_tests::{migrate, wait_for};
use dkl_worker::handlers::fetch_mail::Fetcher;
use dkl_worker::imap::dovecot::Dovecot;
use dkl_worker::imap::fetch::fetch_mailbox;
use dkl_worker::imap::stats::ImapStats;
use sqlx::PgPool;

const INFO: (&str, &str) = ("info@dkl.test", "info-geheim");
const INSCHRIJVING: (&str, &str) = ("inschrijving@dkl.test", "inschrijving-geheim");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mail")
            .join(name),
    )
    .unwrap()
}

/// A realistic message with a unique Message-ID (real headers and body
/// taken from a fixture, renumbered).
fn numbered(n: usize) -> Vec<u8> {
    let base = String::from_utf8_lossy(&fixture(
        "mailparser-thirdparty-014-mailing-list-alternative.eml",
    ))
    .into_owned();
    base.replacen(
        "Message-ID: <325993.29502.qm@web28416.mail.ukl.yahoo.com>",
        &format!("Message-ID: <test-{n}@dkl.test>"),
        1,
    )
    .replacen(
        "Subject: [Shapelib] need some help",
        &format!("Subject: bericht {n}"),
        1,
    )
    .into_bytes()
}

fn imap_config(accounts: Vec<ImapAccount>) -> ImapConfig {
    ImapConfig {
        accounts,
        max_message_bytes: 25 * 1024 * 1024,
        fetch_batch: 100,
        poll_every: Duration::from_secs(1),
        idle_renew: Duration::from_secs(600),
        timeout: Duration::from_secs(10),
    }
}

fn fetcher(pool: &PgPool, config: ImapConfig) -> Fetcher {
    Fetcher {
        pool: pool.clone(),
        config,
        stats: Arc::default(),
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Messages with a follow-up job (a job follows up a batch of them).
async fn follow_up_jobs(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT coalesce(sum(1 + coalesce(jsonb_array_length(convert_from(job, 'UTF8')::jsonb -> 'also'), 0)), 0)::bigint
           FROM apalis.jobs WHERE job_type = 'process_incoming_email'",
    )
    .await
}

#[sqlx::test(migrations = false)]
async fn two_accounts_and_the_same_uid_in_two_mailboxes_are_each_stored_once(pool: PgPool) {
    migrate(&pool).await;
    let dovecot = Dovecot::start(&[INFO, INSCHRIJVING]).unwrap();
    dovecot
        .deliver(
            INFO.0,
            "INBOX",
            &fixture("mailparser-thirdparty-019-nested-mixed-alt-related.eml"),
        )
        .unwrap();
    dovecot
        .deliver(
            INFO.0,
            "Aanmeldingen",
            &fixture("mailparser-legacy-012-cp1252-qp.eml"),
        )
        .unwrap();
    dovecot
        .deliver(
            INSCHRIJVING.0,
            "INBOX",
            &fixture("cpython-msg_07-no-message-id.eml"),
        )
        .unwrap();
    let mut info = dovecot.account("info", INFO.0, INFO.1);
    info.mailboxes = vec!["INBOX".into(), "Aanmeldingen".into()];
    let inschrijving = dovecot.account("inschrijving", INSCHRIJVING.0, INSCHRIJVING.1);
    let fetcher = fetcher(&pool, imap_config(vec![info.clone(), inschrijving.clone()]));

    for account in [&info, &inschrijving] {
        fetcher.fetch_account(account).await.unwrap();
    }
    let rows: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT account_type, mailbox, uid, uid_validity FROM incoming_emails ORDER BY account_type, mailbox",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let places: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|(a, m, u, _)| (a.as_str(), m.as_str(), u.as_deref()))
        .collect();
    assert_eq!(
        places,
        vec![
            ("info", "Aanmeldingen", Some("1")),
            ("info", "INBOX", Some("1")),
            ("inschrijving", "INBOX", Some("1")),
        ],
        "the same UID in three places is three messages"
    );
    assert!(rows.iter().all(|r| r.3.is_some()), "UIDVALIDITY is kept");
    assert_eq!(follow_up_jobs(&pool).await, 3, "one follow-up job each");
    // Attachments of the nested message are kept, with the inline image.
    let attachments: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT a.content_type, a.is_inline, a.size FROM incoming_email_attachments a
           JOIN incoming_emails e ON e.id = a.incoming_email_id
          WHERE e.account_type = 'info' AND e.mailbox = 'INBOX' ORDER BY a.position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(attachments.len(), 2, "{attachments:?}");
    assert!(
        attachments.iter().any(|(_, inline, _)| *inline),
        "{attachments:?}"
    );
    assert!(attachments.iter().all(|(_, _, size)| *size > 0));
    // windows-1252 decoded, raw kept byte for byte.
    let (subject, raw): (String, Vec<u8>) =
        sqlx::query_as("SELECT subject, raw FROM incoming_emails WHERE mailbox = 'Aanmeldingen'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(subject.contains("Frösche"), "{subject}");
    assert_eq!(raw, fixture("mailparser-legacy-012-cp1252-qp.eml"));

    // Fetching again stores nothing; a new message is stored once.
    fetcher.fetch_account(&info).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM incoming_emails").await,
        3
    );
    dovecot.deliver(INFO.0, "INBOX", &numbered(1)).unwrap();
    let report = fetcher.fetch_account(&info).await.unwrap();
    assert_eq!((report.stored, report.duplicates), (1, 0));
    let uids: Vec<String> = sqlx::query_scalar(
        "SELECT uid FROM incoming_emails WHERE account_type = 'info' AND mailbox = 'INBOX' ORDER BY uid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(uids, vec!["1", "2"]);
    let (last_uid, error): (i64, Option<String>) = sqlx::query_as(
        "SELECT last_uid, last_error FROM imap_cursors WHERE account_type = 'info' AND mailbox = 'INBOX'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((last_uid, error), (2, None));
}

#[sqlx::test(migrations = false)]
async fn a_wrong_password_or_mailbox_is_named_and_does_not_stop_the_other_account(pool: PgPool) {
    migrate(&pool).await;
    let dovecot = Dovecot::start(&[INFO, INSCHRIJVING]).unwrap();
    dovecot
        .deliver(INSCHRIJVING.0, "INBOX", &numbered(1))
        .unwrap();
    let wrong = dovecot.account("info", INFO.0, "fout");
    let right = dovecot.account("inschrijving", INSCHRIJVING.0, INSCHRIJVING.1);
    let fetcher = fetcher(&pool, imap_config(vec![wrong.clone(), right]));
    let registry = {
        let mut r = dkl_shared::jobs::Registry::new();
        dkl_worker::handlers::fetch_mail::register(&mut r, Arc::new(fetcher));
        r
    };
    let (ctx, _) = dkl_shared::jobs::JobContext::for_test(1, 3);
    let result = registry
        .call("fetch_mail", &serde_json::json!({}), ctx)
        .await;
    let error = format!("{:?}", result.unwrap_err());
    assert!(
        error.contains("login as `info@dkl.test` refused")
            && error.contains("DKL_IMAP_INFO_PASSWORD"),
        "{error}"
    );
    assert!(
        !error.contains("fout"),
        "the password is never shown: {error}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM incoming_emails WHERE account_type = 'inschrijving'"
        )
        .await,
        1,
        "the other account was fetched"
    );
    let status: Option<String> = sqlx::query_scalar(
        "SELECT last_error FROM imap_account_status WHERE account_type = 'info'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(status.unwrap().contains("refused"));

    let mut missing = dovecot.account("info", INFO.0, INFO.1);
    missing.mailboxes = vec!["Bestaatniet".into(), "INBOX".into()];
    dovecot.deliver(INFO.0, "INBOX", &numbered(2)).unwrap();
    let f = fetcher_for(&pool, &missing);
    let error = f.fetch_account(&missing).await.unwrap_err().to_string();
    assert!(
        error.contains("mailbox `Bestaatniet`") && error.contains("DKL_IMAP_INFO_MAILBOXES"),
        "{error}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM incoming_emails WHERE account_type = 'info'"
        )
        .await,
        1,
        "the account's other mailbox was still read"
    );
}

fn fetcher_for(pool: &PgPool, account: &ImapAccount) -> Fetcher {
    fetcher(pool, imap_config(vec![account.clone()]))
}

#[sqlx::test(migrations = false)]
async fn a_uidvalidity_reset_stores_nothing_twice_and_misses_nothing(pool: PgPool) {
    migrate(&pool).await;
    let dovecot = Dovecot::start(&[INFO]).unwrap();
    for n in 0..5 {
        dovecot.deliver(INFO.0, "INBOX", &numbered(n)).unwrap();
    }
    let account = dovecot.account("info", INFO.0, INFO.1);
    let f = fetcher_for(&pool, &account);
    assert_eq!(f.fetch_account(&account).await.unwrap().stored, 5);
    let old: i64 = count(&pool, "SELECT uid_validity FROM imap_cursors").await;

    dovecot
        .reset_uid_validity(INFO.0, "INBOX", (old + 1000) as u32)
        .unwrap();
    dovecot.deliver(INFO.0, "INBOX", &numbered(5)).unwrap();
    let report = f.fetch_account(&account).await.unwrap();
    assert!(report.resynced, "{report:?}");
    assert_eq!(
        (report.stored, report.duplicates),
        (1, 5),
        "the five known messages are recognised, the new one stored"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM incoming_emails").await,
        6
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT message_id) FROM incoming_emails"
        )
        .await,
        6
    );
    let (uid_validity, resynced_from): (i64, Option<i64>) =
        sqlx::query_as("SELECT uid_validity, resynced_from FROM imap_cursors")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((uid_validity, resynced_from), (old + 1000, Some(old)));
    assert_eq!(follow_up_jobs(&pool).await, 6);
}

#[sqlx::test(migrations = false)]
async fn dovecot_killed_mid_fetch_loses_nothing_and_doubles_nothing(pool: PgPool) {
    migrate(&pool).await;
    let mut dovecot = Dovecot::start(&[INFO]).unwrap();
    const N: usize = 3000;
    for n in 0..N {
        dovecot.deliver(INFO.0, "INBOX", &numbered(n)).unwrap();
    }
    let account = dovecot.account("info", INFO.0, INFO.1);
    let config = imap_config(vec![account.clone()]);
    let stats = ImapStats::default();
    let mut session = dkl_worker::imap::connect(&account, config.timeout)
        .await
        .unwrap();
    let fetching = {
        let pool = pool.clone();
        let account = account.clone();
        let config = config.clone();
        tokio::spawn(async move {
            fetch_mailbox(&pool, &mut session, &account, "INBOX", &config, &stats).await
        })
    };
    wait_for(
        Duration::from_secs(60),
        "a first batch committed",
        || async { (count(&pool, "SELECT count(*) FROM incoming_emails").await > 0).then_some(()) },
    )
    .await;
    dovecot.kill();
    let stored_at_kill = count(&pool, "SELECT count(*) FROM incoming_emails").await;
    let result = fetching.await.unwrap();
    assert!(result.is_err(), "the fetch saw the server die: {result:?}");
    let after_error = count(&pool, "SELECT count(*) FROM incoming_emails").await;
    assert!(
        (after_error as usize) < N,
        "killed mid-fetch ({stored_at_kill} then {after_error} of {N} stored)"
    );
    let cursor = count(&pool, "SELECT last_uid FROM imap_cursors").await;
    assert_eq!(
        cursor,
        count(&pool, "SELECT max(uid::int8) FROM incoming_emails").await,
        "the cursor is exactly at the last stored message"
    );

    dovecot.restart().unwrap();
    let report = fetcher_for(&pool, &account)
        .fetch_account(&account)
        .await
        .unwrap();
    assert_eq!(report.stored + after_error as usize, N);
    assert_eq!(report.duplicates, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM incoming_emails").await,
        N as i64
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT message_id) FROM incoming_emails"
        )
        .await,
        N as i64,
        "nothing doubled"
    );
    assert_eq!(follow_up_jobs(&pool).await, N as i64);
}

#[sqlx::test(migrations = false)]
async fn oversized_and_broken_messages_are_quarantined_and_the_batch_goes_on(pool: PgPool) {
    migrate(&pool).await;
    let dovecot = Dovecot::start(&[INFO]).unwrap();
    dovecot.deliver(INFO.0, "INBOX", &numbered(1)).unwrap();
    // A real message with a 3 MB attachment (CPython's corpus, padded).
    let mut large = fixture("cpython-msg_07-no-message-id.eml");
    let padding = "QUJD".repeat(750_000);
    large = String::from_utf8_lossy(&large)
        .replacen("\n\n", &format!("\nX-Padding: {}\n\n", &padding[..64]), 1)
        .into_bytes();
    large.extend_from_slice(format!("\n{padding}\n").as_bytes());
    dovecot.deliver(INFO.0, "INBOX", &large).unwrap();
    dovecot
        .deliver(
            INFO.0,
            "INBOX",
            b"\x00\x01\x02\xff\xfe binary, not a message\n\n\x00",
        )
        .unwrap();
    dovecot.deliver(INFO.0, "INBOX", &numbered(2)).unwrap();
    let account = dovecot.account("info", INFO.0, INFO.1);
    let mut config = imap_config(vec![account.clone()]);
    config.max_message_bytes = 1024 * 1024;
    let report = fetcher(&pool, config)
        .fetch_account(&account)
        .await
        .unwrap();
    assert_eq!((report.stored, report.quarantined), (4, 2), "{report:?}");
    let quarantined: Vec<(String, Option<String>, i64, bool)> = sqlx::query_as(
        "SELECT q.quarantine_reason, q.subject, q.raw_size, e.raw IS NULL
           FROM incoming_emails_quarantined q JOIN incoming_emails e USING (id) ORDER BY q.uid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        quarantined[0].0.contains("too large") && quarantined[0].0.contains("left on the server"),
        "{quarantined:?}"
    );
    assert_eq!(
        quarantined[0].1.as_deref(),
        Some("Here is your dingus fish"),
        "its header is read"
    );
    assert!(
        quarantined[0].2 > 3_000_000 && quarantined[0].3,
        "size kept, body not"
    );
    assert!(
        quarantined[1].0.contains("not a mail message"),
        "{quarantined:?}"
    );
    assert!(!quarantined[1].3, "a broken message keeps its raw bytes");
    assert_eq!(
        follow_up_jobs(&pool).await,
        2,
        "no follow-up for quarantined mail"
    );
}

async fn flags(account: &ImapAccount, mailbox: &str) -> Vec<(u32, bool)> {
    use futures::TryStreamExt;
    let mut session = dkl_worker::imap::connect(account, Duration::from_secs(10))
        .await
        .unwrap();
    session.examine(mailbox).await.unwrap();
    let fetches: Vec<_> = session
        .uid_fetch("1:*", "(UID FLAGS)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let out = fetches
        .iter()
        .map(|f| {
            (
                f.uid.unwrap(),
                f.flags()
                    .any(|fl| matches!(fl, async_imap::types::Flag::Seen)),
            )
        })
        .collect();
    let _ = session.logout().await;
    out
}

#[sqlx::test(migrations = false)]
async fn after_import_moves_only_what_is_stored(pool: PgPool) {
    migrate(&pool).await;
    let dovecot = Dovecot::start(&[INFO]).unwrap();
    for n in 0..250 {
        dovecot.deliver(INFO.0, "INBOX", &numbered(n)).unwrap();
    }
    let mut account = dovecot.account("info", INFO.0, INFO.1);
    account.after_import = AfterImport::MoveTo("Verwerkt".into());
    let report = fetcher_for(&pool, &account)
        .fetch_account(&account)
        .await
        .unwrap();
    assert_eq!((report.stored, report.actions_done), (250, 250));
    assert!(flags(&account, "INBOX").await.is_empty(), "INBOX emptied");
    assert_eq!(flags(&account, "Verwerkt").await.len(), 250);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM incoming_emails WHERE imap_action_pending"
        )
        .await,
        0
    );
}

#[sqlx::test(migrations = false)]
async fn idle_stores_new_mail_within_seconds_and_survives_a_dropped_connection(pool: PgPool) {
    migrate(&pool).await;
    let mut dovecot = Dovecot::start(&[INFO]).unwrap();
    let account = dovecot.account("info", INFO.0, INFO.1);
    let stats = Arc::new(ImapStats::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(dkl_worker::imap::watch::watch_mailbox(
        pool.clone(),
        account.clone(),
        "INBOX".into(),
        imap_config(vec![account.clone()]),
        stats.clone(),
        shutdown.clone(),
    ));
    let idle_up = |n: u64| {
        let stats = stats.clone();
        async move { (stats.snapshot().get("info").map(|c| c.idle_up) == Some(n)).then_some(()) }
    };
    wait_for(Duration::from_secs(20), "IDLE up", || idle_up(1)).await;
    dovecot.deliver(INFO.0, "INBOX", &numbered(1)).unwrap();
    let started = std::time::Instant::now();
    wait_for(
        Duration::from_secs(10),
        "the message stored through IDLE",
        || async {
            (count(&pool, "SELECT count(*) FROM incoming_emails").await == 1).then_some(())
        },
    )
    .await;
    eprintln!(
        "IDLE: stored {} ms after delivery",
        started.elapsed().as_millis()
    );

    // The server dies while the watcher idles: it reconnects by itself.
    dovecot.restart().unwrap();
    dovecot.deliver(INFO.0, "INBOX", &numbered(2)).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the message after the restart stored",
        || async {
            (count(&pool, "SELECT count(*) FROM incoming_emails").await == 2).then_some(())
        },
    )
    .await;
    wait_for(Duration::from_secs(20), "IDLE up again", || idle_up(1)).await;
    dovecot.deliver(INFO.0, "INBOX", &numbered(3)).unwrap();
    wait_for(
        Duration::from_secs(10),
        "IDLE works after the reconnect",
        || async {
            (count(&pool, "SELECT count(*) FROM incoming_emails").await == 3).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watcher stops on shutdown")
        .unwrap();
    assert_eq!(stats.snapshot()["info"].idle_up, 0);
}

/// The real `dkl-worker` with an account that marks mail `\Seen` after
/// import, killed with SIGKILL twice mid-ingest: at each kill, every
/// message the server shows as seen is stored (the flag only ever follows
/// the commit); after a restart every message is stored once and seen.
#[sqlx::test(migrations = false)]
async fn kill_9_between_commit_and_flag_loses_nothing_and_flags_only_what_is_stored(pool: PgPool) {
    use dkl_tests::process::{self, log_path, signal, spawn_logged};
    migrate(&pool).await;
    let url = dkl_tests::url_of(&pool).await;
    let dovecot = Dovecot::start(&[INFO]).unwrap();
    const N: usize = 2000;
    dovecot
        .deliver_all(INFO.0, "INBOX", (0..N).map(numbered))
        .unwrap();
    let mut account = dovecot.account("info", INFO.0, INFO.1);
    account.after_import = AfterImport::MarkSeen;
    let worker = || {
        let mut cmd = process::command(env!("CARGO_BIN_EXE_dkl-worker"), &url);
        cmd.env("DKL_IMAP_ACCOUNTS", "info")
            .env("DKL_IMAP_INFO_HOST", "127.0.0.1")
            .env("DKL_IMAP_INFO_PORT", dovecot.port.to_string())
            .env("DKL_IMAP_INFO_TLS", "plain")
            .env("DKL_IMAP_INFO_USER", INFO.0)
            .env("DKL_IMAP_INFO_PASSWORD", INFO.1)
            .env("DKL_IMAP_INFO_AFTER_IMPORT", "seen")
            .env("DKL_IMAP_FETCH_BATCH", "25");
        cmd
    };
    let stored_uids = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT uid::int8 FROM incoming_emails")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect::<std::collections::BTreeSet<i64>>()
    };
    // Each round kills the worker at a different point; the safety check
    // holds at every kill. At least one kill must land between a commit and
    // its flag (rows still marked pending, or stored but not yet seen), or
    // the test did not test what it says.
    let mut checked_partial = 0;
    for (round, at_least) in (300..=1700).step_by(200).enumerate() {
        if round >= 2 && checked_partial > 0 {
            break;
        }
        let mut child = spawn_logged(worker(), &log_path(&format!("imap-kill9-{round}")));
        wait_for(Duration::from_secs(60), "messages being stored", || async {
            (count(&pool, "SELECT count(*) FROM incoming_emails").await >= at_least).then_some(())
        })
        .await;
        signal(&child.0, libc::SIGKILL);
        let _ = child.0.wait();
        let stored = stored_uids(pool.clone()).await;
        let pending = count(
            &pool,
            "SELECT count(*) FROM incoming_emails WHERE imap_action_pending",
        )
        .await;
        let seen: Vec<u32> = flags(&account, "INBOX")
            .await
            .into_iter()
            .filter(|(_, seen)| *seen)
            .map(|(uid, _)| uid)
            .collect();
        let unstored_but_seen: Vec<&u32> = seen
            .iter()
            .filter(|u| !stored.contains(&i64::from(**u)))
            .collect();
        assert!(
            unstored_but_seen.is_empty(),
            "round {round}: flagged before stored: {unstored_but_seen:?}"
        );
        assert!(stored.len() < N, "round {round}: killed mid-ingest");
        checked_partial += usize::from(pending > 0 || seen.len() < stored.len());
    }
    assert!(
        checked_partial > 0,
        "no kill fell between a commit and its flag: the test did not test it"
    );

    let _last = spawn_logged(worker(), &log_path("imap-kill9-last"));
    wait_for(
        Duration::from_secs(90),
        "every message stored and seen",
        || async {
            let stored = count(&pool, "SELECT count(*) FROM incoming_emails").await;
            let pending = count(
                &pool,
                "SELECT count(*) FROM incoming_emails WHERE imap_action_pending",
            )
            .await;
            (stored == N as i64 && pending == 0).then_some(())
        },
    )
    .await;
    let all = flags(&account, "INBOX").await;
    assert_eq!(all.len(), N);
    assert!(
        all.iter().all(|(_, seen)| *seen),
        "every stored message ends up seen"
    );
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT uid) FROM incoming_emails").await,
        N as i64,
        "nothing stored twice"
    );
    assert_eq!(follow_up_jobs(&pool).await, N as i64);
}

#[sqlx::test(migrations = false)]
async fn a_failing_after_import_action_never_stops_new_mail(pool: PgPool) {
    migrate(&pool).await;
    let dovecot = Dovecot::start(&[INFO]).unwrap();
    for n in 0..3 {
        dovecot.deliver(INFO.0, "INBOX", &numbered(n)).unwrap();
    }
    let mut account = dovecot.account("info", INFO.0, INFO.1);
    // A folder name the server refuses to create or move to.
    account.after_import = AfterImport::MoveTo("Kapot&Map".into());
    let f = fetcher_for(&pool, &account);
    let report = f.fetch_account(&account).await.unwrap();
    assert_eq!(report.stored, 3);
    let error = report.action_error.expect("the failed move is reported");
    assert!(error.contains("after-import action failed"), "{error}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM incoming_emails WHERE imap_action_pending"
        )
        .await,
        3,
        "still pending, tried again next time"
    );
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM imap_cursors WHERE account_type = 'info'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        recorded.unwrap().contains("after-import"),
        "visible in dklctl accounts"
    );
    dovecot.deliver(INFO.0, "INBOX", &numbered(3)).unwrap();
    assert_eq!(
        f.fetch_account(&account).await.unwrap().stored,
        1,
        "new mail still comes in"
    );
    assert_eq!(
        flags(&account, "INBOX").await.len(),
        4,
        "nothing was moved away"
    );
}

/// A batch the database refuses (here: a NUL in a parsed field, as a
/// parser bug could produce) is stored message by message; the refused
/// one is kept quarantined with the database's reason, and the cursor moves.
#[sqlx::test(migrations = false)]
async fn a_message_the_database_refuses_is_quarantined_not_stopping_the_batch(pool: PgPool) {
    use dkl_worker::store::incoming_emails::{CursorAdvance, Incoming, store_batch_resilient};
    migrate(&pool).await;
    let message = |n: usize| {
        let raw = numbered(n);
        Incoming {
            mailbox: "INBOX".into(),
            uid_validity: Some(7),
            uid: Some(n as i64 + 1),
            received_at: chrono::Utc::now(),
            raw_size: raw.len() as i64,
            content_hash: dkl_worker::mime::content_hash(&raw),
            parsed: dkl_worker::mime::parse(&raw),
            raw: Some(raw),
            action_pending: false,
        }
    };
    let mut poisoned = message(1);
    poisoned.parsed.subject = Some("nul \0 byte".into());
    let batch = vec![message(0), poisoned, message(2)];
    let advance = CursorAdvance {
        uid_validity: 7,
        last_uid: 3,
        resync: false,
    };
    let outcome = store_batch_resilient(&pool, "info", Some(("INBOX", advance)), &batch)
        .await
        .unwrap();
    assert_eq!((outcome.stored, outcome.quarantined), (3, 1));
    let reason: String =
        sqlx::query_scalar("SELECT quarantine_reason FROM incoming_emails WHERE uid = '2'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(reason.contains("database refused"), "{reason}");
    assert_eq!(count(&pool, "SELECT last_uid FROM imap_cursors").await, 3);
    assert_eq!(follow_up_jobs(&pool).await, 2);
}
