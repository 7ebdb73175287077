//! Consensus and replication across peers as separate processes on loopback: the
//! metadata group forms from one seed, elects a new leader when its leader is SIGKILLed,
//! and takes the returning peer back as a voter.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use flowd::client::Client;

use crate::cluster::{one_at_a_time, status, three_events_peers};
use crate::ingest::Server;
use crate::support::wait_until;

fn group(server: &Server) -> Value {
    status(server)["metadata_group"].clone()
}

fn leader_of(server: &Server) -> Option<String> {
    group(server)["leader"].as_str().map(str::to_string)
}

pub(crate) fn voters(server: &Server) -> Vec<String> {
    group_voters(&group(server))
}

/// The voters a status's `metadata_group` names, sorted.
pub(crate) fn group_voters(group: &Value) -> Vec<String> {
    let mut voters: Vec<String> = group["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    voters.sort();
    voters
}

/// Waits until every one of `servers` names the same leader, one of them, with all of
/// them voters; returns the leader's address.
fn wait_agreed(servers: &[&Server]) -> String {
    let mut addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    addrs.sort();
    let mut agreed = String::new();
    wait_until(
        "every peer names one leader and all are voters",
        Duration::from_secs(30),
        || {
            let leaders: Vec<Option<String>> = servers.iter().map(|s| leader_of(s)).collect();
            let Some(Some(first)) = leaders.first().cloned() else {
                return false;
            };
            if leaders.iter().any(|l| l.as_deref() != Some(&first)) || !addrs.contains(&first) {
                return false;
            }
            agreed = first;
            servers.iter().all(|s| voters(s) == addrs)
        },
    );
    agreed
}

#[test]
fn the_metadata_group_forms_from_a_seed_survives_its_leader_and_takes_it_back() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_events_peers(dir.path());
    let leader = wait_agreed(&servers.iter().collect::<Vec<_>>());
    let term = group(&servers[0])["term"].as_u64().unwrap();

    // SIGKILL the group's leader: the other two elect one of themselves, in a later term.
    let at = servers
        .iter()
        .position(|s| s.peer.as_deref() == Some(&leader))
        .unwrap();
    let name = format!("p{}", at + 1);
    servers[at].kill9();
    let rest: Vec<&Server> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, s)| s)
        .collect();
    let took = wait_until("the others elect a new leader", Duration::from_secs(30), || {
        let leaders: Vec<Option<String>> = rest.iter().map(|s| leader_of(s)).collect();
        leaders[0].is_some() && leaders[0] != Some(leader.clone()) && leaders[0] == leaders[1]
    });
    eprintln!("a new metadata leader within {took:?} of the old one's SIGKILL");
    assert!(group(rest[0])["term"].as_u64().unwrap() > term, "a new term");
    // The dead peer stays a voter: losing a minority changes nothing.
    assert_eq!(voters(rest[0]).len(), 3);

    // It comes back on its address with its data: a voter again, following the new leader.
    let seed = rest[0].peer.clone().unwrap();
    let back = servers[at].peer.clone().unwrap();
    servers[at] = crate::cluster::start_file(
        &crate::cluster::events_dataflow(dir.path()),
        dir.path(),
        &name,
        &["--peer-listen", &back, "--seeds", &seed],
    );
    let new_leader = wait_agreed(&servers.iter().collect::<Vec<_>>());
    assert_ne!(
        new_leader, leader,
        "the returning peer did not take leadership back by itself"
    );
}

/// Every record's value of `topic` through `server`, once every partition has a leader
/// that answers (an election may still run after a pause: reads wait for it, bounded).
pub(crate) fn tail_when_led(server: &Server, topic: &str) -> Vec<(u64, String, String)> {
    crate::cluster::parse_tail(&tail_lines_when_led(server, topic))
}

/// `flowd tail --json` of `topic` through `server` (a JSON record a line), once every
/// partition has a leader that answers.
pub(crate) fn tail_lines_when_led(server: &Server, topic: &str) -> String {
    let mut out = String::new();
    wait_until(
        "a tail through every partition's leader",
        Duration::from_secs(30),
        || {
            let (code, stdout, _) =
                crate::ingest::run_cli(&["tail", "--from", &server.tcp, topic, "--json"], "");
            out = stdout;
            code == 0
        },
    );
    out
}

