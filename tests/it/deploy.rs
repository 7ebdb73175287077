//! What `deploy/` ships for operators, checked against a running flowd: every metric the
//! Grafana dashboard (`deploy/grafana/flowd.json`) charts is one flowd exports.

use std::collections::BTreeSet;

use crate::ingest::{Server, dataflow, http, run_cli};

/// Every `flowd_*` metric name in the dashboard's queries.
pub(crate) fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/flowd.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} charts nothing", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("flowd_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

/// The dashboard's metrics whose names start with `prefix` that `metrics` (a
/// `/metrics` body) lacks.
pub(crate) fn missing(metrics: &str, prefix: &str) -> Vec<String> {
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    dashboard_metrics()
        .into_iter()
        .filter(|name| name.starts_with(prefix) && !exported.contains(name.as_str()))
        .collect()
}

#[test]
fn every_metric_the_grafana_dashboard_charts_is_exported() {
    let names = dashboard_metrics();
    assert!(names.len() >= 20, "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dataflow(dir.path(), "group"));
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "events"], "a\nb\n");
    assert_eq!(code, 0, "{err}");
    let (status, metrics) = http(&server.http, "GET", "/metrics", "");
    assert_eq!(status, 200);
    // Replicas exist in a replicated cluster only: checked there
    // (`cluster_status::replicated::the_status_through_any_peer_shows_the_whole_cluster`).
    let missing: Vec<String> = missing(&metrics, "flowd_")
        .into_iter()
        .filter(|name| !name.starts_with("flowd_replica_"))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard charts metrics flowd does not export: {missing:?}"
    );
}

/// `cmd` with `STORAGE_DRIVER=vfs` (no overlay mounts needed), bounded.
fn containers(program: &str, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(program);
    command.args(args).env("STORAGE_DRIVER", "vfs");
    crate::support::run_bounded(&mut command, b"")
}

/// Removes the test's container and image, however the test ends.
struct Built {
    image: String,
    container: String,
}

impl Drop for Built {
    fn drop(&mut self) {
        containers("podman", &["rm", "-f", &self.container]);
        containers("podman", &["rmi", "-f", &self.image]);
    }
}

/// How `podman run` starts the image here: runc (crun refuses this machine's hybrid
/// cgroups), limits at or under the test's own (raising them is refused), and io_uring
/// allowed (the default seccomp profile refuses it; see `runtime::plan::io_uring_allowed`).
fn podman_run(name: &str) -> Vec<String> {
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
    [
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        "--security-opt",
        "seccomp=unconfined",
        "--ulimit",
        &format!("nofile={}:{}", nofile.rlim_cur, nofile.rlim_max),
        "--ulimit",
        "nproc=4096:4096",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `scripts/image.sh` builds the image from the test's flowd with buildah, `FROM
/// scratch`, and `podman run` starts it: flowd runs as user 65532 on its volume, answers
/// `/readyz`, takes records and stops on SIGTERM. Where containers cannot run, the
/// image's root filesystem runs under chroot as that user instead, and the test says so.
#[test]
fn the_image_builds_from_the_binary_and_answers_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let built = Built {
        image: format!("localhost/flowd:it-{pid}"),
        container: format!("flowd-it-{pid}"),
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image.sh");
    let mut build = std::process::Command::new(script);
    build
        .env("FLOWD_BIN", env!("CARGO_BIN_EXE_flowd"))
        .env("FLOWD_IMAGE", &built.image)
        .env("STORAGE_DRIVER", "vfs");
    let out = crate::support::run_bounded(&mut build, b"");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/image.sh failed: {said}");
    assert!(said.contains(&format!("built {}", built.image)), "{said}");
    // No base image: one layer, the root scripts/image.sh made.
    let history = containers("podman", &["history", "--format", "{{.CreatedBy}}", &built.image]);
    assert!(history.status.success());
    assert_eq!(
        String::from_utf8_lossy(&history.stdout).lines().count(),
        1,
        "one layer, no base image"
    );
    let inspect = containers("podman", &["image", "inspect", &built.image]);
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &config[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/flowd", "run"])
    );
    assert!(config["Volumes"]["/data"].is_object(), "{config}");

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).unwrap();
    let flowd_args = [
        "/etc/flowd/dataflow.toml",
        "--data-dir",
        "/data/flowd",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    let volume = format!("{}:/data", data.display());
    let mut probe = podman_run(&built.container);
    probe.extend([
        "--entrypoint".into(),
        "/usr/local/bin/flowd".into(),
        built.image.clone(),
        "--version".into(),
    ]);
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let can_run = containers("podman", &probe);
    let (mut server, data_dir) = if can_run.status.success() {
        let mut args = podman_run(&built.container);
        args.extend(["-v".into(), volume, built.image.clone()]);
        args.extend(flowd_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (Server::start_program("podman", &args), data.join("flowd"))
    } else {
        eprintln!(
            "containers cannot run on this machine ({}): running the image's root filesystem with chroot, as user 65532, instead",
            String::from_utf8_lossy(&can_run.stderr).trim()
        );
        let root = dir.path().join("root");
        let mut only_root = std::process::Command::new(script);
        only_root
            .env("FLOWD_BIN", env!("CARGO_BIN_EXE_flowd"))
            .arg("--rootfs")
            .arg(&root);
        assert!(crate::support::run_bounded(&mut only_root, b"").status.success());
        // What a container runtime gives it: /proc, /sys and /dev, in a mount
        // namespace of its own.
        let script = format!(
            "mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && mount --rbind /dev {root}/dev && \
             exec chroot --userspec=65532:65532 {root} /usr/local/bin/flowd run {}",
            flowd_args.join(" "),
            root = root.display()
        );
        let args = ["--mount", "--propagation", "private", "sh", "-c", script.as_str()];
        (
            Server::start_program("unshare", &args),
            dir.path().join("root/data/flowd"),
        )
    };
    let (status, body) = http(&server.http, "GET", "/readyz", "");
    assert_eq!((status, body.trim()), (200, r#"{"ready":true}"#));
    let (code, _, err) = run_cli(&["send", "--to", &server.tcp, "events"], "a\nb\n");
    assert_eq!(code, 0, "{err}");
    // The data is flowd's own, on the volume.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&data_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65532, 0o700));
    let (code, out, err) = run_cli(&["tail", "--from", &server.tcp, "events", "--json"], "");
    assert_eq!((code, out.lines().count()), (0, 2), "{out}{err}");
    server.signal(libc::SIGTERM);
    if can_run.status.success() {
        containers("podman", &["stop", "-t", "30", &built.container]);
    }
    let exit = server.exit_within(std::time::Duration::from_secs(40));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}: {}",
        server.log.text()
    );
}
