//! Peers as separate processes on loopback: they find each other through one seed, drop
//! a SIGKILLed peer and take it back when it restarts, and never merge with a peer of
//! another cluster id; records sent to any peer land in
//! their owner's partition and a tail through any peer returns all of them; a word
//! count on two peers counts what it counts on one. Each test runs replicated (the
//! default) and with one copy (`replicas = 1`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::ingest::{Server, run_cli};
use crate::support::{pace, wait_until};

/// One cluster test at a time: each runs several peers, and two at once on a 2-core
/// machine starve each other's gossip timers (a killed peer took 13 s to be dropped on
/// CI while the churn test ran beside it).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/wordcount-cluster.toml")
}

thread_local! {
    /// The copies the current test's peers keep of each partition: `None`, the default
    /// (replicated, up to three copies); `Some(1)`, replication off.
    static REPLICAS: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Runs the rest of the current test with replication off (`[cluster] replicas = 1`).
pub(crate) fn one_copy() {
    REPLICAS.with(|r| r.set(Some(1)));
}

/// Whether the current test's topics are replicated.
pub(crate) fn replicated() -> bool {
    REPLICAS.with(|r| r.get()) != Some(1)
}

/// A dataflow's text with the current test's replica count.
fn with_replicas(text: &str) -> String {
    match REPLICAS.with(|r| r.get()) {
        Some(n) => format!("{text}\n[cluster]\nreplicas = {n}\n"),
        None => text.to_string(),
    }
}

/// The example on free loopback ports, its data in `dir/name`, with `extra` flags.
pub(crate) fn start(dir: &Path, name: &str, extra: &[&str]) -> Server {
    let file = dir.join("wordcount-cluster.toml");
    std::fs::write(&file, with_replicas(&std::fs::read_to_string(example()).unwrap())).unwrap();
    start_file(&file, dir, name, extra)
}

/// `file` on free loopback ports, its data in `dir/name`, with `extra` flags.
pub(crate) fn start_file(file: &Path, dir: &Path, name: &str, extra: &[&str]) -> Server {
    start_file_env(file, dir, name, extra, &[])
}

/// As `start_file`, with `env` set for the engine (fail points).
pub(crate) fn start_file_env(
    file: &Path,
    dir: &Path,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let data = dir.join(name).display().to_string();
    let mut args = vec![
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Server::start_env(file, &args, env)
}

/// A peer of the example's cluster, its data in `dir/name`, listening for peers on `at`.
pub(crate) fn peer(dir: &Path, name: &str, at: &str, seed: Option<&str>) -> Server {
    let mut extra = vec!["--peer-listen", at];
    if let Some(seed) = seed {
        extra.extend(["--seeds", seed]);
    }
    start(dir, name, &extra)
}

pub(crate) fn status(server: &Server) -> Value {
    let (code, out, err) = run_cli(&["status", "--local", "--from", &server.tcp, "--json"], "");
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// `addr -> state` of every peer `server` lists.
fn peers_seen(server: &Server) -> BTreeMap<String, String> {
    status(server)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["addr"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub(crate) fn all_alive(server: &Server, addrs: &[&str]) -> bool {
    let seen = peers_seen(server);
    seen.len() == addrs.len()
        && addrs
            .iter()
            .all(|a| seen.get(*a).map(String::as_str) == Some("alive"))
}

/// Three peers, each given only the first as seed, all alive in every peer's list.
pub(crate) fn three_peers(dir: &Path) -> Vec<Server> {
    let first = peer(dir, "p1", "127.0.0.1:0", None);
    let seed = first.peer.clone().unwrap();
    let second = peer(dir, "p2", "127.0.0.1:0", Some(&seed));
    let third = peer(dir, "p3", "127.0.0.1:0", Some(&seed));
    let servers = vec![first, second, third];
    let addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for s in &servers {
        wait_until("every peer lists all three", Duration::from_secs(20), || {
            all_alive(s, &addrs)
        });
    }
    servers
}

fn peers_find_each_other_drop_a_killed_one_and_take_it_back() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_peers(dir.path());
    let seed = servers[0].peer.clone().unwrap();
    // A peer of another cluster, seeded with ours: refused at its HELLO, it never joins.
    let stranger = start(
        dir.path(),
        "other",
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--seeds",
            &seed,
            "--cluster-id",
            "other",
        ],
    );
    let gone = servers[2].peer.clone().unwrap();
    servers[2].kill9();
    for s in &servers[..2] {
        let took = wait_until("the killed peer is dropped", Duration::from_secs(20), || {
            peers_seen(s).get(&gone).is_none_or(|state| state == "down")
        });
        // README: a killed peer is down everywhere within `detection_bound` on an idle
        // network; this machine is shared, hence twice that.
        let bound = flowd::cluster::membership::detection_bound(3);
        assert!(took < bound * 2, "dropped after {took:?}; the bound is {bound:?}");
    }
    // The same address, a new run: back without anyone doing anything.
    servers[2] = peer(dir.path(), "p3", &gone, Some(&seed));
    let addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for s in &servers {
        wait_until("the restarted peer is back", Duration::from_secs(20), || {
            all_alive(s, &addrs)
        });
    }
    // All that gossip later, the stranger is still alone, and listed by no one.
    assert_eq!(peers_seen(&stranger).len(), 1, "only itself");
    let other = stranger.peer.clone().unwrap();
    for s in &servers {
        assert!(
            !peers_seen(s).contains_key(&other),
            "{other} joined another cluster"
        );
    }
}

/// `(partition, key, value)` of every record of `topic`, read through `server`.
pub(crate) fn tail(server: &Server, topic: &str) -> Vec<(u64, String, String)> {
    let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, topic, "--json"], "");
    assert_eq!(code, 0, "{err}");
    parse_tail(&out)
}

/// `(partition, key, value)` of each line `flowd tail --json` printed.
pub(crate) fn parse_tail(out: &str) -> Vec<(u64, String, String)> {
    out.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (
                v["partition"].as_u64().unwrap(),
                v["key"].as_str().unwrap_or_default().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn records_sent_to_any_peer_land_at_their_owner_and_tail_anywhere_returns_all() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_peers(dir.path());
    wait_settled(&servers.iter().collect::<Vec<_>>(), 4);
    let mut expected = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let lines: String = (0..300)
            .map(|n| {
                let key = format!("k{i}-{n}");
                let value = format!("v{i}-{n}");
                let partition = flowd::protocol::routing::partition_of_bytes(key.as_bytes(), 4);
                expected.push((u64::from(partition), key.clone(), value.clone()));
                format!("{key}\t{value}\n")
            })
            .collect();
        let (code, out, err) = run_cli(&["send", "--to", &server.tcp, "lines"], &lines);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 300);
    }
    expected.sort();
    for server in &servers {
        // A multiset: a record twice would show.
        let mut got = tail(server, "lines");
        got.sort();
        assert_eq!(got.len(), 900, "a record twice or missing through {}", server.tcp);
        assert_eq!(got, expected, "through {}", server.tcp);
    }
    // Each partition lives at exactly one peer (its owner), or at as many as it has
    // replicas, each holding all its records.
    let mut per_partition: HashMap<u64, u64> = HashMap::new();
    for (partition, _, _) in &expected {
        *per_partition.entry(*partition).or_default() += 1;
    }
    let copies = if replicated() { 3 } else { 1 };
    let mut held: HashMap<u64, Vec<u64>> = HashMap::new();
    wait_until(
        "every partition held whole by its owner or each of its replicas, by no other peer",
        Duration::from_secs(30),
        || {
            held.clear();
            for server in &servers {
                let status = status(server);
                let lines = status["topics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == "lines")
                    .unwrap();
                for p in lines["partitions"].as_array().unwrap() {
                    let next = p["next_offset"].as_u64().unwrap();
                    if next > 0 {
                        held.entry(p["partition"].as_u64().unwrap())
                            .or_default()
                            .push(next);
                    }
                }
            }
            held.len() == 4
                && per_partition
                    .iter()
                    .all(|(p, count)| held[p].len() == copies && held[p].iter().all(|n| n == count))
        },
    );
}

/// The last count of every word in `counts`, once they add up to `words`.
pub(crate) fn counts(server: &Server, words: u64) -> BTreeMap<String, u64> {
    let mut last = BTreeMap::new();
    wait_until("every word counted", Duration::from_secs(30), || {
        last = tail(server, "counts")
            .into_iter()
            .map(|(_, k, v)| (k, v.parse::<u64>().unwrap()))
            .collect();
        last.values().sum::<u64>() == words
    });
    last
}

/// `n` lines of one to seven fruit names (nine, and `more`), and how many words they hold.
pub(crate) fn fruit_lines(n: usize, more: &[&str]) -> (Vec<String>, u64) {
    let mut vocabulary = vec![
        "apple", "pear", "plum", "fig", "kiwi", "lime", "date", "yuzu", "sloe",
    ];
    vocabulary.extend_from_slice(more);
    let lines: Vec<String> = (0..n)
        .map(|i| {
            (0..1 + i % 7)
                .map(|j| vocabulary[(i * 7 + j * 3) % vocabulary.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let words = lines.iter().map(|l| l.split(' ').count() as u64).sum();
    (lines, words)
}

fn a_word_count_on_two_peers_counts_what_it_counts_on_one() {
    let _serial = one_at_a_time();
    let (lines, words) = fruit_lines(400, &[]);
    let dir = tempfile::tempdir().unwrap();

    let one = start(dir.path(), "one", &[]);
    let (code, _, err) = run_cli(&["send", "--to", &one.tcp, "lines"], &(lines.join("\n") + "\n"));
    assert_eq!(code, 0, "{err}");
    let alone = counts(&one, words);

    let first = peer(dir.path(), "a", "127.0.0.1:0", None);
    let second = peer(dir.path(), "b", "127.0.0.1:0", first.peer.as_deref());
    let addrs = [first.peer.clone().unwrap(), second.peer.clone().unwrap()];
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    for s in [&first, &second] {
        wait_until("both peers listed", Duration::from_secs(20), || {
            all_alive(s, &addrs)
        });
    }
    wait_settled(&[&first, &second], 4);
    let (front, back) = lines.split_at(lines.len() / 2);
    for (server, half) in [(&first, front), (&second, back)] {
        let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "lines"], &(half.join("\n") + "\n"));
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(counts(&first, words), alone);
    assert_eq!(counts(&second, words), alone);
}

/// A dataflow of one topic and nothing else, written into `dir`; small segments, so
/// that many peers fit on a disk and copies cross segments.
pub(crate) fn events_dataflow(dir: &Path) -> PathBuf {
    events_dataflow_of(dir, 8, "64KiB")
}

/// A dataflow of one topic `events` of `partitions` and `segment_bytes`, in `dir`.
fn events_dataflow_of(dir: &Path, partitions: u32, segment_bytes: &str) -> PathBuf {
    let file = dir.join(format!("events-{partitions}-{segment_bytes}.toml"));
    std::fs::write(
        &file,
        with_replicas(&format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n\
             [[topic]]\nname = \"events\"\npartitions = {partitions}\nsegment_bytes = \"{segment_bytes}\"\n",
        )),
    )
    .unwrap();
    file
}

pub(crate) fn events_peer(dir: &Path, name: &str, seed: Option<&str>) -> Server {
    events_peer_with(dir, name, seed, &[])
}

/// `events_peer` with `flags` besides.
pub(crate) fn events_peer_with(dir: &Path, name: &str, seed: Option<&str>, flags: &[&str]) -> Server {
    let mut extra = vec!["--peer-listen", "127.0.0.1:0"];
    if let Some(seed) = seed {
        extra.extend(["--seeds", seed]);
    }
    extra.extend(flags);
    start_file(&events_dataflow(dir), dir, name, &extra)
}

/// Three peers of the events dataflow, the first the others' seed.
pub(crate) fn three_events_peers(dir: &Path) -> [Server; 3] {
    let first = events_peer(dir, "p1", None);
    let seed = first.peer.clone().unwrap();
    let second = events_peer(dir, "p2", Some(&seed));
    let third = events_peer(dir, "p3", Some(&seed));
    [first, second, third]
}

/// Waits until each of the `partitions` of every topic is served by exactly one of
/// `servers` (none still being copied in, no replica set moving) and, with one copy,
/// each of them serves what its own view gives it (a peer whose view just changed still
/// serves what it is about to hand over, for up to one hand-over round): reads through
/// any of them then find them all.
pub(crate) fn wait_settled(servers: &[&Server], partitions: usize) {
    wait_until("every partition served", Duration::from_secs(30), || {
        let mut served: BTreeMap<(String, u64), usize> = BTreeMap::new();
        let mut topics: BTreeSet<String> = BTreeSet::new();
        for server in servers {
            let status = status(server);
            let own = status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["me"] == true)
                .map_or(0, |p| p["partitions"].as_u64().unwrap() as usize);
            let rows: Vec<&Value> = ["topics", "internal_topics"]
                .iter()
                .flat_map(|list| status[*list].as_array().into_iter().flatten())
                .flat_map(|t| t["partitions"].as_array().unwrap())
                .collect();
            let serves = rows.iter().filter(|p| p["standing"] == "serving").count();
            // With one copy (a partition moves by claims); a replicated one moves by
            // the metadata group's decision, whose leader may lag the replicas' own
            // election after a kill: `placed` below answers for it.
            let one_copy = rows.iter().all(|p| p["replica"].is_null());
            if one_copy && own != serves {
                return false;
            }
            for topic in status["topics"].as_array().unwrap() {
                let name = topic["name"].as_str().unwrap().to_string();
                for p in topic["partitions"].as_array().unwrap() {
                    // A replicated partition's leader serves it once no move is due.
                    let r = &p["replica"];
                    let placed = r.is_null()
                        || (r["moving"] == false && r["learners"].as_array().is_none_or(|l| l.is_empty()));
                    if p["standing"] == "serving" && placed {
                        *served
                            .entry((name.clone(), p["partition"].as_u64().unwrap()))
                            .or_default() += 1;
                    }
                }
                topics.insert(name);
            }
        }
        served.values().all(|n| *n == 1)
            && topics
                .iter()
                .all(|name| served.keys().filter(|(t, _)| t == name).count() == partitions)
    });
}

/// How many partitions `server` serves now.
pub(crate) fn serving(server: &Server) -> usize {
    status(server)["topics"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["partitions"].as_array().unwrap())
        .filter(|p| p["standing"] == "serving")
        .count()
}

/// How many partitions `server` holds now: serves, or holds a replica of.
pub(crate) fn holding(server: &Server) -> usize {
    status(server)["topics"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["partitions"].as_array().unwrap())
        .filter(|p| {
            p["standing"] == "serving"
                || p["replica"]["role"] == "leader"
                || p["replica"]["role"] == "follower"
        })
        .count()
}

/// Waits until every one of `servers` lists exactly them as alive (peers that left may
/// still be listed as down).
pub(crate) fn wait_all_alive(servers: &[&Server]) {
    let addrs: BTreeSet<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    for s in servers {
        wait_until("every peer lists the others", Duration::from_secs(20), || {
            let alive: BTreeSet<String> = peers_seen(s)
                .into_iter()
                .filter(|(_, state)| state == "alive")
                .map(|(addr, _)| addr)
                .collect();
            alive == addrs
        });
    }
}

/// Starts a peer (`start(name)`, the first of `names`) that joins `others` and holds
/// some of their `partitions` once settled. With one copy, placement hashes the peers'
/// addresses (ports the OS picks), so one time in 2^n it gives a newcomer none of n
/// partitions: such a peer leaves and the next name comes in its place.
pub(crate) fn joined_holding(
    others: &[&Server],
    partitions: usize,
    names: &[&'static str],
    start: impl Fn(&str) -> Server,
) -> (Server, &'static str) {
    for name in names {
        let mut server = start(name);
        let mut all = others.to_vec();
        all.push(&server);
        wait_all_alive(&all);
        wait_settled(&all, partitions);
        if holding(&server) > 0 {
            return (server, name);
        }
        assert_eq!(server.terminate(Duration::from_secs(60)), Some(true));
    }
    panic!("none of {names:?} was given a partition: placement is not spreading them");
}

/// A producer thread: batches of 10 keyed records (`v0`, `v1`, ..., keys `kv0`, ...) to
/// `events` through `tcp`, one every `pause`, until `stop`; counts the acked records in
/// `progress`. Returns the values acked and why each failed batch failed (a failure that
/// is not the server's answer, a lost connection, ends the test).
pub(crate) fn keyed_producer(
    tcp: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    pause: Duration,
) -> std::thread::JoinHandle<(Vec<String>, Vec<String>)> {
    use flowd::client::{Client, ClientError};
    use flowd::protocol::OwnedWireRecord;
    use std::sync::atomic::Ordering;
    let (tcp, stop, progress) = (
        tcp.to_owned(),
        std::sync::Arc::clone(stop),
        std::sync::Arc::clone(progress),
    );
    std::thread::spawn(move || {
        let mut client = Client::connect(&tcp).unwrap();
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        for batch in 0..100_000u64 {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let values: Vec<String> = (0..10).map(|i| format!("v{}", batch * 10 + i)).collect();
            let records: Vec<OwnedWireRecord> = values
                .iter()
                .map(|v| OwnedWireRecord {
                    timestamp_ms: None,
                    key: Some(format!("k{v}").into_bytes()),
                    value: v.clone().into_bytes(),
                    headers: Vec::new(),
                })
                .collect();
            match client.produce("events", &records) {
                Ok(_) => {
                    acked.extend(values);
                    progress.fetch_add(10, Ordering::AcqRel);
                }
                Err(ClientError::Server { message, .. }) => failed.push(message),
                Err(other) => panic!("the producer lost its connection: {other}"),
            }
            pace(pause);
        }
        (acked, failed)
    })
}

fn peers_join_and_leave_while_a_producer_runs_and_every_acked_record_stays_once() {
    let _serial = one_at_a_time();
    use flowd::client::Client;
    use flowd::protocol::OwnedWireRecord;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let first = events_peer(dir.path(), "p1", None);
    let seed = first.peer.clone().unwrap();
    let second = events_peer(dir.path(), "p2", Some(&seed));
    wait_all_alive(&[&first, &second]);

    // First a bulk, so that a partition that moves holds more than a segment (64 KiB):
    // its copy is cut into batches that each fit one.
    let bulk: Vec<String> = (0..12_000).map(|n| format!("bulk{n}")).collect();
    let mut client = Client::connect(&first.tcp).unwrap();
    for chunk in bulk.chunks(1000) {
        let records: Vec<OwnedWireRecord> = chunk
            .iter()
            .map(|v| OwnedWireRecord {
                timestamp_ms: None,
                key: Some(v.clone().into_bytes()),
                value: v.clone().into_bytes(),
                headers: vec![("source".to_string(), b"bulk".to_vec())],
            })
            .collect();
        client.produce("events", &records).unwrap();
    }
    drop(client);

    // The producer sends batches of 10 keyed records to the first peer (which forwards
    // to the owners) until told to stop; it notes what was acked and what was refused.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = keyed_producer(&first.tcp, &stop, &progress, Duration::from_millis(2));

    // Each round a peer joins, then the oldest but the first leaves gracefully (the
    // others take its partitions, with their records, before it goes). Two rounds here;
    // FLOWD_CHURN_ROUNDS=N for a longer churn (scripts/cluster-churn.sh).
    let rounds: usize = crate::support::env_or("FLOWD_CHURN_ROUNDS", 2);
    let mut others = std::collections::VecDeque::from([second]);
    // Records the leaving peers held: the leaves had something to hand over. (Placement
    // may give one peer no partition of eight, so this counts over all rounds.)
    let mut handed = 0;
    // The producer is seen to make progress between every two changes: the changes
    // happen while it writes.
    let producing = |since: u64| {
        wait_until("the producer goes on", Duration::from_secs(30), || {
            progress.load(Ordering::Acquire) >= since + 200
        });
        progress.load(Ordering::Acquire)
    };
    let mut seen = producing(0);
    // Partitions the joining peers took over: partitions did move to them.
    let mut taken = 0;
    for round in 0..rounds {
        let joining = events_peer(dir.path(), &format!("p{}", round + 3), Some(&seed));
        others.push_back(joining);
        let mut all: Vec<&Server> = vec![&first];
        all.extend(others.iter());
        wait_all_alive(&all);
        // The joiner took its partitions over (with their records) before one leaves.
        wait_settled(&all, 8);
        taken += holding(others.back().unwrap());
        seen = producing(seen);
        let mut leaving = others.pop_front().unwrap();
        let held: u64 = status(&leaving)["topics"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["next_offset"].as_u64().unwrap())
            .sum();
        handed += held;
        assert_eq!(
            leaving.terminate(Duration::from_secs(60)),
            Some(true),
            "round {round}: the leaving peer exits cleanly"
        );
    }
    assert!(handed > 0, "the leaving peers owned partitions with records");
    assert!(taken > 0, "the joining peers took partitions over");
    producing(seen);
    stop.store(true, Ordering::Release);
    let (mut acked, failed) = producer.join().unwrap();
    // It made progress before the first change, between every two, and after the last.
    assert!(
        acked.len() >= 200 * (rounds + 2),
        "the producer ran: {} acked",
        acked.len()
    );
    acked.extend(bulk);

    // Every partition ends served by exactly one of the peers left (none still being
    // copied in); through each of them, every acked record is there once.
    let left: Vec<&Server> = std::iter::once(&first).chain(others.iter()).collect();
    wait_settled(&left, 8);
    for server in &left {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (_, _, value) in tail(server, "events") {
            *seen.entry(value).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "records present twice through {}: {twice:?}",
            server.tcp
        );
        let lost: Vec<_> = acked.iter().filter(|v| !seen.contains_key(*v)).take(5).collect();
        assert!(
            lost.is_empty(),
            "acked records missing through {} ({} of {} acked; {} refused batches: {:?}): {lost:?}",
            server.tcp,
            acked.iter().filter(|v| !seen.contains_key(*v)).count(),
            acked.len(),
            failed.len(),
            failed.first()
        );
    }
    // Nothing was refused: batches caught by a move were routed on, not failed.
    assert!(
        failed.is_empty(),
        "{} batches failed, first: {:?}",
        failed.len(),
        failed.first()
    );
}

fn a_stage_splits_each_line_once_while_its_input_partitions_move() {
    let _serial = one_at_a_time();
    let lines: Vec<String> = (0..600).map(|i| format!("w{i} x{i} y{}", i % 13)).collect();
    let words = lines.len() * 3;
    let dir = tempfile::tempdir().unwrap();
    let first = peer(dir.path(), "a", "127.0.0.1:0", None);
    let seed = first.peer.clone().unwrap();
    let send = |server: &Server, part: &[String]| {
        let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "lines"], &(part.join("\n") + "\n"));
        assert_eq!(code, 0, "{err}");
    };
    let (front, back) = lines.split_at(lines.len() / 2);
    send(&first, front);
    // Lines split by the first peer move to the second with their partitions: it must
    // not split them again.
    let (mut second, _) = joined_holding(&[&first], 4, &["b", "b2", "b3"], |name| {
        peer(dir.path(), name, "127.0.0.1:0", Some(&seed))
    });
    let words_now = |server: &Server| tail(server, "words").len();
    wait_until("the first half split", Duration::from_secs(30), || {
        words_now(&first) == front.len() * 3
    });
    send(&second, back);
    wait_until("every line split", Duration::from_secs(30), || {
        words_now(&first) >= words
    });
    // The second leaves: the first takes its partitions back without splitting again.
    assert_eq!(second.terminate(Duration::from_secs(60)), Some(true));
    wait_settled(&[&first], 4);
    // Exactly the words of the lines, each as often as the lines have it.
    let mut expected: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split(' ').map(str::to_owned))
        .collect();
    expected.sort();
    let mut all: Vec<String> = tail(&first, "words")
        .into_iter()
        .map(|(_, _, word)| word)
        .collect();
    all.sort();
    assert_eq!(all.len(), words, "each line split exactly once");
    assert_eq!(all, expected, "the words of every line, each once");
}

