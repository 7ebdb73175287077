//! The client's two sides of one connection, plaintext or TLS. In TLS both sides share
//! one rustls session behind a lock held only to encrypt or decrypt, never across a
//! socket read or write: a writer thread and a reader thread (`Client::split`) never wait
//! on each other's I/O. Only the writing side writes to the socket, so records go out in
//! the order they were sealed.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use rustls::ClientConnection;

use crate::tls::ClientTls;
use crate::tls::duplex::Duplex;

/// The reading side.
pub enum ReadSide {
    Plain(TcpStream),
    Tls(Duplex),
}

/// The writing side; in TLS it says goodbye (close_notify) when dropped, so the server
/// sees a closing, not a cut.
pub enum WriteSide {
    Plain(TcpStream),
    Tls(Duplex),
}

/// Both sides of `socket`: with `tls`, after a handshake expecting a certificate for
/// `host`. A failed handshake is an error whose message says what to check.
pub fn open(socket: TcpStream, tls: Option<&ClientTls>, host: &str) -> io::Result<(ReadSide, WriteSide)> {
    let Some(tls) = tls else {
        return Ok((ReadSide::Plain(socket.try_clone()?), WriteSide::Plain(socket)));
    };
    let name = tls
        .server_name(host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let session = ClientConnection::new(tls.config(), name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let writer = Duplex::handshake(socket, session)?;
    Ok((ReadSide::Tls(writer.try_clone()?), WriteSide::Tls(writer)))
}

impl ReadSide {
    pub fn socket(&self) -> &TcpStream {
        match self {
            ReadSide::Plain(s) => s,
            ReadSide::Tls(t) => t.socket(),
        }
    }
}

impl WriteSide {
    pub fn socket(&self) -> &TcpStream {
        match self {
            WriteSide::Plain(s) => s,
            WriteSide::Tls(t) => t.socket(),
        }
    }
}

impl Read for ReadSide {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadSide::Plain(s) => s.read(buf),
            ReadSide::Tls(t) => t.read(buf),
        }
    }
}

impl Write for WriteSide {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteSide::Plain(s) => s.write(buf),
            WriteSide::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Plain(s) => s.flush(),
            WriteSide::Tls(t) => t.flush(),
        }
    }
}

impl Drop for WriteSide {
    fn drop(&mut self) {
        if let WriteSide::Tls(t) = self {
            t.close_notify();
        }
    }
}
