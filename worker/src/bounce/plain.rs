//! Bounces without a DSN: a notice in words, as qmail, old Postfix, Exim,
//! Sendmail, Exchange, Yahoo and many smaller servers write it.
//!
//! The notice is the bounce's own text, up to the line where the returned
//! message starts. Its failed recipients are the addresses after the line
//! that introduces them ("the following addresses failed", "did not reach
//! the following recipient(s)", …), or else on lines that say what went
//! wrong with them ("user unknown", "mailbox full", …), or else in the
//! subject. Addresses that are the bounce's own sender or recipient, or a
//! role address to contact (postmaster, mailer-daemon), never count.
//! Measured against the Mailman (flufl.bounce) corpus; see the README.

use std::sync::LazyLock;

use mail_parser::{Message, PartType};
use regex::Regex;

use super::{Action, BouncedRecipient, enhanced_status, is_type, kind_of};

/// The most of a notice read: a bounce's own words are short; a huge one
/// (a returned message pasted in) must not take the worker's time.
const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// The most recipients read from one notice.
const MAX_RECIPIENTS: usize = 100;

/// What the notice says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlainReport {
    /// The server family the wording belongs to, or `generic`.
    pub format: String,
    /// The failed or delayed recipients.
    pub recipients: Vec<BouncedRecipient>,
}

static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[a-z0-9][a-z0-9._%+'!#$&*?^`{|}~-]*@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,}")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// Where the copy of the returned message starts.
static RETURNED_MESSAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?im)^[\s>|*-]*(?:-{2,}|={2,}|\*{2,})?\s*(?:below this line is a copy of the message|original message follows|this is a copy of the message|a copy of the original message|the original message (?:headers|follows|is attached|is included)|original message header|unsent message below|undelivered message|returned message|your message reads|message removed|headers of the original|the headers of the message|----- original message -----|transcript of session follows|original message:)",
    )
    .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// A line that introduces the failed recipients.
static INTRO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:following (?:e-?mail )?(?:address|recipient|user)(?:\(?e?s\)?)?(?: had (?:permanent|transient) (?:fatal )?errors| failed| could not| did not| was| were|:)|did not reach the following recipient|not yet been delivered|delivery (?:to|has failed to) (?:the following|these) recipient|delevery to the following recipient|unable to deliver (?:your )?message to|wasn't able to deliver|was not able to deliver|could not be delivered to|couldn't be delivered to|not be delivered to|delivery failed|delivery to the following|failed addresses follow|undeliverable (?:address|to)|permanent error|did not receive a copy|error-for|intended recipient|originally addressed to|invalid final delivery|rcpt to|n'a pas pu|no pudo ser entregado|konnte nicht zugestellt|non consegnato|user unknown|unknown user|no such user|mailbox (?:is )?full|mailbox unavailable|does not exist|doesn't have|not found|not a valid|invalid recipient|recipient rejected|account (?:is )?(?:disabled|inactive|expired)|over quota|quota violation|could not deliver|returned to sender)",
    )
    .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// Words of a delay warning rather than a failure.
static WARNING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:warning|delayed|postponed|delivery delay|not yet been delivered|has not been delivered yet|will (?:continue to )?(?:re)?try|still trying|will be retried)")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

static FINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:permanent|failed permanently|given up|giving up|not going to try again|user unknown|unknown user|no such user|does not exist)")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// Lines naming an address to write to, not a failed one.
static CONTACT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:contact|for more information|for assistance|send (?:mail|a message) to|write to|questions|help desk|helpdesk|please forward|return-path|reply-to|^\s*from:|^\s*sender:|sent by)")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// The server families recognised by their wording, for `email_bounces.format`.
const FAMILIES: &[(&str, &str)] = &[
    ("qmail-send program", "qmail"),
    ("this is the qmail", "qmail"),
    ("the postfix", "postfix"),
    ("postfix program", "postfix"),
    ("mail delivery software", "exim"),
    ("following addresses had permanent fatal errors", "sendmail"),
    ("transcript of session follows", "sendmail"),
    ("did not reach the following recipient", "exchange"),
    ("did not reach some or all", "exchange"),
    ("delivery has failed to these recipients", "exchange"),
    ("message from yahoo", "yahoo"),
    (
        "unable to deliver message to the following address",
        "yahoo",
    ),
    (
        "automatically generated delivery status notification",
        "exchange",
    ),
];

