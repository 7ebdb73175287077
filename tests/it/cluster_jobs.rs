//! Jobs through any peer: a job sent to a peer that leads none of its partitions is
//! written where its partition is led, and its answer comes back over the peer link to
//! the peer holding the caller. The examples (`hello`, `chained` with an exec worker,
//! `search`'s scatter-gather) answer alike through every peer of three, replicated and
//! with one copy; the word stems of 1,500 sentences sent round-robin through three peers,
//! one SIGKILLed and restarted on the way, are each right when answered, and every job
//! sent once the cluster settled again is answered (`FLOWD_LONG_JOBS=10000` for the
//! README's run).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use flowd::client::{Client, ClientError};
use serde_json::{Value, json};

use crate::cluster::{one_at_a_time, replicated, served_by, start_file, wait_all_alive, wait_settled};
use crate::ingest::{Server, http, run_cli};
use crate::jobs::rust_hits;

/// `dataflows/NAME` as the current test runs it (its replica count), in `dir`, beside a
/// link to the examples' workers.
pub(crate) fn example_in(dir: &Path, name: &str) -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows");
    let text = std::fs::read_to_string(examples.join(name)).unwrap();
    let text = if replicated() {
        text
    } else {
        format!("{text}\n[cluster]\nreplicas = 1\n")
    };
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let workers = dir.join("workers");
    if !workers.exists() {
        std::os::unix::fs::symlink(examples.join("workers"), workers).unwrap();
    }
    file
}

