//! Counters and latency histograms of the engine and its front doors, shared by every shard, rendered
//! as Prometheus text for `/metrics` and summed into `/status`.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::ErrorCode;

/// Latencies kept, in microseconds, with 3 significant digits, up to an hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// One histogram per shard, so that recording never contends across cores.
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latency {
    fn new(shards: usize) -> Latency {
        Latency {
            shards: (0..shards).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    pub fn record(&self, shard: usize, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).clamp(1, 3_600_000_000);
        self.shards[shard]
            .lock()
            .expect("histogram lock")
            .saturating_record(us);
    }

    /// Every shard's samples together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.shards {
            // Same bounds on both sides: adding cannot fail.
            let _ = all.add(&*shard.lock().expect("histogram lock"));
        }
        all
    }
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Error codes counted one by one.
const ERROR_CODES: usize = 19;

pub struct Metrics {
    pub produce_requests: Counter,
    pub records_in: Counter,
    pub bytes_in: Counter,
    pub fetch_requests: Counter,
    pub records_fetched: Counter,
    pub jobs: Counter,
    pub job_answers: Counter,
    pub job_timeouts: Counter,
    /// Answers for callers on another peer that could not be sent to it.
    pub job_answers_undelivered: Counter,
    pub connections_total: Counter,
    pub connections_open: AtomicU64,
    pub connections_refused: Counter,
    pub http_requests: Counter,
    /// HTTP requests refused before routing: a Host, Origin or Content-Type a browser
    /// page could have forged.
    pub http_refused: Counter,
    /// Requests and connections refused for their credentials: none, an unknown token,
    /// no AUTH in time, or a permission missing.
    pub auth_refused: Counter,
    /// Connections closed before serving for their TLS: a failed handshake, a plaintext
    /// client on a TLS door or a TLS client on a plaintext one.
    pub tls_refused: Counter,
    pub records_claimed: Counter,
    pub acks: Counter,
    /// Segments, records and bytes retention deleted.
    pub retention_segments: Counter,
    pub retention_records: Counter,
    pub retention_bytes: Counter,
    /// Records a stage, sink or consumer never got to because retention deleted them.
    pub records_skipped: Counter,
    /// Replicas that could not follow their leader (a copy that cannot be cut back).
    pub replica_failures: Counter,
    /// Writes refused because fewer replicas of their partition were alive than a quorum.
    pub quorum_refusals: Counter,
    /// Stage batches not written because a later lead of their input wrote their outputs.
    pub stale_lead_batches: Counter,
    /// Writes refused because the disk was full (no new segment could be made).
    pub no_space_refusals: Counter,
    /// Producers' batches held back (once each) while their partition's slowest reader
    /// was `max_lag` records behind.
    pub lag_waits: Counter,
    /// Leader batches whose quorum did not come in time, or whose leadership moved first.
    pub quorum_failures: Counter,
    /// Stage inputs skipped under `on_error` (or outputs no input could carry).
    pub stage_records_failed: Counter,
    /// Stage inputs copied to their dead-letter topic.
    pub dead_letters: Counter,
    /// Stage partitions disabled by `on_error`.
    pub stages_disabled: Counter,
    /// Connections closed because a frame, an HTTP head or body did not arrive in time.
    pub slow_frames: Counter,
    /// Connections closed after `idle_timeout` with nothing in flight.
    pub idle_closed: Counter,
    errors: [Counter; ERROR_CODES],
    /// Produce request taken to durable ack.
    pub produce_latency: Latency,
    /// Job taken to its answer.
    pub job_latency: Latency,
    /// When counting began: every counter was 0 then.
    pub since: std::time::Instant,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            produce_requests: Counter::default(),
            records_in: Counter::default(),
            bytes_in: Counter::default(),
            fetch_requests: Counter::default(),
            records_fetched: Counter::default(),
            jobs: Counter::default(),
            job_answers: Counter::default(),
            job_timeouts: Counter::default(),
            job_answers_undelivered: Counter::default(),
            connections_total: Counter::default(),
            connections_open: AtomicU64::new(0),
            connections_refused: Counter::default(),
            http_requests: Counter::default(),
            http_refused: Counter::default(),
            auth_refused: Counter::default(),
            tls_refused: Counter::default(),
            records_claimed: Counter::default(),
            acks: Counter::default(),
            retention_segments: Counter::default(),
            retention_records: Counter::default(),
            retention_bytes: Counter::default(),
            records_skipped: Counter::default(),
            replica_failures: Counter::default(),
            quorum_refusals: Counter::default(),
            stale_lead_batches: Counter::default(),
            no_space_refusals: Counter::default(),
            lag_waits: Counter::default(),
            quorum_failures: Counter::default(),
            stage_records_failed: Counter::default(),
            dead_letters: Counter::default(),
            stages_disabled: Counter::default(),
            slow_frames: Counter::default(),
            idle_closed: Counter::default(),
            errors: Default::default(),
            produce_latency: Latency::new(shards),
            job_latency: Latency::new(shards),
            since: std::time::Instant::now(),
        }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors[(code as usize).min(ERROR_CODES - 1)].add(1);
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(Counter::get).sum()
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let counters = [
            (
                "flowd_produce_requests_total",
                "Produce requests taken",
                self.produce_requests.get(),
            ),
            (
                "flowd_records_in_total",
                "Records taken from clients",
                self.records_in.get(),
            ),
            (
                "flowd_bytes_in_total",
                "Record bytes taken from clients",
                self.bytes_in.get(),
            ),
            (
                "flowd_fetch_requests_total",
                "Fetch requests served",
                self.fetch_requests.get(),
            ),
            (
                "flowd_records_fetched_total",
                "Records sent to fetching clients",
                self.records_fetched.get(),
            ),
            ("flowd_jobs_total", "Request/reply jobs taken", self.jobs.get()),
            ("flowd_job_answers_total", "Jobs answered", self.job_answers.get()),
            (
                "flowd_job_timeouts_total",
                "Jobs not answered within their timeout",
                self.job_timeouts.get(),
            ),
            (
                "flowd_job_answers_undelivered_total",
                "Job answers for callers on another peer that could not be sent there (those callers time out)",
                self.job_answers_undelivered.get(),
            ),
            (
                "flowd_connections_total",
                "Client connections accepted",
                self.connections_total.get(),
            ),
            (
                "flowd_connections_refused_total",
                "Connections refused over max_connections or max_connections_per_address",
                self.connections_refused.get(),
            ),
            (
                "flowd_http_requests_total",
                "HTTP requests served",
                self.http_requests.get(),
            ),
            (
                "flowd_http_refused_total",
                "HTTP requests refused before routing: a Host, Origin or Content-Type a browser page could forge",
                self.http_refused.get(),
            ),
            (
                "flowd_auth_refused_total",
                "Requests refused for their credentials: none, an unknown token, no AUTH in time, or a permission missing",
                self.auth_refused.get(),
            ),
            (
                "flowd_tls_refused_total",
                "Connections closed for their TLS: a failed handshake, or plaintext and TLS crossed",
                self.tls_refused.get(),
            ),
            (
                "flowd_records_claimed_total",
                "Records handed to consumers by claims",
                self.records_claimed.get(),
            ),
            ("flowd_acks_total", "Consumer claims acked", self.acks.get()),
            (
                "flowd_retention_segments_deleted_total",
                "Segments retention deleted",
                self.retention_segments.get(),
            ),
            (
                "flowd_retention_records_deleted_total",
                "Records in the segments retention deleted",
                self.retention_records.get(),
            ),
            (
                "flowd_retention_bytes_deleted_total",
                "Bytes of records in the segments retention deleted",
                self.retention_bytes.get(),
            ),
            (
                "flowd_records_skipped_total",
                "Records stages, sinks and consumers skipped because retention deleted them first",
                self.records_skipped.get(),
            ),
            (
                "flowd_replica_failures_total",
                "Times a replica could not follow its leader (its copy could not be cut back)",
                self.replica_failures.get(),
            ),
            (
                "flowd_quorum_refusals_total",
                "Writes refused because fewer replicas of their partition were alive than a quorum",
                self.quorum_refusals.get(),
            ),
            (
                "flowd_stale_lead_batches_total",
                "Stage batches not written because a later lead of their input partition writes their outputs",
                self.stale_lead_batches.get(),
            ),
            (
                "flowd_no_space_refusals_total",
                "Writes refused because the disk was full (no new segment could be made)",
                self.no_space_refusals.get(),
            ),
            (
                "flowd_lag_waits_total",
                "Producers' batches held back because their partition's slowest reader was max_lag records behind",
                self.lag_waits.get(),
            ),
            (
                "flowd_quorum_failures_total",
                "Leader batches not acked: their quorum did not come in time or their leadership moved",
                self.quorum_failures.get(),
            ),
            (
                "flowd_stage_records_failed_total",
                "Stage inputs skipped because the stage could not write them (on_error continue)",
                self.stage_records_failed.get(),
            ),
            (
                "flowd_dead_letters_total",
                "Stage inputs copied to their dead-letter topic with the reason",
                self.dead_letters.get(),
            ),
            (
                "flowd_stages_disabled_total",
                "Stage partitions stopped by on_error disable",
                self.stages_disabled.get(),
            ),
            (
                "flowd_slow_requests_closed_total",
                "Connections closed because a frame or an HTTP request did not arrive whole within io_timeout",
                self.slow_frames.get(),
            ),
            (
                "flowd_idle_connections_closed_total",
                "Connections closed after idle_timeout with nothing in flight",
                self.idle_closed.get(),
            ),
            (
                "flowd_fsyncs_total",
                "fdatasync calls on segment files",
                crate::storage::faults::FSYNCS.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP flowd_connections_open Client connections open now.\n# TYPE flowd_connections_open gauge\nflowd_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP flowd_errors_total Error responses by code.\n# TYPE flowd_errors_total counter"
        );
        for code in 1..ERROR_CODES as u16 {
            if let Some(code) = ErrorCode::from_u16(code) {
                let _ = writeln!(
                    out,
                    "flowd_errors_total{{code=\"{}\"}} {}",
                    code.name(),
                    self.errors[code as usize].get()
                );
            }
        }
        for (name, help, value) in extra {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} gauge\n{name} {value}");
        }
        for (name, help, latency) in [
            (
                "flowd_produce_latency_seconds",
                "Produce request to durable ack",
                &self.produce_latency,
            ),
            (
                "flowd_job_latency_seconds",
                "Job request to its answer",
                &self.job_latency,
            ),
        ] {
            let h = latency.merged();
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} summary");
            for q in [0.5, 0.9, 0.99, 0.999] {
                let v = h.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
            }
            let sum = h.mean() * h.len() as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", h.len());
        }
        out
    }
}

