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
use std::time::Duration;

use dkl_shared::config::SmtpConfig;
use dkl_shared::jobs::{JobContext, JobError, Registry};
use dkl_shared::kinds::{MailKind, SendEmail};
use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use sqlx::PgPool;

use crate::smtp::stats::SendOutcome;
use crate::smtp::{Smtp, SmtpError, SmtpSlot};
use crate::store::email_templates::TemplateCache;
use crate::store::send_log::{KeyGuard, SendLog, SendLogError};
use crate::store::verzonden_emails::{self, Begun, Finish, NewMessage, RateLimit};
use crate::templates::{MailTemplate, RenderedMail, Renderer, html_to_text};

/// Extra headers a `send_email` job may set.
pub const ALLOWED_HEADERS: &[&str] = &[
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// The longest a send waits for a free SMTP connection before it snoozes
/// (well within `SendEmail::TIMEOUT`, which the wait would otherwise use up).
pub const SLOT_WAIT: Duration = Duration::from_secs(30);

/// What the handler needs.
pub struct Mailer {
    /// The database.
    pub pool: PgPool,
    /// SMTP connections (shared with the newsletter lanes).
    pub smtp: Arc<Smtp>,
    /// Template renderer.
    pub renderer: Renderer,
    /// Template rows, read at most every few seconds.
    pub templates: TemplateCache,
    /// The writer of every send's steps in `verzonden_emails`.
    pub send_log: SendLog,
    /// `DKL_BOUNCE_ADDRESS` (the VERP base; unset: bounce@ the From domain).
    pub bounce_address: Option<String>,
    /// Whether mail leaves with a VERP return path (`DKL_BOUNCE_ADDRESS` not `off`).
    pub verp: bool,
    /// Signs the VERP tags.
    pub keys: crate::newsletter::token::TokenKey,
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
        let to = crate::address::mailbox(&job.to).map_err(|e| {
            JobError::permanent(format!("recipient: {e}; fix the address and send again"))
        })?;
        let mut mail = self.render(&job).await?;
        if job.kind == MailKind::AutoReply {
            // The subject shows the answer is automatic (RFC 3834 3.1.5),
            // on the wire and in the send log alike.
            mail.subject = crate::autoreply::reply_subject(&mail.subject);
        }
        let config = self.smtp.config_for(job.kind);
        let from: Mailbox = config.from.parse().map_err(|e| {
            JobError::permanent(format!(
                "DKL_SMTP_{}_FROM `{}` is not an address ({e})",
                config.name.to_uppercase(),
                config.from
            ))
        })?;
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4(), from.email.domain());
        // Built before its row exists, so a message that cannot be built never
        // leaves a row behind (rebuilt only to keep a first try's Message-ID).
        let message = build(&job, &mail, from.clone(), to.clone(), &message_id)?;
        let dedup_key = match job.dedup_key.as_deref() {
            Some("") => {
                return Err(JobError::permanent(
                    "dedup_key is empty; leave it out or give a key",
                ));
            }
            Some(key) => key.to_string(),
            None => format!("job:{}", ctx.id),
        };
        let recipient = to.email.to_string();
        let rate = RateLimit {
            per_second: config.rate_per_second,
            per_hour: config.rate_per_hour,
        };
        // Read before the row's rate slot is taken: the first read goes to
        // the database, and nothing slow may sit between slot and send.
        let verp_signer = if self.verp && job.kind != MailKind::AutoReply {
            Some(
                self.keys
                    .signer(&self.pool)
                    .await
                    .map_err(JobError::retryable)?,
            )
        } else {
            None
        };
        // Bulk mail takes its SMTP connection before its row is marked
        // started: a worker dying while it waits would otherwise leave a
        // newsletter `unknown` that never left. So does mail under a rate
        // limit, whose slot (taken at begin) must be used in its second.
        // Other mail begins first (a transactional message found interrupted
        // is sent again anyway), so it holds a connection only for its SMTP
        // transaction.
        let early_slot = if job.kind.is_at_most_once() || rate.is_set() {
            Some(self.reserve_slot(config).await?)
        } else {
            None
        };
        let new = NewMessage {
            dedup_key: &dedup_key,
            recipient: &recipient,
            subject: &mail.subject,
            template_name: job.template.as_deref(),
            mail_kind: job.kind.as_str(),
            smtp_config: &config.name,
            job_id: &ctx.id.0,
            message_id: &message_id,
            reply_to: job.reply_to.as_deref(),
        };
        let (begun, guard) = self
            .send_log
            .begin(&new, job.kind.is_at_most_once(), rate)
            .await
            .map_err(JobError::retryable)?;
        let (id, first_message_id, rate_wait) = match begun {
            // Two jobs for one message (the same key asked for twice while
            // the first still runs) never both send it.
            Begun::Busy => {
                return Err(JobError::retry_after(
                    format!(
                        "message `{dedup_key}` is being sent by another job right now; looking again later"
                    ),
                    Duration::from_secs(5),
                ));
            }
            Begun::OtherRecipient(other) => {
                return Err(JobError::permanent(format!(
                    "dedup key `{dedup_key}` belongs to a message to {other}, not to {recipient}; give each message its own key"
                )));
            }
            Begun::Done(status) => {
                tracing::info!(
                    dedup_key,
                    status = status.as_str(),
                    "mail already handled under this key; not sending again"
                );
                return Ok(());
            }
            Begun::Suppressed(reason) => {
                tracing::info!(status = "suppressed", %reason, "mail not sent: address suppressed");
                self.smtp
                    .stats()
                    .record(&config.name, job.kind.as_str(), SendOutcome::Suppressed);
                return Ok(());
            }
            Begun::Unknown => {
                tracing::warn!(
                    dedup_key,
                    "a worker died during this bulk message's SMTP transaction; marked unknown, not resent"
                );
                return Ok(());
            }
            Begun::Send { id, message_id } => (id, message_id, None),
            Begun::Wait {
                id,
                message_id,
                wait,
            } => (id, message_id, Some(wait)),
        };
        // Send and Wait come with the lock's guard (`holds_lock`).
        let Some(mut guard) = guard else {
            return Err(JobError::retryable(
                "send log: a message to send came without its lock",
            ));
        };
        if let Some(wait) = rate_wait {
            self.wait_for_rate_slot(&guard, id, &ctx, config, rate, wait)
                .await?;
        }
        let slot = match early_slot {
            Some(slot) => slot,
            None => self.reserve_slot(config).await?,
        };
        // A resend keeps the Message-ID of the first try, so a receiver that
        // got both can tell they are one message.
        let mut message = if first_message_id == message_id {
            message
        } else {
            build(&job, &mail, from, to, &first_message_id)?
        };
        if let Some(signer) = self.smtp.signer(config) {
            signer.sign(&mut message);
        }
        // Automatic answers go out with a null sender (RFC 3834); other
        // mail with a VERP return path naming this row, so a bounce finds it.
        let envelope = if job.kind == MailKind::AutoReply {
            crate::smtp::null_sender_envelope(&message)
        } else if let Some(signer) = verp_signer {
            crate::smtp::verp_envelope(
                &message,
                &crate::smtp::bounce_base(config, self.bounce_address.as_deref()),
                &crate::bounce::SendReference::Message(id).signed_tag(signer),
            )
        } else {
            message.envelope().clone()
        };
        guard.on_the_wire();
        let sent = self
            .smtp
            .send(&slot, config, &envelope, &message.formatted())
            .await;
        // The connection is free for the next message while this one's outcome is written.
        drop(slot);
        // A message the server never answered for may have been accepted:
        // bulk mail is then not resent by itself (the README's rule for an
        // interrupted transaction); other mail is, like after a 4xx.
        let unanswered_bulk =
            job.kind.is_at_most_once() && matches!(sent, Err(SmtpError::Unanswered { .. }));
        let counted = match &sent {
            Ok(_) => SendOutcome::Sent,
            Err(_) if unanswered_bulk => SendOutcome::Unknown,
            Err(SmtpError::Permanent { .. }) => SendOutcome::Failed,
            Err(_) if ctx.is_last_attempt() => SendOutcome::Failed,
            Err(_) => SendOutcome::Deferred,
        };
        self.smtp
            .stats()
            .record(&config.name, job.kind.as_str(), counted);
        let (failed, code, error, result) = match sent {
            Ok(accepted) => {
                self.record_sent(guard, id, accepted.code, &accepted.text)
                    .await
                    .map_err(JobError::retryable)?;
                tracing::info!(smtp = %config.name, code = accepted.code, message_id = %first_message_id, "mail sent");
                return Ok(());
            }
            Err(e) if unanswered_bulk => {
                let error = format!(
                    "{e}; a bulk message is not resent by itself (`dklctl mail resend` does it on purpose)"
                );
                self.send_log
                    .finish(guard, id, Finish::Unknown { error: &error })
                    .await
                    .map_err(JobError::retryable)?;
                tracing::warn!(smtp = %config.name, message_id = %first_message_id, "no answer to a bulk message; marked unknown");
                return Ok(());
            }
            Err(e @ SmtpError::Permanent { .. }) => {
                (true, e.code(), e.to_string(), Err(JobError::permanent(e)))
            }
            Err(e) if ctx.is_last_attempt() => (
                true,
                e.code(),
                format!("gave up after {} attempts: {e}", ctx.attempt),
                Err(JobError::retryable(e)),
            ),
            Err(e) => (false, e.code(), e.to_string(), Err(JobError::retryable(e))),
        };
        let how = if failed {
            Finish::Failed {
                code,
                error: &error,
            }
        } else {
            Finish::Retry {
                code,
                error: &error,
            }
        };
        self.send_log
            .finish(guard, id, how)
            .await
            .map_err(JobError::retryable)?;
        result
    }

    /// One of `config`'s connections, waited for at most [`SLOT_WAIT`]: when
    /// every one is busy (a slow server, a burst) the job steps back without
    /// using an attempt, instead of spending its own timeout in the line.
    async fn reserve_slot(&self, config: &SmtpConfig) -> Result<SmtpSlot, JobError> {
        match tokio::time::timeout(SLOT_WAIT, self.smtp.reserve(config)).await {
            Ok(slot) => slot.map_err(JobError::retryable),
            Err(_) => Err(JobError::snooze(
                Duration::from_secs(5),
                format!(
                    "all {} connections of SMTP `{}` are busy",
                    config.pool_size, config.name
                ),
            )),
        }
    }

    /// Records an accepted message, trying a few times over half a minute: a
    /// lost `sent` would send it again. The first try goes through the send
    /// log (which also releases the lock); later ones straight to the table.
    async fn record_sent(
        &self,
        guard: KeyGuard,
        id: uuid::Uuid,
        code: u16,
        reply: &str,
    ) -> Result<(), SendLogError> {
        let Err(mut error) = self
            .send_log
            .finish(guard, id, Finish::Sent { code, reply })
            .await
        else {
            return Ok(());
        };
        let mut wait = Duration::from_millis(100);
        for _ in 0..8 {
            tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "cannot record an accepted message as sent; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
            match verzonden_emails::mark_sent(&self.pool, id, code, reply).await {
                Ok(()) => return Ok(()),
                Err(e) => error = SendLogError(e.to_string()),
            }
        }
        Err(error)
    }

    /// The provider's limit, shared by every worker: a full second is
    /// waited out here; a full hour snoozes the job (no attempt used).
    async fn wait_for_rate_slot(
        &self,
        guard: &KeyGuard,
        id: uuid::Uuid,
        ctx: &JobContext,
        config: &SmtpConfig,
        rate: RateLimit,
        mut wait: Duration,
    ) -> Result<(), JobError> {
        loop {
            if wait > Duration::from_secs(2) {
                // The guard, dropped by the caller, releases the lock.
                return Err(JobError::snooze(
                    wait,
                    format!("SMTP `{}` reached its hourly limit", config.name),
                ));
            }
            tokio::time::sleep(wait).await;
            match self
                .send_log
                .start_send(guard, id, &ctx.id.0, &config.name, rate)
                .await
                .map_err(JobError::retryable)?
            {
                None => return Ok(()),
                Some(next) => wait = next,
            }
        }
    }

    /// The mail's subject and bodies: from its template, or as given.
    async fn render(&self, job: &SendEmail) -> Result<RenderedMail, JobError> {
        let variables = serde_json::Value::Object(job.variables.clone());
        let template = match (&job.template, &job.subject, &job.html) {
            (Some(name), _, _) => {
                let row = self.templates.get(&self.pool, name).await.map_err(JobError::retryable)?.ok_or_else(|| {
                    JobError::permanent(format!("no template named `{name}` in email_templates; `dklctl templates sync` loads the defaults"))
                })?;
                if !row.is_active {
                    return Err(JobError::permanent(format!(
                        "template `{name}` is not active (email_templates.is_active)"
                    )));
                }
                row.template()
            }
            (None, Some(subject), Some(html)) => {
                if subject.contains(['\r', '\n']) {
                    return Err(JobError::permanent(
                        "the subject has a line break (CR or LF); it would inject mail headers",
                    ));
                }
                let text = job.text.clone().unwrap_or_else(|| html_to_text(html));
                return Ok(RenderedMail {
                    subject: subject.clone(),
                    html: html.clone(),
                    text,
                });
            }
            _ => {
                return Err(JobError::permanent(
                    "a send_email job needs `template`, or `subject` and `html`",
                ));
            }
        };
        render_template(&self.renderer, &template, &variables)
    }
}

