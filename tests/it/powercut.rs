//! Power cuts, simulated (issue 20): a real engine runs on a recorded data directory (a
//! client producing with acks, a consumer claiming and acking across journal
//! compaction, a stage copying `in` to `out` with progress commits); then, for each
//! seed, the disk a power cut at a seeded point of that run would have left is built
//! (`flowd::storage::powercut`), and a fresh engine opens it. After every cut:
//! - the data dir opens;
//! - every record acked before the cut is there, unchanged, at its offset;
//! - every consumer ack before the cut is kept, and no cursor is ahead of its data;
//! - once the stage catches up, every input's output is in `out` exactly once.
//!
//! `FLOWD_POWERCUT_SEEDS` sets how many cuts (default 100); `scripts/powercut.sh N` runs
//! N. A failing cut prints how to replay it (its trace is kept on disk).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowd::client::Client;
use flowd::consumer::Options;
use flowd::protocol::consumer::AdminAction;
use flowd::protocol::{FetchFrom, OwnedWireRecord};
use flowd::storage::powercut::{Op, Recording, Trace};

/// Cuts per recorded run: a run takes seconds, a cut a fraction of one.
const CUTS_PER_RUN: u64 = 50;
const PARTITIONS: u32 = 2;

fn dataflow(data: &Path, durability: &str) -> String {
    format!(
        r#"
[engine]
data_dir = "{data}"
durability = "{durability}"
cores = 2
commit_interval = "20ms"

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
max_frame_bytes = "64KiB"

[[topic]]
name = "in"
partitions = {PARTITIONS}
segment_bytes = "64KiB"

[[topic]]
name = "out"
partitions = {PARTITIONS}
segment_bytes = "64KiB"

[[stage]]
name = "copy"
from = "in"
op = {{ map = "." }}
to = "out"
"#,
        data = data.display()
    )
}

/// An engine on `data` with its doors open, and the address of its TCP door.
fn start(data: &Path, durability: &str) -> Result<(flowd::runtime::Engine, String), String> {
    let path = data.with_extension("toml");
    let spec = flowd::config::parse(&path, &dataflow(data, durability)).map_err(|e| e.to_string())?;
    let (engine, bound) =
        flowd::server::start(spec, None).map_err(|e| format!("the engine does not start: {e}"))?;
    Ok((engine, bound.tcp.expect("the dataflow listens").to_string()))
}

fn stop(engine: flowd::runtime::Engine) {
    engine.stop();
    let _ = engine.wait(&AtomicBool::new(true));
}

/// What the recorded run saw acked, each with where the trace stood when it saw it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Acked {
    /// `(trace position, partition, offset, value)` of each record acked to the producer.
    records: Vec<(usize, u32, u64, String)>,
    /// `(trace position, consumer, partition, committed)` after each consumer ack.
    commits: Vec<(usize, String, u32, u64)>,
}

/// Runs the workload on a recorded data dir and returns its trace and acks.
fn record(dir: &Path, durability: &str, run: u64) -> (Trace, Acked) {
    let data = dir.join("data");
    let recording = Arc::new(Recording::start(&data));
    let (engine, addr) = start(&data, durability).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (addr, recording, done) = (addr.clone(), Arc::clone(&recording), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut client = Client::connect(&addr).unwrap();
            let mut commits = Vec::new();
            // Bounded: the producer finishes in seconds and sets `done`. Consumer "early"
            // acks a few times at the start and never again: only a snapshot keeps it
            // once the journal segments it was written to are compacted away.
            let mut early_acks = 0;
            let mut idle_rounds = 0;
            for round in 0..100_000u64 {
                // Until every record is acked: two rounds in a row with nothing to claim
                // once the producer is done.
                if done.load(Ordering::Acquire) && idle_rounds >= 2 {
                    break;
                }
                let p = (round % u64::from(PARTITIONS)) as u32;
                let group = if early_acks < 4 { "early" } else { "g" };
                let claimed = client
                    .claim("in", group, Some(p), 1, Some(Options::default()))
                    .unwrap();
                if claimed.partition.is_some() {
                    let (_, to) = client.ack("in", group, p).unwrap();
                    commits.push((recording.len(), group.to_string(), p, to));
                    early_acks += usize::from(group == "early");
                    idle_rounds = 0;
                } else {
                    idle_rounds += 1;
                    crate::support::pace(Duration::from_millis(2));
                }
            }
            commits
        })
    };
    let mut acked = Acked::default();
    let mut client = Client::connect(&addr).unwrap();
    for batch in 0..150u64 {
        let records: Vec<OwnedWireRecord> = (0..8)
            .map(|i| OwnedWireRecord::value(format!("{{\"run\":{run},\"n\":{}}}", batch * 8 + i)))
            .collect();
        let offsets = client.produce("in", &records).unwrap();
        let at = recording.len();
        for ((p, o), record) in offsets.into_iter().zip(records) {
            acked
                .records
                .push((at, p, o, String::from_utf8(record.value).unwrap()));
        }
    }
    done.store(true, Ordering::Release);
    acked.commits = consumer.join().unwrap();
    stop(engine);
    let recording = Arc::try_unwrap(recording).unwrap_or_else(|_| panic!("the recording is still shared"));
    (recording.finish(), acked)
}

