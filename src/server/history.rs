//! The console's memory: a bounded ring of samples per metric, taken every
//! [`INTERVAL`] by shard 0 from this peer's own status and counters, and served as JSON
//! at `GET /history` for the charts.
//!
//! What is kept, each sample (rates per second over the last interval; latencies are
//! the interval's own percentiles, not since start):
//! - `in` records taken, `out` records read by clients (fetched and claimed), `jobs`;
//! - `produce_p50_us`, `produce_p99_us`, `job_p50_us`, `job_p99_us` (0 when none);
//! - `in:TOPIC` records appended per second to each topic;
//! - `lag:TOPIC/NAME` each stage's and named consumer's lag, summed over partitions.
//!
//! While nothing moves and nobody asks for the charts, samples come ever more seldom
//! (every [`IDLE_INTERVAL_MAX`] at the most), so an idle engine stays asleep. A look at
//! the charts (from any shard) wakes a wait already under way: the next sample comes
//! [`INTERVAL`] after the last one, or at once if that has passed.
//!
//! Bounded: [`POINTS`] samples per series (10 minutes at full pace) and at most [`SERIES_MAX`]
//! series; a series beyond that is not kept and counted in `series_refused` (shown by
//! the console), so a dataflow with thousands of consumers cannot grow it. A series
//! not seen for a whole ring is dropped. At most `SERIES_MAX * POINTS * 16` bytes
//! (about 4.9 MiB) of points.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::status::TopicStatus;

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept per series: 10 minutes.
pub const POINTS: usize = 300;
/// Series kept at most.
pub const SERIES_MAX: usize = 1024;
/// The longest wait between samples while nothing moves and nobody looks.
pub const IDLE_INTERVAL_MAX: Duration = Duration::from_secs(16);
/// How long a look at the charts keeps samples at full pace.
const WATCHED_FOR: Duration = Duration::from_secs(30);

/// Every series' ring, shared by the shards (shard 0 writes, any door reads).
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Rings>,
    /// When the charts were last asked for (ms since the epoch).
    watched_ms: std::sync::atomic::AtomicI64,
    /// Told at each look at the charts, so a sampler in its idle backoff wakes (from
    /// whichever shard served the look: glommio takes foreign wake-ups).
    looked: event_listener::Event,
}

#[derive(Debug, Default)]
struct Rings {
    /// Per series: (time ms since the epoch, value), oldest first.
    series: BTreeMap<String, VecDeque<(i64, f64)>>,
    series_refused: u64,
}

/// What the sampler remembers between samples, to turn totals into rates.
struct Last {
    at: std::time::Instant,
    records_in: u64,
    records_out: u64,
    jobs: u64,
    topics: HashMap<String, u64>,
    produce: Histogram<u64>,
    job: Histogram<u64>,
}

impl Last {
    /// The first interval begins where the counters do, at the engine's start from zero,
    /// not when the sampler first runs: shard 0 may get to it only after other shards
    /// took a load, which would otherwise fall before the first interval and never show.
    fn from_start(metrics: &crate::metrics::Metrics) -> Last {
        Last {
            at: metrics.since,
            records_in: 0,
            records_out: 0,
            jobs: 0,
            topics: HashMap::new(),
            produce: Histogram::new_from(&metrics.produce_latency.merged()),
            job: Histogram::new_from(&metrics.job_latency.merged()),
        }
    }
}

impl History {
    fn push(&self, now_ms: i64, values: Vec<(String, f64)>) {
        let mut rings = self.inner.lock().expect("history lock");
        for (name, value) in values {
            let full = rings.series.len() >= SERIES_MAX;
            match rings.series.get_mut(&name) {
                Some(ring) => {
                    if ring.len() == POINTS {
                        ring.pop_front();
                    }
                    ring.push_back((now_ms, value));
                }
                None if full => rings.series_refused += 1,
                None => {
                    let mut ring = VecDeque::with_capacity(POINTS);
                    ring.push_back((now_ms, value));
                    rings.series.insert(name, ring);
                }
            }
        }
        // A series silent for a whole ring (a consumer deleted, a topic gone) goes.
        let oldest = now_ms - (POINTS as i64) * INTERVAL.as_millis() as i64;
        rings
            .series
            .retain(|_, ring| ring.back().is_some_and(|(t, _)| *t > oldest));
    }

