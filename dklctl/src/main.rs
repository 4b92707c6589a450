//! `dklctl`: the admin CLI of dkl-mail-worker.
//!
//! It lives in its own crate because it is neither worker nor scheduler: it
//! talks to the same database through `dkl-shared` and needs clap, which the
//! long-running binaries do not.

mod commands;
mod table;

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use commands::{
    accounts, bench, bench_ingest, bench_newsletter, bench_schedule, bench_send, database, demo,
    inbox, jobs, mail, newsletter, schedules, status, templates,
};
use dkl_shared::config::Config;
use dkl_shared::jobs::JobClient;
use dkl_shared::kinds::Ping;
use dkl_shared::monitor::JobFilter;
use dkl_shared::{db, startup};

#[derive(Parser)]
#[command(
    name = "dklctl",
    version,
    about = "Admin CLI for dkl-mail-worker (reads DATABASE_URL and DKL_* like the binaries)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply all database migrations (apalis-postgres's, then ours). Safe to repeat.
    Migrate,
    /// Check configuration and that the database is reachable and migrated.
    Check,
    /// Enqueue a diagnostic `ping` job and print its id.
    Ping {
        /// Message the worker logs.
        #[arg(default_value = "hello from dklctl")]
        message: String,
        /// Fail (retryably) on this many attempts first, to watch backoff.
        #[arg(long, default_value_t = 0)]
        fail_attempts: i32,
        /// Take this long.
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
        /// Run at this time (RFC 3339, e.g. 2026-11-23T18:00:00Z).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// Enqueue a job by kind name with a JSON payload.
    Enqueue {
        /// Job kind, e.g. `ping` or `prune_jobs`.
        kind: String,
        /// Payload as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Queue; defaults to the kind's queue for known kinds, else `default`.
        #[arg(long)]
        queue: Option<String>,
        /// Run at this time (RFC 3339).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Dedup key: returns the live job holding it instead of adding one.
        #[arg(long)]
        dedup: Option<String>,
        /// Attempts before the job is discarded; defaults to the kind's own
        /// (5 for kinds this build does not know).
        #[arg(long)]
        max_attempts: Option<i32>,
    },
    /// Cancel a job (by job id: pending ones never start, running ones are
    /// signalled) or an admin row (by its scheduled_jobs UUID, before it runs).
    Cancel {
        /// Job id, or scheduled_jobs id.
        id: String,
    },
    /// Run a job again: a discarded, cancelled or done job from scratch, a
    /// waiting one (scheduled or retrying) now.
    Retry {
        /// Job id.
        id: String,
    },
    /// Queues, scheduler leader, schedules, admin rows and recent jobs.
    Status {
        /// How many recent jobs to list.
        #[arg(long, default_value_t = 10)]
        recent: i64,
    },
    /// List jobs from the job_status view, newest first.
    Jobs {
        /// scheduled, pending, retrying, running, done, discarded or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Job kind.
        #[arg(long)]
        kind: Option<String>,
        /// Queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs of this schedule (job_schedules.name).
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one job.
    Show {
        /// Job id.
        id: String,
    },
    /// List the recurring schedules and who leads the schedulers.
    Schedules,
    /// Stop a schedule from ticking (job_schedules.enabled = false).
    Pause {
        /// job_schedules.name.
        schedule: String,
    },
    /// Let a paused schedule tick again, from its next tick after now.
    Resume {
        /// job_schedules.name.
        schedule: String,
    },
    /// Enqueue a schedule's job now, outside its timing (works when disabled too).
    RunNow {
        /// job_schedules.name, e.g. prune-jobs.
        schedule: String,
    },
    /// Schedule a one-off job: inserts a scheduled_jobs row (the same INSERT
    /// an admin can write in SQL); the scheduler enqueues it at its time.
    Schedule {
        /// Job kind, e.g. ping.
        kind: String,
        /// When (RFC 3339, e.g. 2026-11-23T18:00:00+01:00); now if absent.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Payload as a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Why (shown in status).
        #[arg(long)]
        note: Option<String>,
        /// Who schedules it; defaults to $USER.
        #[arg(long)]
        created_by: Option<String>,
    },
    /// Enqueue the prune job now.
    Prune,
    /// The IMAP accounts: their state (cursor, last success, last error).
    Accounts {
        #[command(subcommand)]
        what: Option<AccountsCommand>,
    },
    /// Newsletters: create, schedule, pause, resume, cancel, progress, test copy.
    Newsletter {
        #[command(subcommand)]
        what: NewsletterCommand,
    },
    /// Mail: ask for one, read the send log; the inbox, one message, import.
    Mail {
        #[command(subcommand)]
        what: MailCommand,
    },
    /// Put an address on the suppression list (no mail, or no bulk mail).
    Suppress {
        /// The address.
        address: String,
        /// hard_bounce, soft_bounce, complaint, unsubscribe or manual.
        #[arg(long, default_value = "manual")]
        reason: String,
        /// all (no mail at all) or bulk (no newsletters).
        #[arg(long, default_value = "all")]
        scope: String,
    },
    /// Bounces recorded (newest first): recipient, hard/soft, status, how it
    /// was tied to our send, the suppression it caused.
    Bounces {
        /// Since this time (RFC 3339); default: the last 7 days.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The suppression list (newest first).
    Suppressions {
        /// Only this reason: hard_bounce, soft_bounce, complaint, unsubscribe, manual.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take an address off the suppression list.
    Unsuppress {
        /// The address.
        address: String,
    },
    /// Mail templates: load the defaults, check the table, render one.
    Templates {
        #[command(subcommand)]
        what: TemplatesCommand,
    },
    /// Helpers of scripts/demo.sh: a local IMAP server, new mail arriving.
    Demo {
        #[command(subcommand)]
        what: DemoCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// The retention rules: what apply_retention deletes, and when it last ran.
    Retention {
        /// Count what each rule would delete now; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Leaderboards: list the computed periods, or show one.
    Leaderboard {
        #[command(subcommand)]
        what: Option<LeaderboardCommand>,
    },
    /// The operator dashboard (served by dkl-worker under /dashboard).
    Dashboard {
        #[command(subcommand)]
        what: DashboardCommand,
    },
}

#[derive(Subcommand)]
enum DashboardCommand {
    /// Read a password from stdin and print its argon2id hash, for
    /// DKL_DASHBOARD_PASSWORD_HASH (the password itself is never stored).
    HashPassword,
}

#[derive(Subcommand)]
enum LeaderboardCommand {
    /// A period's board: event:<uuid>, year:<yyyy> or all.
    Show {
        /// The period.
        period: String,
        /// Only the first N.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        top: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The computed periods.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Run a local Dovecot (installed with apt if missing) until Ctrl-C.
    ImapServer {
        /// Port on 127.0.0.1.
        #[arg(long, default_value_t = 1143)]
        port: u16,
        /// A user as LOGIN:PASSWORD (repeat for more).
        #[arg(long = "user", required = true)]
        users: Vec<String>,
        /// A message to put in a user's INBOX first, as LOGIN:FILE (repeatable).
        #[arg(long)]
        deliver: Vec<String>,
    },
    /// APPEND a message file to an account's INBOX, as new mail arriving.
    Append {
        /// The account (DKL_IMAP_ACCOUNTS name).
        #[arg(long)]
        account: String,
        /// The message file.
        file: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Log in to each account (or the one named), list its mailboxes and
    /// examine the configured ones; says what is wrong when it fails.
    Check {
        /// The account (DKL_IMAP_ACCOUNTS name); all when absent.
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum NewsletterCommand {
    /// Newsletters, newest first, with how many were sent.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// A new draft from a text file (and optionally an HTML file); prints its id.
    Create {
        /// The title (the mail's subject).
        #[arg(long)]
        title: String,
        /// The content as text.
        #[arg(long)]
        text: std::path::PathBuf,
        /// The content as HTML (used instead of the text in the HTML part).
        #[arg(long)]
        html: Option<std::path::PathBuf>,
    },
    /// Schedule a draft (or move a scheduled one): status scheduled, scheduled_send_time.
    Schedule {
        id: uuid::Uuid,
        /// When (RFC 3339, e.g. 2026-12-01T09:00:00+01:00); now when absent.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
    },
    /// Stop sending within seconds; `resume` goes on where it stopped.
    Pause { id: uuid::Uuid },
    /// Go on sending a paused newsletter.
    Resume { id: uuid::Uuid },
    /// Stop for good; recipients not yet sent to are marked cancelled.
    Cancel { id: uuid::Uuid },
    /// Progress: a live bar in a terminal, JSON otherwise (or with --json).
    Status {
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
        /// One line with the bar, then exit (for scripts that refresh).
        #[arg(long)]
        once: bool,
    },
    /// Send again, on purpose, the deliveries whose outcome is unknown.
    ResendUnknown { id: uuid::Uuid },
    /// Send one copy to an address (not counted as a delivery).
    SendTest {
        id: uuid::Uuid,
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum MailCommand {
    /// Incoming mail (incoming_emails), newest first.
    Inbox {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// Only messages not yet processed.
        #[arg(long)]
        unprocessed: bool,
        /// Only quarantined messages (too large, unparsable, no sender).
        #[arg(long)]
        quarantined: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One incoming message: headers, text, attachments, state.
    Show {
        /// incoming_emails.id.
        id: uuid::Uuid,
    },
    /// Store .eml files, Maildir folders and mbox files as if fetched
    /// (same parsing, quarantine and follow-up jobs; a message already
    /// stored for the account is stored once).
    Import {
        /// The account_type to store under, e.g. info.
        #[arg(long)]
        account: String,
        /// Files and folders.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Ask for a mail as the web application does (the SQL function
    /// dkl_send_email); prints the job id.
    Send {
        /// email_templates.name.
        #[arg(long)]
        template: String,
        /// Recipient address.
        #[arg(long)]
        to: String,
        /// A JSON file with the template's variables.
        #[arg(long)]
        vars: Option<std::path::PathBuf>,
        /// One message per key, ever.
        #[arg(long)]
        dedup: Option<String>,
        /// transactional, admin, auto_reply or newsletter.
        #[arg(long, default_value = "transactional")]
        kind: String,
    },
    /// Send a logged message again, on purpose (e.g. one left `unknown`).
    Resend {
        /// verzonden_emails.id.
        id: uuid::Uuid,
    },
    /// The send log (verzonden_emails), newest first.
    Log {
        /// queued, sent, failed, suppressed, unknown or bounced.
        #[arg(long)]
        status: Option<String>,
        /// Only mail to this address.
        #[arg(long)]
        to: Option<String>,
        /// Only mail since this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Load the templates of a folder (default `templates/`) into
    /// email_templates. Refuses if any is broken; keeps rows admins changed.
    Sync {
        /// The folder with one sub-folder per template.
        #[arg(long, default_value = "templates")]
        dir: std::path::PathBuf,
        /// Replace templates admins changed in the database too.
        #[arg(long)]
        force: bool,
    },
    /// Check every template in email_templates (syntax, declared variables).
    Check,
    /// Render one template with the variables of a JSON file.
    Render {
        /// email_templates.name.
        name: String,
        /// A JSON object of variables.
        #[arg(long)]
        vars: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Queue throughput, pickup latency and scheduling lateness (use a release build).
    Queue(bench::QueueBenchArgs),
    /// Admin rows (scheduled_jobs): run_at → job start, through a real scheduler and worker.
    Schedule(bench_schedule::ScheduleBenchArgs),
    /// Mail rendered, sent and logged, against smtp-sink, with smtp-source as the ceiling.
    Send(bench_send::SendBenchArgs),
    /// Mail fetched from Dovecot, parsed and stored, with a bare UID FETCH as
    /// the ceiling, and IDLE latency.
    Ingest(bench_ingest::IngestBenchArgs),
    /// A newsletter to 100,000 recipients through smtp-sink, with smtp-source
    /// as the ceiling, and the worker's peak memory.
    Newsletter(bench_newsletter::NewsletterBenchArgs),
    /// Leaderboard recompute of 1M registrations and retention of 1M rows,
    /// beside one plain statement each (in a database of its own).
    Upkeep(commands::bench_upkeep::UpkeepBenchArgs),
    /// Every dashboard page's p50/p95 with 1M finished jobs and 1M send-log
    /// rows (in a database of its own).
    Dashboard(commands::bench_dashboard::DashboardBenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    startup::run_binary("dklctl", |config| run(cli.command, config)).await
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    // Makes a database of its own: needs only the server.
    if let Command::Bench {
        what: BenchCommand::Upkeep(args),
    } = command
    {
        return commands::bench_upkeep::run(&config.database_url, args).await;
    }
    if let Command::Bench {
        what: BenchCommand::Dashboard(args),
    } = command
    {
        return commands::bench_dashboard::run(&config.database_url, args).await;
    }
    // Needs no database.
    if let Command::Dashboard {
        what: DashboardCommand::HashPassword,
    } = command
    {
        return commands::dashboard::hash_password();
    }
    let pool = db::connect(&config).await?;
    if !matches!(command, Command::Migrate) {
        db::ensure_migrated(&pool).await?;
    }
    let client = JobClient::new(pool.clone());
    match command {
        Command::Migrate => database::migrate(&pool).await?,
        Command::Check => database::check(),
        Command::Ping {
            message,
            fail_attempts,
            sleep_ms,
            at,
        } => {
            jobs::ping(
                &client,
                Ping {
                    message,
                    sleep_ms,
                    fail_attempts,
                    permanent_error: None,
                },
                at,
            )
            .await?
        }
        Command::Enqueue {
            kind,
            payload,
            queue,
            at,
            dedup,
            max_attempts,
        } => {
            let payload = commands::parse_payload(&payload)?;
            jobs::enqueue(
                &client,
                jobs::EnqueueRequest {
                    kind,
                    payload,
                    queue,
                    at,
                    dedup,
                    max_attempts,
                },
            )
            .await?
        }
        Command::Cancel { id } => match id.parse::<uuid::Uuid>() {
            Ok(row_id) => schedules::cancel_row(&pool, row_id).await?,
            Err(_) => jobs::cancel(&client, &id).await?,
        },
        Command::Retry { id } => jobs::retry(&client, &id).await?,
        Command::Status { recent } => status::print_status(&pool, recent).await?,
        Command::Jobs {
            state,
            kind,
            queue,
            schedule,
            limit,
        } => {
            status::print_jobs(
                &pool,
                &JobFilter {
                    state,
                    kind,
                    queue,
                    schedule,
                    limit,
                },
            )
            .await?
        }
        Command::Show { id } => jobs::show(&client, &id).await?,
        Command::Schedules => status::print_schedules(&pool).await?,
        Command::Pause { schedule } => schedules::set_enabled(&pool, &schedule, false).await?,
        Command::Resume { schedule } => schedules::set_enabled(&pool, &schedule, true).await?,
        Command::RunNow { schedule } => schedules::run_now(&pool, &schedule).await?,
        Command::Schedule {
            kind,
            at,
            payload,
            note,
            created_by,
        } => {
            let payload = commands::parse_payload(&payload)?;
            schedules::schedule(
                &pool,
                schedules::ScheduleRequest {
                    kind,
                    at,
                    payload,
                    note,
                    created_by,
                },
            )
            .await?
        }
        Command::Prune => jobs::prune(&client).await?,
        Command::Mail {
            what:
                MailCommand::Send {
                    template,
                    to,
                    vars,
                    dedup,
                    kind,
                },
        } => {
            let req = mail::SendRequest {
                template: &template,
                to: &to,
                vars: vars.as_deref(),
                dedup: dedup.as_deref(),
                kind: &kind,
            };
            mail::send(&pool, req).await?
        }
        Command::Mail {
            what:
                MailCommand::Log {
                    status,
                    to,
                    since,
                    limit,
                },
        } => mail::log(&pool, status, to, since, limit).await?,
        Command::Mail {
            what: MailCommand::Resend { id },
        } => mail::resend(&pool, &client, id).await?,
        Command::Mail {
            what:
                MailCommand::Inbox {
                    account,
                    unprocessed,
                    quarantined,
                    limit,
                },
        } => {
            inbox::inbox(
                &pool,
                dkl_worker::store::incoming_emails::InboxFilter {
                    account,
                    unprocessed,
                    quarantined,
                    limit,
                },
            )
            .await?
        }
        Command::Mail {
            what: MailCommand::Show { id },
        } => inbox::show(&pool, id).await?,
        Command::Mail {
            what: MailCommand::Import { account, paths },
        } => inbox::import(&pool, &config, &account, &paths).await?,
        Command::Demo {
            what:
                DemoCommand::ImapServer {
                    port,
                    users,
                    deliver,
                },
        } => demo::imap_server(port, &users, &deliver).await?,
        Command::Demo {
            what: DemoCommand::Append { account, file },
        } => demo::append(&config, &account, &file).await?,
        Command::Accounts { what: None } => accounts::list(&pool, &config).await?,
        Command::Accounts {
            what: Some(AccountsCommand::Check { name }),
        } => accounts::check(&config, name.as_deref()).await?,
        Command::Suppress {
            address,
            reason,
            scope,
        } => mail::suppress(&pool, &address, &reason, &scope).await?,
        Command::Unsuppress { address } => mail::unsuppress(&pool, &address).await?,
        Command::Bounces { since, limit, json } => {
            commands::bounces::bounces(&pool, since, limit, json).await?
        }
        Command::Suppressions {
            reason,
            limit,
            json,
        } => commands::bounces::suppressions(&pool, reason.as_deref(), limit, json).await?,
        Command::Templates {
            what: TemplatesCommand::Sync { dir, force },
        } => templates::sync(&pool, &dir, force).await?,
        Command::Templates {
            what: TemplatesCommand::Check,
        } => templates::check(&pool).await?,
        Command::Templates {
            what: TemplatesCommand::Render { name, vars },
        } => templates::render(&pool, &name, &vars).await?,
        Command::Bench {
            what: BenchCommand::Queue(args),
        } => bench::queue(&pool, &config, args).await?,
        Command::Bench {
            what: BenchCommand::Schedule(args),
        } => bench_schedule::run(&pool, &config, args).await?,
        Command::Bench {
            what: BenchCommand::Send(args),
        } => bench_send::run(&pool, &config, args).await?,
        Command::Bench {
            what: BenchCommand::Ingest(args),
        } => bench_ingest::run(&pool, &config, args).await?,
        Command::Bench {
            what: BenchCommand::Newsletter(args),
        } => bench_newsletter::run(&pool, &config, args).await?,
        Command::Bench {
            what: BenchCommand::Upkeep(_),
        } => anyhow::bail!("bench upkeep makes its own database and runs before connecting"),
        Command::Bench {
            what: BenchCommand::Dashboard(_),
        } => anyhow::bail!("bench dashboard makes its own database and runs before connecting"),
        Command::Newsletter { what } => run_newsletter(&pool, &config, what).await?,
        Command::Retention { dry_run, json } => {
            commands::retention::show(&pool, dry_run, json).await?
        }
        Command::Leaderboard {
            what: Some(LeaderboardCommand::Show { period, top, json }),
        } => commands::leaderboard::show(&pool, &period, top, json).await?,
        Command::Leaderboard {
            what: Some(LeaderboardCommand::List { json }),
        } => commands::leaderboard::list(&pool, json).await?,
        Command::Leaderboard { what: None } => commands::leaderboard::list(&pool, false).await?,
        Command::Dashboard {
            what: DashboardCommand::HashPassword,
        } => anyhow::bail!("dashboard hash-password runs before connecting"),
    }
    Ok(())
}

async fn run_newsletter(
    pool: &sqlx::PgPool,
    config: &Config,
    what: NewsletterCommand,
) -> anyhow::Result<()> {
    use dkl_worker::store::newsletters::NewsletterStatus;
    match what {
        NewsletterCommand::List { limit } => newsletter::list(pool, limit).await,
        NewsletterCommand::Create { title, text, html } => {
            newsletter::create(pool, &title, &text, html.as_deref()).await
        }
        NewsletterCommand::Schedule { id, at } => newsletter::schedule(pool, id, at).await,
        NewsletterCommand::Pause { id } => {
            newsletter::set_status(pool, id, NewsletterStatus::Paused).await
        }
        NewsletterCommand::Resume { id } => {
            newsletter::set_status(pool, id, NewsletterStatus::Sending).await
        }
        NewsletterCommand::Cancel { id } => {
            newsletter::set_status(pool, id, NewsletterStatus::Cancelled).await
        }
        NewsletterCommand::Status { id, json, once } => {
            newsletter::status(pool, id, json, once).await
        }
        NewsletterCommand::ResendUnknown { id } => newsletter::resend_unknown(pool, id).await,
        NewsletterCommand::SendTest { id, to } => {
            newsletter::send_test(pool, config, id, &to).await
        }
    }
}
