//! Replicated partitions on this peer: the role it plays in each (leader, follower or
//! neither, for one epoch), what a leader counts towards its quorum, and what a follower
//! does to keep its copy equal to the leader's.
//!
//! - The metadata group decides each partition's leader, replicas and epoch; `watch`
//!   turns what it decided into roles here (`ReplicaRequest::Role` on the owner shard).
//! - A leader (`leader.rs`) appends what producers send, stamped with its epoch, and
//!   acks a batch once the high-water mark passed it: the offset a majority of the
//!   replicas hold durably in copies of the leader's view (a follower's copy counts once
//!   the leader found it a prefix of its own and the follower recorded that, durably, as
//!   its view). Readers see no further (`set_commit_limit`).
//! - A follower (`follower.rs`) runs a thread that asks the leader for the batches after
//!   its copy, with the epoch of its last batch: the leader answers with batches
//!   (appended as they are, at the same offsets) or with where the copies diverge (the
//!   follower cuts its copy back there). Each fetch says how far the follower is
//!   durable: that is what the leader counts.
//!
//! This file holds the state every side shares (roles, epochs, promises and views, the
//! quorum), the shard's side of each request, and `watch`.
//! - Fencing: before the metadata group's leader chooses a new leader for epoch E, a
//!   majority of the replicas promise (durably, `DATA_DIR/cluster/promises`) to take
//!   nothing from an epoch below E and say their view and end; the longest copy of the
//!   latest view leads (`controller.rs` says why). A leader cut off from that majority
//!   can append but never ack again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::cluster::PeerId;
use crate::cluster::replication::{Fenced, ReplicaFetch};
use crate::runtime::cluster::copy_pace::CopyPace;
use crate::runtime::cluster::peers::Peers;
use crate::runtime::cluster::{follower, leader};
use crate::runtime::error::EngineError;
use crate::runtime::placement::owner;
use crate::runtime::service::ShardRequest;
use crate::runtime::shard::{Shard, Shared};
use crate::storage::io;

pub(super) const NONE: u8 = 0;
pub(super) const LEADER: u8 = 1;
pub(super) const FOLLOWER: u8 = 2;

/// How often `watch` looks at the metadata when it did not change.
const WATCH_ROUND: Duration = Duration::from_millis(50);

/// One partition's replication state on this peer, shared by its shard (the only one
/// that changes the log) and the threads that read it.
#[derive(Default)]
pub struct ReplicaState {
    pub(super) role: AtomicU8,
    /// The epoch this peer leads or follows under.
    pub(super) epoch: AtomicU32,
    /// The highest epoch it promised in a fence: nothing older is taken.
    pub(super) promised: AtomicU32,
    /// The epoch of the last leader whose log this copy is known to be a prefix of (the
    /// leader's own epoch on a leader): elections compare copies by it, then by their
    /// ends (Viewstamped Replication's rule), and a leader counts a follower's copy
    /// towards its quorum only once it is of the leader's epoch.
    pub(super) view: AtomicU32,
    /// Why this copy lost records it may have been counted for (a corrupt segment moved
    /// aside at start, its directory gone), until it holds its leader's high-water mark
    /// again: meanwhile it answers fences and fetches as another copy than the one the
    /// metadata records (`copy_id`), so it is counted in no election and no quorum.
    pub(super) damaged: Mutex<Option<String>>,
    /// The high-water mark: a leader's own, a follower's as its leader last said.
    pub(super) hwm: AtomicU64,
    /// A leader's: where its epoch began (its log's end when it took the lead).
    pub(super) start: AtomicU64,
    pub(super) quorum: Mutex<Quorum>,
}

#[derive(Default)]
pub(super) struct Quorum {
    pub(super) replicas: Vec<SocketAddr>,
    /// Peers copying the log to join the replicas; never counted towards the quorum.
    pub(super) learners: Vec<SocketAddr>,
    pub(super) leader: Option<SocketAddr>,
    /// The storage id the metadata records for each replica: a follower's fetch from
    /// another data directory (wiped, replaced) is not counted until a new epoch
    /// records that one (absent: recorded before storage ids, any counts).
    pub(super) storage: BTreeMap<SocketAddr, u64>,
    /// How far each follower said it holds the leader's records durably, this epoch.
    pub(super) ends: HashMap<SocketAddr, u64>,
}

