//! Turning a `DataflowSpec` into running shards: open every partition, load progress,
//! scan outputs for what a crashed run already wrote, place every task on the core that
//! owns its data, and start one pinned executor per core.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::cluster::Cluster;
use crate::config::{Cores, DataflowSpec, OpSpec};
use crate::metrics::Metrics;
use crate::runtime::cluster::peers::Peers;
use crate::runtime::cluster::replica::Found;
use crate::runtime::cluster::service::PeerService;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::exec_stage::ExecTask;
use crate::runtime::journal_recovery::{self, ShardJournal};
use crate::runtime::mesh;
use crate::runtime::progress::{self, Progress};
use crate::runtime::provenance::{self, Point, source_producer, stage_producer};
use crate::runtime::reply::{self, ReplyTask};
use crate::runtime::service::{self, SERVICE_CHANNEL_MAX, ShardRequest};
use crate::runtime::shard::{Control, LocalPartition, Shard, Shared};
use crate::runtime::sink::{ForwarderTask, SINK_CHANNEL_CHUNKS_MAX, SinkChunk, WriterTask};
use crate::runtime::source::SourceTask;
use crate::runtime::stage::StageTask;
use crate::runtime::{Doors, consumers, exec_stage, placement, scatter_stage, sink, source, stage};
use crate::storage::{LogOptions, PartitionLog, layout};

/// Everything one shard is given.
#[derive(Default)]
pub struct ShardPlan {
    /// (topic, partition, log, max_lag) of every partition the shard owns.
    partitions: Vec<(usize, u32, PartitionLog, u64)>,
    inboxes: mesh::Inboxes,
    stages: Vec<StageTask>,
    sources: Vec<SourceTask>,
    forwarders: Vec<ForwarderTask>,
    writers: Vec<(WriterTask, flume::Receiver<SinkChunk>)>,
    /// Sinks in a cluster, each reading its topic through the partitions' leaders.
    clustered_sinks: Vec<WriterTask>,
    replies: Vec<ReplyTask>,
    service: Option<flume::Receiver<ShardRequest>>,
    journal: Option<ShardJournal>,
}

pub struct Plan {
    pub shared: Arc<Shared>,
    pub shards: Vec<ShardPlan>,
    /// Tasks that end when the input does, if every input is bounded.
    pub finishable: Option<usize>,
}

// A plan crosses to its shard's thread: every field is plain data, a channel, or a
// PartitionLog, which owns its files and syncer outright.
fn assert_send<T: Send>() {}
const _: fn() = assert_send::<ShardPlan>;

