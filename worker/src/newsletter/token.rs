//! Unsubscribe tokens: who is unsubscribed, signed with HMAC-SHA256 so a
//! token cannot be made or altered without the secret. A token names the
//! subscriber (`gebruikers.id`) or, for a copy sent to an address that is no
//! subscriber (`send-test`), the address, and the day it was made. Tokens
//! are accepted for [`VALID_DAYS`]: months, as RFC 8058 expects of links in
//! mail that people read late.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// How long a token works.
pub const VALID_DAYS: i64 = 400;

/// Bytes of the MAC kept in a token (128 bits).
const MAC_LEN: usize = 16;

/// Whom a token unsubscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A subscriber.
    Gebruiker(Uuid),
    /// An address (lower case).
    Address(String),
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours at all (cut off, mangled by a mail program).
    #[error(
        "this unsubscribe link is incomplete or damaged; copy the whole link from the newsletter"
    )]
    Malformed,
    /// The signature does not match: forged or altered.
    #[error("this unsubscribe link is not valid (its signature does not match)")]
    BadSignature,
    /// Older than [`VALID_DAYS`].
    #[error("this unsubscribe link has expired; use the link in a newer newsletter")]
    Expired,
}

/// Makes and checks tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(<secret hidden>)")
    }
}

impl TokenSigner {
    /// A signer with `secret` as HMAC key.
    pub fn new(secret: &str) -> Self {
        Self {
            key: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// A token for `subject`, made on `day` (days since 1970-01-01).
    pub fn sign(&self, subject: &Subject, day: i64) -> String {
        let payload = match subject {
            Subject::Gebruiker(id) => format!("1.u{}.{day}", id.simple()),
            Subject::Address(a) => format!("1.e{}.{day}", a.to_lowercase()),
        };
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(&tag[..MAC_LEN])
        )
    }

    /// A token made today.
    pub fn sign_now(&self, subject: &Subject) -> String {
        self.sign(subject, today())
    }

    /// Whom `token` unsubscribes, if it is genuine and not expired on `day`.
    pub fn verify(&self, token: &str, day: i64) -> Result<Subject, TokenError> {
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|_| TokenError::Malformed)?;
        if tag.len() != MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_truncated_left(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        // Signed by us: the payload is what `sign` wrote.
        let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
        // `1.<who>.<day>`; an address holds dots, so the day is after the last one.
        let (who, made) = payload
            .strip_prefix("1.")
            .and_then(|rest| rest.rsplit_once('.'))
            .ok_or(TokenError::Malformed)?;
        let made: i64 = made.parse().map_err(|_| TokenError::Malformed)?;
        if day - made > VALID_DAYS {
            return Err(TokenError::Expired);
        }
        if let Some(id) = who.strip_prefix('u') {
            return Uuid::parse_str(id)
                .map(Subject::Gebruiker)
                .map_err(|_| TokenError::Malformed);
        }
        match who.strip_prefix('e') {
            Some(address) if address.contains('@') => Ok(Subject::Address(address.to_string())),
            _ => Err(TokenError::Malformed),
        }
    }
}

/// Bytes of the MAC kept in an address token (80 bits: the token must fit
/// in an address's local part).
const ADDRESS_MAC_LEN: usize = 10;

impl TokenSigner {
    /// A token for a subscriber that fits in the local part of an address
    /// (48 characters of lower-case base32: mail systems may change the
    /// case of a local part), for the `List-Unsubscribe` mailto address.
    pub fn sign_for_address(&self, gebruiker: Uuid, day: i64) -> String {
        let mut bytes = Vec::with_capacity(30);
        bytes.extend_from_slice(gebruiker.as_bytes());
        bytes.extend_from_slice(&(day.clamp(0, u32::MAX as i64) as u32).to_be_bytes());
        let mut mac = self.mac();
        mac.update(b"2.");
        mac.update(&bytes);
        let tag = mac.finalize().into_bytes();
        bytes.extend_from_slice(&tag[..ADDRESS_MAC_LEN]);
        base32_encode(&bytes)
    }

    /// The subscriber of an address token, if genuine and not expired on `day`.
    pub fn verify_from_address(&self, token: &str, day: i64) -> Result<Uuid, TokenError> {
        let bytes = base32_decode(&token.to_ascii_lowercase()).ok_or(TokenError::Malformed)?;
        if bytes.len() != 16 + 4 + ADDRESS_MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, tag) = bytes.split_at(20);
        let mut mac = self.mac();
        mac.update(b"2.");
        mac.update(signed);
        mac.verify_truncated_left(tag)
            .map_err(|_| TokenError::BadSignature)?;
        let made = u32::from_be_bytes([signed[16], signed[17], signed[18], signed[19]]) as i64;
        if day - made > VALID_DAYS {
            return Err(TokenError::Expired);
        }
        Uuid::from_slice(&signed[..16]).map_err(|_| TokenError::Malformed)
    }
}

