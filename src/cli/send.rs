//! `flowd send [--to ADDR] TOPIC [--key K] [--reply] [FILE|-]`: one record per input line,
//! sent pipelined in batches; prints `PARTITION:OFFSET` per record once durable (or, with
//! `--reply`, each job's answer), in input order. Exit 0 only when every record was acked.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::CliError;
use crate::client::{Client, ClientError, offsets, server_error};
use crate::protocol::message::Response;
use crate::protocol::{JobRequest, OwnedWireRecord, Request, WireRecord};

/// Records per produce request.
const BATCH_RECORDS: usize = 1000;
/// Requests in flight before the next waits for an ack.
const WINDOW: usize = 64;

pub struct SendArgs {
    pub to: String,
    pub topic: String,
    pub key: Option<String>,
    pub reply: bool,
    pub input: Option<PathBuf>,
}

pub fn run(args: SendArgs) -> Result<ExitCode, CliError> {
    let input: Box<dyn BufRead> = match args.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(std::fs::File::open(p).map_err(
            |source| CliError::Input {
                path: p.to_path_buf(),
                source,
            },
        )?)),
    };
    let mut client = crate::cli::connect(&args.to)?;
    let metadata = client.metadata()?;
    let max_bytes = (metadata.max_frame_bytes as usize / 2).max(1024);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut sender = Sender {
        client,
        pending: VecDeque::new(),
        done: HashMap::new(),
        failures: 0,
    };
    if args.reply {
        let job = metadata
            .jobs
            .iter()
            .find(|(name, _)| *name == args.topic)
            .or_else(|| metadata.jobs.iter().find(|(_, topic)| *topic == args.topic))
            .map(|(name, _)| name.clone())
            .ok_or_else(|| {
                let jobs: Vec<&str> = metadata.jobs.iter().map(|(n, _)| n.as_str()).collect();
                CliError::Usage(format!(
                    "no job named \"{}\" (or taking topic \"{}\") on {}; jobs there: {}",
                    args.topic,
                    args.topic,
                    args.to,
                    if jobs.is_empty() {
                        "none".into()
                    } else {
                        jobs.join(", ")
                    }
                ))
            })?;
        for line in input.lines() {
            let line = line.map_err(CliError::Output)?;
            let record = parse_line(&line, args.key.as_deref());
            let request = Request::Job(JobRequest {
                job: &job,
                timeout_ms: 0,
                record: WireRecord {
                    timestamp_ms: None,
                    key: record.key.as_deref(),
                    value: &record.value,
                    headers: Vec::new(),
                    raw: &[],
                },
            });
            let id = sender.client.send(&request)?;
            sender.pending.push_back((id, 1));
            sender.drain(&mut out, WINDOW)?;
        }
    } else {
        let mut batch: Vec<OwnedWireRecord> = Vec::new();
        let mut bytes = 0;
        for line in input.lines() {
            let line = line.map_err(CliError::Output)?;
            let record = parse_line(&line, args.key.as_deref());
            bytes += record.value.len() + record.key.as_ref().map_or(0, Vec::len) + 16;
            batch.push(record);
            if batch.len() >= BATCH_RECORDS || bytes >= max_bytes {
                sender.produce(&args.topic, &mut batch)?;
                bytes = 0;
                sender.drain(&mut out, WINDOW)?;
            }
        }
        if !batch.is_empty() {
            sender.produce(&args.topic, &mut batch)?;
        }
    }
    sender.drain(&mut out, 0)?;
    out.flush().map_err(CliError::Output)?;
    if sender.failures > 0 {
        eprintln!(
            "flowd send: {} records were not acknowledged (see above)",
            sender.failures
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--key K`: the line is the value. Else `KEY<TAB>VALUE` sets the key; else no key.
fn parse_line(line: &str, key: Option<&str>) -> OwnedWireRecord {
    match (key, line.split_once('\t')) {
        (Some(k), _) => OwnedWireRecord {
            key: Some(k.as_bytes().to_vec()),
            ..OwnedWireRecord::value(line)
        },
        (None, Some((k, v))) => OwnedWireRecord {
            key: Some(k.as_bytes().to_vec()),
            ..OwnedWireRecord::value(v)
        },
        (None, None) => OwnedWireRecord::value(line),
    }
}

struct Sender {
    client: Client,
    /// Request ids in input order, with how many records each carries.
    pending: VecDeque<(u64, usize)>,
    /// Responses that came before the ones ahead of them.
    done: HashMap<u64, Response>,
    failures: usize,
}

impl Sender {
    fn produce(&mut self, topic: &str, batch: &mut Vec<OwnedWireRecord>) -> Result<(), ClientError> {
        let id = self.client.send_produce(topic, None, batch)?;
        self.pending.push_back((id, batch.len()));
        batch.clear();
        Ok(())
    }

    /// Prints answers in input order until at most `keep` requests are in flight.
    fn drain(&mut self, out: &mut impl Write, keep: usize) -> Result<(), CliError> {
        while self.pending.len() > keep {
            let (id, count) = *self.pending.front().expect("not empty");
            let response = match self.done.remove(&id) {
                Some(r) => r,
                None => {
                    let (got, response) = self.client.recv()?;
                    if got != id {
                        self.done.insert(got, response);
                        continue;
                    }
                    response
                }
            };
            self.pending.pop_front();
            match server_error(response) {
                Ok(Response::Answer(answer)) => {
                    out.write_all(&answer.value).map_err(CliError::Output)?;
                    out.write_all(b"\n").map_err(CliError::Output)?;
                }
                Ok(produced) => {
                    for (p, o) in offsets(produced)? {
                        writeln!(out, "{p}:{o}").map_err(CliError::Output)?;
                    }
                }
                Err(ClientError::Server { code, message }) => {
                    self.failures += count;
                    out.flush().map_err(CliError::Output)?;
                    eprintln!("flowd send: {count} records refused ({}): {message}", code.name());
                }
                Err(other) => return Err(other.into()),
            }
        }
        Ok(())
    }
}