pub fn plan(mut spec: DataflowSpec, cluster: Option<Arc<Cluster>>) -> Result<Plan> {
    let shards = core_count(spec.engine.cores)?;
    if cluster.is_some() {
        // The named consumers' cursors of each replicated topic follow its partitions'
        // lead through a replicated topic of their own (`consumers/follow.rs`).
        let cursors = crate::runtime::consumers::cursor_topics(&spec);
        spec.topics.extend(cursors);
        // A source (a sink) runs where partition 0 of its topic is led (`source.rs`,
        // `sink/`), which needs a replicated topic: one copy has no lead to follow, and
        // each peer would read (write). With `per_peer` each peer does, on purpose.
        let one_copy = |topic: usize| spec.topics[topic].replicas == Some(1);
        if let Some(source) = spec.sources.iter().find(|s| !s.per_peer && one_copy(s.to)) {
            return Err(RuntimeError::NotClusterable {
                what: "the source",
                name: source.name.clone(),
                why: "it runs on the peer leading partition 0 of its topic, and a topic of `replicas = 1` \
                      has no lead that moves to another peer; give the topic more replicas, or say \
                      `per_peer = true` for every peer to read its own file",
            });
        }
        if let Some(sink) = spec.sinks.iter().find(|s| !s.per_peer && one_copy(s.from)) {
            return Err(RuntimeError::NotClusterable {
                what: "the sink",
                name: sink.name.clone(),
                why: "it runs on the peer leading partition 0 of its topic, and a topic of `replicas = 1` \
                      has no lead that moves to another peer; give the topic more replicas, or say \
                      `per_peer = true` for every peer to write every record to its own file",
            });
        }
    }
    let data_dir = spec.engine.data_dir.clone();
    private_data_dir(&data_dir)?;
    let producers = producers_by_topic(&spec);
    let bounded = bounded_topics(&spec);
    let mut plans: Vec<ShardPlan> = (0..shards).map(|_| ShardPlan::default()).collect();

    // Open every partition, and find per output partition what each producer wrote. In a
    // cluster, a replicated partition whose files are damaged is set aside and opened
    // empty (its replicas hold it: it is copied again), and one whose directory is
    // missing is noted; `Replication::open` marks such copies so that they count nowhere
    // until they are whole again. Anywhere else damage refuses to start, naming it.
    let mut logs: Vec<Vec<PartitionLog>> = Vec::new();
    let mut found: Vec<(usize, u32, Found)> = Vec::new();
    for (t, topic) in spec.topics.iter().enumerate() {
        let replicated =
            cluster.is_some() && topic.replicas.unwrap_or(crate::config::spec::AUTO_REPLICAS) > 1;
        let options = LogOptions {
            segment_bytes: topic.segment_bytes,
            durability: spec.engine.durability,
            retention: topic.retention,
            // Small segments hold smaller records: the header takes 8 KiB of each.
            max_record_bytes: crate::storage::record_bytes_max_for(topic.segment_bytes),
            ..LogOptions::default()
        };
        let mut partitions = Vec::new();
        for p in 0..topic.partitions {
            let dir = layout::partition_dir(&data_dir, &topic.name, p);
            if replicated && !dir.exists() {
                found.push((t, p, Found::Missing));
            }
            let log = match PartitionLog::open(&dir, options.clone()) {
                Err(error) if replicated && error.is_corruption() => {
                    let why = error.to_string();
                    let aside = layout::set_aside(&data_dir, &topic.name, p, &why)?;
                    tracing::error!(
                        "partition {p} of \"{}\" is damaged ({why}); its files were moved to {} and it is copied again from its replicas",
                        topic.name,
                        aside.display()
                    );
                    found.push((
                        t,
                        p,
                        Found::Damaged(format!("{why} (set aside in {})", aside.display())),
                    ));
                    PartitionLog::open(&dir, options.clone())?
                }
                other => other?,
            };
            partitions.push(log);
        }
        logs.push(partitions);
    }
    // Consumers first: finishing interrupted transactions appends to the logs.
    let journals = journal_recovery::recover(&spec, &mut logs, shards)?;
    for (plan, journal) in plans.iter_mut().zip(journals) {
        plan.journal = Some(journal);
    }
    let ends: Vec<Vec<AtomicU64>> = logs
        .iter()
        .map(|partitions| {
            partitions
                .iter()
                .map(|l| AtomicU64::new(l.next_offset()))
                .collect()
        })
        .collect();
    let mut stage_progress = load_stage_progress(&spec)?;
    clamp_stage_progress(&spec, &logs, &mut stage_progress);
    let source_progress: Vec<Progress> = spec
        .sources
        .iter()
        .map(|s| progress::load(&progress::path(&data_dir, &s.name, "source")).map(Option::unwrap_or_default))
        .collect::<Result<_>>()?;
    let scanned = scan_outputs(&spec, &logs, &stage_progress, &source_progress);

    for (i, stage_spec) in spec.stages.iter().enumerate() {
        if stage_spec.op == OpSpec::Reply {
            for &topic in &stage_spec.from {
                for p in 0..spec.topics[topic].partitions {
                    plans[placement::owner(p, shards)].replies.push(ReplyTask {
                        stage: i,
                        topic,
                        partition: p,
                    });
                }
            }
            continue;
        }
        let to = stage_spec.to.expect("validated");
        for &topic in &stage_spec.from {
            let mut states = match &stage_spec.op {
                OpSpec::State { .. } => states_by_partition(&logs[to], spec.topics[topic].partitions)?,
                _ => HashMap::new(),
            };
            for p in 0..spec.topics[topic].partitions {
                let progress = stage_progress[&(i, topic, p)].clone();
                let producer = stage_producer(&stage_spec.name, &spec.topics[topic].name, p);
                // A clock-driven operator cannot be replayed exactly: it gets at-least-once.
                let skip = if crate::runtime::takeover::is_exact(stage_spec) {
                    skip_points(&scanned[to], &producer, progress.next)
                } else {
                    vec![Point::default(); spec.topics[to].partitions as usize]
                };
                plans[placement::owner(p, shards)].stages.push(StageTask {
                    stage: i,
                    topic,
                    partition: p,
                    progress,
                    skip,
                    expected_ends: producers[topic].clone(),
                    states: states.remove(&p).unwrap_or_default(),
                });
            }
        }
    }
    for (i, (source_spec, progress)) in spec.sources.iter().zip(source_progress).enumerate() {
        plans[i % shards].sources.push(SourceTask {
            source: i,
            progress,
            scanned: scanned[source_spec.to].clone(),
        });
    }
    let mut sink_senders = Vec::new();
    for (i, sink_spec) in spec.sinks.iter().enumerate() {
        let progress =
            progress::load(&progress::path(&data_dir, &sink_spec.name, "sink"))?.unwrap_or_default();
        let task = WriterTask {
            sink: i,
            progress,
            expected_ends: producers[sink_spec.from].clone(),
        };
        // In a cluster the partitions are led on several peers: the sink reads each
        // through its leader (`sink::run_clustered`), and its channel goes unused.
        let (tx, rx) = flume::bounded(SINK_CHANNEL_CHUNKS_MAX);
        sink_senders.push(tx);
        if cluster.is_some() {
            plans[i % shards].clustered_sinks.push(task);
            continue;
        }
        let progress = &task.progress;
        for p in 0..spec.topics[sink_spec.from].partitions {
            let stored = progress.partitions.get(&p).copied().unwrap_or(0);
            let end = logs[sink_spec.from][p as usize].next_offset();
            if stored > end {
                tracing::warn!(
                    sink = %sink_spec.name,
                    partition = p,
                    "the sink's progress ({stored}) is past its input's recovered end {end} (records lost in \
                     a power cut or a crash in `none` mode); it goes on at {end}"
                );
            }
            let start = stored.min(end);
            plans[placement::owner(p, shards)].forwarders.push(ForwarderTask {
                sink: i,
                partition: p,
                start,
            });
        }
        plans[i % shards].writers.push((task, rx));
    }
    for (topic, partitions) in logs.into_iter().enumerate() {
        for (p, log) in partitions.into_iter().enumerate() {
            let max_lag = spec.topics[topic].max_lag;
            plans[placement::owner(p as u32, shards)]
                .partitions
                .push((topic, p as u32, log, max_lag));
        }
    }
    let (mut mesh, receivers) = mesh::build(spec.topics.len(), shards);
    let peers = match cluster {
        Some(cluster) => {
            // A peer frame carries at least one batch whole: forwarded, copied to a
            // replica, fetched. A batch never spans a segment.
            let largest = spec.topics.iter().map(|t| t.segment_bytes).max().unwrap_or(0);
            crate::cluster::frame::allow_batches_of(largest);
            let topics = spec
                .topics
                .iter()
                .map(|t| crate::runtime::cluster::replica::ReplicatedTopic {
                    name: t.name.clone(),
                    partitions: t.partitions,
                    replicas: t.replicas.unwrap_or(crate::config::spec::AUTO_REPLICAS),
                    auto: t.replicas.is_none(),
                })
                .collect();
            Some(Arc::new(Peers::new(cluster, topics, &data_dir, found)?))
        }
        None => None,
    };
    if let Some(peers) = &peers {
        mesh.remote = Some(Arc::clone(peers) as Arc<dyn mesh::RemoteRoute>);
    }
    for (plan, inboxes) in plans.iter_mut().zip(receivers) {
        plan.inboxes = inboxes;
    }
    let all_bounded = spec.stages.iter().all(|s| s.from.iter().all(|t| bounded[*t]))
        && spec.sinks.iter().all(|s| bounded[s.from]);
    let task_count = plans.iter().map(|p| p.stages.len() + p.writers.len()).sum();
    // With listeners open, clients may always send more: the run ends on a signal only.
    // In a cluster too: a source or stage on a peer that does not lead its input waits
    // for that lead, which may come any time.
    let finishable =
        (all_bounded && task_count > 0 && spec.ingest.is_none() && peers.is_none()).then_some(task_count);
    let mut services = Vec::new();
    for plan in plans.iter_mut() {
        let (tx, rx) = flume::bounded(SERVICE_CHANNEL_MAX);
        services.push(tx);
        plan.service = Some(rx);
    }
    let control = Control::default();
    let live: usize = plans
        .iter()
        .map(|p| p.stages.len() + p.sources.len() + p.writers.len() + p.clustered_sinks.len())
        .sum();
    control.producers_live.store(live, Ordering::Release);
    let shared = Arc::new(Shared {
        spec: Arc::new(spec),
        shards,
        data_dir,
        mesh,
        sinks: sink_senders,
        control,
        epoch: epoch(),
        services,
        metrics: Arc::new(Metrics::new(shards)),
        ends,
        peers,
    });
    if let Some(peers) = &shared.peers {
        peers.attach(&shared)?;
        let service = Arc::new(PeerService {
            shared: Arc::clone(&shared),
        });
        let _ = peers.cluster.data.set(service);
    }
    Ok(Plan {
        shared,
        shards: plans,
        finishable,
    })
}

