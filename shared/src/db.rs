//! Connecting to PostgreSQL and keeping its schema in step with the code.
//!
//! Two migration sets live in one database: apalis-postgres's own (schema
//! `apalis`, history in `apalis._sqlx_migrations`) and ours (`migrations/`,
//! history in `public._sqlx_migrations`). Ours run second because they adapt
//! `apalis.jobs`. Binaries never migrate on their own: they call
//! [`ensure_migrated`] and tell the operator to run `dklctl migrate`, so a
//! schema change is always a deliberate step.

use std::collections::HashSet;
use std::time::Duration;

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::{Config, redact_url};

/// Our migrations, embedded at build time from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Errors of connecting and migrating.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server could not be reached, refused the login, or lacks the database.
    #[error(
        "cannot connect to PostgreSQL at {url} (is it running, and does the database exist? scripts/demo.sh starts and creates it)"
    )]
    Connect {
        /// The URL without its password.
        url: String,
        /// What sqlx said.
        #[source]
        cause: sqlx::Error,
    },
    /// The URL does not parse.
    #[error(
        "DATABASE_URL {url} does not parse ({cause}); percent-encode special characters in the user name and password (`?` as %3F, `/` as %2F, `#` as %23, `@` as %40, `:` as %3A)"
    )]
    BadUrl {
        /// The URL without its password.
        url: String,
        /// What sqlx said.
        cause: sqlx::Error,
    },
    /// Migrations are missing.
    #[error("the database is not migrated ({missing}); run `dklctl migrate` first")]
    NotMigrated {
        /// Which migration set or versions are missing.
        missing: String,
    },
    /// A migration failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// apalis-postgres's setup failed.
    #[error("apalis-postgres setup failed")]
    Apalis(#[from] apalis_postgres::Error),
    /// Any other query failure.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Opens a connection pool and checks the server answers.
pub async fn connect(config: &Config) -> Result<PgPool, DbError> {
    connect_url(&config.database_url, config.db_max_connections).await
}

/// Opens a connection pool to `url` with at most `max` connections.
///
/// One direct connection first, so a wrong host, password or database name
/// fails at once with the server's own words instead of a pool timeout.
pub async fn connect_url(url: &str, max: u32) -> Result<PgPool, DbError> {
    let fail = |cause| DbError::Connect {
        url: redact_url(url),
        cause,
    };
    let options = PgConnectOptions::from_str(url).map_err(|cause| DbError::BadUrl {
        url: redact_url(url),
        cause,
    })?;
    let probe = options.connect().await.map_err(fail)?;
    probe.close().await.map_err(fail)?;
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| Box::pin(disable_nagle(conn)))
        .connect_lazy_with(options))
}

/// sqlx 0.9 never sets TCP_NODELAY on its sockets. A statement whose bind
/// data spans several TCP segments then waits for PostgreSQL's delayed ACK
/// (~40 ms) before its last segment leaves: measured here, a batch of 250
/// incoming messages took 97 ms instead of ~35 ms, and ingest ran at 1,479
/// instead of ~3,900 messages/s. The connection's socket is found by its
/// local port (the server's `inet_client_port()`) among this process's file
/// descriptors and set to TCP_NODELAY. Unix-socket connections need nothing.
pub async fn disable_nagle(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
        .fetch_one(conn)
        .await?;
    if let Some(port) = port.and_then(|p| u16::try_from(p).ok()) {
        nodelay_on_local_port(port);
    }
    Ok(())
}

/// Sets TCP_NODELAY on this process's TCP sockets bound to local `port`;
/// returns how many it set.
fn nodelay_on_local_port(port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut set = 0;
    for fd in fds
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // SAFETY: getsockname/setsockopt only read and write the buffers
        // given here, with their true sizes; a descriptor that is not a
        // socket (or closed meanwhile) makes them fail, which is skipped.
        unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0 {
                continue;
            }
            let local_port = match i32::from(addr.ss_family) {
                libc::AF_INET => {
                    u16::from_be((*(&raw const addr).cast::<libc::sockaddr_in>()).sin_port)
                }
                libc::AF_INET6 => {
                    u16::from_be((*(&raw const addr).cast::<libc::sockaddr_in6>()).sin6_port)
                }
                _ => continue,
            };
            if local_port != port {
                continue;
            }
            let on: libc::c_int = 1;
            if libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
            {
                set += 1;
            }
        }
    }
    set
}

