//! The command line: clap definitions, and dispatch to one file per subcommand.
//!
//! The command line is a contract (DESIGN.md section 1): exit 0 ok, 1 runtime failure
//! (including corrupt data found), 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod inspect;

#[derive(Debug, Parser)]
#[command(
    name = "flowd",
    version,
    about = "A single-binary stream and job processing engine"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offline check of a data directory: topics, partitions, segments, a full CRC check.
    /// Exits 1 when anything is corrupt.
    Inspect {
        /// The data directory (engine.data_dir).
        data_dir: PathBuf,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Errors of the command-line layer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Cli {
    /// Runs the parsed command and returns the process exit code.
    pub fn run(self) -> Result<ExitCode, CliError> {
        match self.command {
            Command::Inspect { data_dir, json } => inspect::run(&data_dir, json),
        }
    }
}
