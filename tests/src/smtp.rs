//! A real SMTP server for tests (it lives in the worker library, where
//! `dklctl bench send` uses it too).

pub use dkl_worker::smtp::sink::*;
