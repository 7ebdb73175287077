//! Criterion benches of the partition log's hot paths: append in each durability mode,
//! zero-copy sequential read, and seeks by offset and by time.
//!
//! Append benches report log bytes per second (criterion's throughput) and are named
//! `append/<mode>/<value size>/batch<records>` so that `scripts/bench-storage.sh` can
//! derive records per second and set them beside the disk's raw limits.
//! The data dir is on the real disk (`FLOWD_BENCH_DIR`, default the system temp dir).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowd::storage::{Durability, LogOptions, PartitionLog, Record, RetentionPolicy};

/// Records in each appended batch (one ack per batch).
const BATCH_RECORDS: usize = 1000;
/// Records pre-written for the read and seek benches.
const READ_RECORDS: u64 = 2_000_000;
/// Disk the append benches may fill before retention trims them.
const APPEND_RETAINED_BYTES: u64 = 1 << 30;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("FLOWD_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(PathBuf::from(dir)).expect("temp dir in FLOWD_BENCH_DIR"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn options(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        retention: RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(APPEND_RETAINED_BYTES),
        },
        ..LogOptions::default()
    }
}

/// Appends `iters` batches and returns the time they took to be acked; retention runs
/// between batches, off the clock.
fn timed_appends(log: &mut PartitionLog, records: &[Record<'_>], iters: u64) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut started = Instant::now();
    for i in 0..iters {
        let receipt = log.append(records).expect("append");
        if i % 256 == 255 {
            log.wait_durable(receipt.next_offset).expect("durable");
            elapsed += started.elapsed();
            log.apply_retention(0).expect("retention");
            started = Instant::now();
        }
    }
    log.wait_durable(log.next_offset()).expect("durable");
    elapsed + started.elapsed()
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(10).measurement_time(Duration::from_secs(6));
    let cases = [
        (Durability::None, 100, BATCH_RECORDS),
        (Durability::None, 1024, BATCH_RECORDS),
        (Durability::None, 100, 1),
        (Durability::Group, 100, BATCH_RECORDS),
        (Durability::Group, 1024, BATCH_RECORDS),
        (Durability::Every, 100, BATCH_RECORDS),
        (Durability::Every, 1024, BATCH_RECORDS),
        (Durability::Every, 100, 1),
    ];
    for (durability, value_bytes, batch) in cases {
        let dir = bench_dir();
        let mut log = PartitionLog::open(dir.path(), options(durability)).expect("open");
        let value = vec![0x5a_u8; value_bytes];
        let records: Vec<Record<'_>> = (0..batch).map(|i| Record::new(i as i64, &value)).collect();
        // One batch first, to learn its size in the log.
        let before = log.segments().last().unwrap().data_bytes;
        log.append(&records).unwrap();
        let batch_log_bytes = log.segments().last().unwrap().data_bytes - before;
        group.throughput(Throughput::Bytes(batch_log_bytes));
        let size = if value_bytes == 1024 {
            "1KiB".to_string()
        } else {
            format!("{value_bytes}B")
        };
        let id = BenchmarkId::new(durability.to_string(), format!("{size}/batch{batch}"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| timed_appends(&mut log, &records, iters))
        });
        log.close().unwrap();
    }
    group.finish();
}

/// A log of `READ_RECORDS` 100-byte records with increasing timestamps.
fn read_log() -> (tempfile::TempDir, PartitionLog) {
    let dir = bench_dir();
    let mut log = PartitionLog::open(dir.path(), options(Durability::None)).expect("open");
    let value = [0x33_u8; 100];
    let mut next = 0u64;
    while next < READ_RECORDS {
        let records: Vec<Record<'_>> = (next..next + BATCH_RECORDS as u64)
            .map(|o| Record::new(o as i64, &value))
            .collect();
        next = log.append(&records).unwrap().next_offset;
    }
    (dir, log)
}

fn bench_read_and_seek(c: &mut Criterion) {
    let (_dir, log) = read_log();
    let records = log.next_offset();
    let mut group = c.benchmark_group("read");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(records));
    group.bench_function("sequential/100B", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            for view in log.read(0) {
                bytes += view.value().len();
            }
            black_box(bytes)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("seek");
    group.throughput(Throughput::Elements(1));
    let mut rng = fastrand::Rng::with_seed(7);
    let mut next_random = move || rng.u64(..records);
    group.bench_function("offset", |b| {
        b.iter(|| black_box(log.get(next_random()).map(|v| v.value().len())))
    });
    group.bench_function("time", |b| {
        b.iter(|| black_box(log.offset_at_time(next_random() as i64)))
    });
    group.finish();
}

/// Opening a log recovers it: every frame of every segment is validated (CRC32C and
/// bytecheck) and the sparse index rebuilt. This is the start-up cost per partition.
fn bench_open(c: &mut Criterion) {
    let (dir, log) = read_log();
    let records = log.next_offset();
    log.close().unwrap();
    let mut group = c.benchmark_group("open");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(records));
    group.bench_function("recover/100B", |b| {
        b.iter(|| {
            let log = PartitionLog::open(dir.path(), options(Durability::None)).expect("open");
            black_box(log.next_offset())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_read_and_seek, bench_open);
criterion_main!(benches);
