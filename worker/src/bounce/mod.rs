//! Reading bounces and complaints: which recipients failed, how, and which
//! of our messages the report is about. No I/O; [`crate::handlers::process_incoming_email`]
//! stores what these functions find.
//!
//! Quick start:
//!
//! ```
//! let raw = b"From: MAILER-DAEMON@mx.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; gone@example.nl\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n";
//! let message = mail_parser::MessageParser::default().parse(raw).unwrap();
//! let report = dkl_worker::bounce::read_bounce(&message);
//! assert_eq!(report.recipients[0].recipient, "gone@example.nl");
//! assert_eq!(report.recipients[0].kind, dkl_worker::bounce::Kind::Hard);
//! ```
//!
//! Three readers, tried in order:
//! - [`dsn`]: RFC 3464 delivery status notifications (a `message/delivery-status`
//!   part, RFC 6522 `multipart/report`), per recipient;
//! - [`plain`]: the plain-text bounces of MTAs that send no DSN (qmail,
//!   old Postfix and Exim, Exchange, Yahoo, and many more), by the
//!   wording of the notice;
//! - [`arf`]: RFC 5965 feedback (complaint) reports.

pub mod arf;
pub mod dsn;
pub mod plain;

use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

use crate::newsletter::token::TokenSigner;

/// Which of our sends a bounce is about, as its VERP return path
/// (`bounce+<tag>-<mac>@…`) says. The MAC (see
/// [`crate::newsletter::token::TokenSigner::sign_reference`]) keeps anyone
/// from naming a send in a bounce of their own making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendReference {
    /// A `verzonden_emails` row (`m` + its id in hex).
    Message(uuid::Uuid),
    /// A `newsletter_deliveries` row (`n` + its id).
    Delivery(i64),
}

impl SendReference {
    /// The tag without its MAC.
    pub fn tag(&self) -> String {
        match self {
            Self::Message(id) => format!("m{}", id.simple()),
            Self::Delivery(id) => format!("n{id}"),
        }
    }

    /// The `+tag` of the return path: the tag and its MAC.
    pub fn signed_tag(&self, signer: &TokenSigner) -> String {
        let tag = self.tag();
        format!("{tag}-{}", signer.sign_reference(&tag))
    }

    /// The reference in a signed `+tag`, if it is one of ours and genuine.
    pub fn verify(signed: &str, signer: &TokenSigner) -> Option<Self> {
        let (tag, mac) = signed.rsplit_once('-')?;
        let reference = Self::parse(tag)?;
        signer.verify_reference(tag, mac).then_some(reference)
    }

    fn parse(tag: &str) -> Option<Self> {
        let tag = tag.to_ascii_lowercase();
        if let Some(hex) = tag.strip_prefix('m')
            && hex.len() == 32
        {
            return uuid::Uuid::try_parse(hex).ok().map(Self::Message);
        }
        tag.strip_prefix('n')
            .filter(|d| !d.is_empty() && d.len() <= 18 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .map(Self::Delivery)
    }

    /// The genuine reference among the addresses a bounce was delivered to
    /// (To, Delivered-To, X-Original-To, Envelope-To), if any.
    pub fn in_headers(message: &Message<'_>, signer: &TokenSigner) -> Option<Self> {
        plus_tags(message)
            .iter()
            .find_map(|tag| Self::verify(tag, signer))
    }
}

/// The `+tags` of the addresses a message was delivered to.
pub fn plus_tags(message: &Message<'_>) -> Vec<String> {
    [
        "To",
        "Delivered-To",
        "X-Original-To",
        "Envelope-To",
        "X-Envelope-To",
        "Cc",
    ]
    .iter()
    .flat_map(|name| crate::autoreply::header_values(message, name))
    .flat_map(|value| {
        value
            .split([',', ' ', '<', '>', '\t', '"', ';'])
            .filter_map(|a| crate::address::plus_tag(a.trim()).map(str::to_string))
            .collect::<Vec<_>>()
    })
    .collect()
}

/// What a recipient's report says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delivery failed (given up).
    Failed,
    /// Delivery is delayed; the sender's server keeps trying.
    Delayed,
}

impl Action {
    /// The value in `email_bounces.action`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delayed => "delayed",
        }
    }
}

/// Whether the address is dead (hard) or the failure may pass (soft).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A permanent failure (5.x.x other than a full mailbox).
    Hard,
    /// A delay, a 4.x.x failure, or a full mailbox (5.2.2).
    Soft,
}

impl Kind {
    /// The value in `email_bounces.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
        }
    }
}

