//! A fault harness in the manner of Jepsen, on one machine: peers each in a network
//! namespace of their own on a bridge (made here and removed after), a producer through
//! every peer, and faults one at a time, chosen by a seed: SIGKILL and restart,
//! SIGSTOP/SIGCONT longer than failure detection, and network cuts with nftables (one
//! peer isolated, a minority cut from the majority, one-way drops). At the end every
//! fault is healed and a checker reads every partition through every peer: every acked
//! record is there exactly once, in its acked partition and offset, offsets are dense,
//! and every peer serves the same records.
//!
//! The normal tests run two minutes with 3 peers; `scripts/nemesis.sh` runs longer ones
//! (`FLOWD_NEMESIS_PEERS`, `FLOWD_NEMESIS_SECONDS`, `FLOWD_NEMESIS_SEED`). It needs root,
//! `ip` and `nft`; without them it fails saying so (CI installs nftables). A failing run
//! prints its seed and the history of faults.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowd::client::{Client, ClientError};
use flowd::protocol::OwnedWireRecord;
use serde_json::Value;

use crate::cluster::one_at_a_time;
use crate::ingest::{Server, run_cli};
use crate::support::wait_until;

const PARTITIONS: u32 = 4;

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("the nemesis needs `{}` (root, iproute2, nftables): {e}", args[0]));
    assert!(
        out.status.success(),
        "the nemesis needs root, iproute2 and nftables: `{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces, veths and bridge of one run, removed when dropped.
struct Net {
    tag: String,
    peers: usize,
}

impl Net {
    fn new(peers: usize) -> Net {
        let tag = format!("{:x}", std::process::id() % 0xffff);
        let net = Net { tag, peers };
        let bridge = net.bridge();
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        must(&["ip", "addr", "add", "10.77.0.1/24", "dev", &bridge]);
        must(&["ip", "link", "set", &bridge, "up"]);
        for i in 0..peers {
            let (ns, outer, inner) = (
                net.ns(i),
                format!("fo{}{i}", net.tag),
                format!("fi{}{i}", net.tag),
            );
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            must(&["ip", "link", "set", &inner, "netns", &ns]);
            must(&["ip", "link", "set", &outer, "master", &bridge]);
            must(&["ip", "link", "set", &outer, "up"]);
            let addr = format!("{}/24", net.ip(i));
            must(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inner,
            ]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
            must(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            must(&[
                "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "nemesis",
            ]);
            for hook in ["input", "output"] {
                let chain = format!("{{ type filter hook {hook} priority 0 ; }}");
                must(&[
                    "ip", "netns", "exec", &ns, "nft", "add", "chain", "inet", "nemesis", hook, &chain,
                ]);
            }
        }
        net
    }

    fn bridge(&self) -> String {
        format!("fb{}", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("fn{}-{i}", self.tag)
    }

    fn ip(&self, i: usize) -> String {
        format!("10.77.0.{}", 10 + i)
    }

    /// Peer `i` drops what comes from `from` (and, both ways, what it sends there).
    fn cut(&self, i: usize, from: usize, both_ways: bool) {
        let ns = self.ns(i);
        let other = self.ip(from);
        must(&[
            "ip", "netns", "exec", &ns, "nft", "add", "rule", "inet", "nemesis", "input", "ip", "saddr",
            &other, "drop",
        ]);
        if both_ways {
            must(&[
                "ip", "netns", "exec", &ns, "nft", "add", "rule", "inet", "nemesis", "output", "ip", "daddr",
                &other, "drop",
            ]);
        }
    }

    fn heal(&self) {
        for i in 0..self.peers {
            for chain in ["input", "output"] {
                must(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.ns(i),
                    "nft",
                    "flush",
                    "chain",
                    "inet",
                    "nemesis",
                    chain,
                ]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.peers {
            sh(&["ip", "netns", "del", &self.ns(i)]);
            sh(&["ip", "link", "del", &format!("fo{}{i}", self.tag)]);
        }
        sh(&["ip", "link", "del", &self.bridge()]);
    }
}

fn dataflow(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("nemesis.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\ncores = 1\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n[cluster]\nreplicas = 3\n\n\
             [[topic]]\nname = \"events\"\npartitions = {PARTITIONS}\nsegment_bytes = \"256KiB\"\n"
        ),
    )
    .unwrap();
    file
}

/// Peer `i`, in its namespace, seeded with peer 0.
fn start(net: &Net, dir: &std::path::Path, i: usize) -> Server {
    let ip = net.ip(i);
    let data = dir.join(format!("p{i}")).display().to_string();
    let (tcp, http, peer, seed) = (
        format!("{ip}:7100"),
        format!("{ip}:7200"),
        format!("{ip}:7300"),
        format!("{}:7300", net.ip(0)),
    );
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        net.ns(i),
        env!("CARGO_BIN_EXE_flowd").into(),
        "run".into(),
        dataflow(dir).display().to_string(),
        "--data-dir".into(),
        data,
        "--listen".into(),
        tcp,
        "--http".into(),
        http,
        "--peer-listen".into(),
        peer,
    ];
    if i != 0 {
        args.extend(["--seeds".into(), seed]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_program("ip", &args)
}

/// `(partition, offset, value)` of every record, through `server`; `None` while some
/// partition has no leader that answers.
fn read_all(server: &Server) -> Option<Vec<(u32, u64, String)>> {
    let (code, out, _) = run_cli(&["tail", "--from", &server.tcp, "events", "--json"], "");
    if code != 0 {
        return None;
    }
    Some(
        out.lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                (
                    v["partition"].as_u64().unwrap() as u32,
                    v["offset"].as_u64().unwrap(),
                    v["value"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

/// Each partition's leader epoch as `server` sees it (empty if it does not answer).
fn epochs(server: &Server) -> Vec<u64> {
    let (code, out, _) = run_cli(&["status", "--from", &server.tcp, "--json"], "");
    if code != 0 {
        return Vec::new();
    }
    let status: Value = serde_json::from_str(&out).unwrap_or_default();
    status["topics"][0]["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["replica"]["epoch"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// splitmix64: the run's choices, from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

type Acked = Arc<Mutex<BTreeMap<String, (u32, u64)>>>;

/// A producer through peer `i`: one record per request to a partition in turn, until
/// `stop`; what was acked, where.
fn producer(tcp: String, i: usize, stop: Arc<AtomicBool>, acked: Acked) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut client = None;
        let mut failed = 0;
        for n in 0..10_000_000u64 {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let value = format!("p{i}-{n}");
            let partition = (n % u64::from(PARTITIONS)) as u32;
            let record = OwnedWireRecord {
                timestamp_ms: None,
                key: None,
                value: value.clone().into_bytes(),
                headers: Vec::new(),
            };
            if client.is_none() {
                client = Client::connect(&tcp).ok();
            }
            let Some(c) = client.as_mut() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            match c.produce_batch("events", Some(partition), &[record]) {
                Ok(offsets) => {
                    acked.lock().unwrap().insert(value, offsets[0]);
                }
                Err(ClientError::Server { .. }) => {
                    failed += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => {
                    failed += 1;
                    client = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        failed
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Pause,
    Isolate,
    Minority,
    OneWay,
}

fn run_nemesis(peers: usize, seconds: u64, seed: u64) {
    let _serial = one_at_a_time();
    assert!(peers >= 3, "the nemesis runs 3 peers or more");
    let net = Net::new(peers);
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = Vec::new();
    for i in 0..peers {
        servers.push(start(&net, dir.path(), i));
        if i == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let settled = |servers: &[Server]| {
        wait_until(
            "every peer reads every partition",
            Duration::from_secs(60),
            || servers.iter().all(|s| read_all(s).is_some()),
        );
    };
    settled(&servers);

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let producers: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| producer(s.tcp.clone(), i, Arc::clone(&stop), Arc::clone(&acked)))
        .collect();

    let mut rng = Rng(seed);
    let mut history: Vec<String> = Vec::new();
    let mut counts: BTreeMap<Fault, u64> = BTreeMap::new();
    let started = Instant::now();
    let faults = [
        Fault::Kill,
        Fault::Pause,
        Fault::Isolate,
        Fault::Minority,
        Fault::OneWay,
    ];
    while started.elapsed() < Duration::from_secs(seconds) {
        let fault = faults[rng.below(faults.len() as u64) as usize];
        let victim = rng.below(peers as u64) as usize;
        let hold = Duration::from_millis(4000 + rng.below(5000));
        let at = started.elapsed().as_secs_f64();
        let before = acked.lock().unwrap().len();
        match fault {
            Fault::Kill => {
                servers[victim].kill9();
                std::thread::sleep(hold);
                servers[victim] = start(&net, dir.path(), victim);
            }
            Fault::Pause => {
                // SAFETY: kill(2) on our own child's pid (the namespace's exec runs it).
                unsafe { libc::kill(servers[victim].pid() as libc::pid_t, libc::SIGSTOP) };
                std::thread::sleep(hold);
                unsafe { libc::kill(servers[victim].pid() as libc::pid_t, libc::SIGCONT) };
            }
            Fault::Isolate => {
                for other in (0..peers).filter(|o| *o != victim) {
                    net.cut(victim, other, true);
                }
                std::thread::sleep(hold);
                net.heal();
            }
            Fault::Minority => {
                // The victim and the next peer (a minority of 5) or the victim alone (of 3).
                let minority: Vec<usize> = (0..(peers - 1) / 2).map(|k| (victim + k) % peers).collect();
                for &m in &minority {
                    for other in (0..peers).filter(|o| !minority.contains(o)) {
                        net.cut(m, other, true);
                    }
                }
                std::thread::sleep(hold);
                net.heal();
            }
            Fault::OneWay => {
                let other = (victim + 1 + rng.below(peers as u64 - 1) as usize) % peers;
                net.cut(victim, other, false);
                std::thread::sleep(hold);
                net.heal();
            }
        }
        *counts.entry(fault).or_default() += 1;
        let witness = &servers[(victim + 1) % peers];
        history.push(format!(
            "{at:7.1}s {fault:?} peer {victim} for {:.1}s ({} acked before; epochs then {:?})",
            hold.as_secs_f64(),
            before,
            epochs(witness)
        ));
        // Between faults the cluster comes back: a fault at a time.
        std::thread::sleep(Duration::from_secs(2));
    }
    net.heal();
    stop.store(true, Ordering::Release);
    let failed: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    settled(&servers);

    // The checker.
    let acked = acked.lock().unwrap().clone();
    let report = || {
        format!(
            "seed {seed}, {peers} peers, {seconds} s: {} acked, {failed} refused; faults {counts:?}\nhistory:\n{}",
            acked.len(),
            history.join("\n")
        )
    };
    let mut reads = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let mut read = None;
        wait_until("a read through every peer", Duration::from_secs(60), || {
            read = read_all(server);
            read.is_some()
        });
        let read = read.unwrap();
        let mut by_value: BTreeMap<&str, Vec<(u32, u64)>> = BTreeMap::new();
        let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (p, o, v) in &read {
            by_value.entry(v.as_str()).or_default().push((*p, *o));
            offsets.entry(*p).or_default().push(*o);
        }
        for (value, at) in &acked {
            match by_value.get(value.as_str()).map(Vec::as_slice) {
                Some([once]) if once == at => {}
                Some([once]) => panic!(
                    "{value} acked at {at:?} is at {once:?} through peer {i}\n{}",
                    report()
                ),
                Some(many) if many.len() > 1 => panic!(
                    "{value} is there {} times through peer {i}\n{}",
                    many.len(),
                    report()
                ),
                _ => {
                    // Say how much is missing, where, and how each peer sees the partitions.
                    let missing: Vec<&(u32, u64)> = acked
                        .iter()
                        .filter(|(v, _)| !by_value.contains_key(v.as_str()))
                        .map(|(_, at)| at)
                        .collect();
                    let ends: Vec<(u32, u64)> = offsets.iter().map(|(p, l)| (*p, l.len() as u64)).collect();
                    let views: Vec<String> = servers
                        .iter()
                        .map(|s| run_cli(&["status", "--from", &s.tcp], "").1)
                        .collect();
                    panic!(
                        "{value}, acked at {at:?}, is lost through peer {i}; {} acked records missing, first {:?}, last {:?}; \
                         records read per partition {ends:?}\n{}\nthe peers' status:\n{}",
                        missing.len(),
                        missing.first(),
                        missing.last(),
                        report(),
                        views.join("\n")
                    )
                }
            }
        }
        for (p, list) in &offsets {
            let dense = list.iter().enumerate().all(|(k, o)| *o == list[0] + k as u64);
            assert!(
                dense && list[0] == 0,
                "partition {p} has holes through peer {i}\n{}",
                report()
            );
        }
        let mut sorted = read;
        sorted.sort();
        reads.push(sorted);
    }
    for (i, read) in reads.iter().enumerate().skip(1) {
        assert!(
            read == &reads[0],
            "peer {i} serves other records than peer 0\n{}",
            report()
        );
    }
    eprintln!("nemesis: {}", report());
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn nemesis_every_acked_record_survives_kills_pauses_and_cuts() {
    let seed = env_or("FLOWD_NEMESIS_SEED", std::process::id().into());
    run_nemesis(
        env_or("FLOWD_NEMESIS_PEERS", 3) as usize,
        env_or("FLOWD_NEMESIS_SECONDS", 120),
        seed,
    );
}
