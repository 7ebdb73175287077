//! Shared helpers: deterministic record contents, small-segment options, temp dirs.

use std::path::Path;
use std::time::Duration;

use flowd::storage::{Durability, Header, LogOptions, PartitionLog, Record, RecordView};

/// Small segments so that tests cross segment boundaries quickly.
pub fn small_options(durability: Durability) -> LogOptions {
    LogOptions {
        segment_bytes: 64 * 1024,
        durability,
        index_interval_bytes: 512,
        max_record_bytes: 16 * 1024,
        unsynced_bytes_max: 256 * 1024,
        ..LogOptions::default()
    }
}

/// A temp dir on tmpfs when there is one: tests that do not measure the disk need not
/// wait for it.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("temp dir in /dev/shm")
    } else {
        tempfile::tempdir().expect("temp dir")
    }
}

/// The owned content of the record expected at an offset: a pure function of it, so a
/// checker needs no record of what a killed writer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

pub fn expected(offset: u64) -> Expected {
    let len = (offset.wrapping_mul(2_654_435_761) % 300) as usize;
    let value: Vec<u8> = (0..len)
        .map(|i| (offset as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    Expected {
        timestamp_ms: 1_700_000_000_000 + (offset as i64 * 7919) % 100_000,
        key: (offset % 2 == 1).then(|| format!("key-{offset}").into_bytes()),
        value,
        headers: if offset.is_multiple_of(7) {
            vec![("trace".to_string(), offset.to_le_bytes().to_vec())]
        } else {
            Vec::new()
        },
    }
}

/// Calls `f` with the expected records for `offsets`.
fn with_expected<R>(offsets: std::ops::Range<u64>, f: impl FnOnce(&[Record<'_>]) -> R) -> R {
    let owned: Vec<Expected> = offsets.map(expected).collect();
    let headers: Vec<Vec<Header<'_>>> = owned
        .iter()
        .map(|e| {
            e.headers
                .iter()
                .map(|(n, v)| Header { name: n, value: v })
                .collect()
        })
        .collect();
    let records: Vec<Record<'_>> = owned
        .iter()
        .zip(&headers)
        .map(|(e, h)| Record {
            timestamp_ms: e.timestamp_ms,
            key: e.key.as_deref(),
            value: &e.value,
            headers: h,
        })
        .collect();
    f(&records)
}

/// Appends the expected records for `offsets` as one atomic batch.
pub fn append_expected(
    log: &mut PartitionLog,
    offsets: std::ops::Range<u64>,
) -> flowd::storage::AppendReceipt {
    assert_eq!(log.next_offset(), offsets.start, "appending out of order");
    with_expected(offsets, |records| log.append(records).expect("append"))
}

/// Appends the expected records for `offsets` as a batch made the way a client makes one
/// (encoded, checked, appended as it came).
pub fn append_expected_encoded(
    log: &mut PartitionLog,
    offsets: std::ops::Range<u64>,
) -> flowd::storage::AppendReceipt {
    assert_eq!(log.next_offset(), offsets.start, "appending out of order");
    let mut bytes = Vec::new();
    with_expected(offsets, |records| {
        flowd::storage::batch::encode_batch(records, 0, false, &mut bytes)
    });
    let mut batch = flowd::storage::batch::CheckedBatch::check(&bytes).expect("a sound batch");
    log.append_checked(&mut batch).expect("append")
}

/// Appends the expected records for `offsets` in atomic batches of at most 50, small
/// enough for the tests' 64 KiB segments.
pub fn fill(log: &mut PartitionLog, offsets: std::ops::Range<u64>) -> flowd::storage::AppendReceipt {
    let mut receipt = None;
    let mut start = offsets.start;
    while start < offsets.end {
        let end = (start + 50).min(offsets.end);
        receipt = Some(append_expected(log, start..end));
        start = end;
    }
    receipt.expect("a non-empty range")
}

/// Panics unless `view` is exactly the expected record for its offset.
pub fn assert_expected(view: &RecordView<'_>) {
    let want = expected(view.offset());
    assert_eq!(
        view.timestamp_ms(),
        want.timestamp_ms,
        "timestamp of {}",
        view.offset()
    );
    assert_eq!(view.key(), want.key.as_deref(), "key of {}", view.offset());
    assert_eq!(view.value(), &want.value[..], "value of {}", view.offset());
    let headers: Vec<(String, Vec<u8>)> = view.headers().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
    assert_eq!(headers, want.headers, "headers of {}", view.offset());
}

/// Checks that the log holds exactly the expected records `0..next_offset`, densely.
pub fn assert_log_is_expected_prefix(log: &PartitionLog) -> u64 {
    assert_eq!(log.start_offset(), 0);
    let mut count = 0;
    for view in log.read(0) {
        assert_eq!(view.offset(), count, "offsets must be dense");
        assert_expected(&view);
        count += 1;
    }
    assert_eq!(count, log.next_offset());
    count
}

/// A free loopback port below the kernel's range for the ports of outgoing connections
/// (`net.ipv4.ip_local_port_range`), for a server a test restarts on the same port
/// while a client it does not control (kafka-python, librdkafka) keeps dialing it: a
/// port in that range can be taken by such a client's connection meeting itself, and
/// the server then cannot bind it (flowd's own dialers close such a connection,
/// `flowd::net`).
pub fn port_for_restarts() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    assert!(
        low > 12_000,
        "the kernel's range starts at {low}: no room below it"
    );
    let span = u32::from(low) - 10_000;
    // Tests run in parallel: each starts from its own place, by pid and time.
    let seed = std::process::id() ^ std::time::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
    for step in 0..span {
        let port = 10_000 + ((seed.wrapping_mul(2_654_435_761) % span + step * 7_919) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 10000 and {low}");
}

/// Whether the servers' logs are echoed (`FLOWD_TEST_LOGS=1`, with `--nocapture`).
pub fn echo_logs() -> bool {
    std::env::var_os("FLOWD_TEST_LOGS").is_some()
}

/// flowd's stderr, read on a thread as it comes.
pub struct Log {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Log {
    pub fn read(stderr: std::process::ChildStderr) -> Log {
        Log::read_as(stderr, String::new())
    }

    /// The same, its echo (`FLOWD_TEST_LOGS`) with each line prefixed by `tag` (which
    /// of several servers said it).
    pub fn read_as(stderr: std::process::ChildStderr, tag: String) -> Log {
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let shared = text.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let echo = echo_logs();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if echo {
                    eprintln!("{tag}{line}");
                }
                let mut text = shared.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Log { text, reader }
    }

    /// Whether every one of `needles` shows up within `timeout`.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if needles.iter().all(|n| self.text.lock().unwrap().contains(n)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits at most `limit` for the process's stderr to close, so that `text` holds
    /// the last lines it wrote before it exited; whether it closed (a worker it left
    /// behind may hold it open).
    pub fn wait_closed(&self, limit: Duration) -> bool {
        poll(limit, Duration::from_millis(5), || {
            self.reader.is_finished().then_some(())
        })
        .is_some()
    }

    /// The log so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// The whole log, once the process closed its stderr.
    pub fn finish(self) -> String {
        self.reader.join().unwrap();
        std::mem::take(&mut *self.text.lock().unwrap())
    }
}

/// A TCP connection to `addr` from the local address `ip` (any of 127.0.0.0/8 on
/// loopback), as another client host would make it.
pub fn connect_from(ip: &str, addr: &str) -> Option<std::net::TcpStream> {
    let local = std::net::SocketAddr::new(ip.parse().ok()?, 0);
    let target: std::net::SocketAddr = addr.parse().ok()?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&local.into()).ok()?;
    socket.connect(&target.into()).ok()?;
    Some(socket.into())
}

/// Writes `DIR/NAME.toml`: an engine on two cores keeping its data in `DIR/data` with
/// `durability`, listening on free loopback ports (`ingest` adds lines to `[ingest]`),
/// then `rest` (topics, stages, ...). Returns its path.
pub fn listening_dataflow(
    dir: &Path,
    name: &str,
    durability: &str,
    ingest: &str,
    rest: &str,
) -> std::path::PathBuf {
    let text = format!(
        "[engine]\ndata_dir = \"{}\"\ndurability = \"{durability}\"\ncores = 2\n\n[ingest]\ntcp = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n{ingest}\n\n{rest}",
        dir.join("data").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The number in the environment variable `name` (a longer run's size), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `check` every 20 ms until it holds; panics after `limit` saying `what` did not
/// happen. Returns how long it took. Every wait of a test on a condition goes through
/// here (or a loop like it), bounded.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Checks that `holds` stays true for all of `window` (polled every 20 ms): for what must
/// not happen (a disabled stage writing on). Panics, naming `what`, the first time not.
pub fn stays(what: &str, window: Duration, mut holds: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        assert!(holds(), "{what}: broken after {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every `every` until it gives a value, for at most `limit`: the value, or
/// `None` once the time is up (the caller says what that means). The general form of
/// [`wait_until`], for waits whose end is not a failure.
pub fn poll<T>(limit: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if started.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits at most `limit` for `child` to exit: its status, or `None` if it still runs.
pub fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    poll(limit, Duration::from_millis(10), || {
        child.try_wait().expect("try_wait on a child")
    })
}

/// Paces a workload (a trickling client, a producer's rhythm); never decides an outcome.
pub fn pace(pause: Duration) {
    std::thread::sleep(pause);
}

/// How long a command a test runs to its end may take before the test kills it and
/// fails: no test waits on a process forever.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` to its end with `stdin` as its input, its output read as it comes
/// (so a chatty one cannot block), within `COMMAND_TIMEOUT`; past it the process is
/// killed and the test fails with what it printed.
pub fn run_bounded(command: &mut std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let input = stdin.to_vec();
    let mut pipe_in = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // The command may not read it all: a broken pipe is its business.
        let _ = pipe_in.write_all(&input);
    });
    let mut pipe_out = child.stdout.take().unwrap();
    let mut pipe_err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe_out.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe_err.read_to_end(&mut buf);
        buf
    });
    let deadline = std::time::Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap();
            panic!(
                "{command:?} ran over {COMMAND_TIMEOUT:?}; its stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A tmpfs of a given size mounted at a directory, unmounted when dropped: a disk that
/// fills up.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "this test needs root to mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        assert!(
            self.try_resize(size),
            "remounting {} with {size}",
            self.0.display()
        );
    }

    /// Resizes it, or says it could not: a tmpfs refuses a size below what it holds.
    pub fn try_resize(&self, size: &str) -> bool {
        std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Bytes in use on it.
    pub fn used(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed struct it fills in.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// `--peer-tls-cert, --peer-tls-key, --peer-tls-ca` for a peer of `cluster` on `hosts`:
/// a certificate made by `flowd cert issue --cluster` from the tests' one cluster CA
/// (made by `flowd cert ca`), once per cluster and hosts, in this process's own
/// directory under the target's temporary directory.
pub(crate) fn peer_tls_flags(cluster: &str, hosts: &[&str]) -> Vec<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static MADE: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let hosts = hosts.join(",");
    let key = format!("{cluster}@{hosts}");
    if let Some(flags) = made.get(&key) {
        return flags.clone();
    }
    let pki = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("peer-pki-{}", std::process::id()));
    if made.is_empty() {
        let _ = std::fs::remove_dir_all(&pki);
        let (code, _, err) = crate::ingest::run_cli(
            &[
                "cert",
                "ca",
                "--dir",
                &pki.display().to_string(),
                "--name",
                "tests' cluster CA",
            ],
            "",
        );
        assert_eq!(code, 0, "{err}");
    }
    let name = format!("peer{}", made.len());
    let (code, _, err) = crate::ingest::run_cli(
        &[
            "cert",
            "issue",
            &name,
            "--dir",
            &pki.display().to_string(),
            "--cluster",
            cluster,
            "--host",
            &hosts,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let file = |f: String| pki.join(f).display().to_string();
    let flags = vec![
        "--peer-tls-cert".to_owned(),
        file(format!("{name}.pem")),
        "--peer-tls-key".to_owned(),
        file(format!("{name}.key")),
        "--peer-tls-ca".to_owned(),
        file("ca.pem".to_owned()),
    ];
    made.insert(key, flags.clone());
    flags
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB; `None` once the
/// process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Flips the bits of `mask` in the byte at `at` of the file at `path`, in place (through
/// the page cache, so a process that maps the file sees it at once, as after bit rot).
pub fn flip_bits(path: &Path, at: usize, mask: u8) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at as u64).unwrap();
    file.write_all_at(&[byte[0] ^ mask], at as u64).unwrap();
}