fn a_peer_sigkilled_while_a_producer_writes_through_another_loses_no_acked_record() {
    let _serial = one_at_a_time();

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dir = tempfile::tempdir().unwrap();
    // Replicated, leads stay where the sets began (often all on the first peer, alone
    // when it started) until `--rebalance-after` hands them to their preferred replicas.
    let flags: &[&str] = if replicated() {
        &["--rebalance-after", "1s"]
    } else {
        &[]
    };
    let peer = |name: &str, seed: Option<&str>| events_peer_with(dir.path(), name, seed, flags);
    let first = peer("p1", None);
    let seed = first.peer.clone().unwrap();
    // With one copy the second must own some of the eight; replicated, it and the third
    // join together, and the one of them that leads some is the victim.
    let (mut second, second_name) = if replicated() {
        (peer("p2", Some(&seed)), "p2")
    } else {
        joined_holding(&[&first], 8, &["p2", "p2b", "p2c"], |name| {
            peer(name, Some(&seed))
        })
    };
    // Replicated, a partition survives a peer only if a majority of its copies do:
    // three peers, three copies.
    let mut third = replicated().then(|| peer("p3", Some(&seed)));
    let mut all = vec![&first, &second];
    all.extend(third.as_ref());
    wait_all_alive(&all);
    wait_settled(&all, 8);
    // The kill must hit a peer that owns (leads) partitions: the second, or else the
    // third. Rendezvous over three peers prefers the first for all eight partitions
    // once in 3^8, so a lead reaches one of the others when the rebalance runs.
    if let Some(third) = third.as_ref() {
        wait_until(
            "a lead moves to a peer besides the producer's",
            Duration::from_secs(60),
            || serving(&second) + serving(third) > 0,
        );
        wait_settled(&all, 8);
    }
    let second_leads = serving(&second) > 0;
    let (victim, left, victim_name) = match third.as_mut() {
        Some(third) if !second_leads => (third, Some(&second), "p3"),
        third => (&mut second, third.map(|t| &*t), second_name),
    };
    assert!(
        serving(victim) > 0,
        "a peer besides the producer's owns partitions: the kill hits some"
    );

    // Batches of 10 keyed records (over every partition) through the first peer, until
    // told to stop; what was acked, and why the others failed.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let producer = keyed_producer(&first.tcp, &stop, &progress, Duration::from_millis(1));
    let producing = |since: u64| {
        wait_until("the producer goes on", Duration::from_secs(30), || {
            progress.load(Ordering::Acquire) >= since + 300
        });
        progress.load(Ordering::Acquire)
    };
    let before = producing(0);
    // SIGKILL while batches are on their way to it.
    victim.kill9();
    let killed_at = progress.load(Ordering::Acquire);
    assert!(killed_at >= before, "the kill landed while the producer wrote");
    // Once it is down, the peers left own every partition and ack again.
    let rest: Vec<&Server> = std::iter::once(&first).chain(left).collect();
    wait_until("the peers left serve all eight", Duration::from_secs(30), || {
        rest.iter().map(|s| serving(s)).sum::<usize>() == 8
    });
    producing(progress.load(Ordering::Acquire));
    stop.store(true, Ordering::Release);
    let (acked, failed) = producer.join().unwrap();
    for message in &failed {
        // A batch in flight to the killed peer (or, replicated, to a leader whose
        // quorum or leadership went with it): refused, saying it may have been written.
        assert!(
            (replicated() || message.contains(victim.peer.as_deref().unwrap()))
                && message.contains("may or may not have been written"),
            "a failed batch says why: {message}"
        );
    }

    // Every acked record is somewhere, once: on the peers left (read through the
    // first) or, with one copy, on the killed one's disk (read by an engine of its own
    // on its data dir).
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, _, value) in tail(&first, "events") {
        *seen.entry(value).or_default() += 1;
    }
    if !replicated() {
        let alone = start_file(&events_dataflow(dir.path()), dir.path(), victim_name, &[]);
        for (_, _, value) in tail(&alone, "events") {
            *seen.entry(value).or_default() += 1;
        }
    }
    let lost: Vec<_> = acked.iter().filter(|v| !seen.contains_key(*v)).take(5).collect();
    assert!(
        lost.is_empty(),
        "acked records on no peer ({} of {}; {} batches failed): {lost:?}",
        acked.iter().filter(|v| !seen.contains_key(*v)).count(),
        acked.len(),
        failed.len()
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "records written twice: {twice:?}");
}

