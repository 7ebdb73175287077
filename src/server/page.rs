//! The status page at `GET /`: one self-contained HTML document a person reads in a
//! browser (cores, listeners, topics, partitions, offsets, consumers and lag, rates; in a
//! cluster every peer's, each partition from the peer leading it).
//! It reloads itself every few seconds; no scripts, no external assets.

use std::fmt::Write;

use crate::protocol::status::{Scope, Status};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(status: &Status) -> String {
    let cluster = status.scope == Scope::Cluster;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>flowd status</title><style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         th{{background:#f4f4f4}}td.l,th.l{{text-align:left}}</style></head><body>\
         <h1>flowd {}</h1><p>up {:.0} s &middot; {} cores &middot; durability {} &middot; {}</p>\
         <p>{}records in: {} ({:.0}/s) &middot; jobs: {} ({:.0}/s) &middot; bytes in: {} &middot; connections: {} &middot; jobs waiting: {} \
         &middot; produce-to-ack p50 {} &micro;s, p99 {} &micro;s</p>",
        escape(&status.version),
        status.uptime_secs,
        status.cores,
        escape(&status.durability),
        escape(&status.listeners.join(", ")),
        if cluster { "the cluster's " } else { "" },
        status.records_in,
        status.records_in_per_sec,
        status.jobs_in,
        status.jobs_in_per_sec,
        status.bytes_in,
        status.connections_open,
        status.jobs_waiting,
        status.produce_latency_us.p50,
        status.produce_latency_us.p99,
    );
    if let Some(shards) = status.shard_summary() {
        let _ = write!(html, "<p>since start: {}</p>", escape(&shards));
    }
    if !status.insecure.is_empty() {
        let _ = write!(
            html,
            "<p style=\"background:#fdd;padding:6px\"><b>insecure</b>: {} reachable from other machines \
             without TLS or credentials (insecure = true)</p>",
            escape(&status.insecure.join(", "))
        );
    }
    if !status.peers.is_empty() {
        html.push_str(
            "<h2>peers</h2><table><tr><th class=\"l\">address</th><th class=\"l\">state</th><th>cores</th>\
             <th>last seen</th><th>partitions</th><th>records/s</th><th>jobs/s</th></tr>",
        );
        for peer in &status.peers {
            let seen = match (peer.me, peer.last_seen_ms) {
                (true, _) => "this peer".to_string(),
                (false, Some(ms)) => format!("{:.1} s ago", ms as f64 / 1000.0),
                (false, None) => "never".to_string(),
            };
            let (records, jobs) = status
                .rates_of(peer)
                .unwrap_or_else(|| ("-".to_string(), "-".to_string()));
            let _ = write!(
                html,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&peer.addr),
                escape(&peer.state),
                peer.cores,
                seen,
                peer.partitions,
                records,
                jobs
            );
        }
        html.push_str("</table>");
        for peer in &status.unanswered {
            let _ = write!(
                html,
                "<p><strong>not answered: {}</strong>: {} (its figures are missing above, and partitions only it holds below)</p>",
                escape(&peer.addr),
                escape(&peer.why)
            );
        }
    }
    for topic in &status.topics {
        let _ = write!(
            html,
            "<h2>topic {}</h2><table><tr><th>partition</th>{}<th>shard</th><th>start</th><th>next</th>\
             <th>durable</th><th>segments</th><th>bytes</th><th class=\"l\">consumers (lag)</th></tr>",
            escape(&topic.name),
            if cluster {
                "<th class=\"l\">from peer</th>"
            } else {
                ""
            }
        );
        for p in &topic.partitions {
            let consumers: Vec<String> = p
                .consumers
                .iter()
                .map(|c| format!("{} ({})", escape(&c.name), c.lag))
                .collect();
            let _ = write!(
                html,
                "<tr><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}{}{}</td></tr>",
                p.partition,
                if cluster {
                    format!(
                        "<td class=\"l\">{}</td>",
                        escape(p.peer.as_deref().unwrap_or("-"))
                    )
                } else {
                    String::new()
                },
                p.shard,
                p.start_offset,
                p.next_offset,
                p.durable_offset,
                p.segments,
                p.bytes,
                consumers.join(", "),
                crate::protocol::status::note(p.standing),
                escape(&crate::protocol::status::replica_note(p.replica.as_ref()))
            );
        }
        html.push_str("</table>");
    }
    if !status.jobs.is_empty() {
        let jobs: Vec<String> = status.jobs.iter().map(|j| escape(j)).collect();
        let _ = write!(html, "<p>jobs: {}</p>", jobs.join(", "));
    }
    html.push_str("<p><a href=\"/status\">/status</a> (JSON) &middot; <a href=\"/metrics\">/metrics</a></p></body></html>");
    html
}
