//! No output is ever dropped silently (issue 20, second failure): a stage whose output
//! of an input does not fit its topic applies its `on_error` to that input (dead letter
//! with the reason, skip counted and logged, or disable), and every other output
//! arrives; a record as large as a client may send passes a pass-through stage; one
//! input whose outputs take more than a batch is written whole, once, across restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowd::client::Client;
use flowd::protocol::{FetchFrom, OwnedWireRecord};

use crate::ingest::{Server, http, metric};
use crate::support::{fast_tempdir, listening_dataflow, stays};

fn dataflow(dir: &Path, on_error: &str) -> PathBuf {
    let rest = format!(
        r#"
[[topic]]
name = "in"
partitions = 2

[[topic]]
name = "out"
partitions = 2

[[topic]]
name = "dead"
partitions = 1

[[stage]]
name = "double"
from = "in"
op = {{ map = "{{i: .i, a: .pad, b: .pad}}" }}
to = "out"
{on_error}

[[topic]]
name = "raw"
partitions = 1

[[topic]]
name = "passed"
partitions = 1

[[stage]]
name = "pass"
from = "raw"
op = {{ filter = "true" }}
to = "passed"
"#
    );
    listening_dataflow(dir, "outputs", "group", "", &rest)
}

/// Inputs 0..40; 7, 19 and 33 carry pads of 600 KB, 800 KB and 1 MB, the rest 10 bytes.
fn inputs() -> Vec<(u64, usize)> {
    (0..40u64)
        .map(|i| {
            let pad = match i {
                7 => 600_000,
                19 => 800_000,
                33 => 1_000_000,
                _ => 10,
            };
            (i, pad)
        })
        .collect()
}

const BIG: [u64; 3] = [7, 19, 33];

fn send_inputs(client: &mut Client) {
    for (i, pad) in inputs() {
        let value = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(pad));
        let offsets = client
            .produce("in", &[OwnedWireRecord::value(value)])
            .unwrap_or_else(|e| panic!("input {i} of {pad} bytes must be taken: {e}"));
        assert_eq!(offsets.len(), 1);
    }
}

/// A record read back: its value and headers.
type Read = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// Every record of `topic` (all partitions), read until `count` arrived (bounded).
fn read_all(client: &mut Client, topic: &str, partitions: u32, count: usize) -> Vec<Read> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<Read> = (0..partitions)
            .flat_map(|p| read_partition(client, topic, p))
            .collect();
        if all.len() >= count || Instant::now() > deadline {
            return all;
        }
        crate::support::pace(Duration::from_millis(50));
    }
}

/// Every record partition `p` of `topic` holds now, in offset order.
fn read_partition(client: &mut Client, topic: &str, p: u32) -> Vec<Read> {
    let mut records = Vec::new();
    let mut from = 0;
    loop {
        let fetched = client.fetch(topic, p, FetchFrom::Offset(from), 1000, 0).unwrap();
        if fetched.records.is_empty() {
            return records;
        }
        for (offset, r) in &fetched.records {
            from = offset + 1;
            let headers = r.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
            records.push((r.value.clone(), headers));
        }
    }
}

fn output_numbers(records: &[Read]) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for (value, _) in records {
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        *seen.entry(v["i"].as_u64().unwrap()).or_default() += 1;
    }
    seen
}

#[test]
fn issue20_an_output_too_large_for_its_topic_is_dead_lettered_with_the_reason() {
    let dir = fast_tempdir();
    let file = dataflow(
        dir.path(),
        "on_error = { then = \"dead_letter\", dead_letter = \"dead\" }",
    );
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    send_inputs(&mut client);
    let out = read_all(&mut client, "out", 2, 40 - BIG.len());
    let expected: BTreeMap<u64, usize> = (0..40).filter(|i| !BIG.contains(i)).map(|i| (i, 1)).collect();
    assert_eq!(output_numbers(&out), expected, "every small input's output, once");
    let dead = read_all(&mut client, "dead", 1, BIG.len());
    assert_eq!(dead.len(), BIG.len(), "each too-large input is dead-lettered");
    for (value, headers) in &dead {
        let v: serde_json::Value = serde_json::from_slice(value).unwrap();
        let i = v["i"].as_u64().unwrap();
        assert!(BIG.contains(&i), "dead letter of input {i}");
        let reason = headers
            .iter()
            .find(|(n, _)| n == "flowd-dead-reason")
            .expect("a reason");
        let reason = String::from_utf8_lossy(&reason.1);
        assert!(
            reason.contains("an output takes") && reason.contains("topic \"out\""),
            "{reason}"
        );
        assert!(headers.iter().any(|(n, _)| n == "flowd-dead-from"));
    }
    let (_, metrics) = http(&server.http, "GET", "/metrics", "");
    assert!(metrics.contains("flowd_dead_letters_total 3\n"), "{metrics}");
}

