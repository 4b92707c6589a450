//! Helpers for tests that run the real binaries as processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, so a failing
/// test leaves no stray workers behind.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaper {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// A command for `binary` with a clean environment: only PATH, the
/// database URL and fast heartbeats; no HTTP listener (tests run many
/// workers at once). Callers add what they need.
pub fn command(binary: &str, url: &str) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("DKL_HEARTBEAT_SECS", "1")
        .env("DKL_RESCUE_AFTER_SECS", "3")
        .env("DKL_SHUTDOWN_GRACE_SECS", "1")
        .env("DKL_HTTP_ADDR", "off")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    cmd
}

/// Starts `cmd` with its log in file `log`. Never an unread pipe: a full
/// pipe would block the process's logging, and with it the process.
pub fn spawn_logged(mut cmd: Command, log: &std::path::Path) -> Reaper {
    let file = std::fs::File::create(log).expect("create log file");
    Reaper(cmd.stderr(file).spawn().expect("spawn process"))
}

/// A fresh log file path under `target/tmp` (kept for post-mortems).
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
    std::fs::create_dir_all(&dir).expect("create target/tmp");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    dir.join(format!("dkl-{name}-{}-{nanos}.log", std::process::id()))
}

/// Sends `sig` to a child.
pub fn signal(child: &Child, sig: i32) {
    signal_pid(child.id(), sig);
}

/// Sends `sig` to a process id.
pub fn signal_pid(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits for a child to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A plain HTTP/1.1 GET against 127.0.0.1:`port`; returns (status, headers, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}
