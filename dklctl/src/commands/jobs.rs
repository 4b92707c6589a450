//! Jobs one by one: `ping`, `enqueue`, `cancel`, `retry`, `show`, `prune`.

use chrono::{DateTime, Utc};
use dkl_shared::jobs::{EnqueueOptions, JobClient, JobId};
use dkl_shared::kinds::{self, Ping, PruneJobs};

/// Enqueues a diagnostic `ping` and prints its id.
pub async fn ping(client: &JobClient, ping: Ping, at: Option<DateTime<Utc>>) -> anyhow::Result<()> {
    let job = client
        .enqueue(
            &ping,
            EnqueueOptions {
                run_at: at,
                ..Default::default()
            },
        )
        .await?;
    println!("{}", job.id);
    Ok(())
}

/// What `dklctl enqueue` was asked for.
pub struct EnqueueRequest {
    pub kind: String,
    pub payload: serde_json::Value,
    pub queue: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub dedup: Option<String>,
    pub max_attempts: Option<i32>,
}

/// Enqueues a job by kind name; queue and attempts default to the kind's.
pub async fn enqueue(client: &JobClient, req: EnqueueRequest) -> anyhow::Result<()> {
    let spec = kinds::catalog().get(&req.kind).copied();
    let queue = req
        .queue
        .unwrap_or_else(|| spec.map_or("default", |s| s.queue).to_string());
    let max_attempts = req
        .max_attempts
        .unwrap_or_else(|| spec.map_or(5, |s| s.max_attempts));
    let opts = EnqueueOptions {
        run_at: req.at,
        dedup_key: req.dedup,
        ..Default::default()
    };
    let job = client
        .enqueue_raw(&req.kind, &queue, &req.payload, max_attempts, opts)
        .await?;
    if job.created {
        println!("{}", job.id);
    } else {
        println!("{} (existing live job with this dedup key)", job.id);
    }
    Ok(())
}

/// Cancels a job: pending ones never start, running ones are signalled.
pub async fn cancel(client: &JobClient, id: &str) -> anyhow::Result<()> {
    let outcome = client.cancel(&JobId(id.to_string())).await?;
    println!("{id}: {outcome:?}");
    Ok(())
}

/// Runs a job again.
pub async fn retry(client: &JobClient, id: &str) -> anyhow::Result<()> {
    let outcome = client.retry(&JobId(id.to_string())).await?;
    println!("{id}: {}", outcome.describe());
    Ok(())
}

/// Prints one job.
pub async fn show(client: &JobClient, id: &str) -> anyhow::Result<()> {
    let job = client.job(&JobId(id.to_string())).await?;
    println!("{job:#?}");
    Ok(())
}

/// Enqueues the prune job now (or finds the one already waiting).
pub async fn prune(client: &JobClient) -> anyhow::Result<()> {
    let job = client
        .enqueue(&PruneJobs::default(), EnqueueOptions::dedup("prune_jobs"))
        .await?;
    println!("{}", job.id);
    Ok(())
}
