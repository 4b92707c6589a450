//! `email_templates`: mail templates admins edit in the database, and the
//! defaults `dklctl templates sync` loads from `templates/`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgExecutor;

use crate::templates::MailTemplate;

/// An `email_templates` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    /// Unique name.
    pub name: String,
    /// Subject template.
    pub subject: String,
    /// HTML template.
    pub html_content: String,
    /// Text template, if any.
    pub text_content: Option<String>,
    /// Declared variable names (a JSON array), if any.
    pub variables: Option<serde_json::Value>,
    /// Inactive templates are not used to send.
    pub is_active: bool,
    /// True when the content is what sync last wrote (or sync never wrote
    /// it and the row is new): an admin has not changed it since.
    pub unchanged_since_sync: Option<bool>,
}

impl TemplateRow {
    /// The template to render.
    pub fn template(&self) -> MailTemplate {
        MailTemplate {
            name: self.name.clone(),
            subject: self.subject.clone(),
            html: self.html_content.clone(),
            text: self.text_content.clone(),
        }
    }

    /// The declared variable names; `None` when the column is not a list of names.
    pub fn declared_variables(&self) -> Option<Vec<String>> {
        match &self.variables {
            None => Some(Vec::new()),
            Some(v) => v
                .as_array()?
                .iter()
                .map(|n| n.as_str().map(String::from))
                .collect(),
        }
    }
}

macro_rules! row_columns {
    () => {
        "name, subject, html_content, text_content, variables, is_active,
         synced_checksum = dkl_template_checksum(t) AS unchanged_since_sync"
    };
}

/// One template by name.
pub async fn by_name(
    executor: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<TemplateRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        row_columns!(),
        " FROM email_templates t WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(executor)
    .await
}

/// Every template, by name.
pub async fn all(executor: impl PgExecutor<'_>) -> Result<Vec<TemplateRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        row_columns!(),
        " FROM email_templates t ORDER BY name"
    ))
    .fetch_all(executor)
    .await
}

/// Binds $1..$5 as name, subject, HTML, text and variables.
fn bind_template<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    template: &'q MailTemplate,
    variables: &'q serde_json::Value,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&template.name)
        .bind(&template.subject)
        .bind(&template.html)
        .bind(&template.text)
        .bind(variables)
}

/// What sync did with one template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// There was no row; now there is.
    Inserted,
    /// The row held what sync last wrote; it now holds the new content.
    Updated,
    /// The row already held this content.
    Unchanged,
    /// The row was changed in the database since sync wrote it (or was not
    /// written by sync); it was left alone.
    KeptAdminChanges,
    /// As `KeptAdminChanges`, but overwritten because the operator forced it.
    Overwritten,
}

/// Writes `template` with its declared `variables` unless an admin changed
/// the row since the last sync (then only with `force`). One statement per
/// template, under the row's lock, so a concurrent admin edit is never lost
/// silently.
pub async fn sync(
    conn: &mut sqlx::PgConnection,
    template: &MailTemplate,
    variables: &[String],
    force: bool,
) -> Result<SyncOutcome, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let variables = serde_json::Value::from(variables.to_vec());
    let existing: Option<(bool, bool)> = sqlx::query_as(
        "SELECT coalesce(synced_checksum = dkl_template_checksum(t), false),
                subject = $2 AND html_content = $3 AND text_content IS NOT DISTINCT FROM $4
                    AND variables IS NOT DISTINCT FROM $5
           FROM email_templates t WHERE name = $1 FOR UPDATE",
    )
    .bind(&template.name)
    .bind(&template.subject)
    .bind(&template.html)
    .bind(&template.text)
    .bind(&variables)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match existing {
        None => {
            let insert =
                "INSERT INTO email_templates (name, subject, html_content, text_content, variables)
                          VALUES ($1, $2, $3, $4, $5)";
            bind_template(sqlx::query(insert), template, &variables)
                .execute(&mut *tx)
                .await?;
            SyncOutcome::Inserted
        }
        Some((_, true)) => SyncOutcome::Unchanged,
        Some((false, false)) if !force => SyncOutcome::KeptAdminChanges,
        Some((untouched, false)) => {
            let update = "UPDATE email_templates SET subject = $2, html_content = $3, text_content = $4, variables = $5
                           WHERE name = $1";
            bind_template(sqlx::query(update), template, &variables)
                .execute(&mut *tx)
                .await?;
            if untouched {
                SyncOutcome::Updated
            } else {
                SyncOutcome::Overwritten
            }
        }
    };
    if outcome != SyncOutcome::KeptAdminChanges {
        sqlx::query("UPDATE email_templates t SET synced_checksum = dkl_template_checksum(t) WHERE name = $1")
            .bind(&template.name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Template rows by name, each kept for a few seconds: a send reads its
/// template from memory, and an admin's edit is used within `ttl`. Misses
/// are not kept, so a template created a moment ago is found at once.
pub struct TemplateCache {
    ttl: Duration,
    rows: RwLock<HashMap<String, (Instant, Arc<TemplateRow>)>>,
}

impl TemplateCache {
    /// How long the mail worker keeps a template row.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

    /// An empty cache whose rows live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            rows: RwLock::new(HashMap::new()),
        }
    }

    /// The row named `name`, from memory when read less than `ttl` ago.
    pub async fn get(
        &self,
        executor: impl PgExecutor<'_>,
        name: &str,
    ) -> Result<Option<Arc<TemplateRow>>, sqlx::Error> {
        if let Some((read_at, row)) = self
            .rows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            && read_at.elapsed() < self.ttl
        {
            return Ok(Some(row.clone()));
        }
        let Some(row) = by_name(executor, name).await? else {
            self.rows
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            return Ok(None);
        };
        let row = Arc::new(row);
        self.rows
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), (Instant::now(), row.clone()));
        Ok(Some(row))
    }
}
