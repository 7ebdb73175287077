//! What a partition log does for replication: batches stamped with their leader's
//! epoch, a replica holding the leader's batches at the same offsets, where each epoch
//! ends, and a cut back to an offset that a power cut at any point cannot undo into a
//! wrong log.

use flowd::storage::batch::CheckedBatch;
use flowd::storage::powercut::Recording;
use flowd::storage::{Durability, PartitionLog, Record, StorageError, Stored};

use crate::support::{
    append_expected, assert_expected, assert_log_is_expected_prefix, fast_tempdir, small_options,
};

/// Appends `offsets` in batches of `size` under `epoch`.
fn append_under(log: &mut PartitionLog, epoch: u32, offsets: std::ops::Range<u64>, size: u64) {
    log.set_leader_epoch(epoch);
    let mut at = offsets.start;
    while at < offsets.end {
        let end = (at + size).min(offsets.end);
        append_expected(log, at..end);
        at = end;
    }
}

/// Copies `leader`'s batches from `from` on into `replica`, as replication does.
fn replicate(leader: &PartitionLog, replica: &mut PartitionLog, from: u64) -> Result<u64, StorageError> {
    let mut copied = 0;
    for stored in leader.read_batches(from, u64::MAX) {
        let Stored::Batch { bytes, .. } = stored else {
            panic!("format 2 logs hold batches")
        };
        let mut batch = CheckedBatch::check(bytes).expect("a stored batch checks");
        replica.append_replica(&mut batch)?;
        copied += 1;
    }
    Ok(copied)
}

#[test]
fn a_replica_holds_the_leaders_batches_at_the_same_offsets_with_their_epochs() {
    let dir = fast_tempdir();
    let mut leader =
        PartitionLog::open(&dir.path().join("leader"), small_options(Durability::Group)).unwrap();
    append_under(&mut leader, 1, 0..50, 7);
    append_under(&mut leader, 4, 50..400, 13);
    assert!(leader.segments().len() > 1, "the test crosses segments");
    assert_eq!(leader.epochs(), [(1, 0), (4, 50)]);

    let path = dir.path().join("replica");
    let mut replica = PartitionLog::open(&path, small_options(Durability::Group)).unwrap();
    replicate(&leader, &mut replica, 0).unwrap();
    assert_eq!(assert_log_is_expected_prefix(&replica), 400);
    assert_eq!(replica.epochs(), [(1, 0), (4, 50)]);
    // A batch that does not continue the copy is refused, naming where it ends.
    let again = replicate(&leader, &mut replica, 0).unwrap_err();
    assert!(
        matches!(
            again,
            StorageError::ReplicaGap {
                expected: 400,
                got: 0
            }
        ),
        "{again}"
    );
    // Where each epoch ends, as a diverged replica asks.
    assert_eq!(leader.epoch_end(0), (0, 0));
    assert_eq!(leader.epoch_end(1), (1, 50));
    assert_eq!(leader.epoch_end(3), (1, 50));
    assert_eq!(leader.epoch_end(4), (4, 400));
    assert_eq!(leader.epoch_end(9), (4, 400));
    replica.close().unwrap();
    // The epochs are in the batches: a reopened copy finds them again.
    let replica = PartitionLog::open(&path, small_options(Durability::Group)).unwrap();
    assert_eq!(replica.epochs(), [(1, 0), (4, 50)]);
    assert_eq!(replica.last_epoch(), 4);
}

