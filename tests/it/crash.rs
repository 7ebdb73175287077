//! Crash test that really kills: a child process appends in `every`, `group` or `none` mode and
//! prints each acked offset; the parent SIGKILLs it at a random moment, reopens the log,
//! and checks that every acked record is there, byte-identical, with dense offsets.
//!
//! The child is this very test binary, run again with `FLOWD_CRASH_CHILD_DIR` set.
//! Rounds: `FLOWD_CRASH_ROUNDS` (default 12 per mode; `scripts/crash-soak.sh` runs
//! hundreds).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flowd::storage::{Durability, PartitionLog};

use crate::support::{append_expected, assert_log_is_expected_prefix, fill, small_options};

const CHILD_DIR_ENV: &str = "FLOWD_CRASH_CHILD_DIR";
const CHILD_MODE_ENV: &str = "FLOWD_CRASH_CHILD_MODE";
/// A child runs at most this long if nobody kills it, so no test can hang on it.
const CHILD_RUN_MAX: Duration = Duration::from_secs(20);

/// The child: appends batches until killed, printing `ACK n` whenever every offset
/// below `n` is durable.
#[test]
#[ignore = "run by the crash tests as a child process"]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mode: Durability = std::env::var(CHILD_MODE_ENV).unwrap().parse().unwrap();
    let mut log = PartitionLog::open(Path::new(&dir), small_options(mode)).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", log.next_offset()).unwrap();
    let started = std::time::Instant::now();
    let mut acked = log.durable_offset();
    let mut rng = fastrand::Rng::new();
    while started.elapsed() < CHILD_RUN_MAX {
        let next = log.next_offset();
        let receipt = append_expected(&mut log, next..next + rng.u64(1..12));
        if mode == Durability::Group && rng.u8(..) < 64 {
            log.wait_durable(receipt.next_offset).unwrap();
        }
        let durable = log.durable_offset();
        if durable > acked {
            acked = durable;
            writeln!(out, "ACK {acked}").unwrap();
        }
    }
}

fn rounds() -> u32 {
    crate::support::env_or("FLOWD_CRASH_ROUNDS", 12)
}

/// Runs the child until it has reported `acks` acks (so it is writing: it writes until
/// killed), kills it with SIGKILL, and returns the highest offset it reported as acked.
/// Fails unless the kill is what ended it.
fn run_and_kill(dir: &Path, mode: Durability, acks: usize) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_MODE_ENV, mode.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the child to have opened the log, so that the kill lands mid-write.
    // libtest prints "test name ... " on the same line before the child's first output.
    let deadline = std::time::Instant::now() + CHILD_RUN_MAX;
    let ready = std::iter::from_fn(|| {
        lines_rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .ok()
    })
    .find_map(|l| l.split_once("READY ").map(|(_, n)| n.to_string()))
    .expect("the child writer did not start");
    let start: u64 = ready.trim().parse().unwrap();
    let mut acked = start;
    for _ in 0..acks {
        let line = lines_rx
            .recv_timeout(CHILD_RUN_MAX)
            .expect("the child stopped acking");
        if let Some(n) = line.strip_prefix("ACK ").and_then(|n| n.parse().ok()) {
            acked = acked.max(n);
        }
    }
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed");
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the kill ended the child, in the middle of its writing"
    );
    reader.join().unwrap();
    assert!(acked > start, "the child acked records before the kill");
    lines_rx
        .try_iter()
        .filter_map(|l| l.strip_prefix("ACK ").and_then(|n| n.parse().ok()))
        .fold(acked, u64::max)
}

fn kill_rounds(mode: Durability) {
    let dir = tempfile::tempdir().unwrap(); // a real disk: fsync must mean something
    let mut rng = fastrand::Rng::new();
    // Fill most of the first segment so that the children's writes roll segments.
    {
        let mut log = PartitionLog::open(dir.path(), small_options(mode)).unwrap();
        fill(&mut log, 0..350);
        log.close().unwrap();
    }
    let mut acked_ever = 350;
    for round in 0..rounds() {
        let acks = rng.usize(1..200);
        let acked = run_and_kill(dir.path(), mode, acks);
        acked_ever = acked_ever.max(acked);
        let log = PartitionLog::open(dir.path(), small_options(mode))
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let kept = assert_log_is_expected_prefix(&log);
        assert!(
            kept >= acked_ever,
            "round {round} ({mode}): acked up to {acked_ever} but only {kept} records survived"
        );
    }
    let log = PartitionLog::open(dir.path(), small_options(mode)).unwrap();
    assert!(
        log.segments().len() > 1,
        "the children's writes should roll segments"
    );
}

#[test]
fn sigkill_never_loses_an_acked_record_in_every_mode() {
    kill_rounds(Durability::Every);
}

#[test]
fn sigkill_never_loses_an_acked_record_in_group_mode() {
    kill_rounds(Durability::Group);
}

#[test]
fn sigkill_never_loses_an_acked_record_in_none_mode() {
    // `none` acks once the batch is in the page cache, which a killed process cannot lose.
    kill_rounds(Durability::None);
}
