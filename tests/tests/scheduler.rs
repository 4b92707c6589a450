//! The scheduler against a real PostgreSQL: cron dialect, admin rows,
//! recurring ticks, catch-up, leadership, status views. One database per test.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dkl_shared::jobs::{EngineError, EnqueueOptions, JobClient, Registry, RetryOutcome};
use dkl_shared::kinds;
use dkl_shared::kinds::Ping;
use dkl_shared::monitor::{self, JobFilter};
use dkl_shared::schedules::store::{self, RunOutcome};
use dkl_shared::schedules::{self, CronSchedule, DIALECT_EXAMPLES, TickResult, enqueue_tick};
use dkl_tests::{
    disable_default_schedules, fast_config, migrate, start, start_scheduler, wait_for, wait_status,
};
use dkl_worker::handlers::ping;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

const T: Duration = Duration::from_secs(15);

fn pings() -> Registry {
    let mut r = Registry::new();
    ping::register(&mut r);
    r
}

async fn setup(pool: &PgPool) {
    migrate(pool).await;
    disable_default_schedules(pool).await;
}

async fn add_schedule(
    pool: &PgPool,
    name: &str,
    cron: &str,
    kind: &str,
    payload: serde_json::Value,
) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO job_schedules (name, cron, time_zone, job_kind, payload) VALUES ($1, $2, 'UTC', $3, $4) RETURNING id",
    )
    .bind(name)
    .bind(cron)
    .bind(kind)
    .bind(payload)
    .fetch_one(pool)
    .await
    .expect("insert schedule")
}

async fn runs(pool: &PgPool, schedule: &str) -> Vec<store::ScheduleRun> {
    store::runs_of(pool, schedule).await.expect("runs")
}

async fn scheduled_row(pool: &PgPool, id: Uuid) -> store::ScheduledJob {
    store::scheduled_job(pool, id)
        .await
        .expect("query")
        .expect("row exists")
}

async fn job_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn database_and_scheduler_accept_the_same_cron_dialect(pool: PgPool) {
    setup(&pool).await;
    for expr in DIALECT_EXAMPLES {
        sqlx::query("SELECT dkl_cron_check($1)")
            .bind(expr)
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        CronSchedule::parse(expr, "Europe/Amsterdam").unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
    for (bad, says) in [
        ("* * * * *", "it has 5 fields"),
        ("0 61 * * * *", "minute value \"61\" is outside 0-59"),
        ("0 0 12-8 * * *", "hour range \"12-8\" runs backwards"),
        ("0 */0 * * * *", "minute step \"/0\" must be 1-59"),
        ("0 0 0 * * FRY", "\"FRY\" is not a valid day-of-week value"),
        ("*,5 * * * * *", "mixes * or ? into a list"),
        ("0 0 0 ? * ?,1", "mixes * or ? into a list"),
    ] {
        let err = sqlx::query(
            "INSERT INTO job_schedules (name, cron, job_kind) VALUES ('bad', $1, 'ping')",
        )
        .bind(bad)
        .execute(&pool)
        .await
        .expect_err("a bad cron expression must be refused on save")
        .to_string();
        assert!(
            err.contains(&format!("invalid cron expression \"{bad}\"")),
            "{err}"
        );
        assert!(err.contains(says), "{bad}: {err}");
        assert!(
            CronSchedule::parse(bad, "UTC").is_err(),
            "croner accepted {bad}"
        );
    }
    let err = sqlx::query("INSERT INTO job_schedules (name, cron, job_kind, time_zone) VALUES ('tz', '0 0 0 * * *', 'ping', 'Europe/Amsterdm')")
        .execute(&pool)
        .await
        .expect_err("unknown time zone")
        .to_string();
    assert!(
        err.contains("unknown time zone \"Europe/Amsterdm\""),
        "{err}"
    );
}

#[sqlx::test(migrations = false)]
async fn admin_row_runs_at_its_time_and_status_shows_where_it_came_from(pool: PgPool) {
    setup(&pool).await;
    let rt = start(&pool, pings(), fast_config());
    let scheduler = start_scheduler(&pool);
    let (id, run_at): (Uuid, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO scheduled_jobs (job_kind, payload, run_at, created_by, note)
         VALUES ('ping', '{\"message\": \"from an admin\"}', now() + interval '2 seconds', 'anna', 'test row')
         RETURNING id, run_at",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let row = wait_for(T, "the row to be enqueued", || async {
        let r = scheduled_row(&pool, id).await;
        (r.status == "enqueued").then_some(r)
    })
    .await;
    let job_id = dkl_shared::jobs::JobId(row.job_id.clone().expect("enqueued row has a job id"));
    let job = wait_status(&pool, &job_id, "Done", T).await;
    let started = job.lock_at.expect("started");
    assert!(
        started >= run_at,
        "started {started} before its time {run_at}"
    );
    assert!(
        started - run_at < chrono::Duration::seconds(1),
        "started {started}, due {run_at}"
    );
    assert_eq!(
        job.metadata
            .as_ref()
            .and_then(|m| m["scheduled_job"].as_str()),
        Some(id.to_string().as_str())
    );

    let status = monitor::jobs(
        &pool,
        &JobFilter {
            limit: 10,
            ..JobFilter::default()
        },
    )
    .await
    .unwrap();
    let mine = status
        .iter()
        .find(|j| j.job_id == job_id.0)
        .expect("job in job_status");
    assert_eq!(
        (mine.state.as_str(), mine.scheduled_job_id),
        ("done", Some(id))
    );
    scheduler.stop().await;
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn cancelled_admin_row_never_runs(pool: PgPool) {
    setup(&pool).await;
    let scheduler = start_scheduler(&pool);
    let insert = "INSERT INTO scheduled_jobs (job_kind, run_at, created_by) VALUES ('ping', now() + interval '2 seconds', 'bram') RETURNING id";
    let by_cli: Uuid = sqlx::query_scalar(insert).fetch_one(&pool).await.unwrap();
    let by_sql: Uuid = sqlx::query_scalar(insert).fetch_one(&pool).await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let row = store::cancel_scheduled_job(&mut conn, by_cli)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "cancelled");
    // The SQL the README gives admins.
    let n = sqlx::query(
        "UPDATE scheduled_jobs SET status = 'cancelled' WHERE id = $1 AND status = 'pending'",
    )
    .bind(by_sql)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);

    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [by_cli, by_sql] {
        let row = scheduled_row(&pool, id).await;
        assert_eq!((row.status.as_str(), row.job_id), ("cancelled", None));
    }
    assert_eq!(
        job_count(&pool).await,
        0,
        "a cancelled row must not become a job"
    );
    scheduler.stop().await;
}

