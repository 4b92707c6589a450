//! IMAP: reading the configured accounts into `incoming_emails`.
//!
//! # Quick start
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool, config: dkl_shared::config::Config) -> anyhow::Result<()> {
//! let account = &config.imap.accounts[0];
//! let mut session = dkl_worker::imap::connect(account, config.imap.timeout).await?;
//! let report = dkl_worker::imap::fetch::fetch_mailbox(
//!     &pool, &mut session, account, "INBOX", &config.imap, &Default::default(),
//! ).await?;
//! println!("{} new, {} quarantined", report.stored, report.quarantined);
//! # Ok(()) }
//! ```
//!
//! - [`connect`]: TCP, TLS (implicit or STARTTLS), login, with errors that
//!   say what is wrong (password, host, TLS mode);
//! - [`fetch`]: one mailbox from its cursor to the newest message, in
//!   bounded batches, each stored in one transaction with the cursor;
//! - [`watch`]: an IDLE connection per mailbox, reconnecting with backoff;
//! - [`dovecot`]: a local Dovecot for tests, benchmarks and the demo.

pub mod dovecot;
pub mod fetch;
pub mod stats;
pub mod watch;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dkl_shared::config::{ImapAccount, TlsMode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection to an IMAP server: plain TCP or TLS.
#[derive(Debug)]
pub enum ImapStream {
    /// Plain TCP (loopback, or allowed explicitly).
    Plain(TcpStream),
    /// TLS (implicit, or after STARTTLS).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A logged-in IMAP session.
pub type Session = async_imap::Session<ImapStream>;

/// What went wrong talking to an IMAP server; each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// The server could not be reached.
    #[error(
        "cannot connect to {host}:{port}: {reason} (check DKL_IMAP_{account}_HOST and DKL_IMAP_{account}_PORT)"
    )]
    Connect {
        /// Account name, upper case.
        account: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// What the system said.
        reason: String,
    },
    /// TLS failed, or the server is not speaking what the TLS mode expects.
    #[error("{0}")]
    Tls(String),
    /// Login refused.
    #[error(
        "login as `{user}` refused: {reason} (check DKL_IMAP_{account}_USER and DKL_IMAP_{account}_PASSWORD)"
    )]
    Login {
        /// Account name, upper case.
        account: String,
        /// The user name tried.
        user: String,
        /// What the server said.
        reason: String,
    },
    /// A mailbox could not be selected.
    #[error(
        "mailbox `{mailbox}`: {reason} (check DKL_IMAP_{account}_MAILBOXES; `dklctl accounts check` lists the mailboxes)"
    )]
    Mailbox {
        /// Account name, upper case.
        account: String,
        /// The mailbox.
        mailbox: String,
        /// What the server said.
        reason: String,
    },
    /// The server did not answer in time.
    #[error("the IMAP server did not answer {what} within {secs} s (DKL_IMAP_TIMEOUT_SECS)")]
    Timeout {
        /// The step that timed out.
        what: &'static str,
        /// The limit.
        secs: u64,
    },
    /// The server left out messages that exist: nothing from them on is
    /// stored, and they are fetched again next time.
    #[error(
        "the server did not return messages {uids} although they exist (it may have answered NO); they are fetched again next time"
    )]
    Incomplete {
        /// The UIDs, as an IMAP set.
        uids: String,
    },
    /// The connection broke or the server answered nonsense.
    #[error("IMAP: {0}")]
    Protocol(#[from] async_imap::error::Error),
    /// Storing failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ImapError {
    /// Whether trying again later may help (a broken connection, a timeout,
    /// an unreachable server) — a refused login or a missing mailbox needs
    /// an operator.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Self::Login { .. } | Self::Mailbox { .. } | Self::Tls(_)
        )
    }
}

/// The server's own words in a NO or BAD answer (async-imap wraps them in
/// its debug form `code: …, info: Some("…")`).
pub fn server_said(error: &async_imap::error::Error) -> String {
    match error {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => text
            .split_once("info: Some(\"")
            .map(|(_, rest)| rest.trim_end_matches("\")").to_string())
            .unwrap_or_else(|| text.clone()),
        other => other.to_string(),
    }
}

/// Runs `f` with the account's command timeout.
pub async fn timed<T, E>(
    limit: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ImapError>
where
    ImapError: From<E>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(result) => result.map_err(ImapError::from),
        Err(_) => Err(ImapError::Timeout {
            what,
            secs: limit.as_secs(),
        }),
    }
}

