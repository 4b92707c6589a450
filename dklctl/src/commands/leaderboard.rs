//! `dklctl leaderboard`: a period's board, and the periods computed.

use dkl_worker::store::leaderboards::{self, Period};
use sqlx::PgPool;

use crate::table::Table;

/// Prints the top `top` of `period`'s board.
pub async fn show(pool: &PgPool, period: &str, top: i64, json: bool) -> anyhow::Result<()> {
    let period: Period = period.parse().map_err(anyhow::Error::msg)?;
    let entries = leaderboards::top(pool, period, top).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let info = leaderboards::periods(pool)
        .await?
        .into_iter()
        .find(|p| p.period == period.to_string());
    match &info {
        Some(i) => println!(
            "{period}: {} entries, computed {}",
            i.entries,
            i.computed_at.format("%Y-%m-%d %H:%M:%S %Z")
        ),
        None => println!(
            "{period}: not computed yet (recompute_leaderboards runs every 5 minutes; `dklctl run-now leaderboard-recompute`)"
        ),
    }
    let mut table = Table::new(&["rank", "name", "steps", "km", "points"]);
    for e in entries {
        table.row(vec![
            e.rank.to_string(),
            e.name,
            e.steps.to_string(),
            format!("{:.2}", e.distance),
            e.points.to_string(),
        ]);
    }
    print!("{}", table.render("the board is empty"));
    Ok(())
}

/// Lists the computed periods.
pub async fn list(pool: &PgPool, json: bool) -> anyhow::Result<()> {
    let periods = leaderboards::periods(pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&periods)?);
        return Ok(());
    }
    let mut table = Table::new(&["period", "entries", "computed"]);
    for p in periods {
        table.row(vec![
            p.period,
            p.entries.to_string(),
            p.computed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
    }
    print!("{}", table.render("no leaderboard computed yet"));
    Ok(())
}
