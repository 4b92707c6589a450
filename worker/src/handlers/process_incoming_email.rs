//! `process_incoming_email`: the follow-up of each newly stored message.
//!
//! In one transaction, with the message's row locked:
//! 1. it records what the message is ([`crate::mime::classify`]);
//! 2. a bounce records its failed recipients in `email_bounces` and may
//!    suppress the address we sent to ([`crate::store::bounces`]); a
//!    feedback report records a complaint and suppresses for bulk mail;
//! 3. mail to a `List-Unsubscribe` mailto address (`…+u-<token>@…`)
//!    unsubscribes the subscriber its signed token names;
//! 4. a person's mail that an active rule matches gets one automatic
//!    answer: the RFC 3834 checks ([`crate::autoreply`]), then the reply
//!    ledger (per rule and window, per sender and hour), then the answer's
//!    `send_email` job, all committed together. Why a message got no
//!    answer is recorded on it.
//!
//! Reading the raw message again (not the stored columns) keeps this
//! correct when a message is reprocessed after a parser fix; every step is
//! idempotent (unique keys), so a retried job changes nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use dkl_shared::config::ResponsesConfig;
use dkl_shared::jobs::{EnqueueOptions, JobContext, JobError, Registry, enqueue_on};
use dkl_shared::kinds::{MailKind, ProcessIncomingEmail, SendEmail};
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
}