#[test]
fn a_log_cut_back_loses_exactly_the_records_from_the_cut_in_any_segment() {
    let dir = fast_tempdir();
    for (case, durability) in [Durability::None, Durability::Group, Durability::Every]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("cut{case}"));
        let mut log = PartitionLog::open(&path, small_options(durability)).unwrap();
        append_under(&mut log, 2, 0..1000, 10);
        let segments = log.segments();
        assert!(segments.len() >= 4, "the test crosses segments");
        // In the last segment, at a segment's start, then deep in an older one.
        let cuts = [990, segments[2].base_offset, 130];
        for cut in cuts {
            log.truncate(cut).unwrap();
            assert_eq!(log.next_offset(), cut);
            assert_eq!(assert_log_is_expected_prefix(&log), cut);
            // Appends go on from the cut; the epochs know where they are.
            append_under(&mut log, 3, cut..cut + 25, 5);
            assert_eq!(log.epochs(), [(2, 0), (3, cut)]);
            log.truncate(cut).unwrap();
            assert_eq!(log.epochs(), [(2, 0)]);
        }
        // Inside a batch is refused, saying what to do.
        let inside = log.truncate(125).unwrap_err();
        assert!(inside.to_string().contains("inside a batch"), "{inside}");
        log.close().unwrap();
        let log = PartitionLog::open(&path, small_options(durability)).unwrap();
        assert_eq!(assert_log_is_expected_prefix(&log), 130);
        assert_eq!(log.recovery().torn_tail, None);
    }
}

/// Values written after the cut, told apart from the ones cut.
fn fresh(offset: u64) -> Vec<u8> {
    format!("after the cut {offset}").into_bytes()
}

/// Runs `change` on a log of 700 expected records (epoch 1, batches of 10) recorded as
/// it goes, then appends 40 fresh records one at a time from `fresh_from`; then opens
/// the log as a power cut at each step from the change on leaves it, and hands it to
/// `check` with the step and the step the change was done at. Every fresh record
/// durable before the cut must be there.
fn at_every_power_cut(
    change: impl FnOnce(&mut PartitionLog),
    fresh_from: u64,
    check: impl Fn(&PartitionLog, usize, usize),
) {
    let root = fast_tempdir();
    let data = root.path().join("recorded");
    let recording = Recording::start(&data);
    let mut log = PartitionLog::open(&data, small_options(Durability::Every)).unwrap();
    append_under(&mut log, 1, 0..700, 10);
    assert!(log.segments().len() >= 3, "the test crosses segments");
    let before = recording.len();
    change(&mut log);
    let changed = recording.len();
    let mut acked_at = Vec::new();
    for offset in fresh_from..fresh_from + 40 {
        let value = fresh(offset);
        log.append(&[Record::new(1, &value)]).unwrap();
        acked_at.push((offset, recording.len()));
    }
    drop(log);
    let total = recording.len();
    let trace = recording.finish();
    assert!(changed > before + 3, "the change changed the disk in steps");

    for (i, crash_at) in (before..=total).enumerate() {
        let into = root.path().join(format!("cut-{i}"));
        trace.cut(crash_at, i as u64, &into).unwrap();
        let log = PartitionLog::open(&into, small_options(Durability::Every))
            .unwrap_or_else(|e| panic!("a power cut after {crash_at} of {total} operations: {e}"));
        check(&log, crash_at, changed);
        for &(offset, at) in &acked_at {
            if crash_at >= at {
                assert!(
                    log.next_offset() > offset,
                    "record {offset}, durable before the cut at {crash_at}, lost"
                );
            }
        }
        std::fs::remove_dir_all(&into).unwrap();
    }
}

#[test]
fn a_power_cut_during_a_cut_back_leaves_the_old_log_or_the_cut_one_never_a_mix() {
    let cut = |log: &mut PartitionLog| log.truncate(300).unwrap();
    at_every_power_cut(cut, 300, |log, crash_at, cut_done| {
        let mut next = 0;
        let mut fresh_seen = false;
        for view in log.read(0) {
            assert_eq!(view.offset(), next, "dense offsets");
            if view.offset() < 300 {
                assert_expected(&view);
            } else if view.value() == fresh(view.offset()) {
                fresh_seen = true;
            } else {
                assert!(!fresh_seen, "an old record after a new one at {}", view.offset());
                assert!(crash_at < cut_done, "a cut record back after the cut was durable");
                assert_expected(&view);
            }
            next += 1;
        }
        assert!(
            next >= 300,
            "records below the cut lost ({next} left, cut after {crash_at})"
        );
    });
}

