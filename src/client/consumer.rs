//! The client side of consumers and range reads: claim, ack, seek, reclaim,
//! ack-and-commit, admin, range, length; blocking, one request at a time (pipeline with `send`/`recv`).

use crate::client::{Client, ClientError, Result, unexpected};
use crate::protocol::consumer::CursorInfo;
use crate::protocol::consumer::{
    AdminAction, AdminRequest, ClaimRequest, Claimed, ConsumerRef, Options, Position, RangeRequest,
    RangeSpec, ReclaimedReply,
};
use crate::protocol::message::{Fetched, Response, encode_ack_commit};
use crate::protocol::records::Run;
use crate::protocol::{OwnedWireRecord, Request};

/// The range an ack-and-commit acked, and the offsets of the records it produced.
pub type Committed = ((u64, u64), Vec<Vec<Run>>);

impl Client {
    /// Claims up to `count` records for `group` (from `partition`, or any partition),
    /// creating the consumer with `create` if it does not exist.
    pub fn claim(
        &mut self,
        topic: &str,
        group: &str,
        partition: Option<u32>,
        count: u32,
        create: Option<Options>,
    ) -> Result<Claimed> {
        let request = Request::Claim(ClaimRequest {
            topic,
            group,
            partition,
            count,
            max_bytes: 1 << 20,
            create,
        });
        match self.call(&request)? {
            Response::Claimed(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    /// Acks the claim on `partition`; the acked range.
    pub fn ack(&mut self, topic: &str, group: &str, partition: u32) -> Result<(u64, u64)> {
        match self.call(&Request::Ack(ConsumerRef {
            topic,
            group,
            partition,
        }))? {
            Response::Acked { from, to, .. } => Ok((from, to)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets `group`'s committed offset on `partition` to `offset` (its next record),
    /// dropping its claim; the consumer is made with the default options if new.
    pub fn seek(&mut self, topic: &str, group: &str, partition: u32, offset: u64) -> Result<u64> {
        self.reset(topic, group, partition, Position::Offset(offset))
    }

    /// Resets `group` on `partition` to `to` (earliest, latest, a time, past N records,
    /// an offset) and returns the committed offset it landed on.
    pub fn reset(&mut self, topic: &str, group: &str, partition: u32, to: Position) -> Result<u64> {
        let r = ConsumerRef {
            topic,
            group,
            partition,
        };
        match self.call(&Request::Seek(r, to))? {
            Response::Sought { offset, .. } => Ok(offset),
            other => Err(unexpected(&other)),
        }
    }

    pub fn reclaim(&mut self, topic: &str, group: &str, partition: u32) -> Result<ReclaimedReply> {
        match self.call(&Request::Reclaim(ConsumerRef {
            topic,
            group,
            partition,
        }))? {
            Response::Reclaimed(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Acks the claim on `partition` and produces `records` to `to_topic`, as one.
    pub fn ack_commit(
        &mut self,
        topic: &str,
        group: &str,
        partition: u32,
        to_topic: &str,
        records: &[OwnedWireRecord],
    ) -> Result<Committed> {
        let claim = ConsumerRef {
            topic,
            group,
            partition,
        };
        let id = self.send_encoded(|out, id| encode_ack_commit(out, id, &claim, to_topic, records))?;
        match self.answer(id)? {
            Response::Committed { from, to, runs, .. } => Ok(((from, to), runs)),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists (or disables, resumes, destroys) consumers; empty names mean all.
    pub fn consumers(&mut self, action: AdminAction, topic: &str, group: &str) -> Result<Vec<CursorInfo>> {
        match self.call(&Request::ConsumerAdmin(AdminRequest { action, topic, group }))? {
            Response::Consumers(json) => serde_json::from_slice(&json)
                .map_err(|e| ClientError::Protocol(format!("the consumer list is not JSON: {e}"))),
            other => Err(unexpected(&other)),
        }
    }

    /// Records of a partition between two offsets (or times), oldest or newest first.
    pub fn range(&mut self, topic: &str, spec: RangeSpec) -> Result<Fetched> {
        let request = Request::Range(RangeRequest { topic, spec });
        match self.call(&request)? {
            Response::Fetched(f) => Ok(f),
            other => Err(unexpected(&other)),
        }
    }

    /// Records held by a partition, or by the whole topic.
    pub fn length(&mut self, topic: &str, partition: Option<u32>) -> Result<u64> {
        match self.call(&Request::Length { topic, partition })? {
            Response::Length(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }
}
