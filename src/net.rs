//! TCP as flowd dials it: the one check every outgoing connection passes.
//!
//! A connection to a port of this machine that nobody listens on can succeed, on Linux,
//! by meeting itself: when the port is in `net.ipv4.ip_local_port_range` and the kernel
//! picks that same port as the connection's own, its SYN arrives at itself (TCP's
//! simultaneous open) and both ends are one socket. A dialer retrying an address whose
//! server is restarting, a peer waiting for a killed peer, a client for an engine coming
//! back, meets itself now and then (the kernel walks the source ports one by one towards
//! a destination), and then holds the very port that server must bind: it cannot start.
//! So a connection whose two ends are one address is closed at once and reported as
//! refused, as a connection to a port nobody listens on is.

use std::io;
use std::net::SocketAddr;

/// `Ok` unless a connection's two ends, `local` and `peer`, are one address (it met
/// itself); then the error the caller returns after closing it.
pub fn not_itself(local: SocketAddr, peer: SocketAddr) -> io::Result<()> {
    if local != peer {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!(
            "the connection to {peer} met itself (nobody listens there, and the kernel picked that port for this end): closed, as refused; try again once the server listens"
        ),
    ))
}

/// [`not_itself`] for a connected blocking socket.
pub fn check(socket: &std::net::TcpStream) -> io::Result<()> {
    not_itself(socket.local_addr()?, socket.peer_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binds a port in the kernel's range, frees it, and dials it from that very port
    /// (as the kernel does by chance): the connection meets itself, and is refused.
    #[test]
    fn a_connection_that_met_itself_is_refused() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        let stream: std::net::TcpStream = socket.into();
        let error = check(&stream).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert!(error.to_string().contains("met itself"), "{error}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        check(&other).unwrap();
    }
}
