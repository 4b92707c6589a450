//! When an incoming message may get an automatic answer (RFC 3834), and
//! what the answer looks like. No I/O: the `process_incoming_email`
//! handler reads the rules and the reply ledger and enqueues the reply.
//!
//! Quick start:
//!
//! ```
//! use dkl_worker::autoreply::{Us, reply_blocker};
//! let raw = b"Return-Path: <anna@example.nl>\r\nFrom: anna@example.nl\r\nTo: info@dkl.test\r\nMessage-ID: <1@example.nl>\r\nSubject: Route\r\n\r\nHoi";
//! let message = mail_parser::MessageParser::default().parse(raw).unwrap();
//! let us = Us { addresses: vec!["info@dkl.test".into()], domains: vec!["dkl.test".into()] };
//! assert_eq!(reply_blocker(&message, &us, Some("info@dkl.test")), None);
//! ```
//!
//! Every rule is one check in [`reply_blocker`], in the order RFC 3834
//! section 2 gives them; the first that applies is the reason recorded on
//! the message (`incoming_emails.auto_reply_reason`).

use mail_parser::{Message, MimeHeaders};

/// Who "we" are: addresses we send from or receive at, and the domains
/// of our Message-IDs.
#[derive(Debug, Clone, Default)]
pub struct Us {
    /// Our addresses, lower case.
    pub addresses: Vec<String>,
    /// Domains our Message-IDs end in, lower case.
    pub domains: Vec<String>,
}

/// Why a message gets no automatic answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReply {
    /// `Auto-Submitted` other than `no`.
    AutoSubmitted(String),
    /// A `List-*` header: mailing-list mail.
    ListHeader(String),
    /// `Precedence: bulk | list | junk`.
    Precedence(String),
    /// `X-Auto-Response-Suppress`, `X-Autoreply`, `X-Autorespond`.
    SuppressHeader(String),
    /// No standard header, but a vendor's mark of an automatic reply
    /// (iCloud's `X-Apple-Action: VACATION`, …) or a subject that says so.
    LooksAutomatic(String),
    /// No Return-Path: nowhere to answer safely.
    NoReturnPath,
    /// `Return-Path: <>`: a bounce or another automatic message.
    NullReturnPath,
    /// Sent by a role or program address (MAILER-DAEMON, postmaster,
    /// owner-*, *-request, noreply).
    RoleSender(String),
    /// Sent from one of our own addresses.
    OwnAddress(String),
    /// Carries one of our own Message-IDs (our mail came back).
    OwnMessageId(String),
    /// A `multipart/report` (DSN, read receipt, feedback report).
    Report(String),
    /// Our address is not in To, Cc or Resent-To/Cc (a Bcc, a list copy).
    NotAddressedToUs(String),
}

impl NoReply {
    /// A short label for metrics.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::AutoSubmitted(_) => "auto_submitted",
            Self::ListHeader(_) => "list_header",
            Self::Precedence(_) => "precedence",
            Self::SuppressHeader(_) => "suppress_header",
            Self::LooksAutomatic(_) => "looks_automatic",
            Self::NoReturnPath => "no_return_path",
            Self::NullReturnPath => "null_return_path",
            Self::RoleSender(_) => "role_sender",
            Self::OwnAddress(_) => "own_address",
            Self::OwnMessageId(_) => "own_message_id",
            Self::Report(_) => "report",
            Self::NotAddressedToUs(_) => "not_addressed_to_us",
        }
    }
}

impl std::fmt::Display for NoReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AutoSubmitted(v) => write!(
                f,
                "Auto-Submitted: {v} (RFC 3834: never answer automatic mail)"
            ),
            Self::ListHeader(h) => write!(f, "mailing-list mail ({h} header)"),
            Self::Precedence(v) => write!(f, "Precedence: {v}"),
            Self::SuppressHeader(h) => write!(f, "the sender asked for no automatic answers ({h})"),
            Self::LooksAutomatic(why) => write!(f, "an automatic reply by its look ({why})"),
            Self::NoReturnPath => f.write_str("no Return-Path: nowhere to answer safely"),
            Self::NullReturnPath => {
                f.write_str("null Return-Path <> (a bounce or automatic message)")
            }
            Self::RoleSender(a) => write!(f, "sent by a role or program address ({a})"),
            Self::OwnAddress(a) => write!(f, "sent from our own address ({a})"),
            Self::OwnMessageId(id) => write!(f, "our own Message-ID ({id}): our mail came back"),
            Self::Report(t) => write!(f, "a report ({t}), not a person's mail"),
            Self::NotAddressedToUs(a) => write!(
                f,
                "{a} is not in To, Cc or Resent-To/Cc (a Bcc or a list copy)"
            ),
        }
    }
}

