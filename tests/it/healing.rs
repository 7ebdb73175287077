//! Replicas that heal themselves, peers as separate processes on loopback: a peer dead
//! for good is replaced after `--replace-after` (its replicas copied to live peers, its
//! vote given to one), and a peer back on an empty data directory is a new, empty
//! member that is never counted for what it no longer holds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowd::client::Client;

use crate::cluster::{one_at_a_time, status};
use crate::ingest::Server;
use crate::replication::{
    Producing, each_acked_once, fifty_acked, record, replicas, replicated_dataflow, replicated_peer_of,
    sets_by_leaders, settled, tail_lines_when_led, tail_when_led, voters, wait_led, wait_led_by,
};
use crate::support::{Tmpfs, stays, wait_until};

/// A peer of the replicated dataflow (`replicas = 3`, 8 partitions) that replaces a
/// peer down for `replace_after`.
fn healing_peer(
    dir: &std::path::Path,
    name: &str,
    at: &str,
    seed: Option<&str>,
    replace_after: &str,
) -> Server {
    replicated_peer_of(dir, name, at, seed, "64KiB", &["--replace-after", replace_after])
}

/// `(partition, replica, state, seconds until replaced)` of every replica `server`
/// says does not hold its copy.
fn absent(server: &Server) -> Vec<(u64, String, String, Option<u64>)> {
    let mut out = Vec::new();
    for topic in status(server)["topics"].as_array().unwrap() {
        for p in topic["partitions"].as_array().unwrap() {
            for a in p["replica"]["absent"].as_array().into_iter().flatten() {
                out.push((
                    p["partition"].as_u64().unwrap(),
                    a["replica"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                    a["replaced_in_secs"].as_u64(),
                ));
            }
        }
    }
    out
}

/// Waits until every `acked` value reads through each of `servers`: a new leader's
/// high-water mark passes what its predecessor acked once a quorum of its own view
/// holds it, bounded, not at once.
fn readable(servers: &[&Server], acked: &[String]) {
    wait_until(
        "every acked record readable through the peers left",
        Duration::from_secs(30),
        || {
            servers.iter().all(|s| {
                let values: std::collections::HashSet<String> = tail_when_led(s, "events")
                    .into_iter()
                    .map(|(_, _, v)| v)
                    .collect();
                acked.iter().all(|v| values.contains(v))
            })
        },
    );
}

fn peer_of(server: &Server) -> String {
    server.peer.clone().unwrap()
}

/// Healing peers named `names` (each seeded by the first), once every partition is led
/// with three replicas.
fn healing_peers(dir: &std::path::Path, names: &[&str], grace: &str) -> Vec<Server> {
    let mut servers: Vec<Server> = Vec::new();
    for name in names {
        let seed = servers.first().map(peer_of);
        servers.push(healing_peer(dir, name, "127.0.0.1:0", seed.as_deref(), grace));
    }
    wait_until(
        "every partition led once with three replicas",
        Duration::from_secs(60),
        || settled(&servers.iter().collect::<Vec<_>>(), 3),
    );
    servers
}

/// Each of `servers` as placement sees it: its peer address and its cores (rendezvous
/// hashes nothing else).
fn peer_ids(servers: &[&Server]) -> Vec<flowd::cluster::PeerId> {
    servers
        .iter()
        .map(|s| {
            let cores = status(s)["peers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["me"] == true)
                .map(|p| p["cores"].as_u64().unwrap())
                .unwrap();
            flowd::cluster::PeerId::new(peer_of(s).parse().unwrap(), cores as usize, 0)
        })
        .collect()
}

/// The replica set placement keeps `partition` of "events" on once every one of
/// `servers` is live and `leader` leads it: the first three of rendezvous over them all,
/// with the leader in place of the third if it is not among them (a move never takes the
/// set away from a leader that stays, `runtime::cluster::controller`).
fn placed(servers: &[&Server], partition: u64, leader: &str) -> Vec<String> {
    let live = peer_ids(servers);
    let mut set: Vec<String> = flowd::cluster::rendezvous::replica_set(&live, "events", partition as u32, 3)
        .iter()
        .map(|id| id.addr.to_string())
        .collect();
    if !set.iter().any(|m| m == leader) {
        set.pop();
        set.push(leader.to_string());
    }
    set.sort();
    set
}

/// Whether every partition is led with three replicas where placement over all of
/// `servers` keeps it: settled, and no set still on its way from where it was put
/// while fewer peers were live.
fn placed_over_all(servers: &[&Server]) -> bool {
    settled(servers, 3)
        && sets_by_leaders(servers).iter().all(|(&p, (_, members, _))| {
            let leader = servers
                .iter()
                .find(|s| replicas(s).get(&p).is_some_and(|r| r.0 == "leader"));
            leader.is_some_and(|l| *members == placed(servers, p, &peer_of(l)))
        })
}

/// The index in `servers` of the peer at `addr`.
fn index_of(servers: &[Server], addr: &str) -> usize {
    servers.iter().position(|s| peer_of(s) == addr).unwrap()
}

/// The index in `servers` of the peer that says it leads `partition`, waiting (at most
/// 30 s) while none does: just after the cluster settled, an election may still be
/// moving the lead (the replica set stays).
fn leader_index(servers: &[Server], partition: u64) -> usize {
    crate::support::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        servers
            .iter()
            .position(|s| replicas(s).get(&partition).is_some_and(|r| r.0 == "leader"))
    })
    .unwrap_or_else(|| panic!("no peer leads partition {partition} within 30 s"))
}

