//! `dklctl bench ingest`: realistic messages delivered to a local Dovecot,
//! then fetched, parsed and stored exactly as the worker does (cursor,
//! batches, attachments, follow-up jobs); in the same run, a bare
//! `UID FETCH 1:* BODY.PEEK[]` of the same mailbox over one connection (the
//! ceiling), and the IDLE latency: APPEND to row committed, over 50 single
//! messages. Then the follow-up: every stored message classified and, where
//! a rule says so, answered (10 % of the mailbox are bounces and 10 %
//! out-of-office replies), by `process_incoming_email` jobs on an in-process
//! worker runtime, timed beside the ingest. Everything it stores is deleted
//! at the end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dkl_shared::config::{Config, ImapAccount};
use dkl_worker::imap::dovecot::Dovecot;
use dkl_worker::imap::stats::ImapStats;
use dkl_worker::imap::{self, fetch, watch};
use dkl_worker::store::incoming_emails;
use futures::TryStreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Options of `dklctl bench ingest`.
#[derive(clap::Args, Debug)]
pub struct IngestBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Messages in the mailbox.
    #[arg(long, default_value_t = 10_000)]
    mails: usize,
    /// Single messages for the IDLE latency.
    #[arg(long, default_value_t = 50)]
    idle_samples: usize,
}

#[derive(serde::Serialize)]
struct Report {
    mails: usize,
    mean_message_bytes: usize,
    with_attachment: usize,
    ingest_seconds: f64,
    ingest_per_s: f64,
    bare_fetch_per_s: f64,
    ratio: f64,
    idle_samples: usize,
    idle_p50_ms: f64,
    idle_p99_ms: f64,
    idle_max_ms: f64,
    process_seconds: f64,
    process_per_s: f64,
    answered: i64,
    bounces_recorded: i64,
    not_answered: i64,
    rss_before_ingest_kib: u64,
    ingest_rss_peak_kib: u64,
}

const USER: (&str, &str) = ("bench@dkl.test", "bench-geheim");

