//! Upkeep jobs against a real PostgreSQL: retention (every rule deletes what
//! it should and nothing else, one failing rule leaves the others working),
//! leaderboards (ranks with ties, test mode excluded, unchanged periods
//! skipped, readers never see a half-built board) and session expiry
//! (idempotent). Each job runs through the engine (`work_one`), so its
//! result is read back from `job_status` as an admin would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dkl_shared::config::Config;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId, Registry};
use dkl_shared::kinds::{ApplyRetention, ExpireSessions, RecomputeLeaderboards};
use dkl_tests::{migrate, work_one};
use dkl_worker::handlers::apply_retention::{self, Retention};
use dkl_worker::store::leaderboards::{self, Also, Period};
use dkl_worker::store::retention::Batching;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

fn registry(pool: &PgPool) -> Registry {
    let config = Config::from_lookup(|_| None).unwrap();
    dkl_worker::handlers::registry(pool, &config)
}

/// Runs one job of `kind` through the engine; returns its state and result.
async fn run<J: dkl_shared::jobs::JobKind>(
    pool: &PgPool,
    registry: Registry,
    job: J,
) -> (String, Value, Option<String>) {
    let id = JobClient::new(pool.clone())
        .enqueue(&job, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    work_one(pool, registry, J::QUEUE).await.expect("a job ran");
    status_of(pool, &id).await
}

async fn status_of(pool: &PgPool, id: &JobId) -> (String, Value, Option<String>) {
    let (state, result, error): (String, Option<Value>, Option<String>) =
        sqlx::query_as("SELECT state, result, last_error FROM job_status WHERE job_id = $1")
            .bind(&id.0)
            .fetch_one(pool)
            .await
            .unwrap();
    (state, result.unwrap_or(Value::Null), error)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
}

fn rule<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"] == name))
        .unwrap_or_else(|| panic!("no rule {name} in {result}"))
}

