//! The data plane's bodies, byte by byte, sans-io: what one peer sends another to
//! write records to a partition it owns (PRODUCE), to read one (FETCH), and the answer
//! to a produce (ACKED), and a job's answer for a caller connected to it (ANSWER).
//! Frames carry them (see `frame`); both ends use these functions
//! and nothing else, so the two halves cannot drift apart.
//!
//! ```text
//! PRODUCE  str8 topic, u32 partition, u32 count, i64 stamp_ms (0: the owner's clock),
//!          then `count` records in the client protocol's record encoding
//! FETCH    str8 topic, u32 partition, u8 start (0 offset, 1 earliest, 2 latest, 3 time),
//!          u64 offset or time, u32 max_records, u32 max_bytes, u32 wait_ms
//! PRODUCE_AGAIN  u64 from (where the leader looks for the batch), then a PRODUCE body
//! PRODUCE_LED    u32 lead (the epoch of the input's lead the stage wrote it for),
//!                u8 again (0 or 1), u64 from if again, then a PRODUCE body
//! ACKED    u64 first offset, u64 next offset
//! STALE    u32 latest (the epoch of the input's lead that writes the batch's outputs)
//! ANSWER   u64 epoch, u32 shard, u64 job (the reply address's caller, see
//!          runtime/reply.rs), u8 outcome, then
//!            outcome 0 (answered): u8 has_key, (u32 key_len, key) if has_key,
//!                                  u32 value_len, value
//!            outcome 1 (failed):   str16 why
//! ```
//! All integers are little-endian. Every decoder checks every length against the body
//! and fails with `ClusterError::Frame`; none panics on any input (fuzzed:
//! `fuzz/fuzz_targets/peer_frames.rs`).

use crate::cluster::error::ClusterError;
use crate::cluster::frame::{Body, Fields};
use crate::protocol::FetchFrom;

/// A PRODUCE body: records for one partition, still in their wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produce<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub count: u32,
    pub stamp_ms: i64,
    /// `count` records back to back, not yet validated.
    pub records: &'a [u8],
}

/// The head of a PRODUCE body; its records follow in `records`' encoding.
pub fn produce_head(topic: &str, partition: u32, count: u32, stamp_ms: i64) -> Body {
    Body::default()
        .str8(topic)
        .u32(partition)
        .u32(count)
        .i64(stamp_ms)
}

pub fn encode_produce(produce: &Produce<'_>) -> Vec<u8> {
    produce_head(produce.topic, produce.partition, produce.count, produce.stamp_ms)
        .bytes(produce.records)
        .0
}

pub fn decode_produce(body: &[u8]) -> Result<Produce<'_>, ClusterError> {
    let mut fields = Fields(body);
    Ok(Produce {
        topic: fields.str8()?,
        partition: fields.u32()?,
        count: fields.u32()?,
        stamp_ms: fields.i64()?,
        records: fields.rest(),
    })
}

/// A PRODUCE_AGAIN body: where to look for the batch, then the PRODUCE body `produce`.
pub fn encode_produce_again(from: u64, produce: &[u8]) -> Vec<u8> {
    Body::default().u64(from).bytes(produce).0
}

/// A PRODUCE_AGAIN body: where to look for the batch, and the PRODUCE it carries.
pub fn decode_produce_again(body: &[u8]) -> Result<(u64, Produce<'_>), ClusterError> {
    let mut fields = Fields(body);
    let from = fields.u64()?;
    Ok((from, decode_produce(fields.rest())?))
}

/// A PRODUCE_LED body: a stage's batch made for its input's lead in epoch `lead`
/// (`again`: sent again, looked for from that offset), then the PRODUCE body `produce`.
pub fn encode_produce_led(lead: u32, again: Option<u64>, produce: &[u8]) -> Vec<u8> {
    let body = Body::default().u32(lead);
    let body = match again {
        None => body.u8(0),
        Some(from) => body.u8(1).u64(from),
    };
    body.bytes(produce).0
}