/// Every copy of header `name`, in order, unfolded. A header a sender wrote
/// can sit below the copy a server added on delivery (and mail-parser's
/// `header_raw` gives the last one), so rules look at every copy.
pub fn header_values(message: &Message<'_>, name: &str) -> Vec<String> {
    let raw = message.raw_message();
    message
        .headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|h| raw.get(h.offset_start as usize..h.offset_end as usize))
        .map(|v| {
            String::from_utf8_lossy(v)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Whether an `Auto-Submitted` value marks automatic mail (anything but `no`,
/// RFC 3834 section 5).
pub fn is_auto_submitted(value: &str) -> bool {
    let keyword = value.split(['(', ';']).next().unwrap_or("").trim();
    !keyword.eq_ignore_ascii_case("no")
}

/// The address in the Return-Path the delivering server added (the first
/// one): `None` when absent, `Some("")` when null.
pub fn return_path(message: &Message<'_>) -> Option<String> {
    let raw = header_values(message, "Return-Path").into_iter().next()?;
    let inner = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    Some(inner.to_ascii_lowercase())
}

/// Vendor headers of automatic replies that carry no `Auto-Submitted`.
const VENDOR_MARKS: &[&str] = &[
    "X-Apple-Action",
    "X-Autoresponse",
    "X-Autogenerated",
    "X-AutoReply-From",
    "X-Mail-Autoreply",
    "X-FC-MachineGenerated",
    "X-Vacation",
];

/// Subjects of automatic replies, lower case (Outlook, Apple, Gmail,
/// Dutch, German, French).
const AUTOMATIC_SUBJECTS: &[&str] = &[
    "auto:",
    "auto reply:",
    "autoreply:",
    "auto-reply:",
    "automatic reply:",
    "automatisch antwoord",
    "afwezigheidsbericht",
    "abwesenheitsnotiz",
    "automatische antwort",
    "réponse automatique",
    "out of office",
    "out of the office",
];

/// A vendor's mark or a subject that says the message is an automatic reply.
fn looks_automatic(message: &Message<'_>) -> Option<String> {
    for name in VENDOR_MARKS {
        if let Some(value) = header_values(message, name).into_iter().next() {
            return Some(format!("{name}: {value}"));
        }
    }
    let subject = message.subject().unwrap_or("").trim().to_lowercase();
    AUTOMATIC_SUBJECTS
        .iter()
        .find(|s| subject.starts_with(*s))
        .map(|_| format!("Subject: {}", message.subject().unwrap_or("").trim()))
}

/// Whether an `X-Auto-Response-Suppress` value asks for no automatic
/// answers (All, AutoReply, OOF; DR, RN, NRN only decline receipts).
pub fn suppresses_answers(value: &str) -> bool {
    value
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .any(|v| matches!(v.as_str(), "all" | "autoreply" | "oof"))
}

/// Whether a local part is a role or program address.
pub fn is_role_local_part(local: &str) -> bool {
    let local = local.to_ascii_lowercase();
    matches!(
        local.as_str(),
        "mailer-daemon"
            | "postmaster"
            | "noreply"
            | "no-reply"
            | "no_reply"
            | "donotreply"
            | "do-not-reply"
            | "do_not_reply"
    ) || local.starts_with("owner-")
        || local.ends_with("-request")
        || local.starts_with("noreply")
        || local.starts_with("no-reply")
}

fn local_part(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(l, _)| l)
}

/// The first reason `message` must not be answered, or `None` when it may.
/// `account_address` is the address the message was received at.
pub fn reply_blocker(
    message: &Message<'_>,
    us: &Us,
    account_address: Option<&str>,
) -> Option<NoReply> {
    if let Some(value) = header_values(message, "Auto-Submitted")
        .into_iter()
        .find(|v| is_auto_submitted(v))
    {
        return Some(NoReply::AutoSubmitted(value));
    }
    if let Some(h) = message.headers().iter().find(|h| {
        h.name
            .as_str()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("list-"))
    }) {
        return Some(NoReply::ListHeader(h.name.as_str().to_string()));
    }
    if let Some(value) = header_values(message, "Precedence").into_iter().find(|v| {
        ["bulk", "list", "junk", "auto_reply"].contains(&v.trim().to_ascii_lowercase().as_str())
    }) {
        return Some(NoReply::Precedence(value));
    }
    if let Some(value) = header_values(message, "X-Auto-Response-Suppress")
        .into_iter()
        .find(|v| suppresses_answers(v))
    {
        return Some(NoReply::SuppressHeader(format!(
            "X-Auto-Response-Suppress: {value}"
        )));
    }
    for name in ["X-Autoreply", "X-Autorespond"] {
        if let Some(value) = header_values(message, name).into_iter().next() {
            return Some(NoReply::SuppressHeader(format!("{name}: {value}")));
        }
    }
    if let Some(why) = looks_automatic(message) {
        return Some(NoReply::LooksAutomatic(why));
    }
    let return_path = match return_path(message) {
        None => return Some(NoReply::NoReturnPath),
        Some(rp) if rp.is_empty() || !rp.contains('@') => return Some(NoReply::NullReturnPath),
        Some(rp) => rp,
    };
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_ascii_lowercase);
    for address in std::iter::once(&return_path).chain(from.as_ref()) {
        if is_role_local_part(local_part(address)) {
            return Some(NoReply::RoleSender(address.clone()));
        }
    }
    for address in std::iter::once(&return_path).chain(from.as_ref()) {
        if us.addresses.contains(address) {
            return Some(NoReply::OwnAddress(address.clone()));
        }
    }
    if let Some(id) = message.message_id() {
        let domain = id.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        if domain.is_some_and(|d| us.domains.contains(&d)) {
            return Some(NoReply::OwnMessageId(format!("<{id}>")));
        }
    }
    let root = message.root_part();
    if root.is_content_type("multipart", "report") {
        let report_type = root
            .content_type()
            .and_then(|ct| ct.attribute("report-type"))
            .unwrap_or("unknown")
            .to_string();
        return Some(NoReply::Report(format!(
            "multipart/report; report-type={report_type}"
        )));
    }
    let Some(ours) = account_address.map(str::to_ascii_lowercase) else {
        return Some(NoReply::NotAddressedToUs(
            "the account's address (set DKL_IMAP_<NAME>_ADDRESS)".into(),
        ));
    };
    if !addressed_to(message, &ours) {
        return Some(NoReply::NotAddressedToUs(ours));
    }
    None
}

