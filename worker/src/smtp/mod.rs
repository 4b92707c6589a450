//! Sending mail over SMTP with lettre, on connections of our own.
//!
//! lettre 0.11 never sets TCP_NODELAY, so on its own sockets a pooled
//! connection waits for the peer's delayed ACK after each message (~23
//! messages/s on loopback). We connect the TCP stream ourselves with
//! `set_nodelay(true)` and hand it to lettre's SMTP client
//! (`AsyncSmtpConnection::connect_with_transport`), which also means lettre's
//! pool does not apply: [`Smtp`] keeps its own per configuration, with at
//! most `pool_size` connections open at once (a sender first takes an
//! [`SmtpSlot`]; providers limit concurrent connections). A connection that
//! failed, broke or was closed by the server (421) is dropped, never reused;
//! one that sat idle for more than [`CHECK_AFTER_IDLE`] is checked with NOOP
//! before it carries a message.

pub mod dkim;
pub mod sink;
pub mod stats;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dkl_shared::config::{MailConfig, SmtpConfig, TlsMode};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;

/// Where bounces of mail sent through `config` go: `configured`
/// (`DKL_BOUNCE_ADDRESS`), else `bounce@` the domain of its From.
pub fn bounce_base(config: &SmtpConfig, configured: Option<&str>) -> String {
    match configured {
        Some(address) => address.to_string(),
        None => {
            let domain = config
                .from
                .rsplit_once('@')
                .map(|(_, d)| d.trim_end_matches('>').trim())
                .unwrap_or("localhost");
            format!("bounce@{}", domain.to_ascii_lowercase())
        }
    }
}

/// A VERP return path (`bounce+<reference>@…`) and the message's
/// recipients: a bounce then names the send it is about even when it
/// quotes nothing of the message. `reference` is `m<verzonden_emails.id>`
/// or `n<newsletter_deliveries.id>` ([`crate::bounce::SendReference`]).
pub fn verp_envelope(message: &lettre::Message, base: &str, reference: &str) -> Envelope {
    let recipients = message.envelope().to().to_vec();
    let from = crate::address::plus_address(base, reference)
        .and_then(|a| a.parse::<lettre::Address>().ok())
        .or_else(|| message.envelope().from().cloned());
    Envelope::new(from, recipients.clone()).unwrap_or_else(|_| message.envelope().clone())
}

/// The envelope of an automatic answer: `MAIL FROM:<>` (RFC 3834 section
/// 3.3), so that whatever comes back is never answered again.
pub fn null_sender_envelope(message: &lettre::Message) -> Envelope {
    let recipients = message.envelope().to().to_vec();
    Envelope::new(None, recipients).unwrap_or_else(|_| message.envelope().clone())
}

/// The server's answer to an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Reply code (250).
    pub code: u16,
    /// Reply text.
    pub text: String,
}

/// Why a message was not accepted. Knows whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpError {
    /// A 4xx reply, a connection that could not be made or broke: try later.
    #[error("{message}")]
    Transient {
        /// The reply code, when the server gave one.
        code: Option<u16>,
        /// What happened.
        message: String,
    },
    /// A 5xx reply: the server will not take this message.
    #[error("{message}")]
    Permanent {
        /// The reply code.
        code: Option<u16>,
        /// The server's words.
        message: String,
    },
    /// No answer within the command timeout once the message was on its
    /// way: it may or may not have been accepted. Trying again may send it
    /// twice.
    #[error("{message}")]
    Unanswered {
        /// What happened.
        message: String,
    },
}

impl SmtpError {
    /// The reply code, if any.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Transient { code, .. } | Self::Permanent { code, .. } => *code,
            Self::Unanswered { .. } => None,
        }
    }

    fn from_lettre(config: &SmtpConfig, e: &lettre::transport::smtp::Error) -> Self {
        let code = e.status().map(u16::from);
        let message = format!(
            "SMTP `{}` ({}:{}): {e}",
            config.name, config.host, config.port
        );
        if e.is_permanent() {
            Self::Permanent { code, message }
        } else {
            Self::Transient { code, message }
        }
    }
}

