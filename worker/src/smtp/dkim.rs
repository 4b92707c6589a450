//! DKIM signing (RFC 6376) per SMTP configuration, for its From domain,
//! with lettre's signer. The key is read from `DKL_SMTP_<NAME>_DKIM_KEY_FILE`
//! at start; a key that does not load stops the worker with the reason.

use dkl_shared::config::SmtpConfig;
use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::HeaderName;

/// Headers signed: those a forger would change, and those that say how to
/// read the body. An absent one (Reply-To) is signed as absent, so it
/// cannot be added on the way.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    // A newsletter's unsubscribe headers: Gmail and Yahoo want them signed
    // (RFC 8058 section 4), and no one on the way may change them.
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
];

/// Signs the messages of one configuration.
pub struct Signer {
    config: DkimConfig,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    /// The signer of `config`, if it signs; an error that names the variable
    /// and the fix when its key or From address cannot be used.
    pub fn for_config(config: &SmtpConfig) -> Result<Option<Self>, String> {
        let Some(dkim) = &config.dkim else {
            return Ok(None);
        };
        let var = format!("DKL_SMTP_{}_DKIM_KEY_FILE", config.name.to_uppercase());
        let text = dkim.key.trim();
        let (algorithm, key) = if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
            (DkimSigningAlgorithm::Rsa, text)
        } else if text.contains("-----BEGIN") {
            return Err(format!(
                "{var} ({}): an RSA key must be PKCS#1 PEM (-----BEGIN RSA PRIVATE KEY-----); convert a PKCS#8 key with `openssl rsa -in KEY -traditional`",
                dkim.key_file.display()
            ));
        } else {
            (DkimSigningAlgorithm::Ed25519, text)
        };
        let key = DkimSigningKey::new(key, algorithm).map_err(|e| {
            format!(
                "{var} ({}): the key does not load ({e})",
                dkim.key_file.display()
            )
        })?;
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| format!("DKL_SMTP_{}_FROM: {e}", config.name.to_uppercase()))?;
        let headers = SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        let canonicalization = DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        };
        Ok(Some(Self {
            config: DkimConfig::new(
                dkim.selector.clone(),
                from.email.domain().to_string(),
                key,
                headers,
                canonicalization,
            ),
        }))
    }

    /// Adds the DKIM-Signature header to `message`.
    pub fn sign(&self, message: &mut Message) {
        message.sign(&self.config);
    }
}
