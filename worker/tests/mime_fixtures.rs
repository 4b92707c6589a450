//! Parsing checked against real third-party messages (mail-parser's and
//! CPython's test corpora, see tests/fixtures/mail/README.md), with the
//! expected values computed by an independent parser (Python's `email`) in
//! `expected.json`. No database, no network.

use std::path::PathBuf;

use dkl_worker::mime::classify::{Classification, classify};
use dkl_worker::mime::parse;
use serde_json::Value;

fn fixtures() -> (PathBuf, serde_json::Map<String, Value>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mail");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected.as_object().unwrap().clone())
}

/// Where mail-parser and Python's `email` differ and our reading is kept
/// on purpose: (file, field, why).
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "cpython-msg_43-dsn-report-type.eml",
        "attachments",
        "a report's text/rfc822-headers part (the returned header) is kept as an attachment too",
    ),
    (
        "mailparser-thirdparty-015-rfc822-attachments.eml",
        "attachments",
        "the first attached message is truncated inside an unclosed multipart/alternative; \
         mail-parser keeps the two messages after it inside the first (nothing is lost: \
         they are in its content and in the raw message)",
    ),
];

fn known(file: &str, field: &str) -> bool {
    KNOWN_DIFFERENCES
        .iter()
        .any(|(f, what, _)| *f == file && *what == field)
}

