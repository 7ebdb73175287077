//! Exactly-once stages under SIGKILL: a stage copies numbered records from topic `a` to
//! topic `b` while the engine is killed at random moments and restarted; at the end `b`
//! holds each number exactly once. With `guarantee = "at_least_once"` nothing is lost.
//! More rounds: `FLOWD_EO_CRASH_ROUNDS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// How many times each number is in `b`.
fn counts(client: &mut Client) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for p in 0..3 {
        let mut next = 0;
        loop {
            let fetched = client.fetch("b", p, FetchFrom::Offset(next), 10_000, 0).unwrap();
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

fn copy_under_kills(guarantee: &str) -> (u64, BTreeMap<u64, u32>) {
    let rounds: u64 = std::env::var("FLOWD_EO_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let per_round = 3000;
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), guarantee);
    let mut rng = fastrand::Rng::with_seed(rounds * 7919);
    for round in 0..rounds {
        let mut server = Server::start(&file);
        let mut client = Client::connect(&server.tcp).unwrap();
        for chunk in 0..(per_round / 500) {
            let first = round * per_round + chunk * 500;
            let records: Vec<OwnedWireRecord> = (first..first + 500)
                .map(|n| OwnedWireRecord::value(n.to_string()))
                .collect();
            client.produce("a", &records).unwrap();
        }
        // Kill while the stage copies, at a different moment each round.
        std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
        server.kill9();
    }
    let total = rounds * per_round;
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = counts(&mut client);
        if seen.len() as u64 == total || Instant::now() > deadline {
            // Let anything still in flight land, then look once more.
            std::thread::sleep(Duration::from_millis(300));
            return (total, counts(&mut client));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exactly_once_stage_survives_sigkill() {
    let (total, seen) = copy_under_kills("exactly_once");
    let missing = (0..total).filter(|n| !seen.contains_key(n)).count();
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert_eq!(missing, 0, "numbers lost");
    assert!(twice.is_empty(), "numbers copied more than once: {twice:?}");
    assert_eq!(seen.len() as u64, total);
}

#[test]
fn at_least_once_stage_loses_nothing_under_sigkill() {
    let (total, seen) = copy_under_kills("at_least_once");
    let missing = (0..total).filter(|n| !seen.contains_key(n)).count();
    assert_eq!(missing, 0, "numbers lost");
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    eprintln!("at-least-once: {duplicates} duplicates of {total}");
}
