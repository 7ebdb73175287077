//! Routes across peers: a `broadcast` stage writes each input to every partition of its
//! output and a `shard_by` stage each input to the partition of its key, whichever peers
//! lead them, each once, across a SIGKILL of the peer leading most of the input.

use std::collections::BTreeMap;
use std::time::Duration;

use flowd::client::Client;
use flowd::protocol::routing::partition_of_bytes;

use crate::cluster::{one_at_a_time, served_by, start_file, tail, wait_all_alive, wait_settled};
use crate::ingest::Server;

const PARTITIONS: u32 = 4;

/// The dataflow: `in` copied to every partition of `all` and, by key, to `bykey`.
fn dataflow(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("routes.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n[cluster]\nreplicas = 3\n\n\
             [[topic]]\nname = \"in\"\npartitions = {PARTITIONS}\n\n\
             [[topic]]\nname = \"all\"\npartitions = {PARTITIONS}\n\n\
             [[topic]]\nname = \"bykey\"\npartitions = {PARTITIONS}\n\n\
             [[stage]]\nname = \"fan\"\nfrom = \"in\"\nop = {{ filter = \"true\" }}\nto = \"all\"\nroute = \"broadcast\"\n\n\
             [[stage]]\nname = \"keyed\"\nfrom = \"in\"\nop = {{ filter = \"true\" }}\nto = \"bykey\"\nroute = {{ shard_by = \"key\" }}\n"
        ),
    )
    .unwrap();
    file
}

/// A peer of `file` at `at`, seeded with `seed`.
fn peer_file(
    file: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    at: &str,
    seed: Option<&str>,
) -> Server {
    let mut extra = vec!["--peer-listen", at];
    if let Some(seed) = seed {
        extra.extend(["--seeds", seed]);
    }
    start_file(file, dir, name, &extra)
}

/// Record `i`: key `k{i % 37}`, value `{i}` (JSON: the stages filter with jq).
fn record(i: usize) -> flowd::protocol::OwnedWireRecord {
    flowd::protocol::OwnedWireRecord {
        timestamp_ms: None,
        key: Some(format!("k{}", i % 37).into_bytes()),
        value: format!("{i}").into_bytes(),
        headers: Vec::new(),
    }
}

/// Sends records `range`, 20 to a request, through `servers` in turn: the values acked
/// and those whose request failed (they may or may not be written).
fn send(servers: &[&Server], range: std::ops::Range<usize>) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut open) = (Vec::new(), Vec::new());
    let starts: Vec<usize> = range.clone().step_by(20).collect();
    for (n, start) in starts.into_iter().enumerate() {
        let batch: Vec<usize> = (start..(start + 20).min(range.end)).collect();
        let values = batch.iter().map(|i| format!("{i}"));
        let records: Vec<_> = batch.iter().map(|i| record(*i)).collect();
        let server = servers[n % servers.len()];
        let sent = Client::connect(&server.tcp).and_then(|mut c| c.produce("in", &records));
        match sent {
            Ok(_) => acked.extend(values),
            Err(_) => open.extend(values),
        }
    }
    (acked, open)
}

#[test]
fn broadcast_and_shard_by_write_each_input_once_across_peers_and_a_sigkill() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dataflow(dir.path());
    let first = peer_file(&file, dir.path(), "p1", "127.0.0.1:0", None);
    let seed = first.peer.clone().unwrap();
    let mut servers = vec![
        first,
        peer_file(&file, dir.path(), "p2", "127.0.0.1:0", Some(&seed)),
        peer_file(&file, dir.path(), "p3", "127.0.0.1:0", Some(&seed)),
    ];
    wait_all_alive(&servers.iter().collect::<Vec<_>>());
    wait_settled(&servers.iter().collect::<Vec<_>>(), PARTITIONS as usize);
    let total = 3000;
    let (mut acked, mut open) = send(&servers.iter().collect::<Vec<_>>(), 0..total / 2);
    // The peer leading most of the input, SIGKILLed while its stages still write.
    let victim = (0..3)
        .max_by_key(|&i| served_by(&servers[i], "in").len())
        .unwrap();
    assert!(!served_by(&servers[victim], "in").is_empty());
    let at = servers[victim].peer.clone().unwrap();
    servers[victim].kill9();
    let rest: Vec<&Server> = (0..3).filter(|i| *i != victim).map(|i| &servers[i]).collect();
    let (more, unsure) = send(&rest, total / 2..total);
    acked.extend(more);
    open.extend(unsure);
    let seed = rest[0].peer.clone().unwrap();
    servers[victim] = peer_file(&file, dir.path(), &format!("p{}", victim + 1), &at, Some(&seed));
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, PARTITIONS as usize);

    // Every input read once the stages' outputs stop growing and hold every acked value.
    let read = |server: &Server| {
        let mut copies: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (p, _, value) in tail(server, "all") {
            copies.entry(value).or_default().push(p);
        }
        let mut keyed: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for (p, key, value) in tail(server, "bykey") {
            keyed.entry(value).or_default().push((p, key));
        }
        (copies, keyed)
    };
    let every: Vec<u64> = (0..u64::from(PARTITIONS)).collect();
    for server in &servers {
        let mut seen = (BTreeMap::new(), BTreeMap::new());
        let whole = crate::support::poll(Duration::from_secs(60), Duration::from_millis(50), || {
            seen = read(server);
            acked
                .iter()
                .all(|v| seen.0.get(v).is_some_and(|c| c.len() >= every.len()) && seen.1.contains_key(v))
                .then_some(())
        });
        if whole.is_none() {
            let short: Vec<(&String, Option<&Vec<u64>>)> = acked
                .iter()
                .filter(|v| seen.0.get(*v).is_none_or(|c| c.len() < every.len()))
                .map(|v| (v, seen.0.get(v)))
                .collect();
            let unsharded: Vec<&String> = acked.iter().filter(|v| !seen.1.contains_key(*v)).collect();
            panic!(
                "through {}, within 60s: {} acked inputs not in every partition of all (the first {:?}), {} not in bykey (the first {:?}); {} acked, {} unsure",
                server.tcp,
                short.len(),
                &short[..short.len().min(5)],
                unsharded.len(),
                &unsharded[..unsharded.len().min(5)],
                acked.len(),
                open.len()
            );
        }
        let (copies, keyed) = seen;
        for (value, partitions) in &copies {
            let mut sorted = partitions.clone();
            sorted.sort_unstable();
            assert!(
                sorted == every || (sorted.len() < every.len() && open.contains(value)),
                "{value} broadcast to partitions {partitions:?} (each of {every:?} once, read through {})",
                server.tcp
            );
        }
        for (value, copies) in &keyed {
            assert_eq!(copies.len(), 1, "{value} sharded more than once: {copies:?}");
            let (partition, key) = &copies[0];
            assert_eq!(
                u64::from(partition_of_bytes(key.as_bytes(), PARTITIONS)),
                *partition,
                "{value} (key {key}) in the partition of its key"
            );
        }
        let broadcast: Vec<&String> = copies.keys().collect();
        let sharded: Vec<&String> = keyed.keys().collect();
        assert_eq!(broadcast, sharded, "the same inputs read by both stages");
        let stray: Vec<&String> = copies
            .keys()
            .filter(|v| !acked.contains(v) && !open.contains(v))
            .collect();
        assert!(stray.is_empty(), "values never sent: {stray:?}");
    }
    eprintln!(
        "broadcast and shard_by on three peers, one SIGKILLed: {} inputs acked, {} unsure",
        acked.len(),
        open.len()
    );
}
