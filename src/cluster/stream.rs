//! A connection between peers: plaintext, or mutual TLS once the cluster has a CA
//! (`tls::peer`). Read and written like the socket it wraps; `try_clone` gives the
//! handle a second thread writes with while the first reads (at most one of each).

pub use crate::tls::duplex::MaybeTls as PeerStream;
