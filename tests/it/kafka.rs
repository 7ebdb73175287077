//! The Kafka door with a real Kafka client: kcat (librdkafka) produces and consumes
//! through `ingest.kafka`, and what it wrote is what `flowd tail` shows, and the reverse;
//! every compression a producer may choose is read back; requests the door does not
//! serve are refused in Kafka's terms (ApiVersions) or close the connection with a line
//! in the log, never a hang; with credentials, SASL/PLAIN over tokens and permissions;
//! TLS with the doors' certificate.
//!
//! kcat comes from Debian (`apt-get install kcat`; `.ci/run` installs it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Kafka's error code for a failed log directory (`Errors.java`).
const KAFKA_STORAGE_ERROR: i16 = 56;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, BrokerId, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::ingest::{Server, run_cli};
use crate::support::{env_or, listening_dataflow, run_bounded, wait_until};

const TOPIC: &str = "[[topic]]\nname = \"events\"\npartitions = 4\n";

fn kafka_server(dir: &Path) -> Server {
    let file = listening_dataflow(dir, "kafka", "group", "kafka = \"127.0.0.1:0\"", TOPIC);
    let server = Server::start(&file);
    assert!(server.kafka.is_some(), "flowd run prints `listening kafka ADDR`");
    server
}

/// kcat with `args`, `stdin` fed, bounded in time; its stdout, after checking it ended well.
pub(crate) fn kcat(args: &[&str], stdin: &[u8]) -> String {
    assert!(
        Command::new("kcat").arg("-V").output().is_ok(),
        "these tests need kcat: apt-get install kcat"
    );
    let output = run_bounded(Command::new("kcat").args(args), stdin);
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// One record as both sides print it: (partition, offset) -> (key, value, headers, time).
type Seen = BTreeMap<(u32, u64), (String, String, String, i64)>;

/// Every record of `topic` as kcat prints it with `format` (and `extra` settings),
/// read from the beginning to the end of every partition.
fn read_topic(kafka: &str, topic: &str, format: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "-C",
        "-b",
        kafka,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        format,
    ];
    args.extend(extra);
    kcat(&args, b"")
}

/// Everything in `events`, read by kcat to the end of every partition.
fn consume(kafka: &str) -> Seen {
    let out = read_topic(kafka, "events", "%p\t%o\t%k\t%s\t%h\t%T\n", &[]);
    let mut seen = Seen::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "a kcat line of six fields: {line:?}");
        let at = (f[0].parse().unwrap(), f[1].parse().unwrap());
        let record = (
            f[2].to_owned(),
            f[3].to_owned(),
            f[4].to_owned(),
            f[5].parse().unwrap(),
        );
        assert!(seen.insert(at, record).is_none(), "offset {at:?} read twice");
    }
    seen
}

/// The keys of everything in `events`, read by kcat (with `extra` settings) to the end.
fn keys(kafka: &str, extra: &[&str]) -> Vec<String> {
    read_topic(kafka, "events", "%k\n", extra)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Everything in `events`, read by `flowd tail --json`.
fn tail(server: &Server) -> Seen {
    let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, "events", "--json"], "");
    assert_eq!(code, 0, "{err}");
    let mut seen = Seen::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let headers: Vec<String> = v["headers"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|h| format!("{}={}", h["name"].as_str().unwrap(), h["value"].as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        let at = (
            v["partition"].as_u64().unwrap() as u32,
            v["offset"].as_u64().unwrap(),
        );
        let record = (
            v["key"].as_str().unwrap_or_default().to_owned(),
            v["value"].as_str().unwrap().to_owned(),
            headers.join(","),
            v["timestamp"].as_i64().unwrap(),
        );
        assert!(seen.insert(at, record).is_none(), "offset {at:?} tailed twice");
    }
    seen
}

#[test]
fn kcat_round_trips_records_with_keys_headers_and_timestamps_and_tail_shows_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let server = kafka_server(dir.path());
    let kafka = server.kafka.clone().unwrap();
    let n: usize = env_or("FLOWD_KAFKA_RECORDS", 100_000);
    let input: String = (0..n).map(|i| format!("k{i}:v{i}\n")).collect();
    let before = now_ms();
    kcat(
        &[
            "-P",
            "-b",
            &kafka,
            "-t",
            "events",
            "-K:",
            "-H",
            "origin=kcat",
            "-H",
            "n=1",
            "-H",
            "origin=again",
        ],
        input.as_bytes(),
    );
    let after = now_ms();

    let seen = consume(&kafka);
    assert_eq!(seen.len(), n, "every record read back once");
    let mut keys = std::collections::HashSet::new();
    for ((partition, _), (key, value, headers, time)) in &seen {
        assert!(*partition < 4);
        assert_eq!(value, &format!("v{}", &key[1..]), "the value sent with {key}");
        assert_eq!(
            headers, "origin=kcat,n=1,origin=again",
            "a name given twice stays twice"
        );
        assert!(
            (before..=after).contains(time),
            "{key}'s time {time} is the producer's"
        );
        assert!(keys.insert(key.clone()), "{key} stored twice");
    }
    // Each partition's offsets run from 0 without a gap.
    for p in 0..4u32 {
        let offsets: Vec<u64> = seen.keys().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as u64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    assert_eq!(tail(&server), seen, "flowd tail shows what kcat read");

    // The reverse: records sent through flowd's own protocol reach the Kafka consumer.
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "events"], "kx\tfrom flowd\n");
    assert_eq!(code, 0, "{err}");
    let again = consume(&kafka);
    assert_eq!(again.len(), n + 1);
    let sent: Vec<_> = again.values().filter(|r| r.1 == "from flowd").collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, "kx");

    // A null value (a tombstone; librdkafka sends an empty one as null too) comes back
    // null; an empty one, sent through flowd's own protocol, empty.
    kcat(&["-P", "-b", &kafka, "-t", "events", "-K:", "-Z"], b"t-null:\n");
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "events"], "t-empty\t\n");
    assert_eq!(code, 0, "{err}");
    // (kcat prints both as NULL; kafka-python tells None from b''.)
    let mut values = values_read(&kafka);
    values.sort();
    assert_eq!(values, ["t-empty b''", "t-null None"]);
}

