//! Jobs' answers for callers on other peers: a `reply` stage (or a stage failing a job)
//! here answers a job whose caller's connection is on another peer by an ANSWER frame
//! to that peer (`reply::deliver`). One thread and one data connection per peer send
//! them in the order they come, as many as are queued in one write.
//!
//! An ANSWER is not answered: the caller's peer hands it to the caller's shard if the
//! caller is of its run, and a caller whose answer never comes times out. An answer that
//! cannot be written (the peer is down) is counted (`flowd_job_answers_undelivered_total`)
//! and logged, never dropped in silence. A connection is checked before each write and
//! left before the peer's idle timeout closes it, so that a write into a connection the
//! peer already closed, which TCP would take and lose, does not happen.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::stream::PeerStream;
use crate::cluster::transport::{Dialer, Purpose};
use crate::metrics::Metrics;

/// Answers queued for one peer: a reply stage waits for room beyond this.
const ANSWER_QUEUE: usize = 4096;
/// Bytes of queued answers written at once.
const WRITE_BYTES: usize = 1 << 20;
/// A connection idle this long is left and a new one made for the next answer: well
/// under the peer's own idle timeout (60 s), so the peer never closes it first.
const IDLE_MAX: Duration = Duration::from_secs(20);

/// The answer queue of each peer this one answers.
pub struct Answerers {
    dialer: Dialer,
    queues: Mutex<HashMap<SocketAddr, flume::Sender<Vec<u8>>>>,
}

impl Answerers {
    pub fn new(dialer: Dialer) -> Answerers {
        Answerers {
            dialer,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// The queue of whole ANSWER frames for the peer `to`, its thread started on first use
    /// (with the counters from `metrics`, asked for then only).
    pub fn to(
        &self,
        to: SocketAddr,
        metrics: impl FnOnce() -> Option<Arc<Metrics>>,
    ) -> flume::Sender<Vec<u8>> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(&to)
            && !queue.is_disconnected()
        {
            return queue.clone();
        }
        let (tx, rx) = flume::bounded(ANSWER_QUEUE);
        let dialer = self.dialer.clone();
        let metrics = metrics();
        let spawned = std::thread::Builder::new()
            .name("flowd-peer-answer".into())
            .spawn(move || run(to, &dialer, &rx, metrics.as_deref()));
        match spawned {
            Ok(_) => {
                queues.insert(to, tx.clone());
            }
            Err(error) => tracing::error!("cannot start the thread answering jobs of the peer {to}: {error}"),
        }
        tx
    }
}

/// Writes the answers queued for `to` until the engine drops the queue.
fn run(to: SocketAddr, dialer: &Dialer, answers: &flume::Receiver<Vec<u8>>, metrics: Option<&Metrics>) {
    let mut stream: Option<(PeerStream, Instant)> = None;
    let mut out = Vec::new();
    while let Ok(first) = answers.recv() {
        out.clear();
        out.extend_from_slice(&first);
        let mut count = 1u64;
        while out.len() < WRITE_BYTES
            && let Ok(more) = answers.try_recv()
        {
            out.extend_from_slice(&more);
            count += 1;
        }
        // A connection found closed, or that fails the write, is made again once.
        let mut failure = String::new();
        let mut sent = false;
        for _ in 0..2 {
            if stream
                .as_ref()
                .is_some_and(|(s, used)| used.elapsed() >= IDLE_MAX || closed(s.socket()))
            {
                stream = None;
            }
            if stream.is_none() {
                match dialer.connect(to, Purpose::Data) {
                    Ok(s) => stream = Some((s, Instant::now())),
                    Err(error) => {
                        failure = format!("cannot connect: {error}");
                        break;
                    }
                }
            }
            let (s, used) = stream.as_mut().expect("connected above");
            match s.write_all(&out) {
                Ok(()) => {
                    *used = Instant::now();
                    sent = true;
                    break;
                }
                Err(error) => {
                    failure = format!("the write failed: {error}");
                    stream = None;
                }
            }
        }
        if !sent {
            if let Some(metrics) = metrics {
                metrics.job_answers_undelivered.add(count);
            }
            tracing::warn!(
                "{count} job answer(s) for callers on the peer {to} could not be sent ({failure}); those callers time out"
            );
        }
    }
}

/// Whether the peer closed `stream`: it never sends anything on an answer connection
/// (in TLS neither: a peer's server sends no session tickets), so anything readable is
/// its end.
fn closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(_) => true,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    };
    closed || stream.set_nonblocking(false).is_err()
}
