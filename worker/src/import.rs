//! `dklctl mail import`: `.eml` files, Maildir folders and mbox files stored
//! exactly as if they had been fetched (same parsing, quarantine and
//! follow-up jobs). A message already stored for the account (same content)
//! is stored once, so importing twice is harmless.

use std::path::{Path, PathBuf};

use chrono::Utc;
use sqlx::PgPool;

use crate::store::incoming_emails::{self, BatchOutcome, Incoming};

/// The `incoming_emails.mailbox` of imported messages.
pub const IMPORT_MAILBOX: &str = "import";

/// Messages stored per transaction.
const BATCH: usize = 200;

/// What importing one path did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// The path.
    pub path: PathBuf,
    /// What it was read as.
    pub format: &'static str,
    /// Messages read.
    pub messages: usize,
    /// What storing them did.
    pub outcome: BatchOutcome,
}

/// Why a path could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Storing failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Imports `path` (a `.eml` file, an mbox file, a Maildir folder, or a
/// folder of such files) into `account`, calling `progress` after each batch.
pub async fn import_path(
    pool: &PgPool,
    account: &str,
    path: &Path,
    max_message_bytes: u64,
    progress: &mut dyn FnMut(&ImportReport),
) -> Result<ImportReport, ImportError> {
    let (format, files) = list(path)?;
    let mut report = ImportReport {
        path: path.to_path_buf(),
        format,
        ..ImportReport::default()
    };
    let mut batch: Vec<Incoming> = Vec::with_capacity(BATCH);
    for file in files {
        let read_err = |source| ImportError::Read {
            path: file.clone(),
            source,
        };
        // An mbox is read one message at a time: an archive of any size
        // takes the memory of one batch.
        let mut reader = std::io::BufReader::new(std::fs::File::open(&file).map_err(read_err)?);
        let mbox = {
            use std::io::BufRead;
            is_mbox(reader.fill_buf().map_err(read_err)?)
        };
        let messages: Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>> = if mbox {
            Box::new(MboxMessages::new(reader))
        } else {
            let mut whole = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut whole).map_err(read_err)?;
            Box::new(std::iter::once(Ok(whole)))
        };
        for raw in messages {
            batch.push(incoming(raw.map_err(read_err)?, max_message_bytes));
            if batch.len() >= BATCH {
                flush(pool, account, &mut batch, &mut report).await?;
                progress(&report);
            }
        }
    }
    flush(pool, account, &mut batch, &mut report).await?;
    progress(&report);
    Ok(report)
}

async fn flush(
    pool: &PgPool,
    account: &str,
    batch: &mut Vec<Incoming>,
    report: &mut ImportReport,
) -> Result<(), sqlx::Error> {
    if batch.is_empty() {
        return Ok(());
    }
    report.messages += batch.len();
    report.outcome += incoming_emails::store_batch(pool, account, None, batch).await?;
    batch.clear();
    Ok(())
}

/// One imported message, parsed (a too-large one keeps only its header).
pub fn incoming(raw: Vec<u8>, max_message_bytes: u64) -> Incoming {
    let size = raw.len();
    let content_hash = crate::mime::content_hash(&raw);
    let (parsed, raw) = if size as u64 > max_message_bytes {
        let reason = format!(
            "too large to import: {:.1} MB, over DKL_IMAP_MAX_MESSAGE_MB; only its header is stored (the file keeps the message)",
            size as f64 / 1_048_576.0
        );
        (crate::mime::parse_header_only(&raw, reason), None)
    } else {
        (crate::mime::parse(&raw), Some(raw))
    };
    Incoming {
        mailbox: IMPORT_MAILBOX.into(),
        uid_validity: None,
        uid: None,
        received_at: parsed.sent_at.unwrap_or_else(Utc::now),
        raw,
        raw_size: size as i64,
        content_hash,
        parsed,
        action_pending: false,
    }
}