/// A tombstone that becomes a dead letter, replayed to its topic from the console, is a
/// tombstone again: a Kafka client reads its value null, not empty.
#[test]
fn a_tombstone_dead_lettered_and_replayed_is_read_back_null() {
    let dir = tempfile::tempdir().unwrap();
    let dead = "[[topic]]\nname = \"dead\"\npartitions = 1\n";
    let file = listening_dataflow(
        dir.path(),
        "kafka",
        "group",
        "kafka = \"127.0.0.1:0\"",
        &format!("{TOPIC}\n{dead}"),
    );
    let server = Server::start(&file);
    let kafka = server.kafka.clone().unwrap();
    kcat(
        &["-P", "-b", &kafka, "-t", "events", "-p", "0", "-K:", "-Z"],
        b"t-null:\n",
    );
    let post = |path: &str| {
        let (status, body) = crate::ingest::http(&server.http, "POST", path, "{}");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    // A consumer that may not give a claim back: its reclaim dead-letters the record.
    let claimed = post(
        "/consumers/events/doomed/claim?partition=0&count=1&create=earliest&max_reclaims=0&then=dead_letter&dead_letter=dead",
    );
    assert_eq!(
        (claimed["from"].as_u64(), claimed["to"].as_u64()),
        (Some(0), Some(1)),
        "{claimed}"
    );
    let reclaimed = post("/consumers/events/doomed/reclaim?partition=0");
    assert_eq!(reclaimed["outcome"], "dead_letter", "{reclaimed}");
    let replayed = post("/topics/dead/replay?partition=0");
    assert_eq!(replayed["topics"], serde_json::json!({"events": 1}), "{replayed}");
    assert_eq!(
        values_read(&kafka),
        ["t-null None", "t-null None"],
        "the tombstone, then its replay"
    );
}

/// What kafka-python reads of `events` (partitions 0 to 3) through `kafka`: `KEY VALUE`
/// of each record whose key starts `t-`, VALUE `None` for a null value and `b''` for an
/// empty one, in the order read.
pub(crate) fn values_read(kafka: &str) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/kafka_clients.py");
    let output = run_bounded(
        Command::new("/usr/bin/python3")
            .arg(script)
            .args(["values", kafka]),
        b"",
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_compression_a_producer_chooses_is_read_back_and_acks_zero_still_stores() {
    let dir = tempfile::tempdir().unwrap();
    let server = kafka_server(dir.path());
    let kafka = server.kafka.clone().unwrap();
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let input: String = (0..1000)
            .map(|i| format!("{codec}-{i}:{codec} value {i}\n"))
            .collect();
        kcat(
            &["-P", "-b", &kafka, "-t", "events", "-K:", "-z", codec],
            input.as_bytes(),
        );
    }
    let seen = consume(&kafka);
    assert_eq!(seen.len(), codecs.len() * 1000);
    for codec in codecs {
        let of_codec = seen
            .values()
            .filter(|(key, value, _, _)| {
                key.starts_with(&format!("{codec}-"))
                    && value == &format!("{codec} value {}", &key[codec.len() + 1..])
            })
            .count();
        assert_eq!(of_codec, 1000, "{codec}");
    }
    // acks=0: no answer is due, but every record is stored all the same.
    let input: String = (0..500).map(|i| format!("a0-{i}:x\n")).collect();
    kcat(
        &["-P", "-b", &kafka, "-t", "events", "-K:", "-X", "acks=0"],
        input.as_bytes(),
    );
    wait_until("the acks=0 records are stored", Duration::from_secs(20), || {
        consume(&kafka)
            .values()
            .filter(|r| r.0.starts_with("a0-"))
            .count()
            == 500
    });
}

#[test]
fn requests_the_door_does_not_serve_get_kafkas_answer_or_a_closed_connection_and_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = kafka_server(dir.path());
    let kafka = server.kafka.clone().unwrap();
    let connect = || {
        let stream = std::net::TcpStream::connect(&kafka).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    };

    // ApiVersions in a version not served: UNSUPPORTED_VERSION, in version 0, with the
    // list the client then picks from.
    let mut stream = connect();
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::ApiVersions as i16;
    header.request_api_version = 9;
    header.correlation_id = 42;
    header.client_id = Some(StrBytes::from_static_str("test"));
    let mut body = BytesMut::new();
    header.encode(&mut body, 1).unwrap();
    send(&mut stream, &body);
    let mut answer = receive(&mut stream).expect("an answer");
    let response_header = ResponseHeader::decode(&mut answer, 0).unwrap();
    assert_eq!(response_header.correlation_id, 42);
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, 35, "UNSUPPORTED_VERSION");
    let fetch = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Fetch as i16)
        .expect("Fetch is listed");
    assert!(fetch.min_version <= 4 && fetch.max_version >= 4);

    // An API this door does not serve (DescribeAcls): closed, and the log says what.
    let mut stream = connect();
    let mut body = BytesMut::new();
    body.put_i16(ApiKey::DescribeAcls as i16);
    body.put_i16(0);
    body.put_i32(7);
    body.put_i16(-1);
    send(&mut stream, &body);
    assert!(receive(&mut stream).is_none(), "closed without an answer");
    assert!(
        server.log.wait_for(
            &["Kafka connection closed", "DescribeAcls version 0 is not served"],
            Duration::from_secs(10)
        ),
        "{}",
        server.log.text()
    );

    // A size over ingest.max_frame_bytes, or a negative one: closed before any body.
    for size in [i32::MAX, -5] {
        let mut stream = connect();
        stream.write_all(&size.to_be_bytes()).unwrap();
        assert!(receive(&mut stream).is_none(), "size {size}: closed");
    }
    assert!(
        server
            .log
            .wait_for(&["a request size of -5 bytes"], Duration::from_secs(10))
    );

    // CreateTopics and DeleteTopics change nothing and say so, in every version served,
    // on a connection that stays open.
    {
        use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
        use kafka_protocol::messages::{
            CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
        };
        let mut stream = connect();
        let name = |n: &'static str| TopicName(StrBytes::from_static_str(n));
        for version in 2..=7 {
            let mut create = CreateTopicsRequest::default();
            for n in ["events", "new-one"] {
                let mut topic = CreatableTopic::default();
                topic.name = name(n);
                topic.num_partitions = 1;
                topic.replication_factor = 1;
                create.topics.push(topic);
            }
            let mut answer = request(&mut stream, ApiKey::CreateTopics, version, &create).expect("answered");
            let answer = CreateTopicsResponse::decode(&mut answer, version).unwrap();
            let codes: Vec<i16> = answer.topics.iter().map(|t| t.error_code).collect();
            assert_eq!(
                codes,
                [36, 44],
                "TOPIC_ALREADY_EXISTS, POLICY_VIOLATION (v{version})"
            );
            let said = answer.topics[1].error_message.as_ref().unwrap();
            assert!(said.contains("add [[topic]] name = \"new-one\""), "{said}");
        }
        for version in 1..=5 {
            let mut delete = DeleteTopicsRequest::default();
            delete.topic_names = vec![name("events"), name("gone")];
            let mut answer = request(&mut stream, ApiKey::DeleteTopics, version, &delete).expect("answered");
            let answer = DeleteTopicsResponse::decode(&mut answer, version).unwrap();
            let codes: Vec<i16> = answer.responses.iter().map(|t| t.error_code).collect();
            assert_eq!(
                codes,
                [73, 3],
                "TOPIC_DELETION_DISABLED, UNKNOWN_TOPIC_OR_PARTITION (v{version})"
            );
        }
    }

    // The door still serves: a whole round trip after all that.
    let kafka_ok = kcat(&["-L", "-b", &kafka, "-t", "events"], b"");
    assert!(
        kafka_ok.contains("topic \"events\" with 4 partitions"),
        "{kafka_ok}"
    );
}