/// Every record of `topic` the engine on `addr` serves, by partition.
fn read_all(client: &mut Client, topic: &str) -> Vec<Vec<(u64, Vec<u8>)>> {
    (0..PARTITIONS)
        .map(|p| {
            let mut records = Vec::new();
            let mut from = 0;
            for _ in 0..10_000 {
                let fetched = client.fetch(topic, p, FetchFrom::Offset(from), 1000, 0).unwrap();
                if fetched.records.is_empty() {
                    break;
                }
                for (offset, r) in fetched.records {
                    from = offset + 1;
                    records.push((offset, r.value));
                }
            }
            records
        })
        .collect()
}

/// Builds the cut and checks every promise on it; why not, if one breaks.
fn check_cut(trace: &Trace, acked: &Acked, at: usize, seed: u64, image: &Path) -> Result<(), String> {
    trace
        .cut(at, seed, image)
        .map_err(|e| format!("cannot build the cut: {e}"))?;
    let (engine, addr) = start(image, "group")?;
    let checked = check_engine(&addr, acked, at);
    stop(engine);
    checked
}

fn check_engine(addr: &str, acked: &Acked, at: usize) -> Result<(), String> {
    let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
    let inputs = read_all(&mut client, "in");
    // Every record acked before the cut, unchanged, at its offset.
    for (pos, p, offset, value) in acked.records.iter().filter(|r| r.0 <= at) {
        let found = inputs[*p as usize].iter().find(|(o, _)| o == offset);
        match found {
            Some((_, v)) if v == value.as_bytes() => {}
            Some((_, v)) => {
                return Err(format!(
                    "record {p}:{offset} (acked at {pos}) changed: {:?} instead of {value:?}",
                    String::from_utf8_lossy(v)
                ));
            }
            None => return Err(format!("record {p}:{offset} (acked at {pos}) is lost")),
        }
    }
    // Every consumer ack before the cut kept; no cursor past its partition's end.
    for group in ["g", "early"] {
        check_consumer(&mut client, acked, at, group, &inputs)?;
    }
    // The stage catches up: every input's output exactly once.
    let want: BTreeMap<Vec<u8>, usize> = inputs.iter().flatten().fold(BTreeMap::new(), |mut m, (_, v)| {
        *m.entry(v.clone()).or_default() += 1;
        m
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outputs = read_all(&mut client, "out");
        let got: BTreeMap<Vec<u8>, usize> =
            outputs.iter().flatten().fold(BTreeMap::new(), |mut m, (_, v)| {
                *m.entry(v.clone()).or_default() += 1;
                m
            });
        if got == want {
            return Ok(());
        }
        let text = |v: &Vec<u8>| String::from_utf8_lossy(v).into_owned();
        let twice: Vec<_> = got
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(3)
            .map(|(v, n)| (text(v), *n))
            .collect();
        if !twice.is_empty() {
            return Err(format!("outputs written more than once: {twice:?}"));
        }
        let stray: Vec<_> = got
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(3)
            .map(text)
            .collect();
        if !stray.is_empty() {
            return Err(format!("outputs of no input: {stray:?}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the stage wrote {} of {} outputs within 20 s",
                got.values().sum::<usize>(),
                want.values().sum::<usize>()
            ));
        }
        crate::support::pace(Duration::from_millis(50));
    }
}

fn check_consumer(
    client: &mut Client,
    acked: &Acked,
    at: usize,
    group: &str,
    inputs: &[Vec<(u64, Vec<u8>)>],
) -> Result<(), String> {
    let commits: Vec<&(usize, String, u32, u64)> = acked
        .commits
        .iter()
        .filter(|c| c.0 <= at && c.1 == group)
        .collect();
    let cursors = match client.consumers(AdminAction::List, "in", group) {
        Ok(cursors) => cursors,
        // A consumer whose creation the cut took back, having acked nothing before it.
        Err(e) if commits.is_empty() && e.to_string().contains("no consumer") => Vec::new(),
        Err(e) => return Err(format!("consumer {group} cannot be listed: {e}")),
    };
    for p in 0..PARTITIONS {
        let kept = commits.iter().filter(|c| c.2 == p).map(|c| c.3).max();
        let cursor = cursors.iter().find(|c| c.partition == p);
        let end = inputs[p as usize].last().map_or(0, |(o, _)| o + 1);
        match (kept, cursor) {
            (Some(kept), None) => {
                return Err(format!(
                    "consumer {group} on partition {p} is lost (it had acked to {kept})"
                ));
            }
            (Some(kept), Some(c)) if c.committed < kept => {
                return Err(format!(
                    "consumer {group} on partition {p} is at {} but had acked to {kept}",
                    c.committed
                ));
            }
            _ => {}
        }
        if let Some(c) = cursor
            && c.committed > end
        {
            return Err(format!(
                "consumer {group} on partition {p} is at {}, past its data (which ends at {end})",
                c.committed
            ));
        }
    }
    Ok(())
}

/// Where seed `seed` cuts a trace: half the seeds anywhere (the ends included), a
/// quarter right after a change to names (a file created, renamed or removed, a
/// directory synced), where ordering mistakes between data and names show, and a quarter
/// right after a deletion (retention, journal compaction, an old generation removed) or
/// the directory sync that follows it, where deleting too early loses data for good.
fn crash_point(seed: u64, trace: &Trace) -> usize {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 29;
    let after = |wanted: &dyn Fn(usize, &Op) -> bool| -> Vec<usize> {
        trace
            .ops
            .iter()
            .enumerate()
            .filter(|(at, op)| wanted(*at, op))
            .map(|(at, _)| at + 1)
            .collect()
    };
    let is_deletion = |op: &Op| matches!(op, Op::Remove { .. } | Op::RemoveTree { .. });
    let points = match seed % 4 {
        1 => after(&|_, op| {
            matches!(
                op,
                Op::Create { .. }
                    | Op::Rename { .. }
                    | Op::Remove { .. }
                    | Op::RemoveTree { .. }
                    | Op::SyncDir { .. }
            )
        }),
        3 => after(&|at, op| {
            is_deletion(op) || (matches!(op, Op::SyncDir { .. }) && at > 0 && is_deletion(&trace.ops[at - 1]))
        }),
        _ => Vec::new(),
    };
    if points.is_empty() {
        return (x % (trace.ops.len() as u64 + 1)) as usize;
    }
    points[(x % points.len() as u64) as usize]
}

fn seeds() -> u64 {
    crate::support::env_or("FLOWD_POWERCUT_SEEDS", 100)
}

#[test]
fn issue20_power_cuts_lose_no_acked_record_no_cursor_and_duplicate_no_stage_output() {
    let total = seeds();
    let keep = tempfile::Builder::new()
        .prefix("flowd-powercut-")
        .tempdir()
        .unwrap();
    let mut failures = Vec::new();
    let mut cuts = 0;
    let runs = total.div_ceil(CUTS_PER_RUN);
    for run in 0..runs {
        // Every other run with `every`: its acks come one fsync at a time.
        let durability = if run % 2 == 0 { "group" } else { "every" };
        let dir = keep.path().join(format!("run-{run}"));
        let (trace, acked) = record(&dir, durability, run);
        assert!(
            acked.records.len() == 1200 && !acked.commits.is_empty(),
            "the run did its work"
        );
        // The consumer journal was compacted at least once (a snapshot, then its older
        // segments deleted): the cuts cover that too.
        let compacted = trace
            .ops
            .iter()
            .any(|op| matches!(op, Op::Remove { path } if path.to_string_lossy().contains("/consumers/")));
        assert!(compacted, "the run never compacted the consumer journal");
        let first = run * CUTS_PER_RUN;
        for seed in first..(first + CUTS_PER_RUN).min(total) {
            let at = crash_point(seed, &trace);
            let image = dir.join(format!("cut-{seed}"));
            cuts += 1;
            if let Err(why) = check_cut(&trace, &acked, at, seed, &image) {
                let saved = dir.join("trace.bin");
                std::fs::write(&saved, trace.encode()).unwrap();
                std::fs::write(dir.join("acked.json"), serde_json::to_vec(&acked).unwrap()).unwrap();
                failures.push(format!(
                    "seed {seed} ({durability}, cut after {at} of {} operations): {why}\n  replay: \
                     FLOWD_POWERCUT_REPLAY={} FLOWD_POWERCUT_SEED={seed} FLOWD_POWERCUT_AT={at} \
                     cargo test --test it powercut_replay -- --ignored --nocapture",
                    trace.ops.len(),
                    dir.display()
                ));
            } else {
                let _ = std::fs::remove_dir_all(&image);
            }
        }
    }
    if !failures.is_empty() {
        // Keep what replays them.
        let kept = keep.keep();
        panic!(
            "{} of {cuts} power cuts broke a promise (runs kept in {}):\n{}",
            failures.len(),
            kept.display(),
            failures.join("\n")
        );
    }
    eprintln!("{cuts} power cuts: 0 acked records lost, 0 cursors lost or ahead, 0 duplicate stage outputs");
}

/// Replays one failing cut kept by the test above (see its failure message).
#[test]
#[ignore = "replays a kept failing cut: set FLOWD_POWERCUT_REPLAY, _SEED and _AT as its failure says"]
fn powercut_replay() {
    let dir = PathBuf::from(std::env::var("FLOWD_POWERCUT_REPLAY").expect("FLOWD_POWERCUT_REPLAY"));
    let seed: u64 = std::env::var("FLOWD_POWERCUT_SEED").unwrap().parse().unwrap();
    let at: usize = std::env::var("FLOWD_POWERCUT_AT").unwrap().parse().unwrap();
    let trace = Trace::decode(&std::fs::read(dir.join("trace.bin")).unwrap()).unwrap();
    let acked: Acked = serde_json::from_slice(&std::fs::read(dir.join("acked.json")).unwrap()).unwrap();
    let image = dir.join(format!("replay-{seed}"));
    let _ = std::fs::remove_dir_all(&image);
    check_cut(&trace, &acked, at, seed, &image).unwrap();
}

/// The simulator starts hundreds of engines in one process: each stopped engine must let
/// go of its files, locks and threads (glommio keeps one eventfd per executor of its own).
#[test]
fn an_engine_stopped_in_process_lets_go_of_its_files_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // This process's descriptors of files in the data dir (other tests run beside this
    // one and open files of their own).
    let open_here = || -> Vec<PathBuf> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.starts_with(dir.path()))
            .collect()
    };
    assert!(open_here().is_empty());
    for round in 0..3 {
        // The same data dir again: its partitions' locks were let go.
        let (engine, _) = start(&data, "group").unwrap();
        assert!(
            !open_here().is_empty(),
            "round {round}: a running engine holds its files"
        );
        stop(engine);
        let left = open_here();
        assert!(
            left.is_empty(),
            "round {round}: still open after the engine stopped: {left:?}"
        );
    }
}
