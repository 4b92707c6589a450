//! Mail: the send log (failures first), the inbox (quarantined messages on
//! request), bounces and suppressions, and one incoming message.

use askama::Template;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::overview::NoticeQuery;
use crate::dashboard::web::{self, App, Layout, PageError, PageResult, Viewer};
use crate::store::{bounces, incoming_emails, verzonden_emails};

const PAGE: i64 = 50;

struct SendRow {
    id: Uuid,
    when: String,
    status: &'static str,
    to: String,
    subject: String,
    kind: String,
    code: String,
    retries: i32,
    error: String,
}

impl From<verzonden_emails::LogRow> for SendRow {
    fn from(r: verzonden_emails::LogRow) -> Self {
        Self {
            id: r.id,
            when: web::stamp(r.sent_at),
            status: r.status.as_str(),
            to: r.recipient_email,
            subject: r.subject,
            kind: r.mail_kind,
            code: r.smtp_code.map(|c| c.to_string()).unwrap_or_default(),
            retries: r.retry_count,
            error: r.error_message.unwrap_or_default(),
        }
    }
}

/// The send log's query string.
#[derive(Debug, Default, Deserialize)]
pub struct LogQuery {
    /// `1`: failures only (paged).
    failures: Option<String>,
    before_at: Option<DateTime<Utc>>,
    before_id: Option<Uuid>,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/send_log.html")]
struct SendLogPage {
    layout: Layout,
    failures_only: bool,
    failures: Vec<SendRow>,
    rows: Vec<SendRow>,
    next: Option<String>,
}

/// `GET /dashboard/mail`: recent failures on top, then the whole log.
pub async fn send_log(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<LogQuery>,
) -> PageResult {
    let failures_only = q.failures.as_deref() == Some("1");
    let before = q.before_at.zip(q.before_id);
    let failures = if failures_only || before.is_some() {
        Vec::new()
    } else {
        verzonden_emails::log_page(&app.pool, true, None, 10).await?
    };
    let rows = verzonden_emails::log_page(&app.pool, failures_only, before, PAGE).await?;
    let next = (rows.len() as i64 == PAGE)
        .then(|| rows.last())
        .flatten()
        .map(|last| {
            serde_urlencoded::to_string([
                ("failures", if failures_only { "1" } else { "" }),
                ("before_at", &last.sent_at.to_rfc3339()),
                ("before_id", &last.id.to_string()),
            ])
            .unwrap_or_default()
        });
    web::render(&SendLogPage {
        layout: Layout::new(
            if failures_only {
                "Mail: failed sends"
            } else {
                "Mail: send log"
            },
            "mail",
            &op,
            q.notice,
        ),
        failures_only,
        failures: failures.into_iter().map(SendRow::from).collect(),
        rows: rows.into_iter().map(SendRow::from).collect(),
        next,
    })
}

/// The inbox's query string.
#[derive(Debug, Default, Deserialize)]
pub struct InboxQuery {
    quarantined: Option<String>,
    account: Option<String>,
}

struct InboxRow {
    id: Uuid,
    account: String,
    from: String,
    subject: String,
    received: String,
    class: String,
    processed: bool,
    quarantine: Option<String>,
    attachments: i64,
}

#[derive(Template)]
#[template(path = "dashboard/inbox.html")]
struct InboxPage {
    layout: Layout,
    quarantined: bool,
    rows: Vec<InboxRow>,
}

/// `GET /dashboard/mail/inbox[?quarantined=1]`.
pub async fn inbox(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<InboxQuery>,
) -> PageResult {
    let quarantined = q.quarantined.as_deref() == Some("1");
    let filter = incoming_emails::InboxFilter {
        account: web::filter_value(q.account),
        unprocessed: false,
        quarantined,
        limit: 100,
    };
    let rows = incoming_emails::inbox(&app.pool, &filter)
        .await?
        .into_iter()
        .map(|r| InboxRow {
            id: r.id,
            account: format!("{} / {}", r.account_type, r.mailbox),
            from: r.sender_email,
            subject: r.subject.unwrap_or_default(),
            received: web::stamp(r.received_at),
            class: r
                .classification
                .map(|c| c.as_str().to_string())
                .unwrap_or_default(),
            processed: r.processed,
            quarantine: r.quarantine_reason,
            attachments: r.attachments,
        })
        .collect();
    web::render(&InboxPage {
        layout: Layout::new(
            if quarantined {
                "Mail: quarantined messages"
            } else {
                "Mail: inbox"
            },
            "mail",
            &op,
            None,
        ),
        quarantined,
        rows,
    })
}

#[derive(Template)]
#[template(path = "dashboard/bounces.html")]
struct BouncesPage {
    layout: Layout,
    bounces: Vec<bounces::BounceRow>,
    suppressions: Vec<bounces::SuppressionRow>,
}

/// `GET /dashboard/mail/bounces`: the last 30 days' bounces, and who is suppressed.
pub async fn bounces(
    State(app): State<App>,
    Viewer(op): Viewer,
    Query(q): Query<NoticeQuery>,
) -> PageResult {
    let mut conn = app.pool.acquire().await?;
    let since = Utc::now() - chrono::Duration::days(30);
    let bounces = bounces::list(&mut conn, since, 100).await?;
    let suppressions = bounces::suppressions(&mut conn, None, 100).await?;
    web::render(&BouncesPage {
        layout: Layout::new("Mail: bounces and suppressions", "mail", &op, q.notice),
        bounces,
        suppressions,
    })
}

struct Attachment {
    position: i32,
    name: String,
    content_type: String,
    size: i64,
    inline: bool,
}

#[derive(Template)]
#[template(path = "dashboard/message.html")]
struct MessagePage {
    layout: Layout,
    facts: Vec<(&'static str, String)>,
    quarantine: Option<String>,
    headers: String,
    text: String,
    html: Option<String>,
    attachments: Vec<Attachment>,
    bounces: Vec<bounces::BounceRow>,
}

/// `GET /dashboard/mail/messages/{id}`: headers, text, attachments, and the
/// (sanitised) HTML in a sandboxed frame that cannot run script.
pub async fn message(
    State(app): State<App>,
    Viewer(op): Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let id: Uuid = id
        .parse()
        .map_err(|_| PageError::BadRequest(format!("`{id}` is not a message id (a UUID)")))?;
    let Some(m) = incoming_emails::get(&app.pool, id).await? else {
        return Err(PageError::NotFound(format!(
            "no incoming message {id} (processed mail is deleted after its retention age)"
        )));
    };
    let attachments = incoming_emails::attachments(&app.pool, id)
        .await?
        .into_iter()
        .map(|a| Attachment {
            position: a.position,
            name: a.file_name.unwrap_or_else(|| "(no name)".into()),
            content_type: a.content_type,
            size: a.size,
            inline: a.is_inline,
        })
        .collect();
    let mut conn = app.pool.acquire().await?;
    let bounces = bounces::of_message(&mut conn, id).await?;
    drop(conn);
    let facts = vec![
        (
            "From",
            match &m.sender_name {
                Some(name) => format!("{name} <{}>", m.sender_email),
                None => m.sender_email.clone(),
            },
        ),
        ("To", m.to_addresses.join(", ")),
        ("Cc", m.cc_addresses.join(", ")),
        ("Subject", m.subject.clone().unwrap_or_default()),
        ("Received", web::stamp(m.received_at)),
        (
            "Account",
            format!(
                "{} / {} (UID {})",
                m.account_type,
                m.mailbox,
                m.uid.clone().unwrap_or_default()
            ),
        ),
        ("Message-ID", m.message_id.clone().unwrap_or_default()),
        ("Size", format!("{} bytes", m.raw_size)),
        (
            "Processed",
            if m.processed {
                "yes".into()
            } else {
                "not yet".into()
            },
        ),
        (
            "Class",
            match (m.classification, &m.classification_reason) {
                (Some(c), Some(why)) => format!("{} ({why})", c.as_str()),
                (Some(c), None) => c.as_str().into(),
                _ => "–".into(),
            },
        ),
    ];
    web::render(&MessagePage {
        layout: Layout::new(
            format!(
                "Message: {}",
                m.subject.as_deref().unwrap_or("(no subject)")
            ),
            "mail",
            &op,
            None,
        ),
        facts,
        quarantine: m.quarantine_reason,
        headers: m.headers.unwrap_or_default(),
        text: m.body.unwrap_or_default(),
        html: m.html_body.filter(|h| !h.trim().is_empty()),
        attachments,
        bounces,
    })
}