impl Quorum {
    /// Whether a copy at `addr` on the data directory `storage` is the one the metadata
    /// records there (or none is recorded).
    pub(super) fn recorded(&self, addr: SocketAddr, storage: u64) -> bool {
        self.storage.get(&addr).is_none_or(|s| *s == storage)
    }
}

/// What a replica looks like on `flowd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub role: &'static str,
    pub epoch: u32,
    pub leader: Option<SocketAddr>,
    pub replicas: Vec<SocketAddr>,
    pub learners: Vec<SocketAddr>,
    pub hwm: u64,
    /// Leader only: how far each follower holds the log durably.
    pub followers: Vec<(SocketAddr, u64)>,
}

impl ReplicaState {
    pub fn is_leader(&self, epoch: u32) -> bool {
        self.role.load(Ordering::Acquire) == LEADER && self.epoch.load(Ordering::Acquire) == epoch
    }

    /// Whether this peer follows the partition in `epoch` and promised nothing newer.
    pub fn follows(&self, epoch: u32) -> bool {
        self.role.load(Ordering::Acquire) == FOLLOWER
            && self.epoch.load(Ordering::Acquire) == epoch
            && self.promised.load(Ordering::Acquire) <= epoch
    }

    /// Whether another peer leads the partition and this one follows it.
    pub fn is_follower(&self) -> bool {
        self.role.load(Ordering::Acquire) == FOLLOWER
    }

    /// The highest epoch it promised in a fence.
    pub fn promised(&self) -> u32 {
        self.promised.load(Ordering::Acquire)
    }

    /// The epoch this peer leads or follows under (or did last).
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether this copy is a prefix of the current epoch leader's log, durably past
    /// where that epoch began (`ReplicaState::view`).
    pub fn is_viewed(&self) -> bool {
        self.view.load(Ordering::Acquire) == self.epoch()
    }

    pub fn leads(&self) -> Option<u32> {
        (self.role.load(Ordering::Acquire) == LEADER).then(|| self.epoch.load(Ordering::Acquire))
    }

    pub fn hwm(&self) -> u64 {
        self.hwm.load(Ordering::Acquire)
    }