/// One partition's offsets and size, for the labelled gauges of `/metrics`.
pub struct PartitionGauges<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub start_offset: u64,
    pub next_offset: u64,
    pub durable_offset: u64,
    pub segments: u64,
    pub bytes: u64,
}

/// Per-partition gauges: where each partition starts (retention moves it), ends and is
/// durable, and how much it keeps.
pub fn render_partitions(out: &mut String, partitions: &[PartitionGauges<'_>]) {
    type Field = fn(&PartitionGauges<'_>) -> u64;
    let gauges: [(&str, &str, Field); 5] = [
        (
            "flowd_partition_start_offset",
            "The first offset a partition still holds (retention moves it forward)",
            |p| p.start_offset,
        ),
        (
            "flowd_partition_next_offset",
            "The offset the next record of a partition gets",
            |p| p.next_offset,
        ),
        (
            "flowd_partition_durable_offset",
            "Offsets below this are durable in the configured mode",
            |p| p.durable_offset,
        ),
        (
            "flowd_partition_segments",
            "Segment files a partition keeps",
            |p| p.segments,
        ),
        (
            "flowd_partition_bytes",
            "Bytes of records a partition keeps",
            |p| p.bytes,
        ),
    ];
    for (name, help, field) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} gauge");
        for p in partitions {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                p.topic,
                p.partition,
                field(p)
            );
        }
    }
}