/// One failed or delayed recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncedRecipient {
    /// The address (lower case).
    pub recipient: String,
    /// `Original-Recipient`, when given and different.
    pub original_recipient: Option<String>,
    /// Failed or delayed.
    pub action: Action,
    /// The enhanced status code (RFC 3463), e.g. `5.1.1`.
    pub status: Option<String>,
    /// Hard or soft.
    pub kind: Kind,
    /// The remote server's words (`Diagnostic-Code`, or the notice's line).
    pub diagnostic: Option<String>,
    /// `Remote-MTA`.
    pub remote_mta: Option<String>,
}

/// What a bounce says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BounceReport {
    /// `dsn`, or the plain-text reader that understood it; empty when
    /// nothing was understood.
    pub format: String,
    /// `Reporting-MTA`.
    pub reporting_mta: Option<String>,
    /// The failed and delayed recipients (delivered and relayed ones left out).
    pub recipients: Vec<BouncedRecipient>,
    /// Message-IDs found in the returned message's header (ours, when it is
    /// a bounce of our mail).
    pub returned_message_ids: Vec<String>,
}

/// Reads a bounce: a DSN when it has one, else the plain-text notice.
pub fn read_bounce(message: &Message<'_>) -> BounceReport {
    let mut report = dsn::read(message).unwrap_or_default();
    if report.recipients.is_empty() {
        let plain = plain::read(message);
        if !plain.recipients.is_empty() {
            report.format = plain.format;
            report.recipients = plain.recipients;
        }
    }
    report.returned_message_ids = returned_message_ids(message);
    report
}

/// The enhanced status code in `text` (`5.1.1`, `4.2.2`), if any.
pub fn enhanced_status(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.');
        if starts_word && matches!(c, b'2' | b'4' | b'5') && bytes.get(i + 1) == Some(&b'.') {
            let rest = &text[i + 2..];
            let subject: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if (1..=3).contains(&subject.len()) && rest[subject.len()..].starts_with('.') {
                let detail: String = rest[subject.len() + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let end = i + 2 + subject.len() + 1 + detail.len();
                let ends_word = bytes.get(end).is_none_or(|b| {
                    !(b.is_ascii_alphanumeric()
                        || *b == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit))
                });
                if (1..=3).contains(&detail.len()) && ends_word {
                    return Some(format!("{}.{subject}.{detail}", c as char));
                }
            }
        }
        i += 1;
    }
    None
}

/// Words of a full mailbox: a soft failure even when reported as 5.x.x.
fn mentions_full_mailbox(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "mailbox full",
        "mailbox is full",
        "over quota",
        "overquota",
        "quota exceeded",
        "exceeded storage",
        "exceeds the storage",
        "quota violation",
        "mailbox size limit",
        "insufficient system storage",
        "user's mailbox is full",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// Words of a refusal about our mail or our server (a block list, spam,
/// policy), not about the address.
fn mentions_policy(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "blocked",
        "blacklist",
        "blocklist",
        "block list",
        "spam",
        "policy",
        "reputation",
        "rate limit",
        "too many",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// Hard or soft, from the action, the status code and the server's words.
///
/// Hard means the address is dead: a permanent failure about the mailbox
/// or its domain (5.1.x, 5.2.x, 5.5.x, 5.0.0). A permanent failure about our
/// message or our server (5.3.x system, 5.4.x network, 5.6.x content,
/// 5.7.x policy and block lists) says nothing about the address, and a full
/// mailbox (5.2.2) may empty: soft, like every 4.x.x and every delay. A
/// block of our server must not suppress every subscriber of a provider.
pub fn kind_of(action: Action, status: Option<&str>, diagnostic: Option<&str>) -> Kind {
    if action == Action::Delayed {
        return Kind::Soft;
    }
    if diagnostic.is_some_and(mentions_full_mailbox) {
        return Kind::Soft;
    }
    match status {
        Some("5.2.2") => Kind::Soft,
        Some(s) if s.starts_with('4') => Kind::Soft,
        Some(s)
            if ["5.3.", "5.4.", "5.6.", "5.7."]
                .iter()
                .any(|p| s.starts_with(p)) =>
        {
            Kind::Soft
        }
        Some(_) => Kind::Hard,
        None if diagnostic.is_some_and(mentions_policy) => Kind::Soft,
        None => match diagnostic.and_then(smtp_reply_class) {
            Some('4') => Kind::Soft,
            _ => Kind::Hard,
        },
    }
}

/// The class (`4` or `5`) of the first SMTP reply code in `text`.
fn smtp_reply_class(text: &str) -> Option<char> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find_map(|i| {
        let code = &bytes[i..i + 3];
        let alone = (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes
                .get(i + 3)
                .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'.');
        (alone
            && matches!(code[0], b'4' | b'5')
            && code[1].is_ascii_digit()
            && code[2].is_ascii_digit())
        .then_some(code[0] as char)
    })
}

/// Every Message-ID in the returned message: the `message/rfc822` or
/// `text/rfc822-headers` part, or the notice's copy of the original's header.
fn returned_message_ids(message: &Message<'_>) -> Vec<String> {
    let own = message.message_id().map(str::to_string);
    let mut ids = Vec::new();
    for part in &message.parts {
        if let Some(inner) = part.message() {
            ids.extend(inner.message_id().map(|id| format!("<{id}>")));
        } else if let Some(text) = part_text(part) {
            ids.extend(message_ids_in_text(&text));
        }
    }
    ids.retain(|id| {
        own.as_deref()
            .is_none_or(|own| id.trim_matches(['<', '>']) != own)
    });
    ids.sort();
    ids.dedup();
    ids
}

/// `Message-ID: <…>` lines of a header copied into a text.
fn message_ids_in_text(text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start_matches(['>', ' ', '\t']);
        let Some((name, value)) = trimmed.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("message-id") {
            continue;
        }
        // The id may be folded onto the next line.
        let value = if value.trim().is_empty() {
            lines.get(i + 1).copied().unwrap_or("")
        } else {
            value
        };
        if let (Some(start), Some(end)) = (value.find('<'), value.find('>'))
            && start < end
        {
            ids.push(value[start..=end].to_string());
        }
    }
    ids
}

