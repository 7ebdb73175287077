//! Peers prove who they are: with `--peer-tls-*` the peer port speaks mutual TLS with
//! the cluster's CA. A connection without a certificate of that CA, with one of another
//! cluster or none at all, or one that gives an address its certificate does not name,
//! gets nothing: no join, no gossip, no PRODUCE, FETCH or COPY answered. A peer with a
//! good certificate is served as before (every other cluster test runs with mutual TLS
//! on: `ingest::Server::start_env`). The client door takes relays from peers the same
//! way: only a peer certificate of this cluster may VOUCH for a client there.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowd::cluster::data;
use flowd::cluster::frame::{self, Kind};
use flowd::cluster::handover::{self, CopyOrder};
use flowd::cluster::transport::{Purpose, hello};
use flowd::tls::duplex::Duplex;
use flowd::tls::peer::{PeerFiles, PeerNames, PeerTls, RELAY_ALPN};

use crate::cluster::{events_dataflow, one_at_a_time, one_copy, served_by, start_file, tail, wait_all_alive};
use crate::ingest::{PLAINTEXT_PEERS, run_cli};
use crate::support::{peer_tls_flags, wait_until};

pub(crate) const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The directory of the tests' cluster CA (`support::peer_tls_flags`).
pub(crate) fn cluster_pki() -> PathBuf {
    let flags = peer_tls_flags("flowd", &["127.0.0.1"]);
    let ca = flags.iter().position(|f| f == "--peer-tls-ca").unwrap();
    Path::new(&flags[ca + 1]).parent().unwrap().to_owned()
}

/// `flowd cert issue NAME` in `pki` with `extra` flags: (cert, key).
pub(crate) fn issue(pki: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let pki_s = pki.display().to_string();
    let mut args = vec!["cert", "issue", name, "--dir", &pki_s];
    args.extend_from_slice(extra);
    let (code, _, err) = run_cli(&args, "");
    assert_eq!(code, 0, "{err}");
    (pki.join(format!("{name}.pem")), pki.join(format!("{name}.key")))
}

/// A peer's TLS as a forger would use it: the files, for cluster "flowd", at `me`.
pub(crate) fn peer_tls(cert: PathBuf, key: PathBuf, ca: PathBuf, me: IpAddr) -> PeerTls {
    PeerTls::load(PeerFiles { cert, key, ca }, "flowd", me, PeerNames::default()).unwrap()
}

pub(crate) fn socket(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A data connection as a peer opens one, claiming to be `from`: a PRODUCE of one
/// record (`value`) to each of `partitions`, a FETCH of the first and a COPY of it.
/// Returns the kinds of the frames that came back until the connection ended, went
/// quiet, or all were answered.
fn forge(stream: &mut (impl Read + Write), from: SocketAddr, partitions: &[u32], value: &str) -> Vec<Kind> {
    let mut out = hello("flowd", from, Purpose::Data);
    for (i, p) in partitions.iter().enumerate() {
        let mut body = data::produce_head("events", *p, 1, 0);
        flowd::protocol::wire::encode_record(&mut body.0, Some(1), None, value.as_bytes(), &[]);
        frame::encode(&mut out, Kind::Produce, i as u64 + 1, &body.0);
    }
    let fetch = data::encode_fetch(&data::Fetch {
        topic: "events",
        partition: partitions[0],
        from: flowd::protocol::FetchFrom::Offset(0),
        max_records: 100,
        max_bytes: 1 << 20,
        wait_ms: 0,
    });
    frame::encode(&mut out, Kind::Fetch, 100, &fetch);
    let copy = handover::encode_copy(&CopyOrder {
        topic: "events".into(),
        partition: partitions[0],
        from: 0,
    });
    frame::encode(&mut out, Kind::Copy, 101, &copy);
    if stream.write_all(&out).is_err() {
        return Vec::new();
    }
    let mut kinds = Vec::new();
    while kinds.len() < partitions.len() + 2 {
        match frame::read(stream) {
            Ok(Some(f)) => kinds.push(f.kind),
            Ok(None) | Err(_) => break,
        }
    }
    kinds
}

/// A relay as a peer opens one to a client door, in TLS with `config` (which offers
/// `RELAY_ALPN`): VOUCH, then METADATA. The kinds answered until the connection ended,
/// went quiet, or both were answered; none when the handshake failed.
fn relay(door: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> Vec<u8> {
    let session =
        rustls::ClientConnection::new(config, rustls_pki_types::ServerName::IpAddress(HERE.into())).unwrap();
    let Ok(mut stream) = Duplex::handshake(socket(door), session) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    flowd::protocol::Request::Vouch { name: "anyone" }.encode(0, &mut out);
    flowd::protocol::Request::Metadata.encode(1, &mut out);
    if stream.write_all(&out).is_err() {
        return Vec::new();
    }
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).is_err() {
            break;
        }
        let mut rest = vec![0u8; u32::from_le_bytes(prefix) as usize];
        if stream.read_exact(&mut rest).is_err() {
            break;
        }
        kinds.push(rest[1]);
    }
    kinds
}

