//! MIME: what a received message is, from its raw bytes. No I/O here: IMAP,
//! `dklctl mail import` and reprocessing all feed bytes to [`parse`].
//!
//! # Quick start
//!
//! ```
//! let raw = b"From: Anna <anna@example.org>\r\nSubject: =?utf-8?q?Hall=C3=B3?=\r\n\r\nHoi!\r\n";
//! let mail = dkl_worker::mime::parse(raw);
//! assert_eq!(mail.sender_email, "anna@example.org");
//! assert_eq!(mail.subject.as_deref(), Some("Halló"));
//! assert!(mail.quarantine.is_none());
//! ```
//!
//! Every text is UTF-8 without NUL bytes (PostgreSQL `TEXT` holds none);
//! the HTML body is sanitised for display, and the original stays in the
//! raw message, which is stored as it came.

pub mod classify;

use chrono::{DateTime, TimeZone, Utc};
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use sha2::Digest;

/// One received message, ready to store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedEmail {
    /// Message-ID without the angle brackets.
    pub message_id: Option<String>,
    /// In-Reply-To (the first id).
    pub in_reply_to: Option<String>,
    /// References, oldest first.
    pub references: Vec<String>,
    /// The From address (lowercase domain), `""` when there is none.
    pub sender_email: String,
    /// The From display name.
    pub sender_name: Option<String>,
    /// To addresses.
    pub to: Vec<String>,
    /// Cc addresses.
    pub cc: Vec<String>,
    /// Reply-To (the first address).
    pub reply_to: Option<String>,
    /// Return-Path (the envelope sender); `Some("")` for a null sender `<>`.
    pub return_path: Option<String>,
    /// The subject, decoded.
    pub subject: Option<String>,
    /// The Date header.
    pub sent_at: Option<DateTime<Utc>>,
    /// The text body; derived from the HTML when there is no text part.
    pub text_body: Option<String>,
    /// The HTML body, sanitised for display.
    pub html_body: Option<String>,
    /// The header block as received, decoded leniently.
    pub headers: String,
    /// Attachments and inline parts, in message order.
    pub attachments: Vec<Attachment>,
    /// Why this message is stored quarantined; `None` for a normal one.
    pub quarantine: Option<String>,
}

/// One attachment or inline part.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    /// Its file name, decoded (RFC 2231 / RFC 2047).
    pub file_name: Option<String>,
    /// `type/subtype`, lowercase.
    pub content_type: String,
    /// Content-ID without angle brackets (inline images refer to it as `cid:`).
    pub content_id: Option<String>,
    /// Shown in the body (Content-Disposition inline, or an image the HTML refers to).
    pub inline: bool,
    /// The decoded content.
    pub content: Vec<u8>,
}

/// SHA-256 of the raw message: the same message is stored once per account.
pub fn content_hash(raw: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(raw).to_vec()
}

/// Parses a whole message. Never fails: what cannot be read is reported in
/// [`ParsedEmail::quarantine`], with as much as could be read filled in.
pub fn parse(raw: &[u8]) -> ParsedEmail {
    // A parser bug on one message must not stop its mailbox: it is kept,
    // quarantined, and the others go on.
    std::panic::catch_unwind(|| parse_unguarded(raw)).unwrap_or_else(|_| ParsedEmail {
        headers: text(&String::from_utf8_lossy(header_block(raw))),
        quarantine: Some(
            "the MIME parser failed on this message (a parser bug); stored as it came".into(),
        ),
        ..ParsedEmail::default()
    })
}

fn parse_unguarded(raw: &[u8]) -> ParsedEmail {
    let headers = text(&String::from_utf8_lossy(header_block(raw)));
    let Some(message) = MessageParser::default().parse(raw) else {
        return ParsedEmail {
            headers,
            quarantine: Some(
                "not a mail message: no header could be read (an empty file, or not RFC 5322)"
                    .into(),
            ),
            ..ParsedEmail::default()
        };
    };
    if message.root_part().headers.is_empty() {
        return ParsedEmail {
            headers,
            quarantine: Some(
                "not a mail message: it does not start with header fields (Name: value); stored as it came"
                    .into(),
            ),
            ..ParsedEmail::default()
        };
    }
    let mut mail = from_headers(&message, headers);
    mail.text_body = message.body_text(0).map(|t| text(&t));
    mail.html_body = html_part(&message).map(|h| sanitise_html(&h));
    mail.attachments = attachments(&message);
    mail
}

