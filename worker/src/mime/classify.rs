//! What a received message is: a person's mail, or one a machine sent
//! (an auto-reply, a bounce, a complaint report, a mailing list's mail).
//! Auto-responses answer people only (RFC 3834); bounces and complaints
//! feed the suppression list.

use mail_parser::{Message, MessageParser, MimeHeaders};

/// `incoming_emails.classification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// Written by a person: auto-responses may answer it.
    Person,
    /// Sent by a program (RFC 3834 `Auto-Submitted`, out-of-office, read
    /// receipts): never answered.
    AutoSubmitted,
    /// A delivery status notification (a bounce, RFC 3464).
    DeliveryStatus,
    /// A feedback (complaint) report (RFC 5965 ARF).
    FeedbackReport,
    /// Mail from a mailing list or bulk sender.
    MailingList,
}

impl Classification {
    /// Every class.
    pub const ALL: [Self; 5] = [
        Self::Person,
        Self::AutoSubmitted,
        Self::DeliveryStatus,
        Self::FeedbackReport,
        Self::MailingList,
    ];

    /// The value in the table.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::AutoSubmitted => "auto_submitted",
            Self::DeliveryStatus => "delivery_status",
            Self::FeedbackReport => "feedback_report",
            Self::MailingList => "mailing_list",
        }
    }
}

impl std::str::FromStr for Classification {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown classification `{s}`"))
    }
}

dkl_shared::decode_from_text!(Classification);

/// What a message is, and the header that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The class.
    pub class: Classification,
    /// Why, naming the header or part that decided it.
    pub reason: String,
}

/// Classifies a raw message.
pub fn classify(raw: &[u8]) -> Verdict {
    match MessageParser::default().parse(raw) {
        Some(message) => classify_message(&message),
        None => Verdict {
            class: Classification::Person,
            reason: "no header could be read; treated as a person's mail".into(),
        },
    }
}

/// The first copy of header `name` that `matches`, unfolded (every copy is
/// looked at: a sender's own can sit below the server's).
fn header_where(
    message: &Message<'_>,
    name: &str,
    matches: impl Fn(&str) -> bool,
) -> Option<String> {
    crate::autoreply::header_values(message, name)
        .into_iter()
        .find(|v| matches(v))
}

fn header(message: &Message<'_>, name: &str) -> Option<String> {
    header_where(message, name, |_| true)
}

fn verdict(class: Classification, reason: impl Into<String>) -> Verdict {
    Verdict {
        class,
        reason: reason.into(),
    }
}

fn report_type_from_parts(message: &Message<'_>) -> String {
    let kinds = [
        ("delivery-status", "delivery-status"),
        ("global-delivery-status", "delivery-status"),
        ("feedback-report", "feedback-report"),
        ("disposition-notification", "disposition-notification"),
    ];
    message
        .parts
        .iter()
        .find_map(|part| {
            kinds
                .iter()
                .find(|(subtype, _)| part.is_content_type("message", subtype))
                .map(|(_, report)| report.to_string())
        })
        .unwrap_or_default()
}

/// Classifies a parsed message (reports first: a bounce is also auto-submitted).
pub fn classify_message(message: &Message<'_>) -> Verdict {
    let root = message.root_part();
    if root.is_content_type("multipart", "report") {
        let report_type = root
            .content_type()
            .and_then(|ct| ct.attribute("report-type"))
            .unwrap_or("")
            .to_ascii_lowercase();
        // Some servers leave out report-type: the report's own part says it.
        let report_type = if report_type.is_empty() {
            report_type_from_parts(message)
        } else {
            report_type
        };
        return match report_type.as_str() {
            "delivery-status" => verdict(
                Classification::DeliveryStatus,
                "multipart/report; report-type=delivery-status (RFC 3464)",
            ),
            "feedback-report" => verdict(
                Classification::FeedbackReport,
                "multipart/report; report-type=feedback-report (RFC 5965)",
            ),
            other => verdict(
                Classification::AutoSubmitted,
                format!("multipart/report; report-type={other} (e.g. a read receipt)"),
            ),
        };
    }
    if let Some(value) = header_where(
        message,
        "Auto-Submitted",
        crate::autoreply::is_auto_submitted,
    ) {
        return verdict(
            Classification::AutoSubmitted,
            format!("Auto-Submitted: {value}"),
        );
    }
    for name in ["X-Autoreply", "X-Autorespond"] {
        if let Some(value) = header(message, name) {
            return verdict(Classification::AutoSubmitted, format!("{name}: {value}"));
        }
    }
    // Outlook marks its own automatic mail with All/AutoReply/OOF; DR, RN
    // and NRN only decline receipts (people's mail carries them too).
    if let Some(value) = header_where(
        message,
        "X-Auto-Response-Suppress",
        crate::autoreply::suppresses_answers,
    ) {
        return verdict(
            Classification::AutoSubmitted,
            format!("X-Auto-Response-Suppress: {value}"),
        );
    }
    let sender = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_ascii_lowercase();
    let local = sender.split('@').next().unwrap_or("");
    if matches!(local, "mailer-daemon" | "postmaster") {
        let subject = message.subject().unwrap_or("").to_ascii_lowercase();
        let bounce_words = [
            "undeliver",
            "delivery status",
            "delivery failure",
            "failure notice",
            "returned mail",
            "could not be delivered",
            "delivery has failed",
            "delivery notification",
            "non-delivery",
            "mail delivery failed",
            "returned to sender",
        ];
        if bounce_words.iter().any(|w| subject.contains(w)) {
            return verdict(
                Classification::DeliveryStatus,
                format!("a non-standard bounce from {sender} (no multipart/report)"),
            );
        }
        return verdict(Classification::AutoSubmitted, format!("sent by {sender}"));
    }
    for name in ["List-Id", "List-Unsubscribe", "List-Post"] {
        if let Some(value) = header(message, name) {
            return verdict(Classification::MailingList, format!("{name}: {value}"));
        }
    }
    if let Some(value) = header(message, "Precedence") {
        let lower = value.to_ascii_lowercase();
        if lower == "list" || lower == "bulk" {
            return verdict(Classification::MailingList, format!("Precedence: {value}"));
        }
        if lower == "junk" || lower == "auto_reply" {
            return verdict(
                Classification::AutoSubmitted,
                format!("Precedence: {value}"),
            );
        }
    }
    verdict(Classification::Person, "no sign of an automatic sender")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(raw: &str) -> Classification {
        classify(raw.as_bytes()).class
    }

    #[test]
    fn rfc_3834_headers() {
        assert_eq!(
            class("From: a@b.nl\r\nAuto-Submitted: auto-replied\r\n\r\nx"),
            Classification::AutoSubmitted
        );
        assert_eq!(
            class("From: a@b.nl\r\nAuto-Submitted: no\r\n\r\nx"),
            Classification::Person
        );
        assert_eq!(
            class("From: a@b.nl\r\nList-Id: <dkl.lists.example>\r\n\r\nx"),
            Classification::MailingList
        );
        assert_eq!(
            class("From: a@b.nl\r\nPrecedence: bulk\r\n\r\nx"),
            Classification::MailingList
        );
        assert_eq!(
            class("From: a@b.nl\r\nX-Auto-Response-Suppress: All\r\n\r\nx"),
            Classification::AutoSubmitted
        );
    }

    #[test]
    fn reports() {
        let dsn = "From: MAILER-DAEMON@x.nl\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b--\r\n";
        assert_eq!(class(dsn), Classification::DeliveryStatus);
        let arf = dsn.replace("delivery-status", "feedback-report");
        assert_eq!(class(&arf), Classification::FeedbackReport);
    }
}
