//! `dklctl bench upkeep`: the leaderboard recompute and retention at
//! scale, each beside its ceiling measured in the same run on the same
//! data:
//!
//! - 1,000,000 `event_registrations` over 20 events (5 years, 200,000
//!   participants, some in test mode or cancelled): the recompute of every
//!   board (each event, each year, all time) into an empty `leaderboards`,
//!   beside one plain `INSERT … SELECT … rank() OVER …` writing the same
//!   boards into a table shaped like `leaderboards` (the ceiling); then a
//!   recompute after one event changed, and one with nothing changed;
//! - 1,000,000 expired `verzonden_emails` rows (among 100,000 young ones):
//!   one plain `DELETE` of them (timed, then rolled back), then the
//!   retention rule's batches deleting the same rows: total time and the
//!   longest single statement.
//!
//! It makes a database of its own on `DATABASE_URL`'s server (migrated,
//! dropped afterwards), so nothing else is needed and a real database is
//! never touched.

use std::time::Instant;

use anyhow::Context;

use dkl_worker::store::leaderboards::{self, Also};
use dkl_worker::store::retention::{self, Batching};
use sqlx::PgPool;

use super::scratch_db::ScratchDb;

/// Options of `dklctl bench upkeep`.
#[derive(clap::Args, Debug)]
pub struct UpkeepBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Registrations (over 20 events).
    #[arg(long, default_value_t = 1_000_000)]
    registrations: i64,
    /// Expired send-log rows for retention.
    #[arg(long, default_value_t = 1_000_000)]
    expired_rows: i64,
}

#[derive(serde::Serialize, Default)]
struct Report {
    registrations: i64,
    events: i64,
    leaderboard_rows: i64,
    leaderboard_s: f64,
    leaderboard_plain_s: f64,
    leaderboard_ratio: f64,
    leaderboard_one_event_changed_s: f64,
    leaderboard_one_event_rows_written: i64,
    leaderboard_unchanged_s: f64,
    expired_rows: i64,
    retention_s: f64,
    retention_longest_stmt_s: f64,
    retention_batches: u32,
    retention_plain_delete_s: f64,
    retention_ratio: f64,
}

const EVENTS: i64 = 20;

/// Runs the benchmark in a database of its own.
pub async fn run(database_url: &str, args: UpkeepBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.registrations >= 1_000 && args.expired_rows >= 1_000,
        "--registrations and --expired-rows must be at least 1000"
    );
    let scratch = ScratchDb::create(database_url, "upkeep").await?;
    let outcome = measure(&scratch.pool, &args).await;
    scratch.drop().await;
    let report = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(pool: &PgPool, args: &UpkeepBenchArgs) -> anyhow::Result<Report> {
    let mut report = Report {
        registrations: args.registrations,
        events: EVENTS,
        expired_rows: args.expired_rows,
        ..Report::default()
    };
    progress(args, "seeding registrations");
    seed_registrations(pool, args.registrations).await?;
    leaderboard(pool, args, &mut report).await?;
    progress(args, "seeding the send log");
    seed_send_log(pool, args.expired_rows).await?;
    retention_run(pool, args, &mut report).await?;
    Ok(report)
}

fn progress(args: &UpkeepBenchArgs, what: &str) {
    if !args.json {
        eprintln!("… {what}");
    }
}

async fn seed_registrations(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    let participants = n / 5;
    let per_event = n / EVENTS;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO events (name, start_time)
         SELECT 'Loop ' || e, make_timestamptz(2022 + e % 5, 3 + e % 8, 1 + e, 9, 0, 0, 'Europe/Amsterdam')
           FROM generate_series(0, {EVENTS} - 1) e;
         INSERT INTO participants (naam, email, account_type, test_mode)
         SELECT 'Deelnemer ' || i, 'p' || i || '@example.org', 'full', i % 100 = 0
           FROM generate_series(1, {participants}) i;
         CREATE TEMP TABLE bench_people AS
         SELECT row_number() OVER (ORDER BY id) - 1 AS k, id FROM participants;
         CREATE INDEX ON bench_people (k);
         INSERT INTO event_registrations (event_id, participant_id, steps, total_distance, test_mode, status, finish_time)
         SELECT e.id, p.id, (random() * 40000)::int, round((random() * 30)::numeric, 2),
                random() < 0.01,
                CASE WHEN random() < 0.02 THEN 'cancelled' ELSE 'confirmed' END,
                CASE WHEN random() < 0.7 THEN e.start_time + interval '5 hours' END
           FROM (SELECT id, start_time, row_number() OVER (ORDER BY name) AS ord FROM events) e
           CROSS JOIN generate_series(0, {per_event} - 1) j
           JOIN bench_people p ON p.k = (e.ord * 7919 + j) % {participants};
         ANALYZE events; ANALYZE participants; ANALYZE event_registrations;"
    )))
    .execute(pool)
    .await
    .context("seed registrations")?;
    Ok(())
}