/// Connects and logs in to `account`.
pub async fn connect(account: &ImapAccount, timeout: Duration) -> Result<Session, ImapError> {
    let upper = account.name.to_ascii_uppercase();
    let tcp = match tokio::time::timeout(
        timeout,
        TcpStream::connect((account.host.as_str(), account.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(ImapError::Connect {
                account: upper,
                host: account.host.clone(),
                port: account.port,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(ImapError::Connect {
                account: upper,
                host: account.host.clone(),
                port: account.port,
                reason: format!("no answer within {} s", timeout.as_secs()),
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    let stream = match account.tls {
        TlsMode::Tls => ImapStream::Tls(Box::new(
            tokio::time::timeout(timeout, tls_handshake(tcp, account))
                .await
                .map_err(|_| {
                    ImapError::Tls(format!(
                        "no TLS handshake with {}:{} within {} s: is it an implicit-TLS port (993)? For port 143 set DKL_IMAP_{upper}_TLS=starttls",
                        account.host,
                        account.port,
                        timeout.as_secs()
                    ))
                })??,
        )),
        TlsMode::StartTls => {
            let mut client = async_imap::Client::new(ImapStream::Plain(tcp));
            greeting(&mut client, account, timeout).await?;
            timed(timeout, "STARTTLS", client.run_command_and_check_ok("STARTTLS", None))
                .await
                .map_err(|e| {
                    ImapError::Tls(format!(
                        "the server at {}:{} refused STARTTLS ({e}); use DKL_IMAP_{upper}_TLS=tls for an implicit-TLS port",
                        account.host, account.port
                    ))
                })?;
            let ImapStream::Plain(tcp) = client.into_inner() else {
                unreachable!("STARTTLS starts on a plain stream")
            };
            ImapStream::Tls(Box::new(tls_handshake(tcp, account).await?))
        }
        TlsMode::Plain => ImapStream::Plain(tcp),
    };
    let mut client = async_imap::Client::new(stream);
    if account.tls != TlsMode::StartTls {
        greeting(&mut client, account, timeout).await?;
    }
    match tokio::time::timeout(timeout, client.login(&account.user, &account.password)).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err((e, _))) => Err(ImapError::Login {
            account: upper,
            user: account.user.clone(),
            reason: server_said(&e),
        }),
        Err(_) => Err(ImapError::Timeout {
            what: "LOGIN",
            secs: timeout.as_secs(),
        }),
    }
}

/// Reads the server's greeting, which tells a plain IMAP server from a TLS
/// port (a TLS server sends nothing until the client speaks).
async fn greeting(
    client: &mut async_imap::Client<ImapStream>,
    account: &ImapAccount,
    timeout: Duration,
) -> Result<(), ImapError> {
    let upper = account.name.to_ascii_uppercase();
    match tokio::time::timeout(timeout, client.read_response()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) | Ok(Err(_)) => Err(ImapError::Tls(format!(
            "{}:{} closed the connection or sent no IMAP greeting: is the TLS mode right? (DKL_IMAP_{upper}_TLS: `tls` for port 993, `starttls` or `plain` for 143)",
            account.host, account.port
        ))),
        Err(_) => Err(ImapError::Tls(format!(
            "{}:{} sent no IMAP greeting within {} s: a TLS port expects DKL_IMAP_{upper}_TLS=tls",
            account.host,
            account.port,
            timeout.as_secs()
        ))),
    }
}

async fn tls_handshake(
    tcp: TcpStream,
    account: &ImapAccount,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImapError> {
    let upper = account.name.to_ascii_uppercase();
    let ca_var = format!("DKL_IMAP_{upper}_CA_FILE");
    let config = crate::smtp::tls::client_config(account.ca_pem.as_deref(), &ca_var)
        .map_err(ImapError::Tls)?;
    let name = rustls_pki_types::ServerName::try_from(account.host.clone()).map_err(|e| {
        ImapError::Tls(format!("`{}` is not a TLS server name ({e})", account.host))
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let hint = if e.to_string().to_lowercase().contains("certificate") {
                format!(
                    " (is the certificate for `{}`? one signed by a private CA needs {ca_var})",
                    account.host
                )
            } else {
                format!(
                    " (is {}:{} a TLS port? for a plain or STARTTLS port set DKL_IMAP_{upper}_TLS)",
                    account.host, account.port
                )
            };
            ImapError::Tls(format!(
                "TLS handshake with {}:{} failed: {e}{hint}",
                account.host, account.port
            ))
        })
}

/// The pool mail ingest writes through: its own few connections (a
/// fetch holds one for its lock and stores through up to three more), so
/// memory stays flat however big a mailbox is.
pub fn ingest_pool(pool: &sqlx::PgPool, config: &dkl_shared::config::ImapConfig) -> sqlx::PgPool {
    let mailboxes: usize = config.accounts.iter().map(|a| a.mailboxes.len()).sum();
    dkl_shared::db::side_pool(pool, (4 + 2 * mailboxes).min(24) as u32)
}

/// Whether the server offers IDLE (RFC 2177).
pub async fn has_idle(session: &mut Session, timeout: Duration) -> Result<bool, ImapError> {
    let caps = timed(timeout, "CAPABILITY", session.capabilities()).await?;
    Ok(caps.has_str("IDLE"))
}
