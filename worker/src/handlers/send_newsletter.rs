//! `send_newsletter`: one lane of a newsletter. Starts the newsletter when
//! it is due (its recipients fixed in one transaction), then sends claimed
//! deliveries on the `newsletter` SMTP configuration until none is left,
//! the newsletter stops sending (paused, cancelled), or the lane's slice of
//! time is up (it hands over to its next run without using an attempt).
//!
//! Nothing twice: a delivery is committed as `sending` before its SMTP
//! transaction begins (and only while the newsletter is sending and the
//! delivery is still this process's), after its SMTP slot is taken (so a
//! mark is not followed by a long wait), and a delivery left `sending` by a
//! dead worker becomes `unknown`, never resent by itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use dkl_shared::config::{NewsletterConfig, SmtpConfig};
use dkl_shared::jobs::{JobContext, JobError, Registry};
use dkl_shared::kinds::{MailKind, SendNewsletter};
use lettre::message::Mailbox;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::newsletter::message::Edition;
use crate::newsletter::token::{Subject, TokenKey};
use crate::newsletter::writer::DeliveryWriter;
use crate::smtp::stats::SendOutcome;
use crate::smtp::{Smtp, SmtpError};
use crate::store::email_templates::TemplateCache;
use crate::store::newsletters::{self, Claimed, Marked, NewsletterStatus, Outcome, OutcomeKind};
use crate::templates::Renderer;

/// How long one run of a lane sends before it hands over (well inside the
/// kind's timeout).
pub const SLICE: Duration = Duration::from_secs(10 * 60);

/// The template every newsletter is rendered with.
pub const TEMPLATE: &str = "newsletter";

/// What the lanes of this process share.
pub struct NewsletterSender {
    /// The database.
    pub pool: PgPool,
    /// SMTP connections (shared with `send_email`).
    pub smtp: Arc<Smtp>,
    /// Template renderer.
    pub renderer: Renderer,
    /// Template rows.
    pub templates: TemplateCache,
    /// Newsletter settings.
    pub config: NewsletterConfig,
    /// Marks and outcomes: one writer (a connection, a sender) per group
    /// of lanes, so two lanes' commits overlap (lane n uses writer n mod len).
    pub writers: Vec<DeliveryWriter>,
    /// Unsubscribe tokens.
    pub keys: TokenKey,
    /// `DKL_BOUNCE_ADDRESS` (the VERP base; unset: bounce@ the From domain).
    pub bounce_address: Option<String>,
    /// Whether mail leaves with a VERP return path.
    pub verp: bool,
    /// `DKL_UNSUBSCRIBE_ADDRESS` (the mailto base; unset: the From address).
    pub unsubscribe_address: Option<String>,
    /// Senders of this process at once (each holds an SMTP connection for
    /// as long as it has deliveries): [`sender_permits`].
    pub senders: Arc<tokio::sync::Semaphore>,
}

/// How many newsletter senders a process runs at once: every connection of
/// the newsletter SMTP configuration, but one when that configuration also
/// carries other mail (no `DKL_SMTP_NEWSLETTER_*` of its own), so a
/// password-reset mail never waits for a newsletter to finish.
pub fn sender_permits(smtp: &Smtp) -> usize {
    let newsletter = smtp.config_for(MailKind::Newsletter);
    let shared = [
        MailKind::Transactional,
        MailKind::Admin,
        MailKind::AutoReply,
    ]
    .into_iter()
    .any(|kind| smtp.config_for(kind).name == newsletter.name);
    if shared {
        // With a single shared connection a newsletter sender still gets it
        // (and holds it between messages): give that configuration two
        // connections, or the newsletter one of its own.
        newsletter.pool_size.saturating_sub(1).max(1)
    } else {
        newsletter.pool_size.max(1)
    }
}

/// Registers the `send_newsletter` handler.
pub fn register(registry: &mut Registry, sender: Arc<NewsletterSender>) {
    registry.register::<SendNewsletter, _, _>(move |job, ctx| {
        let sender = sender.clone();
        async move { sender.run_lane(job, ctx).await }
    });
}

/// A delivery committed as `sending`, its message built and signed.
struct Ready {
    id: i64,
    message: lettre::Message,
    envelope: lettre::address::Envelope,
}

