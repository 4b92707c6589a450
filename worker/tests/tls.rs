//! SMTP over TLS against a real server (aiosmtpd from PyPI, in a venv the
//! test makes) whose certificate a test CA signed (openssl), and DKIM
//! signatures checked by an independent verifier (dkimpy).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dkl_shared::config::{DkimConfig, MailConfig, SmtpConfig, TlsMode};
use dkl_worker::smtp::stats::MailStats;
use dkl_worker::smtp::{Smtp, SmtpError};
use lettre::Message;

/// A venv with aiosmtpd and dkimpy, made once per machine (shared by runs).
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = std::env::temp_dir().join("dkl-test-venv-aiosmtpd-1");
        let python = dir.join("bin/python");
        let ready = |p: &Path| {
            Command::new(p)
                .args(["-c", "import aiosmtpd, dkim"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready(&python) {
            let building =
                std::env::temp_dir().join(format!("dkl-test-venv-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&building);
            run(Command::new("python3").arg("-m").arg("venv").arg(&building));
            run(Command::new(building.join("bin/pip")).args([
                "install",
                "-q",
                "aiosmtpd==1.4.6",
                "dkimpy==1.1.8",
            ]));
            // Another test run may have finished its venv meanwhile; either is fine.
            if std::fs::rename(&building, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&building);
            }
        }
        assert!(
            ready(&python),
            "the test venv at {} has no aiosmtpd/dkimpy",
            dir.display()
        );
        dir
    })
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a server certificate it signed for localhost and 127.0.0.1.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=DKL test CA",
            ])
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .arg("-keyout")
            .arg(d.join("ca.key"))
            .arg("-out")
            .arg(d.join("ca.pem")));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(d.join("server.key"))
            .arg("-out")
            .arg(d.join("server.csr")));
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(d.join("server.csr"))
            .arg("-CA")
            .arg(d.join("ca.pem"))
            .arg("-CAkey")
            .arg(d.join("ca.key"))
            .arg("-extfile")
            .arg(d.join("ext.cnf"))
            .arg("-out")
            .arg(d.join("server.pem")));
        Self { dir }
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.pem")).unwrap()
    }
}

/// aiosmtpd on a port of its own, killed on drop.
struct Server {
    child: Child,
    port: u16,
    out: tempfile::TempDir,
}

impl Server {
    fn start(mode: &str, pki: &Pki) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tls_smtp_server.py");
        let mut child = Command::new(venv().join("bin/python"))
            .arg(script)
            .arg(mode)
            .arg(port.to_string())
            .arg(pki.dir.path().join("server.pem"))
            .arg(pki.dir.path().join("server.key"))
            .arg(out.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the TLS SMTP server did not start");
        Self { child, port, out }
    }

