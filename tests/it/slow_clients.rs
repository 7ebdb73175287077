//! Slow, idle and hostile clients (issue 20, fourth failure): memory stays bounded by
//! the shards' buffer budget however many clients announce large frames and trickle
//! them in; a frame, or an HTTP request's head, must arrive whole within `io_timeout` of
//! its first byte; idle connections are closed; a client address holds at most
//! `max_connections_per_address` connections; and a fresh client is served throughout.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowd::client::Client;
use flowd::protocol::{FetchFrom, OwnedWireRecord};

use crate::ingest::{Server, http};
use crate::support::{connect_from, fast_tempdir, listening_dataflow};

fn dataflow(dir: &Path, ingest: &str) -> PathBuf {
    listening_dataflow(
        dir,
        "slow",
        "group",
        ingest,
        "[[topic]]\nname = \"events\"\npartitions = 2\n",
    )
}

fn rss_mib(pid: u32) -> u64 {
    crate::support::proc_status_kib(pid, "VmRSS").expect("the server runs") / 1024
}

/// Writes as much of `bytes` as the socket takes now; returns how much.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> usize {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => break,
        }
    }
    done
}

/// A fresh client gets its produce acked and its records back, over TCP and HTTP.
fn assert_served(server: &Server, tag: &str) {
    let started = Instant::now();
    let mut client = Client::connect(&server.tcp).unwrap();
    let offsets = client
        .produce("events", &[OwnedWireRecord::value(tag.as_bytes().to_vec())])
        .unwrap();
    let (partition, offset) = offsets[0];
    let fetched = client
        .fetch("events", partition, FetchFrom::Offset(offset), 1, 0)
        .unwrap();
    assert_eq!(fetched.records[0].1.value, tag.as_bytes());
    let (code, body) = http(
        &server.http,
        "POST",
        "/topics/events",
        &format!("[\"{tag}-http\"]"),
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = http(&server.http, "GET", "/status", "");
    assert_eq!(code, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a fresh client waited {:?}",
        started.elapsed()
    );
}

#[test]
fn issue20_four_hundred_slow_drip_clients_leave_memory_bounded_and_a_fresh_client_is_served() {
    let dir = fast_tempdir();
    // Long enough that every slow client is still there while this test measures.
    let file = dataflow(dir.path(), "io_timeout = \"60s\"");
    let server = Server::start(&file);
    let pid = server.pid();
    let before = rss_mib(pid);
    let announced: u32 = (16 << 20) - 4;
    let payload = vec![0u8; 2 << 20];
    let mut clients = Vec::new();
    let mut sent = 0usize;
    for _ in 0..400 {
        let mut stream = TcpStream::connect(&server.tcp).unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut frame = announced.to_le_bytes().to_vec();
        frame.extend_from_slice(&[1, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        sent += write_some(&mut stream, &frame);
        sent += write_some(&mut stream, &payload);
        clients.push(stream);
    }
    // Trickle a byte on each, every second, for a few rounds: the old per-read timeout
    // never fired on these, and each read buffered more.
    let mut peak = 0;
    for _ in 0..4 {
        crate::support::pace(Duration::from_secs(1));
        for stream in &mut clients {
            sent += write_some(stream, &[0]);
        }
        peak = peak.max(rss_mib(pid));
    }
    eprintln!(
        "sent {} MiB, rss before {before} MiB, peak {peak} MiB",
        sent >> 20
    );
    assert!(
        sent > 200 << 20,
        "the clients got {sent} bytes out: not enough pressure"
    );
    assert!(
        peak < 512,
        "flowd grew from {before} MiB to {peak} MiB under 400 slow clients"
    );
    assert_served(&server, "fresh");
    peak = peak.max(rss_mib(pid));
    assert!(peak < 512, "{peak} MiB");
    drop(clients);
}

#[test]
fn issue20_a_trickled_frame_an_http_head_and_an_idle_connection_are_closed_in_time() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "io_timeout = \"1s\"\nidle_timeout = \"1s\"");
    let server = Server::start(&file);
    // A frame begun and fed a byte every 200 ms: each read is quick, the frame is not.
    let mut frame = TcpStream::connect(&server.tcp).unwrap();
    frame.write_all(&100u32.to_le_bytes()).unwrap();
    // An HTTP head fed likewise.
    let mut head = TcpStream::connect(&server.http).unwrap();
    head.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    // Two connections that say nothing at all.
    let mut idle_tcp = TcpStream::connect(&server.tcp).unwrap();
    let mut idle_http = TcpStream::connect(&server.http).unwrap();
    let started = Instant::now();
    let mut closed = [None; 4];
    while closed.iter().any(Option::is_none) && started.elapsed() < Duration::from_secs(10) {
        crate::support::pace(Duration::from_millis(200));
        let streams: [&mut TcpStream; 4] = [&mut frame, &mut head, &mut idle_tcp, &mut idle_http];
        for (i, stream) in streams.into_iter().enumerate() {
            if closed[i].is_some() {
                continue;
            }
            // Feed the first two, then see whether the server closed it.
            let fed = if i < 2 { stream.write(b"x").is_ok() } else { true };
            stream.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            let mut byte = [0u8; 256];
            let gone = !fed
                || match stream.read(&mut byte) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                };
            if gone {
                closed[i] = Some(started.elapsed());
            }
        }
    }
    for (i, what) in ["trickled frame", "trickled HTTP head", "idle TCP", "idle HTTP"]
        .iter()
        .enumerate()
    {
        let at = closed[i].unwrap_or_else(|| panic!("the {what} connection was never closed"));
        assert!(
            at >= Duration::from_millis(800),
            "the {what} connection was closed early, after {at:?}"
        );
        assert!(at < Duration::from_secs(5), "the {what} connection lived {at:?}");
    }
    assert!(
        server
            .log
            .wait_for(&["stayed unfinished for 1s"], Duration::from_secs(2)),
        "{}",
        server.log.text()
    );
    let (_, metrics) = http(&server.http, "GET", "/metrics", "");
    assert!(
        metrics.contains("flowd_slow_requests_closed_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowd_idle_connections_closed_total 2\n"),
        "{metrics}"
    );
    assert_served(&server, "after");
}