/// Reads only the header of a message that is too large to store whole;
/// it is stored quarantined with `reason`.
pub fn parse_header_only(header: &[u8], reason: String) -> ParsedEmail {
    let headers = text(&String::from_utf8_lossy(header_block(header)));
    let mut mail = match MessageParser::default().parse_headers(header) {
        Some(message) => from_headers(&message, headers),
        None => ParsedEmail {
            headers,
            ..ParsedEmail::default()
        },
    };
    mail.quarantine = Some(reason);
    mail
}

fn from_headers(message: &Message<'_>, headers: String) -> ParsedEmail {
    let (from_email, sender_name) = message
        .from()
        .and_then(|a| a.first())
        .map(|a| {
            (
                a.address().map(normalise_address).unwrap_or_default(),
                a.name().map(text).filter(|n| !n.is_empty()),
            )
        })
        .unwrap_or_default();
    let return_path = return_path(message);
    // Without a From address (bounces may say `From: MAILER-DAEMON <>`),
    // the Sender, then the envelope sender; else empty, never a guess.
    let sender_email = Some(from_email)
        .filter(|a| !a.is_empty())
        .or_else(|| {
            message
                .sender()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(normalise_address)
        })
        .or_else(|| return_path.clone())
        .unwrap_or_default();
    ParsedEmail {
        message_id: message
            .message_id()
            .map(|id| short_id(&text(id)))
            .filter(|m| !m.is_empty()),
        in_reply_to: first_id(message.in_reply_to()).map(|id| short_id(&id)),
        references: ids(message.references()),
        sender_email,
        sender_name,
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        reply_to: addresses(message.reply_to()).into_iter().next(),
        return_path,
        subject: message.subject().map(text),
        sent_at: message
            .date()
            .filter(|d| d.is_valid())
            .and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single()),
        headers,
        ..ParsedEmail::default()
    }
}

/// The bytes up to the blank line that ends the header.
fn header_block(raw: &[u8]) -> &[u8] {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => &raw[..a.min(b)],
        (Some(a), None) | (None, Some(a)) => &raw[..a],
        (None, None) => raw,
    }
}

/// Text PostgreSQL can store: NUL bytes become U+FFFD.
pub fn text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

/// An id cut to 998 bytes (the longest header line RFC 5322 allows), so
/// that an absurd one still fits the index it is looked up by.
fn short_id(id: &str) -> String {
    let mut cut = id.len().min(998);
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    id[..cut].to_string()
}

fn normalise_address(address: &str) -> String {
    let address = text(address.trim());
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_lowercase()),
        None => address,
    }
}

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|a| a.address())
                .map(normalise_address)
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![text(id)],
        HeaderValue::TextList(ids) => ids.iter().map(|id| text(id)).collect(),
        _ => Vec::new(),
    }
}

fn first_id(value: &HeaderValue<'_>) -> Option<String> {
    ids(value).into_iter().next()
}

/// Return-Path as the envelope sender: `Some("")` for the null sender `<>`
/// (bounces and auto-replies use it), `None` when the header is absent.
fn return_path(message: &Message<'_>) -> Option<String> {
    let raw = message.header_raw("Return-Path")?;
    let inner = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    Some(normalise_address(inner))
}

/// The first real text/html body part (not one mail-parser made from text).
fn html_part<'a>(message: &'a Message<'a>) -> Option<std::borrow::Cow<'a, str>> {
    message
        .html_body
        .iter()
        .find_map(|id| match &message.parts.get(*id as usize)?.body {
            PartType::Html(html) => Some(std::borrow::Cow::Borrowed(html.as_ref())),
            _ => None,
        })
}