#[test]
fn a_peer_dead_for_good_is_replaced_and_a_second_death_then_loses_no_acked_record() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let grace = "6s";
    let mut first = healing_peer(dir.path(), "p1", "127.0.0.1:0", None, grace);
    let seed = peer_of(&first);
    let mut second = healing_peer(dir.path(), "p2", "127.0.0.1:0", Some(&seed), grace);
    let third = healing_peer(dir.path(), "p3", "127.0.0.1:0", Some(&seed), grace);
    wait_led(&[&first, &second, &third]);
    wait_until("three voters", Duration::from_secs(30), || {
        voters(&third).len() == 3
    });

    let producer = Producing::start(&second.tcp);
    let seen = producer.goes_on(0);

    // The first peer dies for good. Until the grace period ends its replicas are waited
    // for, and status counts down.
    let dead = peer_of(&first);
    first.kill9();
    let killed = Instant::now();
    wait_until(
        "status says the dead peer's replicas are down and when they are replaced",
        Duration::from_secs(10),
        || {
            absent(&second)
                .iter()
                .any(|(_, r, state, left)| *r == dead && state == "down" && left.is_some_and(|l| l <= 6))
        },
    );
    // A fourth peer joins; once the grace period is over every partition is back at
    // three replicas on the live peers, the dead one in none of them.
    let fourth = healing_peer(dir.path(), "p4", "127.0.0.1:0", Some(&peer_of(&second)), grace);
    let live = [&second, &third, &fourth];
    wait_until(
        "every partition back at three replicas on the live peers",
        Duration::from_secs(120),
        || {
            settled(&live, 3)
                && sets_by_leaders(&live)
                    .values()
                    .all(|(_, members, _)| !members.contains(&dead))
        },
    );
    let healed = killed.elapsed();
    let copied: u64 = replicas(&fourth).values().map(|r| r.2).sum();
    let copying = healed
        .saturating_sub(Duration::from_secs(6))
        .as_secs_f64()
        .max(0.001);
    eprintln!(
        "fully replicated again {:.1} s after the kill (grace 6 s); the new peer holds {copied} records, about {:.0} records/s copied after the grace",
        healed.as_secs_f64(),
        copied as f64 / copying
    );
    wait_until(
        "the metadata group's voters are three live peers",
        Duration::from_secs(30),
        || {
            let voters = voters(&third);
            voters.len() == 3 && !voters.contains(&dead)
        },
    );
    producer.goes_on(seen);
    let (acked, failed) = producer.finish();

    // A second peer dies for good: the two left hold a majority of every set and of the
    // metadata group; they lead every partition, take writes, and lose nothing.
    second.kill9();
    let rest = [&third, &fourth];
    wait_led_by(&rest);
    let mut client = Client::connect(&third.tcp).unwrap();
    let mut after = false;
    for _ in 0..300 {
        if client
            .produce("events", &[record("after the second death")])
            .is_ok()
        {
            after = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(after, "the two peers left take writes");
    readable(&rest, &acked);
    each_acked_once(&rest, &acked, failed.len());
    eprintln!("{} records acked, {} batches refused", acked.len(), failed.len());
}

#[test]
fn a_peer_back_on_an_empty_data_directory_is_not_counted_until_it_copied_its_replicas_back() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let grace = "10m";
    let names = ["p1", "p2", "p3", "p4", "p5"];
    let mut servers = healing_peers(dir.path(), &names, grace);
    // Partitions are placed once three peers live; the last two to start may join
    // after, and the sets move onto them then. The test needs them where they stay, and
    // a partition whose set is rendezvous's over all five: one whose leader holds a
    // place only as its leader would go to another peer once that peer stopped leading.
    let all: Vec<&Server> = servers.iter().collect();
    wait_until(
        "every partition placed over all five peers",
        Duration::from_secs(90),
        || placed_over_all(&all),
    );
    let sets = sets_by_leaders(&all);
    let (&partition, (_, members, _)) = sets
        .iter()
        // The same set whichever member leads it: rendezvous's own.
        .find(|(p, (_, members, _))| members.iter().all(|m| placed(&all, **p, m) == *members))
        .expect("a partition placed by rendezvous alone (each of eight is, but for one in about three)");
    let leader = leader_index(&servers, partition);
    let followers: Vec<usize> = members
        .iter()
        .map(|m| index_of(&servers, m))
        .filter(|&i| i != leader)
        .collect();
    let (lags, holds) = (followers[0], followers[1]);

    // One follower paused: the leader and the other ack; the paused one lags.
    servers[lags].signal(libc::SIGSTOP);
    let acked = fifty_acked(&servers[leader], partition as u32);
    // Both copies that hold them go: the follower dies, the leader comes back on an
    // empty data directory under its old address, and the lagging one resumes.
    servers[holds].kill9();
    servers[leader].kill9();
    std::fs::remove_dir_all(dir.path().join(names[leader])).unwrap();
    servers[lags].signal(libc::SIGCONT);
    let leader_addr = peer_of(&servers[leader]);
    let seed = peer_of(&servers[lags]);
    servers[leader] = healing_peer(dir.path(), names[leader], &leader_addr, Some(&seed), grace);

    // The lagging copy and the empty one must not make a majority: a leader chosen from
    // them would lack the acked records. The partition waits for the copy that holds
    // them.
    let up: Vec<&Server> = (0..5).filter(|&i| i != holds).map(|i| &servers[i]).collect();
    wait_until(
        "the emptied peer is seen for what it is",
        Duration::from_secs(90),
        || {
            absent(&servers[lags])
                .iter()
                .any(|(p, r, state, _)| *p == partition && *r == leader_addr && state == "emptied")
        },
    );
    stays(
        "no peer leads the partition while only the lagging and the emptied copy are up",
        Duration::from_secs(5),
        || {
            up.iter()
                .all(|s| replicas(s).get(&partition).is_none_or(|r| r.0 != "leader"))
        },
    );

    // The copy that holds them comes back: it leads, and the emptied peer copies its
    // replicas back and is counted again (no replica anywhere is absent).
    let holds_addr = peer_of(&servers[holds]);
    servers[holds] = healing_peer(dir.path(), names[holds], &holds_addr, Some(&seed), grace);
    let every: Vec<&Server> = servers.iter().collect();
    wait_until(
        "every partition led with three replicas, the emptied peer's copied back",
        Duration::from_secs(120),
        || settled(&every, 3) && every.iter().all(|s| absent(s).is_empty()),
    );
    let set = &sets_by_leaders(&every)[&partition].1;
    assert!(
        set.contains(&leader_addr),
        "the emptied peer {leader_addr} is a replica of its partition again: {set:?}"
    );
    each_acked_once(&every, &acked, 0);
}

