//! Data access for the domain tables, one file per table family. Handlers
//! and commands call these functions; they do not write SQL inline.

pub mod auto_responses;
pub mod bounces;
pub mod dashboard;
pub mod email_templates;
pub mod images;
pub mod imap_cursors;
pub mod incoming_emails;
pub mod jobs;
pub mod leaderboards;
pub mod newsletters;
pub mod retention;
pub mod send_log;
pub mod sessions;
pub mod suppressions;
pub mod verzonden_emails;
