//! Who may use the doors: a web page open in a browser on the server's machine changes
//! nothing through the HTTP door; listeners bind only loopback unless told `insecure`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::ingest::{Server, http};

/// One HTTP/1.1 exchange with exactly `headers` (each `Name: value\r\n`): `(status, body)`.
fn exchange(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

fn dataflow(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("guarded.toml");
    let text = format!(
        r#"
[engine]
data_dir = "{data}"
cores = 2

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
http_hosts = ["flowd.test"]

[[topic]]
name = "events"
partitions = 2

[[topic]]
name = "answers"
partitions = 1

[[job]]
name = "echo"
topic = "answers"

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

/// Records the engine holds in `topic`, summed over its partitions (from `/status`).
fn stored(server: &Server, topic: &str) -> u64 {
    let (code, body) = http(&server.http, "GET", "/status", "");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == topic)
        .unwrap()["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum()
}

fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = http(&server.http, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn a_page_in_a_browser_changes_nothing_through_the_http_door() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path()));
    let addr = server.http.clone();
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    // A consumer a forged DELETE would destroy.
    let (code, body) = http(
        &addr,
        "POST",
        "/consumers/events/g/claim?count=1&create=earliest",
        "",
    );
    assert_eq!(code, 200, "{body}");

    let own = format!("Host: {addr}\r\n");
    let rebound = format!("Host: evil.example:{port}\r\n");
    let json = "Content-Type: application/json\r\n";
    let forged: Vec<(&str, &str, String, u16)> = vec![
        // A form, and a script's request without a preflight: no JSON type.
        (
            "POST",
            "/topics/events",
            format!("{own}Content-Type: text/plain\r\nOrigin: http://evil.example\r\n"),
            403,
        ),
        (
            "POST",
            "/topics/events",
            format!("{own}Content-Type: text/plain\r\n"),
            415,
        ),
        (
            "POST",
            "/topics/events",
            format!("{own}Content-Type: application/x-www-form-urlencoded\r\n"),
            415,
        ),
        (
            "POST",
            "/topics/events",
            format!("{own}Content-Type: multipart/form-data; boundary=b\r\n"),
            415,
        ),
        ("POST", "/topics/events", own.clone(), 415),
        (
            "POST",
            "/jobs/echo",
            format!("{own}Content-Type: text/plain\r\n"),
            415,
        ),
        ("POST", "/consumers/events/g/disable", own.clone(), 415),
        // A page of another site, whatever it sends.
        (
            "POST",
            "/topics/events",
            format!("{own}{json}Origin: http://evil.example\r\n"),
            403,
        ),
        (
            "DELETE",
            "/consumers/events/g",
            format!("{own}Origin: null\r\n"),
            403,
        ),
        // A page whose name was made to resolve here (DNS rebinding): its own name as Host.
        ("POST", "/topics/events", format!("{rebound}{json}"), 403),
        ("POST", "/jobs/echo", format!("{rebound}{json}"), 403),
        ("DELETE", "/consumers/events/g", rebound.clone(), 403),
        ("GET", "/topics/events", rebound.clone(), 403),
    ];
    for (method, path, headers, want) in &forged {
        let (code, body) = exchange(&addr, method, path, headers, r#"["forged"]"#);
        assert_eq!(code, *want, "{method} {path} with {headers:?}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    assert_eq!(stored(&server, "events"), 0, "a forged produce was written");
    assert_eq!(stored(&server, "answers"), 0, "a forged job was written");
    let (code, body) = http(&addr, "GET", "/consumers/events/g", "");
    assert_eq!(code, 200, "the consumer is gone: {body}");
    let cursors: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cursors.as_array().unwrap().len(), 2, "{body}");
    for cursor in cursors.as_array().unwrap() {
        assert_eq!(cursor["state"], "active", "a forged disable landed: {body}");
    }
    assert_eq!(metric(&server, "flowd_http_refused_total"), forged.len() as f64);

    // The same requests as a client sends them pass: by IP, by localhost, by a named host.
    for host in [
        addr.clone(),
        format!("localhost:{port}"),
        format!("flowd.test:{port}"),
    ] {
        let headers = format!("Host: {host}\r\n{json}Origin: http://{host}\r\n");
        let (code, body) = exchange(&addr, "POST", "/topics/events", &headers, r#"["sent"]"#);
        assert_eq!(code, 200, "{host}: {body}");
    }
    assert_eq!(stored(&server, "events"), 3);
    let (code, body) = exchange(&addr, "DELETE", "/consumers/events/g", &own, "");
    assert_eq!(code, 200, "{body}");
}
