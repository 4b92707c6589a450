//! Every job kind dkl-mail-worker knows, with its queue and payload shape.
//!
//! The worker's [`super::Registry`] says which kinds *this process* can run;
//! the catalog says which kinds *exist* ([`crate::kinds::catalog`] is the
//! catalog of dkl-mail-worker). The scheduler and `dklctl` use it to
//! turn an admin's row (a kind name and a JSON payload) into a job, and to
//! refuse an unknown kind or a payload that does not decode before anything
//! is enqueued, with the reason written where the admin looks.

use std::collections::BTreeMap;

use super::kind::JobKind;

/// One kind: where it runs and how its payload is checked.
#[derive(Clone, Copy)]
pub struct KindSpec {
    /// `job_type` in `apalis.jobs`.
    pub kind: &'static str,
    /// The queue it runs on unless a row says otherwise.
    pub queue: &'static str,
    /// Attempts before it is discarded, unless a row says otherwise.
    pub max_attempts: i32,
    decodes: fn(&serde_json::Value) -> Result<(), serde_json::Error>,
}

impl std::fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindSpec")
            .field("kind", &self.kind)
            .field("queue", &self.queue)
            .finish()
    }
}

impl KindSpec {
    /// The spec of job kind `J`.
    pub fn of<J: JobKind>() -> Self {
        Self {
            kind: J::KIND,
            queue: J::QUEUE,
            max_attempts: J::MAX_ATTEMPTS,
            decodes: |v| serde_json::from_value::<J>(v.clone()).map(drop),
        }
    }

    /// Checks that `payload` decodes as this kind's payload.
    pub fn check_payload(&self, payload: &serde_json::Value) -> Result<(), String> {
        (self.decodes)(payload).map_err(|e| {
            format!(
                "payload {payload} does not decode as job kind `{}`: {e}; fix the payload",
                self.kind
            )
        })
    }
}

/// A set of known kinds.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    specs: BTreeMap<&'static str, KindSpec>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds kind `J`.
    pub fn with<J: JobKind>(mut self) -> Self {
        self.specs.insert(J::KIND, KindSpec::of::<J>());
        self
    }

    /// The spec of `kind`, if known.
    pub fn get(&self, kind: &str) -> Option<&KindSpec> {
        self.specs.get(kind)
    }

    /// Known kind names, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.specs.keys().copied().collect()
    }

    /// The spec of `kind` if it is known and `payload` decodes as it; else
    /// the reason, phrased for the admin who wrote the row.
    pub fn resolve(&self, kind: &str, payload: &serde_json::Value) -> Result<&KindSpec, String> {
        let spec = self.get(kind).ok_or_else(|| {
            format!(
                "unknown job kind `{kind}`; known kinds: {}",
                self.kinds().join(", ")
            )
        })?;
        spec.check_payload(payload)?;
        Ok(spec)
    }
}
