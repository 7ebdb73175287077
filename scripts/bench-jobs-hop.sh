#!/usr/bin/env bash
# The cost of the extra hop of a job sent to a peer that does not lead its partition:
# `flowd bench reqreply` against the peer leading the job's one partition, then against
# another peer (the job goes to the leader over the peer link, its answer comes back
# over it), alternately, in one run, on two peers of this machine, each on a CPU of its
# own (taskset; one engine core each), as on two machines.
#
#   scripts/bench-jobs-hop.sh [REQUESTS] [REPLICAS] [ROUNDS]
#
# Each round runs both one job in flight (latency) and 16 connections (throughput).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
replicas=${2:-1}
rounds=${3:-2}
cargo build --release --quiet
bin=$PWD/target/release/flowd
dir=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cat > "$dir/df.toml" <<TOML
[engine]
durability = "group"
cores = 1
[ingest]
tcp = "127.0.0.1:0"
[cluster]
replicas = $replicas
[[topic]]
name = "jobs"
partitions = 1
[[job]]
name = "echo"
topic = "jobs"
[[stage]]
name = "echo"
from = "jobs"
op = "reply"
TOML
peers=$(( replicas > 2 ? replicas : 2 ))
base=$((18000 + RANDOM % 1000))
for i in $(seq 0 $((peers - 1))); do
  seeds=()
  [ "$i" -gt 0 ] && seeds=(--seeds "127.0.0.1:$((base + 300))")
  taskset -c "$(( i % $(nproc) ))" "$bin" run "$dir/df.toml" --data-dir "$dir/p$i" --listen "127.0.0.1:$((base + 100 + i))" \
    --http "127.0.0.1:$((base + 200 + i))" --peer-listen "127.0.0.1:$((base + 300 + i))" "${seeds[@]}" > "$dir/p$i.log" 2>&1 &
  pids+=($!)
  [ "$i" -eq 0 ] && sleep 0.5
done
# Every peer alive, then the peer serving the one partition.
alive=""
for _ in $(seq 300); do
  alive=$("$bin" status --from "127.0.0.1:$((base + 100))" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
alive = len(s["peers"]) == '"$peers"' and all(p["state"] == "alive" for p in s["peers"])
print("yes" if alive else "")' || true)
  [ -n "$alive" ] && break
  sleep 0.1
done
[ -n "$alive" ] || { echo "the peers did not find each other" >&2; exit 1; }
leader=""
for _ in $(seq 300); do
  for i in $(seq 0 $((peers - 1))); do
    if "$bin" status --local --from "127.0.0.1:$((base + 100 + i))" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
p = s["topics"][0]["partitions"][0]
sys.exit(0 if p["standing"] == "serving" else 1)' 2>/dev/null; then
      leader=$i
    fi
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "nobody serves the job's partition" >&2; exit 1; }
other=$(( (leader + 1) % peers ))
echo "replicas=$replicas, $peers peers: the job's partition is led by peer $leader; peer $other relays"
for round in $(seq "$rounds"); do
  for concurrency in 1 16; do
    for who in leader other; do
      i=${!who}
      out=$("$bin" bench reqreply --to "127.0.0.1:$((base + 100 + i))" --requests "$requests" \
        --concurrency "$concurrency" 2>&1 | grep '^reqreply' || true)
      echo "round $round, $concurrency connection(s), through the $who (peer $i): $out"
    done
  done
done
