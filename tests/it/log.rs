//! The partition log as a user sees it: append, read, seek, roll, reopen, retention,
//! durability modes, poisoning and bad input.

use flowd::storage::{
    Durability, Header, LogOptions, PartitionLog, Record, RetentionPolicy, StorageError, SyncFaults,
};

use crate::support::{
    append_expected, append_expected_encoded, assert_expected, assert_log_is_expected_prefix, expected,
    fast_tempdir, fill, small_options,
};

/// Appends batches of many sizes across segments in every durability mode, the i-th with
/// `append(i, ...)`, and checks every record back, by offset and by time, before and
/// after a reopen.
fn appended_batches_read_back_identical(
    append: impl Fn(usize, &mut PartitionLog, std::ops::Range<u64>) -> flowd::storage::AppendReceipt,
) {
    let dir = fast_tempdir();
    for durability in [Durability::None, Durability::Group, Durability::Every] {
        let path = dir.path().join(durability.to_string());
        let mut log = PartitionLog::open(&path, small_options(durability)).unwrap();
        let mut next = 0;
        let sizes = [1u64, 5, 17, 1, 64, 3, 200, 2, 90].repeat(4);
        for (i, batch) in sizes.into_iter().enumerate() {
            let receipt = append(i, &mut log, next..next + batch);
            assert_eq!((receipt.first_offset, receipt.next_offset), (next, next + batch));
            log.wait_durable(receipt.next_offset).unwrap();
            assert!(log.durable_offset() >= receipt.next_offset);
            next += batch;
        }
        assert!(
            log.segments().len() > 3,
            "{durability}: the test must cross segments"
        );
        assert_eq!(assert_log_is_expected_prefix(&log), next);
        let t = expected(777).timestamp_ms;
        let first_at_t = (0..next).find(|&o| expected(o).timestamp_ms >= t).unwrap();
        assert_eq!(log.offset_at_time(t).unwrap(), Some(first_at_t));
        log.close().unwrap();

        let log = PartitionLog::open(&path, small_options(durability)).unwrap();
        assert_eq!(log.recovery().records, next);
        assert_eq!(log.recovery().torn_tail, None);
        assert_eq!(assert_log_is_expected_prefix(&log), next);
    }
}

#[test]
fn appended_records_read_back_identical_across_segments_and_reopen() {
    appended_batches_read_back_identical(|_, log, offsets| append_expected(log, offsets));
}

#[test]
fn batches_made_by_a_client_read_back_identical_among_the_logs_own_and_after_reopen() {
    appended_batches_read_back_identical(|i, log, offsets| {
        if i % 2 == 0 {
            append_expected_encoded(log, offsets)
        } else {
            append_expected(log, offsets)
        }
    });
}

#[test]
fn a_client_batch_over_a_limit_is_refused_whole_and_the_log_stays_usable() {
    let dir = fast_tempdir();
    let options = small_options(Durability::Every);
    let mut log = PartitionLog::open(dir.path(), options.clone()).unwrap();
    let big = vec![0u8; options.max_record_bytes as usize];
    let small = [1u8; 10];
    let names: Vec<String> = (0..65).map(|i| format!("h{i}")).collect();
    let many: Vec<Header<'_>> = names.iter().map(|n| Header { name: n, value: b"" }).collect();
    for records in [
        vec![Record::new(1, &small), Record::new(2, &big)],
        vec![Record::new(1, &small).with_headers(&many)],
    ] {
        let mut bytes = Vec::new();
        flowd::storage::batch::encode_batch(&records, 0, false, &mut bytes);
        let mut batch = flowd::storage::batch::CheckedBatch::check(&bytes).unwrap();
        let error = log.append_checked(&mut batch).unwrap_err();
        assert!(
            matches!(
                error,
                StorageError::RecordTooLarge { .. } | StorageError::TooManyHeaders { .. }
            ),
            "{error}"
        );
        assert_eq!(log.next_offset(), 0, "nothing of a refused batch is written");
    }
    append_expected_encoded(&mut log, 0..10);
    assert_eq!(assert_log_is_expected_prefix(&log), 10);
}

