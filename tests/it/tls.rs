//! TLS on the doors: the binary protocol and HTTP in TLS 1.3 with a certificate of the
//! operator's CA (`flowd cert`); plaintext and TLS crossed fail within a second with a
//! message on both sides; SIGHUP swaps the certificate without dropping a connection;
//! a client certificate proves a credential; TLS with credentials may face other
//! machines without `insecure`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowd::client::{Client, ClientError, ClientOptions};
use flowd::protocol::{ErrorCode, OwnedWireRecord};
use flowd::tls::ClientTls;
use flowd::tls::client::ClientFiles;

use crate::ingest::{Server, http, run_cli};
use crate::support::listening_dataflow;

/// `flowd cert ca` in `dir/NAME`, and a server certificate for 127.0.0.1 from it.
fn authority(dir: &Path, name: &str) -> PathBuf {
    let pki = dir.join(name);
    let pki_s = pki.to_str().unwrap();
    let (code, _, err) = run_cli(&["cert", "ca", "--dir", pki_s, "--name", name], "");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(
        &[
            "cert",
            "issue",
            "server",
            "--dir",
            pki_s,
            "--host",
            "127.0.0.1,localhost",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    pki
}

fn tls_lines(pki: &Path) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        pki.join("server.pem").display(),
        pki.join("server.key").display()
    )
}

const TOPIC: &str = "[[topic]]\nname = \"events\"\npartitions = 2\n";

fn trusting(ca: &Path) -> ClientTls {
    ClientTls::load(&ClientFiles {
        ca: Some(ca.to_owned()),
        ..Default::default()
    })
    .unwrap()
}

fn connect(addr: &str, tls: Option<ClientTls>) -> Result<Client, ClientError> {
    Client::connect_with(
        addr,
        ClientOptions {
            tls,
            ..Default::default()
        },
    )
}

