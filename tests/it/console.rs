//! The console and what it acts through: named consumers reset, skipped, disabled,
//! resumed and deleted over HTTP and with `flowd consumer`; dead letters browsed and
//! replayed once each; the metric history; and the console itself driven in headless
//! Chromium (Debian's `chromium` and `chromium-driver`, over WebDriver) against a
//! running flowd. `FLOWD_CONSOLE_SHOTS=DIR` keeps its screenshots there
//! (`docs/console/` holds the last ones taken).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ingest::{Server, http, run_cli};
use crate::support::poll;

fn dataflow(dir: &Path) -> PathBuf {
    let text = format!(
        "[engine]\ndata_dir = \"{}\"\ndurability = \"group\"\ncores = 2\n\n[ingest]\ntcp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\n\
         [[topic]]\nname = \"events\"\npartitions = 2\n\n[[topic]]\nname = \"dead\"\npartitions = 1\n",
        dir.join("data").display()
    );
    let path = dir.join("console.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn post(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = http(&server.http, "POST", path, "{}");
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn get(server: &Server, path: &str) -> Value {
    let (status, body) = http(&server.http, "GET", path, "");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `n` records `v0..` with keys `k0..` (spread over both partitions); per partition,
/// how many went there.
fn produce(server: &Server, n: usize, prefix: &str) -> [u64; 2] {
    let records: Vec<Value> = (0..n)
        .map(|i| json!({"key": format!("k{i}"), "value": format!("{prefix}{i}")}))
        .collect();
    let (status, body) = http(
        &server.http,
        "POST",
        "/topics/events",
        &Value::Array(records).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let mut counts = [0u64; 2];
    for id in serde_json::from_str::<Value>(&body).unwrap()["offsets"]
        .as_array()
        .unwrap()
    {
        let p: usize = id.as_str().unwrap().split(':').next().unwrap().parse().unwrap();
        counts[p] += 1;
    }
    counts
}

/// `(partition, committed, lag)` of each of `group`'s cursors on `events`.
fn cursors(server: &Server, group: &str) -> Vec<(u64, u64, u64)> {
    get(server, &format!("/consumers/events/{group}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["partition"].as_u64().unwrap(),
                c["committed"].as_u64().unwrap(),
                c["lag"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Makes `group` on both partitions (from the start) and claims and acks `acked`
/// records of partition 0.
fn consumer(server: &Server, group: &str, acked: u64) {
    for p in [1, 0] {
        let (status, body) = post(
            server,
            &format!("/consumers/events/{group}/claim?partition={p}&count={acked}&create=earliest"),
        );
        assert_eq!(status, 200, "{body}");
        if p == 0 {
            assert_eq!(body["to"], acked, "{body}");
            let (status, body) = post(server, &format!("/consumers/events/{group}/ack?partition=0"));
            assert_eq!(status, 200, "{body}");
        } else {
            let (status, body) = post(server, &format!("/consumers/events/{group}/reclaim?partition=1"));
            assert_eq!(status, 200, "{body}");
        }
    }
}

#[test]
fn a_named_consumer_is_reset_skipped_and_moved_by_time_over_http_and_each_change_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path()));
    let counts = produce(&server, 400, "a");
    std::thread::sleep(Duration::from_millis(20));
    let between = flowd::storage::layout::now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let later = produce(&server, 100, "b");
    let ends = [counts[0] + later[0], counts[1] + later[1]];
    consumer(&server, "g1", 50);
    assert_eq!(
        cursors(&server, "g1"),
        vec![(0, 50, ends[0] - 50), (1, 0, ends[1])]
    );

    let (status, body) = post(&server, "/consumers/events/g1/skip?count=7");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([{"partition": 0, "from": 50, "to": 57}, {"partition": 1, "from": 0, "to": 7}])
    );
    let (status, body) = post(&server, &format!("/consumers/events/g1/reset?to=@{between}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cursors(&server, "g1"),
        vec![(0, counts[0], later[0]), (1, counts[1], later[1])],
        "a reset by time lands on the first record at or after it, on each partition"
    );
    let (status, body) = post(&server, "/consumers/events/g1/reset?to=latest&partition=1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cursors(&server, "g1"),
        vec![(0, counts[0], later[0]), (1, ends[1], 0)]
    );
    let (status, body) = post(&server, "/consumers/events/g1/reset?to=earliest");
    assert_eq!(status, 200, "{body}");
    assert_eq!(cursors(&server, "g1"), vec![(0, 0, ends[0]), (1, 0, ends[1])]);
    let (status, body) = post(&server, "/consumers/events/g1/skip?count=100000");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        cursors(&server, "g1"),
        vec![(0, ends[0], 0), (1, ends[1], 0)],
        "a skip stops at the end"
    );
    let (status, body) = post(&server, "/consumers/events/g1/reset?to=3&partition=0");
    assert_eq!(status, 200, "{body}");
    // The records are delivered again from there: a claim starts at the reset.
    let (status, body) = post(&server, "/consumers/events/g1/claim?partition=0&count=2");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["from"].as_u64(), body["to"].as_u64()),
        (Some(3), Some(5)),
        "{body}"
    );
    // A reset drops that claim: the records come again.
    let (status, body) = post(&server, "/consumers/events/g1/reset?to=3&partition=0");
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&server, "/consumers/events/g1/claim?partition=0&count=2");
    assert_eq!((status, body["from"].as_u64()), (200, Some(3)), "{body}");

    // Refused, each saying why, and changing nothing.
    let past = ends[0] + 1;
    let (status, body) = post(
        &server,
        &format!("/consumers/events/g1/reset?to={past}&partition=0"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("past the partition's end"),
        "{body}"
    );
    let (status, body) = post(&server, "/consumers/events/g1/reset?to=soon");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("earliest, latest"),
        "{body}"
    );
    let (status, body) = post(&server, "/consumers/events/nobody/reset?to=earliest");
    assert_eq!(status, 404, "{body}");
    assert!(
        get(&server, "/consumers?topic=events")
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["group"] == "g1")
    );
    assert!(
        server.log.wait_for(
            &[
                "consumer reset to skip 7: committed offset 50 -> 57",
                "consumer reset to earliest",
                "consumer=g1"
            ],
            Duration::from_secs(5)
        ),
        "every change is logged: {}",
        server.log.text()
    );
}

