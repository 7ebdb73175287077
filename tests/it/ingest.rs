//! The front doors as a client sees them: `flowd send`/`tail` through the binary
//! protocol, HTTP/JSON with jobs, the status page and /metrics, every kind of bad input
//! while a well-behaved client keeps getting acks, and acked records surviving SIGKILL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowd::client::{Client, ClientError, offsets};
use flowd::protocol::message::{Response, encode_produce};
use flowd::protocol::{ErrorCode, FetchFrom, OwnedWireRecord};

use crate::support::{Log, connect_from};

/// Given in `Server::start_env`'s `env`: the peers speak plaintext.
pub(crate) const PLAINTEXT_PEERS: (&str, &str) = ("FLOWD_TEST_PEERS", "plaintext");

pub(crate) fn flowd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowd"))
}

pub(crate) fn dataflow(dir: &Path, durability: &str) -> PathBuf {
    let path = dir.join("ingest.toml");
    let text = format!(
        r#"
[engine]
data_dir = "{data}"
durability = "{durability}"
cores = 2

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
max_frame_bytes = "64KiB"
io_timeout = "500ms"

[[topic]]
name = "events"
partitions = 4

[[topic]]
name = "requests"
partitions = 2

[[topic]]
name = "answers"
partitions = 2

[[job]]
name = "greet"
topic = "requests"

[[topic]]
name = "dropped"
partitions = 1

[[job]]
name = "never"
topic = "dropped"
timeout = "300ms"

[[stage]]
name = "dropper"
from = "dropped"
op = {{ filter = "false" }}
to = "answers"

[[stage]]
name = "greeter"
from = "requests"
op = {{ map = '{{greeting: ("hello " + .name)}}' }}
to = "answers"

[[stage]]
name = "answer"
from = "answers"
op = "reply"
"#,
        data = dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `flowd run`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) tcp: String,
    pub(crate) http: String,
    /// `--peer-listen`'s address, when given.
    pub(crate) peer: Option<String>,
    /// The Kafka door's address, when it has one (printed before http's).
    pub(crate) kafka: Option<String>,
    /// Its stderr, as it comes.
    pub(crate) log: Log,
}

impl Server {
    pub(crate) fn start(file: &Path) -> Server {
        Server::start_with(file, &[])
    }

    /// `flowd run FILE ARGS...`
    pub(crate) fn start_with(file: &Path, args: &[&str]) -> Server {
        Server::start_env(file, args, &[])
    }

    /// `PROGRAM ARGS...` running a flowd engine (`ip netns exec NS flowd run ...`).
    pub(crate) fn start_program(program: &str, args: &[&str]) -> Server {
        let mut command = std::process::Command::new(program);
        command.args(args);
        Server::spawn(command)
    }

    /// `flowd run FILE ARGS...` with `env` added to its environment (fail points). A
    /// peer on loopback speaks mutual TLS with the tests' cluster CA
    /// (`support::peer_tls_flags`) unless `env` holds `PLAINTEXT_PEERS`.
    pub(crate) fn start_env(file: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = flowd();
        command.arg("run").arg(file).args(args);
        let plaintext = env.contains(&PLAINTEXT_PEERS);
        command.envs(env.iter().copied().filter(|e| *e != PLAINTEXT_PEERS));
        let peer = args
            .iter()
            .position(|a| *a == "--peer-listen")
            .map(|i| args[i + 1]);
        if let Some(peer) = peer
            && peer.starts_with("127.")
            && !plaintext
            && !args.contains(&"--peer-tls-cert")
        {
            let cluster = args
                .iter()
                .position(|a| *a == "--cluster-id")
                .map_or("flowd", |i| args[i + 1]);
            command.args(crate::support::peer_tls_flags(cluster, &["127.0.0.1"]));
        }
        Server::spawn(command)
    }