fn has(expect: &Value, feature: &str) -> bool {
    expect["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == feature)
}

#[test]
fn every_fixture_parses_as_the_independent_parser_says() {
    let (dir, expected) = fixtures();
    assert!(expected.len() >= 20, "the corpus is there");
    let mut failures = Vec::new();
    for (file, expect) in &expected {
        let raw = std::fs::read(dir.join(file)).unwrap();
        let mail = parse(&raw);
        let mut check = |what: &str, ok: bool, got: String| {
            if !ok {
                failures.push(format!(
                    "{file}: {what}: got {got}, expected {}",
                    expect[what]
                ));
            }
        };
        // Text never holds NUL (PostgreSQL TEXT cannot).
        for text in [
            &mail.headers,
            mail.text_body.as_ref().unwrap_or(&String::new()),
        ] {
            check("no NUL", !text.contains('\0'), "a NUL".into());
        }
        if let Some(subject) = expect["subject"].as_str() {
            let got = mail.subject.clone().unwrap_or_default();
            // A raw 8-bit header has no declared charset: U+FFFD is as right
            // as a Latin-1 guess (Python gives U+FFFD, expected.json notes it).
            let lenient = got.replace('\u{FFFD}', "ö");
            check(
                "subject",
                got == subject || lenient == subject,
                format!("{got:?}"),
            );
        }
        if let Some(from) = expect["from_address"].as_str() {
            check(
                "from_address",
                mail.sender_email.eq_ignore_ascii_case(from),
                format!("{:?}", mail.sender_email),
            );
        }
        if let Some(name) = expect["from_name"].as_str() {
            check(
                "from_name",
                mail.sender_name.as_deref() == Some(name),
                format!("{:?}", mail.sender_name),
            );
        }
        if !has(expect, "broken_mime") {
            let id = expect["message_id"].as_str();
            check(
                "message_id",
                mail.message_id.as_deref() == id,
                format!("{:?}", mail.message_id),
            );
            if let Some(html) = expect["has_html"].as_bool() {
                check(
                    "has_html",
                    mail.html_body.is_some() == html,
                    format!("{}", mail.html_body.is_some()),
                );
            }
        }
        if let Some(needle) = expect["text_contains"].as_str() {
            let body = mail.text_body.clone().unwrap_or_default();
            check(
                "text_contains",
                body.contains(needle),
                format!("{:?}", body.chars().take(120).collect::<String>()),
            );
        }
        if let Some(list) = expect["attachments"].as_array() {
            let got: Vec<(Option<String>, String)> = mail
                .attachments
                .iter()
                .map(|a| (a.file_name.clone(), a.content_type.clone()))
                .collect();
            let want: Vec<(Option<String>, String)> = list
                .iter()
                .map(|a| {
                    (
                        a["file_name"].as_str().map(String::from),
                        a["content_type"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            if known(file, "attachments") {
                check(
                    "attachments",
                    got.first() == want.first(),
                    format!("{got:?} (first attachment)"),
                );
            } else {
                check("attachments", got == want, format!("{got:?}"));
            }
            for (a, w) in mail.attachments.iter().zip(list) {
                if w["inline"].as_bool() == Some(true) {
                    check(
                        "attachments",
                        a.inline,
                        format!("{:?} not inline", a.file_name),
                    );
                }
            }
        }
        // Never dropped: a quarantined message still has its header.
        check(
            "headers",
            !mail.headers.is_empty() || raw.is_empty(),
            "no header text".into(),
        );
        let class = classify(&raw).class;
        let want = if has(expect, "delivery_status") {
            Some(Classification::DeliveryStatus)
        } else if has(expect, "mailing_list") {
            Some(Classification::MailingList)
        } else {
            None
        };
        if let Some(want) = want {
            check("features", class == want, format!("{class:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// ISO-2022-JP as CPython's test_email encodes it (test_long_header_encode_
/// with_different_output_charset and test_encode7or8bit): no message file
/// of a corpus here uses it, so the message is assembled from those
/// published encodings.
#[test]
fn iso_2022_jp_subject_and_body() {
    let raw = b"From: Taro <taro@example.jp>\r\n\
Subject: =?iso-2022-jp?b?dGVzdC1qYSAbJEIkWEVqOUYkNSRsJD8lYSE8JWskTztKMnE8VCROPjUbKEI=?=\r\n \
=?iso-2022-jp?b?GyRCRyckckJUJEMkRiQkJF4kORsoQg==?=\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=\"iso-2022-jp\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\r\n\
\x1b$BJ8\x1b(B\r\n";
    let mail = parse(raw);
    assert_eq!(
        mail.subject.as_deref(),
        Some("test-ja へ投稿されたメールは司会者の承認を待っています")
    );
    assert_eq!(mail.text_body.as_deref().map(str::trim), Some("文"));
}

/// A NUL byte in a header of a real message (none of the corpora has one):
/// the message is stored, readable, without the NUL.
#[test]
fn nul_byte_in_a_real_header() {
    let (dir, _) = fixtures();
    let raw = std::fs::read(dir.join("mailparser-legacy-003-alternative-latin1-qp.eml")).unwrap();
    let text = String::from_utf8_lossy(&raw).replacen("Subject: ", "Subject: \0", 1);
    let mail = parse(text.as_bytes());
    assert!(mail.quarantine.is_none());
    let subject = mail.subject.unwrap();
    assert!(
        !subject.contains('\0') && subject.contains("Hasen"),
        "{subject}"
    );
    assert!(!mail.headers.contains('\0'));
}

/// 8-bit windows-1252, from a real message: legacy-012 (Outlook, cp1252
/// quoted-printable) with its body decoded to the raw 8-bit bytes and its
/// Content-Transfer-Encoding set to 8bit, as many mailers send it. Both
/// must read the same, umlauts and ß included.
#[test]
fn eight_bit_windows_1252_reads_like_its_quoted_printable_original() {
    let (dir, _) = fixtures();
    let raw = std::fs::read(dir.join("mailparser-legacy-012-cp1252-qp.eml")).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (head, body) = raw.split_at(split);
    let mut eight_bit = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'=' if body[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' => {
                let hex = std::str::from_utf8(&body[i + 1..i + 3]).unwrap();
                eight_bit.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b => {
                eight_bit.push(b);
                i += 1;
            }
        }
    }
    assert!(
        eight_bit.contains(&0xDF) && eight_bit.contains(&0xFC),
        "real 8-bit bytes"
    );
    let head = String::from_utf8(head.to_vec()).unwrap().replace(
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Transfer-Encoding: 8bit",
    );
    let mut message = head.into_bytes();
    message.extend_from_slice(&eight_bit);
    let original = parse(&raw).text_body.unwrap();
    let parsed = parse(&message).text_body.unwrap();
    assert!(
        parsed.contains("Die Hasen klagten einst über ihre mißliche Lage"),
        "{parsed}"
    );
    assert_eq!(parsed.trim_end(), original.trim_end());
}
