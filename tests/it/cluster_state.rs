//! Engine state follows its partition: a stage runs where its input partition is led,
//! and a peer taking the lead over goes on from what the stage wrote while others led
//! it (its outputs' provenance and its changelog, replicated partitions read back
//! through their leaders).
//!
//! - The counter example on three peers, count jobs sent round-robin through them
//!   while the peer leading most of their partitions is SIGKILLed and restarted and a
//!   fourth peer joins and the one then leading most leaves: every key's changelog
//!   counts 1, 2, 3, ... with no count twice or skipped, no two answers of a key say
//!   the same count, and the final count, read through every peer, is at least the
//!   key's answered jobs and at most those plus the jobs whose fate a change left open
//!   (`FLOWD_LONG_COUNTER=20000` for the README's run over 100 keys).
//! - The word count on three peers, one SIGKILLed with half the lines sent: every peer
//!   reads what one machine counts, and each word's changelog counts up by one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowd::client::ClientError;

use crate::cluster::{
    counts, fruit_lines, one_at_a_time, peer, served_by, start, start_file, start_file_env, state_through,
    status, tail, three_peers, wait_all_alive, wait_settled,
};
use crate::cluster_jobs::{Callers, example_in, round_robin, three_of};
use crate::ingest::{Server, run_cli};
use crate::support::wait_until;

/// What one count job came to.
enum Outcome {
    Unsent,
    /// The count it was answered with.
    Counted(u64),
    /// It never reached a peer: it counted nowhere.
    Unreached,
    /// Refused, timed out, or lost with its peer: it may or may not have counted.
    Open(String),
}

/// Asserts that `key`'s changelog counts 1, 2, 3, ... with each count once (no restart,
/// nothing twice or skipped), saying where it first does not and what is around it
/// (a whole changelog does not fit a CI log's excerpt).
fn counts_up_by_one(key: &str, changes: &[u64]) {
    if let Some(at) = (0..changes.len()).find(|&i| changes[i] != i as u64 + 1) {
        let (from, to) = (at.saturating_sub(5), (at + 6).min(changes.len()));
        // Whether the count due there was lost, or written out of order.
        let due = at as u64 + 1;
        let fate = match changes.iter().skip(at).position(|&c| c == due) {
            Some(later) => format!(
                "{due} comes later, as change {}: written out of order",
                at + later + 1
            ),
            None => format!("{due} is not in it: lost"),
        };
        panic!(
            "{key}'s changelog does not count up by one, each count once: change {} of {} is {}, not {due}; {fate} (changes {} to {to}: {:?})",
            at + 1,
            changes.len(),
            changes[at],
            from + 1,
            &changes[from..to]
        );
    }
}

fn key_of(n: usize, keys: usize) -> String {
    format!("k{}", n % keys)
}

