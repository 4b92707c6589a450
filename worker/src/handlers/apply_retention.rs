//! `apply_retention`: deletes what `retention_rules` says is past its time,
//! rule by rule, in short batches (see [`crate::store::retention`]). A
//! failing rule is recorded on its row and in the job's result, the other
//! rules still run, and the job then fails so `job_status` shows it.
//! Images are not deleted here: their rule hands them to `cleanup_images`,
//! which removes a row only after the store confirmed.

use std::sync::Arc;
use std::time::Duration;

use dkl_shared::jobs::{self, EnqueueOptions, JobContext, JobError, Registry, enqueue_on};
use dkl_shared::kinds::{ApplyRetention, CleanupImages};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::store::retention::{self, Batching, Rule, Target};

/// Runs retention rules.
pub struct Retention {
    /// The database.
    pub pool: PgPool,
    /// Batch sizes and lock timeout.
    pub batching: Batching,
}

/// Registers the `apply_retention` handler.
pub fn register(registry: &mut Registry, retention: Arc<Retention>) {
    registry.register::<ApplyRetention, _, _>(move |job, ctx| {
        let retention = retention.clone();
        async move { retention.run(job, ctx).await }
    });
}

impl Retention {
    async fn run(&self, job: ApplyRetention, ctx: JobContext) -> Result<(), JobError> {
        let rules = self.selected_rules(&job).await?;
        let mut reports = Vec::new();
        let mut failures = Vec::new();
        let mut deleted_total = 0u64;
        let mut any_transient = false;
        for rule in &rules {
            if ctx.is_cancelled() {
                return Err(JobError::retryable("retention cancelled between rules"));
            }
            match self.apply_rule(rule, job.dry_run).await {
                Ok(report) => {
                    deleted_total += report["deleted"].as_u64().unwrap_or(0);
                    reports.push(report);
                }
                Err(e) => {
                    tracing::error!(rule = %rule.name, error = %e, "retention rule failed");
                    any_transient |= e.is_transient();
                    failures.push(e.to_string());
                    reports.push(json!({"rule": rule.name, "table": rule.table_name, "error": e.to_string()}));
                    if !job.dry_run {
                        let _ = retention::record_outcome(
                            &self.pool,
                            &rule.name,
                            None,
                            Some(&e.to_string()),
                        )
                        .await;
                    }
                }
            }
        }
        let result = json!({
            "dry_run": job.dry_run,
            "rules": reports,
            "deleted": deleted_total,
            "failed": failures.len(),
        });
        jobs::admin::record_result(&self.pool, &ctx.id, &result)
            .await
            .map_err(JobError::retryable)?;
        tracing::info!(
            rules = rules.len(),
            deleted = deleted_total,
            failed = failures.len(),
            dry_run = job.dry_run,
            "retention applied"
        );
        if failures.is_empty() {
            return Ok(());
        }
        let message = format!(
            "{} of {} retention rules failed (the others ran): {}",
            failures.len(),
            rules.len(),
            failures.join("; ")
        );
        // A rule that must be fixed fails the same way tomorrow: no retries.
        if any_transient {
            Err(JobError::retryable(message))
        } else {
            Err(JobError::permanent(message))
        }
    }

    /// The rules the job names, or every enabled one.
    async fn selected_rules(&self, job: &ApplyRetention) -> Result<Vec<Rule>, JobError> {
        let all = retention::rules(&self.pool)
            .await
            .map_err(JobError::retryable)?;
        if job.rules.is_empty() {
            return Ok(all.into_iter().filter(|r| r.enabled).collect());
        }
        let unknown: Vec<&String> = job
            .rules
            .iter()
            .filter(|n| all.iter().all(|r| &r.name != *n))
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
            return Err(JobError::permanent(format!(
                "no retention rule named {unknown:?}; the rules are: {}",
                known.join(", ")
            )));
        }
        Ok(all
            .into_iter()
            .filter(|r| job.rules.contains(&r.name))
            .collect())
    }

    async fn apply_rule(
        &self,
        rule: &Rule,
        dry_run: bool,
    ) -> Result<Value, retention::RetentionError> {
        let base = json!({"rule": rule.name, "table": rule.table_name, "keep_for_days": rule.keep_for_secs / 86_400.0});
        if dry_run {
            let due = retention::count_due(&self.pool, rule).await?;
            return Ok(merge(base, json!({"would_delete": due, "deleted": 0})));
        }
        if rule.target() == Some(Target::ImagesDeleted) {
            return self.hand_images_to_cleanup(rule, base).await;
        }
        let mut last_logged = std::time::Instant::now();
        let name = rule.name.clone();
        let mut progress = move |deleted: u64| {
            if last_logged.elapsed() > Duration::from_secs(10) {
                tracing::info!(rule = %name, deleted, "retention in progress");
                last_logged = std::time::Instant::now();
            }
        };
        let applied = retention::apply(&self.pool, rule, self.batching, &mut progress).await?;
        tracing::info!(rule = %rule.name, table = %rule.table_name, deleted = applied.deleted, batches = applied.batches,
            longest_statement_ms = applied.longest_statement.as_millis() as u64, "retention rule applied");
        if let Err(e) =
            retention::record_outcome(&self.pool, &rule.name, Some(applied.deleted), None).await
        {
            tracing::warn!(rule = %rule.name, error = %e, "cannot record the retention outcome on its rule");
        }
        Ok(merge(
            base,
            json!({
                "deleted": applied.deleted,
                "batches": applied.batches,
                "longest_statement_ms": applied.longest_statement.as_millis() as u64,
            }),
        ))
    }

    /// Images need the store's confirmation before their row goes: a
    /// `cleanup_images` job does that, with this rule's age as grace.
    async fn hand_images_to_cleanup(
        &self,
        rule: &Rule,
        base: Value,
    ) -> Result<Value, retention::RetentionError> {
        let due = retention::count_due(&self.pool, rule).await?;
        let handoff = |message: String| retention::RetentionError::Handoff {
            rule: rule.name.clone(),
            message,
        };
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| handoff(e.to_string()))?;
        let enqueued = enqueue_on(
            &mut conn,
            &CleanupImages {
                grace_secs: Some(rule.keep_for_secs as u64),
            },
            EnqueueOptions::dedup("cleanup_images:retention"),
        )
        .await
        .map_err(|e| handoff(e.to_string()))?;
        let _ = retention::record_outcome(&self.pool, &rule.name, Some(0), None).await;
        Ok(merge(
            base,
            json!({"deleted": 0, "handed_to_cleanup": due, "cleanup_job": enqueued.id.to_string()}),
        ))
    }
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}
