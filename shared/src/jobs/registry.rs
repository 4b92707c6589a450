//! Handlers by job kind: what runs when a job of kind X is claimed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::error::JobError;
use super::kind::{JobId, JobKind};

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id.
    pub id: JobId,
    /// This attempt's number, starting at 1.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    /// Resolves when someone cancelled this job (`dklctl cancel`,
    /// [`super::JobClient::cancel`]). Long handlers should `select!` on it and
    /// stop; after `DKL_CANCEL_GRACE_SECS` the handler is dropped anyway.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// True once cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// True on the attempt after which the job is discarded if it fails.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// A context for running a handler outside the runtime (a test): a
    /// made-up job id, the given attempt, and the token that cancels it.
    pub fn for_test(attempt: i32, max_attempts: i32) -> (Self, CancellationToken) {
        let cancel = CancellationToken::new();
        let ctx = Self {
            id: JobId::generate(),
            attempt,
            max_attempts,
            cancel: cancel.clone(),
        };
        (ctx, cancel)
    }
}

pub(crate) type BoxHandler =
    Arc<dyn Fn(&[u8], JobContext) -> BoxFuture<'static, Result<(), JobError>> + Send + Sync>;

/// A registered handler and the queue its kind runs on.
#[derive(Clone)]
pub(crate) struct Registered {
    pub queue: &'static str,
    /// The kind's own execution timeout (`DKL_JOB_TIMEOUTS` may override it).
    pub timeout: std::time::Duration,
    pub handler: BoxHandler,
}

/// The set of job kinds a worker process can run.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<&'static str, Registered>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of kind `J`. A payload that does not decode
    /// as `J` discards the job with a message naming the kind and the fault.
    pub fn register<J, F, Fut>(&mut self, handler: F) -> &mut Self
    where
        J: JobKind,
        F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let boxed: BoxHandler = Arc::new(move |bytes: &[u8], ctx: JobContext| {
            match serde_json::from_slice::<J>(bytes) {
                Ok(job) => Box::pin(handler(job, ctx)),
                Err(e) => {
                    let msg = format!(
                        "payload of job kind `{}` does not decode: {e}; fix the payload and enqueue it again",
                        J::KIND
                    );
                    Box::pin(async move { Err(JobError::Permanent(msg)) })
                }
            }
        });
        self.handlers.insert(
            J::KIND,
            Registered {
                queue: J::QUEUE,
                timeout: J::TIMEOUT,
                handler: boxed,
            },
        );
        self
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self.handlers.keys().copied().collect();
        k.sort_unstable();
        k
    }

    /// The queue a kind runs on, if registered.
    pub fn queue_of(&self, kind: &str) -> Option<&'static str> {
        self.handlers.get(kind).map(|r| r.queue)
    }

    /// Runs the handler of `kind` once on `payload`, as the runtime would
    /// but without a job row: for testing a handler on its own. An unknown
    /// kind or a payload that does not decode is a permanent error, as in
    /// the runtime.
    pub async fn call(
        &self,
        kind: &str,
        payload: &serde_json::Value,
        ctx: JobContext,
    ) -> Result<(), JobError> {
        let Some(registered) = self.handlers.get(kind) else {
            return Err(JobError::permanent(format!("no handler for kind `{kind}`")));
        };
        let bytes = serde_json::to_vec(payload).map_err(JobError::permanent)?;
        (registered.handler)(&bytes, ctx).await
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Registered> {
        self.handlers.get(kind)
    }
}