pub(crate) fn counts_through_peers_killed_joining_and_leaving_equal_their_jobs() {
    let _serial = one_at_a_time();
    let target: usize = crate::support::env_or("FLOWD_LONG_COUNTER", 2000);
    let keys = if target >= 20_000 { 100 } else { 20 };
    // The callers go on until the last change settled and jobs went through it: at
    // most this many.
    let cap = target * 10;
    let dir = tempfile::tempdir().unwrap();
    let file = example_in(dir.path(), "counter.toml");
    let mut servers = three_of(&file, dir.path(), 4);
    let seed = servers[0].peer.clone().unwrap();
    let extra = ["--peer-listen", "127.0.0.1:0", "--seeds", &seed];
    let settle = |servers: &[Server]| {
        let all: Vec<&Server> = servers.iter().collect();
        wait_all_alive(&all);
        wait_settled(&all, 4);
    };
    let leader_most = |servers: &[Server]| {
        (0..servers.len())
            .max_by_key(|&i| served_by(&servers[i], "count-requests").len())
            .unwrap()
    };
    let victim = leader_most(&servers);
    assert!(!served_by(&servers[victim], "count-requests").is_empty());
    let answered = Arc::new(AtomicU64::new(0));
    let answered_in = Arc::clone(&answered);
    let (Callers { addrs, next, stop }, callers) = round_robin(&servers, cap, move |n, client| {
        let key = key_of(n, keys);
        match client {
            Err(_) => (Outcome::Unreached, true),
            Ok(client) => {
                match client.job("count", Some(key.as_bytes()), b".", Some(Duration::from_secs(10))) {
                    Ok(answer) => {
                        answered_in.fetch_add(1, Ordering::AcqRel);
                        let text = String::from_utf8(answer.value).unwrap();
                        let count = text
                            .trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("job {n} answered {text:?}, not a count"));
                        (Outcome::Counted(count), true)
                    }
                    Err(ClientError::Server { message, .. }) => (Outcome::Open(message), true),
                    Err(other) => (Outcome::Open(other.to_string()), false),
                }
            }
        }
    });
    let answered_at_least = |count: u64| {
        wait_until("count jobs answered", Duration::from_secs(120), || {
            answered.load(Ordering::Acquire) >= count
        });
    };
    // A fifth: the peer leading most of the jobs' partitions is SIGKILLed.
    answered_at_least(target as u64 / 5);
    let killed_at = answered.load(Ordering::Acquire);
    let at = servers[victim].peer.clone().unwrap();
    let other = servers[(victim + 1) % 3].peer.clone().unwrap();
    servers[victim].kill9();
    // Two fifths: it starts again on its data.
    answered_at_least(target as u64 * 2 / 5);
    let name = format!("p{}", victim + 1);
    servers[victim] = start_file(
        &file,
        dir.path(),
        &name,
        &["--peer-listen", &at, "--seeds", &other],
    );
    *addrs[victim].write().unwrap() = servers[victim].tcp.clone();
    settle(&servers);
    // Three fifths: a fourth peer joins.
    answered_at_least(target as u64 * 3 / 5);
    servers.push(start_file(&file, dir.path(), "p4", &extra));
    settle(&servers);
    // Four fifths: the peer leading most of them leaves, the joiner taking its place
    // among the callers' three. Its stages may still send what they made before they
    // saw the lead move; those batches are not written (`stale.rs`).
    answered_at_least(target as u64 * 4 / 5);
    let leaving = leader_most(&servers[..3]);
    let joined = servers.pop().unwrap();
    *addrs[leaving].write().unwrap() = joined.tcp.clone();
    let mut left = std::mem::replace(&mut servers[leaving], joined);
    assert_eq!(
        left.terminate(Duration::from_secs(60)),
        Some(true),
        "the leave ends cleanly"
    );
    settle(&servers);
    let settled_at = next.load(Ordering::Acquire);
    answered_at_least(answered.load(Ordering::Acquire).max(target as u64) + 200);
    stop.store(true, Ordering::Release);
    let jobs = next.load(Ordering::Acquire).min(cap);
    let mut outcomes: Vec<Outcome> = (0..jobs).map(|_| Outcome::Unsent).collect();
    for caller in callers {
        for (n, outcome) in caller.join().unwrap() {
            outcomes[n] = outcome;
        }
    }
    // Jobs taken after the stop was set went unsent: the run ends before them.
    let jobs = outcomes
        .iter()
        .rposition(|o| !matches!(o, Outcome::Unsent))
        .map_or(0, |last| last + 1);
    outcomes.truncate(jobs);

    // Per key: the counts answered, and the jobs whose fate is open.
    let mut answers: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut unreached = 0;
    for (n, outcome) in outcomes.iter().enumerate() {
        let key = key_of(n, keys);
        match outcome {
            Outcome::Counted(count) => answers.entry(key).or_default().push(*count),
            Outcome::Open(why) if n < settled_at => *open.entry(key).or_default() += 1,
            Outcome::Open(why) => panic!("job {n}, sent after the failover, failed: {why}"),
            Outcome::Unreached if n < settled_at => unreached += 1,
            Outcome::Unreached => panic!("job {n}, sent after the failover, reached no peer"),
            Outcome::Unsent => panic!("job {n} was never sent"),
        }
    }
    // The changelog, once every key's last change is every peer's state of it.
    let mut changes: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    wait_until(
        "every peer's state is the changelog's",
        Duration::from_secs(60),
        || {
            changes.clear();
            for (_, key, value) in tail(&servers[0], "counts") {
                changes.entry(key).or_default().push(value.parse().unwrap());
            }
            (0..keys).all(|k| {
                let key = format!("k{k}");
                let last = changes.get(&key).and_then(|c| c.last()).map(u64::to_string);
                servers.iter().all(|s| state_through(s, "counter", &key) == last)
            })
        },
    );
    let mut total = 0;
    for k in 0..keys {
        let key = format!("k{k}");
        let changes = changes.get(&key).cloned().unwrap_or_default();
        let final_count = changes.len() as u64;
        counts_up_by_one(&key, &changes);
        let mut counted = answers.get(&key).cloned().unwrap_or_default();
        counted.sort_unstable();
        let distinct = counted.windows(2).all(|w| w[0] < w[1]);
        assert!(
            distinct,
            "two jobs of {key} were answered the same count: {counted:?}"
        );
        let (acked, unsure) = (counted.len() as u64, open.get(&key).copied().unwrap_or(0));
        assert!(
            acked <= final_count && final_count <= acked + unsure,
            "{key} counted {final_count}: {acked} jobs answered and {unsure} left open"
        );
        total += final_count;
    }
    let answered = answered.load(Ordering::Acquire);
    eprintln!(
        "counter through three peers (one SIGKILLed and back, one joining, one leaving): {jobs} jobs over {keys} keys, {answered} answered ({killed_at} before the kill), {} left open, {unreached} reached no peer; counted {total}; the last {} sent after the last change all answered",
        open.values().sum::<u64>(),
        jobs - settled_at
    );
}

