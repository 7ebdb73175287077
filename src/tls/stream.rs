//! A server's TLS session over an async socket, with rustls's unbuffered API: ciphertext
//! is read from the socket straight into this stream's buffer and opened there, and
//! plaintext is sealed straight into the buffer the socket is written from. rustls's
//! buffered streams copy each byte read twice more (4 KiB at a time into a deframing
//! buffer grown and shrunk per record, then out of it) and each byte written once more;
//! at hundreds of MB/s through one door that is most of what TLS costs beside the cipher.
//!
//! It is read and written like its socket (`AsyncRead`, `AsyncWrite`), by one task or by
//! a reading and a writing half; the session is rustls's own state machine, driven here.
//! Handshake messages it asks for after the handshake (a key update's answer) go out
//! before the next record written; a record that arrives while a write is sealed is
//! opened and kept for the next read; a close_notify ends the reading side. A read never
//! writes and a write never reads the socket, so each half waits on its own side only.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

/// Ciphertext read from the socket at once (two full records).
const READ_CHUNK: usize = 32 << 10;
/// The most ciphertext held unopened: a handshake message may span records up to the
/// 64 KiB rustls takes (a client's long certificate chain).
const INCOMING_MAX: usize = 80 << 10;
/// The largest TLS 1.3 record on the wire: header, 16 KiB, the content type, the tag and
/// the padding the protocol allows.
const MAX_RECORD: usize = 5 + (16 << 10) + 256;
/// Plaintext sealed at once by one write: what the outgoing buffer holds, at most.
const SEAL_CHUNK: usize = 64 << 10;

/// One server-side TLS session over `S`.
pub struct TlsStream<S> {
    socket: S,
    session: UnbufferedServerConnection,
    /// Ciphertext read and not yet opened: `incoming[start..filled]`.
    incoming: Vec<u8>,
    start: usize,
    filled: usize,
    /// Plaintext opened and not yet read: `opened[given..]`.
    opened: Vec<u8>,
    given: usize,
    /// Ciphertext sealed and not yet sent: `outgoing[sent..]`.
    outgoing: Vec<u8>,
    sent: usize,
    /// The client said close_notify, or its socket ended: reads return 0.
    read_closed: bool,
    /// This side queued its close_notify.
    said_goodbye: bool,
}

/// What one step of the session asked for.
enum Step {
    /// Plaintext was opened (into the caller's buffer or `opened`), or a handshake
    /// message sealed into `outgoing`: step again.
    Again,
    /// Nothing more to do without more ciphertext.
    NeedsBytes,
    /// The session is ready for application data and has nothing to read.
    Writable,
    /// The client closed its side.
    Closed,
}