/// How a transaction failed: before the message content went out (nothing
/// can have been delivered), or once it was on its way.
enum Failed {
    /// A command before DATA's content failed or was refused (`None`: timed out).
    Refused(Option<lettre::transport::smtp::Error>),
    /// Writing the content or reading its answer failed (`None`: timed out).
    OnTheWire(Option<lettre::transport::smtp::Error>),
}

/// One SMTP transaction (MAIL, RCPT, DATA, content), as lettre's
/// `AsyncSmtpConnection::send` does it, but telling a failure before the
/// content from one after it: only the latter can have delivered the
/// message, so only the latter makes bulk mail `unknown`.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    timeout: Duration,
    envelope: &Envelope,
    message: &[u8],
) -> Result<lettre::transport::smtp::response::Response, Failed> {
    use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
    use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
    // Addresses are ASCII by now (`crate::address`: IDN domains in
    // ASCII, non-ASCII local parts refused), so SMTPUTF8 is never needed.
    let mut options = Vec::new();
    if !message.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let commands = async {
        conn.command(Mail::new(envelope.from().cloned(), options))
            .await?;
        for to in envelope.to() {
            conn.command(Rcpt::new(to.clone(), vec![])).await?;
        }
        conn.command(Data).await
    };
    tokio::time::timeout(timeout, commands)
        .await
        .map_err(|_| Failed::Refused(None))?
        .map_err(|e| Failed::Refused(Some(e)))?;
    match tokio::time::timeout(timeout, conn.message(message)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Failed::OnTheWire(Some(e))),
        Err(_) => Err(Failed::OnTheWire(None)),
    }
}

/// A pooled connection idle for longer than this is checked with NOOP
/// before it is used. One used a moment ago is not: the check would cost
/// a round trip per message, and a server that closed it since (a restart)
/// makes the send fail before DATA, a passing failure the job retries.
pub const CHECK_AFTER_IDLE: Duration = Duration::from_secs(2);

struct IdleConnection {
    conn: AsyncSmtpConnection,
    since: Instant,
}

struct Pool {
    /// One permit per connection that may be open.
    slots: Arc<tokio::sync::Semaphore>,
    idle: Mutex<Vec<IdleConnection>>,
}

/// The right to use one of a configuration's connections; taken before a
/// message's row is started, held through its SMTP transaction.
pub struct SmtpSlot {
    config: String,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Open connections for reuse, per SMTP configuration.
pub struct Smtp {
    config: MailConfig,
    hello: ClientId,
    pools: BTreeMap<String, Pool>,
    default_pool: Pool,
    signers: BTreeMap<String, dkim::Signer>,
    stats: Arc<stats::MailStats>,
}

impl Smtp {
    /// A sender for every configuration in `config`, counting into `stats`.
    pub fn new(config: MailConfig, stats: Arc<stats::MailStats>) -> Self {
        let pool = |c: &SmtpConfig| Pool {
            slots: Arc::new(tokio::sync::Semaphore::new(c.pool_size.max(1))),
            idle: Mutex::new(Vec::new()),
        };
        let default_pool = pool(&config.default);
        let pools = config
            .all()
            .filter(|c| c.name != config.default.name)
            .map(|c| (c.name.clone(), pool(c)))
            .collect();
        // `check_config` refused a key that does not load before any sender
        // was made; one that fails here all the same signs nothing (logged).
        let signers = config
            .all()
            .filter_map(|c| match dkim::Signer::for_config(c) {
                Ok(signer) => signer.map(|s| (c.name.clone(), s)),
                Err(e) => {
                    tracing::error!(smtp = %c.name, error = %e, "DKIM key not usable; this configuration's mail goes out unsigned");
                    None
                }
            })
            .collect();
        Self {
            config,
            hello: ClientId::default(),
            pools,
            default_pool,
            signers,
            stats,
        }
    }

    /// The counters this sender keeps.
    pub fn stats(&self) -> &Arc<stats::MailStats> {
        &self.stats
    }