    fn spawn(mut command: std::process::Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Echoed logs say which server spoke: its peer address, or its client one.
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let named = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        // An address the kernel picks (`:0`) says nothing: its pid then, and the
        // addresses it prints on stdout are echoed under the same tag.
        let tag = named("--peer-listen")
            .or_else(|| named("--listen"))
            .filter(|name| !name.ends_with(":0"))
            .map_or_else(|| format!("[pid {}] ", child.id()), |name| format!("[{name}] "));
        let echo = crate::support::echo_logs();
        let log = Log::read_as(child.stderr.take().unwrap(), tag.clone());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if echo && line.starts_with("listening ") {
                    eprintln!("{tag}{line}");
                }
                let _ = tx.send(line);
            }
        });
        let mut tcp = None;
        let mut http = None;
        let mut peer = None;
        let mut kafka = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tcp.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|error| {
                // Why it did not start (an address in use, a bad flag) is in its log.
                // Killed if it still runs: nothing else would.
                let _ = child.kill();
                let _ = child.wait();
                log.wait_closed(Duration::from_secs(5));
                panic!(
                    "flowd run prints its listeners: {error}; its log:\n{}",
                    log.text()
                )
            });
            if let Some(a) = line.strip_prefix("listening tcp ") {
                tcp = Some(a.to_owned());
            }
            if let Some(a) = line.strip_prefix("listening http ") {
                http = Some(a.to_owned());
            }
            if let Some(a) = line.strip_prefix("listening peers ") {
                peer = Some(a.to_owned());
            }
            if let Some(a) = line.strip_prefix("listening kafka ") {
                kafka = Some(a.to_owned());
            }
        }
        Server {
            child,
            tcp: tcp.unwrap(),
            http: http.unwrap(),
            peer,
            kafka,
            log,
        }
    }

    /// Sends `signal` to the engine, which must still run (the kill must land).
    /// Sends `signal`. A SIGSTOP returns only once every thread of the process has
    /// stopped: the kernel stops the others only when one thread takes the signal, and
    /// until then they run on, so a test that acts "while it is paused" must wait.
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
        if signal == libc::SIGSTOP {
            wait_stopped(self.child.id());
        }
    }

    /// SIGTERM, then waits (at most `limit`) for the exit: `Some(success)`, or `None`
    /// if it did not exit in time (then it is killed).
    pub(crate) fn terminate(&mut self, limit: Duration) -> Option<bool> {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.exit_within(limit);
        if status.is_none() {
            self.kill9();
        }
        status.map(|s| s.success())
    }

    /// Waits at most `limit` for the engine to exit: its status, or `None`. Once it
    /// exited, its log holds what it wrote last (the reader of its stderr may lag
    /// behind the exit).
    pub(crate) fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = crate::support::exit_within(&mut self.child, limit)?;
        self.log.wait_closed(Duration::from_secs(5));
        Some(status)
    }

    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        crate::support::proc_status_kib(self.child.id(), "VmRSS").expect("the server runs")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) fn run_cli(args: &[&str], stdin: &str) -> (i32, String, String) {
    let output = crate::support::run_bounded(flowd().args(args), stdin.as_bytes());
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn send_prints_offsets_and_tail_prints_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "group"));
    let (code, out, err) = run_cli(&["send", "--to", &server.tcp, "events"], "a\nb\nc\n");
    assert_eq!(code, 0, "{err}");
    let ids: Vec<(u32, u64)> = out
        .lines()
        .map(|l| {
            let (p, o) = l.split_once(':').expect("P:O");
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), 3, "{out}");
    let (code, out, err) = run_cli(
        &[
            "tail",
            "--from",
            &server.tcp,
            "events",
            "--offset",
            "earliest",
            "--json",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let values: Vec<&str> = records.iter().map(|r| r["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["a", "b", "c"]);
    for (record, (p, o)) in records.iter().zip(&ids) {
        assert_eq!(
            (
                record["partition"].as_u64().unwrap() as u32,
                record["offset"].as_u64().unwrap()
            ),
            (*p, *o)
        );
        assert_eq!(record["topic"], "events");
    }
    // Keys: by flag and by KEY<TAB>VALUE; jobs with --reply; errors exit non-zero.
    let (code, out, _) = run_cli(&["send", "--to", &server.tcp, "events"], "k1\tv1\n");
    assert_eq!((code, out.lines().count()), (0, 1));
    let (code, out, err) = run_cli(
        &["send", "--to", &server.tcp, "greet", "--reply"],
        "{\"name\":\"ada\"}\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), r#"{"greeting":"hello ada"}"#);
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "nosuch"], "x\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no topic \"nosuch\""), "{err}");
    let (code, _, err) = run_cli(&["tail", "--from", &server.tcp, "nosuch"], "");
    assert_eq!(code, 2, "{err}");

    // One request, two topics, the same partition number: each record's offset is its own.
    let mut client = Client::connect(&server.tcp).unwrap();
    let record = |v: &'static [u8]| flowd::protocol::WireRecord {
        timestamp_ms: None,
        key: None,
        value: v,
        headers: Vec::new(),
        raw: &[],
    };
    let groups = vec![
        flowd::protocol::ProduceGroup {
            topic: "answers",
            partition: Some(1),
            records: vec![record(b"x1"), record(b"x2"), record(b"x3")],
        },
        flowd::protocol::ProduceGroup {
            topic: "events",
            partition: Some(1),
            records: vec![record(b"e1")],
        },
    ];
    let response = client.call(&flowd::protocol::Request::Produce(groups)).unwrap();
    let Response::Produced(runs) = response else {
        panic!("{response:?}")
    };
    for (topic, run, value) in [("answers", runs[0][0], "x1"), ("events", runs[1][0], "e1")] {
        let fetched = client
            .fetch(topic, 1, FetchFrom::Offset(run.first_offset), 1, 0)
            .unwrap();
        assert_eq!(fetched.records[0].0, run.first_offset);
        assert_eq!(fetched.records[0].1.value, value.as_bytes(), "{topic}");
    }
}