pub(crate) fn replicated_dataflow(dir: &std::path::Path) -> std::path::PathBuf {
    replicated_dataflow_of(dir, "64KiB")
}

/// The replicated dataflow with segments of `segment_bytes`.
fn replicated_dataflow_of(dir: &std::path::Path, segment_bytes: &str) -> std::path::PathBuf {
    let file = dir.join(format!("replicated-{segment_bytes}.toml"));
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n[cluster]\nreplicas = 3\n\n\
             [[topic]]\nname = \"events\"\npartitions = 8\nsegment_bytes = \"{segment_bytes}\"\n"
        ),
    )
    .unwrap();
    file
}

pub(crate) fn replicated_peer(dir: &std::path::Path, name: &str, at: &str, seed: Option<&str>) -> Server {
    replicated_peer_of(dir, name, at, seed, "64KiB", &[])
}

/// A peer of the replicated dataflow with segments of `segment_bytes`, listening for
/// peers at `at`, seeded with `seed`, with `flags` too.
pub(crate) fn replicated_peer_of(
    dir: &std::path::Path,
    name: &str,
    at: &str,
    seed: Option<&str>,
    segment_bytes: &str,
    flags: &[&str],
) -> Server {
    let mut extra = vec!["--peer-listen", at];
    if let Some(seed) = seed {
        extra.extend(["--seeds", seed]);
    }
    extra.extend(flags);
    crate::cluster::start_file(&replicated_dataflow_of(dir, segment_bytes), dir, name, &extra)
}