    /// The configuration a mail kind uses: `newsletter` for newsletters,
    /// `registration` for transactional mail, `default` for the rest; each
    /// falls back to `default` when it is not configured.
    pub fn config_for(&self, kind: dkl_shared::kinds::MailKind) -> &SmtpConfig {
        use dkl_shared::kinds::MailKind;
        self.config.smtp_for(match kind {
            MailKind::Newsletter => "newsletter",
            MailKind::Transactional => "registration",
            MailKind::Admin | MailKind::AutoReply => "default",
        })
    }

    /// The DKIM signer of `config`, when it signs.
    pub fn signer(&self, config: &SmtpConfig) -> Option<&dkim::Signer> {
        self.signers.get(&config.name)
    }

    /// Waits until one of `config`'s connections is free (at most
    /// `pool_size` are in use at once, across every sender of this process).
    pub async fn reserve(&self, config: &SmtpConfig) -> Result<SmtpSlot, SmtpError> {
        let permit = self
            .pool(&config.name)
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SmtpError::Transient {
                code: None,
                message: format!("SMTP `{}`: the connection pool is shut down", config.name),
            })?;
        Ok(SmtpSlot {
            config: config.name.clone(),
            _permit: permit,
        })
    }

    /// `name`'s pool; `default`'s for `default` and any name without a
    /// configuration of its own (as `MailConfig::smtp_for` falls back).
    fn pool(&self, name: &str) -> &Pool {
        self.pools.get(name).unwrap_or(&self.default_pool)
    }