/// `batches` batches of 20 records of about 100 bytes to each of partitions 0 and 1
/// through the first of `servers` (every peer of the cluster), each acked once: the
/// values by partition, in offset order.
fn fill_partitions_0_and_1(servers: &[&Server], batches: usize) -> BTreeMap<u32, Vec<String>> {
    let mut client = Client::connect(&servers[0].tcp).unwrap();
    let mut acked: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for batch in 0..batches {
        for partition in [0u32, 1] {
            let values: Vec<String> = (0..20)
                .map(|i| format!("p{partition}-{batch}-{i}-{}", "x".repeat(80)))
                .collect();
            let values_so_far = acked.entry(partition).or_default();
            let end = values_so_far.len() as u64;
            produce_once(servers, &mut client, partition, end, &values);
            values_so_far.extend(values);
        }
    }
    acked
}

/// Writes `values` as one batch to `partition` of "events", which ends at `end` (this is
/// its only producer), exactly once. A refused batch may or may not have been written
/// (its leadership moved before a quorum held it, say, as a loaded machine can make
/// happen): the partition's copies are waited on until they agree on where it ends, and
/// that says whether the batch is in (it ends past the batch) or is sent again (it ends
/// where it did). Never more than five tries.
fn produce_once(servers: &[&Server], client: &mut Client, partition: u32, end: u64, values: &[String]) {
    let records: Vec<_> = values.iter().map(|v| record(v)).collect();
    let mut refusals = Vec::new();
    while refusals.len() < 5 {
        match client.produce_batch("events", Some(partition), &records) {
            Ok(offsets) => {
                assert_eq!(
                    offsets[0].1, end,
                    "partition {partition}: the batch lands where it ends"
                );
                return;
            }
            Err(error) => refusals.push(error.to_string()),
        }
        let mut agreed = None;
        wait_until(
            "the partition's copies agree on where it ends, under one leader",
            Duration::from_secs(60),
            || {
                agreed = agreed_end(servers, partition);
                agreed.is_some()
            },
        );
        match agreed {
            Some(now) if now == end + values.len() as u64 => return,
            Some(now) if now == end => {}
            now => panic!(
                "partition {partition} ends at {now:?}, neither {end} nor past the batch: {refusals:?}"
            ),
        }
        *client = Client::connect(&servers[0].tcp).unwrap();
    }
    panic!("partition {partition}: a batch refused five times: {refusals:?}");
}

/// Where `partition` ends when its three copies agree on it under one leader, each
/// holding it all and the leader's high-water mark there (a leader chosen later holds
/// it too).
fn agreed_end(servers: &[&Server], partition: u32) -> Option<u64> {
    let copies: Vec<_> = servers
        .iter()
        .filter_map(|s| replicas(s).remove(&u64::from(partition)))
        .filter(|(role, ..)| role == "leader" || role == "follower")
        .collect();
    let leaders = copies.iter().filter(|(role, ..)| role == "leader").count();
    let (_, epoch, next, hwm) = copies.first()?.clone();
    (copies.len() == 3
        && leaders == 1
        && hwm == next
        && copies.iter().all(|c| c.1 == epoch && c.2 == next && c.3 == hwm))
    .then_some(next)
}

/// The partitions' first offsets in `peer`'s data directory (the name of each first
/// segment file).
fn first_offsets(dir: &std::path::Path, peer: &str) -> BTreeMap<u32, u64> {
    (0..2u32)
        .map(|p| {
            let partition = dir.join(peer).join("topics").join("events").join(p.to_string());
            let first = std::fs::read_dir(&partition)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
                        .min()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            (p, first)
        })
        .collect()
}