    /// A leader's: where its epoch began (its log's end when it took the lead). Every
    /// record an earlier leader let anything read lies below it.
    pub fn epoch_start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Why this copy is damaged, while it is (`ReplicaState::damaged`).
    pub fn damage(&self) -> Option<String> {
        self.damaged.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this copy is damaged (without copying why): asked at every fetch.
    pub fn is_damaged(&self) -> bool {
        self.damaged.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub(super) fn quorum(&self) -> std::sync::MutexGuard<'_, Quorum> {
        self.quorum.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn view(&self) -> ReplicaView {
        let quorum = self.quorum();
        let role = self.role.load(Ordering::Acquire);
        ReplicaView {
            role: match role {
                LEADER => "leader",
                FOLLOWER => "follower",
                _ => "none",
            },
            epoch: self.epoch.load(Ordering::Acquire),
            leader: quorum.leader,
            replicas: quorum.replicas.clone(),
            learners: quorum.learners.clone(),
            hwm: self.hwm(),
            followers: if role == LEADER {
                let mut ends: Vec<(SocketAddr, u64)> = quorum.ends.iter().map(|(a, e)| (*a, *e)).collect();
                ends.sort();
                ends
            } else {
                Vec::new()
            },
        }
    }
}

/// A topic as replication sees it.
#[derive(Debug, Clone)]
pub struct ReplicatedTopic {
    pub name: String,
    pub partitions: u32,
    /// Copies wanted of each partition (1: not replicated; ownership by gossip).
    pub replicas: u32,
    /// The dataflow named no count: partitions are placed on every live peer while
    /// fewer than `replicas` live, and their sets grow as peers join. A named count
    /// waits until that many peers live.
    pub auto: bool,
}

/// Every replicated partition of this peer.
pub struct Replication {
    pub me: PeerId,
    pub(super) topics: Vec<ReplicatedTopic>,
    /// The run this peer had when it began to leave (0: it stays). Announcing the leave
    /// renews its gossip identity; what it leads under that run it keeps leading until
    /// the metadata group moves the leadership, so that its batches in flight are acked.
    pub leaving_run: AtomicU64,
    /// The pace of copies to peers not counted yet (`copy_pace.rs`).
    pub copy_pace: CopyPace,
    states: Vec<Vec<Arc<ReplicaState>>>,
    promises: Mutex<PathBuf>,
}

/// One partition's entry in `DATA_DIR/cluster/promises` (JSON, by `topic/partition`):
/// `[promised, view]`, or with `damaged` (why the copy lost records) while it is.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Promise {
    Whole(u32, u32),
    Damaged {
        promised: u32,
        view: u32,
        damaged: String,
    },
}

/// What the engine found at start about a replicated partition's copy.
pub enum Found {
    /// Its directory did not exist (made empty now).
    Missing,
    /// Its files were damaged and moved aside (why).
    Damaged(String),
}

impl Replication {
    /// Loads the promises this peer made before (a restart keeps them), and marks,
    /// durably, every copy `found` damaged, or missing where it held a view, before
    /// anything is served: such a copy counts nowhere until it is whole again.
    pub fn open(
        me: PeerId,
        topics: Vec<ReplicatedTopic>,
        data_dir: &Path,
        copy_rate: u64,
        found: Vec<(usize, u32, Found)>,
    ) -> Result<Replication, String> {
        let path = data_dir.join("cluster").join("promises");
        let promised: BTreeMap<String, Promise> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} does not decode ({e}); it holds the epochs this peer promised: move it away only if this peer's data goes too",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let states = topics
            .iter()
            .map(|topic| {
                (0..topic.partitions)
                    .map(|p| {
                        let state = ReplicaState::default();
                        let (epoch, view, damaged) = match promised.get(&format!("{}/{p}", topic.name)) {
                            Some(Promise::Whole(epoch, view)) => (*epoch, *view, None),
                            Some(Promise::Damaged {
                                promised,
                                view,
                                damaged,
                            }) => (*promised, *view, Some(damaged.clone())),
                            None => (0, 0, None),
                        };
                        state.promised.store(epoch, Ordering::Release);
                        state.view.store(view, Ordering::Release);
                        *state.damaged.lock().unwrap_or_else(|e| e.into_inner()) = damaged;
                        Arc::new(state)
                    })
                    .collect()
            })
            .collect();
        let replication = Replication {
            me,
            topics,
            leaving_run: AtomicU64::new(0),
            copy_pace: CopyPace::new(copy_rate),
            states,
            promises: Mutex::new(path),
        };
        for (t, p, what) in found {
            let name = &replication.topics[t].name;
            let why = match what {
                Found::Damaged(why) => why,
                // Missing where it held a view: it may have been counted for records.
                Found::Missing if replication.view(t, p) > 0 => {
                    format!("the directory of partition {p} of \"{name}\" was missing")
                }
                Found::Missing => continue,
            };
            tracing::warn!(
                "partition {p} of \"{name}\": {why}; this copy counts in no election and no quorum until it has copied \
                 every acked record again from its leader"
            );
            replication.damage(t, p, why)?;
        }
        Ok(replication)
    }

    /// The run this peer had when it began to leave, if it leaves.
    pub fn leaving(&self) -> Option<u64> {
        Some(self.leaving_run.load(Ordering::Acquire)).filter(|run| *run != 0)
    }

    pub fn is_replicated(&self, topic: usize) -> bool {
        self.topics[topic].replicas > 1
    }

    pub fn topics(&self) -> &[ReplicatedTopic] {
        &self.topics
    }

    pub fn state(&self, topic: usize, partition: u32) -> &Arc<ReplicaState> {
        &self.states[topic][partition as usize]
    }

