//! Faults injected into a real `flowd run` through its fail points (src/storage/faults.rs):
//! a failed fdatasync stops the acks and the engine with an error that says what to do,
//! in each durability mode, and a restart keeps every acked record; a crash at each step
//! of a consumer's ack-and-commit (and of a dead letter) is applied once after a restart:
//! past its journal write a transaction is decided.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flowd::client::{Client, ClientError};
use flowd::consumer::{OnMax, Options};
use flowd::protocol::{FetchFrom, OwnedWireRecord};
use flowd::storage::faults::JOURNAL_TXN_POINTS;

use crate::ingest::Server;
use crate::support::{fast_tempdir, listening_dataflow};

/// Records per produce request.
const BATCH: u64 = 10;

/// Every value of `topic`'s partition `partition`, in offset order.
fn values(client: &mut Client, topic: &str, partition: u32) -> Vec<String> {
    let mut all = Vec::new();
    // Bounded: a partition of these tests holds far fewer than 10,000 batches.
    for _ in 0..10_000 {
        let fetched = client
            .fetch(topic, partition, FetchFrom::Offset(all.len() as u64), 1000, 0)
            .unwrap();
        if fetched.records.is_empty() {
            return all;
        }
        for (offset, record) in fetched.records {
            assert_eq!(offset, all.len() as u64, "dense offsets in {topic}/{partition}");
            all.push(String::from_utf8(record.value).unwrap());
        }
    }
    panic!("{topic}/{partition} never ended");
}

/// Produces batches of `in` until a produce fails: the number of records acked and the
/// error (panics if none failed within the bound).
fn produce_until_refused(client: &mut Client) -> (u64, ClientError) {
    let mut acked = 0;
    for _ in 0..5_000 {
        let records: Vec<OwnedWireRecord> = (acked..acked + BATCH)
            .map(|n| OwnedWireRecord::value(format!("{n:0>600}")))
            .collect();
        match client.produce("in", &records) {
            Ok(offsets) => {
                let sent: Vec<(u32, u64)> = (acked..acked + BATCH).map(|o| (0, o)).collect();
                assert_eq!(offsets, sent, "acked at the offsets sent");
                acked += BATCH;
            }
            Err(error) => return (acked, error),
        }
    }
    panic!("5000 batches acked: the fdatasync fault never fired");
}

/// Runs an engine whose fdatasyncs of `in` fail once `healthy` fdatasyncs (of any file)
/// passed; produces until it is refused; then checks the engine stopped with an error
/// that says what to do and that a restart holds every acked record. With `segment_bytes`
/// small the segments roll (and are sealed) as it runs; with the default, the failed
/// fdatasync is an ack's own.
fn fdatasync_fails(durability: &str, healthy: u32, segment_bytes: &str) {
    let dir = fast_tempdir();
    let topics = format!("[[topic]]\nname = \"in\"\npartitions = 1\nsegment_bytes = \"{segment_bytes}\"\n");
    let file = listening_dataflow(dir.path(), "fsync", durability, "", &topics);
    let points = format!("fdatasync={healthy}*off->return(topics/in/0)");
    let mut server = Server::start_env(&file, &[], &[("FAILPOINTS", points.as_str())]);
    let mut client = Client::connect(&server.tcp).unwrap();
    let (acked, error) = produce_until_refused(&mut client);
    assert!(
        acked > 0,
        "{durability}: the fault fired before any ack; it must land mid-stream"
    );
    // The producer hears why (or, when the engine stopped first, loses its connection).
    let said = error.to_string();
    assert!(
        said.contains("poisoned") || matches!(error, ClientError::Io { .. } | ClientError::Closed { .. }),
        "{durability}: {said}"
    );
    // No ack after the failure, on this connection or a new one.
    let after = vec![OwnedWireRecord::value("after")];
    assert!(
        client.produce("in", &after).is_err(),
        "{durability}: acked after the failure"
    );
    if let Ok(mut fresh) = Client::connect(&server.tcp) {
        assert!(
            fresh.produce("in", &after).is_err(),
            "{durability}: acked after the failure"
        );
    }
    // The engine stops with an error that names the file and what to do.
    let status = server
        .exit_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{durability}: the engine runs on after a failed fdatasync"));
    assert!(!status.success(), "{durability}: a poisoned engine exits 0");
    let log = server.log.text();
    assert!(
        log.contains("is poisoned: an fsync failed")
            && log.contains("topics/in/0")
            && log.contains("restart flowd"),
        "{durability}: {log}"
    );
    // A restart (no fault now) keeps every acked record, in order, each once.
    drop(server);
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    let kept = values(&mut client, "in", 0);
    assert!(
        kept.len() as u64 >= acked,
        "{durability}: {acked} records acked, {} kept",
        kept.len()
    );
    for (n, value) in kept.iter().enumerate() {
        assert_eq!(value, &format!("{n:0>600}"), "{durability}: record {n}");
    }
    // And it takes writes again.
    let next = kept.len() as u64;
    assert_eq!(
        client.produce("in", &after).unwrap(),
        vec![(0, next)],
        "{durability}"
    );
}

