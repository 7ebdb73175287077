//! What a new connection speaks, found before it is served. A TLS door shakes hands
//! (within `io_timeout`) and serves what comes through; a plaintext door serves the
//! bytes as they come. A client speaking the other gets told at once, and the log says
//! which: a plaintext client on a TLS door gets a plaintext answer it can read (an
//! ERROR frame, a 400) naming TLS; a TLS client on a plaintext door is closed at once,
//! and the clients flowd ships say the server may not speak TLS.
//!
//! The first bytes are peeked, not read: the protocol (or rustls) reads them as if
//! nothing had looked, and a wait given up loses no byte. A ClientHello is told apart in
//! its first six bytes (`tls::client_hello`).
//!
//! In a cluster whose peers speak mutual TLS, the binary protocol's door also takes
//! relays from other peers, TLS or not itself: a ClientHello offering `flowd-relay/1`
//! (`tls::peer::RELAY_ALPN`) is answered with the peer certificate, and the connection
//! is served only if the other presented one of the cluster CA naming this cluster
//! (`Stream::relayer`); such a connection may vouch for the clients it relays for.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::metrics::Metrics;
use crate::server::api;
use crate::tls::ServerTls;
use crate::tls::peer::{PeerTls, RELAY_ALPN};
use crate::tls::stream::TlsStream;

