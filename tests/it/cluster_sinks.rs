//! File sinks in a cluster (`runtime/sink.rs`), and sources and sinks on every peer
//! (`per_peer = true`).
//!
//! - A sink runs on the peer leading partition 0 of its topic and moves with that lead.
//!   Here all three peers write one path (a path they share, as on a shared disk): the
//!   writer is SIGKILLed while records keep coming, the next leader finds a file its own
//!   progress does not account for, renames it aside and writes the topic again. The
//!   file then holds every acked record exactly once.
//! - With `per_peer = true` every peer reads its own input file into the topic and
//!   writes every record of the topic to its own output file. One peer is SIGKILLed and
//!   comes back while lines are appended to every input, then another whose output is
//!   changed while it is down: every line is in the topic once, and every peer's output
//!   holds every line once. The first restarted peer goes on with its own file (checked
//!   against the CRC its progress stored); the second sets its changed file aside.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{one_at_a_time, start_file, wait_all_alive, wait_settled};
use crate::cluster_sources::{LINES_ON_THREE, leader_of_partition_0};
use crate::ingest::Server;
use crate::replication::{record, tail_when_led};
use crate::support::{pace, wait_until};

const PEERS: [&str; 3] = ["p1", "p2", "p3"];

/// Starts three peers, `files[i]` the dataflow of peer `i`, all alive and settled.
fn three(dir: &Path, files: &[PathBuf; 3]) -> Vec<Server> {
    let first = start_file(&files[0], dir, PEERS[0], &["--peer-listen", "127.0.0.1:0"]);
    let seed = first.peer.clone().unwrap();
    let mut servers = vec![first];
    for i in 1..3 {
        let extra = ["--peer-listen", "127.0.0.1:0", "--seeds", &seed];
        servers.push(start_file(&files[i], dir, PEERS[i], &extra));
    }
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, 4);
    servers
}

/// Restarts peer `i` on its old peer address, seeded by another.
fn restart(dir: &Path, files: &[PathBuf; 3], servers: &mut [Server], i: usize, at: &str) {
    let seed = servers[(i + 1) % 3].peer.clone().unwrap();
    servers[i] = start_file(&files[i], dir, PEERS[i], &["--peer-listen", at, "--seeds", &seed]);
}

/// How many times each line of `path` is there (none if it does not exist yet).
fn lines_of(path: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    counts
}

/// Waits until `path` holds every one of `expected`, each once; fails at once on a line
/// there twice, or one neither expected nor in `maybe`.
fn file_becomes(path: &Path, expected: &[String], maybe: &[String], limit: Duration) {
    let known: std::collections::HashSet<&str> = expected.iter().chain(maybe).map(String::as_str).collect();
    let mut missing = Vec::new();
    wait_until(&format!("{} holds every record", path.display()), limit, || {
        let counts = lines_of(path);
        if let Some((line, n)) = counts.iter().find(|(_, n)| **n > 1) {
            panic!("{} holds {line:?} {n} times", path.display());
        }
        if let Some(line) = counts.keys().find(|l| !known.contains(l.as_str())) {
            panic!("{} holds {line:?}, never written", path.display());
        }
        missing = expected
            .iter()
            .filter(|l| !counts.contains_key(*l))
            .cloned()
            .collect();
        missing.is_empty()
    });
    assert!(
        missing.is_empty(),
        "{} missing, the first {:?}",
        missing.len(),
        missing.first()
    );
}

/// Files set aside next to `path`.
fn set_aside(path: &Path) -> Vec<String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{name}.set-aside-")))
        .collect()
}

/// What a producer sent: the values acked, and those of batches refused, which may or
/// may not be written (never sent again: values stay unique).
#[derive(Default)]
struct Sent {
    acked: Vec<String>,
    maybe: Vec<String>,
}

/// Produces records `from..to` (`rec-NNNNNN`) in batches of 100 through the peers
/// `alive` of `servers` in turn, a refused batch's values noted as maybe written.
fn produce(sent: &mut Sent, servers: &[Server], alive: &[usize], from: usize, to: usize) {
    for (turn, at) in (from..to).step_by(100).enumerate() {
        let values: Vec<String> = (at..(at + 100).min(to)).map(|i| format!("rec-{i:06}")).collect();
        let records: Vec<_> = values.iter().map(|v| record(v)).collect();
        let via = &servers[alive[turn % alive.len()]];
        match flowd::client::Client::connect(&via.tcp).and_then(|mut c| c.produce("lines", &records)) {
            Ok(_) => sent.acked.extend(values),
            Err(_) => {
                sent.maybe.extend(values);
                pace(Duration::from_millis(50));
            }
        }
    }
    assert!(
        sent.acked.len() > sent.maybe.len() * 10,
        "most batches are acked ({} acked, {} refused)",
        sent.acked.len(),
        sent.maybe.len()
    );
}

