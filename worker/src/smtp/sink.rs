//! A local SMTP server for tests and benchmarks: postfix's `smtp-sink` on a
//! port of its own, installed with apt when missing. It keeps each message
//! it accepts as a file (unless started without), and can answer chosen
//! commands with a 4xx (`-r`) or 5xx (`-f`). `smtp-source`, postfix's load
//! generator, measures the ceiling in `dklctl bench send`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian's postfix puts its test tools.
pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
/// The load generator.
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

/// A child process killed and reaped when dropped.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port on 127.0.0.1 that no server of this process had before: a
/// test that stops a server for a while (an outage) keeps its port, which
/// a parallel test must not take in the meantime.
pub fn free_port() -> io::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())?;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err(io::Error::other(
        "no port left that this process has not used",
    ))
}

/// A running `smtp-sink`; stopped when dropped.
pub struct SmtpSink {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where it writes the messages it accepted.
    pub dir: PathBuf,
    _child: Reaper,
}

/// Installs postfix's tools if they are missing (a fresh machine).
pub fn ensure_installed() -> io::Result<()> {
    // Tests start sinks from many threads at once; one apt-get at a time.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if Path::new(SMTP_SINK).exists() {
        return Ok(());
    }
    let script = "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections \
                  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null \
                  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null)";
    let status = Command::new("sh").arg("-c").arg(script).status()?;
    if !status.success() || !Path::new(SMTP_SINK).exists() {
        return Err(io::Error::other(format!(
            "could not install postfix (for {SMTP_SINK}): apt-get ended with {status}"
        )));
    }
    Ok(())
}

impl SmtpSink {
    /// Starts a sink on a free port; `flags` go to smtp-sink (e.g. `["-f", "rcpt"]`).
    pub fn start(flags: &[&str]) -> io::Result<Self> {
        Self::start_on(free_port()?, flags)
    }

    /// Starts a sink on `port`.
    pub fn start_on(port: u16, flags: &[&str]) -> io::Result<Self> {
        Self::start_with(port, flags, true)
    }

    /// Starts a sink that keeps no messages (for benchmarks: no disk writes).
    pub fn start_discarding(flags: &[&str]) -> io::Result<Self> {
        Self::start_with(free_port()?, flags, false)
    }

    fn start_with(port: u16, flags: &[&str], keep: bool) -> io::Result<Self> {
        ensure_installed()?;
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dkl-smtp-sink-{port}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // smtp-sink drops to `nobody`, who must be able to write there.
        let _ = Command::new("chmod").arg("777").arg(&dir).status();
        let dump = format!("{}/%Y%m%d%H%M%S.", dir.display());
        let mut cmd = Command::new(SMTP_SINK);
        cmd.args(["-u", "nobody"]);
        if keep {
            cmd.args(["-d", &dump]);
        }
        cmd.args(flags).arg(format!("127.0.0.1:{port}")).arg("256");
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = Reaper(cmd.spawn()?);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other(format!(
                    "smtp-sink did not listen on 127.0.0.1:{port} within 10 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            port,
            dir,
            _child: child,
        })
    }

    /// Stops the server, then returns every message it accepted (none is
    /// half-written once it has stopped).
    pub fn stop_and_collect(mut self) -> Vec<String> {
        let _ = self._child.0.kill();
        let _ = self._child.0.wait();
        self.messages()
    }

    /// The messages accepted so far, as text (one being received may be
    /// partial: stop the server first for an exact count).
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }
}

impl SmtpSink {
    /// The second (UTC, `YYYYmmddHHMMSS`) each accepted message arrived in,
    /// as the server saw it.
    pub fn arrival_seconds(&self) -> Vec<String> {
        // From each file's last write (the end of its DATA), not from its
        // name: smtp-sink stamps the name when the previous transaction on
        // the connection ended, which on a reused connection can be the
        // second before.
        let mut seconds: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok()?.modified().ok())
                    .map(|t| {
                        // File times come from the kernel's coarse clock,
                        // up to a tick (4 ms at HZ=250) behind: a message
                        // written in a second's first milliseconds can be
                        // stamped in the second before. Senders take no
                        // slot in a second's last 200 ms, so moving every
                        // stamp 10 ms on puts none in a wrong second.
                        (chrono::DateTime::<chrono::Utc>::from(t)
                            + chrono::Duration::milliseconds(10))
                        .format("%Y%m%d%H%M%S")
                        .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        seconds.sort();
        seconds
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