    /// Why a client may not read the partition here yet: this peer leads it in an
    /// epoch that began above its high-water mark (its log's end when it took the lead,
    /// acked records of the earlier leader among them) and no majority has confirmed it
    /// yet, so the readers' limit lies below records that were acked. Answering would
    /// show the partition shorter than it is (a tail would end there, a length would
    /// count less); the reader is told to ask again instead, as Kafka's new leader
    /// answers offset requests until its mark reaches its epoch's start (KIP-207).
    /// `None` when it may read (any other role is refused elsewhere).
    pub fn unconfirmed(&self, topic: usize, partition: u32) -> Option<EngineError> {
        if !self.is_replicated(topic) {
            return None;
        }
        let state = self.state(topic, partition);
        let (hwm, start) = (state.hwm(), state.epoch_start());
        if state.role.load(Ordering::Acquire) != LEADER || hwm >= start {
            return None;
        }
        Some(EngineError::Unavailable(format!(
            "partition {partition} of {:?} has a new leader here, whose followers have not yet confirmed the records before its epoch (offsets {hwm} to {start}): reading now would show the partition shorter than it is; ask again in a moment",
            self.topics[topic].name
        )))
    }

    /// Promises, durably, to take nothing from an epoch below `epoch` for the partition;
    /// false if it had promised a higher one already.
    pub fn promise(&self, topic: usize, partition: u32, epoch: u32) -> Result<bool, String> {
        let path = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.state(topic, partition);
        let promised = state.promised.load(Ordering::Acquire);
        if promised > epoch {
            return Ok(false);
        }
        if promised < epoch {
            state.promised.store(epoch, Ordering::Release);
            self.save(&path)?;
        }
        Ok(true)
    }

    /// The id this copy answers fences and fetches with: the peer's storage id, or, while
    /// the copy is damaged, another that the metadata records for no replica (so that
    /// the copy counts nowhere until it is whole again).
    pub fn copy_id(&self, topic: usize, partition: u32) -> u64 {
        if self.state(topic, partition).is_damaged() {
            !self.me.storage
        } else {
            self.me.storage
        }
    }

    /// Marks, durably, the copy as damaged (`why`): its view is forgotten and it is
    /// counted nowhere until `healed`.
    pub fn damage(&self, topic: usize, partition: u32, why: String) -> Result<(), String> {
        let path = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.state(topic, partition);
        *state.damaged.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        state.view.store(0, Ordering::Release);
        self.save(&path)
    }

    /// Marks, durably, a damaged copy whole again: it holds its leader's high-water
    /// mark in a copy of the leader's view, so every record acked so far.
    pub fn healed(&self, topic: usize, partition: u32) -> Result<(), String> {
        let path = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        *self
            .state(topic, partition)
            .damaged
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.save(&path)
    }

    /// Records, durably, that this copy is a prefix of the log of `epoch`'s leader.
    /// Views only move forward: a follower thread of an epoch that just ended, still
    /// finishing its last fetch, must not set an older view over a newer one (its copy
    /// would then lose an election it should win, and its newer records with it).
    pub fn set_view(&self, topic: usize, partition: u32, epoch: u32) -> Result<(), String> {
        let path = self.promises.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.state(topic, partition);
        if state.view.load(Ordering::Acquire) >= epoch {
            return Ok(());
        }
        state.view.store(epoch, Ordering::Release);
        self.save(&path)
    }

    pub fn view(&self, topic: usize, partition: u32) -> u32 {
        self.state(topic, partition).view.load(Ordering::Acquire)
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        let mut all = BTreeMap::new();
        for (t, topic) in self.topics.iter().enumerate() {
            let name = &topic.name;
            for p in 0..topic.partitions {
                let state = &self.states[t][p as usize];
                let promised = state.promised.load(Ordering::Acquire);
                let view = state.view.load(Ordering::Acquire);
                match state.damage() {
                    Some(damaged) => {
                        all.insert(
                            format!("{name}/{p}"),
                            Promise::Damaged {
                                promised,
                                view,
                                damaged,
                            },
                        );
                    }
                    None if promised > 0 || view > 0 => {
                        all.insert(format!("{name}/{p}"), Promise::Whole(promised, view));
                    }
                    None => {}
                }
            }
        }
        let bytes = serde_json::to_vec(&all).expect("promises serialize");
        io::replace(path, &bytes, true)
            .map_err(|e| format!("cannot record a promise in {}: {e}", path.display()))
    }
}

