//! The committed format-v1 data dir (tests/fixtures/format-v1) still opens and reads back
//! exactly: a change that breaks reading old data fails here. `FLOWD_WRITE_FIXTURE=1`
//! rewrites the fixture (only ever for a new format version).

use std::path::{Path, PathBuf};

use flowd::storage::layout::partition_dir;
use flowd::storage::{Durability, PartitionLog};

use crate::support::{append_expected, assert_log_is_expected_prefix, expected, small_options};

const RECORDS: u64 = 500;

pub(crate) fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1")
}

fn write_fixture(data_dir: &Path) {
    let dir = partition_dir(data_dir, "events", 0);
    let mut log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
    for start in (0..RECORDS).step_by(25) {
        append_expected(&mut log, start..start + 25);
    }
    log.close().unwrap();
    std::fs::remove_file(dir.join(".lock")).unwrap();
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes a newer marker slot that is not sealed over a segment's newest one.
fn unseal(segment: &Path) {
    use flowd::storage::format::{MarkerSlot, SEGMENT_HEADER_BYTES};
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .unwrap();
    let mut page = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut page, 0).unwrap();
    let newest = MarkerSlot::newest(&page).expect("a synced segment has a marker");
    let slot = MarkerSlot {
        seq: newest.seq + 1,
        sealed: false,
        ..newest
    };
    file.write_all_at(&slot.encode(), MarkerSlot::position(slot.seq) as u64)
        .unwrap();
}

#[test]
fn format_v1_fixture_reads_back_exactly() {
    if std::env::var_os("FLOWD_WRITE_FIXTURE").is_some() {
        let _ = std::fs::remove_dir_all(fixture_dir());
        write_fixture(&fixture_dir());
    }
    // Opening mends and locks, so open a copy and leave the fixture as committed.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), copy.path());
    let dir = partition_dir(copy.path(), "events", 0);
    // As if the old flowd had stopped before sealing its last segment: a newer marker,
    // not sealed, at the same place.
    let last_file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    unseal(&last_file);

    let log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
    assert_eq!(assert_log_is_expected_prefix(&log), RECORDS);
    assert_eq!(log.recovery().torn_tail, None);
    assert!(log.segments().len() > 1);
    // Reads by offset and by time land in the old frames too.
    assert_eq!(log.get(123).unwrap().offset(), 123);
    let t = expected(321).timestamp_ms;
    let first_at_t = (0..RECORDS).find(|&o| expected(o).timestamp_ms >= t).unwrap();
    assert_eq!(log.offset_at_time(t).unwrap(), Some(first_at_t));
    // The old format's last segment takes no appends: it is sealed on disk on open
    // (inspected while the log is open, as inspect takes no lock; a later open would
    // seal a closed segment left unsealed anyway).
    let inspect = || {
        flowd::storage::inspect::inspect(copy.path(), small_options(Durability::Every).index_interval_bytes)
            .unwrap()
    };
    let report = inspect();
    let segments = &report.partitions[0].segments;
    assert!(segments.iter().any(|s| s.format_version == Some(2)));
    assert!(
        segments
            .iter()
            .filter(|s| s.format_version == Some(1))
            .all(|s| s.sealed),
        "every old-format segment is sealed on disk"
    );
    drop(log);

    // Appends go on in batches, in the new segment after the old ones.
    let mut log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
    for start in (RECORDS..RECORDS + 100).step_by(20) {
        append_expected(&mut log, start..start + 20);
    }
    drop(log);
    let log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
    assert_eq!(assert_log_is_expected_prefix(&log), RECORDS + 100);
    assert_eq!(log.recovery().torn_tail, None);
    let report = inspect();
    let versions: Vec<Option<u32>> = report.partitions[0]
        .segments
        .iter()
        .map(|s| s.format_version)
        .collect();
    assert_eq!(versions.first(), Some(&Some(1)), "{versions:?}");
    assert_eq!(versions.last(), Some(&Some(2)), "{versions:?}");
    assert_eq!(report.partitions[0].records, RECORDS + 100);
}
