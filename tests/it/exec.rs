//! `exec` stages with real Python workers: complete and exactly-once output while
//! workers crash, hang, write garbage or refuse records; dead letters; workers that
//! cannot start; SIGKILL of flowd itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use flowd::storage::{LogOptions, PartitionLog};

use crate::dataflow_run::{flowd, signal, wait};
use crate::support::Log;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn worker(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/workers")
        .join(name)
        .display()
        .to_string()
}

/// A dataflow: the numbers 1..=n from a file, through an exec stage, to out.txt.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(records: u64, exec: &str, extra: &str) -> Run {
        Run::with_format(records, exec, extra, "value")
    }

    /// With the output file in sink `format` (`value`, `key_value`).
    fn with_format(records: u64, exec: &str, extra: &str, format: &str) -> Run {
        let dir = tempfile::Builder::new().prefix("flowd-exec-").tempdir().unwrap();
        let lines: String = (1..=records).map(|i| format!("{i}\n")).collect();
        std::fs::write(dir.path().join("in.txt"), lines).unwrap();
        let text = format!(
            r#"
[engine]
data_dir = "data"
[[source]]
name = "in"
type = "file"
path = "in.txt"
to = "nums"
[[topic]]
name = "nums"
partitions = 2
[[topic]]
name = "out"
partitions = 2
[[stage]]
name = "work"
from = "nums"
op = {{ exec = {{ {exec} }} }}
to = "out"
{extra}
[[sink]]
name = "file"
from = "out"
type = "file"
path = "out.txt"
format = "{format}"
"#
        );
        std::fs::write(dir.path().join("dataflow.toml"), text).unwrap();
        Run { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> std::process::Command {
        let mut command = flowd();
        command
            .current_dir(self.dir.path())
            .args(["run", "dataflow.toml"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs to the end of the input; returns the output and flowd's log.
    fn finish(&self) -> (Output, String) {
        let child = self.command().spawn().unwrap();
        let output = wait_output(child);
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "flowd run failed: {log}");
        (output, log)
    }

    /// Each output value and how often it appeared.
    fn counts(&self) -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(self.path("out.txt")).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            *counts.entry(line.to_owned()).or_default() += 1;
        }
        counts
    }
}

fn wait_output(mut child: std::process::Child) -> Output {
    // Drain the pipes on threads so a chatty log cannot block the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).unwrap();
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).unwrap();
        buf
    });
    let status = crate::support::exit_within(&mut child, RUN_TIMEOUT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = Output {
        status: status.unwrap_or_else(|| child.try_wait().unwrap().expect("killed")),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "flowd did not finish within {RUN_TIMEOUT:?}; its log:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every number of 1..=n but `except`, doubled, exactly once.
fn assert_doubled_once(counts: &BTreeMap<String, u64>, n: u64, except: &[u64]) {
    let expected: BTreeMap<String, u64> = (1..=n)
        .filter(|i| !except.contains(i))
        .map(|i| ((i * 2).to_string(), 1))
        .collect();
    if *counts != expected {
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !counts.contains_key(*k))
            .take(10)
            .collect();
        let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
        let extra: Vec<_> = counts
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .take(10)
            .collect();
        panic!(
            "{} outputs, {} expected; missing {missing:?}, repeated {doubled:?}, unexpected {extra:?}",
            counts.values().sum::<u64>(),
            expected.len()
        );
    }
}

#[test]
fn a_python_worker_doubles_every_number_exactly_once() {
    let exec = format!(r#"command = ["python3", "{}"], workers = 3"#, worker("flaky.py"));
    let run = Run::new(5000, &exec, "");
    run.finish();
    assert_doubled_once(&run.counts(), 5000, &[]);
}

#[test]
fn the_batched_protocol_carries_every_record() {
    let exec = format!(
        r#"command = ["python3", "{}"], protocol = "batched", concurrency = 256"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dataflows/workers/echo_batched.py")
            .display()
    );
    let run = Run::new(20_000, &exec, "");
    run.finish();
    let counts = run.counts();
    let expected: BTreeMap<String, u64> = (1..=20_000u64).map(|i| (i.to_string(), 1)).collect();
    assert_eq!(counts, expected);
}

#[test]
fn workers_that_crash_every_n_records_lose_nothing_and_repeat_nothing() {
    let exec = format!(
        r#"command = ["python3", "{}", "--crash-every", "97"], workers = 2, concurrency = 8"#,
        worker("flaky.py")
    );
    let run = Run::new(3000, &exec, "");
    let (_, log) = run.finish();
    assert_doubled_once(&run.counts(), 3000, &[]);
    assert!(log.contains("exited (exit status: 1)"), "{log}");
    assert!(log.contains("are retried; restarting it now"), "{log}");
}

#[test]
fn workers_that_hang_are_killed_and_their_records_retried() {
    // The timeout counts from when a record is written, so it also covers a fresh
    // worker's start: 1s leaves room for Python starting on a loaded CI machine, and
    // generous max_reclaims keep a slow start from turning into the on_error policy.
    let exec = format!(
        r#"command = ["python3", "{}", "--hang-every", "500"], workers = 2, concurrency = 4, timeout = "1s""#,
        worker("flaky.py")
    );
    let run = Run::new(2000, &exec, "on_error = { max_reclaims = 50 }");
    let (_, log) = run.finish();
    assert_doubled_once(&run.counts(), 2000, &[]);
    assert!(
        log.contains("did not answer a record within 1s (timeout)"),
        "{log}"
    );
}

#[test]
fn bad_worker_output_is_reported_and_the_records_retried() {
    for (flag, expected) in [
        ("--garbage-every", "wrote a line that is not a JSON answer"),
        (
            "--unknown-every",
            "which it was not given or had answered already",
        ),
        ("--huge-every", "a line longer than max_answer_bytes (1024 bytes)"),
        ("--torn-every", "its output ended in the middle of a line"),
    ] {
        let exec = format!(
            r#"command = ["python3", "{}", "{flag}", "101"], workers = 2, concurrency = 8,
                max_answer_bytes = "1KiB""#,
            worker("flaky.py")
        );
        let run = Run::new(1000, &exec, "");
        let (_, log) = run.finish();
        assert_doubled_once(&run.counts(), 1000, &[]);
        assert!(
            log.contains(expected),
            "{flag}: no {expected:?} in the log: {log}"
        );
        assert!(log.contains("are retried; restarting it now"), "{flag}: {log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// `KEY<TAB>VALUE` lines of out.txt as (key, value) pairs.
fn keyed(run: &Run) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(run.path("out.txt")).unwrap();
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("key_value lines");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn workers_are_recycled_after_restart_after_records() {
    let exec = format!(
        r#"command = ["python3", "{}", "--key", "pid"], workers = 2, restart_after = 100"#,
        worker("flaky.py")
    );
    let run = Run::with_format(3000, &exec, "", "key_value");
    run.finish();
    let mut per_pid: BTreeMap<String, u64> = BTreeMap::new();
    let mut values = Vec::new();
    for (pid, value) in keyed(&run) {
        *per_pid.entry(pid).or_default() += 1;
        values.push(value.parse::<u64>().unwrap());
    }
    values.sort_unstable();
    assert_eq!(values, (1..=3000).map(|i| i * 2).collect::<Vec<_>>());
    assert!(per_pid.len() >= 30, "{} workers for 3000 records", per_pid.len());
    assert!(per_pid.values().all(|&n| n <= 100), "{per_pid:?}");
}

#[test]
fn workers_get_their_environment_and_working_directory() {
    let run = Run::with_format(
        20,
        r#"command = ["python3", "flaky.py", "--key", "where"], dir = "sub", env = { FLOWD_TEST = "hello" }"#,
        "",
        "key_value",
    );
    std::fs::create_dir(run.path("sub")).unwrap();
    std::fs::copy(worker("flaky.py"), run.path("sub/flaky.py")).unwrap();
    run.finish();
    let keys: std::collections::BTreeSet<String> = keyed(&run).into_iter().map(|(k, _)| k).collect();
    // One worker per core that reads the stage: partitions 0 and 1 on two cores, or one.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let expected: std::collections::BTreeSet<String> = (0..cores)
        .map(|shard| format!("hello@sub@work#{shard}.0"))
        .collect();
    assert_eq!(keys, expected);
}

#[test]
fn refused_records_go_to_the_dead_letter_topic_after_max_reclaims() {
    let exec = format!(
        r#"command = ["python3", "{}", "--refuse", "13", "--refuse", "77"], workers = 2"#,
        worker("flaky.py")
    );
    let extra = r#"on_error = { max_reclaims = 2, then = "dead_letter", dead_letter = "failed" }
[[topic]]
name = "failed"
partitions = 1"#;
    let run = Run::new(500, &exec, extra);
    run.finish();
    assert_doubled_once(&run.counts(), 500, &[13, 77]);
    let log = PartitionLog::open(&run.path("data/topics/failed/0"), LogOptions::default()).unwrap();
    let mut dead = Vec::new();
    for view in log.read(0) {
        if view.headers().any(|(n, _)| n == "flowd-end") {
            continue;
        }
        let header = |name: &str| {
            view.headers()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        dead.push((
            String::from_utf8_lossy(view.value()).into_owned(),
            header("flowd-dead-reason"),
            header("flowd-dead-from"),
        ));
    }
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "13");
    assert_eq!(dead[1].0, "77");
    for (_, reason, from) in &dead {
        assert!(
            reason.contains("the worker refused it: unlucky number") && reason.contains("attempt 3 of 3"),
            "{reason}"
        );
        assert!(from.starts_with("nums/"), "{from}");
    }
}

#[test]
fn refused_records_are_skipped_with_continue() {
    let exec = format!(
        r#"command = ["python3", "{}", "--refuse", "5"]"#,
        worker("flaky.py")
    );
    let run = Run::new(50, &exec, r#"on_error = { max_reclaims = 0, then = "continue" }"#);
    let (output, log) = run.finish();
    assert_doubled_once(&run.counts(), 50, &[5]);
    let summary = String::from_utf8_lossy(&output.stdout).into_owned() + &log;
    assert!(summary.contains("unlucky number 5"), "{summary}");
}

#[test]
fn workers_that_cannot_start_are_reported_and_flowd_keeps_running() {
    let run = Run::new(
        10,
        r#"command = ["python3", "-c", "import sys; sys.exit(3)"]"#,
        r#"[[stage]]
name = "missing"
from = "nums"
op = { exec = { command = ["./no-such-worker"] } }
to = "out2"
[[topic]]
name = "out2""#,
    );
    let mut child = run.command().spawn().unwrap();
    let log = Log::read(child.stderr.take().unwrap());
    // Both stages' workers fail at least twice in a row (the backoff grows), bounded.
    let seen = log.wait_for(
        &[
            "restarting it in 200ms",
            "cannot start worker missing#",
            "trying again in 200ms",
        ],
        Duration::from_secs(60),
    );
    assert!(child.try_wait().unwrap().is_none(), "flowd must keep running");
    signal(&child, libc::SIGTERM);
    let status = wait(&mut child, RUN_TIMEOUT);
    let log = log.finish();
    assert!(seen, "backoff grows: {log}");
    assert!(status.success(), "SIGTERM stops flowd cleanly: {log}");
    assert!(
        log.contains("exited (exit status: 3), after answering 0 records"),
        "{log}"
    );
    assert!(log.contains("restarting it in 100ms"), "{log}");
    assert!(log.contains("no-such-worker"), "{log}");
    assert!(run.counts().is_empty());
}

#[test]
fn sigkill_of_flowd_mid_run_keeps_exec_output_exactly_once_and_leaves_no_worker() {
    // Its own copy of the worker, so that workers of tests running alongside do not count.
    let run = Run::new(
        40_000,
        r#"command = ["python3", "./flaky.py"], workers = 2, concurrency = 16"#,
        "",
    );
    let script = run.path("flaky.py");
    std::fs::copy(worker("flaky.py"), &script).unwrap();
    let lines = |run: &Run| {
        std::fs::read_to_string(run.path("out.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    for round in 0..3 {
        let mut child = run
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill once this run has written some answers and not all: mid-run, for sure.
        let before = lines(&run);
        crate::support::poll(RUN_TIMEOUT, Duration::from_millis(5), || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: flowd finished before the kill could land mid-run"
            );
            let now = lines(&run);
            (now > before + 100 && now < 40_000).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: no progress"));
        signal(&child, libc::SIGKILL);
        wait(&mut child, RUN_TIMEOUT);
        // The kernel kills the workers with flowd (PR_SET_PDEATHSIG).
        assert!(
            no_worker_left("./flaky.py", &script, Duration::from_secs(5)),
            "round {round}: a worker outlived flowd"
        );
    }
    run.finish();
    assert_doubled_once(&run.counts(), 40_000, &[]);
}

/// Whether no process runs `arg` in the directory of `script` any more, within `timeout`.
fn no_worker_left(arg: &str, script: &Path, timeout: Duration) -> bool {
    let dir = script.parent().unwrap().canonicalize().unwrap();
    crate::support::poll(timeout, Duration::from_millis(20), || {
        let running = std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            let runs_it = std::fs::read(entry.path().join("cmdline"))
                .map(|cmd| cmd.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false);
            runs_it && std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == dir)
        });
        (!running).then_some(())
    })
    .is_some()
}

/// Runs `dataflows/NAME` in a fresh working directory; returns its stdout and the dir.
fn example(name: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("flowd-example-")
        .tempdir()
        .unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows").join(name);
    let child = flowd()
        .current_dir(dir.path())
        .arg("run")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_output(child);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name} failed: {log}");
    (String::from_utf8(output.stdout).unwrap(), dir)
}

#[test]
fn the_python_word_stems_example_counts_words_and_distinct_stems() {
    let (stdout, _dir) = example("wordstems.toml");
    let mut got: Vec<(String, u64, u64)> = stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (
                v["sentence"].as_str().unwrap().to_owned(),
                v["total"].as_u64().unwrap(),
                v["unique"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let expected = [
        ("A jumping fox jumped over dogs that were jumping too.", 10, 8),
        ("Running runners run; the runner runs quickly.", 7, 4),
        (
            "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
            16,
            9,
        ),
        ("The quick brown fox jumps over the lazy dog.", 9, 8),
        (
            "Workers in any language answer records over stdin and stdout.",
            10,
            10,
        ),
    ]
    .map(|(s, t, u)| (s.to_owned(), t, u));
    assert_eq!(got, expected);
}

#[test]
fn the_node_enrich_example_enriches_orders_and_dead_letters_the_unknown_customer() {
    let (stdout, dir) = example("enrich.toml");
    let mut got: Vec<(String, u64, String, f64)> = stdout
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('\t').expect("KEY<TAB>VALUE");
            let v: serde_json::Value = serde_json::from_str(value).expect("JSON");
            (
                key.to_owned(),
                v["order"].as_u64().unwrap(),
                v["customer_name"].as_str().unwrap().to_owned(),
                v["to_pay"].as_f64().unwrap(),
            )
        })
        .collect();
    got.sort_by_key(|g| g.1);
    let expected = [
        ("c1", 1, "Ada", 108.0),
        ("c2", 2, "Grace", 47.5),
        ("c3", 4, "Linus", 15.0),
        ("c1", 5, "Ada", 162.0),
    ]
    .map(|(k, o, n, p)| (k.to_owned(), o, n.to_owned(), p));
    assert_eq!(got, expected);
    let failed = std::fs::read_to_string(dir.path().join("flowd-out/orders-failed.jsonl")).unwrap();
    let failed: Vec<serde_json::Value> = failed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let order: serde_json::Value = serde_json::from_str(failed[0]["value"].as_str().unwrap()).unwrap();
    assert_eq!(order["order"], 3);
}

#[test]
fn a_disabled_partition_stops_at_its_record_and_resumes_after_a_restart() {
    let run = Run::new(
        50,
        &format!(
            r#"command = ["python3", "{}", "--refuse", "5"]"#,
            worker("flaky.py")
        ),
        r#"on_error = { max_reclaims = 1 }"#,
    );
    let mut child = run.command().spawn().unwrap();
    let log = Log::read(child.stderr.take().unwrap());
    // The other records come through; the input never ends for the disabled partition.
    let disabled = log.wait_for(&["is disabled at record"], Duration::from_secs(60));
    let _ = crate::support::poll(Duration::from_secs(30), Duration::from_millis(50), || {
        (run.counts().len() >= 20).then_some(())
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "a disabled stage keeps flowd running"
    );
    signal(&child, libc::SIGTERM);
    assert!(wait(&mut child, RUN_TIMEOUT).success());
    let log = log.finish();
    assert!(disabled && log.contains("unlucky number 5"), "{log}");
    let counts = run.counts();
    assert!(!counts.contains_key("10") && counts.len() < 50, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    // Fixed worker, restart: the partition resumes at the record it stopped at.
    let text = std::fs::read_to_string(run.path("dataflow.toml")).unwrap();
    std::fs::write(
        run.path("dataflow.toml"),
        text.replace(r#", "--refuse", "5""#, ""),
    )
    .unwrap();
    run.finish();
    assert_doubled_once(&run.counts(), 50, &[]);
}
