//! Property: any truncation or bit flip of a segment's bytes leads, on reopen, either to
//! a log whose records are a prefix of what was written (byte-identical, dense offsets)
//! or to a clear corruption error. Never a panic, never a wrong record.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;

use flowd::storage::{Durability, PartitionLog};

use crate::support::{append_expected, assert_log_is_expected_prefix, fast_tempdir, small_options};

#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file to this fraction of its data (or of the whole file, past the data).
    Truncate { fraction: f64, past_data: bool },
    /// Flip one bit at this fraction of the data region (or anywhere in the file).
    FlipBit { fraction: f64, bit: u8, anywhere: bool },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..=1.0f64, any::<bool>())
            .prop_map(|(fraction, past_data)| Damage::Truncate { fraction, past_data }),
        (0.0..1.0f64, 0u8..8, prop::bool::weighted(0.1)).prop_map(|(fraction, bit, anywhere)| {
            Damage::FlipBit {
                fraction,
                bit,
                anywhere,
            }
        }),
    ]
}

/// Writes batches, syncing after some of them; returns the number of records, and how
/// many of them the last sync covered.
fn write_log(dir: &Path, batches: &[(u8, bool)]) -> (u64, u64) {
    let mut log = PartitionLog::open(dir, small_options(Durability::None)).unwrap();
    let mut next = 0;
    let mut synced = 0;
    for (size, sync) in batches {
        next = append_expected(&mut log, next..next + u64::from(*size)).next_offset;
        if *sync {
            log.sync().unwrap();
            synced = next;
        }
    }
    // Dropped without a final sync: the last batches may be past the synced point.
    (next, synced)
}

fn apply(path: &Path, damage: &Damage, data_end: u64) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    match *damage {
        Damage::Truncate { fraction, past_data } => {
            let limit = if past_data { len } else { data_end };
            file.set_len((limit as f64 * fraction) as u64).unwrap();
        }
        Damage::FlipBit {
            fraction,
            bit,
            anywhere,
        } => {
            let limit = if anywhere { len } else { data_end };
            let at = ((limit as f64 * fraction) as u64).min(len - 1);
            let mut byte = [0u8];
            file.read_exact_at(&mut byte, at).unwrap();
            byte[0] ^= 1 << bit;
            file.write_all_at(&byte, at).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn damaged_segments_reopen_as_a_prefix_or_a_clear_error(
        batches in prop::collection::vec((1u8..40, prop::bool::weighted(0.3)), 1..30),
        which_segment in any::<prop::sample::Index>(),
        damage in damage(),
    ) {
        let dir = fast_tempdir();
        let (written, synced) = write_log(dir.path(), &batches);
        let segments = flowd::storage::layout::list_segments(dir.path()).unwrap();
        let index = which_segment.index(segments.len());
        let (_, victim) = &segments[index];
        // Data region end of the victim: where frames stop, read without opening (an
        // open would sync the last segment, moving its synced point).
        let data_end = {
            let location = flowd::storage::layout::PartitionLocation {
                topic: "t".into(),
                partition: 0,
                dir: dir.path().to_path_buf(),
            };
            let report = flowd::storage::inspect::inspect_partition(&location, 512).unwrap();
            report.segments[index].data_bytes + flowd::storage::format::SEGMENT_HEADER_BYTES
        };
        apply(victim, &damage, data_end);

        match PartitionLog::open(dir.path(), small_options(Durability::None)) {
            Ok(mut log) => {
                let kept = assert_log_is_expected_prefix(&log);
                prop_assert!(kept <= written);
                // Damage below the synced point is refused, never cut away: whatever
                // opens keeps every record the last sync covered.
                prop_assert!(kept >= synced, "kept {} of {} synced records", kept, synced);
                // The mended log takes new records, and keeps them across a reopen.
                append_expected(&mut log, kept..kept + 3);
                log.close().unwrap();
                let log = PartitionLog::open(dir.path(), small_options(Durability::None)).unwrap();
                prop_assert_eq!(assert_log_is_expected_prefix(&log), kept + 3);
            }
            Err(error) => {
                prop_assert!(error.is_corruption(), "not a corruption error: {}", error);
                let text = error.to_string();
                prop_assert!(text.contains(".seg"), "the error must name the segment: {}", text);
            }
        }
    }
}