/// Runs the benchmark.
pub async fn run(pool: &PgPool, config: &Config, args: IngestBenchArgs) -> anyhow::Result<()> {
    if args.mails < 10 || args.idle_samples < 2 {
        bail!("--mails must be at least 10 and --idle-samples at least 2");
    }
    let progress = |text: &str| {
        if !args.json {
            eprintln!("{text}");
        }
    };
    let dovecot = tokio::task::spawn_blocking(|| Dovecot::start(&[USER]))
        .await?
        .context("cannot start a local Dovecot (dovecot-imapd)")?;
    let run_id = ulid::Ulid::generate().to_string().to_lowercase();
    let account_name = format!("bench_{}", &run_id[run_id.len() - 12..]);
    let mut account = dovecot.account(&account_name, USER.0, USER.1);
    account.idle = true;
    let mut imap_config = config.imap.clone();
    imap_config.accounts = vec![account.clone()];

    progress(&format!(
        "delivering {} messages to Dovecot on 127.0.0.1:{}",
        args.mails, dovecot.port
    ));
    let (bytes, with_attachment) = deliver(&dovecot, args.mails).await?;

    // Dovecot indexes the new mailbox on its first SELECT: a first bare
    // fetch warms it (and the page cache) for both measurements.
    bare_fetch(&account, imap_config.timeout).await?;
    progress("bare UID FETCH 1:* BODY.PEEK[] over one connection");
    let bare_started = Instant::now();
    let bare_count = bare_fetch(&account, imap_config.timeout).await?;
    let bare_seconds = bare_started.elapsed().as_secs_f64();
    if bare_count != args.mails {
        bail!(
            "the bare fetch read {bare_count} of {} messages",
            args.mails
        );
    }

    progress("fetch, parse and store (as dkl-worker does)");
    // The peak is measured from here: the bare fetch before is not ours.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before_kib = rss_kib("VmRSS:");
    let stats = ImapStats::default();
    // As dkl-worker does: ingest writes through a small pool of its own.
    let worker_pool = pool.clone();
    let ingest_pool = imap::ingest_pool(pool, &imap_config);
    let pool = &ingest_pool;
    let ingest_started = Instant::now();
    let mut session = imap::connect(&account, imap_config.timeout).await?;
    let report =
        fetch::fetch_mailbox(pool, &mut session, &account, "INBOX", &imap_config, &stats).await?;
    let ingest_seconds = ingest_started.elapsed().as_secs_f64();
    let ingest_rss_peak_kib = rss_kib("VmHWM:");
    let _ = session.logout().await;
    if report.stored != args.mails {
        bail!(
            "{} of {} messages stored ({report:?})",
            report.stored,
            args.mails
        );
    }

    progress("follow-up: classify and answer every stored message (process_incoming_email jobs)");
    // As dkl-worker does: follow-ups run on the worker's pool.
    let followed = follow_up(
        &worker_pool,
        config,
        &imap_config,
        &account_name,
        args.mails,
    )
    .await;
    progress(&format!(
        "IDLE latency: {} single messages APPENDed to a watched mailbox",
        args.idle_samples
    ));
    let idle = idle_latencies(pool, &account, &imap_config, args.idle_samples).await;
    let deleted = incoming_emails::delete_account(pool, &account_name).await?;
    let mut idle = idle?;
    let followed = followed?;
    progress(&format!("cleaned up {deleted} stored messages"));
    idle.sort_by(f64::total_cmp);
    let percentile =
        |p: f64| idle[((idle.len() as f64 * p).ceil() as usize).clamp(1, idle.len()) - 1];
    let ingest_per_s = args.mails as f64 / ingest_seconds;
    let bare_fetch_per_s = args.mails as f64 / bare_seconds;
    let report = Report {
        mails: args.mails,
        mean_message_bytes: bytes / args.mails,
        with_attachment,
        ingest_seconds,
        ingest_per_s,
        bare_fetch_per_s,
        ratio: ingest_per_s / bare_fetch_per_s,
        idle_samples: idle.len(),
        idle_p50_ms: percentile(0.50),
        idle_p99_ms: percentile(0.99),
        idle_max_ms: idle[idle.len() - 1],
        process_seconds: followed.seconds,
        process_per_s: args.mails as f64 / followed.seconds,
        answered: followed.answered,
        bounces_recorded: followed.bounces,
        not_answered: followed.not_answered,
        rss_before_ingest_kib: rss_before_kib,
        ingest_rss_peak_kib,
    };
    drop(dovecot);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!("MEASUREMENT                                         RESULT");
    println!(
        "messages (mean size, with attachment)               {} ({} bytes, {} with attachment)",
        r.mails, r.mean_message_bytes, r.with_attachment
    );
    println!(
        "dkl-mail-worker: fetched, parsed, stored            {:.0} messages/s ({:.1} s)",
        r.ingest_per_s, r.ingest_seconds
    );
    println!(
        "bare UID FETCH 1:* BODY.PEEK[], one connection      {:.0} messages/s (ceiling)",
        r.bare_fetch_per_s
    );
    println!(
        "ratio                                               {:.2}",
        r.ratio
    );
    println!(
        "IDLE: APPEND to row committed (p50 / p99 / max)     {:.0} / {:.0} / {:.0} ms over {} messages",
        r.idle_p50_ms, r.idle_p99_ms, r.idle_max_ms, r.idle_samples
    );
    println!(
        "follow-up: classified and answered                  {:.0} messages/s ({:.1} s; ingest took {:.1} s)",
        r.process_per_s, r.process_seconds, r.ingest_seconds
    );
    println!(
        "  answered / not answered / bounced recipients      {} / {} / {}",
        r.answered, r.not_answered, r.bounces_recorded
    );
    println!(
        "memory before the ingest / peak during it           {} / {} KiB",
        r.rss_before_ingest_kib, r.ingest_rss_peak_kib
    );
}

/// Writes the messages into the mailbox; returns their total size and how
/// many carry an attachment.
async fn deliver(dovecot: &Dovecot, n: usize) -> anyhow::Result<(usize, usize)> {
    // Made one at a time, never all held: the peak memory reported is the
    // ingest's own.
    let bytes = std::cell::Cell::new(0);
    let messages = (0..n).map(|i| {
        let m = realistic_message(i);
        bytes.set(bytes.get() + m.len());
        m
    });
    let delivered = tokio::task::block_in_place(|| dovecot.deliver_all(USER.0, "INBOX", messages))?;
    anyhow::ensure!(delivered == n, "delivered {delivered} of {n}");
    Ok((bytes.get(), n.div_ceil(5)))
}

