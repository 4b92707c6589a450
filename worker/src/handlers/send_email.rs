//! `send_email`: renders one mail, records it in `verzonden_emails` under
//! its dedup key, and sends it over SMTP.
//!
//! Nothing twice: the row is written (or found) before the SMTP transaction
//! starts, and a row that is already `sent` ends the job. The one window left
//! is a worker that dies between the server's 250 and the commit of `sent`:
//! its row still carries `smtp_started_at`. A transactional mail is then sent
//! again (a second password-reset mail beats none); a bulk mail is marked
//! `unknown` and never resent by itself (`dklctl mail resend` does it on
//! purpose).

use std::sync::Arc;

use dkl_shared::jobs::{JobContext, JobError, Registry};
use dkl_shared::kinds::{MailKind, SendEmail};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::Message;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use crate::smtp::stats::SendOutcome;
use crate::smtp::{Smtp, SmtpError};
use crate::store::verzonden_emails::{self, NewMessage, SendStatus};
use crate::store::{email_templates, rate_limits, suppressions};
use crate::templates::{MailTemplate, RenderedMail, Renderer, html_to_text};

/// Extra headers a `send_email` job may set.
pub const ALLOWED_HEADERS: &[&str] =
    &["In-Reply-To", "References", "Auto-Submitted", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"];

/// What the handler needs.
pub struct Mailer {
    /// The database.
    pub pool: PgPool,
    /// SMTP connections.
    pub smtp: Smtp,
    /// Template renderer.
    pub renderer: Renderer,
}

/// Registers the `send_email` handler.
pub fn register(registry: &mut Registry, mailer: Arc<Mailer>) {
    registry.register::<SendEmail, _, _>(move |job, ctx| {
        let mailer = mailer.clone();
        async move { mailer.send(job, ctx).await }
    });
}

impl Mailer {
    async fn send(&self, job: SendEmail, ctx: JobContext) -> Result<(), JobError> {
        let to: Mailbox = job.to.trim().parse().map_err(|e| {
            JobError::permanent(format!("recipient `{}` is not an e-mail address ({e}); fix the address and send again", job.to))
        })?;
        let mail = self.render(&job).await?;
        let config = self.smtp.config_for(job.kind);
        let from: Mailbox = config.from.parse().map_err(|e| {
            JobError::permanent(format!("DKL_SMTP_{}_FROM `{}` is not an address ({e})", config.name.to_uppercase(), config.from))
        })?;
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), from.email.domain());
        // Built before its row exists, so a message that cannot be built never
        // leaves a row behind (rebuilt only to keep a first try's Message-ID).
        let message = build(&job, &mail, from.clone(), to.clone(), &message_id)?;
        let dedup_key = match job.dedup_key.as_deref() {
            Some("") => return Err(JobError::permanent("dedup_key is empty; leave it out or give a key")),
            Some(key) => key.to_string(),
            None => format!("job:{}", ctx.id),
        };
        // Two jobs for one message (the same key asked for twice while the
        // first still runs) never both send it: the sender holds this lock
        // through the SMTP transaction. It is a session lock, so a worker
        // that dies frees it, and `smtp_started_at` then really means that
        // the sender died mid-transaction.
        let Some(mut lock) = SendLock::try_take(&self.pool, &dedup_key).await.map_err(JobError::retryable)? else {
            return Err(JobError::retry_after(
                format!("message `{dedup_key}` is being sent by another job right now; looking again later"),
                std::time::Duration::from_secs(5),
            ));
        };
        let recipient = to.email.to_string();
        let row = verzonden_emails::record(
            lock.conn(),
            &NewMessage {
                dedup_key: &dedup_key,
                recipient: &recipient,
                subject: &mail.subject,
                template_name: job.template.as_deref(),
                mail_kind: job.kind.as_str(),
                smtp_config: &config.name,
                job_id: &ctx.id.0,
                message_id: &message_id,
                reply_to: job.reply_to.as_deref(),
            },
        )
        .await
        .map_err(JobError::retryable)?;
        if !row.recipient_email.eq_ignore_ascii_case(&recipient) {
            return Err(JobError::permanent(format!(
                "dedup key `{dedup_key}` belongs to a message to {}, not to {recipient}; give each message its own key",
                row.recipient_email
            )));
        }
        match row.status {
            SendStatus::Queued | SendStatus::Pending => {}
            done => {
                tracing::info!(dedup_key, status = done.as_str(), "mail already handled under this key; not sending again");
                lock.release().await;
                return Ok(());
            }
        }
        if let Some(reason) = suppressions::reason_for(lock.conn(), &recipient, job.kind.is_bulk()).await.map_err(JobError::retryable)? {
            verzonden_emails::mark_final(lock.conn(), row.id, SendStatus::Suppressed, None, &format!("address suppressed: {reason}"))
                .await
                .map_err(JobError::retryable)?;
            tracing::info!(status = "suppressed", %reason, "mail not sent: address suppressed");
            self.smtp.stats().record(&config.name, job.kind.as_str(), SendOutcome::Suppressed);
            lock.release().await;
            return Ok(());
        }
        if row.interrupted && job.kind.is_bulk() {
            verzonden_emails::mark_final(
                lock.conn(),
                row.id,
                SendStatus::Unknown,
                None,
                "a worker died during this message's SMTP transaction; it may have been delivered, so it is not resent by itself",
            )
            .await
            .map_err(JobError::retryable)?;
            lock.release().await;
            return Ok(());
        }
        // A resend keeps the Message-ID of the first try, so a receiver that
        // got both can tell they are one message.
        let message = match row.message_id.clone() {
            Some(first) if first != message_id => build(&job, &mail, from, to, &first)?,
            _ => message,
        };
        let message_id = row.message_id.clone().unwrap_or(message_id);
        // The provider's limit, shared by every worker: a full second is
        // waited out here; a full hour snoozes the job (no attempt used).
        if config.rate_per_second.is_some() || config.rate_per_hour.is_some() {
            while let Some(wait) = rate_limits::take_slot(lock.conn(), &config.name, config.rate_per_second, config.rate_per_hour)
                .await
                .map_err(JobError::retryable)?
            {
                if wait > std::time::Duration::from_secs(2) {
                    lock.release().await;
                    return Err(JobError::snooze(wait, format!("SMTP `{}` reached its hourly limit", config.name)));
                }
                tokio::time::sleep(wait).await;
            }
        }
        verzonden_emails::start_smtp(lock.conn(), row.id, &ctx.id.0).await.map_err(JobError::retryable)?;
        let sent = self.smtp.send(config, message.envelope(), &message.formatted()).await;
        let counted = match &sent {
            Ok(_) => SendOutcome::Sent,
            Err(SmtpError::Permanent { .. }) => SendOutcome::Failed,
            Err(SmtpError::Transient { .. }) if ctx.is_last_attempt() => SendOutcome::Failed,
            Err(SmtpError::Transient { .. }) => SendOutcome::Deferred,
        };
        self.smtp.stats().record(&config.name, job.kind.as_str(), counted);
        let result = match sent {
            Ok(accepted) => {
                verzonden_emails::mark_sent_surely(lock.conn(), &self.pool, row.id, accepted.code, &accepted.text)
                    .await
                    .map_err(JobError::retryable)?;
                tracing::info!(smtp = %config.name, code = accepted.code, %message_id, "mail sent");
                Ok(())
            }
            Err(e @ SmtpError::Permanent { .. }) => {
                verzonden_emails::mark_final(lock.conn(), row.id, SendStatus::Failed, e.code(), &e.to_string())
                    .await
                    .map_err(JobError::retryable)?;
                Err(JobError::permanent(e))
            }
            Err(e @ SmtpError::Transient { .. }) if ctx.is_last_attempt() => {
                let why = format!("gave up after {} attempts: {e}", ctx.attempt);
                verzonden_emails::mark_final(lock.conn(), row.id, SendStatus::Failed, e.code(), &why).await.map_err(JobError::retryable)?;
                Err(JobError::retryable(e))
            }
            Err(e) => {
                verzonden_emails::mark_retry(lock.conn(), row.id, e.code(), &e.to_string()).await.map_err(JobError::retryable)?;
                Err(JobError::retryable(e))
            }
        };
        lock.release().await;
        result
    }

    /// The mail's subject and bodies: from its template, or as given.
    async fn render(&self, job: &SendEmail) -> Result<RenderedMail, JobError> {
        let variables = serde_json::Value::Object(job.variables.clone());
        let template = match (&job.template, &job.subject, &job.html) {
            (Some(name), _, _) => {
                let row = email_templates::by_name(&self.pool, name).await.map_err(JobError::retryable)?.ok_or_else(|| {
                    JobError::permanent(format!("no template named `{name}` in email_templates; `dklctl templates sync` loads the defaults"))
                })?;
                if !row.is_active {
                    return Err(JobError::permanent(format!("template `{name}` is not active (email_templates.is_active)")));
                }
                row.template()
            }
            (None, Some(subject), Some(html)) => {
                if subject.contains(['\r', '\n']) {
                    return Err(JobError::permanent("the subject has a line break (CR or LF); it would inject mail headers"));
                }
                let text = job.text.clone().unwrap_or_else(|| html_to_text(html));
                return Ok(RenderedMail { subject: subject.clone(), html: html.clone(), text });
            }
            _ => return Err(JobError::permanent("a send_email job needs `template`, or `subject` and `html`")),
        };
        render_template(&self.renderer, &template, &variables)
    }
}