/// Each test above twice: with the default (replicated: up to three copies of each
/// partition, leaders chosen by the metadata group) and with `replicas = 1` (one copy,
/// owners by gossip, hand-over by copy).
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod replicated {
            $(#[test]
            fn $name() {
                super::$name();
            })*
        }
        mod one_copy {
            $(#[test]
            fn $name() {
                super::one_copy();
                super::$name();
            })*
        }
    };
}

/// The state `server` answers for `key` of the state stage `stage`, if it has one.
pub(crate) fn state_through(server: &Server, stage: &str, key: &str) -> Option<String> {
    let mut client = flowd::client::Client::connect(&server.tcp).unwrap();
    client
        .state(stage, key.as_bytes())
        .ok()
        .map(|v| String::from_utf8_lossy(&v).trim().to_string())
}

/// A range read of all of `partition` of `topic` through `server`: `(offset, value)`.
fn range_through(server: &Server, topic: &str, partition: u32) -> Vec<(u64, String)> {
    use flowd::protocol::consumer::{Bound, RangeSpec};
    let mut client = flowd::client::Client::connect(&server.tcp).unwrap();
    let spec = RangeSpec {
        partition,
        by_time: false,
        reverse: false,
        from: Bound::Unbounded,
        to: Bound::Unbounded,
        limit: 10_000,
        max_bytes: 1 << 20,
    };
    let fetched = client.range(topic, spec).unwrap_or_else(|e| {
        panic!(
            "a range read of partition {partition} through {}: {e}",
            server.tcp
        )
    });
    fetched
        .records
        .into_iter()
        .map(|(offset, r)| (offset, String::from_utf8(r.value).unwrap()))
        .collect()
}

