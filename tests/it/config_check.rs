//! `flowd check` and the validation behind it: each broken file gets a precise,
//! positioned error with a hint, all errors of a file are reported, and nothing panics.

use std::path::Path;
use std::process::Command;

use flowd::config::{self, ConfigError};
use proptest::prelude::*;

/// A valid dataflow the broken cases are made from.
const BASE: &str = r#"[engine]
cores = 1

[[topic]]
name = "lines"

[[topic]]
name = "words"

[[stage]]
name = "split"
from = "lines"
op = "split_words"
to = "words"
"#;

fn errors(text: &str) -> Vec<String> {
    match config::parse(Path::new("flow.toml"), text) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { diagnostics, .. }) => diagnostics
            .iter()
            .map(|d| {
                format!(
                    "{}:{}: {}: {} | {}",
                    d.line,
                    d.column,
                    d.key,
                    d.message,
                    d.hint.as_deref().unwrap_or("")
                )
            })
            .collect(),
        Err(other) => vec![other.to_string()],
    }
}

#[test]
fn the_base_file_is_valid() {
    assert_eq!(errors(BASE), Vec::<String>::new());
}

#[test]
fn broken_files_get_precise_errors() {
    // (what is broken, the file, the expected error lines: position, key, message, hint)
    let mut cases: Vec<(&str, String, &[&str])> = vec![
        (
            "bad TOML",
            "[[topic]\nname = \"a\"\n".into(),
            &["1:9: (syntax): unclosed array table, expected `]`"],
        ),
        (
            "unknown key",
            BASE.replace("name = \"words\"", "name = \"words\"\npartitons = 3"),
            &["9:1: topic \"words\".partitons: unknown key | did you mean \"partitions\"?"],
        ),
        (
            "replicas out of range, for the cluster and for a topic",
            format!("[cluster]\nreplicas = 0\n\n{}", BASE.replace("name = \"words\"", "name = \"words\"\nreplicas = 9")),
            &[
                "2:12: cluster.replicas: replicas must be from 1 to 7 | each partition is copied to that many peers and a write is acked once a majority of them hold it",
                "12:12: topic \"words\".replicas: replicas must be from 1 to 7 | each partition is copied to that many peers and a write is acked once a majority of them hold it",
            ],
        ),
        (
            "half of the peer port's mutual TLS",
            format!("[cluster]\ntls_cert = \"peer.pem\"\ntls_ca = \"ca.pem\"\n\n{BASE}"),
            &[
                "2:12: cluster.tls_cert: mutual TLS between peers needs this peer's certificate, its key and the cluster's CA | give cluster.tls_key too (flowd cert ca, then flowd cert issue NAME --cluster ID --host IP)",
            ],
        ),
        (
            "a topic named as the engine's own",
            format!("{BASE}\n[[topic]]\nname = \"__flowd.cursors.lines\"\n"),
            &[
                "17:8: topic.name: \"__flowd.cursors.lines\" is reserved: names beginning with \"__flowd.\" are the engine's own topics | choose another name",
            ],
        ),
        (
            "unknown section",
            format!("{BASE}\n[engin]\ncores = 2\n"),
            &["16:2: engin: unknown key | did you mean \"engine\"?"],
        ),
        (
            "unknown operator",
            BASE.replace("op = \"split_words\"", "op = \"split_wrds\""),
            &["13:6: stage \"split\".op: unknown operator \"split_wrds\" | did you mean \"split_words\"?"],
        ),
        (
            "unknown operator in a table",
            BASE.replace("op = \"split_words\"", "op = { windw = { window = \"1s\" } }"),
            &[
                "13:6: stage \"split\".op: unknown operator \"windw\" | expected one of: map, filter, split_words",
            ],
        ),
        (
            "unknown operator parameter",
            BASE.replace("op = \"split_words\"", "op = { count = { windw = \"1s\" } }"),
            &["13:18: stage \"split\".op.count.windw: unknown key | did you mean \"window\"?"],
        ),
        (
            "bad jq expression",
            BASE.replace("op = \"split_words\"", "op = { map = \".a | \" }"),
            &["13:6: stage \"split\".op.map: bad jq expression `.a | `: expected term but found the end"],
        ),
        (
            "jq with an undefined function",
            BASE.replace("op = \"split_words\"", "op = { filter = \"nosuch(1)\" }"),
            &["13:6: stage \"split\".op.filter: bad jq expression `nosuch(1)`: undefined filter `nosuch`"],
        ),
        (
            "a stage reading a topic that does not exist",
            BASE.replace("from = \"lines\"", "from = \"lnes\""),
            &["12:8: stage \"split\".from: there is no topic \"lnes\" | did you mean \"lines\"?"],
        ),
        (
            "a stage writing a topic that does not exist",
            BASE.replace("to = \"words\"", "to = \"counts\""),
            &[
                "14:6: stage \"split\".to: there is no topic \"counts\" | declare it with [[topic]] name = \"counts\"",
            ],
        ),
        (
            "a cycle",
            format!(
                "{BASE}\n[[stage]]\nname = \"back\"\nfrom = \"words\"\nop = \"split_words\"\nto = \"lines\"\n"
            ),
            &["17:8: stage \"back\".to: the stages make a cycle: lines -> words -> lines"],
        ),
        (
            "a wrong type",
            BASE.replace("name = \"lines\"", "name = \"lines\"\npartitions = \"eight\""),
            &["6:14: (type): invalid type: string \"eight\", expected i64"],
        ),
        (
            "bad values",
            BASE.replace(
                "cores = 1",
                "cores = 0\ndurability = \"evry\"\ncommit_interval = \"soon\"",
            ),
            &[
                "2:9: engine.cores: 0 is not a core count",
                "3:14: engine.durability: unknown durability \"evry\" | did you mean \"every\"?",
                "4:19: engine.commit_interval: \"soon\" is not a duration",
            ],
        ),
        (
            "a missing source file",
            format!(
                "{BASE}\n[[source]]\nname = \"in\"\ntype = \"file\"\npath = \"nope.txt\"\nto = \"lines\"\n"
            ),
            &["19:8: source \"in\".path: ./nope.txt does not exist | source paths are relative"],
        ),
        (
            "sink problems",
            format!("{BASE}\n[[sink]]\nname = \"out\"\nfrom = \"words\"\ntype = \"fil\"\nformat = \"csv\"\n"),
            &[
                "19:8: sink \"out\".type: unknown sink type \"fil\" | did you mean \"file\"?",
                "20:10: sink \"out\".format: unknown format \"csv\" | expected one of: value, key_value, json",
            ],
        ),
        (
            "a duplicate name",
            BASE.replace("name = \"words\"", "name = \"lines\""),
            &[
                "8:8: name: the topic name \"lines\" is used twice",
                "14:6: stage \"split\".to: there is no topic \"words\"",
            ],
        ),
        (
            "a job nothing answers",
            format!("{BASE}\n[[job]]\nname = \"j\"\ntopic = \"words\"\n"),
            &[
                "18:9: job \"j\".topic: no reply stage is reachable from topic \"words\", so no job would ever be answered | add a stage with op = \"reply\" that reads the topic (or a topic downstream of it)",
            ],
        ),
        (
            "a reply stage with a to",
            BASE.replace("op = \"split_words\"", "op = \"reply\""),
            &["14:6: stage \"split\".to: a reply stage answers jobs and writes no topic | remove `to`"],
        ),
        (
            "bad ingest values",
            format!("{BASE}\n[ingest]\ntcp = \"localhost\"\nmax_conections = 3\n"),
            &[
                "17:7: ingest.tcp: \"localhost\" is not an address: invalid socket address syntax | write IP:PORT, e.g. \"127.0.0.1:7070\"",
                "18:1: ingest.max_conections: unknown key | did you mean \"max_connections\"?",
            ],
        ),
        (
            "exec without a command",
            BASE.replace("op = \"split_words\"", "op = { exec = { workers = 2 } }"),
            &["13:6: stage \"split\".op.exec.command: exec needs the command that starts a worker"],
        ),
        (
            "exec with the command as one string",
            BASE.replace("op = \"split_words\"", "op = { exec = { command = \"python3 w.py\" } }"),
            &["not one string \"python3 w.py\" | write command = [\"python3\", \"w.py\"]"],
        ),
        (
            "exec with bad pool options",
            BASE.replace(
                "op = \"split_words\"",
                "op = { exec = { command = [\"w\"], protocl = \"json\", protocol = \"jsonl\", workers = 0, timeout = \"1ms\" } }",
            ),
            &[
                "stage \"split\".op.exec.protocol: unknown worker protocol \"jsonl\" | did you mean \"json\"?",
                "stage \"split\".op.exec.workers: workers must be a whole number from 1 to 1024",
                "stage \"split\".op.exec.timeout: timeout 1ms is out of range | use from 10ms to 24h",
                "stage \"split\".op.exec.protocl: unknown key | did you mean \"protocol\"?",
            ],
        ),
        (
            "dead letters back into the stage's own input",
            BASE.replace("to = \"words\"", "to = \"words\"\non_error = { then = \"dead_letter\", dead_letter = \"lines\" }"),
            &["stage \"split\".to: the stages make a cycle: lines -> lines"],
        ),
        (
            "max_reclaims on a built-in operator",
            BASE.replace("to = \"words\"", "to = \"words\"\non_error = { max_reclaims = 2, then = \"continue\" }"),
            &["stage \"split\".on_error.max_reclaims: max_reclaims applies to exec stages: a built-in operator fails the same way every time"],
        ),
        (
            "dead_letter without its topic",
            BASE.replace("op = \"split_words\"", "op = { exec = { command = [\"w\"] } }")
                .replace("to = \"words\"", "to = \"words\"\non_error = { then = \"dead_letter\" }"),
            &["stage \"split\".on_error.dead_letter: then = \"dead_letter\" needs the topic the failed records go to"],
        ),
        (
            "dead_letter to a topic that does not exist",
            BASE.replace("op = \"split_words\"", "op = { exec = { command = [\"w\"] } }").replace(
                "to = \"words\"",
                "to = \"words\"\non_error = { max_reclaims = 3, then = \"dead_letter\", dead_letter = \"dead\" }",
            ),
            &["stage \"split\".on_error.dead_letter: there is no topic \"dead\""],
        ),
        (
            "state without its update",
            BASE.replace("op = \"split_words\"", "op = { state = { updat = \".\" } }"),
            &[
                "stage \"split\".op.state.update: state needs the jq expression that gives a key's new state",
                "stage \"split\".op.state.updat: unknown key | did you mean \"update\"?",
            ],
        ),
        (
            "state routed by value, over a changelog with retention",
            BASE.replace(
                "op = \"split_words\"",
                "op = { state = { update = \"(.state // 0) + 1\" } }\nroute = { shard_by = \"value\" }",
            )
            .replace("name = \"words\"", "name = \"words\"\nretention = { max_age = \"1h\" }"),
            &[
                "stage \"split\".route: a state stage writes each key's changes to one partition: its route is by key",
                "stage \"split\".to: topic \"words\" is a state stage's changelog and must keep every change: it has retention",
            ],
        ),
        (
            "scatter_gather to a branch nobody answers, with a bad merge",
            BASE.replace(
                "op = \"split_words\"",
                "op = { scatter_gather = { branches = [\"lines\"], merge = \"avg\", partial = \"some\" } }",
            ),
            &[
                "stage \"split\".op.scatter_gather.merge: scatter_gather needs a merge of its branches' answers",
                "stage \"split\".op.scatter_gather.partial: partial is what a record gets when not every branch answered in time",
                "stage \"split\".op.scatter_gather.branches: a branch topic has no reply stage downstream",
            ],
        ),
    ];
    cases.push((
        "a source forwarding (it reads no partition)",
        format!("{BASE}\n[[source]]\nname = \"feed\"\ntype = \"file\"\npath = \"Cargo.toml\"\nto = \"lines\"\nroute = \"forward\"\n"),
        &["source \"feed\".route: a source reads no partition to forward from | route = \"spread\""],
    ));
    cases.push((
        "a route misspelt",
        BASE.replace("to = \"words\"", "to = \"words\"\nroute = \"foward\""),
        &["stage \"split\".route: unknown route \"foward\" | did you mean \"forward\"?"],
    ));
    for (what, text, expected) in cases {
        let got = errors(&text);
        assert_eq!(got.len(), expected.len(), "{what}: got {got:#?}");
        for (line, fragment) in got.iter().zip(expected.iter()) {
            assert!(
                line.starts_with(fragment) || line.contains(fragment),
                "{what}:\n  got  {line}\n  want {fragment}"
            );
        }
    }
}

