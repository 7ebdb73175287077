//! Jobs: a request/reply record written to its job's topic with a reply address, and
//! its caller's wait for the answer a `reply` stage sends back (or the timeout). In a
//! cluster any peer takes any job: its partition's leader writes it, and the answer
//! comes back over the peer link to the peer holding the caller (`reply::deliver`).

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::protocol::routing::partition_of_bytes;
use crate::protocol::wire::RESERVED_HEADER_PREFIX;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::runtime::bounds::{Bounds, TooLarge, stored_record_bytes};
use crate::runtime::error::EngineError;
use crate::runtime::mesh::Ack;
use crate::runtime::reply::{ReplyAddress, job_batch};
use crate::runtime::service::Answer;
use crate::runtime::shard::Shard;

use super::produce::INGEST_HINT;
use super::produce::too_large;
use super::{unknown_name, within};

/// The longest timeout a request may give its job, over either door.
pub const JOB_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

/// Takes a job: writes it to its topic with this shard's reply address, then waits for
/// the reply stage's answer, or the timeout.
pub async fn job(
    shard: &Rc<Shard>,
    name: &str,
    timeout: Option<Duration>,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<Answer, ProtocolError> {
    let started = Instant::now();
    let shared = &shard.shared;
    let spec = shared.spec.job(name).ok_or_else(|| {
        let known = shared.spec.jobs.iter().map(|j| j.name.as_str());
        unknown_name(ErrorCode::UnknownJob, "job", name, known)
    })?;
    if let Some((name, _)) = headers
        .iter()
        .find(|(n, _)| n.starts_with(RESERVED_HEADER_PREFIX))
    {
        return Err(ProtocolError::new(
            ErrorCode::Invalid,
            format!("header \"{name}\" is reserved for the engine"),
        ));
    }
    let timeout = timeout.unwrap_or(spec.timeout);
    let topic_spec = &shared.spec.topics[spec.topic];
    let bounds = Bounds::of(topic_spec);
    let bytes = stored_record_bytes(key, value, headers.iter().copied());
    if bytes > bounds.ingest_record_bytes_max() {
        return Err(too_large(TooLarge {
            what: format!("job \"{name}\"'s record"),
            bytes,
            max: bounds.ingest_record_bytes_max(),
            topic: topic_spec.name.clone(),
            hint: INGEST_HINT,
        }));
    }
    let partitions = topic_spec.partitions;
    let partition = match key {
        Some(key) => partition_of_bytes(key, partitions),
        None => shard.next_spread(partitions),
    };
    let id = shard.next_job_id();
    // Its partition may be led by any peer (the mesh sends the batch there); the answer
    // comes back here, to this peer and shard, from whichever peer's reply stage reads it.
    let address = ReplyAddress::here(shard, id);
    let (answer_tx, answer_rx) = flume::bounded(1);
    shard.jobs.borrow_mut().insert(id, answer_tx);
    // Whatever happens next, the waiter must not outlive this call.
    let _guard = JobGuard { shard, id };
    let (ack_tx, ack_rx) = flume::bounded(1);
    let batch = job_batch(partition, key, value, headers, &address, Ack::Client(ack_tx, 0));
    shared.metrics.jobs.add(1);
    shared.mesh.send(spec.topic, batch).await?;
    let outcome = within(timeout, async {
        ack_rx
            .recv_async()
            .await
            .map_err(|_| ProtocolError::from(EngineError::Stopping))??;
        answer_rx
            .recv_async()
            .await
            .map_err(|_| ProtocolError::from(EngineError::Stopping))?
            .map_err(|reason| {
                ProtocolError::new(ErrorCode::JobFailed, format!("job \"{name}\" failed: {reason}"))
            })
    })
    .await;
    match outcome {
        Some(Ok(answer)) => {
            shared.metrics.job_answers.add(1);
            shared.metrics.job_latency.record(shard.index, started.elapsed());
            Ok(answer)
        }
        Some(Err(error)) => Err(error),
        None => {
            shared.metrics.job_timeouts.add(1);
            Err(ProtocolError::new(
                ErrorCode::Timeout,
                format!(
                    "job \"{name}\" got no answer within {}",
                    humantime::format_duration(timeout)
                ),
            ))
        }
    }
}

struct JobGuard<'a> {
    shard: &'a Shard,
    id: u64,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.shard.jobs.borrow_mut().remove(&self.id);
    }
}
