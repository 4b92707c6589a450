//! RFC 5965 feedback reports (ARF): a mailbox provider telling us that a
//! recipient marked our mail as spam. The `message/feedback-report` part's
//! fields are header fields, read like a DSN's.

use mail_parser::{Message, MessageParser};

use super::{address_field, fields, is_type, part_text};

/// What a complaint says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complaint {
    /// `Feedback-Type` (`abuse`, `fraud`, `virus`, `not-spam`, …), lower case.
    pub feedback_type: String,
    /// `User-Agent` of the reporting system.
    pub user_agent: Option<String>,
    /// The complaining recipient: `Original-Rcpt-To`, else the returned
    /// message's `To`.
    pub recipient: Option<String>,
    /// Message-IDs of the returned message.
    pub returned_message_ids: Vec<String>,
}

impl Complaint {
    /// The Feedback-Type as a metrics label: one of a fixed set (the
    /// sender chooses the field's text).
    pub fn label(&self) -> &'static str {
        match self.feedback_type.as_str() {
            "abuse" => "abuse",
            "fraud" => "fraud",
            "virus" => "virus",
            "not-spam" => "not-spam",
            _ => "other",
        }
    }

    /// Whether the recipient should get no more bulk mail: a spam
    /// complaint (`abuse`, and `fraud`/`virus` reports about our mail).
    /// `not-spam` and `other` are no complaint.
    pub fn is_complaint(&self) -> bool {
        matches!(self.feedback_type.as_str(), "abuse" | "fraud" | "virus")
    }
}

/// The complaint, when the message has a feedback-report part.
pub fn read(message: &Message<'_>) -> Option<Complaint> {
    let part = message
        .parts
        .iter()
        .find(|p| is_type(p, "message", "feedback-report"))?;
    let text = part_text(part)?;
    let fields = fields(&text.replace("\r\n", "\n"));
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let returned = returned_header(message);
    let recipient = get("original-rcpt-to")
        .as_deref()
        .and_then(address_field)
        .or_else(|| {
            let returned = returned.as_ref()?;
            let header = MessageParser::default().parse_headers(returned.as_bytes())?;
            header
                .to()
                .and_then(|to| to.first())
                .and_then(|a| a.address())
                .map(str::to_ascii_lowercase)
        });
    let returned_message_ids = returned
        .as_deref()
        .and_then(|h| MessageParser::default().parse_headers(h.as_bytes()))
        .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
        .into_iter()
        .collect();
    Some(Complaint {
        feedback_type: get("feedback-type")
            // RFC 5965 requires it; a report without one is no complaint.
            .unwrap_or_else(|| "missing".into())
            .to_ascii_lowercase(),
        user_agent: get("user-agent"),
        recipient,
        returned_message_ids,
    })
}

/// The returned message (or its header) as text.
fn returned_header(message: &Message<'_>) -> Option<String> {
    message.parts.iter().find_map(|p| {
        if let Some(inner) = p.message() {
            return Some(String::from_utf8_lossy(inner.raw_message()).into_owned());
        }
        is_type(p, "text", "rfc822-headers")
            .then(|| part_text(p))
            .flatten()
    })
}
