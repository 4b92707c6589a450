//! The engine's defects found by trying to break it (issue "Harden the
//! engine"), each reproduced against a real PostgreSQL: NUL bytes really
//! sent, connections really cut, rows really locked. Tests that need real
//! processes killed are in `worker/tests/process.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dkl_shared::jobs::testing as store;
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobError, JobId, JobKind, Registry};
use dkl_shared::kinds::Ping;
use dkl_tests::{Outage, fast_config, job, migrate, start, wait_for, wait_status};
use dkl_worker::handlers::ping;
use serde_json::json;
use sqlx::PgPool;

const T: Duration = Duration::from_secs(20);

fn pings() -> Registry {
    let mut r = Registry::new();
    ping::register(&mut r);
    r
}

async fn enqueue_json(client: &JobClient, payload: serde_json::Value) -> JobId {
    client
        .enqueue_raw("ping", "default", &payload, 5, EnqueueOptions::default())
        .await
        .unwrap()
        .id
}

/// Defect 1: an error text with a NUL byte made PostgreSQL refuse the whole
/// outcome batch, retried for ever: later jobs stayed Running.
#[sqlx::test(migrations = false)]
async fn nul_bytes_in_error_texts_never_stall_outcome_writes(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let rt = start(&pool, pings(), fast_config());
    // A permanent error with a NUL, and an unknown key with one (serde
    // repeats the key in its decode error), among ordinary jobs.
    let nul_error = enqueue_json(&client, json!({"permanent_error": "bad\u{0}x"})).await;
    let nul_key = enqueue_json(&client, json!({"bad\u{0}key": 1})).await;
    let mut good = Vec::new();
    for i in 0..40 {
        good.push(enqueue_json(&client, json!({"message": format!("ok {i}")})).await);
    }
    for id in &good {
        wait_status(&pool, id, "Done", T).await;
    }
    let row = wait_status(&pool, &nul_error, "Killed", T).await;
    assert_eq!(
        row.last_error.as_deref(),
        Some("bad\\0x"),
        "the NUL is shown, the rest kept"
    );
    let row = wait_status(&pool, &nul_key, "Killed", T).await;
    let error = row.last_error.unwrap();
    assert!(
        error.contains("bad\\0key") && error.contains("does not decode"),
        "{error}"
    );
    // Nothing is left for the writer: a stop is prompt.
    let stopping = Instant::now();
    rt.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        stopping.elapsed()
    );
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AskForever;
impl JobKind for AskForever {
    const KIND: &'static str = "ask_forever";
}