/// The word count example on three peers: half the lines sent through one peer, the
/// peer leading most of the lines' and words' partitions SIGKILLed at once (its stages
/// still splitting and counting), the other half sent through the two left, the killed
/// peer started again: every peer reads the counts one machine counts, and each word's
/// changelog counts up by one (no count restarts, none is written twice).
pub(crate) fn a_word_count_on_three_peers_with_one_sigkilled_counts_what_it_counts_on_one() {
    let _serial = one_at_a_time();
    let (lines, words) = fruit_lines(6000, &["quince", "grape"]);
    let dir = tempfile::tempdir().unwrap();
    let send = |server: &Server, part: &[String]| {
        let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "lines"], &(part.join("\n") + "\n"));
        assert_eq!(code, 0, "{err}");
    };
    let alone = {
        let one = start(dir.path(), "one", &[]);
        send(&one, &lines);
        counts(&one, words)
    };

    let mut servers = three_peers(dir.path());
    wait_settled(&servers.iter().collect::<Vec<_>>(), 4);
    let leads = |s: &Server| served_by(s, "lines").len() + served_by(s, "words").len();
    let victim = (0..3).max_by_key(|&i| leads(&servers[i])).unwrap();
    assert!(leads(&servers[victim]) > 0);
    let (a, b) = ((victim + 1) % 3, (victim + 2) % 3);
    let (front, back) = lines.split_at(lines.len() / 2);
    send(&servers[a], front);
    let at = servers[victim].peer.clone().unwrap();
    servers[victim].kill9();
    wait_settled(&[&servers[a], &servers[b]], 4);
    send(&servers[b], back);
    let seed = servers[a].peer.clone().unwrap();
    servers[victim] = peer(dir.path(), &format!("p{}", victim + 1), &at, Some(&seed));
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, 4);
    for server in &servers {
        counts_become(server, &alone);
    }
    let mut changes: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, word, count) in crate::replication::tail_when_led(&servers[victim], "counts") {
        changes.entry(word).or_default().push(count.parse().unwrap());
    }
    for (word, changes) in &changes {
        counts_up_by_one(word, changes);
    }
    eprintln!(
        "word count on three peers, one SIGKILLed after the first half: {words} words counted as on one machine"
    );
}

