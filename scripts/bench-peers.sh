#!/usr/bin/env bash
# flowd against the systems a user would pick instead, on the same workloads, in one run on
# this machine: Redis Streams, NATS JetStream and pipeproc. Installs what it needs (Debian
# packages, the pipeproc npm package, tools/peerload), starts each server on a loopback
# port, stops it by its pid, and prints a markdown table with each row's persistence and
# flowd's ratio to the best other system. All data dirs live under one work dir on disk.
# Usage: [RECORDS=1000000] [REQUESTS=20000] [EXEC_RECORDS=1000] [SIZE=100] scripts/bench-peers.sh [--keep DIR]
#   EXEC_RECORDS  records for pipeproc's systemProc run (tens per second: keep it small)
#   --keep DIR   also write every run's JSON report (results.jsonl) and the table there
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
records="${RECORDS:-1000000}"
requests="${REQUESTS:-20000}"
exec_records="${EXEC_RECORDS:-1000}"
size="${SIZE:-100}"
batch=1000
keep=""
case "${1:-}" in
  --keep) keep="${2:?--keep takes a directory}"; mkdir -p "$keep" ;;
  "") ;;
  *) echo "usage: $0 [--keep DIR]" >&2; exit 2 ;;
esac

say() { echo "== $*" >&2; }

# --- what the run needs ---------------------------------------------------------------
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
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

say "installing pipeproc from npm"
mkdir -p "$work/pipeproc"
cp scripts/peers/package.json scripts/peers/pipeproc-bench.js "$work/pipeproc/"
(cd "$work/pipeproc" && npm install --no-audit --no-fund --loglevel=error >/dev/null)

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

# --- NATS JetStream -------------------------------------------------------------------
# nats-server before 2.10 has no per-write sync for the file store (it syncs every two
# minutes); from 2.10 `sync_interval: always` makes an ack mean fsynced.
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

# --- pipeproc -------------------------------------------------------------------------
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

# --- flowd ----------------------------------------------------------------------------
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
    return w.split(",")[0]
kinds = ["ingest", "consume + ack", "worker processes", "request/reply"]
order.sort(key=lambda w: (kinds.index(kind(w)), w))
print("| workload | system | persistence | records/s | MB/s | p50 µs | p99 µs | flowd vs best other |")
print("|---|---|---|--:|--:|--:|--:|---|")
for w in order:
    group = [r for r in rows if r["row"]["workload"] == w]
    # flowd's ratio: throughput against the best other system; p99 against the lowest
    # other p99 for request/reply. Ingest compares within a persistence class; flowd's
    # consume acks are synced, so it meets every other consume row, synced or not.
    others = [r for r in rows if kind(r["row"]["workload"]) == kind(w) and r["row"]["system"] != "flowd"
              and not r.get("failed") and (kind(w) != "ingest" or r["row"]["workload"] == w)]
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
goals = [
    ("flowd ingest (group) / Redis ingest (appendfsync always)", "x", 10,
     find("flowd", "group: fdatasync before ack"), find("redis", "appendfsync always")),
    ("flowd ingest (none) / Redis ingest (appendfsync everysec)", "x", 10,
     find("flowd", "none: page cache"), find("redis", "AOF, appendfsync everysec")),
    ("flowd consume+ack / NATS JetStream consume+ack", "x", 10,
     pick("flowd", "consume"), pick("nats", "consume")),
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