#[test]
fn a_stage_forwards_by_default_where_its_output_has_as_many_partitions_as_its_inputs() {
    use flowd::config::{Part, Route, Selector};
    let with = |lines: u32, words: u32, route: &str| {
        let text = BASE
            .replace(
                "name = \"lines\"",
                &format!("name = \"lines\"\npartitions = {lines}"),
            )
            .replace(
                "name = \"words\"",
                &format!("name = \"words\"\npartitions = {words}"),
            )
            .replace("to = \"words\"", &format!("to = \"words\"\n{route}"));
        config::parse(Path::new("flow.toml"), &text).unwrap().stages[0]
            .route
            .clone()
    };
    assert_eq!(with(4, 4, ""), Route::Forward, "as many partitions: forward");
    assert_eq!(
        with(4, 8, ""),
        Route::Spread,
        "more output partitions: spread over them"
    );
    assert_eq!(with(8, 4, ""), Route::Spread, "fewer output partitions: spread");
    assert_eq!(
        with(4, 4, "route = \"spread\""),
        Route::Spread,
        "a route given is kept"
    );
    assert_eq!(with(4, 8, "route = \"forward\""), Route::Forward);
    assert_eq!(
        with(4, 4, "route = { shard_by = \"key\" }"),
        Route::ShardBy(Selector::Part(Part::Key))
    );
}