/// Waits until the counts read through `server` are `alone`'s (what one machine counted),
/// checking on each read that no word's count is above its count there: a count read
/// that is later undone, or counted twice, fails at once; one still short only waits.
fn counts_become(server: &Server, alone: &BTreeMap<String, u64>) {
    let mut last = BTreeMap::new();
    let same = crate::support::poll(Duration::from_secs(60), Duration::from_millis(50), || {
        // Right after a kill a partition's new leader may ask readers to come back
        // once its followers confirmed what it holds: such a read waits for it.
        last = crate::replication::tail_when_led(server, "counts")
            .into_iter()
            .map(|(_, word, count)| (word, count.parse::<u64>().unwrap()))
            .collect();
        for (word, count) in &last {
            let want = alone.get(word).copied().unwrap_or(0);
            assert!(
                *count <= want,
                "{word} read {count} through {}, above the {want} one machine counts",
                server.tcp
            );
        }
        (last == *alone).then_some(())
    });
    if same.is_none() {
        let short: Vec<String> = alone
            .iter()
            .filter(|(word, want)| last.get(*word) != Some(want))
            .map(|(word, want)| format!("{word} {:?} of {want}", last.get(word)))
            .collect();
        panic!(
            "the counts read through {} are not one machine's within 60s: {}",
            server.tcp,
            short.join(", ")
        );
    }
}

/// `flowd_stale_lead_batches_total` of `server`.
fn stale_lead_batches(server: &Server) -> u64 {
    let (_, metrics) = crate::ingest::http(&server.http, "GET", "/metrics", "");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("flowd_stale_lead_batches_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

pub(crate) fn a_leaving_leaders_late_stage_batch_is_not_written_after_its_successors() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broadcast.toml");
    std::fs::write(
        &file,
        "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n[cluster]\nreplicas = 3\n\n\
         [[topic]]\nname = \"in\"\npartitions = 4\n\n[[topic]]\nname = \"out\"\npartitions = 4\n\n\
         [[stage]]\nname = \"copy\"\nfrom = \"in\"\nop = { filter = \"true\" }\nto = \"out\"\nroute = \"broadcast\"\n",
    )
    .unwrap();
    // Every peer holds the first stage batch another peer sends it for 8 s, as a slow
    // link would: the one the input's leader sends before it leaves.
    let stall = [("FAILPOINTS", "peer-produce-led=1*sleep(8000)")];
    let first = start_file_env(&file, dir.path(), "p1", &["--peer-listen", "127.0.0.1:0"], &stall);
    let seed = first.peer.clone().unwrap();
    let extra = ["--peer-listen", "127.0.0.1:0", "--seeds", &seed];
    let mut servers = vec![
        first,
        start_file_env(&file, dir.path(), "p2", &extra, &stall),
        start_file_env(&file, dir.path(), "p3", &extra, &stall),
    ];
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, 4);
    // A peer leading an input partition and not every output partition: its stage's
    // batch to another peer's output partition is held there.
    let (leaving, partition) = (0..3)
        .find_map(|i| {
            let outs = served_by(&servers[i], "out").len();
            served_by(&servers[i], "in")
                .first()
                .filter(|_| outs < 4)
                .map(|p| (i, *p))
        })
        .expect("a peer leads an input partition and not all four output ones");
    let mut client = flowd::client::Client::connect(&servers[leaving].tcp).unwrap();
    client
        .produce_batch("in", Some(partition), &[crate::replication::record("1")])
        .unwrap();
    wait_until(
        "the leader's stage read the record",
        Duration::from_secs(30),
        || {
            status(&servers[leaving])["topics"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "in")
                .flat_map(|t| t["partitions"].as_array().unwrap())
                .filter(|p| p["partition"] == partition)
                .flat_map(|p| p["consumers"].as_array().unwrap())
                .any(|c| c["name"] == "copy" && c["position"] == 1)
        },
    );
    // It leaves while that batch is held: the input's next leader writes the record's
    // copies, then the held batch comes.
    let mut left = servers.remove(leaving);
    assert_eq!(
        left.terminate(Duration::from_secs(60)),
        Some(true),
        "the leave ends cleanly"
    );
    let all: Vec<&Server> = servers.iter().collect();
    wait_settled(&all, 4);
    wait_until(
        "the held batch came and was not written",
        Duration::from_secs(30),
        || servers.iter().map(stale_lead_batches).sum::<u64>() >= 1,
    );
    let mut copies: Vec<(u64, String)> = tail(&servers[0], "out")
        .into_iter()
        .map(|(p, _, value)| (p, value))
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        (0..4).map(|p| (p, "1".to_string())).collect::<Vec<_>>(),
        "one copy of the record in each output partition, none twice"
    );
}