/// The array counts a client claims are checked against the bytes that came before any
/// room is made (vendor/kafka-protocol/PATCHES.md). Under a 16 GiB limit on the address
/// space, where the room 2^31 - 1 claimed topics ask for cannot be had and the
/// allocator's failure would abort the process, each such request closes its connection
/// with a log line naming the count, and the door goes on serving.
#[test]
fn array_counts_a_client_claims_cost_no_memory_before_their_elements_come() {
    let dir = tempfile::tempdir().unwrap();
    let file = listening_dataflow(dir.path(), "kafka", "group", "kafka = \"127.0.0.1:0\"", TOPIC);
    let server = Server::start_program(
        "prlimit",
        &[
            "--as=17179869184",
            "--",
            env!("CARGO_BIN_EXE_flowd"),
            "run",
            file.to_str().unwrap(),
        ],
    );
    let kafka = server.kafka.clone().expect("a Kafka door");
    // Metadata v1 counts its topics in an i32, v9 in a varint (the count plus one): each
    // claims the most its count can say, and no topic follows.
    let cases: [(i16, &[u8], &str); 2] = [
        (
            1,
            &[0x7f, 0xff, 0xff, 0xff],
            "Array length 2147483647 is more than the 0 bytes left",
        ),
        (
            9,
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
            "Compact array length 4294967294 is more than the 0 bytes left",
        ),
    ];
    for (version, count, said) in cases {
        let mut stream = std::net::TcpStream::connect(&kafka).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut header = RequestHeader::default();
        header.request_api_key = ApiKey::Metadata as i16;
        header.request_api_version = version;
        header.correlation_id = 3;
        header.client_id = Some(StrBytes::from_static_str("test"));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, ApiKey::Metadata.request_header_version(version))
            .unwrap();
        body.put_slice(count);
        send(&mut stream, &body);
        assert!(receive(&mut stream).is_none(), "v{version}: closed");
        assert!(
            server.log.wait_for(
                &["Kafka connection closed", "Metadata", said],
                Duration::from_secs(10)
            ),
            "v{version}: {}",
            server.log.text()
        );
    }
    // The same process still serves.
    let listed = kcat(&["-L", "-b", &kafka, "-t", "events"], b"");
    assert!(listed.contains("topic \"events\" with 4 partitions"), "{listed}");
}

fn send(stream: &mut std::net::TcpStream, body: &[u8]) {
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
}

/// The next response's bytes after its size, or `None` when the server closed.
fn receive(stream: &mut std::net::TcpStream) -> Option<bytes::Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(bytes::Bytes::from(body))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_stage_reads_what_a_kafka_producer_wrote_and_a_kafka_consumer_reads_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    // dataflows/kafka.toml's topics and stage, on free ports and a fresh data dir.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dataflows/kafka.toml")).unwrap();
    let topics_and_stages = &example[example.find("[[topic]]").unwrap()..];
    let file = listening_dataflow(
        dir.path(),
        "kafka",
        "group",
        "kafka = \"127.0.0.1:0\"",
        topics_and_stages,
    );
    let server = Server::start(&file);
    let kafka = server.kafka.clone().unwrap();
    let n = 2000;
    let input: String = (0..n)
        .map(|i| format!("u{i}:{{\"item\":\"i{i}\",\"amount\":{}}}\n", i % 200))
        .collect();
    // Every purchase with a header, which the stage passes on with the record.
    kcat(
        &["-P", "-b", &kafka, "-t", "purchases", "-K:", "-H", "shop=north"],
        input.as_bytes(),
    );
    // Amounts 101..=199 pass: 99 of every 200.
    let expected = n / 200 * 99;
    let read = || read_topic(&kafka, "big-purchases", "%k\t%h\t%s\n", &[]);
    wait_until(
        "the stage's outputs reach the Kafka consumer",
        Duration::from_secs(30),
        || read().lines().count() >= expected,
    );
    let lines = read();
    let mut keys = std::collections::HashSet::new();
    for line in lines.lines() {
        let (key, rest) = line.split_once('\t').unwrap();
        let (headers, value) = rest.split_once('\t').unwrap();
        assert_eq!(
            headers, "shop=north",
            "the record's header passes the stage: {line}"
        );
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        let amount = v["amount"].as_u64().unwrap();
        assert!(amount > 100, "{line}");
        assert_eq!(
            key,
            format!("u{}", v["item"].as_str().unwrap()[1..].parse::<u64>().unwrap())
        );
        assert!(keys.insert(key.to_owned()), "{key} read twice");
    }
    assert_eq!(keys.len(), expected, "each passing purchase once");
}

/// A request frame: size, header (`key`, `version`, correlation 1), `body` encoded.
fn request<B: Encodable>(
    stream: &mut std::net::TcpStream,
    key: ApiKey,
    version: i16,
    body: &B,
) -> Option<bytes::Bytes> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 1;
    header.client_id = Some(StrBytes::from_static_str("test"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    send(stream, &buf);
    let mut answer = receive(stream)?;
    let header = ResponseHeader::decode(&mut answer, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, 1);
    Some(answer)
}

/// SaslHandshake (PLAIN) and SaslAuthenticate as `name` with `token`: the error code.
fn sasl_plain(stream: &mut std::net::TcpStream, name: &str, token: &str) -> i16 {
    use kafka_protocol::messages::{
        SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    };
    let mut handshake = SaslHandshakeRequest::default();
    handshake.mechanism = StrBytes::from_static_str("PLAIN");
    let mut answer = request(stream, ApiKey::SaslHandshake, 1, &handshake).unwrap();
    assert_eq!(
        SaslHandshakeResponse::decode(&mut answer, 1).unwrap().error_code,
        0
    );
    let mut authenticate = SaslAuthenticateRequest::default();
    authenticate.auth_bytes = bytes::Bytes::from(format!("\0{name}\0{token}"));
    let mut answer = request(stream, ApiKey::SaslAuthenticate, 2, &authenticate).unwrap();
    SaslAuthenticateResponse::decode(&mut answer, 2)
        .unwrap()
        .error_code
}

/// A produce of one record to `events` partition 0: the partition's error code.
fn produce_one(stream: &mut std::net::TcpStream) -> Option<i16> {
    produce_raw(stream, "events", 0, None).map(|(code, _)| code)
}

/// Kafka's varint (zigzag) of `n`, appended.
fn varint(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One record in a batch's record section: `value`, no key, the `headers` given
/// (`header_count` says how many it claims), offset delta `delta`.
fn raw_record(delta: i64, value: &[u8], headers: &[(&str, &str)], header_count: i64) -> Vec<u8> {
    let mut body = vec![0u8]; // attributes
    varint(&mut body, 0); // timestamp delta
    varint(&mut body, delta);
    varint(&mut body, -1); // no key
    varint(&mut body, value.len() as i64);
    body.extend_from_slice(value);
    varint(&mut body, header_count);
    for (name, value) in headers {
        varint(&mut body, name.len() as i64);
        body.extend_from_slice(name.as_bytes());
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value.as_bytes());
    }
    let mut record = Vec::new();
    varint(&mut record, body.len() as i64);
    record.extend_from_slice(&body);
    record
}

/// A record batch (format 2) around a record section as written (compressed as
/// `attributes` say), claiming `count` records, its CRC right: what a client could send.
fn raw_batch(records: &[u8], count: i32, attributes: i16) -> bytes::Bytes {
    let mut after_crc = Vec::new();
    after_crc.extend_from_slice(&attributes.to_be_bytes());
    after_crc.extend_from_slice(&(count - 1).to_be_bytes()); // last offset delta
    after_crc.extend_from_slice(&now_ms().to_be_bytes()); // base timestamp
    after_crc.extend_from_slice(&now_ms().to_be_bytes()); // max timestamp
    after_crc.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    after_crc.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    after_crc.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    after_crc.extend_from_slice(&count.to_be_bytes());
    after_crc.extend_from_slice(records);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset
    batch.extend_from_slice(&((after_crc.len() + 9) as i32).to_be_bytes());
    batch.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend_from_slice(&crc32c::crc32c(&after_crc).to_be_bytes());
    batch.extend_from_slice(&after_crc);
    bytes::Bytes::from(batch)
}

/// The most memory `pid` has held, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    crate::support::proc_status_kib(pid, "VmHWM").expect("the server runs") / 1024
}

