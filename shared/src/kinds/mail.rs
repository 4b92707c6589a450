//! Mail in and out.

use crate::jobs::JobKind;

/// Fetch new mail from the IMAP accounts into `incoming_emails`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchMail {
    /// Only this account (by its configured name); all accounts when absent.
    #[serde(default)]
    pub account: Option<String>,
}

impl JobKind for FetchMail {
    const KIND: &'static str = "fetch_mail";
    const QUEUE: &'static str = "mail";
    const MAX_ATTEMPTS: i32 = 3;
}
