//! The payload of every job kind dkl-mail-worker has, one file per domain.
//!
//! A kind's payload type (with its [`JobKind`](crate::jobs::JobKind) name,
//! queue, attempts and timeout) lives here, apart from the code that runs it
//! (the `dkl-worker` crate's `handlers`), so the scheduler and `dklctl`
//! enqueue and check payloads without linking any mail, IMAP or SMTP code.
//! Unknown fields are refused, so a typo in an admin's payload is caught when
//! the row is taken, not silently ignored.
//!
//! Adding a kind: declare its payload in the file of its domain, add it to
//! [`catalog`], write its handler in `worker/src/handlers/` and register it
//! there (ARCHITECTURE.md, "Adding a job kind").

pub mod diagnostics;
pub mod images;
pub mod mail;
pub mod maintenance;
pub mod newsletter;

pub use diagnostics::Ping;
pub use images::{CleanupImages, UploadImage};
pub use mail::{FetchMail, MailKind, ProcessIncomingEmail, SendEmail};
pub use maintenance::{ApplyRetention, ExpireSessions, PruneJobs, RecomputeLeaderboards};
pub use newsletter::SendNewsletter;

use crate::jobs::Catalog;

/// Every kind of dkl-mail-worker. Kinds whose handlers come with later work
/// are listed too: the default schedules enqueue them, and the worker
/// discards them with "no handler for kind …" until a handler exists (the
/// worker's `handlers::NOT_YET_HANDLED` names them).
pub fn catalog() -> Catalog {
    Catalog::new()
        .with::<Ping>()
        .with::<PruneJobs>()
        .with::<FetchMail>()
        .with::<ProcessIncomingEmail>()
        .with::<SendEmail>()
        .with::<SendNewsletter>()
        .with::<ApplyRetention>()
        .with::<RecomputeLeaderboards>()
        .with::<ExpireSessions>()
        .with::<UploadImage>()
        .with::<CleanupImages>()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let err = catalog().resolve("sned_mail", &json!({})).unwrap_err();
        assert!(err.contains("unknown job kind `sned_mail`"), "{err}");
        assert!(err.contains("ping") && err.contains("prune_jobs"), "{err}");
    }

    #[test]
    fn payload_is_checked_against_the_kind() {
        let c = catalog();
        assert_eq!(
            c.resolve("ping", &json!({"message": "hi"})).unwrap().queue,
            "default"
        );
        let err = c.resolve("ping", &json!({"sleep_ms": "soon"})).unwrap_err();
        assert!(err.contains("does not decode as job kind `ping`"), "{err}");
        let err = c
            .resolve("fetch_mail", &json!({"acount": "info"}))
            .unwrap_err();
        assert!(err.contains("unknown field `acount`"), "{err}");
        assert_eq!(c.resolve("fetch_mail", &json!({})).unwrap().queue, "mail");
    }
}