/// A produce (version 8, acks -1) of `batches` to partition `index` of `topic`: the
/// partition's answer.
fn produce_to(
    stream: &mut std::net::TcpStream,
    topic: &'static str,
    index: i32,
    batches: bytes::Bytes,
) -> Option<kafka_protocol::messages::produce_response::PartitionProduceResponse> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
    let mut partition = PartitionProduceData::default();
    partition.index = index;
    partition.records = Some(batches);
    let mut topic_data = TopicProduceData::default();
    topic_data.name = StrBytes::from_static_str(topic).into();
    topic_data.partition_data = vec![partition];
    let mut produce = ProduceRequest::default();
    produce.acks = -1;
    produce.timeout_ms = 10_000;
    produce.topic_data = vec![topic_data];
    let mut answer = request(stream, ApiKey::Produce, 8, &produce)?;
    let mut response = ProduceResponse::decode(&mut answer, 8).unwrap();
    Some(response.responses.remove(0).partition_responses.remove(0))
}

/// A produce of `batches` to `events` partition 0: the partition's error code and message.
fn produce_batches(stream: &mut std::net::TcpStream, batches: bytes::Bytes) -> Option<(i16, String)> {
    let partition = produce_to(stream, "events", 0, batches)?;
    let message = partition
        .error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    Some((partition.error_code, message))
}

#[test]
fn hostile_record_batches_are_refused_before_they_cost_memory_and_repeated_headers_are_kept() {
    use kafka_protocol::compression::{Compressor, Gzip};
    let dir = tempfile::tempdir().unwrap();
    // Requests, and a partition's records in one decompressed, up to 1 MiB.
    let ingest = "kafka = \"127.0.0.1:0\"\nmax_frame_bytes = 1048576";
    let file = listening_dataflow(dir.path(), "kafka", "group", ingest, TOPIC);
    let server = Server::start(&file);
    let kafka = server.kafka.clone().unwrap();
    let mut stream = std::net::TcpStream::connect(&kafka).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let one = raw_record(0, b"raw", &[], 0);

    // A batch of one record claiming 2^31 - 1 (a decoder that reserves what a batch
    // claims asks for hundreds of GiB and the process aborts).
    let (code, said) = produce_batches(&mut stream, raw_batch(&one, i32::MAX, 0)).expect("answered");
    assert_eq!(code, 2, "CORRUPT_MESSAGE: {said}");
    assert!(said.contains("2147483647 records"), "{said}");

    // A record claiming 2^31 - 1 headers.
    let many = raw_record(0, b"raw", &[], i64::from(i32::MAX));
    let (code, said) = produce_batches(&mut stream, raw_batch(&many, 1, 0)).expect("answered");
    assert_eq!(code, 2, "CORRUPT_MESSAGE: {said}");
    assert!(said.contains("2147483647 headers"), "{said}");

    // 64 MiB of zeros in a gzip batch of some 64 KiB: over ingest.max_frame_bytes once
    // decompressed.
    let bomb = raw_record(0, &vec![0u8; 64 << 20], &[], 0);
    let mut gzipped = BytesMut::new();
    Gzip::compress(&mut gzipped, |raw: &mut BytesMut| {
        raw.put_slice(&bomb);
        Ok(())
    })
    .unwrap();
    assert!(gzipped.len() < 1 << 20);
    let peak_before = peak_rss_mib(server.pid());
    let (code, said) = produce_batches(&mut stream, raw_batch(&gzipped, 1, 1)).expect("answered");
    assert_eq!(code, 10, "MESSAGE_TOO_LARGE: {said}");
    assert!(said.contains("ingest.max_frame_bytes"), "{said}");
    // Decompression stopped at the limit: the 64 MiB were never held (a few times the
    // limit may be, as the buffer grows).
    let grew = peak_rss_mib(server.pid()) - peak_before;
    assert!(
        grew < 32,
        "the server's peak memory grew by {grew} MiB for the gzip batch"
    );

    // Raw snappy whose header claims 4 GiB - 1, in a batch of a few bytes.
    let snappy = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0];
    let (code, said) = produce_batches(&mut stream, raw_batch(&snappy, 1, 2)).expect("answered");
    assert_eq!(code, 10, "MESSAGE_TOO_LARGE: {said}");

    // Bytes after the records a batch claims, and a record longer than its batch.
    let mut trailing = one.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    let (code, said) = produce_batches(&mut stream, raw_batch(&trailing, 1, 0)).expect("answered");
    assert_eq!(code, 2, "CORRUPT_MESSAGE: {said}");
    let (code, said) =
        produce_batches(&mut stream, raw_batch(&one[..one.len() - 1], 1, 0)).expect("answered");
    assert_eq!(code, 2, "CORRUPT_MESSAGE: {said}");

    // Nothing of the above was stored; a record with a header given twice is stored
    // with both, in order, as Kafka's headers are a list (KIP-82).
    let twice = raw_record(0, b"twice", &[("h", "1"), ("other", "x"), ("h", "2")], 3);
    let (code, said) = produce_batches(&mut stream, raw_batch(&twice, 1, 0)).expect("answered");
    assert_eq!(code, 0, "{said}");
    // Only the last record was stored; flowd tail and a Kafka consumer both see it whole.
    for (seen, who) in [
        (tail(&server), "flowd tail"),
        (consume(&kafka), "a Kafka consumer"),
    ] {
        let values: Vec<(&str, &str)> = seen.values().map(|r| (r.1.as_str(), r.2.as_str())).collect();
        assert_eq!(values, [("twice", "h=1,other=x,h=2")], "{who}");
    }
}