#[test]
fn reads_start_at_any_offset_and_stop_at_the_range_end() {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::None)).unwrap();
    fill(&mut log, 0..1000);
    for from in [0u64, 1, 2, 99, 100, 101, 511, 998, 999] {
        let offsets: Vec<u64> = log.read(from).map(|v| v.offset()).collect();
        assert_eq!(offsets, (from..1000).collect::<Vec<_>>(), "read from {from}");
        let ranged: Vec<u64> = log.read_range(from, from + 3).map(|v| v.offset()).collect();
        assert_eq!(ranged, (from..(from + 3).min(1000)).collect::<Vec<_>>());
        assert_expected(&log.get(from).unwrap());
    }
    assert!(log.get(1000).is_none());
    assert_eq!(log.read(1000).count(), 0);
    assert_eq!(log.read(5000).count(), 0);
}

#[test]
fn seek_by_time_finds_the_first_record_at_or_after_it() {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::None)).unwrap();
    fill(&mut log, 0..2000);
    // Expected timestamps are not in offset order; compare with a plain search.
    let timestamps: Vec<i64> = (0..2000).map(|o| expected(o).timestamp_ms).collect();
    let lowest = *timestamps.iter().min().unwrap();
    let highest = *timestamps.iter().max().unwrap();
    for t in [
        lowest - 1,
        lowest,
        lowest + 1,
        1_700_000_050_000,
        highest - 1,
        highest,
        highest + 1,
    ] {
        let want = timestamps.iter().position(|ts| *ts >= t).map(|i| i as u64);
        assert_eq!(log.offset_at_time(t).unwrap(), want, "t = {t}");
        let first = log.read_from_time(t).next().map(|v| v.offset());
        assert_eq!(first, want, "read_from_time({t})");
    }
}

#[test]
fn keys_headers_and_empty_values_round_trip() {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::Every)).unwrap();
    let headers = [
        Header {
            name: "a",
            value: b"1",
        },
        Header { name: "", value: b"" },
    ];
    let records = [
        Record::new(-5, b""),
        Record::new(0, b"v").with_key(b""),
        Record::new(i64::MAX, b"value")
            .with_key(b"k")
            .with_headers(&headers),
    ];
    log.append(&records).unwrap();
    let got: Vec<_> = log
        .read(0)
        .map(|v| {
            let headers: Vec<(String, Vec<u8>)> = v.headers().map(|(n, v)| (n.into(), v.into())).collect();
            (
                v.timestamp_ms(),
                v.key().map(<[u8]>::to_vec),
                v.value().to_vec(),
                headers,
            )
        })
        .collect();
    assert_eq!(got[0], (-5, None, vec![], vec![]));
    assert_eq!(got[1], (0, Some(vec![]), b"v".to_vec(), vec![]));
    assert_eq!(
        got[2],
        (
            i64::MAX,
            Some(b"k".to_vec()),
            b"value".to_vec(),
            vec![("a".into(), b"1".to_vec()), ("".into(), vec![])]
        )
    );
}

#[test]
fn bad_records_are_refused_and_the_log_stays_usable() {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::None)).unwrap();
    let big = vec![0u8; 20 * 1024];
    let error = log.append(&[Record::new(0, &big)]).unwrap_err();
    assert!(matches!(error, StorageError::RecordTooLarge { .. }), "{error}");
    assert!(error.to_string().contains("max_record_bytes"), "{error}");

    let many: Vec<Header<'_>> = (0..65)
        .map(|_| Header {
            name: "h",
            value: b"",
        })
        .collect();
    let error = log
        .append(&[Record::new(0, b"x").with_headers(&many)])
        .unwrap_err();
    assert!(
        matches!(error, StorageError::TooManyHeaders { count: 65, .. }),
        "{error}"
    );

    let long_name = "n".repeat(300);
    let header = [Header {
        name: &long_name,
        value: b"",
    }];
    let error = log
        .append(&[Record::new(0, b"x").with_headers(&header)])
        .unwrap_err();
    assert!(matches!(error, StorageError::HeaderNameTooLong { .. }), "{error}");

    let chunk = vec![0u8; 8 * 1024];
    let batch: Vec<Record<'_>> = (0..10).map(|_| Record::new(0, &chunk)).collect();
    let error = log.append(&batch).unwrap_err();
    assert!(matches!(error, StorageError::BatchTooLarge { .. }), "{error}");

    assert_eq!(log.next_offset(), 0, "refused batches take no offsets");
    assert_eq!(log.append(&[]).unwrap().next_offset, 0);
    append_expected(&mut log, 0..10);
    assert_log_is_expected_prefix(&log);
}