/// A message like the ones DKL gets: mixed MIME, Dutch text, some with a
/// PDF-sized attachment, some in windows-1252 quoted-printable.
pub fn realistic_message(i: usize) -> Vec<u8> {
    let paragraph = "Beste organisatie, ik wil mij graag aanmelden voor De Koninklijke Loop van dit jaar. \
Ik loop mee met mijn familie en wij hebben een paar vragen over de route, de starttijden en de \
rolstoeltoegankelijkheid bij de finish. Kunnen jullie ook laten weten of honden welkom zijn? \
Met vriendelijke groet, een enthousiaste deelnemer.\r\n";
    let header = format!(
        "Return-Path: <deelnemer{i}@example.org>\r\n\
Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n\tby mx.dekoninklijkeloop.nl with ESMTPS id {i:08x}\r\n\tfor <info@dekoninklijkeloop.nl>; Mon, 30 Nov 2026 10:00:00 +0100\r\n\
From: Deelnemer {i} <deelnemer{i}@example.org>\r\n\
To: DKL Info <info@dekoninklijkeloop.nl>\r\n\
Subject: Aanmelding en vragen over de route ({i})\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n\
Message-ID: <bench-{i}-{}@example.org>\r\n\
MIME-Version: 1.0\r\n",
        fastrand::u64(..)
    );
    let text = paragraph.repeat(21);
    let html = format!(
        "<html><body><p>{}</p></body></html>\r\n",
        paragraph.repeat(21).replace("\r\n", "</p><p>")
    );
    match i % 10 {
        7 => return bounce_message(i),
        9 => return out_of_office_message(i),
        _ => {}
    }
    let body = match i % 5 {
        0 => {
            let attachment: String = (0..9000)
                .map(|k| char::from(b'A' + ((k * 7 + i) % 26) as u8))
                .collect::<String>()
                .as_bytes()
                .chunks(76)
                .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
                .collect();
            format!(
                "Content-Type: multipart/mixed; boundary=\"mix{i}\"\r\n\r\n--mix{i}\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--mix{i}\r\n\
Content-Type: application/pdf; name=\"inschrijving-{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"inschrijving-{i}.pdf\"\r\n\r\n{attachment}--mix{i}--\r\n"
            )
        }
        1 | 2 => format!(
            "Content-Type: multipart/alternative; boundary=\"alt{i}\"\r\n\r\n--alt{i}\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--alt{i}\r\n\
Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--alt{i}--\r\n"
        ),
        _ => format!(
            "Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}",
            text.replace("deelnemer.", "deelnemer =E9=E9n.")
        ),
    };
    format!("{header}{body}").into_bytes()
}

/// A Postfix-style delivery status notification (RFC 3464) of a message we
/// sent, as 10 % of the benchmark's mailbox.
fn bounce_message(i: usize) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx{i}.example.org (Mail Delivery System)\r\n\
To: info@dekoninklijkeloop.nl\r\nSubject: Undelivered Mail Returned to Sender\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: <bounce-{i}-{}@mx{i}.example.org>\r\n\
Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b{i}\"\r\n\r\n\
--b{i}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
This is the mail system at host mx{i}.example.org.\r\n\r\n\
I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n\
<oud{i}@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1\r\n    <oud{i}@example.org>: Recipient address rejected: User unknown\r\n\r\n\
--b{i}\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx{i}.example.org\r\nArrival-Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n\r\n\
Final-Recipient: rfc822; oud{i}@example.org\r\nOriginal-Recipient: rfc822;oud{i}@example.org\r\n\
Action: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <oud{i}@example.org>: Recipient address rejected: User unknown\r\n\r\n\
--b{i}\r\nContent-Type: text/rfc822-headers\r\n\r\n\
From: DKL <info@dekoninklijkeloop.nl>\r\nTo: oud{i}@example.org\r\nSubject: Je inschrijving\r\n\
Message-ID: <nooit-verstuurd-{i}@dekoninklijkeloop.nl>\r\n\r\n--b{i}--\r\n",
        fastrand::u64(..)
    )
    .into_bytes()
}

/// An out-of-office reply (RFC 3834 `Auto-Submitted`), as 10 % of the mailbox.
fn out_of_office_message(i: usize) -> Vec<u8> {
    format!(
        "Return-Path: <collega{i}@example.org>\r\nFrom: Collega {i} <collega{i}@example.org>\r\n\
To: DKL Info <info@dekoninklijkeloop.nl>\r\nSubject: Automatisch antwoord: afwezig\r\n\
Date: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: <ooo-{i}-{}@example.org>\r\n\
Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
Ik ben tot en met 4 december afwezig en lees mijn mail daarna.\r\n",
        fastrand::u64(..)
    )
    .into_bytes()
}

struct FollowUp {
    seconds: f64,
    answered: i64,
    not_answered: i64,
    bounces: i64,
}