/// A number telling this run from every other: time and process id mixed.
fn epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 48)
}

/// Creates the data directory for its owner alone (0700), saying so when one that
/// existed was open to others.
pub fn private_data_dir(dir: &std::path::Path) -> Result<()> {
    let narrowed = crate::storage::io::create_private_dir(dir)
        .map_err(RuntimeError::io("create the data directory (mode 0700)", dir))?;
    if let Some(mode) = narrowed {
        tracing::warn!(
            "the data directory {} was mode {mode:04o}, open to other users; it is now 0700",
            dir.display()
        );
    }
    Ok(())
}

pub fn core_count(cores: Cores) -> Result<usize> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cores {
        Cores::All => Ok(available),
        Cores::Count(n) if n <= available => Ok(n),
        Cores::Count(requested) => Err(RuntimeError::Cores { requested, available }),
    }
}

/// Per topic, the producers whose end markers end it; empty when nothing bounded feeds it.
fn producers_by_topic(spec: &DataflowSpec) -> Vec<HashSet<String>> {
    let mut producers = vec![HashSet::new(); spec.topics.len()];
    for source in &spec.sources {
        producers[source.to].insert(source_producer(&source.name, None, None));
    }
    for stage in &spec.stages {
        let Some(to) = stage.to else {
            continue;
        };
        for &topic in &stage.from {
            for p in 0..spec.topics[topic].partitions {
                let producer = stage_producer(&stage.name, &spec.topics[topic].name, p);
                if let Some(dead) = stage.dead_letter_topic() {
                    producers[dead].insert(provenance::dead_letter_producer(&producer));
                }
                producers[to].insert(producer);
            }
        }
    }
    producers
}

