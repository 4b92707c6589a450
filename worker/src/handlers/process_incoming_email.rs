//! `process_incoming_email`: the follow-up of newly stored messages, a
//! stored batch per job (up to 100, queue `incoming`).
//!
//! In one transaction, with the messages' rows locked, for each message:
//! 1. it records what the message is ([`crate::mime::classify`]);
//! 2. a bounce records its failed recipients in `email_bounces` and may
//!    suppress the address we sent to ([`crate::store::bounces`]); a
//!    feedback report records a complaint and suppresses for bulk mail;
//! 3. mail to a `List-Unsubscribe` mailto address (`…+u-<token>@…`)
//!    unsubscribes the subscriber its signed token names;
//! 4. a person's mail that an active rule matches gets one automatic
//!    answer: the RFC 3834 checks ([`crate::autoreply`]), then — for the
//!    whole batch at once — the rules, the reply ledger (per rule and
//!    window, per sender and hour) and the answers' `send_email` jobs, all
//!    committed together. Why a message got no answer is recorded on it.
//!
//! Reading the raw message again (not the stored columns) keeps this
//! correct when a message is reprocessed after a parser fix; every step is
//! idempotent (unique keys), so a retried job changes nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use dkl_shared::config::ResponsesConfig;
use dkl_shared::jobs::{
    EnqueueOptions, JobContext, JobError, Registry, enqueue_many_on, enqueue_on,
};
use dkl_shared::kinds::{MailKind, ProcessIncomingEmail, SendEmail, UploadImage};
use mail_parser::{Message, MessageParser};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::autoreply::{self, NoReply, Us};
use crate::bounce::{self, SendReference};
use crate::mime::classify::{Classification, Verdict, classify_message};
use crate::newsletter::token::{Subject, TokenKey, today};
use crate::smtp::stats::MailStats;
use crate::store::auto_responses::{self, Refusal, ReplyOutcome};
use crate::store::bounces::{self, SoftBounceRule};
use crate::store::incoming_emails::{self, ReplyContext};

/// Messages older than this (by the time they were received) are not
/// answered.
const MAX_AGE_TO_ANSWER: chrono::Duration = chrono::Duration::days(3);

/// What the follow-up needs.
pub struct Processor {
    /// The database.
    pub pool: PgPool,
    /// Our addresses and Message-ID domains.
    pub us: Us,
    /// Each IMAP account's address, by account name.
    pub account_addresses: BTreeMap<String, String>,
    /// Reply cap, soft-bounce rule.
    pub config: ResponsesConfig,
    /// The unsubscribe token key.
    pub keys: TokenKey,
    /// Counters for `/metrics`.
    pub stats: Arc<MailStats>,
    /// `DKL_IMAGE_UPLOAD_ACCOUNTS`: accounts whose image attachments are uploaded.
    pub image_accounts: Vec<String>,
}

/// Registers the `process_incoming_email` handler.
pub fn register(registry: &mut Registry, processor: Arc<Processor>) {
    registry.register::<ProcessIncomingEmail, _, _>(
        move |job: ProcessIncomingEmail, _ctx: JobContext| {
            let processor = processor.clone();
            async move { processor.process_batch(&job.ids()).await }
        },
    );
}

/// A message that may be answered, once a rule and the ledger agree.
struct Candidate {
    /// Its place in the batch's outcomes.
    at: usize,
    /// Where the answer goes (the Return-Path).
    to: String,
}

/// What the checks of one message decided, or that rules decide next.
enum Next {
    Decided(Decision),
    Candidate(String),
}

/// Whether and why a message is answered.
struct Decision {
    outcome: ReplyOutcome,
    reason: String,
    code: &'static str,
    rule: Option<Uuid>,
}

impl Decision {
    fn not(code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            outcome: ReplyOutcome::NotReplied,
            reason: reason.into(),
            code,
            rule: None,
        }
    }
}

