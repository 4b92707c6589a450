//! The two error types of the engine: what a handler returns, and what the
//! engine's own operations return.

use std::time::Duration;

/// What a job handler returns when an attempt fails. The handler decides
/// whether trying again can help; the engine never guesses.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A passing fault (SMTP 4xx, a dropped IMAP connection, a deadlock):
    /// the job is tried again after a backoff, until its attempts run out.
    #[error("{message}")]
    Retryable {
        /// What went wrong, kept in `apalis.jobs.last_error`.
        message: String,
        /// Wait at least this long before the next attempt (e.g. a server's hint).
        retry_after: Option<Duration>,
    },
    /// A fault no retry can mend (malformed input, unknown template, SMTP 5xx):
    /// the job is discarded at once with this message.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: the job cannot run yet (a send rate limit is used up)
    /// and asks to run again after `after`, without using up an attempt.
    #[error("snoozed for {after:?}: {reason}")]
    Snooze {
        /// Run again after this long (capped like a retry delay).
        after: Duration,
        /// Why, kept in `last_error`.
        reason: String,
    },
}

impl JobError {
    /// A retryable failure.
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        Self::Retryable {
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// A retryable failure that should wait at least `after`.
    pub fn retry_after(message: impl std::fmt::Display, after: Duration) -> Self {
        Self::Retryable {
            message: message.to_string(),
            retry_after: Some(after),
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self::Permanent(message.to_string())
    }

    /// Run again after `after`; the attempt does not count.
    pub fn snooze(after: Duration, reason: impl std::fmt::Display) -> Self {
        Self::Snooze {
            after,
            reason: reason.to_string(),
        }
    }
}

/// Errors of the engine's own operations (enqueue, cancel, fetch, ...).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The payload could not be turned into JSON.
    #[error("job payload of kind `{kind}` does not serialize")]
    Encode {
        /// The job kind.
        kind: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A dedup key collided with a live job but that job could not be read back
    /// (it finished in between three times in a row).
    #[error("dedup key `{key}` of kind `{kind}` kept changing owner; try again")]
    DedupRace {
        /// The job kind.
        kind: String,
        /// The dedup key.
        key: String,
    },
    /// A queue's apalis worker ended while the runtime was meant to run.
    #[error(
        "the worker of queue `{queue}` stopped unexpectedly; the runtime was shut down (see the log)"
    )]
    WorkerStopped {
        /// The queue.
        queue: String,
    },
    /// No job has this id.
    #[error("no job with id {0}")]
    NotFound(String),
    /// A retried job's dedup key is held by another live job.
    #[error(
        "job {0} cannot run again: another pending or running job holds its dedup key; wait for that one or cancel it"
    )]
    DedupTaken(String),
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}