/// A topic ends when every producer feeding it ends, and it has at least one.
fn bounded_topics(spec: &DataflowSpec) -> Vec<bool> {
    let mut bounded: Vec<Option<bool>> = vec![None; spec.topics.len()];
    // Topics in dependency order: the graph is acyclic (validated), so this settles in
    // at most one round per topic.
    for _ in 0..=spec.topics.len() {
        for (t, slot) in bounded.clone().iter().enumerate() {
            if slot.is_some() {
                continue;
            }
            let sources = spec.sources.iter().filter(|s| s.to == t);
            let stages: Vec<_> = spec
                .stages
                .iter()
                .filter(|s| s.to == Some(t) || s.dead_letter_topic() == Some(t))
                .collect();
            if sources.clone().count() + stages.len() == 0 {
                bounded[t] = Some(false);
                continue;
            }
            let inputs: Option<Vec<bool>> = stages
                .iter()
                .flat_map(|s| s.from.iter().map(|f| bounded[*f]))
                .collect();
            if let Some(inputs) = inputs {
                bounded[t] = Some(sources.clone().all(|s| s.kind.is_bounded()) && inputs.iter().all(|b| *b));
            }
        }
    }
    bounded.into_iter().map(|b| b.unwrap_or(false)).collect()
}

type StageProgress = HashMap<(usize, usize, u32), Progress>;

