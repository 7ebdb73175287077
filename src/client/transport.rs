//! The client's two sides of one connection, plaintext or TLS. In TLS both sides share
//! one rustls session behind a lock held only to encrypt or decrypt, never across a
//! socket read or write: a writer thread and a reader thread (`Client::split`) never wait
//! on each other's I/O. Only the writing side writes to the socket, so records go out in
//! the order they were sealed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rustls::ClientConnection;

use crate::tls::ClientTls;

/// The reading side.
pub enum ReadSide {
    Plain(TcpStream),
    Tls(TlsReader),
}

/// The writing side.
pub enum WriteSide {
    Plain(TcpStream),
    Tls(TlsWriter),
}

pub struct TlsReader {
    socket: TcpStream,
    session: Arc<Mutex<ClientConnection>>,
    /// Ciphertext read and not yet given to the session.
    pending: Vec<u8>,
    at: usize,
}

pub struct TlsWriter {
    socket: TcpStream,
    session: Arc<Mutex<ClientConnection>>,
    sealed: Vec<u8>,
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
    let mut session = ClientConnection::new(tls.config(), name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut handshaking = socket.try_clone()?;
    while session.is_handshaking() {
        session.complete_io(&mut handshaking)?;
    }
    // Every write is sealed and sent whole before the next (`TlsWriter::write`), so the
    // session buffers one write at most: no limit needed, and one socket write per
    // buffered write instead of one per 64 KiB.
    session.set_buffer_limit(None);
    let session = Arc::new(Mutex::new(session));
    Ok((
        ReadSide::Tls(TlsReader {
            socket: socket.try_clone()?,
            session: Arc::clone(&session),
            pending: Vec::new(),
            at: 0,
        }),
        WriteSide::Tls(TlsWriter {
            socket,
            session,
            sealed: Vec::new(),
        }),
    ))
}

impl ReadSide {
    pub fn socket(&self) -> &TcpStream {
        match self {
            ReadSide::Plain(s) => s,
            ReadSide::Tls(t) => &t.socket,
        }
    }
}

impl WriteSide {
    pub fn socket(&self) -> &TcpStream {
        match self {
            WriteSide::Plain(s) => s,
            WriteSide::Tls(t) => &t.socket,
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

fn broken(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut session = self.session.lock().expect("TLS session lock");
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.at < self.pending.len() {
                    let mut rest = &self.pending[self.at..];
                    let before = rest.len();
                    session.read_tls(&mut rest)?;
                    self.at += before - rest.len();
                    session.process_new_packets().map_err(broken)?;
                    continue;
                }
            }
            // Nothing decrypted and nothing pending: more ciphertext, outside the lock.
            self.pending.resize(64 << 10, 0);
            self.at = 0;
            let n = self.socket.read(&mut self.pending)?;
            self.pending.truncate(n);
            if n == 0 {
                let mut session = self.session.lock().expect("TLS session lock");
                session.read_tls(&mut io::empty())?;
                session.process_new_packets().map_err(broken)?;
                return match session.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    }
                    Err(e) => Err(e),
                };
            }
        }
    }
}

impl TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = {
            let mut session = self.session.lock().expect("TLS session lock");
            let n = session.writer().write(buf)?;
            self.sealed.clear();
            while session.wants_write() {
                session.write_tls(&mut self.sealed)?;
            }
            n
        };
        self.socket.write_all(&self.sealed)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

impl Drop for TlsWriter {
    /// Says goodbye in TLS (close_notify), so the server sees a closing, not a cut.
    fn drop(&mut self) {
        let Ok(mut session) = self.session.lock() else {
            return;
        };
        session.send_close_notify();
        self.sealed.clear();
        while session.wants_write() {
            if session.write_tls(&mut self.sealed).is_err() {
                return;
            }
        }
        drop(session);
        let _ = self.socket.write_all(&self.sealed);
    }
}