fn render_template(
    renderer: &Renderer,
    template: &MailTemplate,
    variables: &serde_json::Value,
) -> Result<RenderedMail, JobError> {
    renderer
        .render(template, variables)
        .map_err(JobError::permanent)
}

/// The MIME message: multipart/alternative text + HTML, our Message-ID,
/// Reply-To and the allowed extra headers.
fn build(
    job: &SendEmail,
    mail: &RenderedMail,
    from: Mailbox,
    to: Mailbox,
    message_id: &str,
) -> Result<Message, JobError> {
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(&mail.subject)
        .message_id(Some(message_id.to_string()));
    if let Some(reply_to) = &job.reply_to {
        let mbox = crate::address::mailbox(reply_to)
            .map_err(|e| JobError::permanent(format!("reply_to: {e}")))?;
        builder = builder.reply_to(mbox);
    }
    for (name, value) in &job.headers {
        let Some(allowed) = ALLOWED_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(name))
        else {
            return Err(JobError::permanent(format!(
                "header `{name}` is not allowed; allowed: {}",
                ALLOWED_HEADERS.join(", ")
            )));
        };
        if value.contains(['\r', '\n']) {
            return Err(JobError::permanent(format!(
                "header `{name}` has a line break"
            )));
        }
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(allowed),
            value.clone(),
        ));
    }
    if job.kind == MailKind::AutoReply
        && !job
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("Auto-Submitted"))
    {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".into(),
        ));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            mail.html.clone(),
        ))
        .map_err(|e| JobError::permanent(format!("cannot build the message: {e}")))
}