/// Keeps every stage's progress within its input's recovered end, and its output ends
/// within its outputs': a power cut (or a crash in `none` mode) may have taken back
/// records it had read or written, and a stage that resumed past the end would skip the
/// records written at those offsets from now on.
fn clamp_stage_progress(spec: &DataflowSpec, logs: &[Vec<PartitionLog>], all: &mut StageProgress) {
    for (&(stage, topic, partition), progress) in all.iter_mut() {
        let end = logs[topic][partition as usize].next_offset();
        if progress.next > end || progress.resume > end {
            tracing::warn!(
                stage = %spec.stages[stage].name,
                topic = %spec.topics[topic].name,
                partition,
                "the stage's progress ({}) is past its input's recovered end {end} (records lost in a power \
                 cut or a crash in `none` mode); it goes on at {end}",
                progress.next
            );
            progress.next = progress.next.min(end);
            progress.resume = progress.resume.min(end);
            let resume = progress.resume;
            progress.ends_seen.retain(|(_, offset)| *offset < resume);
        }
        if let Some(to) = spec.stages[stage].to {
            for (q, output_end) in progress.output_ends.iter_mut() {
                if let Some(log) = logs[to].get(*q as usize) {
                    *output_end = (*output_end).min(log.next_offset());
                }
            }
        }
    }
}

fn load_stage_progress(spec: &DataflowSpec) -> Result<StageProgress> {
    let mut all = HashMap::new();
    for (i, stage) in spec
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.op != OpSpec::Reply)
    {
        for &topic in &stage.from {
            for p in 0..spec.topics[topic].partitions {
                let part = format!("{}-{p}", spec.topics[topic].name);
                let path = progress::path(&spec.engine.data_dir, &stage.name, &part);
                all.insert((i, topic, p), progress::load(&path)?.unwrap_or_default());
            }
        }
    }
    Ok(all)
}

/// Per topic and partition, the provenance found after the point where the producers
/// writing into it last committed.
fn scan_outputs(
    spec: &DataflowSpec,
    logs: &[Vec<PartitionLog>],
    stages: &StageProgress,
    sources: &[Progress],
) -> Vec<Vec<HashMap<String, Point>>> {
    let mut from: Vec<Vec<u64>> = spec
        .topics
        .iter()
        .map(|t| vec![u64::MAX; t.partitions as usize])
        .collect();
    let mut lower = |topic: usize, progress: &Progress| {
        for (q, slot) in from[topic].iter_mut().enumerate() {
            *slot = (*slot).min(progress.output_ends.get(&(q as u32)).copied().unwrap_or(0));
        }
    };
    for ((stage, _, _), progress) in stages {
        if let Some(to) = spec.stages[*stage].to {
            lower(to, progress);
        }
    }
    for (source, progress) in spec.sources.iter().zip(sources) {
        lower(source.to, progress);
    }
    logs.iter()
        .zip(&from)
        .map(|(partitions, from)| {
            partitions
                .iter()
                .zip(from)
                .map(|(log, &from)| {
                    if from == u64::MAX {
                        HashMap::new()
                    } else {
                        provenance::scan(log, from)
                    }
                })
                .collect()
        })
        .collect()
}

/// Each key's last state, as a changelog holds it.
type KeyStates = HashMap<Vec<u8>, Vec<u8>>;