/// Whether `ours` is among the To, Cc, Resent-To and Resent-Cc addresses.
fn addressed_to(message: &Message<'_>, ours: &str) -> bool {
    let listed = [message.to(), message.cc()]
        .into_iter()
        .flatten()
        .flat_map(|list| {
            list.iter()
                .filter_map(|a| a.address().map(str::to_ascii_lowercase))
                .collect::<Vec<_>>()
        });
    let resent = ["Resent-To", "Resent-Cc"]
        .into_iter()
        .flat_map(|name| header_values(message, name))
        .flat_map(|v| {
            v.split([',', ' ', '<', '>', ';'])
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        });
    listed.chain(resent).any(|a| a == ours)
}

/// The subject of an answer to `original` (RFC 3834 section 3.1.5: it
/// shows the answer is automatic).
pub fn reply_subject(rendered: &str) -> String {
    if rendered.to_ascii_lowercase().starts_with("auto:") {
        rendered.to_string()
    } else {
        format!("Auto: {rendered}")
    }
}

/// `References` of an answer to a message with `message_id` and
/// `references` (RFC 5322 section 3.6.4: the parent's References, then its
/// Message-ID).
pub fn references(message_id: &str, references: &[String]) -> String {
    let mut all: Vec<String> = references.iter().map(|r| angle(r)).collect();
    all.push(angle(message_id));
    all.dedup();
    all.join(" ")
}

/// `<id>` whether or not `id` has its brackets.
pub fn angle(id: &str) -> String {
    let bare = id.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{bare}>")
}
