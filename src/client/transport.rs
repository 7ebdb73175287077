//! The client's two sides of one connection, plaintext or TLS. In TLS both sides share
//! one rustls session behind a lock held only to encrypt or decrypt, never across a
//! socket read or write: a writer thread and a reader thread (`Client::split`) never wait
//! on each other's I/O. Only the writing side writes to the socket, so records go out in
//! the order they were sealed.

use std::io::{self, Write};
use std::net::TcpStream;

use rustls::ClientConnection;

use crate::tls::ClientTls;
use crate::tls::duplex::{Duplex, MaybeTls};

/// The reading side.
pub type ReadSide = MaybeTls;

/// The writing side; in TLS it says goodbye (close_notify) when dropped, so the server
/// sees a closing, not a cut.
pub struct WriteSide(MaybeTls);

/// Both sides of `socket`: with `tls`, after a handshake expecting a certificate for
/// `host`. A failed handshake is an error whose message says what to check.
pub fn open(socket: TcpStream, tls: Option<&ClientTls>, host: &str) -> io::Result<(ReadSide, WriteSide)> {
    let Some(tls) = tls else {
        return Ok((
            MaybeTls::Plain(socket.try_clone()?),
            WriteSide(MaybeTls::Plain(socket)),
        ));
    };
    let name = tls
        .server_name(host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let session = ClientConnection::new(tls.config(), name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let writer = MaybeTls::Tls(Box::new(Duplex::handshake(socket, session)?));
    Ok((writer.try_clone()?, WriteSide(writer)))
}

impl WriteSide {
    pub fn socket(&self) -> &TcpStream {
        self.0.socket()
    }
}

impl Write for WriteSide {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for WriteSide {
    fn drop(&mut self) {
        if let MaybeTls::Tls(t) = &mut self.0 {
            t.close_notify();
        }
    }
}
