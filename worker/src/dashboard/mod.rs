//! The operator dashboard (work in progress): see docs/dashboard-plan.md.

pub mod auth;