#[sqlx::test(migrations = false)]
async fn unknown_kind_and_bad_payload_are_rejected_visibly(pool: PgPool) {
    setup(&pool).await;
    let scheduler = start_scheduler(&pool);
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO scheduled_jobs (job_kind, payload, created_by) VALUES
            ('send_newsleter', '{}', 'anna'),
            ('ping', '{\"sleep_ms\": \"soon\"}', 'anna'),
            ('ping', '{\"message\": \"fine\"}', 'anna')
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let rows = wait_for(T, "all rows to be taken", || async {
        let mut rows = Vec::new();
        for id in &ids {
            rows.push(scheduled_row(&pool, *id).await);
        }
        rows.iter().all(|r| r.status != "pending").then_some(rows)
    })
    .await;
    assert_eq!(rows[0].status, "rejected");
    let reason = rows[0].rejected_reason.as_deref().unwrap();
    assert!(
        reason.contains("unknown job kind `send_newsleter`") && reason.contains("ping"),
        "{reason}"
    );
    assert_eq!(rows[1].status, "rejected");
    let reason = rows[1].rejected_reason.as_deref().unwrap();
    assert!(
        reason.contains("does not decode as job kind `ping`") && reason.contains("sleep_ms"),
        "{reason}"
    );
    assert_eq!(
        rows[2].status, "enqueued",
        "a bad row must not block the good one"
    );
    let err =
        sqlx::query("INSERT INTO scheduled_jobs (job_kind, run_at) VALUES ('ping', 'infinity')")
            .execute(&pool)
            .await
            .expect_err("a row that can never be due is refused")
            .to_string();
    assert!(err.contains("scheduled_jobs_run_at_finite"), "{err}");
    assert_eq!(job_count(&pool).await, 1);
    scheduler.stop().await;
}

