//! Stages under SIGKILL: numbered records go into topic `a` while the engine is killed,
//! each time once the watched stage is seen with part of the round's input read and more
//! to read (the test fails if a kill never lands so), and restarted. Once the restarted
//! engine caught up, each flow's output is compared with what its input makes, exactly:
//! - a copy (`map`), exactly once: each number once; `at_least_once`: none lost;
//! - `key_by`: each number once, with its key, in its key's partition;
//! - `dedupe` behind a `map` that makes every value twice: each value once;
//! - a record-time `count` window behind a `key_by`: each (key, window) once, its count
//!   exact;
//! - a busy `state` stage behind a `key_by`: each key's changelog is 1, 2, ..., n, each
//!   once, and its state n;
//! - `scatter_gather` (at least once): each number's merged answer at least once, and
//!   nothing else.
//!
//! And every acked number is in `a`. More rounds: `FLOWD_EO_CRASH_ROUNDS`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowd::client::Client;
use flowd::protocol::{FetchFrom, OwnedWireRecord};

use crate::ingest::Server;
use crate::support::fast_tempdir;

/// Record time of number n: `BASE_MS + n` (one number a millisecond).
const BASE_MS: i64 = 1_700_000_000_000;
/// Numbers from here on close windows; they are not part of any expectation.
const CLOSE: u64 = 1_000_000_000;

/// A dataflow under test: topic `a` (2 partitions) is its input.
struct Flow {
    /// Topics and stages, after `a`.
    body: String,
    /// The stage whose progress decides the kills, and the topic it reads.
    watch: (&'static str, &'static str),
    /// The output topic and its partitions.
    out: (&'static str, u32),
    /// Kill rounds unless `FLOWD_EO_CRASH_ROUNDS` says otherwise.
    rounds: u64,
    /// Numbers produced per round.
    per_round: u64,
}

fn dataflow(dir: &Path, flow: &Flow) -> PathBuf {
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
{body}"#,
        data = dir.join("data").display(),
        body = flow.body
    );
    let path = dir.join("flow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A record of the output: partition, key, value, timestamp.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Out {
    partition: u32,
    key: Option<String>,
    value: String,
    timestamp_ms: i64,
}

/// Every record of `topic`.
fn read(client: &mut Client, topic: &str, partitions: u32) -> Vec<Out> {
    let mut all = Vec::new();
    for p in 0..partitions {
        let mut next = 0;
        // Bounded: these topics hold far fewer than 10,000 fetches of records.
        for _ in 0..10_000 {
            let fetched = client
                .fetch(topic, p, FetchFrom::Offset(next), 10_000, 0)
                .unwrap();
            let Some((last, _)) = fetched.records.last() else {
                break;
            };
            next = last + 1;
            for (_, record) in fetched.records {
                all.push(Out {
                    partition: p,
                    key: record.key.map(|k| String::from_utf8(k).unwrap()),
                    value: String::from_utf8(record.value).unwrap(),
                    timestamp_ms: record.timestamp_ms.unwrap(),
                });
            }
        }
    }
    all
}

/// How many times each number is in `a`.
fn input_counts(client: &mut Client) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for record in read(client, "a", 2) {
        let n: u64 = record.value.parse().expect("a number");
        *seen.entry(n).or_default() += 1;
    }
    seen
}

fn number(n: u64) -> OwnedWireRecord {
    let mut record = OwnedWireRecord::value(n.to_string());
    record.timestamp_ms = Some(BASE_MS + n as i64);
    record
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
            let records: Vec<OwnedWireRecord> = numbers.iter().map(|&n| number(n)).collect();
            match client.produce("a", &records) {
                Ok(_) => acked.extend(numbers),
                Err(_) => break,
            }
        }
        acked
    })
}

