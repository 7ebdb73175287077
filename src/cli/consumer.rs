//! `flowd consumer list|reset|skip|disable|resume|delete`: named consumers acted on over
//! the binary protocol, as the console and `POST /consumers/T/G/...` do. Every change is
//! answered once journaled and durable; the server writes an audit line for it.

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::{CliError, DEFAULT_TCP};
use crate::client::ClientError;
use crate::protocol::ErrorCode;
use crate::protocol::consumer::{AdminAction, CursorInfo, Position};

#[derive(Debug, Subcommand)]
pub enum ConsumerAction {
    /// Every consumer (or TOPIC's, or one): partition, committed offset, lag, claim, state.
    List {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: Option<String>,
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Move GROUP's committed offset on TOPIC: to earliest, latest, an offset, or @MS (the
    /// first record at or after a time, ms since the epoch). A pending claim is dropped.
    Reset {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: String,
        group: String,
        /// earliest, latest, OFFSET or @MS.
        #[arg(long, value_parser = str::parse::<Position>)]
        to: Position,
        /// Only this partition (else every partition the consumer has).
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Skip COUNT records past GROUP's committed offset (at most to the end), unprocessed.
    Skip {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: String,
        group: String,
        count: u64,
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Stop GROUP on TOPIC: claims refused until resumed; a pending claim goes back.
    Disable {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: String,
        group: String,
    },
    /// Start a disabled GROUP again from its committed offset.
    Resume {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: String,
        group: String,
    },
    /// Forget GROUP on TOPIC (its committed offsets and claims).
    Delete {
        #[arg(long, default_value = DEFAULT_TCP, value_name = "ADDR")]
        from: String,
        topic: String,
        group: String,
    },
}

fn print(cursors: &[CursorInfo]) {
    println!(
        "{:<16} {:<16} {:>9} {:>12} {:>10} {:<14} state",
        "topic", "consumer", "partition", "committed", "lag", "claimed"
    );
    for c in cursors {
        let claimed = c
            .claimed
            .map(|r| format!("{}..{}", r.from, r.to))
            .unwrap_or_else(|| "-".into());
        let state = match &c.disabled_reason {
            Some(reason) => format!("disabled: {reason}"),
            None => c.state.clone(),
        };
        println!(
            "{:<16} {:<16} {:>9} {:>12} {:>10} {:<14} {state}",
            c.topic, c.group, c.partition, c.committed, c.lag, claimed
        );
    }
}

fn changed(cursors: &[CursorInfo], topic: &str, group: &str, what: &str) -> Result<ExitCode, CliError> {
    if cursors.is_empty() {
        return Err(no_such(topic, group));
    }
    println!("{what} {group} on {topic}: {} partitions", cursors.len());
    Ok(ExitCode::SUCCESS)
}

/// Disables, resumes or deletes `group` on `topic`, saying how many partitions changed.
fn change(
    from: &str,
    topic: &str,
    group: &str,
    action: AdminAction,
    done: &str,
) -> Result<ExitCode, CliError> {
    let cursors = admin(&mut crate::cli::connect(from)?, action, topic, group)?;
    changed(&cursors, topic, group, done)
}

fn no_such(topic: &str, group: &str) -> CliError {
    CliError::Usage(format!(
        "topic \"{topic}\" has no consumer \"{group}\"; `flowd consumer list {topic}` lists them"
    ))
}

/// The admin request's answer; an unknown consumer said in the CLI's words (exit 2).
fn admin(
    client: &mut crate::client::Client,
    action: AdminAction,
    topic: &str,
    group: &str,
) -> Result<Vec<CursorInfo>, CliError> {
    match client.consumers(action, topic, group) {
        Err(ClientError::Server {
            code: ErrorCode::UnknownConsumer,
            ..
        }) => Err(no_such(topic, group)),
        other => Ok(other?),
    }
}

/// Moves every partition of `group` (or one) to `to`, printing each move.
fn reset(
    from: &str,
    topic: &str,
    group: &str,
    to: Position,
    only: Option<u32>,
) -> Result<ExitCode, CliError> {
    let mut client = crate::cli::connect(from)?;
    let cursors: Vec<CursorInfo> = admin(&mut client, AdminAction::List, topic, group)?
        .into_iter()
        .filter(|c| only.is_none_or(|p| p == c.partition))
        .collect();
    if cursors.is_empty() {
        return Err(no_such(topic, group));
    }
    for c in &cursors {
        let offset = client.reset(topic, group, c.partition, to)?;
        println!("{topic}/{} {group}: {} -> {offset}", c.partition, c.committed);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(action: ConsumerAction) -> Result<ExitCode, CliError> {
    match action {
        ConsumerAction::List {
            from,
            topic,
            group,
            json,
        } => {
            let mut client = crate::cli::connect(&from)?;
            let cursors: Vec<CursorInfo> = client
                .consumers(AdminAction::List, "", "")?
                .into_iter()
                .filter(|c| topic.as_deref().is_none_or(|t| t == c.topic))
                .filter(|c| group.as_deref().is_none_or(|g| g == c.group))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&cursors)?);
            } else {
                print(&cursors);
            }
            Ok(ExitCode::SUCCESS)
        }
        ConsumerAction::Reset {
            from,
            topic,
            group,
            to,
            partition,
        } => reset(&from, &topic, &group, to, partition),
        ConsumerAction::Skip {
            from,
            topic,
            group,
            count,
            partition,
        } => reset(&from, &topic, &group, Position::Skip(count), partition),
        ConsumerAction::Disable { from, topic, group } => {
            change(&from, &topic, &group, AdminAction::Disable, "disabled")
        }
        ConsumerAction::Resume { from, topic, group } => {
            change(&from, &topic, &group, AdminAction::Resume, "resumed")
        }
        ConsumerAction::Delete { from, topic, group } => {
            change(&from, &topic, &group, AdminAction::Destroy, "deleted")
        }
    }
}
