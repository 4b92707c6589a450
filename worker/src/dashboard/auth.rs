//! Who may use the dashboard: the admin token or the password (argon2), a
//! session cookie, and failed logins slowed down per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordVerifier;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "dkl_dashboard";

/// What a login is checked against.
pub struct Logins {
    token_digest: Option<[u8; 32]>,
    password_hash: Option<String>,
    /// One argon2 check at a time: each takes ~19 MiB and tens of
    /// milliseconds on purpose, and a flood of wrong passwords must not
    /// take the machine's memory.
    argon2_slot: std::sync::Arc<tokio::sync::Semaphore>,
    /// Fingerprints of the configured secrets, made once (see
    /// [`Logins::fingerprint`]).
    token_fingerprint: Option<String>,
    password_fingerprint: Option<String>,
}

/// How someone logged in (kept in the audit trail beside the name given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKind {
    /// With `DKL_DASHBOARD_TOKEN`.
    Token,
    /// With the password of `DKL_DASHBOARD_PASSWORD_HASH`.
    Password,
}

impl LoginKind {
    /// `token` or `password`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Password => "password",
        }
    }
}

impl Logins {
    /// From the configured token and password hash.
    pub fn new(config: &dkl_shared::config::DashboardConfig) -> Self {
        Self {
            token_digest: config.token.as_deref().map(digest),
            password_hash: config.password_hash.clone(),
            argon2_slot: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            // The token's fingerprint is slow to make (argon2): a copy of
            // the sessions table must not let anyone test token guesses
            // fast. The password's is of its hash, already argon2.
            token_fingerprint: config.token.as_deref().map(slow_fingerprint),
            password_fingerprint: config
                .password_hash
                .as_deref()
                .map(|h| hex(&Sha256::digest(format!("password:{h}").as_bytes()))),
        }
    }

    /// Fingerprints of the configured secrets, one per [`LoginKind`] in
    /// use: a session stores the one it logged in with and lasts only while
    /// that secret is configured.
    pub fn fingerprints(&self) -> Vec<String> {
        [LoginKind::Token, LoginKind::Password]
            .into_iter()
            .filter_map(|k| self.fingerprint(k))
            .collect()
    }

    /// The fingerprint of the secret of `kind`, if configured.
    pub fn fingerprint(&self, kind: LoginKind) -> Option<String> {
        match kind {
            LoginKind::Token => self.token_fingerprint.clone(),
            LoginKind::Password => self.password_fingerprint.clone(),
        }
    }

    /// True when `given` is the token or the password.
    pub async fn accepts(&self, given: &str) -> bool {
        self.check(given).await.is_some()
    }

