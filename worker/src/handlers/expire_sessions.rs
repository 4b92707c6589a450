//! `expire_sessions`: ends sessions, revokes refresh tokens and ends role
//! assignments past their expiry (see [`crate::store::sessions`]). The
//! counts are the job's result; a second run finds nothing more.

use dkl_shared::jobs::{self, JobError, Registry};
use dkl_shared::kinds::ExpireSessions;
use sqlx::PgPool;

/// Registers the `expire_sessions` handler.
pub fn register(registry: &mut Registry, pool: PgPool) {
    registry.register::<ExpireSessions, _, _>(move |_job, ctx| {
        let pool = pool.clone();
        async move {
            let expired = crate::store::sessions::expire(&pool)
                .await
                .map_err(JobError::retryable)?;
            let result = serde_json::to_value(expired).map_err(JobError::permanent)?;
            jobs::admin::record_result(&pool, &ctx.id, &result)
                .await
                .map_err(JobError::retryable)?;
            tracing::info!(
                sessions = expired.sessions,
                refresh_tokens = expired.refresh_tokens,
                user_roles = expired.user_roles,
                "expired sessions, tokens and roles"
            );
            Ok(())
        }
    });
}
