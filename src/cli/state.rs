//! `flowd state [--from ADDR] STAGE KEY`: the state a `state` stage holds for a key,
//! read from the running engine without changing it.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::CliError;

pub fn run(from: &str, stage: &str, key: &str) -> Result<ExitCode, CliError> {
    let state = crate::cli::connect(from)?.state(stage, key.as_bytes())?;
    let mut out = std::io::stdout().lock();
    out.write_all(&state)?;
    out.write_all(b"\n")?;
    Ok(ExitCode::SUCCESS)
}
