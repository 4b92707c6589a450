//! Cloudinary's request signature: the SHA-1 digest, in lowercase hex, of
//! the signed parameters serialized as `k=v` pairs sorted by name and joined
//! with `&`, with the API secret appended (no separator).
//!
//! Sources (Cloudinary's own documentation):
//! - <https://cloudinary.com/documentation/authentication_signatures>
//!   (the rule, and the worked example: secret `abcd`, timestamp
//!   1315060510, public_id `sample_image`, eager
//!   `w_400,h_300,c_pad|w_260,h_200,c_crop`);
//! - <https://cloudinary.com/documentation/signatures> (which parameters
//!   stay out: `file`, `cloud_name`, `resource_type` and `api_key`);
//! - <https://cloudinary.com/documentation/image_upload_api_reference>
//!   (the upload and destroy methods that carry the signature).
//!
//! Empty values stay out too: Cloudinary's SDKs drop them before signing,
//! and a parameter that is sent empty is one the server ignores.

use sha1::{Digest, Sha1};

/// Parameter names that are sent but never signed. `api_secret` and
/// `signature` are never sent either; they are listed so that a caller who
/// passes a whole form cannot sign the secret into the string.
pub const UNSIGNED: &[&str] = &[
    "file",
    "cloud_name",
    "resource_type",
    "api_key",
    "api_secret",
    "signature",
];

/// Cloudinary's signature: SHA-1 hex over the params (sorted by name, `k=v`
/// joined by `&`, empty values skipped) with the API secret appended.
pub fn sign(params: &[(&str, &str)], api_secret: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(string_to_sign(params).as_bytes());
    hasher.update(api_secret.as_bytes());
    to_hex(&hasher.finalize())
}

/// What [`sign`] hashes, without the secret (for tests and debugging; it
/// holds no secret, but it names the image, so log it at debug at most).
pub fn string_to_sign(params: &[(&str, &str)]) -> String {
    let mut signed: Vec<&(&str, &str)> = params
        .iter()
        .filter(|(name, value)| !value.is_empty() && !UNSIGNED.contains(name))
        .collect();
    // Stable, so that a name given twice keeps the caller's order.
    signed.sort_by(|a, b| a.0.cmp(b.0));
    signed
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_name_and_skips_empty_and_unsigned_params() {
        let params = [
            ("timestamp", "1700000000"),
            ("api_key", "123"),
            ("folder", ""),
            ("file", "bytes"),
            ("public_id", "a/b"),
            ("invalidate", "true"),
        ];
        assert_eq!(
            string_to_sign(&params),
            "invalidate=true&public_id=a/b&timestamp=1700000000"
        );
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn the_secret_changes_the_signature() {
        let params = [("timestamp", "1")];
        assert_ne!(sign(&params, "a"), sign(&params, "b"));
        assert_eq!(sign(&params, "a").len(), 40);
    }
}
