//! Every SQL statement on the scheduler's tables (migration
//! `20261123000003_scheduler.sql`), one file per table family:
//! [`job_schedules`], [`runs`] (`job_schedule_runs`), [`scheduled_jobs`] and
//! [`leader`] (`scheduler_leader` and the leader lock). Their items are
//! re-exported here.

pub mod job_schedules;
pub mod leader;
pub mod runs;
pub mod scheduled_jobs;

pub use job_schedules::*;
pub use leader::*;
pub use runs::*;
pub use scheduled_jobs::*;

/// The channel the tables' triggers notify when an admin changes a schedule
/// or a `scheduled_jobs` row becomes pending.
pub const CHANGED_CHANNEL: &str = "dkl::schedules";
