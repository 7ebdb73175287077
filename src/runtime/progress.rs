//! Stored progress: where each stage, source and sink resumes after a restart.
//!
//! One small JSON file per (stage, input partition), per source and per sink, under
//! `DATA_DIR/progress/<name>/`, replaced atomically (write, fdatasync, rename, fsync the
//! directory). It is written only after every output of the inputs it covers is
//! durable, so it never claims more than survives a crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::error::{Result, RuntimeError};
use crate::storage::io;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Replay input from here (stateful operators rebuild their state from it).
    pub resume: u64,
    /// Every output of the inputs below this is durable.
    pub next: u64,
    /// The operator's record-time watermark at `next`.
    pub watermark_ms: i64,
    /// End-of-input markers seen below `resume`: producer id and offset (sinks: producer
    /// id and the partition it ended).
    #[serde(default)]
    pub ends_seen: Vec<(String, u64)>,
    /// Per output partition, the offset after this producer's last output below `next`;
    /// recovery scans from there for outputs written after it.
    #[serde(default)]
    pub output_ends: BTreeMap<u32, u64>,
    /// Directory sources: the file being read.
    #[serde(default)]
    pub file: Option<String>,
    /// Sinks: per input partition, the next offset to write.
    #[serde(default)]
    pub partitions: BTreeMap<u32, u64>,
    /// File sinks: the length of the output file that holds exactly those records.
    #[serde(default)]
    pub file_len: u64,
    /// File sinks: the CRC32C of those `file_len` bytes (`None` in a progress stored before
    /// it was kept), so that a peer taking a sink on in a cluster knows its file holds them.
    #[serde(default)]
    pub file_crc: Option<u32>,
    /// The producer finished its input and wrote its end markers.
    #[serde(default)]
    pub done: bool,
}

impl Progress {
    /// The progress of a producer with no operator state: every output of the inputs
    /// below `next` is written, and it resumes there. Only end markers below `next` are
    /// kept (a replay from `next` sees the others again).
    pub fn at(next: u64, ends_seen: &std::collections::HashMap<String, u64>, done: bool) -> Progress {
        Progress {
            resume: next,
            next,
            ends_seen: ends_below(ends_seen, next),
            done,
            ..Progress::default()
        }
    }
}

/// The end markers seen below `resume`, sorted: the ones a replay from there would miss.
pub fn ends_below(ends_seen: &std::collections::HashMap<String, u64>, resume: u64) -> Vec<(String, u64)> {
    let mut ends: Vec<(String, u64)> = ends_seen
        .iter()
        .filter(|(_, o)| **o < resume)
        .map(|(p, o)| (p.clone(), *o))
        .collect();
    ends.sort();
    ends
}

/// Where the progress of `name` (a stage, source or sink) for `part` lives.
pub fn path(data_dir: &Path, name: &str, part: &str) -> PathBuf {
    data_dir.join("progress").join(name).join(format!("{part}.json"))
}

pub fn load(path: &Path) -> Result<Option<Progress>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::Progress {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io("read", path)(e)),
    }
}

/// Replaces the file at `path`; with `durable`, the new content survives a crash once
/// this returns.
pub fn store(path: &Path, progress: &Progress, durable: bool) -> Result<()> {
    let bytes = serde_json::to_vec(progress).expect("progress always serializes");
    io::replace(path, &bytes, durable).map_err(RuntimeError::io("write progress file", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "count", "words-3");
        assert_eq!(load(&p).unwrap(), None);
        let mut progress = Progress {
            resume: 5,
            next: 9,
            ..Progress::default()
        };
        progress.output_ends.insert(2, 77);
        progress.ends_seen.push(("stage:a:b:0".into(), 4));
        store(&p, &progress, true).unwrap();
        assert_eq!(load(&p).unwrap(), Some(progress));
        std::fs::write(&p, b"{not json").unwrap();
        let error = load(&p).unwrap_err().to_string();
        assert!(error.contains("remove it"), "{error}");
    }
}