#[test]
fn issue20_by_default_a_too_large_output_is_skipped_counted_and_logged_and_the_rest_survives_a_restart() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "");
    let mut server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    send_inputs(&mut client);
    let out = read_all(&mut client, "out", 2, 40 - BIG.len());
    let expected: BTreeMap<u64, usize> = (0..40).filter(|i| !BIG.contains(i)).map(|i| (i, 1)).collect();
    assert_eq!(output_numbers(&out), expected);
    // One log line per skipped input (their offsets depend on the partitions they went to).
    let _ = crate::support::poll(Duration::from_secs(5), Duration::from_millis(20), || {
        (server.log.text().matches("skipped record").count() >= BIG.len()).then_some(())
    });
    let log = server.log.text();
    assert_eq!(log.matches("skipped record").count(), BIG.len(), "{log}");
    assert_eq!(
        log.matches("an output takes").count(),
        BIG.len(),
        "each says why: {log}"
    );
    let (_, metrics) = http(&server.http, "GET", "/metrics", "");
    assert!(
        metrics.contains("flowd_stage_records_failed_total 3\n"),
        "{metrics}"
    );
    // After a restart nothing is written twice and nothing new appears.
    server.kill9();
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    let again = read_all(&mut client, "out", 2, 40 - BIG.len());
    assert_eq!(output_numbers(&again), expected);
}

#[test]
fn issue20_disable_stops_the_partition_at_the_input_and_writes_nothing_after_it() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "on_error = { then = \"disable\" }");
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    // One partition of `in` for this test: every input keyed alike.
    for (i, pad) in inputs() {
        let value = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(pad));
        client
            .produce(
                "in",
                &[OwnedWireRecord {
                    key: Some(b"k".to_vec()),
                    ..OwnedWireRecord::value(value)
                }],
            )
            .unwrap();
    }
    assert!(
        server
            .log
            .wait_for(&["is disabled at record 7"], Duration::from_secs(10)),
        "{}",
        server.log.text()
    );
    let out = read_all(&mut client, "out", 2, 7);
    let expected: BTreeMap<u64, usize> = (0..7).map(|i| (i, 1)).collect();
    assert_eq!(
        output_numbers(&out),
        expected,
        "inputs before the failed one, and none after"
    );
    stays(
        "nothing written after the disabled record",
        Duration::from_millis(300),
        || output_numbers(&read_all(&mut client, "out", 2, 7)) == expected,
    );
}

#[test]
fn issue20_a_record_as_large_as_a_client_may_send_passes_a_pass_through_stage() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "");
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    // The largest value the server takes, found by asking: one byte more is refused.
    let (mut lo, mut hi) = (1_000_000usize, 1_100_000usize);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        // A JSON string, so that the filter's jq reads it.
        let value = format!("\"{}\"", "v".repeat(mid - 2));
        match client.produce("raw", &[OwnedWireRecord::value(value)]) {
            Ok(_) => lo = mid,
            Err(e) => {
                assert!(e.to_string().contains("more than the"), "{e}");
                hi = mid;
            }
        }
    }
    let taken = read_all(&mut client, "raw", 1, 1).len();
    let passed = read_all(&mut client, "passed", 1, taken);
    assert_eq!(passed.len(), taken, "every record the door took passed the stage");
    assert!(passed.iter().any(|(v, _)| v.len() == lo), "the largest one too");
}

/// The `i` of each record in partition `p` of `topic`, in offset order, read until
/// `count` arrived (bounded).
fn numbers_in_partition(client: &mut Client, topic: &str, p: u32, count: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = read_partition(client, topic, p);
        if records.len() >= count || Instant::now() > deadline {
            return records
                .iter()
                .map(|(value, _)| {
                    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
                    v["i"].as_u64().unwrap()
                })
                .collect();
        }
        crate::support::pace(Duration::from_millis(20));
    }
}

#[test]
fn a_stage_writes_each_input_partitions_outputs_to_its_own_partition_in_order() {
    // "in" and "out" have two partitions each and the stage names no route: forward.
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "");
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    let mut sent: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for i in 0..300u64 {
        let value = format!("{{\"i\":{i},\"pad\":\"x\"}}");
        let taken = client.produce("in", &[OwnedWireRecord::value(value)]).unwrap();
        sent[taken[0].0 as usize].push(i);
    }
    assert!(
        sent.iter().all(|s| s.len() > 50),
        "the door spreads its records: {sent:?}"
    );
    for p in 0..2u32 {
        let out = numbers_in_partition(&mut client, "out", p, sent[p as usize].len());
        assert_eq!(
            out, sent[p as usize],
            "partition {p} of the output holds its input partition's records, each once, in order"
        );
    }
    // Nothing more arrives past them.
    let total = read_all(&mut client, "out", 2, 300).len();
    assert_eq!(total, 300);
}