/// For every seeded rule: a row one second past its age and rows that do not
/// qualify (one second inside the window, or not meeting the condition).
/// The rows one second inside are written last, just before the job runs.
async fn seed_retention(pool: &PgPool) {
    exec(
        pool,
        "INSERT INTO gebruikers (id, naam, email) VALUES
             ('00000000-0000-0000-0000-0000000000a1', 'Anna', 'anna@example.org');

         -- incoming mail: processed and old (with an attachment), unprocessed and old
         INSERT INTO incoming_emails (id, account_type, sender_email, received_at, processed) VALUES
             ('00000000-0000-0000-0000-00000000e001', 'info', 'a@example.org', now() - interval '180 days 1 second', true),
             ('00000000-0000-0000-0000-00000000e002', 'info', 'b@example.org', now() - interval '400 days', false);
         INSERT INTO incoming_email_attachments (incoming_email_id, position, content_type, size, content)
             VALUES ('00000000-0000-0000-0000-00000000e001', 0, 'image/png', 3, 'abc');

         INSERT INTO verzonden_emails (recipient_email, subject, sent_at) VALUES
             ('old@example.org', 'old', now() - interval '365 days 1 second');

         -- tokens: expired long ago; revoked long ago (expiry still ahead); live and old
         INSERT INTO refresh_tokens (token, gebruiker_id, expires_at, created_at) VALUES
             ('t-expired', '00000000-0000-0000-0000-0000000000a1', now() - interval '30 days 1 second', now() - interval '60 days'),
             ('t-live', '00000000-0000-0000-0000-0000000000a1', now() + interval '1 day', now() - interval '400 days');
         INSERT INTO refresh_tokens (token, gebruiker_id, expires_at, revoked, revoked_at) VALUES
             ('t-revoked', '00000000-0000-0000-0000-0000000000a1', now() + interval '30 days', true, now() - interval '30 days 1 second');

         -- sessions: expired long ago; ended long ago; active and old
         INSERT INTO sessions (owner_id, expires_at, created_at) VALUES
             ('00000000-0000-0000-0000-0000000000a1', now() - interval '30 days 1 second', now() - interval '40 days'),
             ('00000000-0000-0000-0000-0000000000a1', now() + interval '1 day', now() - interval '400 days');
         INSERT INTO sessions (owner_id, expires_at, is_active, ended_at) VALUES
             ('00000000-0000-0000-0000-0000000000a1', now() + interval '1 day', false, now() - interval '30 days 1 second');

         -- notifications: read long ago; unread and old
         INSERT INTO notifications (user_id, type, title, message, read, read_at, created_at) VALUES
             ('00000000-0000-0000-0000-0000000000a1', 't', 'read', 'm', true, now() - interval '30 days 1 second', now() - interval '31 days'),
             ('00000000-0000-0000-0000-0000000000a1', 't', 'unread', 'm', false, NULL, now() - interval '400 days');

         INSERT INTO email_bounces (recipient, action, kind, format, created_at) VALUES
             ('x@example.org', 'failed', 'hard', 'dsn', now() - interval '365 days 1 second');
         INSERT INTO email_complaints (feedback_type, created_at) VALUES
             ('abuse', now() - interval '365 days 1 second');
         INSERT INTO auto_reply_log (sender, dedup_key, replied_at) VALUES
             ('x@example.org', 'k-old', now() - interval '90 days 1 second');

         -- images: marked deleted long ago (handed to cleanup_images), not deleted
         INSERT INTO uploaded_images (public_id, url, deleted_at, created_at) VALUES
             ('dkl/gone', 'http://x/gone', now() - interval '90 days 1 second', now() - interval '100 days'),
             ('dkl/kept', 'http://x/kept', NULL, now() - interval '400 days');

         -- jobs: done and discarded past their ages; a pending old one
         INSERT INTO apalis.jobs (job, id, job_type, queue, status, done_at) VALUES
             ('\\x7b7d', 'old-done', 'ping', 'default', 'Done', now() - interval '7 days 1 second'),
             ('\\x7b7d', 'old-killed', 'ping', 'default', 'Killed', now() - interval '30 days 1 second'),
             ('\\x7b7d', 'young-killed', 'ping', 'default', 'Killed', now() - interval '8 days');
         INSERT INTO apalis.jobs (job, id, job_type, queue, status, run_at) VALUES
             ('\\x7b7d', 'old-pending', 'ping', 'parked', 'Pending', now() + interval '1 year');",
    )
    .await;
}