/// Where `stage` stands in `topic`: the sum of its positions, and of its lags (records
/// it has not read yet).
fn stage_progress(client: &mut Client, topic: &str, stage: &str) -> (u64, u64) {
    let status = client.status(false).unwrap();
    let t = status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == topic)
        .unwrap();
    let mut position = 0;
    let mut lag = 0;
    for partition in t["partitions"].as_array().unwrap() {
        // Before the stage task runs, it has no reader yet.
        let Some(reader) = partition["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == stage)
        else {
            return (0, 0);
        };
        position += reader["position"].as_u64().unwrap();
        lag += reader["lag"].as_u64().unwrap();
    }
    (position, lag)
}

/// What a run under kills left: the numbers acked, how often each number is in `a`,
/// and the output once the restarted engine caught up.
struct Run {
    acked: Vec<u64>,
    input: BTreeMap<u64, u32>,
    output: Vec<Out>,
    /// The last engine, still running (for reads of state).
    server: Server,
}

impl Run {
    /// Numbers acked but not in `a`: must be none, whatever the flow.
    fn assert_no_acked_input_lost(&self) {
        let lost: Vec<_> = self
            .acked
            .iter()
            .filter(|n| !self.input.contains_key(n))
            .take(5)
            .collect();
        assert!(lost.is_empty(), "acked inputs lost: {lost:?}");
        assert!(self.input.values().all(|c| *c == 1), "an input twice in `a`");
    }

    /// The input numbers below `CLOSE`.
    fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.input.keys().copied().filter(|&n| n < CLOSE)
    }
}

/// Each round produces numbers while watching the flow's stage, and SIGKILLs the engine
/// once the stage is seen in the middle of the round's work: it read a quarter of the
/// round's numbers (or their outputs upstream; so it committed progress and state
/// several times) and has more to read. Then a last engine runs `finish` and is waited
/// for until `caught_up(input, output)` (bounded).
fn run_under_kills(
    flow: &Flow,
    finish: impl Fn(&mut Client),
    caught_up: impl Fn(&BTreeMap<u64, u32>, &[Out]) -> bool,
) -> Run {
    let rounds: u64 = crate::support::env_or("FLOWD_EO_CRASH_ROUNDS", flow.rounds);
    let (topic, stage) = flow.watch;
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), flow);
    let mut acked = Vec::new();
    let mut next = 0;
    for round in 0..rounds {
        let mut server = Server::start(&file);
        let mut observer = Client::connect(&server.tcp).unwrap();
        // Where the stage stands once it runs (bounded).
        let before = crate::support::poll(Duration::from_secs(10), Duration::from_millis(5), || {
            let (position, lag) = stage_progress(&mut observer, topic, stage);
            (position > 0 || lag > 0 || round == 0).then_some(position)
        })
        .unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let producer = produce(server.tcp.clone(), next, flow.per_round, Arc::clone(&stop));
        let deadline = Instant::now() + Duration::from_secs(30);
        let landed = loop {
            let (position, lag) = stage_progress(&mut observer, topic, stage);
            if position > before + flow.per_round / 4 && lag > 0 {
                server.kill9();
                break true;
            }
            // Once the producer is done, the stage may still be behind: go on while it is.
            if (producer.is_finished() && lag == 0) || Instant::now() > deadline {
                break false;
            }
        };
        stop.store(true, Ordering::Release);
        let round_acked = producer.join().unwrap();
        server.kill9();
        assert!(
            landed,
            "round {round}: the kill never landed while stage \"{stage}\" had work; the engine said:\n{}",
            server.log.text()
        );
        next += flow.per_round;
        acked.extend(round_acked);
    }
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    finish(&mut client);
    let input = input_counts(&mut client);
    let (out, partitions) = flow.out;
    // Until the output has caught up (bounded); the caller compares what is there.
    let mut output = Vec::new();
    let _ = crate::support::poll(Duration::from_secs(60), Duration::from_millis(100), || {
        output = read(&mut client, out, partitions);
        caught_up(&input, &output).then_some(())
    });
    Run {
        acked,
        input,
        output,
        server,
    }
}

