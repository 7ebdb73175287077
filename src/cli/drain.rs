//! `flowd drain [--from ADDR] [--group G] [--timeout SECS]`: waits until every named
//! consumer (or just G) has acked everything in every partition, and nothing is claimed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::CliError;
use crate::protocol::consumer::AdminAction;
use crate::protocol::consumer::CursorInfo;

/// How often the consumers are asked again.
const POLL: Duration = Duration::from_millis(50);

fn settled(cursor: &CursorInfo) -> bool {
    cursor.lag == 0 && cursor.claimed.is_none()
}

pub fn run(from: &str, group: Option<&str>, timeout: Duration) -> Result<ExitCode, CliError> {
    let mut client = crate::cli::connect(from)?;
    let deadline = Instant::now() + timeout;
    loop {
        let cursors: Vec<CursorInfo> = client
            .consumers(AdminAction::List, "", "")?
            .into_iter()
            .filter(|c| group.is_none_or(|g| c.group == g))
            .collect();
        if let Some(g) = group
            && cursors.is_empty()
        {
            return Err(CliError::Usage(format!(
                "no consumer \"{g}\" on {from}; `curl {from}/consumers` over HTTP lists them"
            )));
        }
        let left: Vec<&CursorInfo> = cursors.iter().filter(|c| !settled(c)).collect();
        if left.is_empty() {
            println!(
                "drained: {} consumer partitions have acked everything",
                cursors.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "flowd: not drained after {}:",
                humantime::format_duration(timeout)
            );
            for c in left {
                eprintln!(
                    "  {} {}/{}: {} records not acked{}",
                    c.group,
                    c.topic,
                    c.partition,
                    c.lag,
                    if c.state == "disabled" { " (disabled)" } else { "" }
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(POLL);
    }
}
