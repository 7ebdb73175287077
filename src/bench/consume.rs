//! `flowd bench consume`: fill a topic, then claim and ack every record as a new
//! consumer over one connection.

use std::collections::HashMap;
use std::time::Instant;

use crate::bench::load::Measured;
use crate::bench::progress::Progress;
use crate::bench::{BenchError, Target, histogram};
use crate::client::{Client, server_error};
use crate::consumer::Options;
use crate::protocol::consumer::{ClaimRequest, ConsumerRef};
use crate::protocol::{Request, message::Response};

/// Fills the target's topic with `records` records (not measured), warms up with a
/// first part claimed and acked by a throwaway consumer, then claims and acks them all
/// as a new consumer. Latency: per batch, claim sent to its ack back.
pub fn consume(
    target: &Target,
    records: u64,
    size: usize,
    batch: u32,
    progress: bool,
) -> Result<Measured, BenchError> {
    crate::bench::ingest::fill(target, records, size)?;
    let partitions = target.partitions(&target.topic)?;
    let warmup = crate::bench::warmup_requests(records.div_ceil(batch as u64), batch as usize) * batch as u64;
    claim_and_ack(target, partitions, warmup, batch, "warm-up", &Progress::hidden())?;
    let bar = if progress {
        Progress::new(records, "consume")
    } else {
        Progress::hidden()
    };
    let measured = claim_and_ack(target, partitions, records, batch, "bench", &bar);
    bar.finish();
    measured
}

/// Claims and acks `records` records from the start of the topic in batches of `batch`
/// over one connection, as a new consumer: per partition one claim in flight, and each
/// ack sent with the next claim. Claims in flight never ask for more than is left to
/// read, so exactly `records` are read when the topic holds that many or more.
fn claim_and_ack(
    target: &Target,
    partitions: u32,
    records: u64,
    batch: u32,
    name: &str,
    bar: &Progress,
) -> Result<Measured, BenchError> {
    let mut client = target.at.connect()?;
    let group = format!(
        "{name}-{}-{}",
        std::process::id(),
        crate::storage::layout::now_ms()
    );
    let claim = |client: &mut Client, p: u32, count: u32| {
        client.send(&Request::Claim(ClaimRequest {
            topic: &target.topic,
            group: &group,
            partition: Some(p),
            count,
            max_bytes: 1 << 20,
            create: Some(Options::default()),
        }))
    };
    let mut h = histogram();
    // Per request id: (partition, records asked for, claim sent at).
    let mut claims: HashMap<u64, (u32, u32, Instant)> = HashMap::new();
    let mut acks: HashMap<u64, Instant> = HashMap::new();
    let mut consumed = 0u64;
    // What the next claim asks for: a batch, or what is left that no claim in flight asks.
    let next_count = |consumed: u64, claims: &HashMap<u64, (u32, u32, Instant)>| {
        let asked: u64 = claims.values().map(|c| u64::from(c.1)).sum();
        records.saturating_sub(consumed + asked).min(u64::from(batch)) as u32
    };
    let started = Instant::now();
    for p in 0..partitions {
        let count = next_count(consumed, &claims);
        if count > 0 {
            let id = claim(&mut client, p, count)?;
            claims.insert(id, (p, count, Instant::now()));
        }
    }
    client.flush()?;
    let mut empty = vec![false; partitions as usize];
    while !(claims.is_empty() && acks.is_empty()) {
        // The records are read where they lie in the answer, as a consumer that handles
        // each in place would: counted, and their bytes summed so none is skipped.
        let (mut taken, mut bytes) = (0u64, 0usize);
        let (id, response) = client.recv_each(|_, record| {
            taken += 1;
            bytes += record.value.len();
        })?;
        std::hint::black_box(bytes);
        match server_error(response)? {
            Response::Claimed(c) => {
                let (p, _, t0) = claims
                    .remove(&id)
                    .ok_or_else(|| BenchError::Run(format!("unknown claim {id}")))?;
                if c.partition.is_none() {
                    empty[p as usize] = true;
                    continue;
                }
                consumed += taken;
                bar.add(taken);
                let ack = client.send(&Request::Ack(ConsumerRef {
                    topic: &target.topic,
                    group: &group,
                    partition: p,
                }))?;
                acks.insert(ack, t0);
                let count = next_count(consumed, &claims);
                if count > 0 {
                    let id = claim(&mut client, p, count)?;
                    claims.insert(id, (p, count, Instant::now()));
                }
                client.flush()?;
            }
            Response::Acked { .. } => {
                let t0 = acks
                    .remove(&id)
                    .ok_or_else(|| BenchError::Run(format!("unknown ack {id}")))?;
                h.saturating_record((t0.elapsed().as_micros() as u64).max(1));
            }
            other => return Err(BenchError::Run(format!("an unexpected answer: {other:?}"))),
        }
    }
    Ok(Measured {
        seconds: started.elapsed().as_secs_f64(),
        records: consumed,
        latency: h,
    })
}
