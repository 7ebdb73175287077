//! Retention in a running engine (issue 20, first failure): a topic with small segments
//! and a retention bound, written far past that bound, stays within it while written
//! (at roll, by size) and loses every closed segment once they are older than
//! `max_age`; the start offset moves in `flowd status`, `/metrics` and
//! `flowd inspect`, and a named consumer that had acked nothing is told it skipped.

use std::path::Path;
use std::time::Duration;

use flowd::client::Client;
use flowd::consumer::Options;
use flowd::protocol::OwnedWireRecord;

use crate::ingest::{Server, http, run_cli};
use crate::support::{fast_tempdir, listening_dataflow};

const SEGMENT_BYTES: u64 = 256 << 10;
const MAX_BYTES: u64 = 1 << 20;
/// 8000 records of 1000 bytes: 8 MB, 32 times the segment, 8 times the bound.
const RECORDS: usize = 8000;
const VALUE_BYTES: usize = 1000;

fn dataflow(dir: &Path) -> std::path::PathBuf {
    let topic = r#"
[[topic]]
name = "events"
partitions = 1
segment_bytes = "256KiB"
retention = { max_age = "2s", max_bytes = "1MiB" }
"#;
    listening_dataflow(dir, "retention", "group", "", topic)
}

/// `(start_offset, next_offset, bytes, segments)` of partition 0 of `events`.
fn partition(client: &mut Client) -> (u64, u64, u64, u64) {
    let status = client.status(false).unwrap();
    let p = &status["topics"][0]["partitions"][0];
    let n = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("{k} in {p}"));
    (n("start_offset"), n("next_offset"), n("bytes"), n("segments"))
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("data/topics/events/0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"))
        .count()
}

/// The offsets `flowd tail` printed (`0:OFFSET<TAB>...` lines of partition 0), in order.
fn printed_offsets(out: &str) -> Vec<u64> {
    out.lines()
        .map(|line| {
            let (at, _) = line.split_once('\t').expect("partition:offset, a tab");
            at.strip_prefix("0:").expect("partition 0").parse().unwrap()
        })
        .collect()
}

#[test]
fn issue20_retention_keeps_a_topic_under_its_bound_while_written_and_after() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path());
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    // A consumer that never acks: retention must tell it what it skipped.
    let claimed = client
        .claim("events", "slow", Some(0), 1, Some(Options::default()))
        .unwrap();
    assert_eq!(claimed.partition, None, "nothing to claim yet");

    let value = vec![b'x'; VALUE_BYTES];
    for batch in 0..RECORDS / 100 {
        let records: Vec<OwnedWireRecord> = (0..100).map(|_| OwnedWireRecord::value(value.clone())).collect();
        let offsets = client.produce("events", &records).unwrap();
        assert_eq!(offsets[0], (0, (batch * 100) as u64), "dense offsets");
        // By size, at every roll: never more than the bound plus the active segment.
        let (_, _, bytes, _) = partition(&mut client);
        assert!(
            bytes <= MAX_BYTES + SEGMENT_BYTES,
            "after {} records the partition keeps {bytes} bytes, over {MAX_BYTES} + one segment",
            (batch + 1) * 100
        );
    }
    let (start, next, _, _) = partition(&mut client);
    assert_eq!(next, RECORDS as u64);
    assert!(start > 0, "size retention moved the start while writing");

    // By age: 2 s after the last write every closed segment goes, only the active stays.
    let _ = crate::support::poll(Duration::from_secs(15), Duration::from_millis(100), || {
        (partition(&mut client).3 == 1).then_some(())
    });
    let (start, _, bytes, segments) = partition(&mut client);
    assert_eq!(segments, 1, "age retention left {segments} segments");
    assert_eq!(segment_files(dir.path()), 1, "the files are gone from disk too");
    assert!(bytes <= SEGMENT_BYTES, "{bytes} bytes kept");
    let kept = RECORDS as u64 - start;
    assert!(kept * VALUE_BYTES as u64 <= SEGMENT_BYTES, "{kept} records kept");

    // The start offset in /metrics.
    let (code, metrics) = http(&server.http, "GET", "/metrics", "");
    assert_eq!(code, 200);
    let line = format!("flowd_partition_start_offset{{topic=\"events\",partition=\"0\"}} {start}");
    assert!(metrics.contains(&line), "{line} not in /metrics");
    assert!(
        metrics.contains("flowd_retention_segments_deleted_total "),
        "{metrics}"
    );

    // The consumer hears that it skipped everything before the start, exactly.
    let info = client
        .consumers(flowd::protocol::consumer::AdminAction::List, "events", "slow")
        .unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].committed, start, "the consumer goes on at the start");
    assert_eq!(
        info[0].skipped, start,
        "and counts every deleted record it never acked"
    );
    let log_line = format!("before consumer \"slow\" acked them; it goes on at {start}");
    assert!(
        server.log.wait_for(&[&log_line], Duration::from_secs(5)),
        "no log line says the consumer skipped: {}",
        server.log.text()
    );
    // Set back before the start (as a Kafka group's commit may): its lag counts the
    // records kept, never the deleted ones, in the cursor and in the status.
    assert_eq!(client.seek("events", "slow", 0, 0).unwrap(), 0);
    let info = client
        .consumers(flowd::protocol::consumer::AdminAction::List, "events", "slow")
        .unwrap();
    assert_eq!((info[0].committed, info[0].lag), (0, RECORDS as u64 - start));
    let status = client.status(false).unwrap();
    let named = &status["topics"][0]["partitions"][0]["named"][0];
    assert_eq!(named["group"], "slow", "{named}");
    assert_eq!(named["lag"], RECORDS as u64 - start, "{named}");

    // The next claim starts at the start, and what it gets is the records kept.
    let claimed = client.claim("events", "slow", Some(0), 10_000, None).unwrap();
    assert_eq!((claimed.from, claimed.to), (start, RECORDS as u64));

    // `flowd tail --offset 0` prints the records kept, each once, and says on stderr
    // which were deleted before it read them.
    let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, "events", "--offset", "0"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed_offsets(&out), (start..RECORDS as u64).collect::<Vec<_>>());
    let said = format!(
        "records 0..{start} of partition 0 of \"events\" were deleted by retention before tail read them; it goes on at {start}"
    );
    assert!(err.contains(&said), "tail did not say what it missed: {err:?}");

    // `flowd tail --group` for a group set back to 0 (as a Kafka group's commit may):
    // the records kept, each once, and what retention deleted before the group acked it.
    assert_eq!(client.seek("events", "late", 0, 0).unwrap(), 0);
    let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, "events", "--group", "late"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(printed_offsets(&out), (start..RECORDS as u64).collect::<Vec<_>>());
    let said = format!(
        "retention deleted {start} records of partition 0 of \"events\" before group \"late\" acked them; it goes on at {start}"
    );
    assert!(
        err.contains(&said),
        "tail --group did not say what it missed: {err:?}"
    );

    // flowd inspect, offline, agrees.
    drop(server);
    let (code, out, err) = run_cli(
        &["inspect", dir.path().join("data").to_str().unwrap(), "--json"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let events = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == "events")
        .expect("events in the report");
    assert_eq!(events["start_offset"].as_u64(), Some(start), "{events}");
}
