//! A connection between peers: plaintext, or mutual TLS once the cluster has a CA
//! (`tls::peer`). Read and written like the socket it wraps; `try_clone` gives the
//! handle a second thread writes with while the first reads (at most one of each).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::tls::duplex::Duplex;

pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<Duplex>),
}

impl PeerStream {
    /// The socket underneath.
    pub fn socket(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Tls(t) => t.socket(),
        }
    }

    /// Another handle on the connection (for the thread that writes while one reads).
    pub fn try_clone(&self) -> io::Result<PeerStream> {
        Ok(match self {
            PeerStream::Plain(s) => PeerStream::Plain(s.try_clone()?),
            PeerStream::Tls(t) => PeerStream::Tls(Box::new(t.try_clone()?)),
        })
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket().shutdown(how)
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.read(buf),
            PeerStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.write(buf),
            PeerStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerStream::Plain(s) => s.flush(),
            PeerStream::Tls(t) => t.flush(),
        }
    }
}
