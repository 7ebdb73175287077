//! The README's own examples, run as a user runs them: `dataflows/wordcount.toml` (and
//! again with `--memory --cores 1`), `dataflows/ingest.toml` with the README's commands
//! (`flowd send`, `flowd tail`, `--reply`, HTTP, `flowd tail --follow`), and a followed
//! file source (`follow = true`) across a SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flowd::client::Client;
use flowd::protocol::FetchFrom;

use crate::ingest::{Server, flowd, http, run_cli};
use crate::support::{fast_tempdir, run_bounded, wait_until};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows").join(name)
}

/// Copies `names` from `dataflows/` into `dir`.
fn copy_examples(dir: &Path, names: &[&str]) {
    for name in names {
        std::fs::copy(example(name), dir.join(name)).unwrap();
    }
}

/// The words of `text` as `split_words` makes them: runs of ASCII letters and digits or
/// non-ASCII bytes, ASCII lowercased; counted.
fn reference_counts(text: &[u8]) -> BTreeMap<Vec<u8>, u64> {
    let mut counts = BTreeMap::new();
    for word in text.split(|b| !(b.is_ascii_alphanumeric() || *b >= 0x80)) {
        if !word.is_empty() {
            *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
        }
    }
    counts
}

/// `flowd run wordcount.toml ARGS` in `dir`: its stdout as word counts (each word once)
/// and its stderr.
fn wordcount(dir: &Path, args: &[&str]) -> (BTreeMap<Vec<u8>, u64>, String) {
    let out = run_bounded(
        flowd()
            .current_dir(dir)
            .arg("run")
            .arg("wordcount.toml")
            .args(args),
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let mut counts = BTreeMap::new();
    for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let tab = line.iter().position(|b| *b == b'\t').expect("KEY<TAB>VALUE");
        let count: u64 = std::str::from_utf8(&line[tab + 1..]).unwrap().parse().unwrap();
        let word = line[..tab].to_vec();
        assert!(
            counts.insert(word.clone(), count).is_none(),
            "{:?} printed twice",
            String::from_utf8_lossy(&word)
        );
    }
    (counts, stderr)
}

#[test]
fn the_wordcount_example_counts_every_word_and_runs_in_memory_on_one_core_alike() {
    let text = std::fs::read(example("wordcount.txt")).unwrap();
    let want = reference_counts(&text);
    assert!(want.len() > 10, "the example text has words");

    let dir = fast_tempdir();
    copy_examples(dir.path(), &["wordcount.toml", "wordcount.txt"]);
    let (counts, stderr) = wordcount(dir.path(), &[]);
    assert_eq!(counts, want, "the counts of the README's wordcount");
    assert!(stderr.contains("durability Group"), "{stderr}");
    assert!(
        dir.path().join("flowd-data/wordcount").is_dir(),
        "its data dir, relative to where it ran"
    );

    // --memory --cores 1: the same counts, the data on tmpfs and gone after, one core.
    let dir = fast_tempdir();
    copy_examples(dir.path(), &["wordcount.toml", "wordcount.txt"]);
    let (counts, stderr) = wordcount(dir.path(), &["--memory", "--cores", "1"]);
    assert_eq!(counts, want, "the counts in memory on one core");
    let data = stderr
        .split("(data in ")
        .nth(1)
        .and_then(|rest| rest.split(", durability").next())
        .unwrap_or_else(|| panic!("it says where the data is: {stderr}"));
    assert!(data.contains("flowd-memory-"), "{stderr}");
    assert!(stderr.contains("durability None"), "{stderr}");
    assert!(stderr.contains("on 1 cores"), "{stderr}");
    assert!(!Path::new(data).exists(), "{data} outlived the run");
    assert!(
        !dir.path().join("flowd-data").exists(),
        "--memory wrote the data dir of the file"
    );
}