#[test]
fn flowd_consumer_lists_resets_skips_disables_resumes_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path()));
    let counts = produce(&server, 300, "a");
    consumer(&server, "g1", 10);
    let from = ["--from", server.tcp.as_str()];
    let cli = |args: &[&str]| {
        let mut all = vec!["consumer"];
        all.extend_from_slice(&args[..1]);
        all.extend_from_slice(&from);
        all.extend_from_slice(&args[1..]);
        run_cli(&all, "")
    };
    let (code, out, err) = cli(&["list", "events"]);
    assert_eq!(code, 0, "{err}");
    let row0 = out
        .lines()
        .find(|l| l.contains("g1") && l.split_whitespace().nth(2) == Some("0"))
        .unwrap();
    let fields: Vec<&str> = row0.split_whitespace().collect();
    assert_eq!(
        (fields[3], fields[4]),
        ("10", &*(counts[0] - 10).to_string()),
        "{out}"
    );

    let (code, out, err) = cli(&["skip", "events", "g1", "5", "--partition", "0"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "events/0 g1: 10 -> 15");
    let (code, out, err) = cli(&["reset", "events", "g1", "--to", "latest"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(cursors(&server, "g1"), vec![(0, counts[0], 0), (1, counts[1], 0)]);
    let (code, _, err) = cli(&["reset", "events", "g1", "--to", "earliest", "--partition", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cursors(&server, "g1")[1], (1, 0, counts[1]));

    let (code, _, err) = cli(&["disable", "events", "g1"]);
    assert_eq!(code, 0, "{err}");
    let (status, body) = post(&server, "/consumers/events/g1/claim?partition=1&count=1");
    assert_eq!(status, 409, "a disabled consumer claims nothing: {body}");
    let (code, _, err) = cli(&["resume", "events", "g1"]);
    assert_eq!(code, 0, "{err}");
    let (status, body) = post(&server, "/consumers/events/g1/claim?partition=1&count=1");
    assert_eq!((status, body["from"].as_u64()), (200, Some(0)), "{body}");

    let (code, out, err) = cli(&["reset", "events", "nobody", "--to", "earliest"]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("no consumer \"nobody\""), "{err}");
    let (code, _, err) = cli(&["reset", "events", "g1", "--to", "yesterday"]);
    assert_eq!(code, 2);
    assert!(err.contains("earliest, latest"), "{err}");

    let (code, _, err) = cli(&["delete", "events", "g1"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["list"]);
    assert_eq!(code, 0);
    assert!(!out.contains("g1"), "{out}");
}

/// Makes `n` dead letters in `dead` from partition `p` of `events`: a consumer with
/// `max_reclaims = 0` claims `n` records and gives them back. The offsets they came from.
fn dead_letters(server: &Server, p: u32, n: u64) -> Vec<u64> {
    let (status, body) = post(
        server,
        &format!(
            "/consumers/events/doomed/claim?partition={p}&count={n}&create=earliest&max_reclaims=0&then=dead_letter&dead_letter=dead"
        ),
    );
    assert_eq!(status, 200, "{body}");
    let (from, to) = (body["from"].as_u64().unwrap(), body["to"].as_u64().unwrap());
    assert_eq!(to - from, n, "{body}");
    let (status, body) = post(server, &format!("/consumers/events/doomed/reclaim?partition={p}"));
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("dead_letter")),
        "{body}"
    );
    (from..to).collect()
}

/// Every value in `events` (both partitions), with how often it is there.
fn values(server: &Server) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for p in 0..2 {
        let mut from = 0;
        // Bounded: a page per 1000 records, and the tests write fewer than 100,000.
        for _ in 0..100 {
            let records = get(
                server,
                &format!("/topics/events/range?partition={p}&from={from}&limit=1000"),
            );
            let records = records.as_array().unwrap();
            let Some(last) = records.last() else { break };
            from = last["offset"].as_u64().unwrap() + 1;
            for r in records {
                assert!(
                    r.get("dead_from").is_none(),
                    "a replayed record carries no dead-letter header: {r}"
                );
                *seen.entry(r["value"].as_str().unwrap().to_owned()).or_insert(0) += 1;
            }
        }
    }
    seen
}

#[test]
fn dead_letters_are_browsed_with_their_reason_and_replayed_to_their_origin_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path()));
    produce(&server, 200, "a");
    let origins = dead_letters(&server, 0, 6);
    let dead = get(&server, "/topics/dead/range?partition=0");
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 6);
    let mut dead_values = Vec::new();
    for (d, origin) in dead.iter().zip(&origins) {
        assert_eq!(d["dead_from"], format!("events/0/{origin}"), "{d}");
        assert!(
            d["dead_reason"].as_str().unwrap().contains("reclaimed 1 times"),
            "{d}"
        );
        dead_values.push(d["value"].as_str().unwrap().to_owned());
    }
    let before = values(&server);
    assert!(dead_values.iter().all(|v| before[v] == 1));

    // One of them, then the rest, then nothing more: each arrives once.
    let (status, body) = post(&server, "/topics/dead/replay?partition=0&from=2&to=3");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"replayed": 1, "from": 2, "to": 3, "topics": {"events": 1}})
    );
    let (status, body) = post(&server, "/topics/dead/replay?partition=0&from=2&to=3");
    assert_eq!(
        status, 409,
        "a dead letter replayed is not replayed again: {body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("reset the replay"),
        "{body}"
    );
    let (status, body) = post(&server, "/topics/dead/replay?partition=0");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"replayed": 3, "from": 3, "to": 6, "topics": {"events": 3}})
    );
    let (status, body) = post(&server, "/topics/dead/replay?partition=0");
    assert_eq!((status, body["replayed"].as_u64()), (200, Some(0)), "{body}");
    let after = values(&server);
    for (i, v) in dead_values.iter().enumerate() {
        let replayed = usize::from(i >= 2);
        assert_eq!(
            after[v],
            1 + replayed,
            "dead letter {i} ({v}): replayed {replayed} times"
        );
    }
    assert_eq!(after.values().sum::<usize>(), before.values().sum::<usize>() + 4);

    // Replayed elsewhere (the first two, passed over above, after a reset of the replay).
    let (status, body) = post(&server, "/consumers/dead/flowd-replay/reset?to=0");
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&server, "/topics/dead/replay?partition=0&to=2&topic=events");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 2, "{body}");
    let (status, body) = post(&server, "/topics/dead/replay?partition=0&topic=nowhere");
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        values(&server).values().sum::<usize>(),
        before.values().sum::<usize>() + 6
    );
}

