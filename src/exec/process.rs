//! One worker process: started with piped stdio in its own process group, with a thread
//! each for its stdin (writes request chunks), stdout (parses answers) and stderr (logs
//! its lines under the worker's name).
//!
//! The threads are what makes a pipe usable from a shard: glommio has no pipe I/O, and a
//! blocking read must not stall the core. Answers reach the shard in batches over one
//! bounded channel per pool, so the hop costs a channel operation per batch, not per
//! record.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};

use crate::config::{ExecProtocol, ExecSpec};
use crate::exec::{Answer, ExecError, batched, json_lines};

/// What a worker's stdout reader reports, tagged with the pool slot and the generation
/// of the process it read.
#[derive(Debug)]
pub struct WorkerEvent {
    pub slot: usize,
    pub generation: u64,
    pub kind: EventKind,
}

#[derive(Debug)]
pub enum EventKind {
    Answers(Vec<Answer>),
    /// The worker broke the protocol; reading stopped.
    Bad(String),
    /// Its stdout ended: it exited or closed it.
    Closed,
}

/// A stderr line is cut to this length in the log.
const STDERR_LINE_MAX: usize = 16 << 10;

pub struct WorkerProcess {
    pub name: String,
    pub pid: u32,
    child: Child,
    stdin: Option<flume::Sender<Vec<u8>>>,
    exited: Option<ExitStatus>,
}

impl WorkerProcess {
    /// Starts the worker. `chunks` bounds the request chunks queued for its stdin.
    pub fn spawn(
        spec: &ExecSpec,
        name: String,
        slot: usize,
        generation: u64,
        chunks: usize,
        events: flume::Sender<WorkerEvent>,
    ) -> Result<WorkerProcess, ExecError> {
        let worker_name = name.clone();
        let spawn_error = |source| ExecError::Spawn {
            worker: worker_name.clone(),
            command: spec.command.clone(),
            dir: spec.dir.clone(),
            source,
        };
        let program = program_path(&spec.command[0], &spec.dir);
        let mut command = Command::new(program);
        command
            .args(&spec.command[1..])
            .current_dir(&spec.dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("FLOWD_WORKER", &name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: a kill reaches the programs it started, and a Ctrl-C meant
            // for flowd does not reach it (flowd stops it by closing its stdin).
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; it makes
        // the kernel kill the worker when flowd dies, even by SIGKILL.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = flume::bounded::<Vec<u8>>(chunks.max(1));
        let threads = [
            std::thread::Builder::new()
                .name(format!("flowd-worker-in-{pid}"))
                .spawn(move || {
                    let mut stdin = stdin;
                    // A write error means the worker is gone; its stdout reader reports that.
                    while let Ok(chunk) = rx.recv() {
                        if stdin.write_all(&chunk).and_then(|_| stdin.flush()).is_err() {
                            break;
                        }
                    }
                }),
            {
                let protocol = spec.protocol;
                let max = spec.max_answer_bytes;
                std::thread::Builder::new()
                    .name(format!("flowd-worker-out-{pid}"))
                    .spawn(move || read_answers(stdout, protocol, max, slot, generation, &events))
            },
            {
                let name = name.clone();
                std::thread::Builder::new()
                    .name(format!("flowd-worker-err-{pid}"))
                    .spawn(move || log_stderr(stderr, &name))
            },
        ];
        let mut worker = WorkerProcess {
            name,
            pid,
            child,
            stdin: Some(tx),
            exited: None,
        };
        for thread in threads {
            if let Err(e) = thread {
                worker.kill();
                return Err(spawn_error(e));
            }
        }
        Ok(worker)
    }

    /// Queues a chunk for its stdin; `false` when the worker no longer reads it.
    pub fn send(&self, chunk: Vec<u8>) -> bool {
        self.stdin.as_ref().is_some_and(|s| s.try_send(chunk).is_ok())
    }

    /// Closes its stdin once the queued chunks are written: a worker's cue to exit.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// SIGKILL to the worker and everything in its process group.
    pub fn kill(&mut self) {
        self.stdin = None;
        if self.try_wait().is_none() {
            // SAFETY: plain syscall; the group id is the worker's pid (process_group(0)),
            // and the worker is not reaped yet, so the id cannot have been reused.
            unsafe {
                libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL);
            }
        }
    }

    /// Its exit status, once it exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Kills it if still running and waits for it: no zombie is left behind.
    pub fn reap(&mut self) -> Option<ExitStatus> {
        self.kill();
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
        self.exited
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.reap();
    }
}

/// A program named by a relative path with a `/` is found from the working directory
/// the worker gets, not from wherever flowd was started.
fn program_path(program: &str, dir: &Path) -> std::path::PathBuf {
    let path = Path::new(program);
    if path.is_relative() && program.contains('/') {
        dir.join(path)
    } else {
        path.to_path_buf()
    }
}

fn read_answers(
    stdout: ChildStdout,
    protocol: ExecProtocol,
    max: usize,
    slot: usize,
    generation: u64,
    events: &flume::Sender<WorkerEvent>,
) {
    let send = |kind| {
        events
            .send(WorkerEvent {
                slot,
                generation,
                kind,
            })
            .is_ok()
    };
    type Next = Box<dyn FnMut() -> Result<Option<Vec<Answer>>, String>>;
    let mut next: Next = match protocol {
        ExecProtocol::JsonLines => {
            let mut reader = json_lines::AnswerReader::new(stdout, max);
            Box::new(move || reader.next_batch())
        }
        ExecProtocol::Batched => {
            let mut reader = batched::AnswerReader::new(stdout, max);
            Box::new(move || reader.next_batch())
        }
    };
    loop {
        let more = match next() {
            Ok(Some(answers)) => send(EventKind::Answers(answers)),
            Ok(None) => {
                send(EventKind::Closed);
                false
            }
            Err(reason) => {
                send(EventKind::Bad(reason));
                false
            }
        };
        if !more {
            return;
        }
    }
}

fn log_stderr(stderr: ChildStderr, name: &str) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(STDERR_LINE_MAX as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    tracing::info!(target: "flowd::worker", "[{name}] {text}");
                }
            }
        }
    }
}
