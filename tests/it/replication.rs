//! Consensus and replication across peers as separate processes on loopback: the
//! metadata group forms from one seed, elects a new leader when its leader is SIGKILLed,
//! and takes the returning peer back as a voter.

use std::time::Duration;

use serde_json::Value;

use crate::cluster::{events_peer, one_at_a_time, status};
use crate::ingest::Server;
use crate::support::wait_until;

fn group(server: &Server) -> Value {
    status(server)["metadata_group"].clone()
}

fn leader_of(server: &Server) -> Option<String> {
    group(server)["leader"].as_str().map(str::to_string)
}

fn voters(server: &Server) -> Vec<String> {
    let mut voters: Vec<String> = group(server)["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    voters.sort();
    voters
}

/// Waits until every one of `servers` names the same leader, one of them, with all of
/// them voters; returns the leader's address.
fn wait_agreed(servers: &[&Server]) -> String {
    let mut addrs: Vec<String> = servers.iter().map(|s| s.peer.clone().unwrap()).collect();
    addrs.sort();
    let mut agreed = String::new();
    wait_until(
        "every peer names one leader and all are voters",
        Duration::from_secs(30),
        || {
            let leaders: Vec<Option<String>> = servers.iter().map(|s| leader_of(s)).collect();
            let Some(Some(first)) = leaders.first().cloned() else {
                return false;
            };
            if leaders.iter().any(|l| l.as_deref() != Some(&first)) || !addrs.contains(&first) {
                return false;
            }
            agreed = first;
            servers.iter().all(|s| voters(s) == addrs)
        },
    );
    agreed
}

#[test]
fn the_metadata_group_forms_from_a_seed_survives_its_leader_and_takes_it_back() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let first = events_peer(dir.path(), "p1", None);
    let seed = first.peer.clone().unwrap();
    let second = events_peer(dir.path(), "p2", Some(&seed));
    let third = events_peer(dir.path(), "p3", Some(&seed));
    let mut servers = [first, second, third];
    let leader = wait_agreed(&servers.iter().collect::<Vec<_>>());
    let term = group(&servers[0])["term"].as_u64().unwrap();

    // SIGKILL the group's leader: the other two elect one of themselves, in a later term.
    let at = servers
        .iter()
        .position(|s| s.peer.as_deref() == Some(&leader))
        .unwrap();
    let name = format!("p{}", at + 1);
    servers[at].kill9();
    let rest: Vec<&Server> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, s)| s)
        .collect();
    let took = wait_until("the others elect a new leader", Duration::from_secs(30), || {
        let leaders: Vec<Option<String>> = rest.iter().map(|s| leader_of(s)).collect();
        leaders[0].is_some() && leaders[0] != Some(leader.clone()) && leaders[0] == leaders[1]
    });
    eprintln!("a new metadata leader within {took:?} of the old one's SIGKILL");
    assert!(group(rest[0])["term"].as_u64().unwrap() > term, "a new term");
    // The dead peer stays a voter: losing a minority changes nothing.
    assert_eq!(voters(rest[0]).len(), 3);

    // It comes back on its address with its data: a voter again, following the new leader.
    let seed = rest[0].peer.clone().unwrap();
    let back = servers[at].peer.clone().unwrap();
    servers[at] = crate::cluster::start_file(
        &crate::cluster::events_dataflow(dir.path()),
        dir.path(),
        &name,
        &["--peer-listen", &back, "--seeds", &seed],
    );
    let new_leader = wait_agreed(&servers.iter().collect::<Vec<_>>());
    assert_ne!(
        new_leader, leader,
        "the returning peer did not take leadership back by itself"
    );
}
