//! A power-cut simulator, for tests: it records every change a running engine makes to
//! a data directory (through `io`), and builds what the disk would hold had the power
//! gone at any point of that run, the way SQLite's crash VFS and the crash backends of
//! fjall and redb do.
//!
//! The model, at a cut after the first `k` operations of the trace:
//! - a file keeps what a sync covered; each page (4 KiB of the file) written since is
//!   kept, dropped, or torn (some of its 512-byte sectors new, the others old), each on
//!   its own, so later writes may survive where earlier ones did not; size changes since
//!   the last sync are kept or dropped likewise;
//! - a directory keeps the names its last sync covered; the changes to names made since
//!   (creating, renaming, removing files and directories), across all directories, are
//!   kept as a prefix in the order they were made, as a journaling file system commits
//!   them;
//! - everything the cut kept is written out as a fresh directory tree that the engine
//!   opens as it would after a real power loss.
//!
//! The choices come from a seed, so a cut is repeatable from `(trace, k, seed)`; a trace
//! is saved and loaded with `Trace::encode` / `decode` to replay a failure.
//!
//! Recording costs nothing when no test records: one atomic load per change.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One change to a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new, empty file.
    Create {
        path: PathBuf,
    },
    SetLen {
        path: PathBuf,
        len: u64,
    },
    /// The file is at least `end` bytes long (preallocated zeros).
    Allocate {
        path: PathBuf,
        end: u64,
    },
    Write {
        path: PathBuf,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// A file sync returned: the file's changes among the first `covers` operations of
    /// the trace are durable.
    Sync {
        path: PathBuf,
        covers: u64,
    },
    /// A directory sync returned: its name changes among the first `covers` are durable.
    SyncDir {
        path: PathBuf,
        covers: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    RemoveTree {
        path: PathBuf,
    },
    CreateDir {
        path: PathBuf,
    },
}

struct Recorder {
    root: PathBuf,
    ops: Mutex<Vec<Op>>,
}

static RECORDING: AtomicUsize = AtomicUsize::new(0);
static RECORDERS: Mutex<Vec<Arc<Recorder>>> = Mutex::new(Vec::new());

fn recorder_of(path: &Path) -> Option<Arc<Recorder>> {
    if RECORDING.load(Ordering::Acquire) == 0 {
        return None;
    }
    RECORDERS
        .lock()
        .expect("recorders lock")
        .iter()
        .find(|r| path.starts_with(&r.root))
        .cloned()
}

/// Notes a change to `path`, if a recording covers it.
pub(crate) fn note(path: &Path, op: impl FnOnce() -> Op) {
    if let Some(recorder) = recorder_of(path) {
        recorder.ops.lock().expect("trace lock").push(op());
    }
}

/// Where a sync of `path` starts in its recording's trace: it covers what came before.
pub(crate) fn sync_started(path: &Path) -> u64 {
    recorder_of(path).map_or(0, |r| r.ops.lock().expect("trace lock").len() as u64)
}

/// Records every change under a directory until finished (or dropped).
pub struct Recording(Arc<Recorder>);

impl Recording {
    /// Starts recording changes under `root` (an absolute path; the directory should be
    /// empty or missing, as the trace starts from nothing).
    pub fn start(root: &Path) -> Recording {
        let recorder = Arc::new(Recorder {
            root: root.to_path_buf(),
            ops: Mutex::new(Vec::new()),
        });
        RECORDERS
            .lock()
            .expect("recorders lock")
            .push(Arc::clone(&recorder));
        RECORDING.fetch_add(1, Ordering::AcqRel);
        Recording(recorder)
    }

    /// Operations recorded so far: an ack observed now is covered by a cut at this point
    /// or later.
    pub fn len(&self) -> usize {
        self.0.ops.lock().expect("trace lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops recording and hands the trace over.
    pub fn finish(self) -> Trace {
        let ops = std::mem::take(&mut *self.0.ops.lock().expect("trace lock"));
        Trace {
            root: self.0.root.clone(),
            ops,
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let mut recorders = RECORDERS.lock().expect("recorders lock");
        let before = recorders.len();
        recorders.retain(|r| !Arc::ptr_eq(r, &self.0));
        if recorders.len() < before {
            RECORDING.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The changes of one recorded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub root: PathBuf,
    pub ops: Vec<Op>,
}

/// What a cut kept and dropped, for a failing seed's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    pub pages_kept: u64,
    pub pages_dropped: u64,
    pub pages_torn: u64,
    pub names_kept: u64,
    pub names_dropped: u64,
}

/// SplitMix64: small, seedable, good enough to choose pages.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

const PAGE: u64 = 4096;
const SECTOR: u64 = 512;

/// A change to a file's bytes or size, not yet synced.
#[derive(Debug, Clone)]
enum DataOp {
    SetLen(u64),
    Allocate(u64),
    Write(u64, Vec<u8>),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    durable: Vec<u8>,
    /// `(trace position, change)` since the last sync.
    pending: Vec<(u64, DataOp)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(usize),
    Dir,
}

/// A change to the names of a directory tree.
#[derive(Debug, Clone)]
enum NameOp {
    Link(PathBuf, Entry),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
    RemoveTree(PathBuf),
}

impl NameOp {
    /// The directory whose sync makes it durable.
    fn dir(&self) -> Option<&Path> {
        match self {
            NameOp::Link(path, _) | NameOp::Remove(path) | NameOp::RemoveTree(path) => path.parent(),
            NameOp::Rename(_, to) => to.parent(),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Entry>) {
        match self {
            NameOp::Link(path, entry) => {
                names.insert(path.clone(), *entry);
            }
            NameOp::Rename(from, to) => {
                let moved: Vec<(PathBuf, Entry)> = names
                    .range(from.clone()..)
                    .take_while(|(p, _)| p.starts_with(from))
                    .map(|(p, e)| (p.clone(), *e))
                    .collect();
                for (path, _) in &moved {
                    names.remove(path);
                }
                for (path, entry) in moved {
                    let rest = path.strip_prefix(from).expect("under from");
                    let target = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    names.insert(target, entry);
                }
            }
            NameOp::Remove(path) => {
                names.remove(path);
            }
            NameOp::RemoveTree(path) => {
                let gone: Vec<PathBuf> = names
                    .range(path.clone()..)
                    .take_while(|(p, _)| p.starts_with(path))
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in gone {
                    names.remove(&p);
                }
            }
        }
    }
}

/// The disk as the first `k` operations left it, before the cut decides what survives.
#[derive(Default)]
struct Disk {
    inodes: Vec<Inode>,
    /// What the running process saw.
    live: BTreeMap<PathBuf, Entry>,
    /// `(trace position, change, durable)` of every name change.
    names: Vec<(u64, NameOp, bool)>,
}

impl Disk {
    fn replay(ops: &[Op]) -> Disk {
        let mut disk = Disk::default();
        for (at, op) in ops.iter().enumerate() {
            disk.step(at as u64, op);
        }
        disk
    }

    fn inode(&mut self, path: &Path) -> Option<&mut Inode> {
        match self.live.get(path) {
            Some(Entry::File(id)) => Some(&mut self.inodes[*id]),
            _ => None,
        }
    }

    fn step(&mut self, at: u64, op: &Op) {
        match op {
            Op::Create { path } => {
                self.inodes.push(Inode::default());
                let entry = Entry::File(self.inodes.len() - 1);
                self.live.insert(path.clone(), entry);
                self.names.push((at, NameOp::Link(path.clone(), entry), false));
            }
            Op::CreateDir { path } => {
                self.live.insert(path.clone(), Entry::Dir);
                self.names
                    .push((at, NameOp::Link(path.clone(), Entry::Dir), false));
            }
            Op::SetLen { path, len } => {
                if let Some(inode) = self.inode(path) {
                    inode.pending.push((at, DataOp::SetLen(*len)));
                }
            }
            Op::Allocate { path, end } => {
                if let Some(inode) = self.inode(path) {
                    inode.pending.push((at, DataOp::Allocate(*end)));
                }
            }
            Op::Write { path, offset, bytes } => {
                if let Some(inode) = self.inode(path) {
                    inode.pending.push((at, DataOp::Write(*offset, bytes.clone())));
                }
            }
            Op::Sync { path, covers } => {
                if let Some(inode) = self.inode(path) {
                    let (done, rest): (Vec<_>, Vec<_>) =
                        inode.pending.drain(..).partition(|(seq, _)| seq < covers);
                    for (_, change) in done {
                        apply(&mut inode.durable, &change);
                    }
                    inode.pending = rest;
                }
            }
            Op::SyncDir { path, covers } => {
                for (seq, change, durable) in &mut self.names {
                    if *seq < *covers && change.dir() == Some(path.as_path()) {
                        *durable = true;
                    }
                }
            }
            Op::Rename { from, to } => {
                let change = NameOp::Rename(from.clone(), to.clone());
                change.apply(&mut self.live);
                self.names.push((at, change, false));
            }
            Op::Remove { path } => {
                let change = NameOp::Remove(path.clone());
                change.apply(&mut self.live);
                self.names.push((at, change, false));
            }
            Op::RemoveTree { path } => {
                let change = NameOp::RemoveTree(path.clone());
                change.apply(&mut self.live);
                self.names.push((at, change, false));
            }
        }
    }
}

fn apply(content: &mut Vec<u8>, change: &DataOp) {
    match change {
        DataOp::SetLen(len) => content.resize(*len as usize, 0),
        DataOp::Allocate(end) => {
            if content.len() < *end as usize {
                content.resize(*end as usize, 0);
            }
        }
        DataOp::Write(offset, bytes) => {
            let end = *offset as usize + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*offset as usize..end].copy_from_slice(bytes);
        }
    }
}

/// Applies the part of an unsynced change a cut keeps.
fn apply_cut(content: &mut Vec<u8>, change: &DataOp, choices: &mut Choices, cut: &mut Cut) {
    let DataOp::Write(offset, bytes) = change else {
        // A size change survives or not, whole.
        if choices.below(2) == 0 {
            apply(content, change);
        }
        return;
    };
    let end = offset + bytes.len() as u64;
    let mut at = *offset;
    while at < end {
        let page_end = ((at / PAGE) + 1) * PAGE;
        let piece_end = page_end.min(end);
        let piece = &bytes[(at - offset) as usize..(piece_end - offset) as usize];
        match choices.below(3) {
            0 => {
                cut.pages_kept += 1;
                apply(content, &DataOp::Write(at, piece.to_vec()));
            }
            1 => cut.pages_dropped += 1,
            _ => {
                // Torn: some sectors of the page made it, others did not.
                cut.pages_torn += 1;
                let mut sector = at;
                while sector < piece_end {
                    let sector_end = (((sector / SECTOR) + 1) * SECTOR).min(piece_end);
                    if choices.below(2) == 0 {
                        let part = &bytes[(sector - offset) as usize..(sector_end - offset) as usize];
                        apply(content, &DataOp::Write(sector, part.to_vec()));
                    }
                    sector = sector_end;
                }
            }
        }
        at = piece_end;
    }
}

impl Trace {
    /// Builds in `into` (an empty or missing directory) what the recorded directory would
    /// hold after a power cut following its first `crash_at` operations, with the page and
    /// name choices `seed` makes.
    pub fn cut(&self, crash_at: usize, seed: u64, into: &Path) -> io::Result<Cut> {
        let mut disk = Disk::replay(&self.ops[..crash_at.min(self.ops.len())]);
        let mut choices = Choices(seed);
        let mut cut = Cut::default();
        // Names: every durable change, and a prefix of the others in the order made.
        let pending = disk.names.iter().filter(|(_, _, durable)| !durable).count() as u64;
        let keep_pending = choices.below(pending + 1);
        let mut names = BTreeMap::new();
        let mut pending_seen = 0;
        for (_, change, durable) in &disk.names {
            if !durable {
                pending_seen += 1;
                if pending_seen > keep_pending {
                    cut.names_dropped += 1;
                    continue;
                }
                cut.names_kept += 1;
            }
            change.apply(&mut names);
        }
        // Contents: what was synced, and what the cut keeps of the rest.
        let mut contents: HashMap<usize, Vec<u8>> = HashMap::new();
        for entry in names.values() {
            let Entry::File(id) = entry else { continue };
            let inode = &mut disk.inodes[*id];
            let mut content = inode.durable.clone();
            for (_, change) in &inode.pending {
                apply_cut(&mut content, change, &mut choices, &mut cut);
            }
            contents.insert(*id, content);
        }
        std::fs::create_dir_all(into)?;
        for (path, entry) in &names {
            let Ok(relative) = path.strip_prefix(&self.root) else {
                continue;
            };
            if relative.as_os_str().is_empty() {
                continue;
            }
            let target = into.join(relative);
            // A name whose directory did not survive the cut is gone with it.
            let lost_dir = path
                .ancestors()
                .skip(1)
                .take_while(|a| *a != self.root)
                .any(|a| names.get(a) != Some(&Entry::Dir));
            if lost_dir {
                continue;
            }
            match entry {
                Entry::Dir => std::fs::create_dir_all(&target)?,
                Entry::File(id) => {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&target, &contents[id])?;
                }
            }
        }
        Ok(cut)
    }

    /// The trace as bytes (to save a failing run for replay).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"FLOWDPC1".to_vec();
        put_path(&mut out, &self.root);
        out.extend_from_slice(&(self.ops.len() as u64).to_le_bytes());
        for op in &self.ops {
            match op {
                Op::Create { path } => tagged(&mut out, 0, &[path]),
                Op::SetLen { path, len } => {
                    tagged(&mut out, 1, &[path]);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Op::Allocate { path, end } => {
                    tagged(&mut out, 2, &[path]);
                    out.extend_from_slice(&end.to_le_bytes());
                }
                Op::Write { path, offset, bytes } => {
                    tagged(&mut out, 3, &[path]);
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
                Op::Sync { path, covers } => {
                    tagged(&mut out, 4, &[path]);
                    out.extend_from_slice(&covers.to_le_bytes());
                }
                Op::SyncDir { path, covers } => {
                    tagged(&mut out, 5, &[path]);
                    out.extend_from_slice(&covers.to_le_bytes());
                }
                Op::Rename { from, to } => tagged(&mut out, 6, &[from, to]),
                Op::Remove { path } => tagged(&mut out, 7, &[path]),
                Op::RemoveTree { path } => tagged(&mut out, 8, &[path]),
                Op::CreateDir { path } => tagged(&mut out, 9, &[path]),
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Trace, String> {
        let mut r = Reader(bytes);
        if r.take(8)? != b"FLOWDPC1" {
            return Err("not a flowd power-cut trace".into());
        }
        let root = r.path()?;
        let count = r.u64()?;
        let mut ops = Vec::new();
        for _ in 0..count {
            let op = match r.take(1)?[0] {
                0 => Op::Create { path: r.path()? },
                1 => Op::SetLen {
                    path: r.path()?,
                    len: r.u64()?,
                },
                2 => Op::Allocate {
                    path: r.path()?,
                    end: r.u64()?,
                },
                3 => {
                    let path = r.path()?;
                    let offset = r.u64()?;
                    let len = r.u64()? as usize;
                    Op::Write {
                        path,
                        offset,
                        bytes: r.take(len)?.to_vec(),
                    }
                }
                4 => Op::Sync {
                    path: r.path()?,
                    covers: r.u64()?,
                },
                5 => Op::SyncDir {
                    path: r.path()?,
                    covers: r.u64()?,
                },
                6 => Op::Rename {
                    from: r.path()?,
                    to: r.path()?,
                },
                7 => Op::Remove { path: r.path()? },
                8 => Op::RemoveTree { path: r.path()? },
                9 => Op::CreateDir { path: r.path()? },
                tag => return Err(format!("unknown operation {tag}")),
            };
            ops.push(op);
        }
        Ok(Trace { root, ops })
    }
}

fn put_path(out: &mut Vec<u8>, path: &Path) {
    let text = path.to_string_lossy();
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn tagged(out: &mut Vec<u8>, tag: u8, paths: &[&PathBuf]) {
    out.push(tag);
    for path in paths {
        put_path(out, path);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the trace ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn path(&mut self) -> Result<PathBuf, String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        let text =
            std::str::from_utf8(self.take(len)?).map_err(|_| "a path that is not UTF-8".to_string())?;
        Ok(PathBuf::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(ops: Vec<Op>) -> Trace {
        Trace {
            root: PathBuf::from("/r"),
            ops,
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(format!("/r/{s}"))
    }

    #[test]
    fn synced_data_and_names_always_survive_and_unsynced_ones_vary_by_seed() {
        let ops = vec![
            Op::Create { path: p("f") },
            Op::Write {
                path: p("f"),
                offset: 0,
                bytes: vec![1; 8192],
            },
            Op::Sync {
                path: p("f"),
                covers: 2,
            },
            Op::SyncDir {
                path: PathBuf::from("/r"),
                covers: 3,
            },
            Op::Write {
                path: p("f"),
                offset: 8192,
                bytes: vec![2; 8192],
            },
            Op::Create { path: p("g") },
        ];
        let t = trace(ops);
        let mut seen_tails = std::collections::HashSet::new();
        let mut seen_g = std::collections::HashSet::new();
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            t.cut(t.ops.len(), seed, dir.path()).unwrap();
            let f = std::fs::read(dir.path().join("f")).unwrap();
            assert_eq!(&f[..8192], &[1; 8192][..], "seed {seed}: synced bytes survive");
            seen_tails.insert(f.len());
            seen_g.insert(dir.path().join("g").exists());
        }
        assert!(
            seen_tails.len() > 1,
            "unsynced pages are sometimes kept, sometimes not"
        );
        assert_eq!(seen_g.len(), 2, "an unsynced name is sometimes kept");
    }

    #[test]
    fn a_cut_before_a_sync_may_lose_what_it_would_have_covered_and_traces_round_trip() {
        let ops = vec![
            Op::CreateDir { path: p("d") },
            Op::Create { path: p("d/f") },
            Op::Write {
                path: p("d/f"),
                offset: 0,
                bytes: vec![7; 100],
            },
            Op::Rename {
                from: p("d/f"),
                to: p("d/g"),
            },
            Op::Sync {
                path: p("d/g"),
                covers: 3,
            },
        ];
        let t = trace(ops);
        assert_eq!(Trace::decode(&t.encode()).unwrap(), t);
        let mut lost = false;
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            t.cut(3, seed, dir.path()).unwrap();
            lost |=
                !dir.path().join("d/f").exists() || std::fs::read(dir.path().join("d/f")).unwrap().is_empty();
            assert!(!dir.path().join("d/g").exists(), "the rename came after the cut");
        }
        assert!(lost, "an unsynced file is lost by some cuts");
    }
}
