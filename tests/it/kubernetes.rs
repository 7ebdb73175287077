//! The Kubernetes manifests run for real, without Kubernetes: three flowd processes,
//! each in a network namespace of its own (a pod), started with exactly the arguments
//! the StatefulSet gives pods flowd-0, flowd-1 and flowd-2 (`deploy/render.py pod`
//! expands them as the kubelet does), their volumes' paths mapped to directories here.
//! Each namespace's `/etc/hosts` (`ip netns exec` mounts `/etc/netns/NS/hosts`) names
//! every pod's Service address, as the cluster's DNS would. They form one cluster; then
//! a rolling restart, one pod at a time from the highest ordinal as Kubernetes does it
//! (SIGTERM, the grace period, start, wait for `/readyz`), while a producer goes on
//! through whichever pod answers (the client Service): every acked record is there
//! once, at its acked partition and offset. The pods speak mutual TLS to each other
//! with one peer certificate naming their Services by a pattern (`peerTls`), as the
//! chart's values tell how to make it. Also: the chart renders, lints and validates,
//! and its StatefulSet's addresses, probes and budget are the ones wanted; and a pod
//! back at another address under its Service name (a headless Service) is taken in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::one_at_a_time;
use crate::ingest::{Server, http, run_cli};
use crate::nemesis::{Acked, Doors, Net, producer_through};
use crate::support::{poll, run_bounded, wait_until};

/// The namespace the pods run in, as far as their names go.
const NAMESPACE: &str = "flowd-it";
const PODS: usize = 3;
/// The chart's values for mutual TLS between the pods.
const PEER_TLS: &str = "peerTls.secret=flowd-peer-tls";

fn render(args: &[&str]) -> std::process::Output {
    let mut command = Command::new("python3");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/render.py"))
        .args(args);
    let out = run_bounded(&mut command, b"");
    assert!(
        out.status.success(),
        "deploy/render.py {}: {}{} (it needs: pip install helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml)",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What pod `name` of the rendered StatefulSet runs (`deploy/render.py pod`).
fn pod_spec(name: &str, sets: &[&str]) -> Value {
    let mut args = vec!["pod", name, "--namespace", NAMESPACE];
    for set in sets {
        args.extend(["--set", set]);
    }
    serde_json::from_slice(&render(&args).stdout).unwrap()
}

fn arg_after<'a>(spec: &'a Value, flag: &str) -> &'a str {
    let args = spec["args"].as_array().unwrap();
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[at + 1].as_str().unwrap()
}

fn service(i: usize) -> String {
    format!("flowd-{i}.{NAMESPACE}.svc.cluster.local")
}