#[test]
fn the_history_keeps_rates_and_lag_over_time_and_the_status_names_named_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path()));
    let counts = produce(&server, 1000, "a");
    consumer(&server, "g1", 100);
    let status = get(&server, "/status");
    let named: u64 = status["topics"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["named"].as_array().unwrap().iter())
        .filter(|c| c["group"] == "g1")
        .map(|c| c["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(named, counts[0] + counts[1] - 100);
    // A sample every 2 s: the load and the lag show within a few.
    let history = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        let h = get(&server, "/history");
        let lag = h["series"]["lag:events/g1"].as_array()?.last()?[1].as_f64()?;
        let peak = h["series"]["in"]
            .as_array()?
            .iter()
            .map(|p| p[1].as_f64().unwrap())
            .fold(0.0, f64::max);
        (lag as u64 == named && peak > 0.0).then_some(h)
    })
    .expect("the history shows the load and g1's lag");
    assert_eq!(history["interval_ms"], 2000);
    let (_, page) = http(&server.http, "GET", "/", "");
    assert!(
        page.contains("named consumers") && page.contains("#/consumer/events/g1"),
        "{page}"
    );
    assert!(page.len() < 200 * 1024, "the console weighs {} bytes", page.len());
}

/// One WebDriver exchange: chromedriver keeps its connections open (whatever the
/// request says), so the answer is read by its Content-Length.
fn driver_http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    // Bounded: a head has few lines, and the read times out.
    for _ in 0..100 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// A WebDriver session on Debian's chromedriver and chromium, headless.