/// `n` connections, each admitted for sure (it got an answer).
fn hold(server: &Server, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            let mut client = Client::connect(&server.tcp).unwrap();
            client.metadata().unwrap();
            client
        })
        .collect()
}

/// `stream` (over a limit) gets an error frame saying `why`, and is closed; a connection
/// to the HTTP door now gets a 503.
fn assert_refused(server: &Server, mut stream: TcpStream, why: &str) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains(why), "{text:?}");
    let mut http = TcpStream::connect(&server.http).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = http.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
}

#[test]
fn the_server_holds_at_most_max_connections_and_lets_one_in_when_another_goes() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "max_connections = 3");
    let server = Server::start(&file);
    let mut held = hold(&server, 3);
    // A fourth, from another address too, gets an error frame saying why, and is closed;
    // HTTP shares the limit.
    let fourth = connect_from("127.0.0.2", &server.tcp).unwrap();
    assert_refused(&server, fourth, "the server holds its limit of 3 connections");
    // The three held are served on.
    for client in &mut held {
        client.metadata().unwrap();
    }
    // One goes; a new one is let in (polled, bounded: the server sees the close).
    drop(held.pop());
    crate::support::poll(Duration::from_secs(5), Duration::from_millis(50), || {
        Client::connect(&server.tcp).unwrap().metadata().ok()
    })
    .expect("a connection is let in once one of the three closed");
}

#[test]
fn issue20_one_address_holds_at_most_its_connections_and_others_are_still_let_in() {
    let dir = fast_tempdir();
    let file = dataflow(dir.path(), "max_connections_per_address = 3");
    let server = Server::start(&file);
    let held = hold(&server, 3);
    // The fourth from this address gets an error frame, and is closed; HTTP is counted
    // alike.
    let fourth = TcpStream::connect(&server.tcp).unwrap();
    assert_refused(&server, fourth, "this address holds its limit of 3 connections");
    // Another address is let in meanwhile (loopback has all of 127.0.0.0/8).
    let stream = connect_from("127.0.0.2", &server.tcp).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut probe = [0u8; 1];
    let refused = matches!((&stream).read(&mut probe), Ok(n) if n > 0);
    assert!(!refused, "a connection from 127.0.0.2 was refused");
    drop(held);
    // Once they are gone, the address is let in again.
    let mut last = None;
    crate::support::poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || match Client::connect(&server.tcp).unwrap().metadata() {
            Ok(_) => Some(()),
            Err(e) => {
                last = Some(e);
                None
            }
        },
    )
    .unwrap_or_else(|| panic!("still refused after the others closed: {last:?}"));
}
