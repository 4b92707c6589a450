//! `dklctl retention`: the retention rules, and what each would delete now.

use dkl_worker::store::retention;
use sqlx::PgPool;

use crate::table::{Table, truncate};

/// Lists the rules; with `dry_run`, counts what each would delete now.
pub async fn show(pool: &PgPool, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let rules = retention::rules(pool).await?;
    let mut rows = Vec::new();
    for rule in &rules {
        let due = if dry_run && rule.enabled {
            Some(
                retention::count_due(pool, rule)
                    .await
                    .map_err(|e| e.to_string()),
            )
        } else {
            None
        };
        rows.push((rule, due));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(rule, due)| {
                let mut v = serde_json::to_value(rule).unwrap_or_default();
                if let Some(due) = due {
                    v["would_delete"] = match due {
                        Ok(n) => serde_json::json!(n),
                        Err(e) => serde_json::json!({ "error": e }),
                    };
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut header = vec![
        "rule",
        "table",
        "condition",
        "keep",
        "enabled",
        "older than",
    ];
    header.push(if dry_run {
        "would delete"
    } else {
        "last run (deleted)"
    });
    let mut table = Table::new(&header);
    for (rule, due) in rows {
        let outcome = match (dry_run, due, rule.last_run_at) {
            (true, Some(Ok(n)), _) => n.to_string(),
            (true, Some(Err(e)), _) => format!("error: {}", truncate(&e, 60)),
            (true, None, _) => "-".into(),
            (false, _, Some(at)) => match &rule.last_error {
                Some(e) => format!(
                    "{} failed: {}",
                    at.format("%Y-%m-%d %H:%M"),
                    truncate(e, 50)
                ),
                None => format!(
                    "{} ({})",
                    at.format("%Y-%m-%d %H:%M"),
                    rule.last_deleted.unwrap_or(0)
                ),
            },
            (false, _, None) => "never".into(),
        };
        table.row(vec![
            rule.name.clone(),
            rule.table_name.clone(),
            rule.condition.clone(),
            format!(
                "{} d",
                (rule.keep_for_secs / 86_400.0 * 10.0).round() / 10.0
            ),
            if rule.enabled { "yes" } else { "no" }.into(),
            rule.cutoff.format("%Y-%m-%d %H:%M").to_string(),
            outcome,
        ]);
    }
    print!("{}", table.render("no retention rules"));
    if dry_run {
        println!(
            "(dry run: nothing was deleted; images are handed to cleanup_images, which removes a row once the store confirmed)"
        );
    }
    Ok(())
}
