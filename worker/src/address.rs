//! E-mail addresses as this system sends to and records them: an IDN domain
//! in its ASCII form (`bücher.example` → `xn--bcher-kva.example`), which
//! every SMTP server takes, lower-cased; the local part as given.
//!
//! A local part with non-ASCII characters (`jürgen@…`) needs SMTPUTF8
//! (RFC 6531), which lettre does not speak: such an address is refused with
//! that reason instead of failing at the server.

use lettre::Address;
use lettre::message::Mailbox;

/// Why an address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not an address at all.
    #[error("`{0}` is not an e-mail address ({1})")]
    Invalid(String, String),
    /// The part before the @ is not ASCII.
    #[error(
        "`{0}` has non-ASCII characters before the @; that needs SMTPUTF8, which this sender does not use"
    )]
    NeedsSmtpUtf8(String),
}

/// `address` with its domain in ASCII (punycode) and lower case.
pub fn normalize(address: &str) -> Result<String, AddressError> {
    let address = address.trim();
    let invalid = |why: &str| AddressError::Invalid(address.to_string(), why.to_string());
    let (local, domain) = address.rsplit_once('@').ok_or_else(|| invalid("no @"))?;
    if local.is_empty() || domain.is_empty() {
        return Err(invalid("nothing before or after the @"));
    }
    if !local.is_ascii() {
        return Err(AddressError::NeedsSmtpUtf8(address.to_string()));
    }
    let domain = idna::domain_to_ascii(domain)
        .map_err(|_| invalid("the domain is not a valid (international) domain name"))?;
    let normalized = format!("{local}@{domain}");
    normalized
        .parse::<Address>()
        .map_err(|e| invalid(&e.to_string()))?;
    Ok(normalized)
}

/// A mailbox (`Naam <adres>` or an address) with its address normalized.
pub fn mailbox(text: &str) -> Result<Mailbox, AddressError> {
    let parsed: Mailbox = text
        .trim()
        .parse()
        .map_err(|e: lettre::address::AddressError| {
            AddressError::Invalid(text.trim().to_string(), e.to_string())
        })?;
    let email = normalize(AsRef::<str>::as_ref(&parsed.email))?;
    let email = email.parse().map_err(|e: lettre::address::AddressError| {
        AddressError::Invalid(email.clone(), e.to_string())
    })?;
    Ok(Mailbox::new(parsed.name, email))
}

/// `base` with a `+tag` subaddress (`bounce@x.nl`, `m12ab` → `bounce+m12ab@x.nl`),
/// or `None` when the local part would pass RFC 5321's 64 characters.
pub fn plus_address(base: &str, tag: &str) -> Option<String> {
    let (local, domain) = base.rsplit_once('@')?;
    let local = local.split('+').next().unwrap_or(local);
    (local.len() + 1 + tag.len() <= 64).then(|| format!("{local}+{tag}@{domain}"))
}

/// The `+tag` of an address (`bounce+m12ab@x.nl` → `m12ab`), if any.
pub fn plus_tag(address: &str) -> Option<&str> {
    let (local, _) = address.rsplit_once('@')?;
    local
        .split_once('+')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idn_domain_is_sent_to_in_ascii() {
        assert_eq!(
            normalize("anna@Bücher.Example").unwrap(),
            "anna@xn--bcher-kva.example"
        );
        assert_eq!(
            normalize(" jan@De-Koninklijke-Loop.NL ").unwrap(),
            "jan@de-koninklijke-loop.nl"
        );
        assert_eq!(
            normalize("info@xn--bcher-kva.example").unwrap(),
            "info@xn--bcher-kva.example"
        );
        let m = mailbox("Anna de Vries <anna@bücher.example>").unwrap();
        assert_eq!(m.email.to_string(), "anna@xn--bcher-kva.example");
        assert_eq!(m.name.as_deref(), Some("Anna de Vries"));
    }

    #[test]
    fn a_non_ascii_local_part_names_smtputf8() {
        let e = normalize("jürgen@example.org").unwrap_err();
        assert!(matches!(e, AddressError::NeedsSmtpUtf8(_)));
        assert!(e.to_string().contains("SMTPUTF8"), "{e}");
    }

    #[test]
    fn broken_addresses_are_refused_with_the_address() {
        for bad in [
            "",
            "anna",
            "@example.org",
            "anna@",
            "anna@exa mple.org",
            "anna@-.org\u{0}",
        ] {
            let e = normalize(bad).unwrap_err();
            assert!(matches!(e, AddressError::Invalid(..)), "{bad:?}: {e:?}");
        }
    }
}
