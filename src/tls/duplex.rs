//! One TLS session over a blocking socket, for threads that read and write it at once:
//! every handle (`try_clone`) shares the session behind a lock held only to encrypt or
//! decrypt, never across a socket read or write, so a reader thread and a writer thread
//! never wait on each other's I/O. At most one handle reads and at most one writes at a
//! time (a second reader would take ciphertext the first one needs).
//!
//! A write that fails (a timeout) after its bytes were sealed keeps what was not sent
//! and sends it first on the next write; the next write then reports the bytes of the
//! failed one as written. So a writer that writes the same bytes again after an error
//! (`write_all`'s callers drop the connection, a patient writer retries) never sends a
//! byte twice or leaves a record half sent.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::Connection;

/// Ciphertext read from the socket at once.
const READ_CHUNK: usize = 64 << 10;
/// Plaintext sealed at once: what one write holds in memory, at most.
const SEAL_CHUNK: usize = 1 << 20;

/// One handle on a TLS connection.
pub struct Duplex {
    socket: TcpStream,
    session: Arc<Mutex<Connection>>,
    /// Ciphertext read and not yet given to the session.
    pending: Vec<u8>,
    at: usize,
    /// Ciphertext sealed and not yet sent (`sent` of it went out).
    sealed: Vec<u8>,
    sent: usize,
    /// Plaintext bytes of a failed write that are sealed (and sent once `sealed` is).
    owed: usize,
}

impl Duplex {
    /// Shakes hands over `socket` (within its read and write timeouts) and returns the
    /// connection's first handle.
    pub fn handshake(socket: TcpStream, session: impl Into<Connection>) -> io::Result<Duplex> {
        let mut session = session.into();
        let mut io = &socket;
        while session.is_handshaking() {
            session.complete_io(&mut io)?;
        }
        // Every write is sealed and sent before the next, so the session holds one
        // write's plaintext at most: no limit needed (one socket write per write).
        session.set_buffer_limit(None);
        Ok(Duplex::over(socket, Arc::new(Mutex::new(session))))
    }

    fn over(socket: TcpStream, session: Arc<Mutex<Connection>>) -> Duplex {
        Duplex {
            socket,
            session,
            pending: Vec::new(),
            at: 0,
            sealed: Vec::new(),
            sent: 0,
            owed: 0,
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> io::Result<Duplex> {
        Ok(Duplex::over(self.socket.try_clone()?, Arc::clone(&self.session)))
    }

    /// The socket underneath (timeouts, shutdown, addresses).
    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// What the other side presented: its certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.lock()
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Says goodbye in TLS (close_notify), so the other side sees a closing, not a cut.
    pub fn close_notify(&mut self) {
        let mut session = self.lock();
        session.send_close_notify();
        let mut out = Vec::new();
        while session.wants_write() {
            if session.write_tls(&mut out).is_err() {
                return;
            }
        }
        drop(session);
        let _ = self.socket.write_all(&out);
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        lock(&self.session)
    }

    /// Sends what an earlier write sealed and could not send.
    fn send_sealed(&mut self) -> io::Result<()> {
        while self.sent < self.sealed.len() {
            match self.socket.write(&self.sealed[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.sealed.clear();
        self.sent = 0;
        Ok(())
    }
}

/// A blocking connection in plaintext or in TLS, read and written like its socket;
/// `try_clone` gives the handle a second thread uses (one reads, one writes).
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<Duplex>),
}

impl MaybeTls {
    /// The socket underneath (addresses, peeks).
    pub fn socket(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(t) => t.socket(),
        }
    }

    /// Another handle on the connection.
    pub fn try_clone(&self) -> io::Result<MaybeTls> {
        Ok(match self {
            MaybeTls::Plain(s) => MaybeTls::Plain(s.try_clone()?),
            MaybeTls::Tls(t) => MaybeTls::Tls(Box::new(t.try_clone()?)),
        })
    }

    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.socket().shutdown(how)
    }
}

impl Read for MaybeTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(s) => s.read(buf),
            MaybeTls::Tls(t) => t.read(buf),
        }
    }
}

impl Write for MaybeTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            MaybeTls::Plain(s) => s.write(buf),
            MaybeTls::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.flush(),
            MaybeTls::Tls(t) => t.flush(),
        }
    }
}

