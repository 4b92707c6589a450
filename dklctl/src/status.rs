//! `dklctl status`: what the queues hold, as readable tables.

use chrono::{DateTime, Utc};
use dkl_shared::jobs::store;
use sqlx::PgPool;

/// Prints per-queue counts and the `recent` newest jobs.
pub async fn print(pool: &PgPool, recent: i64) -> anyhow::Result<()> {
    let counts = store::queue_counts(pool).await?;
    println!("{:<14} {:>8} {:>8} {:>8} {:>10} {:>16}", "QUEUE", "PENDING", "RUNNING", "DONE", "DISCARDED", "OLDEST DUE (s)");
    for q in &counts {
        let oldest = q.oldest_due_secs.map_or("-".to_string(), |s| format!("{s:.1}"));
        println!("{:<14} {:>8} {:>8} {:>8} {:>10} {:>16}", q.queue, q.pending, q.running, q.done, q.killed, oldest);
    }
    if counts.is_empty() {
        println!("(no jobs)");
    }
    println!();
    println!("{:<26} {:<16} {:<12} {:<9} {:>8} {:<12} LAST ERROR", "JOB", "KIND", "QUEUE", "STATE", "ATTEMPT", "RUN AT");
    for j in store::recent_jobs(pool, recent).await? {
        let state = match (j.status.as_str(), j.cancelled_at.is_some()) {
            ("Killed", true) => "cancelled",
            ("Killed", false) => "discarded",
            ("Pending", _) if j.run_at > Utc::now() => "scheduled",
            ("Pending", _) => "pending",
            ("Running", _) => "running",
            ("Done", _) => "done",
            (other, _) => other,
        };
        let error = j.last_error.as_deref().unwrap_or("").replace('\n', " ");
        println!(
            "{:<26} {:<16} {:<12} {:<9} {:>3}/{:<4} {:<12} {}",
            j.id,
            j.job_type,
            j.queue,
            state,
            j.attempts,
            j.max_attempts,
            clock(j.run_at),
            truncate(&error, 60)
        );
    }
    Ok(())
}

fn clock(t: DateTime<Utc>) -> String {
    t.format("%H:%M:%S%.3f").to_string()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}