/// The files of `path` and what it is.
fn list(path: &Path) -> Result<(&'static str, Vec<PathBuf>), ImportError> {
    let read_err = |source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        let head = {
            use std::io::Read;
            let mut head = [0u8; 5];
            let n = std::fs::File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(read_err)?;
            head[..n].to_vec()
        };
        let format = if is_mbox(&head) { "mbox" } else { "eml" };
        return Ok((format, vec![path.to_path_buf()]));
    }
    let is_maildir = path.join("cur").is_dir() && path.join("new").is_dir();
    let dirs: Vec<PathBuf> = if is_maildir {
        vec![path.join("cur"), path.join("new")]
    } else {
        vec![path.to_path_buf()]
    };
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).map_err(|source| ImportError::Read {
            path: dir.clone(),
            source,
        })? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name();
            if entry.path().is_file() && !name.to_string_lossy().starts_with('.') {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok((if is_maildir { "maildir" } else { "folder" }, files))
}

fn is_mbox(bytes: &[u8]) -> bool {
    bytes.starts_with(b"From ")
}

/// Splits an mbox file (mboxo or mboxrd) into messages: each starts after a
/// `From ` line at the start of the file or after a blank line; `>From `
/// quoting is undone one level.
pub fn split_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    MboxMessages::new(bytes)
        .collect::<std::io::Result<_>>()
        .unwrap_or_default()
}

/// The messages of an mbox, read line by line from `R`.
pub struct MboxMessages<R> {
    reader: R,
    current: Option<Vec<u8>>,
    previous_blank: bool,
    done: bool,
}

impl<R: std::io::BufRead> MboxMessages<R> {
    /// Reads messages from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            current: None,
            previous_blank: true,
            done: false,
        }
    }
}

impl<R: std::io::BufRead> Iterator for MboxMessages<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        while !self.done {
            line.clear();
            match self.reader.read_until(b'\n', &mut line) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(0) => {
                    self.done = true;
                    break;
                }
                Ok(_) => {}
            }
            if self.previous_blank && line.starts_with(b"From ") {
                // A From_ line right after another one: an empty message.
                self.previous_blank = true;
                let finished = self.current.replace(Vec::new());
                if let Some(message) = finished.map(trim_separator).filter(|m| !is_blank(m)) {
                    return Some(Ok(message));
                }
                continue;
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            self.previous_blank = body.is_empty();
            let Some(message) = self.current.as_mut() else {
                continue;
            };
            let quoted = line
                .iter()
                .position(|b| *b != b'>')
                .is_some_and(|n| n > 0 && line[n..].starts_with(b"From "));
            message.extend_from_slice(if quoted { &line[1..] } else { &line });
        }
        self.current
            .take()
            .map(trim_separator)
            .filter(|m| !is_blank(m))
            .map(Ok)
    }
}

fn is_blank(message: &[u8]) -> bool {
    message.iter().all(u8::is_ascii_whitespace)
}

/// Drops the blank line that separates a message from the next `From `.
fn trim_separator(mut message: Vec<u8>) -> Vec<u8> {
    if message.ends_with(b"\r\n\r\n") {
        message.truncate(message.len() - 2);
    } else if message.ends_with(b"\n\n") {
        message.truncate(message.len() - 1);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_is_split_and_unquoted() {
        let mbox = b"From a@b Mon Jan  1 00:00:00 2024\nFrom: a@b.nl\nSubject: een\n\nregel\n>From here\n\nFrom c@d Mon Jan  1 00:00:00 2024\nFrom: c@d.nl\nSubject: twee\n\nx\n";
        let messages = split_mbox(mbox);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0],
            b"From: a@b.nl\nSubject: een\n\nregel\nFrom here\n".to_vec()
        );
        assert!(messages[1].starts_with(b"From: c@d.nl"));
        // Empty messages (two From_ lines in a row, or only a blank line) are skipped.
        let odd = b"From a\nFrom b\nSubject: x\n\ny\n\nFrom c\n\nFrom d\nSubject: z\n\nw";
        let messages = split_mbox(odd);
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].starts_with(b"Subject: x") && messages[1].starts_with(b"Subject: z"));
    }
}
