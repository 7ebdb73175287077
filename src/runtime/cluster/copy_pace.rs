//! How fast a leader sends copies to peers its quorum does not count yet: learners
//! that join a replica set (a join, a dead peer's replacement) and replicas back on an
//! emptied data directory. One pace per peer, shared by every partition it leads, so
//! that copying a whole log to a new peer leaves its producers' latency alone
//! (`--copy-rate`; Redpanda's learner recovery rate, Kafka's replication throttle).
//! Copies to counted followers are never paced: they are what acks wait for.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest one answer waits for its turn; past that the answer goes out empty
/// and the copier asks again (its request must not time out waiting).
pub const MOST_WAIT: Duration = Duration::from_secs(1);

/// A pace of bytes per second, booked answer by answer.
pub struct CopyPace {
    bytes_per_sec: u64,
    /// When the copies booked so far have gone out at the pace.
    free_at: Mutex<Instant>,
}

impl CopyPace {
    pub fn new(bytes_per_sec: u64) -> CopyPace {
        CopyPace {
            bytes_per_sec: bytes_per_sec.max(1),
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Books `bytes` of copy: how long to wait before sending them, or `None` (nothing
    /// booked) if that would be longer than [`MOST_WAIT`].
    pub fn book(&self, bytes: usize) -> Option<Duration> {
        self.book_at(bytes, Instant::now())
    }

    fn book_at(&self, bytes: usize, now: Instant) -> Option<Duration> {
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*free_at).max(now);
        let wait = start - now;
        if wait > MOST_WAIT {
            return None;
        }
        *free_at = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_go_out_at_the_pace_and_never_wait_past_the_most() {
        let pace = CopyPace::new(1 << 20);
        let now = Instant::now();
        // The first goes at once; each next one after the ones before went out.
        assert_eq!(pace.book_at(512 << 10, now), Some(Duration::ZERO));
        assert_eq!(pace.book_at(512 << 10, now), Some(Duration::from_millis(500)));
        assert_eq!(pace.book_at(1 << 20, now), Some(Duration::from_secs(1)));
        // Two seconds booked: the next would wait longer than the most, and is not booked.
        assert_eq!(pace.book_at(1, now), None);
        assert_eq!(
            pace.book_at(1, now + Duration::from_millis(1500)),
            Some(Duration::from_millis(500))
        );
        // Idle time is not saved up for a burst.
        let later = now + Duration::from_secs(60);
        assert_eq!(pace.book_at(1 << 20, later), Some(Duration::ZERO));
        assert_eq!(pace.book_at(1, later), Some(Duration::from_secs(1)));
    }
}
