//! A local IMAP server for tests, benchmarks and the demo: Debian's Dovecot
//! (`dovecot-imapd`, installed with apt when missing) run from a private
//! config in a temp dir, on a port of its own, plaintext login on
//! 127.0.0.1 only. It can be killed (`kill -9`) and started again on the
//! same port and mail, and messages can be delivered straight into a
//! user's Maildir.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dkl_shared::config::{AfterImport, ImapAccount, TlsMode};

/// Where Debian puts Dovecot.
pub const DOVECOT: &str = "/usr/sbin/dovecot";

/// Installs `dovecot-imapd` if it is missing, and the `vmail` user that owns the mail.
pub fn ensure_installed() -> io::Result<()> {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if !Path::new(DOVECOT).exists() {
        let script = "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null 2>&1 \
                      || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null)";
        let status = Command::new("sh").arg("-c").arg(script).status()?;
        if !status.success() || !Path::new(DOVECOT).exists() {
            return Err(io::Error::other(format!(
                "could not install dovecot-imapd (for {DOVECOT}): apt-get ended with {status}"
            )));
        }
    }
    let has_vmail = Command::new("id")
        .arg("vmail")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !has_vmail {
        // Another process may have made it meanwhile: check again after.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "vmail",
            ])
            .status();
    }
    Ok(())
}

/// A running Dovecot; killed when dropped.
pub struct Dovecot {
    /// Its IMAP port on 127.0.0.1.
    pub port: u16,
    /// Its temp dir (config, state, logs, mail under `mail/<user>/Maildir`).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Dovecot {
    /// Starts Dovecot on a free port with these users (`(login, password)`).
    pub fn start(users: &[(&str, &str)]) -> io::Result<Self> {
        Self::start_on(crate::smtp::sink::free_port()?, users)
    }

    /// Starts Dovecot on `port` (the demo's fixed port).
    pub fn start_on(port: u16, users: &[(&str, &str)]) -> io::Result<Self> {
        ensure_installed()?;
        let dir = std::env::temp_dir().join(format!(
            "dkl-dovecot-{port}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(dir.join("mail"))?;
        std::fs::create_dir_all(dir.join("run"))?;
        std::fs::create_dir_all(dir.join("state"))?;
        let users_file: String = users
            .iter()
            .map(|(user, password)| format!("{user}:{{PLAIN}}{password}\n"))
            .collect();
        std::fs::write(dir.join("users"), users_file)?;
        std::fs::write(dir.join("dovecot.conf"), config(&dir, port))?;
        // The base dir must be reachable for Dovecot's unprivileged users.
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        let _ = Command::new("chown")
            .args(["-R", "vmail:vmail"])
            .arg(dir.join("mail"))
            .status();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn config_file(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    fn launch(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dovecot.out"))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(DOVECOT)
            .process_group(0)
            .arg("-F")
            .arg("-c")
            .arg(self.config_file())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(io::Error::other(format!(
                    "dovecot exited with {status}: {}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "dovecot did not listen on 127.0.0.1:{} within 15 s: {}",
            self.port,
            self.log_tail()
        )))
    }

    /// The last lines of Dovecot's logs.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for file in ["dovecot.out", "dovecot.log"] {
            let content = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(10)..].join("\n"));
        }
        text
    }

    /// Kills the master and every Dovecot process of this instance with
    /// SIGKILL (connections drop mid-command); the mail stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The master runs in a process group of its own, which its
            // children (imap-login, imap, auth, …) inherit.
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again after [`kill`](Self::kill), on the same port and mail.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("run").join("master.pid"));
        self.launch()
    }

    /// An account for `user` on this server (plain IMAP on loopback, INBOX).
    pub fn account(&self, name: &str, user: &str, password: &str) -> ImapAccount {
        ImapAccount {
            name: name.to_string(),
            host: "127.0.0.1".into(),
            port: self.port,
            tls: TlsMode::Plain,
            user: user.to_string(),
            password: password.to_string(),
            mailboxes: vec!["INBOX".into()],
            after_import: AfterImport::Leave,
            idle: true,
            ca_pem: None,
            address: user.contains('@').then(|| user.to_ascii_lowercase()),
        }
    }

    /// The Maildir folder of `user`'s `mailbox` (INBOX or a folder name).
    pub fn maildir(&self, user: &str, mailbox: &str) -> PathBuf {
        let root = self.dir.join("mail").join(user).join("Maildir");
        if mailbox.eq_ignore_ascii_case("INBOX") {
            root
        } else {
            root.join(format!(".{mailbox}"))
        }
    }

    /// Puts `raw` into `user`'s `mailbox` as a new message (as a local
    /// delivery agent would): Dovecot gives it the next UID when it next
    /// looks, and wakes an IDLE connection.
    pub fn deliver(&self, user: &str, mailbox: &str, raw: &[u8]) -> io::Result<()> {
        self.deliver_all(user, mailbox, std::iter::once(raw.to_vec()))
            .map(|_| ())
    }

    /// Delivers many messages in order; returns how many.
    pub fn deliver_all(
        &self,
        user: &str,
        mailbox: &str,
        messages: impl IntoIterator<Item = Vec<u8>>,
    ) -> io::Result<usize> {
        let dir = self.maildir(user, mailbox);
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut n = 0;
        for raw in messages {
            let name = format!(
                "{}.M{}P{}Q{}.dkl",
                chrono::Utc::now().timestamp(),
                chrono::Utc::now().timestamp_subsec_micros(),
                std::process::id(),
                COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let tmp = dir.join("tmp").join(&name);
            std::fs::write(&tmp, raw)?;
            std::fs::rename(&tmp, dir.join("new").join(&name))?;
            n += 1;
        }
        let _ = Command::new("chown")
            .args(["-R", "vmail:vmail"])
            .arg(self.dir.join("mail").join(user))
            .status();
        Ok(n)
    }

    /// Gives `user`'s `mailbox` a new UIDVALIDITY (as a server whose index
    /// was rebuilt would): every message gets a new UID.
    pub fn reset_uid_validity(
        &self,
        user: &str,
        mailbox: &str,
        uid_validity: u32,
    ) -> io::Result<()> {
        let status = Command::new("doveadm")
            .arg("-c")
            .arg(self.config_file())
            .args(["mailbox", "update", "--uid-validity"])
            .arg(uid_validity.to_string())
            .args(["-u", user, mailbox])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "doveadm mailbox update ended with {status}: {}",
                self.log_tail()
            )));
        }
        Ok(())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"# A private Dovecot for dkl-mail-worker's tests, benchmarks and demo.
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_fsync = never
first_valid_uid = 100
mail_max_userip_connections = 200
mailbox_idle_check_interval = 1 secs
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = 256
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={d}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = .
  mailbox Trash {{
    special_use = \Trash
  }}
}}
"#
    )
}