/// Why a lane's senders stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Nothing left to claim.
    Drained,
    /// The newsletter is not sending any more (paused, cancelled).
    NotSending,
    /// The slice is up or the worker shuts down.
    HandOver,
    /// The hourly rate limit is reached.
    RateLimited(Duration),
}

/// One run of a lane: the deliveries it claimed and how it stops.
struct Lane<'a> {
    owner: &'a NewsletterSender,
    writer: &'a DeliveryWriter,
    newsletter: Uuid,
    me: Uuid,
    edition: Edition,
    config: &'a SmtpConfig,
    batch: i64,
    queue: Mutex<VecDeque<Claimed>>,
    stop: std::sync::Mutex<Option<Stop>>,
    stopping: AtomicBool,
    deadline: Instant,
    /// The highest delivery id claimed so far (where the next claim looks).
    position: std::sync::atomic::AtomicI64,
    /// Mark the next delivery while one is on the wire (not under a rate
    /// limit).
    mark_ahead: bool,
}

impl NewsletterSender {
    async fn run_lane(&self, job: SendNewsletter, ctx: JobContext) -> Result<(), JobError> {
        let id = job.newsletter_id;
        let Some(newsletter) = newsletters::get(&self.pool, id)
            .await
            .map_err(JobError::retryable)?
        else {
            return Err(JobError::permanent(format!(
                "no newsletter {id} (newsletters.id)"
            )));
        };
        match newsletter.status {
            NewsletterStatus::Draft if job.by_status => {
                tracing::info!(newsletter = %id, lane = job.lane, "newsletter was unscheduled (back to draft); lane ends");
                return Ok(());
            }
            NewsletterStatus::Draft | NewsletterStatus::Scheduled => {
                if let Some(at) = newsletter.scheduled_send_time
                    && at > Utc::now()
                {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    return Err(JobError::snooze(
                        wait,
                        format!("newsletter {id} is scheduled for {at}"),
                    ));
                }
                let status = newsletters::start(&self.pool, id)
                    .await
                    .map_err(JobError::retryable)?;
                // Started by an admin's job row rather than by scheduling:
                // the other lanes join (they exist already otherwise).
                newsletters::enqueue_lanes(&self.pool, id)
                    .await
                    .map_err(JobError::retryable)?;
                tracing::info!(newsletter = %id, status = ?status, "newsletter started; recipients fixed");
            }
            NewsletterStatus::Sending => {}
            other => {
                tracing::info!(newsletter = %id, status = other.as_str(), lane = job.lane, "newsletter not sending; lane ends");
                return Ok(());
            }
        }
        let Some(newsletter) = newsletters::get(&self.pool, id)
            .await
            .map_err(JobError::retryable)?
        else {
            return Ok(());
        };
        if newsletter.status != NewsletterStatus::Sending {
            return Ok(());
        }
        let edition = self.edition(&newsletter).await?;
        let writer = self
            .writers
            .get(usize::from(job.lane) % self.writers.len().max(1))
            .ok_or_else(|| JobError::permanent("no newsletter delivery writer configured"))?;
        let me = writer.sender().await.map_err(JobError::retryable)?;
        let (returned, unknown) = newsletters::reclaim(&self.pool)
            .await
            .map_err(JobError::retryable)?;
        if returned + unknown > 0 {
            tracing::warn!(
                returned,
                unknown,
                "deliveries of a dead worker: claimed ones back to pending, those on the wire unknown"
            );
        }
        let config = self.smtp.config_for(MailKind::Newsletter);
        let lane = Lane {
            owner: self,
            writer,
            newsletter: id,
            me,
            edition,
            config,
            batch: (config.pool_size * 4).clamp(16, 512) as i64,
            queue: Mutex::new(VecDeque::new()),
            stop: std::sync::Mutex::new(None),
            stopping: AtomicBool::new(false),
            deadline: Instant::now() + SLICE,
            position: std::sync::atomic::AtomicI64::new(0),
            mark_ahead: config.rate_per_second.is_none() && config.rate_per_hour.is_none(),
        };
        let stop = lane.run(&ctx).await;
        writer.flush().await;
        lane.release_unsent().await;
        self.after(id, stop).await
    }