/// A produce of one record to partition `index` of `topic`, as the idempotent producer
/// `(id, epoch, sequence)` if given: the partition's error code and base offset.
/// A Fetch (v11) of `events` partition `partition` from `offset`: its error code and
/// how many bytes of records came.
fn fetch_raw(stream: &mut std::net::TcpStream, partition: i32, offset: i64) -> (i16, usize) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};
    let mut asked = FetchPartition::default();
    asked.partition = partition;
    asked.fetch_offset = offset;
    asked.partition_max_bytes = 1 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = StrBytes::from_static_str("events").into();
    topic.partitions = vec![asked];
    let mut fetch = FetchRequest::default();
    fetch.replica_id = BrokerId(-1);
    fetch.max_wait_ms = 0;
    fetch.min_bytes = 1;
    fetch.max_bytes = 1 << 20;
    fetch.topics = vec![topic];
    let mut answer = request(stream, ApiKey::Fetch, 11, &fetch).expect("a fetch is answered");
    let mut response = FetchResponse::decode(&mut answer, 11).unwrap();
    let data = response.responses.remove(0).partitions.remove(0);
    (data.error_code, data.records.map_or(0, |r| r.len()))
}

/// A batch changed on disk under the running engine: a Kafka fetch of its partition is
/// answered KAFKA_STORAGE_ERROR (56), as Kafka answers for a failed log directory,
/// never with records past the damage nor as an empty partition; the partition's
/// records before it and the other partitions serve on.
#[test]
fn a_fetch_of_a_damaged_partition_is_answered_kafka_storage_error() {
    let dir = crate::support::fast_tempdir();
    let server = kafka_server(dir.path());
    let mut stream = std::net::TcpStream::connect(server.kafka.as_ref().unwrap()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (partition, expected) in [(0, 0), (0, 1), (0, 2), (1, 0)] {
        assert_eq!(
            produce_raw(&mut stream, "events", partition, None),
            Some((0, expected))
        );
    }
    assert_eq!(fetch_raw(&mut stream, 0, 1).0, 0);
    // One bit of the second batch's record (its value, "raw"), in the mapped segment.
    let segment = dir.path().join("data/topics/events/0/00000000000000000000.seg");
    let bytes = std::fs::read(&segment).unwrap();
    let second = bytes
        .windows(3)
        .enumerate()
        .filter(|(_, w)| *w == b"raw")
        .nth(1)
        .unwrap()
        .0;
    crate::support::flip_bits(&segment, second, 0x01);

    assert_eq!(fetch_raw(&mut stream, 0, 1), (KAFKA_STORAGE_ERROR, 0));
    let (code, before) = fetch_raw(&mut stream, 0, 0);
    assert_eq!(code, 0);
    assert!(before > 0, "the record before the damage is served");
    let (code, other) = fetch_raw(&mut stream, 1, 0);
    assert_eq!(code, 0);
    assert!(other > 0, "another partition serves on");
}

fn produce_raw(
    stream: &mut std::net::TcpStream,
    topic: &'static str,
    index: i32,
    producer: Option<(i64, i16, i32)>,
) -> Option<(i16, i64)> {
    use kafka_protocol::records::*;
    let (producer_id, producer_epoch, sequence) =
        producer.unwrap_or((NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE));
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence,
        timestamp: now_ms(),
        key: None,
        value: Some(bytes::Bytes::from_static(b"raw")),
        headers: Default::default(),
    };
    let mut records = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut records, [&record], &options).unwrap();
    let partition = produce_to(stream, topic, index, records.freeze())?;
    Some((partition.error_code, partition.base_offset))
}