/// Requests about one partition (state reads, length and range reads, a named
/// consumer's claims and acks) answer alike through every peer, the peers that do not
/// lead it relaying them to the one that does; a consumer claiming and acking through
/// alternating peers gets every record once and none again.
fn requests_about_a_partition_answer_alike_through_every_peer() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_peers(dir.path());
    wait_settled(&servers.iter().collect::<Vec<_>>(), 4);
    let lines: String = (0..300).map(|n| format!("k{n}\tapple pear v{n}\n")).collect();
    let (code, _, err) = run_cli(&["send", "--to", &servers[0].tcp, "lines"], &lines);
    assert_eq!(code, 0, "{err}");

    // State: the word's count, kept by the peer leading its partition of `words`.
    let apple = flowd::protocol::routing::partition_of_bytes(b"apple", 4);
    assert!(
        servers.iter().any(|s| !served_by(s, "words").contains(&apple)),
        "some peer does not lead apple's partition (and relays)"
    );
    for server in &servers {
        wait_until(
            "apple counted 300 times, through every peer",
            Duration::from_secs(30),
            || state_through(server, "count", "apple").as_deref() == Some("300"),
        );
        assert_eq!(state_through(server, "count", "pear").as_deref(), Some("300"));
        let (code, body) = crate::ingest::http(&server.http, "GET", "/state/count/apple", "");
        assert_eq!(
            (code, body.trim()),
            (200, "300"),
            "GET /state through {}",
            server.http
        );
        let (code, _) = crate::ingest::http(&server.http, "GET", "/state/count/never-said", "");
        assert_eq!(code, 404, "a key without state, through {}", server.http);
    }

    // Length and range reads of every partition, alike through every peer.
    let (mut total, mut ends) = (0, Vec::new());
    for p in 0..4u32 {
        let lengths: Vec<u64> = servers
            .iter()
            .map(|s| {
                flowd::client::Client::connect(&s.tcp)
                    .unwrap()
                    .length("lines", Some(p))
                    .unwrap()
            })
            .collect();
        assert!(
            lengths.iter().all(|n| *n == lengths[0]),
            "partition {p}: {lengths:?}"
        );
        let ranges: Vec<Vec<(u64, String)>> = servers.iter().map(|s| range_through(s, "lines", p)).collect();
        assert_eq!(ranges[0].len() as u64, lengths[0], "partition {p}");
        assert!(ranges.iter().all(|r| *r == ranges[0]), "partition {p} read alike");
        total += lengths[0];
        ends.push(lengths[0]);
    }
    assert_eq!(total, 300);

    // A named consumer claiming each partition in turn, and one claiming any partition
    // (each partition asked where it is led), each claim and each ack through the next
    // peer in turn.
    let mut clients: Vec<flowd::client::Client> = servers
        .iter()
        .map(|s| flowd::client::Client::connect(&s.tcp).unwrap())
        .collect();
    let create = Some(flowd::protocol::consumer::Options::default());
    // One claim of `group` (of `partition`, or of any) through the peer whose turn it
    // is, acked through the next: the values claimed, `None` once nothing is left.
    let mut turn = 0usize;
    let mut claim_and_ack = |group: &str, partition: Option<u32>| {
        let claimed = clients[turn % 3]
            .claim("lines", group, partition, 7, create.clone())
            .unwrap();
        turn += 1;
        let p = claimed.partition.filter(|_| !claimed.records.is_empty())?;
        let acked = clients[turn % 3].ack("lines", group, p).unwrap();
        turn += 1;
        assert_eq!(
            acked,
            (claimed.from, claimed.to),
            "the claim acked, through another peer"
        );
        Some(
            claimed
                .records
                .iter()
                .map(|(_, r)| String::from_utf8(r.value.clone()).unwrap())
                .collect::<Vec<_>>(),
        )
    };
    let mut got = Vec::new();
    for p in 0..4u32 {
        for _ in 0..100 {
            let Some(values) = claim_and_ack("g", Some(p)) else {
                break;
            };
            got.extend(values);
        }
    }
    let mut any = Vec::new();
    for _ in 0..200 {
        let Some(values) = claim_and_ack("h", None) else {
            break;
        };
        any.extend(values);
    }
    got.sort();
    let mut expected: Vec<String> = (0..300).map(|n| format!("apple pear v{n}")).collect();
    expected.sort();
    assert_eq!(got, expected, "every record claimed once");
    for (i, client) in clients.iter_mut().enumerate() {
        for p in 0..4u32 {
            let claimed = client.claim("lines", "g", Some(p), 7, None).unwrap();
            assert!(
                claimed.records.is_empty(),
                "partition {p} through peer {i}: an acked record came back"
            );
        }
    }

    // Requests about the whole topic, through every peer: its length and the
    // consumer's cursors (each from its partition's leader), alike over HTTP.
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.length("lines", None).unwrap(), 300, "through peer {i}");
        let (code, body) = crate::ingest::http(&servers[i].http, "GET", "/topics/lines/length", "");
        assert_eq!((code, body.contains("\"length\":300")), (200, true), "{body}");
        let cursors = client
            .consumers(flowd::protocol::consumer::AdminAction::List, "lines", "g")
            .unwrap();
        let seen: Vec<(u32, u64, u64)> = cursors
            .iter()
            .map(|c| (c.partition, c.committed, c.lag))
            .collect();
        let acked: Vec<(u32, u64, u64)> = (0..4).map(|p| (p, ends[p as usize], 0)).collect();
        assert_eq!(
            seen, acked,
            "g's cursors through peer {i}, each as its leader holds it"
        );
        let (code, body) = crate::ingest::http(&servers[i].http, "GET", "/consumers/lines/g", "");
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            body.matches("\"partition\"").count(),
            4,
            "g's cursors over HTTP: {body}"
        );
    }
    any.sort();
    assert_eq!(
        any, expected,
        "a claim of any partition, through alternating peers: every record once"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        let claimed = client.claim("lines", "h", None, 7, None).unwrap();
        assert!(
            claimed.records.is_empty(),
            "through peer {i}: an acked record came back"
        );
    }
    // Over HTTP, through every peer: a claim of any partition finds nothing left, and
    // an unknown consumer is unknown everywhere.
    for server in &servers {
        let (code, body) = crate::ingest::http(&server.http, "POST", "/consumers/lines/h/claim", "");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"records\":[]"), "{body}");
        let (code, _) = crate::ingest::http(&server.http, "GET", "/consumers/lines/nobody", "");
        assert_eq!(code, 404);
    }
}