    /// Which secret `given` is, if any. Compared in constant time (digests
    /// of equal length); the password check runs off the async threads,
    /// one at a time.
    pub async fn check(&self, given: &str) -> Option<LoginKind> {
        if let Some(expected) = &self.token_digest
            && bool::from(digest(given).ct_eq(expected))
        {
            return Some(LoginKind::Token);
        }
        let hash = self.password_hash.clone()?;
        // Owned and moved into the check: a client that hangs up does not
        // free the slot while its check still runs.
        let slot = self.argon2_slot.clone().acquire_owned().await.ok()?;
        let given = given.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            argon2::password_hash::phc::PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(given.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok.then_some(LoginKind::Password)
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `token:` + argon2id of the token with a fixed salt: the same for every
/// worker and restart, and as slow to guess from as a password hash.
fn slow_fingerprint(token: &str) -> String {
    let mut out = [0u8; 32];
    match argon2::Argon2::default().hash_password_into(
        token.as_bytes(),
        b"dkl-dashboard-session",
        &mut out,
    ) {
        Ok(()) => format!("token:{}", hex(&out)),
        // Cannot happen with these lengths; a fingerprint nobody matches
        // would only end sessions.
        Err(_) => format!("token:{}", hex(&digest(token))),
    }
}

/// An argon2id hash of `password` in PHC form, with a random salt and the
/// crate's default cost: what `DKL_DASHBOARD_PASSWORD_HASH` holds.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::PasswordHasher;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

/// The SHA-256 of a session id in hex: what `dashboard_sessions` keeps
/// instead of the id itself.
pub fn session_digest(session: &str) -> String {
    hex(&digest(session))
}

/// True when two secrets (CSRF tokens) are equal, compared in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    bool::from(digest(a).ct_eq(&digest(b)))
}

/// A new random secret (session id, CSRF token): 244 random bits from the
/// operating system, URL-safe.
pub fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The `Set-Cookie` value of a session (`None`: the logout that clears it).
pub fn session_cookie(session: Option<&str>, secure: bool, max_age: Duration) -> String {
    let (value, age) = match session {
        Some(s) => (s, max_age.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Login attempts per address: each attempt not (yet) known to have
/// succeeded doubles the wait before the next one from that address is
/// checked (from 250 ms, at most 8 s); a success clears it. An attempt
/// counts as failed from its start, so many sent at once wait in turn
/// instead of all being checked at the first one's delay. IPv6 addresses
/// count per /64 (one host usually has the whole prefix).
#[derive(Default)]
pub struct Throttle {
    /// Per address: attempts not known to have succeeded, the last one's
    /// start, and how many are being checked now.
    attempts: Mutex<HashMap<IpAddr, Attempts>>,
}

#[derive(Clone, Copy)]
struct Attempts {
    failed: u32,
    at: Instant,
    in_flight: u32,
}

/// Attempts of one address checked at the same time; more get 429 at once.
const THROTTLE_IN_FLIGHT: u32 = 2;

/// One login attempt being checked; ends (in flight no more) when dropped.
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    key: IpAddr,
    /// How long it waits before it is checked.
    pub wait: Duration,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut attempts = self
            .throttle
            .attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(a) = attempts.get_mut(&self.key) {
            a.in_flight = a.in_flight.saturating_sub(1);
        }
    }
}

/// Addresses remembered at most; past this, new addresses share one entry
/// (an attack from that many addresses slows them all down rather than
/// growing the map).
const THROTTLE_ADDRESSES: usize = 65_536;

/// An hour without attempts forgets an address.
const THROTTLE_MEMORY: Duration = Duration::from_secs(3600);

fn wait_after(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => (Duration::from_millis(250) * 2u32.saturating_pow(n - 1)).min(Duration::from_secs(8)),
    }
}

fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

impl Throttle {
    /// Starts an attempt from `ip`, or `None` when too many from it are
    /// being checked already (answer 429 without checking).
    pub fn attempt(&self, ip: IpAddr) -> Option<Attempt<'_>> {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        attempts.retain(|_, a| a.in_flight > 0 || a.at.elapsed() < THROTTLE_MEMORY);
        let mut key = throttle_key(ip);
        if !attempts.contains_key(&key) && attempts.len() >= THROTTLE_ADDRESSES {
            // Every address beyond the map's size shares one entry (and
            // its limits): an attack from that many addresses slows them
            // all down together.
            key = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        }
        let a = attempts.entry(key).or_insert(Attempts {
            failed: 0,
            at: Instant::now(),
            in_flight: 0,
        });
        if a.in_flight >= THROTTLE_IN_FLIGHT {
            return None;
        }
        let wait = wait_after(a.failed);
        a.failed = a.failed.saturating_add(1);
        a.at = Instant::now();
        a.in_flight += 1;
        Some(Attempt {
            throttle: self,
            key,
            wait,
        })
    }

    /// The attempt succeeded: the address is no longer slowed down.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = attempts.get_mut(&throttle_key(ip)) {
            a.failed = 0;
        }
    }

    /// How long the next attempt from `ip` will wait.
    pub fn next_wait(&self, ip: IpAddr) -> Duration {
        let attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        wait_after(attempts.get(&throttle_key(ip)).map_or(0, |a| a.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: Option<&str>, hash: Option<&str>) -> dkl_shared::config::DashboardConfig {
        dkl_shared::config::DashboardConfig {
            token: token.map(str::to_string),
            password_hash: hash.map(str::to_string),
            secure_cookie: None,
        }
    }

    #[tokio::test]
    async fn the_token_or_the_password_and_nothing_else() {
        let token = "t0k3n-".repeat(8);
        let logins = Logins::new(&config(Some(&token), None));
        assert!(logins.accepts(&token).await);
        assert!(!logins.accepts(&token[..token.len() - 1]).await);
        assert!(!logins.accepts("").await);

        use argon2::password_hash::PasswordHasher;
        let hash = argon2::Argon2::default()
            .hash_password(b"wandelen voor het goede doel")
            .unwrap()
            .to_string();
        let logins = Logins::new(&config(None, Some(&hash)));
        assert!(logins.accepts("wandelen voor het goede doel").await);
        assert!(!logins.accepts("wandelen").await);
        let broken = Logins::new(&config(None, Some("$argon2id$broken")));
        assert!(
            !broken.accepts("anything").await,
            "a broken hash lets nobody in"
        );
    }

    #[test]
    fn cookies_are_strict_and_read_back() {
        let c = session_cookie(Some("abc"), true, Duration::from_secs(60));
        assert_eq!(
            c,
            "dkl_dashboard=abc; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(session_cookie(None, false, Duration::ZERO).contains("dkl_dashboard=; "));
        assert_eq!(
            cookie_value("a=1; dkl_dashboard=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("dkl_dashboard=", COOKIE), None);
        assert_ne!(new_secret(), new_secret());
        assert_eq!(new_secret().len(), 64);
    }

    #[test]
    fn attempts_slow_an_address_down_until_one_succeeds() {
        let t = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(t.attempt(ip).unwrap().wait, Duration::ZERO);
        // Two at once wait in turn; a third is refused until one ends.
        let second = t.attempt(ip).unwrap();
        let third = t.attempt(ip).unwrap();
        assert_eq!(second.wait, Duration::from_millis(250));
        assert_eq!(third.wait, Duration::from_millis(500));
        assert!(t.attempt(ip).is_none());
        drop(second);
        drop(third);
        assert_eq!(t.next_wait(ip), Duration::from_secs(1));
        for _ in 0..10 {
            t.attempt(ip);
        }
        assert_eq!(t.next_wait(ip), Duration::from_secs(8));
        assert_eq!(t.next_wait("127.0.0.2".parse().unwrap()), Duration::ZERO);
        t.succeeded(ip);
        assert_eq!(t.attempt(ip).unwrap().wait, Duration::ZERO);
    }

    #[test]
    fn an_ipv6_host_counts_once_per_64_prefix() {
        let t = Throttle::default();
        t.attempt("2001:db8:1:2::1".parse().unwrap());
        t.attempt("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(
            t.next_wait("2001:db8:1:2::77".parse().unwrap()),
            Duration::from_millis(500)
        );
        assert_eq!(
            t.next_wait("2001:db8:1:3::1".parse().unwrap()),
            Duration::ZERO
        );
    }
}
