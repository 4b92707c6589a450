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
}

impl Logins {
    /// From the configured token and password hash.
    pub fn new(config: &dkl_shared::config::DashboardConfig) -> Self {
        Self {
            token_digest: config.token.as_deref().map(digest),
            password_hash: config.password_hash.clone(),
        }
    }

    /// True when `given` is the token or the password. Compared in constant
    /// time (digests of equal length); the password check runs off the async
    /// threads (argon2 takes tens of milliseconds on purpose).
    pub async fn accepts(&self, given: &str) -> bool {
        if let Some(expected) = &self.token_digest
            && bool::from(digest(given).ct_eq(expected))
        {
            return true;
        }
        let Some(hash) = self.password_hash.clone() else {
            return false;
        };
        let given = given.to_string();
        tokio::task::spawn_blocking(move || {
            argon2::password_hash::phc::PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(given.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
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
    digest(session).iter().map(|b| format!("{b:02x}")).collect()
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

/// Failed logins per address: each failure doubles the wait before that
/// address is answered again (from 250 ms, at most 8 s); a success clears it.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// How long `ip` must wait before its next attempt is checked.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&ip) {
            Some((n, _)) => (Duration::from_millis(250) * 2u32.saturating_pow(n.saturating_sub(1)))
                .min(Duration::from_secs(8)),
            None => Duration::ZERO,
        }
    }

    /// Records an attempt's outcome.
    pub fn record(&self, ip: IpAddr, ok: bool) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Forget addresses quiet for an hour, so the map cannot grow for ever.
        failures.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(3600));
        if ok {
            failures.remove(&ip);
        } else {
            let entry = failures.entry(ip).or_insert((0, Instant::now()));
            entry.0 = entry.0.saturating_add(1);
            entry.1 = Instant::now();
        }
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
    fn failures_slow_an_address_down_until_it_succeeds() {
        let t = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(t.delay(ip), Duration::ZERO);
        t.record(ip, false);
        assert_eq!(t.delay(ip), Duration::from_millis(250));
        for _ in 0..10 {
            t.record(ip, false);
        }
        assert_eq!(t.delay(ip), Duration::from_secs(8));
        t.record(ip, true);
        assert_eq!(t.delay(ip), Duration::ZERO);
    }
}