#[test]
fn the_ingest_example_answers_the_readme_commands() {
    let dir = fast_tempdir();
    copy_examples(dir.path(), &["ingest.toml"]);
    let data = dir.path().join("data");
    let server = Server::start_with(
        &dir.path().join("ingest.toml"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let to = server.tcp.as_str();

    // printf 'a\nb\nc\n' | flowd send events: three PARTITION:OFFSET lines, one batch.
    let (code, stdout, stderr) = run_cli(&["send", "--to", to, "events"], "a\nb\nc\n");
    assert_eq!(code, 0, "{stderr}");
    let acks: Vec<&str> = stdout.lines().collect();
    let partition = acks[0].split(':').next().unwrap().to_owned();
    assert_eq!(
        acks,
        ["0", "1", "2"].map(|o| format!("{partition}:{o}")),
        "one keyless batch goes to one partition"
    );
    // flowd tail events --offset earliest --json: the three records, then exit 0.
    let (code, stdout, stderr) = run_cli(
        &["tail", "--from", to, "events", "--offset", "earliest", "--json"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    let values: Vec<(String, u64, u64)> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["topic"], "events");
            (
                v["value"].as_str().unwrap().to_owned(),
                v["partition"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let p: u64 = partition.parse().unwrap();
    assert_eq!(
        values,
        [("a", p, 0), ("b", p, 1), ("c", p, 2)].map(|(v, p, o)| (v.to_owned(), p, o))
    );
    // A job over the protocol and over HTTP.
    let (code, stdout, stderr) = run_cli(&["send", "--to", to, "greet", "--reply"], "{\"name\":\"ada\"}\n");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"greeting":"hello ada"}"#);
    let (status, body) = http(&server.http, "POST", "/jobs/greet", r#"{"name":"bob"}"#);
    assert_eq!((status, body.trim()), (200, r#"{"greeting":"hello bob"}"#));
    // HTTP records: two offsets, the keyed one in its key's partition.
    let (status, body) = http(
        &server.http,
        "POST",
        "/topics/events",
        r#"["x", {"key":"k","value":"y"}]"#,
    );
    assert_eq!(status, 200, "{body}");
    let offsets: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(offsets["offsets"].as_array().unwrap().len(), 2, "{body}");
    let mut client = Client::connect(to).unwrap();
    assert_eq!(client.length("events", None).unwrap(), 5);

    // flowd tail --follow: what is there, then what comes, as it comes.
    let mut tail = flowd()
        .args([
            "tail", "--from", to, "events", "--offset", "earliest", "--follow", "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let _ = tx.send(v["value"].as_str().unwrap().to_owned());
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("tail --follow printed no {what}"))
    };
    let mut seen: Vec<String> = (0..5).map(|_| next("record that was there")).collect();
    seen.sort();
    assert_eq!(seen, ["a", "b", "c", "x", "y"]);
    client
        .produce("events", &[flowd::protocol::OwnedWireRecord::value("late")])
        .unwrap();
    assert_eq!(next("record produced while it follows"), "late");
    assert!(
        tail.try_wait().unwrap().is_none(),
        "--follow does not exit at the end"
    );
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn a_followed_file_source_takes_lines_as_they_are_written_and_once_across_a_sigkill() {
    let dir = fast_tempdir();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "one\ntwo\n").unwrap();
    let topics = format!(
        "[[topic]]\nname = \"lines\"\npartitions = 1\n\n[[source]]\nname = \"text\"\ntype = \"file\"\npath = \"{}\"\nfollow = true\nto = \"lines\"\n",
        input.display()
    );
    let file = crate::support::listening_dataflow(dir.path(), "follow", "group", "", &topics);
    let lines = |client: &mut Client| -> Vec<String> {
        let fetched = client.fetch("lines", 0, FetchFrom::Offset(0), 1000, 0).unwrap();
        fetched
            .records
            .into_iter()
            .map(|(_, r)| String::from_utf8(r.value).unwrap())
            .collect()
    };
    let append = |text: &str| {
        let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let mut server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    wait_until("the first lines", Duration::from_secs(20), || {
        lines(&mut client).len() == 2
    });
    // A line written in two pieces is one record, once it is whole.
    append("thr");
    append("ee\nfour\n");
    wait_until("the appended lines", Duration::from_secs(20), || {
        lines(&mut client).len() == 4
    });
    assert_eq!(lines(&mut client), ["one", "two", "three", "four"]);
    assert!(
        server.exit_within(Duration::ZERO).is_none(),
        "a followed source keeps flowd running"
    );
    // SIGKILL, more lines while it is down, a restart: each line once.
    server.kill9();
    append("five\n");
    let server = Server::start(&file);
    let mut client = Client::connect(&server.tcp).unwrap();
    append("six\n");
    wait_until("the lines after the restart", Duration::from_secs(20), || {
        lines(&mut client).len() >= 6
    });
    crate::support::stays("no line twice", Duration::from_millis(500), || {
        lines(&mut client).len() == 6
    });
    assert_eq!(lines(&mut client), ["one", "two", "three", "four", "five", "six"]);
}