#[test]
fn a_copy_made_after_retention_deleted_the_leaders_oldest_segments_starts_where_its_leader_begins() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("retained.toml");
    let text = std::fs::read_to_string(replicated_dataflow(dir.path())).unwrap();
    std::fs::write(&file, format!("{text}retention = {{ max_bytes = \"192KiB\" }}\n")).unwrap();
    let start = |name: &str, at: &str, seed: Option<&str>| {
        let mut extra = vec!["--peer-listen", at, "--replace-after", "5m"];
        if let Some(seed) = seed {
            extra.extend(["--seeds", seed]);
        }
        crate::cluster::start_file(&file, dir.path(), name, &extra)
    };
    let first = start("p1", "127.0.0.1:0", None);
    let seed = peer_of(&first);
    let second = start("p2", "127.0.0.1:0", Some(&seed));
    let mut third = start("p3", "127.0.0.1:0", Some(&seed));
    wait_led(&[&first, &second, &third]);

    // About 800 KB in each of partitions 0 and 1: retention keeps about 192 KiB of them.
    let acked = fill_partitions_0_and_1(&[&first, &second, &third], 400);
    let all = [&first, &second, &third];
    wait_until(
        "every copy holds every record and retention deleted the oldest segments everywhere",
        Duration::from_secs(30),
        || {
            all.iter().all(|s| {
                let r = replicas(s);
                r[&0].2 == 8000 && r[&1].2 == 8000
            }) && ["p1", "p2", "p3"]
                .iter()
                .all(|peer| first_offsets(dir.path(), peer).values().all(|&o| o > 0))
        },
    );

    // The third peer comes back on an empty data directory: its leaders' logs begin past
    // offset 0, so its copies start where they begin, and it counts again.
    third.kill9();
    std::fs::remove_dir_all(dir.path().join("p3")).unwrap();
    let third = start("p3", &peer_of(&third), Some(&seed));
    let all = [&first, &second, &third];
    wait_until(
        "every partition led with three replicas, the emptied peer's copied back",
        Duration::from_secs(90),
        || settled(&all, 3) && all.iter().all(|s| absent(s).is_empty()),
    );
    wait_until(
        "the new copies end where the others do",
        Duration::from_secs(30),
        || {
            let r = replicas(&third);
            r[&0].2 == 8000 && r[&1].2 == 8000
        },
    );
    let begins = first_offsets(dir.path(), "p3");
    assert!(
        begins.values().all(|&o| o > 0),
        "the new copies begin past 0: {begins:?}"
    );

    // Counted: with the new copy and one other, what retention kept survives the death
    // of the third copy, each record at its acked offset.
    let mut first = first;
    first.kill9();
    wait_led_by(&[&second, &third]);
    for server in [&second, &third] {
        let mut read: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
        for line in tail_lines_when_led(server, "events").lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            read.entry(v["partition"].as_u64().unwrap() as u32)
                .or_default()
                .push((
                    v["offset"].as_u64().unwrap(),
                    v["value"].as_str().unwrap().to_string(),
                ));
        }
        for partition in [0u32, 1] {
            let got = &read[&partition];
            let (from, _) = got[0];
            assert!(from > 0, "partition {partition}: retention kept everything?");
            assert_eq!(
                got.len() as u64,
                8000 - from,
                "partition {partition} through {}: dense to the end",
                server.tcp
            );
            for (i, (offset, value)) in got.iter().enumerate() {
                assert_eq!(*offset, from + i as u64);
                assert_eq!(
                    value, &acked[&partition][*offset as usize],
                    "partition {partition} offset {offset}"
                );
            }
        }
    }
}