#[test]
fn only_peers_with_a_certificate_of_the_cluster_get_in() {
    let _serial = one_at_a_time();
    one_copy();
    let dir = tempfile::tempdir().unwrap();
    let file = events_dataflow(dir.path());
    let first = start_file(&file, dir.path(), "p1", &["--peer-listen", "127.0.0.1:0"]);
    let seed = first.peer.clone().unwrap();
    let second = start_file(
        &file,
        dir.path(),
        "p2",
        &["--peer-listen", "127.0.0.1:0", "--seeds", &seed],
    );
    wait_all_alive(&[&first, &second]);
    let at: SocketAddr = seed.parse().unwrap();
    let posing_as: SocketAddr = second.peer.clone().unwrap().parse().unwrap();
    let mut partitions = Vec::new();
    wait_until(
        "the first peer serves partitions",
        Duration::from_secs(30),
        || {
            partitions = served_by(&first, "events");
            !partitions.is_empty()
        },
    );

    let pki = cluster_pki();
    let ca = pki.join("ca.pem");
    let other = dir.path().join("other-ca");
    let (code, _, err) = run_cli(&["cert", "ca", "--dir", &other.display().to_string()], "");
    assert_eq!(code, 0, "{err}");

    // The control: a certificate of the cluster CA for this address gets every frame
    // answered, so the refusals below are the certificates', not a bad forgery.
    let (cert, key) = issue(
        &pki,
        "good-forger",
        &["--cluster", "flowd", "--host", "127.0.0.1"],
    );
    let good = peer_tls(cert, key, ca.clone(), HERE);
    let certified = |partitions: &[u32]| {
        let mut stream = good.dial(socket(at), HERE).unwrap();
        forge(
            &mut stream,
            "127.0.0.1:1".parse().unwrap(),
            partitions,
            "certified",
        )
    };
    let kinds = certified(&partitions);
    let acked = kinds.iter().filter(|k| **k == Kind::Acked).count();
    assert_eq!(acked, partitions.len(), "{kinds:?}");
    // The FETCH answered with the records, the COPY too (refused: nothing is moving).
    assert_eq!(kinds.len(), partitions.len() + 2, "{kinds:?}");
    assert!(kinds.contains(&Kind::Frame), "{kinds:?}");

    // Plaintext on the TLS port: an ERROR saying so, then the end.
    let kinds = forge(&mut socket(at), posing_as, &partitions, "plaintext");
    assert_eq!(kinds, vec![Kind::Error]);
    // TLS without a client certificate.
    let anonymous = flowd::tls::ClientTls::load(&flowd::tls::client::ClientFiles {
        ca: Some(ca.clone()),
        ..Default::default()
    })
    .unwrap();
    let session =
        rustls::ClientConnection::new(anonymous.config(), anonymous.server_name("127.0.0.1").unwrap())
            .unwrap();
    if let Ok(mut stream) = Duplex::handshake(socket(at), session) {
        assert_eq!(forge(&mut stream, posing_as, &partitions, "anonymous"), vec![]);
    }
    // A certificate of the cluster CA that is no peer's (a client's, no cluster).
    let (cert, key) = issue(&pki, "client-forger", &["--host", "127.0.0.1"]);
    let client = flowd::tls::ClientTls::load(&flowd::tls::client::ClientFiles {
        ca: Some(ca.clone()),
        cert: Some(cert),
        key: Some(key),
        server_name: None,
    })
    .unwrap();
    let session =
        rustls::ClientConnection::new(client.config(), client.server_name("127.0.0.1").unwrap()).unwrap();
    if let Ok(mut stream) = Duplex::handshake(socket(at), session) {
        assert_eq!(forge(&mut stream, posing_as, &partitions, "client"), vec![]);
    }
    // A peer certificate of another CA, for this cluster and address.
    let (cert, key) = issue(&other, "foreign", &["--cluster", "flowd", "--host", "127.0.0.1"]);
    let foreign = peer_tls(cert, key, ca.clone(), HERE);
    if let Ok(mut stream) = foreign.dial(socket(at), HERE) {
        assert_eq!(forge(&mut stream, posing_as, &partitions, "foreign"), vec![]);
    }
    // A peer certificate of the cluster CA for another address, posing as the second
    // peer: its HELLO is refused with the reason.
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let (cert, key) = issue(&pki, "elsewhere", &["--cluster", "flowd", "--host", "127.0.0.2"]);
    let impostor = peer_tls(cert, key, ca.clone(), elsewhere);
    let mut stream = impostor.dial(socket(at), HERE).unwrap();
    assert_eq!(
        forge(&mut stream, posing_as, &partitions, "impostor"),
        vec![Kind::Error]
    );

    // The client door (plaintext itself) takes a relay in TLS from a peer of this
    // cluster, VOUCH and all; from any other certificate of the CA it takes nothing.
    let door: SocketAddr = first.tcp.parse().unwrap();
    use flowd::protocol::Kind as Client;
    assert_eq!(
        relay(door, good.relay_client()),
        vec![Client::Authed as u8, Client::MetadataReply as u8]
    );
    let (cert, key) = issue(&pki, "green", &["--cluster", "green", "--host", "127.0.0.1"]);
    let green = PeerTls::load(
        PeerFiles {
            cert,
            key,
            ca: ca.clone(),
        },
        "green",
        HERE,
        PeerNames::default(),
    )
    .unwrap();
    assert_eq!(relay(door, green.relay_client()), Vec::<u8>::new());
    let mut posing = (*client.config()).clone();
    posing.alpn_protocols = vec![RELAY_ALPN.to_vec()];
    assert_eq!(relay(door, std::sync::Arc::new(posing)), Vec::<u8>::new());
    assert!(
        first.log.wait_for(
            &["a relaying peer refused: its certificate (green) is for cluster \"green\""],
            Duration::from_secs(5)
        ),
        "{}",
        first.log.text()
    );

    // Whole peers: one in plaintext and one with another CA's certificate, seeded with
    // the first peer, never join.
    let plain = crate::cluster::start_file_env(
        &file,
        dir.path(),
        "plain",
        &["--peer-listen", "127.0.0.1:0", "--seeds", &seed],
        &[PLAINTEXT_PEERS],
    );
    let foreign_ca = other.join("ca.pem").display().to_string();
    let (cert, key) = issue(&other, "stranger", &["--cluster", "flowd", "--host", "127.0.0.1"]);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let stranger = start_file(
        &file,
        dir.path(),
        "stranger",
        &[
            "--peer-listen",
            "127.0.0.1:0",
            "--seeds",
            &seed,
            "--peer-tls-cert",
            &cert,
            "--peer-tls-key",
            &key,
            "--peer-tls-ca",
            &foreign_ca,
        ],
    );
    let refusals = [
        "that speaks plaintext on this TLS peer port".to_owned(),
        "peer sent no certificates".to_owned(),
        "is for cluster none (not a peer certificate)".to_owned(),
        "UnknownIssuer".to_owned(),
        format!(
            "refused a peer that says it is {posing_as}: its certificate (elsewhere) is for 127.0.0.2, and none"
        ),
        "refused a peer at 127.0.0.1:".to_owned(),
    ];
    let refusals: Vec<&str> = refusals.iter().map(String::as_str).collect();
    assert!(
        first.log.wait_for(&refusals, Duration::from_secs(20)),
        "{}",
        first.log.text()
    );
    // A third peer with a good certificate, seeded like the strangers and started after
    // them, joins: by then they would have too, were they let in.
    let third = start_file(
        &file,
        dir.path(),
        "p3",
        &["--peer-listen", "127.0.0.1:0", "--seeds", &seed],
    );
    wait_all_alive(&[&first, &second, &third]);
    for server in [&first, &second, &third] {
        let seen: BTreeSet<String> = crate::cluster::status(server)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["addr"].as_str().unwrap().to_owned())
            .collect();
        let members: BTreeSet<String> = [&first, &second, &third]
            .iter()
            .map(|s| s.peer.clone().unwrap())
            .collect();
        assert_eq!(seen, members);
    }
    for outsider in [&plain, &stranger] {
        let alive = crate::cluster::status(outsider)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "alive")
            .count();
        assert_eq!(alive, 1, "only itself: {}", crate::cluster::status(outsider));
    }

    // Of all the forgeries only the certified one was written.
    let values: Vec<String> = tail(&first, "events").into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(values.len(), partitions.len(), "{values:?}");
    assert!(values.iter().all(|v| v == "certified"), "{values:?}");

    // SIGHUP reads the peer certificate again; the peers still meet after it.
    first.signal(libc::SIGHUP);
    assert!(
        first.log.wait_for(
            &["SIGHUP: the peer port's TLS certificate"],
            Duration::from_secs(10)
        ),
        "{}",
        first.log.text()
    );
    // Answered (acked, or redirected where the third peer took a partition over).
    let kinds = certified(&partitions);
    assert_eq!(kinds.len(), partitions.len() + 2, "{kinds:?}");
}