/// HTML that is safe to show: no scripts, styles, event handlers or forms;
/// links open without a referrer; `cid:` images keep pointing at their
/// attachment.
pub fn sanitise_html(html: &str) -> String {
    let mut schemes = ammonia::Builder::default().clone_url_schemes();
    schemes.insert("cid");
    text(
        &ammonia::Builder::default()
            .url_schemes(schemes)
            .clean(html)
            .to_string(),
    )
}

fn attachments(message: &Message<'_>) -> Vec<Attachment> {
    let cids_in_html: Vec<String> = html_part(message)
        .map(|h| {
            h.match_indices("cid:")
                .map(|(i, _)| {
                    h[i + 4..]
                        .chars()
                        .take_while(|c| !matches!(c, '"' | '\'' | ' ' | '>' | ')'))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    message
        .attachments()
        .map(|part| {
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .map(|t| text(&t))
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            let content_id = part
                .content_id()
                .map(|id| text(id.trim().trim_start_matches('<').trim_end_matches('>')))
                .filter(|id| !id.is_empty());
            let disposition_inline = part
                .content_disposition()
                .is_some_and(|cd| cd.ctype().eq_ignore_ascii_case("inline"));
            let referenced = content_id
                .as_ref()
                .is_some_and(|id| cids_in_html.iter().any(|c| c == id));
            let content = match &part.body {
                PartType::Message(inner) => inner.raw_message().to_vec(),
                _ => part.contents().to_vec(),
            };
            Attachment {
                file_name: part.attachment_name().map(text),
                content_type,
                content_id,
                inline: disposition_inline || referenced,
                content,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_and_bad_utf8_in_headers_are_stored_as_text() {
        let raw = b"From: Anna \xff <anna@Example.ORG>\r\nSubject: a\x00b\r\nMessage-ID: <x@y>\r\n\r\nbody\x00\r\n";
        let mail = parse(raw);
        assert_eq!(mail.sender_email, "anna@example.org");
        assert!(!mail.subject.unwrap().contains('\0'));
        assert!(!mail.headers.contains('\0'));
        assert!(!mail.text_body.unwrap().contains('\0'));
        assert!(mail.quarantine.is_none());
    }

    #[test]
    fn without_from_the_sender_comes_from_sender_or_return_path() {
        let mail = parse(b"Subject: hallo\r\nReturn-Path: <bounce@x.nl>\r\n\r\nbody\r\n");
        assert_eq!(mail.sender_email, "bounce@x.nl");
        assert!(mail.quarantine.is_none());
        let mail = parse(b"Subject: hallo\r\n\r\nbody\r\n");
        assert_eq!(mail.sender_email, "");
        assert_eq!(mail.subject.as_deref(), Some("hallo"));
    }

    #[test]
    fn what_is_not_mail_is_quarantined_with_the_reason() {
        assert!(parse(b"").quarantine.unwrap().contains("no header"));
        let garbage = parse(b"\x00\x01\x02\xff\xfe binary, not a message\n\n\x00");
        assert!(garbage.quarantine.unwrap().contains("not a mail message"));
    }

    #[test]
    fn null_return_path_is_an_empty_sender() {
        let mail = parse(b"Return-Path: <>\r\nFrom: MAILER-DAEMON@x.org\r\n\r\nx\r\n");
        assert_eq!(mail.return_path.as_deref(), Some(""));
    }

    #[test]
    fn html_is_sanitised_and_text_derived() {
        let raw = b"From: a@b.nl\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p onclick=\"x()\">Hoi <script>alert(1)</script><img src=\"cid:logo@x\"></p>\r\n";
        let mail = parse(raw);
        let html = mail.html_body.unwrap();
        assert!(
            !html.contains("script") && !html.contains("onclick"),
            "{html}"
        );
        assert!(html.contains("cid:logo@x"), "{html}");
        assert!(mail.text_body.unwrap().contains("Hoi"));
    }
}