/// The ceiling: the same boards in one statement into an empty table of
/// the same shape (indexes and the foreign key included).
const PLAIN_LEADERBOARD: &str = "
INSERT INTO leaderboards_plain (period, participant_id, steps, distance, rank, points)
SELECT period, participant_id, steps, distance,
       rank() OVER (PARTITION BY period ORDER BY steps DESC), points
  FROM (SELECT 'event:' || event_id AS period, participant_id, steps::bigint AS steps,
               distance::numeric AS distance, points::bigint AS points
          FROM leaderboard_source
        UNION ALL
        SELECT 'year:' || year, participant_id, sum(steps), sum(distance), sum(points)
          FROM leaderboard_source GROUP BY year, participant_id
        UNION ALL
        SELECT 'all', participant_id, sum(steps), sum(distance), sum(points)
          FROM leaderboard_source GROUP BY participant_id) boards";

async fn leaderboard(
    pool: &PgPool,
    args: &UpkeepBenchArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE leaderboards_plain (LIKE leaderboards INCLUDING ALL);
         ALTER TABLE leaderboards_plain ADD FOREIGN KEY (participant_id) REFERENCES participants (id);
         SELECT count(*), sum(steps) FROM leaderboard_source;",
    )
    .execute(pool)
    .await?;
    progress(args, "plain INSERT … SELECT … rank() (ceiling)");
    let started = Instant::now();
    sqlx::query(PLAIN_LEADERBOARD).execute(pool).await?;
    report.leaderboard_plain_s = started.elapsed().as_secs_f64();

    progress(args, "recompute_leaderboards");
    let done = leaderboards::recompute(pool, Also::default()).await?;
    report.leaderboard_s = done.took_ms as f64 / 1000.0;
    report.leaderboard_rows = done.periods.iter().map(|(_, n)| n).sum();
    let plain_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM leaderboards_plain")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        plain_rows == report.leaderboard_rows,
        "the recompute wrote {} entries, the plain statement {plain_rows}",
        report.leaderboard_rows
    );
    report.leaderboard_ratio = report.leaderboard_s / report.leaderboard_plain_s;

    progress(args, "recompute after one event changed");
    sqlx::query(
        "UPDATE event_registrations SET steps = steps + 100
          WHERE event_id = (SELECT id FROM events ORDER BY name LIMIT 1)
            AND participant_id IN (SELECT participant_id FROM event_registrations
                                    WHERE event_id = (SELECT id FROM events ORDER BY name LIMIT 1)
                                    LIMIT 1000)",
    )
    .execute(pool)
    .await?;
    let one = leaderboards::recompute(pool, Also::default()).await?;
    report.leaderboard_one_event_changed_s = one.took_ms as f64 / 1000.0;
    report.leaderboard_one_event_rows_written = one.rows_written;
    let started = Instant::now();
    let none = leaderboards::recompute(pool, Also::default()).await?;
    report.leaderboard_unchanged_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        none.periods.is_empty(),
        "nothing changed, yet {} periods were rebuilt",
        none.periods.len()
    );
    sqlx::raw_sql("DROP TABLE leaderboards_plain; TRUNCATE leaderboards, leaderboard_periods;")
        .execute(pool)
        .await?;
    Ok(())
}