    /// Whether the charts were asked for within the last [`WATCHED_FOR`].
    fn watched(&self) -> bool {
        let since =
            crate::storage::layout::now_ms() - self.watched_ms.load(std::sync::atomic::Ordering::Relaxed);
        since < WATCHED_FOR.as_millis() as i64
    }

    /// `{"interval_ms", "series": {NAME: [[MS, VALUE], ...]}, "series_refused"}`; only the
    /// series whose name starts with one of `prefixes` (all when empty). Asking counts as
    /// watching: samples come every [`INTERVAL`] for the next [`WATCHED_FOR`].
    pub fn json(&self, prefixes: &[&str]) -> serde_json::Value {
        self.watched_ms.store(
            crate::storage::layout::now_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.looked.notify(usize::MAX);
        let rings = self.inner.lock().expect("history lock");
        let series: serde_json::Map<String, serde_json::Value> = rings
            .series
            .iter()
            .filter(|(name, _)| prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p)))
            .map(|(name, ring)| {
                let points: Vec<serde_json::Value> =
                    ring.iter().map(|(t, v)| serde_json::json!([t, v])).collect();
                (name.clone(), serde_json::Value::Array(points))
            })
            .collect();
        serde_json::json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "points": POINTS,
            "series": series,
            "series_refused": rings.series_refused,
        })
    }

    /// Bytes the rings hold now (points and names), for the console's own figure.
    pub fn bytes(&self) -> usize {
        let rings = self.inner.lock().expect("history lock");
        rings
            .series
            .iter()
            .map(|(name, ring)| name.len() + ring.capacity() * std::mem::size_of::<(i64, f64)>())
            .sum()
    }
}

/// The interval's own percentiles: what `now` holds beyond `before`.
fn window_quantiles(now: &Histogram<u64>, before: &Histogram<u64>) -> (f64, f64) {
    let mut window = now.clone();
    if window.subtract(before).is_err() || window.is_empty() {
        return (0.0, 0.0);
    }
    (
        window.value_at_quantile(0.5) as f64,
        window.value_at_quantile(0.99) as f64,
    )
}

/// One sample of the counters in `metrics` and of `statuses` (a status's topics, the
/// engine's own included), as rates and levels since `last`, which it then becomes.
fn sample<'a>(
    statuses: impl Iterator<Item = &'a TopicStatus>,
    metrics: &crate::metrics::Metrics,
    last: &mut Last,
) -> Vec<(String, f64)> {
    let now = std::time::Instant::now();
    let secs = now.duration_since(last.at).as_secs_f64().max(0.001);
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
    let records_in = metrics.records_in.get();
    let records_out = metrics.records_fetched.get() + metrics.records_claimed.get();
    let jobs = metrics.jobs.get();
    let produce = metrics.produce_latency.merged();
    let job = metrics.job_latency.merged();
    let (produce_p50, produce_p99) = window_quantiles(&produce, &last.produce);
    let (job_p50, job_p99) = window_quantiles(&job, &last.job);
    let mut values = vec![
        ("in".to_owned(), rate(records_in, last.records_in)),
        ("out".to_owned(), rate(records_out, last.records_out)),
        ("jobs".to_owned(), rate(jobs, last.jobs)),
        ("produce_p50_us".to_owned(), produce_p50),
        ("produce_p99_us".to_owned(), produce_p99),
        ("job_p50_us".to_owned(), job_p50),
        ("job_p99_us".to_owned(), job_p99),
    ];
    let mut topics = HashMap::new();
    let mut lags: BTreeMap<String, u64> = BTreeMap::new();
    for topic in statuses {
        let next: u64 = topic.partitions.iter().map(|p| p.next_offset).sum();
        if let Some(before) = last.topics.get(&topic.name) {
            values.push((format!("in:{}", topic.name), rate(next, *before)));
        }
        topics.insert(topic.name.clone(), next);
        for p in &topic.partitions {
            for c in &p.consumers {
                *lags.entry(format!("lag:{}/{}", topic.name, c.name)).or_default() += c.lag;
            }
            for c in &p.named {
                *lags.entry(format!("lag:{}/{}", topic.name, c.group)).or_default() += c.lag;
            }
        }
    }
    values.extend(lags.into_iter().map(|(name, lag)| (name, lag as f64)));
    *last = Last {
        at: now,
        records_in,
        records_out,
        jobs,
        topics,
        produce,
        job,
    };
    values
}

