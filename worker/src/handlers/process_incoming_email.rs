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
use crate::newsletter::token::{TokenKey, today};
use crate::smtp::stats::MailStats;
use crate::store::auto_responses::{self, Refusal, ReplyOutcome};
use crate::store::bounces::{self, SoftBounceRule};
use crate::store::incoming_emails::{self, ReplyContext};

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
        let raw = incoming_emails::raw(&self.pool, id)
            .await
            .map_err(|e| JobError::retryable(format!("reading incoming email {id}: {e}")))?;
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
        let mut tx = self.pool.begin().await.map_err(retry)?;
        let Some(row) = incoming_emails::lock_for_processing(&mut tx, id)
            .await
            .map_err(retry)?
        else {
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
            &decision.reason,
            decision.rule,
        )
        .await
        .map_err(retry)?;
        incoming_emails::mark_processed(&mut *tx, id, verdict.as_ref())
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
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
    ) -> Result<Decision, JobError> {
        match verdict.class {
            Classification::DeliveryStatus => self.record_bounce(tx, id, message).await?,
            Classification::FeedbackReport => self.record_complaint(tx, id, message).await?,
            _ => {}
        }
        if let Some(decision) = self.mailto_unsubscribe(tx, message).await? {
            return Ok(decision);
        }
        self.decide_reply(tx, id, row, message).await
    }

    async fn record_bounce(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        message: &Message<'_>,
    ) -> Result<(), JobError> {
        let report = bounce::read_bounce(message);
        let send = bounces::find_send(
            tx,
            SendReference::in_headers(message),
            &report.returned_message_ids,
        )
        .await
        .map_err(retry)?;
        let rule = SoftBounceRule {
            limit: self.config.soft_bounce_limit,
            days: self.config.soft_bounce_days,
        };
        let recorded = bounces::record_bounce(tx, id, &report, send.as_ref(), rule)
            .await
            .map_err(retry)?;
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
    ) -> Result<(), JobError> {
        let Some(complaint) = bounce::arf::read(message) else {
            return Ok(());
        };
        let send = bounces::find_send(tx, None, &complaint.returned_message_ids)
            .await
            .map_err(retry)?;
        let suppressed = bounces::record_complaint(tx, id, &complaint, send.as_ref())
            .await
            .map_err(retry)?;
        self.stats
            .response("complaints", &complaint.feedback_type, 1);
        tracing::info!(%id, feedback_type = %complaint.feedback_type, suppressed = suppressed.is_some(), "complaint recorded");
        Ok(())
    }

    /// A `List-Unsubscribe` mailto request: `+u-<token>` in an address it
    /// was sent to. A forged or expired token changes nothing.
    async fn mailto_unsubscribe(
        &self,
        tx: &mut PgConnection,
        message: &Message<'_>,
    ) -> Result<Option<Decision>, JobError> {
        let Some(token) = unsubscribe_token(message) else {
            return Ok(None);
        };
        let signer = self.keys.signer(&self.pool).await.map_err(retry)?;
        match signer.verify_from_address(&token, today()) {
            Ok(gebruiker) => {
                let done = crate::store::newsletters::unsubscribe(
                    tx,
                    Some(gebruiker),
                    "",
                    "list-unsubscribe-mailto",
                )
                .await
                .map_err(retry)?;
                self.stats.response("unsubscribes", "done", 1);
                let reason = match done {
                    Some(_) => "an unsubscribe request (List-Unsubscribe mailto): unsubscribed",
                    None => {
                        "an unsubscribe request (List-Unsubscribe mailto) for a subscriber who no longer exists"
                    }
                };
                Ok(Some(Decision::not("unsubscribe_request", reason)))
            }
            Err(e) => {
                self.stats.response("unsubscribes", "refused", 1);
                tracing::warn!(error = %e, "mailto unsubscribe refused");
                Ok(Some(Decision::not(
                    "unsubscribe_request",
                    format!(
                        "an unsubscribe request with a token that is refused ({e}); nothing changed"
                    ),
                )))
            }
        }
    }

    async fn decide_reply(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        row: &ReplyContext,
        message: &Message<'_>,
    ) -> Result<Decision, JobError> {
        let account_address = self.account_addresses.get(&row.account_type);
        if let Some(blocker) =
            autoreply::reply_blocker(message, &self.us, account_address.map(String::as_str))
        {
            return Ok(Decision::not(blocker.code(), blocker.to_string()));
        }
        let rules = auto_responses::judge(tx, id).await.map_err(retry)?;
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
        .await
        .map_err(retry)?;
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