fn broken(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Shakes hands over `socket` as the server `config` describes. The ClientHello is
    /// read from the socket (a peek before leaves it there). Bound the wait from outside.
    pub async fn accept(socket: S, config: std::sync::Arc<rustls::ServerConfig>) -> io::Result<TlsStream<S>> {
        let session = UnbufferedServerConnection::new(config).map_err(broken)?;
        let mut stream = TlsStream {
            socket,
            session,
            incoming: Vec::new(),
            start: 0,
            filled: 0,
            opened: Vec::new(),
            given: 0,
            outgoing: Vec::new(),
            sent: 0,
            read_closed: false,
            said_goodbye: false,
        };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The certificates the client presented, leaf first.
    pub fn peer_certificates(&self) -> &[rustls_pki_types::CertificateDer<'static>] {
        self.session.peer_certificates().unwrap_or_default()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.step(None)? {
                Step::Again => {}
                Step::Writable => {
                    // Done; what the server still has to send (its tickets) goes now.
                    return self.poll_send(cx);
                }
                Step::NeedsBytes => {
                    if self.outgoing.len() > self.sent {
                        std::task::ready!(self.poll_send(cx))?;
                        continue;
                    }
                    if std::task::ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            }
        }
    }

    /// One step of rustls's state machine over the ciphertext read so far. Plaintext
    /// goes into `out` (counted in `*out_len`) while it fits, else into `opened`;
    /// handshake messages are sealed into `outgoing`.
    fn step(&mut self, mut out: Option<(&mut [u8], &mut usize)>) -> io::Result<Step> {
        let UnbufferedStatus { discard, state } = self
            .session
            .process_tls_records(&mut self.incoming[self.start..self.filled]);
        let mut extra = 0;
        let step = match state.map_err(broken)? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record.map_err(broken)?;
                    extra += record.discard;
                    let mut payload = record.payload;
                    if let Some((buf, len)) = out.as_mut()
                        && self.given == self.opened.len()
                    {
                        let n = payload.len().min(buf.len() - **len);
                        buf[**len..**len + n].copy_from_slice(&payload[..n]);
                        **len += n;
                        payload = &payload[n..];
                    }
                    if !payload.is_empty() {
                        if self.given == self.opened.len() {
                            self.opened.clear();
                            self.given = 0;
                        }
                        self.opened.extend_from_slice(payload);
                    }
                }
                Step::Again
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                append(&mut self.outgoing, 4 << 10, |room| {
                    encode.encode(room).map_err(|error| match error {
                        EncodeError::InsufficientSize(need) => Room::Needs(need.required_size),
                        error => Room::Broken(broken(error)),
                    })
                })?;
                Step::Again
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // Sealed into `outgoing`, which is sent before any later byte.
                transmit.done();
                Step::Again
            }
            ConnectionState::BlockedHandshake => Step::NeedsBytes,
            ConnectionState::WriteTraffic(_) => {
                if self.session.is_handshaking() {
                    Step::NeedsBytes
                } else {
                    Step::Writable
                }
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => Step::Closed,
            ConnectionState::ReadEarlyData(_) => {
                return Err(broken("early data, which this server never offers"));
            }
            _ => return Err(broken("a TLS state this server does not know")),
        };
        self.start += discard + extra;
        if matches!(step, Step::Closed) {
            self.read_closed = true;
        }
        if self.start == self.filled {
            (self.start, self.filled) = (0, 0);
        }
        Ok(step)
    }

    /// Reads more ciphertext from the socket; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() - self.filled < MAX_RECORD && self.start > 0 {
            self.incoming.copy_within(self.start..self.filled, 0);
            (self.start, self.filled) = (0, self.filled - self.start);
        }
        if self.incoming.len() < READ_CHUNK {
            self.incoming.resize(READ_CHUNK, 0);
        }
        if self.filled == self.incoming.len() {
            // Nothing in it could be opened yet: a handshake message over records.
            if self.incoming.len() >= INCOMING_MAX {
                return Poll::Ready(Err(broken(format!(
                    "{INCOMING_MAX} bytes of TLS records without one that could be opened"
                ))));
            }
            self.incoming
                .resize((self.incoming.len() * 2).min(INCOMING_MAX), 0);
        }
        let n =
            std::task::ready!(Pin::new(&mut self.socket).poll_read(cx, &mut self.incoming[self.filled..]))?;
        self.filled += n;
        Poll::Ready(Ok(n))
    }

    /// Sends what is sealed; ready once all of it went.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            match std::task::ready!(Pin::new(&mut self.socket).poll_write(cx, &self.outgoing[self.sent..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.sent += n,
            }
        }
        self.outgoing.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// The session ready to seal application data, handshake messages it asked for
    /// sealed first; records that arrived meanwhile are opened into `opened`.
    fn writable(&mut self) -> io::Result<bool> {
        for _ in 0..64 {
            match self.step(None)? {
                Step::Again => {}
                // A client that closed its side may still be written to.
                Step::Writable | Step::NeedsBytes | Step::Closed => {
                    return Ok(!self.session.is_handshaking());
                }
            }
        }
        Err(broken("the TLS session did not settle"))
    }

    /// Seals `plain` (at most `SEAL_CHUNK` of it) into `outgoing`.
    fn seal(&mut self, plain: &[u8]) -> io::Result<usize> {
        let plain = &plain[..plain.len().min(SEAL_CHUNK)];
        // `writable` left nothing to open or send: this is WriteTraffic, discarding none.
        let UnbufferedStatus { discard, state } = self
            .session
            .process_tls_records(&mut self.incoming[self.start..self.filled]);
        debug_assert_eq!(discard, 0, "writable() opened everything");
        let ConnectionState::WriteTraffic(mut traffic) = state.map_err(broken)? else {
            return Err(broken("the TLS session is not ready to write"));
        };
        // The first bytes alone when the records would start where copies are slow
        // (`duplex::lead_in`).
        super::duplex::seal_leading(plain, |part| {
            // Each record of 16 KiB grows by its header, content type and tag (22 bytes).
            let room = part.len() + (part.len() / (16 << 10) + 1) * 64;
            append(&mut self.outgoing, room, |room| {
                traffic.encrypt(part, room).map_err(encrypt_error)
            })
            .map(|()| part.len())
        })
    }
}