/// A PRODUCE_LED body: the lead's epoch, where to look for the batch if sent again,
/// and the PRODUCE it carries.
pub fn decode_produce_led(body: &[u8]) -> Result<(u32, Option<u64>, Produce<'_>), ClusterError> {
    let mut fields = Fields(body);
    let lead = fields.u32()?;
    let again = match fields.u8()? {
        0 => None,
        1 => Some(fields.u64()?),
        other => {
            return Err(ClusterError::Frame(format!(
                "a PRODUCE_LED's again flag is {other}, not 0 or 1"
            )));
        }
    };
    Ok((lead, again, decode_produce(fields.rest())?))
}

/// A FETCH body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub from: FetchFrom,
    pub max_records: u32,
    pub max_bytes: u32,
    pub wait_ms: u32,
}

pub fn encode_fetch(fetch: &Fetch<'_>) -> Vec<u8> {
    let (start, offset) = match fetch.from {
        FetchFrom::Offset(o) => (0, o),
        FetchFrom::Earliest => (1, 0),
        FetchFrom::Latest => (2, 0),
        FetchFrom::Time(t) => (3, t as u64),
    };
    Body::default()
        .str8(fetch.topic)
        .u32(fetch.partition)
        .u8(start)
        .u64(offset)
        .u32(fetch.max_records)
        .u32(fetch.max_bytes)
        .u32(fetch.wait_ms)
        .0
}

pub fn decode_fetch(body: &[u8]) -> Result<Fetch<'_>, ClusterError> {
    let mut fields = Fields(body);
    let topic = fields.str8()?;
    let partition = fields.u32()?;
    let start = fields.u8()?;
    let offset = fields.u64()?;
    let from = match start {
        0 => FetchFrom::Offset(offset),
        1 => FetchFrom::Earliest,
        2 => FetchFrom::Latest,
        3 => FetchFrom::Time(offset as i64),
        other => return Err(ClusterError::Frame(format!("fetch start {other} is not 0 to 3"))),
    };
    let fetch = Fetch {
        topic,
        partition,
        from,
        max_records: fields.u32()?,
        max_bytes: fields.u32()?,
        wait_ms: fields.u32()?,
    };
    if !fields.rest().is_empty() {
        return Err(ClusterError::Frame("bytes after a FETCH body".into()));
    }
    Ok(fetch)
}

pub fn encode_acked(first: u64, next: u64) -> Vec<u8> {
    Body::default().u64(first).u64(next).0
}

/// A STALE body: the PRODUCE_LED was not written, the input's lead in `latest` writes
/// its outputs.
pub fn encode_stale(latest: u32) -> Vec<u8> {
    Body::default().u32(latest).0
}

/// The epoch of a STALE body.
pub fn decode_stale(body: &[u8]) -> Result<u32, ClusterError> {
    Fields(body).u32()
}

/// `(first offset, next offset)` of an ACKED body.
pub fn decode_acked(body: &[u8]) -> Result<(u64, u64), ClusterError> {
    let mut fields = Fields(body);
    let acked = (fields.u64()?, fields.u64()?);
    if acked.0 > acked.1 {
        return Err(ClusterError::Frame(format!(
            "an ACKED range from {} to {}",
            acked.0, acked.1
        )));
    }
    Ok(acked)
}

/// An ANSWER body: a job's outcome for the caller at (`epoch`, `shard`, `job`) on the
/// peer it is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerBody<'a> {
    pub epoch: u64,
    pub shard: u32,
    pub job: u64,
    /// The answer's key and value, or why the job failed.
    pub outcome: Result<(Option<&'a [u8]>, &'a [u8]), &'a str>,
}

pub fn encode_answer(answer: &AnswerBody<'_>) -> Vec<u8> {
    let body = Body::default()
        .u64(answer.epoch)
        .u32(answer.shard)
        .u64(answer.job);
    match answer.outcome {
        Ok((key, value)) => {
            let body = match key {
                Some(key) => body.u8(0).u8(1).u32(key.len() as u32).bytes(key),
                None => body.u8(0).u8(0),
            };
            body.u32(value.len() as u32).bytes(value).0
        }
        Err(why) => body.u8(1).str16(why).0,
    }
}