    /// What a lane does once its senders stopped.
    async fn after(&self, id: Uuid, stop: Stop) -> Result<(), JobError> {
        match stop {
            Stop::HandOver => Err(JobError::snooze(
                Duration::from_millis(100),
                "lane handed over (time slice or shutdown); continues on its next run",
            )),
            Stop::RateLimited(wait) => Err(JobError::snooze(
                wait,
                "the newsletter SMTP configuration reached its hourly limit",
            )),
            Stop::NotSending | Stop::Drained => {
                // A mark refused because the delivery was no longer this
                // sender's (a reconnect) also stops the senders: the lane
                // ends only if the newsletter really stopped.
                let status = newsletters::get(&self.pool, id)
                    .await
                    .map_err(JobError::retryable)?
                    .map(|n| n.status);
                if status != Some(NewsletterStatus::Sending) {
                    tracing::info!(newsletter = %id, status = ?status, "newsletter not sending; lane ends");
                    return Ok(());
                }
                newsletters::reclaim(&self.pool)
                    .await
                    .map_err(JobError::retryable)?;
                if newsletters::finish(&self.pool, id)
                    .await
                    .map_err(JobError::retryable)?
                {
                    tracing::info!(newsletter = %id, "newsletter sent: every delivery is final");
                    return Ok(());
                }
                let left = newsletters::remaining(&self.pool, id)
                    .await
                    .map_err(JobError::retryable)?;
                match left.next_retry {
                    // Retries ahead: this lane comes back for them.
                    Some(at) if left.due == 0 => Err(JobError::snooze(
                        (at - Utc::now()).to_std().unwrap_or_default(),
                        format!(
                            "{} deliveries in flight elsewhere; next retry at {at}",
                            left.in_flight
                        ),
                    )),
                    // Due again already (a reclaim returned some): go on.
                    _ if left.due > 0 => Err(JobError::snooze(
                        Duration::from_millis(100),
                        "deliveries returned by a reclaim; continuing",
                    )),
                    // Others are sending the last ones: look again shortly,
                    // so a sender that dies meanwhile is reclaimed and the
                    // newsletter still finishes.
                    _ => Err(JobError::snooze(
                        Duration::from_secs(2),
                        format!(
                            "{} deliveries in flight; waiting for them to finish",
                            left.in_flight
                        ),
                    )),
                }
            }
        }
    }

    /// The newsletter's template, sender and list settings, once per run.
    async fn edition(&self, newsletter: &newsletters::Newsletter) -> Result<Edition, JobError> {
        let row = self
            .templates
            .get(&self.pool, TEMPLATE)
            .await
            .map_err(JobError::retryable)?
            .ok_or_else(|| {
                JobError::retryable(format!(
                    "no template `{TEMPLATE}` in email_templates; `dklctl templates sync` loads the defaults"
                ))
            })?;
        if !row.is_active {
            return Err(JobError::retryable(format!(
                "template `{TEMPLATE}` is not active (email_templates.is_active); activate it and the newsletter goes on"
            )));
        }
        let config = self.smtp.config_for(MailKind::Newsletter);
        let from: Mailbox = config.from.parse().map_err(|e| {
            JobError::permanent(format!(
                "DKL_SMTP_{}_FROM `{}` is not an address ({e})",
                config.name.to_uppercase(),
                config.from
            ))
        })?;
        let signer = self
            .keys
            .signer(&self.pool)
            .await
            .map_err(JobError::retryable)?;
        Ok(Edition::new(
            newsletter,
            row.template(),
            from,
            &self.config,
            signer.clone(),
        )
        .with_unsubscribe_address(self.unsubscribe_address.as_deref()))
    }
}