#[sqlx::test(migrations = false)]
async fn bad_schedule_is_marked_and_edits_take_effect_without_restart(pool: PgPool) {
    setup(&pool).await;
    add_schedule(
        &pool,
        "typo",
        "* * * * * *",
        "fetch_mial",
        serde_json::json!({}),
    )
    .await;
    add_schedule(
        &pool,
        "good",
        "* * * * * *",
        "ping",
        serde_json::json!({"message": "tick"}),
    )
    .await;
    add_schedule(
        &pool,
        "never",
        "0 0 0 31 2 *",
        "ping",
        serde_json::json!({}),
    )
    .await;
    let scheduler = start_scheduler(&pool);

    wait_for(T, "two ticks of the good schedule", || async {
        (runs(&pool, "good").await.len() >= 2).then_some(())
    })
    .await;
    let typo = wait_for(T, "the typo to be marked", || async {
        let all = store::all_schedules(&pool).await.unwrap();
        all.into_iter()
            .find(|s| s.name == "typo" && s.last_error.is_some())
    })
    .await;
    let err = typo.last_error.unwrap();
    assert!(
        err.contains("schedule `typo`: unknown job kind `fetch_mial`"),
        "{err}"
    );
    assert!(runs(&pool, "typo").await.is_empty());
    let never = store::all_schedules(&pool)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "never")
        .unwrap();
    assert!(
        never
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("\"0 0 0 31 2 *\" never matches")),
        "{never:?}"
    );

    // The admin fixes the kind: the error clears and ticks start, no restart.
    sqlx::query("UPDATE job_schedules SET job_kind = 'ping' WHERE name = 'typo'")
        .execute(&pool)
        .await
        .unwrap();
    wait_for(T, "the fixed schedule to tick", || async {
        (!runs(&pool, "typo").await.is_empty()).then_some(())
    })
    .await;

    // Disabling stops it (one pass may be under way).
    sqlx::query("UPDATE job_schedules SET enabled = false WHERE name = 'good'")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = runs(&pool, "good").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        runs(&pool, "good").await.len(),
        before,
        "a disabled schedule kept ticking"
    );
    scheduler.stop().await;
}

#[sqlx::test(migrations = false)]
async fn missed_ticks_run_once_on_catch_up_unless_the_schedule_says_every(pool: PgPool) {
    setup(&pool).await;
    add_schedule(&pool, "once", "* * * * * *", "ping", serde_json::json!({})).await;
    add_schedule(&pool, "every", "* * * * * *", "ping", serde_json::json!({})).await;
    // As if the scheduler had been down: an hour for one, five seconds for the other.
    let t0: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE job_schedules SET next_run_at = date_trunc('second', now()) - interval '1 hour' WHERE name = 'once'
         RETURNING date_trunc('second', now())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // From t0, not from this statement's own clock: a second boundary between
    // the two updates left only five ticks at or before t0.
    sqlx::query(
        "UPDATE job_schedules SET catch_up = 'every', next_run_at = $1 - interval '5 seconds'
          WHERE name = 'every'",
    )
    .bind(t0)
    .execute(&pool)
    .await
    .unwrap();

    let scheduler = start_scheduler(&pool);
    wait_for(T, "the catch-up", || async {
        (runs(&pool, "once").await.len() >= 2).then_some(())
    })
    .await;
    scheduler.stop().await;

    // The catch-up run is stamped with the latest tick when the scheduler's
    // first pass ran: t0, or a second or two later on a loaded machine.
    let once = runs(&pool, "once").await;
    let catch_up = &once[0];
    assert!(
        catch_up.tick_at >= t0,
        "no run for any tick of the missed hour on its own: {once:?}"
    );
    assert!(
        catch_up.ticks_missed >= 3599,
        "the catch-up run records what it stands for: {once:?}"
    );
    let once_jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE metadata -> 'schedule' = 'once' AND (metadata -> 'tick')::timestamptz <= $1",
    )
    .bind(catch_up.tick_at)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(once_jobs, 1, "an hour of missed ticks must run once");

    let every: Vec<_> = runs(&pool, "every")
        .await
        .into_iter()
        .filter(|r| r.tick_at <= t0)
        .collect();
    assert!(
        every.len() >= 6,
        "catch_up = 'every' enqueues each missed tick: {every:?}"
    );
    assert!(
        every
            .iter()
            .all(|r| r.job_id.is_some() && r.ticks_missed == 0)
    );
}

#[sqlx::test(migrations = false)]
async fn two_leaders_cannot_enqueue_the_same_tick(pool: PgPool) {
    setup(&pool).await;
    add_schedule(
        &pool,
        "contested",
        "* * * * * *",
        "ping",
        serde_json::json!({}),
    )
    .await;
    let s = store::all_schedules(&pool)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "contested")
        .unwrap();
    let catalog = kinds::catalog();
    let spec = catalog.get("ping").unwrap();
    let tick: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();

    let mut a = pool.acquire().await.unwrap();
    let mut tx_a = a.begin().await.unwrap();
    let first = enqueue_tick(
        &mut tx_a,
        spec,
        &s,
        tick,
        RunOutcome::Enqueued,
        0,
        "leader-a",
    )
    .await
    .unwrap();
    assert!(matches!(first, TickResult::Enqueued(_)));
    // The second "leader" blocks on the tick's key until the first commits.
    let second = tokio::spawn({
        let (pool, s) = (pool.clone(), s.clone());
        async move {
            let catalog = kinds::catalog();
            let mut b = pool.acquire().await.unwrap();
            let mut tx_b = b.begin().await.unwrap();
            let r = enqueue_tick(
                &mut tx_b,
                catalog.get("ping").unwrap(),
                &s,
                tick,
                RunOutcome::Enqueued,
                0,
                "leader-b",
            )
            .await
            .unwrap();
            tx_b.commit().await.unwrap();
            r
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx_a.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), TickResult::AlreadyClaimed);
    assert_eq!(job_count(&pool).await, 1);
}

