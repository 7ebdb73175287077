//! Recovery scenarios a crash (or a power loss) leaves behind, each written as the state
//! on disk and what opening must make of it.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flowd::storage::format::{MARKER_SLOT_BYTES, MARKER_SLOT_POSITIONS, SEGMENT_HEADER_BYTES};
use flowd::storage::{Durability, LogOptions, PartitionLog, Record};

use crate::support::{assert_log_is_expected_prefix, fast_tempdir, fill, small_options};

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    flowd::storage::layout::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Erases both marker slots: the segment looks never synced and never sealed.
fn erase_markers(path: &Path) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    for at in MARKER_SLOT_POSITIONS {
        file.write_all_at(&[0u8; MARKER_SLOT_BYTES], at as u64).unwrap();
    }
}

/// Overwrites the last `bytes` bytes of a segment's data with garbage; returns the
/// offset after its last record before that.
fn tear_end(dir: &Path, path: &Path, bytes: u64) -> u64 {
    let log = PartitionLog::open(dir, small_options(Durability::None)).unwrap();
    let info = log.segments().into_iter().find(|s| s.path == path).unwrap();
    drop(log);
    let end = SEGMENT_HEADER_BYTES + info.data_bytes;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0xa5; bytes as usize], end - bytes)
        .unwrap();
    info.next_offset
}

fn three_segments() -> tempfile::TempDir {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    fill(&mut log, 0..800);
    log.close().unwrap();
    assert!(segment_files(dir.path()).len() >= 3);
    dir
}

/// Power lost while the syncer sealed segment 1: its tail never reached the disk and
/// its seal is missing. Also returns where segment 1 ended before.
fn torn_unsealed_middle_segment() -> (tempfile::TempDir, Vec<PathBuf>, u64) {
    let dir = three_segments();
    let files = segment_files(dir.path());
    let end = tear_end(dir.path(), &files[1], 100);
    erase_markers(&files[1]);
    (dir, files, end)
}

#[test]
fn an_unsealed_torn_older_segment_is_the_logs_torn_tail() {
    // And nothing after segment 1 was synced.
    let (dir, files, end) = torn_unsealed_middle_segment();
    for later in &files[2..] {
        erase_markers(later);
    }
    let log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    let kept = assert_log_is_expected_prefix(&log);
    // `fill` writes atomic batches of 50: the torn one (segment 1's last) goes whole,
    // everything before it stays.
    assert_eq!(end % 50, 0, "segments end between batches");
    assert_eq!(kept, end - 50, "kept {kept} of {end}");
    assert_eq!(
        log.segments().len(),
        2,
        "the segments after the torn one are gone"
    );
    for later in &files[2..] {
        assert!(!later.exists(), "{} should be removed", later.display());
    }
    assert!(log.recovery().torn_tail.is_some());
}

#[test]
fn a_torn_older_segment_followed_by_synced_data_is_corruption() {
    let (dir, files, _) = torn_unsealed_middle_segment();
    // The last segment still records synced data: the damage cannot be a crash's.
    let error = PartitionLog::open(dir.path(), small_options(Durability::Group))
        .err()
        .unwrap();
    assert!(error.is_corruption(), "{error}");
    assert!(error.to_string().contains("holds synced records"), "{error}");
    assert!(
        files.iter().all(|f| f.exists()),
        "nothing is deleted on a refusal"
    );
}

#[test]
fn a_torn_sealed_segment_is_corruption() {
    let dir = three_segments();
    let files = segment_files(dir.path());
    tear_end(dir.path(), &files[0], 100);
    let error = PartitionLog::open(dir.path(), small_options(Durability::Group))
        .err()
        .unwrap();
    assert!(error.is_corruption(), "{error}");
    assert!(error.to_string().contains("00000000000000000000.seg"), "{error}");
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = three_segments();
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).unwrap();
    let error = PartitionLog::open(dir.path(), small_options(Durability::Group))
        .err()
        .unwrap();
    assert!(error.is_corruption(), "{error}");
}

#[test]
fn a_segment_whose_making_never_finished_is_removed() {
    // A crash before a new segment's header was synced and it took its real name leaves
    // a `.creating` file: all zeros, or a header torn midway.
    let dir = three_segments();
    let next = PartitionLog::open(dir.path(), small_options(Durability::Group))
        .unwrap()
        .next_offset();
    let blank = dir.path().join(format!("{next:020}.seg.creating"));
    std::fs::write(&blank, vec![0u8; 64 * 1024]).unwrap();
    let torn = dir.path().join(format!("{:020}.seg.creating", next + 1));
    std::fs::write(&torn, b"FLOWDSEG").unwrap();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    assert_eq!(
        log.recovery().unfinished_segments,
        vec![blank.clone(), torn.clone()]
    );
    assert!(!blank.exists() && !torn.exists());
    assert_eq!(log.next_offset(), next);
    assert_log_is_expected_prefix(&log);
    fill(&mut log, next..next + 10);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    assert_eq!(assert_log_is_expected_prefix(&log), next + 10);
    assert!(log.recovery().unfinished_segments.is_empty());
}

/// Every disk a power cut could leave, from `from` of the trace's operations on, a few
/// page and name choices each, opened with `options` and handed to `check` with the
/// cut's position; each must open. Returns how many were opened (a cut before the
/// directory itself was made leaves nothing to open).
fn open_every_cut(
    root: &Path,
    trace: &flowd::storage::powercut::Trace,
    from: usize,
    options: &LogOptions,
    check: impl Fn(&PartitionLog, usize),
) -> usize {
    let total = trace.ops.len();
    let mut opened = 0;
    for crash_at in from..=total {
        for seed in 0..6u64 {
            let into = root.join(format!("cut-{crash_at}-{seed}"));
            trace.cut(crash_at, seed * 7919 + crash_at as u64, &into).unwrap();
            if !into.exists() {
                continue;
            }
            let log = PartitionLog::open(&into, options.clone()).unwrap_or_else(|e| {
                panic!("a power cut after {crash_at} of {total} operations, seed {seed}: {e}")
            });
            check(&log, crash_at);
            opened += 1;
            drop(log);
            std::fs::remove_dir_all(&into).unwrap();
        }
    }
    opened
}

