//! `flowd tail [--from ADDR] TOPIC [--group G] [--offset earliest|latest|N] [--follow] [--json]`:
//! prints a topic's records, partition by partition; without `--follow` it stops at the
//! end each partition had when tail started, and exits 0. With `--group` it reads as a
//! named consumer: each batch is claimed, printed, then acked, so a second run goes on
//! where the first stopped.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::CliError;
use crate::client::{Client, ClientError};
use crate::consumer::cursor::{Options, Start};
use crate::protocol::consumer::AdminAction;
use crate::protocol::json::record_json;
use crate::protocol::message::Fetched;
use crate::protocol::{ErrorCode, FetchFrom, OwnedWireRecord};

/// Records per fetch.
const FETCH_RECORDS: u32 = 1000;
/// How long a follower waits between rounds that found nothing.
const FOLLOW_IDLE: Duration = Duration::from_millis(50);
/// How long a fetch or claim answered "unavailable" (a partition being copied in to the
/// peer asked, a leader being chosen) is asked again before tail gives up with that
/// answer. Such an answer did nothing, so asking again cannot print a record twice.
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(30);

pub struct TailArgs {
    pub from: String,
    pub topic: String,
    pub group: Option<String>,
    pub offset: Option<FetchFrom>,
    pub follow: bool,
    pub json: bool,
}

