//! dkl-shared: what the dkl-mail-worker binaries (`dkl-worker`,
//! `dkl-scheduler`, `dklctl`) have in common.
//!
//! - [`config`]: environment variables, validated at start;
//! - [`db`]: connecting and migrations;
//! - [`jobs`]: the job engine on apalis;
//! - [`telemetry`]: logging setup and shutdown signals.

pub mod config;
pub mod db;
pub mod jobs;
pub mod telemetry;