    /// Sends one formatted message on a pooled connection (or a new one),
    /// within the slot taken with [`Smtp::reserve`].
    ///
    /// Never sends a message twice by itself: a failure once the message is
    /// on its way is reported, not retried here (the caller's records decide).
    pub async fn send(
        &self,
        slot: &SmtpSlot,
        config: &SmtpConfig,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Accepted, SmtpError> {
        debug_assert_eq!(
            slot.config, config.name,
            "an SMTP slot is used for its own configuration"
        );
        let started = std::time::Instant::now();
        let result = self.send_on_a_connection(config, envelope, message).await;
        // Reachable: the server answered, whatever it said.
        let answered = result
            .as_ref()
            .map_or_else(|e| e.code().is_some(), |_| true);
        self.stats
            .transaction(&config.name, started.elapsed(), answered);
        result
    }

    async fn send_on_a_connection(
        &self,
        config: &SmtpConfig,
        envelope: &Envelope,
        message: &[u8],
    ) -> Result<Accepted, SmtpError> {
        let mut conn = loop {
            match self.take_idle(&config.name) {
                Some(IdleConnection { conn, since }) if since.elapsed() < CHECK_AFTER_IDLE => {
                    break conn;
                }
                Some(IdleConnection { mut conn, .. }) => {
                    let checked =
                        tokio::time::timeout(config.command_timeout, conn.test_connected()).await;
                    if checked.unwrap_or(false) {
                        break conn;
                    }
                    tracing::debug!(smtp = %config.name, "pooled SMTP connection was closed by the server; dropping it");
                }
                None => break self.connect(config).await?,
            }
        };
        match transaction(&mut conn, config.command_timeout, envelope, message).await {
            Ok(reply) => {
                let accepted = Accepted {
                    code: u16::from(reply.code()),
                    text: reply.message().collect::<Vec<_>>().join(" "),
                };
                self.put_idle(config, conn);
                Ok(accepted)
            }
            // A failed session is dropped (never reused).
            Err(Failed::Refused(Some(e))) => Err(SmtpError::from_lettre(config, &e)),
            Err(Failed::Refused(None)) => Err(SmtpError::Transient {
                code: None,
                message: format!(
                    "SMTP `{}` ({}:{}): no answer within {}s before the message was sent (DKL_SMTP_{}_COMMAND_TIMEOUT_SECS)",
                    config.name,
                    config.host,
                    config.port,
                    config.command_timeout.as_secs(),
                    config.name.to_uppercase()
                ),
            }),
            // The server answered the end of the message with an error.
            Err(Failed::OnTheWire(Some(e))) if e.status().is_some() => {
                Err(SmtpError::from_lettre(config, &e))
            }
            // The message was (partly) on its way and no answer came: it may
            // have been accepted.
            Err(Failed::OnTheWire(e)) => Err(SmtpError::Unanswered {
                message: format!(
                    "SMTP `{}` ({}:{}): {} while the message was being sent; it may or may not have been accepted",
                    config.name,
                    config.host,
                    config.port,
                    match e {
                        Some(e) => format!("connection failed ({e})"),
                        None => format!(
                            "no answer within {}s (DKL_SMTP_{}_COMMAND_TIMEOUT_SECS)",
                            config.command_timeout.as_secs(),
                            config.name.to_uppercase()
                        ),
                    }
                ),
            }),
        }
    }

    fn take_idle(&self, name: &str) -> Option<IdleConnection> {
        self.pool(name)
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
    }

    fn put_idle(&self, config: &SmtpConfig, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self
            .pool(&config.name)
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if idle.len() < config.pool_size {
            idle.push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection: TCP with TCP_NODELAY, greeting and EHLO, STARTTLS
    /// when required, login when configured.
    async fn connect(&self, config: &SmtpConfig) -> Result<AsyncSmtpConnection, SmtpError> {
        let unreachable = |what: String| SmtpError::Transient {
            code: None,
            message: format!(
                "SMTP `{}` ({}:{}): {what}",
                config.name, config.host, config.port
            ),
        };
        let connecting = async {
            let stream = tokio::net::TcpStream::connect((config.host.as_str(), config.port))
                .await
                .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
            stream
                .set_nodelay(true)
                .map_err(|e| unreachable(format!("cannot set TCP_NODELAY: {e}")))?;
            let stream: Box<dyn lettre::transport::smtp::client::AsyncTokioStream> =
                match config.tls {
                    TlsMode::Tls => {
                        Box::new(tls::handshake(stream, config).await.map_err(unreachable)?)
                    }
                    TlsMode::Plain | TlsMode::StartTls => Box::new(stream),
                };
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                .await
                .map_err(|e| unreachable(format!("the server refused the session: {e}")))
        };
        let mut conn = tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no greeting within {}s",
                    config.connect_timeout.as_secs()
                ))
            })??;
        if config.tls == TlsMode::StartTls {
            if !conn.can_starttls() {
                return Err(unreachable(
                    "the server does not offer STARTTLS, which this configuration requires".into(),
                ));
            }
            let parameters = tls::starttls_parameters(config).map_err(unreachable)?;
            let upgrading = tokio::time::timeout(
                config.connect_timeout,
                conn.starttls(parameters, &self.hello),
            );
            let upgraded = upgrading.await.map_err(|_| {
                unreachable(format!(
                    "no TLS handshake after STARTTLS within {}s",
                    config.connect_timeout.as_secs()
                ))
            })?;
            upgraded.map_err(|e| {
                let e = e.to_string();
                unreachable(format!(
                    "STARTTLS failed: {e}{}",
                    tls::certificate_hint(&e, config)
                ))
            })?;
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            let credentials = Credentials::new(user.clone(), password.clone());
            // A refused login is the configuration's fault, not the
            // message's: the mail waits (retried) until the operator fixes it.
            let login = tokio::time::timeout(
                config.command_timeout,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials),
            );
            let logged_in = login.await.map_err(|_| {
                unreachable(format!(
                    "no answer to the login within {}s",
                    config.command_timeout.as_secs()
                ))
            })?;
            logged_in.map_err(|e| {
                let name = config.name.to_uppercase();
                unreachable(format!(
                    "login refused ({e}); check DKL_SMTP_{name}_USER and DKL_SMTP_{name}_PASSWORD"
                ))
            })?;
        }
        Ok(conn)
    }
}

/// Checks what can be checked of the SMTP configurations before any mail is
/// sent: every From address parses, CA files and DKIM keys load.
pub fn check_config(config: &MailConfig) -> Result<(), String> {
    for c in config.all() {
        tls::check(c)?;
        dkim::Signer::for_config(c)?;
        c.from.parse::<lettre::message::Mailbox>().map_err(|e| {
            format!(
                "DKL_SMTP_{}_FROM={:?} is not an address ({e}); e.g. De Koninklijke Loop <info@dekoninklijkeloop.nl>",
                c.name.to_uppercase(),
                c.from
            )
        })?;
    }
    Ok(())
}