pub fn decode_answer(body: &[u8]) -> Result<AnswerBody<'_>, ClusterError> {
    let mut fields = Fields(body);
    let (epoch, shard, job) = (fields.u64()?, fields.u32()?, fields.u64()?);
    let outcome = match fields.u8()? {
        0 => {
            let key = match fields.u8()? {
                0 => None,
                1 => {
                    let len = fields.u32()? as usize;
                    Some(fields.take(len)?)
                }
                other => return Err(ClusterError::Frame(format!("an ANSWER key flag {other}"))),
            };
            let len = fields.u32()? as usize;
            Ok((key, fields.take(len)?))
        }
        1 => Err(fields.str16()?),
        other => return Err(ClusterError::Frame(format!("an ANSWER outcome {other}"))),
    };
    if !fields.rest().is_empty() {
        return Err(ClusterError::Frame("bytes after an ANSWER body".into()));
    }
    Ok(AnswerBody {
        epoch,
        shard,
        job,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let produce = Produce {
            topic: "events",
            partition: 3,
            count: 2,
            stamp_ms: -7,
            records: b"anything",
        };
        assert_eq!(decode_produce(&encode_produce(&produce)).unwrap(), produce);
        let again = encode_produce_again(77, &encode_produce(&produce));
        assert_eq!(decode_produce_again(&again).unwrap(), (77, produce));
        assert!(decode_produce_again(&again[..7]).is_err());
        let led = encode_produce_led(9, Some(77), &encode_produce(&produce));
        assert_eq!(decode_produce_led(&led).unwrap(), (9, Some(77), produce));
        let led = encode_produce_led(9, None, &encode_produce(&produce));
        assert_eq!(decode_produce_led(&led).unwrap(), (9, None, produce));
        assert!(decode_produce_led(&led[..4]).is_err());
        let mut bad = led.clone();
        bad[4] = 2;
        assert!(
            decode_produce_led(&bad).is_err(),
            "an again flag other than 0 or 1"
        );
        for from in [
            FetchFrom::Offset(u64::MAX),
            FetchFrom::Earliest,
            FetchFrom::Latest,
            FetchFrom::Time(-5),
        ] {
            let fetch = Fetch {
                topic: "t",
                partition: 1,
                from,
                max_records: 10,
                max_bytes: 20,
                wait_ms: 30,
            };
            assert_eq!(decode_fetch(&encode_fetch(&fetch)).unwrap(), fetch);
        }
        assert_eq!(decode_acked(&encode_acked(4, 9)).unwrap(), (4, 9));
        assert_eq!(decode_stale(&encode_stale(7)).unwrap(), 7);
        assert!(decode_stale(&[7, 0]).is_err(), "a short STALE body");
        for outcome in [
            Ok((Some(&b"k"[..]), &b"v"[..])),
            Ok((None, &b""[..])),
            Err("no worker"),
        ] {
            let answer = AnswerBody {
                epoch: u64::MAX,
                shard: 3,
                job: 17,
                outcome,
            };
            let body = encode_answer(&answer);
            assert_eq!(decode_answer(&body).unwrap(), answer);
            for cut in 0..body.len() {
                assert!(decode_answer(&body[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = body;
            longer.push(0);
            assert!(decode_answer(&longer).is_err());
        }
    }

    #[test]
    fn short_or_odd_bodies_are_errors() {
        let fetch = encode_fetch(&Fetch {
            topic: "t",
            partition: 1,
            from: FetchFrom::Earliest,
            max_records: 1,
            max_bytes: 1,
            wait_ms: 0,
        });
        for cut in 0..fetch.len() {
            assert!(decode_fetch(&fetch[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_start = fetch.clone();
        bad_start[2 + 4] = 9;
        assert!(decode_fetch(&bad_start).is_err());
        let mut longer = fetch;
        longer.push(0);
        assert!(decode_fetch(&longer).is_err());
        assert!(decode_acked(&encode_acked(9, 4)).is_err());
        assert!(decode_produce(&[200, b'x']).is_err());
    }
}