/// The headers of `record` a client gave (the engine's own, `flowd-*`, left out).
fn client_headers(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| !n.starts_with("flowd-"))
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

#[test]
fn a_records_headers_go_on_through_filter_map_exec_and_scatter_gather_and_onto_its_dead_letter_but_not_onto_a_windows_counts()
 {
    let dir = fast_tempdir();
    let rest = r#"
[[topic]]
name = "src"
partitions = 1

[[topic]]
name = "kept"
partitions = 1

[[topic]]
name = "shaped"
partitions = 1

[[topic]]
name = "dead"
partitions = 1

[[topic]]
name = "tallies"
partitions = 1

[[stage]]
name = "keep"
from = "src"
op = { filter = ".i != 5" }
to = "kept"

[[stage]]
name = "shape"
from = "kept"
op = { map = 'if .bad then error("a bad input") else {i, twice: (.i * 2)} end' }
to = "shaped"
on_error = { then = "dead_letter", dead_letter = "dead" }

[[stage]]
name = "tally"
from = "src"
op = { count = { window = "1s", time = "record" } }
to = "tallies"

[[topic]]
name = "echoed"
partitions = 1

[[topic]]
name = "asked"
partitions = 1

[[topic]]
name = "answers"
partitions = 1

[[topic]]
name = "gathered"
partitions = 1

[[stage]]
name = "fan"
from = "kept"
op = { scatter_gather = { branches = ["asked"], merge = { jq = ".[0]" }, timeout = "20s" } }
to = "gathered"

[[stage]]
name = "branch"
from = "asked"
op = { map = "{i}" }
to = "answers"

[[stage]]
name = "answer-branch"
from = "answers"
op = "reply"
"#;
    // flowd's own echo worker answers each record with itself.
    let echo = format!(
        "[[stage]]\nname = \"echo\"\nfrom = \"kept\"\nop = {{ exec = {{ command = [{:?}, \"bench\", \"echo-worker\", \"--protocol\", \"json\"] }} }}\nto = \"echoed\"\n",
        env!("CARGO_BIN_EXE_flowd")
    );
    let file = listening_dataflow(dir.path(), "headers", "group", "", &format!("{rest}{echo}"));
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    // Inputs 0..=6, a second apart in record time, each with its own trace; 3 is bad.
    for i in 0..=6i64 {
        let value = if i == 3 {
            format!("{{\"i\":{i},\"bad\":true}}")
        } else {
            format!("{{\"i\":{i}}}")
        };
        let record = OwnedWireRecord {
            timestamp_ms: Some(1_000 * i),
            key: None,
            value: value.into_bytes(),
            headers: vec![
                ("trace".into(), format!("t{i}").into_bytes()),
                ("tenant".into(), b"acme".to_vec()),
            ],
        };
        client.produce("src", &[record]).unwrap();
    }
    let traced = |i: u64| {
        vec![
            ("trace".to_owned(), format!("t{i}")),
            ("tenant".to_owned(), "acme".to_owned()),
        ]
    };
    let by_number = |records: &[Read]| -> BTreeMap<u64, Vec<(String, String)>> {
        records
            .iter()
            .map(|(value, headers)| {
                let v: serde_json::Value = serde_json::from_slice(value).unwrap();
                (v["i"].as_u64().unwrap(), client_headers(headers))
            })
            .collect()
    };
    let kept = read_all(&mut client, "kept", 1, 6);
    // Each of `numbers` once, with its own headers.
    let each = |numbers: &[u64]| -> BTreeMap<u64, _> { numbers.iter().map(|&i| (i, traced(i))).collect() };
    let kept_numbers = [0, 1, 2, 3, 4, 6];
    assert_eq!(kept.len(), 6, "the filter keeps all but input 5");
    assert_eq!(
        by_number(&kept),
        each(&kept_numbers),
        "a kept record keeps its headers"
    );
    let shaped = read_all(&mut client, "shaped", 1, 5);
    assert_eq!(shaped.len(), 5, "the map writes all but the bad input");
    assert_eq!(
        by_number(&shaped),
        each(&[0, 1, 2, 4, 6]),
        "a map's output carries its input's headers"
    );
    let echoed = read_all(&mut client, "echoed", 1, 6);
    assert_eq!(echoed.len(), 6, "the worker answers every kept record");
    assert_eq!(
        by_number(&echoed),
        each(&kept_numbers),
        "a worker's answer carries its input's headers"
    );
    let answers = read_all(&mut client, "answers", 1, 6);
    assert_eq!(
        by_number(&answers),
        each(&kept_numbers),
        "a scatter-gather's copy carries its input's headers to the branch"
    );
    let gathered = read_all(&mut client, "gathered", 1, 6);
    assert_eq!(gathered.len(), 6, "one merged answer per kept record");
    assert_eq!(
        by_number(&gathered),
        each(&kept_numbers),
        "a scatter-gather's merged answer carries its input's headers"
    );
    let dead = read_all(&mut client, "dead", 1, 1);
    assert_eq!(dead.len(), 1, "the bad input is dead-lettered");
    assert_eq!(
        by_number(&dead),
        BTreeMap::from([(3, traced(3))]),
        "with its headers"
    );
    assert!(
        dead[0].1.iter().any(|(n, _)| n == "flowd-dead-reason"),
        "and the reason: {:?}",
        dead[0].1
    );
    // Windows [0,1s) .. [5s,6s) close as input 6 comes: one count each, made of one input
    // and carrying none of its headers.
    let tallies = read_all(&mut client, "tallies", 1, 6);
    assert_eq!(tallies.len(), 6, "a count per closed window");
    for (value, headers) in &tallies {
        assert_eq!(
            client_headers(headers),
            Vec::<(String, String)>::new(),
            "a window's count carries no input's headers: {}",
            String::from_utf8_lossy(value)
        );
    }
}

