//! `process_incoming_email`: the follow-up of each newly stored message.
//! It records what the message is (a person's mail, auto-submitted, a
//! delivery status notification, a complaint report, a mailing list's
//! mail; see [`crate::mime::classify`]) and marks it processed. Reading
//! the raw message again (not the stored columns) keeps this correct when
//! a message is reprocessed after a parser fix.

use dkl_shared::jobs::{JobContext, JobError, Registry};
use dkl_shared::kinds::ProcessIncomingEmail;
use sqlx::PgPool;

use crate::mime::classify::classify;
use crate::store::incoming_emails;

/// Registers the `process_incoming_email` handler.
pub fn register(registry: &mut Registry, pool: PgPool) {
    registry.register::<ProcessIncomingEmail, _, _>(
        move |job: ProcessIncomingEmail, _ctx: JobContext| {
            let pool = pool.clone();
            async move { process(&pool, job).await }
        },
    );
}

async fn process(pool: &PgPool, job: ProcessIncomingEmail) -> Result<(), JobError> {
    let id = job.incoming_email_id;
    let raw = match incoming_emails::raw(pool, id).await {
        Ok(raw) => raw,
        Err(e) => {
            return Err(JobError::retryable(format!(
                "reading incoming email {id}: {e}"
            )));
        }
    };
    let verdict = raw.map(|raw| classify(&raw));
    let found = incoming_emails::mark_processed(pool, id, verdict.as_ref())
        .await
        .map_err(|e| JobError::retryable(format!("marking incoming email {id} processed: {e}")))?;
    if !found {
        // Deleted meanwhile (retention, an operator): nothing to follow up.
        tracing::info!(%id, "incoming email no longer exists; nothing to process");
        return Ok(());
    }
    if let Some(v) = verdict {
        tracing::info!(%id, class = v.class.as_str(), reason = %v.reason, "incoming email classified");
    }
    Ok(())
}
