#!/usr/bin/env bash
# The floor under the unbatched round trip (issue 29): what a bare C echo over loopback
# (tools/pingpong, 100-byte messages, one in flight, nothing between read and write)
# takes on this machine, beside `flowd bench ingest --batch 1 --durability none` (the
# acceptance command: its own engine with a shard per CPU, the client asleep in read),
# alternated in one run. The C rows:
#   both spin       server on CPU 1, client on CPU 0, neither ever sleeps
#   client sleeps   server spins, the client blocks in recv; nothing else runs
#   client sleeps, spinner beside   as above with a third thread spinning and yielding,
#                   as the engine's second shard does: three threads on two CPUs, as in
#                   the acceptance command
#
#   scripts/bench-floor.sh [RECORDS] [ROUNDS]   (default 100000, 3)
#   FLOWD=path/to/flowd scripts/bench-floor.sh  (a build to measure; else a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-100000}
rounds=${2:-3}
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs" >&2; exit 1; }
if [ -n "${FLOWD:-}" ]; then
  flowd=$(realpath "$FLOWD")
else
  cargo build --release --quiet --bin flowd
  flowd=$(pwd)/target/release/flowd
fi
work=$(mktemp -d /var/tmp/flowd-floor.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cc -O2 -Wall -Wextra -o "$work/pingpong" tools/pingpong/pingpong.c

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pingpong ROW SERVER_PIN CLIENT_PIN CLIENT_SPIN SPINNER
pingpong() {
  local port spinner=""
  port=$(free_port)
  [ "$5" = 1 ] && { "$work/pingpong" spinner 600 & spinner=$!; }
  $2 "$work/pingpong" server "$port" 1 &
  local server=$!
  printf '%-34s ' "$1"
  $3 "$work/pingpong" client "$port" "$records" "$4" 100
  wait "$server"
  [ -n "$spinner" ] && { kill "$spinner"; wait "$spinner" 2>/dev/null || true; }
  return 0
}

echo "row records/s p50_us p99_us p999_us ($records round trips of 100 B, one in flight)"
for round in $(seq "$rounds"); do
  pingpong "C, both spin" "taskset -c 1" "taskset -c 0" 1 0
  pingpong "C, client sleeps" "" "" 0 0
  pingpong "C, client sleeps, spinner beside" "" "" 0 1
  printf '%-34s ' "flowd bench ingest --batch 1"
  "$flowd" bench ingest --batch 1 --durability none --records "$records" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print("%.0f %s %s %s" % (r["records_per_sec"], l["p50"], l["p99"], l.get("p999", "-")))'
done