async fn seed_one_second_inside(pool: &PgPool) {
    exec(
        pool,
        "INSERT INTO incoming_emails (account_type, sender_email, received_at, processed) VALUES
             ('info', 'inside@example.org', now() - interval '180 days' + interval '1 second', true);
         INSERT INTO verzonden_emails (recipient_email, subject, sent_at) VALUES
             ('inside@example.org', 'inside', now() - interval '365 days' + interval '1 second');
         INSERT INTO refresh_tokens (token, gebruiker_id, expires_at) VALUES
             ('t-inside', '00000000-0000-0000-0000-0000000000a1', now() - interval '30 days' + interval '1 second');
         INSERT INTO sessions (owner_id, expires_at, user_agent) VALUES
             ('00000000-0000-0000-0000-0000000000a1', now() - interval '30 days' + interval '1 second', 'inside');
         INSERT INTO notifications (user_id, type, title, message, read, read_at) VALUES
             ('00000000-0000-0000-0000-0000000000a1', 't', 'inside', 'm', true, now() - interval '30 days' + interval '1 second');
         INSERT INTO email_bounces (recipient, action, kind, format, created_at) VALUES
             ('inside@example.org', 'failed', 'hard', 'dsn', now() - interval '365 days' + interval '1 second');
         INSERT INTO email_complaints (feedback_type, created_at) VALUES
             ('inside', now() - interval '365 days' + interval '1 second');
         INSERT INTO auto_reply_log (sender, dedup_key, replied_at) VALUES
             ('inside@example.org', 'k-inside', now() - interval '90 days' + interval '1 second');
         INSERT INTO uploaded_images (public_id, url, deleted_at) VALUES
             ('dkl/inside', 'http://x/inside', now() - interval '90 days' + interval '1 second');
         INSERT INTO apalis.jobs (job, id, job_type, queue, status, done_at) VALUES
             ('\\x7b7d', 'inside-done', 'ping', 'default', 'Done', now() - interval '7 days' + interval '1 second');",
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn every_retention_rule_deletes_exactly_what_it_should(pool: PgPool) {
    migrate(&pool).await;
    seed_retention(&pool).await;

    // A dry run first: counts per rule, nothing deleted.
    seed_one_second_inside(&pool).await;
    let (state, dry, _) = run(
        &pool,
        registry(&pool),
        ApplyRetention {
            dry_run: true,
            rules: vec![],
        },
    )
    .await;
    assert_eq!(state, "done", "{dry}");
    for name in [
        "incoming_emails",
        "verzonden_emails",
        "notifications",
        "email_bounces",
        "email_complaints",
        "auto_reply_log",
        "uploaded_images",
    ] {
        assert_eq!(rule(&dry, name)["would_delete"], 1, "{name}: {dry}");
    }
    assert_eq!(rule(&dry, "refresh_tokens")["would_delete"], 2, "{dry}");
    assert_eq!(rule(&dry, "sessions")["would_delete"], 2, "{dry}");
    assert_eq!(rule(&dry, "jobs_done")["would_delete"], 1, "{dry}");
    assert_eq!(rule(&dry, "jobs_discarded")["would_delete"], 1, "{dry}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM incoming_emails").await,
        3
    );

    // The real run. Its own rows one second inside are made again just
    // before it, so the second is not used up by the dry run.
    exec(
        &pool,
        "DELETE FROM incoming_emails WHERE sender_email = 'inside@example.org';
                 DELETE FROM verzonden_emails WHERE recipient_email = 'inside@example.org';
                 DELETE FROM refresh_tokens WHERE token = 't-inside';
                 DELETE FROM sessions WHERE user_agent = 'inside';
                 DELETE FROM notifications WHERE title = 'inside';
                 DELETE FROM email_bounces WHERE recipient = 'inside@example.org';
                 DELETE FROM email_complaints WHERE feedback_type = 'inside';
                 DELETE FROM auto_reply_log WHERE dedup_key = 'k-inside';
                 DELETE FROM uploaded_images WHERE public_id = 'dkl/inside';
                 DELETE FROM apalis.jobs WHERE id = 'inside-done';",
    )
    .await;
    seed_one_second_inside(&pool).await;
    let (state, result, error) = run(&pool, registry(&pool), ApplyRetention::default()).await;
    assert_eq!(state, "done", "{result} {error:?}");
    assert_eq!(result["failed"], 0, "{result}");

    // What went, per table, and what stayed.
    let left = |sql: &'static str| count(&pool, sql);
    assert_eq!(rule(&result, "incoming_emails")["deleted"], 1, "{result}");
    assert_eq!(
        left(
            "SELECT count(*) FROM incoming_emails WHERE id = '00000000-0000-0000-0000-00000000e001'"
        )
        .await,
        0
    );
    assert_eq!(
        left("SELECT count(*) FROM incoming_email_attachments").await,
        0,
        "attachments go with their message"
    );
    assert_eq!(
        left("SELECT count(*) FROM incoming_emails WHERE NOT processed").await,
        1,
        "unprocessed mail stays"
    );
    assert_eq!(
        left("SELECT count(*) FROM incoming_emails WHERE sender_email = 'inside@example.org'")
            .await,
        1
    );
    assert_eq!(rule(&result, "verzonden_emails")["deleted"], 1);
    assert_eq!(left("SELECT count(*) FROM verzonden_emails").await, 1);
    assert_eq!(rule(&result, "refresh_tokens")["deleted"], 2);
    let tokens: Vec<String> = sqlx::query_scalar("SELECT token FROM refresh_tokens ORDER BY token")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(tokens, ["t-inside", "t-live"]);
    assert_eq!(rule(&result, "sessions")["deleted"], 2);
    assert_eq!(
        left("SELECT count(*) FROM sessions").await,
        2,
        "the active one and the one inside stay"
    );
    assert_eq!(rule(&result, "notifications")["deleted"], 1);
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM notifications ORDER BY title")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(titles, ["inside", "unread"]);
    assert_eq!(left("SELECT count(*) FROM email_bounces").await, 1);
    assert_eq!(left("SELECT count(*) FROM email_complaints").await, 1);
    assert_eq!(left("SELECT count(*) FROM auto_reply_log").await, 1);
    let jobs: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = 'ping' ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(jobs, ["inside-done", "old-pending", "young-killed"]);

    // Images are not deleted here: the store must confirm first.
    assert_eq!(left("SELECT count(*) FROM uploaded_images").await, 3);
    let images = rule(&result, "uploaded_images");
    assert_eq!(images["handed_to_cleanup"], 1, "{images}");
    let (kind, payload): (String, Vec<u8>) =
        sqlx::query_as("SELECT job_type, job FROM apalis.jobs WHERE id = $1")
            .bind(images["cleanup_job"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "cleanup_images");
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["grace_secs"], 90 * 86_400);

    // Counts are kept on the rules too.
    assert_eq!(
        left("SELECT last_deleted FROM retention_rules WHERE name = 'sessions'").await,
        2
    );
}

#[sqlx::test(migrations = false)]
async fn a_failing_rule_leaves_the_others_working(pool: PgPool) {
    migrate(&pool).await;
    seed_retention(&pool).await;
    // A rule this version has no SQL for (an admin added a target row).
    exec(
        &pool,
        "INSERT INTO retention_targets VALUES ('gebruikers', 'inactive', 'not implemented');
                 INSERT INTO retention_rules (name, table_name, condition, keep_for)
                      VALUES ('old_users', 'gebruikers', 'inactive', interval '1 day');",
    )
    .await;
    // A table outside the allow-list is refused when the rule is written.
    let refused = sqlx::query(
        "INSERT INTO retention_rules (name, table_name, condition, keep_for)
         VALUES ('everything', 'participants', 'any', interval '1 day')",
    )
    .execute(&pool)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("retention_rules_target_fkey"),
        "{refused}"
    );

    // Someone holds notifications locked for longer than the lock timeout.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let mut registry = registry(&pool);
    apply_retention::register(
        &mut registry,
        Arc::new(Retention {
            pool: pool.clone(),
            batching: Batching {
                lock_timeout: Duration::from_millis(200),
                ..Batching::default()
            },
        }),
    );
    let (state, result, error) = run(&pool, registry, ApplyRetention::default()).await;
    locker.rollback().await.unwrap();

    assert_eq!(state, "retrying", "{result}");
    assert_eq!(result["failed"], 2, "{result}");
    let locked = rule(&result, "notifications")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        locked.contains("stayed locked by another session for over 200 ms"),
        "{locked}"
    );
    let unknown = rule(&result, "old_users")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        unknown.contains("which this version cannot delete"),
        "{unknown}"
    );
    let error = error.unwrap();
    assert!(
        error.contains("2 of 14 retention rules failed (the others ran)"),
        "{error}"
    );
    // The others ran.
    assert_eq!(rule(&result, "sessions")["deleted"], 2, "{result}");
    assert_eq!(rule(&result, "verzonden_emails")["deleted"], 1, "{result}");
    assert_eq!(count(&pool, "SELECT count(*) FROM notifications").await, 2);
    let recorded: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM retention_rules WHERE name = 'notifications'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(recorded.unwrap().contains("locked"));
}

