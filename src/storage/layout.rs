//! Where things live in a data directory, and the small file-system chores around it.
//!
//! ```text
//! DATA_DIR/topics/<topic>/<partition>/00000000000000000000.seg   (base offset, 20 digits)
//!                                    /00000000000000000042.seg.creating
//!                                                                  (a segment being made:
//!                                                                  renamed to its .seg name
//!                                                                  once its header is synced)
//!                                    /.lock                       (flock: one owner)
//! DATA_DIR/topics/<topic>/<partition>.damaged-<unix ms>/         (a damaged partition
//!                                    /WHY                          directory set aside,
//!                                                                  and why, in words)
//! ```

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::error::{Result, StorageError};

const SEGMENT_SUFFIX: &str = ".seg";
const CREATING_SUFFIX: &str = ".creating";
const LOCK_FILE: &str = ".lock";
const TOPICS_DIR: &str = "topics";
const DAMAGED_MARK: &str = ".damaged-";
const WHY_FILE: &str = "WHY";

pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}{SEGMENT_SUFFIX}")
}

/// The name a segment is made under, before its header is synced and it takes its
/// real name.
pub fn creating_segment_file_name(base_offset: u64) -> String {
    format!("{}{CREATING_SUFFIX}", segment_file_name(base_offset))
}

/// The base offset a segment file name stands for, or `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segments whose making never finished (a crash before the rename to their real name),
/// sorted: they hold no record.
pub fn list_creating_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(StorageError::io("list partition directory", dir))? {
        let entry = entry.map_err(StorageError::io("list partition directory", dir))?;
        let name = entry.file_name();
        let creating = name
            .to_str()
            .and_then(|n| n.strip_suffix(CREATING_SUFFIX))
            .and_then(parse_segment_file_name);
        if creating.is_some() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(TOPICS_DIR).join(topic).join(partition.to_string())
}

/// Segment files of a partition directory, sorted by base offset.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(StorageError::io("list partition directory", dir))? {
        let entry = entry.map_err(StorageError::io("list partition directory", dir))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((base, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(base, _)| *base);
    Ok(segments)
}

/// One partition found in a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLocation {
    pub topic: String,
    pub partition: u32,
    pub dir: PathBuf,
}

