//! Real bounces, complaints and auto-replies from two published corpora
//! (`tests/fixtures/bounces/README.md`): each must yield the recipients and
//! kinds in `expected.json`. No database, no network.
//!
//! The sisimai files (one to four per MTA: Postfix, Exim, Sendmail, qmail,
//! Exchange 2003/2007, Office 365, Outlook, Gmail, Yahoo, Amazon SES, plain
//! RFC 3464) must all pass, kinds and status codes included. The Mailman
//! corpus (flufl.bounce) holds the oddest bounces of two decades; its
//! recipients are compared (its "permanent" means "given up", not our
//! hard/soft), and the share understood must stay at or above the floor
//! measured when the reader was written.

use std::collections::BTreeSet;
use std::path::Path;

use dkl_worker::autoreply::{NoReply, Us, reply_blocker};
use dkl_worker::bounce::{Action, Kind, arf, read_bounce};
use dkl_worker::mime::classify::{Classification, classify_message};
use mail_parser::MessageParser;
use serde_json::Value;

/// The share of the Mailman corpus's bounces whose recipients must come
/// out exactly (measured: see the README's bounce section).
const FLUFL_FLOOR: f64 = 0.87;

fn fixtures() -> (std::path::PathBuf, serde_json::Map<String, Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bounces");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected.as_object().unwrap().clone())
}

/// Checks one file; Err says what differs.
fn check(dir: &Path, name: &str, want: &Value) -> Result<(), String> {
    let mut raw = std::fs::read(dir.join(name)).map_err(|e| e.to_string())?;
    // Some files are mbox entries: their `From ` line is no header (IMAP
    // and `dklctl mail import` hand over messages without it).
    if raw.starts_with(b"From ") {
        let end = raw
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |p| p + 1);
        raw.drain(..end);
    }
    let message = MessageParser::default()
        .parse(&raw)
        .ok_or("mail-parser read nothing")?;
    let by_hand = want["source"] == "read by hand";
    let expected: Vec<(String, bool)> = want["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_lowercase(),
                r["hard"].as_bool().unwrap(),
            )
        })
        .collect();
    match want["kind"].as_str().unwrap() {
        "bounce" => {
            let report = read_bounce(&message);
            let got: BTreeSet<String> = report
                .recipients
                .iter()
                .map(|r| r.recipient.clone())
                .collect();
            // A DSN names the final recipient and, when aliases rewrote
            // it, the original one: either is the address.
            let named = |address: &str| {
                report.recipients.iter().find(|r| {
                    r.recipient == address || r.original_recipient.as_deref() == Some(address)
                })
            };
            for (address, hard) in &expected {
                let Some(r) = named(address) else {
                    return Err(format!(
                        "missing {address}; got {got:?} ({})",
                        report.format
                    ));
                };
                if by_hand {
                    let kind = if *hard { Kind::Hard } else { Kind::Soft };
                    if r.kind != kind {
                        return Err(format!(
                            "{address}: kind {:?}, want {kind:?} (status {:?})",
                            r.kind, r.status
                        ));
                    }
                } else if *hard == (r.action == Action::Delayed) {
                    return Err(format!(
                        "{address}: action {:?}, want {}",
                        r.action,
                        if *hard { "failed" } else { "delayed" }
                    ));
                }
            }
            let extra: Vec<_> = report
                .recipients
                .iter()
                .filter(|r| {
                    !expected.iter().any(|(a, _)| {
                        *a == r.recipient || r.original_recipient.as_deref() == Some(a.as_str())
                    })
                })
                .map(|r| r.recipient.clone())
                .collect();
            if !extra.is_empty() {
                return Err(format!("extra recipients {extra:?}"));
            }
            if by_hand
                && let (Some(status), Some(first)) =
                    (want["status"].as_str(), report.recipients.first())
                && first.status.as_deref() != Some(status)
            {
                return Err(format!("status {:?}, want {status}", first.status));
            }
            Ok(())
        }
        "complaint" => {
            let class = classify_message(&message).class;
            if class != Classification::FeedbackReport {
                return Err(format!("classified {class:?}"));
            }
            let complaint = arf::read(&message).ok_or("no feedback-report part")?;
            let want = expected.first().map(|(a, _)| a.clone());
            if complaint.recipient != want {
                return Err(format!(
                    "recipient {:?}, want {want:?}",
                    complaint.recipient
                ));
            }
            if !complaint.is_complaint() {
                return Err(format!(
                    "feedback type {} not a complaint",
                    complaint.feedback_type
                ));
            }
            Ok(())
        }
        "auto_reply" => {
            // Received at the address it was sent to: only its being an
            // automatic reply may stop the answer.
            let to = message
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_ascii_lowercase);
            match reply_blocker(&message, &Us::default(), to.as_deref()) {
                Some(NoReply::NotAddressedToUs(a)) => {
                    Err(format!("stopped only as not addressed to {a}"))
                }
                Some(_) => Ok(()),
                None => Err("an auto-reply would be answered".into()),
            }
        }
        "not_a_bounce" => {
            let report = read_bounce(&message);
            if report.recipients.is_empty() {
                Ok(())
            } else {
                Err(format!("read as a bounce of {:?}", report.recipients))
            }
        }
        other => Err(format!("unknown kind {other} in expected.json")),
    }
}

#[test]
fn every_sisimai_message_yields_its_recipients_and_kinds() {
    let (dir, expected) = fixtures();
    let failures: Vec<String> = expected
        .iter()
        .filter(|(name, _)| name.starts_with("sisimai/"))
        .filter_map(|(name, want)| {
            check(&dir, name, want)
                .err()
                .map(|e| format!("{name}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_mailman_corpus_is_understood_above_the_floor() {
    let (dir, expected) = fixtures();
    let mut passed = 0;
    let mut failures = Vec::new();
    for (name, want) in expected.iter().filter(|(n, _)| n.starts_with("flufl/")) {
        match check(&dir, name, want) {
            Ok(()) => passed += 1,
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let total = passed + failures.len();
    let share = passed as f64 / total as f64;
    println!("flufl corpus: {passed}/{total} ({:.1}%)", share * 100.0);
    for f in &failures {
        println!("  {f}");
    }
    assert!(
        share >= FLUFL_FLOOR,
        "{passed}/{total} understood, below the floor {FLUFL_FLOOR}:\n{}",
        failures.join("\n")
    );
}