/// The states a `state` stage's changelog (`changelog`, its output topic) holds, per
/// input partition (of `partitions`) owning each key: the last change of every key,
/// found in one pass. A changelog read that meets damage is an error: state rebuilt
/// from part of it would lose what the rest held.
fn states_by_partition(changelog: &[PartitionLog], partitions: u32) -> Result<HashMap<u32, KeyStates>> {
    let mut states: HashMap<u32, KeyStates> = HashMap::new();
    for log in changelog {
        let mut changes = log.read(0);
        for view in changes.by_ref() {
            if provenance::end_marker(&view).is_some() {
                continue;
            }
            if let Some(key) = view.key() {
                states
                    .entry(crate::protocol::routing::partition_of_bytes(key, partitions))
                    .or_default()
                    .insert(key.to_vec(), view.value().to_vec());
            }
        }
        changes.end()?;
    }
    Ok(states)
}

fn skip_points(scanned: &[HashMap<String, Point>], producer: &str, next: u64) -> Vec<Point> {
    scanned
        .iter()
        .map(|found| {
            found
                .get(producer)
                .copied()
                .unwrap_or_default()
                .max(Point::whole(next))
        })
        .collect()
}

/// How long an idle shard spins before it sleeps in the kernel: a wake-up within it
/// costs no syscall and no scheduler delay (the unbatched produce round trip). While it
/// spins it yields its CPU to any other thread ready to run there (flowd's patch of
/// glommio, `vendor/glommio/PATCHES.md`), so the spin costs a client, another shard or
/// the sync thread on the same CPU nothing.
/// `FLOWD_SPIN_BEFORE_PARK_US` sets it for experiments (README, "Performance").
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);

/// The spin before park: `FLOWD_SPIN_BEFORE_PARK_US` if set (microseconds), else
/// [`SPIN_BEFORE_PARK`].
fn spin_before_park() -> Result<Duration> {
    match std::env::var("FLOWD_SPIN_BEFORE_PARK_US") {
        Err(_) => Ok(SPIN_BEFORE_PARK),
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Duration::from_micros)
            .map_err(|_| RuntimeError::Shard {
                shard: 0,
                reason: format!(
                    "FLOWD_SPIN_BEFORE_PARK_US is \"{text}\"; give a whole number of microseconds (200 by default), or unset it"
                ),
            }),
    }
}

pub type ShardHandle = glommio::ExecutorJoinHandle<Result<()>>;

/// The CPUs this process may run on (its affinity mask: `taskset`, a container's
/// cpuset), lowest first; every CPU below the count `available_parallelism` gives when
/// the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // its size, and CPU_ISSET reads within it for every index below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Held by a shard's thread (in its task, or in the closure that makes it): dropped while
/// the thread panics, it stops the engine with the reason, so that the process exits
/// saying so rather than go on serving without the shard's partitions (or hang, if
/// the shard never started). A panic in one of the shard's tasks unwinds its executor
/// without always dropping the task that holds it (glommio leaves tasks it still
/// counts references to), so the shard's thread also names its engine to the panic
/// hook (`stop_on_panic`), which runs at the panic itself.
struct PanicStops {
    shard: usize,
    shared: Arc<Shared>,
}

impl Drop for PanicStops {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared
                .control
                .fail(RuntimeError::ShardPanicked { shard: self.shard });
        }
    }
}

thread_local! {
    /// On a shard's thread: its index and its engine, for the panic hook.
    static SHARD_OF: std::cell::RefCell<Option<(usize, std::sync::Weak<Shared>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Has a panic on this thread (a shard's) stop the engine, saying which shard, at the
/// panic: the process-wide hook (installed once, after the one before it, which still
/// prints the message) looks for the shard this thread runs. A panic caught on a
/// shard's thread would stop it too; nothing there catches one (a bug is fail-stop).
fn stop_on_panic(shard: usize, shared: &Arc<Shared>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            before(info);
            let _ = SHARD_OF.try_with(|of| {
                if let Ok(of) = of.try_borrow()
                    && let Some((shard, shared)) = of.as_ref()
                    && let Some(shared) = shared.upgrade()
                {
                    shared.control.fail(RuntimeError::ShardPanicked { shard: *shard });
                }
            });
        }));
    });
    SHARD_OF.with(|of| *of.borrow_mut() = Some((shard, Arc::downgrade(shared))));
}