/// A connection, in TLS or not, from the first byte it sent.
pub struct Stream {
    inner: Inner,
    peer: Option<SocketAddr>,
    /// The address the client reached this door by.
    local: Option<SocketAddr>,
    /// The common name of the client certificate the TLS handshake verified.
    client_name: Option<String>,
    /// A peer of this cluster relaying its clients' requests (its certificate's name).
    relayer: Option<String>,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// A plaintext connection as it is, nothing read from it yet.
    pub fn plain(stream: TcpStream) -> Stream {
        let peer = stream.peer_addr().ok();
        let local = stream.local_addr().ok();
        Stream {
            inner: Inner::Plain(stream),
            peer,
            local,
            client_name: None,
            relayer: None,
        }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The address the client reached this door by (what a Kafka client is told to
    /// come back to).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Who a verified client certificate says the client is.
    pub fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// The peer of this cluster on the other side, when it is one relaying (its
    /// certificate's common name, else its addresses).
    pub fn relayer(&self) -> Option<&str> {
        self.relayer.as_deref()
    }
}

/// What a door's listener speaks.
pub struct Speaks {
    /// "TCP" or "HTTP", for the log.
    pub what: &'static str,
    /// Written (in plaintext) to a plaintext client on a TLS door before it is closed.
    pub plain_answer: fn() -> Vec<u8>,
    /// Whether it takes relays from other peers (the binary protocol).
    pub relays: bool,
}

/// How one door opens its connections.
pub struct Door {
    /// "TCP" or "HTTP", for the log.
    pub what: &'static str,
    pub tls: Option<Arc<ServerTls>>,
    /// How long the rest of a ClientHello, and the handshake, may take.
    pub io_timeout: Duration,
    /// Written (in plaintext) to a plaintext client on a TLS door before it is closed.
    pub plain_answer: fn() -> Vec<u8>,
    /// The peer port's TLS, on a door that takes relays from other peers.
    pub relays: Option<Arc<PeerTls>>,
}

impl Door {
    /// How long the door waits for a connection's first bytes: on a TLS door
    /// `io_timeout` (a client must speak first; one silent that long is closed); on a
    /// plaintext door what its protocol would wait (its idle timeout, or `io_timeout`
    /// for AUTH on a server with credentials), at most a second: a silent client is then
    /// handed to its protocol, whose own timers run.
    pub fn first_wait(&self, idle_timeout: Duration, closed_gate: bool) -> Duration {
        if self.tls.is_some() {
            return self.io_timeout;
        }
        let protocol = if closed_gate {
            self.io_timeout
        } else {
            idle_timeout
        };
        protocol.min(Duration::from_secs(1))
    }

    /// The connection ready to serve, or `None` when it is closed here (said in the log
    /// and counted), its first bytes waited for at most `first_wait` (`first_wait()`).
    pub async fn open(&self, stream: TcpStream, metrics: &Metrics, first_wait: Duration) -> Option<Stream> {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let Some(hello) = self.sniff(&stream, first_wait).await else {
            if self.tls.is_none() {
                return Some(Stream::plain(stream));
            }
            tracing::debug!(
                ?peer,
                "{} connection closed: gone, or no TLS ClientHello within the wait",
                self.what
            );
            return None;
        };
        match (&self.tls, hello) {
            (None, false) => Some(Stream::plain(stream)),
            (None, true) if self.relays.is_none() => {
                self.tls_on_plaintext(metrics, peer);
                let _ = stream.shutdown(std::net::Shutdown::Both).await;
                None
            }
            (Some(_), false) => {
                metrics.tls_refused.add(1);
                tracing::warn!(
                    ?peer,
                    "a plaintext client on the TLS {} door: told to use TLS and closed",
                    self.what
                );
                let mut stream = stream;
                let answer = (self.plain_answer)();
                let _ = api::within(Duration::from_secs(1), stream.write_all(&answer)).await;
                // A lingering close: the request still unread would turn the close into
                // a reset, which can throw the answer away before the client reads it
                // (or fail the client's write). What it sends is taken, at most 64 KiB
                // within a second, before the socket closes.
                let _ = stream.shutdown(std::net::Shutdown::Write).await;
                let _ = api::within(Duration::from_secs(1), async {
                    let mut sink = [0u8; 4096];
                    let mut left = 64usize << 10;
                    while left > 0 {
                        match stream.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                })
                .await;
                let _ = stream.close().await;
                None
            }
            (_, true) => self.handshake(stream, peer, metrics).await,
        }
    }

    /// Shakes hands with a client whose ClientHello came (within `io_timeout`): as this
    /// door's TLS, or as a peer's when it offers `RELAY_ALPN` and the door takes relays.
    /// A TLS client on a plaintext door that is no relaying peer is closed.
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: Option<SocketAddr>,
        metrics: &Metrics,
    ) -> Option<Stream> {
        let deadline = Instant::now() + self.io_timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let local = stream.local_addr().ok();
        let relaying = match &self.relays {
            None => None,
            Some(peers) => match api::within(left(), offers_relay(&stream)).await {
                Some(Ok(true)) => Some(peers),
                Some(Ok(false)) => None,
                Some(Err(error)) => return self.failed(metrics, peer, &error),
                None => return self.failed(metrics, peer, "not done in time"),
            },
        };
        let config = match (relaying, &self.tls) {
            (Some(peers), _) => peers.relay_server(),
            (None, Some(tls)) => tls.config(),
            (None, None) => {
                self.tls_on_plaintext(metrics, peer);
                return None;
            }
        };
        let stream = match api::within(left(), TlsStream::accept(stream, config)).await {
            Some(Ok(stream)) => stream,
            Some(Err(error)) => return self.failed(metrics, peer, &error.to_string()),
            None => return self.failed(metrics, peer, "not done in time"),
        };
        let chain = stream.peer_certificates();
        let mut relayer = None;
        if let Some(peers) = relaying {
            match peers.cluster_peer(chain) {
                Ok(subject) => {
                    relayer = Some(subject.name.unwrap_or_else(|| format!("{:?}", subject.ips)));
                }
                Err(error) => {
                    return self.failed(metrics, peer, &format!("a relaying peer refused: {error}"));
                }
            }
        }
        let client_name = match relayer {
            Some(_) => None,
            None => chain.first().and_then(crate::tls::common_name),
        };
        Some(Stream {
            inner: Inner::Tls(Box::new(stream)),
            peer,
            local,
            client_name,
            relayer,
        })
    }

    /// A TLS client (no relaying peer) on a plaintext door: counted and logged; the
    /// caller closes it.
    fn tls_on_plaintext(&self, metrics: &Metrics, peer: Option<SocketAddr>) {
        metrics.tls_refused.add(1);
        tracing::warn!(
            ?peer,
            "a TLS client on the plaintext {} door: closed (this listener has no tls_cert; connect without TLS, or give the server one)",
            self.what
        );
    }

    /// A handshake that failed for `why`: counted, logged, closed.
    fn failed(&self, metrics: &Metrics, peer: Option<SocketAddr>, why: &str) -> Option<Stream> {
        metrics.tls_refused.add(1);
        tracing::warn!(
            ?peer,
            "TLS handshake on the {} door failed ({why}; at most {} is given to it): closed",
            self.what,
            humantime::format_duration(self.io_timeout)
        );
        None
    }

    /// Whether the connection's first bytes open a TLS ClientHello, peeked (nothing is
    /// taken from the socket, so a wait given up loses no byte). `None` when nothing
    /// came within `wait` or the client went; bytes that stay too few to tell count as
    /// not TLS after `io_timeout`.
    async fn sniff(&self, stream: &TcpStream, wait: Duration) -> Option<bool> {
        let mut first = [0u8; 6];
        let mut deadline = Instant::now() + wait;
        let mut seen = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match api::within(left, stream.peek(&mut first)).await {
                // Gone already (a port check, a client that gave up): nothing to tell.
                Some(Ok(0)) | Some(Err(_)) => return None,
                Some(Ok(n)) => {
                    if let Some(hello) = crate::tls::client_hello(&first[..n]) {
                        return Some(hello);
                    }
                    if !seen {
                        seen = true;
                        deadline = Instant::now() + self.io_timeout;
                    }
                    // A ClientHello's start, cut short: the rest comes in a moment (a
                    // peek would return the same bytes at once, so pause between).
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                None if seen => return Some(false),
                None => return None,
            }
        }
    }
}

/// The largest ClientHello looked at before the handshake (one record's worth).
const HELLO_MAX: usize = 5 + (16 << 10);

/// Whether the ClientHello waiting on `stream` offers `RELAY_ALPN`, read by a peek so
/// the handshake then reads it as if nothing had looked. Bound the wait from outside.
async fn offers_relay(stream: &TcpStream) -> Result<bool, String> {
    let mut hello = vec![0u8; 512];
    loop {
        let n = stream
            .peek(&mut hello)
            .await
            .map_err(|e| format!("the ClientHello could not be read: {e}"))?;
        if n == 0 {
            return Err("closed before its ClientHello was whole".to_owned());
        }
        let mut acceptor = rustls::server::Acceptor::default();
        acceptor
            .read_tls(&mut &hello[..n])
            .map_err(|e| format!("the ClientHello could not be read: {e}"))?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let offered = accepted.client_hello().alpn();
                return Ok(offered.is_some_and(|mut offered| offered.any(|p| p == RELAY_ALPN)));
            }
            Err((error, _)) => return Err(error.to_string()),
            Ok(None) if n == hello.len() && n < HELLO_MAX => hello.resize((n * 4).min(HELLO_MAX), 0),
            Ok(None) if n == HELLO_MAX => {
                return Err(format!("a ClientHello of more than {HELLO_MAX} bytes"));
            }
            // The rest is on its way (a peek would return the same bytes at once).
            Ok(None) => glommio::timer::sleep(Duration::from_millis(1)).await,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            // A client gone without close_notify has simply gone (a read of 0): every
            // frame and HTTP message says its own length, so nothing can be cut off
            // unnoticed.
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_close(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