#[test]
fn invalid_options_are_refused_with_the_reason() {
    let dir = fast_tempdir();
    let cases = [
        LogOptions {
            segment_bytes: 1000,
            ..LogOptions::default()
        },
        LogOptions {
            segment_bytes: 64 * 1024 + 1,
            ..LogOptions::default()
        },
        LogOptions {
            max_record_bytes: 0,
            ..LogOptions::default()
        },
        LogOptions {
            index_interval_bytes: 0,
            ..LogOptions::default()
        },
        LogOptions {
            unsynced_bytes_max: 1,
            ..LogOptions::default()
        },
    ];
    for options in cases {
        let error = PartitionLog::open(dir.path(), options.clone())
            .err()
            .expect("refused");
        assert!(
            matches!(error, StorageError::InvalidOptions(_)),
            "{options:?}: {error}"
        );
    }
}

#[test]
fn a_partition_has_one_owner_at_a_time() {
    let dir = fast_tempdir();
    let _log = PartitionLog::open(dir.path(), small_options(Durability::None)).unwrap();
    let error = PartitionLog::open(dir.path(), small_options(Durability::None))
        .err()
        .expect("refused");
    assert!(error.to_string().contains("another flowd"), "{error}");
}

#[test]
fn a_failed_fsync_poisons_the_partition_in_every_mode() {
    let dir = fast_tempdir();
    let options = LogOptions {
        // One fdatasync when it opens, one per append for three appends.
        sync_faults: SyncFaults::fail_after(4),
        ..small_options(Durability::Every)
    };
    let mut log = PartitionLog::open(dir.path(), options).unwrap();
    append_expected(&mut log, 0..3);
    append_expected(&mut log, 3..4);
    append_expected(&mut log, 4..5);
    assert_eq!(log.durable_offset(), 5);
    let error = log.append(&[Record::new(0, b"lost")]).unwrap_err();
    assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
    assert!(error.to_string().contains("fsync failed"), "{error}");
    assert_eq!(log.durable_offset(), 5, "the failed append is never acked");
    let again = log.append(&[Record::new(0, b"after")]).unwrap_err();
    assert!(matches!(again, StorageError::Poisoned { .. }), "{again}");
    assert!(log.wait_durable(6).is_err());
    assert!(log.sync().is_err());
}

#[test]
fn a_failed_fsync_poisons_the_partition_in_group_mode() {
    let dir = fast_tempdir();
    let options = LogOptions {
        // Only the fdatasync of opening succeeds.
        sync_faults: SyncFaults::fail_after(1),
        ..small_options(Durability::Group)
    };
    let mut log = PartitionLog::open(dir.path(), options).unwrap();
    let receipt = append_expected(&mut log, 0..10);
    let error = log.wait_durable(receipt.next_offset).unwrap_err();
    assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
    assert_eq!(log.durable_offset(), 0, "nothing is acked after a failed fsync");
    let error = log.append(&[Record::new(0, b"x")]).unwrap_err();
    assert!(matches!(error, StorageError::Poisoned { .. }), "{error}");
    drop(log);
    // A restart recovers what reached the page cache and takes writes again.
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    assert_log_is_expected_prefix(&log);
    let next = log.next_offset();
    let receipt = append_expected(&mut log, next..next + 1);
    log.wait_durable(receipt.next_offset).unwrap();
}

#[test]
fn group_commit_acks_everything_it_was_given() {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    let mut next = 0;
    for _ in 0..200 {
        next = append_expected(&mut log, next..next + 7).next_offset;
    }
    log.wait_durable(next).unwrap();
    assert_eq!(log.durable_offset(), next);
    log.close().unwrap();
    let log = PartitionLog::open(dir.path(), small_options(Durability::Group)).unwrap();
    assert_eq!(assert_log_is_expected_prefix(&log), next);
}

