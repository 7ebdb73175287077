//! The front doors: the binary protocol over TCP and JSON over HTTP, served on every
//! shard. The kernel spreads connections over the shards (SO_REUSEPORT); a connection
//! stays on the shard that accepted it, and its records travel to the shards owning
//! their partitions over the same channels the dataflow uses.
//!
//! Codemap: `listeners` (sockets bound before the shards start) → `connection` (one TCP
//! client: frames in, responses out, limits) and `http` (hyper) → `api` (what both
//! offer) → the runtime. `metrics` and `page` render what `/metrics` and `/` show.

pub mod api;
pub mod connection;
pub mod consumer_api;
pub mod http;
pub mod http_consumers;
mod hyper_io;
pub mod listeners;
pub mod metrics;
pub mod page;
pub mod peer_api;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::runtime::shard::Shard;
pub use listeners::{Bound, ShardSockets, bind};
use metrics::Metrics;

/// What every connection on one shard shares.
pub struct Front {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub io_timeout: Duration,
    /// `tcp ADDR` / `http ADDR` lines, for the status page.
    pub listeners: Vec<String>,
    pub started: Instant,
    /// The last `(time, records in)` sample, for the ingest rate.
    last_sample: RefCell<(Instant, u64)>,
}

impl Front {
    /// Records taken per second since the previous call (or since start).
    pub fn rate(&self, records_in: u64) -> f64 {
        let now = Instant::now();
        let mut last = self.last_sample.borrow_mut();
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let rate = if elapsed > 0.0 {
            records_in.saturating_sub(last.1) as f64 / elapsed
        } else {
            0.0
        };
        if elapsed >= 1.0 {
            *last = (now, records_in);
        }
        rate
    }
}

/// The next connection `listener` takes. Accept errors (out of file descriptors, most
/// likely) are logged and retried after a pause instead of spinning.
pub(crate) async fn accept(listener: &glommio::net::TcpListener, what: &str) -> glommio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok(stream) => return stream,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a {what} connection");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection counted among the open ones until dropped.
pub(crate) struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a new connection in, or, over `max_connections`, counts it refused and logs it.
pub(crate) fn admit(metrics: &Arc<Metrics>, front: &Front, what: &str) -> Option<OpenConnection> {
    let open = metrics.connections_open.fetch_add(1, Ordering::AcqRel) + 1;
    let admitted = OpenConnection(Arc::clone(metrics));
    if open as usize > front.max_connections {
        drop(admitted);
        metrics.connections_refused.add(1);
        metrics.error(crate::protocol::ErrorCode::Overloaded);
        tracing::warn!(
            limit = front.max_connections,
            "{what} connection refused: too many connections"
        );
        return None;
    }
    metrics.connections_total.add(1);
    Some(admitted)
}

/// Starts this shard's accept loops, if the dataflow has listeners.
pub fn serve(shard: &Rc<Shard>, sockets: ShardSockets) {
    let Some(ingest) = shard.shared.spec.ingest.clone() else {
        return;
    };
    let front = Rc::new(Front {
        max_frame_bytes: ingest.max_frame_bytes as usize,
        max_connections: ingest.max_connections,
        io_timeout: ingest.io_timeout,
        listeners: sockets.names.clone(),
        started: Instant::now(),
        last_sample: RefCell::new((Instant::now(), 0)),
    });
    if let Some(fd) = sockets.tcp {
        glommio::spawn_local(connection::accept_loop(Rc::clone(shard), Rc::clone(&front), fd)).detach();
    }
    if let Some(fd) = sockets.http {
        glommio::spawn_local(http::accept_loop(Rc::clone(shard), front, fd)).detach();
    }
}
