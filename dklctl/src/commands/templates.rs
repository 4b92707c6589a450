//! `dklctl templates sync|check|render`: the mail templates in
//! `email_templates` and the defaults shipped in `templates/`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use dkl_worker::store::email_templates::{self, SyncOutcome, TemplateRow};
use dkl_worker::templates::{Renderer, files, used_variables};
use sqlx::PgPool;

/// Loads the templates of `dir` into the table. Every file is checked first;
/// one broken template stops the sync before anything is written. A row an
/// admin changed since the last sync is kept unless `force`.
pub async fn sync(pool: &PgPool, dir: &Path, force: bool) -> anyhow::Result<()> {
    let all = files::load_dir(dir)
        .with_context(|| format!("cannot read the templates in {}", dir.display()))?;
    let renderer = Renderer::new();
    let broken: Vec<String> = all
        .iter()
        .filter_map(|f| files::check(&renderer, f).err())
        .map(|e| e.to_string())
        .collect();
    if !broken.is_empty() {
        anyhow::bail!(
            "refusing to sync: {} broken template(s), nothing written:\n  {}",
            broken.len(),
            broken.join("\n  ")
        );
    }
    let mut conn = pool.acquire().await?;
    let mut kept = Vec::new();
    for f in &all {
        let outcome = email_templates::sync(&mut conn, &f.template, &f.variables, force).await?;
        let said = match outcome {
            SyncOutcome::Inserted => "added",
            SyncOutcome::Updated => "updated",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Overwritten => {
                "overwritten (--force): the admin's changes in the database are replaced"
            }
            SyncOutcome::KeptAdminChanges => {
                kept.push(f.template.name.clone());
                "kept: changed in the database since the last sync; use --force to replace it with the file"
            }
        };
        println!("{:<26} {said}", f.template.name);
    }
    if !kept.is_empty() {
        println!(
            "{} template(s) kept as admins changed them: {}",
            kept.len(),
            kept.join(", ")
        );
    }
    Ok(())
}

/// Checks every row of `email_templates`: each part parses and the declared
/// `variables` are exactly the ones used. Fails if any row is broken.
pub async fn check(pool: &PgPool) -> anyhow::Result<()> {
    let renderer = Renderer::new();
    let mut broken = 0;
    for row in email_templates::all(pool).await? {
        match check_row(&renderer, &row) {
            Ok(()) => println!("{:<26} ok", row.name),
            Err(why) => {
                broken += 1;
                println!("{:<26} BROKEN: {why}", row.name);
            }
        }
    }
    if broken > 0 {
        anyhow::bail!(
            "{broken} broken template(s) in email_templates; fix them in the database or run `dklctl templates sync --force`"
        );
    }
    Ok(())
}

fn check_row(renderer: &Renderer, row: &TemplateRow) -> Result<(), String> {
    let template = row.template();
    renderer.check(&template).map_err(|e| e.to_string())?;
    let declared: BTreeSet<String> = row
        .declared_variables()
        .ok_or("`variables` is not a JSON list of names")?
        .into_iter()
        .collect();
    let mut used = BTreeSet::new();
    for source in [
        Some(&template.subject),
        Some(&template.html),
        template.text.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        used.extend(used_variables(source).map_err(|e| e.to_string())?);
    }
    let undeclared: Vec<&String> = used.difference(&declared).collect();
    let unused: Vec<&String> = declared.difference(&used).collect();
    if !undeclared.is_empty() || !unused.is_empty() {
        return Err(format!(
            "variables: used but not declared {undeclared:?}, declared but not used {unused:?}"
        ));
    }
    Ok(())
}

/// Renders one template with the variables in a JSON file and prints it.
pub async fn render(pool: &PgPool, name: &str, vars: &Path) -> anyhow::Result<()> {
    let row = email_templates::by_name(pool, name)
        .await?
        .with_context(|| {
            format!(
                "no template named `{name}` in email_templates; `dklctl templates check` lists them"
            )
        })?;
    let text =
        std::fs::read_to_string(vars).with_context(|| format!("cannot read {}", vars.display()))?;
    let data: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", vars.display()))?;
    let mail = Renderer::new().render(&row.template(), &data)?;
    println!(
        "Subject: {}\n\n--- text ---\n{}\n--- HTML ---\n{}",
        mail.subject,
        mail.text.trim_end(),
        mail.html.trim_end()
    );
    Ok(())
}
