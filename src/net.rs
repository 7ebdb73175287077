//! TCP as flowd dials and binds it: the one check every outgoing connection passes, and
//! the short wait of a bind whose port a flowd stopped a moment ago still holds.
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
use std::time::{Duration, Instant};

/// How long a bind waits for a port in use. A flowd killed a moment ago holds its doors'
/// ports a little past its exit: the kernel closes the sockets its io_uring still
/// referenced in a worker of its own, after the process is gone (4 to 10 ms measured
/// here, longer on a loaded machine), and an engine restarted at once (a supervisor, a
/// test) would fail to start.
pub const PORT_WAIT: Duration = Duration::from_secs(2);

/// Runs `bind` (of `addr`) until it stops failing with "address in use" or
/// [`PORT_WAIT`] has passed, and returns its last result. A port the kernel picks
/// (`:0`) is bound once.
pub fn bind_waiting<T>(addr: SocketAddr, mut bind: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let deadline = Instant::now() + PORT_WAIT;
    let mut said = false;
    loop {
        match bind() {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && addr.port() != 0 && Instant::now() < deadline =>
            {
                if !said {
                    tracing::info!(
                        "{addr} is in use; waiting up to {} s for it (a flowd stopped a moment ago may still hold it)",
                        PORT_WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

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

    /// A port held by a listener is bound once it is let go within the wait; one held
    /// longer fails after the wait, with the kernel's "address in use".
    #[test]
    fn a_bind_waits_for_a_port_let_go_within_the_wait() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let freed = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        let started = Instant::now();
        let bound = bind_waiting(addr, || std::net::TcpListener::bind(addr)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
        freed.join().unwrap();

        let started = Instant::now();
        let error = bind_waiting(addr, || std::net::TcpListener::bind(addr)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(started.elapsed() >= PORT_WAIT);
        drop(bound);
    }
}