/// A part's text (text parts, and binary parts that are text).
pub(crate) fn part_text(part: &MessagePart<'_>) -> Option<String> {
    match &part.body {
        PartType::Text(t) => Some(t.to_string()),
        PartType::Html(h) => Some(crate::templates::html_to_text(h)),
        PartType::Binary(b) | PartType::InlineBinary(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

/// Whether `part` is `type/subtype` (case-insensitive).
pub(crate) fn is_type(part: &MessagePart<'_>, ty: &str, subtype: &str) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case(ty)
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

/// Header fields of a DSN or ARF block: `Name: value`, continuation lines
/// unfolded, names lower-cased.
pub(crate) fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':')
            && !name.is_empty()
            && !name.contains(' ')
        {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

/// The address of an RFC 3464 address field (`rfc822; <a@b>`), lower case.
pub(crate) fn address_field(value: &str) -> Option<String> {
    let address = value.split_once(';').map_or(value, |(_, a)| a).trim();
    let address = address
        .trim_matches(['<', '>', '"', ' '])
        .to_ascii_lowercase();
    address.contains('@').then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_codes_are_found_alone() {
        assert_eq!(
            enhanced_status("550 5.1.1 <a@b>: user unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(enhanced_status("(#4.4.1)").as_deref(), Some("4.4.1"));
        assert_eq!(enhanced_status("host 10.5.2.1 said"), None);
        assert_eq!(enhanced_status("version 5.2.22.1"), None);
    }

    #[test]
    fn send_references_round_trip_and_cannot_be_made_up() {
        let signer = TokenSigner::new("a secret of some length, 32 chars+");
        let id = uuid::Uuid::new_v4();
        for r in [SendReference::Message(id), SendReference::Delivery(42)] {
            let signed = r.signed_tag(&signer);
            assert!(signed.len() <= 42, "{signed}");
            assert_eq!(SendReference::verify(&signed, &signer), Some(r));
            assert_eq!(SendReference::verify(&r.tag(), &signer), None, "unsigned");
        }
        let forged = format!("n43-{}", signer.sign_reference("n42"));
        assert_eq!(SendReference::verify(&forged, &signer), None);
        let other = TokenSigner::new("another secret of some length, 32+");
        let signed = SendReference::Delivery(7).signed_tag(&other);
        assert_eq!(SendReference::verify(&signed, &signer), None);
        let raw = format!(
            "To: bounce+{}@dkl.test\r\n\r\nx",
            SendReference::Delivery(7).signed_tag(&signer)
        );
        let message = mail_parser::MessageParser::default()
            .parse(raw.as_bytes())
            .unwrap();
        assert_eq!(
            SendReference::in_headers(&message, &signer),
            Some(SendReference::Delivery(7))
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_of(Action::Failed, Some("5.1.1"), None), Kind::Hard);
        assert_eq!(kind_of(Action::Failed, Some("5.2.2"), None), Kind::Soft);
        assert_eq!(kind_of(Action::Failed, Some("4.4.7"), None), Kind::Soft);
        assert_eq!(kind_of(Action::Delayed, Some("5.1.1"), None), Kind::Soft);
        assert_eq!(
            kind_of(Action::Failed, None, Some("452 mailbox full")),
            Kind::Soft
        );
        assert_eq!(
            kind_of(Action::Failed, None, Some("550 no such user")),
            Kind::Hard
        );
        assert_eq!(
            kind_of(Action::Failed, None, Some("421 try later")),
            Kind::Soft
        );
    }
}