/// `partition -> (role, epoch, next_offset, hwm)` as `server` sees its replicas.
pub(crate) fn replicas(server: &Server) -> std::collections::BTreeMap<u64, (String, u64, u64, u64)> {
    let status = status(server);
    let mut out = std::collections::BTreeMap::new();
    for topic in status["topics"].as_array().unwrap() {
        for p in topic["partitions"].as_array().unwrap() {
            let r = &p["replica"];
            out.insert(
                p["partition"].as_u64().unwrap(),
                (
                    r["role"].as_str().unwrap_or("-").to_string(),
                    r["epoch"].as_u64().unwrap_or(0),
                    p["next_offset"].as_u64().unwrap(),
                    r["hwm"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    out
}

/// Three peers of the replicated dataflow, the first the seed, every partition led.
fn three_replicated(dir: &std::path::Path) -> [Server; 3] {
    three_replicated_of(dir, "64KiB")
}

/// As `three_replicated`, with segments of `segment_bytes`.
fn three_replicated_of(dir: &std::path::Path, segment_bytes: &str) -> [Server; 3] {
    let first = replicated_peer_of(dir, "p1", "127.0.0.1:0", None, segment_bytes, &[]);
    let seed = first.peer.clone().unwrap();
    let second = replicated_peer_of(dir, "p2", "127.0.0.1:0", Some(&seed), segment_bytes, &[]);
    let third = replicated_peer_of(dir, "p3", "127.0.0.1:0", Some(&seed), segment_bytes, &[]);
    let servers = [first, second, third];
    wait_led(&servers.iter().collect::<Vec<_>>());
    servers
}

/// A peer that leads a partition, and the partition.
pub(crate) fn some_leader(servers: &[Server]) -> (usize, u32) {
    (0..servers.len())
        .find_map(|i| {
            replicas(&servers[i])
                .into_iter()
                .find(|(_, r)| r.0 == "leader")
                .map(|(p, _)| (i, p as u32))
        })
        .expect("some peer leads a partition")
}

/// A record of `value`, with no key.
pub(crate) fn record(value: &str) -> flowd::protocol::OwnedWireRecord {
    flowd::protocol::OwnedWireRecord {
        timestamp_ms: None,
        key: None,
        value: value.as_bytes().to_vec(),
        headers: Vec::new(),
    }
}

/// Waits until each partition has exactly one leader among `servers`, the others
/// following it in the same epoch.
pub(crate) fn wait_led(servers: &[&Server]) {
    let started = std::time::Instant::now();
    loop {
        let views: Vec<_> = servers.iter().map(|s| replicas(s)).collect();
        let led = (0..8u64).all(|p| {
            let Some(roles) = views.iter().map(|v| v.get(&p)).collect::<Option<Vec<_>>>() else {
                return false;
            };
            roles.iter().filter(|r| r.0 == "leader").count() == 1
                && roles.iter().filter(|r| r.0 == "follower").count() == servers.len() - 1
                && roles.iter().all(|r| r.1 == roles[0].1)
        });
        if led {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "every partition led once, followed by the rest: not within 30 s; as the peers see them: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until each partition is led by exactly one of `servers`; returns how long.
pub(crate) fn wait_led_by(servers: &[&Server]) -> Duration {
    wait_until(
        "the peers left lead every partition",
        Duration::from_secs(30),
        || {
            let views: Vec<_> = servers.iter().map(|s| replicas(s)).collect();
            (0..8u64).all(|p| {
                views
                    .iter()
                    .filter(|v| v.get(&p).is_some_and(|r| r.0 == "leader"))
                    .count()
                    == 1
            })
        },
    )
}

/// Waits until every replica of every partition holds as much as its leader.
fn wait_replicated(servers: &[&Server]) {
    let mut views = Vec::new();
    let whole = crate::support::poll(Duration::from_secs(30), Duration::from_millis(20), || {
        views = servers.iter().map(|s| replicas(s)).collect();
        (0..8u64)
            .all(|p| {
                let Some(ends) = views
                    .iter()
                    .map(|v| v.get(&p).map(|r| r.2))
                    .collect::<Option<Vec<u64>>>()
                else {
                    return false;
                };
                ends.iter().all(|e| *e == ends[0])
            })
            .then_some(())
    });
    if whole.is_none() {
        // What each peer held, and what it last warned of: a stalled copy says why.
        let warnings: Vec<String> = servers.iter().map(|s| last_words(s, 8)).collect();
        panic!(
            "every replica holds its leader's records: not within 30s; (role, epoch, end, hwm) by partition, per peer: {views:#?}\n{}",
            warnings.join("\n")
        );
    }
}

/// The last `n` warnings and errors of `server` (and its peers' comings and goings),
/// openraft's own left out: for a failure to say why.
pub(crate) fn last_words(server: &Server, n: usize) -> String {
    let text = server.log.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains(" is down")
                || l.contains(" joined")
                || l.contains(" restarted (")
        })
        .filter(|l| !l.contains("openraft"))
        .collect();
    format!(
        "{}:\n{}",
        server.tcp,
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

#[test]
fn a_replicated_partition_loses_no_acked_record_when_its_leader_is_sigkilled() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_replicated(dir.path());

    // Which peer leads most partitions: it is the one killed.
    let leads = |s: &Server| replicas(s).values().filter(|r| r.0 == "leader").count();
    let victim = (0..3).max_by_key(|&i| leads(&servers[i])).unwrap();
    let through = (victim + 1) % 3;
    assert!(leads(&servers[victim]) > 0);

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let producer =
        crate::cluster::keyed_producer(&servers[through].tcp, &stop, &progress, Duration::from_millis(1));
    let producing = |since: u64| {
        wait_until("the producer goes on", Duration::from_secs(60), || {
            progress.load(Ordering::Acquire) >= since + 300
        });
        progress.load(Ordering::Acquire)
    };
    let before = producing(0);
    // The longest stretch without an ack, sampled every 5 ms around the kill.
    let watching = Arc::new(AtomicBool::new(true));
    let gap = {
        let (progress, watching) = (Arc::clone(&progress), Arc::clone(&watching));
        std::thread::spawn(move || {
            let (mut last, mut since, mut longest) = (
                progress.load(Ordering::Acquire),
                std::time::Instant::now(),
                Duration::ZERO,
            );
            while watching.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
                let now = progress.load(Ordering::Acquire);
                if now != last {
                    longest = longest.max(since.elapsed());
                    (last, since) = (now, std::time::Instant::now());
                }
            }
            longest
        })
    };
    servers[victim].kill9();
    assert!(
        progress.load(Ordering::Acquire) >= before,
        "the kill landed while the producer wrote"
    );
    let rest: Vec<&Server> = (0..3).filter(|i| *i != victim).map(|i| &servers[i]).collect();
    let took = wait_led_by(&rest);
    eprintln!("every partition led again within {took:?} of the SIGKILL");
    producing(progress.load(Ordering::Acquire));
    watching.store(false, Ordering::Release);
    let gap = gap.join().unwrap();
    eprintln!("the producer's longest time without an ack: {gap:?}");
    stop.store(true, Ordering::Release);
    let (acked, failed) = producer.join().unwrap();
    failures_say_why(&failed);

    // Every acked record once, read through either peer left.
    each_acked_once(&rest, &acked, failed.len());

    // The killed peer returns with its data: it follows again and catches up.
    let back = servers[victim].peer.clone().unwrap();
    let seed = rest[0].peer.clone().unwrap();
    servers[victim] = replicated_peer(dir.path(), &format!("p{}", victim + 1), &back, Some(&seed));
    wait_led(&servers.iter().collect::<Vec<_>>());
    wait_replicated(&servers.iter().collect::<Vec<_>>());
}

/// Fifty records (`acked 0` ...), one per request, to `partition` through `server`;
/// each must be acked. Their values.
pub(crate) fn fifty_acked(server: &Server, partition: u32) -> Vec<String> {
    let mut client = flowd::client::Client::connect(&server.tcp).unwrap();
    (0..50)
        .map(|i| {
            let value = format!("acked {i}");
            client
                .produce_batch("events", Some(partition), &[record(&value)])
                .unwrap();
            value
        })
        .collect()
}

#[test]
fn a_leader_cut_off_from_its_replicas_acks_nothing_and_goes_on_once_they_are_back() {
    use flowd::client::ClientError;

    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_replicated(dir.path());
    let (leader, partition) = some_leader(&servers);
    let mut client = Client::connect(&servers[leader].tcp).unwrap();
    client
        .produce_batch("events", Some(partition), &[record("before")])
        .unwrap();
    // /metrics says who leads, in which epoch, and how far the quorum holds.
    let (code, metrics) = crate::ingest::http(&servers[leader].http, "GET", "/metrics", "");
    assert_eq!(code, 200);
    let labels = format!("{{topic=\"events\",partition=\"{partition}\"}}");
    for line in [
        format!("flowd_replica_leader{labels} 1"),
        format!("flowd_replica_epoch{labels} 1"),
        format!("flowd_replica_needed{labels} 2"),
    ] {
        assert!(metrics.contains(&line), "{line} not in /metrics");
    }
    assert!(
        metrics.contains("flowd_replica_follower_durable_offset{"),
        "{metrics}"
    );

    // Both followers paused: the leader alone is a minority and acks nothing.
    let others: Vec<&Server> = (0..3).filter(|i| *i != leader).map(|i| &servers[i]).collect();
    for s in &others {
        s.signal(libc::SIGSTOP);
    }
    let cut_off = client.produce_batch("events", Some(partition), &[record("cut off")]);
    let hwm_then = replicas(&servers[leader])[&u64::from(partition)].3;
    for s in &others {
        s.signal(libc::SIGCONT);
    }
    match cut_off {
        Err(ClientError::Server { message, .. }) => assert!(
            message.contains("quorum") && message.contains("may or may not have been written")
                || message.contains("refused rather than acked below its quorum"),
            "{message}"
        ),
        other => panic!("a write acked by a leader cut off from every replica: {other:?}"),
    }
    assert_eq!(hwm_then, 1, "the high-water mark stayed where the quorum was");

    // Back together, writes are acked again (through whoever leads by then).
    wait_until("a write is acked again", Duration::from_secs(30), || {
        Client::connect(&servers[leader].tcp)
            .and_then(|mut c| c.produce_batch("events", Some(partition), &[record("after")]))
            .is_ok()
    });
    wait_led(&servers.iter().collect::<Vec<_>>());
    let values: Vec<String> = tail_when_led(&servers[leader], "events")
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(values.iter().filter(|v| *v == "before").count(), 1, "{values:?}");
    assert!(values.iter().filter(|v| *v == "after").count() >= 1, "{values:?}");
}

#[test]
fn the_new_leader_is_the_replica_holding_every_acked_record_not_a_lagging_one() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_replicated(dir.path());
    let (leader, partition) = some_leader(&servers);
    let (keeps_up, lags) = ((leader + 1) % 3, (leader + 2) % 3);

    // One follower paused: the leader and the other still make a quorum, and ack.
    servers[lags].signal(libc::SIGSTOP);
    let acked = fifty_acked(&servers[leader], partition);
    let lagging_end = replicas(&servers[keeps_up])[&u64::from(partition)].2;
    assert!(lagging_end >= 50, "the follower that kept up holds them");

    // The leader dies as the lagging follower comes back: the one that kept up leads.
    servers[leader].kill9();
    servers[lags].signal(libc::SIGCONT);
    wait_led_by(&[&servers[keeps_up], &servers[lags]]);
    let new_leader = [keeps_up, lags]
        .into_iter()
        .find(|&i| replicas(&servers[i])[&u64::from(partition)].0 == "leader")
        .unwrap();
    assert_eq!(new_leader, keeps_up, "the follower that kept up leads");
    // A new leader's high-water mark covers what its predecessor acked once a quorum of
    // its own view holds it (the follower that lagged catches up): bounded, not at once.
    let settled = std::time::Instant::now();
    let lost = loop {
        let values: Vec<String> = tail_when_led(&servers[lags], "events")
            .into_iter()
            .map(|(_, _, v)| v)
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|v| !values.contains(v)).collect();
        if lost.is_empty() || settled.elapsed() > Duration::from_secs(30) {
            break format!("{lost:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        lost, "[]",
        "acked records lost in the failover (not readable within 30 s)"
    );
}

/// A partition's epoch, replicas and learners as its leader sees them.
pub(crate) type Set = (u64, Vec<String>, Vec<String>);

/// `partition -> set` as the peer among `servers` that leads it sees it, for each
/// partition exactly one of them leads.
pub(crate) fn sets_by_leaders(servers: &[&Server]) -> BTreeMap<u64, Set> {
    let strings = |v: &Value| -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        out.sort();
        out
    };
    let mut led: BTreeMap<u64, Vec<Set>> = BTreeMap::new();
    for server in servers {
        for topic in status(server)["topics"].as_array().unwrap() {
            for p in topic["partitions"].as_array().unwrap() {
                let r = &p["replica"];
                if r["role"] == "leader" {
                    led.entry(p["partition"].as_u64().unwrap()).or_default().push((
                        r["epoch"].as_u64().unwrap(),
                        strings(&r["replicas"]),
                        strings(&r["learners"]),
                    ));
                }
            }
        }
    }
    led.into_iter()
        .filter(|(_, leaders)| leaders.len() == 1)
        .map(|(p, mut leaders)| (p, leaders.pop().unwrap()))
        .collect()
}

/// Whether each of the 8 partitions is led by exactly one of `servers`, with `n`
/// replicas, all among `servers` and following in the leader's epoch, and no move
/// under way.
pub(crate) fn settled(servers: &[&Server], n: usize) -> bool {
    let sets = sets_by_leaders(servers);
    if sets.len() != 8 {
        return false;
    }
    let views: BTreeMap<String, _> = servers
        .iter()
        .map(|s| (s.peer.clone().unwrap(), replicas(s)))
        .collect();
    sets.iter().all(|(p, (epoch, members, learners))| {
        members.len() == n
            && learners.is_empty()
            && members.iter().all(|m| {
                views
                    .get(m)
                    .and_then(|v| v.get(p))
                    .is_some_and(|r| (r.0 == "leader" || r.0 == "follower") && r.1 == *epoch)
            })
    })
}

#[test]
fn replica_sets_move_onto_a_joining_peer_and_off_a_leaving_one_losing_no_acked_record() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let [mut first, second, third] = three_replicated(dir.path());
    let seed = first.peer.clone().unwrap();
    let producer = Producing::start(&second.tcp);
    let mut seen = producer.goes_on(0);

    // A fourth peer joins: rendezvous over four peers puts it in some of the eight
    // partitions' sets; each moves once the joiner's copy caught up.
    let fourth = replicated_peer(dir.path(), "p4", "127.0.0.1:0", Some(&seed));
    let joined = fourth.peer.clone().unwrap();
    let all = [&first, &second, &third, &fourth];
    wait_until(
        "partitions moved onto the joining peer, each led once with three replicas",
        Duration::from_secs(90),
        || {
            settled(&all, 3)
                && sets_by_leaders(&all)
                    .values()
                    .any(|(_, members, _)| members.contains(&joined))
        },
    );
    let gained = sets_by_leaders(&all)
        .values()
        .filter(|(_, members, _)| members.contains(&joined))
        .count();
    eprintln!("the joining peer holds a replica of {gained} of 8 partitions");
    seen = producer.goes_on(seen);

    // The first leaves gracefully: its replicas move onto the three that stay before it
    // exits, while the producer writes.
    let left = first.peer.clone().unwrap();
    assert_eq!(
        first.terminate(Duration::from_secs(60)),
        Some(true),
        "the leaving peer exits cleanly once its replicas moved"
    );
    let rest = [&second, &third, &fourth];
    wait_until(
        "every partition led by the peers that stay, three replicas each",
        Duration::from_secs(60),
        || settled(&rest, 3),
    );
    assert!(
        sets_by_leaders(&rest)
            .values()
            .all(|(_, members, _)| !members.contains(&left)),
        "a replica set still counts the peer that left"
    );
    producer.goes_on(seen);
    let (acked, failed) = producer.finish();
    eprintln!(
        "{} records acked, {} batches refused during the moves",
        acked.len(),
        failed.len()
    );

    // The joiner's copies are whole: every replica of every partition ends where its
    // leader's does, and every acked record is there once through each peer.
    wait_replicated(&rest);
    each_acked_once(&rest, &acked, failed.len());
}

/// Every batch a producer was refused says why: not written, or may or may not be.
/// A keyed producer (`cluster::keyed_producer`, a batch every millisecond) through one
/// peer, while a test changes the cluster under it.
pub(crate) struct Producing {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Producing {
    pub(crate) fn start(tcp: &str) -> Producing {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = crate::cluster::keyed_producer(tcp, &stop, &progress, Duration::from_millis(1));
        Producing {
            stop,
            progress,
            thread,
        }
    }

    /// Waits until 300 more records than `since` are acked; returns how many are.
    pub(crate) fn goes_on(&self, since: u64) -> u64 {
        use std::sync::atomic::Ordering;
        wait_until("the producer goes on", Duration::from_secs(60), || {
            self.progress.load(Ordering::Acquire) >= since + 300
        });
        self.progress.load(Ordering::Acquire)
    }

    /// Stops it: the values acked, and why each failed batch failed (each says why).
    pub(crate) fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let (acked, failed) = self.thread.join().unwrap();
        failures_say_why(&failed);
        (acked, failed)
    }
}

pub(crate) fn failures_say_why(failed: &[String]) {
    for message in failed {
        assert!(
            message.contains("may or may not have been written")
                || message.contains("unavailable")
                || message.contains("moves"),
            "a failed batch says why: {message}"
        );
    }
}

/// Through each of `servers`, every `acked` value of "events" is there exactly once.
pub(crate) fn each_acked_once(servers: &[&Server], acked: &[String], failed: usize) {
    for server in servers {
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (_, _, value) in tail_when_led(server, "events") {
            *seen.entry(value).or_default() += 1;
        }
        let lost: Vec<_> = acked.iter().filter(|v| !seen.contains_key(*v)).take(5).collect();
        assert!(
            lost.is_empty(),
            "acked records missing through {} ({} of {}; {failed} batches failed): {lost:?}",
            server.tcp,
            acked.iter().filter(|v| !seen.contains_key(*v)).count(),
            acked.len()
        );
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "records twice through {}: {twice:?}",
            server.tcp
        );
    }
}

/// A PRODUCE frame of exactly `16 MiB` (the default `max_frame_bytes`) for `partition`:
/// keyless 100-byte values (107 bytes each on the wire), the last one longer to fill
/// it. Stored, its batch takes more than the frame (116 bytes a record and more).
fn produce_frame_of_max_frame_bytes(partition: u32, tag: &str) -> (Vec<u8>, usize) {
    const MAX_FRAME: usize = 16 << 20;
    const VALUE: usize = 100;
    let build = |count: usize, last: usize| {
        let mut records: Vec<flowd::protocol::OwnedWireRecord> = (0..count - 1)
            .map(|i| record(&format!("{tag}{i:08}{}", ".".repeat(VALUE - 9))))
            .collect();
        records.push(record(&"z".repeat(last)));
        let mut out = Vec::new();
        flowd::protocol::message::encode_produce(&mut out, 1, "events", Some(partition), &records);
        out
    };
    // The frame without records, then as many records as fit and one to fill.
    let empty = build(1, 0).len() - 7;
    let room = MAX_FRAME + 4 - empty;
    let count = room / (VALUE + 7);
    let last = room - (count - 1) * (VALUE + 7) - 7;
    let frame = build(count, last);
    assert_eq!(
        u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
        MAX_FRAME,
        "the frame's length field is max_frame_bytes exactly"
    );
    (frame, count)
}

/// The end of `partition`'s own copy on each of `servers`.
fn copy_ends(servers: &[Server], partition: u64) -> Vec<u64> {
    servers.iter().map(|s| replicas(s)[&partition].2).collect()
}

/// A client frame of exactly `max_frame_bytes`, sent to a partition's leader and
/// through a peer that does not lead it, is acked and copied whole to every replica:
/// the peer frames that carry it (the forwarded PRODUCE, the followers' REPLICA_DATA
/// with its stored batch, larger than the frame) take any batch the partition takes.
#[test]
fn a_client_frame_of_max_frame_bytes_is_acked_through_any_peer_and_copied_to_every_replica() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_replicated_of(dir.path(), "64MiB");
    let (leader, partition) = some_leader(&servers);
    let other = (leader + 1) % servers.len();
    let mut total = 0u64;
    for (through, tag) in [(leader, "l"), (other, "o")] {
        let (frame, count) = produce_frame_of_max_frame_bytes(partition, tag);
        let mut client = Client::connect(&servers[through].tcp).unwrap();
        client.set_read_timeout(Duration::from_secs(60)).unwrap();
        client.send_raw(&frame).unwrap();
        client.flush().unwrap();
        let (_, answer) = client.recv().unwrap();
        match answer {
            flowd::protocol::message::Response::Produced(groups) => {
                assert_eq!(
                    groups,
                    vec![vec![flowd::protocol::Run {
                        partition,
                        first_offset: total,
                        count: count as u32
                    }]],
                    "the whole frame acked as one run through peer {through}"
                );
            }
            other => panic!("a frame of max_frame_bytes through peer {through}: {other:?}"),
        }
        total += count as u64;
        wait_until(
            "every replica's copy holds the frame's records",
            Duration::from_secs(60),
            || copy_ends(&servers, u64::from(partition)) == vec![total; 3],
        );
    }
    // Read back through the peer that does not lead: the last record of each frame.
    let fetched = Client::connect(&servers[other].tcp)
        .unwrap()
        .fetch(
            "events",
            partition,
            flowd::protocol::FetchFrom::Offset(total - 1),
            1,
            0,
        )
        .unwrap();
    assert_eq!(fetched.records.len(), 1);
    assert_eq!(fetched.records[0].0, total - 1);
}
