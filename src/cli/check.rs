//! `flowd check DATAFLOW.toml`: validate a dataflow; every error as FILE:LINE:COL, exit 2.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::CliError;
use crate::config::{self, ConfigError};

pub fn run(file: &Path) -> Result<ExitCode, CliError> {
    match config::load(file) {
        Ok(spec) => {
            println!(
                "{}: ok: {} topics, {} sources, {} stages, {} sinks",
                file.display(),
                spec.topics.len(),
                spec.sources.len(),
                spec.stages.len(),
                spec.sinks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Ok(report(&error)),
    }
}

/// Prints a configuration error and gives the bad-configuration exit code.
pub fn report(error: &ConfigError) -> ExitCode {
    eprintln!("{error}");
    ExitCode::from(2)
}