both_ways!(
    requests_about_a_partition_answer_alike_through_every_peer,
    peers_find_each_other_drop_a_killed_one_and_take_it_back,
    records_sent_to_any_peer_land_at_their_owner_and_tail_anywhere_returns_all,
    a_word_count_on_two_peers_counts_what_it_counts_on_one,
    peers_join_and_leave_while_a_producer_runs_and_every_acked_record_stays_once,
    a_stage_splits_each_line_once_while_its_input_partitions_move,
    a_peer_sigkilled_while_a_producer_writes_through_another_loses_no_acked_record,
);

/// Partitions of `topic` that `server` serves.
pub(crate) fn served_by(server: &Server, topic: &str) -> Vec<u32> {
    serving_in(&status(server), topic)
}

/// The partitions of `topic` a status document says are served there.
pub(crate) fn serving_in(status: &serde_json::Value, topic: &str) -> Vec<u32> {
    status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == topic)
        .flat_map(|t| t["partitions"].as_array().unwrap())
        .filter(|p| p["standing"] == "serving")
        .map(|p| p["partition"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn a_stalled_owner_slows_the_peer_that_forwards_to_it_and_no_batch_fails() {
    let _serial = one_at_a_time();
    one_copy();
    let dir = tempfile::tempdir().unwrap();
    let file = events_dataflow_of(dir.path(), 4, "16MiB");
    // Each peer's reader of forwarded batches stalls for 3 s at the first one, as
    // behind a full inbox: its gossip goes on, so it stays alive to the other.
    let start = |name: &str, seed: Option<&str>| {
        let mut extra = vec!["--peer-listen", "127.0.0.1:0"];
        if let Some(seed) = seed {
            extra.extend(["--seeds", seed]);
        }
        let stall = [("FAILPOINTS", "peer-produce=1*sleep(3000)")];
        start_file_env(&file, dir.path(), name, &extra, &stall)
    };
    let first = start("p1", None);
    let second = start("p2", first.peer.as_deref());
    wait_settled(&[&first, &second], 4);
    let firsts = served_by(&first, "events");

    // 16 producers, each with a batch of 2 MiB in flight to a partition through the peer
    // that does not own it: more than the sockets between the peers buffer, so the
    // forwarding peer's writes wait on the stalled reader.
    const PRODUCERS: usize = 16;
    const BATCHES: usize = 3;
    const RECORDS: usize = 4;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|i| {
            let partition = (i % 4) as u32;
            let through = if firsts.contains(&partition) {
                &second
            } else {
                &first
            };
            let tcp = through.tcp.clone();
            std::thread::spawn(move || {
                let mut client = flowd::client::Client::connect(&tcp).unwrap();
                let value = "x".repeat(512 * 1024);
                let records: Vec<_> = (0..RECORDS).map(|_| crate::replication::record(&value)).collect();
                (0..BATCHES)
                    .map(|_| {
                        client
                            .produce_batch("events", Some(partition), &records)
                            .map(|_| ())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = producers.into_iter().flat_map(|p| p.join().unwrap()).collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} batches failed while their owner stalled: {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    let held: u64 = [&first, &second]
        .iter()
        .flat_map(|s| status(s)["topics"][0]["partitions"].as_array().unwrap().clone())
        .filter(|p| p["standing"] == "serving")
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(
        held,
        (PRODUCERS * BATCHES * RECORDS) as u64,
        "every acked record at its owner"
    );
}

/// A peer given seeds serves nothing until it has heard from the cluster: one whose
/// only seed is paused (SIGSTOP) past its patience does not take every partition alone
/// and, once the seed is back, hide the records the seed holds behind empty copies.
#[test]
fn a_peer_that_cannot_reach_its_seed_serves_nothing_and_hides_no_record() {
    let _serial = one_at_a_time();
    one_copy();
    let dir = tempfile::tempdir().unwrap();
    let first = events_peer(dir.path(), "p1", None);
    wait_until(
        "the first peer serves all 8 partitions",
        Duration::from_secs(30),
        || served_by(&first, "events").len() == 8,
    );
    let lines: String = (0..400).map(|n| format!("k{n}\tv{n}\n")).collect();
    let (code, out, err) = run_cli(&["send", "--to", &first.tcp, "events"], &lines);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 400, "every record acked");

    first.signal(libc::SIGSTOP);
    let seed = first.peer.clone().unwrap();
    let second = events_peer(dir.path(), "p2", Some(&seed));
    let waited = second
        .log
        .wait_for(&["heard from none of its seeds"], Duration::from_secs(30));
    let alone = served_by(&second, "events");
    first.signal(libc::SIGCONT);
    assert!(waited, "{}", second.log.text());
    assert_eq!(alone, Vec::<u32>::new(), "served alone while its seed was paused");

    wait_all_alive(&[&first, &second]);
    wait_settled(&[&first, &second], 8);
    for server in [&first, &second] {
        let mut values: Vec<String> = tail(server, "events").into_iter().map(|(_, _, v)| v).collect();
        values.sort();
        let mut expected: Vec<String> = (0..400).map(|n| format!("v{n}")).collect();
        expected.sort();
        assert_eq!(
            values, expected,
            "every acked record once, through {}",
            server.tcp
        );
    }
}

/// A holder fences a partition (stops writing it, says where its copy ends) only for a
/// claimer that asks every peer the holder sees alive: a claimer whose view is behind
/// (it has heard of some peers only) would otherwise take the partition over from the
/// copies it knows of and serve it without a longer one held elsewhere. The CLAIM here
/// is forged, from the third peer's address with a peer certificate of the cluster.
#[test]
fn a_holder_fences_only_for_a_claimer_that_asks_every_peer_it_sees() {
    use flowd::cluster::frame::{self, Kind};
    use flowd::cluster::handover::{self, ClaimEntry, Phase};
    use std::net::SocketAddr;
    let _serial = one_at_a_time();
    one_copy();
    let dir = tempfile::tempdir().unwrap();
    let first = events_peer(dir.path(), "p1", None);
    let seed = first.peer.clone().unwrap();
    let second = events_peer(dir.path(), "p2", Some(&seed));
    wait_all_alive(&[&first, &second]);
    let (third, _) = joined_holding(&[&first, &second], 8, &["p3", "p4", "p5"], |name| {
        events_peer(dir.path(), name, Some(&seed))
    });
    let partition = served_by(&third, "events")[0];
    let addr = |s: &Server| -> SocketAddr { s.peer.clone().unwrap().parse().unwrap() };

    let pki = crate::peer_tls::cluster_pki();
    let (cert, key) = crate::peer_tls::issue(&pki, "claimer", &["--cluster", "flowd", "--host", "127.0.0.1"]);
    let tls = crate::peer_tls::peer_tls(cert, key, pki.join("ca.pem"), crate::peer_tls::HERE);
    let claim = |asked: &[SocketAddr]| -> Option<u64> {
        let stream = crate::peer_tls::socket(addr(&first));
        let mut stream = tls.dial(stream, crate::peer_tls::HERE).unwrap();
        let mut out =
            flowd::cluster::transport::hello("flowd", addr(&third), flowd::cluster::transport::Purpose::Data);
        let entry = ClaimEntry {
            topic: "events".into(),
            partition,
            phase: Phase::Fence,
            end: 0,
        };
        frame::encode(&mut out, Kind::Claim, 1, &handover::encode_claim(&[entry], asked));
        std::io::Write::write_all(&mut stream, &out).unwrap();
        let answer = frame::read(&mut stream).unwrap().unwrap();
        assert_eq!(answer.kind, Kind::Claimed);
        handover::decode_claimed(&answer.body, 1).unwrap()[0]
    };
    // The partition is the third's in the first's view: a claim from it that asks
    // the second too is agreed; one that does not know the second is not.
    assert_eq!(
        claim(&[]),
        None,
        "fenced for a claimer that did not ask the second peer"
    );
    assert!(
        claim(&[addr(&second)]).is_some(),
        "not fenced for a claimer that asked every peer"
    );
}

/// A HELLO of another peer protocol (a build from before versions, or a later one) is
/// answered with an ERROR naming both protocols and nothing after it is served; the
/// current HELLO is. Peers that would read each other's frames differently never do.
#[test]
fn a_peer_of_another_protocol_is_told_so_and_served_nothing() {
    use flowd::cluster::data::{self, Fetch};
    use flowd::cluster::frame::{self, Body, Kind};
    use flowd::cluster::transport::{Purpose, hello};
    use std::io::Write;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let server = events_peer(dir.path(), "p1", None);
    let peer: std::net::SocketAddr = server.peer.clone().unwrap().parse().unwrap();
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let fetch = data::encode_fetch(&Fetch {
        topic: "events",
        partition: 0,
        from: flowd::protocol::FetchFrom::Offset(0),
        max_records: 10,
        max_bytes: 1 << 20,
        wait_ms: 0,
    });
    // A peer certificate of the cluster for 127.0.0.1, as a peer of another build has.
    let pki = crate::peer_tls::cluster_pki();
    let (cert, key) = crate::peer_tls::issue(
        &pki,
        "other-build",
        &["--cluster", "flowd", "--host", "127.0.0.1"],
    );
    let tls = crate::peer_tls::peer_tls(cert, key, pki.join("ca.pem"), crate::peer_tls::HERE);
    // The kinds answered to `hello` then a FETCH, and the first ERROR's message.
    let ask = |hello: Vec<u8>| -> (Vec<Kind>, String) {
        let mut stream = tls
            .dial(crate::peer_tls::socket(peer), crate::peer_tls::HERE)
            .unwrap();
        let mut out = hello;
        frame::encode(&mut out, Kind::Fetch, 7, &fetch);
        stream.write_all(&out).unwrap();
        let mut kinds = Vec::new();
        let mut said = String::new();
        while kinds.len() < 2 {
            match frame::read(&mut stream) {
                Ok(Some(f)) => {
                    if f.kind == Kind::Error && said.is_empty() {
                        let mut fields = frame::Fields(&f.body);
                        fields.u16().unwrap();
                        said = fields.str16().unwrap().to_owned();
                    }
                    kinds.push(f.kind);
                }
                Ok(None) | Err(_) => break,
            }
        }
        (kinds, said)
    };
    let unversioned = Body::default()
        .str8("flowd")
        .str8(&from.to_string())
        .u8(Purpose::Data as u8);
    let (kinds, said) = ask(frame::framed(Kind::Hello, 0, &unversioned.0));
    assert_eq!(kinds, [Kind::Error], "refused, the FETCH unanswered");
    assert!(said.contains("it speaks no peer protocol version"), "{said}");
    assert!(
        said.contains(&format!("this peer speaks peer protocol {}", frame::PROTOCOL)),
        "{said}"
    );
    let later = Body::default()
        .str8("flowd")
        .str8(&from.to_string())
        .u8(Purpose::Data as u8)
        .u16(frame::PROTOCOL + 1);
    let (kinds, said) = ask(frame::framed(Kind::Hello, 0, &later.0));
    assert_eq!(kinds, [Kind::Error]);
    assert!(
        said.contains(&format!("it speaks peer protocol {}", frame::PROTOCOL + 1)),
        "{said}"
    );
    assert!(
        server.log.wait_for(
            &["refused the peer at 127.0.0.1:9", "restart them all on one"],
            Duration::from_secs(10)
        ),
        "the refusal is in the log"
    );
    // (A peer just started may still answer that it takes the partition over.)
    wait_until("the current protocol is served", Duration::from_secs(30), || {
        ask(hello("flowd", from, Purpose::Data)).0 == [Kind::Frame]
    });
}

/// The first of several seeds founds a cluster only once every other seed answered that
/// it is a member of no group (Redpanda's rule), not after a timer: back on an empty
/// data directory while the others are paused (the group has no leader, and no seed
/// answers) it founds no second group, and once they are back it is taken into theirs.
#[test]
fn a_first_seed_back_on_an_empty_directory_founds_no_second_group() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Three addresses known before any peer starts, as every peer lists them all.
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = held.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    drop(held);
    let seeds = addrs.join(",");
    let file = events_dataflow(dir.path());
    let start = |i: usize| {
        start_file(
            &file,
            dir.path(),
            &format!("s{i}"),
            &["--peer-listen", &addrs[i], "--seeds", &seeds],
        )
    };
    let mut peers: Vec<Server> = (0..3).map(start).collect();
    let one_group = |peers: &[Server]| {
        let groups: BTreeSet<(Option<String>, Vec<String>)> = peers
            .iter()
            .map(|p| {
                let group = &status(p)["metadata_group"];
                let voters = crate::replication::group_voters(group);
                (group["leader"].as_str().map(str::to_owned), voters)
            })
            .collect();
        let mut all = addrs.clone();
        all.sort();
        groups.len() == 1
            && groups
                .iter()
                .all(|(leader, voters)| leader.is_some() && *voters == all)
    };
    wait_until(
        "one group of three voters, one leader",
        Duration::from_secs(60),
        || one_group(&peers),
    );

    peers[0].kill9();
    std::fs::remove_dir_all(dir.path().join("s0")).unwrap();
    peers[1].signal(libc::SIGSTOP);
    peers[2].signal(libc::SIGSTOP);
    peers[0] = start(0);
    let waited = peers[0]
        .log
        .wait_for(&["has not founded the cluster"], Duration::from_secs(30));
    let group = status(&peers[0])["metadata_group"].clone();
    let serving = served_by(&peers[0], "events");
    peers[1].signal(libc::SIGCONT);
    peers[2].signal(libc::SIGCONT);
    assert!(waited, "{}", peers[0].log.text());
    assert_eq!(
        group["voters"],
        serde_json::json!([]),
        "a second group founded: {group}"
    );
    assert_eq!(
        serving,
        Vec::<u32>::new(),
        "served alone while its seeds were paused"
    );
    wait_until(
        "one group of three voters, one leader, the first seed in it",
        Duration::from_secs(60),
        || one_group(&peers),
    );
}

/// How far `server`'s own copy of partition 0 of `topic` is durable.
fn own_end(server: &Server, topic: &str) -> Option<u64> {
    status(server)["topics"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == topic)?["partitions"][0]["durable_offset"]
        .as_u64()
}

#[test]
fn a_followers_copy_is_never_held_back_by_a_stage_that_reads_its_input_on_the_leader() {
    use flowd::client::Client;
    use flowd::protocol::OwnedWireRecord;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // `events` holds its writers at most 50 records past its slowest reader: the stage,
    // which reads it on its leader only.
    let file = dir.path().join("lagged.toml");
    std::fs::write(
        &file,
        "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n\
         [[topic]]\nname = \"events\"\npartitions = 1\nmax_lag = 50\n\n\
         [[topic]]\nname = \"copies\"\npartitions = 1\n\n\
         [[stage]]\nname = \"copy\"\nfrom = \"events\"\nop = { map = '.' }\nto = \"copies\"\n",
    )
    .unwrap();
    let peer = |name: &str, seed: Option<&str>| {
        let mut extra = vec!["--peer-listen", "127.0.0.1:0"];
        extra.extend(seed.map(|s| ["--seeds", s]).into_iter().flatten());
        start_file(&file, dir.path(), name, &extra)
    };
    let first = peer("p1", None);
    let seed = first.peer.clone().unwrap();
    let second = peer("p2", Some(&seed));
    let third = peer("p3", Some(&seed));
    let all = [&first, &second, &third];
    wait_settled(&all, 1);
    // Ten times the lag, in batches of ten: each is acked, so a quorum of copies took it.
    let mut client = Client::connect(&first.tcp).unwrap();
    for b in 0..50u64 {
        let records: Vec<OwnedWireRecord> = (0..10)
            .map(|i| OwnedWireRecord::value((b * 10 + i).to_string()))
            .collect();
        if let Err(error) = client.produce_batch("events", Some(0), &records) {
            let ends: Vec<Option<u64>> = all.iter().map(|s| own_end(s, "events")).collect();
            panic!("batch {b} of 50 refused ({error}); the copies of events end at {ends:?}");
        }
    }
    wait_until(
        "every copy of events holds the 500",
        Duration::from_secs(30),
        || all.iter().all(|s| own_end(s, "events") == Some(500)),
    );
    wait_until("the stage copied the 500", Duration::from_secs(30), || {
        tail(&first, "copies").len() == 500
    });
}

/// Which of `servers` leads partition 0 of `topic`, as the first of them that answers
/// says (its own view of the metadata).
fn partition_0_leader(servers: &[&Server], topic: &str) -> Option<usize> {
    let status = servers.iter().find_map(|s| {
        let (code, out, _) = run_cli(&["status", "--local", "--from", &s.tcp, "--json"], "");
        (code == 0)
            .then(|| serde_json::from_str::<Value>(&out).ok())
            .flatten()
    })?;
    let leader = status["topics"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == topic)?["partitions"][0]["replica"]["leader"]
        .as_str()?
        .to_string();
    servers
        .iter()
        .position(|s| s.peer.as_deref() == Some(leader.as_str()))
}

#[test]
fn a_batch_held_back_by_its_leaders_readers_goes_on_to_the_next_leader_when_the_lead_moves() {
    use flowd::client::Client;
    use flowd::protocol::OwnedWireRecord;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // `events` holds its writers at most 20 records past its slowest reader: a stage whose
    // worker, on each peer, answers nothing while that peer's file `hold-NAME` exists.
    let hold = |name: &str| dir.path().join(format!("hold-{name}"));
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/workers/flaky.py");
    let file = dir.path().join("held.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n\
             [[topic]]\nname = \"events\"\npartitions = 1\nmax_lag = 20\n\n\
             [[topic]]\nname = \"doubled\"\npartitions = 1\n\n\
             [[stage]]\nname = \"double\"\nfrom = \"events\"\nto = \"doubled\"\n\
             op = {{ exec = {{ command = [\"python3\", \"{}\", \"--hold-while\", \"$FLOWD_HOLD\"], timeout = \"600s\" }} }}\n",
            worker.display(),
        ),
    )
    .unwrap();
    let names = ["p1", "p2", "p3"];
    for name in names {
        std::fs::write(hold(name), "").unwrap();
    }
    let peer = |name: &str, seed: Option<&str>| {
        let mut extra = vec!["--peer-listen", "127.0.0.1:0"];
        extra.extend(seed.map(|s| ["--seeds", s]).into_iter().flatten());
        let held = hold(name).display().to_string();
        start_file_env(&file, dir.path(), name, &extra, &[("FLOWD_HOLD", held.as_str())])
    };
    let first = peer(names[0], None);
    let seed = first.peer.clone().unwrap();
    let second = peer(names[1], Some(&seed));
    let third = peer(names[2], Some(&seed));
    let servers = [first, second, third];
    let all: Vec<&Server> = servers.iter().collect();
    wait_settled(&all, 1);
    let numbers = |from: u64| -> Vec<OwnedWireRecord> {
        (from..from + 10)
            .map(|n| OwnedWireRecord::value(n.to_string()))
            .collect()
    };
    // Twenty acked: the stage's reader, at 0, is now max_lag behind on the leader.
    let leader = partition_0_leader(&all, "events").expect("a leader of events");
    let mut client = Client::connect(&servers[leader].tcp).unwrap();
    client.produce_batch("events", Some(0), &numbers(0)).unwrap();
    client.produce_batch("events", Some(0), &numbers(10)).unwrap();
    // The third batch waits at the leader for its reader.
    client
        .send_produce_batch("events", Some(0), &numbers(20))
        .unwrap();
    client.flush().unwrap();
    wait_until("the third batch held back", Duration::from_secs(30), || {
        crate::ingest::metric(&servers[leader], "flowd_lag_waits_total") == 1.0
    });
    // The leader pauses past failure detection: another replica leads, and the old one
    // comes back as its follower, its stage (held still) reading nothing there.
    servers[leader].signal(libc::SIGSTOP);
    let others: Vec<&Server> = (0..3).filter(|&i| i != leader).map(|i| &servers[i]).collect();
    wait_until("another replica leads", Duration::from_secs(60), || {
        partition_0_leader(&others, "events").is_some_and(|i| others[i].peer != servers[leader].peer)
    });
    servers[leader].signal(libc::SIGCONT);
    // The other peers' workers answer: the new leader's stage reads. The held batch no
    // longer waits for the old leader's reader: it goes on to the new leader and is
    // acked, and every copy, the old leader's too (its inbox not held by the batch),
    // holds the thirty records.
    for (i, name) in names.iter().enumerate() {
        if i != leader {
            std::fs::remove_file(hold(name)).unwrap();
        }
    }
    client.set_read_timeout(Duration::from_secs(30)).unwrap();
    match client.recv() {
        Ok((_, flowd::protocol::message::Response::Produced(_))) => {}
        other => panic!("the held batch: {other:?}"),
    }
    wait_until(
        "every copy of events holds the thirty",
        Duration::from_secs(60),
        || all.iter().all(|s| own_end(s, "events") == Some(30)),
    );
    wait_until("the stage doubled the thirty", Duration::from_secs(60), || {
        tail(all[0], "doubled").len() == 30
    });
}

/// Each partition of `topic` in `server`'s own status: (its leader, its own copy's durable
/// end).
fn partitions_here(server: &Server, topic: &str) -> Vec<(String, u64)> {
    status(server)["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|t| t["name"] == topic))
        .and_then(|t| t["partitions"].as_array())
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    (
                        p["replica"]["leader"].as_str().unwrap_or("").to_string(),
                        p["durable_offset"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_batch_held_back_by_its_partitions_readers_holds_no_follower_copy_of_another_partition() {
    use flowd::client::Client;
    use flowd::protocol::OwnedWireRecord;
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Two peers of one core each, every partition on both (a write needs both copies),
    // `events` holding its writers at most 20 records past a stage whose worker answers
    // nothing while `hold` exists.
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/workers/flaky.py");
    let file = dir.path().join("held.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\ncores = 1\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n\
             [cluster]\nreplicas = 2\n\n\
             [[topic]]\nname = \"events\"\npartitions = 12\nmax_lag = 20\n\n\
             [[topic]]\nname = \"doubled\"\npartitions = 12\n\n\
             [[stage]]\nname = \"double\"\nfrom = \"events\"\nto = \"doubled\"\n\
             op = {{ exec = {{ command = [\"python3\", \"{}\", \"--hold-while\", \"{}\"], timeout = \"600s\" }} }}\n",
            worker.display(),
            hold.display(),
        ),
    )
    .unwrap();
    let peer = |name: &str, seed: Option<&str>| {
        let mut extra = vec!["--peer-listen", "127.0.0.1:0", "--rebalance-after", "1s"];
        extra.extend(seed.map(|s| ["--seeds", s]).into_iter().flatten());
        start_file(&file, dir.path(), name, &extra)
    };
    let first = peer("p1", None);
    let seed = first.peer.clone().unwrap();
    let second = peer("p2", Some(&seed));
    let servers = [first, second];
    wait_settled(&servers.iter().collect::<Vec<_>>(), 12);
    // Leads go to their preferred replicas: each peer leads some of the twelve (but for
    // one time in about 2,000).
    let addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    let mut leaders = Vec::new();
    wait_until("each peer leads a partition", Duration::from_secs(60), || {
        leaders = partitions_here(&servers[0], "events")
            .into_iter()
            .map(|(leader, _)| leader)
            .collect();
        addrs.iter().all(|a| leaders.contains(a))
    });
    let held = leaders.iter().position(|l| *l == addrs[0]).unwrap() as u32;
    let other = leaders.iter().position(|l| *l == addrs[1]).unwrap() as u32;
    let numbers = |from: u64, n: u64| -> Vec<OwnedWireRecord> {
        (from..from + n)
            .map(|v| OwnedWireRecord::value(v.to_string()))
            .collect()
    };
    // Twenty to the first peer's partition: its stage's reader is max_lag behind there,
    // and the next batch waits in that peer's inbox.
    let mut client = Client::connect(&servers[0].tcp).unwrap();
    client.set_read_timeout(Duration::from_secs(30)).unwrap();
    client
        .produce_batch("events", Some(held), &numbers(0, 20))
        .unwrap();
    let mut waiting = Client::connect(&servers[0].tcp).unwrap();
    waiting.set_read_timeout(Duration::from_secs(30)).unwrap();
    waiting
        .send_produce_batch("events", Some(held), &numbers(20, 10))
        .unwrap();
    waiting.flush().unwrap();
    wait_until("the batch held back", Duration::from_secs(30), || {
        crate::ingest::metric(&servers[0], "flowd_lag_waits_total") == 1.0
    });
    // A write to the second peer's partition, far from its max_lag, needs the first
    // peer's copy: it must not wait behind the held batch.
    if let Err(error) = client.produce_batch("events", Some(other), &numbers(0, 5)) {
        panic!(
            "the write to partition {other}, led by the second peer, failed while partition {held} held a batch on the first: {error}"
        );
    }
    // The worker answers: the held batch is acked, and both copies hold every record.
    std::fs::remove_file(&hold).unwrap();
    match waiting.recv() {
        Ok((_, flowd::protocol::message::Response::Produced(_))) => {}
        other => panic!("the held batch: {other:?}"),
    }
    wait_until("both copies hold every record", Duration::from_secs(30), || {
        servers.iter().all(|s| {
            let ends = partitions_here(s, "events");
            ends.len() == 12 && ends[held as usize].1 == 30 && ends[other as usize].1 == 5
        })
    });
}
