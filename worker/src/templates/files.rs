//! The default templates shipped in `templates/`: one folder per template,
//! `subject.hbs`, `body.html.hbs`, optionally `body.txt.hbs`, and `meta.json`
//! (`description`, the declared `variables`, an `example` to render with).
//! Reading is here; checking and rendering take no I/O.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{MailTemplate, Part, Renderer, TemplateError, used_variables};

/// One template as shipped.
#[derive(Debug, Clone)]
pub struct TemplateFiles {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// The template (its name is the folder's).
    pub template: MailTemplate,
    /// What it is for.
    pub description: String,
    /// The variables it declares (`email_templates.variables`).
    pub variables: Vec<String>,
    /// Values to render it with (`dklctl templates render`, tests).
    pub example: Value,
}

/// Why a template folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file is missing or unreadable.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `meta.json` is not what it should be.
    #[error(
        "{path}: {reason}; expected {{\"description\": \"…\", \"variables\": [\"naam\", …], \"example\": {{…}}}}"
    )]
    Meta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A part does not parse or does not render.
    #[error("{}: {source}", file.display())]
    Template {
        /// The file of the part at fault (the folder when it is the example).
        file: PathBuf,
        /// What is wrong.
        source: TemplateError,
    },
    /// Declared and used variables differ.
    #[error("{}: {reason}", dir.display())]
    Variables {
        /// The template's folder.
        dir: PathBuf,
        /// Which names differ.
        reason: String,
    },
}

/// Reads every template folder in `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<TemplateFiles>, FilesError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FilesError::Read { path, source }
    };
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    folders.iter().map(|f| load(f)).collect()
}

/// Reads one template folder.
pub fn load(dir: &Path) -> Result<TemplateFiles, FilesError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| FilesError::Read { path, source })
    };
    let optional = |file: &str| match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FilesError::Read {
            path: dir.join(file),
            source,
        }),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let meta_path = dir.join("meta.json");
    let meta: Value = serde_json::from_str(&read("meta.json")?).map_err(|e| FilesError::Meta {
        path: meta_path.clone(),
        reason: format!("not JSON ({e})"),
    })?;
    let variables = meta["variables"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| FilesError::Meta {
            path: meta_path.clone(),
            reason: "`variables` is not a list of names".into(),
        })?;
    Ok(TemplateFiles {
        dir: dir.to_path_buf(),
        template: MailTemplate {
            name,
            // A file ends with a newline; a subject is one line.
            subject: read("subject.hbs")?.trim_end().to_string(),
            html: read("body.html.hbs")?,
            text: optional("body.txt.hbs")?,
        },
        description: meta["description"].as_str().unwrap_or_default().to_string(),
        variables,
        example: meta
            .get("example")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default())),
    })
}

/// Checks a shipped template: every part parses, the declared variables are
/// exactly the ones used, and it renders with its example.
pub fn check(renderer: &Renderer, files: &TemplateFiles) -> Result<(), FilesError> {
    let dir = || files.dir.clone();
    let at_fault = |source: TemplateError| {
        let file = match &source {
            TemplateError::Syntax { part, .. }
            | TemplateError::MissingVariable { part, .. }
            | TemplateError::Render { part, .. } => files.dir.join(part_file(*part)),
            TemplateError::HeaderInjection { .. } => files.dir.join(part_file(Part::Subject)),
        };
        FilesError::Template { file, source }
    };
    renderer.check(&files.template).map_err(at_fault)?;
    let t = &files.template;
    let mut used = BTreeSet::new();
    for source in [Some(&t.subject), Some(&t.html), t.text.as_ref()]
        .into_iter()
        .flatten()
    {
        // Parsing succeeded above.
        used.extend(used_variables(source).unwrap_or_default());
    }
    let declared: BTreeSet<String> = files.variables.iter().cloned().collect();
    let undeclared: Vec<&String> = used.difference(&declared).collect();
    let unused: Vec<&String> = declared.difference(&used).collect();
    if !undeclared.is_empty() || !unused.is_empty() {
        return Err(FilesError::Variables {
            dir: dir(),
            reason: format!(
                "declared variables do not match the template: used but not declared {undeclared:?}, declared but not used {unused:?}; fix `variables` in meta.json"
            ),
        });
    }
    renderer.render(t, &files.example).map_err(at_fault)?;
    Ok(())
}

/// The file a part is read from.
pub fn part_file(part: Part) -> &'static str {
    match part {
        Part::Subject => "subject.hbs",
        Part::Html => "body.html.hbs",
        Part::Text => "body.txt.hbs",
    }
}
