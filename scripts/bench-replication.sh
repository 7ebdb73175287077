#!/usr/bin/env bash
# Ingest into 3 peers on this machine with replicas = 1 and replicas = 3, side by side in
# one run: records/s and p99 produce-to-ack from `flowd bench ingest`, and the CPU the
# three peers spent per record (utime + stime from /proc). The peers share this
# machine's cores: a replicated write costs three appends and two fetches here, where on
# three machines it would cost each machine one. The last run is replicas = 3 with mutual
# TLS between the peers (a cluster CA made by flowd cert for the run).
#
#   scripts/bench-replication.sh [RECORDS] [DURABILITY]
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-300000}
durability=${2:-group}
cargo build --release --quiet
bin=$PWD/target/release/flowd
tick=$(getconf CLK_TCK)

cpu_ticks() {
  local total=0
  for pid in "$@"; do
    read -r -a f < "/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}

run() {
  local replicas=$1 tls=${2:-} dir
  dir=$(mktemp -d)
  local tls_flags=()
  if [ -n "$tls" ]; then
    "$bin" cert ca --dir "$dir/pki" > /dev/null
    for i in 0 1 2; do
      "$bin" cert issue "p$i" --dir "$dir/pki" --cluster flowd --host 127.0.0.1 > /dev/null
    done
  fi
  cat > "$dir/df.toml" <<TOML
[engine]
durability = "$durability"
cores = 1
[ingest]
tcp = "127.0.0.1:0"
[cluster]
replicas = $replicas
[[topic]]
name = "bench"
partitions = 6
TOML
  local base=$((17000 + RANDOM % 1000)) pids=()
  for i in 0 1 2; do
    local seeds=()
    [ "$i" -gt 0 ] && seeds=(--seeds "127.0.0.1:$((base + 300))")
    [ -n "$tls" ] && tls_flags=(--peer-tls-cert "$dir/pki/p$i.pem" --peer-tls-key "$dir/pki/p$i.key" --peer-tls-ca "$dir/pki/ca.pem")
    "$bin" run "$dir/df.toml" --data-dir "$dir/p$i" --listen "127.0.0.1:$((base + 100 + i))" \
      --http "127.0.0.1:$((base + 200 + i))" --peer-listen "127.0.0.1:$((base + 300 + i))" "${seeds[@]}" "${tls_flags[@]}" \
      > "$dir/p$i.log" 2>&1 &
    pids+=($!)
    [ "$i" -eq 0 ] && sleep 0.5
  done
  # Every partition led (replicated) or served (not), seen through the first peer.
  for _ in $(seq 300); do
    if "$bin" status --local --from "127.0.0.1:$((base + 100))" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
ps = [p for t in s["topics"] for p in t["partitions"]]
ok = len(s["peers"]) == 3 and all(p.get("replica") is None or p["replica"]["role"] in ("leader", "follower") for p in ps)
sys.exit(0 if ok else 1)' && [ "$("$bin" status --local --from "127.0.0.1:$((base + 100))" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(p["partitions"] for p in s["peers"]) if all(p["state"] == "alive" for p in s["peers"]) else 0)')" -ge 6 ]; then
      break
    fi
    sleep 0.1
  done
  sleep 2
  local before after out
  before=$(cpu_ticks "${pids[@]}")
  out=$("$bin" bench ingest --to "127.0.0.1:$((base + 100))" --records "$records" --connections 4 --durability "$durability" 2>&1 | grep '^ingest' || true)
  after=$(cpu_ticks "${pids[@]}")
  local us=$(( (after - before) * 1000000 / tick ))
  local name="replicas=$replicas${tls:+, peers in mutual TLS}"
  echo "$name: $out"
  echo "$name: CPU of the three peers: $((us / 1000)) ms, $(python3 -c "print(f'{$us / $records:.2f}')") us per record"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}

run 1
run 3
run 3 tls