/// Three peers of `file`, each seeded with the first, every partition led (the
/// dataflow's topics have `partitions` each).
pub(crate) fn three_of(file: &Path, dir: &Path, partitions: usize) -> Vec<Server> {
    let first = start_file(file, dir, "p1", &["--peer-listen", "127.0.0.1:0"]);
    let seed = first.peer.clone().unwrap();
    let extra = ["--peer-listen", "127.0.0.1:0", "--seeds", &seed];
    let servers = vec![
        first,
        start_file(file, dir, "p2", &extra),
        start_file(file, dir, "p3", &extra),
    ];
    let all: Vec<&Server> = servers.iter().collect();
    wait_all_alive(&all);
    wait_settled(&all, partitions);
    servers
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Every peer answers `hello`, `chained` (a jq stage, an exec worker, a jq stage) and
/// `search` (a scatter-gather over two branches) alike, over HTTP and the protocol, for
/// jobs of every partition: two partitions over three peers, so at least one peer leads
/// none of a job's partitions and every job it takes is answered from elsewhere.
pub(crate) fn examples_answer_through_every_peer() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();

    let servers = three_of(
        &example_in(dir.path(), "hello.toml"),
        &dir.path().join("hello"),
        2,
    );
    assert!(
        servers.iter().any(|s| served_by(s, "hello-requests").is_empty()),
        "a peer leads no partition of the job's topic"
    );
    for server in &servers {
        for n in 0..6 {
            let (code, body) = http(&server.http, "POST", "/jobs/hello", &format!("{{\"n\":{n}}}"));
            assert_eq!(
                (code, json_of(&body)),
                (200, json!({"hello": "world"})),
                "through {}",
                server.http
            );
        }
        let (code, out, err) = run_cli(
            &["send", "--to", &server.tcp, "hello", "--reply"],
            "{\"x\":1}\n{\"x\":2}\n{\"x\":3}\n{\"x\":4}\n",
        );
        assert_eq!(code, 0, "{err}");
        let answers: Vec<Value> = out.lines().map(json_of).collect();
        assert_eq!(
            answers,
            vec![json!({"hello": "world"}); 4],
            "through {}",
            server.tcp
        );
    }
    drop(servers);

    let servers = three_of(
        &example_in(dir.path(), "chained.toml"),
        &dir.path().join("chained"),
        2,
    );
    let labels = ["fizz", "buzz", "bang"];
    for server in &servers {
        for n in 0..8i64 {
            let (code, body) = http(&server.http, "POST", "/jobs/chained", &format!("{{\"n\":{n}}}"));
            assert_eq!(code, 200, "{body}");
            assert_eq!(
                json_of(&body),
                json!({"n": n, "double": n * 2, "steps": ["compute", "lookup", "finish"],
                       "label": labels[(n % 3) as usize], "total": n * 2 + 1}),
                "through {}",
                server.http
            );
        }
        // The worker refuses it: the failure comes back from the peer that ran it.
        let (code, body) = http(&server.http, "POST", "/jobs/chained", r#"{"n": "five"}"#);
        assert_eq!(code, 422, "{body}");
        assert!(body.contains(r#"stage \"lookup\""#), "{body}");
    }
    drop(servers);

    let servers = three_of(
        &example_in(dir.path(), "search.toml"),
        &dir.path().join("search"),
        2,
    );
    for server in &servers {
        for _ in 0..4 {
            let (code, body) = http(&server.http, "POST", "/jobs/search", r#"{"q": "rust"}"#);
            assert_eq!(code, 200, "{body}");
            assert_eq!(json_of(&body), rust_hits(), "through {}", server.http);
        }
    }
}

/// The word-stems dataflow as jobs: sentences to an exec stage of Python workers, whose
/// answers go back to the callers.
fn wordstems_jobs(dir: &Path) -> PathBuf {
    let replicas = if replicated() {
        ""
    } else {
        "\n[cluster]\nreplicas = 1\n"
    };
    let file = dir.join("wordstems-jobs.toml");
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/workers/wordstems.py");
    std::fs::write(
        &file,
        format!(
            "[engine]\ndurability = \"group\"\n\n[ingest]\ntcp = \"127.0.0.1:0\"\n{replicas}\n\
             [[topic]]\nname = \"sentences\"\npartitions = 4\n\n\
             [[topic]]\nname = \"stems\"\npartitions = 4\n\n\
             [[job]]\nname = \"stems\"\ntopic = \"sentences\"\ntimeout = \"10s\"\n\n\
             [[stage]]\nname = \"stems\"\nfrom = \"sentences\"\n\
             op = {{ exec = {{ command = [\"python3\", \"{}\"], workers = 2, concurrency = 16, timeout = \"10s\" }} }}\n\
             to = \"stems\"\n\n\
             [[stage]]\nname = \"answer\"\nfrom = \"stems\"\nop = \"reply\"\n",
            worker.display()
        ),
    )
    .unwrap();
    file
}

/// Where round-robin callers stand: the addresses they send through (read before each
/// job, so that a restarted peer's new address is taken up), the next job's number,
/// and their stop.
pub(crate) struct Callers {
    pub addrs: Arc<Vec<std::sync::RwLock<String>>>,
    pub next: Arc<AtomicUsize>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// A caller's thread: it returns the outcome of each job it sent, by number.
pub(crate) type Caller<O> = std::thread::JoinHandle<Vec<(usize, O)>>;

/// Four callers sending jobs 0, 1, 2, ... round-robin through `servers`' client
/// listeners until their stop or job `cap`: `call` makes job `n`'s outcome from a
/// connection to its peer (or why there is none) and says whether the connection is
/// still good. Each caller's thread returns its `(n, outcome)`s.
pub(crate) fn round_robin<O: Send + 'static>(
    servers: &[Server],
    cap: usize,
    call: impl Fn(usize, Result<&mut Client, String>) -> (O, bool) + Send + Sync + 'static,
) -> (Callers, Vec<Caller<O>>) {
    let callers = Callers {
        addrs: Arc::new(
            servers
                .iter()
                .map(|s| std::sync::RwLock::new(s.tcp.clone()))
                .collect(),
        ),
        next: Arc::new(AtomicUsize::new(0)),
        stop: Arc::default(),
    };
    let call = Arc::new(call);
    let threads = (0..4)
        .map(|_| {
            let (addrs, next, stop, call) = (
                Arc::clone(&callers.addrs),
                Arc::clone(&callers.next),
                Arc::clone(&callers.stop),
                Arc::clone(&call),
            );
            std::thread::spawn(move || {
                let mut clients: Vec<Option<(String, Client)>> = (0..addrs.len()).map(|_| None).collect();
                let mut outcomes = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let n = next.fetch_add(1, Ordering::AcqRel);
                    if n >= cap {
                        break;
                    }
                    let peer = n % addrs.len();
                    let addr = addrs[peer].read().unwrap().clone();
                    if clients[peer].as_ref().is_none_or(|(a, _)| *a != addr) {
                        clients[peer] = Client::connect(&addr).ok().map(|c| (addr.clone(), c));
                    }
                    let (outcome, keep) = match clients[peer].as_mut() {
                        None => call(n, Err(format!("cannot connect to {addr}"))),
                        Some((_, client)) => call(n, Ok(client)),
                    };
                    if !keep {
                        clients[peer] = None;
                    }
                    outcomes.push((n, outcome));
                }
                outcomes
            })
        })
        .collect();
    (callers, threads)
}

/// Job `n`'s sentence: unique, with a known number of words.
fn sentence(n: usize) -> String {
    let words = [
        "jumping", "foxes", "jumped", "over", "lazy", "dogs", "running", "quickly",
    ];
    let mut out = format!("job {n}");
    for i in 0..2 + n % 6 {
        out.push(' ');
        out.push_str(words[(n + i * 3) % words.len()]);
    }
    out
}

/// What one job came to.
enum Outcome {
    /// Not sent yet (the run ended first).
    Unsent,
    Answered(Value),
    /// Refused, timed out, or its peer was unreachable: why.
    Failed(String),
}

/// 10,000 jobs (1,500 in the normal tests) sent round-robin through three peers by four
/// callers; the peer leading most of their partitions is SIGKILLed once a fifth are
/// answered and started again
/// (same address, same data) once two fifths are. Every answered job got its own
/// sentence's answer, and every job sent once all three lead or follow again is answered.
pub(crate) fn word_stems_jobs_through_three_peers_with_one_sigkilled() {
    let _serial = one_at_a_time();
    let jobs: usize = crate::support::env_or("FLOWD_LONG_JOBS", 1500);
    let dir = tempfile::tempdir().unwrap();
    let file = wordstems_jobs(dir.path());
    let mut servers = three_of(&file, dir.path(), 4);
    // The peer killed leads partitions of the jobs' topic (peers started one at a time
    // may leave all of them to the first).
    let victim = (0..3)
        .max_by_key(|&i| served_by(&servers[i], "sentences").len())
        .unwrap();
    assert!(!served_by(&servers[victim], "sentences").is_empty());
    let answered = Arc::new(AtomicU64::new(0));
    let failures: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let (answered_in, failures_in) = (Arc::clone(&answered), Arc::clone(&failures));
    let (Callers { addrs, next, .. }, callers) = round_robin(&servers, jobs, move |n, client| {
        let (outcome, keep) = match client {
            Err(why) => (Outcome::Failed(why), true),
            Ok(client) => match client.job(
                "stems",
                None,
                sentence(n).as_bytes(),
                Some(Duration::from_secs(10)),
            ) {
                Ok(answer) => {
                    answered_in.fetch_add(1, Ordering::AcqRel);
                    (
                        Outcome::Answered(serde_json::from_slice(&answer.value).unwrap()),
                        true,
                    )
                }
                Err(ClientError::Server { message, .. }) => (Outcome::Failed(message), true),
                Err(other) => (Outcome::Failed(other.to_string()), false),
            },
        };
        if let Outcome::Failed(why) = &outcome {
            *failures_in
                .lock()
                .unwrap()
                .entry(why.chars().take(70).collect())
                .or_default() += 1;
        }
        (outcome, keep)
    });

    // A stall leaves the peers' logs, their status and why jobs failed, to look at.
    let answered_at_least = |count: u64, servers: &[Server]| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while answered.load(Ordering::Acquire) < count && next.load(Ordering::Acquire) < jobs {
            if std::time::Instant::now() > deadline {
                let keep = std::env::temp_dir().join(format!("flowd-jobs-stall-{}", std::process::id()));
                std::fs::create_dir_all(&keep).unwrap();
                for (i, server) in servers.iter().enumerate() {
                    std::fs::write(keep.join(format!("p{}.log", i + 1)), server.log.text()).unwrap();
                    if let Ok(mut client) = Client::connect(&server.tcp)
                        && let Ok(status) = client.status(true)
                    {
                        std::fs::write(keep.join(format!("p{}.status.json", i + 1)), status.to_string())
                            .unwrap();
                    }
                }
                panic!(
                    "jobs stopped being answered ({} of {count} answered); failures so far: {:?}; logs in {}",
                    answered.load(Ordering::Acquire),
                    failures.lock().unwrap(),
                    keep.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    answered_at_least(jobs as u64 / 5, &servers);
    let killed_at = answered.load(Ordering::Acquire);
    let at = servers[victim].peer.clone().unwrap();
    let other = servers[(victim + 1) % 3].peer.clone().unwrap();
    servers[victim].kill9();
    assert!(
        killed_at < jobs as u64 * 2 / 5,
        "the kill landed mid-run ({killed_at} of {jobs} answered)"
    );
    answered_at_least(jobs as u64 * 2 / 5, &servers);
    let name = format!("p{}", victim + 1);
    servers[victim] = start_file(
        &file,
        dir.path(),
        &name,
        &["--peer-listen", &at, "--seeds", &other],
    );
    *addrs[victim].write().unwrap() = servers[victim].tcp.clone();
    {
        let all: Vec<&Server> = servers.iter().collect();
        wait_all_alive(&all);
        wait_settled(&all, 4);
    }
    let settled_at = next.load(Ordering::Acquire);
    assert!(
        settled_at < jobs,
        "jobs are sent after the failover ({settled_at} of {jobs} were before)"
    );
    let mut outcomes: Vec<Outcome> = (0..jobs).map(|_| Outcome::Unsent).collect();
    for caller in callers {
        for (n, outcome) in caller.join().unwrap() {
            outcomes[n] = outcome;
        }
    }

    let mut failed_before = 0;
    for (n, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Answered(answer) => {
                let sent = sentence(n);
                assert_eq!(
                    answer["sentence"],
                    json!(sent),
                    "job {n} got another job's answer"
                );
                assert_eq!(
                    answer["total"],
                    json!(sent.split(' ').count()),
                    "job {n}'s word count"
                );
            }
            Outcome::Failed(_) if n < settled_at => failed_before += 1,
            Outcome::Failed(why) => panic!("job {n}, sent after the failover, failed: {why}"),
            Outcome::Unsent => panic!("job {n} was never sent"),
        }
    }
    let answered = answered.load(Ordering::Acquire);
    assert_eq!(answered as usize + failed_before, jobs);
    // The exec stage went on where the killed leader stopped: no sentence's stems are
    // written twice, and every answered job's are there.
    let mut written: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (_, _, value) in crate::cluster::tail(&servers[0], "stems") {
        *written
            .entry(json_of(&value)["sentence"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = written.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "stems written more than once: {twice:?}");
    for (n, outcome) in outcomes.iter().enumerate() {
        if let Outcome::Answered(_) = outcome {
            assert!(
                written.contains_key(&sentence(n)),
                "job {n}'s stems are not in the topic"
            );
        }
    }
    let logs: String = servers.iter().map(|s| s.log.text()).collect();
    eprintln!(
        "{} batches sent again to a new leader, {} of them found written already",
        logs.matches("goes to its next leader").count(),
        logs.matches("not written twice").count()
    );
    eprintln!(
        "word stems through three peers: {jobs} jobs, {answered} answered, {failed_before} failed around the kill (answered {killed_at} before it), the last {} sent after the failover all answered; failures: {:?}",
        jobs - settled_at,
        failures.lock().unwrap()
    );
}

mod replicated {
    #[test]
    fn examples_answer_through_every_peer() {
        super::examples_answer_through_every_peer();
    }

    #[test]
    fn word_stems_jobs_through_three_peers_with_one_sigkilled() {
        super::word_stems_jobs_through_three_peers_with_one_sigkilled();
    }
}

mod one_copy {
    #[test]
    fn examples_answer_through_every_peer() {
        crate::cluster::one_copy();
        super::examples_answer_through_every_peer();
    }
}
