//! Mail templates: `email_templates` rows rendered with handlebars.
//!
//! # Quick start
//!
//! ```
//! use dkl_worker::templates::{MailTemplate, Renderer};
//! let template = MailTemplate {
//!     name: "hallo".into(),
//!     subject: "Hallo {{naam}}".into(),
//!     html: "<p>Beste {{naam}},</p>".into(),
//!     text: None,
//! };
//! let mail = Renderer::new().render(&template, &serde_json::json!({"naam": "<Anna>"})).unwrap();
//! assert_eq!(mail.subject, "Hallo <Anna>");
//! assert_eq!(mail.html, "<p>Beste &lt;Anna&gt;,</p>");
//! assert!(mail.text.contains("Beste <Anna>,"));
//! ```
//!
//! Rules, all enforced here (no I/O: the caller loads the row):
//! - **strict**: a variable the data lacks is an error that names it, never
//!   an empty string;
//! - values are HTML-escaped in the HTML part, not in the subject or text;
//! - no text part: the text is derived from the rendered HTML;
//! - a subject that renders to anything with CR or LF is refused (header
//!   injection);
//! - helpers a Dutch mail needs: `{{datum x}}` (a date in Europe/Amsterdam,
//!   `{{datum x tijd=true}}` with the time), `{{huidig_jaar}}`; templates cannot
//!   read files or the environment (handlebars without `dir_source` and
//!   `script_helper`).

pub mod files;
mod helpers;
mod variables;

use std::sync::RwLock;

use handlebars::{Handlebars, RenderErrorReason, TemplateError as HbTemplateError};
use serde_json::Value;

pub use variables::used_variables;

/// One template: what an `email_templates` row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailTemplate {
    /// `email_templates.name`.
    pub name: String,
    /// Subject template.
    pub subject: String,
    /// HTML body template.
    pub html: String,
    /// Text body template; derived from the HTML when absent.
    pub text: Option<String>,
}

/// Which part of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The subject line.
    Subject,
    /// The HTML body.
    Html,
    /// The text body.
    Text,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Subject => "subject",
            Self::Html => "HTML body",
            Self::Text => "text body",
        })
    }
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    /// One line, no CR or LF.
    pub subject: String,
    /// HTML body.
    pub html: String,
    /// Text body.
    pub text: String,
}

/// Why a template could not be used. Every variant names the template and
/// the part, and says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("template `{template}`, {part}, line {line}: {reason}; fix the template's syntax")]
    Syntax {
        /// Template name.
        template: String,
        /// Which part.
        part: Part,
        /// 1-based line in that part (0 when unknown).
        line: usize,
        /// What the parser said.
        reason: String,
    },
    /// The data lacks a variable the template uses.
    #[error(
        "template `{template}`, {part}: variable `{variable}` is missing; pass it in the mail's variables"
    )]
    MissingVariable {
        /// Template name.
        template: String,
        /// Which part.
        part: Part,
        /// The variable's path.
        variable: String,
    },
    /// Rendering failed otherwise (a helper refused a value, say).
    #[error("template `{template}`, {part}: {reason}")]
    Render {
        /// Template name.
        template: String,
        /// Which part.
        part: Part,
        /// What went wrong.
        reason: String,
    },
    /// The subject renders to more than one line.
    #[error(
        "template `{template}`: the subject renders with a line break (CR or LF), which would inject mail headers; remove line breaks from the subject and its values"
    )]
    HeaderInjection {
        /// Template name.
        template: String,
    },
}

/// Renders [`MailTemplate`]s. Each distinct template source is compiled
/// once and kept (by a hash of its text, so an admin's edit is a new entry);
/// share one renderer.
pub struct Renderer {
    /// HTML part: values are HTML-escaped.
    html: RwLock<Handlebars<'static>>,
    /// Subject and text: values as they are.
    plain: RwLock<Handlebars<'static>>,
}

/// Compiled sources kept per registry before the cache starts over.
const MAX_CACHED: usize = 1000;

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    /// A strict renderer with the Dutch helpers.
    pub fn new() -> Self {
        let mut html = Handlebars::new();
        html.set_strict_mode(true);
        helpers::register(&mut html);
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);
        helpers::register(&mut plain);
        Self {
            html: RwLock::new(html),
            plain: RwLock::new(plain),
        }
    }

    /// Checks that every part of `template` parses.
    pub fn check(&self, template: &MailTemplate) -> Result<(), TemplateError> {
        for (part, source) in parts(template) {
            handlebars::Template::compile(source).map_err(|e| syntax(template, part, &e))?;
        }
        Ok(())
    }

    /// Renders `template` with `data` (a JSON object of variables).
    pub fn render(
        &self,
        template: &MailTemplate,
        data: &Value,
    ) -> Result<RenderedMail, TemplateError> {
        let subject = self.render_part(
            &self.plain,
            template,
            Part::Subject,
            &template.subject,
            data,
        )?;
        // Surrounding white space (a trailing newline an editor added) is
        // harmless; a line break inside is an injected header.
        let subject = subject.trim().to_string();
        if subject.contains(['\r', '\n']) {
            return Err(TemplateError::HeaderInjection {
                template: template.name.clone(),
            });
        }
        let html = self.render_part(&self.html, template, Part::Html, &template.html, data)?;
        let text = match &template.text {
            Some(source) => self.render_part(&self.plain, template, Part::Text, source, data)?,
            None => html_to_text(&html),
        };
        Ok(RenderedMail {
            subject,
            html,
            text,
        })
    }

    fn render_part(
        &self,
        registry: &RwLock<Handlebars<'static>>,
        template: &MailTemplate,
        part: Part,
        source: &str,
        data: &Value,
    ) -> Result<String, TemplateError> {
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            source.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let compiled = registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .has_template(&key);
        if !compiled {
            let mut writable = registry.write().unwrap_or_else(|p| p.into_inner());
            if writable.get_templates().len() >= MAX_CACHED {
                writable.clear_templates();
            }
            writable
                .register_template_string(&key, source)
                .map_err(|e| syntax(template, part, &e))?;
        }
        let rendered = registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .render(&key, data);
        rendered.map_err(|e| match e.reason() {
            RenderErrorReason::MissingVariable(path) => TemplateError::MissingVariable {
                template: template.name.clone(),
                part,
                variable: path.clone().unwrap_or_else(|| "?".into()),
            },
            RenderErrorReason::TemplateError(t) => syntax(template, part, t),
            other => TemplateError::Render {
                template: template.name.clone(),
                part,
                reason: other.to_string(),
            },
        })
    }
}

fn parts(template: &MailTemplate) -> impl Iterator<Item = (Part, &str)> {
    [
        (Part::Subject, Some(template.subject.as_str())),
        (Part::Html, Some(template.html.as_str())),
        (Part::Text, template.text.as_deref()),
    ]
    .into_iter()
    .filter_map(|(part, source)| source.map(|s| (part, s)))
}

fn syntax(template: &MailTemplate, part: Part, e: &HbTemplateError) -> TemplateError {
    TemplateError::Syntax {
        template: template.name.clone(),
        part,
        line: e.pos().map_or(0, |(line, _)| line),
        reason: e.reason().to_string(),
    }
}

/// The text of an HTML body, for mail clients that show no HTML: wrapped at
/// 78 columns, links kept as footnotes.
pub fn html_to_text(html: &str) -> String {
    html2text::from_read(html.as_bytes(), 78)
        .unwrap_or_else(|_| html.to_string())
        .trim_end()
        .to_string()
        + "\n"
}

#[cfg(test)]
mod tests;