#[test]
fn a_leader_gone_past_the_grace_while_another_copy_is_damaged_leads_again_when_it_returns() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let grace = "6s";
    let names = ["p1", "p2", "p3", "p4"];
    let mut servers = healing_peers(dir.path(), &names, grace);
    fn every(servers: &[Server]) -> Vec<&Server> {
        servers.iter().collect()
    }
    let acked: Vec<String> = fill_partitions_0_and_1(&every(&servers), 100)
        .into_values()
        .flatten()
        .collect();
    let (_, members, _) = sets_by_leaders(&every(&servers))[&0].clone();
    let leader = leader_index(&servers, 0);
    let follower = members
        .iter()
        .map(|m| index_of(&servers, m))
        .find(|&i| i != leader)
        .unwrap();
    wait_until("the follower holds every record", Duration::from_secs(30), || {
        replicas(&servers[follower]).get(&0).is_some_and(|r| r.2 == 2000)
    });

    // The follower comes back with a bit flipped in partition 0's first segment: its copy
    // is set aside and counts for nothing until copied again.
    servers[follower].kill9();
    let segment = dir
        .path()
        .join(names[follower])
        .join("topics/events/0/00000000000000000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[20_000] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let seed = peer_of(
        &servers[(leader + 1..leader + 4)
            .map(|i| i % 4)
            .find(|&i| i != follower)
            .unwrap()],
    );
    let follower_addr = peer_of(&servers[follower]);
    servers[follower] = healing_peer(dir.path(), names[follower], &follower_addr, Some(&seed), grace);
    // At once, before it is whole, the leader dies past the grace, then comes back on
    // its own data directory.
    let leader_addr = peer_of(&servers[leader]);
    servers[leader].kill9();
    wait_until("the dead leader's grace is over", Duration::from_secs(30), || {
        (0..4).filter(|&i| i != leader).any(|i| {
            absent(&servers[i])
                .iter()
                .any(|(_, r, state, left)| *r == leader_addr && (state == "gone" || *left == Some(0)))
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    servers[leader] = healing_peer(dir.path(), names[leader], &leader_addr, Some(&seed), grace);
    wait_until(
        "every partition led with three replicas again, none damaged, none absent",
        Duration::from_secs(120),
        || {
            let all = every(&servers);
            settled(&all, 3) && all.iter().all(|s| absent(s).is_empty() && damaged(s).is_empty())
        },
    );
    each_acked_once(&every(&servers), &acked, 0);
}

/// `partition -> why` of every copy `server` says is damaged.
fn damaged(server: &Server) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for topic in status(server)["topics"].as_array().unwrap() {
        for p in topic["partitions"].as_array().unwrap() {
            if let Some(why) = p["replica"]["damaged"].as_str() {
                out.insert(p["partition"].as_u64().unwrap(), why.to_string());
            }
        }
    }
    out
}

/// Waits (30 s at most) until every copy of partitions 0 and 1 on `servers` ends at
/// 4,000 records (`fill_partitions_0_and_1` with 200 batches).
fn hold_4000_in_0_and_1(servers: &[&Server], what: &str) {
    wait_until(what, Duration::from_secs(30), || {
        servers.iter().all(|s| {
            let r = replicas(s);
            r[&0].2 == 4000 && r[&1].2 == 4000
        })
    });
}

#[test]
fn a_flipped_bit_and_a_truncated_segment_on_one_replica_are_repaired_from_the_others() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let grace = "5m";
    let first = healing_peer(dir.path(), "p1", "127.0.0.1:0", None, grace);
    let seed = peer_of(&first);
    let second = healing_peer(dir.path(), "p2", "127.0.0.1:0", Some(&seed), grace);
    let mut third = healing_peer(dir.path(), "p3", "127.0.0.1:0", Some(&seed), grace);
    wait_led(&[&first, &second, &third]);

    // Enough records that partitions 0 and 1 fill several 64 KiB segments everywhere.
    let acked: Vec<String> = fill_partitions_0_and_1(&[&first, &second, &third], 200)
        .into_values()
        .flatten()
        .collect();
    hold_4000_in_0_and_1(&[&first, &second, &third], "every copy holds every record");

    // The third peer stops; on its disk a bit flips in partition 0's first segment, and
    // partition 1's first segment loses its second half. Both are sealed: synced long
    // before.
    third.kill9();
    let partition_dir = |p: u32| {
        dir.path()
            .join("p3")
            .join("topics")
            .join("events")
            .join(p.to_string())
    };
    let first_segment = |p: u32| partition_dir(p).join("00000000000000000000.seg");
    let mut bytes = std::fs::read(first_segment(0)).unwrap();
    bytes[20_000] ^= 0x10;
    std::fs::write(first_segment(0), &bytes).unwrap();
    let len = std::fs::metadata(first_segment(1)).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(first_segment(1))
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    // It starts, sets the damaged partitions aside, counts them nowhere, and copies them
    // again from the others until it holds every acked record.
    let third = healing_peer(dir.path(), "p3", &peer_of(&third), Some(&seed), grace);
    let reported = damaged(&third);
    let all = [&first, &second, &third];
    wait_until(
        "the damaged copies are whole again and every partition led with its replicas",
        Duration::from_secs(60),
        || damaged(&third).is_empty() && settled(&all, 3),
    );
    eprintln!("damaged at start, as status said: {reported:?}");
    let (code, out, err) =
        crate::ingest::run_cli(&["inspect", &dir.path().join("p3").display().to_string()], "");
    assert_eq!(code, 0, "{out}{err}");
    let repaired: Vec<&str> = out.lines().filter(|l| l.starts_with("repaired:")).collect();
    assert_eq!(repaired.len(), 2, "inspect names both repaired partitions: {out}");
    assert!(
        repaired.iter().any(|l| l.contains("partition 0"))
            && repaired.iter().any(|l| l.contains("partition 1")),
        "{out}"
    );
    hold_4000_in_0_and_1(&all, "the repaired copy ends where the others do");
    each_acked_once(&all, &acked, 0);

    // Counted again: with the repaired copy and one other, every acked record survives
    // the death of the third copy.
    let mut first = first;
    first.kill9();
    wait_led_by(&[&second, &third]);
    readable(&[&second, &third], &acked);
    each_acked_once(&[&second, &third], &acked, 0);
}

#[test]
fn a_leader_whose_copy_is_damaged_while_it_runs_stops_and_its_replicas_serve_every_acked_record() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let grace = "5m";
    let mut servers = healing_peers(dir.path(), &["p1", "p2", "p3"], grace);
    let acked: Vec<String> = fill_partitions_0_and_1(&servers.iter().collect::<Vec<_>>(), 200)
        .into_values()
        .flatten()
        .collect();
    hold_4000_in_0_and_1(
        &servers.iter().collect::<Vec<_>>(),
        "every copy holds every record",
    );

    // One bit of record 25 of partition 0 (its second batch), in the first segment of
    // the leader's copy, which the running engine has mapped and checked long ago.
    let leader = leader_index(&servers, 0);
    let name = format!("p{}", leader + 1);
    let segment = dir
        .path()
        .join(&name)
        .join("topics/events/0/00000000000000000000.seg");
    let bytes = std::fs::read(&segment).unwrap();
    let at = bytes.windows(7).position(|w| w == b"p0-1-5-").unwrap() + 10;
    crate::support::flip_bits(&segment, at, 0x04);

    // A read of it is refused, never served, and the leader stops, saying why: its
    // replicas hold the batch whole.
    let mut client = Client::connect(&servers[leader].tcp).unwrap();
    let read = client.fetch("events", 0, flowd::protocol::FetchFrom::Offset(25), 1000, 0);
    assert!(read.is_err(), "a read of the damaged batch answered {read:?}");
    let status = servers[leader]
        .exit_within(Duration::from_secs(30))
        .expect("the leader with the damaged copy stops");
    assert!(!status.success(), "it stops as a failure: {status:?}");
    let log = servers[leader].log.text();
    assert!(
        log.contains("partition 0 of \"events\" is damaged on this peer's disk")
            && log.contains(&segment.display().to_string())
            && log.contains("its 2 other replicas, whose copies are whole, lead it"),
        "{log}"
    );

    // The others lead every partition and serve every acked record, each once.
    let left: Vec<&Server> = (0..3).filter(|i| *i != leader).map(|i| &servers[i]).collect();
    wait_led_by(&left);
    readable(&left, &acked);
    each_acked_once(&left, &acked, 0);

    // Started again, it sets the damaged copy aside and copies it again from them.
    let seed = peer_of(left[0]);
    let addr = peer_of(&servers[leader]);
    servers[leader] = healing_peer(dir.path(), &name, &addr, Some(&seed), grace);
    let aside: Vec<String> = std::fs::read_dir(dir.path().join(&name).join("topics/events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("0.damaged-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "partition 0's damaged files are set aside: {aside:?}"
    );
    let all: Vec<&Server> = servers.iter().collect();
    wait_until(
        "the damaged copy is whole again and every partition led with its replicas",
        Duration::from_secs(60),
        || damaged(all[leader]).is_empty() && settled(&all, 3),
    );
    hold_4000_in_0_and_1(&all, "the copied copy ends where the others do");
    each_acked_once(&all, &acked, 0);
}

/// The copy rate of a replacement and what it does to a producer's latency: 3 peers
/// with about 200 MB, one killed for good, a fourth copies its share. Run by
/// `scripts/heal-bench.sh` (release build); `FLOWD_HEAL_BENCH_RATE` sets `--copy-rate`.
#[test]
#[ignore = "a benchmark: scripts/heal-bench.sh"]
fn heal_bench() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let rate = std::env::var("FLOWD_HEAL_BENCH_RATE").unwrap_or_else(|_| "20MiB".into());
    let mb: usize = crate::support::env_or("FLOWD_HEAL_BENCH_MB", 200);
    let file = dir.path().join("bench.toml");
    std::fs::write(
        &file,
        "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n\n[cluster]\nreplicas = 3\n\n\
         [[topic]]\nname = \"events\"\npartitions = 8\n",
    )
    .unwrap();
    let peer = |name: &str, seed: Option<&str>| {
        let mut extra = vec![
            "--peer-listen",
            "127.0.0.1:0",
            "--replace-after",
            "2s",
            "--copy-rate",
            &rate,
        ];
        if let Some(seed) = seed {
            extra.extend(["--seeds", seed]);
        }
        crate::cluster::start_file(&file, dir.path(), name, &extra)
    };
    let mut first = peer("p1", None);
    let seed = peer_of(&first);
    let second = peer("p2", Some(&seed));
    let third = peer("p3", Some(&seed));
    wait_led(&[&first, &second, &third]);

    // About `mb` MB of 1000-byte records, through the second peer.
    let mut client = Client::connect(&second.tcp).unwrap();
    let value = "x".repeat(1000);
    let loaded = Instant::now();
    for batch in 0..mb * 10 {
        let records: Vec<_> = (0..100).map(|_| record(&value)).collect();
        client
            .produce_batch("events", Some((batch % 8) as u32), &records)
            .unwrap();
    }
    eprintln!("loaded {mb} MB in {:.1} s", loaded.elapsed().as_secs_f64());

    // A probe: one record at a time to partition 0 through the third peer, its latency.
    let stop = Arc::new(AtomicBool::new(false));
    let probe_start = Instant::now();
    let probe_clock = probe_start;
    let probe = {
        let (tcp, stop) = (third.tcp.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut client = Client::connect(&tcp).unwrap();
            let started = probe_start;
            let mut samples = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let at = Instant::now();
                let ok = client.produce("events", &[record("probe")]).is_ok();
                samples.push((at.duration_since(started), at.elapsed(), ok));
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    first.kill9();
    let killed = Instant::now();
    let fourth = peer("p4", Some(&peer_of(&second)));
    let live = [&second, &third, &fourth];
    // The copy begins once the grace is over; it ends when every set is whole again.
    // The copy: from the first byte the new peer holds to every set whole again.
    let bytes_on = |server: &Server| -> u64 {
        status(server)["topics"][0]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let empty = bytes_on(&fourth);
    let mut first_byte = None;
    wait_until(
        "every partition back at three replicas",
        Duration::from_secs(600),
        || {
            if first_byte.is_none() && bytes_on(&fourth) > empty {
                first_byte = Some(probe_clock.elapsed());
            }
            settled(&live, 3)
        },
    );
    let whole = probe_clock.elapsed();
    let killed = killed.duration_since(probe_start);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Release);
    let samples = probe.join().unwrap();
    let copied = bytes_on(&fourth) - empty;
    let quantiles = |from: Duration, to: Duration| {
        let mut lat: Vec<Duration> = samples
            .iter()
            .filter(|(at, _, ok)| *ok && *at >= from && *at < to)
            .map(|(_, l, _)| *l)
            .collect();
        lat.sort();
        if lat.is_empty() {
            return "no samples".to_string();
        }
        let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize];
        format!(
            "p50 {:?}, p99 {:?}, max {:?} ({} acks)",
            q(0.5),
            q(0.99),
            lat[lat.len() - 1],
            lat.len()
        )
    };
    let began = first_byte.unwrap_or(whole);
    let copying = (whole - began).as_secs_f64().max(0.001);
    eprintln!(
        "copy rate {rate}: the copy began {:.1} s after the kill and every set was whole {:.1} s after it; \
         {:.0} MB copied in {copying:.1} s, {:.1} MB/s\nprobe before the kill: {}\nprobe during the copy: {}",
        (began - killed).as_secs_f64(),
        (whole - killed).as_secs_f64(),
        copied as f64 / 1e6,
        copied as f64 / 1e6 / copying,
        quantiles(Duration::ZERO, killed),
        quantiles(began, whole),
    );
}

fn disk_full(server: &Server) -> bool {
    status(server)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["me"] == true && p["disk_full"] == true)
}