#[test]
fn check_prints_every_error_with_the_file_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    let text = BASE
        .replace("op = \"split_words\"", "op = \"splitwords\"")
        .replace("from = \"lines\"", "from = \"line\"");
    std::fs::write(&file, text).unwrap();
    let output = crate::support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flowd")).arg("check").arg(&file),
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let prefix = format!(
        "{}:12:8: stage \"split\".from: there is no topic \"line\"",
        file.display()
    );
    assert!(stderr.contains(&prefix), "{stderr}");
    assert!(
        stderr.contains(":13:6: stage \"split\".op: unknown operator \"splitwords\""),
        "{stderr}"
    );
    assert!(stderr.contains("hint: did you mean \"split_words\"?"), "{stderr}");
    assert!(stderr.contains("2 errors in"), "{stderr}");
    // `flowd run` uses the same validation and the same exit code.
    let output = crate::support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_flowd")).arg("run").arg(&file),
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr).unwrap().contains(&prefix));
}

#[test]
fn every_example_dataflow_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows");
    // Every example the dataflows README lists, and no other file, checks clean.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let listed: std::collections::BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |").map(|(name, _)| name.to_owned()))
        .filter(|name| name.ends_with(".toml"))
        .collect();
    let mut checked = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = crate::support::run_bounded(
                Command::new(env!("CARGO_BIN_EXE_flowd")).arg("check").arg(&path),
                b"",
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{}: {stderr}", path.display());
            checked.insert(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert_eq!(
        checked, listed,
        "the examples checked and those dataflows/README.md lists"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any edit of a valid file gives a spec or positioned errors, never a panic.
    #[test]
    fn edits_never_panic(position in 0usize..BASE.len(), byte in any::<u8>(), delete in any::<bool>()) {
        let mut bytes = BASE.as_bytes().to_vec();
        if delete { bytes.remove(position); } else { bytes.insert(position, byte); }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(ConfigError::Invalid { diagnostics, .. }) = config::parse(Path::new("f.toml"), &text) {
            prop_assert!(!diagnostics.is_empty());
            prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
        }
    }
}