/// One HTTP/1.1 exchange in TLS: `(status, body)`, or the error that ended it.
fn https(
    addr: &str,
    tls: &ClientTls,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let socket = std::net::TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let (mut reader, mut writer) = flowd::client::transport::open(socket, Some(tls), "127.0.0.1")?;
    write!(
        writer,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    writer.flush()?;
    let mut response = String::new();
    reader.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Ok((status, body.to_owned()))
}

fn metric(server: &Server, tls: Option<&ClientTls>, name: &str) -> u64 {
    let (code, body) = match tls {
        Some(tls) => https(&server.http, tls, "GET", "/metrics", "").unwrap(),
        None => http(&server.http, "GET", "/metrics", ""),
    };
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn every_door_speaks_tls_with_the_certificate_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = authority(dir.path(), "ca");
    let file = listening_dataflow(dir.path(), "tls", "group", &tls_lines(&pki), TOPIC);
    let server = Server::start(&file);
    let ca = pki.join("ca.pem");
    let tls = trusting(&ca);

    // The Rust client: frames larger than a TLS record (16 KiB) both ways.
    let mut client = connect(&server.tcp, Some(tls.clone())).unwrap();
    let records: Vec<OwnedWireRecord> = (0..500)
        .map(|i| OwnedWireRecord::value(format!("r{i:03}-{}", "x".repeat(200))))
        .collect();
    assert_eq!(client.produce("events", &records).unwrap().len(), 500);
    // The CLI, with --ca, both ways.
    let ca_s = ca.to_str().unwrap();
    let (code, _, err) = run_cli(
        &["--ca", ca_s, "send", "events", "--to", &server.tcp],
        "cli-1\ncli-2\n",
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_cli(&["--ca", ca_s, "tail", "events", "--from", &server.tcp], "");
    assert_eq!(code, 0, "{err}");
    let mut values: Vec<&str> = out.lines().map(|l| l.rsplit('\t').next().unwrap()).collect();
    values.sort_unstable();
    let mut expected: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.value.clone()).unwrap())
        .chain(["cli-1".to_owned(), "cli-2".to_owned()])
        .collect();
    expected.sort_unstable();
    assert_eq!(values, expected, "each record once, through TLS");

    // HTTP in TLS: a produce and the status.
    let (code, body) = https(&server.http, &tls, "POST", "/topics/events", r#"["over https"]"#).unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = https(&server.http, &tls, "GET", "/status", "").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["records_in"], 503, "{body}");
    assert!(
        status["listeners"][0].as_str().unwrap().ends_with("(TLS)"),
        "{body}"
    );

    // A client that trusts another CA gets no session, and is told what to check.
    let other = authority(dir.path(), "other");
    let error = connect(&server.tcp, Some(trusting(&other.join("ca.pem"))))
        .err()
        .expect("a certificate of an unknown CA is refused");
    let message = error.to_string();
    assert!(
        matches!(error, ClientError::Tls { .. }) && message.contains("--ca"),
        "{message}"
    );
    assert!(
        https(
            &server.http,
            &trusting(&other.join("ca.pem")),
            "GET",
            "/status",
            ""
        )
        .is_err()
    );
    assert_eq!(metric(&server, Some(&tls), "flowd_tls_refused_total"), 2);
}

#[test]
fn plaintext_and_tls_crossed_fail_within_a_second_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let pki = authority(dir.path(), "ca");
    let secure = Server::start(&listening_dataflow(
        dir.path(),
        "secure",
        "group",
        &tls_lines(&pki),
        TOPIC,
    ));
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Server::start(&listening_dataflow(plain_dir.path(), "plain", "group", "", TOPIC));
    let tls = trusting(&pki.join("ca.pem"));

    // Plaintext on the TLS doors: an ERROR frame and a 400 the client can read.
    let started = Instant::now();
    let error = connect(&secure.tcp, None)
        .and_then(|mut c| c.metadata())
        .expect_err("plaintext on a TLS port fails");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&error, ClientError::Server { code: ErrorCode::TlsRequired, message } if message.contains("--tls")),
        "{error}"
    );
    let started = Instant::now();
    let (code, body) = http(&secure.http, "GET", "/status", "");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("https://"), "{body}");

    // TLS on the plaintext doors: closed at once, and the client says why it may be.
    let started = Instant::now();
    let error = connect(&plain.tcp, Some(tls.clone()))
        .err()
        .expect("TLS on a plaintext port fails");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains("drop --tls"), "{error}");
    let started = Instant::now();
    assert!(https(&plain.http, &tls, "GET", "/status", "").is_err());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The servers' side, in the log and counted.
    for (server, needles) in [
        (
            &secure,
            [
                "a plaintext client on the TLS TCP door",
                "a plaintext client on the TLS HTTP door",
            ],
        ),
        (
            &plain,
            [
                "a TLS client on the plaintext TCP door",
                "a TLS client on the plaintext HTTP door",
            ],
        ),
    ] {
        assert!(
            server.log.wait_for(&needles, Duration::from_secs(10)),
            "{}",
            server.log.text()
        );
    }
    // A port check (connect, then close without a byte) is no refusal on either.
    for server in [&secure, &plain] {
        drop(std::net::TcpStream::connect(&server.tcp).unwrap());
    }
    assert_eq!(metric(&secure, Some(&tls), "flowd_tls_refused_total"), 2);
    assert_eq!(metric(&plain, None, "flowd_tls_refused_total"), 2);
    // Both still serve their own kind.
    connect(&secure.tcp, Some(tls)).unwrap().metadata().unwrap();
    connect(&plain.tcp, None).unwrap().metadata().unwrap();
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let old = authority(dir.path(), "old");
    let new = authority(dir.path(), "new");
    // The server's files, which the operator renews in place.
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let install = |from: &Path| {
        for name in ["server.pem", "server.key"] {
            let (src, dst) = (from.join(name), live.join(name));
            let staged = live.join(format!(".{name}"));
            std::fs::copy(&src, &staged).unwrap();
            std::fs::rename(&staged, &dst).unwrap();
        }
    };
    install(&old);
    let mut server = Server::start(&listening_dataflow(
        dir.path(),
        "renew",
        "group",
        &tls_lines(&live),
        TOPIC,
    ));
    let (trust_old, trust_new) = (trusting(&old.join("ca.pem")), trusting(&new.join("ca.pem")));
    let mut open = connect(&server.tcp, Some(trust_old.clone())).unwrap();
    open.produce("events", &[OwnedWireRecord::value("before")])
        .unwrap();

    install(&new);
    server.signal(libc::SIGHUP);
    assert!(
        server
            .log
            .wait_for(&["SIGHUP: the doors' TLS certificate"], Duration::from_secs(10)),
        "{}",
        server.log.text()
    );
    // The open connection goes on; new ones get the new certificate.
    open.produce("events", &[OwnedWireRecord::value("after")])
        .unwrap();
    // (A client that had a session may resume it with its ticket; a fresh one checks
    // the certificate.)
    drop(trust_old);
    let fresh_old = trusting(&old.join("ca.pem"));
    assert!(matches!(
        connect(&server.tcp, Some(fresh_old)),
        Err(ClientError::Tls { .. })
    ));
    connect(&server.tcp, Some(trust_new.clone()))
        .unwrap()
        .metadata()
        .unwrap();

    // A pair that does not fit is refused; the one in force stays.
    std::fs::copy(old.join("server.pem"), live.join("server.pem")).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.log.wait_for(
            &["was not reloaded; the one read before stays"],
            Duration::from_secs(10)
        ),
        "{}",
        server.log.text()
    );
    connect(&server.tcp, Some(trust_new)).unwrap().metadata().unwrap();
    assert!(server.terminate(Duration::from_secs(20)).is_some());
}

