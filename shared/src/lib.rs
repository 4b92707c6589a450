//! dkl-shared: what the dkl-mail-worker binaries (`dkl-worker`,
//! `dkl-scheduler`, `dklctl`) have in common.
//!
//! - [`config`]: environment variables, validated at start;
//! - [`db`]: connecting and migrations;
//! - [`jobs`]: the job engine on apalis;
//! - [`kinds`]: the payload type of every job kind (their handlers live in `dkl-worker`);
//! - [`schedules`]: recurring and admin-scheduled jobs (the scheduler's tables);
//! - [`monitor`]: the job status views and leadership, for `dklctl` and `/metrics`;
//! - [`telemetry`]: logging setup and shutdown signals;
//! - [`startup`]: the start and exit every binary shares.

pub mod config;
pub mod db;
pub mod jobs;
pub mod kinds;
pub mod monitor;
pub mod schedules;
pub mod startup;
pub mod telemetry;
mod text_enum;