fn sink_dataflow(dir: &Path, out: &Path) -> PathBuf {
    let file = dir.join("sink-cluster.toml");
    std::fs::write(
        &file,
        format!(
            "{LINES_ON_THREE}[[sink]]\nname = \"out\"\nfrom = \"lines\"\ntype = \"file\"\npath = \"{}\"\n",
            out.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_file_sink_moves_with_its_topics_lead_and_its_file_holds_each_acked_record_once_across_a_sigkill() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let file = sink_dataflow(dir.path(), &out);
    let files = [file.clone(), file.clone(), file];
    let mut servers = three(dir.path(), &files);

    let mut sent = Sent::default();
    produce(&mut sent, &servers, &[0, 1, 2], 0, 3_000);
    file_becomes(&out, &sent.acked, &sent.maybe, Duration::from_secs(60));

    // The peer writing the file dies; records keep coming through the others.
    let victim = leader_of_partition_0(&servers);
    let at = servers[victim].peer.clone().unwrap();
    servers[victim].kill9();
    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    produce(&mut sent, &servers, &others, 3_000, 6_000);
    // Another peer writes on: what came after the kill is in the file.
    file_becomes(&out, &sent.acked, &sent.maybe, Duration::from_secs(90));
    assert!(
        !set_aside(&out).is_empty(),
        "the peer taking the sink on set the file it did not write aside"
    );

    restart(dir.path(), &files, &mut servers, victim, &at);
    produce(&mut sent, &servers, &[0, 1, 2], 6_000, 9_000);
    file_becomes(&out, &sent.acked, &sent.maybe, Duration::from_secs(90));
    // What the file holds is what the topic holds, through every peer.
    let in_file = lines_of(&out);
    for server in &servers {
        let mut in_topic: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, value) in tail_when_led(server, "lines") {
            *in_topic.entry(value).or_default() += 1;
        }
        assert_eq!(
            in_topic, in_file,
            "the file holds the topic through {}",
            server.tcp
        );
    }
}

/// Peer `name`'s dataflow: reads `in-NAME.txt` into "lines" and writes "lines" to
/// `out-NAME.txt`, both on every peer.
fn per_peer_dataflow(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("per-peer-{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "{LINES_ON_THREE}[[source]]\nname = \"feed\"\ntype = \"file\"\npath = \"{}\"\nfollow = true\nto = \"lines\"\nper_peer = true\n\n\
             [[sink]]\nname = \"out\"\nfrom = \"lines\"\ntype = \"file\"\npath = \"{}\"\nper_peer = true\n",
            input(dir, name).display(),
            output(dir, name).display()
        ),
    )
    .unwrap();
    file
}

fn input(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("in-{name}.txt"))
}

fn output(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("out-{name}.txt"))
}

fn peer_line(name: &str, i: usize) -> String {
    format!("{name}-line-{i:06}")
}

#[test]
fn sources_and_sinks_on_every_peer_read_and_write_each_line_once_across_a_sigkill() {
    const ROUNDS: usize = 30;
    const LINES: usize = 100;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    for name in PEERS {
        std::fs::write(input(dir.path(), name), "").unwrap();
    }
    let files = PEERS.map(|name| per_peer_dataflow(dir.path(), name));
    let mut servers = three(dir.path(), &files);
    let append = |round: usize| {
        for name in PEERS {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(input(dir.path(), name))
                .unwrap();
            let text: String = (round * LINES..(round + 1) * LINES)
                .map(|i| peer_line(name, i) + "\n")
                .collect();
            f.write_all(text.as_bytes()).unwrap();
        }
    };
    let written = |rounds: usize| -> Vec<String> {
        PEERS
            .iter()
            .flat_map(|name| (0..rounds * LINES).map(move |i| peer_line(name, i)))
            .collect()
    };

    // Killed once it stored its progress: a file written before any is stored is one a
    // peer cannot tell from another's, and is set aside.
    let stored_some = |i: usize| {
        let stored = dir.path().join(PEERS[i]).join("progress/out/sink.json");
        wait_until(
            "the peer stores its sink's progress",
            Duration::from_secs(30),
            || {
                std::fs::read(&stored)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|p| p["file_len"].as_u64() > Some(0))
            },
        );
    };
    let addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    for round in 0..ROUNDS {
        append(round);
        if round == 8 {
            // p2 dies once every peer read its own file and wrote every line so far; the
            // others go on writing each other's lines, and p2's stop at the kill.
            for name in PEERS {
                file_becomes(
                    &output(dir.path(), name),
                    &written(round + 1),
                    &[],
                    Duration::from_secs(60),
                );
            }
            stored_some(1);
            servers[1].kill9();
        }
        if round == 14 {
            restart(dir.path(), &files, &mut servers, 1, &addrs[1]);
            let all: Vec<&Server> = servers.iter().collect();
            wait_all_alive(&all);
        }
        if round == 16 {
            // p3 dies, and its output is changed while it is down (a line's first byte):
            // back, it finds a file its progress does not describe.
            stored_some(2);
            servers[2].kill9();
            let path = output(dir.path(), "p3");
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] = b'X';
            std::fs::write(&path, bytes).unwrap();
        }
        if round == 22 {
            restart(dir.path(), &files, &mut servers, 2, &addrs[2]);
        }
        pace(Duration::from_millis(100));
    }

    let all = written(ROUNDS);
    for name in PEERS {
        file_becomes(&output(dir.path(), name), &all, &[], Duration::from_secs(90));
    }
    // p2 went on with its own file (checked against its progress); p3's changed one was
    // set aside and written again.
    assert!(set_aside(&output(dir.path(), "p1")).is_empty());
    assert!(
        set_aside(&output(dir.path(), "p2")).is_empty(),
        "p2 goes on with its own file"
    );
    assert_eq!(
        set_aside(&output(dir.path(), "p3")).len(),
        1,
        "p3's changed file is set aside"
    );
    for server in &servers {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, value) in tail_when_led(server, "lines") {
            *counts.entry(value).or_default() += 1;
        }
        let twice = counts.iter().filter(|(_, n)| **n > 1).count();
        assert_eq!(twice, 0, "lines in the topic more than once");
        assert_eq!(
            counts.len(),
            all.len(),
            "every line of every peer's file is in the topic"
        );
    }
}
