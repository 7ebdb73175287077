//! What `GET /status`, `flowd status --json` and the status page show of a running
//! engine: its topics and partitions (with their readers and, in a cluster, where each
//! stands), its peers, and its front doors' counters. JSON, for clients to decode.

use serde::{Deserialize, Serialize};

/// The whole engine's state, as `GET /status` and `flowd status --json` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: f64,
    pub cores: usize,
    pub durability: String,
    pub listeners: Vec<String>,
    /// Listeners (and the peer port) other machines reach without TLS or credentials,
    /// bound because the operator said `insecure`; in a cluster's status, every peer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure: Vec<String>,
    pub topics: Vec<TopicStatus>,
    /// In a cluster: the engine's own topics (`__flowd.cursors.*`), apart from the
    /// dataflow's.
    #[serde(default)]
    pub internal_topics: Vec<TopicStatus>,
    pub jobs: Vec<String>,
    pub records_in: u64,
    pub records_in_per_sec: f64,
    pub bytes_in: u64,
    pub connections_open: u64,
    pub jobs_waiting: usize,
    /// Jobs taken at this door (request/reply), and per second lately.
    #[serde(default)]
    pub jobs_in: u64,
    #[serde(default)]
    pub jobs_in_per_sec: f64,
    /// Produce-to-ack latency; in a cluster's status, the highest of the peers' at each
    /// quantile.
    pub produce_latency_us: Quantiles,
    /// `peer`: the peer asked only (one machine, or `flowd status --local`); `cluster`:
    /// every peer that answered, put together by the peer asked. Counters and rates are
    /// then the cluster's sums, each partition is shown as its leader sees it, and each
    /// peer's own figures are in its `load`.
    #[serde(default)]
    pub scope: Scope,
    /// In a cluster's status: the peers whose own status did not come, and why. Their
    /// figures are missing from the sums, and partitions only they list are missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<Unanswered>,
    /// In a cluster: every peer this one knows, itself first. Empty on one machine.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// In a cluster: the metadata group (consensus) as this peer sees it.
    #[serde(default)]
    pub metadata_group: Option<GroupStatus>,
    /// How busy this peer's shards have been since it started (in a cluster's status,
    /// the peer asked; every peer's are in its `load`).
    #[serde(default)]
    pub shards: Vec<ShardLoad>,
}

/// One shard's time since the engine started: `busy` running tasks and polling I/O
/// (glommio's own count), `cpu` the CPU its thread used (the kernel's count, with the
/// short spin before it sleeps); the rest of `uptime_secs` it was idle, asleep.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShardLoad {
    pub shard: usize,
    pub busy_secs: f64,
    pub cpu_secs: f64,
}

impl Status {
    /// Each shard's busy and CPU time since start, and their share of the uptime, on
    /// one line (`None` without shard figures, from an older peer).
    pub fn shard_summary(&self) -> Option<String> {
        if self.shards.is_empty() {
            return None;
        }
        let share = |secs: f64| 100.0 * secs / self.uptime_secs.max(f64::MIN_POSITIVE);
        let parts: Vec<String> = self
            .shards
            .iter()
            .map(|s| {
                format!(
                    "shard {} busy {:.2}s ({:.1}%), cpu {:.2}s ({:.1}%)",
                    s.shard,
                    s.busy_secs,
                    share(s.busy_secs),
                    s.cpu_secs,
                    share(s.cpu_secs)
                )
            })
            .collect();
        Some(parts.join("; "))
    }

    /// A peer's own records and jobs per second, rounded: as it answered in a cluster's
    /// status, this status's own for the peer asked in its own, `None` if unknown.
    pub fn rates_of(&self, peer: &PeerStatus) -> Option<(String, String)> {
        let (records, jobs) = match (&peer.load, peer.me) {
            (Some(load), _) => (load.records_in_per_sec, load.jobs_in_per_sec),
            (None, true) => (self.records_in_per_sec, self.jobs_in_per_sec),
            (None, false) => return None,
        };
        Some((format!("{records:.0}"), format!("{jobs:.0}")))
    }
}

/// Whose status a document is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The peer asked, alone.
    #[default]
    Peer,
    /// Every peer that answered the peer asked.
    Cluster,
}

/// A peer whose status did not come into a cluster's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unanswered {
    pub addr: String,
    pub why: String,
}

/// One peer's own figures, in a cluster's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerLoad {
    pub records_in: u64,
    pub records_in_per_sec: f64,
    pub bytes_in: u64,
    pub jobs_in: u64,
    pub jobs_in_per_sec: f64,
    pub jobs_waiting: usize,
    pub connections_open: u64,
    pub produce_latency_us: Quantiles,
    #[serde(default)]
    pub shards: Vec<ShardLoad>,
}

/// The cluster's metadata group (Raft) as one peer sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// leader, follower, candidate or learner.
    pub role: String,
    pub term: u64,
    /// The group leader's peer address, if known.
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// The index of the last entry applied on this peer.
    pub applied: u64,
}

