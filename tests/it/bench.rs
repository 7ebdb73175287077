//! `flowd bench`: each scenario against an in-process engine prints the JSON object of
//! DESIGN.md section 8 with consistent figures; bad targets get clear errors.

use std::process::Command;

use serde_json::Value;

/// Runs `flowd bench ARGS` (killed after two minutes): `(exit code, stdout, stderr)`.
fn bench(args: &[&str]) -> (i32, String, String) {
    let out = crate::support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flowd")).arg("bench").args(args),
        b"",
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

/// The report's figures agree with each other; returns it.
fn report(args: &[&str], scenario: &str) -> Value {
    let (code, stdout, stderr) = bench(args);
    assert_eq!(code, 0, "flowd bench {args:?} failed: {stderr}");
    assert!(stderr.is_empty(), "no progress bar off a terminal: {stderr:?}");
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["scenario"], scenario);
    let records = r["records"].as_u64().expect("records");
    let seconds = r["seconds"].as_f64().expect("seconds");
    let rate = r["records_per_sec"].as_f64().expect("records_per_sec");
    assert!(records > 0 && seconds > 0.0, "{r}");
    assert!((rate - records as f64 / seconds).abs() <= rate * 1e-9, "{r}");
    let mb = r["mb_per_sec"].as_f64().expect("mb_per_sec");
    let size = r["config"]["size"].as_f64().expect("size");
    assert!((mb - rate * size / 1e6).abs() <= mb * 1e-9 + 1e-12, "{r}");
    let l = &r["latency_us"];
    let [p50, p99, p999, max] = ["p50", "p99", "p999", "max"].map(|p| l[p].as_u64().expect("a percentile"));
    assert!(0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{r}");
    // No latency can exceed the run (plus the warm-up's share of slack).
    assert!((max as f64) < seconds * 1e6 + 60e6, "{r}");
    r
}

#[test]
fn ingest_reports_durable_produce() {
    let r = report(
        &[
            "ingest",
            "--records",
            "50000",
            "--size",
            "100",
            "--batch",
            "1000",
            "--durability",
            "group",
            "--json",
        ],
        "ingest",
    );
    assert_eq!(r["records"], 50000);
    assert_eq!(r["config"]["durability"], "group");
    assert_eq!(r["config"]["produce"], "batch");
    let r = report(
        &["ingest", "--records", "20000", "--produce", "records", "--json"],
        "ingest",
    );
    assert_eq!(r["records"], 20000);
    assert_eq!(r["config"]["produce"], "records");
}

#[test]
fn fixed_rate_paces_the_run_and_says_so() {
    // 2000 records/s in batches of 10 for 1000 records: half a second at least.
    let r = report(
        &[
            "ingest",
            "--records",
            "1000",
            "--batch",
            "10",
            "--durability",
            "none",
            "--rate",
            "2000",
            "--json",
        ],
        "ingest",
    );
    assert!(r["seconds"].as_f64().unwrap() >= 0.45, "{r}");
    assert!(r["records_per_sec"].as_f64().unwrap() <= 2300.0, "{r}");
    assert!(
        r["config"]["latency"]
            .as_str()
            .unwrap()
            .contains("coordinated omission"),
        "{r}"
    );
    let r = report(
        &["reqreply", "--requests", "300", "--rate", "1000/s", "--json"],
        "reqreply",
    );
    assert!(r["seconds"].as_f64().unwrap() >= 0.25, "{r}");
}

#[test]
fn consume_pipeline_and_reqreply_report() {
    let r = report(
        &["consume", "--records", "20000", "--batch", "500", "--json"],
        "consume",
    );
    assert_eq!(r["records"], 20000);
    // Every record the topic holds (the fill's warm-up too), each read once: the bench
    // fails otherwise.
    let r = report(
        &["fetch", "--records", "20000", "--batch", "500", "--json"],
        "fetch",
    );
    assert!(r["records"].as_u64().unwrap() >= 20000, "{r}");
    let r = report(
        &["pipeline", "--records", "20000", "--batch", "500", "--json"],
        "pipeline",
    );
    assert_eq!(r["records"], 20000);
    // The bench itself fails on an output seen twice or an input missing.
    assert_eq!(r["config"]["exactly_once_checked"], true, "{r}");
    let r = report(
        &["reqreply", "--requests", "500", "--concurrency", "2", "--json"],
        "reqreply",
    );
    assert_eq!(r["records"], 500);
}

/// Each run's very first jobs are answered: the reply task takes its start position before
/// any connection can write a job (a start read later skipped them, and they timed out).
#[test]
fn the_first_jobs_of_every_run_are_answered() {
    for round in 0..4 {
        let (code, _, stderr) = bench(&[
            "reqreply",
            "--requests",
            "40",
            "--concurrency",
            "2",
            "--rate",
            "4000",
            "--json",
        ]);
        assert_eq!(code, 0, "round {round}: {stderr}");
    }
}

#[test]
fn text_report_and_clear_errors() {
    let (code, stdout, _) = bench(&["ingest", "--records", "2000", "--batch", "100"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ingest: 2000 records in "), "{stdout}");
    assert!(stdout.contains("p99.9"), "{stdout}");

    let (code, _, stderr) = bench(&["ingest", "--records", "10", "--topic", "nope"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no topic \"nope\""), "{stderr}");
    let (code, _, stderr) = bench(&["ingest", "--rate", "fast"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a rate"), "{stderr}");
    // A port nothing listens on: a connect error that says what to check.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, stderr) = bench(&["reqreply", "--requests", "1", "--to", &addr]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    let (code, _, stderr) = bench(&[
        "ingest",
        "--batch",
        "100000",
        "--size",
        "1000",
        "--records",
        "100000",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("over the engine's limit"), "{stderr}");
}

#[test]
fn exec_runs_records_through_worker_processes_in_both_protocols() {
    let r = report(
        &["exec", "--records", "20000", "--batch", "500", "--json"],
        "exec",
    );
    assert_eq!(r["records"], 20000, "every record answered once");
    assert_eq!(r["config"]["protocol"], "batched");
    assert_eq!(r["config"]["worker"][2], "echo-worker");
    let python = format!(
        "python3 {}/dataflows/workers/echo_batched.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let r = report(
        &[
            "exec",
            "--records",
            "5000",
            "--batch",
            "100",
            "--worker",
            &python,
            "--json",
        ],
        "exec",
    );
    assert_eq!(r["records"], 5000);
    let r = report(
        &[
            "exec",
            "--records",
            "5000",
            "--protocol",
            "json",
            "--workers",
            "3",
            "--json",
        ],
        "exec",
    );
    assert_eq!(r["records"], 5000);
    assert_eq!(r["config"]["workers"], 3);
}

#[test]
fn reqreply_runs_a_dataflows_job() {
    let file = format!("{}/dataflows/chained.toml", env!("CARGO_MANIFEST_DIR"));
    let r = report(
        &[
            "reqreply",
            "--dataflow",
            &file,
            "--job",
            "chained",
            "--body",
            r#"{"n": 1}"#,
            "--any-answer",
            "--requests",
            "300",
            "--json",
        ],
        "reqreply",
    );
    assert_eq!(r["records"], 300);
    assert_eq!(r["config"]["job"], "chained");
    // Without --any-answer, a job that is not an echo is an error, said clearly.
    let (code, _, stderr) = bench(&[
        "reqreply",
        "--dataflow",
        &file,
        "--job",
        "chained",
        "--body",
        r#"{"n": 1}"#,
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("pass --any-answer"), "{stderr}");
}