/// One HTTP/1.1 exchange on a fresh connection, as a client sends it (by address, a
/// JSON body): `(status, body)`.
pub(crate) fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let headers = format!("Host: {addr}\r\nContent-Type: application/json\r\n");
    http_with(addr, method, path, &headers, body)
}

/// The value of the `/metrics` line `name` of `server` (its HTTP door, in plain HTTP).
pub(crate) fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = http(&server.http, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// One HTTP/1.1 exchange with exactly `headers` (each `Name: value\r\n`) on a fresh
/// connection: `(status, body)`.
pub(crate) fn http_with(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, headers, body);
    (status, body)
}

/// As `http_with`, with the response's head too: `(status, head, body)`.
pub(crate) fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn http_records_jobs_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "every"));
    let sent = r#"["one", {"key":"k","value":{"n":2}}, 3]"#;
    let (status, body) = http(&server.http, "POST", "/topics/events", sent);
    assert_eq!(status, 200, "{body}");
    let offsets: Vec<String> = serde_json::from_str::<serde_json::Value>(&body).unwrap()["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(offsets.len(), 3);
    let expected = [(None, "one"), (Some("k"), r#"{"n":2}"#), (None, "3")];
    for (id, (key, value)) in offsets.iter().zip(expected) {
        let (p, o) = id.split_once(':').unwrap();
        let (status, body) = http(
            &server.http,
            "GET",
            &format!("/topics/events?partition={p}&offset={o}&limit=1"),
            "",
        );
        assert_eq!(status, 200, "{body}");
        let records: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(records[0]["value"], value, "{body}");
        assert_eq!(records[0]["key"].as_str(), key, "{body}");
        assert_eq!(records[0]["offset"].as_u64().unwrap().to_string(), o);
    }
    // NDJSON too.
    let (status, body) = http(&server.http, "POST", "/topics/events", "\"x\"\n\"y\"\n");
    assert_eq!(status, 200, "{body}");

    let (status, body) = http(&server.http, "POST", "/jobs/greet", r#"{"name":"bob"}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"greeting":"hello bob"}"#));
    // The map stage fails on a non-object: the caller hears why at once.
    let (status, body) = http(&server.http, "POST", "/jobs/greet", "42");
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(r#"stage \"greeter\" could not handle it"#),
        "{body}"
    );
    // A job filtered out gets no answer: it times out.
    let (status, body) = http(&server.http, "POST", "/jobs/never", "42");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no answer within"), "{body}");
    for (method, path, body, want) in [
        ("POST", "/jobs/nosuch", "1", 404),
        ("POST", "/topics/nosuch", "[1]", 404),
        ("POST", "/topics/events", "[1,", 400),
        ("POST", "/topics/events", "[]", 400),
        ("GET", "/topics/events?partition=9", "", 404),
        ("GET", "/topics/events?limit=x", "", 400),
        ("DELETE", "/topics/events", "", 405),
        ("GET", "/nothing", "", 404),
    ] {
        let (status, reply) = http(&server.http, method, path, body);
        assert_eq!(status, want, "{method} {path}: {reply}");
        let error: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{reply}");
    }
    let big = format!("[\"{}\"]", "x".repeat(70 << 10));
    assert_eq!(http(&server.http, "POST", "/topics/events", &big).0, 413);

    let (status, body) = http(&server.http, "GET", "/status", "");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["cores"], 2);
    let events = doc["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap();
    let total: u64 = events["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 5);
    let (status, page) = http(&server.http, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(
        page.starts_with("<!doctype html>")
            && page.contains("href=\"#/topic/events\">events</a>")
            && page.contains("greeter"),
        "{page}"
    );
    assert_eq!(
        http(&server.http, "GET", "/healthz", ""),
        (200, r#"{"ok":true}"#.to_owned())
    );
    assert_eq!(
        http(&server.http, "GET", "/readyz", ""),
        (200, r#"{"ready":true}"#.to_owned())
    );
    let (status, metrics) = http(&server.http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let mut samples = std::collections::HashMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("NAME VALUE");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        samples.insert(name.to_owned(), value);
    }
    assert_eq!(samples["flowd_records_in_total"], 5.0, "{metrics}");
    assert!(samples["flowd_fsyncs_total"] >= 1.0, "{metrics}");
    assert_eq!(samples["flowd_job_timeouts_total"], 1.0, "{metrics}");
    assert!(
        samples["flowd_produce_latency_seconds{quantile=\"0.99\"}"] > 0.0,
        "{metrics}"
    );
}

fn frame(version: u8, kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((12 + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&[version, kind, 0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn expect_error(client: &mut Client, code: ErrorCode) {
    match client.recv() {
        Ok((
            _,
            Response::Error {
                code: got, message, ..
            },
        )) => {
            assert_eq!(got, code, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected a {code:?} error, got {other:?}"),
    }
}

fn expect_closed(client: &mut Client) {
    match client.recv() {
        Err(ClientError::Closed { .. } | ClientError::Io { .. }) => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

/// A well-behaved client's produce gets its acks.
fn healthy(addr: &str, n: usize) {
    let mut client = Client::connect(addr).unwrap();
    let records: Vec<OwnedWireRecord> = (0..n)
        .map(|i| OwnedWireRecord::value(format!("ok-{i}")))
        .collect();
    let acked = client.produce("events", &records).unwrap();
    assert_eq!(acked.len(), n);
    let (p, o) = acked[0];
    let fetched = client.fetch("events", p, FetchFrom::Offset(o), 1, 0).unwrap();
    assert_eq!(fetched.records[0].1.value, b"ok-0");
}

#[test]
fn bad_input_gets_clear_errors_and_never_hurts_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "group"));
    let addr = server.tcp.as_str();
    let rss_before = server.rss_kib();

    // Over the frame limit: an error, then the connection closes.
    let mut c = Client::connect(addr).unwrap();
    c.send_raw(&(1u32 << 20).to_le_bytes()).unwrap();
    expect_error(&mut c, ErrorCode::FrameTooLarge);
    expect_closed(&mut c);
    // A bad version: an error, then closed.
    let mut c = Client::connect(addr).unwrap();
    c.send_raw(&frame(9, 0x03, 1, &[])).unwrap();
    expect_error(&mut c, ErrorCode::BadVersion);
    expect_closed(&mut c);
    // Unknown kind, malformed body, unknown topic, a reserved header, a consumer kind:
    // each an error, and the same connection keeps working.
    let mut c = Client::connect(addr).unwrap();
    c.send_raw(&frame(1, 0x77, 1, &[])).unwrap();
    expect_error(&mut c, ErrorCode::UnknownKind);
    c.send_raw(&frame(1, 0x01, 2, &[1, 0, 6, 0, b'e'])).unwrap();
    expect_error(&mut c, ErrorCode::Malformed);
    c.send_raw(&frame(1, 0x10, 3, &[])).unwrap();
    expect_error(&mut c, ErrorCode::Malformed);
    c.send_raw(&frame(1, 0x20, 3, &[])).unwrap();
    expect_error(&mut c, ErrorCode::Unsupported);
    let mut bytes = Vec::new();
    encode_produce(&mut bytes, 4, "nosuch", None, &[OwnedWireRecord::value("x")]);
    c.send_raw(&bytes).unwrap();
    expect_error(&mut c, ErrorCode::UnknownTopic);
    let forged = OwnedWireRecord {
        headers: vec![("flowd-src".into(), b"x".to_vec())],
        ..OwnedWireRecord::value("x")
    };
    let mut bytes = Vec::new();
    encode_produce(&mut bytes, 5, "events", None, &[forged]);
    c.send_raw(&bytes).unwrap();
    expect_error(&mut c, ErrorCode::Invalid);
    let mut bytes = Vec::new();
    encode_produce(&mut bytes, 6, "events", Some(99), &[OwnedWireRecord::value("x")]);
    c.send_raw(&bytes).unwrap();
    expect_error(&mut c, ErrorCode::UnknownPartition);
    assert_eq!(c.metadata().unwrap().topics.len(), 4);
    // A truncated frame: half of it, then silence; the server gives up after io_timeout.
    let mut c = Client::connect(addr).unwrap();
    let mut bytes = Vec::new();
    encode_produce(&mut bytes, 1, "events", None, &[OwnedWireRecord::value("half")]);
    c.send_raw(&bytes[..bytes.len() / 2]).unwrap();
    c.flush().unwrap();
    expect_closed(&mut c);
    // ...or half, then the client closes: nothing of it is written.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&bytes[..bytes.len() / 2]).unwrap();
    drop(raw);
    // Garbage bytes.
    let mut raw = TcpStream::connect(addr).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    let _ = raw.write_all(&garbage);
    drop(raw);

    // A slow client: pipelines fetches of 64 KiB and never reads a response.
    let mut slow = Client::connect(addr).unwrap();
    for i in 0..2000u64 {
        let request = flowd::protocol::Request::Fetch(flowd::protocol::FetchRequest {
            topic: "events",
            partition: 0,
            from: FetchFrom::Earliest,
            max_records: 1000,
            max_bytes: 64 << 10,
            wait_ms: 0,
        });
        if slow.send(&request).is_err() || (i % 100 == 0 && slow.flush().is_err()) {
            break;
        }
    }
    // Thousands of idle connections, from two other loopback addresses (one address
    // holds at most max_connections_per_address, 1024 by default).
    let limit = open_files_limit().saturating_sub(200).min(2000) as usize;
    let idle: Vec<TcpStream> = (0..limit)
        .filter_map(|i| connect_from(if i % 2 == 0 { "127.0.0.3" } else { "127.0.0.4" }, addr))
        .collect();
    assert!(
        idle.len() >= limit.min(500),
        "opened {} idle connections",
        idle.len()
    );

    // Through all of it, a well-behaved client is served.
    healthy(addr, 100);
    let mut c = Client::connect(addr).unwrap();
    let records: Vec<OwnedWireRecord> = (0..200)
        .map(|i| OwnedWireRecord::value(vec![b'v'; 100 + i]))
        .collect();
    for _ in 0..50 {
        let acked = offsets(flowd::client::server_error(produce_once(&mut c, &records)).unwrap()).unwrap();
        assert_eq!(acked.len(), 200);
    }
    let rss_after = server.rss_kib();
    drop(idle);
    drop(slow);
    healthy(addr, 10);
    // Of the frames cut short and the rejected ones, nothing was written: every record in
    // `events` is one the well-behaved clients sent.
    let mut client = Client::connect(addr).unwrap();
    let mut records = 0;
    for p in 0..4 {
        let mut from = 0;
        loop {
            let fetched = client
                .fetch("events", p, FetchFrom::Offset(from), 10_000, 0)
                .unwrap();
            let Some((last, _)) = fetched.records.last() else {
                break;
            };
            from = last + 1;
            for (offset, record) in &fetched.records {
                let value = String::from_utf8_lossy(&record.value).into_owned();
                assert!(
                    value.starts_with("ok-") || value.starts_with("vvvv"),
                    "record {p}:{offset} is {value:?}, from no well-behaved client"
                );
                records += 1;
            }
        }
    }
    assert_eq!(
        records,
        100 + 50 * 200 + 10,
        "every record the well-behaved clients sent, once"
    );
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB under bad input and idle connections"
    );
}

#[test]
fn a_batch_sent_as_the_log_stores_it_reads_back_exactly_and_a_bad_one_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "group"));
    let mut client = Client::connect(&server.tcp).unwrap();

    // Keys, headers, and timestamps of its own, to a named partition.
    let records: Vec<OwnedWireRecord> = (0..300u64)
        .map(|i| OwnedWireRecord {
            timestamp_ms: Some(
                1_700_000_000_000 + (i as i64 * 7919) % 5000 - if i == 7 { 1 << 40 } else { 0 },
            ),
            key: (i % 3 == 0).then(|| format!("k{i}").into_bytes()),
            value: vec![(i % 251) as u8; (i % 40) as usize],
            headers: if i % 5 == 0 {
                vec![("trace".into(), i.to_le_bytes().to_vec())]
            } else {
                vec![]
            },
        })
        .collect();
    let acked = client.produce_batch("events", Some(2), &records).unwrap();
    assert_eq!(acked.len(), records.len());
    let first = acked[0].1;
    assert!(
        acked
            .iter()
            .enumerate()
            .all(|(i, &(p, o))| p == 2 && o == first + i as u64)
    );
    let fetched = client
        .fetch("events", 2, FetchFrom::Offset(first), 1000, 0)
        .unwrap();
    let got: Vec<OwnedWireRecord> = fetched.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, records, "each record back as it was sent");
    // The same, read as the stored batches, from inside the batch.
    let fetched = client
        .fetch_batches("events", 2, FetchFrom::Offset(first + 5), 1000, 0)
        .unwrap();
    assert_eq!(fetched.records.first().map(|(o, _)| *o), Some(first + 5));
    let got: Vec<OwnedWireRecord> = fetched.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        got,
        records[5..],
        "each record back as it was sent, from the offset asked"
    );

    // No timestamps: the server's, as it took the batch.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let plain: Vec<OwnedWireRecord> = (0..10).map(|i| OwnedWireRecord::value(format!("p{i}"))).collect();
    let acked = client.produce_batch("events", None, &plain).unwrap();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (p, o) = acked[0];
    let fetched = client.fetch("events", p, FetchFrom::Offset(o), 10, 0).unwrap();
    assert_eq!(fetched.records.len(), 10);
    for (i, (_, r)) in fetched.records.iter().enumerate() {
        assert_eq!(r.value, format!("p{i}").into_bytes());
        let ts = r.timestamp_ms.unwrap();
        assert!((before..=after).contains(&ts), "{ts} not in {before}..={after}");
    }

    // Keys without a partition, a reserved header, an unknown topic: refused, said why.
    let keyed = vec![OwnedWireRecord {
        key: Some(b"k".to_vec()),
        ..OwnedWireRecord::value("v")
    }];
    let mut refused =
        |topic: &str, partition: Option<u32>, records: &[OwnedWireRecord], code: ErrorCode, says: &str| {
            match client.produce_batch(topic, partition, records) {
                Err(ClientError::Server { code: got, message }) => {
                    assert_eq!(got, code, "{message}");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected a {code:?} error, got {other:?}"),
            }
        };
    refused(
        "events",
        None,
        &keyed,
        ErrorCode::Invalid,
        "must name its partition",
    );
    let forged = vec![OwnedWireRecord {
        headers: vec![("flowd-source".into(), b"x".to_vec())],
        ..OwnedWireRecord::value("v")
    }];
    refused(
        "events",
        Some(0),
        &forged,
        ErrorCode::Invalid,
        "reserved for the engine",
    );
    refused("nope", Some(0), &plain, ErrorCode::UnknownTopic, "nope");
    refused("events", Some(9), &plain, ErrorCode::UnknownPartition, "9");
    assert!(
        matches!(client.produce_batch("events", None, &[]), Err(ClientError::Refused(m)) if m.contains("at least one record"))
    );

    // A batch damaged on the way (one byte of a value) fails its CRC, and nothing of it
    // is written; the connection goes on.
    let mut bytes = Vec::new();
    flowd::protocol::message::encode_produce_batch(&mut bytes, 77, "events", Some(1), &plain, 0);
    let end = client
        .fetch("events", 1, FetchFrom::Latest, 1, 0)
        .unwrap()
        .next_offset;
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    client.send_raw(&bytes).unwrap();
    match client.recv().unwrap() {
        (77, Response::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Malformed, "{message}");
            assert!(message.contains("CRC"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(
        client
            .fetch("events", 1, FetchFrom::Latest, 1, 0)
            .unwrap()
            .next_offset,
        end
    );
    assert_eq!(client.produce_batch("events", Some(1), &plain).unwrap().len(), 10);
}

#[test]
fn fetches_of_batches_and_of_records_agree_on_old_and_new_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Partition 0 of `events` starts as the format-1 fixture: 500 records in frames.
    crate::fixture::copy_dir(
        &crate::fixture::fixture_dir().join("topics/events/0"),
        &dir.path().join("data/topics/events/0"),
    );
    let server = Server::start(&dataflow(dir.path(), "group"));
    let mut client = Client::connect(&server.tcp).unwrap();
    for round in 0..4u64 {
        let records: Vec<OwnedWireRecord> = (0..37)
            .map(|i| OwnedWireRecord::value(format!("{round}-{i}")))
            .collect();
        client.produce_batch("events", Some(0), &records).unwrap();
        client.produce("events", &records).unwrap();
    }
    for partition in 0..4u32 {
        let mut from = 0;
        let (mut by_records, mut by_batches) = (Vec::new(), Vec::new());
        // Bounded: each fetch returns at least one record until the end.
        for _ in 0..10_000 {
            let a = client
                .fetch("events", partition, FetchFrom::Offset(from), 100, 0)
                .unwrap();
            let Some(&(last, _)) = a.records.last() else { break };
            from = last + 1;
            by_records.extend(a.records);
        }
        from = 0;
        for _ in 0..10_000 {
            let b = client
                .fetch_batches("events", partition, FetchFrom::Offset(from), 100, 0)
                .unwrap();
            let Some(&(last, _)) = b.records.last() else { break };
            from = last + 1;
            by_batches.extend(b.records);
        }
        assert_eq!(by_batches, by_records, "partition {partition}");
        // A byte limit holds for records of old segments too (made into one batch).
        let mut request =
            flowd::protocol::message::FetchRequest::new("events", partition, FetchFrom::Offset(0), 1000, 0);
        request.max_bytes = 2000;
        let mut seen = 0u64;
        client.fetch_batches_each(&request, |_| seen += 1).unwrap();
        assert!(
            (1..50).contains(&seen),
            "partition {partition}: {seen} records under a 2000-byte limit"
        );
        if partition == 0 {
            assert!(by_records.len() >= 500 + 37 * 4, "{}", by_records.len());
            for (offset, record) in by_records.iter().take(500) {
                let want = crate::support::expected(*offset);
                assert_eq!(record.value, want.value);
                assert_eq!(record.key, want.key);
                assert_eq!(record.timestamp_ms, Some(want.timestamp_ms));
                assert_eq!(record.headers, want.headers);
            }
        }
    }
}

fn produce_once(client: &mut Client, records: &[OwnedWireRecord]) -> Response {
    let id = client.send_produce("events", None, records).unwrap();
    let (got, response) = client.recv().unwrap();
    assert_eq!(got, id);
    response
}

fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Records acked over TCP survive a SIGKILL of the server; `FLOWD_INGEST_CRASH_ROUNDS`
/// sets how many kills (default 3).
#[test]
fn records_acked_over_tcp_survive_sigkill() {
    let rounds: u64 = crate::support::env_or("FLOWD_INGEST_CRASH_ROUNDS", 3);
    for durability in ["group", "every"] {
        let dir = tempfile::tempdir().unwrap();
        let file = dataflow(dir.path(), durability);
        let mut acked: Vec<((u32, u64), String)> = Vec::new();
        let mut next = 0u64;
        for round in 0..rounds {
            let mut server = Server::start(&file);
            let addr = server.tcp.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let start = next;
            // Returns whether the kill cut it off (it was producing then).
            let producer = std::thread::spawn(move || {
                let Ok(mut client) = Client::connect(&addr) else {
                    return false;
                };
                let mut n = start;
                // Bounded: the kill ends it long before.
                for _ in 0..100_000 {
                    let values: Vec<String> = (n..n + 50).map(|i| format!("r{i}")).collect();
                    let records: Vec<OwnedWireRecord> = values
                        .iter()
                        .map(|v| OwnedWireRecord::value(v.as_str()))
                        .collect();
                    // Records and batches in turn: both kinds of ack must hold.
                    let produced = if (n / 50).is_multiple_of(2) {
                        client.produce("events", &records)
                    } else {
                        client.produce_batch("events", None, &records)
                    };
                    match produced {
                        Ok(ids) => {
                            for (id, v) in ids.into_iter().zip(values) {
                                let _ = tx.send((id, v));
                            }
                        }
                        Err(_) => return true,
                    }
                    n += 50;
                }
                false
            });
            // Kill once this round's producer has some acks, a different number each round.
            let mut this_round = Vec::new();
            let wanted = 50 * (3 + 4 * round as usize);
            while this_round.len() < wanted {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(acked) => this_round.push(acked),
                    Err(_) => panic!("{durability}: the producer got no acks"),
                }
            }
            server.kill9();
            assert!(
                producer.join().unwrap(),
                "{durability}: the kill cut the producer off mid-stream"
            );
            acked.extend(this_round);
            acked.extend(rx.try_iter());
            next = acked.len() as u64 + 1_000_000 * (round + 1);
        }
        assert!(
            acked.len() > 100,
            "{durability}: only {} records were acked",
            acked.len()
        );
        let server = Server::start(&file);
        let mut client = Client::connect(&server.tcp).unwrap();
        for ((p, o), value) in &acked {
            let fetched = client.fetch("events", *p, FetchFrom::Offset(*o), 1, 0).unwrap();
            let got = fetched.records.first().filter(|(offset, _)| offset == o);
            assert_eq!(
                got.map(|(_, r)| r.value.as_slice()),
                Some(value.as_bytes()),
                "{durability}: acked record {p}:{o} ({value}) is missing after SIGKILL"
            );
        }
    }
}

/// Waits (at most 10 s, else panics) until every thread of process `pid` is stopped.
/// io_uring's kernel workers (`iou-*`) take no signals and run no code of the process,
/// so they are not waited for.
pub(crate) fn wait_stopped(pid: u32) {
    let stopped = || -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            // A thread gone meanwhile runs nothing either.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                return true;
            };
            comm.starts_with("iou-")
                || stat
                    .rfind(')')
                    .is_some_and(|end| stat[end + 1..].trim_start().starts_with(['T', 't']))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Bounded by the deadline.
    while !stopped() {
        assert!(
            Instant::now() < deadline,
            "process {pid} had not stopped 10 s after SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