// ---------------------------------------------------------------------------
// Leaderboards

async fn event(pool: &PgPool, name: &str, start: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO events (name, start_time) VALUES ($1, $2::timestamptz) RETURNING id",
    )
    .bind(name)
    .bind(start)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn walker(pool: &PgPool, name: &str, test_mode: bool) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO participants (naam, email, test_mode, account_type) VALUES ($1, $1 || '@example.org', $2, 'full') RETURNING id",
    )
    .bind(name)
    .bind(test_mode)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn register(
    pool: &PgPool,
    event: Uuid,
    participant: Uuid,
    steps: i32,
    km: f64,
    test_mode: bool,
) {
    sqlx::query(
        "INSERT INTO event_registrations (event_id, participant_id, steps, total_distance, test_mode)
         VALUES ($1, $2, $3, $4::numeric, $5)",
    )
    .bind(event)
    .bind(participant)
    .bind(steps)
    .bind(km)
    .bind(test_mode)
    .execute(pool)
    .await
    .unwrap();
}

async fn board(pool: &PgPool, period: Period) -> Vec<(String, i32, i32, i32)> {
    leaderboards::top(pool, period, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.rank, e.steps, e.points))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn ranks_share_ties_and_test_mode_is_left_out(pool: PgPool) {
    migrate(&pool).await;
    let spring = event(&pool, "Voorjaar", "2026-04-12 09:00+02").await;
    let autumn = event(&pool, "Najaar", "2026-10-04 09:00+02").await;
    let older = event(&pool, "Vorig jaar", "2025-05-01 09:00+02").await;
    let ann = walker(&pool, "Ann", false).await;
    let bob = walker(&pool, "Bob", false).await;
    let cor = walker(&pool, "Cor", false).await;
    let dirk = walker(&pool, "Dirk", false).await;
    let tess = walker(&pool, "Tess", true).await;
    register(&pool, spring, ann, 12_500, 9.5, false).await;
    register(&pool, spring, bob, 8_000, 6.0, false).await;
    register(&pool, spring, cor, 8_000, 6.5, false).await;
    register(&pool, spring, dirk, 3_000, 2.0, false).await;
    register(&pool, spring, tess, 99_000, 70.0, false).await; // a test participant
    register(&pool, autumn, dirk, 10_000, 7.0, false).await;
    register(&pool, autumn, bob, 50_000, 40.0, true).await; // a test registration
    register(&pool, older, cor, 20_000, 15.0, false).await;
    sqlx::query("UPDATE event_registrations SET finish_time = now() WHERE participant_id = $1 AND event_id = $2")
        .bind(ann).bind(spring).execute(&pool).await.unwrap();

    let (state, result, _) = run(&pool, registry(&pool), RecomputeLeaderboards::default()).await;
    assert_eq!(state, "done", "{result}");

    // 1, 2, 2, 4; Cor above Bob on display (more distance), same rank.
    // Points: one per 1,000 steps, +10 for a finished walk.
    assert_eq!(
        board(&pool, Period::Event(spring)).await,
        [
            ("Ann".to_string(), 1, 12_500, 22),
            ("Cor".to_string(), 2, 8_000, 8),
            ("Bob".to_string(), 2, 8_000, 8),
            ("Dirk".to_string(), 4, 3_000, 3),
        ]
    );
    assert_eq!(
        board(&pool, Period::Event(autumn)).await,
        [("Dirk".to_string(), 1, 10_000, 10)]
    );
    assert_eq!(
        board(&pool, Period::Year(2026)).await,
        [
            ("Dirk".to_string(), 1, 13_000, 13),
            ("Ann".to_string(), 2, 12_500, 22),
            ("Cor".to_string(), 3, 8_000, 8),
            ("Bob".to_string(), 3, 8_000, 8),
        ]
    );
    assert_eq!(
        board(&pool, Period::All).await,
        [
            ("Cor".to_string(), 1, 28_000, 28),
            ("Dirk".to_string(), 2, 13_000, 13),
            ("Ann".to_string(), 3, 12_500, 22),
            ("Bob".to_string(), 4, 8_000, 8),
        ]
    );
    assert_eq!(
        board(&pool, Period::Year(2025)).await,
        [("Cor".to_string(), 1, 20_000, 20)]
    );
    assert_eq!(result["periods"].as_object().unwrap().len(), 6, "{result}");

    // Switching Tess out of test mode puts her on top everywhere she walked.
    exec(
        &pool,
        &format!("UPDATE participants SET test_mode = false WHERE id = '{tess}'"),
    )
    .await;
    leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert_eq!(
        board(&pool, Period::Event(spring)).await[0],
        ("Tess".to_string(), 1, 99_000, 99)
    );
    assert_eq!(
        board(&pool, Period::Event(autumn)).await.len(),
        1,
        "autumn unchanged"
    );
}

