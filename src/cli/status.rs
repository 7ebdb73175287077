//! `flowd status [--from ADDR] [--json] [--local]`: the running engine's cores, listeners,
//! topics, partitions, offsets, consumers with their lag, and rates; in a cluster, every
//! peer's (each partition from the peer that leads it, rates summed), or with `--local`
//! the peer reached alone.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::CliError;
use crate::protocol::status::{Scope, Status};

pub fn run(from: &str, json: bool, local: bool) -> Result<ExitCode, CliError> {
    let mut client = crate::cli::connect(from)?;
    let value = client.status(local)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let status: Status = serde_json::from_value(value)?;
    writeln!(
        out,
        "flowd {} up {:.0}s, {} cores, durability {}, {}",
        status.version,
        status.uptime_secs,
        status.cores,
        status.durability,
        status.listeners.join(", ")
    )?;
    if !status.insecure.is_empty() {
        writeln!(
            out,
            "INSECURE: {} reachable from other machines without TLS or credentials (insecure = true)",
            status.insecure.join(", ")
        )?;
    }
    let cluster = status.scope == Scope::Cluster;
    writeln!(
        out,
        "{}records in {} ({:.0}/s), jobs {} ({:.0}/s), connections {}, jobs waiting {}, produce-to-ack p50 {}us p99 {}us\n",
        if cluster { "the cluster's " } else { "" },
        status.records_in,
        status.records_in_per_sec,
        status.jobs_in,
        status.jobs_in_per_sec,
        status.connections_open,
        status.jobs_waiting,
        status.produce_latency_us.p50,
        status.produce_latency_us.p99
    )?;
    if let Some(shards) = status.shard_summary() {
        writeln!(out, "since start: {shards}\n")?;
    }
    if !status.peers.is_empty() {
        writeln!(
            out,
            "{:<24} {:<8} {:>5} {:>10} {:>11} {:>10} {:>8}",
            "PEER", "STATE", "CORES", "LAST SEEN", "PARTITIONS", "RECORDS/S", "JOBS/S"
        )?;
        for peer in &status.peers {
            let seen = match (peer.me, peer.last_seen_ms) {
                (true, _) => "(this one)".to_string(),
                (false, Some(ms)) => format!("{:.1}s ago", ms as f64 / 1000.0),
                (false, None) => "never".to_string(),
            };
            let (records, jobs) = status
                .rates_of(peer)
                .unwrap_or_else(|| ("-".to_string(), "-".to_string()));
            writeln!(
                out,
                "{:<24} {:<8} {:>5} {:>10} {:>11} {:>10} {:>8}{}",
                peer.addr,
                peer.state,
                peer.cores,
                seen,
                peer.partitions,
                records,
                jobs,
                if peer.disk_full {
                    "  DISK FULL: takes no writes until space is freed"
                } else {
                    ""
                }
            )?;
        }
        if let Some(group) = &status.metadata_group {
            writeln!(
                out,
                "metadata group: {} in term {}, leader {}, voters {}{}",
                group.role,
                group.term,
                group.leader.as_deref().unwrap_or("(none known)"),
                group.voters.join(" "),
                if group.learners.is_empty() {
                    String::new()
                } else {
                    format!(", learners {}", group.learners.join(" "))
                }
            )?;
        }
        for peer in &status.unanswered {
            writeln!(
                out,
                "NOT ANSWERED: {}: {} (its figures are missing above, and partitions only it holds below)",
                peer.addr, peer.why
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{:<20} {:>5} {}{:>5} {:>12} {:>12} {:>12}  consumers (lag)",
        "TOPIC",
        "PART",
        if cluster {
            format!("{:<22} ", "FROM PEER")
        } else {
            String::new()
        },
        "SHARD",
        "START",
        "NEXT",
        "DURABLE"
    )?;
    for topic in &status.topics {
        for p in &topic.partitions {
            let consumers: Vec<String> = p
                .consumers
                .iter()
                .map(|c| format!("{} ({})", c.name, c.lag))
                .collect();
            writeln!(
                out,
                "{:<20} {:>5} {}{:>5} {:>12} {:>12} {:>12}  {}{}{}",
                topic.name,
                p.partition,
                if cluster {
                    format!("{:<22} ", p.peer.as_deref().unwrap_or("-"))
                } else {
                    String::new()
                },
                p.shard,
                p.start_offset,
                p.next_offset,
                p.durable_offset,
                consumers.join(", "),
                crate::protocol::status::note(p.standing),
                crate::protocol::status::partition_notes(p)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
