//! A file source in a cluster runs on the peer leading partition 0 of its topic and
//! moves with that lead (`runtime/source.rs`): while lines are appended to a followed
//! file, the peer reading it is SIGKILLed; another peer reads on, and the killed one
//! comes back. Every line is in the topic exactly once, read through every peer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{one_at_a_time, served_by, start_file, wait_all_alive, wait_settled};
use crate::ingest::Server;
use crate::replication::tail_when_led;
use crate::support::{pace, wait_until};

const BATCHES: usize = 60;
const LINES_PER_BATCH: usize = 250;

/// The engine, a TCP listener and a topic "lines" of 4 partitions with three replicas.
pub(crate) const LINES_ON_THREE: &str = "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n\
     [cluster]\nreplicas = 3\n\n[[topic]]\nname = \"lines\"\npartitions = 4\nsegment_bytes = \"1MiB\"\n\n";

/// Three replicas of a 4-partition topic fed by a followed file at `input`.
fn source_dataflow(dir: &Path, input: &Path) -> PathBuf {
    let file = dir.join("source-cluster.toml");
    std::fs::write(
        &file,
        format!(
            "{LINES_ON_THREE}[[source]]\nname = \"feed\"\ntype = \"file\"\npath = \"{}\"\nfollow = true\nto = \"lines\"\n",
            input.display()
        ),
    )
    .unwrap();
    file
}

fn line(i: usize) -> String {
    format!("line-{i:06}-{}", "x".repeat(40))
}

/// Appends lines `from..to` to `input`.
fn append(input: &Path, from: usize, to: usize) {
    let mut file = std::fs::OpenOptions::new().append(true).open(input).unwrap();
    let text: String = (from..to).map(|i| line(i) + "\n").collect();
    file.write_all(text.as_bytes()).unwrap();
}

/// How many times each value of the topic reads through `server`.
fn counts(server: &Server) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, value) in tail_when_led(server, "lines") {
        *counts.entry(value).or_default() += 1;
    }
    counts
}

/// Whether lines `0..upto` all read through `server`.
fn holds_up_to(server: &Server, upto: usize) -> bool {
    let counts = counts(server);
    (0..upto).all(|i| counts.contains_key(&line(i)))
}

/// The index of the peer leading partition 0 of "lines" (where a source reads and a
/// sink writes).
pub(crate) fn leader_of_partition_0(servers: &[Server]) -> usize {
    let mut found = None;
    wait_until("one peer leads partition 0", Duration::from_secs(30), || {
        found = (0..servers.len()).find(|&i| served_by(&servers[i], "lines").contains(&0));
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn a_file_source_moves_with_its_topics_lead_and_writes_each_line_once_across_a_sigkill() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "").unwrap();
    let file = source_dataflow(dir.path(), &input);
    let start = |name: &str, at: &str, seed: Option<&str>| {
        let mut extra = vec!["--peer-listen", at];
        if let Some(seed) = seed {
            extra.extend(["--seeds", seed]);
        }
        start_file(&file, dir.path(), name, &extra)
    };
    let first = start("p1", "127.0.0.1:0", None);
    let seed = first.peer.clone().unwrap();
    let mut servers = vec![
        first,
        start("p2", "127.0.0.1:0", Some(&seed)),
        start("p3", "127.0.0.1:0", Some(&seed)),
    ];
    {
        let all: Vec<&Server> = servers.iter().collect();
        wait_all_alive(&all);
        wait_settled(&all, 4);
    }

    let names = ["p1", "p2", "p3"];
    let mut killed: Option<(usize, String)> = None;
    for batch in 0..BATCHES {
        append(&input, batch * LINES_PER_BATCH, (batch + 1) * LINES_PER_BATCH);
        if batch == BATCHES / 3 {
            // The peer reading the file dies while lines keep coming.
            let victim = leader_of_partition_0(&servers);
            let survivor = (victim + 1) % 3;
            wait_until(
                "the first lines are in the topic",
                Duration::from_secs(30),
                || holds_up_to(&servers[survivor], LINES_PER_BATCH),
            );
            let at = servers[victim].peer.clone().unwrap();
            servers[victim].kill9();
            killed = Some((victim, at));
        }
        if batch == 2 * BATCHES / 3 {
            // Another peer read on: the lines appended since the kill are there before
            // the killed peer is back.
            let (victim, at) = killed.clone().unwrap();
            let survivor = (victim + 1) % 3;
            wait_until(
                "the lines appended after the kill, read by another peer",
                Duration::from_secs(60),
                || holds_up_to(&servers[survivor], (batch + 1) * LINES_PER_BATCH),
            );
            let other = servers[survivor].peer.clone().unwrap();
            servers[victim] = start(names[victim], &at, Some(&other));
        }
        pace(Duration::from_millis(30));
    }

    let total = BATCHES * LINES_PER_BATCH;
    for server in &servers {
        wait_until(
            "every line reads through every peer",
            Duration::from_secs(90),
            || holds_up_to(server, total),
        );
        let counts = counts(server);
        let twice: Vec<&String> = counts.iter().filter(|(_, n)| **n > 1).map(|(v, _)| v).collect();
        assert!(
            twice.is_empty(),
            "{} lines written more than once, the first {:?}",
            twice.len(),
            twice.first()
        );
        assert_eq!(counts.len(), total, "exactly the lines appended, each once");
    }

    // Only the new lead's first batches per partition carry their own points (until one
    // is acked there, fencing the old lead's): those hold every line appended while no
    // peer read, but not the lines appended after.
    let mut client = flowd::client::Client::connect(&servers[0].tcp).unwrap();
    let mut pointed = 0;
    for p in 0..4 {
        let mut from = 0;
        let mut last_pointed = false;
        for _ in 0..100 {
            let fetched = client
                .fetch("lines", p, flowd::protocol::FetchFrom::Offset(from), 10_000, 0)
                .unwrap();
            for (offset, record) in &fetched.records {
                last_pointed = record.headers.iter().any(|(name, _)| name == "flowd-re");
                pointed += usize::from(last_pointed);
                from = offset + 1;
            }
            if fetched.records.is_empty() || from >= fetched.next_offset {
                break;
            }
        }
        assert!(
            !last_pointed,
            "the last line of partition {p} carries its own point"
        );
    }
    assert!(
        pointed < total,
        "{pointed} of {total} lines carry their own point: marking goes on after the takeover's first batches"
    );
    eprintln!("{pointed} of {total} lines carry their own point");
}
