//! Consumers as specifications: each table row is a named sequence of requests against
//! a running `flowd run` and what each must answer (claim, ack, reclaim, timeouts, dead
//! letters, ack-and-commit, admin calls, restarts), plus start positions, range reads,
//! `flowd tail --group` and `flowd drain`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowd::client::{Client, ClientError};
use flowd::consumer::{OnMax, Options, Start};
use flowd::protocol::consumer::{AdminAction, Bound, RangeSpec};
use flowd::protocol::{ErrorCode, OwnedWireRecord};

use crate::ingest::{Server, http, run_cli};
use crate::support::fast_tempdir;

/// Specs' topics have two partitions; records go to, and are claimed from, this one.
const P: u32 = 1;
const GROUP: &str = "g";

fn dataflow(dir: &Path, specs: usize) -> PathBuf {
    let mut text = format!(
        "[engine]\ndata_dir = \"{}\"\ndurability = \"group\"\ncores = 2\n\n[ingest]\ntcp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n",
        dir.join("data").display()
    );
    for i in 0..specs {
        for name in ["s", "out", "dead"] {
            text += &format!("\n[[topic]]\nname = \"{name}{i}\"\npartitions = 2\n");
        }
    }
    let path = dir.join("consumers.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Debug)]
enum Step {
    /// Produce this many records to partition P.
    Produce(u64),
    /// Claim up to n; expect `Some((from, to))`, `None` (nothing), or an error.
    Claim(u32, Result<Option<(u64, u64)>, ErrorCode>),
    Ack(Result<(u64, u64), ErrorCode>),
    /// Expect `(reclaims, outcome)`: 0 redeliver, 1 disabled, 2 skipped, 3 dead letter.
    Reclaim(Result<(u32, u8), ErrorCode>),
    /// Ack and produce this many records to `out{i}` as one.
    Commit(usize, Result<(u64, u64), ErrorCode>),
    Admin(AdminAction, Result<(), ErrorCode>),
    /// Committed offset, claimed range, reclaim count, state of partition P.
    Is(u64, Option<(u64, u64)>, u32, &'static str),
    /// The engine reclaims the last claim by its `reclaim_timeout`: not before
    /// `after` ms from the claim, and by `within` ms (polled, bounded); then the cursor
    /// is (committed, reclaims).
    ReclaimedBy {
        after: u64,
        within: u64,
        then: (u64, u32),
    },
    /// SIGKILL the engine and start it again on the same data.
    Restart,
    /// Records in `out{i}`, and in `dead{i}` (each with the reason header).
    Outputs(u64, u64),
}

struct Spec {
    name: &'static str,
    options: Options,
    steps: Vec<Step>,
}

fn code<T>(result: Result<T, ClientError>) -> Result<T, ErrorCode> {
    result.map_err(|e| match e {
        ClientError::Server { code, .. } => code,
        other => panic!("not a server error: {other}"),
    })
}

struct Engine {
    file: PathBuf,
    server: Server,
    client: Client,
}

impl Engine {
    fn start(file: PathBuf) -> Engine {
        let server = Server::start(&file);
        let client = Client::connect(&server.tcp).unwrap();
        Engine { file, server, client }
    }

    fn restart(&mut self) {
        self.server.kill9();
        self.server = Server::start(&self.file);
        self.client = Client::connect(&self.server.tcp).unwrap();
    }

    fn produce(&mut self, topic: &str, n: u64) {
        let records: Vec<OwnedWireRecord> = (0..n).map(|k| OwnedWireRecord::value(format!("r{k}"))).collect();
        let id = self.client.send_produce(topic, Some(P), &records).unwrap();
        self.client.flush().unwrap();
        let (got, response) = self.client.recv().unwrap();
        assert_eq!(got, id);
        flowd::client::offsets(flowd::client::server_error(response).unwrap()).unwrap();
    }
}

/// The cursor of partition P: (committed, claimed range, reclaims).
fn cursor_now(c: &mut Client, topic: &str) -> (u64, Option<(u64, u64)>, u32) {
    let cursors = c.consumers(AdminAction::List, topic, GROUP).unwrap();
    let cursor = cursors.iter().find(|c| c.partition == P).expect("a cursor on P");
    (
        cursor.committed,
        cursor.claimed.map(|r| (r.from, r.to)),
        cursor.reclaims,
    )
}

fn run_spec(engine: &mut Engine, i: usize, spec: &Spec) {
    let (topic, out, dead) = (format!("s{i}"), format!("out{i}"), format!("dead{i}"));
    let mut claimed_at = std::time::Instant::now();
    for (n, step) in spec.steps.iter().enumerate() {
        let at = format!("spec \"{}\", step {n}: {step:?}", spec.name);
        let c = &mut engine.client;
        match step {
            Step::Produce(count) => engine.produce(&topic, *count),
            Step::Claim(count, want) => {
                claimed_at = std::time::Instant::now();
                let got = code(c.claim(&topic, GROUP, Some(P), *count, Some(spec.options.clone())));
                let got = got.map(|claimed| {
                    claimed.partition.map(|p| {
                        assert_eq!(p, P, "{at}");
                        assert_eq!(claimed.records.len() as u64, claimed.to - claimed.from, "{at}");
                        for (k, (offset, record)) in claimed.records.iter().enumerate() {
                            assert_eq!(*offset, claimed.from + k as u64, "{at}");
                            assert_eq!(record.value, format!("r{offset}").into_bytes(), "{at}");
                        }
                        (claimed.from, claimed.to)
                    })
                });
                assert_eq!(&got, want, "{at}");
            }
            Step::Ack(want) => assert_eq!(&code(c.ack(&topic, GROUP, P)), want, "{at}"),
            Step::Reclaim(want) => {
                let got = code(c.reclaim(&topic, GROUP, P)).map(|r| (r.reclaims, r.outcome));
                assert_eq!(&got, want, "{at}");
            }
            Step::Commit(count, want) => {
                let records: Vec<OwnedWireRecord> = (0..*count)
                    .map(|k| OwnedWireRecord::value(format!("c{k}")))
                    .collect();
                let got = code(c.ack_commit(&topic, GROUP, P, &out, &records)).map(|(range, runs)| {
                    assert_eq!(
                        runs.iter().flatten().map(|r| r.count as usize).sum::<usize>(),
                        *count,
                        "{at}"
                    );
                    range
                });
                assert_eq!(&got, want, "{at}");
            }
            Step::Admin(action, want) => {
                let got = code(c.consumers(*action, &topic, GROUP)).map(|_| ());
                assert_eq!(&got, want, "{at}");
            }
            Step::Is(committed, claimed, reclaims, state) => {
                let cursors = c.consumers(AdminAction::List, &topic, GROUP).unwrap();
                let cursor = cursors.iter().find(|c| c.partition == P).expect("a cursor on P");
                let got = (
                    cursor.committed,
                    cursor.claimed.map(|r| (r.from, r.to)),
                    cursor.reclaims,
                    cursor.state.as_str(),
                );
                assert_eq!(got, (*committed, *claimed, *reclaims, *state), "{at}");
            }
            Step::ReclaimedBy { after, within, then } => {
                // Held until its timeout; reclaimed soon after: polled, bounded.
                let left = Duration::from_millis(*within).saturating_sub(claimed_at.elapsed());
                let (committed, reclaims) = crate::support::poll(left, Duration::from_millis(10), || {
                    let (committed, claimed, reclaims) = cursor_now(c, &topic);
                    claimed.is_none().then_some((committed, reclaims))
                })
                .unwrap_or_else(|| panic!("{at}: not reclaimed within {within} ms"));
                let waited = claimed_at.elapsed();
                assert!(
                    waited >= Duration::from_millis(*after),
                    "{at}: reclaimed after {waited:?}, before its timeout"
                );
                assert_eq!((committed, reclaims), *then, "{at}");
            }
            Step::Restart => engine.restart(),
            Step::Outputs(outs, deads) => {
                // A reclaim by timeout moves the cursor, then appends the dead letters
                // (one transaction; nobody waits for it): they show moments later.
                let _ = crate::support::poll(Duration::from_secs(5), Duration::from_millis(10), || {
                    (c.length(&out, None).unwrap() >= *outs && c.length(&dead, None).unwrap() >= *deads)
                        .then_some(())
                });
                assert_eq!(c.length(&out, None).unwrap(), *outs, "{at}");
                assert_eq!(c.length(&dead, None).unwrap(), *deads, "{at}");
                for p in 0..2 {
                    let fetched = c
                        .fetch(&dead, p, flowd::protocol::FetchFrom::Earliest, 100, 0)
                        .unwrap();
                    for (_, record) in fetched.records {
                        let reason = record.headers.iter().find(|(n, _)| n == "flowd-dead-reason");
                        assert!(
                            reason.is_some_and(|(_, v)| v.starts_with(b"offsets")),
                            "{at}: {record:?}"
                        );
                        assert!(
                            record
                                .headers
                                .iter()
                                .any(|(n, v)| n == "flowd-dead-from" && v.starts_with(topic.as_bytes())),
                            "{at}"
                        );
                    }
                }
            }
        }
    }
}

fn max(n: u32, on_max: OnMax, timeout_ms: Option<u64>) -> Options {
    Options {
        max_reclaims: Some(n),
        on_max,
        reclaim_timeout_ms: timeout_ms,
        ..Options::default()
    }
}

fn specs() -> Vec<Spec> {
    use ErrorCode::*;
    use Step::*;
    let plain = Options::default;
    vec![
        Spec {
            name: "claim, nothing new until acked, ack returns the range and moves on",
            options: plain(),
            steps: vec![
                Claim(10, Ok(None)),
                Produce(5),
                Claim(3, Ok(Some((0, 3)))),
                Claim(3, Ok(None)),
                Is(0, Some((0, 3)), 0, "active"),
                Ack(Ok((0, 3))),
                Ack(Err(NothingClaimed)),
                Claim(10, Ok(Some((3, 5)))),
                Ack(Ok((3, 5))),
                Claim(10, Ok(None)),
                Is(5, None, 0, "active"),
            ],
        },
        Spec {
            name: "reclaim re-delivers, counts, and an ack resets the count",
            options: plain(),
            steps: vec![
                Reclaim(Err(UnknownConsumer)),
                Produce(4),
                Claim(4, Ok(Some((0, 4)))),
                Reclaim(Ok((1, 0))),
                Reclaim(Err(NothingClaimed)),
                Claim(2, Ok(Some((0, 2)))),
                Reclaim(Ok((2, 0))),
                Is(0, None, 2, "active"),
                Claim(4, Ok(Some((0, 4)))),
                Ack(Ok((0, 4))),
                Is(4, None, 0, "active"),
            ],
        },
        Spec {
            name: "reclaim_timeout: the engine reclaims a claim not acked in time",
            options: max(10, OnMax::Disable, Some(300)),
            steps: vec![
                Produce(3),
                Claim(3, Ok(Some((0, 3)))),
                ReclaimedBy {
                    after: 300,
                    within: 5000,
                    then: (0, 1),
                },
                Is(0, None, 1, "active"),
                Ack(Err(NothingClaimed)),
                Claim(3, Ok(Some((0, 3)))),
                Ack(Ok((0, 3))),
            ],
        },
        Spec {
            name: "max_reclaims then disable: claims refused until resumed, records kept",
            options: max(1, OnMax::Disable, None),
            steps: vec![
                Produce(2),
                Claim(2, Ok(Some((0, 2)))),
                Reclaim(Ok((1, 0))),
                Claim(2, Ok(Some((0, 2)))),
                Reclaim(Ok((0, 1))),
                Is(0, None, 0, "disabled"),
                Claim(2, Err(ConsumerDisabled)),
                Admin(AdminAction::Resume, Ok(())),
                Admin(AdminAction::Resume, Err(ConsumerActive)),
                Claim(2, Ok(Some((0, 2)))),
            ],
        },
        Spec {
            name: "max_reclaims then continue: the records are skipped",
            options: max(0, OnMax::Continue, None),
            steps: vec![
                Produce(4),
                Claim(2, Ok(Some((0, 2)))),
                Reclaim(Ok((0, 2))),
                Claim(2, Ok(Some((2, 4)))),
                Outputs(0, 0),
            ],
        },
        Spec {
            name: "max_reclaims then dead_letter, by timeout too, survives a restart",
            options: max(1, OnMax::DeadLetter("dead5".into()), Some(200)),
            steps: vec![
                Produce(3),
                Claim(3, Ok(Some((0, 3)))),
                Reclaim(Ok((1, 0))),
                Claim(3, Ok(Some((0, 3)))),
                // Past max_reclaims: the timeout dead-letters the records and acks them.
                ReclaimedBy {
                    after: 200,
                    within: 5000,
                    then: (3, 0),
                },
                Is(3, None, 0, "active"),
                Outputs(0, 3),
                Restart,
                Outputs(0, 3),
                Is(3, None, 0, "active"),
            ],
        },
        Spec {
            name: "ack-and-commit: the ack and the records happen together; nothing claimed, neither",
            options: plain(),
            steps: vec![
                Produce(4),
                Commit(2, Err(UnknownConsumer)),
                Claim(2, Ok(Some((0, 2)))),
                Commit(3, Ok((0, 2))),
                Outputs(3, 0),
                Commit(3, Err(NothingClaimed)),
                Outputs(3, 0),
                Claim(5, Ok(Some((2, 4)))),
                Restart,
                Is(2, Some((2, 4)), 0, "active"),
                Commit(1, Ok((2, 4))),
                Outputs(4, 0),
            ],
        },
        Spec {
            name: "admin: disable drops the claim, destroy forgets, state survives restarts",
            options: plain(),
            steps: vec![
                Admin(AdminAction::List, Err(UnknownConsumer)),
                Admin(AdminAction::Resume, Err(UnknownConsumer)),
                Produce(6),
                Claim(2, Ok(Some((0, 2)))),
                Ack(Ok((0, 2))),
                Claim(2, Ok(Some((2, 4)))),
                Reclaim(Ok((1, 0))),
                Restart,
                Is(2, None, 1, "active"),
                Claim(2, Ok(Some((2, 4)))),
                Admin(AdminAction::Disable, Ok(())),
                Admin(AdminAction::Disable, Err(ConsumerDisabled)),
                Is(2, None, 1, "disabled"),
                Ack(Err(NothingClaimed)),
                Restart,
                Is(2, None, 1, "disabled"),
                Admin(AdminAction::Resume, Ok(())),
                Claim(9, Ok(Some((2, 6)))),
                Admin(AdminAction::Destroy, Ok(())),
                Admin(AdminAction::List, Err(UnknownConsumer)),
                Restart,
                Admin(AdminAction::List, Err(UnknownConsumer)),
                Claim(1, Ok(Some((0, 1)))),
            ],
        },
    ]
}

#[test]
fn consumer_specifications() {
    let dir = fast_tempdir();
    let specs = specs();
    let mut engine = Engine::start(dataflow(dir.path(), specs.len()));
    for (i, spec) in specs.iter().enumerate() {
        eprintln!("spec {i}: {}", spec.name);
        run_spec(&mut engine, i, spec);
    }
}

/// A range read of partition P.
fn span(by_time: bool, reverse: bool, from: Bound, to: Bound, limit: u32) -> RangeSpec {
    RangeSpec {
        partition: P,
        by_time,
        reverse,
        from,
        to,
        limit,
        max_bytes: 1 << 20,
    }
}

#[test]
fn start_positions_any_partition_ranges_and_bad_requests() {
    let dir = fast_tempdir();
    let mut engine = Engine::start(dataflow(dir.path(), 1));
    engine.produce("s0", 5);
    let c = &mut engine.client;
    let start = |s: Start| {
        Some(Options {
            start: s,
            ..Options::default()
        })
    };
    let first = |c: &mut Client, g: &str, s: Start| c.claim("s0", g, Some(P), 100, start(s)).unwrap();
    assert_eq!(first(c, "earliest", Start::Earliest).from, 0, ">");
    assert_eq!(
        first(c, "after", Start::After(2)).from,
        3,
        "an offset: the record after it"
    );
    assert_eq!(first(c, "new", Start::New).partition, None, "$>: nothing yet");
    let stamp = c
        .fetch("s0", P, flowd::protocol::FetchFrom::Offset(4), 1, 0)
        .unwrap()
        .records[0]
        .1
        .timestamp_ms
        .unwrap();
    let by_time = first(c, "time", Start::Time(stamp));
    assert!(
        by_time.from <= 4 && by_time.to == 5,
        "a time: from the first record at or after it"
    );
    engine.produce("s0", 2);
    let c = &mut engine.client;
    assert_eq!(
        c.claim("s0", "new", Some(P), 100, None).unwrap().from,
        5,
        "$>: only what came after"
    );

    // Any partition: the claim comes from the one with records.
    let any = c.claim("s0", "any", None, 100, start(Start::Earliest)).unwrap();
    assert_eq!((any.partition, any.from, any.to), (Some(P), 0, 7));

    // Range, reverse range and length.
    let offsets =
        |f: flowd::protocol::message::Fetched| f.records.iter().map(|(o, _)| *o).collect::<Vec<_>>();
    let r = c
        .range(
            "s0",
            span(false, false, Bound::Excluded(1), Bound::Included(4), 100),
        )
        .unwrap();
    assert_eq!(offsets(r), vec![2, 3, 4]);
    let r = c
        .range("s0", span(false, true, Bound::Unbounded, Bound::Unbounded, 3))
        .unwrap();
    assert_eq!(offsets(r), vec![6, 5, 4]);
    let r = c
        .range(
            "s0",
            span(false, false, Bound::Included(2), Bound::Excluded(2), 10),
        )
        .unwrap();
    assert!(r.records.is_empty());
    let r = c
        .range("s0", span(true, false, Bound::Included(0), Bound::Unbounded, 2))
        .unwrap();
    assert_eq!(offsets(r), vec![0, 1], "by time from the epoch");
    assert_eq!(c.length("s0", Some(P)).unwrap(), 7);
    assert_eq!(c.length("s0", None).unwrap(), 7);

    // Bad requests: clear errors, and the connection goes on.
    let bad = [
        code(c.claim("nope", "g", None, 1, None)).map(|_| ()),
        code(c.claim("s0", "g", Some(9), 1, None)).map(|_| ()),
        code(c.claim("s0", "", None, 1, None)).map(|_| ()),
        code(c.claim(
            "s0",
            "g",
            None,
            1,
            Some(Options {
                on_max: OnMax::DeadLetter("nope".into()),
                ..Options::default()
            }),
        ))
        .map(|_| ()),
        code(c.ack("s0", "g", u32::MAX)).map(|_| ()),
        code(c.consumers(AdminAction::Destroy, "", "")).map(|_| ()),
        code(c.length("nope", None)).map(|_| ()),
    ];
    use ErrorCode::*;
    assert_eq!(
        bad,
        [
            Err(UnknownTopic),
            Err(UnknownPartition),
            Err(Invalid),
            Err(UnknownTopic),
            Err(Invalid),
            Err(Invalid),
            Err(UnknownTopic)
        ]
    );
    assert_eq!(c.length("s0", Some(P)).unwrap(), 7);

    // The same over HTTP.
    let h = engine.server.http.clone();
    let (status, body) = http(
        &h,
        "POST",
        "/consumers/s0/web/claim?count=2&create=earliest&partition=1",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["from"].as_u64(), v["to"].as_u64()), (Some(0), Some(2)));
    let (status, body) = http(
        &h,
        "POST",
        "/consumers/s0/web/commit?partition=1&to=out0",
        r#"["x","y"]"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(&h, "POST", "/consumers/s0/web/ack?partition=1", "");
    assert_eq!(status, 409, "nothing claimed is a conflict");
    let (status, body) = http(&h, "GET", "/topics/s0/range?partition=1&from=5&reverse=true", "");
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body)
                .unwrap()
                .as_array()
                .map(Vec::len)
        ),
        (200, Some(2))
    );
    let (status, body) = http(&h, "GET", "/topics/out0/length", "");
    assert_eq!((status, body.as_str()), (200, r#"{"length":2}"#));
    let (status, _) = http(&h, "GET", "/consumers/s0/missing", "");
    assert_eq!(status, 404);
    let (status, _) = http(&h, "POST", "/consumers/s0/web/frobnicate", "");
    assert_eq!(status, 404);
    let (status, _) = http(&h, "DELETE", "/consumers/s0/web", "");
    assert_eq!(status, 200);
}

/// SEEK sets a consumer's committed offset either way, drops its claim, makes a consumer
/// that did not exist, is durable through a SIGKILL, and refuses an offset past the end.
#[test]
fn seek_moves_a_consumer_either_way_durably_and_refuses_past_the_end() {
    let dir = fast_tempdir();
    let mut engine = Engine::start(dataflow(dir.path(), 1));
    engine.produce("s0", 10);
    let c = &mut engine.client;
    let earliest = Some(Options {
        start: Start::Earliest,
        ..Options::default()
    });
    assert_eq!(c.claim("s0", GROUP, Some(P), 4, earliest).unwrap().to, 4);
    c.ack("s0", GROUP, P).unwrap();
    let claimed = c.claim("s0", GROUP, Some(P), 2, None).unwrap();
    assert_eq!((claimed.from, claimed.to), (4, 6));
    assert_eq!(c.seek("s0", GROUP, P, 8).unwrap(), 8);
    assert_eq!(cursor_now(c, "s0"), (8, None, 0), "forward, the claim dropped");
    assert_eq!(c.claim("s0", GROUP, Some(P), 100, None).unwrap().from, 8);
    assert_eq!(c.seek("s0", GROUP, P, 1).unwrap(), 1);
    assert_eq!(
        code(c.seek("s0", GROUP, P, 11)),
        Err(ErrorCode::Invalid),
        "past the end"
    );
    assert_eq!(c.seek("s0", "made-by-seek", P, 10).unwrap(), 10);
    engine.restart();
    let c = &mut engine.client;
    assert_eq!(cursor_now(c, "s0"), (1, None, 0), "back, and durable");
    assert_eq!(c.claim("s0", GROUP, Some(P), 100, None).unwrap().from, 1);
    assert_eq!(
        c.claim("s0", "made-by-seek", Some(P), 100, None)
            .unwrap()
            .partition,
        None
    );
}

#[test]
fn tail_group_goes_on_where_it_stopped_and_drain_waits_for_acks() {
    let dir = fast_tempdir();
    let mut engine = Engine::start(dataflow(dir.path(), 1));
    engine.produce("s0", 3);
    let tcp = engine.server.tcp.clone();
    let tail = |args: &[&str]| {
        let mut all = vec!["tail", "--from", &tcp, "s0"];
        all.extend_from_slice(args);
        run_cli(&all, "")
    };
    let (code, out, err) = tail(&["--group", "reader"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, out, _) = tail(&["--group", "reader"]);
    assert_eq!((code, out.as_str()), (0, ""), "a second run has nothing new");
    engine.produce("s0", 2);
    let (_, out, _) = tail(&["--group", "reader", "--json"]);
    let offsets: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, vec![3, 4]);

    let (code, out, err) = run_cli(
        &["drain", "--from", &tcp, "--group", "reader", "--timeout", "5"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    engine
        .client
        .claim("s0", "slow", Some(P), 1, Some(Options::default()))
        .unwrap();
    let (code, _, err) = run_cli(&["drain", "--from", &tcp, "--timeout", "1"], "");
    assert_eq!(code, 1, "a claim not acked keeps it from draining: {err}");
    assert!(err.contains("slow s0/1"), "{err}");
    let (code, _, _) = run_cli(
        &["drain", "--from", &tcp, "--group", "nobody", "--timeout", "1"],
        "",
    );
    assert_eq!(code, 2);
}

/// Issue 20, third failure: consumers created over HTTP until the topic's limit; the
/// next is refused with a clear error, the engine runs on, and a restart keeps every
/// consumer created.
#[test]
fn issue20_consumers_past_the_topic_limit_are_refused_and_a_restart_keeps_every_one() {
    let dir = fast_tempdir();
    let path = dir.path().join("limit.toml");
    let text = format!(
        "[engine]\ndata_dir = \"{}\"\ndurability = \"group\"\ncores = 2\n\n[ingest]\ntcp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\n[[topic]]\nname = \"events\"\npartitions = 1\nmax_consumers = 50\n",
        dir.path().join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    let mut server = Server::start(&path);
    for n in 0..50 {
        let (code, body) = http(
            &server.http,
            "POST",
            &format!("/consumers/events/g{n}/claim?create=earliest"),
            "",
        );
        assert_eq!(code, 200, "consumer {n}: {body}");
    }
    let (code, body) = http(
        &server.http,
        "POST",
        "/consumers/events/g50/claim?create=earliest",
        "",
    );
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("has its limit of 50 consumers") && body.contains("max_consumers"),
        "{body}"
    );
    // An existing consumer is still served.
    let (code, body) = http(&server.http, "POST", "/consumers/events/g7/claim", "");
    assert_eq!(code, 200, "{body}");
    server.kill9();
    let server = Server::start(&path);
    let mut client = Client::connect(&server.tcp).unwrap();
    let cursors = client.consumers(AdminAction::List, "events", "").unwrap();
    let mut names: Vec<String> = cursors.iter().map(|c| c.group.clone()).collect();
    names.sort();
    let mut expected: Vec<String> = (0..50).map(|n| format!("g{n}")).collect();
    expected.sort();
    assert_eq!(names, expected, "every consumer, once, and no other");
}

/// Issue 20, third failure at a small scale: with 64 KiB frames the consumer journal's
/// segments are 264 KiB, and 2000 consumers take a snapshot about twice that. It is
/// written in batches, so the engine runs on, and starts again after a SIGKILL with
/// every consumer (the snapshot in one batch refused to start: "does not fit in one
/// segment").
#[test]
fn issue20_a_consumer_journal_snapshot_larger_than_a_segment_keeps_the_engine_starting() {
    let dir = fast_tempdir();
    let file = crate::support::listening_dataflow(
        dir.path(),
        "many",
        "group",
        "max_frame_bytes = \"64KiB\"",
        "[[topic]]\nname = \"events\"\npartitions = 1\n",
    );
    let mut server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    for n in 0..2000 {
        client
            .claim(
                "events",
                &format!("consumer-{n:04}"),
                Some(0),
                1,
                Some(Options::default()),
            )
            .unwrap();
    }
    // Twice over: each restart writes the whole state afresh as its journal's first snapshot.
    for _ in 0..2 {
        server.kill9();
        server = Server::start(&file);
        client = Client::connect(&server.tcp).unwrap();
        let cursors = client.consumers(AdminAction::List, "events", "").unwrap();
        assert_eq!(cursors.len(), 2000, "every consumer, after a restart");
    }
}