#[test]
fn a_leader_whose_disk_fills_up_hands_over_its_leadership_serves_reads_and_takes_writes_again() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let grace = "5m";
    // Every peer's partitions live on a disk of their own; once the partitions are led,
    // the disk of partition 0's leader shrinks to 1 MiB (8 partitions take 512 KiB of
    // segments at once). Rendezvous picks the leaders, so which peer that is varies.
    let disks: Vec<Tmpfs> = ["p1", "p2", "p3"]
        .iter()
        .map(|name| Tmpfs::mount(&dir.path().join(name).join("topics"), "64M"))
        .collect();
    let p1 = healing_peer(dir.path(), "p1", "127.0.0.1:0", None, grace);
    let seed = peer_of(&p1);
    let p2 = healing_peer(dir.path(), "p2", "127.0.0.1:0", Some(&seed), grace);
    let p3 = healing_peer(dir.path(), "p3", "127.0.0.1:0", Some(&seed), grace);
    wait_led(&[&p1, &p2, &p3]);
    let partition = 0u32;
    let mut peers = vec![(p1, &disks[0]), (p2, &disks[1]), (p3, &disks[2])];
    let at = peers
        .iter()
        .position(|(s, _)| replicas(s)[&0].0 == "leader")
        .expect("some peer leads partition 0");
    let (first, disk) = peers.remove(at);
    let [(second, _), (third, _)] = <[_; 2]>::try_from(peers).ok().unwrap();
    disk.resize("1M");

    // Writes through another peer until the full one's disk is full, then on: its
    // leadership moves to a peer with room and acks go on.
    let mut client = Client::connect(&second.tcp).unwrap();
    let (mut acked, mut refused, mut after) = (Vec::new(), Vec::new(), 0);
    let started = Instant::now();
    for batch in 0..5000 {
        let values: Vec<String> = (0..20)
            .map(|i| format!("{batch}-{i}-{}", "x".repeat(1000)))
            .collect();
        let records: Vec<_> = values.iter().map(|v| record(v)).collect();
        match client.produce_batch("events", Some(partition), &records) {
            Ok(_) => {
                acked.extend(values);
                if !refused.is_empty() {
                    after += 1;
                }
            }
            Err(flowd::client::ClientError::Server { message, .. }) => {
                refused.push(message);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(other) => panic!("the producer lost its connection: {other}"),
        }
        if after >= 50 || started.elapsed() > Duration::from_secs(90) {
            break;
        }
    }
    eprintln!(
        "{} records acked, {} batches refused while the leadership moved, {after} batches acked after",
        acked.len(),
        refused.len()
    );
    assert!(!refused.is_empty(), "the disk never filled up");
    assert!(
        refused.iter().any(|m| m.contains("is full")),
        "a refusal says the disk is full: {refused:?}"
    );
    assert!(
        after >= 50,
        "writes were not taken again after the disk filled up: {refused:?}"
    );
    assert!(disk_full(&first), "the full peer says so in its status");
    assert_ne!(
        replicas(&first)[&u64::from(partition)].0,
        "leader",
        "the full peer still leads"
    );
    // Reads go on through the full peer.
    readable(&[&first, &second, &third], &acked);

    // Room again: it says so, catches up, and holds what the others hold.
    disk.resize("64M");
    wait_until("the peer sees room again", Duration::from_secs(15), || {
        !disk_full(&first)
    });
    let all = [&first, &second, &third];
    wait_until("the full peer caught up", Duration::from_secs(60), || {
        let ends: Vec<u64> = all.iter().map(|s| replicas(s)[&u64::from(partition)].2).collect();
        ends.iter().all(|e| *e == ends[0])
    });
    each_acked_once(&all, &acked, refused.len());
}

