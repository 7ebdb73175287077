//! Who may use the doors: a web page open in a browser on the server's machine changes
//! nothing through the HTTP door; listeners bind only loopback unless told `insecure`;
//! with credentials, each request kind needs its token and permission, through any peer,
//! and the console lets a browser in by a login whose session serves as its token would.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use crate::ingest::{Server, http, http_with as exchange, metric};

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

fn guarded_dataflow(dir: &std::path::Path, credentials: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tokens.toml");
    let text = format!(
        r#"
[engine]
data_dir = "{data}"
cores = 2

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
io_timeout = "500ms"
credentials = "{credentials}"

[[topic]]
name = "events"
partitions = 2

[[topic]]
name = "answers"
partitions = 1

[[topic]]
name = "requests"
partitions = 1

[[topic]]
name = "count-requests"
partitions = 1

[[topic]]
name = "counts"
partitions = 1

[[job]]
name = "echo"
topic = "requests"
timeout = "5s"

[[stage]]
name = "answer"
from = "requests"
op = "reply"

[[stage]]
name = "counter"
from = "count-requests"
op = {{ state = {{ update = "(.state // 0) + 1" }} }}
to = "counts"
"#,
        data = dir.join("data").display(),
        credentials = credentials.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `flowd token add NAME --allow ALLOW`: the token it prints.
fn token_add(credentials: &std::path::Path, name: &str, allow: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["token", "add", name, "--allow", allow, "--credentials"])
        .arg(credentials)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

type Call = Box<dyn Fn(&mut flowd::client::Client) -> Result<(), flowd::client::ClientError>>;

/// Every request kind of the binary protocol, each made once, with the permission a
/// narrow credential lacks for it (`None`: it has what it needs).
fn every_request() -> Vec<(&'static str, Call)> {
    use flowd::protocol::FetchFrom;
    use flowd::protocol::consumer::{AdminAction, Bound, Options, RangeSpec};
    fn record(value: &str) -> flowd::protocol::OwnedWireRecord {
        flowd::protocol::OwnedWireRecord {
            timestamp_ms: None,
            key: None,
            value: value.as_bytes().to_vec(),
            headers: Vec::new(),
        }
    }
    let spec = RangeSpec {
        partition: 0,
        by_time: false,
        reverse: false,
        from: Bound::Unbounded,
        to: Bound::Unbounded,
        limit: 10,
        max_bytes: 1 << 20,
    };
    vec![
        (
            "produce",
            Box::new(|c| c.produce("events", &[record("p")]).map(drop)),
        ),
        (
            "produce_batch",
            Box::new(|c| c.produce_batch("events", None, &[record("b")]).map(drop)),
        ),
        (
            "fetch",
            Box::new(|c| c.fetch("events", 0, FetchFrom::Earliest, 10, 0).map(drop)),
        ),
        (
            "fetch_batches",
            Box::new(|c| c.fetch_batches("events", 0, FetchFrom::Earliest, 10, 0).map(drop)),
        ),
        ("length", Box::new(|c| c.length("events", None).map(drop))),
        ("range", Box::new(move |c| c.range("events", spec).map(drop))),
        ("metadata", Box::new(|c| c.metadata().map(drop))),
        ("status", Box::new(|c| c.status(true).map(drop))),
        (
            "job",
            Box::new(|c| c.job("echo", None, b"{}", Some(Duration::from_secs(5))).map(drop)),
        ),
        ("state", Box::new(|c| c.state("counter", b"k").map(drop))),
        (
            "claim",
            Box::new(|c| {
                c.claim("events", "g", None, 1, Some(Options::default()))
                    .map(drop)
            }),
        ),
        ("ack", Box::new(|c| c.ack("events", "g", 0).map(drop))),
        ("reclaim", Box::new(|c| c.reclaim("events", "g", 0).map(drop))),
        (
            "ack_commit",
            Box::new(|c| {
                c.ack_commit("events", "g", 0, "answers", &[record("c")])
                    .map(drop)
            }),
        ),
        (
            "list",
            Box::new(|c| c.consumers(AdminAction::List, "events", "g").map(drop)),
        ),
        (
            "disable",
            Box::new(|c| c.consumers(AdminAction::Disable, "events", "g").map(drop)),
        ),
    ]
}

fn code(result: &Result<(), flowd::client::ClientError>) -> Option<flowd::protocol::ErrorCode> {
    match result {
        Err(flowd::client::ClientError::Server { code, .. }) => Some(*code),
        _ => None,
    }
}

#[test]
fn tokens_let_in_what_they_allow_and_nothing_else_over_tcp_and_http() {
    use flowd::client::{Client, ClientError};
    use flowd::protocol::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let admin = token_add(&credentials, "ops", "admin");
    let narrow = token_add(
        &credentials,
        "app",
        "produce:events,consume:events,group:g,jobs:echo,state:counter,status",
    );
    let watcher = token_add(&credentials, "watcher", "status");
    assert!(admin.starts_with("flowd_") && narrow != admin);
    let server = Server::start(&guarded_dataflow(dir.path(), &credentials));
    let requests = every_request();
    // A data directory flowd makes is its owner's alone from the start, without a word.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        assert!(!server.log.text().contains("was mode"), "{}", server.log.text());
    }

    // No AUTH: the first request is refused, and the connection closed.
    for (kind, call) in &requests {
        let mut client = Client::connect(&server.tcp).unwrap();
        let result = call(&mut client);
        assert_eq!(
            code(&result),
            Some(ErrorCode::Unauthenticated),
            "{kind}: {result:?}"
        );
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("AUTH") && message.contains("token"),
            "{kind}: {message}"
        );
        assert!(
            matches!(
                client.metadata(),
                Err(ClientError::Closed { .. } | ClientError::Io { .. })
            ),
            "{kind}: the connection stayed open without AUTH"
        );
    }
    // A wrong token: refused at AUTH, the connection closed.
    let mut client = Client::connect(&server.tcp).unwrap();
    let wrong = format!("flowd_{}", "0".repeat(64));
    let error = client.auth(&wrong).unwrap_err();
    assert!(
        matches!(&error, ClientError::Server { code: ErrorCode::Unauthenticated, message } if message.contains("not one of")),
        "{error:?}"
    );
    assert!(
        client.metadata().is_err(),
        "the connection stayed open after a wrong token"
    );
    // No AUTH within io_timeout: told why, and closed.
    let mut silent = TcpStream::connect(&server.tcp).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    silent.read_to_end(&mut answer).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&answer).contains("asks for credentials"),
        "{answer:?}"
    );
    // A stranger's large frame is refused from its length, before its bytes are held.
    let mut stranger = TcpStream::connect(&server.tcp).unwrap();
    stranger.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut stranger, &(8u32 << 20).to_le_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    stranger.read_to_end(&mut answer).unwrap();
    assert!(
        String::from_utf8_lossy(&answer).contains("asks for credentials"),
        "{answer:?}"
    );
    assert!(
        server
            .log
            .wait_for(&["a frame of 8388608 bytes before AUTH"], Duration::from_secs(5)),
        "refused after {:?} for another reason: {}",
        started.elapsed(),
        server.log.text()
    );

    // A token with `status` only: everything else forbidden, naming the permission, on
    // one connection that stays open.
    let mut client = Client::connect(&server.tcp).unwrap();
    assert_eq!(client.auth(&watcher).unwrap(), "watcher");
    for (kind, call) in &requests {
        let result = call(&mut client);
        if matches!(*kind, "metadata" | "status") {
            assert!(result.is_ok(), "{kind}: {result:?}");
            continue;
        }
        assert_eq!(code(&result), Some(ErrorCode::Forbidden), "{kind}: {result:?}");
        let message = result.unwrap_err().to_string();
        assert!(
            message.contains("\"watcher\"") && message.contains("needs the permission"),
            "{kind}: {message}"
        );
    }
    let mut ops = Client::connect(&server.tcp).unwrap();
    assert_eq!(ops.auth(&admin).unwrap(), "ops");
    assert_eq!(
        ops.length("events", None).unwrap(),
        0,
        "a refused produce was written"
    );
    assert!(
        ops.consumers(flowd::protocol::consumer::AdminAction::List, "", "")
            .unwrap()
            .is_empty()
    );

    // The narrow token: what it allows passes (or fails for reasons of its own), the
    // rest is forbidden by name.
    let mut client = Client::connect(&server.tcp).unwrap();
    assert_eq!(client.auth(&narrow).unwrap(), "app");
    let mut forbidden = Vec::new();
    for (kind, call) in &requests {
        let result = call(&mut client);
        match code(&result) {
            Some(ErrorCode::Forbidden) => forbidden.push((*kind, result.unwrap_err().to_string())),
            Some(ErrorCode::Unauthenticated) => panic!("{kind}: {result:?}"),
            _ => {}
        }
    }
    let kinds: Vec<&str> = forbidden.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["ack_commit", "disable"], "{forbidden:?}");
    assert!(forbidden[0].1.contains("produce:answers"), "{forbidden:?}");
    assert!(forbidden[1].1.contains("admin"), "{forbidden:?}");
    assert_eq!(
        ops.length("events", None).unwrap(),
        2,
        "produce and produce_batch"
    );
    assert_eq!(
        ops.length("answers", None).unwrap(),
        0,
        "a forbidden ack-and-commit wrote"
    );
    let cursors = ops
        .consumers(flowd::protocol::consumer::AdminAction::List, "events", "g")
        .unwrap();
    assert!(
        !cursors.is_empty() && cursors.iter().all(|c| c.state == "active"),
        "{cursors:?}"
    );
    // The admin token may do all of it.
    for (kind, call) in &requests {
        let result = call(&mut ops);
        assert!(
            !matches!(
                code(&result),
                Some(ErrorCode::Forbidden | ErrorCode::Unauthenticated)
            ),
            "{kind}: {result:?}"
        );
    }
    ops.consumers(flowd::protocol::consumer::AdminAction::Resume, "events", "g")
        .unwrap();

    // HTTP: each route without a token (401), with a wrong one (401), with `status`
    // only (403 but for the status routes), and with the narrow token.
    let routes: &[(&str, &str, bool, bool)] = &[
        // (method, path, status-only passes, narrow passes)
        ("GET", "/status", true, true),
        ("GET", "/metrics", true, true),
        ("GET", "/", true, true),
        ("GET", "/history", true, true),
        ("POST", "/topics/events", false, true),
        ("GET", "/topics/events", false, true),
        ("GET", "/topics/events/length", false, true),
        ("POST", "/jobs/echo", false, true),
        ("GET", "/state/counter/k", false, true),
        ("POST", "/consumers/events/g/claim?count=1", false, true),
        ("GET", "/consumers/events/g", false, true),
        (
            "POST",
            "/consumers/events/g/commit?partition=0&to=answers",
            false,
            false,
        ),
        ("POST", "/consumers/events/g/skip?count=0", false, true),
        (
            "POST",
            "/consumers/events/g/reset?to=latest&partition=9",
            false,
            true,
        ),
        ("POST", "/topics/events/replay?partition=0", false, false),
        ("POST", "/consumers/events/g/disable", false, false),
        ("GET", "/consumers", false, false),
        ("DELETE", "/consumers/events/g", false, false),
    ];
    let before = ops.length("events", None).unwrap();
    let json = "Content-Type: application/json\r\n";
    for (method, path, watcher_passes, narrow_passes) in routes {
        let host = format!("Host: {}\r\n{json}", server.http);
        for (who, headers, want) in [
            ("no token", host.clone(), Some(401)),
            (
                "a wrong token",
                format!("{host}Authorization: Bearer {wrong}\r\n"),
                Some(401),
            ),
            (
                "watcher",
                format!("{host}Authorization: Bearer {watcher}\r\n"),
                (!watcher_passes).then_some(403),
            ),
            (
                "app",
                format!("{host}Authorization: Bearer {narrow}\r\n"),
                (!narrow_passes).then_some(403),
            ),
        ] {
            let (status, body) = exchange(&server.http, method, path, &headers, r#"["h"]"#);
            match want {
                // The console asks a browser for a token (its login page says why).
                Some(401) if *path == "/" => {
                    assert_eq!(status, 401, "{who}: {method} {path}: {body}");
                    assert!(body.contains("/login") && body.contains("token"), "{who}: {body}");
                }
                Some(want) => {
                    assert_eq!(status, want, "{who}: {method} {path}: {body}");
                    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let message = error["error"].as_str().unwrap();
                    assert!(
                        message.contains("token") || message.contains("needs the permission"),
                        "{who}: {message}"
                    );
                }
                None => assert!(
                    status != 401 && status != 403,
                    "{who}: {method} {path}: {status} {body}"
                ),
            }
        }
    }
    // Probes carry no token: health and readiness answer anyone, and say nothing else.
    for path in ["/healthz", "/readyz"] {
        let (status, body) = exchange(
            &server.http,
            "GET",
            path,
            &format!("Host: {}\r\n", server.http),
            "",
        );
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Only the narrow token's produce landed.
    assert_eq!(ops.length("events", None).unwrap(), before + 1);
    assert_eq!(ops.length("answers", None).unwrap(), 0);
    let cursors = ops
        .consumers(flowd::protocol::consumer::AdminAction::List, "events", "g")
        .unwrap();
    assert!(cursors.iter().all(|c| c.state == "active"), "{cursors:?}");

    // The CLI: with --token or FLOWD_TOKEN, and without.
    let flowd = |env: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"));
        command.args(args).env_remove("FLOWD_TOKEN");
        if let Some(token) = env {
            command.env("FLOWD_TOKEN", token);
        }
        command.output().unwrap()
    };
    let out = flowd(None, &["status", "--from", &server.tcp]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("asks for credentials"));
    let out = flowd(None, &["status", "--from", &server.tcp, "--token", &watcher]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = flowd(Some(&narrow), &["tail", "events", "--from", &server.tcp]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as u64,
        before + 1
    );

    // A token removed is refused from the next connection on, without a restart.
    let out = flowd(
        None,
        &[
            "token",
            "remove",
            "app",
            "--credentials",
            credentials.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut client = Client::connect(&server.tcp).unwrap();
    assert_eq!(
        code(&client.auth(&narrow).map(drop)),
        Some(ErrorCode::Unauthenticated)
    );
    let listed = flowd(
        None,
        &["token", "list", "--credentials", credentials.to_str().unwrap()],
    );
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("ops\tadmin") && !listed.contains("app") && !listed.contains("flowd_"),
        "{listed}"
    );
    assert!(
        !server.log.text().contains(&admin[6..]),
        "a token reached the log"
    );
}

#[test]
fn in_a_cluster_a_request_goes_on_to_its_leader_with_the_clients_own_token() {
    use flowd::client::{Client, ClientError};
    use flowd::protocol::{ErrorCode, FetchFrom};
    let _serial = crate::cluster::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let ops = token_add(&credentials, "ops", "admin");
    let writer = token_add(&credentials, "writer", "produce:events");
    let reader = token_add(&credentials, "reader", "consume:events");
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\ncredentials = \"{}\"\n\n\
             [cluster]\nreplicas = 3\n\n[[topic]]\nname = \"events\"\npartitions = 4\n",
            credentials.display()
        ),
    )
    .unwrap();
    let first = crate::cluster::start_file(&file, dir.path(), "p1", &["--peer-listen", "127.0.0.1:0"]);
    let seed = first.peer.clone().unwrap();
    let extra = ["--peer-listen", "127.0.0.1:0", "--seeds", &seed];
    let servers = [
        first,
        crate::cluster::start_file(&file, dir.path(), "p2", &extra),
        crate::cluster::start_file(&file, dir.path(), "p3", &extra),
    ];
    let fetch_all = |server: &Server, token: &str| -> Result<u64, ClientError> {
        let mut client = Client::connect_as(&server.tcp, Some(token))?;
        let mut records = 0;
        for partition in 0..4 {
            records += client
                .fetch("events", partition, FetchFrom::Earliest, 10_000, 0)?
                .records
                .len() as u64;
        }
        Ok(records)
    };
    // Settled: every peer reads every partition (some through their leaders).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !servers.iter().all(|s| fetch_all(s, &ops).is_ok()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not settle in 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let records: Vec<flowd::protocol::OwnedWireRecord> = (0..40)
        .map(|i| flowd::protocol::OwnedWireRecord {
            timestamp_ms: None,
            key: Some(format!("k{i}").into_bytes()),
            value: format!("v{i}").into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    for (n, server) in servers.iter().enumerate() {
        let mut client = Client::connect_as(&server.tcp, Some(&writer)).unwrap();
        let chunk = &records[n * 10..n * 10 + 10];
        client.produce("events", chunk).unwrap();
        // Reading is not the writer's to do, here or at the leader.
        let error = client.fetch("events", 0, FetchFrom::Earliest, 10, 0).unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::Server {
                    code: ErrorCode::Forbidden,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    // The reader reads all 30 through every peer: what another peer leads is relayed
    // with the reader's token and answered there.
    for server in &servers {
        assert_eq!(fetch_all(server, &reader).unwrap(), 30);
    }
    let mut client = Client::connect_as(&servers[1].tcp, Some(&reader)).unwrap();
    let error = client.produce("events", &records[30..]).unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Server {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{error:?}"
    );
}

/// The console on a server with credentials: a browser without them gets a page that
/// asks for a token; `POST /login` with a good token sets a session cookie (HttpOnly,
/// SameSite=Strict) that then serves as the token would, its permissions and no more;
/// a wrong token, a forged or ended session, a session whose token was removed from the
/// credentials file, and a login sent as a cross-site form get nothing.
#[test]
fn the_console_asks_for_a_token_and_its_session_serves_as_the_token_would() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let watcher = token_add(&credentials, "watcher", "status");
    let ops = token_add(&credentials, "ops", "admin,status");
    let server = Server::start(&guarded_dataflow(dir.path(), &credentials));
    let addr = server.http.clone();
    let send = |method: &str, path: &str, headers: &str, body: &str| {
        crate::ingest::http_exchange(&addr, method, path, &format!("Host: {addr}\r\n{headers}"), body)
    };
    let json = "Content-Type: application/json\r\n";
    let session_of = |head: &str| -> String {
        let line = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: flowd_session="))
            .unwrap_or_else(|| panic!("a session cookie: {head}"));
        assert!(
            line.contains("HttpOnly") && line.contains("SameSite=Strict") && line.contains("Path=/"),
            "{line}"
        );
        let value = line
            .split_once('=')
            .unwrap()
            .1
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(value.len(), 64, "{line}");
        value
    };

    // Nothing given: the console's place asks for a token; the API answers JSON.
    let (status, head, body) = send("GET", "/", "", "");
    assert_eq!(status, 401, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/html"),
        "{head}"
    );
    assert!(
        body.contains("type=\"password\"") && body.contains("/login"),
        "{body}"
    );
    assert!(
        !body.contains("records in"),
        "the page shows nothing of the server: {body}"
    );
    let (status, _, body) = send("GET", "/status", "", "");
    assert_eq!(status, 401, "{body}");
    assert!(body.starts_with('{'), "{body}");

    // A wrong token, and a login as a cross-site form would send it: no session.
    let (status, head, body) = send("POST", "/login", json, r#"{"token":"flowd_nope"}"#);
    assert_eq!(status, 401, "{body}");
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let (status, head, _) = send("POST", "/login", form, &format!("token={watcher}"));
    assert_ne!(status, 200);
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");

    // The watcher's session: the console and the status, nothing its token lacks.
    let (status, head, body) = send("POST", "/login", json, &format!(r#"{{"token":"{watcher}"}}"#));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"watcher\""), "{body}");
    let watching = session_of(&head);
    let cookie = |id: &str| format!("Cookie: theme=dark; flowd_session={id}\r\n");
    let (status, _, body) = send("GET", "/", &cookie(&watching), "");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("records in") && body.contains("logged in as watcher"),
        "{body}"
    );
    let (status, _, body) = send("GET", "/status", &cookie(&watching), "");
    assert_eq!(status, 200, "{body}");
    // One whose token may not see the console is told so, and may log in as another.
    let blind = token_add(&credentials, "blind", "produce:events");
    let (status, head, _) = send("POST", "/login", json, &format!(r#"{{"token":"{blind}"}}"#));
    assert_eq!(status, 200);
    let (status, _, body) = send("GET", "/", &cookie(&session_of(&head)), "");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("needs the permission status") && body.contains("/login"),
        "{body}"
    );
    let disable = "/consumers/events/g/disable?partition=0";
    let (status, _, body) = send("POST", disable, &format!("{json}{}", cookie(&watching)), "{}");
    assert_eq!(status, 403, "the watcher may not disable a consumer: {body}");
    // A forged session id gets the login page, not the console.
    let (status, _, body) = send("GET", "/", &cookie(&"0".repeat(64)), "");
    assert_eq!(status, 401, "{body}");

    // The ops session may what its token may: the refusal is about the consumer, not
    // the permission.
    let (status, head, _) = send("POST", "/login", json, &format!(r#"{{"token":"{ops}"}}"#));
    assert_eq!(status, 200);
    let operating = session_of(&head);
    let (status, _, body) = send("POST", disable, &format!("{json}{}", cookie(&operating)), "{}");
    assert_ne!(status, 403, "{body}");
    assert_ne!(status, 401, "{body}");

    // Logged out, the session is over.
    let (status, head, body) = send("POST", "/logout", &format!("{json}{}", cookie(&operating)), "{}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ended\":true"), "{body}");
    assert!(head.contains("Max-Age=0"), "{head}");
    let (status, _, body) = send("GET", "/status", &cookie(&operating), "");
    assert_eq!(status, 401, "{body}");

    // The watcher's token removed from the file: its session ends with it.
    let kept: String = std::fs::read_to_string(&credentials)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("watcher"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&credentials, kept).unwrap();
    crate::support::wait_until(
        "the removed token's session ends",
        Duration::from_secs(10),
        || send("GET", "/status", &cookie(&watching), "").0 == 401,
    );
    let (status, _, body) = send("GET", "/", &cookie(&watching), "");
    assert_eq!(status, 401);
    assert!(body.contains("session ended"), "{body}");
}
