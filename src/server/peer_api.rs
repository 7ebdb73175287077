//! Serves the data connections of other peers: batches they route to partitions this
//! peer owns (PRODUCE, acked once durable), and fetches they forward (FETCH, answered
//! with the whole frame a client would get). Engine headers are allowed here: only a
//! peer of the same cluster gets this far (the HELLO named it).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use crate::cluster::frame::{self, Body, Fields, Kind};
use crate::cluster::transport::DataPlane;
use crate::protocol::wire::Cursor;
use crate::protocol::{ErrorCode, FetchFrom, ProtocolError};
use crate::runtime::mesh::{Ack, Batch, ClientAck, Payload};
use crate::runtime::placement::owner;
use crate::runtime::service::{FetchOrder, ShardRequest};
use crate::runtime::shard::Shared;

/// Frames queued for one peer connection's writer.
const OUT_FRAMES: usize = 256;

pub struct PeerService {
    pub shared: Arc<Shared>,
}

impl DataPlane for PeerService {
    fn serve(&self, from: SocketAddr, stream: TcpStream) {
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let (out_tx, out_rx) = flume::bounded::<Vec<u8>>(OUT_FRAMES);
        let wrote = std::thread::Builder::new()
            .name("flowd-peer-out".into())
            .spawn(move || {
                for bytes in out_rx.iter() {
                    if writer.write_all(&bytes).is_err() {
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            });
        // Acks come back from the shards in any order; each names its request.
        let (ack_tx, ack_rx) = flume::bounded::<(u64, ClientAck)>(crate::runtime::peers::LINK_IN_FLIGHT * 4);
        let acks_out = out_tx.clone();
        let acked = std::thread::Builder::new()
            .name("flowd-peer-ack".into())
            .spawn(move || {
                for (request, ack) in ack_rx.iter() {
                    let out = match ack {
                        Ok((_, first, next)) => {
                            let mut out = Vec::new();
                            frame::encode(
                                &mut out,
                                Kind::Acked,
                                request,
                                &Body::default().u64(first).u64(next).0,
                            );
                            out
                        }
                        Err(error) => error_frame(request, &error),
                    };
                    if acks_out.send(out).is_err() {
                        return;
                    }
                }
            });
        if wrote.is_err() || acked.is_err() {
            return;
        }
        let mut reader = stream;
        let _ = reader.set_read_timeout(None);
        loop {
            let frame = match frame::read(&mut reader) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => {
                    tracing::debug!("peer {from}: {error}");
                    return;
                }
            };
            let request = frame.request;
            let answer = match frame.kind {
                Kind::Produce => self.produce(&frame.body, request, &ack_tx).err(),
                Kind::Fetch => match self.fetch(&frame.body, request) {
                    Ok(bytes) => {
                        let mut out = Vec::new();
                        frame::encode(&mut out, Kind::Frame, request, &bytes);
                        if out_tx.send(out).is_err() {
                            return;
                        }
                        None
                    }
                    Err(error) => Some(error),
                },
                other => Some(ProtocolError::new(
                    ErrorCode::UnknownKind,
                    format!("a {other:?} frame on a data connection"),
                )),
            };
            if let Some(error) = answer
                && out_tx.send(error_frame(request, &error)).is_err()
            {
                return;
            }
        }
    }
}

impl PeerService {
    fn topic(&self, name: &str, partition: u32) -> Result<usize, ProtocolError> {
        let spec = &self.shared.spec;
        let topic = spec
            .topic_index(name)
            .ok_or_else(|| crate::server::api::unknown_topic(name))?;
        crate::server::api::check_partition(name, spec.topics[topic].partitions, partition)?;
        if let Some(peers) = &self.shared.peers
            && let Some(owner) = peers.owner(topic, partition)
        {
            // Views differ for a moment after a change: the sender retries.
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "partition {partition} of \"{name}\" belongs to peer {owner} in this peer's view; retry"
                ),
            ));
        }
        Ok(topic)
    }

    fn produce(
        &self,
        body: &[u8],
        request: u64,
        acks: &flume::Sender<(u64, ClientAck)>,
    ) -> Result<(), ProtocolError> {
        let mut fields = Fields(body);
        let name = fields.str8().map_err(malformed)?;
        let partition = fields.u32().map_err(malformed)?;
        let count = fields.u32().map_err(malformed)? as usize;
        let stamp_ms = fields.i64().map_err(malformed)?;
        let bytes = fields.rest();
        let topic = self.topic(name, partition)?;
        // Validate every record now: the shard decodes them again trusting this.
        let mut cursor = Cursor::new(bytes);
        for _ in 0..count {
            cursor.record()?;
        }
        if cursor.remaining() != 0 {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                "bytes after the batch's last record",
            ));
        }
        let stamp_ms = if stamp_ms == 0 {
            crate::storage::layout::now_ms()
        } else {
            stamp_ms
        };
        let batch = Batch {
            partition,
            records: Payload::Wire {
                bytes: bytes.to_vec(),
                count,
                stamp_ms,
            },
            ack: Ack::Peer(acks.clone(), request),
        };
        let to = owner(partition, self.shared.shards);
        self.shared.mesh.inboxes[topic][to]
            .send(batch)
            .map_err(|_| crate::server::api::stopping())
    }

    fn fetch(&self, body: &[u8], request: u64) -> Result<Vec<u8>, ProtocolError> {
        let mut fields = Fields(body);
        let name = fields.str8().map_err(malformed)?;
        let partition = fields.u32().map_err(malformed)?;
        let from = fields.u8().map_err(malformed)?;
        let offset = fields.u64().map_err(malformed)?;
        let from = match from {
            0 => FetchFrom::Offset(offset),
            1 => FetchFrom::Earliest,
            2 => FetchFrom::Latest,
            3 => FetchFrom::Time(offset as i64),
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::Malformed,
                    format!("fetch start {other}"),
                ));
            }
        };
        let order = FetchOrder {
            topic: self.topic(name, partition)?,
            partition,
            from,
            max_records: fields.u32().map_err(malformed)?,
            max_bytes: fields.u32().map_err(malformed)?,
            wait_ms: fields.u32().map_err(malformed)?,
            request_id: request,
        };
        let (tx, rx) = flume::bounded(1);
        let to = owner(partition, self.shared.shards);
        self.shared.services[to]
            .send(ShardRequest::Fetch { order, reply: tx })
            .map_err(|_| crate::server::api::stopping())?;
        rx.recv().map_err(|_| crate::server::api::stopping())
    }
}

fn error_frame(request: u64, error: &ProtocolError) -> Vec<u8> {
    frame::error(request, error.code as u16, &error.message)
}

/// A peer frame whose fields do not read.
fn malformed(error: crate::cluster::ClusterError) -> ProtocolError {
    ProtocolError::new(ErrorCode::Malformed, error.to_string())
}
