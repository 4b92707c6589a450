//! `cleanup_images`: destroys at the image store the images marked deleted
//! longer ago than the grace period, and removes each row only once the
//! store confirmed (an image already gone counts as confirmed). A refused
//! image is reported and the others go on; a passing fault stops the run
//! and the job is retried with backoff, the rest waiting for it.

use std::sync::Arc;
use std::time::Duration;

use dkl_shared::jobs::{self, JobContext, JobError, Registry};
use dkl_shared::kinds::CleanupImages;
use serde_json::json;

use super::upload_image::{Images, store_error};
use crate::images::Destroyed;
use crate::store::images as store;

/// Without an enabled `uploaded_images` retention rule: 90 days.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(90 * 86_400);

/// Registers the `cleanup_images` handler.
pub fn register(registry: &mut Registry, images: Arc<Images>) {
    registry.register::<CleanupImages, _, _>(move |job, ctx| {
        let images = images.clone();
        async move { images.cleanup(job, ctx).await }
    });
}

/// A refusal about the credentials or the cloud (401, 403, 404), not about
/// one image.
fn refuses_the_account(e: &crate::images::ImageStoreError) -> bool {
    matches!(
        e,
        crate::images::ImageStoreError::Rejected {
            status: 401 | 403 | 404,
            ..
        }
    )
}

impl Images {
    async fn cleanup(&self, job: CleanupImages, ctx: JobContext) -> Result<(), JobError> {
        let store_client = self.store()?;
        let grace = match job.grace_secs {
            Some(s) => Duration::from_secs(s),
            None => crate::store::retention::enabled_age(
                &self.pool,
                crate::store::retention::Target::ImagesDeleted,
            )
            .await
            .map_err(JobError::retryable)?
            .map_or(DEFAULT_GRACE, Duration::from_secs_f64),
        };
        let cutoff =
            chrono::Utc::now() - chrono::Duration::from_std(grace).map_err(JobError::permanent)?;
        let (mut removed, mut already_gone, mut refused) = (0u64, 0u64, Vec::new());
        let mut after = None;
        loop {
            let page = store::marked_deleted_before(&self.pool, cutoff, after, 100)
                .await
                .map_err(JobError::retryable)?;
            let Some(last) = page.last() else { break };
            after = Some((last.deleted_at, last.id));
            for image in &page {
                if ctx.is_cancelled() {
                    return Err(JobError::retryable("cleanup cancelled"));
                }
                // Restored (or marked again, later) since the page was read: keep it.
                if !store::claim_for_destroy(&self.pool, image.id, cutoff)
                    .await
                    .map_err(JobError::retryable)?
                {
                    continue;
                }
                match store_client.destroy(&image.public_id).await {
                    Ok(outcome) => {
                        if store::remove_destroyed(&self.pool, image.id)
                            .await
                            .map_err(JobError::retryable)?
                        {
                            removed += 1;
                            if outcome == Destroyed::NotFound {
                                already_gone += 1;
                            }
                        }
                    }
                    Err(e) => {
                        // A refusal: the image is still there and may be
                        // restored. No answer or a 5xx: it may be gone,
                        // so the mark stays until a later run settles it.
                        if !e.is_transient() {
                            let _ = store::release_claim(&self.pool, image.id).await;
                        }
                        if e.is_transient() || refuses_the_account(&e) {
                            // Every other image would fail the same way.
                            self.record(&ctx, removed, already_gone, &refused).await?;
                            return Err(store_error(e));
                        }
                        tracing::warn!(public_id = %image.public_id, error = %e, "the store refused to destroy an image");
                        refused.push(format!("{}: {e}", image.public_id));
                    }
                }
            }
        }
        self.record(&ctx, removed, already_gone, &refused).await?;
        tracing::info!(
            removed,
            already_gone,
            refused = refused.len(),
            "deleted images cleaned up"
        );
        if refused.is_empty() {
            Ok(())
        } else {
            Err(JobError::permanent(format!(
                "{} images were not destroyed (their rows stay): {}",
                refused.len(),
                refused.join("; ")
            )))
        }
    }

    async fn record(
        &self,
        ctx: &JobContext,
        removed: u64,
        already_gone: u64,
        refused: &[String],
    ) -> Result<(), JobError> {
        let result = json!({"removed": removed, "already_gone": already_gone, "refused": refused});
        jobs::admin::record_result(&self.pool, &ctx.id, &result)
            .await
            .map_err(JobError::retryable)
    }
}
