//! Named consumers in a cluster: their cursors and claims follow each partition's lead
//! (`runtime/consumers/follow.rs`). A consumer claiming and acking through alternating
//! peers, while the peer leading most partitions is SIGKILLed and started again, gets
//! every record, acks each once, and never sees an acked record again.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use flowd::client::Client;
use flowd::protocol::OwnedWireRecord;
use flowd::protocol::consumer::Options;

use crate::cluster::{
    events_dataflow, one_at_a_time, served_by, start_file, three_events_peers, wait_all_alive, wait_settled,
};
use crate::ingest::Server;
use crate::support::{pace, wait_until};

const RECORDS: usize = 2_000;

/// A client of `server`, connected anew when the last call failed.
fn client<'a>(clients: &'a mut [Option<Client>], servers: &[Server], i: usize) -> Option<&'a mut Client> {
    if clients[i].is_none() {
        clients[i] = Client::connect(&servers[i].tcp).ok();
    }
    clients[i].as_mut()
}

#[test]
fn a_named_consumer_through_alternating_peers_acks_each_record_once_while_a_leader_is_killed_and_back() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::from(three_events_peers(dir.path()));
    {
        let all: Vec<&Server> = servers.iter().collect();
        wait_all_alive(&all);
        wait_settled(&all, 8);
    }

    // 2,000 keyed records over the eight partitions, through the first peer.
    let mut producer = Client::connect(&servers[0].tcp).unwrap();
    let mut expected = BTreeSet::new();
    for batch in 0..(RECORDS / 100) {
        let records: Vec<OwnedWireRecord> = (0..100)
            .map(|i| {
                let v = format!("v{}", batch * 100 + i);
                expected.insert(v.clone());
                OwnedWireRecord {
                    timestamp_ms: None,
                    key: Some(format!("k{v}").into_bytes()),
                    value: v.into_bytes(),
                    headers: Vec::new(),
                }
            })
            .collect();
        producer.produce("events", &records).unwrap();
    }
    drop(producer);

    // The peer leading most partitions is the one killed: its cursors must come back
    // from the cursor topic on the peers that take its partitions.
    let victim = (0..3)
        .max_by_key(|i| served_by(&servers[*i], "events").len())
        .unwrap();
    assert!(
        !served_by(&servers[victim], "events").is_empty(),
        "the victim leads partitions"
    );
    let at = servers[victim].peer.clone().unwrap();
    let other = servers[(victim + 1) % 3].peer.clone().unwrap();

    let options = Options {
        reclaim_timeout_ms: Some(3_000),
        ..Options::default()
    };
    let mut clients: Vec<Option<Client>> = (0..3).map(|_| None).collect();
    // Per value: acks answered `Ok`. Values delivered again after such an ack. Values
    // of acks answered with an error (the change may or may not have been made).
    let mut acked: HashMap<String, u32> = HashMap::new();
    let mut came_back: Vec<String> = Vec::new();
    let mut uncertain: BTreeSet<String> = BTreeSet::new();
    let (mut phase, mut turn, mut errors) = (0, 0usize, Vec::new());
    let mut empty_since: Option<std::time::Instant> = None;
    for _ in 0..20_000 {
        if phase == 0 && acked.len() >= RECORDS / 3 {
            servers[victim].kill9();
            clients[victim] = None;
            phase = 1;
        }
        if phase == 1 && acked.len() >= RECORDS * 2 / 3 {
            servers[victim] = start_file(
                &events_dataflow(dir.path()),
                dir.path(),
                &format!("p{}", victim + 1),
                &["--peer-listen", &at, "--seeds", &other],
            );
            wait_all_alive(&servers.iter().collect::<Vec<_>>());
            phase = 2;
        }
        // Through the next peer in turn (not the killed one while it is down).
        let pick = |turn: &mut usize| loop {
            let i = *turn % 3;
            *turn += 1;
            if !(phase == 1 && i == victim) {
                return i;
            }
        };
        let i = pick(&mut turn);
        let claimed = match client(&mut clients, &servers, i)
            .ok_or_else(|| "no connection".to_owned())
            .and_then(|c| {
                c.claim("events", "g", None, 25, Some(options.clone()))
                    .map_err(|e| e.to_string())
            }) {
            Ok(claimed) => claimed,
            Err(error) => {
                clients[i] = None;
                errors.push(format!("claim through {i}: {error}"));
                pace(Duration::from_millis(50));
                continue;
            }
        };
        let values: Vec<String> = claimed
            .records
            .iter()
            .map(|(_, r)| String::from_utf8(r.value.clone()).unwrap())
            .collect();
        let Some(p) = claimed.partition.filter(|_| !values.is_empty()) else {
            // Nothing claimable: done once every record is acked (or its ack uncertain
            // and it never came back within two reclaim timeouts).
            let since = *empty_since.get_or_insert_with(std::time::Instant::now);
            let settled = expected
                .iter()
                .all(|v| acked.contains_key(v) || uncertain.contains(v));
            if phase == 2 && settled && since.elapsed() > Duration::from_secs(7) {
                break;
            }
            pace(Duration::from_millis(100));
            continue;
        };
        empty_since = None;
        for v in &values {
            if acked.contains_key(v) {
                came_back.push(v.clone());
            }
            uncertain.remove(v);
        }
        let j = pick(&mut turn);
        match client(&mut clients, &servers, j)
            .ok_or_else(|| "no connection".to_owned())
            .and_then(|c| c.ack("events", "g", p).map_err(|e| e.to_string()))
        {
            Ok(range) => {
                assert_eq!(range, (claimed.from, claimed.to), "the claim is what is acked");
                for v in values {
                    *acked.entry(v).or_default() += 1;
                }
            }
            Err(error) => {
                clients[j] = None;
                errors.push(format!("ack through {j}: {error}"));
                uncertain.extend(values);
            }
        }
    }
    assert_eq!(
        phase, 2,
        "the victim was killed and came back (errors: {errors:?})"
    );
    assert!(
        came_back.is_empty(),
        "acked records delivered again ({}): {:?}; errors: {errors:?}",
        came_back.len(),
        &came_back[..came_back.len().min(10)]
    );
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records acked twice: {twice:?}");
    let missing: Vec<&String> = expected
        .iter()
        .filter(|v| !acked.contains_key(*v) && !uncertain.contains(*v))
        .collect();
    assert!(missing.is_empty(), "records never acked: {missing:?}");
    assert!(
        acked.keys().all(|v| expected.contains(v)),
        "only the records produced"
    );
    // Uncertain acks are of leaders the kill took: each such record either came back
    // and was acked, or its ack was made; nothing more is claimable through any peer.
    for server in &servers {
        wait_until(
            "nothing left to claim, through every peer",
            Duration::from_secs(20),
            || {
                Client::connect(&server.tcp)
                    .and_then(|mut c| c.claim("events", "g", None, 25, None))
                    .is_ok_and(|claimed| claimed.records.is_empty())
            },
        );
    }
    // The cursor topic is the engine's: read through any peer, written by no client.
    let kept = crate::cluster::tail(&servers[0], "__flowd.cursors.events");
    assert!(
        kept.iter().any(|(_, _, value)| value.contains("\"lead\"")),
        "the cursor topic holds the leads' markers: {:?}",
        &kept[..kept.len().min(3)]
    );
    let mut client = Client::connect(&servers[0].tcp).unwrap();
    let refused = client
        .produce(
            "__flowd.cursors.events",
            &[OwnedWireRecord {
                timestamp_ms: None,
                key: None,
                value: b"{}".to_vec(),
                headers: Vec::new(),
            }],
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("engine's own topics"), "{refused}");
    let refused = client
        .claim("__flowd.cursors.events", "g", None, 1, Some(Options::default()))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("engine's own topics"), "{refused}");
    eprintln!(
        "acked {} records once each through alternating peers; {} uncertain acks; {} errors along the way: {:?}",
        acked.len(),
        uncertain.len(),
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// A dead letter replayed through a peer that does not lead the dead-letter partition
/// (the claim and the ack-and-commit relayed to its leader, in mutual TLS) lands in its
/// topic once, and a tombstone stays one: the null mark is taken from a relaying peer.
#[test]
fn a_tombstone_dead_lettered_and_replayed_through_another_peer_is_a_tombstone_again() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kafka-cluster.toml");
    std::fs::write(
        &file,
        "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\nkafka = \"127.0.0.1:0\"\n\n\
         [[topic]]\nname = \"events\"\npartitions = 4\n\n[[topic]]\nname = \"dead\"\npartitions = 4\n",
    )
    .unwrap();
    let first = start_file(&file, dir.path(), "k1", &["--peer-listen", "127.0.0.1:0"]);
    let seed = first.peer.clone().unwrap();
    let second = start_file(
        &file,
        dir.path(),
        "k2",
        &["--peer-listen", "127.0.0.1:0", "--seeds", &seed],
    );
    let servers = [first, second];
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, 4);
    let kafka = servers[0].kafka.clone().unwrap();
    crate::kafka::kcat(
        &["-P", "-b", &kafka, "-t", "events", "-p", "0", "-K:", "-Z"],
        b"t-null:\n",
    );
    let post = |server: &Server, path: &str| {
        let (status, body) = crate::ingest::http(&server.http, "POST", path, "{}");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let claimed = post(
        &servers[1],
        "/consumers/events/doomed/claim?partition=0&count=1&create=earliest&max_reclaims=0&then=dead_letter&dead_letter=dead",
    );
    assert_eq!(
        (claimed["from"].as_u64(), claimed["to"].as_u64()),
        (Some(0), Some(1)),
        "{claimed}"
    );
    let reclaimed = post(&servers[1], "/consumers/events/doomed/reclaim?partition=0");
    assert_eq!(reclaimed["outcome"], "dead_letter", "{reclaimed}");
    // The dead letter's partition, and the peer that does not lead it.
    let length = |p: u32| {
        let (status, body) = crate::ingest::http(
            &servers[0].http,
            "GET",
            &format!("/topics/dead/range?partition={p}"),
            "",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let held: Vec<u32> = (0..4).filter(|p| length(*p) > 0).collect();
    assert_eq!(held.len(), 1, "one dead letter, in one partition: {held:?}");
    let p = held[0];
    let away = if served_by(&servers[0], "dead").contains(&p) {
        1
    } else {
        0
    };
    assert!(!served_by(&servers[away], "dead").contains(&p));
    let replayed = post(&servers[away], &format!("/topics/dead/replay?partition={p}"));
    assert_eq!(replayed["topics"], serde_json::json!({"events": 1}), "{replayed}");
    assert_eq!(
        crate::kafka::values_read(&kafka),
        ["t-null None", "t-null None"],
        "the tombstone, then its replay"
    );
}
