//! Who gets in, and how much each may hold: connections in all (`max_connections`) and
//! per client address (`max_connections_per_address`), counted across every shard; and
//! a shard's budget of bytes for large unfinished frames and HTTP bodies and the
//! requests they become (`max_buffered_bytes`, like Kafka's `queued.max.request.bytes`):
//! a connection announcing a large frame waits for its bytes before it reads them, so
//! slow and hostile clients together never hold more than the budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use glommio::sync::Semaphore;

use crate::metrics::Metrics;

/// Bytes of a frame or body a connection reads without charging the shard's budget:
/// small requests, the common case, never wait for large ones.
pub const FREE_BYTES: u64 = 64 << 10;

/// Connections open, per client address, for every shard of the process.
#[derive(Debug)]
pub struct Admission {
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_connections: usize,
    max_per_address: usize,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooMany { limit: usize },
    TooManyFromAddress { limit: usize },
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::TooMany { limit } => format!(
                "the server holds its limit of {limit} connections; retry later or raise ingest.max_connections"
            ),
            Refusal::TooManyFromAddress { limit } => format!(
                "this address holds its limit of {limit} connections; close some, or raise ingest.max_connections_per_address"
            ),
        }
    }
}

impl Admission {
    pub fn new(max_connections: usize, max_per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            per_address: Mutex::new(HashMap::new()),
            max_connections,
            max_per_address,
        })
    }

    /// Counts a connection from `address` in, or says why it may not come in.
    pub fn admit(
        self: &Arc<Admission>,
        metrics: &Arc<Metrics>,
        address: Option<IpAddr>,
    ) -> Result<Admitted, Refusal> {
        let open = metrics.connections_open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut admitted = Admitted {
            admission: Arc::clone(self),
            metrics: Arc::clone(metrics),
            address: None,
        };
        if open as usize > self.max_connections {
            return Err(Refusal::TooMany {
                limit: self.max_connections,
            });
        }
        if let Some(address) = address {
            let mut per_address = self.per_address.lock().expect("admission lock");
            let count = per_address.entry(address).or_default();
            if *count >= self.max_per_address {
                return Err(Refusal::TooManyFromAddress {
                    limit: self.max_per_address,
                });
            }
            *count += 1;
            admitted.address = Some(address);
        }
        Ok(admitted)
    }
}

/// A connection counted in until dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    address: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.connections_open.fetch_sub(1, Ordering::AcqRel);
        if let Some(address) = self.address {
            let mut per_address = self.admission.per_address.lock().expect("admission lock");
            if let Some(count) = per_address.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    per_address.remove(&address);
                }
            }
        }
    }
}

/// Bytes taken from a shard's budget, given back when dropped.
pub struct Charge {
    budget: Rc<Semaphore>,
    bytes: u64,
}

impl Charge {
    /// Takes `bytes` from `budget`, waiting until they are free (the caller bounds the
    /// wait); `None` once the budget is closed (the engine is stopping).
    pub async fn take(budget: &Rc<Semaphore>, bytes: u64) -> Option<Charge> {
        budget.acquire(bytes).await.ok()?;
        Some(Charge {
            budget: Rc::clone(budget),
            bytes,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.signal(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_in_all_and_per_address_and_counted_out_when_dropped() {
        let metrics = Arc::new(Metrics::new(1));
        let admission = Admission::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(&metrics, Some(a)).unwrap();
        let _second = admission.admit(&metrics, Some(a)).unwrap();
        assert_eq!(
            admission.admit(&metrics, Some(a)).err(),
            Some(Refusal::TooManyFromAddress { limit: 2 })
        );
        let _third = admission.admit(&metrics, Some(b)).unwrap();
        assert_eq!(
            admission.admit(&metrics, Some(b)).err(),
            Some(Refusal::TooMany { limit: 3 })
        );
        drop(first);
        let _again = admission.admit(&metrics, Some(a)).unwrap();
        assert_eq!(metrics.connections_open.load(Ordering::Acquire), 3);
        assert!(admission.per_address.lock().unwrap().values().all(|n| *n <= 2));
    }
}
