//! The command line: clap definitions, and dispatch to one file per subcommand.
//!
//! The command line is a contract (DESIGN.md section 1): exit 0 ok, 1 runtime failure
//! (including corrupt data found), 2 bad usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod inspect;
mod run;

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
    /// Run a dataflow on every core until its input ends, or until SIGINT/SIGTERM.
    Run {
        /// The dataflow file.
        dataflow: PathBuf,
        /// Where topics and progress live (overrides engine.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How many cores to run on: a number, or "all" (overrides engine.cores).
        #[arg(long, value_parser = run::parse_cores)]
        cores: Option<crate::config::Cores>,
        /// Keep all data in memory (tmpfs), durability none; nothing survives the run.
        #[arg(long)]
        memory: bool,
    },
    /// Validate a dataflow file: every error as FILE:LINE:COL with a hint; exit 2 if any.
    Check {
        /// The dataflow file.
        dataflow: PathBuf,
    },
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
    Runtime(#[from] crate::runtime::RuntimeError),
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
            Command::Check { dataflow } => check::run(&dataflow),
            Command::Run {
                dataflow,
                data_dir,
                cores,
                memory,
            } => run::run(run::RunArgs {
                file: dataflow,
                data_dir,
                cores,
                memory,
            }),
        }
    }
}