/// One peer as the peer asked sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its `--peer-listen` address.
    pub addr: String,
    /// alive, suspect or down.
    pub state: String,
    pub me: bool,
    pub cores: u16,
    /// Milliseconds since a frame last came from it; `None` for this peer or never.
    pub last_seen_ms: Option<u64>,
    /// Topic partitions it owns in this peer's view.
    pub partitions: usize,
    /// Its disk is full: it takes no writes until space is freed.
    #[serde(default)]
    pub disk_full: bool,
    /// In a cluster's status: its own figures, as it answered them (`None`: it did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<PeerLoad>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicStatus {
    pub name: String,
    pub partitions: Vec<PartitionStatus>,
    /// Its retention as the dataflow says it (`max_age 7d, max_bytes 1GiB`), or `none`.
    #[serde(default)]
    pub retention: String,
}

/// A retention policy as a person reads it.
pub fn retention_text(max_age_ms: Option<u64>, max_bytes: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(ms) = max_age_ms {
        parts.push(format!(
            "max_age {}",
            humantime::format_duration(std::time::Duration::from_millis(ms))
        ));
    }
    if let Some(bytes) = max_bytes {
        parts.push(format!(
            "max_bytes {}",
            bytesize::ByteSize::b(bytes).display().iec()
        ));
    }
    if parts.is_empty() {
        "none (kept until deleted)".into()
    } else {
        parts.join(", ")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quantiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// A replicated partition as the peer asked sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// leader, follower or none (this peer holds no replica now, or waits for a leader).
    pub role: String,
    pub epoch: u32,
    pub leader: Option<String>,
    pub replicas: Vec<String>,
    /// Peers copying the log to join the replicas (a move under way).
    #[serde(default)]
    pub learners: Vec<String>,
    /// On the leader: the set is not where placement puts it; a move is under way.
    #[serde(default)]
    pub moving: bool,
    /// The high-water mark: what a quorum holds durably; readers see up to here.
    pub hwm: u64,
    /// On the leader: each follower and how far it holds the log durably.
    pub followers: Vec<(String, u64)>,
    /// On the leader: replicas gossip shows alive, and how many a write needs.
    pub alive: usize,
    pub needed: usize,
    /// Replicas that do not hold their copy now: down (and when they are replaced), or
    /// back on another data directory.
    #[serde(default)]
    pub absent: Vec<AbsentReplica>,
    /// This peer's copy lost records (a damaged segment set aside, a missing
    /// directory): why. It copies them again from its leader and counts in no
    /// election or quorum until it holds every acked record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// A replica that does not hold its copy now, as the peer asked sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsentReplica {
    pub replica: String,
    /// `down` (may come back with its copy), `gone` (down for `--replace-after`: its
    /// place goes to a live peer), `waiting` (gone, and no live peer is free to take its
    /// place) or `emptied` (alive on another data directory: it copies the log again
    /// before it counts).
    pub state: String,
    /// How long it has been down, in seconds.
    #[serde(default)]
    pub down_secs: u64,
    /// Down: seconds until it is replaced.
    #[serde(default)]
    pub replaced_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    pub shard: usize,
    pub start_offset: u64,
    pub next_offset: u64,
    /// How far this peer's copy is durable on its disk (readers of a replicated
    /// partition see up to its high-water mark, `replica.hwm`).
    pub durable_offset: u64,
    pub segments: usize,
    pub bytes: u64,
    pub consumers: Vec<ConsumerStatus>,
    /// The named consumers (claim, ack; `flowd tail --group`, Kafka groups) of this
    /// partition.
    #[serde(default)]
    pub named: Vec<NamedConsumerStatus>,
    /// In a cluster: whether this peer serves the partition, or is still copying it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing: Option<Standing>,
    /// In a cluster, for a replicated topic: its replication as this peer sees it.
    #[serde(default)]
    pub replica: Option<ReplicaStatus>,
    /// In a cluster's status: the peer this row comes from (the partition's leader, or
    /// its owner when it is not replicated; another holder of it while none serves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// A read of this peer's copy met a batch that no longer matches its CRCs: what it
    /// said (reads stop before it until a restart; see `StorageError::DamagedOnRead`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub position: u64,
    pub lag: u64,
}

/// A named consumer's place in one partition, as the status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedConsumerStatus {
    pub group: String,
    pub committed: u64,
    /// Records held past the committed offset (from the partition's start at the least).
    pub lag: u64,
    /// The pending claim's records, if any.
    pub claimed: u64,
    pub reclaims: u32,
    /// `active` or `disabled`.
    pub state: String,
    /// Records retention deleted before it acked them.
    pub skipped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// Another peer owns it (or this one gave it up): batches for it are routed on.
    Away,
    /// This peer's view gives it here: the holders are fenced and their records copied
    /// in before anything else is written.
    Claiming,
    /// Owned and whole here: written and read like on a single machine.
    Serving,
}

