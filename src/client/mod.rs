//! A blocking Rust client of the binary protocol, used by `flowd send/tail/status` and
//! the benchmarks: one TCP connection, requests pipelined by id.

pub mod consumer;
pub mod transport;

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use self::transport::{ReadSide, WriteSide};
use crate::protocol::message::{Fetched, Metadata, Response, encode_produce, encode_produce_batch};
use crate::protocol::records::record_offsets;
use crate::protocol::{
    ErrorCode, FetchFrom, FetchRequest, FrameHeader, JobRequest, OwnedWireRecord, ProtocolError, Request,
    WireRecord, parse_frame,
};

/// The largest buffer a client keeps between answers read whole (a claim or fetch of
/// the server's largest, 1 MiB, fits).
const RESPONSE_KEPT_MAX: usize = 4 << 20;
/// The largest response a client accepts.
const RESPONSE_BYTES_MAX: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}; is `flowd run` listening there (--listen, [ingest] tcp)?")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no TLS session with {addr}: {reason}; check that the server speaks TLS on this port (else drop --tls), and that --ca names the CA that signed its certificate"
    )]
    Tls { addr: String, reason: String },
    #[error("the connection to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the server at {addr} closed the connection")]
    Closed { addr: String },
    #[error(
        "no answer from {addr} within {}; the server may be stalled or unreachable (the connection cannot be used again)",
        humantime::format_duration(*waited)
    )]
    Timeout { addr: String, waited: Duration },
    #[error("{message}")]
    Server { code: ErrorCode, message: String },
    #[error("the server sent a response this client cannot read: {0}")]
    Protocol(String),
    /// A call this client refuses before sending anything.
    #[error("{0}")]
    Refused(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How long a client waits before it gives up (no call waits forever), and its TLS.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Speak TLS with these settings.
    pub tls: Option<crate::tls::ClientTls>,
    pub connect_timeout: Duration,
    /// For an answer (or the next part of one). A job waits its own timeout longer.
    pub read_timeout: Duration,
    /// For the server to take a request.
    pub write_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            tls: None,
            connect_timeout: Duration::from_secs(5),
            // Longer than the longest fetch wait the server allows (30 s).
            read_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// How much longer than its own timeout a job's caller waits for the answer.
const JOB_ANSWER_MARGIN: Duration = Duration::from_secs(10);
/// The longest timeout the server gives a job (`server::api::JOB_TIMEOUT_MAX`).
const JOB_TIMEOUT_MAX: Duration = Duration::from_secs(3600);

pub struct Client {
    addr: String,
    reader: BufReader<ReadSide>,
    writer: BufWriter<WriteSide>,
    next_id: u64,
    frame: Vec<u8>,
    /// The last response's frame, kept for its capacity: an answer is read into memory
    /// already touched, not into fresh pages the kernel zeroes for each one.
    response: Vec<u8>,
    options: ClientOptions,
}

impl Client {
    /// Connects with the default timeouts (`ClientOptions`).
    pub fn connect(addr: &str) -> Result<Client> {
        Client::connect_with(addr, ClientOptions::default())
    }

    pub fn connect_with(addr: &str, options: ClientOptions) -> Result<Client> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let resolved: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_error)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the address resolves to nothing");
        for candidate in resolved {
            match TcpStream::connect_timeout(&candidate, options.connect_timeout)
                .and_then(|stream| crate::net::check(&stream).map(|()| stream))
            {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    // The handshake, if any, within the connect timeout.
                    stream
                        .set_read_timeout(Some(options.connect_timeout))
                        .and_then(|()| stream.set_write_timeout(Some(options.write_timeout)))
                        .map_err(connect_error)?;
                    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                    let (reader, writer) =
                        transport::open(stream, options.tls.as_ref(), host).map_err(|e| {
                            match options.tls {
                                Some(_) => ClientError::Tls {
                                    addr: addr.to_owned(),
                                    reason: e.to_string(),
                                },
                                None => connect_error(e),
                            }
                        })?;
                    reader
                        .socket()
                        .set_read_timeout(Some(options.read_timeout))
                        .map_err(connect_error)?;
                    return Ok(Client {
                        addr: addr.to_owned(),
                        reader: BufReader::with_capacity(256 << 10, reader),
                        writer: BufWriter::with_capacity(256 << 10, writer),
                        next_id: 1,
                        frame: Vec::new(),
                        response: Vec::new(),
                        options,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(connect_error(last))
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits up to `timeout` for answers from now on.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.reader
            .get_ref()
            .socket()
            .set_read_timeout(Some(timeout))
            .map_err(self.io())?;
        self.options.read_timeout = timeout;
        Ok(())
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        |source| io_error(&self.addr, source)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues a request (sent at the next `flush` or read); returns its id.
    pub fn send(&mut self, request: &Request<'_>) -> Result<u64> {
        self.send_encoded(|out, id| request.encode(id, out))
    }

    /// Queues a produce of `records` to one topic; returns its id.
    pub fn send_produce(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        records: &[OwnedWireRecord],
    ) -> Result<u64> {
        self.send_encoded(|out, id| encode_produce(out, id, topic, partition, records))
    }

    /// Queues a PRODUCE_BATCH: `records` as one batch in the log's own format, for
    /// `partition` (`None`: the server picks one; only for records without keys).
    pub fn send_produce_batch(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        records: &[OwnedWireRecord],
    ) -> Result<u64> {
        if records.is_empty() {
            return Err(ClientError::Refused(
                "a batch holds at least one record: nothing to send".into(),
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.send_encoded(|out, id| encode_produce_batch(out, id, topic, partition, records, now))
    }

    /// Queues the frame `encode` writes for a fresh request id; returns the id.
    pub(crate) fn send_encoded(&mut self, encode: impl FnOnce(&mut Vec<u8>, u64)) -> Result<u64> {
        let id = self.take_id();
        self.frame.clear();
        encode(&mut self.frame, id);
        self.writer.write_all(&self.frame).map_err(self.io())?;
        Ok(id)
    }

    /// Sends already-encoded frame bytes as they are (tests of bad input, benchmarks).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).map_err(self.io())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(self.io())
    }

    /// Spins, without sleeping, for at most `spin` until an answer has begun to arrive
    /// (bytes in the socket or already buffered), and reads nothing: a closed-loop
    /// client that will not pay a thread's wake-up per round trip calls it before
    /// `recv` (`flowd bench ingest --spin-us`). It costs a core while it spins, though
    /// it gives the CPU to any thread ready to run there (`sched_yield`). Over TLS
    /// an answer already deciphered but not yet read is not seen: it spins to its bound.
    pub fn spin_until_readable(&mut self, spin: Duration) -> Result<()> {
        use std::os::fd::AsRawFd;
        self.flush()?;
        if !self.reader.buffer().is_empty() {
            return Ok(());
        }
        let fd = self.reader.get_ref().socket().as_raw_fd();
        let until = std::time::Instant::now() + spin;
        // Bounded by `spin`.
        loop {
            let mut ready = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, for a descriptor this client holds open; no wait.
            let n = unsafe { libc::poll(&mut ready, 1, 0) };
            if n != 0 || std::time::Instant::now() >= until {
                return Ok(());
            }
            // The CPU goes to any thread ready to run on it (the engine's shard, when
            // client and engine share CPUs), so the spin never holds up the answer.
            std::thread::yield_now();
        }
    }

    /// The next response: `(request id, response)`.
    pub fn recv(&mut self) -> Result<(u64, Response)> {
        self.read_with(|header, body| decoded(Response::decode(header, body)))
    }

    /// As `recv`, but the records of a CLAIMED or FETCHED answer are handed to `each` as
    /// they lie in the frame read (checked, not copied one by one) and left out of the
    /// response: the way to consume fast. Other answers come back whole.
    pub fn recv_each(&mut self, each: impl FnMut(u64, WireRecord<'_>)) -> Result<(u64, Response)> {
        self.read_with(|header, body| decoded(Response::decode_each(header, body, each)))
    }

    /// Flushes what is queued, then reads the next answer into the kept buffer and
    /// decodes it with `decode`.
    fn read_with<T>(&mut self, decode: impl FnOnce(&FrameHeader, &[u8]) -> Result<T>) -> Result<(u64, T)> {
        self.flush()?;
        let timeout = self.options.read_timeout;
        read_kept(&mut self.reader, &self.addr, timeout, &mut self.response, decode)
    }

    /// The connection as two halves, for a writer and a reader on different threads
    /// (open-loop load in `flowd bench`). Queued requests are flushed first.
    pub fn split(mut self) -> Result<(ClientWriter, ClientReader)> {
        self.flush()?;
        let stream = self.reader.get_ref().socket().try_clone().map_err(self.io())?;
        Ok((
            ClientWriter {
                addr: self.addr.clone(),
                writer: self.writer,
                stream,
            },
            ClientReader {
                addr: self.addr,
                reader: self.reader,
                read_timeout: self.options.read_timeout,
                response: self.response,
            },
        ))
    }

    /// One request, one response (nothing else in flight).
    pub fn call(&mut self, request: &Request<'_>) -> Result<Response> {
        let id = self.send(request)?;
        self.answer(id)
    }

    /// The response to request `id`, the only one in flight; an ERROR as an error.
    pub(crate) fn answer(&mut self, id: u64) -> Result<Response> {
        let (got, response) = self.recv()?;
        answer_to(id, got, response)
    }

    /// As `fetch`, but each record is handed to `each` as it lies in the answer (checked,
    /// not copied one by one) and the `Fetched` returned holds none: the way to read a
    /// partition fast.
    pub fn fetch_each(
        &mut self,
        request: &FetchRequest<'_>,
        each: impl FnMut(u64, WireRecord<'_>),
    ) -> Result<Fetched> {
        let id = self.send(&Request::Fetch(request.clone()))?;
        let (got, response) = self.recv_each(each)?;
        match answer_to(id, got, response)? {
            Response::Fetched(f) => Ok(f),
            other => Err(unexpected(&other)),
        }
    }

    /// Proves who this client is with `token` (AUTH): the credential's name. On a server
    /// with credentials, the first request of a connection; an unknown token is an
    /// `unauthenticated` error and the server closes the connection.
    pub fn auth(&mut self, token: &str) -> Result<String> {
        match self.call(&Request::Auth { token })? {
            Response::Authed(name) => Ok(name),
            other => Err(unexpected(&other)),
        }
    }

    /// Connects, then AUTH with `token` when one is given.
    pub fn connect_as(addr: &str, token: Option<&str>) -> Result<Client> {
        let mut client = Client::connect(addr)?;
        if let Some(token) = token {
            client.auth(token)?;
        }
        Ok(client)
    }

    pub fn metadata(&mut self) -> Result<Metadata> {
        match self.call(&Request::Metadata)? {
            Response::Metadata(m) => Ok(m),
            other => Err(unexpected(&other)),
        }
    }

    /// The status document (`GET /status`) as JSON: in a cluster, the whole cluster's as
    /// the peer reached gathers it, or with `local` that peer's own only.
    pub fn status(&mut self, local: bool) -> Result<serde_json::Value> {
        match self.call(&Request::Status { local })? {
            Response::Status(json) => serde_json::from_slice(&json)
                .map_err(|e| ClientError::Protocol(format!("status is not JSON: {e}"))),
            other => Err(unexpected(&other)),
        }
    }

    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        from: FetchFrom,
        max_records: u32,
        wait_ms: u32,
    ) -> Result<Fetched> {
        self.fetch_as(
            Request::Fetch,
            FetchRequest::new(topic, partition, from, max_records, wait_ms),
        )
    }

    fn fetch_as<'a>(
        &mut self,
        kind: fn(FetchRequest<'a>) -> Request<'a>,
        request: FetchRequest<'a>,
    ) -> Result<Fetched> {
        match self.call(&kind(request))? {
            Response::Fetched(f) => Ok(f),
            other => Err(unexpected(&other)),
        }
    }

    /// As `fetch`, served with the stored batches as they lie (checked here, CRC and
    /// archive, before a record is read): whole batches, so up to a batch more than
    /// `max_records`; records before `from` and engine bookkeeping are skipped.
    pub fn fetch_batches(
        &mut self,
        topic: &str,
        partition: u32,
        from: FetchFrom,
        max_records: u32,
        wait_ms: u32,
    ) -> Result<Fetched> {
        let request = FetchRequest::new(topic, partition, from, max_records, wait_ms);
        self.fetch_as(Request::FetchBatches, request)
    }

    /// As `fetch_batches`, handing `f` a zero-copy view of each record instead of a copy:
    /// the way to read fast. Returns the partition's ends `(start offset, next offset)`.
    pub fn fetch_batches_each(
        &mut self,
        request: &FetchRequest<'_>,
        f: impl FnMut(crate::protocol::RecordView<'_>),
    ) -> Result<(u64, u64)> {
        let id = self.send(&Request::FetchBatches(request.clone()))?;
        let (_, ends) = self.read_with(|header, body| batched(id, header, body, f))?;
        Ok(ends)
    }

    /// Produces records to one topic and waits for the durable ack: `(partition, offset)`
    /// per record, in order.
    pub fn produce(&mut self, topic: &str, records: &[OwnedWireRecord]) -> Result<Vec<(u32, u64)>> {
        let id = self.send_produce(topic, None, records)?;
        offsets(self.answer(id)?)
    }

    /// Produces `records` (non-empty) as one batch the log appends as it came, and waits
    /// until it is durable: the `(partition, offset)` of each.
    pub fn produce_batch(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        records: &[OwnedWireRecord],
    ) -> Result<Vec<(u32, u64)>> {
        let id = self.send_produce_batch(topic, partition, records)?;
        offsets(self.answer(id)?)
    }

    /// Sends a job and waits for its answer.
    /// The state the `state` stage `stage` holds for `key`.
    pub fn state(&mut self, stage: &str, key: &[u8]) -> Result<Vec<u8>> {
        match self.call(&Request::State { stage, key })? {
            Response::Answer(answer) => Ok(answer.value),
            other => Err(unexpected(&other)),
        }
    }

    pub fn job(
        &mut self,
        name: &str,
        key: Option<&[u8]>,
        value: &[u8],
        timeout: Option<Duration>,
    ) -> Result<OwnedWireRecord> {
        let request = Request::Job(JobRequest {
            job: name,
            timeout_ms: timeout.map_or(0, |t| t.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
            record: WireRecord {
                timestamp_ms: None,
                key,
                value,
                headers: Vec::new(),
                raw: &[],
            },
        });
        // A job may wait its whole timeout for the answer: so may its caller.
        let normal = self.options.read_timeout;
        let wait = timeout.unwrap_or(JOB_TIMEOUT_MAX) + JOB_ANSWER_MARGIN;
        self.set_read_timeout(wait.max(normal))?;
        let answer = self.call(&request);
        self.set_read_timeout(normal)?;
        match answer? {
            Response::Answer(answer) => Ok(answer),
            other => Err(unexpected(&other)),
        }
    }
}

/// The sending half of a split `Client`: raw frames, flushed on demand.
pub struct ClientWriter {
    addr: String,
    writer: BufWriter<WriteSide>,
    stream: TcpStream,
}

impl ClientWriter {
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .map_err(|source| io_error(&self.addr, source))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|source| io_error(&self.addr, source))
    }

    /// Ends the connection both ways, so that a reader blocked on it returns.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The receiving half of a split `Client`.
pub struct ClientReader {
    addr: String,
    reader: BufReader<ReadSide>,
    read_timeout: Duration,
    /// As `Client::response`.
    response: Vec<u8>,
}

impl ClientReader {
    /// The next response: `(request id, response)`.
    pub fn recv(&mut self) -> Result<(u64, Response)> {
        let timeout = self.read_timeout;
        read_kept(
            &mut self.reader,
            &self.addr,
            timeout,
            &mut self.response,
            |header, body| decoded(Response::decode(header, body)),
        )
    }
}

fn io_error(addr: &str, source: std::io::Error) -> ClientError {
    ClientError::Io {
        addr: addr.to_owned(),
        source,
    }
}

/// A read error as the client's error: a timeout says how long it waited.
fn read_error(addr: &str, waited: Duration, error: std::io::Error) -> ClientError {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => ClientError::Closed {
            addr: addr.to_owned(),
        },
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout {
            addr: addr.to_owned(),
            waited,
        },
        _ => io_error(addr, error),
    }
}

/// Reads one response frame into the buffer kept in `kept`, waiting at most `waited` for
/// each part of it, and decodes it with `decode`: `(request id, decoded)`.
fn read_kept<T>(
    reader: &mut BufReader<ReadSide>,
    addr: &str,
    waited: Duration,
    kept: &mut Vec<u8>,
    decode: impl FnOnce(&FrameHeader, &[u8]) -> Result<T>,
) -> Result<(u64, T)> {
    let mut frame = std::mem::take(kept);
    let result = read_frame(reader, addr, waited, &mut frame)
        .and_then(|parsed| Ok((parsed.header.request_id, decode(&parsed.header, parsed.body)?)));
    keep(kept, frame);
    result
}

/// Keeps a frame's buffer in `kept` for the next read, unless an answer far larger than
/// most grew it: then it goes, so a client does not hold that memory for its life.
fn keep(kept: &mut Vec<u8>, frame: Vec<u8>) {
    if frame.capacity() <= RESPONSE_KEPT_MAX {
        *kept = frame;
    }
}

/// Reads one whole response frame into `frame`.
fn read_frame<'a>(
    reader: &mut BufReader<ReadSide>,
    addr: &str,
    waited: Duration,
    frame: &'a mut Vec<u8>,
) -> Result<crate::protocol::RawFrame<'a>> {
    let mut prefix = [0u8; 4];
    if let Err(e) = reader.read_exact(&mut prefix) {
        return Err(read_error(addr, waited, e));
    }
    let length = u32::from_le_bytes(prefix) as usize;
    if length > RESPONSE_BYTES_MAX {
        return Err(ClientError::Protocol(format!("a response of {length} bytes")));
    }
    frame.clear();
    frame.resize(4 + length, 0);
    frame[..4].copy_from_slice(&prefix);
    reader
        .read_exact(&mut frame[4..])
        .map_err(|e| read_error(addr, waited, e))?;
    parse_frame(frame, RESPONSE_BYTES_MAX)
        .map_err(|e| ClientError::Protocol(e.message))?
        .ok_or_else(|| ClientError::Protocol("a short frame".into()))
}

/// A FETCH_BATCHES answer to request `id`: each record handed to `f` as a zero-copy view,
/// the partition's ends returned.
fn batched(
    id: u64,
    header: &FrameHeader,
    body: &[u8],
    f: impl FnMut(crate::protocol::RecordView<'_>),
) -> Result<(u64, u64)> {
    if header.kind != crate::protocol::Kind::Batches as u8 {
        // An error (the request's, or the connection's own), or a FETCHED from a peer
        // serving the partition: decoded whole, and answered as any other request.
        let response = answer_to(id, header.request_id, decoded(Response::decode(header, body))?)?;
        let Response::Fetched(fetched) = response else {
            return Err(unexpected(&response));
        };
        let mut f = f;
        for (offset, r) in &fetched.records {
            let headers: Vec<crate::protocol::Header<'_>> = r
                .headers
                .iter()
                .map(|(name, value)| crate::protocol::Header { name, value })
                .collect();
            let record = crate::protocol::Record {
                timestamp_ms: r.timestamp_ms.unwrap_or(0),
                key: r.key.as_deref(),
                value: &r.value,
                headers: &headers,
            };
            let mut bytes = Vec::new();
            crate::protocol::encode_batch(std::slice::from_ref(&record), *offset, false, &mut bytes);
            let batch = crate::protocol::CheckedBatch::check(&bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            batch.records().for_each(&mut f);
        }
        return Ok((fetched.start_offset, fetched.next_offset));
    }
    if header.request_id != id {
        return Err(not_the_answer(header.request_id, id));
    }
    let mut cursor = crate::protocol::wire::Cursor::new(body);
    decoded(crate::protocol::message::for_each_batched_record(&mut cursor, f))
}

/// A decoding error as the client's.
fn decoded<T>(decoded: std::result::Result<T, ProtocolError>) -> Result<T> {
    decoded.map_err(|e| ClientError::Protocol(e.message))
}

/// Response `got` as the answer to request `id`, the only one in flight; an ERROR as an
/// error.
fn answer_to(id: u64, got: u64, response: Response) -> Result<Response> {
    // Id 0 is the connection's own: an error the server sends before it closes
    // (tls_required, unauthenticated, overloaded).
    if got == 0 && matches!(response, Response::Error { .. }) {
        return server_error(response);
    }
    if got != id {
        return Err(not_the_answer(got, id));
    }
    server_error(response)
}

/// A response to request `got` where the answer to `id` was awaited.
fn not_the_answer(got: u64, id: u64) -> ClientError {
    ClientError::Protocol(format!("a response to request {got}, expected {id}"))
}

/// An ERROR response as `ClientError::Server`; anything else as it is.
pub fn server_error(response: Response) -> Result<Response> {
    match response {
        Response::Error { code, message, .. } => Err(ClientError::Server { code, message }),
        other => Ok(other),
    }
}

/// The `(partition, offset)` of every record of a PRODUCED response, in input order.
pub fn offsets(response: Response) -> Result<Vec<(u32, u64)>> {
    match response {
        Response::Produced(groups) => Ok(record_offsets(&groups).collect()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("an unexpected response: {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_never_answers_is_a_timeout_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Accepts, reads what comes, answers nothing.
        let silent = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        });
        let options = ClientOptions {
            read_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let mut client = Client::connect_with(&addr, options).unwrap();
        let started = std::time::Instant::now();
        let error = client.metadata().unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
        assert!(error.to_string().contains("within 200ms"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(client);
        silent.join().unwrap();
    }

    /// A value `value_bytes` long (or just long enough) that tells its offset.
    fn value_of(offset: u64, value_bytes: usize) -> Vec<u8> {
        let mut value = format!("value {offset} ").into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        value
    }

    /// Answers request `id` with a FETCHED of `count` records from `first`.
    fn fetched_frame(id: u64, first: u64, count: u64, value_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = crate::protocol::records::RecordsWriter::fetched(&mut out, id, 0, first + count);
        for offset in first..first + count {
            let value = value_of(offset, value_bytes);
            w.push(
                &mut out,
                offset,
                offset as i64,
                Some(b"k"),
                &value,
                &[("h", b"v")],
            );
        }
        w.finish(&mut out);
        out
    }

    /// A server on a loopback port that answers each request read with the next of
    /// `answers`, then reads until the client closes: its address, and the thread.
    fn answering(answers: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            for answer in answers {
                let mut prefix = [0u8; 4];
                stream.read_exact(&mut prefix).unwrap();
                let mut request = vec![0u8; u32::from_le_bytes(prefix) as usize];
                stream.read_exact(&mut request).unwrap();
                stream.write_all(&answer).unwrap();
            }
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        });
        (addr, server)
    }

    #[test]
    fn answers_read_into_the_kept_buffer_and_records_read_in_place_are_each_answer_exactly() {
        // A large answer, then smaller ones read into the buffer it left, then an error.
        let answers = vec![
            fetched_frame(1, 0, 3000, 1000),
            fetched_frame(2, 3000, 2, 10),
            fetched_frame(3, 3002, 3, 10),
            {
                let mut out = Vec::new();
                crate::protocol::message::encode_error(
                    &mut out,
                    4,
                    ErrorCode::UnknownTopic,
                    "no topic \"t\"",
                );
                out
            },
        ];
        let (addr, server) = answering(answers);
        let mut client = Client::connect(&addr).unwrap();
        let first = client.fetch("t", 0, FetchFrom::Earliest, 3000, 0).unwrap();
        assert_eq!(first.records.len(), 3000);
        for (i, (offset, record)) in first.records.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(record.value, value_of(*offset, 1000));
        }
        let second = client.fetch("t", 0, FetchFrom::Offset(3000), 3000, 0).unwrap();
        let offsets: Vec<u64> = second.records.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [3000, 3001]);
        assert_eq!(second.records[1].1.value, value_of(3001, 10));
        assert_eq!(second.next_offset, 3002);
        let mut handed = Vec::new();
        let request = FetchRequest::new("t", 0, FetchFrom::Offset(3002), 3000, 0);
        let third = client
            .fetch_each(&request, |offset, record| {
                handed.push((offset, record.value.to_vec(), record.key.map(<[u8]>::to_vec)))
            })
            .unwrap();
        assert_eq!(
            handed,
            (3002..3005)
                .map(|o| (o, value_of(o, 10), Some(b"k".to_vec())))
                .collect::<Vec<_>>()
        );
        assert!(third.records.is_empty());
        assert_eq!(third.next_offset, 3005);
        // An ERROR answer is the server's error, not an empty read.
        let error = client
            .fetch_each(&request, |_, _| panic!("no record"))
            .unwrap_err();
        assert!(
            matches!(
                &error,
                ClientError::Server {
                    code: ErrorCode::UnknownTopic,
                    ..
                }
            ),
            "{error}"
        );
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn a_batched_fetch_answered_by_the_connections_own_error_is_that_error() {
        // The server refuses the connection as a full engine does: one ERROR of id 0,
        // sent whatever was asked.
        let mut refusal = Vec::new();
        crate::protocol::message::encode_error(
            &mut refusal,
            0,
            ErrorCode::Overloaded,
            "this engine serves 2 connections already: retry later",
        );
        let (addr, server) = answering(vec![refusal]);
        let mut client = Client::connect(&addr).unwrap();
        let request = FetchRequest::new("t", 0, FetchFrom::Earliest, 10, 0);
        let error = client
            .fetch_batches_each(&request, |_| panic!("no record"))
            .unwrap_err();
        assert!(
            matches!(
                &error,
                ClientError::Server {
                    code: ErrorCode::Overloaded,
                    message,
                } if message.contains("retry later")
            ),
            "{error}"
        );
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn spinning_for_an_answer_ends_when_it_comes_or_when_the_spin_is_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (go, answer) = std::sync::mpsc::channel::<()>();
        // Reads the request, answers request 7 when told, then waits for the close.
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4];
            stream.read_exact(&mut request).unwrap();
            answer.recv().unwrap();
            let mut frame = Vec::new();
            crate::protocol::message::encode_error(
                &mut frame,
                7,
                crate::protocol::error::ErrorCode::Malformed,
                "no",
            );
            stream.write_all(&frame).unwrap();
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        });
        let mut client = Client::connect(&addr).unwrap();
        client.send_raw(b"ping").unwrap();
        // Nothing comes: the spin ends by itself.
        client.spin_until_readable(Duration::from_millis(20)).unwrap();
        go.send(()).unwrap();
        // The answer comes: the spin ends with it, long before its bound.
        let started = std::time::Instant::now();
        client.spin_until_readable(Duration::from_secs(60)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let (id, response) = client.recv().unwrap();
        assert_eq!(id, 7);
        assert!(matches!(response, Response::Error { .. }), "{response:?}");
        drop(client);
        server.join().unwrap();
    }
}