    /// The messages it kept, in arrival order.
    fn messages(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<_> = std::fs::read_dir(self.out.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(host: &str, port: u16, tls: TlsMode, ca_pem: Option<Vec<u8>>) -> SmtpConfig {
    SmtpConfig {
        name: "default".into(),
        host: host.into(),
        port,
        tls,
        user: None,
        password: None,
        from: "De Koninklijke Loop <info@dekoninklijkeloop.nl>".into(),
        connect_timeout: Duration::from_secs(10),
        pool_size: 2,
        command_timeout: Duration::from_secs(10),
        rate_per_second: None,
        rate_per_hour: None,
        ca_pem,
        dkim: None,
    }
}

fn message(subject: &str) -> Message {
    Message::builder()
        .from(
            "De Koninklijke Loop <info@dekoninklijkeloop.nl>"
                .parse()
                .unwrap(),
        )
        .to("deelnemer@example.org".parse().unwrap())
        .subject(subject)
        .message_id(Some(format!(
            "<{}@dekoninklijkeloop.nl>",
            uuid::Uuid::new_v4()
        )))
        .body("Tot ziens bij De Koninklijke Loop!\r\n".to_string())
        .unwrap()
}

async fn send(c: &SmtpConfig, message: &Message) -> Result<dkl_worker::smtp::Accepted, SmtpError> {
    let smtp = Smtp::new(mail_config(c.clone()), Arc::new(MailStats::default()));
    let slot = smtp.reserve(c).await?;
    smtp.send(&slot, c, message.envelope(), &message.formatted())
        .await
}

fn mail_config(c: SmtpConfig) -> MailConfig {
    MailConfig {
        default: c,
        named: Default::default(),
    }
}

#[tokio::test]
async fn starttls_to_a_server_with_a_private_ca_delivers() {
    let pki = Pki::new();
    let server = Server::start("starttls", &pki);
    let c = config(
        "localhost",
        server.port,
        TlsMode::StartTls,
        Some(pki.ca_pem()),
    );
    let accepted = send(&c, &message("Over STARTTLS"))
        .await
        .expect("sent over STARTTLS");
    assert_eq!(accepted.code, 250);
    let kept = server.messages();
    assert_eq!(kept.len(), 1);
    assert!(String::from_utf8_lossy(&kept[0]).contains("Subject: Over STARTTLS"));
}

#[tokio::test]
async fn implicit_tls_to_a_server_with_a_private_ca_delivers() {
    let pki = Pki::new();
    let server = Server::start("tls", &pki);
    // By IP: the certificate names 127.0.0.1 too.
    let c = config("127.0.0.1", server.port, TlsMode::Tls, Some(pki.ca_pem()));
    for i in 0..3 {
        send(&c, &message(&format!("Over TLS {i}")))
            .await
            .expect("sent over implicit TLS");
    }
    assert_eq!(server.messages().len(), 3);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_names_the_ca_variable() {
    let pki = Pki::new();
    for mode in [TlsMode::StartTls, TlsMode::Tls] {
        let server = Server::start(
            if mode == TlsMode::Tls {
                "tls"
            } else {
                "starttls"
            },
            &pki,
        );
        let c = config("localhost", server.port, mode, None);
        let err = send(&c, &message("Nooit"))
            .await
            .expect_err("an unknown CA must be refused");
        assert!(matches!(err, SmtpError::Transient { .. }), "{err:?}");
        assert!(
            err.to_string().contains("DKL_SMTP_DEFAULT_CA_FILE"),
            "{err}"
        );
        assert!(server.messages().is_empty());
    }
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused() {
    let pki = Pki::new();
    let server = Server::start("tls", &pki);
    // 127.0.0.2 reaches the same loopback server, but the certificate does not name it.
    let c = config("127.0.0.2", server.port, TlsMode::Tls, Some(pki.ca_pem()));
    let Err(err) = send(&c, &message("Nooit")).await else {
        // Some kernels do not route 127.0.0.2; then there is nothing to check.
        return;
    };
    assert!(
        err.to_string().contains("TLS handshake failed")
            || err.to_string().contains("cannot connect"),
        "{err}"
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered_sends_nothing() {
    let pki = Pki::new();
    let server = Server::start("plain", &pki);
    let c = config(
        "localhost",
        server.port,
        TlsMode::StartTls,
        Some(pki.ca_pem()),
    );
    let err = send(&c, &message("Nooit"))
        .await
        .expect_err("no STARTTLS, no mail");
    assert!(err.to_string().contains("does not offer STARTTLS"), "{err}");
    assert!(server.messages().is_empty());
}

/// Signs with an RSA key (PKCS#1, as `openssl genrsa -traditional` writes
/// it) and lets dkimpy verify the message the server received, with the
/// public key served as the DNS TXT record would be.
#[tokio::test]
async fn dkim_signatures_verify_with_an_independent_verifier() {
    let pki = Pki::new();
    let server = Server::start("starttls", &pki);
    let d = pki.dir.path();
    run(Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(d.join("dkim.pem"))
        .arg("2048"));
    let public = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl rsa -in {} -pubout -outform DER 2>/dev/null | base64 -w0",
            d.join("dkim.pem").display()
        ))
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap();
    assert!(public.len() > 300, "public key: {public}");
    let mut c = config(
        "localhost",
        server.port,
        TlsMode::StartTls,
        Some(pki.ca_pem()),
    );
    c.dkim = Some(DkimConfig {
        selector: "dkl2026".into(),
        key_file: d.join("dkim.pem"),
        key: std::fs::read_to_string(d.join("dkim.pem")).unwrap(),
    });
    let smtp = Smtp::new(mail_config(c.clone()), Arc::new(MailStats::default()));
    let signer = smtp.signer(&c).expect("a DKIM key is configured");
    let mut signed = message("Ondertekend: één bericht");
    signer.sign(&mut signed);
    let slot = smtp.reserve(&c).await.unwrap();
    smtp.send(&slot, &c, signed.envelope(), &signed.formatted())
        .await
        .unwrap();
    let kept = server.messages();
    assert_eq!(kept.len(), 1);
    let eml = d.join("received.eml");
    std::fs::write(&eml, &kept[0]).unwrap();
    let verify = |record: &str| {
        let script = "import dkim, sys\n\
                      msg = open(sys.argv[1], 'rb').read()\n\
                      rec = sys.argv[2].encode()\n\
                      def dns(name, timeout=5):\n    return rec if name == b'dkl2026._domainkey.dekoninklijkeloop.nl.' else None\n\
                      print('pass' if dkim.verify(msg, dnsfunc=dns) else 'fail')\n";
        let out = Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(script)
            .arg(&eml)
            .arg(record)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        String::from_utf8_lossy(&kept[0])
            .contains("DKIM-Signature: v=1; a=rsa-sha256; d=dekoninklijkeloop.nl; s=dkl2026;"),
        "{}",
        String::from_utf8_lossy(&kept[0])
    );
    assert_eq!(verify(&format!("v=DKIM1; k=rsa; p={public}")), "pass");
    // And the verifier does fail a wrong key: the check can fail.
    run(Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(d.join("other.pem"))
        .arg("2048"));
    let other = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl rsa -in {} -pubout -outform DER 2>/dev/null | base64 -w0",
            d.join("other.pem").display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        verify(&format!(
            "v=DKIM1; k=rsa; p={}",
            String::from_utf8_lossy(&other.stdout)
        )),
        "fail"
    );
}

#[test]
fn a_pkcs8_dkim_key_is_refused_with_the_conversion_command() {
    let mut c = config("localhost", 25, TlsMode::StartTls, None);
    c.dkim = Some(DkimConfig {
        selector: "s".into(),
        key_file: "/etc/dkl/dkim.pem".into(),
        key: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".into(),
    });
    let err = dkl_worker::smtp::check_config(&mail_config(c)).unwrap_err();
    assert!(
        err.contains("DKL_SMTP_DEFAULT_DKIM_KEY_FILE") && err.contains("-traditional"),
        "{err}"
    );
}