#[test]
fn a_failed_fdatasync_stops_acks_in_group_mode_and_a_restart_keeps_every_acked_record() {
    fdatasync_fails("group", 30, "64MiB");
}

#[test]
fn a_failed_fdatasync_stops_acks_in_every_mode_and_a_restart_keeps_every_acked_record() {
    fdatasync_fails("every", 30, "64MiB");
}

/// In `none` mode only seals fdatasync (each is two): the fault fires at a roll.
#[test]
fn a_failed_seal_stops_acks_in_none_mode_and_a_restart_keeps_every_acked_record() {
    fdatasync_fails("none", 12, "64KiB");
}

/// Claimed offsets of `in` partition 0 and their outputs: `out` gets each record's
/// value on both of its partitions (a transaction of two parts), `dead` the records a
/// reclaim past `max_reclaims` dead-letters.
fn txn_dataflow(dir: &Path) -> std::path::PathBuf {
    let topics = "[[topic]]\nname = \"in\"\npartitions = 1\n\n\
                  [[topic]]\nname = \"out\"\npartitions = 2\n\n\
                  [[topic]]\nname = \"dead\"\npartitions = 2\n";
    listening_dataflow(dir, "txn", "group", "", topics)
}

/// What a transaction left, read after a restart: the committed offset of the group
/// and the values in `topic` (both partitions), counted.
fn outcome(client: &mut Client, group: &str, topic: &str) -> (u64, BTreeMap<String, usize>) {
    let cursors = client
        .consumers(flowd::protocol::consumer::AdminAction::List, "in", group)
        .unwrap();
    let committed = cursors
        .iter()
        .find(|c| c.partition == 0)
        .map_or(0, |c| c.committed);
    let mut seen = BTreeMap::new();
    for p in 0..2 {
        for value in values(client, topic, p) {
            *seen.entry(value).or_default() += 1;
        }
    }
    (committed, seen)
}

/// The records an ack-and-commit of `in` 0..10 produces: each value twice, keyed to
/// both partitions of `out` (two parts).
fn outputs() -> Vec<OwnedWireRecord> {
    let mut records = Vec::new();
    for n in 0..10 {
        for key in ["k0", "k1"] {
            let mut record = OwnedWireRecord::value(format!("v{n}-{key}"));
            record.key = Some(key.as_bytes().to_vec());
            records.push(record);
        }
    }
    records
}

/// The crash landed: the engine died of SIGKILL at the fail point `point`, not of
/// anything else.
fn assert_killed_at(server: &mut Server, point: &str) {
    let status = server
        .exit_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{point}: the fail point never killed the engine"));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{point}"
    );
    let log = server.log.text();
    assert!(log.contains(&format!("fail point {point}")), "{point}: {log}");
}