/// Every partition directory under `data_dir`, sorted by topic and partition.
pub fn list_partitions(data_dir: &Path) -> Result<Vec<PartitionLocation>> {
    let topics_dir = data_dir.join(TOPICS_DIR);
    if !data_dir.is_dir() {
        return Err(StorageError::Io {
            action: "open data directory",
            path: data_dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut found = Vec::new();
    if !topics_dir.is_dir() {
        return Ok(found);
    }
    for topic in sorted_dirs(&topics_dir)? {
        let Some(topic_name) = topic.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        for partition in sorted_dirs(&topic)? {
            if let Some(number) = partition
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
            {
                found.push(PartitionLocation {
                    topic: topic_name.clone(),
                    partition: number,
                    dir: partition,
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(found)
}

/// Moves a damaged partition directory aside, whole, to
/// `DATA_DIR/topics/<topic>/<partition>.damaged-<unix ms>/` (beside it: the same file
/// system, whatever is mounted where) with `why` written among its files, durably; the
/// partition's own directory no longer exists afterwards. Returns where.
pub fn set_aside(data_dir: &Path, topic: &str, partition: u32, why: &str) -> Result<PathBuf> {
    let from = partition_dir(data_dir, topic, partition);
    let parent = data_dir.join(TOPICS_DIR).join(topic);
    let to = parent.join(format!("{partition}{DAMAGED_MARK}{}", now_ms()));
    let why_path = from.join(WHY_FILE);
    crate::storage::io::replace(&why_path, format!("{why}\n").as_bytes(), true)
        .map_err(StorageError::io("write", &why_path))?;
    crate::storage::io::rename(&from, &to).map_err(StorageError::io("move aside", &from))?;
    sync_dir(&parent)?;
    Ok(to)
}

/// Bytes free for flowd on the file system holding `data_dir`'s partitions (`None`
/// if it cannot be asked).
pub fn free_bytes(data_dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let topics = data_dir.join(TOPICS_DIR);
    let at = if topics.is_dir() {
        topics
    } else {
        data_dir.to_path_buf()
    };
    let path = std::ffi::CString::new(at.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct it fills in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A partition directory set aside as damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub topic: String,
    pub partition: u32,
    pub dir: PathBuf,
    pub at_ms: i64,
    pub why: String,
}

/// Every partition directory set aside under `data_dir`, oldest first.
pub fn list_set_aside(data_dir: &Path) -> Result<Vec<SetAside>> {
    let topics = data_dir.join(TOPICS_DIR);
    let mut found = Vec::new();
    if !topics.is_dir() {
        return Ok(found);
    }
    for topic in sorted_dirs(&topics)? {
        let Some(name) = topic.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        for dir in sorted_dirs(&topic)? {
            let Some((partition, at_ms)) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split_once(DAMAGED_MARK))
                .and_then(|(p, at)| Some((p.parse().ok()?, at.parse().ok()?)))
            else {
                continue;
            };
            let why = fs::read_to_string(dir.join(WHY_FILE))
                .unwrap_or_default()
                .trim()
                .to_string();
            found.push(SetAside {
                topic: name.clone(),
                partition,
                dir,
                at_ms,
                why,
            });
        }
    }
    found.sort_by_key(|s| s.at_ms);
    Ok(found)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(StorageError::io("list directory", dir))? {
        let entry = entry.map_err(StorageError::io("list directory", dir))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// fsync a directory, making the names created or removed in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    if crate::storage::faults::sync_fails("dir-fsync", dir) {
        return Err(StorageError::Io {
            action: "sync directory",
            path: dir.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        });
    }
    crate::storage::io::sync_dir(dir).map_err(StorageError::io("sync directory", dir))
}

/// How long opening a partition waits for its lock before it gives up.
///
/// A lock can outlive its owner's close by a moment: a child process forked (to run a
/// worker, say) holds a copy of every descriptor until its exec closes them, and a flock
/// lives until the last copy is closed. So a partition closed and at once reopened in a
/// process that also spawns children can find its own old lock still held.
pub const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);
const LOCK_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// An exclusive lock on a partition directory, held while a log is open: two processes
/// appending to one partition would destroy it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, waiting up to `LOCK_WAIT_MAX` for a holder to let go.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StorageError::io("create lock file", &path))?;
        let attempts = LOCK_WAIT_MAX.as_millis() / LOCK_RETRY_INTERVAL.as_millis();
        for attempt in 0..=attempts {
            // SAFETY: plain syscall on a valid descriptor.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(DirLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock || attempt == attempts {
                return Err(StorageError::Io {
                    action: "lock partition (is another flowd using this data directory?)",
                    path: dir.to_path_buf(),
                    source: error,
                });
            }
            std::thread::sleep(LOCK_RETRY_INTERVAL);
        }
        unreachable!("the last attempt returns")
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_others_are_ignored() {
        for base in [0, 1, 42, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(base)), Some(base));
        }
        for other in [
            "",
            ".lock",
            "0.seg",
            "0000000000000000000a.seg",
            "00000000000000000000.idx",
        ] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_partition_set_aside_is_listed_with_why_and_its_place_is_free() {
        let data = tempfile::tempdir().unwrap();
        let dir = partition_dir(data.path(), "events", 3);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(segment_file_name(0)), b"damaged bytes").unwrap();
        let to = set_aside(data.path(), "events", 3, "a corrupt segment").unwrap();
        assert!(!dir.exists());
        assert_eq!(fs::read(to.join(segment_file_name(0))).unwrap(), b"damaged bytes");
        let listed = list_set_aside(data.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].topic.as_str(),
                listed[0].partition,
                listed[0].why.as_str()
            ),
            ("events", 3, "a corrupt segment")
        );
        assert!(list_partitions(data.path()).unwrap().is_empty());
    }

    #[test]
    fn free_bytes_are_those_of_the_file_system_holding_the_partitions() {
        let data = tempfile::tempdir().unwrap();
        assert!(free_bytes(data.path()).is_some_and(|free| free > 0));
        assert_eq!(free_bytes(&data.path().join("no such directory")), None);
    }

    #[test]
    fn a_second_lock_on_a_partition_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DirLock::acquire(dir.path()).unwrap();
        let second = DirLock::acquire(dir.path()).unwrap_err();
        assert!(second.to_string().contains("another flowd"), "{second}");
    }
}
