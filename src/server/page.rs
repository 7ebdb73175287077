//! The console at `GET /`: one self-contained HTML document (its style and script
//! inline, nothing fetched from elsewhere). The overview is rendered here and reads
//! without scripts (cores, listeners, topics, partitions, offsets, the stages' and named
//! consumers' lag, rates; in a cluster every peer's, each partition from the peer
//! leading it); `page.js` adds live charts (`GET /history`), refreshes the overview, and
//! the topic (record browser, dead-letter replay) and consumer (reset, skip, disable,
//! resume, delete) pages, each change confirmed in a dialog.

use std::fmt::Write;

use crate::protocol::status::{Scope, Status};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Every named consumer: its lag, claims and state summed over the partitions, linked
/// to its own page.
fn named_consumers(html: &mut String, status: &Status) {
    #[derive(Default)]
    struct Sum {
        partitions: usize,
        lag: u64,
        claimed: u64,
        reclaims: u64,
        disabled: usize,
    }
    let mut sums: std::collections::BTreeMap<(&str, &str), Sum> = Default::default();
    for topic in &status.topics {
        for p in &topic.partitions {
            for c in &p.named {
                let sum = sums.entry((&topic.name, &c.group)).or_default();
                sum.partitions += 1;
                sum.lag += c.lag;
                sum.claimed += c.claimed;
                sum.reclaims += u64::from(c.reclaims);
                sum.disabled += usize::from(c.state != "active");
            }
        }
    }
    if sums.is_empty() {
        return;
    }
    html.push_str(
        "<h2>named consumers</h2><table id=\"named\"><tr><th class=\"l\">topic</th><th class=\"l\">consumer</th>\
         <th>partitions</th><th>lag</th><th>claimed</th><th>reclaims</th><th class=\"l\">state</th></tr>",
    );
    for ((topic, group), sum) in sums {
        let _ = write!(
            html,
            "<tr><td class=\"l\">{}</td><td class=\"l\"><a class=\"consumer\" href=\"#/consumer/{}/{}\">{}</a></td>\
             <td>{}</td><td class=\"lag\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            escape(topic),
            escape(&urlencoded(topic)),
            escape(&urlencoded(group)),
            escape(group),
            sum.partitions,
            sum.lag,
            sum.claimed,
            sum.reclaims,
            match sum.disabled {
                0 => "active".to_string(),
                n => format!("disabled on {n} partitions"),
            }
        );
    }
    html.push_str("</table>");
}

/// A name as one path segment of a link.
fn urlencoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The console for `status`; `session`: the name a browser logged in as (then a log-out
/// button), `None` where no login was needed or a token or certificate was given.
pub fn render(status: &Status, session: Option<&str>) -> String {
    let cluster = status.scope == Scope::Cluster;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\
         <title>flowd console</title><style>{STYLE}</style></head><body>\
         <dialog id=\"ask\"><form method=\"dialog\"><p id=\"ask-message\"></p><p><input id=\"ask-input\" size=\"30\"></p>\
         <button value=\"cancel\">cancel</button> <button id=\"ask-ok\" value=\"ok\">OK</button></form></dialog>\
         <h1>flowd {}</h1>{}<p id=\"said\"></p><section id=\"view\" hidden></section><main id=\"overview\"><div id=\"head\"><p>up {:.0} s &middot; {} cores &middot; durability {} &middot; {}</p>\
         <p>{}records in: {} ({:.0}/s) &middot; jobs: {} ({:.0}/s) &middot; bytes in: {} &middot; connections: {} &middot; jobs waiting: {} \
         &middot; produce-to-ack p50 {} &micro;s, p99 {} &micro;s</p>",
        escape(&status.version),
        session.map_or(String::new(), |name| format!(
            "<p id=\"who\">logged in as {} <button id=\"logout\">log out</button></p>",
            escape(name)
        )),
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
    html.push_str("</div><section id=\"charts\"></section><div id=\"tables\">");
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
            "<h2>topic <a class=\"topic\" href=\"#/topic/{}\">{}</a></h2><table><tr><th>partition</th>{}<th>shard</th><th>start</th><th>next</th>\
             <th>durable</th><th>segments</th><th>bytes</th><th class=\"l\">consumers (lag)</th></tr>",
            escape(&topic.name),
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
                escape(&crate::protocol::status::partition_notes(p))
            );
        }
        html.push_str("</table>");
    }
    if !status.jobs.is_empty() {
        let jobs: Vec<String> = status.jobs.iter().map(|j| escape(j)).collect();
        let _ = write!(html, "<p>jobs: {}</p>", jobs.join(", "));
    }
    named_consumers(&mut html, status);
    let _ = write!(
        html,
        "<p><a href=\"/status\">/status</a> (JSON) &middot; <a href=\"/metrics\">/metrics</a> &middot; \
         <a href=\"/history\">/history</a></p></div></main><script>{SCRIPT}</script></body></html>"
    );
    html
}
