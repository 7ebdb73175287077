//! The imports that must never exist (ARCHITECTURE.md, "Rooms and the imports between
//! them"): every room of `src/` may use only the rooms below it. This reads every source
//! file and fails naming the file, the line and the rule when one reaches up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each room of `src/` (a folder or a file) and the rooms it may use, bottom up. A room
/// not listed here fails the test: a new room says where it stands.
const ROOMS: &[(&str, &[&str])] = &[
    ("storage", &[]),
    ("net", &[]),
    ("auth", &["storage"]),
    ("tls", &["storage"]),
    ("jq", &[]),
    ("config", &["storage", "jq"]),
    ("consumer", &["storage"]),
    ("protocol", &["consumer", "storage"]),
    ("ops", &["config", "protocol", "jq"]),
    ("exec", &["config"]),
    ("metrics", &["protocol", "storage"]),
    ("cluster", &["net", "protocol", "config", "storage", "tls"]),
    (
        "runtime",
        &[
            "storage", "jq", "config", "consumer", "protocol", "ops", "exec", "metrics", "cluster",
        ],
    ),
    (
        "server",
        &[
            "storage", "auth", "tls", "net", "config", "consumer", "protocol", "metrics", "cluster",
            "runtime",
        ],
    ),
    ("client", &["net", "protocol", "tls"]),
    (
        "bench",
        &[
            "storage", "tls", "config", "consumer", "protocol", "exec", "runtime", "server", "client",
        ],
    ),
    (
        "cli",
        &[
            "storage", "auth", "tls", "config", "consumer", "protocol", "exec", "cluster", "runtime",
            "server", "client", "bench",
        ],
    ),
];

/// The files of `dir`, recursively.
fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The rooms `line` names after `crate::` (`crate::a::b`, `crate::{a, b::c}`), outside
/// comments.
fn rooms_named(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut rooms = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    rooms.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            rooms.push(name);
        }
    }
    rooms
}

/// Every import of `src/` that reaches a room it may not use: `(file:line, rule)`.
fn violations(src: &Path) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ROOMS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let room = first.trim_end_matches(".rs");
        // The crate's roots: they name every room.
        if matches!(room, "lib" | "main") {
            continue;
        }
        let Some(may) = allowed.get(room) else {
            found.push(format!(
                "src/{} is in no room of the table (tests/it/architecture.rs)",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for used in rooms_named(line) {
                if used != room && !may.contains(&used.as_str()) && allowed.contains_key(used.as_str()) {
                    found.push(format!(
                        "src/{}:{}: {room} must not import {used} (it may use: {})",
                        relative.display(),
                        n + 1,
                        may.join(", ")
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn no_room_imports_a_room_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "imports that must never exist:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_rule_check_sees_a_forbidden_import() {
    // A copy of one room with one import added that reaches up.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("runtime")).unwrap();
    std::fs::create_dir_all(src.join("ops")).unwrap();
    std::fs::write(
        src.join("runtime/a.rs"),
        "use crate::storage::Log;\n// crate::server in a comment\n",
    )
    .unwrap();
    std::fs::write(
        src.join("ops/b.rs"),
        "use crate::{config::OpSpec, runtime::shard::Shard};\n",
    )
    .unwrap();
    std::fs::write(src.join("attic.rs"), "fn f() {}\n").unwrap();
    let mut found = violations(&src);
    found.sort();
    assert_eq!(
        found,
        [
            "src/attic.rs is in no room of the table (tests/it/architecture.rs)".to_string(),
            "src/ops/b.rs:1: ops must not import runtime (it may use: config, protocol, jq)".to_string(),
        ]
    );
    std::fs::write(src.join("runtime/a.rs"), "use crate::server::Front;\n").unwrap();
    std::fs::remove_file(src.join("attic.rs")).unwrap();
    std::fs::remove_file(src.join("ops/b.rs")).unwrap();
    assert_eq!(
        violations(&src),
        [
            "src/runtime/a.rs:1: runtime must not import server (it may use: storage, jq, config, consumer, protocol, ops, exec, metrics, cluster)"
        ]
    );
}