fn render_template(renderer: &Renderer, template: &MailTemplate, variables: &serde_json::Value) -> Result<RenderedMail, JobError> {
    renderer.render(template, variables).map_err(JobError::permanent)
}

/// The MIME message: multipart/alternative text + HTML, our Message-ID,
/// Reply-To and the allowed extra headers.
fn build(job: &SendEmail, mail: &RenderedMail, from: Mailbox, to: Mailbox, message_id: &str) -> Result<Message, JobError> {
    let mut builder = Message::builder().from(from).to(to).subject(&mail.subject).message_id(Some(message_id.to_string()));
    if let Some(reply_to) = &job.reply_to {
        let mbox: Mailbox = reply_to
            .parse()
            .map_err(|e| JobError::permanent(format!("reply_to `{reply_to}` is not an e-mail address ({e})")))?;
        builder = builder.reply_to(mbox);
    }
    for (name, value) in &job.headers {
        let Some(allowed) = ALLOWED_HEADERS.iter().find(|h| h.eq_ignore_ascii_case(name)) else {
            return Err(JobError::permanent(format!("header `{name}` is not allowed; allowed: {}", ALLOWED_HEADERS.join(", "))));
        };
        if value.contains(['\r', '\n']) {
            return Err(JobError::permanent(format!("header `{name}` has a line break")));
        }
        builder = builder.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str(allowed), value.clone()));
    }
    if job.kind == MailKind::AutoReply && !job.headers.keys().any(|k| k.eq_ignore_ascii_case("Auto-Submitted")) {
        builder = builder.raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-replied".into()));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
        .map_err(|e| JobError::permanent(format!("cannot build the message: {e}")))
}

/// A session-level advisory lock on a message's dedup key, on one pooled
/// connection that the sender uses throughout. Released explicitly; if a
/// path returns early, the connection is closed instead of going back to the
/// pool, which ends the session and frees the lock.
struct SendLock {
    conn: PoolConnection<Postgres>,
    key: String,
    released: bool,
}

impl SendLock {
    async fn try_take(pool: &PgPool, key: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 1937))")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then(|| Self { conn, key: key.to_string(), released: false }))
    }

    fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 1937))")
            .bind(&self.key)
            .execute(&mut *self.conn)
            .await;
        // Unlocked: the connection may go back to the pool (Drop sees it).
        self.released = unlocked.is_ok();
    }
}

impl Drop for SendLock {
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}
