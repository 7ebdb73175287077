//! Latency histograms and the JSON report, in the shape `flowd bench --json` prints.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Collects one measured run.
pub struct Run {
    started: Instant,
    latency: Histogram<u64>,
    pub records: u64,
}

impl Run {
    pub fn start() -> Run {
        Run {
            started: Instant::now(),
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            records: 0,
        }
    }

    pub fn record(&mut self, latency: Duration, records: u64) {
        self.latency
            .saturating_record((latency.as_micros() as u64).max(1));
        self.records += records;
    }

    pub fn report(self, scenario: &str, size: usize, config: serde_json::Value) -> String {
        let seconds = self.started.elapsed().as_secs_f64();
        let h = &self.latency;
        serde_json::json!({
            "scenario": scenario,
            "records": self.records,
            "seconds": seconds,
            "records_per_sec": self.records as f64 / seconds,
            "mb_per_sec": (self.records * size as u64) as f64 / seconds / 1e6,
            "latency_us": {
                "p50": h.value_at_quantile(0.5),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
            "config": config,
        })
        .to_string()
    }
}

/// `flowd bench`'s warm-up: a tenth of the run, at most 100k records, at least one batch.
pub fn warmup_batches(batches: u64, batch: usize) -> u64 {
    (batches / 10).clamp(1, (100_000 / batch.max(1) as u64).max(1))
}

/// A record value of `size` bytes.
pub fn payload(size: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; size])
}
