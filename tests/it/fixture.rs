//! The committed format-v1 data dir (tests/fixtures/format-v1) still opens and reads back
//! exactly: a change that breaks reading old data fails here. `FLOWD_WRITE_FIXTURE=1`
//! rewrites the fixture (only ever for a new format version).

use std::path::{Path, PathBuf};

use flowd::storage::layout::partition_dir;
use flowd::storage::{Durability, PartitionLog};

use crate::support::{append_expected, assert_log_is_expected_prefix, small_options};

const RECORDS: u64 = 500;

fn fixture_dir() -> PathBuf {
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

fn copy_dir(from: &Path, to: &Path) {
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
    let log = PartitionLog::open(&dir, small_options(Durability::Every)).unwrap();
    assert_eq!(assert_log_is_expected_prefix(&log), RECORDS);
    assert_eq!(log.recovery().torn_tail, None);
    assert!(log.segments().len() > 1);
}
