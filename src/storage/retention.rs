//! Retention: which whole closed segments to delete, by age and by total size.
//!
//! Only the oldest closed segments ever go, so what stays is always a dense run of
//! offsets ending at the active segment, which is never deleted. Age is judged by a
//! segment's newest record timestamp: a segment goes once even its newest record is
//! older than `max_age_ms`.

/// Bounds on what a partition keeps. `None` means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    pub max_age_ms: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// What retention needs to know of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFacts {
    pub max_timestamp_ms: i64,
    pub data_bytes: u64,
}

/// How many of the oldest segments to delete. `segments` is oldest first and ends with
/// the active segment, which is never counted.
pub fn segments_to_delete(segments: &[SegmentFacts], policy: RetentionPolicy, now_ms: i64) -> usize {
    let closed = segments.len().saturating_sub(1);
    let by_age = policy.max_age_ms.map_or(0, |max_age_ms| {
        let cutoff = now_ms.saturating_sub(i64::try_from(max_age_ms).unwrap_or(i64::MAX));
        segments[..closed]
            .iter()
            .take_while(|s| s.max_timestamp_ms < cutoff)
            .count()
    });
    let by_size = policy.max_bytes.map_or(0, |max_bytes| {
        let mut total: u64 = segments.iter().map(|s| s.data_bytes).sum();
        let mut count = 0;
        while count < closed && total > max_bytes {
            total -= segments[count].data_bytes;
            count += 1;
        }
        count
    });
    by_age.max(by_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(list: &[(i64, u64)]) -> Vec<SegmentFacts> {
        list.iter()
            .map(|(ts, bytes)| SegmentFacts {
                max_timestamp_ms: *ts,
                data_bytes: *bytes,
            })
            .collect()
    }

    #[test]
    fn retention_table() {
        let segments = facts(&[(100, 10), (200, 10), (300, 10), (400, 10)]);
        let age = |ms| RetentionPolicy {
            max_age_ms: Some(ms),
            max_bytes: None,
        };
        let size = |bytes| RetentionPolicy {
            max_age_ms: None,
            max_bytes: Some(bytes),
        };
        let cases = [
            ("unbounded keeps all", RetentionPolicy::default(), 1000, 0),
            ("age: nothing old enough", age(1000), 1000, 0),
            ("age: the two oldest expired", age(750), 1000, 2),
            ("age: boundary is kept", age(800), 1000, 1),
            ("age: never the active segment", age(1), 10_000, 3),
            ("size: under the bound", size(40), 0, 0),
            ("size: one over", size(39), 0, 1),
            ("size: never the active segment", size(0), 0, 3),
            (
                "both: the stricter wins",
                RetentionPolicy {
                    max_age_ms: Some(850),
                    max_bytes: Some(25),
                },
                1000,
                2,
            ),
        ];
        for (name, policy, now, want) in cases {
            assert_eq!(segments_to_delete(&segments, policy, now), want, "{name}");
        }
    }

    #[test]
    fn an_out_of_order_timestamp_keeps_later_segments() {
        // Only a prefix goes: a young segment shields the older ones after it.
        let segments = facts(&[(100, 1), (900, 1), (100, 1), (1000, 1)]);
        let policy = RetentionPolicy {
            max_age_ms: Some(500),
            max_bytes: None,
        };
        assert_eq!(segments_to_delete(&segments, policy, 1000), 1);
    }
}