impl TokenSigner {
    /// A short MAC (8 characters of base32, 40 bits) over a VERP tag, so a
    /// return path cannot be made up: `bounce+n17-<mac>@…`.
    pub fn sign_reference(&self, tag: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"3.");
        mac.update(tag.to_ascii_lowercase().as_bytes());
        base32_encode(&mac.finalize().into_bytes()[..5])
    }

    /// Whether `signature` is [`Self::sign_reference`] of `tag`.
    pub fn verify_reference(&self, tag: &str, signature: &str) -> bool {
        let Some(given) = base32_decode(&signature.to_ascii_lowercase()) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(b"3.");
        mac.update(tag.to_ascii_lowercase().as_bytes());
        given.len() == 5 && mac.verify_truncated_left(&given).is_ok()
    }
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 base32, lower case, no padding.
fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = BASE32.iter().position(|&b| b == c)? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Days since 1970-01-01, UTC.
pub fn today() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(86_400)
}

/// The signer of this deployment, found once: `DKL_UNSUBSCRIBE_SECRET`, or
/// the random secret kept in `dkl_secrets` (made by the first worker).
pub struct TokenKey {
    configured: Option<String>,
    signer: tokio::sync::OnceCell<TokenSigner>,
}

impl TokenKey {
    /// The key from `secret` (the configured one, if any).
    pub fn new(secret: Option<String>) -> Self {
        Self {
            configured: secret,
            signer: tokio::sync::OnceCell::new(),
        }
    }

    /// The signer, reading (or making) the stored secret on first use.
    pub async fn signer(&self, pool: &sqlx::PgPool) -> Result<&TokenSigner, sqlx::Error> {
        self.signer
            .get_or_try_init(|| async {
                let secret = match &self.configured {
                    Some(s) => s.clone(),
                    None => crate::store::newsletters::stored_unsubscribe_secret(pool).await?,
                };
                Ok(TokenSigner::new(&secret))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_tokens_fit_a_local_part_and_cannot_be_forged() {
        let signer = TokenSigner::new("a secret of some length, 32 chars+");
        let id = Uuid::new_v4();
        let token = signer.sign_for_address(id, 20_000);
        assert_eq!(token.len(), 48);
        assert_eq!(signer.verify_from_address(&token, 20_001), Ok(id));
        assert_eq!(
            signer.verify_from_address(&token.to_uppercase(), 20_001),
            Ok(id)
        );
        let mut forged = token.clone().into_bytes();
        forged[3] = if forged[3] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            signer.verify_from_address(std::str::from_utf8(&forged).unwrap(), 20_001),
            Err(TokenError::BadSignature)
        );
        let other = TokenSigner::new("another secret of some length, 32+");
        assert_eq!(
            other.verify_from_address(&token, 20_001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer.verify_from_address(&token, 20_000 + VALID_DAYS + 1),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signer.verify_from_address("zz", 1),
            Err(TokenError::Malformed)
        );
    }

    fn signer() -> TokenSigner {
        TokenSigner::new("0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_token_names_its_subject() {
        let id = Uuid::new_v4();
        let t = signer().sign(&Subject::Gebruiker(id), 20_000);
        assert_eq!(signer().verify(&t, 20_100), Ok(Subject::Gebruiker(id)));
        let t = signer().sign(&Subject::Address("A.b@Example.org".into()), 20_000);
        assert_eq!(
            signer().verify(&t, 20_000),
            Ok(Subject::Address("a.b@example.org".into()))
        );
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "URL-safe: {t}"
        );
    }

    #[test]
    fn forged_altered_truncated_and_old_tokens_are_refused() {
        let id = Uuid::new_v4();
        let t = signer().sign(&Subject::Gebruiker(id), 20_000);
        let other = TokenSigner::new("another secret of at least 32 chars!!");
        assert_eq!(other.verify(&t, 20_000), Err(TokenError::BadSignature));
        // Another subscriber's id with this signature.
        let (_, tag) = t.split_once('.').unwrap();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(format!("1.u{}.20000", Uuid::new_v4().simple()))
        );
        assert_eq!(
            signer().verify(&forged, 20_000),
            Err(TokenError::BadSignature)
        );
        // One character changed in the middle of the signature (the last
        // one may only carry padding bits).
        let mut altered = t.clone().into_bytes();
        let middle = altered.len() - 8;
        altered[middle] = if altered[middle] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            signer().verify(&altered, 20_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer().verify(&t[..t.len() - 3], 20_000),
            Err(TokenError::Malformed)
        );
        assert_eq!(signer().verify("", 20_000), Err(TokenError::Malformed));
        assert_eq!(
            signer().verify(&t, 20_000 + VALID_DAYS + 1),
            Err(TokenError::Expired)
        );
    }
}
