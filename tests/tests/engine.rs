//! The job engine against a real PostgreSQL, one fresh database per test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use dkl_shared::jobs::{CancelOutcome, EnqueueOptions, JobClient, JobError, JobKind, Registry};
use dkl_shared::kinds::{Ping, PruneJobs};
use dkl_tests::{fast_config, job, migrate, start, wait_status};
use dkl_worker::handlers::{ping, prune_jobs as prune};
use sqlx::PgPool;

const T: Duration = Duration::from_secs(15);

fn pings() -> Registry {
    let mut r = Registry::new();
    ping::register(&mut r);
    r
}

#[sqlx::test(migrations = false)]
async fn enqueued_job_runs_to_done(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let rt = start(&pool, pings(), fast_config());
    let job_id = client
        .enqueue(
            &Ping {
                message: "hi".into(),
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap();
    assert!(job_id.created);
    let row = wait_status(&pool, &job_id.id, "Done", T).await;
    assert_eq!(row.attempts, 1);
    assert_eq!(row.job_type, "ping");
    assert_eq!(row.queue, "default");
    assert!(row.done_at.is_some() && row.lock_at.is_some());
    assert_eq!(row.lock_by.as_deref(), Some(rt.worker_id.as_str()));
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn enqueue_in_rolled_back_transaction_leaves_no_job(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let mut tx = pool.begin().await.unwrap();
    let rolled = client
        .enqueue_tx(&mut tx, &Ping::default(), EnqueueOptions::default())
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        dkl_shared::jobs::testing::job(&pool, &rolled.id.0)
            .await
            .unwrap()
            .is_none()
    );

    let mut tx = pool.begin().await.unwrap();
    let committed = client
        .enqueue_tx(&mut tx, &Ping::default(), EnqueueOptions::default())
        .await
        .unwrap();
    // Not visible to others before commit ...
    assert!(
        dkl_shared::jobs::testing::job(&pool, &committed.id.0)
            .await
            .unwrap()
            .is_none()
    );
    tx.commit().await.unwrap();
    // ... and there after.
    assert_eq!(job(&pool, &committed.id).await.status, "Pending");
}

#[sqlx::test(migrations = false)]
async fn dedup_key_returns_the_live_job_and_frees_when_done(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let first = client
        .enqueue(&Ping::default(), EnqueueOptions::dedup("welcome:42"))
        .await
        .unwrap();
    let second = client
        .enqueue(&Ping::default(), EnqueueOptions::dedup("welcome:42"))
        .await
        .unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    let other = client
        .enqueue(&Ping::default(), EnqueueOptions::dedup("welcome:43"))
        .await
        .unwrap();
    assert!(other.created && other.id != first.id);

    let rt = start(&pool, pings(), fast_config());
    wait_status(&pool, &first.id, "Done", T).await;
    rt.stop().await;
    // A finished job no longer holds its key.
    let third = client
        .enqueue(&Ping::default(), EnqueueOptions::dedup("welcome:42"))
        .await
        .unwrap();
    assert!(third.created);
    assert_ne!(third.id, first.id);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AlwaysFails;
impl JobKind for AlwaysFails {
    const KIND: &'static str = "always_fails";
    const MAX_ATTEMPTS: i32 = 4;
}

#[sqlx::test(migrations = false)]
async fn retries_back_off_with_growing_gaps_then_discard(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query("CREATE TABLE test_attempts (job_id text, attempt int, started_at timestamptz DEFAULT clock_timestamp())")
        .execute(&pool)
        .await
        .unwrap();
    let mut registry = Registry::new();
    let log_pool = pool.clone();
    registry.register::<AlwaysFails, _, _>(move |_, ctx| {
        let pool = log_pool.clone();
        async move {
            sqlx::query("INSERT INTO test_attempts (job_id, attempt) VALUES ($1, $2)")
                .bind(&ctx.id.0)
                .bind(ctx.attempt)
                .execute(&pool)
                .await
                .map_err(JobError::retryable)?;
            Err(JobError::retryable("smtp: 451 try again later"))
        }
    });
    let mut config = fast_config();
    config.retry_base = Duration::from_millis(500);
    let rt = start(&pool, registry, config);
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&AlwaysFails, EnqueueOptions::default())
        .await
        .unwrap()
        .id;

    let row = wait_status(&pool, &id, "Killed", T).await;
    rt.stop().await;
    assert_eq!(row.attempts, 4);
    assert_eq!(
        row.last_error.as_deref(),
        Some("smtp: 451 try again later (gave up after 4 attempts)")
    );
    let gaps: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM started_at - lag(started_at) OVER (ORDER BY attempt))::float8
           FROM test_attempts WHERE job_id = $1 ORDER BY attempt OFFSET 1",
    )
    .bind(&id.0)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(gaps.len(), 3, "four attempts, three gaps: {gaps:?}");
    // Nominal 0.5 s, 1 s, 2 s with ±20 % jitter: each gap exceeds the last.
    assert!(gaps[0] >= 0.4, "first gap {gaps:?}");
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "gaps must grow: {gaps:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn permanent_error_discards_at_once_with_its_message(pool: PgPool) {
    migrate(&pool).await;
    let rt = start(&pool, pings(), fast_config());
    let client = JobClient::new(pool.clone());
    let ping = Ping {
        permanent_error: Some("template `welcome` does not exist".into()),
        ..Default::default()
    };
    let id = client
        .enqueue(&ping, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let row = wait_status(&pool, &id, "Killed", T).await;
    rt.stop().await;
    assert_eq!(row.attempts, 1);
    assert_eq!(
        row.last_error.as_deref(),
        Some("template `welcome` does not exist")
    );
    assert!(row.cancelled_at.is_none());
}

#[sqlx::test(migrations = false)]
async fn unknown_kind_and_bad_payload_are_discarded_with_a_clear_error(pool: PgPool) {
    migrate(&pool).await;
    let rt = start(&pool, pings(), fast_config());
    let client = JobClient::new(pool.clone());
    let unknown = client
        .enqueue_raw(
            "send_newsletter",
            "default",
            &serde_json::json!({"id": 1}),
            5,
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let bad = client
        .enqueue_raw(
            "ping",
            "default",
            &serde_json::json!({"sleep_ms": "soon"}),
            5,
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let unknown = wait_status(&pool, &unknown, "Killed", T).await;
    let bad = wait_status(&pool, &bad, "Killed", T).await;
    rt.stop().await;
    let e = unknown.last_error.unwrap();
    assert!(e.contains("no handler for kind `send_newsletter`"), "{e}");
    let e = bad.last_error.unwrap();
    assert!(
        e.contains("payload of job kind `ping` does not decode"),
        "{e}"
    );
    assert_eq!(bad.attempts, 1);
}

#[sqlx::test(migrations = false)]
async fn cancelled_pending_job_never_starts(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    let id = client
        .enqueue(&Ping::default(), EnqueueOptions::at(soon))
        .await
        .unwrap()
        .id;
    assert_eq!(
        client.cancel(&id).await.unwrap(),
        CancelOutcome::CancelledBeforeStart
    );
    let rt = start(&pool, pings(), fast_config());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    rt.stop().await;
    let row = job(&pool, &id).await;
    assert_eq!(row.status, "Killed");
    assert_eq!(row.attempts, 0, "it must never have started");
    assert!(row.cancelled_at.is_some());
    assert_eq!(
        client.cancel(&id).await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
}

#[sqlx::test(migrations = false)]
async fn cancelled_running_job_sees_the_signal(pool: PgPool) {
    migrate(&pool).await;
    let rt = start(&pool, pings(), fast_config());
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(
            &Ping {
                sleep_ms: 60_000,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    wait_status(&pool, &id, "Running", T).await;
    assert_eq!(client.cancel(&id).await.unwrap(), CancelOutcome::Signalled);
    // The handler returns on the signal (well before the 1 s grace and its 60 s sleep).
    let row = wait_status(&pool, &id, "Killed", Duration::from_secs(5)).await;
    rt.stop().await;
    assert_eq!(row.last_error.as_deref(), Some("cancelled while running"));
    assert!(row.cancelled_at.is_some());
    assert_eq!(row.attempts, 1);
}

#[sqlx::test(migrations = false)]
async fn graceful_shutdown_releases_running_job_without_burning_an_attempt(pool: PgPool) {
    migrate(&pool).await;
    // A grace long enough for the 300 ms job on a loaded machine (1 s was
    // missed once under CI load), far shorter than the 60 s one.
    let config = dkl_shared::config::JobsConfig {
        shutdown_grace: Duration::from_secs(5),
        ..fast_config()
    };
    let rt = start(&pool, pings(), config);
    let client = JobClient::new(pool.clone());
    let long = client
        .enqueue(
            &Ping {
                sleep_ms: 60_000,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let short = client
        .enqueue(
            &Ping {
                sleep_ms: 300,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    wait_status(&pool, &long, "Running", T).await;
    wait_status(&pool, &short, "Running", T).await;
    rt.stop().await;
    // The short job finished inside the grace period ...
    assert_eq!(job(&pool, &short).await.status, "Done");
    // ... the long one went back, its attempt refunded.
    let row = job(&pool, &long).await;
    assert_eq!(row.status, "Pending");
    assert_eq!(row.attempts, 0);
    assert!(row.lock_by.is_none());
}

#[sqlx::test(migrations = false)]
async fn scheduled_job_starts_within_a_second_of_due_time(pool: PgPool) {
    migrate(&pool).await;
    let mut config = fast_config();
    config.poll_interval = Duration::from_secs(30); // only the due-time wake may start it
    let rt = start(&pool, pings(), config);
    let client = JobClient::new(pool.clone());
    tokio::time::sleep(Duration::from_millis(300)).await; // let the fetcher go idle
    let due = Utc::now() + chrono::Duration::milliseconds(1500);
    let id = client
        .enqueue(&Ping::default(), EnqueueOptions::at(due))
        .await
        .unwrap()
        .id;
    let row = wait_status(&pool, &id, "Done", T).await;
    rt.stop().await;
    let started = row.lock_at.unwrap();
    assert!(started >= due, "started {started} before due {due}");
    let late = (started - due).num_milliseconds();
    assert!(late < 1000, "started {late} ms late");
}

#[sqlx::test(migrations = false)]
async fn notify_wakes_an_idle_worker_without_polling(pool: PgPool) {
    migrate(&pool).await;
    let mut config = fast_config();
    config.poll_interval = Duration::from_secs(30);
    let rt = start(&pool, pings(), config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    // Well under the 30 s poll interval: only NOTIFY can have woken it.
    wait_status(&pool, &id, "Done", Duration::from_secs(3)).await;
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn rescue_returns_a_dead_workers_job_without_charging_the_attempt(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    // A worker that claimed the job and then went silent long ago.
    dkl_shared::jobs::testing::register_worker(&pool, "dead-worker", "default=1")
        .await
        .unwrap();
    let claimed = dkl_shared::jobs::testing::claim(&pool, "default", 10, "dead-worker")
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    sqlx::query(
        "UPDATE apalis.workers SET last_seen = now() - interval '1 hour' WHERE id = 'dead-worker'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rt = start(&pool, pings(), fast_config());
    let row = wait_status(&pool, &id, "Done", T).await;
    rt.stop().await;
    assert_eq!(row.attempts, 1, "the dead worker's attempt must not count");
    assert_ne!(row.lock_by.as_deref(), Some("dead-worker"));
}

#[sqlx::test(migrations = false)]
async fn prune_deletes_only_old_finished_jobs(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            client
                .enqueue(&Ping::default(), EnqueueOptions::default())
                .await
                .unwrap()
                .id,
        );
    }
    // The ages come from the apalis.jobs retention rules (finished: set to
    // 1 day here; discarded: 30 days); the configured ages are only the
    // fallback for a disabled rule (7 days would keep ids[0]).
    sqlx::query("UPDATE retention_rules SET keep_for = interval '1 day' WHERE name = 'jobs_done'")
        .execute(&pool)
        .await
        .unwrap();
    let mut registry = pings();
    prune::register(
        &mut registry,
        pool.clone(),
        Duration::from_secs(7 * 86_400),
        Duration::from_secs(30 * 86_400),
    );
    let rt = start(&pool, registry, fast_config());
    for id in &ids {
        wait_status(&pool, id, "Done", T).await;
    }
    // ids[0]: done 2 days ago (pruned); ids[1]: discarded 2 days ago (kept, 30 d);
    // ids[2]: discarded 40 days ago (pruned); ids[3]: done now (kept).
    sqlx::query("UPDATE apalis.jobs SET done_at = now() - interval '2 days' WHERE id = $1")
        .bind(&ids[0].0)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Killed', done_at = now() - interval '2 days' WHERE id = $1").bind(&ids[1].0).execute(&pool).await.unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Killed', done_at = now() - interval '40 days' WHERE id = $1").bind(&ids[2].0).execute(&pool).await.unwrap();
    let prune_id = client
        .enqueue(&PruneJobs::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &prune_id, "Done", T).await;
    rt.stop().await;
    let exists = |i: usize| {
        let pool = pool.clone();
        let id = ids[i].0.clone();
        async move {
            dkl_shared::jobs::testing::job(&pool, &id)
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(!exists(0).await, "old done job must be pruned");
    assert!(exists(1).await, "recently discarded job must be kept");
    assert!(!exists(2).await, "old discarded job must be pruned");
    assert!(exists(3).await, "fresh done job must be kept");
}

#[sqlx::test(migrations = false)]
async fn concurrency_limit_per_queue_is_respected(pool: PgPool) {
    migrate(&pool).await;
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Slow;
    impl JobKind for Slow {
        const KIND: &'static str = "slow";
        const QUEUE: &'static str = "mail";
    }
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    {
        let (running, peak) = (running.clone(), peak.clone());
        registry.register::<Slow, _, _>(move |_, _| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        });
    }
    let mut config = fast_config();
    config.queue_concurrency.insert("mail".into(), 3);
    let client = JobClient::new(pool.clone());
    client
        .enqueue_many(&(0..12).map(|_| Slow).collect::<Vec<_>>())
        .await
        .unwrap();
    let rt = start(&pool, registry, config);
    dkl_tests::wait_all_done(&pool, T).await;
    rt.stop().await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "mail queue concurrency is 3"
    );
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    n: i32,
}
impl JobKind for Record {
    const KIND: &'static str = "record";
}

#[sqlx::test(migrations = false)]
async fn two_runtimes_never_run_the_same_job_twice(pool: PgPool) {
    migrate(&pool).await;
    sqlx::query("CREATE TABLE test_runs (n int PRIMARY KEY, worker text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let registry = |tag: &'static str| {
        let mut r = Registry::new();
        let pool = pool.clone();
        r.register::<Record, _, _>(move |job, _| {
            let pool = pool.clone();
            async move {
                // A second run of the same job would violate the primary key.
                sqlx::query("INSERT INTO test_runs (n, worker) VALUES ($1, $2)")
                    .bind(job.n)
                    .bind(tag)
                    .execute(&pool)
                    .await
                    .map_err(JobError::permanent)?;
                Ok(())
            }
        });
        r
    };
    let client = JobClient::new(pool.clone());
    client
        .enqueue_many(&(0..2000).map(|n| Record { n }).collect::<Vec<_>>())
        .await
        .unwrap();
    let a = start(&pool, registry("a"), fast_config());
    let b = start(&pool, registry("b"), fast_config());
    dkl_tests::wait_all_done(&pool, Duration::from_secs(60)).await;
    a.stop().await;
    b.stop().await;
    let (runs, by_a): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE worker = 'a') FROM test_runs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(runs, 2000, "every job ran exactly once");
    assert!(
        by_a > 0 && by_a < 2000,
        "both runtimes took work ({by_a} by a)"
    );
    let discarded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Killed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(discarded, 0);
}

#[sqlx::test(migrations = false)]
async fn concurrent_enqueues_with_one_dedup_key_make_one_job(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .enqueue(&Ping::default(), EnqueueOptions::dedup("newsletter:7:anna"))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(
            t.await
                .unwrap()
                .expect("enqueue never fails on a collision"),
        );
    }
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    assert!(results.iter().all(|r| r.id == results[0].id));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
}

#[sqlx::test(migrations = false)]
async fn lost_listen_connection_is_reestablished(pool: PgPool) {
    migrate(&pool).await;
    let mut config = fast_config();
    config.poll_interval = Duration::from_secs(30); // only NOTIFY can start jobs quickly
    let rt = start(&pool, pings(), config);
    let client = JobClient::new(pool.clone());
    let first = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &first, "Done", Duration::from_secs(3)).await;

    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%') t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        killed >= 1,
        "the listener connection was found and terminated"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // reconnect

    let second = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &second, "Done", Duration::from_secs(5)).await;
    rt.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_cancelled_job_released_at_shutdown_does_not_come_back(pool: PgPool) {
    migrate(&pool).await;
    // A handler that ignores cancellation, so shutdown finds it still running.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stubborn;
    impl JobKind for Stubborn {
        const KIND: &'static str = "stubborn";
    }
    let mut registry = Registry::new();
    registry.register::<Stubborn, _, _>(|_, _| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    });
    let mut config = fast_config();
    config.cancel_grace = Duration::from_secs(30); // longer than the 1 s shutdown grace
    let rt = start(&pool, registry, config);
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Stubborn, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &id, "Running", T).await;
    assert_eq!(client.cancel(&id).await.unwrap(), CancelOutcome::Signalled);
    rt.stop().await;
    let row = job(&pool, &id).await;
    assert_eq!(
        row.status, "Killed",
        "a cancelled job must not be released back to pending"
    );
    assert!(row.last_error.unwrap().contains("cancelled"));
}

#[sqlx::test(migrations = false)]
async fn a_stale_outcome_cannot_finish_a_newer_claim(pool: PgPool) {
    migrate(&pool).await;
    use dkl_shared::jobs::testing::{self as store, OutcomeRow};
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    store::register_worker(&pool, "w1", "default=1")
        .await
        .unwrap();
    let first = store::claim(&pool, "default", 1, "w1")
        .await
        .unwrap()
        .remove(0);
    // Rescued from under w1 (say it stalled), then claimed by w1 again.
    sqlx::query("UPDATE apalis.workers SET last_seen = now() - interval '1 hour' WHERE id = 'w1'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        store::rescue_orphans(&pool, Duration::from_secs(30), 3)
            .await
            .unwrap(),
        vec![(id.0.clone(), false)]
    );
    store::register_worker(&pool, "w1", "default=1")
        .await
        .unwrap();
    let second = store::claim(&pool, "default", 1, "w1")
        .await
        .unwrap()
        .remove(0);
    assert_ne!(first.lock_at, second.lock_at);
    let stale = OutcomeRow {
        claim: first.claim(),
        status: dkl_shared::jobs::JobState::Done,
        error: None,
        delay: Duration::ZERO,
        refund: 0,
    };
    assert_eq!(
        store::record_outcomes(&pool, "w1", &[stale]).await.unwrap(),
        0,
        "the old claim's outcome is ignored"
    );
    assert_eq!(job(&pool, &id).await.status, "Running");
    let fresh = OutcomeRow {
        claim: second.claim(),
        status: dkl_shared::jobs::JobState::Done,
        error: None,
        delay: Duration::ZERO,
        refund: 0,
    };
    assert_eq!(
        store::record_outcomes(&pool, "w1", &[fresh]).await.unwrap(),
        1
    );
    assert_eq!(job(&pool, &id).await.status, "Done");
}

/// The harness's `work_one` runs one due job through the engine: the
/// outcome rules are the runtime's (a retryable failure is rescheduled with
/// its attempt counted; success is Done).
#[sqlx::test(migrations = false)]
async fn work_one_runs_the_next_due_job_once(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    assert!(
        dkl_tests::work_one(&pool, pings(), "default")
            .await
            .is_none(),
        "nothing due"
    );
    let id = client
        .enqueue(
            &Ping {
                fail_attempts: 1,
                ..Default::default()
            },
            EnqueueOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let first = dkl_tests::work_one(&pool, pings(), "default")
        .await
        .expect("a due job");
    assert_eq!(first.id, id.0);
    assert_eq!(
        (first.status, first.attempts),
        (dkl_shared::jobs::JobState::Pending, 1)
    );
    assert!(first.last_error.unwrap().contains("fails on purpose"));
    sqlx::query("UPDATE apalis.jobs SET run_at = now() WHERE id = $1")
        .bind(&id.0)
        .execute(&pool)
        .await
        .unwrap();
    let second = dkl_tests::work_one(&pool, pings(), "default")
        .await
        .expect("due again");
    assert_eq!(
        (second.status, second.attempts),
        (dkl_shared::jobs::JobState::Done, 2)
    );
}
