//! One recipient's newsletter message: the `newsletter` template rendered
//! with the newsletter and the recipient, and the list headers of RFC 2369,
//! RFC 2919 and RFC 8058. No I/O.

use dkl_shared::config::NewsletterConfig;
use lettre::Message;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use serde_json::json;

use super::token::{Subject, TokenSigner};
use crate::store::newsletters::Newsletter;
use crate::templates::{MailTemplate, Renderer, html_to_text};

/// Why a recipient's message could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The template failed for this recipient.
    #[error("template `newsletter`: {0}")]
    Render(#[from] crate::templates::TemplateError),
    /// The recipient's address.
    #[error("recipient: {0}")]
    Address(String),
    /// lettre refused the message.
    #[error("cannot build the message: {0}")]
    Message(String),
}

/// What every message of one newsletter shares, worked out once.
pub struct Edition {
    title: String,
    content_html: String,
    content_text: String,
    template: MailTemplate,
    from: Mailbox,
    list_id: String,
    base_url: String,
    one_click: bool,
    signer: TokenSigner,
    unsubscribe_address: String,
}

impl Edition {
    /// The edition of `newsletter` with the `newsletter` template, sent from `from`.
    pub fn new(
        newsletter: &Newsletter,
        template: MailTemplate,
        from: Mailbox,
        config: &NewsletterConfig,
        signer: TokenSigner,
    ) -> Self {
        let (content_html, content_text) = match &newsletter.html_content {
            Some(html) if !html.trim().is_empty() => (html.clone(), html_to_text(html)),
            _ => (
                text_to_html(&newsletter.content),
                newsletter.content.clone(),
            ),
        };
        let list_id = config
            .list_id
            .clone()
            .unwrap_or_else(|| format!("nieuwsbrief.{}", from.email.domain()));
        let unsubscribe_address = from.email.to_string();
        Self {
            title: newsletter.title.clone(),
            content_html,
            content_text,
            template,
            from,
            list_id,
            base_url: config.public_base_url.clone(),
            one_click: config.is_https(),
            signer,
            unsubscribe_address,
        }
    }

    /// Sends mailto unsubscribes to `address` (`DKL_UNSUBSCRIBE_ADDRESS`)
    /// instead of the From address.
    pub fn with_unsubscribe_address(mut self, address: Option<&str>) -> Self {
        if let Some(a) = address {
            self.unsubscribe_address = a.to_string();
        }
        self
    }

    /// The `List-Unsubscribe` mailto URI: a subscriber's signed token in
    /// the address itself (`+u-<token>`), so a mail program that drops the
    /// subject still unsubscribes; other tokens ride in the subject.
    pub fn unsubscribe_mailto(&self, subject: &Subject, token: &str) -> String {
        let tagged = match subject {
            Subject::Gebruiker(id) => crate::address::plus_address(
                &self.unsubscribe_address,
                &format!(
                    "u-{}",
                    self.signer.sign_for_address(*id, super::token::today())
                ),
            ),
            Subject::Address(_) => None,
        };
        match tagged {
            Some(address) => format!("mailto:{address}?subject=unsubscribe"),
            None => format!(
                "mailto:{}?subject=unsubscribe%20{token}",
                self.unsubscribe_address
            ),
        }
    }

    /// The token signer (unsubscribe links, VERP tags).
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// The sender's address.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// The https (or, locally, http) unsubscribe link for `subject`.
    pub fn unsubscribe_url(&self, subject: &Subject) -> String {
        format!(
            "{}/unsubscribe/{}",
            self.base_url,
            self.signer.sign_now(subject)
        )
    }

    /// The message to `email` (named `naam`), unsubscribing `subject`.
    pub fn build(
        &self,
        renderer: &Renderer,
        email: &str,
        naam: Option<&str>,
        subject: &Subject,
        message_id: &str,
    ) -> Result<Message, BuildError> {
        let token = self.signer.sign_now(subject);
        let url = format!("{}/unsubscribe/{token}", self.base_url);
        let mail = renderer.render(
            &self.template,
            &json!({
                "titel": self.title,
                "naam": naam.unwrap_or(""),
                "inhoud": self.content_html,
                "inhoud_tekst": self.content_text,
                "afmeld_link": url,
            }),
        )?;
        let mut to =
            crate::address::mailbox(email).map_err(|e| BuildError::Address(e.to_string()))?;
        to.name = naam.filter(|n| !n.trim().is_empty()).map(str::to_string);
        let mailto = self.unsubscribe_mailto(subject, &token);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&mail.subject)
            .message_id(Some(message_id.to_string()));
        let mut headers = vec![
            ("List-Unsubscribe", format!("<{url}>, <{mailto}>")),
            (
                "List-Id",
                format!("De Koninklijke Loop nieuwsbrief <{}>", self.list_id),
            ),
            ("Auto-Submitted", "auto-generated".to_string()),
            ("Precedence", "bulk".to_string()),
        ];
        // RFC 8058: one-click only with an https URI.
        if self.one_click {
            headers.push(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()));
        }
        for (name, value) in headers {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(name),
                value,
            ));
        }
        builder
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
            .map_err(|e| BuildError::Message(e.to_string()))
    }
}

/// A newsletter written as text, as simple HTML: escaped, blank lines
/// between paragraphs, single line breaks kept.
pub fn text_to_html(text: &str) -> String {
    let normalised = text.replace("\r\n", "\n");
    normalised
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", escape(p).replace('\n', "<br>\n")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_becomes_escaped_paragraphs() {
        assert_eq!(
            text_to_html("Hallo <allemaal> & welkom\nregel twee\n\n\nTot ziens"),
            "<p>Hallo &lt;allemaal&gt; &amp; welkom<br>\nregel twee</p>\n<p>Tot ziens</p>"
        );
    }
}
