//! dkl-shared: what the dkl-mail-worker binaries (`dkl-worker`,
//! `dkl-scheduler`, `dklctl`) have in common.
//!
//! - [`config`]: environment variables, validated at start;
//! - [`db`]: connecting and migrations;
//! - [`jobs`]: the job engine on apalis;
//! - [`telemetry`]: logging setup and shutdown signals;
//! - [`startup`]: the start and exit every binary shares.

pub mod config;
pub mod db;
pub mod jobs;
pub mod startup;
pub mod telemetry;