/// What a shard does for replication, on the shard that owns the partition.
pub enum ReplicaRequest {
    /// Lead, follow or leave the partition, as the metadata says.
    Role {
        topic: usize,
        partition: u32,
        role: Role,
    },
    /// A follower's fetch, answered with a whole frame on `reply`.
    Fetch {
        topic: usize,
        partition: u32,
        from: SocketAddr,
        request: u64,
        fetch: ReplicaFetch,
        reply: flume::Sender<Vec<u8>>,
    },
    /// Where this copy ends, the epoch of its last batch and how far it is durable.
    Position {
        topic: usize,
        partition: u32,
        reply: flume::Sender<(u64, u32, u64)>,
    },
    /// Changes this copy as its leader said, only while this peer still follows in
    /// `following` (a fetch thread of an epoch that ended must not change the copy a
    /// new epoch's leader is filling).
    Change {
        topic: usize,
        partition: u32,
        following: u32,
        change: CopyChange,
        reply: flume::Sender<Result<(), String>>,
    },
    /// A fence for `epoch` (promised already): stop leading an older epoch, say how far
    /// the copy goes.
    Fence {
        topic: usize,
        partition: u32,
        epoch: u32,
        reply: flume::Sender<Fenced>,
    },
}

/// What a leader's answer makes a follower do to its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyChange {
    /// Cut back where it diverges from the leader's: the leader's records of epochs up
    /// to `epoch` end at `end` (KIP-101).
    CutBack { epoch: u32, end: u64 },
    /// Drop it and start it again, empty, at `start`, where the leader's log begins
    /// (retention deleted the records between there on the leader).
    StartAt { start: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    None,
    Leader {
        epoch: u32,
        replicas: Vec<SocketAddr>,
        learners: Vec<SocketAddr>,
        storage: BTreeMap<SocketAddr, u64>,
    },
    /// A replica's follower, or a learner's (`replicas` does not hold it then).
    Follower {
        epoch: u32,
        leader: SocketAddr,
        replicas: Vec<SocketAddr>,
    },
}

/// Handles a replication request on the shard owning its partition.
pub async fn handle(shard: &Rc<Shard>, request: ReplicaRequest) {
    let Some(replication) = shard.shared.peers.as_ref().map(|p| Arc::clone(&p.replication)) else {
        return;
    };
    match request {
        ReplicaRequest::Role {
            topic,
            partition,
            role,
        } => set_role(shard, &replication, topic, partition, role),
        ReplicaRequest::Fetch {
            topic,
            partition,
            from,
            request,
            fetch,
            reply,
        } => {
            let shard = Rc::clone(shard);
            let task_shard = Rc::clone(&shard);
            shard.tasks.spawn(async move {
                let frame =
                    leader::serve_fetch(&task_shard, &replication, topic, partition, from, request, &fetch)
                        .await;
                let _ = reply.send_async(frame).await;
            });
        }
        ReplicaRequest::Position {
            topic,
            partition,
            reply,
        } => {
            let position = {
                let log = shard.partition(topic, partition).log.borrow();
                (log.next_offset(), log.last_epoch(), log.durable_offset())
            };
            let _ = reply.send_async(position).await;
        }
        ReplicaRequest::Change {
            topic,
            partition,
            following,
            change,
            reply,
        } => {
            if !replication.state(topic, partition).follows(following) {
                let stale = format!("this peer no longer follows the partition in epoch {following}");
                let _ = reply.send_async(Err(stale)).await;
                return;
            }
            let name = &replication.topics[topic].name;
            let local = Rc::clone(shard.partition(topic, partition));
            let changed = {
                let mut log = local.log.borrow_mut();
                let changed = match change {
                    CopyChange::CutBack { epoch, end } => {
                        let (_, own_end) = log.epoch_end(epoch);
                        let to = end.min(own_end);
                        tracing::warn!(
                            topic = %name,
                            partition,
                            "this replica's copy diverged from its leader's at offset {to}: the {} records after it, never acked, are cut",
                            log.next_offset().saturating_sub(to)
                        );
                        log.truncate(to)
                    }
                    // A stale answer: the copy reaches the leader's start already.
                    CopyChange::StartAt { start } if log.next_offset() >= start => Ok(()),
                    CopyChange::StartAt { start } => {
                        tracing::warn!(
                            topic = %name,
                            partition,
                            "this replica's copy ends at offset {} but its leader's log begins at {start} (retention deleted the records between there): the copy's {} records are dropped and it copies on from {start}",
                            log.next_offset(),
                            log.next_offset() - log.start_offset()
                        );
                        log.restart_at(start)
                    }
                };
                changed.map(|()| log.next_offset()).map_err(|e| e.to_string())
            };
            if let Ok(end) = changed {
                shard.shared.ends[topic][partition as usize].store(end, Ordering::Release);
            }
            let _ = reply.send_async(changed.map(|_| ())).await;
        }
        ReplicaRequest::Fence {
            topic,
            partition,
            epoch,
            reply,
        } => {
            let state = replication.state(topic, partition);
            if state.role.load(Ordering::Acquire) != NONE && state.epoch.load(Ordering::Acquire) < epoch {
                set_role(shard, &replication, topic, partition, Role::None);
            }
            let answer = {
                let log = shard.partition(topic, partition).log.borrow();
                Fenced {
                    view: replication.view(topic, partition),
                    end: log.next_offset(),
                    hwm: state.hwm(),
                    storage: replication.copy_id(topic, partition),
                }
            };
            let _ = reply.send_async(answer).await;
        }
    }
}