#[test]
fn with_credentials_kafka_clients_prove_themselves_by_sasl_plain_and_need_their_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let token = |name: &str, allow: &str| {
        let (code, out, err) = run_cli(
            &[
                "token",
                "add",
                name,
                "--allow",
                allow,
                "--credentials",
                credentials.to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let writer = token("writer", "produce:events");
    let reader = token("reader", "consume:events");
    let lines = format!(
        "kafka = \"127.0.0.1:0\"\ncredentials = \"{}\"",
        credentials.display()
    );
    let file = listening_dataflow(dir.path(), "kafka", "group", &lines, TOPIC);
    let server = Server::start(&file);
    let kafka = server.kafka.clone().unwrap();
    let sasl = |name: &str, token: &str| {
        [
            "-X".to_owned(),
            "security.protocol=SASL_PLAINTEXT".to_owned(),
            "-X".to_owned(),
            "sasl.mechanisms=PLAIN".to_owned(),
            "-X".to_owned(),
            format!("sasl.username={name}"),
            "-X".to_owned(),
            format!("sasl.password={token}"),
        ]
    };
    // kcat as the writer produces, kcat as the reader reads it all back.
    let mut args: Vec<String> = ["-P", "-b", &kafka, "-t", "events", "-K:"]
        .map(String::from)
        .to_vec();
    args.extend(sasl("writer", &writer));
    let input: String = (0..300).map(|i| format!("k{i}:v{i}\n")).collect();
    kcat(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        input.as_bytes(),
    );
    let reader_sasl = sasl("reader", &reader);
    let as_reader: Vec<&str> = reader_sasl.iter().map(String::as_str).collect();
    assert_eq!(
        keys(&kafka, &as_reader).len(),
        300,
        "the reader reads every record once"
    );

    let connect = || {
        let stream = std::net::TcpStream::connect(&kafka).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    };
    // Nothing but ApiVersions and SASL before authentication: closed, and said.
    assert_eq!(produce_one(&mut connect()), None);
    assert!(
        server.log.wait_for(
            &["a Produce request before SASL authentication"],
            Duration::from_secs(10)
        ),
        "{}",
        server.log.text()
    );
    // A wrong token, a token under another name: SASL_AUTHENTICATION_FAILED, then closed.
    for (name, token) in [("writer", "flowd_wrong"), ("reader", writer.as_str())] {
        let mut stream = connect();
        assert_eq!(sasl_plain(&mut stream, name, token), 58, "{name}");
        assert_eq!(
            produce_one(&mut stream),
            None,
            "closed after a failed authentication"
        );
    }
    // The reader may not produce: TOPIC_AUTHORIZATION_FAILED, the connection stays.
    let mut stream = connect();
    assert_eq!(sasl_plain(&mut stream, "reader", &reader), 0);
    assert_eq!(produce_one(&mut stream), Some(29));
    assert_eq!(produce_one(&mut stream), Some(29));
    // The writer may.
    let mut stream = connect();
    assert_eq!(sasl_plain(&mut stream, "writer", &writer), 0);
    assert_eq!(produce_one(&mut stream), Some(0));
    assert_eq!(
        keys(&kafka, &as_reader).len(),
        301,
        "the reader's refused produces stored nothing"
    );
}

#[test]
fn the_kafka_door_speaks_tls_with_the_doors_certificate_and_tells_a_plaintext_client_off() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_s = pki.to_str().unwrap();
    let (code, _, err) = run_cli(&["cert", "ca", "--dir", pki_s, "--name", "kafka-test"], "");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(
        &["cert", "issue", "server", "--dir", pki_s, "--host", "127.0.0.1"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let lines = format!(
        "kafka = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        pki.join("server.pem").display(),
        pki.join("server.key").display()
    );
    let file = listening_dataflow(dir.path(), "kafka", "group", &lines, TOPIC);
    let server = Server::start(&file);
    let kafka = server.kafka.clone().unwrap();
    let ca = format!("ssl.ca.location={}", pki.join("ca.pem").display());
    let tls = ["-X", "security.protocol=SSL", "-X", &ca];
    let input: String = (0..200).map(|i| format!("k{i}:v{i}\n")).collect();
    let mut args = vec!["-P", "-b", &kafka, "-t", "events", "-K:"];
    args.extend(tls);
    kcat(&args, input.as_bytes());
    assert_eq!(keys(&kafka, &tls).len(), 200, "every record, in TLS both ways");
    // A plaintext Kafka client on the TLS door: closed at once, and the log says why.
    let mut stream = std::net::TcpStream::connect(&kafka).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header = RequestHeader::default();
    header.request_api_key = ApiKey::ApiVersions as i16;
    header.request_api_version = 3;
    header.correlation_id = 1;
    let mut body = BytesMut::new();
    header.encode(&mut body, 2).unwrap();
    kafka_protocol::messages::ApiVersionsRequest::default()
        .encode(&mut body, 3)
        .unwrap();
    send(&mut stream, &body);
    let started = std::time::Instant::now();
    assert!(receive(&mut stream).is_none(), "no Kafka answer in plaintext");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed within a second or so"
    );
    assert!(
        server.log.wait_for(
            &["a plaintext client on the TLS Kafka door"],
            Duration::from_secs(10)
        ),
        "{}",
        server.log.text()
    );
}

/// A Kafka client of `tests/it/kafka_clients.py` (confluent-kafka, from Debian's
/// python3-confluent-kafka), its output in a file; killed when dropped.
struct PyClient {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl PyClient {
    fn start(dir: &Path, name: &str, args: &[&str]) -> PyClient {
        let python = "/usr/bin/python3";
        let ok = Command::new(python)
            .args(["-c", "import confluent_kafka"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "these tests need confluent-kafka: apt-get install python3-confluent-kafka"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/kafka_clients.py");
        let out = dir.join(format!("{name}.out"));
        let child = Command::new(python)
            .arg(script)
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("python3 starts");
        PyClient { child, out }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn said(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// The partitions of its last assignment.
    fn assigned(&self) -> Vec<u32> {
        self.lines()
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("assigned "))
            .map(|list| {
                list.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `(partition, offset, value)` of each record it took (and committed).
    fn records(&self) -> Vec<(u32, u64, String)> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("record "))
            .map(|r| {
                let f: Vec<&str> = r.splitn(3, ' ').collect();
                (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_owned())
            })
            .collect()
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `per` records into each of the 4 partitions of `events`, `p{P}-v{O}` at offset O.
fn fill(kafka: &str, from: u64, per: u64) {
    fill_partitions(kafka, 4, from, per);
}

/// `per` records into each of the first `partitions` partitions of `events`.
fn fill_partitions(kafka: &str, partitions: u32, from: u64, per: u64) {
    for p in 0..partitions {
        let lines: String = (from..from + per).map(|o| format!("p{p}-v{o}\n")).collect();
        kcat(
            &["-P", "-b", kafka, "-t", "events", "-p", &p.to_string()],
            lines.as_bytes(),
        );
    }
}

/// A consumer group of two librdkafka consumers splits the partitions; when one leaves,
/// the other takes its partitions over at the offsets it committed (every record taken
/// exactly once, since each is committed before it is counted); the group's offsets are
/// flowd's named consumer `g1`, durable: after a SIGKILL and a restart a new member of
/// the group goes on where the group was.
#[test]
fn a_consumer_group_splits_the_partitions_and_hands_them_over_at_the_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    std::fs::create_dir(&control).unwrap();
    let ctl = control.to_str().unwrap().to_owned();
    let mut server = kafka_server(dir.path());
    let kafka = server.kafka.clone().unwrap();
    let per = 100u64;
    let limit = Duration::from_secs(60);
    fill(&kafka, 0, per);
    let member =
        |name: &str, kafka: &str| PyClient::start(dir.path(), name, &["group", kafka, "g1", name, &ctl]);

    let a = member("A", &kafka);
    wait_until(
        "A alone takes every partition and reads them to the end",
        limit,
        || a.assigned() == [0, 1, 2, 3] && a.records().len() == 4 * per as usize,
    );
    let b = member("B", &kafka);
    wait_until("the group splits the partitions between A and B", limit, || {
        let (x, y) = (a.assigned(), b.assigned());
        let mut all: Vec<u32> = x.iter().chain(&y).copied().collect();
        all.sort_unstable();
        !x.is_empty() && !y.is_empty() && all == [0, 1, 2, 3]
    });
    let (a_parts, b_parts) = (a.assigned(), b.assigned());
    fill(&kafka, per, per);
    wait_until(
        "each member reads the new records of its own partitions",
        limit,
        || {
            a.records().len() == (4 + a_parts.len()) * per as usize
                && b.records().len() == b_parts.len() * per as usize
        },
    );
    assert!(
        a.records()[4 * per as usize..]
            .iter()
            .all(|r| a_parts.contains(&r.0))
    );
    assert!(b.records().iter().all(|r| b_parts.contains(&r.0)));

    // A stops taking records, more come to its partitions, then it leaves the group.
    std::fs::write(control.join("A.hold"), "").unwrap();
    wait_until("A holds", limit, || a.said("held"));
    fill(&kafka, 2 * per, per);
    std::fs::write(control.join("A.stop"), "").unwrap();
    wait_until("A leaves", limit, || a.said("closed"));
    wait_until("B takes every partition and reads them to the end", limit, || {
        b.assigned() == [0, 1, 2, 3] && a.records().len() + b.records().len() == 12 * per as usize
    });
    let mut taken = BTreeMap::new();
    for (who, records) in [("A", a.records()), ("B", b.records())] {
        for (p, o, value) in records {
            assert_eq!(value, format!("p{p}-v{o}"));
            assert!(taken.insert((p, o), who).is_none(), "{p}/{o} taken twice");
        }
    }
    let all: Vec<(u32, u64)> = (0..4).flat_map(|p| (0..3 * per).map(move |o| (p, o))).collect();
    assert_eq!(
        taken.keys().copied().collect::<Vec<_>>(),
        all,
        "every record taken, none skipped"
    );
    for p in &a_parts {
        let first = b.records().iter().filter(|r| r.0 == *p).map(|r| r.1).min();
        assert_eq!(
            first,
            Some(2 * per),
            "B goes on in A's partition {p} where A committed"
        );
    }
    std::fs::write(control.join("B.stop"), "").unwrap();
    wait_until("B leaves", limit, || b.said("closed"));

    // The offsets outlive the process: after a SIGKILL, a new member starts where the
    // group was, and takes only what came after.
    server.kill9();
    let server = Server::start(&dir.path().join("kafka.toml"));
    let kafka = server.kafka.clone().unwrap();
    let c = member("C", &kafka);
    wait_until("C takes every partition", limit, || c.assigned() == [0, 1, 2, 3]);
    fill(&kafka, 3 * per, per);
    wait_until("C reads what came after the restart", limit, || {
        c.records().len() == 4 * per as usize
    });
    assert!(
        c.records().iter().all(|(_, o, _)| (3 * per..4 * per).contains(o)),
        "C started at the committed offsets, not before"
    );
}

/// A librdkafka producer with `enable.idempotence` and `acks=all` while flowd is
/// SIGKILLed (by a fail point, once a batch is durable and before its answer goes out, so
/// that the producer must send a written batch again) and started again on the same
/// port: every record it was told is delivered is stored exactly once (none written
/// twice, none lost), where the delivery report said.
#[test]
fn an_idempotent_producer_through_a_sigkill_stores_every_delivered_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // A port of our own, so that the engine comes back where the producer looks for it.
    let port = crate::support::port_for_restarts();
    let file = listening_dataflow(
        dir.path(),
        "kafka",
        "group",
        &format!("kafka = \"127.0.0.1:{port}\""),
        TOPIC,
    );
    let kill = [("FAILPOINTS", "kafka-idempotent-durable=50*off->return")];
    let mut server = Server::start_env(&file, &[], &kill);
    let kafka = server.kafka.clone().unwrap();
    let n: usize = env_or("FLOWD_KAFKA_IDEMPOTENT_RECORDS", 100_000);
    let producer = PyClient::start(dir.path(), "producer", &["produce", &kafka, &n.to_string()]);
    let delivered = || producer.lines().iter().filter(|l| l.starts_with("ok ")).count();
    let status = server
        .exit_within(Duration::from_secs(60))
        .expect("the fail point kills the engine");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        server
            .log
            .text()
            .contains("fail point kafka-idempotent-durable: killing the process")
    );
    let at_kill = delivered();
    assert!(at_kill < n, "the kill landed while the producer was sending");
    let server = Server::start(&file);
    assert_eq!(server.kafka.as_deref(), Some(kafka.as_str()));
    wait_until("the producer is done", Duration::from_secs(120), || {
        producer.lines().iter().any(|l| l.starts_with("done "))
    });
    let reported = delivered_once_each(&producer, n);
    assert!(delivered() > at_kill, "records were delivered after the restart");
    assert_stored_as_reported(&kafka, &reported);
}

/// Where a `produce` client was told each of its `n` records went: every one delivered,
/// each reported once.
fn delivered_once_each(producer: &PyClient, n: usize) -> BTreeMap<String, (u32, u64)> {
    let lines = producer.lines();
    assert!(
        lines.contains(&"done 0".to_owned()),
        "every record delivered: {:?}",
        &lines[lines.len().saturating_sub(5)..]
    );
    let mut reported = BTreeMap::new();
    for line in lines.iter().filter_map(|l| l.strip_prefix("ok ")) {
        let f: Vec<&str> = line.split(' ').collect();
        let at: (u32, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        assert!(
            reported.insert(f[2].to_owned(), at).is_none(),
            "{} reported twice",
            f[2]
        );
    }
    assert_eq!(reported.len(), n, "each record reported delivered once");
    reported
}

/// `events` holds exactly the records `reported`, each once, where the reports said.
fn assert_stored_as_reported(kafka: &str, reported: &BTreeMap<String, (u32, u64)>) {
    let stored = read_topic(kafka, "events", "%p %o %s\n", &[]);
    let mut seen = BTreeMap::new();
    for line in stored.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let at: (u32, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        assert!(
            seen.insert(f[2].to_owned(), at).is_none(),
            "{} stored twice",
            f[2]
        );
    }
    assert_eq!(
        &seen, reported,
        "stored exactly what was delivered, where the reports said"
    );
}

/// kafka-python, a client that is not librdkafka (its bootstrap asks Metadata v0, its
/// group requests use old versions), produces and consumes in a group through the door:
/// the records go where it sent them, a member commits them, and the next member of the
/// group starts past them.
#[test]
fn kafka_python_produces_and_consumes_in_a_group_through_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let server = kafka_server(dir.path());
    let kafka = server.kafka.clone().unwrap();
    let client = PyClient::start(dir.path(), "kafka-python", &["kafka-python", &kafka]);
    wait_until("kafka-python is done", Duration::from_secs(90), || {
        client.said("done")
    });
    let mut values: Vec<String> = (0..20).map(|i| format!("kp{i}")).collect();
    values.sort();
    let lines = client.lines();
    assert_eq!(
        lines,
        [
            "produced 20".to_owned(),
            format!("consumed {}", values.join(",")),
            "committed 5,5,5,5".to_owned(),
            "again 0".to_owned(),
            "done".to_owned(),
        ]
    );
    let stored = read_topic(&kafka, "events", "%p %s\n", &[]);
    for line in stored.lines() {
        let (p, value) = line.split_once(' ').unwrap();
        let i: u32 = value.trim_start_matches("kp").parse().unwrap();
        assert_eq!(
            p.parse::<u32>().unwrap(),
            i % 4,
            "{value} in the partition it was sent to"
        );
    }
    assert_eq!(stored.lines().count(), 20);
    assert!(
        !server.log.text().contains("is not served"),
        "{}",
        server.log.text()
    );
}

/// The brokers (`id -> host:port`) and each partition's leader (`partition -> id`) of
/// `topic`, as the door at `kafka` tells kcat.
fn brokers_and_leaders(kafka: &str, topic: &str) -> (BTreeMap<i64, String>, BTreeMap<u32, i64>) {
    let json: serde_json::Value =
        serde_json::from_str(&kcat(&["-L", "-J", "-b", kafka, "-t", topic], b"")).unwrap();
    let brokers = json["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_i64().unwrap(), b["name"].as_str().unwrap().to_owned()))
        .collect();
    let leaders = json["topics"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap() as u32,
                p["leader"].as_i64().unwrap(),
            )
        })
        .collect();
    (brokers, leaders)
}

/// Three peers, each with a Kafka door. Every door names the three brokers and, for each
/// partition, the broker of the peer that serves it; records sent through one door land
/// in every partition (librdkafka sends each partition's batches to its leader). A
/// consumer group whose members bootstrap from different peers meets at one coordinator:
/// the partitions are split between them, the survivor takes over at the committed
/// offsets (commits of partitions led elsewhere are relayed to their leaders), and a
/// member bootstrapped from the third peer starts where the group was. An idempotent
/// producer bootstrapped from another peer stores every record exactly once.
#[test]
fn in_a_cluster_each_partition_is_led_by_its_peers_broker_and_a_group_meets_at_one_coordinator() {
    use crate::cluster::{all_alive, one_at_a_time, start_file, status};
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control");
    std::fs::create_dir(&control).unwrap();
    let ctl = control.to_str().unwrap().to_owned();
    let partitions = 12u32;
    let file = listening_dataflow(
        dir.path(),
        "kafka-cluster",
        "group",
        "kafka = \"127.0.0.1:0\"",
        // One copy, placed by gossip: the partitions spread over the three at once (a
        // replicated topic's leaders are the metadata group's, which may keep them all
        // where they began; the door names whichever peer leads either way).
        &format!(
            "[[topic]]\nname = \"events\"\npartitions = {partitions}\nreplicas = 1\n\n\
             [[topic]]\nname = \"side\"\npartitions = 1\nreplicas = 1\n"
        ),
    );
    let first = start_file(&file, dir.path(), "p1", &["--peer-listen", "127.0.0.1:0"]);
    let seed = first.peer.clone().unwrap();
    let with_seed = ["--peer-listen", "127.0.0.1:0", "--seeds", &seed];
    let servers = [
        first,
        start_file(&file, dir.path(), "p2", &with_seed),
        start_file(&file, dir.path(), "p3", &with_seed),
    ];
    let addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let doors: Vec<String> = servers.iter().map(|s| s.kafka.clone().unwrap()).collect();
    let limit = Duration::from_secs(60);
    for s in &servers {
        wait_until("every peer lists all three", limit, || all_alive(s, &addrs));
    }
    // The peer serving each partition, by its own status.
    let serving = || -> BTreeMap<u32, String> {
        let mut serving = BTreeMap::new();
        for (s, door) in servers.iter().zip(&doors) {
            for p in status(s)["topics"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "events")
                .flat_map(|t| t["partitions"].as_array().unwrap())
                .filter(|p| p["standing"] == "serving")
            {
                serving.insert(p["partition"].as_u64().unwrap() as u32, door.clone());
            }
        }
        serving
    };
    wait_until(
        "every door names the three brokers, and each partition's leader is the peer serving it",
        limit,
        || {
            let held = serving();
            doors.iter().all(|door| {
                let (brokers, leaders) = brokers_and_leaders(door, "events");
                let mut named: Vec<&String> = brokers.values().collect();
                named.sort();
                let mut all: Vec<&String> = doors.iter().collect();
                all.sort();
                // Placement spreads the partitions (all on one peer: 3 in 3^12).
                let spread: std::collections::BTreeSet<&String> = held.values().collect();
                named == all
                    && held.len() == partitions as usize
                    && spread.len() > 1
                    && (0..partitions).all(|p| brokers.get(&leaders[&p]) == held.get(&p))
            })
        },
    );

    // An idempotent producer's batch is taken by its partition leader's door only;
    // another door answers NOT_LEADER_OR_FOLLOWER (a plain batch it takes on).
    let (brokers, leaders) = brokers_and_leaders(&doors[0], "side");
    let leader_door = brokers[&leaders[&0]].clone();
    let other_door = doors.iter().find(|d| **d != leader_door).unwrap();
    let connect = |door: &str| std::net::TcpStream::connect(door).unwrap();
    let idempotent = Some((7_000_001, 0, 0));
    let side = |door: &str, producer| produce_raw(&mut connect(door), "side", 0, producer);
    assert_eq!(side(other_door, idempotent), Some((6, -1)));
    assert_eq!(side(&leader_door, idempotent), Some((0, 0)));
    assert_eq!(
        side(&leader_door, idempotent),
        Some((0, 0)),
        "sent again: answered with its first offset, not written twice"
    );
    assert_eq!(side(other_door, None), Some((0, 1)));
    let per = 50u64;
    fill_partitions(&doors[0], partitions, 0, per);
    let member =
        |name: &str, door: &str| PyClient::start(dir.path(), name, &["group", door, "g1", name, &ctl]);
    let all_parts: Vec<u32> = (0..partitions).collect();
    let a = member("A", &doors[0]);
    wait_until(
        "A alone takes every partition and reads them to the end",
        limit,
        || a.assigned() == all_parts && a.records().len() == (partitions as u64 * per) as usize,
    );
    let b = member("B", &doors[1]);
    wait_until(
        "A and B, bootstrapped from two peers, meet at one coordinator and split the partitions",
        limit,
        || {
            let (x, y) = (a.assigned(), b.assigned());
            let mut both: Vec<u32> = x.iter().chain(&y).copied().collect();
            both.sort_unstable();
            !x.is_empty() && !y.is_empty() && both == all_parts
        },
    );
    let a_parts = a.assigned();
    // A holds, more records come, A leaves: B goes on at A's committed offsets.
    std::fs::write(control.join("A.hold"), "").unwrap();
    wait_until("A holds", limit, || a.said("held"));
    fill_partitions(&doors[2], partitions, per, per);
    std::fs::write(control.join("A.stop"), "").unwrap();
    wait_until("A leaves", limit, || a.said("closed"));
    let total = (2 * per * u64::from(partitions)) as usize;
    wait_until("B takes every partition and reads them to the end", limit, || {
        b.assigned() == all_parts && a.records().len() + b.records().len() == total
    });
    let mut taken = BTreeMap::new();
    for (who, records) in [("A", a.records()), ("B", b.records())] {
        for (p, o, value) in records {
            assert_eq!(value, format!("p{p}-v{o}"));
            assert!(taken.insert((p, o), who).is_none(), "{p}/{o} taken twice");
        }
    }
    assert_eq!(taken.len(), total, "every record taken once, none skipped");
    for p in &a_parts {
        let first = b.records().iter().filter(|r| r.0 == *p).map(|r| r.1).min();
        assert_eq!(
            first,
            Some(per),
            "B goes on in A's partition {p} where A committed"
        );
    }
    std::fs::write(control.join("B.stop"), "").unwrap();
    wait_until("B leaves", limit, || b.said("closed"));
    // The group's offsets are with the partitions' leaders: a member bootstrapped from
    // the third peer starts where the group was.
    let c = member("C", &doors[2]);
    wait_until("C takes every partition", limit, || c.assigned() == all_parts);
    fill_partitions(&doors[1], partitions, 2 * per, per);
    wait_until("C reads what came after", limit, || {
        c.records().len() == (per * u64::from(partitions)) as usize
    });
    assert!(
        c.records().iter().all(|(_, o, _)| (2 * per..3 * per).contains(o)),
        "C started at the committed offsets"
    );
    std::fs::write(control.join("C.stop"), "").unwrap();
    wait_until("C leaves", limit, || c.said("closed"));

    // An idempotent producer bootstrapped from the second peer: its batches go to each
    // partition's leader, and every record is stored once where it was reported.
    let n = 5_000;
    let producer = PyClient::start(dir.path(), "producer", &["produce", &doors[1], &n.to_string()]);
    wait_until("the producer is done", Duration::from_secs(120), || {
        producer.lines().iter().any(|l| l.starts_with("done "))
    });
    let mut reported = delivered_once_each(&producer, n);
    // The groups' records (p{P}-v{O}) are there too.
    for p in 0..partitions {
        for o in 0..3 * per {
            reported.insert(format!("p{p}-v{o}"), (p, o));
        }
    }
    assert_stored_as_reported(&doors[0], &reported);
}
