#!/usr/bin/env bash
# `flowd bench ingest` against one peer and against two peers of one cluster on this
# machine, two clients in each case (one per peer with two peers), records of 100 B in
# batches of 1000, durability group. Prints each client's rate and the aggregate.
#
#   scripts/bench-cluster.sh [RECORDS_PER_CLIENT]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
flowd=target/release/flowd
records=${1:-1000000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/bench.toml" <<'TOML'
[engine]
durability = "group"
[ingest]
tcp = "127.0.0.1:0"
[[topic]]
name = "bench"
partitions = 8
TOML

start_peer() { # NAME TCP PEER [SEED]
  local seed=()
  [ -n "${4:-}" ] && seed=(--seeds "$4")
  "$flowd" run "$work/bench.toml" --data-dir "$work/$1" --listen "$2" --http 127.0.0.1:0 --peer-listen "$3" "${seed[@]}" \
    > "$work/$1.out" 2> "$work/$1.err" &
  for _ in $(seq 1 100); do grep -q "listening tcp" "$work/$1.out" 2>/dev/null && return; sleep 0.1; done
  echo "peer $1 did not start" >&2; cat "$work/$1.err" >&2; exit 1
}

clients() { # ADDR ADDR: one bench client against each, at once; prints the aggregate
  local pids=() i=0
  for addr in "$@"; do
    "$flowd" bench ingest --to "$addr" --records "$records" --json > "$work/client$i.json" &
    pids+=($!); i=$((i + 1))
  done
  wait "${pids[@]}"
  python3 - "$work" "$#" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
rates = [json.load(open(f"{work}/client{i}.json"))["records_per_sec"] for i in range(n)]
print("  clients: " + ", ".join(f"{r/1e6:.2f} M/s" for r in rates) + f"; aggregate {sum(rates)/1e6:.2f} M records/s")
PY
}

echo "one peer, two clients:"
start_peer one 127.0.0.1:7301 127.0.0.1:7401
clients 127.0.0.1:7301 127.0.0.1:7301
kill %1; wait %1 2>/dev/null || true

echo "two peers, one client each:"
start_peer a 127.0.0.1:7311 127.0.0.1:7411
start_peer b 127.0.0.1:7312 127.0.0.1:7412 127.0.0.1:7411
for _ in $(seq 1 100); do
  "$flowd" status --from 127.0.0.1:7311 --json 2>/dev/null | grep -q '"127.0.0.1:7412"' && break; sleep 0.1
done
sleep 1 # let the second peer take its partitions over
clients 127.0.0.1:7311 127.0.0.1:7312
