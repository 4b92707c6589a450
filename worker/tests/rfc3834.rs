//! RFC 3834: which messages never get an automatic answer. One test per
//! rule; each starts from a person's message that would be answered and
//! changes one thing. No database: `reply_blocker` decides on the message.

use dkl_worker::autoreply::{NoReply, Us, reply_blocker};
use mail_parser::MessageParser;

const OURS: &str = "info@dekoninklijkeloop.nl";

fn us() -> Us {
    Us {
        addresses: vec![OURS.into(), "noreply@dekoninklijkeloop.nl".into()],
        domains: vec!["dekoninklijkeloop.nl".into()],
    }
}

/// A person's message to us, with `extra` header lines (CRLF-terminated)
/// and `replace` applied to the base header.
fn message(extra: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let mut head = "Return-Path: <anna@example.nl>\r\nFrom: Anna de Vries <anna@example.nl>\r\nTo: DKL <info@dekoninklijkeloop.nl>\r\nSubject: Vraag over de route\r\nMessage-ID: <abc123@mail.example.nl>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0100\r\n".to_string();
    for (from, to) in replace {
        assert!(head.contains(from), "the base header has {from}");
        head = head.replace(from, to);
    }
    format!("{head}{extra}\r\nHoi, hoe laat begint de loop?\r\n").into_bytes()
}

fn blocker(raw: &[u8]) -> Option<NoReply> {
    let parsed = MessageParser::default().parse(raw).expect("parses");
    reply_blocker(&parsed, &us(), Some(OURS))
}

#[test]
fn a_persons_message_is_answered() {
    assert_eq!(blocker(&message("", &[])), None);
}

#[test]
fn auto_submitted_no_is_answered() {
    assert_eq!(blocker(&message("Auto-Submitted: no\r\n", &[])), None);
}

#[test]
fn auto_submitted_auto_replied_is_not_answered() {
    assert!(matches!(
        blocker(&message("Auto-Submitted: auto-replied\r\n", &[])),
        Some(NoReply::AutoSubmitted(_))
    ));
}

#[test]
fn auto_submitted_auto_generated_is_not_answered() {
    assert!(matches!(
        blocker(&message("Auto-Submitted: auto-generated\r\n", &[])),
        Some(NoReply::AutoSubmitted(_))
    ));
}

#[test]
fn auto_submitted_with_any_other_value_is_not_answered() {
    assert!(matches!(
        blocker(&message(
            "Auto-Submitted: auto-notified; owner-email=\"x@y.nl\"\r\n",
            &[]
        )),
        Some(NoReply::AutoSubmitted(_))
    ));
}

#[test]
fn list_id_is_not_answered() {
    assert!(matches!(
        blocker(&message("List-Id: <lopers.lists.example.nl>\r\n", &[])),
        Some(NoReply::ListHeader(_))
    ));
}

#[test]
fn list_unsubscribe_is_not_answered() {
    assert!(matches!(
        blocker(&message(
            "List-Unsubscribe: <mailto:leave@example.nl>\r\n",
            &[]
        )),
        Some(NoReply::ListHeader(_))
    ));
}

#[test]
fn any_other_list_header_is_not_answered() {
    assert!(matches!(
        blocker(&message(
            "List-Archive: <https://lists.example.nl/>\r\n",
            &[]
        )),
        Some(NoReply::ListHeader(_))
    ));
}

#[test]
fn precedence_bulk_is_not_answered() {
    assert!(matches!(
        blocker(&message("Precedence: bulk\r\n", &[])),
        Some(NoReply::Precedence(_))
    ));
}

#[test]
fn precedence_list_is_not_answered() {
    assert!(matches!(
        blocker(&message("Precedence: list\r\n", &[])),
        Some(NoReply::Precedence(_))
    ));
}

#[test]
fn precedence_junk_is_not_answered() {
    assert!(matches!(
        blocker(&message("Precedence: junk\r\n", &[])),
        Some(NoReply::Precedence(_))
    ));
}

#[test]
fn x_auto_response_suppress_all_is_not_answered() {
    assert!(matches!(
        blocker(&message("X-Auto-Response-Suppress: All\r\n", &[])),
        Some(NoReply::SuppressHeader(_))
    ));
}

#[test]
fn x_auto_response_suppress_autoreply_is_not_answered() {
    assert!(matches!(
        blocker(&message("X-Auto-Response-Suppress: DR, AutoReply\r\n", &[])),
        Some(NoReply::SuppressHeader(_))
    ));
}

#[test]
fn x_auto_response_suppress_oof_is_not_answered() {
    assert!(matches!(
        blocker(&message("X-Auto-Response-Suppress: OOF\r\n", &[])),
        Some(NoReply::SuppressHeader(_))
    ));
}

#[test]
fn x_auto_response_suppress_of_receipts_only_is_answered() {
    // DR/RN/NRN suppress delivery and read receipts, not answers.
    assert_eq!(
        blocker(&message("X-Auto-Response-Suppress: DR, RN, NRN\r\n", &[])),
        None
    );
}

#[test]
fn x_autoreply_is_not_answered() {
    assert!(matches!(
        blocker(&message("X-Autoreply: yes\r\n", &[])),
        Some(NoReply::SuppressHeader(_))
    ));
}

#[test]
fn x_autorespond_is_not_answered() {
    assert!(matches!(
        blocker(&message("X-Autorespond: yes\r\n", &[])),
        Some(NoReply::SuppressHeader(_))
    ));
}