/// Samples this peer's status into `history` every [`INTERVAL`] until the engine stops
/// (on shard 0; one sample costs a status gather and two histogram merges, about 2 ms of
/// CPU measured in a release build). It keeps the last two latency histograms (about
/// 200 KB each) to tell each interval's percentiles.
pub async fn sample_forever(
    shard: Rc<crate::runtime::shard::Shard>,
    front: Rc<super::Front>,
    history: std::sync::Arc<History>,
) {
    let metrics = std::sync::Arc::clone(&shard.shared.metrics);
    let mut last = Last::from_start(&metrics);
    let control = &shard.shared.control;
    let mut wait = INTERVAL;
    let mut sampled_at = std::time::Instant::now();
    let mut before: Vec<(String, f64)> = Vec::new();
    loop {
        until_due(&history, control, sampled_at, &mut wait).await;
        if control.is_stopping() {
            return;
        }
        sampled_at = std::time::Instant::now();
        let status = front.status(&shard, true, &front.relays).await;
        let values = sample(
            status.topics.iter().chain(&status.internal_topics),
            &metrics,
            &mut last,
        );
        // Idle means idle: while nothing moves and nobody watches, samples come ever
        // more seldom (up to IDLE_INTERVAL_MAX); any change, or a look at the charts,
        // brings them back to every INTERVAL.
        let quiet = values == before
            && values
                .iter()
                .all(|(name, v)| *v == 0.0 || name.starts_with("lag:"));
        let watched = history.watched();
        wait = if quiet && !watched {
            (wait * 2).min(IDLE_INTERVAL_MAX)
        } else {
            INTERVAL
        };
        before.clone_from(&values);
        history.push(crate::storage::layout::now_ms(), values);
    }
}

