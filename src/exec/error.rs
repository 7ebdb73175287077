//! What goes wrong with a worker process, worded for the log a user reads.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "cannot start worker {worker}: {command:?} in {dir}: {source}; check `command` and `dir` of \
         the exec stage (a bare program name is looked up on PATH, a relative path from `dir`)"
    )]
    Spawn {
        worker: String,
        command: Vec<String>,
        dir: PathBuf,
        source: std::io::Error,
    },
    /// An answer that breaks the protocol: the worker is stopped and restarted.
    #[error("{0}")]
    BadAnswer(String),
}