/// Registers the `process_incoming_email` handler.
pub fn register(registry: &mut Registry, processor: Arc<Processor>) {
    registry.register::<ProcessIncomingEmail, _, _>(
        move |job: ProcessIncomingEmail, _ctx: JobContext| {
            let processor = processor.clone();
            async move { processor.process(job.incoming_email_id).await }
        },
    );
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
        }
    }

    /// Follows up message `id`.
    pub async fn process(&self, id: Uuid) -> Result<(), JobError> {
        match self.process_once(id).await {
            Ok(()) => Ok(()),
            Err(Failure::Retry(e)) => Err(e),
            Err(Failure::Refused(reason)) => {
                // One message the database cannot take never stalls the
                // queue: it is marked processed with the reason.
                let reason = crate::mime::text(&format!(
                    "the follow-up was refused by the database ({reason}); not answered"
                ));
                tracing::warn!(%id, %reason, "incoming email follow-up refused");
                let mut tx = self.pool.begin().await.map_err(retry)?;
                auto_responses::record_outcome(
                    &mut tx,
                    id,
                    ReplyOutcome::NotReplied,
                    &reason,
                    None,
                )
                .await
                .map_err(retry)?;
                incoming_emails::mark_processed(&mut *tx, id, None)
                    .await
                    .map_err(retry)?;
                tx.commit().await.map_err(retry)?;
                self.stats.response("auto_replies_suppressed", "refused", 1);
                Ok(())
            }
        }
    }

    async fn process_once(&self, id: Uuid) -> Result<(), Failure> {
        let raw = incoming_emails::raw(&self.pool, id).await?;
        let parsed = raw
            .as_deref()
            .and_then(|r| MessageParser::default().parse(r));
        let verdict = match (&raw, &parsed) {
            (_, Some(message)) => Some(classify_message(message)),
            (Some(_), None) => Some(Verdict {
                class: Classification::Person,
                reason: "no header could be read; treated as a person's mail".into(),
            }),
            (None, _) => None,
        };
        let mut tx = self.pool.begin().await?;
        let Some(row) = incoming_emails::lock_for_processing(&mut tx, id).await? else {
            // Deleted meanwhile (retention, an operator): nothing to follow up.
            tracing::info!(%id, "incoming email no longer exists; nothing to process");
            return Ok(());
        };
        let decision = match (&parsed, &verdict) {
            (Some(message), Some(verdict)) => {
                self.follow_up(&mut tx, id, &row, message, verdict).await?
            }
            _ => Decision::not(
                "unreadable",
                "the message could not be read (quarantined or stored without its body)",
            ),
        };
        auto_responses::record_outcome(
            &mut tx,
            id,
            decision.outcome,
            &crate::mime::text(&decision.reason),
            decision.rule,
        )
        .await?;
        incoming_emails::mark_processed(&mut *tx, id, verdict.as_ref()).await?;
        tx.commit().await?;
        match decision.outcome {
            ReplyOutcome::Replied => self.stats.response("auto_replies", "replied", 1),
            ReplyOutcome::NotReplied => {
                self.stats
                    .response("auto_replies_suppressed", decision.code, 1)
            }
        }
        if let Some(v) = verdict {
            tracing::info!(%id, class = v.class.as_str(), reason = %v.reason, auto_reply = decision.outcome.as_str(), why = %decision.reason, "incoming email processed");
        }
        Ok(())
    }

    async fn follow_up(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        row: &ReplyContext,
        message: &Message<'_>,
        verdict: &Verdict,
    ) -> Result<Decision, Failure> {
        match verdict.class {
            Classification::DeliveryStatus => self.record_bounce(tx, id, message).await?,
            Classification::FeedbackReport => self.record_complaint(tx, id, message).await?,
            _ => {}
        }
        if let Some(decision) = self.mailto_unsubscribe(tx, message).await? {
            return Ok(decision);
        }
        self.decide_reply(tx, id, row, message, verdict).await
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

    async fn decide_reply(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        row: &ReplyContext,
        message: &Message<'_>,
        verdict: &Verdict,
    ) -> Result<Decision, Failure> {
        let account_address = self.account_addresses.get(&row.account_type);
        if let Some(blocker) =
            autoreply::reply_blocker(message, &self.us, account_address.map(String::as_str))
        {
            return Ok(Decision::not(blocker.code(), blocker.to_string()));
        }
        if verdict.class != Classification::Person {
            return Ok(Decision::not(
                "not_a_person",
                format!("{} ({})", verdict.class.as_str(), verdict.reason),
            ));
        }
        // An answer days late helps nobody, and an imported archive must
        // not answer everyone who ever wrote.
        if row.received_at < chrono::Utc::now() - MAX_AGE_TO_ANSWER {
            return Ok(Decision::not(
                "too_old",
                format!(
                    "received {}, more than {} days ago: too old to answer",
                    row.received_at.to_rfc3339(),
                    MAX_AGE_TO_ANSWER.num_days()
                ),
            ));
        }
        let rules = auto_responses::judge(tx, id).await?;
        let mut broken = Vec::new();
        let chosen = rules.iter().find(|r| match r.matches() {
            Some(m) => m,
            None => {
                tracing::warn!(rule = %r.name, "auto-response rule has a pattern PostgreSQL cannot use; skipped (fix it in auto_responses)");
                broken.push(r.name.clone());
                false
            }
        });
        let Some(rule) = chosen else {
            let mut reason = if rules.is_empty() {
                format!(
                    "no active auto-response rule for account `{}`",
                    row.account_type
                )
            } else {
                format!("none of the {} active rules matched", rules.len())
            };
            if !broken.is_empty() {
                reason.push_str(&format!(
                    " (rules skipped for a broken pattern: {})",
                    broken.join(", ")
                ));
            }
            return Ok(Decision::not("no_rule", reason));
        };
        // reply_blocker refused messages without a usable Return-Path.
        let Some(to) = autoreply::return_path(message).filter(|a| a.contains('@')) else {
            return Ok(Decision::not(
                NoReply::NoReturnPath.code(),
                NoReply::NoReturnPath.to_string(),
            ));
        };
        let dedup_key = format!("auto_reply:{id}");
        let refusal = auto_responses::record_reply(
            tx,
            id,
            rule.id,
            &to,
            rule.reply_window_secs,
            self.config.max_replies_per_hour,
            &dedup_key,
        )
        .await?;
        let decided = |code, reason: String| Decision {
            outcome: ReplyOutcome::NotReplied,
            reason,
            code,
            rule: Some(rule.id),
        };
        match refusal {
            Some(Refusal::Window) => {
                return Ok(decided(
                    "window",
                    format!(
                        "rule `{}` answered {to} within its reply window already",
                        rule.name
                    ),
                ));
            }
            Some(Refusal::HourlyCap) => {
                return Ok(decided(
                    "hourly_cap",
                    format!(
                        "{to} got {} automatic answers in the last hour (DKL_AUTOREPLY_MAX_PER_HOUR)",
                        self.config.max_replies_per_hour
                    ),
                ));
            }
            Some(Refusal::Already) => {
                return Ok(Decision {
                    outcome: ReplyOutcome::Replied,
                    reason: format!("answered by rule `{}` (recorded before)", rule.name),
                    code: "replied",
                    rule: Some(rule.id),
                });
            }
            None => {}
        }
        let job = reply_job(row, &rule.template, &to, dedup_key);
        enqueue_on(tx, &job, EnqueueOptions::default())
            .await
            .map_err(JobError::retryable)?;
        Ok(Decision {
            outcome: ReplyOutcome::Replied,
            reason: format!("answered by rule `{}` to {to}", rule.name),
            code: "replied",
            rule: Some(rule.id),
        })
    }
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
    ["To", "Delivered-To", "X-Original-To", "Envelope-To", "Cc"]
        .iter()
        .filter_map(|name| message.header_raw(*name))
        .flat_map(|value| value.split([',', ' ', '<', '>', '\t', '"', ';']))
        .filter_map(|a| crate::address::plus_tag(a.trim()))
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
