//! NATS workloads: JetStream publish with acks, pull-consumer fetch and ack, and core
//! request/reply.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde_json::json;

use crate::Shape;
use crate::report::{Error, Run, payload, warmup_batches};

const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench";

fn config(s: &Shape, workload: &str) -> serde_json::Value {
    json!({"system": "nats", "workload": workload, "size": s.size, "batch": s.batch, "inflight": s.inflight})
}

async fn jetstream(s: &Shape) -> Result<jetstream::Context, Error> {
    let client = async_nats::connect(&s.addr).await?;
    let context = jetstream::context::ContextBuilder::new()
        .max_ack_inflight((s.batch * s.inflight).max(1))
        .timeout(Duration::from_secs(30))
        .build(client);
    let _ = context.delete_stream(STREAM).await;
    context
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    Ok(context)
}

pub async fn ingest(s: &Shape) -> Result<String, Error> {
    let js = jetstream(s).await?;
    let batches = s.records.div_ceil(s.batch as u64);
    publish(&js, s, warmup_batches(batches, s.batch)).await?;
    let run = publish(&js, s, batches).await?;
    Ok(run.report("ingest", s.size, config(s, "JetStream publish, file storage")))
}

/// `batches` batches of `batch` publishes, `inflight` batches at once; a batch's
/// latency runs from its first publish to its last ack.
async fn publish(js: &jetstream::Context, s: &Shape, batches: u64) -> Result<Run, Error> {
    let value = payload(s.size);
    let mut run = Run::start();
    let mut sent = futures::stream::iter(0..batches)
        .map(|_| {
            let value = value.clone();
            async move {
                let t = Instant::now();
                let mut acks = Vec::with_capacity(s.batch);
                for _ in 0..s.batch {
                    acks.push(js.publish(SUBJECT, value.clone()).await?);
                }
                for ack in acks {
                    ack.await?;
                }
                Ok::<_, Error>(t.elapsed())
            }
        })
        .buffer_unordered(s.inflight);
    while let Some(latency) = sent.next().await {
        run.record(latency?, s.batch as u64);
    }
    Ok(run)
}

pub async fn consume(s: &Shape) -> Result<String, Error> {
    let js = jetstream(s).await?;
    let batches = s.records.div_ceil(s.batch as u64);
    publish(&js, s, batches).await?;
    let stream = js.get_stream(STREAM).await?;
    let warm = warmup_batches(batches, s.batch) * s.batch as u64;
    fetch(&stream, s, "warm-up", warm).await?;
    let run = fetch(&stream, s, "bench", batches * s.batch as u64).await?;
    Ok(run.report("consume", s.size, config(s, "pull fetch + AckAll, double ack")))
}

/// A new durable pull consumer reads `records`: fetch `batch`, then ack the batch's last
/// (AckAll) and wait for the server to confirm it; latency from fetch to confirmed ack.
async fn fetch(stream: &stream::Stream, s: &Shape, name: &str, records: u64) -> Result<Run, Error> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::All,
            max_ack_pending: (s.batch * 2) as i64,
            ..Default::default()
        })
        .await?;
    let mut run = Run::start();
    while run.records < records {
        let t = Instant::now();
        let mut batch = consumer.fetch().max_messages(s.batch).messages().await?;
        let mut last = None;
        let mut n = 0;
        while let Some(message) = batch.next().await {
            last = Some(message?);
            n += 1;
        }
        let Some(last) = last else { break };
        last.double_ack().await?;
        run.record(t.elapsed(), n);
    }
    Ok(run)
}

/// Core NATS request/reply: `inflight` callers, one request each at a time, to a
/// responder on its own connection that answers with the request's payload.
pub async fn reqreply(s: &Shape) -> Result<String, Error> {
    let responder = async_nats::connect(&s.addr).await?;
    let mut requests = responder.subscribe("echo").await?;
    responder.flush().await?;
    let answering = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    let callers = s.inflight.max(1) as u64;
    let per_caller = s.records.div_ceil(callers);
    let mut clients = Vec::new();
    for _ in 0..callers {
        clients.push(async_nats::connect(&s.addr).await?);
    }
    call(&clients, s, warmup_batches(per_caller, 1)).await?;
    let run = call(&clients, s, per_caller).await?;
    answering.abort();
    Ok(run.report("reqreply", s.size, config(s, "core request/reply")))
}

async fn call(clients: &[async_nats::Client], s: &Shape, requests: u64) -> Result<Run, Error> {
    let run = std::cell::RefCell::new(Run::start());
    let callers = clients.iter().map(|client| {
        let run = &run;
        let value = payload(s.size);
        async move {
            for _ in 0..requests {
                let t = Instant::now();
                let answer = client.request("echo", value.clone()).await?;
                if answer.payload.len() != s.size {
                    return Err::<(), Error>("a wrong answer".into());
                }
                run.borrow_mut().record(t.elapsed(), 1);
            }
            Ok(())
        }
    });
    futures::future::try_join_all(callers).await?;
    Ok(run.into_inner())
}