/// Checks that `log` holds exactly the expected records `start..end`, densely.
fn assert_expected_range(log: &PartitionLog, start: u64, end: u64) {
    assert_eq!((log.start_offset(), log.next_offset()), (start, end));
    let mut next = start;
    for view in log.read(0) {
        assert_eq!(view.offset(), next, "dense offsets from {start}");
        assert_expected(&view);
        next += 1;
    }
    assert_eq!(next, end);
}

#[test]
fn a_copy_that_ends_before_its_leaders_log_begins_starts_again_where_it_begins() {
    let dir = fast_tempdir();
    let mut leader =
        PartitionLog::open(&dir.path().join("leader"), small_options(Durability::Group)).unwrap();
    append_under(&mut leader, 1, 0..100, 10);
    append_under(&mut leader, 2, 100..1000, 10);
    assert_eq!(leader.epochs(), [(1, 0), (2, 100)]);
    // Retention on the leader: the oldest segments go, and with them what it knows of
    // their epochs (as a reopened log would find).
    let report = leader.delete_below(500).unwrap();
    assert!(report.deleted_segments >= 1, "the test deletes segments");
    let start = leader.start_offset();
    assert!(start > 100 && start <= 500, "the leader begins at {start}");
    assert_eq!(leader.epochs(), [(2, start)]);
    // An empty copy starting at `start` knows no epoch: no divergence below the start.
    assert_eq!(leader.epoch_end(0), (0, start));

    // An empty copy and one that ends before the leader begins: neither can continue
    // (the gap is refused, loudly), both start again at the leader's start.
    for (case, held) in [0, start / 2].into_iter().enumerate() {
        let path = dir.path().join(format!("replica{case}"));
        let mut replica = PartitionLog::open(&path, small_options(Durability::Group)).unwrap();
        append_under(&mut replica, 1, 0..held, 10);
        let gap = replicate(&leader, &mut replica, held).unwrap_err();
        assert!(
            matches!(gap, StorageError::ReplicaGap { expected, got } if expected == held && got == start),
            "{gap}"
        );
        replica.restart_at(start).unwrap();
        assert_expected_range(&replica, start, start);
        replicate(&leader, &mut replica, start).unwrap();
        replica.sync().unwrap();
        assert_expected_range(&replica, start, 1000);
        assert_eq!(replica.epochs(), [(2, start)]);
        assert_eq!(replica.durable_offset(), 1000);
        // Starting again at or behind its end is refused: it would drop records.
        let refused = replica.restart_at(999).unwrap_err();
        assert!(
            refused.to_string().contains("holds records up to 1000"),
            "{refused}"
        );
        replica.close().unwrap();
        let replica = PartitionLog::open(&path, small_options(Durability::Group)).unwrap();
        assert_expected_range(&replica, start, 1000);
    }
    // What the leader knew of its epochs after retention is what it finds when reopened.
    leader.close().unwrap();
    let leader = PartitionLog::open(&dir.path().join("leader"), small_options(Durability::Group)).unwrap();
    assert_eq!(leader.epochs(), [(2, start)]);
}

#[test]
fn a_power_cut_while_a_copy_starts_again_leaves_a_later_part_of_it_or_none_never_a_gap() {
    let restart = |log: &mut PartitionLog| log.restart_at(5000).unwrap();
    at_every_power_cut(restart, 5000, |log, crash_at, restarted| {
        let (start, end) = (log.start_offset(), log.next_offset());
        if start >= 5000 {
            assert_eq!(start, 5000, "the new start");
            let mut next = start;
            for view in log.read(0) {
                assert_eq!(view.offset(), next, "dense offsets");
                assert_eq!(view.value(), fresh(next), "a record of the new start");
                next += 1;
            }
            assert_eq!(next, end);
        } else {
            // The old log, or a later part of it (its oldest segments gone first), or
            // none: the replica is told again where its leader begins.
            assert!(
                crash_at < restarted,
                "the old records back after the new start was durable"
            );
            assert!(end == 700 || (start, end) == (0, 0), "{start}..{end}");
            for (n, view) in log.read(0).enumerate() {
                assert_eq!(view.offset(), start + n as u64, "dense offsets");
                assert_expected(&view);
            }
        }
    });
}