pub fn run(args: TailArgs) -> Result<ExitCode, CliError> {
    let mut client = crate::cli::connect(&args.from)?;
    if let Some(group) = &args.group {
        return as_consumer(&mut client, &args, group);
    }
    let metadata = client.metadata()?;
    let Some(&(_, partitions)) = metadata.topics.iter().find(|(name, _)| *name == args.topic) else {
        let names: Vec<&str> = metadata.topics.iter().map(|(n, _)| n.as_str()).collect();
        return Err(CliError::Usage(format!(
            "no topic \"{}\" on {}; topics there: {}",
            args.topic,
            args.from,
            names.join(", ")
        )));
    };
    let start = args.offset.unwrap_or(if args.follow {
        FetchFrom::Latest
    } else {
        FetchFrom::Earliest
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Per partition: the next offset to fetch, and (without --follow) where to stop.
    let mut positions: Vec<(u64, Option<u64>)> = Vec::new();
    for p in 0..partitions {
        let first = patiently(UNAVAILABLE_PATIENCE, || {
            client.fetch(&args.topic, p, start, FETCH_RECORDS, 0)
        })?;
        let next = first_position(&args.topic, p, &first, start);
        let next = print(&mut out, &args, p, &first.records, next)?;
        positions.push((next, (!args.follow).then_some(first.next_offset)));
    }
    loop {
        let mut got_any = false;
        let mut all_done = true;
        for (p, (next, end)) in positions.iter_mut().enumerate() {
            if end.is_some_and(|end| *next >= end) {
                continue;
            }
            all_done = false;
            let from = FetchFrom::Offset(*next);
            let fetched = patiently(UNAVAILABLE_PATIENCE, || {
                client.fetch(&args.topic, p as u32, from, FETCH_RECORDS, 0)
            })?;
            *next = past_deleted(&args.topic, p as u32, *next, &fetched);
            got_any |= !fetched.records.is_empty();
            *next = print(&mut out, &args, p as u32, &fetched.records, *next)?;
            if fetched.records.is_empty() && end.is_some() {
                // Only end markers (skipped by the server) were left before the end.
                *next = (*next).max(end.unwrap_or(0));
            }
        }
        if !args.follow && all_done {
            break;
        }
        if !got_any {
            out.flush().map_err(CliError::Output)?;
            std::thread::sleep(FOLLOW_IDLE);
        }
    }
    out.flush().map_err(CliError::Output)?;
    Ok(ExitCode::SUCCESS)
}

/// Claims from any partition, prints, acks; without --follow, until a claim finds
/// nothing. The consumer is created at --offset if it is new.
fn as_consumer(client: &mut Client, args: &TailArgs, group: &str) -> Result<ExitCode, CliError> {
    let start = match args.offset {
        None | Some(FetchFrom::Earliest) => Start::Earliest,
        Some(FetchFrom::Latest) => Start::New,
        Some(FetchFrom::Offset(0)) => Start::Earliest,
        Some(FetchFrom::Offset(n)) => Start::After(n - 1),
        Some(FetchFrom::Time(t)) => Start::Time(t),
    };
    let create = Options {
        start,
        ..Options::default()
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut stands = group_stands(client, &args.topic, group).map_err(usage)?;
    loop {
        let claimed = patiently(UNAVAILABLE_PATIENCE, || {
            client.claim(&args.topic, group, None, FETCH_RECORDS, Some(create.clone()))
        })
        .map_err(usage)?;
        let Some(partition) = claimed.partition else {
            if !args.follow {
                break;
            }
            out.flush().map_err(CliError::Output)?;
            std::thread::sleep(FOLLOW_IDLE);
            continue;
        };
        if let Some(&(committed, skipped)) = stands.get(&partition)
            && claimed.from > committed
        {
            // The claim starts past where the group stood: retention deleted what lay
            // between (counted by the server at the claim), or another reader acked it.
            stands = group_stands(client, &args.topic, group)?;
            let now = stands.get(&partition).map_or(skipped, |s| s.1);
            if now > skipped {
                eprintln!(
                    "flowd tail: retention deleted {} records of partition {partition} of \"{}\" before group \"{group}\" acked them; it goes on at {}",
                    now - skipped,
                    args.topic,
                    claimed.from
                );
            }
        }
        print(&mut out, args, partition, &claimed.records, 0)?;
        // Printed (and flushed) before acked: a crash re-prints, never skips.
        out.flush().map_err(CliError::Output)?;
        let (_, to) = client.ack(&args.topic, group, partition)?;
        stands.entry(partition).or_insert((to, 0)).0 = to;
    }
    out.flush().map_err(CliError::Output)?;
    Ok(ExitCode::SUCCESS)
}

/// Where `group` stands on each partition of `topic` it has read: `(committed,
/// skipped)`, skipped being what retention deleted before the group acked it.
fn group_stands(
    client: &mut Client,
    topic: &str,
    group: &str,
) -> Result<HashMap<u32, (u64, u64)>, ClientError> {
    let cursors = match patiently(UNAVAILABLE_PATIENCE, || {
        client.consumers(AdminAction::List, topic, group)
    }) {
        // A group its first claim makes: it stands nowhere yet.
        Err(ClientError::Server {
            code: ErrorCode::UnknownConsumer,
            ..
        }) => Vec::new(),
        other => other?,
    };
    Ok(cursors
        .into_iter()
        .map(|c| (c.partition, (c.committed, c.skipped)))
        .collect())
}

/// An unknown topic as a usage error (the user named it); anything else as it is.
fn usage(error: ClientError) -> CliError {
    match error {
        ClientError::Server {
            code: ErrorCode::UnknownTopic,
            message,
        } => CliError::Usage(message),
        other => other.into(),
    }
}

/// `call` again while it is answered `Unavailable`, backing off from 50 ms to 1 s, for
/// at most `patience`; then its last answer, whatever it is.
fn patiently<T>(
    patience: Duration,
    mut call: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(50);
    loop {
        match call() {
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            }) if Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// Where tail goes on in `partition` after a fetch from `wanted`: at the partition's
/// start if retention deleted records from `wanted` on before tail read them, said once
/// on stderr (never a gap passed unsaid, nor said again while nothing comes after it).
fn past_deleted(topic: &str, partition: u32, wanted: u64, fetched: &Fetched) -> u64 {
    if fetched.start_offset <= wanted {
        return wanted;
    }
    eprintln!(
        "flowd tail: records {wanted}..{start} of partition {partition} of \"{topic}\" were deleted by retention before tail read them; it goes on at {start}",
        start = fetched.start_offset
    );
    fetched.start_offset
}

/// Where tail starts in `partition` after its first fetch from `start`.
fn first_position(topic: &str, partition: u32, fetched: &Fetched, start: FetchFrom) -> u64 {
    match start {
        FetchFrom::Offset(o) => past_deleted(topic, partition, o, fetched),
        FetchFrom::Latest => fetched.next_offset,
        _ => fetched.start_offset,
    }
}

/// Prints the records; returns the offset after the last one (or `next` if none).
fn print(
    out: &mut impl Write,
    args: &TailArgs,
    partition: u32,
    records: &[(u64, OwnedWireRecord)],
    next: u64,
) -> Result<u64, CliError> {
    let mut position = next;
    for (offset, record) in records {
        if args.json {
            let mut value = record_json(
                &args.topic,
                partition,
                *offset,
                record.timestamp_ms.unwrap_or_default(),
                record.key.as_deref(),
                &record.value,
            );
            let headers = record.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
            crate::protocol::json::put_headers(&mut value, headers);
            writeln!(out, "{value}").map_err(CliError::Output)?;
        } else {
            let key = record
                .key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            writeln!(
                out,
                "{partition}:{offset}\t{key}\t{}",
                String::from_utf8_lossy(&record.value)
            )
            .map_err(CliError::Output)?;
        }
        position = offset + 1;
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> ClientError {
        ClientError::Server {
            code: ErrorCode::Unavailable,
            message: "partition 0 of \"t\" moves to this peer and is being copied in; retry in a moment"
                .into(),
        }
    }

    #[test]
    fn an_unavailable_answer_is_asked_again_and_any_other_is_returned_at_once() {
        let mut calls = 0;
        let answer = patiently(Duration::from_secs(10), || {
            calls += 1;
            if calls < 3 { Err(unavailable()) } else { Ok(calls) }
        });
        assert_eq!(answer.unwrap(), 3);

        let mut calls = 0;
        let answer: Result<(), _> = patiently(Duration::from_secs(10), || {
            calls += 1;
            Err(ClientError::Server {
                code: ErrorCode::UnknownTopic,
                message: "no topic".into(),
            })
        });
        assert!(matches!(
            answer,
            Err(ClientError::Server {
                code: ErrorCode::UnknownTopic,
                ..
            })
        ));
        assert_eq!(calls, 1, "a lasting error is not asked again");
    }

    #[test]
    fn an_answer_unavailable_for_longer_than_the_patience_is_returned() {
        let mut calls = 0;
        let started = Instant::now();
        let answer: Result<(), _> = patiently(Duration::from_millis(300), || {
            calls += 1;
            Err(unavailable())
        });
        assert!(matches!(
            answer,
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                ..
            })
        ));
        // 50 + 100 ms of pauses fit in 300 ms, the next 200 ms would not: three asks, or
        // two if this machine stalled a pause past the deadline.
        assert!((2..=3).contains(&calls), "{calls} asks");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_gap_retention_left_moves_tail_to_the_start_once() {
        // Everything below 4200 deleted, the active segment empty: the answer holds no
        // record, and tail must not ask from 10 again (and say it again) every round.
        let empty_after_retention = Fetched {
            start_offset: 4200,
            next_offset: 4200,
            records: Vec::new(),
        };
        assert_eq!(past_deleted("t", 0, 10, &empty_after_retention), 4200);
        assert_eq!(past_deleted("t", 0, 4200, &empty_after_retention), 4200);
        // No gap: where it was.
        let kept = Fetched {
            start_offset: 0,
            next_offset: 4200,
            records: Vec::new(),
        };
        assert_eq!(past_deleted("t", 0, 10, &kept), 10);
    }
}