#[test]
fn the_chart_renders_lints_and_validates_and_its_pods_find_each_other_by_name() {
    let out = render(&["check"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));
    let spec = pod_spec("flowd-2", &[]);
    // Each pod is reached at its own Service's name and binds every address; all seed
    // from every pod's, pod 0's first (it founds the cluster).
    assert_eq!(arg_after(&spec, "--peer-listen"), format!("{}:7946", service(2)));
    assert_eq!(arg_after(&spec, "--peer-bind"), "0.0.0.0:7946");
    let seeds: Vec<String> = (0..PODS).map(|i| format!("{}:7946", service(i))).collect();
    assert_eq!(arg_after(&spec, "--seeds"), seeds.join(","));
    assert_eq!(arg_after(&spec, "--cores"), "2", "the CPU limit");
    assert_eq!(
        arg_after(&spec, "--credentials"),
        "/etc/flowd/credentials/credentials"
    );
    assert_eq!(
        spec["probes"],
        serde_json::json!({"liveness": "/healthz", "readiness": "/readyz"})
    );
    // The grace period outlasts the hand-over on SIGTERM.
    assert!(spec["grace_seconds"].as_u64().unwrap() > 30 + 5);
    for limit in ["1500m", "1.5", "2"] {
        let cores = pod_spec("flowd-0", &[&format!("resources.limits.cpu={limit}")]);
        assert_eq!(
            arg_after(&cores, "--cores"),
            "2",
            "a CPU limit of {limit}, rounded up"
        );
    }
    // The disruption budget keeps a majority.
    for (replicas, min) in [(1, 1), (3, 2), (4, 3), (5, 3)] {
        let out = render(&["render", "--json", "--set", &format!("replicas={replicas}")]);
        let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let pdb = docs.iter().find(|d| d["kind"] == "PodDisruptionBudget").unwrap();
        assert_eq!(pdb["spec"]["minAvailable"], min, "{replicas} peers");
        let services = docs.iter().filter(|d| d["kind"] == "Service").count();
        assert_eq!(
            services,
            replicas + 2,
            "one Service per pod, the headless and the client's"
        );
    }
    // Without peer TLS the peer port binds every address in plaintext: --insecure says
    // so. With it, and TLS and credentials on the doors, nothing is left open.
    let flags = |spec: &Value| -> Vec<String> {
        let args = spec["args"].as_array().unwrap();
        args.iter().map(|a| a.as_str().unwrap().to_string()).collect()
    };
    assert!(flags(&spec).contains(&"--insecure".to_string()));
    assert!(!flags(&spec).contains(&"--peer-tls-cert".to_string()));
    let secured = pod_spec("flowd-1", &[PEER_TLS, "tls.secret=flowd-tls"]);
    assert!(!flags(&secured).contains(&"--insecure".to_string()), "{secured}");
    assert_eq!(
        arg_after(&secured, "--peer-tls-cert"),
        "/etc/flowd/peer-tls/tls.crt"
    );
    assert_eq!(
        arg_after(&secured, "--peer-tls-key"),
        "/etc/flowd/peer-tls/tls.key"
    );
    assert_eq!(arg_after(&secured, "--peer-tls-ca"), "/etc/flowd/peer-tls/ca.crt");
    let doors_plain = pod_spec("flowd-1", &[PEER_TLS]);
    assert!(flags(&doors_plain).contains(&"--insecure".to_string()));
    // No credentials and not insecure: refused at render time, saying what to give.
    let mut command = Command::new("python3");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/render.py"))
        .args(["render", "--set", "credentials.secret="]);
    let out = run_bounded(&mut command, b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give credentials.secret"));
}

/// `/etc/netns/NS/hosts` for each pod: every pod's Service name at its address.
struct Hosts(Vec<PathBuf>);

impl Hosts {
    fn write(net: &Net) -> Hosts {
        Hosts::placed(net, &[0, 1, 2], PODS)
    }

    /// Pod `i`'s Service name at namespace `places[i]`'s address, in the `/etc/hosts` of
    /// each of the first `namespaces` namespaces.
    fn placed(net: &Net, places: &[usize; PODS], namespaces: usize) -> Hosts {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (i, place) in places.iter().enumerate() {
            text.push_str(&format!("{} {}\n", net.ip(*place), service(i)));
        }
        let dirs: Vec<PathBuf> = (0..namespaces)
            .map(|i| Path::new("/etc/netns").join(net.ns(i)))
            .collect();
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("hosts"), &text).unwrap();
        }
        Hosts(dirs)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Pod `i`: `flowd run` (the image's entry point) with the StatefulSet's arguments, in
/// its namespace, each volume's mount path mapped to a directory of the test's.
fn start_pod(net: &Net, dir: &Path, i: usize, spec: &Value) -> Server {
    start_pod_in(net, dir, i, i, spec)
}

/// Pod `i` as `start_pod` starts it, with its volumes, in namespace `place`.
fn start_pod_in(net: &Net, dir: &Path, i: usize, place: usize, spec: &Value) -> Server {
    let volumes: Vec<(String, PathBuf)> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .map(|mount| {
            let local = match mount.as_str() {
                "/data" => dir.join(format!("pod-{i}")),
                "/etc/flowd/dataflow.toml" => dir.join("dataflow.toml"),
                "/etc/flowd/credentials" => dir.join("credentials"),
                "/etc/flowd/peer-tls" => dir.join("peer-tls"),
                "/tmp" => std::env::temp_dir(),
                other => panic!("the StatefulSet mounts {other}, which this test does not know"),
            };
            (mount, local)
        })
        .collect();
    let mut args = net.flowd_run(place);
    for arg in spec["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        let mapped = volumes.iter().find_map(|(mount, local)| {
            (arg == mount).then(|| local.display().to_string()).or_else(|| {
                arg.strip_prefix(&format!("{mount}/"))
                    .map(|rest| local.join(rest).display().to_string())
            })
        });
        assert!(mapped.is_some() || !arg.starts_with('/'), "{arg} is on no volume");
        args.push(mapped.unwrap_or_else(|| arg.to_string()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pod = Server::start_program("ip", &args);
    // It binds every address: it is reached at its own.
    for door in [&mut pod.tcp, &mut pod.http] {
        *door = door.replace("0.0.0.0", &net.ip(place));
    }
    pod
}

fn ready(pod: &Server) -> bool {
    let addr = pod.http.parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        && http(&pod.http, "GET", "/readyz", "").0 == 200
}

/// `(partition, offset) -> value` of every record, read through `pod`.
fn read_all(pod: &Server, token: &str) -> Option<BTreeMap<(u32, u64), String>> {
    let (code, out, _) = run_cli(
        &["tail", "--from", &pod.tcp, "--token", token, "events", "--json"],
        "",
    );
    (code == 0).then(|| {
        out.lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                (
                    (
                        v["partition"].as_u64().unwrap() as u32,
                        v["offset"].as_u64().unwrap(),
                    ),
                    v["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    })
}

/// What the pods of a test run with: their specs as rendered, a token that may produce,
/// read and see, and the topic's partitions; the dataflow, the credentials and the peer
/// Secret written in `dir`.
struct Setup {
    specs: Vec<Value>,
    token: String,
    partitions: u32,
}

fn set_up(dir: &Path) -> Setup {
    let specs: Vec<Value> = (0..PODS)
        .map(|i| pod_spec(&format!("flowd-{i}"), &[PEER_TLS]))
        .collect();
    std::fs::write(dir.join("dataflow.toml"), specs[0]["dataflow"].as_str().unwrap()).unwrap();
    let partitions: u32 = {
        let text = specs[0]["dataflow"].as_str().unwrap();
        let line = text.lines().find(|l| l.starts_with("partitions")).unwrap();
        line.split('=').nth(1).unwrap().trim().parse().unwrap()
    };
    // The Secret's credentials file, with a token that may produce, read and see.
    std::fs::create_dir(dir.join("credentials")).unwrap();
    let file = dir.join("credentials/credentials").display().to_string();
    let (code, out, err) = run_cli(
        &[
            "token",
            "add",
            "it",
            "--allow",
            "produce:*,consume:*,group:*,status",
            "--credentials",
            &file,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let token = out.split_whitespace().last().unwrap().to_string();
    // The peer Secret as values.yaml says to make it: one certificate for every pod,
    // naming their Services by a pattern (their addresses are not known beforehand).
    let pki = dir.join("pki").display().to_string();
    let pattern = format!("*.{NAMESPACE}.svc.cluster.local");
    for args in [
        vec!["cert", "ca", "--dir", &pki],
        vec![
            "cert",
            "issue",
            "peers",
            "--dir",
            &pki,
            "--cluster",
            "flowd",
            "--host",
            &pattern,
        ],
    ] {
        let (code, _, err) = run_cli(&args, "");
        assert_eq!(code, 0, "flowd {args:?}: {err}");
    }
    let secret = dir.join("peer-tls");
    std::fs::create_dir(&secret).unwrap();
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("peers.pem", "tls.crt"),
        ("peers.key", "tls.key"),
    ] {
        std::fs::copy(dir.join("pki").join(from), secret.join(to)).unwrap();
    }

    Setup {
        specs,
        token,
        partitions,
    }
}

/// Each pod lists exactly `want` (peer addresses, sorted) alive, within 60 s.
/// `flowd status --local --json` of `pod`.
fn local_status(pod: &Server, token: &str) -> Value {
    let (code, out, err) = run_cli(
        &[
            "status", "--local", "--from", &pod.tcp, "--token", token, "--json",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn all_see_alive(pods: &[Server], token: &str, want: &[String]) {
    for pod in pods {
        let mut seen = Value::Null;
        let converged = poll(Duration::from_secs(60), Duration::from_millis(200), || {
            seen = local_status(pod, token)["peers"].clone();
            let mut alive: Vec<String> = seen
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["state"] == "alive")
                .map(|p| p["addr"].as_str().unwrap().to_string())
                .collect();
            alive.sort();
            (alive == want).then_some(())
        });
        assert!(
            converged.is_some(),
            "{} does not see {want:?} alive within 60 s; its peers: {seen}",
            pod.tcp
        );
    }
}

#[test]
fn three_pods_with_the_statefulsets_arguments_form_one_cluster_and_restart_one_at_a_time_losing_no_acked_record()
 {
    let _serial = one_at_a_time();
    let net = Net::new(PODS);
    let _hosts = Hosts::write(&net);
    let dir = tempfile::tempdir().unwrap();
    let Setup {
        specs,
        token,
        partitions,
    } = set_up(dir.path());
    // podManagementPolicy: Parallel: all three at once.
    let mut pods: Vec<Server> = (0..PODS)
        .map(|i| start_pod(&net, dir.path(), i, &specs[i]))
        .collect();
    wait_until("every pod ready", Duration::from_secs(120), || {
        pods.iter().all(ready)
    });
    // One cluster: each pod lists all three, at their Services' addresses, alive. Ready
    // does not wait for that (a pod serves once its own partitions are placed), and on a
    // loaded machine gossip may suspect a peer for a moment while all start at once: so
    // each pod's view must come to it, within a bound.
    let want: Vec<String> = (0..PODS).map(|i| format!("{}:7946", net.ip(i))).collect();
    all_see_alive(&pods, &token, &want);

    // The peer port speaks TLS: a plaintext peer is told so and let in to nothing.
    let mut plain = std::net::TcpStream::connect((net.ip(1).as_str(), 7946)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    plain.write_all(b"HELLO, a plaintext stranger\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains("this peer's port speaks TLS"),
        "a plaintext peer got: {answer:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    // Through whichever pod answers, as through the client Service.
    let doors = Doors {
        addrs: pods.iter().map(|p| p.tcp.clone()).collect(),
        token: Some(token.clone()),
        partitions,
    };
    let producing = producer_through(doors, "r".into(), Arc::clone(&stop), Arc::clone(&acked));
    let count = || acked.lock().unwrap().len();
    wait_until("the producer's first acks", Duration::from_secs(60), || {
        count() >= 200
    });
    let grace = Duration::from_secs(specs[0]["grace_seconds"].as_u64().unwrap());
    // A rolling update: the highest ordinal first, each pod ready before the next goes.
    for i in (0..PODS).rev() {
        let exit = pods[i].terminate(grace);
        assert_eq!(
            exit,
            Some(true),
            "flowd-{i} leaves within its grace period: {}",
            pods[i].log.text()
        );
        pods[i] = start_pod(&net, dir.path(), i, &specs[i]);
        wait_until(
            &format!("flowd-{i} ready again"),
            Duration::from_secs(120),
            || ready(&pods[i]),
        );
        let before = count();
        wait_until("acks go on", Duration::from_secs(60), || count() >= before + 100);
    }
    stop.store(true, Ordering::Release);
    let failed = producing.join().unwrap();
    let acked = acked.lock().unwrap().clone();

    // Pod 0's volume lost: it comes back empty with the same arguments (its seeds name
    // itself first) and the running cluster takes it in; it founds no second one.
    assert_eq!(pods[0].terminate(grace), Some(true));
    std::fs::remove_dir_all(dir.path().join("pod-0")).unwrap();
    pods[0] = start_pod(&net, dir.path(), 0, &specs[0]);
    wait_until(
        "flowd-0 ready on an empty volume",
        Duration::from_secs(120),
        || ready(&pods[0]),
    );
    let group = |pod: &Server| {
        let (_, out, _) = run_cli(
            &[
                "status", "--local", "--from", &pod.tcp, "--token", &token, "--json",
            ],
            "",
        );
        let status: Value = serde_json::from_str(&out).unwrap_or_default();
        let mut voters: Vec<String> = status["metadata_group"]["voters"]
            .as_array()
            .map(|v| v.iter().map(|a| a.as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default();
        voters.sort();
        (
            status["metadata_group"]["leader"].as_str().map(str::to_string),
            voters,
        )
    };
    let mut groups = Vec::new();
    let one = crate::support::poll(Duration::from_secs(60), Duration::from_millis(200), || {
        groups = pods.iter().map(group).collect::<Vec<_>>();
        (groups[0].0.is_some() && groups[0].1.len() == PODS && groups.iter().all(|g| *g == groups[0]))
            .then_some(())
    });
    assert!(
        one.is_some(),
        "one metadata group of {PODS} voters, one leader: {groups:?}"
    );

    // Every acked record once, where it was acked, through every pod.
    for pod in &pods {
        let mut last = BTreeMap::new();
        let whole = wait_until("every acked record readable", Duration::from_secs(60), || {
            last = read_all(pod, &token).unwrap_or_default();
            acked.values().all(|at| last.contains_key(at))
        });
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for value in last.values() {
            *seen.entry(value.as_str()).or_default() += 1;
        }
        for (value, at) in &acked {
            assert_eq!(
                last.get(at),
                Some(value),
                "acked {value} at {at:?}, read through {}",
                pod.tcp
            );
            assert_eq!(seen.get(value.as_str()), Some(&1), "{value} once");
        }
        eprintln!(
            "kubernetes: {} acked records read through {} after {whole:?} ({failed} refused or lost connections while pods restarted)",
            acked.len(),
            pod.tcp
        );
    }
}

/// A pod back at another address under its Service name (a headless Service, where the
/// name is the pod's own address) is taken in by the pods that found the name elsewhere
/// when they started: its certificate names only the pattern of the Services' names,
/// so they look the names up again (`tls::peer`). It comes back with its volume.
#[test]
fn a_pod_back_at_another_address_under_its_name_is_taken_in_again() {
    let _serial = one_at_a_time();
    // A fourth namespace: where flowd-2 comes back.
    let net = Net::new(PODS + 1);
    let _hosts = Hosts::placed(&net, &[0, 1, 2], PODS + 1);
    let dir = tempfile::tempdir().unwrap();
    let Setup { specs, token, .. } = set_up(dir.path());
    let mut pods: Vec<Server> = (0..PODS)
        .map(|i| start_pod(&net, dir.path(), i, &specs[i]))
        .collect();
    wait_until("every pod ready", Duration::from_secs(120), || {
        pods.iter().all(ready)
    });
    let at = |places: [usize; PODS]| -> Vec<String> {
        let mut want: Vec<String> = places.iter().map(|p| format!("{}:7946", net.ip(*p))).collect();
        want.sort();
        want
    };
    all_see_alive(&pods, &token, &at([0, 1, 2]));
    let grace = Duration::from_secs(specs[0]["grace_seconds"].as_u64().unwrap());
    assert_eq!(pods[2].terminate(grace), Some(true));
    // Written over in place: each running pod's /etc/hosts is a bind mount of its file.
    let _moved = Hosts::placed(&net, &[0, 1, 3], PODS + 1);
    pods[2] = start_pod_in(&net, dir.path(), 2, 3, &specs[2]);
    wait_until(
        "flowd-2 ready at its new address",
        Duration::from_secs(120),
        || ready(&pods[2]),
    );
    all_see_alive(&pods, &token, &at([0, 1, 3]));
    assert!(
        pods[0].log.wait_for(
            &["the peer name flowd-2.", "is now found at"],
            Duration::from_secs(10)
        ),
        "{}",
        pods[0].log.text()
    );
    // The metadata group follows: every pod names the voters where they are now, the
    // moved one too (it has the entry that says so), and all have applied as far.
    let mut groups = Vec::new();
    let followed = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        groups = pods
            .iter()
            .map(|p| local_status(p, &token)["metadata_group"].clone())
            .collect();
        let applied: Vec<u64> = groups.iter().map(|g| g["applied"].as_u64().unwrap()).collect();
        (groups
            .iter()
            .all(|g| crate::replication::group_voters(g) == at([0, 1, 3]))
            && applied.iter().all(|a| *a == applied[0]))
        .then_some(())
    });
    assert!(
        followed.is_some(),
        "the metadata group does not follow flowd-2 to its new address within 60 s: {groups:#?}"
    );
    assert!(
        pods.iter()
            .any(|p| p.log.text().contains("back at another address")),
        "the leader logs the move"
    );
}