/// `partition -> leader` for each partition exactly one of `servers` says it leads.
fn leaders(servers: &[&Server]) -> BTreeMap<u64, String> {
    let mut led: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for s in servers {
        for (p, (role, ..)) in replicas(s) {
            if role == "leader" {
                led.entry(p).or_default().push(peer_of(s));
            }
        }
    }
    led.into_iter()
        .filter(|(_, l)| l.len() == 1)
        .map(|(p, mut l)| (p, l.pop().unwrap()))
        .collect()
}

/// Three peers of the replicated dataflow with `flags`, started one at a time: p1
/// founds the cluster, the others are seeded with it.
fn three_started_one_at_a_time(dir: &std::path::Path, flags: &[&str]) -> Vec<Server> {
    let mut servers: Vec<Server> = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let seed = servers.first().map(peer_of);
        servers.push(replicated_peer_of(
            dir,
            name,
            "127.0.0.1:0",
            seed.as_deref(),
            "64KiB",
            flags,
        ));
    }
    servers
}

#[test]
fn a_restarted_peer_is_given_back_the_leads_placement_gave_it_losing_no_acked_record() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--replace-after", "10m", "--rebalance-after", "2s"];
    let mut servers = three_started_one_at_a_time(dir.path(), &flags);
    // Three replicas of three peers: each set holds them all, and each partition's
    // preferred leader is the first of rendezvous over the three.
    let all: Vec<&Server> = servers.iter().collect();
    wait_until(
        "every partition led with three replicas",
        Duration::from_secs(60),
        || settled(&all, 3),
    );
    let ids = peer_ids(&all);
    let first_of = |p: u64| {
        flowd::cluster::rendezvous::replica_set(&ids, "events", p as u32, 1)[0]
            .addr
            .to_string()
    };
    let preferred: BTreeMap<u64, String> = (0..8u64).map(|p| (p, first_of(p))).collect();
    wait_until(
        "every partition led by its preferred replica",
        Duration::from_secs(60),
        || leaders(&all) == preferred,
    );
    drop(all);
    // The peer preferred by the most partitions dies and comes back under a producer.
    let victim = (0..3)
        .max_by_key(|&i| preferred.values().filter(|m| **m == peer_of(&servers[i])).count())
        .unwrap();
    let its = preferred
        .values()
        .filter(|m| **m == peer_of(&servers[victim]))
        .count();
    assert!(its >= 1, "some peer is preferred by a partition");
    let through = (victim + 1) % 3;
    let producer = Producing::start(&servers[through].tcp);
    let seen = producer.goes_on(0);
    let addr = peer_of(&servers[victim]);
    servers[victim].kill9();
    let rest: Vec<&Server> = (0..3).filter(|&i| i != victim).map(|i| &servers[i]).collect();
    wait_led_by(&rest);
    let seen = producer.goes_on(seen);
    let seed = peer_of(&servers[through]);
    servers[victim] = replicated_peer_of(
        dir.path(),
        ["p1", "p2", "p3"][victim],
        &addr,
        Some(&seed),
        "64KiB",
        &flags,
    );
    let all: Vec<&Server> = servers.iter().collect();
    // Back, it follows every partition first; then the leads placement gave it come
    // back to it, each once it holds every acked record.
    let mut last = BTreeMap::new();
    let back = crate::support::poll(Duration::from_secs(90), Duration::from_millis(200), || {
        last = leaders(&all);
        (last == preferred).then_some(())
    });
    assert!(
        back.is_some(),
        "the restarted peer {addr} leads its {its} partitions again: leaders {last:?}, preferred {preferred:?}"
    );
    producer.goes_on(seen);
    let (acked, failed) = producer.finish();
    each_acked_once(&all, &acked, failed.len());
    eprintln!("{} records acked, {} batches refused", acked.len(), failed.len());
}