/// Per shard: the seconds it was busy (running tasks, polling I/O), idle (asleep or
/// spinning before sleep: `uptime` less busy) and the CPU its thread used, since start.
pub fn render_shards(out: &mut String, uptime_secs: f64, shards: &[crate::protocol::status::ShardLoad]) {
    type Field = fn(f64, &crate::protocol::status::ShardLoad) -> f64;
    let counters: [(&str, &str, Field); 3] = [
        (
            "flowd_shard_busy_seconds_total",
            "Seconds a shard spent running tasks and polling I/O",
            |_, s| s.busy_secs,
        ),
        (
            "flowd_shard_idle_seconds_total",
            "Seconds a shard had nothing to run (asleep, or spinning briefly before it sleeps)",
            |up, s| (up - s.busy_secs).max(0.0),
        ),
        (
            "flowd_shard_cpu_seconds_total",
            "CPU seconds a shard's thread used (the kernel's count, spinning included)",
            |_, s| s.cpu_secs,
        ),
    ];
    for (name, help, field) in counters {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
        for s in shards {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\"}} {:.6}",
                s.shard,
                field(uptime_secs, s)
            );
        }
    }
}

/// Per replicated partition, as this peer sees it: whether it leads, the epoch, the
/// high-water mark, replicas alive and needed, and how far each follower holds the log.
pub fn render_replicas(
    out: &mut String,
    partitions: &[(&str, u32, &crate::protocol::status::ReplicaStatus)],
) {
    type Field = fn(&crate::protocol::status::ReplicaStatus) -> u64;
    let gauges: [(&str, &str, Field); 5] = [
        (
            "flowd_replica_leader",
            "1 where this peer leads the partition",
            |r| u64::from(r.role == "leader"),
        ),
        (
            "flowd_replica_epoch",
            "The leader epoch this peer leads or follows under",
            |r| u64::from(r.epoch),
        ),
        (
            "flowd_replica_high_water_mark",
            "Offsets below this are held durably by a quorum of the replicas (readers see up to here)",
            |r| r.hwm,
        ),
        (
            "flowd_replica_alive",
            "Replicas of the partition gossip shows alive",
            |r| r.alive as u64,
        ),
        (
            "flowd_replica_needed",
            "Replicas a write needs alive (a majority)",
            |r| r.needed as u64,
        ),
    ];
    for (name, help, field) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} gauge");
        for (topic, partition, r) in partitions {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {}",
                field(r)
            );
        }
    }
    let name = "flowd_replica_follower_durable_offset";
    let _ = writeln!(
        out,
        "# HELP {name} On the leader: how far each follower holds the log durably, in the leader's view.\n# TYPE {name} gauge"
    );
    for (topic, partition, r) in partitions {
        for (follower, end) in &r.followers {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{topic}\",partition=\"{partition}\",follower=\"{follower}\"}} {end}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_quantiles() {
        let m = Metrics::new(2);
        m.records_in.add(3);
        m.error(ErrorCode::UnknownTopic);
        m.produce_latency.record(0, Duration::from_micros(100));
        m.produce_latency.record(1, Duration::from_micros(300));
        let text = m.render(&[]);
        assert!(text.contains("flowd_records_in_total 3\n"), "{text}");
        assert!(
            text.contains("flowd_errors_total{code=\"unknown_topic\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("flowd_produce_latency_seconds_count 2\n"), "{text}");
        assert!(
            text.contains("flowd_produce_latency_seconds{quantile=\"0.99\"} 0.0003"),
            "{text}"
        );
    }
}