/// Returns when the next sample is due, `wait` after the last one (`sampled_at`), or at
/// the engine's stop. While the sampler backs off (`wait` above [`INTERVAL`]), a look at
/// the charts sets `wait` back to [`INTERVAL`], also during a wait already under way, so
/// a console opened after an idle spell shows the present within one interval. Looks
/// never bring samples closer than [`INTERVAL`] apart, however many come.
async fn until_due(
    history: &History,
    control: &crate::runtime::shard::Control,
    sampled_at: std::time::Instant,
    wait: &mut Duration,
) {
    // Bounded: each turn either returns or sleeps until a look, the stop or the due
    // time; a look ends the backoff, after which no look is listened for.
    loop {
        if *wait > INTERVAL && history.watched() {
            *wait = INTERVAL;
        }
        let due = sampled_at + *wait;
        if control.is_stopping() || std::time::Instant::now() >= due {
            return;
        }
        if *wait > INTERVAL {
            let looked = history.looked.listen();
            // A look between the check above and listening is seen here.
            if history.watched() {
                continue;
            }
            futures_lite::future::or(looked, control.until_stopping_or(Some(due))).await;
        } else {
            control.until_stopping_or(Some(due)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_taken_before_the_sampler_first_runs_shows_in_its_first_sample() {
        let metrics = crate::metrics::Metrics::new(1);
        metrics.records_in.add(1000);
        metrics.jobs.add(10);
        metrics.produce_latency.record(0, Duration::from_micros(250));
        let mut last = Last::from_start(&metrics);
        let values: BTreeMap<String, f64> = sample(std::iter::empty(), &metrics, &mut last)
            .into_iter()
            .collect();
        assert!(values["in"] > 0.0, "{values:?}");
        assert!(values["jobs"] > 0.0, "{values:?}");
        assert!(values["produce_p50_us"] > 0.0, "{values:?}");
        let values: BTreeMap<String, f64> = sample(std::iter::empty(), &metrics, &mut last)
            .into_iter()
            .collect();
        assert_eq!(
            (values["in"], values["produce_p50_us"]),
            (0.0, 0.0),
            "counted once"
        );
    }

    #[test]
    fn rings_are_bounded_in_points_and_series_and_say_what_they_refused() {
        let history = History::default();
        for i in 0..(POINTS as i64 + 10) {
            history.push(i * 2000, vec![("in".into(), i as f64)]);
        }
        let json = history.json(&[]);
        let points = json["series"]["in"].as_array().unwrap();
        assert_eq!(points.len(), POINTS, "the oldest points go first");
        assert_eq!(points[0][1], 10.0);
        let names: Vec<(String, f64)> = (0..SERIES_MAX + 5).map(|i| (format!("lag:t/{i}"), 1.0)).collect();
        history.push(POINTS as i64 * 2000 + 20_000, names);
        let json = history.json(&["lag:"]);
        assert_eq!(json["series"].as_object().unwrap().len(), SERIES_MAX - 1);
        assert_eq!(json["series_refused"], 6);
        assert!(history.bytes() <= SERIES_MAX * (POINTS * 16 + 64));
    }

    /// Runs `until_due` on a glommio executor with `looks` made from another thread at
    /// the given delays; gives how long it took and the wait it left.
    fn time_until_due(since_last: Duration, wait: Duration, looks: &[Duration]) -> (Duration, Duration) {
        let history = std::sync::Arc::new(History::default());
        let looking = {
            let (history, looks) = (std::sync::Arc::clone(&history), looks.to_vec());
            std::thread::spawn(move || {
                for delay in looks {
                    std::thread::sleep(delay);
                    history.json(&[]);
                }
            })
        };
        let result = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let control = crate::runtime::shard::Control::default();
                let start = std::time::Instant::now();
                let mut wait = wait;
                until_due(&history, &control, start - since_last, &mut wait).await;
                (start.elapsed(), wait)
            })
            .unwrap()
            .join()
            .unwrap();
        looking.join().unwrap();
        result
    }

    #[test]
    fn a_look_at_the_charts_ends_an_idle_backoff_under_way_but_never_samples_faster() {
        // In the longest backoff, 3 s after the last sample, a look comes after 200 ms:
        // the next sample is due at once (without the wake it would come 13 s later).
        let (took, wait) = time_until_due(
            Duration::from_secs(3),
            IDLE_INTERVAL_MAX,
            &[Duration::from_millis(200)],
        );
        assert_eq!(wait, INTERVAL);
        assert!(
            took < Duration::from_secs(8),
            "the look woke the sampler after {took:?}"
        );
        // Nobody looks: the backoff is kept to its end.
        let (took, wait) = time_until_due(
            IDLE_INTERVAL_MAX - Duration::from_millis(500),
            IDLE_INTERVAL_MAX,
            &[],
        );
        assert_eq!(wait, IDLE_INTERVAL_MAX);
        assert!(took >= Duration::from_millis(400), "{took:?}");
        // At full pace, looks (however many) do not bring the sample closer than INTERVAL.
        let looks = [Duration::from_millis(100); 5];
        let (took, wait) = time_until_due(Duration::ZERO, INTERVAL, &looks);
        assert_eq!(wait, INTERVAL);
        assert!(took >= INTERVAL - Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn a_series_silent_for_a_whole_ring_is_dropped() {
        let history = History::default();
        history.push(0, vec![("lag:t/gone".into(), 3.0)]);
        history.push(1000, vec![("in".into(), 1.0)]);
        assert!(history.json(&[])["series"].get("lag:t/gone").is_some());
        history.push(POINTS as i64 * 2000 + 1, vec![("in".into(), 1.0)]);
        assert!(history.json(&[])["series"].get("lag:t/gone").is_none());
    }
}