impl Processor {
    /// The follow-up of this deployment (`config`: our addresses, the IMAP
    /// accounts', the reply cap, the soft-bounce rule, the token key).
    pub fn new(pool: &PgPool, config: &dkl_shared::config::Config) -> Self {
        Self {
            pool: pool.clone(),
            us: super::our_identity(config),
            account_addresses: config
                .imap
                .accounts
                .iter()
                .filter_map(|a| Some((a.name.clone(), a.address.clone()?)))
                .collect(),
            config: config.responses.clone(),
            keys: TokenKey::new(config.newsletter.unsubscribe_secret.clone()),
            stats: Arc::default(),
            image_accounts: config.images.upload_accounts.clone(),
        }
    }

    /// Follows up message `id`.
    pub async fn process(&self, id: Uuid) -> Result<(), JobError> {
        self.process_batch(&[id]).await
    }

    /// Follows up the messages `ids` together: one transaction, the rules
    /// judged, the ledger written, the answers enqueued and the outcomes
    /// recorded each in one statement. When the database refuses a value of
    /// one of them, each is followed up on its own, so one bad message
    /// never stalls the others.
    pub async fn process_batch(&self, ids: &[Uuid]) -> Result<(), JobError> {
        if ids.len() == 1 {
            return self.process_alone(ids[0]).await;
        }
        match self.process_together(ids).await {
            Ok(()) => Ok(()),
            Err(Failure::Retry(e)) => Err(e),
            Err(Failure::Refused(reason)) => {
                tracing::info!(%reason, messages = ids.len(), "a follow-up batch was refused; following its messages up one by one");
                for id in ids {
                    self.process_alone(*id).await?;
                }
                Ok(())
            }
        }
    }

    async fn process_alone(&self, id: Uuid) -> Result<(), JobError> {
        match self.process_together(&[id]).await {
            Ok(()) => Ok(()),
            Err(Failure::Retry(e)) => Err(e),
            Err(Failure::Refused(reason)) => {
                // A message the database cannot take is marked processed
                // with the reason, never retried for ever.
                let reason = crate::mime::text(&format!(
                    "the follow-up was refused by the database ({reason}); not answered"
                ));
                tracing::warn!(%id, %reason, "incoming email follow-up refused");
                let mut conn = self.pool.acquire().await.map_err(retry)?;
                auto_responses::record_outcome(
                    &mut conn,
                    id,
                    None,
                    ReplyOutcome::NotReplied,
                    &reason,
                    None,
                )
                .await
                .map_err(retry)?;
                self.stats.response("auto_replies_suppressed", "refused", 1);
                Ok(())
            }
        }
    }

