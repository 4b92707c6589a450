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

/// Follow up one newly stored `incoming_emails` row: record what the message
/// is (a person's mail, auto-submitted, a bounce, a complaint, a list
/// message) and mark it processed. Enqueued in the transaction that stores
/// the row, so no stored message is ever without one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessIncomingEmail {
    /// `incoming_emails.id`.
    pub incoming_email_id: uuid::Uuid,
    /// Messages stored in the same batch, followed up together with it (one
    /// transaction, set-based statements); empty for a single message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<uuid::Uuid>,
}

impl ProcessIncomingEmail {
    /// The most messages one job follows up.
    pub const MAX_BATCH: usize = 100;

    /// Jobs for `ids`, up to [`Self::MAX_BATCH`] messages each.
    pub fn batches(ids: &[uuid::Uuid]) -> Vec<Self> {
        ids.chunks(Self::MAX_BATCH)
            .filter_map(|chunk| {
                let (first, rest) = chunk.split_first()?;
                Some(Self {
                    incoming_email_id: *first,
                    also: rest.to_vec(),
                })
            })
            .collect()
    }

    /// Every message of the job.
    pub fn ids(&self) -> Vec<uuid::Uuid> {
        std::iter::once(self.incoming_email_id)
            .chain(self.also.iter().copied())
            .collect()
    }
}

impl JobKind for ProcessIncomingEmail {
    const KIND: &'static str = "process_incoming_email";
    // A queue of its own: a burst of incoming mail (an import, a backlog)
    // never holds up the mail the application sends.
    const QUEUE: &'static str = "incoming";
    const MAX_ATTEMPTS: i32 = 5;
}

/// What kind of mail a message is: picks the SMTP configuration and what
/// the suppression list and a crash between 250 and commit mean for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailKind {
    /// A mail a person asked for (confirmation, password reset): skipped
    /// only for suppressions of scope `all`; sent again after a crash
    /// between the server's 250 and the commit (a second one beats none).
    #[default]
    Transactional,
    /// A notification to the organisation's own people.
    Admin,
    /// An automatic answer to incoming mail.
    AutoReply,
    /// Bulk mail: skipped for any suppression; never resent by itself.
    Newsletter,
}

impl MailKind {
    /// The value in `verzonden_emails.mail_kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Admin => "admin",
            Self::AutoReply => "auto_reply",
            Self::Newsletter => "newsletter",
        }
    }

    /// Bulk kinds honour `bulk` suppressions and are never resent blindly.
    pub const fn is_bulk(self) -> bool {
        matches!(self, Self::Newsletter)
    }

    /// Kinds sent at most once: a crash between the server's 250 and the
    /// commit leaves them `unknown`, never resent by themselves; they also
    /// honour `bulk` suppressions. Bulk mail, and automatic answers (RFC
    /// 3834: a second answer is worse than none).
    pub const fn is_at_most_once(self) -> bool {
        matches!(self, Self::Newsletter | Self::AutoReply)
    }
}

/// Send one mail: a template with variables, or a ready subject and body.
/// The web application asks for one with the SQL function
/// `dkl_send_email(template, to, vars, dedup_key)`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendEmail {
    /// Recipient address.
    pub to: String,
    /// `email_templates.name` to render; or give `subject` and `html`.
    #[serde(default)]
    pub template: Option<String>,
    /// The template's variables.
    #[serde(default)]
    pub variables: serde_json::Map<String, serde_json::Value>,
    /// A ready subject (without `template`).
    #[serde(default)]
    pub subject: Option<String>,
    /// A ready HTML body (without `template`).
    #[serde(default)]
    pub html: Option<String>,
    /// A ready text body; derived from the HTML when absent.
    #[serde(default)]
    pub text: Option<String>,
    /// Reply-To address.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// What kind of mail this is.
    #[serde(default)]
    pub kind: MailKind,
    /// One message per key, ever (`verzonden_emails.dedup_key`).
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// Extra headers from an allow-list (In-Reply-To, References,
    /// Auto-Submitted, List-Unsubscribe, List-Unsubscribe-Post, List-Id).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

impl JobKind for SendEmail {
    const KIND: &'static str = "send_email";
    const QUEUE: &'static str = "mail";
    const MAX_ATTEMPTS: i32 = 8;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
}
