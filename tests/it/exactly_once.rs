//! Exactly-once stages under SIGKILL: a stage copies numbered records from topic `a` to
//! topic `b` while the engine is killed, each time once the stage is seen with part of
//! the round's input read and more to read (the test fails if a kill never lands so),
//! and restarted; at the end `b` holds each number of `a` exactly once, and `a` every
//! number acked. With `guarantee = "at_least_once"` nothing is lost (and the duplicates
//! the replays make show the kills landed mid-copy). More rounds: `FLOWD_EO_CRASH_ROUNDS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowd::client::Client;
use flowd::protocol::{FetchFrom, OwnedWireRecord};

use crate::ingest::Server;
use crate::support::fast_tempdir;

fn dataflow(dir: &Path, guarantee: &str) -> PathBuf {
    let text = format!(
        r#"
[engine]
data_dir = "{data}"
durability = "group"
cores = 2
commit_interval = "20ms"

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"

[[topic]]
name = "a"
partitions = 2

[[topic]]
name = "b"
partitions = 3

[[stage]]
name = "copy"
from = "a"
op = {{ map = "." }}
to = "b"
guarantee = "{guarantee}"
"#,
        data = dir.join("data").display()
    );
    let path = dir.join("copy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// How many times each number is in `topic` (every partition).
fn counts(client: &mut Client, topic: &str, partitions: u32) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for p in 0..partitions {
        let mut next = 0;
        loop {
            let fetched = client
                .fetch(topic, p, FetchFrom::Offset(next), 10_000, 0)
                .unwrap();
            let Some((last, _)) = fetched.records.last() else {
                break;
            };
            next = last + 1;
            for (_, record) in &fetched.records {
                let n: u64 = String::from_utf8_lossy(&record.value).parse().expect("a number");
                *seen.entry(n).or_default() += 1;
            }
        }
    }
    seen
}

/// Produces the numbers from `first` on into `a`, 100 per request, until `stop` or
/// `limit` of them; returns the ones acked (the last request may be cut off by a kill:
/// its numbers may or may not be in `a`).
fn produce(addr: String, first: u64, limit: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut client = Client::connect(&addr).unwrap();
        let mut acked = Vec::new();
        for chunk in (first..first + limit).step_by(100) {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let numbers: Vec<u64> = (chunk..chunk + 100).collect();
            let records: Vec<OwnedWireRecord> = numbers
                .iter()
                .map(|n| OwnedWireRecord::value(n.to_string()))
                .collect();
            match client.produce("a", &records) {
                Ok(_) => acked.extend(numbers),
                Err(_) => break,
            }
        }
        acked
    })
}

/// Where the stage `copy` stands in `a`: the sum of its positions, and of its lags
/// (records of `a` it has not read yet).
fn stage_progress(client: &mut Client) -> (u64, u64) {
    let status = client.status().unwrap();
    let a = status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "a")
        .unwrap();
    let mut position = 0;
    let mut lag = 0;
    for partition in a["partitions"].as_array().unwrap() {
        // Before the stage task runs, it has no reader yet.
        let Some(reader) = partition["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "copy")
        else {
            return (0, 0);
        };
        position += reader["position"].as_u64().unwrap();
        lag += reader["lag"].as_u64().unwrap();
    }
    (position, lag)
}

/// Each round produces numbers while watching the stage, and SIGKILLs the engine once the
/// stage is seen in the middle of the round's work: it read some of the round's input
/// and has more to read. Returns the numbers acked, and how often each number is in
/// `a` and in `b` once the restarted stage caught up.
fn copy_under_kills(guarantee: &str) -> (Vec<u64>, BTreeMap<u64, u32>, BTreeMap<u64, u32>) {
    let rounds: u64 = std::env::var("FLOWD_EO_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let per_round = 30_000;
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), guarantee);
    let mut acked = Vec::new();
    let mut next = 0;
    for round in 0..rounds {
        let mut server = Server::start(&file);
        let mut observer = Client::connect(&server.tcp).unwrap();
        // Where the stage stands once it runs (bounded).
        let started = Instant::now();
        let before = loop {
            let (position, lag) = stage_progress(&mut observer);
            if position > 0 || lag > 0 || started.elapsed() > Duration::from_secs(10) || round == 0 {
                break position;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stop = Arc::new(AtomicBool::new(false));
        let producer = produce(server.tcp.clone(), next, per_round, Arc::clone(&stop));
        let deadline = Instant::now() + Duration::from_secs(30);
        let landed = loop {
            let (position, lag) = stage_progress(&mut observer);
            if position > before && lag > 0 {
                server.kill9();
                break true;
            }
            if producer.is_finished() || Instant::now() > deadline {
                break false;
            }
        };
        stop.store(true, Ordering::Release);
        let round_acked = producer.join().unwrap();
        server.kill9();
        assert!(
            landed,
            "round {round}: the kill never landed while the stage had work"
        );
        next += per_round;
        acked.extend(round_acked);
    }
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    let input = counts(&mut client, "a", 2);
    let total: u32 = input.values().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copied = client.length("b", None).unwrap();
        if copied >= u64::from(total) || Instant::now() > deadline {
            return (acked, input, counts(&mut client, "b", 3));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exactly_once_stage_survives_sigkill() {
    let (acked, input, output) = copy_under_kills("exactly_once");
    let lost: Vec<_> = acked.iter().filter(|n| !input.contains_key(n)).take(5).collect();
    assert!(lost.is_empty(), "acked inputs lost: {lost:?}");
    assert!(input.values().all(|c| *c == 1), "an input twice in `a`");
    let twice: Vec<_> = output.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "numbers copied more than once: {twice:?}");
    let missing: Vec<_> = input.keys().filter(|n| !output.contains_key(n)).take(5).collect();
    assert!(missing.is_empty(), "inputs never copied: {missing:?}");
    assert_eq!(output, input, "each input copied exactly once, and nothing else");
}

#[test]
fn at_least_once_stage_loses_nothing_under_sigkill() {
    let (acked, input, output) = copy_under_kills("at_least_once");
    let lost: Vec<_> = acked.iter().filter(|n| !input.contains_key(n)).take(5).collect();
    assert!(lost.is_empty(), "acked inputs lost: {lost:?}");
    let missing: Vec<_> = input.keys().filter(|n| !output.contains_key(n)).take(5).collect();
    assert!(missing.is_empty(), "inputs never copied: {missing:?}");
    let duplicates: u32 = output.values().map(|c| c - 1).sum();
    eprintln!("at-least-once: {duplicates} duplicates of {}", input.len());
}