impl Lane<'_> {
    /// Runs as many senders as the SMTP configuration has connections until
    /// they stop; returns why.
    async fn run(&self, ctx: &JobContext) -> Stop {
        let senders = self.config.pool_size.max(1);
        let tasks = (0..senders).map(|_| self.sender_loop(ctx));
        futures::future::join_all(tasks).await;
        self.stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(Stop::Drained)
    }

    fn stop_with(&self, why: Stop) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        // The first reason wins, except that "not sending" beats "drained".
        if stop.is_none() || (*stop == Some(Stop::Drained) && why == Stop::NotSending) {
            *stop = Some(why);
        }
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// One SMTP connection's sender: takes the connection first, then marks
    /// each delivery `sending` while the one before is on the wire (so at
    /// most two deliveries per connection are `sending`, plus outcomes not
    /// yet committed).
    async fn sender_loop(&self, ctx: &JobContext) {
        let owner = self.owner;
        // Waits that end when the job is cancelled (shutdown, timeout).
        let permit = tokio::select! {
            p = owner.senders.acquire() => p.ok(),
            _ = ctx.cancelled() => None,
        };
        let Some(_permit) = permit else {
            self.stop_with(Stop::HandOver);
            return;
        };
        let slot = tokio::select! {
            s = owner.smtp.reserve(self.config) => s.map_err(|e| e.to_string()),
            _ = ctx.cancelled() => Err("the job was cancelled".to_string()),
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err(e) => {
                tracing::warn!(error = %e, "no SMTP connection for the newsletter");
                self.stop_with(Stop::HandOver);
                return;
            }
        };
        if !self.mark_ahead {
            // One at a time: under a rate limit a message must go out in
            // the second its slot was taken in.
            while let Some(current) = self.prepare(ctx).await {
                let formatted = current.message.formatted();
                let sent = owner
                    .smtp
                    .send(&slot, self.config, &current.envelope, &formatted)
                    .await;
                self.record(current.id, sent);
            }
            return;
        }
        let mut ready = self.prepare(ctx).await;
        while let Some(current) = ready.take() {
            let formatted = current.message.formatted();
            let (sent, next) = tokio::join!(
                owner
                    .smtp
                    .send(&slot, self.config, &current.envelope, &formatted),
                self.prepare(ctx)
            );
            self.record(current.id, sent);
            ready = next;
        }
    }

    /// The next delivery to send, committed as `sending` with its message
    /// built and signed; None when this sender stops (and why is set).
    async fn prepare(&self, ctx: &JobContext) -> Option<Ready> {
        let owner = self.owner;
        loop {
            if ctx.is_cancelled() || Instant::now() >= self.deadline {
                self.stop_with(Stop::HandOver);
            }
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            let d = match self.next().await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    self.stop_with(Stop::Drained);
                    return None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim newsletter deliveries; handing over");
                    self.stop_with(Stop::HandOver);
                    return None;
                }
            };
            let subject = match d.gebruiker_id {
                Some(id) => Subject::Gebruiker(id),
                None => Subject::Address(d.email.clone()),
            };
            let built = self.edition.build(
                &owner.renderer,
                &d.email,
                d.naam.as_deref(),
                &subject,
                &d.message_id,
            );
            let mut message = match built {
                Ok(m) => m,
                Err(e) => {
                    let error = format!("{e}; fix the newsletter or the template and resend");
                    tracing::warn!(delivery = d.id, error = %error, "newsletter message not built");
                    if let Err(db) =
                        newsletters::fail_unsendable(&owner.pool, self.me, d.id, &error).await
                    {
                        tracing::warn!(error = %db, "cannot record a delivery that failed to render; it goes back with the unsent ones");
                        self.give_back(d).await;
                    }
                    continue;
                }
            };
            if let Some(wait) = self.rate_wait().await {
                self.stop_with(Stop::RateLimited(wait));
                self.give_back(d).await;
                return None;
            }
            match self.writer.mark(self.me, d.id).await {
                Ok(Marked::Sending) => {
                    if let Some(signer) = owner.smtp.signer(self.config) {
                        signer.sign(&mut message);
                    }
                    let envelope = if owner.verp {
                        crate::smtp::verp_envelope(
                            &message,
                            &crate::smtp::bounce_base(self.config, owner.bounce_address.as_deref()),
                            &crate::bounce::SendReference::Delivery(d.id)
                                .signed_tag(self.edition.signer()),
                        )
                    } else {
                        message.envelope().clone()
                    };
                    return Some(Ready {
                        id: d.id,
                        message,
                        envelope,
                    });
                }
                Ok(Marked::Skipped) => {
                    owner.smtp.stats().record(
                        &self.config.name,
                        MailKind::Newsletter.as_str(),
                        SendOutcome::Suppressed,
                    );
                }
                Ok(Marked::Released) => {
                    // Paused or cancelled meanwhile (or no longer ours).
                    self.stop_with(Stop::NotSending);
                    return None;
                }
                Err(e) => {
                    // Not marked: it goes back with the unsent ones (or, if the
                    // writer's session is gone, a reclaim returns it).
                    tracing::warn!(error = %e, "cannot mark a newsletter delivery; handing over");
                    self.stop_with(Stop::HandOver);
                    self.give_back(d).await;
                    return None;
                }
            }
        }
    }

    /// The next claimed delivery, claiming a batch when none is left.
    async fn next(&self) -> Result<Option<Claimed>, sqlx::Error> {
        let mut queue = self.queue.lock().await;
        if let Some(d) = queue.pop_front() {
            return Ok(Some(d));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let claim = |after: i64| {
            newsletters::claim(
                &self.owner.pool,
                self.newsletter,
                self.me,
                self.edition.from().email.domain(),
                after,
                self.batch,
            )
        };
        let after = self.position.load(Ordering::SeqCst);
        let mut claimed = claim(after).await?;
        if claimed.is_empty() && after > 0 {
            // Returned or retried deliveries behind the position.
            claimed = claim(0).await?;
        }
        if let Some(last) = claimed.iter().map(|d| d.id).max() {
            self.position.store(last, Ordering::SeqCst);
        }
        queue.extend(claimed);
        Ok(queue.pop_front())
    }

    /// Counts and queues the outcome of delivery `id`'s SMTP transaction.
    fn record(&self, id: i64, sent: Result<crate::smtp::Accepted, SmtpError>) {
        let owner = self.owner;
        let (kind, counted, code, reply, error) = match sent {
            Ok(a) => (
                OutcomeKind::Sent,
                SendOutcome::Sent,
                Some(a.code),
                Some(a.text),
                None,
            ),
            Err(e @ SmtpError::Unanswered { .. }) => (
                OutcomeKind::Unknown,
                SendOutcome::Unknown,
                None,
                None,
                Some(format!(
                    "{e}; not resent by itself (`dklctl newsletter resend-unknown` does it on purpose)"
                )),
            ),
            Err(e @ SmtpError::Permanent { .. }) => (
                OutcomeKind::Failed,
                SendOutcome::Failed,
                e.code(),
                None,
                Some(e.to_string()),
            ),
            Err(e) => (
                OutcomeKind::Retry,
                SendOutcome::Deferred,
                e.code(),
                None,
                Some(e.to_string()),
            ),
        };
        owner
            .smtp
            .stats()
            .record(&self.config.name, MailKind::Newsletter.as_str(), counted);
        self.writer.outcome(Outcome {
            id,
            sender: self.me,
            result: kind,
            code,
            reply,
            error,
        });
    }

    /// Waits for the shared rate limit's slot; Some(wait) when the hour is full.
    async fn rate_wait(&self) -> Option<Duration> {
        let (per_second, per_hour) = (self.config.rate_per_second, self.config.rate_per_hour);
        if per_second.is_none() && per_hour.is_none() {
            return None;
        }
        loop {
            let wait: Result<f64, _> = sqlx::query_scalar("SELECT dkl_take_send_slot($1, $2, $3)")
                .bind(&self.config.name)
                .bind(per_second.map(|n| n as i32))
                .bind(per_hour.map(|n| n as i32))
                .fetch_one(&self.owner.pool)
                .await;
            match wait {
                Ok(w) if w <= 0.0 => return None,
                Ok(w) if w > 2.0 => return Some(Duration::from_secs_f64(w)),
                Ok(w) => tokio::time::sleep(Duration::from_secs_f64(w)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a send slot; waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Puts one claimed delivery back in the lane's queue (released at the end).
    async fn give_back(&self, d: Claimed) {
        self.queue.lock().await.push_front(d);
    }

    /// Returns the claimed deliveries this run did not send to pending.
    async fn release_unsent(&self) {
        let ids: Vec<i64> = self.queue.lock().await.drain(..).map(|d| d.id).collect();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = newsletters::release(&self.owner.pool, self.me, &ids).await {
            tracing::warn!(error = %e, count = ids.len(), "cannot return unsent deliveries; a reclaim returns them when this worker's sender session ends");
        }
    }
}