#[test]
fn a_client_certificate_proves_a_credential_and_tls_with_credentials_may_face_other_machines() {
    let dir = tempfile::tempdir().unwrap();
    let pki = authority(dir.path(), "ca");
    let pki_s = pki.to_str().unwrap();
    for name in ["alice", "mallory"] {
        let (code, _, err) = run_cli(&["cert", "issue", name, "--dir", pki_s], "");
        assert_eq!(code, 0, "{err}");
    }
    let credentials = dir.path().join("credentials");
    let creds = credentials.to_str().unwrap();
    let (code, _, err) = run_cli(
        &[
            "token",
            "add",
            "alice",
            "--allow",
            "produce:events",
            "--credentials",
            creds,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_cli(
        &["token", "add", "ops", "--allow", "status", "--credentials", creds],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let ops_token = out
        .lines()
        .find(|l| l.starts_with("flowd_"))
        .unwrap()
        .trim()
        .to_owned();
    let ingest = format!(
        "{}\ntls_client_ca = \"{}\"\ncredentials = \"{creds}\"",
        tls_lines(&pki),
        pki.join("ca.pem").display()
    );
    // Every address, without `insecure`: TLS and credentials guard it.
    let text = std::fs::read_to_string(listening_dataflow(dir.path(), "guarded", "group", &ingest, TOPIC))
        .unwrap()
        .replace("tcp = \"127.0.0.1:0\"", "tcp = \"0.0.0.0:0\"");
    let file = dir.path().join("open.toml");
    std::fs::write(&file, text).unwrap();
    let server = Server::start(&file);
    let tcp = server.tcp.replace("0.0.0.0", "127.0.0.1");
    let as_holder = |name: &str| {
        ClientTls::load(&ClientFiles {
            ca: Some(pki.join("ca.pem")),
            cert: Some(pki.join(format!("{name}.pem"))),
            key: Some(pki.join(format!("{name}.key"))),
            server_name: None,
        })
        .unwrap()
    };

    // alice's certificate is alice: she may produce, not read, with no token.
    let mut alice = connect(&tcp, Some(as_holder("alice"))).unwrap();
    alice
        .produce("events", &[OwnedWireRecord::value("by certificate")])
        .unwrap();
    let error = alice
        .fetch("events", 0, flowd::protocol::FetchFrom::Earliest, 10, 0)
        .err()
        .unwrap();
    assert!(
        matches!(&error, ClientError::Server { code: ErrorCode::Forbidden, message } if message.contains("consume:events")),
        "{error}"
    );
    let (code, body) = https(
        &server.http,
        &as_holder("alice"),
        "POST",
        "/topics/events",
        r#"["by https"]"#,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    // mallory's certificate is signed by the CA, but names no credential.
    let error = connect(&tcp, Some(as_holder("mallory")))
        .and_then(|mut c| c.metadata())
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Server {
                code: ErrorCode::Unauthenticated,
                ..
            }
        ),
        "{error}"
    );
    // Without a certificate, a token still serves.
    let mut ops = connect(&tcp, Some(trusting(&pki.join("ca.pem")))).unwrap();
    ops.auth(&ops_token).unwrap();
    let status = ops.status(true).unwrap();
    assert_eq!(status["records_in"], 2, "{status}");
    assert_eq!(status["insecure"].as_array().map_or(0, Vec::len), 0, "{status}");
}

#[test]
fn key_files_others_may_read_and_half_a_pair_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = authority(dir.path(), "ca");
    let key = pki.join("server.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let file = listening_dataflow(dir.path(), "open-key", "group", &tls_lines(&pki), TOPIC);
    let (code, _, err) = run_cli(&["run", file.to_str().unwrap()], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("chmod 600") && err.contains("server.key"), "{err}");
    let half = format!("tls_cert = \"{}\"", pki.join("server.pem").display());
    let file = listening_dataflow(dir.path(), "half", "group", &half, TOPIC);
    let (code, _, err) = run_cli(&["run", file.to_str().unwrap()], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ingest.tls_key") || err.contains("both"), "{err}");
}

/// The partitions the server `client` is connected to serves itself, as its own status
/// says.
fn served_here(client: &mut Client) -> Vec<u32> {
    crate::cluster::serving_in(&client.status(true).unwrap(), "events")
}

#[test]
fn in_a_cluster_with_tls_doors_requests_go_on_to_their_leader_in_mutual_tls_for_tokens_and_certificates() {
    use flowd::protocol::{FetchFrom, Request};
    const PARTITIONS: u32 = 16;
    let _serial = crate::cluster::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let pki = authority(dir.path(), "ca");
    let pki_s = pki.to_str().unwrap();
    let (code, _, err) = run_cli(&["cert", "issue", "carol", "--dir", pki_s], "");
    assert_eq!(code, 0, "{err}");
    let credentials = dir.path().join("credentials");
    let token = |name: &str, allow: &str| {
        let creds = credentials.to_str().unwrap();
        let (code, out, err) = run_cli(
            &["token", "add", name, "--allow", allow, "--credentials", creds],
            "",
        );
        assert_eq!(code, 0, "{err}");
        out.lines()
            .find(|l| l.starts_with("flowd_"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let reader = token("reader", "status,consume:events");
    let writer = token("writer", "produce:events");
    token("carol", "consume:events");
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n{}\ntls_client_ca = \"{}\"\n\
             credentials = \"{}\"\n\n[cluster]\nreplicas = 1\n\n[[topic]]\nname = \"events\"\npartitions = {PARTITIONS}\n",
            tls_lines(&pki),
            pki.join("ca.pem").display(),
            credentials.display()
        ),
    )
    .unwrap();
    let ca = pki.join("ca.pem");
    let as_reader = |server: &Server| {
        let mut client = connect(&server.tcp, Some(trusting(&ca))).unwrap();
        client.auth(&reader).unwrap();
        client
    };
    let as_carol = |server: &Server| {
        let tls = ClientTls::load(&ClientFiles {
            ca: Some(ca.clone()),
            cert: Some(pki.join("carol.pem")),
            key: Some(pki.join("carol.key")),
            server_name: None,
        })
        .unwrap();
        connect(&server.tcp, Some(tls)).unwrap()
    };
    let read = |client: &mut Client, partition: u32| {
        client
            .fetch("events", partition, FetchFrom::Earliest, 10_000, 0)
            .map(|f| f.records.len() as u64)
    };
    // Two peers, each serving its share of the partitions (the other's reached only
    // through a relay); `env` for the engines.
    let start = |name: &str, env: &[(&str, &str)]| {
        let first = crate::cluster::start_file_env(
            &file,
            dir.path(),
            &format!("{name}1"),
            &["--peer-listen", "127.0.0.1:0"],
            env,
        );
        let seed = first.peer.clone().unwrap();
        let second = crate::cluster::start_file_env(
            &file,
            dir.path(),
            &format!("{name}2"),
            &["--peer-listen", "127.0.0.1:0", "--seeds", &seed],
            env,
        );
        let servers = [first, second];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shares: Vec<Vec<u32>> = servers.iter().map(|s| served_here(&mut as_reader(s))).collect();
            let mut all: Vec<u32> = shares.concat();
            all.sort_unstable();
            if all == (0..PARTITIONS).collect::<Vec<_>>() && shares.iter().all(|s| !s.is_empty()) {
                return (servers, shares);
            }
            assert!(
                Instant::now() < deadline,
                "the two peers did not share the partitions within 60 s: {shares:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Peers in mutual TLS (the tests' default): every partition reads through either
    // peer, for a token's holder and for a certificate's.
    let (servers, _) = start("tls", &[]);
    let records: Vec<OwnedWireRecord> = (0..64)
        .map(|i| OwnedWireRecord {
            timestamp_ms: None,
            key: Some(format!("k{i}").into_bytes()),
            value: format!("v{i}").into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    let mut producer = connect(&servers[0].tcp, Some(trusting(&ca))).unwrap();
    producer.auth(&writer).unwrap();
    producer.produce("events", &records).unwrap();
    for server in &servers {
        let (mut reader, mut carol) = (as_reader(server), as_carol(server));
        let by_token: u64 = (0..PARTITIONS).map(|p| read(&mut reader, p).unwrap()).sum();
        assert_eq!(by_token, 64, "a token's holder through {}", server.tcp);
        let by_certificate: u64 = (0..PARTITIONS).map(|p| read(&mut carol, p).unwrap()).sum();
        assert_eq!(
            by_certificate, 64,
            "a certificate's holder through {}",
            server.tcp
        );
    }
    // A client cannot vouch for anyone: only a relaying peer can.
    let mut forger = connect(&servers[0].tcp, Some(trusting(&ca))).unwrap();
    forger.auth(&token("nobody", "produce:events")).unwrap();
    let error = forger
        .call(&Request::Vouch { name: "reader" })
        .and_then(flowd::client::server_error)
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::Server { code: ErrorCode::Forbidden, message } if message.contains("only from a peer")),
        "{error}"
    );
    assert!(
        read(&mut forger, 0).is_err(),
        "a forged VOUCH ends the connection"
    );
    drop(servers);

    // Peers in plaintext: what the other leads cannot go on to its TLS door, and the
    // client is told so (a relay never speaks plaintext to a TLS door).
    let (servers, shares) = start("plain", &[crate::ingest::PLAINTEXT_PEERS]);
    let (mine, theirs) = (shares[0][0], shares[1][0]);
    let mut reader = as_reader(&servers[0]);
    assert_eq!(read(&mut reader, mine).unwrap(), 0);
    let error = read(&mut reader, theirs).unwrap_err();
    assert!(
        matches!(&error, ClientError::Server { code: ErrorCode::Unavailable, message } if message.contains("--peer-tls-*")),
        "{error}"
    );
    let error = read(&mut as_carol(&servers[0]), theirs).unwrap_err();
    assert!(
        matches!(&error, ClientError::Server { code: ErrorCode::Unavailable, message } if message.contains("proved itself by certificate")),
        "{error}"
    );
    assert!(
        servers[0].log.text().contains("give the peers certificates"),
        "the relaying peer says why in its log"
    );
}