#[test]
fn an_ack_and_commit_killed_at_each_step_of_its_transaction_is_applied_once_after_a_restart() {
    // The two keys go to different partitions of `out`, or the test would not have two parts.
    assert_ne!(
        flowd::protocol::routing::partition_of_bytes(b"k0", 2),
        flowd::protocol::routing::partition_of_bytes(b"k1", 2)
    );
    for point in JOURNAL_TXN_POINTS {
        let dir = fast_tempdir();
        let file = txn_dataflow(dir.path());
        let mut server = Server::start_env(&file, &[], &[("FAILPOINTS", &format!("{point}=return"))]);
        let mut client = Client::connect(&server.tcp).unwrap();
        let records: Vec<OwnedWireRecord> =
            (0..10).map(|n| OwnedWireRecord::value(format!("r{n}"))).collect();
        client.produce("in", &records).unwrap();
        let claimed = client
            .claim("in", "g", Some(0), 10, Some(Options::default()))
            .unwrap();
        assert_eq!(claimed.partition, Some(0), "{point}");
        let answer = client.ack_commit("in", "g", 0, "out", &outputs());
        assert!(
            answer.is_err(),
            "{point}: the ack-and-commit was answered: {answer:?}"
        );
        assert_killed_at(&mut server, point);
        drop(server);

        let server = Server::start(&file);
        let mut client = Client::connect(&server.tcp).unwrap();
        let (committed, seen) = outcome(&mut client, "g", "out");
        // Past the journal write the transaction is decided: the restart applies it.
        // The journal entry reached the page cache before the kill, so it always is.
        let want: BTreeMap<String, usize> = outputs()
            .iter()
            .map(|r| (String::from_utf8(r.value.clone()).unwrap(), 1))
            .collect();
        assert_eq!(committed, 10, "{point}: the ack is lost");
        assert_eq!(seen, want, "{point}: outputs not exactly once");
        drop(server);
    }
}

#[test]
fn a_dead_letter_killed_at_each_step_of_its_transaction_is_applied_once_after_a_restart() {
    for point in JOURNAL_TXN_POINTS {
        let dir = fast_tempdir();
        let file = txn_dataflow(dir.path());
        let mut server = Server::start_env(&file, &[], &[("FAILPOINTS", &format!("{point}=return"))]);
        let mut client = Client::connect(&server.tcp).unwrap();
        // Keyed records: their dead letters go to both partitions of `dead` (two parts).
        let records: Vec<OwnedWireRecord> = (0..10)
            .map(|n| {
                let mut record = OwnedWireRecord::value(format!("r{n}"));
                record.key = Some(format!("k{}", n % 2).into_bytes());
                record
            })
            .collect();
        client.produce("in", &records).unwrap();
        let options = Options {
            max_reclaims: Some(0),
            on_max: OnMax::DeadLetter("dead".into()),
            ..Options::default()
        };
        let claimed = client.claim("in", "g", Some(0), 10, Some(options)).unwrap();
        assert_eq!(claimed.partition, Some(0), "{point}");
        let answer = client.reclaim("in", "g", 0);
        assert!(answer.is_err(), "{point}: the reclaim was answered: {answer:?}");
        assert_killed_at(&mut server, point);
        drop(server);

        let server = Server::start(&file);
        let mut client = Client::connect(&server.tcp).unwrap();
        let (committed, seen) = outcome(&mut client, "g", "dead");
        let want: BTreeMap<String, usize> = (0..10).map(|n| (format!("r{n}"), 1)).collect();
        assert_eq!(committed, 10, "{point}: the dead-lettered records are not acked");
        assert_eq!(seen, want, "{point}: dead letters not exactly once");
        drop(server);
    }
}

/// A shard that panics stops the engine: `flowd run` exits non-zero, naming the shard,
/// rather than serve on without that shard's partitions (or hang, when the shard never
/// started: a container that refuses io_uring did that).
#[test]
fn a_shard_that_panics_stops_the_engine_saying_which() {
    let dir = fast_tempdir();
    let file = crate::ingest::dataflow(dir.path(), "group");
    let out = crate::support::run_bounded(
        crate::ingest::flowd()
            .arg("run")
            .arg(&file)
            .args(["--cores", "2"])
            .env("FAILPOINTS", "shard-panic=return(1)"),
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("shard 1 panicked"), "{stderr}");
}

/// A panic in a task of a running shard, with clients connected, stops the engine too,
/// saying which shard: its executor unwinds without always dropping the task that would
/// say so, and the process once served on without the shard, its clients hanging.
#[test]
fn a_shard_task_that_panics_while_serving_stops_the_engine_saying_which() {
    let dir = fast_tempdir();
    let file = crate::ingest::dataflow(dir.path(), "group");
    let mut server = Server::start_env(
        &file,
        &["--cores", "1"],
        &[("FAILPOINTS", "acker-panic=return(0)")],
    );
    // One connection that only waits, one that produces: the shard's acker panics at
    // the first batch it looks at.
    let idle = Client::connect(&server.tcp).unwrap();
    let mut client = Client::connect(&server.tcp).unwrap();
    let produced = client.produce("events", &[OwnedWireRecord::value("one")]);
    assert!(produced.is_err(), "the batch was acked: {produced:?}");
    let status = server
        .exit_within(Duration::from_secs(30))
        .expect("the engine stops after its shard panicked");
    assert!(!status.success());
    let log = server.log.text();
    assert!(
        log.contains("fail point acker-panic") && log.contains("shard 0 panicked"),
        "{log}"
    );
    drop(idle);
}

