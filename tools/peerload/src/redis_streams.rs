//! Redis workloads: XADD ingest, XREADGROUP/XACK consume, and a list-based job round trip.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use serde_json::json;

use crate::Shape;
use crate::report::{Error, Run, payload, warmup_batches};

const STREAM: &str = "bench";

async fn connect(s: &Shape) -> Result<MultiplexedConnection, Error> {
    let client = redis::Client::open(format!("redis://{}/", s.addr))?;
    // Pipelines of a thousand XADDs under appendfsync always can take longer than the
    // default half-second response timeout: wait as long as the server takes.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn config(s: &Shape, workload: &str) -> serde_json::Value {
    json!({"system": "redis", "workload": workload, "size": s.size, "batch": s.batch, "inflight": s.inflight})
}

pub async fn ingest(s: &Shape) -> Result<String, Error> {
    let con = connect(s).await?;
    redis::cmd("DEL").arg(STREAM).exec_async(&mut con.clone()).await?;
    let batches = s.records.div_ceil(s.batch as u64);
    produce(&con, s, warmup_batches(batches, s.batch)).await?;
    let run = produce(&con, s, batches).await?;
    Ok(run.report("ingest", s.size, config(s, "XADD pipelined")))
}

/// `batches` pipelines of `batch` XADDs, `inflight` at once.
async fn produce(con: &MultiplexedConnection, s: &Shape, batches: u64) -> Result<Run, Error> {
    let value = payload(s.size);
    let mut run = Run::start();
    let mut sent = futures::stream::iter(0..batches)
        .map(|_| {
            let mut con = con.clone();
            let value = value.clone();
            async move {
                let t = Instant::now();
                let mut pipe = redis::pipe();
                for _ in 0..s.batch {
                    pipe.cmd("XADD")
                        .arg(STREAM)
                        .arg("*")
                        .arg("v")
                        .arg(&value[..])
                        .ignore();
                }
                pipe.exec_async(&mut con).await?;
                Ok::<_, redis::RedisError>(t.elapsed())
            }
        })
        .buffer_unordered(s.inflight);
    while let Some(latency) = sent.next().await {
        run.record(latency?, s.batch as u64);
    }
    Ok(run)
}

pub async fn consume(s: &Shape) -> Result<String, Error> {
    let con = connect(s).await?;
    redis::cmd("DEL").arg(STREAM).exec_async(&mut con.clone()).await?;
    let batches = s.records.div_ceil(s.batch as u64);
    produce(&con, s, batches).await?;
    let warm = warmup_batches(batches, s.batch) * s.batch as u64;
    read_group(&con, s, "warm-up", warm).await?;
    let run = read_group(&con, s, "bench", batches * s.batch as u64).await?;
    Ok(run.report("consume", s.size, config(s, "XREADGROUP + XACK")))
}

/// A new group reads `records` from the stream's start: `inflight` consumers, each
/// reading `batch` and acking them with its next read; latency from a read's send to
/// its ack's answer.
async fn read_group(con: &MultiplexedConnection, s: &Shape, group: &str, records: u64) -> Result<Run, Error> {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(group)
        .arg("0")
        .exec_async(&mut con.clone())
        .await?;
    let run = RefCell::new(Run::start());
    let readers = (0..s.inflight.max(1)).map(|reader| {
        let mut con = con.clone();
        let run = &run;
        async move {
            let mut pending: Option<(Instant, Vec<String>)> = None;
            loop {
                let done = run.borrow().records >= records;
                let mut pipe = redis::pipe();
                if let Some((_, ids)) = &pending {
                    pipe.cmd("XACK").arg(STREAM).arg(group).arg(ids).ignore();
                }
                if !done {
                    pipe.cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(group)
                        .arg(format!("c{reader}"))
                        .arg("COUNT")
                        .arg(s.batch)
                        .arg("STREAMS")
                        .arg(STREAM)
                        .arg(">");
                }
                let t = Instant::now();
                let answer: Vec<Option<StreamReadReply>> = pipe.query_async(&mut con).await?;
                if let Some((t0, ids)) = pending.take() {
                    run.borrow_mut().record(t0.elapsed(), ids.len() as u64);
                }
                let ids: Vec<String> = answer
                    .into_iter()
                    .flatten()
                    .flat_map(|reply| reply.keys)
                    .flat_map(|key| key.ids)
                    .map(|entry| entry.id)
                    .collect();
                if ids.is_empty() {
                    return Ok::<_, redis::RedisError>(());
                }
                pending = Some((t, ids));
            }
        }
    });
    futures::future::try_join_all(readers).await?;
    Ok(run.into_inner())
}

/// A job: the caller LPUSHes `CALLER|payload` onto `jobs` and BRPOPs its own answer list;
/// a worker BRPOPs `jobs` and LPUSHes the payload onto the caller's list. `inflight`
/// callers, one job each at a time (what `flowd bench reqreply --concurrency` does).
pub async fn reqreply(s: &Shape) -> Result<String, Error> {
    let setup = connect(s).await?;
    redis::cmd("DEL")
        .arg("jobs")
        .exec_async(&mut setup.clone())
        .await?;
    let worker = tokio::spawn(work(connect(s).await?, connect(s).await?));
    let callers = s.inflight.max(1) as u64;
    let per_caller = s.records.div_ceil(callers);
    let mut connections = Vec::new();
    for _ in 0..callers {
        connections.push(connect(s).await?);
    }
    call(&connections, s, warmup_batches(per_caller, 1)).await?;
    let run = call(&connections, s, per_caller).await?;
    worker.abort();
    Ok(run.report("reqreply", s.size, config(s, "LPUSH/BRPOP job round trip")))
}

async fn call(connections: &[MultiplexedConnection], s: &Shape, jobs: u64) -> Result<Run, Error> {
    let run = RefCell::new(Run::start());
    let callers = connections.iter().enumerate().map(|(caller, con)| {
        let mut con = con.clone();
        let run = &run;
        let mut job = format!("{caller}|").into_bytes();
        job.extend_from_slice(&payload(s.size));
        async move {
            let answers = format!("answers-{caller}");
            for _ in 0..jobs {
                let t = Instant::now();
                redis::cmd("LPUSH")
                    .arg("jobs")
                    .arg(&job)
                    .exec_async(&mut con)
                    .await?;
                let answer: Option<(String, Vec<u8>)> = redis::cmd("BRPOP")
                    .arg(&answers)
                    .arg(10)
                    .query_async(&mut con)
                    .await?;
                match answer {
                    Some((_, value)) if value.len() == s.size => run.borrow_mut().record(t.elapsed(), 1),
                    Some(_) => return Err("a wrong answer".into()),
                    None => return Err("no answer within 10s".into()),
                }
            }
            Ok::<_, Error>(())
        }
    });
    futures::future::try_join_all(callers).await?;
    Ok(run.into_inner())
}

async fn work(mut take: MultiplexedConnection, mut answer: MultiplexedConnection) {
    loop {
        let job: Result<Option<(String, Vec<u8>)>, _> = redis::cmd("BRPOP")
            .arg("jobs")
            .arg(1)
            .query_async(&mut take)
            .await;
        let Ok(Some((_, job))) = job else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let Some(bar) = job.iter().position(|&b| b == b'|') else {
            continue;
        };
        let caller = String::from_utf8_lossy(&job[..bar]).into_owned();
        let _ = redis::cmd("LPUSH")
            .arg(format!("answers-{caller}"))
            .arg(&job[bar + 1..])
            .exec_async(&mut answer)
            .await;
    }
}