/// A small pool on the database of `pool`, for work that writes big rows
/// (mail ingest): sqlx keeps each connection's grown write buffer and hands
/// idle connections out in turn, so memory is bounded by this pool's size
/// rather than the main pool's; and it never takes the job runtime's
/// connections.
pub fn side_pool(pool: &PgPool, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max.max(2))
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| Box::pin(disable_nagle(conn)))
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// A small pool for monitoring reads (`/healthz`, `/metrics`), apart from
/// the job runtime's, so any number of scrapes cannot take a connection that
/// a job needs. Connects lazily; a down database shows as failed reads.
pub fn monitoring_pool(config: &Config) -> PgPool {
    let options = PgConnectOptions::from_str(&config.database_url)
        .unwrap_or_else(|_| PgConnectOptions::new())
        .application_name("dkl-monitor")
        // A scrape that the client gave up on must not keep running.
        .options([("statement_timeout", "5s")]);
    PgPoolOptions::new()
        .max_connections(config.monitor.db_connections)
        .acquire_timeout(Duration::from_secs(2))
        .after_connect(|conn, _| Box::pin(disable_nagle(conn)))
        .connect_lazy_with(options)
}

/// The dashboard's own pool (3 connections), apart from the job runtime's
/// and the scrapes', so however many pages are open no job waits for a
/// connection. Connects lazily.
pub fn dashboard_pool(config: &Config) -> PgPool {
    dashboard_pool_on(
        PgConnectOptions::from_str(&config.database_url)
            .unwrap_or_else(|_| PgConnectOptions::new()),
    )
}

/// [`dashboard_pool`] on given connect options (`dklctl bench dashboard`
/// measures the pool the worker uses).
pub fn dashboard_pool_on(options: PgConnectOptions) -> PgPool {
    let options = options.application_name("dkl-dashboard").options([
        ("statement_timeout", "5s"),
        // Every page query is planned for its own filter values: a cached
        // generic plan cannot tell a filter matching 10 of 1,000,000 jobs
        // from one matching half, and picked scans of 100+ ms (measured).
        // Planning takes well under a millisecond.
        ("plan_cache_mode", "force_custom_plan"),
    ]);
    PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(2))
        .after_connect(|conn, _| Box::pin(disable_nagle(conn)))
        .connect_lazy_with(options)
}

/// Opens the pool and checks the schema: what every long-running binary does first.
pub async fn connect_migrated(config: &Config) -> Result<PgPool, DbError> {
    let pool = connect(config).await?;
    ensure_migrated(&pool).await?;
    Ok(pool)
}

/// Applies apalis-postgres's migrations, then ours. Safe to run again.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    apalis_postgres::PostgresStorage::setup(pool).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Fails with [`DbError::NotMigrated`] unless every migration we know of is applied.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), DbError> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !table_exists {
        return Err(DbError::NotMigrated {
            missing: "no migrations applied yet".into(),
        });
    }
    let applied: HashSet<i64> =
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect();
    if !missing.is_empty() {
        return Err(DbError::NotMigrated {
            missing: format!("missing: {}", missing.join(", ")),
        });
    }
    Ok(())
}

/// Calls `on_note` for each notification on `channels` until `stop`, and with
/// `None` after every (re)connect: notifications sent while no connection
/// listened are lost, so callers then look at everything. Faults are logged
/// and the connection retried each second; LISTEN only makes pickup fast,
/// polling is what makes it certain.
pub async fn listen(
    pool: &PgPool,
    channels: &[&str],
    stop: &tokio_util::sync::CancellationToken,
    mut on_note: impl FnMut(Option<&sqlx::postgres::PgNotification>),
) {
    let pause = async || {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = stop.cancelled() => true,
        }
    };
    loop {
        let mut listener = match connect_listener(pool, channels).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, ?channels, "cannot LISTEN; polling meanwhile, retrying in 1s");
                if pause().await {
                    return;
                }
                continue;
            }
        };
        on_note(None);
        loop {
            let note = tokio::select! {
                n = listener.try_recv() => n,
                _ = stop.cancelled() => return,
            };
            match note {
                Ok(Some(n)) => on_note(Some(&n)),
                // sqlx reconnected by itself; whatever was sent meanwhile is gone.
                Ok(None) => {
                    tracing::warn!(?channels, "LISTEN connection lost and re-established");
                    on_note(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?channels, "LISTEN failed; reconnecting in 1s");
                    if pause().await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

async fn connect_listener(
    pool: &PgPool,
    channels: &[&str],
) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}