/// Checks that `out` holds the stage's copy of every record of `in`, each once, in order.
fn each_copied_once(client: &mut Client, when: &str) -> usize {
    let inputs = read_partition(client, "in", 0);
    let copies = read_all(client, "out", 1, inputs.len());
    let want: Vec<String> = inputs
        .iter()
        .map(|(v, _)| {
            let v = String::from_utf8_lossy(v);
            let inner = v.trim_matches('"');
            format!("\"{inner}|{inner}\"")
        })
        .collect();
    let got: Vec<String> = copies
        .iter()
        .map(|(v, _)| String::from_utf8_lossy(v).into_owned())
        .collect();
    if got != want {
        let missing = want.iter().filter(|w| !got.contains(w)).count();
        let first_missing = want.iter().position(|w| !got.contains(w));
        panic!(
            "{when}: {} inputs, {} copies: {missing} inputs never copied (the first at input offset {first_missing:?})",
            want.len(),
            got.len()
        );
    }
    want.len()
}

#[test]
fn a_stage_whose_output_meets_a_full_disk_waits_for_room_and_writes_every_output_once() {
    let dir = fast_tempdir();
    let rest = r#"
[[topic]]
name = "in"
partitions = 1
segment_bytes = "64KiB"

[[topic]]
name = "out"
partitions = 1
segment_bytes = "64KiB"

[[stage]]
name = "twice"
from = "in"
op = { map = '. + "|" + .' }
to = "out"
"#;
    let file = listening_dataflow(dir.path(), "full", "group", "", rest);
    // The partitions on a disk of their own, small: the inputs fill it, and the stage's
    // outputs, twice their size, meet it full.
    let disk = crate::support::Tmpfs::mount(&dir.path().join("data").join("topics"), "2M");
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    let mut sent = 0u64;
    let mut refusals = 0u64;
    for _ in 0..2_000 {
        let records: Vec<OwnedWireRecord> = (sent..sent + 10)
            .map(|n| OwnedWireRecord::value(format!("\"{n:0>300}\"")))
            .collect();
        match client.produce("in", &records) {
            Ok(_) => sent += 10,
            Err(error) => {
                assert!(error.to_string().contains("is full"), "{error}");
                refusals += 1;
                break;
            }
        }
    }
    assert_eq!(refusals, 1, "the disk never filled up ({sent} records acked)");
    // The stage's outputs met the full disk too (the refusals counted are the client's
    // one and the stage's), and are not all there.
    crate::support::wait_until(
        "the stage's batch refused for the full disk",
        Duration::from_secs(30),
        || metric(&server, "flowd_no_space_refusals_total") > refusals as f64,
    );
    let copied = read_partition(&mut client, "out", 0).len();
    assert!(
        (copied as u64) < sent,
        "every one of the {sent} inputs was copied before the disk was full: the stage never met it"
    );

    // Room again: every input is copied, once, in order.
    disk.resize("64M");
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_partition(&mut client, "out", 0).len() < sent as usize && Instant::now() < deadline {
        crate::support::pace(Duration::from_millis(50));
    }
    assert_eq!(
        each_copied_once(&mut client, "room again"),
        sent as usize,
        "the inputs"
    );
    assert!(
        server.log.text().contains("waits for room"),
        "the wait is said in the log: {}",
        server.log.text()
    );

    // And across a restart (its replay starts at the stored progress): still once each.
    drop(client);
    drop(server);
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    client
        .produce("in", &[OwnedWireRecord::value("\"after\"")])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_partition(&mut client, "out", 0).len() <= sent as usize && Instant::now() < deadline {
        crate::support::pace(Duration::from_millis(50));
    }
    assert_eq!(
        each_copied_once(&mut client, "after a restart"),
        sent as usize + 1
    );
}
