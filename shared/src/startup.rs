//! The start and end every binary shares: read and validate the
//! configuration (exit 2 with the variable's name if it is wrong), set up
//! logging, run, and turn the outcome into an exit code with the whole error
//! chain on stderr.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use crate::config::Config;
use crate::telemetry;

/// Runs a binary's body with a validated [`Config`].
pub async fn run_binary<F, Fut, E>(name: &str, body: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.log_format);
    match body(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints an anyhow chain as "outer: cause: root cause".
            let message = format!("{e:#}");
            tracing::error!(error = %message, "{name} stopped");
            eprintln!("{name}: {message}");
            ExitCode::FAILURE
        }
    }
}