/// What `flowd status` and the status page add to a partition this peer lists but does
/// not serve (yet, or any more).
pub fn note(standing: Option<Standing>) -> &'static str {
    match standing {
        Some(Standing::Claiming) => " [being copied in from its previous holder]",
        Some(Standing::Away) => " [handed to another peer]",
        Some(Standing::Serving) | None => "",
    }
}

/// What a replicated partition's row says after its consumers: this peer's role, the
/// epoch, the leader, the replicas and the high-water mark, and loudly when fewer
/// replicas are alive than a write needs. Empty for an unreplicated partition.
/// A partition row's notes: its replication (`replica_note`), and damage a read met.
pub fn partition_notes(p: &PartitionStatus) -> String {
    let unreadable = p
        .unreadable
        .as_ref()
        .map_or(String::new(), |why| format!("  [UNREADABLE: {why}]"));
    format!("{}{unreadable}", replica_note(p.replica.as_ref()))
}

pub fn replica_note(replica: Option<&ReplicaStatus>) -> String {
    let Some(r) = replica else {
        return String::new();
    };
    let under = if r.role == "leader" && r.alive < r.needed {
        format!(
            ", UNDER QUORUM: {} of {} needed alive, writes refused",
            r.alive, r.needed
        )
    } else {
        String::new()
    };
    let absent: String = r
        .absent
        .iter()
        .map(|a| match (a.state.as_str(), a.replaced_in_secs) {
            ("down", Some(left)) => format!(
                ", replica {} down {} s, replaced in {left} s",
                a.replica, a.down_secs
            ),
            ("gone", _) => format!(", replica {} down {} s, being replaced", a.replica, a.down_secs),
            ("waiting", _) => format!(
                ", replica {} down {} s, no live peer free to take its place",
                a.replica, a.down_secs
            ),
            ("emptied", _) => format!(
                ", replica {} back on another data directory, not counted until it copied the log again",
                a.replica
            ),
            (state, _) => format!(", replica {} {state}", a.replica),
        })
        .collect();
    let damaged = r.damaged.as_ref().map_or(String::new(), |why| {
        format!(", DAMAGED COPY being copied again, not counted until whole: {why}")
    });
    let moving = if !r.learners.is_empty() {
        format!(", moving: learners {} copy the log", r.learners.join(" "))
    } else if r.moving {
        ", moving".to_string()
    } else {
        String::new()
    };
    format!(
        "  [{} in epoch {}, leader {}, replicas {}, hwm {}{absent}{moving}{under}{damaged}]",
        r.role,
        r.epoch,
        r.leader.as_deref().unwrap_or("none"),
        r.replicas.join(" "),
        r.hwm
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicated_partition_under_its_quorum_says_so() {
        let mut r = ReplicaStatus {
            role: "leader".into(),
            epoch: 4,
            leader: Some("10.0.0.1:7300".into()),
            replicas: vec![
                "10.0.0.1:7300".into(),
                "10.0.0.2:7300".into(),
                "10.0.0.3:7300".into(),
            ],
            learners: Vec::new(),
            moving: false,
            hwm: 120,
            followers: Vec::new(),
            alive: 3,
            needed: 2,
            absent: Vec::new(),
            damaged: None,
        };
        assert_eq!(
            replica_note(Some(&r)),
            "  [leader in epoch 4, leader 10.0.0.1:7300, replicas 10.0.0.1:7300 10.0.0.2:7300 10.0.0.3:7300, hwm 120]"
        );
        r.alive = 1;
        assert!(replica_note(Some(&r)).ends_with(", UNDER QUORUM: 1 of 2 needed alive, writes refused]"));
        assert_eq!(replica_note(None), "");
    }

    #[test]
    fn replicas_that_do_not_hold_their_copy_say_why_and_when_they_are_replaced() {
        let absent = |state: &str, down_secs, replaced_in_secs| AbsentReplica {
            replica: "10.0.0.3:7300".into(),
            state: state.into(),
            down_secs,
            replaced_in_secs,
        };
        let mut r = ReplicaStatus {
            role: "follower".into(),
            epoch: 4,
            leader: Some("10.0.0.1:7300".into()),
            replicas: vec!["10.0.0.1:7300".into(), "10.0.0.3:7300".into()],
            learners: Vec::new(),
            moving: false,
            hwm: 120,
            followers: Vec::new(),
            alive: 1,
            needed: 2,
            absent: vec![absent("down", 42, Some(258))],
            damaged: None,
        };
        assert!(
            replica_note(Some(&r)).contains(", replica 10.0.0.3:7300 down 42 s, replaced in 258 s"),
            "{}",
            replica_note(Some(&r))
        );
        r.absent = vec![absent("gone", 301, None)];
        assert!(replica_note(Some(&r)).contains("down 301 s, being replaced"));
        r.absent = vec![absent("emptied", 0, None)];
        assert!(replica_note(Some(&r)).contains("back on another data directory, not counted"));
        r.damaged = Some("corrupt segment 0.seg".into());
        assert!(
            replica_note(Some(&r)).ends_with(
                "DAMAGED COPY being copied again, not counted until whole: corrupt segment 0.seg]"
            )
        );
    }
}