fn set_role(shard: &Rc<Shard>, replication: &Replication, topic: usize, partition: u32, role: Role) {
    let state = replication.state(topic, partition);
    let local = shard.partition(topic, partition);
    let peers = shard
        .shared
        .peers
        .as_ref()
        .expect("replication runs in a cluster");
    let mut log = local.log.borrow_mut();
    let mut quorum = state.quorum();
    // What a look found for producers sending again holds for one role only.
    local.held.borrow_mut().clear();
    match role {
        Role::Leader {
            epoch,
            replicas,
            learners,
            storage,
        } => {
            if let Err(error) = replication.set_view(topic, partition, epoch) {
                tracing::error!("cannot lead partition {partition}: {error}");
                shard
                    .shared
                    .control
                    .fail(crate::runtime::error::RuntimeError::Shard {
                        shard: shard.index,
                        reason: error,
                    });
                return;
            }
            log.set_leader_epoch(epoch);
            *quorum = Quorum {
                replicas,
                learners,
                leader: Some(replication.me.addr),
                storage,
                ends: HashMap::new(),
            };
            state.start.store(log.next_offset(), Ordering::Release);
            state.epoch.store(epoch, Ordering::Release);
            state.role.store(LEADER, Ordering::Release);
            let visible = state.hwm().min(log.next_offset());
            log.set_commit_limit(Some(visible));
            peers.ownership.serve(topic, partition);
            tracing::info!(
                topic = %replication.topics[topic].name,
                partition,
                "leading in epoch {epoch} from offset {}",
                log.next_offset()
            );
        }
        Role::Follower {
            epoch,
            leader,
            replicas,
        } => {
            peers.ownership.fence(topic, partition);
            *quorum = Quorum {
                replicas,
                learners: Vec::new(),
                leader: Some(leader),
                storage: BTreeMap::new(),
                ends: HashMap::new(),
            };
            state.epoch.store(epoch, Ordering::Release);
            state.role.store(FOLLOWER, Ordering::Release);
            // Its stages and readers see nothing more here: the leader's do.
            let frozen = log.committed_offset();
            log.set_commit_limit(Some(frozen));
        }
        Role::None => {
            peers.ownership.fence(topic, partition);
            state.role.store(NONE, Ordering::Release);
            quorum.leader = None;
            let frozen = log.committed_offset();
            log.set_commit_limit(Some(frozen));
        }
    }
    drop(quorum);
    drop(log);
    local.woken();
    // Before this shard takes another batch for the partition.
    shard.role_changed(topic, partition);
}