/// A stage's batch written on the peer that runs the stage and leads the output
/// partition, which no quorum holds within `QUORUM_TIMEOUT` (its follower stalls 12 s
/// before it appends): the batch goes to the partition's leader again, marked
/// uncertain, found written there and acked once the follower holds it. The stage's
/// progress is stored past it, and the record is written once. (Its ack was dropped
/// before: the stage never stored progress again.)
pub(crate) fn a_stage_batch_no_quorum_held_in_time_is_sent_again_and_written_once() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.toml");
    std::fs::write(
        &file,
        "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n[cluster]\nreplicas = 2\n\n\
         [[topic]]\nname = \"in\"\npartitions = 4\n\n[[topic]]\nname = \"out\"\npartitions = 4\n\n\
         [[stage]]\nname = \"copy\"\nfrom = \"in\"\nop = { filter = \"true\" }\nto = \"out\"\nroute = { shard_by = \"key\" }\n",
    )
    .unwrap();
    let stall = [("FAILPOINTS", "replica-append-out=1*sleep(12000)")];
    let first = start_file_env(&file, dir.path(), "p1", &["--peer-listen", "127.0.0.1:0"], &stall);
    let seed = first.peer.clone().unwrap();
    let servers = [
        first,
        start_file_env(
            &file,
            dir.path(),
            "p2",
            &["--peer-listen", "127.0.0.1:0", "--seeds", &seed],
            &stall,
        ),
    ];
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, 4);
    // A peer leading an input partition and an output partition: a key routed there.
    let (at, partition, key) = (0..2)
        .find_map(|i| {
            let ins = served_by(&servers[i], "in");
            let outs = served_by(&servers[i], "out");
            let key = (0..1000)
                .map(|k| format!("k{k}"))
                .find(|k| outs.contains(&flowd::protocol::routing::partition_of_bytes(k.as_bytes(), 4)))?;
            ins.first().map(|p| (i, *p, key))
        })
        .expect("a peer leads a partition of each topic");
    let mut client = flowd::client::Client::connect(&servers[at].tcp).unwrap();
    let mut record = crate::replication::record("1");
    record.key = Some(key.into_bytes());
    client.produce_batch("in", Some(partition), &[record]).unwrap();
    let progress = dir
        .path()
        .join(format!("p{}", at + 1))
        .join("progress")
        .join("copy")
        .join(format!("in-{partition}.json"));
    let stored_next = || {
        std::fs::read(&progress)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|p| p["next"].as_u64())
            .unwrap_or(0)
    };
    wait_until(
        "the stage stored its progress past the record",
        Duration::from_secs(30),
        || stored_next() >= 1,
    );
    assert!(
        servers[at].log.wait_for(
            &["goes to its next leader, written there only if it is not yet: a quorum of its replicas did not hold it in time"],
            Duration::from_secs(30)
        ),
        "the stage's batch went to its leader again: {}",
        servers[at].log.text()
    );
    let copies: Vec<String> = tail(&servers[at], "out")
        .into_iter()
        .map(|(_, _, value)| value)
        .collect();
    assert_eq!(copies, ["1"], "the record is written once");
}

mod replicated {
    #[test]
    fn a_stage_batch_no_quorum_held_in_time_is_sent_again_and_written_once() {
        super::a_stage_batch_no_quorum_held_in_time_is_sent_again_and_written_once();
    }

    #[test]
    fn a_leaving_leaders_late_stage_batch_is_not_written_after_its_successors() {
        super::a_leaving_leaders_late_stage_batch_is_not_written_after_its_successors();
    }

    #[test]
    fn counts_through_peers_killed_joining_and_leaving_equal_their_jobs() {
        super::counts_through_peers_killed_joining_and_leaving_equal_their_jobs();
    }

    #[test]
    fn a_word_count_on_three_peers_with_one_sigkilled_counts_what_it_counts_on_one() {
        super::a_word_count_on_three_peers_with_one_sigkilled_counts_what_it_counts_on_one();
    }
}
