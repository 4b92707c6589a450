//! What a job is: a typed payload with a stable name and a queue.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};

/// A kind of job: its payload type, the name stored in `apalis.jobs.job_type`,
/// the queue it runs on and how often it may be tried.
///
/// ```
/// use dkl_shared::jobs::JobKind;
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendWelcome { gebruiker_id: uuid::Uuid }
/// impl JobKind for SendWelcome {
///     const KIND: &'static str = "send_welcome";
///     const QUEUE: &'static str = "mail";
/// }
/// ```
pub trait JobKind: Serialize + DeserializeOwned + Send + 'static {
    /// Stable name; renaming it orphans jobs already in the table.
    const KIND: &'static str;
    /// Queue whose concurrency limit this kind shares (`DKL_QUEUE_CONCURRENCY`).
    const QUEUE: &'static str = "default";
    /// Attempts before the job is discarded (1 = never retried).
    const MAX_ATTEMPTS: i32 = 5;
    /// The longest one attempt may run. Past it the handler is asked to stop
    /// ([`super::JobContext::cancelled`]), dropped after `DKL_CANCEL_GRACE_SECS`,
    /// and the attempt counts as failed (retried with backoff). A hung
    /// handler would otherwise hold its queue slot for ever. Operators
    /// override it per kind with `DKL_JOB_TIMEOUTS`.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
}

/// The id of a job row (a ULID, as apalis writes them).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(ulid::Ulid::generate().to_string())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}