#[sqlx::test(migrations = false)]
async fn leadership_moves_to_the_other_scheduler_when_the_leader_stops(pool: PgPool) {
    setup(&pool).await;
    let s1 = start_scheduler(&pool);
    let s2 = start_scheduler(&pool);
    wait_for(T, "a leader", || async {
        (s1.is_leader() || s2.is_leader()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s1.is_leader() != s2.is_leader(),
        "exactly one scheduler leads"
    );
    let l = monitor::leadership(&pool).await.unwrap();
    assert!(l.lock_held);
    let (leader, follower) = if s1.is_leader() { (s1, s2) } else { (s2, s1) };
    assert_eq!(l.scheduler_id.as_deref(), Some(leader.id.as_str()));

    leader.stop().await;
    wait_for(
        Duration::from_secs(5),
        "the follower to take over",
        || async { follower.is_leader().then_some(()) },
    )
    .await;
    let l = wait_for(T, "the leader row to name the new leader", || async {
        let l = monitor::leadership(&pool).await.unwrap();
        (l.scheduler_id.as_deref() == Some(follower.id.as_str())).then_some(l)
    })
    .await;
    assert!(l.lock_held);
    follower.stop().await;
    let l = monitor::leadership(&pool).await.unwrap();
    assert!(
        !l.lock_held && l.scheduler_id.is_none(),
        "a stopped leader hands over at once: {l:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn run_now_enqueues_a_manual_run_even_when_disabled(pool: PgPool) {
    setup(&pool).await;
    let job_id = schedules::run_now(&pool, &kinds::catalog(), "prune-jobs", "tester")
        .await
        .unwrap();
    let r = runs(&pool, "prune-jobs").await;
    assert_eq!(
        (r.len(), r[0].outcome.as_str(), r[0].job_id.as_deref()),
        (1, "manual", Some(job_id.as_str()))
    );
    let listed = monitor::jobs(
        &pool,
        &JobFilter {
            schedule: Some("prune-jobs".into()),
            limit: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].kind.as_str(), listed[0].queue.as_str()),
        ("prune_jobs", "maintenance")
    );
    let err = schedules::run_now(&pool, &kinds::catalog(), "prune-job", "tester")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no schedule named `prune-job`") && err.contains("prune-jobs"),
        "{err}"
    );
}

#[sqlx::test(migrations = false)]
async fn retry_runs_a_discarded_job_again(pool: PgPool) {
    setup(&pool).await;
    let client = JobClient::new(pool.clone());
    let rt = start(&pool, pings(), fast_config());
    let doomed = Ping {
        permanent_error: Some("on purpose".into()),
        ..Default::default()
    };
    let id = client
        .enqueue(&doomed, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &id, "Killed", T).await;
    rt.stop().await;

    assert_eq!(client.retry(&id).await.unwrap(), RetryOutcome::Requeued);
    let again = dkl_tests::job(&pool, &id).await;
    assert_eq!(
        (again.status.as_str(), again.attempts, again.done_at),
        ("Pending", 0, None)
    );
    assert!(matches!(
        client.retry(&dkl_shared::jobs::JobId("nope".into())).await,
        Err(EngineError::NotFound(_))
    ));

    // A retried job whose dedup key a newer live job holds is refused.
    let a = client
        .enqueue(&Ping::default(), EnqueueOptions::dedup("k"))
        .await
        .unwrap()
        .id;
    client.cancel(&a).await.unwrap();
    client
        .enqueue(&Ping::default(), EnqueueOptions::dedup("k"))
        .await
        .unwrap();
    let err = client.retry(&a).await.unwrap_err();
    assert!(matches!(err, EngineError::DedupTaken(_)), "{err}");
}

#[sqlx::test(migrations = false)]
async fn status_views_name_every_state(pool: PgPool) {
    setup(&pool).await;
    let client = JobClient::new(pool.clone());
    let later = EnqueueOptions::at(Utc::now() + chrono::Duration::hours(1));
    client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap();
    client
        .enqueue(&Ping::default(), later.clone())
        .await
        .unwrap();
    let cancelled = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    client.cancel(&cancelled).await.unwrap();
    let retrying = client.enqueue(&Ping::default(), later).await.unwrap().id;
    sqlx::query("UPDATE apalis.jobs SET attempts = 1, last_error = 'smtp 451' WHERE id = $1")
        .bind(&retrying.0)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let all = monitor::jobs(
        &pool,
        &JobFilter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut states: Vec<&str> = all.iter().map(|j| j.state.as_str()).collect();
    states.sort_unstable();
    assert_eq!(states, ["cancelled", "pending", "retrying", "scheduled"]);
    let only = monitor::jobs(
        &pool,
        &JobFilter {
            state: Some("retrying".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].last_error.as_deref(), Some("smtp 451"));

    let q = monitor::queue_summary(&pool).await.unwrap();
    assert_eq!(q.len(), 1);
    let q = &q[0];
    assert_eq!(
        (
            q.queue.as_str(),
            q.pending,
            q.scheduled,
            q.cancelled,
            q.running
        ),
        ("default", 1, 2, 1, 0)
    );
    assert!(q.oldest_pending_age_s > 0.0);
    assert_eq!(q.finished_last_5m, 1, "the cancelled job finished just now");
}

#[sqlx::test(migrations = false)]
async fn skip_if_running_holds_within_a_catch_up_pass(pool: PgPool) {
    setup(&pool).await;
    add_schedule(
        &pool,
        "fetch-like",
        "* * * * * *",
        "ping",
        serde_json::json!({}),
    )
    .await;
    sqlx::query(
        "UPDATE job_schedules SET catch_up = 'every', skip_if_running = true,
                next_run_at = date_trunc('second', now()) - interval '5 seconds'
          WHERE name = 'fetch-like'",
    )
    .execute(&pool)
    .await
    .unwrap();
    // No worker: the first job stays pending, so every later tick is skipped.
    let scheduler = start_scheduler(&pool);
    wait_for(T, "the catch-up and two more ticks", || async {
        (runs(&pool, "fetch-like").await.len() >= 8).then_some(())
    })
    .await;
    scheduler.stop().await;
    let runs = runs(&pool, "fetch-like").await;
    let enqueued = runs.iter().filter(|r| r.outcome == "enqueued").count();
    assert_eq!(
        enqueued, 1,
        "one job while it is pending, the rest skipped: {runs:?}"
    );
    assert_eq!(job_count(&pool).await, 1);
    assert!(
        runs.iter()
            .filter(|r| r.outcome == "skipped")
            .all(|r| r.job_id.is_none())
    );
}

#[sqlx::test(migrations = false)]
async fn a_leader_that_loses_its_connection_is_replaced_without_doubling_a_tick(pool: PgPool) {
    setup(&pool).await;
    add_schedule(
        &pool,
        "every-second",
        "* * * * * *",
        "ping",
        serde_json::json!({}),
    )
    .await;
    let s1 = start_scheduler(&pool);
    let s2 = start_scheduler(&pool);
    wait_for(T, "three ticks", || async {
        (runs(&pool, "every-second").await.len() >= 3).then_some(())
    })
    .await;

    let old_pid: i32 = sqlx::query_scalar("SELECT backend_pid FROM scheduler_leader")
        .fetch_one(&pool)
        .await
        .unwrap();
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old_pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(cut);
    let cut_at = Utc::now();
    wait_for(
        Duration::from_secs(5),
        "a leader on a new connection",
        || async {
            let pid: Option<i32> = sqlx::query_scalar("SELECT backend_pid FROM scheduler_leader")
                .fetch_optional(&pool)
                .await
                .unwrap();
            pid.filter(|p| *p != old_pid)
        },
    )
    .await;
    let before = runs(&pool, "every-second").await.len();
    wait_for(T, "ticks under the new leader", || async {
        (runs(&pool, "every-second").await.len() >= before + 2).then_some(())
    })
    .await;
    s1.stop().await;
    s2.stop().await;

    assert_eq!(dkl_tests::doubled_ticks(&pool, "every-second").await, 0);
    // Every second from the first tick to the last is accounted for.
    let r = runs(&pool, "every-second").await;
    let span = (r.last().unwrap().tick_at - r[0].tick_at).num_seconds() + 1;
    let missed: i64 = r.iter().map(|x| i64::from(x.ticks_missed)).sum();
    assert_eq!(r.len() as i64 + missed, span, "cut at {cut_at}: {r:?}");
}