#[test]
fn retention_deletes_whole_old_segments_by_size_and_by_age() {
    let dir = fast_tempdir();
    let options = LogOptions {
        retention: RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(200 * 1024),
        },
        ..small_options(Durability::None)
    };
    let mut log = PartitionLog::open(dir.path(), options.clone()).unwrap();
    fill(&mut log, 0..5000);
    let before = log.segments();
    let report = log.apply_retention(0).unwrap();
    let after = log.segments();
    // Exactly the oldest segments whose going brings the total within the bound: one
    // fewer would leave it over.
    let total: u64 = before.iter().map(|s| s.data_bytes).sum();
    let mut expected = 0;
    let mut left = total;
    while left > 200 * 1024 && expected < before.len() - 1 {
        left -= before[expected].data_bytes;
        expected += 1;
    }
    assert!(expected > 0, "the log is over its bound: {total} bytes");
    assert_eq!(report.deleted_segments, expected);
    let deleted = &before[..expected];
    assert_eq!(
        report.deleted_records,
        deleted.iter().map(|s| s.next_offset - s.base_offset).sum::<u64>()
    );
    assert_eq!(
        report.deleted_bytes,
        deleted.iter().map(|s| s.data_bytes).sum::<u64>()
    );
    assert_eq!(after.len(), before.len() - report.deleted_segments);
    assert_eq!(report.start_offset, after[0].base_offset);
    assert_eq!(report.start_offset, before[expected].base_offset);
    assert_eq!(log.start_offset(), report.start_offset);
    let kept: u64 = after.iter().map(|s| s.data_bytes).sum();
    assert!(kept <= 200 * 1024, "kept {kept} bytes");
    assert!(
        kept + deleted[expected - 1].data_bytes > 200 * 1024,
        "one segment too many went"
    );
    for deleted in &before[..report.deleted_segments] {
        assert!(!deleted.path.exists(), "{} still exists", deleted.path.display());
    }
    // What is left reads back, from the new start, and survives a reopen.
    let offsets: Vec<u64> = log.read(0).map(|v| v.offset()).collect();
    assert_eq!(offsets, (report.start_offset..5000).collect::<Vec<_>>());
    drop(log);
    let log = PartitionLog::open(dir.path(), options).unwrap();
    assert_eq!(log.start_offset(), report.start_offset);
    for view in log.read(0) {
        assert_expected(&view);
    }

    // By age: everything closed is older than a day in the future.
    let mut by_age = log.options().clone();
    by_age.retention = RetentionPolicy {
        max_age_ms: Some(1),
        max_bytes: None,
    };
    drop(log);
    let mut log = PartitionLog::open(dir.path(), by_age).unwrap();
    let closed = log.segments().len() - 1;
    let report = log.apply_retention(1_800_000_000_000).unwrap();
    assert_eq!(
        report.deleted_segments, closed,
        "every closed segment is older than the bound"
    );
    assert_eq!(log.segments().len(), 1, "only the active segment is left");
    assert_eq!(report.start_offset, log.segments()[0].base_offset);
}

#[test]
fn segments_report_their_ranges() {
    let dir = fast_tempdir();
    let mut log = PartitionLog::open(dir.path(), small_options(Durability::None)).unwrap();
    fill(&mut log, 0..2000);
    let segments = log.segments();
    for pair in segments.windows(2) {
        assert_eq!(pair[0].next_offset, pair[1].base_offset, "dense across segments");
        assert!(pair[0].sealed);
    }
    assert!(!segments.last().unwrap().sealed);
    assert_eq!(segments.last().unwrap().next_offset, 2000);
}

mod seek_props {
    use flowd::storage::{Durability, LogOptions, PartitionLog, Record};
    use proptest::prelude::*;

    use crate::support::{fast_tempdir, small_options};

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Seeks by offset and by time agree with a plain search over what was written,
        /// whatever the timestamps, batch sizes and index spacing.
        #[test]
        fn seeks_agree_with_a_plain_search(
            timestamps in prop::collection::vec(-1000i64..1000, 1..1500),
            batch in 1usize..60,
            interval in 32u32..2048,
            probes in prop::collection::vec(-1100i64..1100, 1..20),
        ) {
            let dir = fast_tempdir();
            let options = LogOptions { index_interval_bytes: interval, ..small_options(Durability::None) };
            let mut log = PartitionLog::open(dir.path(), options).unwrap();
            let values: Vec<[u8; 8]> = (0..timestamps.len() as u64).map(u64::to_le_bytes).collect();
            for chunk in timestamps.iter().zip(&values).collect::<Vec<_>>().chunks(batch) {
                let records: Vec<Record<'_>> = chunk.iter().map(|(ts, v)| Record::new(**ts, &v[..])).collect();
                log.append(&records).unwrap();
            }
            for t in probes {
                let want = timestamps.iter().position(|ts| *ts >= t).map(|i| i as u64);
                prop_assert_eq!(log.offset_at_time(t).unwrap(), want, "time {}", t);
            }
            let len = timestamps.len() as u64;
            for from in [0, len / 3, len / 2, len - 1] {
                let view = log.get(from).unwrap();
                prop_assert_eq!(view.offset(), from);
                prop_assert_eq!(view.value(), &from.to_le_bytes()[..]);
                prop_assert_eq!(view.timestamp_ms(), timestamps[from as usize]);
                prop_assert_eq!(log.read(from).count() as u64, len - from);
            }
        }
    }
}