#[sqlx::test(migrations = false)]
async fn unchanged_periods_are_skipped(pool: PgPool) {
    migrate(&pool).await;
    let a = event(&pool, "A", "2026-04-12 09:00+02").await;
    let b = event(&pool, "B", "2025-04-12 09:00+02").await;
    let p = walker(&pool, "Pim", false).await;
    let q = walker(&pool, "Quin", false).await;
    register(&pool, a, p, 5_000, 4.0, false).await;
    register(&pool, b, q, 6_000, 4.0, false).await;

    let first = leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert_eq!(first.periods.len(), 5, "{first:?}"); // 2 events, 2 years, all
    let again = leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert!(again.periods.is_empty(), "{again:?}");
    assert_eq!(again.skipped, 5);
    assert_eq!(again.rows_written, 0);

    // An update that changes nothing the boards use is not a change.
    exec(
        &pool,
        "UPDATE event_registrations SET notities = 'belde op'",
    )
    .await;
    assert!(
        leaderboards::recompute(&pool, Also::default())
            .await
            .unwrap()
            .periods
            .is_empty()
    );

    // One event's steps change: its event, its year and all time only.
    exec(
        &pool,
        &format!("UPDATE event_registrations SET steps = 7000 WHERE event_id = '{b}'"),
    )
    .await;
    let changed = leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    let names: Vec<&str> = changed.periods.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("event:{b}"),
            "year:2025".to_string(),
            "all".to_string()
        ]
    );
    assert_eq!(changed.skipped, 2);
    assert_eq!(changed.rows_written, 3);
    let forced = leaderboards::recompute(
        &pool,
        Also {
            all_periods: true,
            event: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(forced.periods.len(), 5);
    assert_eq!(
        forced.rows_written, 0,
        "nothing differs, nothing is written"
    );

    // A deleted registration leaves its boards.
    exec(
        &pool,
        &format!("DELETE FROM event_registrations WHERE event_id = '{a}'"),
    )
    .await;
    let emptied = leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert_eq!(emptied.rows_removed, 3, "{emptied:?}"); // event, year, all
    assert!(board(&pool, Period::Event(a)).await.is_empty());
    assert_eq!(board(&pool, Period::All).await.len(), 1);
}

/// Competition ranks in reading order: 1, then each row either ties the one
/// above (same steps, same rank) or has rank = its position.
fn check_board(rows: &[(i32, i32)]) -> Result<(), String> {
    for (i, &(rank, steps)) in rows.iter().enumerate() {
        let ok = if i == 0 {
            rank == 1
        } else {
            let (prev_rank, prev_steps) = rows[i - 1];
            steps <= prev_steps
                && if steps == prev_steps {
                    rank == prev_rank
                } else {
                    rank == i as i32 + 1
                }
        };
        if !ok {
            return Err(format!(
                "row {i}: rank {rank} steps {steps} after {:?}",
                rows.get(i.wrapping_sub(1))
            ));
        }
    }
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn a_reader_always_sees_a_complete_board(pool: PgPool) {
    migrate(&pool).await;
    const N: i64 = 3_000;
    const DROPPED: i64 = 500;
    let e = event(&pool, "Druk", "2026-05-01 09:00+02").await;
    exec(
        &pool,
        &format!(
            "INSERT INTO participants (naam, email, account_type)
         SELECT 'p' || i, 'p' || i || '@example.org', 'full' FROM generate_series(1, {N}) i;
         INSERT INTO event_registrations (event_id, participant_id, steps)
         SELECT '{e}', id, 1 + (random() * 50)::int FROM participants;"
        ),
    )
    .await;
    leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    let period = Period::Event(e).to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let recomputing = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let during = Arc::new(AtomicU64::new(0));
    let reader = {
        let (pool, stop, reads, period) =
            (pool.clone(), stop.clone(), reads.clone(), period.clone());
        let (recomputing, during) = (recomputing.clone(), during.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let in_recompute = recomputing.load(Ordering::SeqCst);
                let rows: Vec<(i32, i32)> = sqlx::query_as(
                    "SELECT rank, steps FROM leaderboards WHERE period = $1 ORDER BY rank, steps DESC",
                )
                .bind(&period)
                .fetch_all(&pool)
                .await
                .unwrap();
                let n = rows.len() as i64;
                assert!(
                    n == N || n == N - DROPPED,
                    "a board of {n} rows (expected {N} or {})",
                    N - DROPPED
                );
                if let Err(e) = check_board(&rows) {
                    panic!("half-built board: {e}");
                }
                reads.fetch_add(1, Ordering::Relaxed);
                if in_recompute && recomputing.load(Ordering::SeqCst) {
                    during.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for round in 0..12 {
        // New steps for everyone, and a block of walkers leaving or coming back.
        exec(
            &pool,
            "UPDATE event_registrations SET steps = 1 + (random() * 50)::int",
        )
        .await;
        if round % 2 == 0 {
            exec(&pool, &format!("UPDATE event_registrations SET status = 'cancelled'
                                   WHERE participant_id IN (SELECT id FROM participants ORDER BY id LIMIT {DROPPED})")).await;
        } else {
            exec(
                &pool,
                "UPDATE event_registrations SET status = 'confirmed' WHERE status = 'cancelled'",
            )
            .await;
        }
        recomputing.store(true, Ordering::SeqCst);
        let done = leaderboards::recompute(&pool, Also::default())
            .await
            .unwrap();
        recomputing.store(false, Ordering::SeqCst);
        assert!(!done.busy);
        assert!(done.rows_written > 0, "round {round} rewrote the board");
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("the reader saw only complete boards");
    let (reads, during) = (
        reads.load(Ordering::Relaxed),
        during.load(Ordering::Relaxed),
    );
    assert!(
        during > 0,
        "no read ran while a recompute did ({reads} reads in all)"
    );
}

#[sqlx::test(migrations = false)]
async fn a_deleted_or_moved_event_leaves_its_boards(pool: PgPool) {
    migrate(&pool).await;
    let gone = event(&pool, "Afgelast", "2026-06-01 09:00+02").await;
    let moved = event(&pool, "Verplaatst", "2026-09-01 09:00+02").await;
    let p = walker(&pool, "Pim", false).await;
    let q = walker(&pool, "Quin", false).await;
    register(&pool, gone, p, 5_000, 4.0, false).await;
    register(&pool, moved, q, 6_000, 4.0, false).await;
    leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert_eq!(board(&pool, Period::Year(2026)).await.len(), 2);

    exec(&pool, &format!("DELETE FROM events WHERE id = '{gone}'")).await;
    let after_delete = leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert!(board(&pool, Period::Event(gone)).await.is_empty());
    assert_eq!(board(&pool, Period::Year(2026)).await.len(), 1);
    assert_eq!(board(&pool, Period::All).await.len(), 1);
    let known: Vec<String> = leaderboards::periods(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.period)
        .collect();
    assert!(
        !known.contains(&format!("event:{gone}")),
        "an emptied period is forgotten: {known:?} {after_delete:?}"
    );

    exec(
        &pool,
        &format!("UPDATE events SET start_time = '2027-03-01 09:00+01' WHERE id = '{moved}'"),
    )
    .await;
    leaderboards::recompute(&pool, Also::default())
        .await
        .unwrap();
    assert!(
        board(&pool, Period::Year(2026)).await.is_empty(),
        "the old year's board lost it"
    );
    assert_eq!(
        board(&pool, Period::Year(2027)).await,
        [("Quin".to_string(), 1, 6_000, 6)]
    );
}

#[sqlx::test(migrations = false)]
async fn a_second_recompute_at_once_does_not_wait(pool: PgPool) {
    migrate(&pool).await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('dkl:leaderboards'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = tokio::time::timeout(
        Duration::from_secs(5),
        leaderboards::recompute(&pool, Also::default()),
    )
    .await
    .expect("returns at once")
    .unwrap();
    assert!(busy.busy);
    holder.rollback().await.unwrap();
}

// ---------------------------------------------------------------------------
// Session expiry

#[sqlx::test(migrations = false)]
async fn session_expiry_is_idempotent(pool: PgPool) {
    migrate(&pool).await;
    exec(&pool, "
        INSERT INTO gebruikers (id, naam, email) VALUES ('00000000-0000-0000-0000-0000000000b1', 'Bep', 'bep@example.org');
        INSERT INTO sessions (owner_id, expires_at, is_current) VALUES
            ('00000000-0000-0000-0000-0000000000b1', now() - interval '1 minute', true),
            ('00000000-0000-0000-0000-0000000000b1', now() - interval '2 days', false),
            ('00000000-0000-0000-0000-0000000000b1', now() + interval '1 hour', true);
        INSERT INTO refresh_tokens (token, gebruiker_id, expires_at) VALUES
            ('expired', '00000000-0000-0000-0000-0000000000b1', now() - interval '1 second'),
            ('live', '00000000-0000-0000-0000-0000000000b1', now() + interval '7 days');
        INSERT INTO user_roles (user_id, role_id, expires_at)
            SELECT '00000000-0000-0000-0000-0000000000b1', id, now() - interval '1 hour' FROM roles WHERE name = 'moderator';
        INSERT INTO user_roles (user_id, role_id, expires_at)
            SELECT '00000000-0000-0000-0000-0000000000b1', id, NULL FROM roles WHERE name = 'user';
    ").await;

    let (state, first, _) = run(&pool, registry(&pool), ExpireSessions {}).await;
    assert_eq!(state, "done");
    assert_eq!(
        first,
        serde_json::json!({"sessions": 2, "refresh_tokens": 1, "user_roles": 1})
    );
    let (_, second, _) = run(&pool, registry(&pool), ExpireSessions {}).await;
    assert_eq!(
        second,
        serde_json::json!({"sessions": 0, "refresh_tokens": 0, "user_roles": 0})
    );

    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sessions WHERE is_active OR is_current"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sessions WHERE NOT is_active AND ended_at IS NOT NULL"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM refresh_tokens WHERE revoked AND revoked_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM refresh_tokens WHERE token = 'live' AND NOT revoked"
        )
        .await,
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM user_roles WHERE is_active").await,
        1
    );
}

#[test]
fn config_needs_no_image_store_to_start() {
    let vars: BTreeMap<String, String> = BTreeMap::new();
    let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    assert!(config.images.cloudinary_url.is_none());
}
