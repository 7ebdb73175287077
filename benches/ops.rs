//! Criterion benches of the dataflow hot paths: the built-in operators per record, and
//! one cross-core hop of a batch through flume and through glommio's shared channel.
//!
//! Throughput is in records (criterion's elements), all on one core unless named a hop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowd::config::{Aggregate, Part, Selector, TimeKind};
use flowd::jq::JqProgram;
use flowd::ops::window::{Window, WindowOptions};
use flowd::ops::{Input, Operator, Output};
use flowd::runtime::mesh::OwnedRecord;
use glommio::{LocalExecutorBuilder, Placement};

// The allocator the flowd binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records per batch, as the runtime moves them.
const BATCH: usize = 1024;

fn input<'a>(offset: u64, key: Option<&'a [u8]>, value: &'a [u8]) -> Input<'a> {
    Input {
        offset,
        timestamp_ms: offset as i64,
        now_ms: 0,
        key,
        value,
    }
}

/// Runs `op` over `values` (one batch) and reports per input record.
fn run_batch(op: &mut dyn Operator, keys: &[Vec<u8>], values: &[Vec<u8>], out: &mut Vec<Output>) {
    for (i, value) in values.iter().enumerate() {
        let key = keys.get(i).map(Vec::as_slice);
        op.on_record(&input(i as u64, key, value), out)
            .expect("valid input");
        black_box(&out);
        out.clear();
    }
}

fn operators(c: &mut Criterion) {
    let mut group = c.benchmark_group("ops");
    group.measurement_time(Duration::from_secs(3));

    // split_words: counted in output words (10 per line).
    let lines: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| format!("the quick brown fox {i} jumps over the lazy dog").into_bytes())
        .collect();
    group.throughput(Throughput::Elements((BATCH * 10) as u64));
    let mut out = Vec::new();
    group.bench_function("split_words/words", |b| {
        let mut op = flowd::ops::split_words::SplitWords;
        b.iter(|| run_batch(&mut op, &[], &lines, &mut out))
    });

    let words: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| format!("word{}", i % 97).into_bytes())
        .collect();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("key_by/value", |b| {
        let mut op = flowd::ops::key_by::KeyBy::new(&Selector::Part(Part::Value)).unwrap();
        b.iter(|| run_batch(&mut op, &[], &words, &mut out))
    });

    // jq map + filter over ~100-byte JSON values.
    let events: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            format!(r#"{{"id":{i},"user":"u{}","kind":"{}","price":{}.5,"qty":{},"note":"abcdefghijklmnopqrstuvwxyz0123456"}}"#,
                i % 50, if i % 3 == 0 { "buy" } else { "view" }, i % 90, i % 4)
            .into_bytes()
        })
        .collect();
    assert!(
        events[0].len() >= 80 && events[0].len() <= 110,
        "about 100 bytes: {}",
        events[0].len()
    );
    group.bench_function("jq/map+filter/100B", |b| {
        let mut filter = flowd::ops::map::Filter::new(JqProgram::compile(".kind == \"buy\"").unwrap());
        let mut map =
            flowd::ops::map::Map::new(JqProgram::compile("{user, total: (.price * .qty)}").unwrap());
        let mut kept = Vec::new();
        b.iter(|| {
            for (i, value) in events.iter().enumerate() {
                filter
                    .on_record(&input(i as u64, None, value), &mut kept)
                    .unwrap();
                map.on_record(&input(i as u64, None, value), &mut out).unwrap();
                black_box((&kept, &out));
                kept.clear();
                out.clear();
            }
        })
    });

    // The same as one expression: one parse per record instead of two.
    group.bench_function("jq/select+map/100B", |b| {
        let code = "select(.kind == \"buy\") | {user, total: (.price * .qty)}";
        let mut map = flowd::ops::map::Map::new(JqProgram::compile(code).unwrap());
        b.iter(|| run_batch(&mut map, &[], &events, &mut out))
    });
    group.bench_function("jq/parse-only/100B", |b| {
        b.iter(|| {
            for value in &events {
                black_box(jaq_json::read::parse_single(value).unwrap());
            }
        })
    });

    // A keyed count over 10,000 keys in 1-second tumbling windows of record time.
    let keys: Vec<Vec<u8>> = (0..10_000).map(|i| format!("key-{i}").into_bytes()).collect();
    group.bench_function("window/count/10k-keys", |b| {
        let mut op = Window::new(WindowOptions {
            aggregate: Aggregate::Count,
            of: None,
            length_ms: Some(1000),
            time: TimeKind::Record,
            lateness_ms: 0,
        });
        let mut offset = 0u64;
        b.iter(|| {
            for _ in 0..BATCH {
                let key = &keys[(offset.wrapping_mul(7919) % 10_000) as usize];
                // 100,000 records per window of record time.
                let record = Input {
                    offset,
                    timestamp_ms: (offset / 100) as i64,
                    now_ms: 0,
                    key: Some(key),
                    value: b"",
                };
                op.on_record(&record, &mut out).unwrap();
                out.clear();
                offset += 1;
            }
        })
    });
    group.finish();
}