/// Keeps this peer's roles in step with the metadata, and a fetcher running for each
/// partition it follows; runs until the engine stops.
pub fn watch(peers: Weak<Peers>) {
    let mut acted: HashMap<(usize, u32), Role> = HashMap::new();
    let mut seen_version = u64::MAX;
    let mut seen_run = 0;
    loop {
        std::thread::sleep(WATCH_ROUND);
        let Some(peers) = peers.upgrade() else { return };
        let Some(shared) = peers.shared() else { return };
        if shared.control.is_stopping() {
            return;
        }
        let metadata_cell = peers.cluster.consensus.metadata();
        let version = metadata_cell.version();
        let replication = &peers.replication;
        let promised_changed = acted.iter().any(|(&(t, p), role)| match role {
            Role::Leader { epoch, .. } | Role::Follower { epoch, .. } => {
                replication.state(t, p).promised.load(Ordering::Acquire) > *epoch
            }
            Role::None => false,
        });
        let run = peers.cluster.view.get().me.bump;
        if version == seen_version && run == seen_run && !promised_changed {
            continue;
        }
        seen_version = version;
        seen_run = run;
        let metadata = metadata_cell.get();
        // Its identity as gossip has it now: a peer declared down and back, or leaving,
        // is a new run (`PeerId::bump`), and what it led before is chosen anew.
        let me = peers.cluster.view.get().me;
        for (t, topic) in replication.topics.iter().enumerate() {
            if topic.replicas <= 1 {
                continue;
            }
            let name = &topic.name;
            for p in 0..topic.partitions {
                let promised = replication.state(t, p).promised.load(Ordering::Acquire);
                let role = match metadata.assignment(name, p) {
                    Some(a) if a.epoch < promised => Role::None,
                    Some(a)
                        if a.leader == me.addr
                            && (a.leader_run == me.bump || Some(a.leader_run) == replication.leaving()) =>
                    {
                        Role::Leader {
                            epoch: a.epoch,
                            replicas: a.replicas.clone(),
                            learners: a.learners.clone(),
                            storage: a.storage.clone(),
                        }
                    }
                    Some(a)
                        if a.leader != me.addr
                            && (a.replicas.contains(&me.addr) || a.learners.contains(&me.addr)) =>
                    {
                        Role::Follower {
                            epoch: a.epoch,
                            leader: a.leader,
                            replicas: a.replicas.clone(),
                        }
                    }
                    _ => Role::None,
                };
                if acted.get(&(t, p)) == Some(&role) {
                    continue;
                }
                let service = &shared.services[owner(p, shared.shards)];
                let request = ShardRequest::Replica(ReplicaRequest::Role {
                    topic: t,
                    partition: p,
                    role: role.clone(),
                });
                if service.send(request).is_err() {
                    return;
                }
                if let Role::Follower { epoch, leader, .. } = &role {
                    let (peers, epoch, leader) = (Arc::downgrade(&peers), *epoch, *leader);
                    let _ = std::thread::Builder::new()
                        .name("flowd-replica".into())
                        .spawn(move || follower::follow(peers, t, p, epoch, leader));
                }
                acted.insert((t, p), role);
            }
        }
    }
}

/// Fences this peer's replica of a partition with `epoch`: promises it, durably, then
/// has its shard stop leading an older epoch; answers its view, end and high-water
/// mark. With the current epoch, a look that changes nothing.
pub fn fence(shared: &Shared, topic: usize, partition: u32, epoch: u32) -> Result<Fenced, String> {
    let peers = shared.peers.as_ref().ok_or("not in a cluster")?;
    if !peers.replication.promise(topic, partition, epoch)? {
        return Err(format!("this replica promised an epoch above {epoch} already"));
    }
    let (tx, rx) = flume::bounded(1);
    let fence = ShardRequest::Replica(ReplicaRequest::Fence {
        topic,
        partition,
        epoch,
        reply: tx,
    });
    shared.services[owner(partition, shared.shards)]
        .send(fence)
        .map_err(|_| "the engine is stopping".to_string())?;
    rx.recv_timeout(Duration::from_secs(2))
        .map_err(|_| "the shard did not answer the fence in time".to_string())
}

/// How many of a partition's replicas gossip shows alive on the data directory the
/// metadata records for them, and how many a write needs.
pub fn replicas_alive(peers: &Peers, state: &ReplicaState) -> (usize, usize) {
    let view = peers.cluster.view.get();
    let quorum = state.quorum();
    let alive = quorum
        .replicas
        .iter()
        .filter(|r| {
            view.member(**r)
                .is_some_and(|id| quorum.recorded(**r, id.storage))
        })
        .count();
    (alive, quorum.replicas.len() / 2 + 1)
}