/// Reads the notice of a bounce without a usable DSN.
pub fn read(message: &Message<'_>) -> PlainReport {
    let subject = message.subject().unwrap_or("").to_string();
    let notice = notice_text(message);
    let lower = notice.to_ascii_lowercase();
    let mut format = FAMILIES
        .iter()
        .find(|(words, _)| lower.contains(words))
        .map_or("generic", |(_, name)| name)
        .to_string();
    let excluded = excluded_addresses(message);
    let delayed = (WARNING.is_match(&subject) || WARNING.is_match(&notice))
        && !FINAL.is_match(&subject)
        && !FINAL.is_match(&notice);
    let action = if delayed {
        Action::Delayed
    } else {
        Action::Failed
    };

    let lines: Vec<&str> = notice.lines().collect();
    let mut found: Vec<(String, String)> = header_recipients(message)
        .into_iter()
        .map(|(a, _)| {
            let context = context_of(&lines, &a);
            (a, context)
        })
        .collect();
    if !found.is_empty() {
        format = "exim".into();
    }
    if found.is_empty()
        && let Some(start) = lines.iter().position(|l| INTRO.is_match(l))
    {
        found = addresses_in(&lines, start, &excluded);
    }
    if found.is_empty() {
        found = addresses_alone(&lines, &excluded);
    }
    if found.is_empty() && INTRO.is_match(&subject)
        || found.is_empty() && subject.to_ascii_lowercase().contains("undeliver")
    {
        found = ADDRESS
            .find_iter(&subject)
            .map(|m| (clean(m.as_str()), subject.clone()))
            .filter(|(a, _)| !excluded.contains(a))
            .collect();
    }
    let mut recipients: Vec<BouncedRecipient> = Vec::new();
    for (address, context) in found.into_iter().take(MAX_RECIPIENTS) {
        if recipients.iter().any(|r| r.recipient == address) {
            continue;
        }
        let status = enhanced_status(&context);
        let diagnostic = Some(context.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|d| !d.is_empty())
            .map(|d| d.chars().take(500).collect::<String>());
        recipients.push(BouncedRecipient {
            kind: kind_of(action, status.as_deref(), diagnostic.as_deref()),
            recipient: address,
            original_recipient: None,
            action,
            status,
            diagnostic,
            remote_mta: None,
        });
    }
    PlainReport { format, recipients }
}

/// `X-Failed-Recipients` (Exim names them there).
fn header_recipients(message: &Message<'_>) -> Vec<(String, String)> {
    message
        .header_raw("X-Failed-Recipients")
        .map(|v| {
            ADDRESS
                .find_iter(v)
                .map(|m| (clean(m.as_str()), String::new()))
                .collect()
        })
        .unwrap_or_default()
}

/// The addresses on the lines from `start` on, each with what the notice
/// says about it: every line naming it and the two after each (where the
/// server's reason usually is). Addresses the notice gives to write to
/// (on a line about contacting someone) never count, wherever they appear.
fn addresses_in(lines: &[&str], start: usize, excluded: &[String]) -> Vec<(String, String)> {
    let contacts: Vec<String> = lines
        .iter()
        .filter(|l| CONTACT.is_match(l))
        .flat_map(|l| ADDRESS.find_iter(l).map(|m| clean(m.as_str())))
        .collect();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in &lines[start..] {
        for m in ADDRESS.find_iter(line) {
            let address = clean(m.as_str());
            if excluded.contains(&address)
                || contacts.contains(&address)
                || is_role_address(&address)
                || out.iter().any(|(a, _)| *a == address)
            {
                continue;
            }
            let context = context_of(lines, &address);
            out.push((address, context));
        }
    }
    out
}

/// Addresses standing alone on a line (`<a@b.nl>:`, `"a@b.nl"`): how many
/// servers list the failed recipients, whatever words come before.
fn addresses_alone(lines: &[&str], excluded: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in lines {
        let bare = line
            .trim()
            .trim_start_matches(['<', '"', '\'', '(', '[', '*', '>', ' ', '\t']);
        let bare = bare.trim_end_matches([':', '>', '"', '\'', ')', ']', ' ', '.', ',']);
        let Some(m) = ADDRESS.find(bare) else {
            continue;
        };
        let address = clean(m.as_str());
        if m.start() != 0
            || m.end() != bare.len()
            || excluded.contains(&address)
            || is_role_address(&address)
            || out.iter().any(|(a, _)| *a == address)
        {
            continue;
        }
        out.push((address.clone(), context_of(lines, &address)));
    }
    out
}

/// Every line of the notice naming `address`, each with the two after it.
fn context_of(lines: &[&str], address: &str) -> String {
    let mut context = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.to_ascii_lowercase().contains(address) {
            context.extend_from_slice(&lines[i..lines.len().min(i + 3)]);
        }
    }
    context.join(" ")
}

fn clean(address: &str) -> String {
    address.trim_end_matches(['.', '-']).to_ascii_lowercase()
}

/// Addresses that are never the failed recipient: where to write for help.
fn is_role_address(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or("");
    matches!(
        local,
        "postmaster" | "mailer-daemon" | "abuse" | "hostmaster" | "root" | "noreply" | "no-reply"
    )
}

/// The bounce's own sender and recipients.
fn excluded_addresses(message: &Message<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for list in [
        message.from(),
        message.to(),
        message.sender(),
        message.reply_to(),
    ]
    .into_iter()
    .flatten()
    {
        out.extend(list.iter().filter_map(|a| a.address()).map(clean));
    }
    if let Some(rp) = message.header_raw("Return-Path") {
        out.extend(ADDRESS.find_iter(rp).map(|m| clean(m.as_str())));
    }
    out
}

/// The bounce's own words: its text parts (not the returned message's),
/// up to where a copy of the returned message starts.
fn notice_text(message: &Message<'_>) -> String {
    let mut text = String::new();
    let has_text = message
        .parts
        .iter()
        .any(|p| matches!(p.body, PartType::Text(_)) && !is_type(p, "text", "rfc822-headers"));
    for part in &message.parts {
        if is_type(part, "text", "rfc822-headers") {
            continue;
        }
        match &part.body {
            PartType::Text(t) => text.push_str(t),
            PartType::Html(h) if !has_text => text.push_str(&crate::templates::html_to_text(h)),
            _ => continue,
        }
        text.push('\n');
    }
    let mut cut = match RETURNED_MESSAGE.find(&text) {
        Some(m) => m.start(),
        None => text.len(),
    }
    .min(MAX_NOTICE_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}
