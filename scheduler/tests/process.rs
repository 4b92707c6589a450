//! The real `dkl-scheduler` binary as processes: two of them for two
//! minutes with a one-second schedule, the leader killed with SIGKILL
//! halfway. Every tick must become exactly one job, and the survivor must
//! take over within seconds, catching up the ticks lost meanwhile once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dkl_shared::monitor;
use dkl_shared::schedules::store;
use dkl_tests::process::{self, Reaper, log_path, signal, signal_pid, wait_exit};
use dkl_tests::{disable_default_schedules, migrate, url_of, wait_for};
use sqlx::PgPool;

fn spawn_scheduler(url: &str, name: &str) -> Reaper {
    process::spawn_logged(
        process::command(env!("CARGO_BIN_EXE_dkl-scheduler"), url),
        &log_path(name),
    )
}

/// The pid inside a scheduler id (`host-pid-ulid`).
fn pid_of(scheduler_id: &str) -> u32 {
    let mut parts = scheduler_id.rsplitn(3, '-');
    parts.next();
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in scheduler id {scheduler_id}"))
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn two_schedulers_enqueue_each_tick_once_and_hand_over_after_kill_9(pool: PgPool) {
    migrate(&pool).await;
    disable_default_schedules(&pool).await;
    sqlx::query(
        "INSERT INTO job_schedules (name, cron, time_zone, job_kind, payload)
         VALUES ('every-second', '* * * * * *', 'UTC', 'ping', '{\"message\": \"tick\"}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = url_of(&pool).await;
    // Two minutes by default; DKL_TEST_SCHEDULER_SECS shortens it while developing.
    let total: u64 = std::env::var("DKL_TEST_SCHEDULER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);

    let mut running: HashMap<u32, Reaper> = HashMap::new();
    for name in ["sched-a", "sched-b"] {
        let p = spawn_scheduler(&url, name);
        running.insert(p.pid(), p);
    }
    tokio::time::sleep(Duration::from_secs(total / 2)).await;

    let before = monitor::leadership(&pool).await.unwrap();
    assert!(before.lock_held, "a scheduler leads");
    let old_leader = before.scheduler_id.clone().expect("leader row");
    let pid = pid_of(&old_leader);
    let mut victim = running.remove(&pid).expect("the leader is one of ours");
    let killed_at = db_now(&pool).await;
    signal_pid(pid, libc::SIGKILL);
    wait_exit(&mut victim.0, Duration::from_secs(5));
    // Keep two schedulers running, as an operator's supervisor would.
    let replacement = spawn_scheduler(&url, "sched-c");
    running.insert(replacement.pid(), replacement);

    let after = wait_for(Duration::from_secs(15), "a new leader", || async {
        let l = monitor::leadership(&pool).await.unwrap();
        (l.lock_held && l.scheduler_id.as_deref().is_some_and(|id| id != old_leader)).then_some(l)
    })
    .await;
    let handover = (after.since.unwrap() - killed_at).num_milliseconds() as f64 / 1000.0;
    tokio::time::sleep(Duration::from_secs(total - total / 2)).await;
    for p in running.values_mut() {
        signal(&p.0, libc::SIGTERM);
    }
    for p in running.values_mut() {
        assert!(
            wait_exit(&mut p.0, Duration::from_secs(10)).success(),
            "SIGTERM exits cleanly"
        );
    }

    // Jobs per tick, read from the job table itself (not the tick records).
    let per_tick: Vec<(String, i64)> = sqlx::query_as(
        "SELECT metadata -> 'tick', count(*) FROM apalis.jobs
          WHERE metadata -> 'schedule' = 'every-second' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let doubled: Vec<_> = per_tick.iter().filter(|(_, n)| *n > 1).collect();
    let jobs: i64 = per_tick.iter().map(|(_, n)| n).sum();

    let runs = store::runs_of(&pool, "every-second").await.unwrap();
    assert!(
        runs.iter()
            .all(|r| r.job_id.is_some() && r.outcome == "enqueued")
    );
    let first = runs.first().unwrap().tick_at;
    let last = runs.last().unwrap().tick_at;
    let span = (last - first).num_seconds() + 1;
    let missed: i64 = runs.iter().map(|r| i64::from(r.ticks_missed)).sum();
    let gaps: Vec<_> = runs
        .windows(2)
        .filter(|w| (w[1].tick_at - w[0].tick_at).num_seconds() > 1)
        .map(|w| {
            (
                (w[1].tick_at - w[0].tick_at).num_seconds() - 1,
                w[1].ticks_missed,
                w[1].tick_at,
            )
        })
        .collect();
    let leaders: std::collections::BTreeSet<_> =
        runs.iter().map(|r| r.scheduler_id.clone()).collect();
    let summary = format!(
        "two schedulers, {total} s: {} ticks in {span} s, {jobs} jobs, {} ticks doubled, {} leaders, handover {handover:.2} s after kill -9, \
         ticks lost in handover {missed} (caught up by one run each: {gaps:?})",
        runs.len(),
        doubled.len(),
        leaders.len()
    );
    println!("{summary}");
    // CI prints this file, so the counts are on record even when the test passes.
    let _ = std::fs::write(
        process::log_path("two-schedulers-summary").with_extension("txt"),
        &summary,
    );

    assert!(doubled.is_empty(), "ticks enqueued twice: {doubled:?}");
    assert_eq!(jobs as usize, runs.len(), "one job per recorded tick");
    assert!(
        span >= total as i64 - 5,
        "ticks ran for the whole test ({span} s of {total} s)"
    );
    assert_eq!(
        runs.len() as i64 + missed,
        span,
        "every tick is enqueued or counted in a catch-up run"
    );
    for (lost, recorded, at) in &gaps {
        assert_eq!(
            lost,
            &i64::from(*recorded),
            "the catch-up run at {at} stands for the ticks lost before it"
        );
        assert!(
            *at >= killed_at && (*at - killed_at).num_seconds() <= 10,
            "a gap outside the handover: {gaps:?}"
        );
    }
    assert!(
        leaders.len() == 2 && leaders.contains(&old_leader),
        "the killed leader, then one other: {leaders:?}"
    );
    assert!(handover <= 10.0, "handover took {handover} s");
}

#[sqlx::test(migrations = false)]
async fn a_frozen_leader_is_deposed_and_cannot_double_a_tick_when_it_wakes(pool: PgPool) {
    migrate(&pool).await;
    disable_default_schedules(&pool).await;
    sqlx::query(
        "INSERT INTO job_schedules (name, cron, time_zone, job_kind) VALUES ('every-second', '* * * * * *', 'UTC', 'ping')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = url_of(&pool).await;
    let spawn = |name: &str| {
        let mut cmd = process::command(env!("CARGO_BIN_EXE_dkl-scheduler"), &url);
        cmd.env("DKL_SCHEDULER_LEADER_STALE_SECS", "3");
        process::spawn_logged(cmd, &log_path(name))
    };
    let mut a = spawn("frozen-a");
    let mut b = spawn("frozen-b");
    let leader = wait_for(Duration::from_secs(15), "a leader", || async {
        monitor::leadership(&pool).await.unwrap().scheduler_id
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let frozen_pid = pid_of(&leader);
    signal_pid(frozen_pid, libc::SIGSTOP);
    let frozen_at = db_now(&pool).await;
    let after = wait_for(
        Duration::from_secs(20),
        "the other scheduler to lead",
        || async {
            let l = monitor::leadership(&pool).await.unwrap();
            (l.lock_held && l.scheduler_id.as_deref().is_some_and(|id| id != leader)).then_some(l)
        },
    )
    .await;
    let takeover = (after.since.unwrap() - frozen_at).num_milliseconds() as f64 / 1000.0;
    assert!(
        takeover < 3.0 + 5.0,
        "took over {takeover} s after the freeze (stale after 3 s)"
    );

    // The old leader wakes up: its session is gone, so it cannot enqueue.
    signal_pid(frozen_pid, libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for p in [&mut a, &mut b] {
        signal(&p.0, libc::SIGTERM);
        assert!(wait_exit(&mut p.0, Duration::from_secs(10)).success());
    }
    assert_eq!(
        dkl_tests::doubled_ticks(&pool, "every-second").await,
        0,
        "a woken leader enqueued a tick again"
    );
    let runs = store::runs_of(&pool, "every-second").await.unwrap();
    let leaders: std::collections::BTreeSet<_> =
        runs.iter().map(|r| r.scheduler_id.as_str()).collect();
    assert_eq!(leaders.len(), 2, "{leaders:?}");
}