fn copy_flow(guarantee: &str) -> Flow {
    Flow {
        body: format!(
            r#"
[[topic]]
name = "b"
partitions = 3

[[stage]]
name = "copy"
from = "a"
op = {{ map = "." }}
to = "b"
guarantee = "{guarantee}"
"#
        ),
        watch: ("a", "copy"),
        out: ("b", 3),
        rounds: 6,
        per_round: 30_000,
    }
}

/// Whether every number of `input` has its output value (`of(n)`) in `output`: an
/// at-least-once flow has caught up (its duplicates make a count say so too early).
fn covers(input: &BTreeMap<u64, u32>, output: &[Out], of: impl Fn(u64) -> String) -> bool {
    let values: std::collections::HashSet<&str> = output.iter().map(|o| o.value.as_str()).collect();
    input.keys().all(|&n| values.contains(of(n).as_str()))
}

/// How often each value is in the output.
fn value_counts(output: &[Out]) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    for record in output {
        *seen.entry(record.value.clone()).or_default() += 1;
    }
    seen
}

#[test]
fn exactly_once_stage_survives_sigkill() {
    let run = run_under_kills(
        &copy_flow("exactly_once"),
        |_| {},
        |input, output| output.len() >= input.len(),
    );
    run.assert_no_acked_input_lost();
    let output = value_counts(&run.output);
    let twice: Vec<_> = output.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "numbers copied more than once: {twice:?}");
    let want: BTreeMap<String, u32> = run.numbers().map(|n| (n.to_string(), 1)).collect();
    let missing: Vec<_> = want.keys().filter(|n| !output.contains_key(*n)).take(5).collect();
    assert!(missing.is_empty(), "inputs never copied: {missing:?}");
    assert_eq!(output, want, "each input copied exactly once, and nothing else");
}

#[test]
fn at_least_once_stage_loses_nothing_under_sigkill() {
    let run = run_under_kills(
        &copy_flow("at_least_once"),
        |_| {},
        |input, output| covers(input, output, |n| n.to_string()),
    );
    run.assert_no_acked_input_lost();
    let output = value_counts(&run.output);
    let missing: Vec<_> = run
        .numbers()
        .filter(|n| !output.contains_key(&n.to_string()))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "inputs never copied: {missing:?}");
    let stray: Vec<_> = output
        .keys()
        .filter(|v| !v.parse().is_ok_and(|n| run.input.contains_key(&n)))
        .collect();
    assert!(stray.is_empty(), "outputs of no input: {stray:?}");
}

#[test]
fn key_by_is_exactly_once_under_sigkill_and_routes_each_key_to_its_partition() {
    let flow = Flow {
        body: r#"
[[topic]]
name = "b"
partitions = 3

[[stage]]
name = "keyed"
from = "a"
op = { key_by = ". % 10 | tostring" }
to = "b"
route = { shard_by = "key" }
"#
        .into(),
        watch: ("a", "keyed"),
        out: ("b", 3),
        rounds: 3,
        per_round: 30_000,
    };
    let run = run_under_kills(&flow, |_| {}, |input, output| output.len() >= input.len());
    run.assert_no_acked_input_lost();
    let mut want: Vec<Out> = run
        .numbers()
        .map(|n| {
            let key = (n % 10).to_string();
            Out {
                partition: flowd::protocol::routing::partition_of_bytes(key.as_bytes(), 3),
                key: Some(key),
                value: n.to_string(),
                timestamp_ms: BASE_MS + n as i64,
            }
        })
        .collect();
    let mut got = run.output.clone();
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len(), "records out for records in");
    assert!(
        got == want,
        "not each number once with its key in its key's partition"
    );
}

