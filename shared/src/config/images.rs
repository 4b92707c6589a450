//! The image store: where Cloudinary (or a compatible service) is, the
//! credentials, and which accounts' mail attachments are uploaded.

use std::time::Duration;

use super::ConfigError;
use super::parse::{number, secs};

/// Cloudinary's API root; `DKL_CLOUDINARY_BASE_URL` points elsewhere for a
/// compatible service.
pub const DEFAULT_CLOUDINARY_BASE_URL: &str = "https://api.cloudinary.com/v1_1";

/// Settings of the image store.
#[derive(Clone, PartialEq, Eq)]
pub struct ImagesConfig {
    /// `DKL_CLOUDINARY_URL`: `cloudinary://<api_key>:<api_secret>@<cloud_name>`
    /// (the format of Cloudinary's own `CLOUDINARY_URL`); unset: image jobs
    /// fail with a message saying so. Never logged.
    pub cloudinary_url: Option<String>,
    /// `DKL_CLOUDINARY_BASE_URL`: the upload API's root.
    pub base_url: String,
    /// `DKL_IMAGE_FOLDER`: the folder uploads go to.
    pub folder: String,
    /// `DKL_IMAGE_UPLOAD_ACCOUNTS`: IMAP accounts whose mail's image
    /// attachments are uploaded (opt-in; empty = none).
    pub upload_accounts: Vec<String>,
    /// `DKL_IMAGE_MAX_MB`: larger images are not uploaded (the job fails
    /// with a message saying so).
    pub max_bytes: u64,
    /// `DKL_IMAGE_TIMEOUT_SECS`: one request to the store may take this long.
    pub timeout: Duration,
}

impl std::fmt::Debug for ImagesConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesConfig")
            .field(
                "cloudinary_url",
                &self.cloudinary_url.as_ref().map(|_| "cloudinary://***"),
            )
            .field("base_url", &self.base_url)
            .field("folder", &self.folder)
            .field("upload_accounts", &self.upload_accounts)
            .field("max_bytes", &self.max_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            cloudinary_url: None,
            base_url: DEFAULT_CLOUDINARY_BASE_URL.into(),
            folder: "dkl".into(),
            upload_accounts: Vec::new(),
            max_bytes: 10 * 1024 * 1024,
            timeout: Duration::from_secs(60),
        }
    }
}

impl ImagesConfig {
    pub(crate) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
        imap_accounts: &[String],
    ) -> Result<Self, ConfigError> {
        let d = Self::default();
        let cloudinary_url = get("DKL_CLOUDINARY_URL")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        if let Some(url) = &cloudinary_url
            && !looks_like_cloudinary_url(url)
        {
            return Err(ConfigError {
                var: "DKL_CLOUDINARY_URL",
                // The value holds the API secret: never echo it.
                value: "***".into(),
                expected: "cloudinary://<api_key>:<api_secret>@<cloud_name>, as shown on Cloudinary's dashboard".into(),
            });
        }
        let base_url = get("DKL_CLOUDINARY_BASE_URL")
            .map(|v| v.trim().trim_end_matches('/').to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or(d.base_url);
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ConfigError {
                var: "DKL_CLOUDINARY_BASE_URL",
                value: base_url,
                expected: format!(
                    "an http(s) URL of the upload API's root (default {DEFAULT_CLOUDINARY_BASE_URL})"
                ),
            });
        }
        let folder = get("DKL_IMAGE_FOLDER")
            .map(|v| v.trim().trim_matches('/').to_string())
            .unwrap_or(d.folder);
        if folder.is_empty()
            || !folder
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-/".contains(c))
        {
            return Err(ConfigError {
                var: "DKL_IMAGE_FOLDER",
                value: folder,
                expected: "a folder name of letters, digits, _, - and / (default dkl)".into(),
            });
        }
        let raw_accounts = get("DKL_IMAGE_UPLOAD_ACCOUNTS").unwrap_or_default();
        let mut upload_accounts = Vec::new();
        for name in raw_accounts
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            if !imap_accounts.iter().any(|a| a == name) {
                return Err(ConfigError {
                    var: "DKL_IMAGE_UPLOAD_ACCOUNTS",
                    value: raw_accounts.clone(),
                    expected: format!(
                        "names of accounts in DKL_IMAP_ACCOUNTS ({}); `{name}` is not one",
                        if imap_accounts.is_empty() {
                            "none configured".to_string()
                        } else {
                            imap_accounts.join(", ")
                        }
                    ),
                });
            }
            upload_accounts.push(name.to_string());
        }
        Ok(Self {
            cloudinary_url,
            base_url,
            folder,
            upload_accounts,
            max_bytes: number(get, "DKL_IMAGE_MAX_MB", 10, 1, 100)? * 1024 * 1024,
            timeout: secs(get, "DKL_IMAGE_TIMEOUT_SECS", d.timeout, 1, 600)?,
        })
    }
}

/// `cloudinary://key:secret@cloud`, each part non-empty.
fn looks_like_cloudinary_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("cloudinary://") else {
        return false;
    };
    let Some((userinfo, cloud)) = rest.rsplit_once('@') else {
        return false;
    };
    matches!(userinfo.split_once(':'), Some((k, s)) if !k.is_empty() && !s.is_empty())
        && !cloud.is_empty()
        && !cloud.contains(['/', '?', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)], accounts: &[&str]) -> Result<ImagesConfig, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let accounts: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
        ImagesConfig::from_lookup(
            &|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &accounts,
        )
    }

    #[test]
    fn a_bad_cloudinary_url_is_refused_without_echoing_it() {
        let e = with(&[("DKL_CLOUDINARY_URL", "https://key:s3cr3t@demo")], &[]).unwrap_err();
        assert_eq!(e.var, "DKL_CLOUDINARY_URL");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let ok = with(
            &[("DKL_CLOUDINARY_URL", "cloudinary://123:s3cr3t@demo")],
            &[],
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("s3cr3t"));
    }

    #[test]
    fn upload_accounts_must_be_imap_accounts() {
        let e = with(&[("DKL_IMAGE_UPLOAD_ACCOUNTS", "info,fotos")], &["info"]).unwrap_err();
        assert!(e.expected.contains("`fotos` is not one"), "{e}");
        let ok = with(&[("DKL_IMAGE_UPLOAD_ACCOUNTS", "info")], &["info", "pers"]).unwrap();
        assert_eq!(ok.upload_accounts, vec!["info"]);
    }
}