/// Defect 1: a huge `retry_after` overflowed `make_interval` the same way.
#[sqlx::test(migrations = false)]
async fn a_huge_retry_delay_is_capped_not_refused(pool: PgPool) {
    migrate(&pool).await;
    let mut registry = pings();
    registry.register::<AskForever, _, _>(|_, _| async {
        Err(JobError::retry_after("come back never", Duration::MAX))
    });
    let client = JobClient::new(pool.clone());
    let rt = start(&pool, registry, fast_config());
    let forever = client
        .enqueue(&AskForever, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let ping = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &ping, "Done", T).await;
    let row = wait_for(T, "the retry to be written", || async {
        let j = job(&pool, &forever).await;
        (j.status == "Pending" && j.attempts == 1).then_some(j)
    })
    .await;
    let days = (row.run_at - chrono::Utc::now()).num_days();
    assert!(
        (29..=30).contains(&days),
        "retry put off by the cap (30 days), got {days} days"
    );
    assert_eq!(row.last_error.as_deref(), Some("come back never"));
    rt.stop().await;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FailWith {
    message: String,
}
impl JobKind for FailWith {
    const KIND: &'static str = "fail_with";
}

/// Defect 1, at the right depth: a batch the server refuses for one row's
/// content is written row by row; that row is discarded with a clear error,
/// the others are written as they ended.
#[sqlx::test(migrations = false)]
async fn a_refused_outcome_row_is_discarded_and_the_rest_of_its_batch_written(pool: PgPool) {
    migrate(&pool).await;
    // A constraint only this test has: refuses any last_error with "poison"
    // (its name must not contain the word, or the discard is refused too).
    sqlx::query("ALTER TABLE apalis.jobs ADD CONSTRAINT test_refusal CHECK (last_error NOT LIKE '%poison%')")
        .execute(&pool)
        .await
        .unwrap();
    let mut registry = Registry::new();
    registry
        .register::<FailWith, _, _>(|job, _| async move { Err(JobError::permanent(job.message)) });
    let client = JobClient::new(pool.clone());
    let jobs: Vec<FailWith> = (0..300)
        .map(|i| FailWith {
            message: if i % 30 == 0 {
                format!("poison {i}")
            } else {
                format!("fine {i}")
            },
        })
        .collect();
    let ids = client.enqueue_many(&jobs).await.unwrap();
    let rt = start(&pool, registry, fast_config());
    wait_for(T, "every job to be discarded", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status <> 'Killed'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    rt.stop().await;
    for (job_spec, id) in jobs.iter().zip(&ids) {
        let error = job(&pool, id).await.last_error.unwrap();
        if job_spec.message.starts_with("poison") {
            assert!(
                error.contains("could not be stored") && error.contains("test_refusal"),
                "{error}"
            );
        } else {
            assert_eq!(error, job_spec.message);
        }
    }
}

/// Defect 2: a cancel NOTIFY for a job running elsewhere was remembered by
/// job id for ever, and killed the next claim of that job after a retry.
#[sqlx::test(migrations = false)]
async fn an_old_cancel_does_not_kill_a_retried_job(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
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
    // Another worker ("elsewhere", alive) claims it first ...
    store::register_worker(&pool, "elsewhere", "default=1")
        .await
        .unwrap();
    let claimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.dkl_claim('default', 1, 'elsewhere')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(claimed, 1);
    // ... while this runtime listens.
    let rt = start(&pool, pings(), fast_config());
    wait_for(T, "the runtime's first heartbeat", || async {
        rt.stats.snapshot().since_heartbeat
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.cancel(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The other worker ends the attempt as cancelled.
    sqlx::query("UPDATE apalis.jobs SET status = 'Killed', done_at = now() WHERE id = $1")
        .bind(&id.0)
        .execute(&pool)
        .await
        .unwrap();
    // An admin retries it; this runtime takes it and must run it.
    client.retry(&id).await.unwrap();
    let row = wait_for(T, "the retried job to finish", || async {
        let j = job(&pool, &id).await;
        (j.status != "Pending" && j.status != "Running").then_some(j)
    })
    .await;
    assert_eq!(row.status, "Done", "last_error: {:?}", row.last_error);
    assert_eq!(row.lock_by.as_deref(), Some(rt.worker_id.as_str()));
    assert!(row.cancelled_at.is_none());
    rt.stop().await;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Long {
    n: u32,
}
impl JobKind for Long {
    const KIND: &'static str = "long";
}

/// Defect 3: after a database outage, the first worker back saw every other
/// worker's heartbeat as stale and rescued their running jobs while they
/// still ran them.
#[sqlx::test(migrations = false)]
async fn a_database_outage_does_not_make_live_workers_jobs_run_twice(pool: PgPool) {
    migrate(&pool).await;
    let starts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let registry = || {
        let mut r = Registry::new();
        let starts = starts.clone();
        r.register::<Long, _, _>(move |job, _| {
            *starts.lock().unwrap().entry(job.n).or_default() += 1;
            async move {
                tokio::time::sleep(Duration::from_secs(12)).await;
                Ok(())
            }
        });
        r
    };
    let mut config = fast_config();
    config.queue_concurrency.insert("default".into(), 2);
    let client = JobClient::new(pool.clone());
    client
        .enqueue_many(&(0..4).map(|n| Long { n }).collect::<Vec<_>>())
        .await
        .unwrap();
    let a = start(&pool, registry(), config.clone());
    let b = start(&pool, registry(), config);
    let per_worker: Vec<(String, i64)> = wait_for(T, "both workers to run two jobs each", || async {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT lock_by, count(*) FROM apalis.jobs WHERE status = 'Running' GROUP BY 1 ORDER BY 1")
                .fetch_all(&pool)
                .await
                .unwrap();
        (rows.len() == 2 && rows.iter().all(|(_, n)| *n == 2)).then_some(rows)
    })
    .await;
    assert_eq!(per_worker.len(), 2);

    // 5 s without the database: longer than DKL_RESCUE_AFTER_SECS (3 s).
    let outage = Outage::begin(&pool).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    outage.end().await;

    dkl_tests::wait_all_done(&pool, Duration::from_secs(40)).await;
    a.stop().await;
    b.stop().await;
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 4);
    assert!(
        starts.values().all(|n| *n == 1),
        "a live worker's job ran again: starts per job {starts:?}"
    );
    let (attempts, rescues): (i64, i64) =
        sqlx::query_as("SELECT sum(attempts), sum(rescues) FROM apalis.jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((attempts, rescues), (4, 0));
}

/// Defect 5: with its only due job row-locked by someone else, an idle
/// fetcher claimed nothing, heard "next due in 0" and looked again at once.
#[sqlx::test(migrations = false)]
async fn an_idle_fetcher_backs_off_from_a_locked_due_row(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM apalis.jobs WHERE id = $1 FOR UPDATE")
        .bind(&id.0)
        .execute(&mut *tx)
        .await
        .unwrap();

    let rt = start(&pool, pings(), fast_config());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rt.stats.snapshot().claim_queries;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claims = rt.stats.snapshot().claim_queries - before;
    // Two fetch loops per configured queue, each backing off to the 200 ms
    // poll: ~20 per queue. Spinning made thousands.
    let queues = fast_config().queue_concurrency.len() as u64;
    assert!(
        (claims as u64) < 30 * queues,
        "{claims} claim queries in 2 s over {queues} queues while the only due row was locked"
    );
    assert_eq!(job(&pool, &id).await.status, "Pending");

    tx.commit().await.unwrap();
    wait_status(&pool, &id, "Done", Duration::from_secs(5)).await;
    rt.stop().await;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Hang;
impl JobKind for Hang {
    const KIND: &'static str = "hang";
    const QUEUE: &'static str = "stuck";
    const MAX_ATTEMPTS: i32 = 2;
    const TIMEOUT: Duration = Duration::from_secs(1);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Quick;
impl JobKind for Quick {
    const KIND: &'static str = "quick";
    const QUEUE: &'static str = "stuck";
}

/// Defect 10: two hung jobs on a queue of concurrency 2 blocked a third for
/// ever. A handler past its kind's timeout is cancelled, then dropped, and
/// the attempt counts.
#[sqlx::test(migrations = false)]
async fn hung_jobs_time_out_and_free_their_slots(pool: PgPool) {
    migrate(&pool).await;
    let mut registry = Registry::new();
    // Ignores its cancel signal: only dropping it ends it.
    registry.register::<Hang, _, _>(|_, _| std::future::pending());
    registry.register::<Quick, _, _>(|_, _| async { Ok(()) });
    let mut config = fast_config();
    config.queue_concurrency.insert("stuck".into(), 2);
    let client = JobClient::new(pool.clone());
    let hung = [
        client
            .enqueue(&Hang, EnqueueOptions::default())
            .await
            .unwrap()
            .id,
        client
            .enqueue(&Hang, EnqueueOptions::default())
            .await
            .unwrap()
            .id,
    ];
    let rt = start(&pool, registry, config);
    for id in &hung {
        wait_status(&pool, id, "Running", T).await;
    }
    let queued_at = Instant::now();
    let quick = client
        .enqueue(&Quick, EnqueueOptions::default())
        .await
        .unwrap()
        .id;
    wait_status(&pool, &quick, "Done", T).await;
    // Timeout 1 s + cancel grace 1 s, then the slot is free.
    assert!(
        queued_at.elapsed() < Duration::from_secs(5),
        "the third job waited {:?}",
        queued_at.elapsed()
    );
    for id in &hung {
        let row = wait_status(&pool, id, "Killed", T).await;
        assert_eq!(row.attempts, 2, "each timeout counts as an attempt");
        let error = row.last_error.unwrap();
        assert!(
            error.contains("timed out after 1s") && error.contains("DKL_JOB_TIMEOUTS"),
            "{error}"
        );
    }
    rt.stop().await;
}

/// Defect 10: `DKL_JOB_TIMEOUTS` overrides a kind's own timeout.
#[sqlx::test(migrations = false)]
async fn a_configured_timeout_overrides_the_kinds_own(pool: PgPool) {
    migrate(&pool).await;
    let mut config = fast_config();
    config
        .kind_timeouts
        .insert("ping".into(), Duration::from_secs(1));
    let client = JobClient::new(pool.clone());
    let id = client
        .enqueue(
            &Ping {
                sleep_ms: 60_000,
                ..Default::default()
            },
            EnqueueOptions {
                max_attempts: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    let rt = start(&pool, pings(), config);
    let row = wait_status(&pool, &id, "Killed", Duration::from_secs(10)).await;
    assert!(row.last_error.unwrap().contains("timed out after 1s"));
    rt.stop().await;
}

/// Defect 11: apalis's insert trigger NOTIFYd a channel nobody listens to.
#[sqlx::test(migrations = false)]
async fn apalis_insert_trigger_is_gone(pool: PgPool) {
    migrate(&pool).await;
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'apalis.jobs'::regclass AND NOT tgisinternal ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, vec!["jobs_notify_pending".to_string()]);
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("apalis::job::insert").await.unwrap();
    JobClient::new(pool.clone())
        .enqueue(&Ping::default(), EnqueueOptions::default())
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(
        heard.is_err(),
        "apalis's channel still hears inserts: {heard:?}"
    );
}

/// Review of defect 1/10: an outcome write waited for ever on a job row
/// someone else held (an admin's open `SELECT … FOR UPDATE`), and every
/// outcome behind it waited too. Now it waits `lock_timeout` (250 ms), the
/// others are written, and the locked one follows when the lock goes.
#[sqlx::test(migrations = false)]
async fn a_locked_job_row_does_not_hold_back_other_outcomes(pool: PgPool) {
    migrate(&pool).await;
    let client = JobClient::new(pool.clone());
    let rt = start(&pool, pings(), fast_config());
    let held = client
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
    wait_status(&pool, &held, "Running", T).await;
    let mut admin = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM apalis.jobs WHERE id = $1 FOR UPDATE")
        .bind(&held.0)
        .execute(&mut *admin)
        .await
        .unwrap();
    // Its outcome is now stuck behind the lock; the next jobs' outcomes may
    // share its batch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut others = Vec::new();
    for i in 0..20 {
        others.push(
            client
                .enqueue(
                    &Ping {
                        message: format!("behind the lock {i}"),
                        ..Default::default()
                    },
                    EnqueueOptions::default(),
                )
                .await
                .unwrap()
                .id,
        );
    }
    for id in &others {
        wait_status(&pool, id, "Done", Duration::from_secs(15)).await;
    }
    assert_eq!(
        job(&pool, &held).await.status,
        "Running",
        "its outcome waits for the lock"
    );
    admin.commit().await.unwrap();
    wait_status(&pool, &held, "Done", Duration::from_secs(30)).await;
    rt.stop().await;
}

/// Claims walk the fetch index from its start, and every claimed job leaves
/// a dead entry there until a vacuum. With autovacuum off (as on the CI
/// machines) the walk grew with every job; the runtime vacuums the queue
/// table itself after `vacuum_every` claimed jobs.
#[sqlx::test(migrations = false)]
async fn the_runtime_vacuums_the_queue_table_so_claims_stay_short(pool: PgPool) {
    migrate(&pool).await;
    let payloads: Vec<Vec<u8>> = (0..600)
        .map(|_| serde_json::to_vec(&Ping::default()).unwrap())
        .collect();
    dkl_shared::jobs::admin::insert_many(&pool, Ping::KIND, Ping::QUEUE, &payloads, 3)
        .await
        .unwrap();
    let vacuums = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'apalis.jobs'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n
    };
    let before = vacuums().await;
    let mut config = fast_config();
    config.vacuum_every = 100;
    let rt = start(&pool, pings(), config);
    wait_for(Duration::from_secs(30), "every ping to be done", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status <> 'Done'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    wait_for(Duration::from_secs(5), "the runtime to vacuum", || async {
        (rt.stats.snapshot().queue_vacuums > 0).then_some(())
    })
    .await;
    rt.stop().await;
    assert!(vacuums().await > before, "apalis.jobs was vacuumed");

    // And it can be switched off.
    let mut config = fast_config();
    config.vacuum_every = 0;
    dkl_shared::jobs::admin::insert_many(&pool, Ping::KIND, Ping::QUEUE, &payloads, 3)
        .await
        .unwrap();
    let rt = start(&pool, pings(), config);
    wait_for(Duration::from_secs(30), "every ping to be done", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status <> 'Done'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(rt.stats.snapshot().queue_vacuums, 0);
    rt.stop().await;
}