/// Whether this process may make an io_uring, which every shard runs on. A container's
/// default seccomp profile (podman's, Docker's, containerd's `RuntimeDefault`) refuses
/// it, and glommio would then panic in each shard's thread: this says why, and what to
/// do, before any starts.
fn io_uring_allowed() -> Result<()> {
    // struct io_uring_params: 120 bytes, zeroed, for a ring of 4 entries.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params` (120 bytes) and returns a file
    // descriptor, closed at once, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let error = std::io::Error::last_os_error();
        return Err(RuntimeError::Shard {
            shard: 0,
            reason: format!(
                "io_uring is not allowed here ({error}); flowd's shards run on it. In a container, \
                 allow io_uring_setup, io_uring_enter and io_uring_register in its seccomp profile \
                 (podman or docker: --security-opt seccomp=unconfined; Kubernetes: \
                 securityContext.seccompProfile.type Unconfined, as deploy/kubernetes does); on a host, \
                 check the sysctl kernel.io_uring_disabled is 0"
            ),
        });
    }
    // SAFETY: `fd` is the ring's descriptor, this function's alone.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Starts one executor per planned shard, pinned to its core: shard `i` to the `i`-th
/// CPU this process may use, so that peers started under `taskset` (or in containers
/// with cpusets) on one machine each keep to their own CPUs rather than all to CPU 0.
pub fn spawn(plan: Plan, doors: Option<Arc<dyn Doors>>) -> Result<Vec<ShardHandle>> {
    io_uring_allowed()?;
    let mut handles = Vec::new();
    let cpus = allowed_cpus();
    let spin = spin_before_park()?;
    for (index, shard_plan) in plan.shards.into_iter().enumerate() {
        let shared = Arc::clone(&plan.shared);
        let doors = doors.clone();
        let loud = PanicStops {
            shard: index,
            shared: Arc::clone(&shared),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[index % cpus.len()]))
            .spin_before_park(spin)
            .name(&format!("flowd-shard-{index}"))
            .spawn(move || async move {
                let _loud = loud;
                stop_on_panic(index, &shared);
                run_shard(index, shared, shard_plan, doors).await
            })
            .map_err(|e| RuntimeError::Shard {
                shard: index,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

async fn run_shard(
    index: usize,
    shared: Arc<Shared>,
    plan: ShardPlan,
    doors: Option<Arc<dyn Doors>>,
) -> Result<()> {
    let partitions = plan.partitions.into_iter().map(|(t, p, mut log, max_lag)| {
        crate::runtime::cluster::damage::stop_on_damage(&shared, t, p, &mut log);
        LocalPartition::new(t, p, log, max_lag)
    });
    crate::storage::faults::panic_point("shard-panic", index);
    let journal = plan.journal.expect("every shard plan gets its journal");
    let shard = Rc::new(Shard::new(
        index,
        Arc::clone(&shared),
        partitions.collect(),
        journal,
    ));
    // Every stage and sink reader is registered before any inbox runs: a partition must
    // not take more than `max_lag` records beyond a reader whose task has not started yet
    // (a source on another core may already be writing).
    // And a state stage's states are readable (GET /state) before any request can
    // reach this shard's service task, which runs before the stage tasks do.
    let mut stages = plan.stages;
    for task in &mut stages {
        let name = &shared.spec.stages[task.stage].name;
        shard
            .partition(task.topic, task.partition)
            .reader(name, task.progress.resume);
        if matches!(shared.spec.stages[task.stage].op, OpSpec::State { .. }) {
            let states = std::rc::Rc::new(std::cell::RefCell::new(std::mem::take(&mut task.states)));
            shard
                .states
                .borrow_mut()
                .insert((task.stage, task.partition), states);
        }
    }
    for task in &plan.forwarders {
        let sink = &shared.spec.sinks[task.sink];
        shard
            .partition(sink.from, task.partition)
            .reader(&crate::runtime::sink::reader_name(&sink.name), task.start);
    }
    // Reply tasks take their start now, before the inboxes can write a job (reply::run).
    let replies: Vec<_> = plan
        .replies
        .into_iter()
        .map(|task| reply::run(Rc::clone(&shard), task))
        .collect();
    let tasks = Rc::clone(&shard.tasks);
    tasks.spawn(consumers::run_sweeper(Rc::clone(&shard)));
    tasks.spawn(crate::runtime::retention::run(Rc::clone(&shard)));
    for (topic, receiver, copies) in plan.inboxes {
        tasks.spawn(Rc::clone(&shard).run_inbox(topic, receiver, copies));
    }
    if let Some(requests) = plan.service {
        tasks.spawn(service::run(Rc::clone(&shard), requests));
    }
    for reply in replies {
        let s = Rc::clone(&shard);
        tasks.spawn(async move {
            if let Err(error) = reply.await {
                s.shared.control.fail(error);
            }
        });
    }
    if let Some(doors) = &doors {
        doors.open(&shard);
    }
    tasks.spawn(Rc::clone(&shard).run_acker());
    // An exec stage runs one task per core over all its partitions there: one worker
    // pool per core, and one task to drive it.
    let mut execs: Vec<ExecTask> = Vec::new();
    for task in stages {
        if matches!(shared.spec.stages[task.stage].op, OpSpec::Exec(_)) {
            match execs.iter_mut().find(|e| e.stage == task.stage) {
                Some(exec) => exec.parts.push(task),
                None => execs.push(ExecTask {
                    stage: task.stage,
                    parts: vec![task],
                }),
            }
        } else if matches!(shared.spec.stages[task.stage].op, OpSpec::ScatterGather(_)) {
            spawn_counted(&shard, 1, scatter_stage::run(Rc::clone(&shard), task));
        } else {
            spawn_counted(&shard, 1, stage::run(Rc::clone(&shard), task));
        }
    }
    for task in execs {
        let parts = task.parts.len();
        spawn_counted(&shard, parts, exec_stage::run(Rc::clone(&shard), task));
    }
    for task in plan.sources {
        spawn_counted(&shard, 1, source::run(Rc::clone(&shard), task));
    }
    for (task, receiver) in plan.writers {
        spawn_counted(&shard, 1, sink::write(Rc::clone(&shard), task, receiver));
    }
    for task in plan.clustered_sinks {
        spawn_counted(&shard, 1, sink::run_clustered(Rc::clone(&shard), task));
    }
    for task in plan.forwarders {
        let s = Rc::clone(&shard);
        tasks.spawn(async move {
            if let Err(error) = sink::forward(Rc::clone(&s), task).await {
                s.shared.control.fail(error);
            }
        });
    }
    let control = &shared.control;
    control.until_stopping().await;
    // Let every producer and writer on every shard store its last progress; inboxes and
    // ackers keep serving meanwhile. Bounded: a stuck peer shard must not hang the exit.
    let deadline =
        std::time::Instant::now() + crate::runtime::commit::FINAL_COMMIT_WAIT + Duration::from_secs(1);
    while control.producers_live.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let closed = shard.close();
    shard.tasks.end_all().await;
    closed
}

/// Spawns a task counted `count` times in `producers_live` (once per planned producer it
/// runs); its error stops the engine.
fn spawn_counted(
    shard: &Rc<Shard>,
    count: usize,
    task: impl std::future::Future<Output = Result<()>> + 'static,
) {
    let s = Rc::clone(shard);
    shard.tasks.spawn(async move {
        if let Err(error) = task.await {
            s.shared.control.fail(error);
        }
        s.shared.control.producers_live.fetch_sub(count, Ordering::AcqRel);
    });
}
