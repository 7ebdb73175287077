//! Offline inspection of a data directory: every partition and segment, fully checked,
//! without changing a byte (no lock taken, no tail cut, files opened read-only).

use std::fs::File;
use std::path::Path;

use serde::Serialize;

use crate::storage::error::{Result, StorageError};
use crate::storage::layout;
use crate::storage::recovery::{self, Role, Verdict};

/// Everything `flowd inspect` found.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub data_dir: String,
    pub partitions: Vec<PartitionReport>,
    /// True when any segment is corrupt.
    pub corrupt: bool,
    /// Partition directories a cluster peer found damaged and set aside (it copied the
    /// partition again from its replicas), oldest first.
    pub set_aside: Vec<SetAsideReport>,
}

#[derive(Debug, Serialize)]
pub struct SetAsideReport {
    pub topic: String,
    pub partition: u32,
    pub dir: String,
    pub at_ms: i64,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: u32,
    pub dir: String,
    pub start_offset: Option<u64>,
    /// Unknown (`None`) when a segment is corrupt.
    pub next_offset: Option<u64>,
    pub corrupt: bool,
    /// Valid records (in whole batches) found in the segments.
    pub records: u64,
    pub data_bytes: u64,
    /// Bytes on disk per record (headers of batches included), when there are records.
    pub bytes_per_record: Option<f64>,
    pub segments: Vec<SegmentReport>,
    /// Segment files whose making never finished (`.creating`: a crash before the header
    /// was synced); they hold no record and the next open removes them.
    pub unfinished: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SegmentReport {
    pub file: String,
    pub base_offset: u64,
    /// 2: batches; 1: one frame per record (an older flowd's). `None` when the header
    /// is unreadable.
    pub format_version: Option<u32>,
    /// Valid batches (format-1: frames).
    pub batches: u64,
    /// Offset after the last valid record.
    pub next_offset: Option<u64>,
    pub records: u64,
    /// Bytes of valid frames.
    pub data_bytes: u64,
    pub file_bytes: u64,
    pub min_timestamp_ms: Option<i64>,
    pub max_timestamp_ms: Option<i64>,
    /// Byte up to which the segment is known to be synced.
    pub synced_to_byte: Option<u64>,
    pub sealed: bool,
    pub status: SegmentStatus,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SegmentStatus {
    Ok,
    /// Unsynced bytes past the last complete batch; the next open cuts them.
    TornTail {
        at_byte: u64,
        dropped_frames: u64,
        reason: String,
    },
    Corrupt {
        offset: Option<u64>,
        position: Option<u64>,
        error: String,
    },
}

/// Inspects every partition under `data_dir`.
pub fn inspect(data_dir: &Path, index_interval_bytes: u32) -> Result<InspectReport> {
    let mut partitions = Vec::new();
    for location in layout::list_partitions(data_dir)? {
        partitions.push(inspect_partition(&location, index_interval_bytes)?);
    }
    let corrupt = partitions.iter().any(|p| p.corrupt);
    let set_aside = layout::list_set_aside(data_dir)?
        .into_iter()
        .map(|s| SetAsideReport {
            topic: s.topic,
            partition: s.partition,
            dir: s.dir.display().to_string(),
            at_ms: s.at_ms,
            why: s.why,
        })
        .collect();
    Ok(InspectReport {
        data_dir: data_dir.display().to_string(),
        partitions,
        corrupt,
        set_aside,
    })
}

/// Checks one partition directory without changing it.
pub fn inspect_partition(
    location: &layout::PartitionLocation,
    index_interval_bytes: u32,
) -> Result<PartitionReport> {
    let files = layout::list_segments(&location.dir)?;
    let mut segments: Vec<SegmentReport> = Vec::with_capacity(files.len());
    for (i, (base, path)) in files.iter().enumerate() {
        let role = match files.get(i + 1) {
            Some((next, _)) => Role::Closed {
                next_base_offset: *next,
            },
            None => Role::Last,
        };
        let mut report = inspect_segment(path, *base, role, index_interval_bytes)?;
        let gap = segments
            .last()
            .and_then(|p| p.next_offset)
            .filter(|end| end != base);
        if let (Some(end), SegmentStatus::Ok) = (gap, &report.status) {
            report.status = SegmentStatus::Corrupt {
                offset: Some(end),
                position: None,
                error: format!(
                    "it starts at offset {base} but the segment before ends at {end}: a segment is missing"
                ),
            };
        }
        segments.push(report);
    }
    let corrupt = segments
        .iter()
        .any(|s| matches!(s.status, SegmentStatus::Corrupt { .. }));
    let records: u64 = segments.iter().map(|s| s.records).sum();
    let data_bytes: u64 = segments.iter().map(|s| s.data_bytes).sum();
    Ok(PartitionReport {
        topic: location.topic.clone(),
        partition: location.partition,
        dir: location.dir.display().to_string(),
        start_offset: segments.first().map(|s| s.base_offset),
        // Past a corrupt segment the end is unknown: what a reopen keeps is not decided.
        next_offset: if corrupt {
            None
        } else {
            segments.iter().rev().find_map(|s| s.next_offset)
        },
        corrupt,
        records,
        data_bytes,
        bytes_per_record: (records > 0).then(|| data_bytes as f64 / records as f64),
        segments,
        unfinished: layout::list_creating_segments(&location.dir)?
            .iter()
            .map(|path| path.display().to_string())
            .collect(),
    })
}

fn inspect_segment(path: &Path, base: u64, role: Role, index_interval_bytes: u32) -> Result<SegmentReport> {
    let file = File::open(path).map_err(StorageError::io("open segment", path))?;
    let check = recovery::check_segment(path, &file, index_interval_bytes)?;
    let mut report = SegmentReport {
        file: path.display().to_string(),
        base_offset: base,
        format_version: check.header.as_ref().ok().map(|h| h.format_version),
        batches: 0,
        next_offset: None,
        records: 0,
        data_bytes: 0,
        file_bytes: check.file_len,
        min_timestamp_ms: None,
        max_timestamp_ms: None,
        synced_to_byte: check.marker.map(|m| m.data_end),
        sealed: check.marker.is_some_and(|m| m.sealed),
        status: SegmentStatus::Ok,
    };
    if let Some(scan) = &check.scan {
        let records = scan.end.next_offset - base;
        report.next_offset = Some(scan.end.next_offset);
        report.records = records;
        report.batches = scan.batches;
        report.data_bytes = scan.end.data_end - crate::storage::format::SEGMENT_HEADER_BYTES;
        report.min_timestamp_ms = (records > 0).then_some(scan.min_timestamp_ms);
        report.max_timestamp_ms = (records > 0).then_some(scan.end.max_timestamp_ms);
    }
    report.status = match recovery::judge(&check, base, role) {
        Ok(Verdict::Clean) => SegmentStatus::Ok,
        Ok(Verdict::TornTail {
            data_end,
            stop,
            incomplete_batch_frames,
        }) => SegmentStatus::TornTail {
            at_byte: data_end,
            dropped_frames: incomplete_batch_frames,
            reason: stop.map_or("an atomic batch is cut short".into(), |s| s.defect.to_string()),
        },
        Err(error) if error.is_corruption() => {
            let (offset, position) = match &error {
                StorageError::CorruptFrame { offset, position, .. } => (Some(*offset), Some(*position)),
                _ => (None, None),
            };
            report.next_offset = None;
            SegmentStatus::Corrupt {
                offset,
                position,
                error: error.to_string(),
            }
        }
        Err(other) => return Err(other),
    };
    Ok(report)
}