/// A batch of a running engine's log changed on disk after it was acked (bit rot, or
/// another program writing to the segment): no reader is handed a byte of it or told the
/// partition ends there. A fetch and a named consumer's claim give the records before it,
/// then are refused with the error that names the segment and what to do; a fetch of
/// stored batches hands it on as it lies, and the client refuses it by its CRC; `flowd
/// status` shows the partition UNREADABLE; the engine serves on.
#[test]
fn a_batch_damaged_on_disk_while_the_engine_runs_is_refused_to_every_reader_never_served() {
    let dir = fast_tempdir();
    let topics = "[[topic]]\nname = \"in\"\npartitions = 1\n";
    let file = listening_dataflow(dir.path(), "damage", "every", "", topics);
    let mut server = Server::start_env(&file, &[], &[]);
    let mut client = Client::connect(&server.tcp).unwrap();
    for first in [0u64, 10, 20] {
        let records: Vec<OwnedWireRecord> = (first..first + BATCH)
            .map(|n| OwnedWireRecord::value(format!("record-{n:0>4}")))
            .collect();
        client.produce("in", &records).unwrap();
    }
    assert_eq!(values(&mut client, "in", 0).len(), 30);
    // One bit of record 15's value, in the segment the engine has mapped.
    let partition = dir.path().join("data/topics/in/0");
    let segment = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment file");
    let bytes = std::fs::read(&segment).unwrap();
    let at = bytes.windows(11).position(|w| w == b"record-0015").unwrap() + 10;
    crate::support::flip_bits(&segment, at, 0x01);

    let refused = |result: Result<(), flowd::client::ClientError>, what: &str| {
        let error = result.expect_err(what);
        assert!(
            matches!(
                error,
                ClientError::Server {
                    code: flowd::protocol::ErrorCode::Damaged,
                    ..
                }
            ),
            "{what}: {error:?}"
        );
        let said = error.to_string();
        assert!(
            said.contains("damaged segment")
                && said.contains(&segment.display().to_string())
                && said.contains("holding records from offset 10")
                && said.contains("restarts"),
            "{what}: {said}"
        );
    };
    // A fetch from the start: the first batch, then (from the damage on) refused.
    let first = client.fetch("in", 0, FetchFrom::Offset(0), 1000, 0).unwrap();
    let offsets: Vec<u64> = first.records.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    for from in [10, 15] {
        refused(
            client.fetch("in", 0, FetchFrom::Offset(from), 1000, 0).map(drop),
            &format!("a fetch from {from}"),
        );
    }
    // Stored batches go as they lie: the client refuses the damaged one by its CRC.
    let said = client
        .fetch_batches("in", 0, FetchFrom::Offset(10), 1000, 0)
        .map(drop)
        .expect_err("a fetch of batches from 10")
        .to_string();
    assert!(said.contains("fails a CRC check"), "{said}");
    // A named consumer: its first claim is the first batch; acked, the next is refused.
    let claimed = client
        .claim("in", "g", Some(0), 1000, Some(Options::default()))
        .unwrap();
    assert_eq!(claimed.records.len(), 10);
    client.ack("in", "g", 0).unwrap();
    refused(
        client.claim("in", "g", Some(0), 1000, None).map(drop),
        "the next claim",
    );
    // The status says so; the engine serves on.
    let status = client.status(true).unwrap();
    let unreadable = status["topics"][0]["partitions"][0]["unreadable"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(unreadable.contains("damaged segment"), "{status}");
    let (code, text, err) = crate::ingest::run_cli(&["status", "--from", &server.tcp], "");
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("UNREADABLE: damaged segment"), "{text}");
    client.produce("in", &[OwnedWireRecord::value("after")]).unwrap();
    assert_eq!(server.terminate(Duration::from_secs(30)), Some(true));
}
