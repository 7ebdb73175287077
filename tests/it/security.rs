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

/// `flowd ARGS...` expected to stop on its own within 20 s: its exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.and_then(|s| s.code()), stderr)
}

#[test]
fn listeners_bind_loopback_only_unless_told_insecure_and_the_data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dataflow(dir.path());
    let file = file.to_str().unwrap();
    for (extra, names) in [
        (&["--listen", "0.0.0.0:0"][..], "--listen 0.0.0.0"),
        (&["--http", "0.0.0.0:0"][..], "--http 0.0.0.0"),
        (&["--peer-listen", "0.0.0.0:0"][..], "--peer-listen 0.0.0.0"),
    ] {
        let mut args = vec!["run", file];
        args.extend_from_slice(extra);
        let (code, stderr) = run_to_exit(&args);
        assert_eq!(code, Some(1), "{names} without --insecure: {stderr}");
        assert!(
            stderr.contains("is not a loopback address") && stderr.contains("--insecure"),
            "{names}: {stderr}"
        );
    }
    // Nothing was bound, nothing written: the refusal comes first.
    assert!(!dir.path().join("data").join("events").exists());

    // A data directory open to others is narrowed to its owner.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start_with(
        std::path::Path::new(file),
        &["--listen", "0.0.0.0:0", "--insecure"],
    );
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is {mode:o}");
    assert!(
        server.log.wait_for(
            &["was mode 0755", "reachable from other machines"],
            Duration::from_secs(10)
        ),
        "{}",
        server.log.text()
    );
    let (code, body) = http(&server.http, "GET", "/status", "");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let insecure = status["insecure"]
        .as_array()
        .expect("the status names what is exposed");
    assert_eq!(insecure.len(), 1, "{body}");
    assert!(
        insecure[0].as_str().unwrap().starts_with("tcp 0.0.0.0:"),
        "{body}"
    );
    let (_, page) = http(&server.http, "GET", "/", "");
    assert!(page.contains("<b>insecure</b>: tcp 0.0.0.0:"), "{page}");
}