/// A batch changed on disk after it was written and checked (a disk's bit rot, or
/// another program writing to the segment under the open log's mapping): no read hands
/// out a byte of it. A read stops before it and says where, with what to do; the log
/// notes it once; a read from inside it, of one record of it, of whole batches or by
/// time is refused; a read that only walks past its (intact) header to later records
/// gives them; and the reopened log refuses the segment, naming the batch, as recovery
/// always did.
/// Flips one bit of record 11's key (in the body of the batch of offsets 10 to 19) in
/// `segment`, under whatever has it open.
fn flip_key_11(segment: &std::path::Path) {
    let bytes = std::fs::read(segment).unwrap();
    crate::support::flip_bits(
        segment,
        bytes.windows(6).position(|w| w == b"key-11").unwrap(),
        0x01,
    );
}

/// A cut back (what a replica does where its copy diverged from its leader's) over a
/// log damaged since it was checked: the log is opened again after a cut, and recovery
/// would refuse it with the log already let go, so the cut is refused first, the log
/// left as it was (appends and reads before the damage go on) and the damage told. A
/// log that was cut back still tells of damage its reads meet later.
#[test]
fn a_cut_back_over_damage_is_refused_leaving_the_log_whole_and_a_cut_log_still_tells_of_damage() {
    let dir = fast_tempdir();
    let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let open = |name: &str| {
        let mut log = PartitionLog::open(&dir.path().join(name), small_options(Durability::Every)).unwrap();
        let tell = std::sync::Arc::clone(&told);
        log.on_damage(move |_| {
            tell.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        for first in (0..1200).step_by(10) {
            append_expected(&mut log, first..first + 10);
        }
        assert!(log.segments().len() >= 3, "{}", log.segments().len());
        log
    };
    let told_so_far = || told.load(std::sync::atomic::Ordering::SeqCst);

    // Damage in the first segment, a cut in the last: refused, nothing changed.
    let mut log = open("damaged");
    flip_key_11(&log.segments()[0].path);
    let refused = log.truncate(1100).expect_err("a cut over a damaged log");
    assert!(refused.to_string().contains("damaged segment"), "{refused}");
    assert_eq!(told_so_far(), 1);
    assert_eq!(log.next_offset(), 1200);
    append_expected(&mut log, 1200..1210);
    let read: Vec<u64> = log.read(20).map(|v| v.offset()).collect();
    assert_eq!(read, (20..1210).collect::<Vec<_>>());
    drop(log);

    // Cut back whole, then damaged: a read of it is told as before the cut.
    let mut log = open("cut");
    log.truncate(1100).unwrap();
    assert_eq!(log.next_offset(), 1100);
    flip_key_11(&log.segments()[0].path);
    assert_eq!(log.read(0).count(), 10);
    assert_eq!(told_so_far(), 2, "the cut log tells of damage too");
}

#[test]
fn a_batch_damaged_after_it_was_checked_is_never_read_and_every_read_of_it_says_so() {
    let dir = fast_tempdir();
    let path = dir.path().join("damaged");
    // One index entry for all three batches: a read from offset 20 walks past the
    // second batch's header.
    let options = LogOptions {
        index_interval_bytes: 32 * 1024,
        ..small_options(Durability::Every)
    };
    let mut log = PartitionLog::open(&path, options.clone()).unwrap();
    // Whom the log tells of its first damage (a cluster's runtime stops its peer).
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tell = std::sync::Arc::clone(&told);
    log.on_damage(move |damage| tell.lock().unwrap().push(damage.to_string()));
    for first in [0u64, 10, 20] {
        append_expected(&mut log, first..first + 10);
    }
    assert_eq!(log.segments().len(), 1);
    let segment = log.segments()[0].path.clone();
    let bytes = std::fs::read(&segment).unwrap();
    flip_key_11(&segment);

    let damaged_at = |end: Result<(), StorageError>| match end {
        Err(StorageError::DamagedOnRead {
            offset, path, reason, ..
        }) => {
            assert_eq!(path, segment);
            assert!(reason.contains("CRC"), "{reason}");
            offset
        }
        other => panic!("a read into the damaged batch must say so: {other:?}"),
    };
    // From the start: the first batch, then the damage, at the second batch's first offset.
    let mut records = log.read(0);
    let read: Vec<u64> = records.by_ref().map(|v| v.offset()).collect();
    assert_eq!(read, (0..10).collect::<Vec<_>>());
    assert_eq!(damaged_at(records.end()), 10);
    let note = log.damage().expect("the log notes the damage").to_string();
    assert!(
        note.contains(&segment.display().to_string()) && note.contains("restarts"),
        "it names the segment and what to do: {note}"
    );
    // From inside it: nothing, and why.
    for from in [10, 11, 19] {
        let mut records = log.read(from);
        assert_eq!(records.next().map(|v| v.offset()), None, "from {from}");
        assert_eq!(damaged_at(records.end()), 10);
    }
    assert!(log.get(12).is_none());
    assert!(
        log.why_not_held(12).contains("cannot be read"),
        "{}",
        log.why_not_held(12)
    );
    assert!(log.why_not_held(30).contains("ends at offset 30"));
    // Whole batches go by their headers, which are whole: all three, the second one's
    // body for its reader (a replica, a FETCH_BATCHES client) to refuse by its CRC.
    let mut batches = log.read_batches(0, u64::MAX);
    let bodies: Vec<bool> = batches
        .by_ref()
        .map(|stored| match stored {
            flowd::storage::Stored::Batch {
                bytes, base_offset, ..
            } => {
                // Format 2: the body's CRC32C (bytes 48..batch_len) in bytes 44..48.
                assert!(base_offset % 10 == 0);
                crc32c::crc32c(&bytes[48..]) == u32::from_le_bytes(bytes[44..48].try_into().unwrap())
            }
            flowd::storage::Stored::Frame(_) => panic!("format 2 writes batches"),
        })
        .collect();
    assert_eq!(bodies, [true, false, true]);
    assert!(batches.end().is_ok());
    // By time: found in the first batch, or, past every time in it, refused (the
    // search would read the damaged batch's records next).
    assert_eq!(log.offset_at_time(expected(0).timestamp_ms).unwrap(), Some(0));
    let later = (0..10).map(|o| expected(o).timestamp_ms).max().unwrap() + 1;
    assert!(log.offset_at_time(later).is_err());
    assert_eq!(log.read_from_time(later).next().map(|v| v.offset()), None);
    // Past it: its header is whole, so a read walks past it to the third batch.
    let mut records = log.read(20);
    let read: Vec<u64> = records.by_ref().map(|v| v.offset()).collect();
    assert_eq!(read, (20..30).collect::<Vec<_>>());
    assert!(records.end().is_ok());
    assert_eq!(log.damage(), Some(note.as_str()), "the first damage stays noted");
    assert_eq!(
        *told.lock().unwrap(),
        std::slice::from_ref(&note),
        "told once, of the first damage"
    );

    // A header damaged too (the third batch's record count): its length and offsets can
    // no longer be trusted, so nothing walks past or into it, whole batches included.
    use flowd::storage::format::{BatchHeader, SEGMENT_HEADER_BYTES};
    let mut third = SEGMENT_HEADER_BYTES as usize;
    while BatchHeader::read_trusted(&bytes[third..]).base_offset != 20 {
        third += BatchHeader::read_trusted(&bytes[third..]).batch_bytes();
    }
    crate::support::flip_bits(&segment, third + 32, 0x04);
    let mut records = log.read(20);
    assert_eq!(records.next().map(|v| v.offset()), None);
    assert_eq!(damaged_at(records.end()), 20);
    let mut batches = log.read_batches(0, u64::MAX);
    assert_eq!(batches.by_ref().count(), 2);
    assert_eq!(damaged_at(batches.end()), 20);
    assert_eq!(told.lock().unwrap().len(), 1, "later damage is not told again");
    log.close().unwrap();

    // Opened again, recovery finds it below the synced point, as before.
    match PartitionLog::open(&path, options) {
        Err(StorageError::CorruptFrame { offset, .. }) => assert_eq!(offset, 10),
        other => panic!("recovery refuses the damaged segment: {:?}", other.err()),
    }
}
