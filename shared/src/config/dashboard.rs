//! The operator dashboard: who may log in, and how its cookie is sent.

use super::ConfigError;

/// Settings of the dashboard served under `/dashboard` on `DKL_HTTP_ADDR`.
#[derive(Clone, PartialEq, Eq)]
pub struct DashboardConfig {
    /// `DKL_DASHBOARD_TOKEN`: an admin token (at least 32 characters).
    pub token: Option<String>,
    /// `DKL_DASHBOARD_PASSWORD_HASH`: an argon2id hash in PHC form
    /// (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    pub password_hash: Option<String>,
    /// `DKL_DASHBOARD_SECURE_COOKIE`: send the session cookie with `Secure`
    /// (`auto`: unless the listener is on a loopback address).
    pub secure_cookie: Option<bool>,
}

impl std::fmt::Debug for DashboardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("password_hash", &self.password_hash.as_ref().map(|_| "***"))
            .field("secure_cookie", &self.secure_cookie)
            .finish()
    }
}

impl DashboardConfig {
    /// True when someone can log in at all.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.password_hash.is_some()
    }

    pub(crate) fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |var: &str| {
            get(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let token = set("DKL_DASHBOARD_TOKEN");
        if let Some(t) = &token
            && (t.len() < 32 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError {
                var: "DKL_DASHBOARD_TOKEN",
                value: "***".into(),
                expected: "at least 32 characters without spaces (e.g. `openssl rand -hex 24`)"
                    .into(),
            });
        }
        let password_hash = set("DKL_DASHBOARD_PASSWORD_HASH");
        if let Some(h) = &password_hash
            && !(h.starts_with("$argon2id$")
                || h.starts_with("$argon2i$")
                || h.starts_with("$argon2d$"))
        {
            return Err(ConfigError {
                var: "DKL_DASHBOARD_PASSWORD_HASH",
                value: "***".into(),
                expected: "an argon2 hash in PHC form ($argon2id$v=19$m=…), e.g. from `dklctl dashboard hash-password`".into(),
            });
        }
        let secure_cookie = match set("DKL_DASHBOARD_SECURE_COOKIE").as_deref() {
            None | Some("auto") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(ConfigError {
                    var: "DKL_DASHBOARD_SECURE_COOKIE",
                    value: other.into(),
                    expected:
                        "auto (default: Secure unless the listener is on loopback), true or false"
                            .into(),
                });
            }
        };
        Ok(Self {
            token,
            password_hash,
            secure_cookie,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<DashboardConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DashboardConfig::from_lookup(&|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn secrets_are_checked_and_never_echoed() {
        let e = with(&[("DKL_DASHBOARD_TOKEN", "short-s3cr3t")]).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = with(&[("DKL_DASHBOARD_PASSWORD_HASH", "plain-s3cr3t")]).unwrap_err();
        assert!(e.expected.contains("argon2 hash") && !e.to_string().contains("s3cr3t"));
        let ok = with(&[("DKL_DASHBOARD_TOKEN", &"t".repeat(40))]).unwrap();
        assert!(ok.enabled());
        assert!(!format!("{ok:?}").contains("tttt"));
        assert!(!with(&[]).unwrap().enabled());
    }
}