/// Runs the stored messages' `process_incoming_email` jobs on a runtime in
/// this process (with a rule that answers the account's mail) until every
/// message is processed.
async fn follow_up(
    pool: &PgPool,
    config: &Config,
    imap_config: &dkl_shared::config::ImapConfig,
    account: &str,
    mails: usize,
) -> anyhow::Result<FollowUp> {
    use dkl_worker::handlers::process_incoming_email::{self, Processor};
    let rule = format!("bench-{account}");
    sqlx::query(
        "INSERT INTO auto_responses (name, account_type, template_id)
         SELECT $1, $2, id FROM email_templates WHERE name = 'auto_response'",
    )
    .bind(&rule)
    .bind(account)
    .execute(pool)
    .await
    .context("adding the benchmark's auto-response rule (run `dklctl templates sync` first)")?;
    let mut with_account = config.clone();
    with_account.imap = imap_config.clone();
    for a in &mut with_account.imap.accounts {
        a.address = Some("info@dekoninklijkeloop.nl".into());
    }
    let mut registry = dkl_shared::jobs::Registry::new();
    process_incoming_email::register(
        &mut registry,
        std::sync::Arc::new(Processor::new(pool, &with_account)),
    );
    let runtime = dkl_shared::jobs::WorkerRuntime::new(pool.clone(), registry, config.jobs.clone())
        .serve_only(&["incoming"]);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(runtime.run(shutdown.clone()));
    let outcome = async {
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM incoming_emails WHERE account_type = $1 AND NOT processed",
            )
            .bind(account)
            .fetch_one(pool)
            .await?;
            if left == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("{left} of {mails} messages still unprocessed after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let (answered, not_answered, bounces): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE auto_reply = 'replied'),
                    count(*) FILTER (WHERE auto_reply = 'not_replied'),
                    (SELECT count(*) FROM email_bounces b JOIN incoming_emails e ON e.id = b.incoming_email_id
                      WHERE e.account_type = $1)
               FROM incoming_emails WHERE account_type = $1",
        )
        .bind(account)
        .fetch_one(pool)
        .await?;
        Ok(FollowUp {
            seconds,
            answered,
            not_answered,
            bounces,
        })
    }
    .await;
    shutdown.cancel();
    let _ = handle.await;
    sqlx::query("DELETE FROM auto_responses WHERE name = $1")
        .bind(&rule)
        .execute(pool)
        .await?;
    outcome
}

/// `UID FETCH 1:* BODY.PEEK[]` over one connection; returns how many messages.
async fn bare_fetch(account: &ImapAccount, timeout: Duration) -> anyhow::Result<usize> {
    let mut session = imap::connect(account, timeout).await?;
    session.examine("INBOX").await?;
    let mut stream = session.uid_fetch("1:*", "BODY.PEEK[]").await?;
    let mut n = 0;
    while let Some(fetch) = stream.try_next().await? {
        n += usize::from(fetch.body().is_some());
    }
    drop(stream);
    let _ = session.logout().await;
    Ok(n)
}

/// APPEND one message at a time to a watched mailbox; the time until its
/// row is committed, in ms.
async fn idle_latencies(
    pool: &PgPool,
    account: &ImapAccount,
    config: &dkl_shared::config::ImapConfig,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    const MAILBOX: &str = "Idle";
    let mut appender = imap::connect(account, config.timeout).await?;
    let _ = appender.create(MAILBOX).await;
    let stats = std::sync::Arc::new(ImapStats::default());
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(watch::watch_mailbox(
        pool.clone(),
        account.clone(),
        MAILBOX.into(),
        config.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let up_deadline = Instant::now() + Duration::from_secs(30);
    while stats.snapshot().get(&account.name).map(|c| c.idle_up) != Some(1) {
        if Instant::now() > up_deadline {
            shutdown.cancel();
            bail!("the IDLE watcher did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        // Let the watcher settle back into IDLE after the previous fetch.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let raw = realistic_message(1_000_000 + i);
        let id = String::from_utf8_lossy(&raw)
            .lines()
            .find_map(|l| {
                l.strip_prefix("Message-ID: <")
                    .map(|r| r.trim_end_matches('>').to_string())
            })
            .unwrap_or_default();
        let started = Instant::now();
        appender.append(MAILBOX, None, None, &raw).await?;
        loop {
            if incoming_emails::has_message_id(pool, &account.name, &id).await? {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                shutdown.cancel();
                bail!("message {i} was not stored within 30 s of its APPEND");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    shutdown.cancel();
    let _ = watcher.await;
    let _ = appender.logout().await;
    Ok(latencies)
}

/// A memory figure of this process in KiB (Linux: `VmRSS:` now, `VmHWM:`
/// the peak since the last reset through /proc/self/clear_refs).
pub(crate) fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