async fn seed_send_log(pool: &PgPool, expired: i64) -> anyhow::Result<()> {
    // Oldest first, as a send log fills up; ages a second apart.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO verzonden_emails (recipient_email, subject, status, template_name, sent_at, mail_kind)
         SELECT 'r' || i || '@example.org', 'Inschrijving bevestigd', 'sent', 'registration_confirmation',
                now() - interval '400 days' - make_interval(secs => {expired} - i), 'transactional'
           FROM generate_series(1, {expired}) i;
         INSERT INTO verzonden_emails (recipient_email, subject, status, template_name, sent_at, mail_kind)
         SELECT 'y' || i || '@example.org', 'Nieuwsbrief', 'sent', 'newsletter',
                now() - make_interval(secs => i), 'newsletter'
           FROM generate_series(1, 100000) i;"
    )))
    .execute(pool)
    .await
    .context("seed the send log")?;
    sqlx::raw_sql("VACUUM ANALYZE verzonden_emails")
        .execute(pool)
        .await?;
    Ok(())
}

async fn retention_run(
    pool: &PgPool,
    args: &UpkeepBenchArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rule = retention::rules(pool)
        .await?
        .into_iter()
        .find(|r| r.name == "verzonden_emails")
        .context("the verzonden_emails retention rule is missing")?;
    // Warm both paths alike: the table and the index they walk.
    sqlx::query("SELECT count(*) FROM verzonden_emails WHERE sent_at < $1")
        .bind(rule.cutoff)
        .fetch_one(pool)
        .await?;

    progress(args, "one plain DELETE (ceiling, rolled back)");
    let mut tx = pool.begin().await?;
    let started = Instant::now();
    let plain = sqlx::query("DELETE FROM verzonden_emails WHERE sent_at < $1")
        .bind(rule.cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    report.retention_plain_delete_s = started.elapsed().as_secs_f64();
    tx.rollback().await?;
    anyhow::ensure!(
        plain as i64 == args.expired_rows,
        "the plain DELETE found {plain} rows"
    );
    // The rolled-back delete left its marks on every row; settle them so the
    // batches do not pay for it.
    sqlx::raw_sql("VACUUM verzonden_emails")
        .execute(pool)
        .await?;

    progress(args, "apply_retention's batches");
    let started = Instant::now();
    let applied = retention::apply(pool, &rule, Batching::default(), &mut |_| {}).await?;
    report.retention_s = started.elapsed().as_secs_f64();
    report.retention_longest_stmt_s = applied.longest_statement.as_secs_f64();
    report.retention_batches = applied.batches;
    report.retention_ratio = report.retention_s / report.retention_plain_delete_s;
    anyhow::ensure!(
        applied.deleted as i64 == args.expired_rows,
        "retention deleted {} rows, expected {}",
        applied.deleted,
        args.expired_rows
    );
    Ok(())
}

fn print_table(r: &Report) {
    println!("MEASUREMENT                                         RESULT");
    println!(
        "registrations / events / board entries              {} / {} / {}",
        r.registrations, r.events, r.leaderboard_rows
    );
    println!(
        "leaderboard recompute, every board                  {:.2} s",
        r.leaderboard_s
    );
    println!(
        "one plain INSERT … SELECT … rank() (ceiling)        {:.2} s",
        r.leaderboard_plain_s
    );
    println!(
        "ratio (target ≤ 1.5)                                {:.2}",
        r.leaderboard_ratio
    );
    println!(
        "recompute after one event changed                   {:.2} s ({} entries rewritten)",
        r.leaderboard_one_event_changed_s, r.leaderboard_one_event_rows_written
    );
    println!(
        "recompute with nothing changed                      {:.3} s",
        r.leaderboard_unchanged_s
    );
    println!(
        "expired send-log rows deleted                       {}",
        r.expired_rows
    );
    println!(
        "retention, batched ({} statements)                {:.2} s",
        r.retention_batches, r.retention_s
    );
    println!(
        "longest single statement (target ≤ 1 s)             {:.3} s",
        r.retention_longest_stmt_s
    );
    println!(
        "one plain DELETE (ceiling)                          {:.2} s",
        r.retention_plain_delete_s
    );
    println!(
        "ratio (target ≤ 2)                                  {:.2}",
        r.retention_ratio
    );
}
