//! One file per command family; `main.rs` only parses and dispatches.

pub mod accounts;
pub mod bench;
pub mod bench_dashboard;
pub mod bench_ingest;
pub mod bench_newsletter;
pub mod bench_schedule;
pub mod bench_send;
pub mod bench_upkeep;
pub mod bounces;
pub mod dashboard;
pub mod database;
pub mod demo;
pub mod inbox;
pub mod jobs;
pub mod leaderboard;
pub mod mail;
pub mod newsletter;
pub mod retention;
pub mod schedules;
pub mod scratch_db;
pub mod status;
pub mod templates;

use anyhow::Context;

/// Who runs this command, for `created_by`.
pub fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .map_or_else(|| "dklctl".into(), |u| format!("{u} (dklctl)"))
}

/// A `--payload` argument as JSON.
pub fn parse_payload(payload: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(payload).with_context(|| format!("--payload is not valid JSON: {payload}"))
}
