//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Written by hand: a dozen series do not justify a metrics framework, and
//! the format is plain text with three line shapes.

use std::fmt::Write as _;

use dkl_shared::jobs::stats::{DURATION_BUCKETS, Histogram, StatsSnapshot};
use dkl_shared::monitor::{Leadership, QueueSummary};

use crate::smtp::stats::MailSnapshot;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the database said at scrape time; `None` when it could not be asked.
pub struct DatabaseFigures {
    /// `queue_summary` rows.
    pub queues: Vec<QueueSummary>,
    /// Scheduler leadership.
    pub leadership: Leadership,
    /// Newsletter deliveries by state, of the newsletters sending, paused,
    /// or finished in the last day.
    pub newsletter_deliveries: Vec<(String, i64)>,
}

/// Renders every series.
pub fn render(stats: &StatsSnapshot, mail: &MailSnapshot, db: Option<&DatabaseFigures>) -> String {
    let mut out = String::new();
    render_mail(&mut out, mail);
    header(
        &mut out,
        "dkl_jobs_total",
        "counter",
        "Job attempts run by this worker process, by kind and outcome.",
    );
    for ((kind, outcome), n) in &stats.outcomes {
        let _ = writeln!(
            out,
            "dkl_jobs_total{{kind=\"{}\",outcome=\"{}\"}} {n}",
            esc(kind),
            outcome.as_str()
        );
    }

    header(
        &mut out,
        "dkl_job_duration_seconds",
        "histogram",
        "How long job attempts took, by kind.",
    );
    for (kind, h) in &stats.durations {
        histogram(&mut out, "dkl_job_duration_seconds", "kind", kind, h);
    }

    header(
        &mut out,
        "dkl_worker_queue_running",
        "gauge",
        "1 while this process's worker for the queue runs.",
    );
    for (queue, running) in &stats.queues {
        let _ = writeln!(
            out,
            "dkl_worker_queue_running{{queue=\"{}\"}} {}",
            esc(queue),
            u8::from(*running)
        );
    }

    header(
        &mut out,
        "dkl_claim_queries_total",
        "counter",
        "Claim queries run by this process's fetchers.",
    );
    let _ = writeln!(out, "dkl_claim_queries_total {}", stats.claim_queries);
    header(
        &mut out,
        "dkl_jobs_claimed_total",
        "counter",
        "Jobs claimed by this process's fetchers.",
    );
    let _ = writeln!(out, "dkl_jobs_claimed_total {}", stats.jobs_claimed);
    header(
        &mut out,
        "dkl_queue_vacuums_total",
        "counter",
        "Vacuums of the queue table run by this process (DKL_QUEUE_VACUUM_EVERY).",
    );
    let _ = writeln!(out, "dkl_queue_vacuums_total {}", stats.queue_vacuums);
    header(
        &mut out,
        "dkl_outcome_writer_failing_seconds",
        "gauge",
        "How long job outcomes have failed to be written (0 = writing fine).",
    );
    let _ = writeln!(
        out,
        "dkl_outcome_writer_failing_seconds {}",
        stats
            .outcome_writer_failing_for
            .map_or(0.0, |d| d.as_secs_f64())
    );

    header(
        &mut out,
        "dkl_database_up",
        "gauge",
        "1 if the database answered (figures are cached for DKL_MONITOR_CACHE_MS).",
    );
    let _ = writeln!(out, "dkl_database_up {}", u8::from(db.is_some()));
    let Some(db) = db else { return out };

    header(
        &mut out,
        "dkl_newsletter_deliveries",
        "gauge",
        "Newsletter deliveries by state, of newsletters sending, paused or finished in the last day (all workers).",
    );
    for state in crate::store::newsletters::DeliveryStatus::ALL {
        let n = db
            .newsletter_deliveries
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(
            out,
            "dkl_newsletter_deliveries{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }

    header(
        &mut out,
        "dkl_queue_jobs",
        "gauge",
        "Jobs in the table by queue and state (all workers).",
    );
    for q in &db.queues {
        let queue = esc(&q.queue);
        for (state, n) in [
            ("pending", q.pending),
            ("scheduled", q.scheduled),
            ("running", q.running),
            ("done", q.done),
            ("discarded", q.discarded),
            ("cancelled", q.cancelled),
        ] {
            let _ = writeln!(
                out,
                "dkl_queue_jobs{{queue=\"{queue}\",state=\"{state}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "dkl_queue_depth",
        "gauge",
        "Jobs due and waiting for a worker, by queue.",
    );
    for q in &db.queues {
        let _ = writeln!(
            out,
            "dkl_queue_depth{{queue=\"{}\"}} {}",
            esc(&q.queue),
            q.pending
        );
    }
    header(
        &mut out,
        "dkl_queue_oldest_pending_age_seconds",
        "gauge",
        "How long the oldest due job has waited, by queue.",
    );
    for q in &db.queues {
        let _ = writeln!(
            out,
            "dkl_queue_oldest_pending_age_seconds{{queue=\"{}\"}} {}",
            esc(&q.queue),
            q.oldest_pending_age_s
        );
    }
    header(
        &mut out,
        "dkl_queue_finished_last_5m",
        "gauge",
        "Jobs finished in the last five minutes, by queue.",
    );
    for q in &db.queues {
        let _ = writeln!(
            out,
            "dkl_queue_finished_last_5m{{queue=\"{}\"}} {}",
            esc(&q.queue),
            q.finished_last_5m
        );
    }

    let l = &db.leadership;
    header(
        &mut out,
        "dkl_scheduler_leader_present",
        "gauge",
        "1 if some dkl-scheduler holds the leader lock.",
    );
    let _ = writeln!(
        out,
        "dkl_scheduler_leader_present {}",
        u8::from(l.lock_held)
    );
    header(
        &mut out,
        "dkl_scheduler_leader_heartbeat_age_seconds",
        "gauge",
        "Seconds since the leading scheduler's last pass.",
    );
    if let Some(age) = l.heartbeat_age_s {
        let _ = writeln!(out, "dkl_scheduler_leader_heartbeat_age_seconds {age}");
    }
    header(
        &mut out,
        "dkl_scheduler_leader_info",
        "gauge",
        "The leading scheduler (value 1), by id.",
    );
    if let Some(id) = &l.scheduler_id {
        let _ = writeln!(
            out,
            "dkl_scheduler_leader_info{{scheduler_id=\"{}\"}} 1",
            esc(id)
        );
    }
    out
}

/// The incoming-mail series: messages stored and quarantined per account,
/// the last successful fetch, the IDLE connections up.
pub fn render_imap(
    accounts: &std::collections::BTreeMap<String, crate::imap::stats::AccountCounters>,
) -> String {
    let mut out = String::new();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::imap::stats::AccountCounters) -> Option<i64>,
    );
    let series: [Series; 5] = [
        (
            "dkl_imap_messages_fetched_total",
            "counter",
            "Messages stored from IMAP by this worker process, by account (quarantined ones included).",
            |c| Some(c.fetched as i64),
        ),
        (
            "dkl_imap_messages_quarantined_total",
            "counter",
            "Messages stored quarantined (too large, unparsable, no sender), by account.",
            |c| Some(c.quarantined as i64),
        ),
        (
            "dkl_imap_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last fetch of the account that ended without error.",
            |c| c.last_success_unix,
        ),
        (
            "dkl_imap_fetch_errors_total",
            "counter",
            "Fetches and IDLE connections of the account that ended in an error (the reason is in dklctl accounts).",
            |c| Some(c.errors as i64),
        ),
        (
            "dkl_imap_idle_connections",
            "gauge",
            "IMAP IDLE connections up, by account.",
            |c| Some(c.idle_up as i64),
        ),
    ];
    for (name, kind, help, value) in series {
        header(&mut out, name, kind, help);
        for (account, counters) in accounts {
            if let Some(v) = value(counters) {
                let _ = writeln!(out, "{name}{{account=\"{}\"}} {v}", esc(account));
            }
        }
    }
    out
}

/// The series of what incoming mail led to: (name, label, help).
const RESPONSE_SERIES: &[(&str, &str, &str, &str)] = &[
    (
        "auto_replies",
        "dkl_auto_replies_total",
        "outcome",
        "Automatic answers enqueued by this worker process.",
    ),
    (
        "auto_replies_suppressed",
        "dkl_auto_replies_suppressed_total",
        "reason",
        "Incoming messages not answered, by reason (RFC 3834 rules, no rule, window, hourly cap).",
    ),
    (
        "bounces",
        "dkl_bounces_total",
        "kind",
        "Bounced recipients recorded, by kind (hard, soft).",
    ),
    (
        "complaints",
        "dkl_complaints_total",
        "feedback_type",
        "Feedback (complaint) reports recorded, by Feedback-Type.",
    ),
    (
        "unsubscribes",
        "dkl_mailto_unsubscribes_total",
        "outcome",
        "List-Unsubscribe mailto requests, by outcome (done, refused).",
    ),
];

fn render_responses(out: &mut String, mail: &MailSnapshot) {
    for (series, name, label, help) in RESPONSE_SERIES {
        header(out, name, "counter", help);
        for ((s, value), n) in &mail.responses {
            if s == series {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", esc(value));
            }
        }
    }
}

fn render_mail(out: &mut String, mail: &MailSnapshot) {
    render_responses(out, mail);
    header(
        out,
        "dkl_mail_messages_total",
        "counter",
        "Mail message attempts by SMTP configuration, mail kind and outcome (sent, failed, deferred, suppressed).",
    );
    for ((config, kind, outcome), n) in &mail.outcomes {
        let _ = writeln!(
            out,
            "dkl_mail_messages_total{{smtp=\"{}\",kind=\"{kind}\",outcome=\"{}\"}} {n}",
            esc(config),
            outcome.as_str()
        );
    }
    header(
        out,
        "dkl_smtp_send_duration_seconds",
        "histogram",
        "How long SMTP transactions took, by configuration.",
    );
    for (config, h) in &mail.durations {
        histogram(out, "dkl_smtp_send_duration_seconds", "smtp", config, h);
    }
    header(
        out,
        "dkl_smtp_reachable",
        "gauge",
        "1 if the configuration's SMTP server answered the last attempt to send.",
    );
    for (config, up) in &mail.reachable {
        let _ = writeln!(
            out,
            "dkl_smtp_reachable{{smtp=\"{}\"}} {}",
            esc(config),
            u8::from(*up)
        );
    }
}

/// One histogram's series for label `label`=`value`: cumulative buckets,
/// +Inf, sum and count.
fn histogram(out: &mut String, name: &str, label: &str, value: &str, h: &Histogram) {
    let value = esc(value);
    let mut cumulative = 0;
    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
        cumulative += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", h.count);
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value as the format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dkl_shared::jobs::RuntimeStats;
    use dkl_shared::jobs::stats::AttemptOutcome;

    use super::*;

    #[test]
    fn histogram_is_cumulative_and_ends_in_inf() {
        let stats = RuntimeStats::default();
        stats.record_attempt("ping", AttemptOutcome::Done, Duration::from_millis(2));
        stats.record_attempt("ping", AttemptOutcome::Done, Duration::from_millis(20));
        let text = render(&stats.snapshot(), &MailSnapshot::default(), None);
        assert!(
            text.contains("dkl_jobs_total{kind=\"ping\",outcome=\"done\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dkl_job_duration_seconds_bucket{kind=\"ping\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dkl_job_duration_seconds_bucket{kind=\"ping\",le=\"0.025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dkl_job_duration_seconds_bucket{kind=\"ping\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("dkl_database_up 0\n"), "{text}");
    }

    #[test]
    fn mail_series_count_by_configuration_kind_and_outcome() {
        use crate::smtp::stats::{MailStats, SendOutcome};
        let mail = MailStats::default();
        mail.record("default", "transactional", SendOutcome::Sent);
        mail.record("default", "transactional", SendOutcome::Sent);
        mail.record("newsletter", "newsletter", SendOutcome::Deferred);
        mail.transaction("default", Duration::from_millis(3), true);
        mail.transaction("newsletter", Duration::from_millis(30), false);
        let text = render(&RuntimeStats::default().snapshot(), &mail.snapshot(), None);
        for line in [
            "dkl_mail_messages_total{smtp=\"default\",kind=\"transactional\",outcome=\"sent\"} 2",
            "dkl_mail_messages_total{smtp=\"newsletter\",kind=\"newsletter\",outcome=\"deferred\"} 1",
            "dkl_smtp_send_duration_seconds_bucket{smtp=\"default\",le=\"0.005\"} 1",
            "dkl_smtp_send_duration_seconds_count{smtp=\"newsletter\"} 1",
            "dkl_smtp_reachable{smtp=\"default\"} 1",
            "dkl_smtp_reachable{smtp=\"newsletter\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
