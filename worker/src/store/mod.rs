//! Data access for the domain tables, one file per table family. Handlers
//! and commands call these functions; they do not write SQL inline.

pub mod auto_responses;
pub mod bounces;
pub mod email_templates;
pub mod imap_cursors;
pub mod incoming_emails;
pub mod newsletters;
pub mod send_log;
pub mod suppressions;
pub mod verzonden_emails;