struct Browser {
    driver: std::process::Child,
    addr: String,
    session: String,
}

impl Browser {
    fn start(dir: &Path) -> Option<Browser> {
        if !Path::new("/usr/bin/chromium").exists() || !Path::new("/usr/bin/chromedriver").exists() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        poll(Duration::from_secs(20), Duration::from_millis(50), || {
            std::net::TcpStream::connect(&addr).ok()
        })
        .expect("chromedriver listens");
        let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1300,1000",
                     format!("--user-data-dir={}", dir.join("chromium").display())]
        }}}});
        let (status, body) = driver_http(&addr, "POST", "/session", &capabilities.to_string());
        assert_eq!(status, 200, "{body}");
        let session = serde_json::from_str::<Value>(&body).unwrap()["value"]["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        Some(Browser {
            driver,
            addr,
            session,
        })
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (status, text) = driver_http(&self.addr, method, &path, &body.to_string());
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    /// Clicks the element `css` names, once it is there (bounded).
    fn click(&self, css: &str) {
        let script = format!("return document.querySelector({css:?}) !== null");
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            (self.script(&script) == json!(true)).then_some(())
        })
        .unwrap_or_else(|| panic!("{css} never showed"));
        let element = self.call("POST", "/element", json!({"using": "css selector", "value": css}));
        let id = element
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        self.call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// `script`'s answer once `done` says it is the one awaited (bounded).
    fn until(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        poll(Duration::from_secs(30), Duration::from_millis(200), || {
            let v = self.script(script);
            done(&v).then_some(v)
        })
        .unwrap_or_else(|| panic!("the console never showed {what}: last {}", self.script(script)))
    }

    fn screenshot(&self, dir: Option<&Path>, name: &str) {
        use base64::Engine;
        let png = self.call("GET", "/screenshot", json!({}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(name), png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = driver_http(&self.addr, "DELETE", &format!("/session/{}", self.session), "");
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_console_in_headless_chromium_shows_the_load_and_lag_resets_a_consumer_and_replays_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path()));
    let Some(browser) = Browser::start(dir.path()) else {
        // .ci/run installs them; a machine without them says so and proves nothing here.
        eprintln!(
            "SKIPPED: no /usr/bin/chromium or /usr/bin/chromedriver (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let shots = std::env::var_os("FLOWD_CONSOLE_SHOTS").map(PathBuf::from);
    let shots = shots.as_deref();
    let mut counts = produce(&server, 5000, "a");
    if shots.is_some() {
        // For the pictures: a load over half a minute, so the charts draw lines.
        for round in 0..15 {
            std::thread::sleep(Duration::from_secs(2));
            let more = produce(&server, 500 * (round % 5 + 1), &format!("r{round}-"));
            counts = [counts[0] + more[0], counts[1] + more[1]];
        }
    }
    consumer(&server, "g1", 100);
    let lag = counts[0] + counts[1] - 100;
    let origins = dead_letters(&server, 1, 3);
    let base = format!("http://{}/", server.http);

    browser.go(&base);
    browser.until(
        "a non-zero rate of records in",
        "const f = document.querySelector('figure.chart'); return f ? Number(f.dataset.max) : 0",
        |v| v.as_f64().is_some_and(|max| max > 0.0),
    );
    let shown = browser.until(
        "g1 with its lag",
        "const row = [...document.querySelectorAll('#named tr')].find(r => r.textContent.includes('g1')); \
         return row ? row.querySelector('td.lag').textContent : ''",
        |v| v != "",
    );
    assert_eq!(shown, json!(lag.to_string()), "the console shows g1's lag");
    browser.screenshot(shots, "overview.png");

    // Reset from the console: the committed offsets move (seen over HTTP).
    browser.go(&format!("{base}#/consumer/events/g1"));
    browser.until(
        "g1's cursors",
        "return document.querySelectorAll('#cursors tr').length",
        |v| v == &json!(3),
    );
    browser.screenshot(shots, "consumer.png");
    browser.click("#reset-earliest");
    browser.click("#ask-ok");
    poll(Duration::from_secs(20), Duration::from_millis(100), || {
        (cursors(&server, "g1") == vec![(0, 0, counts[0]), (1, 0, counts[1])]).then_some(())
    })
    .expect("the reset from the console moved g1 to the start of each partition");

    // A dead letter replayed from the console arrives once.
    let before = values(&server);
    browser.go(&format!("{base}#/topic/dead"));
    browser.until(
        "the dead letters",
        "return document.querySelectorAll('button.replay').length",
        |v| v == &json!(3),
    );
    browser.screenshot(shots, "dead-letters.png");
    // Newest first: the last one's button is the first.
    browser.click("button.replay");
    browser.click("#ask-ok");
    let replayed = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let after = values(&server);
        (after.values().sum::<usize>() > before.values().sum::<usize>()).then_some(after)
    })
    .expect("the replayed record arrives");
    let record = get(
        &server,
        &format!("/topics/events/range?partition=1&from={}&limit=1", origins[2]),
    );
    let value = record[0]["value"].as_str().unwrap();
    assert_eq!(
        replayed[value], 2,
        "the dead letter's record is in events once more"
    );
    assert_eq!(
        replayed.values().sum::<usize>(),
        before.values().sum::<usize>() + 1,
        "and nothing else"
    );
    browser.go(&format!("{base}#/topic/events"));
    browser.until(
        "the records",
        "return document.querySelectorAll('#record-table tr').length",
        |v| v.as_u64().is_some_and(|n| n > 1),
    );
    browser.screenshot(shots, "topic.png");

    // The first batch of partition 0 changed on disk, and a read met it: the topic page
    // says so beside the partition, as `flowd status` does.
    let segment = dir.path().join("data/topics/events/0/00000000000000000000.seg");
    crate::support::flip_bits(&segment, 8192 + 100, 0x10);
    let mut client = flowd::client::Client::connect(&server.tcp).unwrap();
    let read = client.fetch("events", 0, flowd::protocol::FetchFrom::Offset(0), 10, 0);
    assert!(read.is_err(), "{read:?}");
    browser.go(&format!("{base}#/"));
    browser.go(&format!("{base}#/topic/events"));
    let row = browser.until(
        "partition 0 shown unreadable",
        "const rows = [...document.querySelectorAll('table tr')].filter(r => r.cells[0] && r.cells[0].textContent === '0'); \
         return rows.length ? rows[0].textContent : ''",
        |v| v.as_str().is_some_and(|t| t.contains("UNREADABLE: damaged segment")),
    );
    assert!(
        row.as_str().unwrap().contains("holding records from offset 0"),
        "{row}"
    );
}