/// A batch as the mesh carries it: 1024 records of 100-byte values. Cloning it is part of
/// what the hop costs the sender (the receiver drops it).
fn batch() -> Vec<OwnedRecord> {
    (0..BATCH)
        .map(|i| OwnedRecord {
            timestamp_ms: i as i64,
            key: None,
            value: vec![b'x'; 100],
            headers: Vec::new(),
        })
        .collect()
}

/// One producer core sends `batches` batches to a consumer core; returns the elapsed time.
fn hop_flume(batches: u64) -> Duration {
    let (tx, rx) = flume::bounded::<Vec<OwnedRecord>>(16);
    let template = batch();
    let start = Instant::now();
    let producer = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            for _ in 0..batches {
                tx.send_async(template.clone()).await.unwrap();
            }
        })
        .unwrap();
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(1 % cores()))
        .spawn(move || async move {
            let mut n = 0;
            while let Ok(b) = rx.recv_async().await {
                n += black_box(b).len();
            }
            n
        })
        .unwrap();
    producer.join().unwrap();
    assert_eq!(consumer.join().unwrap(), batches as usize * BATCH);
    start.elapsed()
}

fn hop_glommio(batches: u64) -> Duration {
    let (tx, rx) = glommio::channels::shared_channel::new_bounded::<Vec<OwnedRecord>>(16);
    let template = batch();
    let start = Instant::now();
    let producer = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let tx = tx.connect().await;
            for _ in 0..batches {
                tx.send(template.clone()).await.unwrap();
            }
        })
        .unwrap();
    let consumer = LocalExecutorBuilder::new(Placement::Fixed(1 % cores()))
        .spawn(move || async move {
            let rx = rx.connect().await;
            let mut n = 0;
            while let Some(b) = rx.recv().await {
                n += black_box(b).len();
            }
            n
        })
        .unwrap();
    producer.join().unwrap();
    assert_eq!(consumer.join().unwrap(), batches as usize * BATCH);
    start.elapsed()
}

/// Runs at least `HOP_BATCHES_MIN` batches (so that starting two executors is noise)
/// and scales the time to the `n` criterion asked for.
fn scaled(n: u64, hop: fn(u64) -> Duration) -> Duration {
    let batches = n.max(HOP_BATCHES_MIN);
    hop(batches).mul_f64(n as f64 / batches as f64)
}

const HOP_BATCHES_MIN: u64 = 2000;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn hops(c: &mut Criterion) {
    let mut group = c.benchmark_group("hop");
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH as u64));
    // Executors start per measurement; enough batches per run make that cost vanish.
    group.bench_function("flume/batch1024", |b| b.iter_custom(|n| scaled(n, hop_flume)));
    group.bench_function("glommio/batch1024", |b| b.iter_custom(|n| scaled(n, hop_glommio)));
    group.finish();
}

criterion_group!(benches, operators, hops);
criterion_main!(benches);
