//! One status for the cluster: `flowd status` through any peer shows every peer with its
//! own rates, every partition as its leader (or owner) sees it with its consumers' lag,
//! and the cluster's counters; a peer that does not answer is named, never left out
//! silently.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{fruit_lines, one_at_a_time, one_copy, replicated, status, three_peers, wait_settled};
use crate::ingest::{Server, http, run_cli};
use crate::support::wait_until;

/// The cluster's status through `server` (`flowd status --json`, no `--local`).
fn cluster_status(server: &Server) -> Value {
    let (code, out, err) = run_cli(&["status", "--from", &server.tcp, "--json"], "");
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// `(topic, partition) -> peer` of every partition some peer's own status shows it
/// leading (replicated) or serving as its owner (one copy).
fn leaders(servers: &[Server]) -> BTreeMap<(String, u64), String> {
    let mut leaders = BTreeMap::new();
    for server in servers {
        let own = status(server);
        for topic in own["topics"].as_array().unwrap() {
            for p in topic["partitions"].as_array().unwrap() {
                let leads = if replicated() {
                    p["replica"]["role"] == "leader"
                } else {
                    p["standing"] == "serving"
                };
                if leads {
                    let at = (
                        topic["name"].as_str().unwrap().to_string(),
                        p["partition"].as_u64().unwrap(),
                    );
                    leaders.insert(at, server.peer.clone().unwrap());
                }
            }
        }
    }
    leaders
}

/// `(topic, partition) -> peer` of each row of a cluster's status.
fn rows(status: &Value) -> BTreeMap<(String, u64), String> {
    let mut rows = BTreeMap::new();
    for topic in status["topics"].as_array().unwrap() {
        for p in topic["partitions"].as_array().unwrap() {
            let at = (
                topic["name"].as_str().unwrap().to_string(),
                p["partition"].as_u64().unwrap(),
            );
            rows.insert(at, p["peer"].as_str().unwrap_or("(none)").to_string());
        }
    }
    rows
}

/// The sum over `topic`'s rows of `consumer`'s position.
fn read_by(status: &Value, topic: &str, consumer: &str) -> u64 {
    status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == topic)
        .flat_map(|t| t["partitions"].as_array().unwrap())
        .flat_map(|p| p["consumers"].as_array().unwrap())
        .filter(|c| c["name"] == consumer)
        .map(|c| c["position"].as_u64().unwrap())
        .sum()
}

/// The sum over `topic`'s rows of where each partition ends: its records, all told.
fn ends_of(status: &Value, topic: &str) -> u64 {
    status["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == topic)
        .flat_map(|t| t["partitions"].as_array().unwrap())
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum()
}

fn the_status_through_any_peer_shows_the_whole_cluster() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_peers(dir.path());
    wait_settled(&servers.iter().collect::<Vec<_>>(), 4);
    // Settled, every peer says it is ready for traffic (and why not, while it is not).
    for server in &servers {
        let mut last = String::new();
        wait_until("every peer ready", Duration::from_secs(30), || {
            let (code, body) = http(&server.http, "GET", "/readyz", "");
            last = body;
            code == 200
        });
        assert_eq!(last, r#"{"ready":true}"#);
    }
    // A replicated cluster's peers export the replica metrics the dashboard charts.
    if crate::cluster::replicated() {
        let (_, metrics) = http(&servers[0].http, "GET", "/metrics", "");
        let missing = crate::deploy::missing(&metrics, "flowd_replica_");
        assert!(
            missing.is_empty(),
            "the dashboard charts replica metrics flowd does not export: {missing:?}"
        );
    }
    let (lines, _) = fruit_lines(900, &[]);
    let (code, _, err) = run_cli(
        &["send", "--to", &servers[1].tcp, "lines"],
        &(lines.join("\n") + "\n"),
    );
    assert_eq!(code, 0, "{err}");
    let sender = servers[1].peer.clone().unwrap();
    let addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();

    for server in &servers {
        let mut last = Value::Null;
        let mut led = BTreeMap::new();
        wait_until(
            "the cluster's status shows every partition from its leader and every line split",
            Duration::from_secs(30),
            || {
                led = leaders(&servers);
                last = cluster_status(server);
                rows(&last) == led && read_by(&last, "lines", "split") == lines.len() as u64
            },
        );
        assert_eq!(last["scope"], "cluster");
        assert!(last.get("unanswered").is_none(), "{}", last["unanswered"]);
        assert_eq!(
            led.len(),
            12,
            "three topics of four partitions, each led once: {led:?}"
        );
        let lines_in = ends_of(&last, "lines");
        assert_eq!(
            lines_in,
            lines.len() as u64,
            "every line in one partition of lines"
        );
        // Every peer with its own figures; the cluster's the sum of theirs.
        let peers = last["peers"].as_array().unwrap();
        let listed: Vec<&str> = peers.iter().map(|p| p["addr"].as_str().unwrap()).collect();
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert!(addrs.iter().all(|a| listed.contains(&a.as_str())), "{listed:?}");
        for peer in peers {
            let took = peer["load"]["records_in"].as_u64().expect("each peer's own load");
            let want = if peer["addr"] == sender.as_str() {
                lines.len() as u64
            } else {
                0
            };
            assert_eq!(took, want, "records taken at the door of {}", peer["addr"]);
        }
        assert_eq!(last["records_in"], lines.len() as u64, "the cluster's records in");
        // The words' lag, read through this one peer, is every peer's stage's.
        let words_in = ends_of(&last, "words");
        wait_until(
            "the words counted, seen through one peer",
            Duration::from_secs(30),
            || read_by(&cluster_status(server), "words", "count") == words_in,
        );
        let (code, text, err) = run_cli(&["status", "--from", &server.tcp], "");
        assert_eq!(code, 0, "{err}");
        assert!(text.contains("the cluster's records in 900"), "{text}");
        assert!(text.contains("FROM PEER"), "{text}");
    }

    // A peer killed: the others name it as not answering, and every partition still
    // shows (from its new leader, or its last holder while it has none).
    let victim = servers[2].peer.clone().unwrap();
    servers[2].kill9();
    for server in &servers[..2] {
        let mut last = Value::Null;
        wait_until(
            "the killed peer named as not answering",
            Duration::from_secs(30),
            || {
                last = cluster_status(server);
                last["unanswered"].as_array().is_some_and(|u| {
                    u.iter()
                        .any(|p| p["addr"] == victim.as_str() && p["why"].is_string())
                })
            },
        );
        let victim_row = last["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["addr"] == victim.as_str())
            .cloned()
            .unwrap();
        assert!(victim_row.get("load").is_none(), "{victim_row}");
        let (code, text, err) = run_cli(&["status", "--from", &server.tcp], "");
        assert_eq!(code, 0, "{err}");
        assert!(text.contains(&format!("NOT ANSWERED: {victim}")), "{text}");
    }
    if replicated() {
        // Every partition is still listed, each from a live peer.
        wait_until(
            "every partition led by a live peer",
            Duration::from_secs(30),
            || {
                let rows = rows(&cluster_status(&servers[0]));
                rows.len() == 12 && rows.values().all(|p| *p != victim)
            },
        );
    }
}

mod replicated {
    #[test]
    fn the_status_through_any_peer_shows_the_whole_cluster() {
        super::the_status_through_any_peer_shows_the_whole_cluster();
    }
}

mod one_copy {
    #[test]
    fn the_status_through_any_peer_shows_the_whole_cluster() {
        super::one_copy();
        super::the_status_through_any_peer_shows_the_whole_cluster();
    }
}