/// How many bytes of `plain` to seal as a record of their own before the rest, so that
/// neither side's copy of the rest meets a slow path of glibc's `memcpy`.
///
/// glibc before 2.39 copies a few KiB and more with `rep movsb`, which on AMD Zen cores
/// runs more than ten times slower when the destination sits 1 to 15 bytes past the
/// source modulo 4 KiB (glibc bug 30994; measured here: 500 MB in 16 KiB copies took
/// 150-180 ms at those distances and 8-14 ms at any other). Each record meets two
/// copies: the sealing side's rustls copies its plaintext into a buffer of its own, 5
/// bytes past the start of an allocation that is page-aligned at that size, and the
/// opening side copies it out of such a buffer to where the stream has come to in the
/// reader's (`tls::stream` into a frame's buffer, page-aligned too). So a record whose
/// plaintext starts `s` bytes past a page copies at distance `5 - s` on one side and `s`
/// on the other: slow for `s` from 10 bytes under a page to 15 past it. A client's write
/// buffer starts on a page, and so would every 16 KiB record after it; sealing the first
/// few bytes alone moves every later record's start to `LEAD_TO` past a page, where both
/// distances are safe. One more record of at most 42 bytes per write of 4 KiB or more;
/// measured in docs/decisions.md.
pub(super) fn lead_in(plain: &[u8]) -> usize {
    /// glibc takes `rep movsb` from a few KiB up (where depends on the CPU); a shorter
    /// write's copy is short either way, and a record of its own a larger share of it.
    const FROM: usize = 4 << 10;
    /// Where records then start, past a page: clear of both slow ranges.
    const LEAD_TO: usize = 32;
    let past_page = plain.as_ptr() as usize % 4096;
    let slow = |distance: usize| (1..=15).contains(&(distance % 4096));
    if plain.len() < FROM || !(slow(5 + 4096 - past_page) || slow(past_page)) {
        return 0;
    }
    (LEAD_TO + 4096 - past_page) % 4096
}

/// Seals `plain` through `seal` (which says how much of what it was given it sealed):
/// its lead (`lead_in`) first as a record of its own, then the rest. What is sealed is
/// written, so a failure or a short seal after the lead says how much went, not an error.
pub(super) fn seal_leading(
    plain: &[u8],
    mut seal: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<usize> {
    let lead = lead_in(plain);
    let mut sealed = 0;
    for part in [&plain[..lead], &plain[lead..]] {
        if part.is_empty() {
            continue;
        }
        match seal(part) {
            Ok(n) => {
                sealed += n;
                if n < part.len() {
                    break;
                }
            }
            Err(_) if sealed > 0 => break,
            Err(error) => return Err(error),
        }
    }
    Ok(sealed)
}

fn lock(session: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut session = lock(&self.session);
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
            self.pending.resize(READ_CHUNK, 0);
            self.at = 0;
            let n = match self.socket.read(&mut self.pending) {
                Ok(n) => n,
                Err(e) => {
                    // A timeout leaves nothing half read behind.
                    self.pending.clear();
                    return Err(e);
                }
            };
            self.pending.truncate(n);
            if n == 0 {
                let mut session = self.lock();
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

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // An error here takes nothing of `buf`: it may be written again.
        self.send_sealed()?;
        if self.owed > 0 {
            return Ok(std::mem::take(&mut self.owed));
        }
        let buf = &buf[..buf.len().min(SEAL_CHUNK)];
        let n = {
            let mut session = lock(&self.session);
            let n = seal_leading(buf, |part| session.writer().write(part))?;
            while session.wants_write() {
                session.write_tls(&mut self.sealed)?;
            }
            n
        };
        if let Err(error) = self.send_sealed() {
            // Sealed, so in the stream: the next write sends the rest and reports `n`.
            self.owed = n;
            return Err(error);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_sealed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_plaintext_whose_records_would_start_at_a_slow_distance_leads_with_what_moves_them() {
        let page = vec![7u8; 4 * 4096];
        let base = page.as_ptr() as usize;
        let start = (4096 - base % 4096) % 4096;
        let at = |offset: usize, len: usize| lead_in(&page[start + offset..start + offset + len]);
        let long = 5000;
        // On a page, or up to 4 bytes past one: the sealing side's copy is slow.
        assert_eq!(
            (0..6).map(|offset| at(offset, long)).collect::<Vec<_>>(),
            [32, 31, 30, 29, 28, 27]
        );
        // 5 to 15 past: the opening side's is.
        assert_eq!(at(15, long), 17);
        // Clear of both: sealed whole.
        assert_eq!(at(16, long), 0);
        assert_eq!(at(2048, long), 0);
        // Within 10 bytes under a page: the sealing side's again.
        assert_eq!(at(4096 - 10, long), 42);
        assert_eq!(at(4096 - 11, long), 0);
        // A short one is sealed whole.
        assert_eq!(at(0, 4095), 0);
        assert_eq!(at(0, 4096), 32);
    }

    #[test]
    fn a_reader_and_a_writer_share_one_session_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = crate::tls::test_pair(dir.path(), None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let session = rustls::ServerConnection::new(server.config()).unwrap();
            let mut reader = Duplex::handshake(socket, session).unwrap();
            let mut writer = reader.try_clone().unwrap();
            std::io::copy(&mut reader, &mut writer).unwrap();
        });
        let socket = TcpStream::connect(addr).unwrap();
        let name = client.server_name("127.0.0.1").unwrap();
        let session = rustls::ClientConnection::new(client.config(), name).unwrap();
        let mut writer = Duplex::handshake(socket, session).unwrap();
        let mut reader = writer.try_clone().unwrap();
        // More than a seal and a read chunk, so both loop; written while read.
        let sent: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writing = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            writer.close_notify();
            writer
        });
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).unwrap();
        assert!(got == expected, "the echo differs");
        let _writer = writing.join().unwrap();
        reader.socket().shutdown(std::net::Shutdown::Both).unwrap();
        echo.join().unwrap();
    }
}