#[test]
fn a_power_cut_at_any_step_of_rolling_to_new_segments_opens_with_every_synced_record() {
    // A roll makes a segment in steps (file, size, header, sync, name, directory sync):
    // whatever part of them a power cut keeps, the log opens, and no record synced
    // before the cut is gone. A real name on a torn header would be refused here.
    let root = fast_tempdir();
    let data = root.path().join("recorded");
    let recording = flowd::storage::powercut::Recording::start(&data);
    let mut log = PartitionLog::open(&data, small_options(Durability::None)).unwrap();
    let mut synced_at = Vec::new();
    let mut next = 0;
    while log.segments().len() < 4 {
        fill(&mut log, next..next + 25);
        next += 25;
        log.sync().unwrap();
        synced_at.push((next, recording.len()));
    }
    drop(log);
    let trace = recording.finish();
    let total = trace.ops.len();
    let opened = open_every_cut(
        root.path(),
        &trace,
        0,
        &small_options(Durability::None),
        |log, crash_at| {
            let kept = assert_log_is_expected_prefix(log);
            let synced = synced_at
                .iter()
                .filter(|(_, at)| *at <= crash_at)
                .map(|(records, _)| *records)
                .max()
                .unwrap_or(0);
            assert!(
                kept >= synced,
                "a cut after {crash_at}: kept {kept} of {synced} synced records"
            );
        },
    );
    assert!(opened > total, "the cuts were opened ({opened})");
}

#[test]
fn an_empty_segment_too_small_for_a_batch_is_replaced_in_one_step_keeping_the_logs_start() {
    // A log whose one segment is empty and starts at 1000 (a copy started again there),
    // reopened with bigger segments, takes a batch its old segment has no room for: a
    // bigger segment takes the empty one's place. At no power cut may the log lose its
    // start and begin again at 0 (its offsets would be handed out twice).
    let root = fast_tempdir();
    let data = root.path().join("recorded");
    let recording = flowd::storage::powercut::Recording::start(&data);
    let mut log = PartitionLog::open(&data, small_options(Durability::Every)).unwrap();
    fill(&mut log, 0..100);
    log.restart_at(1000).unwrap();
    log.close().unwrap();
    let bigger = LogOptions {
        segment_bytes: 1 << 20,
        ..small_options(Durability::Every)
    };
    let value = vec![7u8; 15 * 1024];
    let batch: Vec<Record> = (0..5).map(|_| Record::new(1, &value)).collect();
    let reopened_at = recording.len();
    let mut log = PartitionLog::open(&data, bigger.clone()).unwrap();
    assert_eq!((log.start_offset(), log.next_offset()), (1000, 1000));
    log.append(&batch).unwrap();
    let appended_at = recording.len();
    let segments = log.segments();
    assert_eq!(segments.len(), 1, "the empty segment was replaced, not sealed");
    assert_eq!((segments[0].base_offset, segments[0].next_offset), (1000, 1005));
    drop(log);
    let trace = recording.finish();
    let opened = open_every_cut(root.path(), &trace, reopened_at, &bigger, |log, crash_at| {
        assert_eq!(
            log.start_offset(),
            1000,
            "a cut after {crash_at}: the log lost its start"
        );
        let next = log.next_offset();
        assert!(
            next == 1000 || next == 1005,
            "a cut after {crash_at}: the log ends at {next}"
        );
        assert!(
            crash_at < appended_at || next == 1005,
            "a cut after {crash_at}: the acked batch is gone"
        );
    });
    assert!(
        opened > trace.ops.len() - reopened_at,
        "every cut was opened ({opened})"
    );
}

#[test]
fn a_newest_segment_without_a_whole_header_is_refused_not_dropped() {
    // A segment takes its real name only once its header is synced: the newest one cut
    // short or zeroed was damaged later, and may have held acked records.
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 3] = [
        ("emptied", |path| {
            OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(0)
                .unwrap();
        }),
        ("cut inside its header", |path| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(SEGMENT_HEADER_BYTES - 512).unwrap();
        }),
        ("header zeroed", |path| {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&vec![0u8; SEGMENT_HEADER_BYTES as usize], 0)
                .unwrap();
        }),
    ];
    for (what, damage) in damages {
        let dir = three_segments();
        let files = segment_files(dir.path());
        let newest = files.last().unwrap();
        let held = PartitionLog::open(dir.path(), small_options(Durability::Group))
            .unwrap()
            .segments()
            .last()
            .map(|s| s.next_offset - s.base_offset)
            .unwrap();
        assert!(held > 0, "{what}: the newest segment holds records");
        damage(newest);
        let error = PartitionLog::open(dir.path(), small_options(Durability::Group))
            .err()
            .unwrap_or_else(|| panic!("{what}: a newest segment without its header opened"));
        assert!(error.is_corruption(), "{what}: {error}");
        let name = newest.file_name().unwrap().to_str().unwrap();
        assert!(
            error.to_string().contains(name),
            "{what}: the error names the file: {error}"
        );
        assert!(
            newest.exists(),
            "{what}: the damaged segment is kept for the operator"
        );
    }
}