/// A flow of two stages: `first` (name, op, route) from `a` into `k`, `second` (name, op,
/// route if any) from `k` into `b`; the kills watch the second.
fn two_stages(first: (&str, &str, &str), second: (&'static str, &str, Option<&str>)) -> Flow {
    let (name1, op1, route1) = first;
    let (name2, op2, route2) = second;
    let route2 = route2.map(|r| format!("route = {r}\n")).unwrap_or_default();
    Flow {
        body: format!(
            "\n[[topic]]\nname = \"k\"\npartitions = 2\n\n[[topic]]\nname = \"b\"\npartitions = 2\n\n\
             [[stage]]\nname = \"{name1}\"\nfrom = \"a\"\nop = {op1}\nto = \"k\"\nroute = {route1}\n\n\
             [[stage]]\nname = \"{name2}\"\nfrom = \"k\"\nop = {op2}\nto = \"b\"\n{route2}"
        ),
        watch: ("k", name2),
        out: ("b", 2),
        rounds: 3,
        per_round: 30_000,
    }
}

#[test]
fn dedupe_is_exactly_once_under_sigkill() {
    // `fold` makes each value again every 3000 numbers, several times a round, routed by
    // value so that equal values meet; `dedupe` must pass each once, across every kill
    // (its memory of what it passed must survive them).
    let flow = two_stages(
        ("fold", r#"{ map = ". % 3000" }"#, r#"{ shard_by = "value" }"#),
        (
            "dedupe",
            r#"{ dedupe = { by = "value", capacity = 100000 } }"#,
            None,
        ),
    );
    let folds = |input: &BTreeMap<u64, u32>| -> BTreeMap<String, u32> {
        input.keys().map(|n| ((n % 3000).to_string(), 1)).collect()
    };
    let run = run_under_kills(&flow, |_| {}, |input, output| output.len() >= folds(input).len());
    run.assert_no_acked_input_lost();
    let output = value_counts(&run.output);
    let twice: Vec<_> = output.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "values passed the dedupe more than once: {twice:?}"
    );
    assert_eq!(output, folds(&run.input), "each value exactly once");
}

#[test]
fn a_record_time_window_is_exactly_once_under_sigkill() {
    // Five keys, windows of one second of record time (1000 numbers): each (key, window)
    // counts 200, or less at the edges of what was acked.
    let flow = two_stages(
        (
            "keyed",
            r#"{ key_by = ". % 5 | tostring" }"#,
            r#"{ shard_by = "key" }"#,
        ),
        (
            "count",
            r#"{ count = { window = "1s", time = "record", lateness = "30s" } }"#,
            Some(r#"{ shard_by = "key" }"#),
        ),
    );
    let windows = |input: &BTreeMap<u64, u32>| -> BTreeMap<(String, i64), u64> {
        let mut counts = BTreeMap::new();
        for &n in input.keys().filter(|&&n| n < CLOSE) {
            let t = BASE_MS + n as i64;
            *counts
                .entry(((n % 5).to_string(), t - t.rem_euclid(1000)))
                .or_default() += 1;
        }
        counts
    };
    // Numbers far in the future, one per key, close every window before them.
    // Only once both stages read everything: a closing number read before a straggler of
    // the same window would make the straggler late.
    let close = |client: &mut Client| {
        crate::support::wait_until("the stages caught up", Duration::from_secs(60), || {
            // A stage with no reader yet (just restarted) reads as position 0.
            let (keyed, keyed_lag) = stage_progress(client, "a", "keyed");
            let (count, count_lag) = stage_progress(client, "k", "count");
            keyed > 0 && keyed_lag == 0 && count > 0 && count_lag == 0
        });
        let records: Vec<OwnedWireRecord> = (CLOSE..CLOSE + 5)
            .map(|n| {
                let mut record = number(n);
                record.timestamp_ms = Some(BASE_MS + 1_000_000_000);
                record
            })
            .collect();
        client.produce("a", &records).unwrap();
    };
    let run = run_under_kills(&flow, close, |input, output| output.len() >= windows(input).len());
    run.assert_no_acked_input_lost();
    let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for record in &run.output {
        let key = (record.key.clone().expect("a keyed count"), record.timestamp_ms);
        let count = record.value.parse().expect("a count");
        assert!(
            got.insert(key.clone(), count).is_none(),
            "window {key:?} emitted twice"
        );
    }
    let want = windows(&run.input);
    let wrong: Vec<_> = want
        .iter()
        .filter(|(w, n)| got.get(*w) != Some(*n))
        .map(|(w, n)| (w, n, got.get(w)))
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "(key, window): count wanted, got: {wrong:?}");
    assert_eq!(got.len(), want.len(), "windows of no input");
    let log = run.server.log.text();
    assert!(!log.contains("late:"), "records came late: {log}");
}

#[test]
fn a_busy_state_stage_changes_each_key_once_per_record_under_sigkill() {
    let flow = two_stages(
        (
            "keyed",
            r#"{ key_by = ". % 20 | tostring" }"#,
            r#"{ shard_by = "key" }"#,
        ),
        ("counter", r#"{ state = { update = "(.state // 0) + 1" } }"#, None),
    );
    let run = run_under_kills(&flow, |_| {}, |input, output| output.len() >= input.len());
    run.assert_no_acked_input_lost();
    let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
    for n in run.numbers() {
        *per_key.entry((n % 20).to_string()).or_default() += 1;
    }
    let mut changelog: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in &run.output {
        let key = record.key.clone().expect("a keyed change");
        changelog
            .entry(key)
            .or_default()
            .push(record.value.parse().expect("a count"));
    }
    let mut client = Client::connect(&run.server.tcp).unwrap();
    for (key, n) in &per_key {
        let changes = changelog.remove(key).unwrap_or_default();
        let want: Vec<u64> = (1..=*n).collect();
        if let Some(at) = (0..changes.len().max(want.len())).find(|&i| changes.get(i) != want.get(i)) {
            panic!(
                "key {key}: {} changes where 1..={n} in order; change {at} is {:?}, then {:?}",
                changes.len(),
                changes.get(at),
                &changes[(at + 1).min(changes.len())..(at + 4).min(changes.len())]
            );
        }
        let state = client.state("counter", key.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(state).unwrap(),
            n.to_string(),
            "the state of {key}"
        );
    }
    assert!(
        changelog.is_empty(),
        "changes of keys never sent: {:?}",
        changelog.keys()
    );
}

#[test]
fn scatter_gather_loses_nothing_under_sigkill() {
    let flow = Flow {
        body: r#"
[[topic]]
name = "t1"
partitions = 2

[[topic]]
name = "hits"
partitions = 2

[[topic]]
name = "b"
partitions = 2

[[stage]]
name = "sg"
from = "a"
op = { scatter_gather = { branches = ["t1"], merge = "concat", timeout = "20s", partial = "fail" } }
to = "b"

[[stage]]
name = "branch"
from = "t1"
op = { map = "." }
to = "hits"

[[stage]]
name = "answer"
from = "hits"
op = "reply"
"#
        .into(),
        watch: ("a", "sg"),
        out: ("b", 2),
        rounds: 3,
        per_round: 10_000,
    };
    let run = run_under_kills(
        &flow,
        |_| {},
        |input, output| covers(input, output, |n| format!("[{n}]")),
    );
    run.assert_no_acked_input_lost();
    let output = value_counts(&run.output);
    let missing: Vec<_> = run
        .numbers()
        .filter(|n| !output.contains_key(&format!("[{n}]")))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "inputs with no merged answer: {missing:?}");
    let stray: Vec<_> = output
        .keys()
        .filter(|v| {
            v.strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
                .is_none_or(|n: u64| !run.input.contains_key(&n))
        })
        .take(5)
        .collect();
    assert!(stray.is_empty(), "answers of no input: {stray:?}");
}