/// The peer that founded the cluster (started without seeds) back on an empty data
/// directory, without seeds again: it founds a group of its own, and the running group,
/// which counts its address as a member, reaches it. It must not serve beside that
/// group (its partitions empty, the cluster's records hidden behind them), nor take in
/// that group's log as its own (openraft stopped on the first such message): it stops,
/// saying how to start it. Started so, it is taken in and the cluster heals.
#[test]
fn a_founder_back_on_an_empty_data_directory_without_seeds_stops_instead_of_founding_a_second_cluster() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = three_started_one_at_a_time(dir.path(), &[]);
    wait_until(
        "every partition led with three replicas",
        Duration::from_secs(60),
        || settled(&servers.iter().collect::<Vec<_>>(), 3),
    );
    let (leader, partition) = crate::replication::some_leader(&servers);
    let acked = fifty_acked(&servers[leader], partition);

    let founder = peer_of(&servers[0]);
    servers[0].kill9();
    std::fs::remove_dir_all(dir.path().join("p1")).unwrap();
    servers[0] = replicated_peer_of(dir.path(), "p1", &founder, None, "64KiB", &[]);
    let status = servers[0].exit_within(Duration::from_secs(60));
    let log = servers[0].log.text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the founder back on an empty data directory stops with an error: {status:?}\n{log}"
    );
    assert!(
        log.contains("founded a metadata group of its own") && log.contains("start it with --seeds"),
        "it says why and what to do:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let rest: Vec<&Server> = servers[1..].iter().collect();
    each_acked_once(&rest, &acked, 0);

    // Started as it says, on an emptied data directory with a seed: taken in, it holds
    // its copies again.
    std::fs::remove_dir_all(dir.path().join("p1")).unwrap();
    let seed = peer_of(&servers[1]);
    servers[0] = replicated_peer_of(dir.path(), "p1", &founder, Some(&seed), "64KiB", &[]);
    let all: Vec<&Server> = servers.iter().collect();
    wait_until(
        "every partition led with three replicas, the founder among them again",
        Duration::from_secs(120),
        || settled(&all, 3),
    );
    each_acked_once(&all, &acked, 0);
}
