//! TLS for SMTP connections: implicit TLS (port 465) on a stream of our
//! own (lettre cannot do the handshake on a stream it did not connect), and
//! the parameters lettre's STARTTLS uses. Both trust the webpki roots plus
//! the configuration's `CA_FILE`, if any.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dkl_shared::config::SmtpConfig;
use lettre::transport::smtp::client::{AsyncTokioStream, Certificate, TlsParameters};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// An implicit-TLS stream lettre can speak SMTP on.
pub struct ImplicitTls(tokio_rustls::client::TlsStream<TcpStream>);

impl std::fmt::Debug for ImplicitTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ImplicitTls")
            .field(&self.0.get_ref().0.peer_addr().ok())
            .finish()
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// The TLS handshake on `tcp` (already connected, TCP_NODELAY set), checking
/// the server's certificate against `config.host`.
pub async fn handshake(tcp: TcpStream, config: &SmtpConfig) -> Result<ImplicitTls, String> {
    let client = client_config(config.ca_pem.as_deref(), &ca_var(config))?;
    let name = ServerName::try_from(config.host.clone())
        .map_err(|e| format!("`{}` is not a TLS server name ({e})", config.host))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            format!(
                "TLS handshake failed: {e}{}",
                certificate_hint(&e.to_string(), config)
            )
        })?;
    Ok(ImplicitTls(stream))
}

/// A TLS client (ring) trusting the public roots plus the certificates in
/// `ca_pem` (from the variable `ca_var`, named in errors).
pub fn client_config(ca_pem: Option<&[u8]>, ca_var: &str) -> Result<rustls::ClientConfig, String> {
    let roots = root_store(ca_pem, ca_var)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What lettre's STARTTLS uses: the same trust as [`handshake`].
pub fn starttls_parameters(config: &SmtpConfig) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(pem) = &config.ca_pem {
        let cert = Certificate::from_pem(pem).map_err(|e| format!("{}: {e}", ca_var(config)))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| format!("TLS setup: {e}"))
}

/// When the server's certificate is not trusted, where to look.
pub fn certificate_hint(error: &str, config: &SmtpConfig) -> String {
    if error.contains("certificate")
        || error.contains("Certificate")
        || error.contains("UnknownIssuer")
    {
        format!(
            " (is the certificate for `{}`? one signed by a private CA needs {} with that CA)",
            config.host,
            ca_var(config)
        )
    } else {
        String::new()
    }
}

fn ca_var(config: &SmtpConfig) -> String {
    format!("DKL_SMTP_{}_CA_FILE", config.name.to_uppercase())
}

fn root_store(ca_pem: Option<&[u8]>, ca_var: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_pem {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("{ca_var}: not a PEM certificate ({e})"))?;
            roots.add(cert).map_err(|e| format!("{ca_var}: {e}"))?;
        }
    }
    Ok(roots)
}

/// Checks at start that the configuration's CA file parses.
pub fn check(config: &SmtpConfig) -> Result<(), String> {
    root_store(config.ca_pem.as_deref(), &ca_var(config)).map(|_| ())
}