    async fn process_together(&self, ids: &[Uuid]) -> Result<(), Failure> {
        let mut tx = self.pool.begin().await?;
        // Durability comes from what follows this transaction, not from
        // waiting for its own WAL flush: the job's outcome, and the send of
        // any answer it enqueued, commit synchronously later, and WAL is
        // flushed in order, so both make this commit durable first. Lost in
        // a crash before either, the follow-up simply runs again (every
        // step is idempotent).
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let mut rows = incoming_emails::lock_for_processing(&mut tx, ids).await?;
        // Locked in id order; followed up in the order they were stored, so
        // of two messages from one sender the first is the one answered.
        rows.sort_by_key(|r| ids.iter().position(|id| *id == r.id));
        if rows.len() < ids.len() {
            // Deleted meanwhile (retention, an operator): nothing to follow up.
            tracing::info!(
                gone = ids.len() - rows.len(),
                "incoming emails no longer exist; nothing to process for them"
            );
        }
        let parsed: Vec<Option<Message<'_>>> = rows
            .iter()
            .map(|r| {
                r.raw
                    .as_deref()
                    .and_then(|raw| MessageParser::default().parse(raw))
            })
            .collect();
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut candidates = Vec::new();
        for (row, message) in rows.iter().zip(&parsed) {
            let verdict = match (&row.raw, message) {
                (_, Some(message)) => Some(classify_message(message)),
                (Some(_), None) => Some(Verdict {
                    class: Classification::Person,
                    reason: "no header could be read; treated as a person's mail".into(),
                }),
                (None, _) => None,
            };
            let next = match (message, &verdict) {
                (Some(message), Some(verdict)) => {
                    self.follow_up(&mut tx, row, message, verdict).await?
                }
                _ => Next::Decided(Decision::not(
                    "unreadable",
                    "the message could not be read (quarantined or stored without its body)",
                )),
            };
            let decision = match next {
                Next::Decided(d) => d,
                Next::Candidate(to) => {
                    candidates.push(Candidate {
                        at: outcomes.len(),
                        to,
                    });
                    // Replaced once the rules and the ledger have spoken.
                    Decision::not("no_rule", "")
                }
            };
            outcomes.push((row, verdict, decision));
        }
        if !candidates.is_empty() {
            self.answer(&mut tx, &mut outcomes, &candidates).await?;
        }
        let records: Vec<auto_responses::Outcome> = outcomes
            .iter()
            .map(|(row, verdict, d)| auto_responses::Outcome {
                email: row.id,
                verdict: verdict.clone(),
                outcome: d.outcome,
                reason: d.reason.clone(),
                rule: d.rule,
            })
            .collect();
        auto_responses::record_outcomes(&mut tx, &records).await?;
        // People's photos only: not a bounce's or a mailing list's images.
        let from_people: Vec<&ReplyContext> = outcomes
            .iter()
            .filter(|(_, v, _)| {
                v.as_ref()
                    .is_some_and(|v| matches!(v.class, Classification::Person))
            })
            .map(|(row, _, _)| *row)
            .collect();
        self.enqueue_image_uploads(&mut tx, &from_people).await?;
        tx.commit().await?;
        for (row, verdict, d) in &outcomes {
            match d.outcome {
                ReplyOutcome::Replied => self.stats.response("auto_replies", "replied", 1),
                ReplyOutcome::NotReplied => {
                    self.stats.response("auto_replies_suppressed", d.code, 1)
                }
            }
            if let Some(v) = verdict {
                tracing::info!(id = %row.id, class = v.class.as_str(), reason = %v.reason, auto_reply = d.outcome.as_str(), why = %d.reason, "incoming email processed");
            }
        }
        Ok(())
    }

