//! `flowd run` as a process: word count equals a reference count, a run killed with
//! SIGKILL and restarted ends with exactly the output of an uninterrupted run, SIGTERM
//! exits 0, and a slow stage holds memory and input back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any single `flowd run` in these tests may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn flowd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowd"))
}

/// Waits for `child` (bounded); kills it and fails the test on timeout.
pub(crate) fn wait(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    match crate::support::exit_within(child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flowd run did not finish within {timeout:?}");
        }
    }
}

/// `flowd run DATAFLOW`, started, its stderr as given.
fn spawn_run(dataflow: &Path, stderr: Stdio) -> Child {
    spawn_run_env(dataflow, stderr, &[])
}

/// The same with `env` set (fail points).
fn spawn_run_env(dataflow: &Path, stderr: Stdio, env: &[(&str, &str)]) -> Child {
    let mut command = flowd();
    command.arg("run").arg(dataflow).stderr(stderr);
    command.envs(env.iter().copied());
    command.spawn().unwrap()
}

pub(crate) fn signal(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// A deterministic text with repeated words, mixed case and punctuation.
fn write_text(path: &Path, lines: usize, seed: u64) {
    let vocabulary: Vec<String> = (0..500).map(|i| format!("w{i}")).collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut text = String::new();
    for _ in 0..lines {
        let words = rng.usize(0..12);
        for j in 0..words {
            // Skewed: low-numbered words are common.
            let upper = rng.usize(1..=vocabulary.len());
            let word = &vocabulary[rng.usize(0..upper)];
            let word = if rng.u8(..) < 30 {
                word.to_uppercase()
            } else {
                word.clone()
            };
            text.push_str(&word);
            text.push_str(if j + 1 == words {
                ""
            } else {
                [" ", ", ", ". ", " -- "][rng.usize(0..4)]
            });
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The reference: the same word rule as `split_words`, counted in a map.
fn reference_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in text
        .split(|c: char| c.is_ascii() && !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
    }
    counts
}

/// `WORD<TAB>COUNT` lines; a word printed twice is an error (the sink is exactly-once).
fn parse_counts(output: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in output.lines() {
        let (word, count) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let previous = counts.insert(word.to_owned(), count.parse().unwrap());
        assert!(previous.is_none(), "{word} printed twice");
    }
    counts
}

/// A word count dataflow over `input`, writing the counts to `out` and every word, as
/// it passes, to `out.words`, both through file sinks.
fn wordcount_dataflow(dir: &Path, input: &Path, out: &Path, durability: &str) -> PathBuf {
    let file = dir.join("wordcount.toml");
    let text = format!(
        r#"[engine]
data_dir = "{data}"
durability = "{durability}"
commit_interval = "50ms"

[[topic]]
name = "lines"
partitions = 3
segment_bytes = "1MiB"

[[topic]]
name = "words"
partitions = 4
segment_bytes = "4MiB"

[[topic]]
name = "counts"
partitions = 2
segment_bytes = "1MiB"

[[source]]
name = "text"
type = "file"
path = "{input}"
to = "lines"

[[stage]]
name = "split"
from = "lines"
op = "split_words"
to = "words"
route = {{ shard_by = "key" }}

[[stage]]
name = "count"
from = "words"
op = "count"
to = "counts"
route = {{ shard_by = "key" }}

[[sink]]
name = "out"
from = "counts"
type = "file"
path = "{out}"
format = "key_value"

[[sink]]
name = "all-words"
from = "words"
type = "file"
path = "{out}.words"
"#,
        data = dir.join("data").display(),
        input = input.display(),
        out = out.display(),
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn word_count_equals_the_reference_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("text.txt");
    write_text(&input, 20_000, 1);
    let out = dir.path().join("counts.tsv");
    let dataflow = wordcount_dataflow(dir.path(), &input, &out, "group");
    let mut child = spawn_run(&dataflow, Stdio::piped());
    assert!(wait(&mut child, RUN_TIMEOUT).success());
    let expected = reference_counts(&std::fs::read_to_string(&input).unwrap());
    assert_eq!(parse_counts(&std::fs::read_to_string(&out).unwrap()), expected);
    // A second run finds everything done and changes nothing.
    let status = crate::support::run_bounded(flowd().arg("run").arg(&dataflow), b"").status;
    assert!(status.success());
    assert_eq!(parse_counts(&std::fs::read_to_string(&out).unwrap()), expected);
}

/// SIGKILL rounds in the middle of the dataflow; `FLOWD_RUN_CRASH_ROUNDS` sets how many.
#[test]
fn killed_and_restarted_runs_end_with_the_uninterrupted_output() {
    let rounds: usize = crate::support::env_or("FLOWD_RUN_CRASH_ROUNDS", 5);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("text.txt");
    write_text(&input, 150_000, 2);
    let out = dir.path().join("counts.tsv");
    let dataflow = wordcount_dataflow(dir.path(), &input, &out, "group");
    let mut rng = fastrand::Rng::with_seed(3);
    let words_out = |out: &Path| {
        std::fs::read_to_string(out.with_extension("tsv.words"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    for round in 0..rounds {
        let mut child = spawn_run(&dataflow, Stdio::null());
        // Stop it once this run has written some words, a different number each round:
        // mid-run, for sure (it must still be running then).
        let before = words_out(&out);
        let some = rng.usize(1..20_000);
        crate::support::wait_until("the run writes words", RUN_TIMEOUT, || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "round {round}: the run finished before it could be stopped mid-run"
            );
            words_out(&out) >= before + some
        });
        if round % 3 == 2 {
            // Now and then a polite stop: flush, sync, exit 0.
            signal(&child, libc::SIGTERM);
            assert!(wait(&mut child, RUN_TIMEOUT).success(), "SIGTERM exits 0");
        } else {
            signal(&child, libc::SIGKILL);
            let status = wait(&mut child, RUN_TIMEOUT);
            assert!(!status.success(), "round {round}: the kill ended the run");
        }
    }
    let mut child = spawn_run(&dataflow, Stdio::null());
    assert!(wait(&mut child, RUN_TIMEOUT).success());
    let expected = reference_counts(&std::fs::read_to_string(&input).unwrap());
    assert_eq!(parse_counts(&std::fs::read_to_string(&out).unwrap()), expected);
    // The stream of words itself: every word exactly once, though the sink was cut off
    // mid-write again and again.
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    for word in std::fs::read_to_string(out.with_extension("tsv.words"))
        .unwrap()
        .lines()
    {
        *words.entry(word.to_owned()).or_default() += 1;
    }
    assert_eq!(words, expected);
}

#[test]
fn filter_and_map_example_gives_the_purchases() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = crate::support::run_bounded(
        flowd()
            .current_dir(dir.path())
            .arg("run")
            .arg(repo.join("dataflows/purchases.toml")),
        b"",
    )
    .status;
    assert!(status.success());
    let got: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("flowd-out/purchases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(repo.join("dataflows/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "purchase")
        .map(|e| {
            let total = e["price"].as_f64().unwrap() * e["qty"].as_f64().unwrap();
            serde_json::json!({"user": e["user"], "item": e["item"], "total": total})
        })
        .collect();
    let mut got_sorted: Vec<String> = got.iter().map(normalize).collect();
    got_sorted.sort();
    let mut expected_sorted: Vec<String> = expected.iter().map(normalize).collect();
    expected_sorted.sort();
    assert_eq!(got_sorted, expected_sorted);
}

/// Numbers compared as numbers (`240` and `240.0` are the same total).
fn normalize(v: &serde_json::Value) -> String {
    format!("{}|{}|{}", v["user"], v["item"], v["total"].as_f64().unwrap())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    crate::support::proc_status_kib(pid, "VmRSS")
}

/// The bound this test holds `flowd run` to while its input is far faster than its
/// slowest stage.
const SLOW_STAGE_RSS_KIB_MAX: u64 = 256 * 1024;

#[test]
fn a_slow_stage_bounds_memory_and_holds_the_input_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.txt");
    // 400k lines of 100 bytes: 40 MB offered at once.
    let line = format!("{{\"n\": 1, \"pad\": \"{}\"}}\n", "x".repeat(77));
    std::fs::write(&input, line.repeat(400_000)).unwrap();
    let dataflow = dir.path().join("slow.toml");
    // The map burns CPU on every record: a stage far slower than the file source.
    let text = format!(
        r#"[engine]
data_dir = "{data}"
durability = "none"

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"

[[topic]]
name = "in"
partitions = 2
max_lag = 5000

[[topic]]
name = "out"
partitions = 2

[[source]]
name = "big"
type = "file"
path = "{input}"
to = "in"

[[stage]]
name = "slow"
from = "in"
op = {{ map = "reduce range(0; 3000) as $i (.n; . + $i)" }}
to = "out"
"#,
        data = dir.path().join("data").display(),
        input = input.display(),
    );
    std::fs::write(&dataflow, text).unwrap();
    let mut server = crate::ingest::Server::start(&dataflow);
    let mut client = flowd::client::Client::connect(&server.tcp).unwrap();
    // While it runs: RSS within its bound, and each partition of `in` within max_lag
    // (5000) and one batch (4096) of what the stage has read. A source not held back
    // writes all 400k lines in well under the sampling time.
    let mut rss_max = 0;
    let mut lag_max = 0;
    let mut samples = 0;
    let started = Instant::now();
    // Three seconds of samples, and at least six (a loaded machine answers status
    // slowly), within a bound.
    while started.elapsed() < Duration::from_secs(3)
        || (samples < 6 && started.elapsed() < Duration::from_secs(30))
    {
        rss_max = rss_max.max(rss_kib(server.pid()).unwrap_or(0));
        let status = client.status(false).unwrap();
        for topic in status["topics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == "in")
        {
            for p in topic["partitions"].as_array().unwrap() {
                let next = p["next_offset"].as_u64().unwrap();
                if let Some(stage) = p["consumers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == "slow")
                {
                    lag_max = lag_max.max(next.saturating_sub(stage["position"].as_u64().unwrap()));
                    samples += 1;
                }
            }
        }
        crate::support::pace(Duration::from_millis(50));
    }
    assert!(samples >= 6, "{samples} samples of the stage's lag");
    assert!(
        lag_max > 2000,
        "the source ran ahead of the stage ({lag_max} at most): the bound was not tested"
    );
    assert!(
        lag_max <= 5000 + 4096,
        "`in` ran {lag_max} records ahead of the stage: not held back"
    );
    assert_eq!(server.terminate(RUN_TIMEOUT), Some(true), "SIGTERM exits 0");
    assert!(
        rss_max > 0 && rss_max < SLOW_STAGE_RSS_KIB_MAX,
        "peak RSS {rss_max} KiB"
    );
    eprintln!(
        "slow stage: peak RSS {} MiB, lag at most {lag_max}",
        rss_max / 1024
    );
}

/// Polls `path` until it holds `lines` lines (bounded); returns them.
fn wait_for_lines(path: &Path, lines: usize) -> Vec<String> {
    let read = || -> Vec<String> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    };
    crate::support::poll(RUN_TIMEOUT, Duration::from_millis(20), || {
        Some(read()).filter(|got| got.len() >= lines)
    })
    .unwrap_or_else(read)
}

#[test]
fn a_directory_source_follows_new_files_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("incoming");
    std::fs::create_dir(&input).unwrap();
    let write = |name: &str, range: std::ops::Range<u32>| {
        let text: String = range.map(|i| format!("line {i}\n")).collect();
        std::fs::write(input.join(name), text).unwrap();
    };
    write("a.log", 0..300);
    write("b.log", 300..500);
    let out = dir.path().join("out.txt");
    let dataflow = dir.path().join("tail.toml");
    let text = format!(
        r#"[engine]
data_dir = "{data}"
commit_interval = "20ms"

[[topic]]
name = "lines"
partitions = 2
segment_bytes = "1MiB"

[[source]]
name = "incoming"
type = "file"
path = "{input}"
to = "lines"

[[sink]]
name = "out"
from = "lines"
type = "file"
path = "{out}"
"#,
        data = dir.path().join("data").display(),
        input = input.display(),
        out = out.display(),
    );
    std::fs::write(&dataflow, text).unwrap();
    let mut child = spawn_run(&dataflow, Stdio::null());
    assert_eq!(wait_for_lines(&out, 500).len(), 500, "both files are read");
    // A new file while running, then a restart with another one waiting.
    write("c.log", 500..600);
    assert_eq!(wait_for_lines(&out, 600).len(), 600, "a new file is picked up");
    signal(&child, libc::SIGTERM);
    assert!(wait(&mut child, RUN_TIMEOUT).success());
    // A big file (about ten chunks of 256 KiB), and a SIGKILL while it is being read:
    // a fail point after its fourth chunk, so that the kill provably lands mid-file
    // (timed from outside, a release build had read it all before the kill).
    let last = 600 + 200_000;
    write("d.log", 600..last);
    let mut child = spawn_run_env(
        &dataflow,
        Stdio::null(),
        &[("FAILPOINTS", "source-chunk=3*off->return")],
    );
    let status = wait(&mut child, RUN_TIMEOUT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the fail point killed the engine"
    );
    let at_kill = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(
        at_kill < last as usize,
        "the kill landed mid-file: {at_kill} of {last} lines were out"
    );
    let mut child = spawn_run(&dataflow, Stdio::null());
    let got = wait_for_lines(&out, last as usize);
    signal(&child, libc::SIGTERM);
    assert!(wait(&mut child, RUN_TIMEOUT).success());
    let mut got: Vec<u32> = got
        .iter()
        .map(|l| l.trim_start_matches("line ").parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..last).collect::<Vec<_>>(), "every line exactly once");
}
