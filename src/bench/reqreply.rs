//! `flowd bench reqreply`: request/reply jobs to the `echo` job (or any job of a
//! dataflow), answered by its last stage; latency per job, sent (or due, at a fixed
//! rate) to answer.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::load::{self, Measured, Plan, Workload};
use crate::bench::progress::Progress;
use crate::bench::{BenchError, Target, warmup_requests};
use crate::client::server_error;
use crate::protocol::message::Response;
use crate::protocol::{JobRequest, Request, WireRecord};

pub struct ReqreplyOptions {
    pub requests: u64,
    pub size: usize,
    pub concurrency: usize,
    /// Jobs per second over all connections; `None`: one in flight per connection.
    pub rate: Option<f64>,
    /// The job to call.
    pub job: String,
    /// The request each job carries; `None`: `size` bytes of `x`.
    pub body: Option<Vec<u8>>,
    /// Any answer will do; otherwise the answer must equal the request (an echo).
    pub any_answer: bool,
}

impl ReqreplyOptions {
    pub fn per_connection(&self) -> u64 {
        self.requests.div_ceil(self.concurrency.max(1) as u64)
    }
}

struct Jobs {
    job: String,
    value: Vec<u8>,
    timeout: Duration,
    any_answer: bool,
}

impl Workload for Jobs {
    fn encode(&self, id: u64, out: &mut Vec<u8>) {
        Request::Job(JobRequest {
            job: &self.job,
            timeout_ms: self.timeout.as_millis() as u32,
            record: WireRecord {
                timestamp_ms: None,
                key: None,
                value: &self.value,
                headers: Vec::new(),
                raw: &[],
            },
        })
        .encode(id, out);
    }

    fn check(&self, response: Response) -> Result<u64, BenchError> {
        match server_error(response)? {
            Response::Answer(answer) if self.any_answer || answer.value == self.value => Ok(1),
            Response::Answer(_) => Err(BenchError::Run(format!(
                "the job \"{}\" answered something other than its input; pass --any-answer for a \
                 job that is not an echo",
                self.job
            ))),
            other => Err(BenchError::Run(format!(
                "an unexpected answer to a job: {other:?}"
            ))),
        }
    }
}

pub fn reqreply(target: &Target, o: &ReqreplyOptions, progress: bool) -> Result<Measured, BenchError> {
    let workload: Arc<dyn Workload> = Arc::new(Jobs {
        job: o.job.clone(),
        value: o.body.clone().unwrap_or_else(|| vec![b'x'; o.size]),
        timeout: Duration::from_secs(10),
        any_answer: o.any_answer,
    });
    let concurrency = o.concurrency.max(1);
    let plan = Plan {
        connections: concurrency,
        requests: o.per_connection(),
        // Closed loop: one job at a time per connection. At a fixed rate: as many as
        // the schedule asks for, up to a bound that keeps memory fixed.
        inflight: if o.rate.is_some() { 4096 } else { 1 },
        rate: o.rate,
        spin: None,
    };
    let warmup = Plan {
        requests: warmup_requests(plan.requests, 1),
        rate: None,
        inflight: 1,
        ..plan
    };
    load::drive(&target.at, warmup, workload.clone(), &Progress::hidden())?;
    let bar = if progress {
        Progress::new(plan.requests * concurrency as u64, "reqreply")
    } else {
        Progress::hidden()
    };
    let measured = load::drive(&target.at, plan, workload, &bar);
    bar.finish();
    measured
}