    /// The opt-in rule of `DKL_IMAGE_UPLOAD_ACCOUNTS`: the image
    /// attachments of these accounts' mail go to the image store, one
    /// `upload_image` job each, enqueued with the follow-up's outcome.
    async fn enqueue_image_uploads(
        &self,
        tx: &mut PgConnection,
        rows: &[&ReplyContext],
    ) -> Result<(), Failure> {
        let ids: Vec<Uuid> = rows
            .iter()
            .filter(|r| self.image_accounts.contains(&r.account_type))
            .map(|r| r.id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let attachments =
            crate::store::images::image_attachments_to_upload(tx, &ids, &self.image_accounts)
                .await?;
        for (email, position) in attachments {
            let upload = UploadImage {
                incoming_email_id: Some(email),
                position: Some(position),
                ..UploadImage::default()
            };
            // Followed up again while the upload waits: still one job.
            let dedup = EnqueueOptions::dedup(format!("upload_image:{email}:{position}"));
            enqueue_on(tx, &upload, dedup)
                .await
                .map_err(JobError::retryable)?;
        }
        Ok(())
    }

    /// The rules of each candidate, then the ledger (every answer of the
    /// batch in one round trip, in sender order), then the answers' jobs.
    async fn answer(
        &self,
        tx: &mut PgConnection,
        outcomes: &mut [(&ReplyContext, Option<Verdict>, Decision)],
        candidates: &[Candidate],
    ) -> Result<(), Failure> {
        let ids: Vec<Uuid> = candidates.iter().map(|c| outcomes[c.at].0.id).collect();
        let verdicts = auto_responses::judge(tx, &ids).await?;
        let mut by_email: BTreeMap<Uuid, Vec<&auto_responses::RuleVerdict>> = BTreeMap::new();
        for v in &verdicts {
            by_email.entry(v.email_id).or_default().push(v);
        }
        let mut requests = Vec::new();
        let mut chosen = Vec::new();
        for c in candidates {
            let row = outcomes[c.at].0;
            let rules = by_email.remove(&row.id).unwrap_or_default();
            match choose_rule(&rules, &row.account_type) {
                Ok(rule) => {
                    requests.push(auto_responses::ReplyRequest {
                        email: row.id,
                        rule: rule.id,
                        sender: c.to.clone(),
                        window_secs: rule.reply_window_secs,
                        dedup_key: format!("auto_reply:{}", row.id),
                    });
                    chosen.push((c.at, rule));
                }
                Err(decision) => outcomes[c.at].2 = decision,
            }
        }
        if requests.is_empty() {
            return Ok(());
        }
        // Sorted by sender: concurrent batches take the per-sender locks in one order.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|a, b| requests[*a].sender.cmp(&requests[*b].sender));
        let requests: Vec<_> = order.iter().map(|i| requests[*i].clone()).collect();
        let chosen: Vec<_> = order.iter().map(|i| chosen[*i]).collect();
        let refusals =
            auto_responses::record_replies(tx, &requests, self.config.max_replies_per_hour).await?;
        let mut jobs = Vec::new();
        for ((request, (at, rule)), refusal) in requests.iter().zip(chosen).zip(refusals) {
            let to = &request.sender;
            let not = |code, reason: String| Decision {
                outcome: ReplyOutcome::NotReplied,
                reason,
                code,
                rule: Some(rule.id),
            };
            outcomes[at].2 = match refusal {
                Some(Refusal::Window) => not(
                    "window",
                    format!(
                        "rule `{}` answered {to} within its reply window already",
                        rule.name
                    ),
                ),
                Some(Refusal::HourlyCap) => not(
                    "hourly_cap",
                    format!(
                        "{to} got {} automatic answers in the last hour (DKL_AUTOREPLY_MAX_PER_HOUR)",
                        self.config.max_replies_per_hour
                    ),
                ),
                Some(Refusal::Already) => Decision {
                    outcome: ReplyOutcome::Replied,
                    reason: format!("answered by rule `{}` (recorded before)", rule.name),
                    code: "replied",
                    rule: Some(rule.id),
                },
                None => {
                    jobs.push(reply_job(
                        outcomes[at].0,
                        &rule.template,
                        to,
                        request.dedup_key.clone(),
                    ));
                    Decision {
                        outcome: ReplyOutcome::Replied,
                        reason: format!("answered by rule `{}` to {to}", rule.name),
                        code: "replied",
                        rule: Some(rule.id),
                    }
                }
            };
        }
        enqueue_many_on(tx, &jobs)
            .await
            .map_err(JobError::retryable)?;
        Ok(())
    }

    async fn follow_up(
        &self,
        tx: &mut PgConnection,
        row: &ReplyContext,
        message: &Message<'_>,
        verdict: &Verdict,
    ) -> Result<Next, Failure> {
        match verdict.class {
            Classification::DeliveryStatus => self.record_bounce(tx, row.id, message).await?,
            Classification::FeedbackReport => self.record_complaint(tx, row.id, message).await?,
            _ => {}
        }
        if let Some(decision) = self.mailto_unsubscribe(tx, message).await? {
            return Ok(Next::Decided(decision));
        }
        Ok(self.screen(row, message, verdict))
    }

    async fn record_bounce(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        message: &Message<'_>,
    ) -> Result<(), Failure> {
        let report = bounce::read_bounce(message);
        let signer = self.keys.signer(&self.pool).await?;
        let send = bounces::find_send(
            tx,
            SendReference::in_headers(message, signer),
            &report.returned_message_ids,
        )
        .await?;
        let rule = SoftBounceRule {
            limit: self.config.soft_bounce_limit,
            days: self.config.soft_bounce_days,
        };
        let recorded = bounces::record_bounce(tx, id, &report, send.as_ref(), rule).await?;
        self.stats.response("bounces", "hard", recorded.hard as u64);
        self.stats.response("bounces", "soft", recorded.soft as u64);
        tracing::info!(%id, format = %report.format, recipients = report.recipients.len(), matched = send.is_some(), suppressed = recorded.suppressed.len(), "bounce recorded");
        if report.recipients.is_empty() {
            tracing::warn!(%id, "a bounce whose failed recipients could not be read; kept for a person to look at (dklctl mail show)");
        }
        Ok(())
    }

    async fn record_complaint(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        message: &Message<'_>,
    ) -> Result<(), Failure> {
        let Some(complaint) = bounce::arf::read(message) else {
            return Ok(());
        };
        let send = bounces::find_send(tx, None, &complaint.returned_message_ids).await?;
        let suppressed = bounces::record_complaint(tx, id, &complaint, send.as_ref()).await?;
        self.stats.response("complaints", complaint.label(), 1);
        tracing::info!(%id, feedback_type = %complaint.feedback_type, suppressed = suppressed.is_some(), "complaint recorded");
        Ok(())
    }

    /// A `List-Unsubscribe` mailto request: `+u-<token>` in an address it
    /// was sent to, or (for copies to an address that is no subscriber)
    /// `unsubscribe <token>` as its subject. A forged or expired token
    /// changes nothing.
    async fn mailto_unsubscribe(
        &self,
        tx: &mut PgConnection,
        message: &Message<'_>,
    ) -> Result<Option<Decision>, Failure> {
        let in_address = unsubscribe_token(message);
        let in_subject = message
            .subject()
            .and_then(|s| s.trim().strip_prefix("unsubscribe "))
            .map(|t| t.trim().to_string())
            .filter(|t| t.contains('.'));
        if in_address.is_none() && in_subject.is_none() {
            return Ok(None);
        }
        let signer = self.keys.signer(&self.pool).await?;
        let verified = match (&in_address, &in_subject) {
            (Some(token), _) => signer
                .verify_from_address(token, today())
                .map(Subject::Gebruiker),
            (None, Some(token)) => signer.verify(token, today()),
            (None, None) => return Ok(None),
        };
        let subject = match verified {
            Ok(subject) => subject,
            Err(e) => {
                self.stats.response("unsubscribes", "refused", 1);
                tracing::warn!(error = %e, "mailto unsubscribe refused");
                return Ok(Some(Decision::not(
                    "unsubscribe_request",
                    format!(
                        "an unsubscribe request with a token that is refused ({e}); nothing changed"
                    ),
                )));
            }
        };
        let (gebruiker, address) = match &subject {
            Subject::Gebruiker(id) => (Some(*id), String::new()),
            Subject::Address(a) => (None, a.clone()),
        };
        let done = crate::store::newsletters::unsubscribe(
            tx,
            gebruiker,
            &address,
            "list-unsubscribe-mailto",
        )
        .await?;
        self.stats.response("unsubscribes", "done", 1);
        let reason = match done {
            Some(_) => "an unsubscribe request (List-Unsubscribe mailto): unsubscribed",
            None => {
                "an unsubscribe request (List-Unsubscribe mailto) for a subscriber who no longer exists"
            }
        };
        Ok(Some(Decision::not("unsubscribe_request", reason)))
    }

    /// The checks that need no rule: RFC 3834, the class, the age, the
    /// Return-Path to answer.
    fn screen(&self, row: &ReplyContext, message: &Message<'_>, verdict: &Verdict) -> Next {
        let account_address = self.account_addresses.get(&row.account_type);
        if let Some(blocker) =
            autoreply::reply_blocker(message, &self.us, account_address.map(String::as_str))
        {
            return Next::Decided(Decision::not(blocker.code(), blocker.to_string()));
        }
        if verdict.class != Classification::Person {
            return Next::Decided(Decision::not(
                "not_a_person",
                format!("{} ({})", verdict.class.as_str(), verdict.reason),
            ));
        }
        // An answer days late helps nobody, and an imported archive must
        // not answer everyone who ever wrote.
        if row.received_at < chrono::Utc::now() - MAX_AGE_TO_ANSWER {
            return Next::Decided(Decision::not(
                "too_old",
                format!(
                    "received {}, more than {} days ago: too old to answer",
                    row.received_at.to_rfc3339(),
                    MAX_AGE_TO_ANSWER.num_days()
                ),
            ));
        }
        // reply_blocker refused messages without a usable Return-Path.
        match autoreply::return_path(message).filter(|a| a.contains('@')) {
            Some(to) => Next::Candidate(to),
            None => Next::Decided(Decision::not(
                NoReply::NoReturnPath.code(),
                NoReply::NoReturnPath.to_string(),
            )),
        }
    }
}

/// The first rule that matches, or why none answers (broken rules are
/// skipped and named).
fn choose_rule<'r>(
    rules: &[&'r auto_responses::RuleVerdict],
    account: &str,
) -> Result<&'r auto_responses::RuleVerdict, Decision> {
    let mut broken = Vec::new();
    for rule in rules {
        match rule.matches() {
            Some(true) => return Ok(rule),
            Some(false) => {}
            None => {
                tracing::warn!(rule = %rule.name, "auto-response rule has a pattern PostgreSQL cannot use; skipped (fix it in auto_responses)");
                broken.push(rule.name.clone());
            }
        }
    }
    let mut reason = if rules.is_empty() {
        format!("no active auto-response rule for account `{account}`")
    } else {
        format!("none of the {} active rules matched", rules.len())
    };
    if !broken.is_empty() {
        reason.push_str(&format!(
            " (rules skipped for a broken pattern: {})",
            broken.join(", ")
        ));
    }
    Err(Decision::not("no_rule", reason))
}

