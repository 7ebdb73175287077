//! Request pipelines: the `hello` and `chained` examples answered over HTTP and over the
//! binary protocol; an error in any stage comes back at once as 422 with a JSON error;
//! bad requests get 4xx; the engine serves on after each.

use std::path::Path;

use serde_json::{Value, json};

use crate::ingest::{Server, http, run_cli};

/// `file` on free loopback ports with its data in `data`.
fn start(file: &Path, data: &Path) -> Server {
    let data = data.display().to_string();
    Server::start_with(
        file,
        &[
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ],
    )
}

fn example_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows").join(name)
}

/// `dataflows/NAME` on free loopback ports with a temporary data dir.
fn example(name: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&example_file(name), &dir.path().join("data"));
    (server, dir)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn hello_answers_over_http_and_the_protocol() {
    let (server, _dir) = example("hello.toml");
    let (status, body) = http(&server.http, "POST", "/jobs/hello", "{}");
    assert_eq!((status, json_of(&body)), (200, json!({"hello": "world"})));
    let (code, out, err) = run_cli(&["send", "--to", &server.tcp, "hello", "--reply"], "{\"x\":1}\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(out.trim()), json!({"hello": "world"}));
}

#[test]
fn chained_passes_three_stages_and_any_stage_error_comes_back_as_422() {
    let (server, _dir) = example("chained.toml");
    let (status, body) = http(&server.http, "POST", "/jobs/chained", r#"{"n": 5}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body),
        json!({"n": 5, "double": 10, "steps": ["compute", "lookup", "finish"], "label": "bang", "total": 11})
    );
    let (code, out, err) = run_cli(
        &["send", "--to", &server.tcp, "chained", "--reply"],
        "{\"n\":7}\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json_of(out.trim()),
        json!({"n": 7, "double": 14, "steps": ["compute", "lookup", "finish"], "label": "buzz", "total": 15})
    );

    // The worker of the middle stage refuses it.
    let (status, body) = http(&server.http, "POST", "/jobs/chained", r#"{"n": "five"}"#);
    assert_eq!(status, 422, "{body}");
    let error = json_of(&body)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(r#"stage "lookup""#) && error.contains("a request is"),
        "{error}"
    );
    // The first stage's jq cannot read it.
    let (status, body) = http(&server.http, "POST", "/jobs/chained", "five");
    assert_eq!(status, 422, "{body}");
    let error = json_of(&body)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(r#"stage "compute" could not handle it"#),
        "{error}"
    );
    // Over the protocol, the same error.
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "chained", "--reply"], "five\n");
    assert_ne!(code, 0);
    assert!(err.contains("could not handle it"), "{err}");

    // Bad requests: an unknown job, a body over the frame limit.
    let (status, body) = http(&server.http, "POST", "/jobs/nope", "{}");
    assert_eq!(status, 404, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .contains("no job \"nope\""),
        "{body}"
    );
    let huge = "x".repeat(17 << 20);
    let (status, body) = http(&server.http, "POST", "/jobs/chained", &huge);
    assert_eq!(status, 413, "{body}");
    assert!(json_of(&body)["error"].is_string(), "{body}");

    let (status, body) = http(&server.http, "POST", "/jobs/chained?timeout=soon", "{}");
    assert_eq!(status, 400, "{body}");

    // And it serves on, with a per-job timeout too.
    let (status, body) = http(&server.http, "POST", "/jobs/chained?timeout=3s", r#"{"n": 0}"#);
    assert_eq!(
        (status, json_of(&body)["label"].clone()),
        (200, json!("fizz")),
        "{body}"
    );
}

#[test]
fn the_counter_counts_per_key_reads_by_name_and_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = (example_file("counter.toml"), dir.path().join("data"));
    let mut server = start(&file, &data);
    for expected in 1..=3 {
        let (status, body) = http(&server.http, "POST", "/jobs/count?key=ada", "");
        assert_eq!((status, body.as_str()), (200, expected.to_string().as_str()));
    }
    let (status, body) = http(&server.http, "POST", "/jobs/count?key=bob", "{}");
    assert_eq!((status, body.as_str()), (200, "1"));
    let (code, out, err) = run_cli(
        &["send", "--to", &server.tcp, "count", "--key", "ada", "--reply"],
        ".\n",
    );
    assert_eq!((code, out.trim()), (0, "4"), "{err}");
    let (status, body) = http(&server.http, "GET", "/state/counter/ada", "");
    assert_eq!((status, body.as_str()), (200, "4"));
    let (code, out, err) = run_cli(&["state", "--from", &server.tcp, "counter", "ada"], "");
    assert_eq!((code, out.trim()), (0, "4"), "{err}");
    let (code, _, err) = run_cli(&["state", "--from", &server.tcp, "counter", "nobody"], "");
    assert_ne!(code, 0);
    assert!(err.contains("holds no state for key \"nobody\""), "{err}");
    let (status, body) = http(&server.http, "GET", "/state/counter/nobody", "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(&server.http, "GET", "/state/nosuch/ada", "");
    assert_eq!(status, 404, "{body}");
    assert!(
        json_of(&body)["error"]
            .as_str()
            .unwrap()
            .contains("this dataflow has: counter"),
        "{body}"
    );
    // A job without a key cannot be counted: the stage says so at once.
    let (status, body) = http(&server.http, "POST", "/jobs/count", "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("has no key"), "{body}");

    server.kill9();
    let server = start(&file, &data);
    let (status, body) = http(&server.http, "GET", "/state/counter/ada", "");
    assert_eq!((status, body.as_str()), (200, "4"), "the count survives SIGKILL");
    let (status, body) = http(&server.http, "POST", "/jobs/count?key=ada", "");
    assert_eq!((status, body.as_str()), (200, "5"));
    let (status, body) = http(&server.http, "GET", "/state/counter/bob", "");
    assert_eq!((status, body.as_str()), (200, "1"));
}

/// What the `search` example answers `{"q": "rust"}`: the top three of both branches.
pub(crate) fn rust_hits() -> Value {
    json!([
        {"title": "The Rust Programming Language", "score": 9, "from": "books"},
        {"title": "Zero To Production In Rust", "score": 7, "from": "books"},
        {"title": "Rust (2024)", "score": 5, "from": "films"},
    ])
}

#[test]
fn search_scatters_to_both_index_shards_and_merges_the_top_three() {
    let (server, _dir) = example("search.toml");
    let (status, body) = http(&server.http, "POST", "/jobs/search", r#"{"q": "rust"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&body), rust_hits());
    let (code, out, err) = run_cli(
        &["send", "--to", &server.tcp, "search", "--reply"],
        "{\"q\":\"data\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    let titles: Vec<String> = json_of(out.trim())
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        titles,
        [
            "Designing Data-Intensive Applications",
            "Streaming Systems",
            "Streams of Data"
        ]
    );
    let (status, body) = http(&server.http, "POST", "/jobs/search", "not json");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("every branch that answered failed"), "{body}");
}

/// A dataflow whose `gather` job scatters to a fast branch (answers 1 from every
/// partition of a 2-partition topic) and a slow one (a worker that answers 10 after
/// 5 s), summed, with a 300 ms timeout and `partial` as given.
fn scatter_dataflow(dir: &Path, partial: &str) -> std::path::PathBuf {
    let worker = dir.join("slow.py");
    std::fs::write(
        &worker,
        "import json, sys, time\nfor line in sys.stdin:\n    r = json.loads(line)\n    time.sleep(5)\n    \
         print(json.dumps({'id': r['id'], 'values': [10]}), flush=True)\n",
    )
    .unwrap();
    let text = format!(
        r#"
[engine]
data_dir = "{data}"
[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
[[topic]]
name = "asks"
partitions = 1
[[topic]]
name = "fast"
partitions = 2
[[topic]]
name = "slow"
partitions = 1
[[topic]]
name = "parts"
partitions = 2
[[topic]]
name = "sums"
partitions = 1
[[job]]
name = "gather"
topic = "asks"
timeout = "20s"
[[stage]]
name = "scatter"
from = "asks"
op = {{ scatter_gather = {{ branches = ["fast", "slow"], every_partition = true, merge = "sum", timeout = "300ms", partial = "{partial}" }} }}
to = "sums"
[[stage]]
name = "one"
from = "fast"
op = {{ map = "1" }}
to = "parts"
[[stage]]
name = "ten"
from = "slow"
op = {{ exec = {{ command = ["python3", "slow.py"] }} }}
to = "parts"
[[stage]]
name = "answer-parts"
from = "parts"
op = "reply"
[[stage]]
name = "answer"
from = "sums"
op = "reply"
"#,
        data = dir.join("data").display()
    );
    let file = dir.join("scatter.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_slow_branch_is_left_out_at_the_timeout_or_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&scatter_dataflow(dir.path(), "answer"));
    let started = std::time::Instant::now();
    let (status, body) = http(&server.http, "POST", "/jobs/gather", "{}");
    // Both partitions of the fast branch answered 1; the slow one (5 s) is left out.
    assert_eq!((status, body.as_str()), (200, "2"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // A per-job timeout shorter than the gather's: the caller gets 504.
    let (status, body) = http(&server.http, "POST", "/jobs/gather?timeout=100ms", "{}");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no answer within 100ms"), "{body}");
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&scatter_dataflow(dir.path(), "fail"));
    let (status, body) = http(&server.http, "POST", "/jobs/gather", "{}");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("2 of 3 branches answered within 300ms"), "{body}");
    // It serves on.
    let (status, _) = http(&server.http, "GET", "/status", "");
    assert_eq!(status, 200);
}
