//! `ping`: logs its message, after misbehaving on purpose if asked (see
//! [`Ping`]): the demo and the tests use it to show retries, discards,
//! cancellation and crash recovery on a real worker.

use std::time::Duration;

use dkl_shared::jobs::{JobContext, JobError, Registry};
use dkl_shared::kinds::Ping;

/// Registers the `ping` handler.
pub fn register(registry: &mut Registry) {
    registry.register::<Ping, _, _>(run);
}

async fn run(ping: Ping, ctx: JobContext) -> Result<(), JobError> {
    if ping.sleep_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ping.sleep_ms)) => {},
            _ = ctx.cancelled() => return Err(JobError::retryable("ping cancelled while sleeping")),
        }
    }
    if let Some(error) = ping.permanent_error {
        return Err(JobError::permanent(error));
    }
    if ctx.attempt <= ping.fail_attempts {
        return Err(JobError::retryable(format!(
            "ping fails on purpose on attempt {} of the first {}",
            ctx.attempt, ping.fail_attempts
        )));
    }
    tracing::info!(text = %ping.message, "pong");
    Ok(())
}

#[cfg(test)]
mod tests {
    use dkl_shared::jobs::{JobContext, JobError, Registry};
    use serde_json::json;

    #[tokio::test]
    async fn fails_on_purpose_then_pongs() {
        let mut registry = Registry::new();
        super::register(&mut registry);
        let (ctx, _) = JobContext::for_test(1, 5);
        let first = registry
            .call("ping", &json!({"fail_attempts": 1}), ctx)
            .await;
        assert!(
            matches!(first, Err(JobError::Retryable { .. })),
            "{first:?}"
        );
        let (ctx, _) = JobContext::for_test(2, 5);
        assert!(
            registry
                .call("ping", &json!({"fail_attempts": 1}), ctx)
                .await
                .is_ok()
        );
        let (ctx, _) = JobContext::for_test(1, 5);
        let bad = registry
            .call("ping", &json!({"permanent_error": "no"}), ctx)
            .await;
        assert!(
            matches!(bad, Err(JobError::Permanent(ref m)) if m == "no"),
            "{bad:?}"
        );
    }

    #[tokio::test]
    async fn stops_sleeping_when_cancelled() {
        let mut registry = Registry::new();
        super::register(&mut registry);
        let (ctx, cancel) = JobContext::for_test(1, 1);
        cancel.cancel();
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            registry.call("ping", &json!({"sleep_ms": 60000}), ctx),
        )
        .await;
        assert!(
            matches!(ended, Ok(Err(JobError::Retryable { .. }))),
            "{ended:?}"
        );
    }
}