#[test]
fn a_null_return_path_is_not_answered() {
    let raw = message("", &[("Return-Path: <anna@example.nl>", "Return-Path: <>")]);
    assert_eq!(blocker(&raw), Some(NoReply::NullReturnPath));
}

#[test]
fn a_missing_return_path_is_not_answered() {
    let raw = message("", &[("Return-Path: <anna@example.nl>\r\n", "")]);
    assert_eq!(blocker(&raw), Some(NoReply::NoReturnPath));
}

#[test]
fn mailer_daemon_is_not_answered() {
    let raw = message("", &[("anna@example.nl", "MAILER-DAEMON@mx.example.nl")]);
    assert!(matches!(blocker(&raw), Some(NoReply::RoleSender(_))));
}

#[test]
fn postmaster_is_not_answered() {
    let raw = message("", &[("anna@example.nl", "postmaster@example.nl")]);
    assert!(matches!(blocker(&raw), Some(NoReply::RoleSender(_))));
}

#[test]
fn owner_addresses_are_not_answered() {
    let raw = message(
        "",
        &[(
            "Return-Path: <anna@example.nl>",
            "Return-Path: <owner-lopers@example.nl>",
        )],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::RoleSender(_))));
}

#[test]
fn request_addresses_are_not_answered() {
    let raw = message(
        "",
        &[(
            "Return-Path: <anna@example.nl>",
            "Return-Path: <lopers-request@example.nl>",
        )],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::RoleSender(_))));
}

#[test]
fn noreply_senders_are_not_answered() {
    for sender in [
        "noreply@shop.example",
        "no-reply@shop.example",
        "do-not-reply@shop.example",
    ] {
        let raw = message("", &[("anna@example.nl", sender)]);
        assert!(
            matches!(blocker(&raw), Some(NoReply::RoleSender(_))),
            "{sender}"
        );
    }
}

#[test]
fn our_own_address_is_not_answered() {
    let raw = message("", &[("anna@example.nl", OURS)]);
    assert!(matches!(blocker(&raw), Some(NoReply::OwnAddress(_))));
}

#[test]
fn our_own_message_id_domain_is_not_answered() {
    let raw = message(
        "",
        &[("<abc123@mail.example.nl>", "<7f3e@dekoninklijkeloop.nl>")],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::OwnMessageId(_))));
}

#[test]
fn a_delivery_status_report_is_not_answered() {
    let raw = message(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
        &[],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::Report(_))));
}

#[test]
fn a_read_receipt_is_not_answered() {
    let raw = message(
        "Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n",
        &[],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::Report(_))));
}

#[test]
fn a_feedback_report_is_not_answered() {
    let raw = message(
        "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n",
        &[],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::Report(_))));
}

#[test]
fn a_bcc_copy_is_not_answered() {
    let raw = message(
        "",
        &[(
            "To: DKL <info@dekoninklijkeloop.nl>",
            "To: iemand@example.nl",
        )],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::NotAddressedToUs(_))));
}

#[test]
fn our_address_in_cc_is_answered() {
    let raw = message(
        "Cc: info@dekoninklijkeloop.nl\r\n",
        &[(
            "To: DKL <info@dekoninklijkeloop.nl>",
            "To: iemand@example.nl",
        )],
    );
    assert_eq!(blocker(&raw), None);
}

#[test]
fn our_address_in_resent_to_is_answered() {
    let raw = message(
        "Resent-To: <info@dekoninklijkeloop.nl>\r\n",
        &[(
            "To: DKL <info@dekoninklijkeloop.nl>",
            "To: iemand@example.nl",
        )],
    );
    assert_eq!(blocker(&raw), None);
}

#[test]
fn an_account_without_a_known_address_answers_nothing() {
    let raw = message("", &[]);
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert!(matches!(
        reply_blocker(&parsed, &us(), None),
        Some(NoReply::NotAddressedToUs(_))
    ));
}

#[test]
fn precedence_auto_reply_is_not_answered() {
    assert!(matches!(
        blocker(&message("Precedence: auto_reply\r\n", &[])),
        Some(NoReply::Precedence(_))
    ));
}

#[test]
fn the_return_path_the_server_added_counts_not_one_the_sender_wrote_below_it() {
    // The delivering server's null Return-Path is on top; the sender's own
    // copy below it must not make the message answerable.
    let raw = message(
        "Return-Path: <anna@example.nl>\r\n",
        &[("Return-Path: <anna@example.nl>", "Return-Path: <>")],
    );
    assert_eq!(blocker(&raw), Some(NoReply::NullReturnPath));
}

#[test]
fn a_second_auto_submitted_header_is_seen() {
    let raw = message(
        "Auto-Submitted: no\r\nAuto-Submitted: auto-generated\r\n",
        &[],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::AutoSubmitted(_))));
}

#[test]
fn a_header_name_with_non_ascii_bytes_is_no_panic() {
    let raw = message("Lisé-x: 1\r\nabcdé: x\r\n", &[]);
    assert_eq!(blocker(&raw), None);
}

#[test]
fn a_vacation_reply_without_auto_submitted_is_not_answered() {
    // iCloud's vacation replies carry only their own header.
    let raw = message("X-Apple-Action: VACATION\r\n", &[]);
    assert!(matches!(blocker(&raw), Some(NoReply::LooksAutomatic(_))));
    let raw = message(
        "",
        &[(
            "Subject: Vraag over de route",
            "Subject: Automatic reply: Vraag",
        )],
    );
    assert!(matches!(blocker(&raw), Some(NoReply::LooksAutomatic(_))));
}
