//! RFC 3464 delivery status notifications. mail-parser hands the
//! `message/delivery-status` part over as bytes: its blocks (separated by
//! blank lines) are header fields, the first about the message
//! (`Reporting-MTA`), each next one about one recipient.

use mail_parser::Message;

use super::{
    Action, BounceReport, BouncedRecipient, address_field, enhanced_status, fields, is_type,
    kind_of, part_text,
};

/// The most recipients read from one report.
const MAX_RECIPIENTS: usize = 1000;

/// The report, when the message has a delivery-status part.
pub fn read(message: &Message<'_>) -> Option<BounceReport> {
    let part = message.parts.iter().find(|p| {
        is_type(p, "message", "delivery-status") || is_type(p, "message", "global-delivery-status")
    })?;
    let text = part_text(part)?;
    Some(read_fields(&text))
}

/// Reads the fields of a delivery-status body.
pub fn read_fields(text: &str) -> BounceReport {
    let normalised = text.replace("\r\n", "\n");
    let mut report = BounceReport {
        format: "dsn".into(),
        ..BounceReport::default()
    };
    for block in normalised.split("\n\n").filter(|b| !b.trim().is_empty()) {
        if report.recipients.len() >= MAX_RECIPIENTS {
            break;
        }
        let fields = fields(block);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        if let Some(mta) = get("reporting-mta") {
            report.reporting_mta = Some(field_value(&mta));
        }
        // A gateway may name the final recipient in another address type
        // (x400): the original recipient is then the address we know.
        let original = get("original-recipient").as_deref().and_then(address_field);
        let Some(recipient) = get("final-recipient")
            .as_deref()
            .and_then(address_field)
            .or_else(|| original.clone())
        else {
            continue;
        };
        let action = match get("action").map(|a| a.to_ascii_lowercase()) {
            Some(a) if a.starts_with("failed") => Action::Failed,
            Some(a) if a.starts_with("delayed") => Action::Delayed,
            // delivered, relayed, expanded: nothing went wrong.
            Some(_) => continue,
            // No Action: the status decides.
            None => match get("status").as_deref().and_then(enhanced_status) {
                Some(s) if s.starts_with('2') => continue,
                _ => Action::Failed,
            },
        };
        let diagnostic = get("diagnostic-code").map(|d| field_value(&d));
        let status = get("status")
            .as_deref()
            .and_then(enhanced_status)
            .or_else(|| diagnostic.as_deref().and_then(enhanced_status));
        let original = original.filter(|o| *o != recipient);
        report.recipients.push(BouncedRecipient {
            kind: kind_of(action, status.as_deref(), diagnostic.as_deref()),
            recipient,
            original_recipient: original,
            action,
            status,
            diagnostic,
            remote_mta: get("remote-mta").map(|m| field_value(&m)),
        });
    }
    report
}

/// The value after a type prefix (`dns; mx.example` → `mx.example`,
/// `smtp; 550 …` → `550 …`).
fn field_value(value: &str) -> String {
    value
        .split_once(';')
        .map_or(value, |(_, v)| v)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_recipient_blocks() {
        let report = read_fields(
            "Reporting-MTA: dns; mx.example.nl\r\n\r\nFinal-Recipient: rfc822; A@Example.nl\r\nOriginal-Recipient: rfc822;a@example.nl\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.b\r\nDiagnostic-Code: smtp; 550 5.1.1 no\r\n  such user\r\n\r\nFinal-Recipient: rfc822; b@example.nl\r\nAction: delayed\r\nStatus: 4.4.7\r\n\r\nFinal-Recipient: rfc822; c@example.nl\r\nAction: delivered\r\nStatus: 2.0.0\r\n",
        );
        assert_eq!(report.reporting_mta.as_deref(), Some("mx.example.nl"));
        assert_eq!(report.recipients.len(), 2);
        let a = &report.recipients[0];
        assert_eq!(a.recipient, "a@example.nl");
        assert_eq!(a.original_recipient, None);
        assert_eq!(a.diagnostic.as_deref(), Some("550 5.1.1 no such user"));
        assert_eq!(a.remote_mta.as_deref(), Some("mx.b"));
        assert_eq!(report.recipients[1].action, Action::Delayed);
    }
}