/// The `send_email` job of an automatic answer to `row`.
fn reply_job(row: &ReplyContext, template: &str, to: &str, dedup_key: String) -> SendEmail {
    let mut variables = serde_json::Map::new();
    let naam = row
        .sender_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| row.sender_email.clone());
    variables.insert("naam".into(), naam.into());
    variables.insert(
        "onderwerp".into(),
        row.subject.clone().unwrap_or_default().into(),
    );
    let mut headers = BTreeMap::new();
    headers.insert("Auto-Submitted".into(), "auto-replied".into());
    if let Some(parent) = row.message_id.as_deref().filter(|m| !m.trim().is_empty()) {
        headers.insert("In-Reply-To".into(), autoreply::angle(parent));
        headers.insert(
            "References".into(),
            autoreply::references(parent, &row.message_references),
        );
    }
    SendEmail {
        to: to.to_string(),
        template: Some(template.to_string()),
        variables,
        kind: MailKind::AutoReply,
        dedup_key: Some(dedup_key),
        headers,
        ..SendEmail::default()
    }
}

/// The `+u-<token>` of an address the message was sent to.
fn unsubscribe_token(message: &Message<'_>) -> Option<String> {
    bounce::plus_tags(message)
        .into_iter()
        .find_map(|tag| tag.strip_prefix("u-").map(str::to_string))
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("processing incoming email: {e}"))
}

/// Why a follow-up did not finish.
enum Failure {
    /// The database refused a value of this message (SQLSTATE class 22, 23
    /// or 54): trying again cannot help; the message is marked with the
    /// reason instead.
    Refused(String),
    /// Anything else (a lost connection, a deadlock): try again later.
    Retry(JobError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        let class = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.chars().take(2).collect::<String>());
        match class.as_deref() {
            Some("22" | "23" | "54") => Self::Refused(e.to_string()),
            _ => Self::Retry(retry(e)),
        }
    }
}

impl From<JobError> for Failure {
    fn from(e: JobError) -> Self {
        Self::Retry(e)
    }
}