/// Why `append`'s writer could not write into the room it was given.
enum Room {
    /// It needs this many bytes.
    Needs(usize),
    Broken(io::Error),
}

fn encrypt_error(error: EncryptError) -> Room {
    match error {
        EncryptError::InsufficientSize(need) => Room::Needs(need.required_size),
        error => Room::Broken(broken(error)),
    }
}

/// Appends to `outgoing` what `write` writes into the room it is handed: `room` bytes
/// first, then as many as it says it needs. On an error nothing is appended; a writer
/// that asks for no more than it was handed is an error too (the loop only grows).
fn append(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Room>,
) -> io::Result<()> {
    let at = outgoing.len();
    loop {
        outgoing.resize(at + room, 0);
        match write(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return Ok(());
            }
            Err(Room::Needs(needed)) if needed > room => room = needed,
            Err(Room::Needs(needed)) => {
                outgoing.truncate(at);
                return Err(broken(format!(
                    "rustls asked for {needed} bytes of room with {room} given"
                )));
            }
            Err(Room::Broken(error)) => {
                outgoing.truncate(at);
                return Err(error);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    /// Gives every byte already opened or arriving without a wait, up to `buf`: a large
    /// frame costs its reader one read, not one per record.
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut len = 0;
        if this.given < this.opened.len() {
            let n = (this.opened.len() - this.given).min(buf.len());
            buf[..n].copy_from_slice(&this.opened[this.given..this.given + n]);
            this.given += n;
            len = n;
        }
        // A close_notify may have been met while a write was sealed (`writable`).
        while len < buf.len() && !this.read_closed {
            let step = match this.step(Some((buf, &mut len))) {
                Ok(step) => step,
                // What was opened is given now; rustls says the error again next time.
                Err(_) if len > 0 => break,
                Err(error) => return Poll::Ready(Err(error)),
            };
            match step {
                Step::Again => continue,
                Step::Closed => this.read_closed = true,
                // A handshake message rustls asked for meanwhile (a key update's
                // answer) waits in `outgoing` for the next write or flush, as the
                // protocol allows: a read never writes, so the task that writes is the
                // only one waiting on the socket's writing side.
                Step::NeedsBytes | Step::Writable => match this.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => this.read_closed = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(_)) | Poll::Pending if len > 0 => break,
                    other => return other,
                },
            }
        }
        // A record larger than what `buf` had left waits in `opened` for the next read.
        Poll::Ready(Ok(len))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Earlier sealed bytes go first; until they went, nothing more is taken.
        std::task::ready!(this.poll_send(cx))?;
        if this.said_goodbye || !this.writable()? {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        }
        let n = this.seal(buf)?;
        // Sent now if the socket takes it; else by the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.said_goodbye {
            std::task::ready!(this.poll_send(cx))?;
            this.said_goodbye = true;
            if this.writable().unwrap_or(false) {
                let UnbufferedStatus { state, .. } = this
                    .session
                    .process_tls_records(&mut this.incoming[this.start..this.filled]);
                if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
                    // A goodbye that cannot be sealed is left unsaid: the socket closes.
                    let _ = append(&mut this.outgoing, 64, |room| {
                        traffic.queue_close_notify(room).map_err(encrypt_error)
                    });
                }
            }
        }
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.socket).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::{ClientTls, ServerTls};

    #[test]
    fn append_grows_the_room_as_asked_and_refuses_a_writer_that_asks_for_no_more() {
        let mut outgoing = b"kept".to_vec();
        let mut offered = Vec::new();
        append(&mut outgoing, 2, |room| {
            offered.push(room.len());
            if room.len() < 5 {
                return Err(Room::Needs(5));
            }
            room[..3].copy_from_slice(b"new");
            Ok(3)
        })
        .unwrap();
        assert_eq!(
            (outgoing.as_slice(), offered.as_slice()),
            (&b"keptnew"[..], &[2, 5][..])
        );
        let mut asked = 0;
        let error = append(&mut outgoing, 8, |room| {
            asked += 1;
            // Bounded even where the loop is not: a spinning append fails here.
            assert!(asked < 100, "append asked {asked} times for the same room");
            Err(Room::Needs(room.len()))
        })
        .unwrap_err();
        assert_eq!((asked, outgoing.as_slice()), (1, &b"keptnew"[..]), "{error}");
    }

    /// Accepts one connection on a glommio thread, shakes hands as `server`, and
    /// hands the stream to `serve`, whose answer the thread returns.
    fn serve_one<F, Fut>(
        server: ServerTls,
        serve: F,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<usize>)
    where
        F: FnOnce(TlsStream<glommio::net::TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = usize> + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server.config();
        let thread = std::thread::spawn(move || {
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let (socket, _) = listener.accept().unwrap();
                    let socket = {
                        use std::os::fd::{FromRawFd, IntoRawFd};
                        // SAFETY: the descriptor is the accepted socket's, given away here.
                        unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) }
                    };
                    serve(TlsStream::accept(socket, config).await.unwrap()).await
                })
                .unwrap()
                .join()
                .unwrap()
        });
        (addr, thread)
    }

    /// Serves one connection: answers the client certificate's common name, then
    /// echoes what it reads (`chunk` bytes a read, written at once) until the client
    /// closes; returns the bytes echoed.
    fn echo_server(
        server: ServerTls,
        chunk: usize,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<usize>) {
        serve_one(server, move |mut tls| async move {
            let name = tls.peer_certificates().first().and_then(crate::tls::common_name);
            let name = name.unwrap_or_default();
            tls.write_all(format!("{:<8}", name).as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            let mut buf = vec![0u8; chunk];
            let mut echoed = 0;
            loop {
                let n = tls.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                tls.write_all(&buf[..n]).await.unwrap();
                tls.flush().await.unwrap();
                echoed += n;
            }
            tls.close().await.unwrap();
            echoed
        })
    }

    /// A client's socket to `addr` (reads wait 10 s at most) and its session.
    fn connect(
        tls: &ClientTls,
        addr: std::net::SocketAddr,
    ) -> (std::net::TcpStream, rustls::ClientConnection) {
        let socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let name = tls.server_name("127.0.0.1").unwrap();
        (socket, rustls::ClientConnection::new(tls.config(), name).unwrap())
    }

    fn client(tls: &ClientTls, addr: std::net::SocketAddr) -> Client {
        let (socket, session) = connect(tls, addr);
        rustls::StreamOwned::new(session, socket)
    }

    type Client = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

    /// Writes `sent` and reads as many bytes back.
    fn round_trip(stream: &mut Client, sent: &[u8]) -> Vec<u8> {
        stream.write_all(sent).unwrap();
        stream.flush().unwrap();
        let mut back = vec![0u8; sent.len()];
        stream.read_exact(&mut back).unwrap();
        back
    }

    /// Says close_notify and reads to the end: what the server still said.
    fn goodbye(stream: &mut Client) -> Vec<u8> {
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        rest
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    #[test]
    fn bytes_go_both_ways_whole_through_reads_smaller_and_larger_than_a_record() {
        for chunk in [1000, 100 << 10] {
            let dir = tempfile::tempdir().unwrap();
            let (server, tls) = crate::tls::test_pair(dir.path(), Some(&["127.0.0.1".into()]));
            let (addr, server) = echo_server(server, chunk);
            let mut stream = client(&tls, addr);
            let mut name = [0u8; 8];
            stream.read_exact(&mut name).unwrap();
            assert_eq!(&name, b"c       ");
            // flowd's own clients ask for the cheaper AES first (`tls::provider`).
            let suite = stream.conn.negotiated_cipher_suite().unwrap().suite();
            assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            // Written in pieces the echo must reassemble, read back while written.
            let mut got = Vec::new();
            for piece in 0..12 {
                let sent = pattern(250_000, piece);
                let back = round_trip(&mut stream, &sent);
                assert!(back == sent, "piece {piece} came back changed (reads of {chunk})");
                got.extend_from_slice(&back);
            }
            let rest = goodbye(&mut stream);
            assert!(rest.is_empty(), "the server said more: {} bytes", rest.len());
            assert_eq!(server.join().unwrap(), 12 * 250_000);
            assert_eq!(got.len(), 12 * 250_000);
        }
    }

    #[test]
    fn a_reading_half_and_a_writing_half_on_two_tasks_pass_20_mb_each_way_under_backpressure() {
        let dir = tempfile::tempdir().unwrap();
        let (server, tls) = crate::tls::test_pair(dir.path(), Some(&["127.0.0.1".into()]));
        // The server as a door's connection runs: one task reads, another writes what
        // it is handed, through a bounded queue.
        let (addr, serving) = serve_one(server, |tls| async move {
            let (mut reader, mut writer) = futures_lite::io::split(tls);
            let (tx, rx) = glommio::channels::local_channel::new_bounded::<Vec<u8>>(4);
            let writing = glommio::spawn_local(async move {
                let mut echoed = 0;
                while let Some(chunk) = rx.recv().await {
                    writer.write_all(&chunk).await.unwrap();
                    writer.flush().await.unwrap();
                    echoed += chunk.len();
                }
                writer.close().await.unwrap();
                echoed
            });
            let mut buf = vec![0u8; 40 << 10];
            loop {
                let n = reader.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                tx.send(buf[..n].to_vec()).await.unwrap();
            }
            drop(tx);
            writing.await
        });
        let (socket, session) = connect(&tls, addr);
        let mut writer = crate::tls::duplex::Duplex::handshake(socket, session).unwrap();
        let mut reader = writer.try_clone().unwrap();
        // Far more than the sockets' buffers hold, written before anything is read: the
        // server's writer waits on the client while its reader goes on.
        let sent = pattern(20 << 20, 7);
        let expected = sent.clone();
        let writing = std::thread::spawn(move || {
            for piece in sent.chunks(1 << 20) {
                writer.write_all(piece).unwrap();
            }
            writer.close_notify();
            writer
        });
        // The reader starts late, so both sides' socket buffers fill first.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).unwrap();
        assert!(got == expected, "the echo differs");
        let _writer = writing.join().unwrap();
        assert_eq!(serving.join().unwrap(), expected.len());
    }

    #[test]
    fn a_key_update_the_client_asks_for_is_answered_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let (server, tls) = crate::tls::test_pair(dir.path(), Some(&["127.0.0.1".into()]));
        let (addr, server) = echo_server(server, 64 << 10);
        let mut stream = client(&tls, addr);
        let mut name = [0u8; 8];
        stream.read_exact(&mut name).unwrap();
        for round in 0..3 {
            let sent = pattern(100_000, round);
            let back = round_trip(&mut stream, &sent);
            assert!(back == sent, "round {round} came back changed");
            // New keys both ways: the server must answer with its own key update.
            stream.conn.refresh_traffic_keys().unwrap();
        }
        assert!(goodbye(&mut stream).is_empty());
        assert_eq!(server.join().unwrap(), 300_000);
    }

    #[test]
    fn a_client_certificate_longer_than_the_read_buffer_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        // About 40 KiB of names: the client's Certificate spans three records.
        let hosts: Vec<String> = (0..1500).map(|i| format!("host-{i:05}.example.test")).collect();
        let (server, tls) = crate::tls::test_pair(dir.path(), Some(&hosts));
        let (addr, server) = echo_server(server, 4096);
        let mut stream = client(&tls, addr);
        let mut name = [0u8; 8];
        stream.read_exact(&mut name).unwrap();
        assert_eq!(&name, b"c       ");
        assert_eq!(round_trip(&mut stream, b"hello"), b"hello");
        assert!(goodbye(&mut stream).is_empty());
        assert_eq!(server.join().unwrap(), 5);
    }
}
