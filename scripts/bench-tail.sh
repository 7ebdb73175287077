#!/usr/bin/env bash
# The unbatched produce-to-ack round trip (issue 29): `flowd bench ingest --batch 1`, one
# request in flight, against `flowd run` with one engine core pinned to CPU 1 and the
# client pinned to CPU 0 (taskset), durability none. Each round runs the client as it
# is by default (it sleeps in read until the ack comes) and with `--spin-us` (it spins
# for the ack, as a latency-bound client on a core of its own does), alternately.
#
#   scripts/bench-tail.sh [RECORDS] [ROUNDS] [SPIN_US]   (default 200000, 3, 1000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
records=${1:-200000}
rounds=${2:-3}
spin=${3:-1000}
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs: one for the engine, one for the client" >&2; exit 1; }
source "$root/scripts/start-flowd.sh"
flowd_work tail
cargo build --release --quiet --bin flowd --manifest-path "$root/Cargo.toml"
bin="$root/target/release/flowd"
cat >"$work/tail.toml" <<TOML
[engine]
data_dir = "$work/data"
durability = "none"
cores = 1

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"

[[topic]]
name = "bench"
partitions = 1
TOML
# The engine on CPU 1 (its pid stays this shell's child, for the cleanup).
printf '#!/bin/sh\nexec taskset -c 1 %s "$@"\n' "$bin" > "$work/pinned"
chmod +x "$work/pinned"
start_flowd "$work/pinned" "$work/tail.toml" "$work"
tcp=$(listen_addr "$work" tcp)
[ -n "$tcp" ] || { echo "flowd did not start: $(cat "$work/err")" >&2; exit 1; }
echo "client records/s p50_us p99_us p999_us ($records records of 100 B, one in flight, durability none)"
for round in $(seq "$rounds"); do
    for spin_us in 0 "$spin"; do
        printf 'spin=%-5s ' "$spin_us"
        taskset -c 0 "$bin" bench ingest --to "$tcp" --batch 1 --records "$records" \
            --spin-us "$spin_us" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print("%.0f %s %s %s" % (r["records_per_sec"], l["p50"], l["p99"], l.get("p999", "-")))'
    done
done
