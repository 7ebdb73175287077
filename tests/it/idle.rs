//! Idle means idle: once traffic stops, the shards and the main thread sleep until
//! something happens (an append, a request, a deadline of their own) instead of
//! looking on timers. Told apart by the threads' context switches, which the kernel
//! counts exactly: a thread that wakes to poll switches at every wake.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ingest::{Server, dataflow, http, run_cli};

/// Context switches (voluntary and not) of the main thread and each shard thread of
/// process `pid`, by thread name (the main thread as `main`).
fn switches(pid: u32) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return counts;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name = if tid == pid.to_string() {
            "main".to_owned()
        } else if comm.starts_with("flowd-shard") {
            format!("{} ({tid})", comm.trim())
        } else {
            continue;
        };
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        counts.insert(name, n);
    }
    counts
}

#[test]
fn after_traffic_the_shards_and_the_main_thread_sleep_until_something_happens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "group"));
    // Traffic on every path a shard serves: records, a job through a stage and its
    // reply, a named consumer that claims and acks, and a status request.
    let lines: String = (0..2000).map(|i| format!("record {i}\n")).collect();
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "events"], &lines);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_cli(
        &["send", "--to", &server.tcp, "greet", "--reply"],
        "{\"name\":\"ada\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), r#"{"greeting":"hello ada"}"#);
    let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, "--group", "g1", "events"], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2000, "{err}");
    let (status, _) = http(&server.http, "GET", "/status", "");
    assert_eq!(status, 200);

    // Then nothing comes. What was pending settles (a commit due, a snapshot made
    // durable); after that a 2-second window passes with (next to) no wake-ups. A
    // task polling every 5 ms would wake about 400 times in it, a 10 ms sweeper 200.
    let pid = server.pid();
    let window = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = BTreeMap::new();
    let mut quiet = false;
    while !quiet && Instant::now() < deadline {
        let before = switches(pid);
        std::thread::sleep(window);
        let after = switches(pid);
        last = after
            .iter()
            .map(|(name, n)| {
                (
                    name.clone(),
                    n.saturating_sub(before.get(name).copied().unwrap_or(0)),
                )
            })
            .collect::<BTreeMap<_, _>>();
        assert!(last.len() >= 3, "the main thread and two shards: {last:?}");
        quiet = last.values().all(|&n| n <= 2);
    }
    assert!(
        quiet,
        "some thread kept waking while nothing happened (context switches per 2 s window): {last:?}"
    );

    // How busy each shard was is told in /status and /metrics.
    let (status, body) = http(&server.http, "GET", "/status", "");
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{body}");
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(shard["shard"], i);
        let busy = shard["busy_secs"].as_f64().unwrap();
        let cpu = shard["cpu_secs"].as_f64().unwrap();
        assert!(busy > 0.0 && cpu > 0.0, "{shard}");
        assert!(busy < status["uptime_secs"].as_f64().unwrap(), "{shard}");
    }
    let (code, metrics) = http(&server.http, "GET", "/metrics", "");
    assert_eq!(code, 200);
    for name in [
        "flowd_shard_busy_seconds_total",
        "flowd_shard_idle_seconds_total",
        "flowd_shard_cpu_seconds_total",
    ] {
        for shard in 0..2 {
            let line = metrics
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{shard=\"{shard}\"}} ")))
                .unwrap_or_else(|| panic!("{name} of shard {shard} missing:\n{metrics}"));
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(value > 0.0, "{line}");
        }
    }
}

/// With no timer left to poll on, a stage sleeps until records come: a processing-time
/// window must still close on the clock, with nothing more coming after its records.
#[test]
fn a_processing_time_window_closes_on_the_clock_with_nothing_more_coming() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("window.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[engine]
data_dir = "{}"
cores = 2
# Commits come well before the window's end: the commit's wake-up cannot close it.
commit_interval = "100ms"

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"

[[topic]]
name = "views"
partitions = 1

[[topic]]
name = "counts"
partitions = 1

[[stage]]
name = "per-second"
from = "views"
op = {{ count = {{ window = "3s", time = "processing" }} }}
to = "counts"
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let server = Server::start(&file);
    for key in ["a", "b", "a"] {
        let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "views", "--key", key], "view\n");
        assert_eq!(code, 0, "{err}");
    }
    // Nothing more is sent: the window's end, 3 s at most from now, is the only
    // thing that can make the stage write. The three views may straddle a window's end:
    // each key's counts add up to its views either way.
    let totals = || -> (u64, u64, String) {
        let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, "counts", "--json"], "");
        assert_eq!(code, 0, "{err}");
        let mut sums = (0, 0);
        for line in out.lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let n: u64 = record["value"].as_str().unwrap().parse().unwrap();
            match record["key"].as_str() {
                Some("a") => sums.0 += n,
                Some("b") => sums.1 += n,
                other => panic!("a count of key {other:?}: {line}"),
            }
        }
        (sums.0, sums.1, out)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = totals();
    while (last.0, last.1) != (2, 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        last = totals();
    }
    assert_eq!(
        (last.0, last.1),
        (2, 1),
        "the window did not close on the clock within 20 s; counts so far: {}",
        last.2
    );
}
