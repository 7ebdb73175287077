#!/usr/bin/env bash
# Runs `flowd bench ingest --batch 1 --durability none` (its own engine, one request in
# flight, 100,000 records) RUNS times and fails on the first run that has not finished
# in 30 s, printing each thread's state: a lost wake-up parks every shard with a request
# unanswered while the client waits in read. This is how the executor's lost wake-up
# with glommio's preempt timer kept between polls was found (vendor/glommio/PATCHES.md):
# before its fix a run hung within the first few.
#
#   scripts/soak-unbatched.sh [RUNS]   (default 100)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-100}
cargo build --release --quiet --bin flowd --manifest-path "$root/Cargo.toml"
bin="$root/target/release/flowd"
out=$(mktemp -d /var/tmp/flowd-soak.XXXXXX)
trap 'rm -rf "$out"' EXIT
for run in $(seq "$runs"); do
    "$bin" bench ingest --batch 1 --durability none --records 100000 --json \
        > "$out/result.json" 2> "$out/err" &
    bench=$!
    for _ in $(seq 300); do
        kill -0 "$bench" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$bench" 2>/dev/null; then
        echo "run $run of $runs did not finish in 30 s; its threads:" >&2
        for task in /proc/"$bench"/task/*; do
            echo "  $(cat "$task/comm") $(awk '{print $3}' "$task/stat") $(cat "$task/wchan")" >&2
        done
        kill -9 "$bench"
        exit 1
    fi
    wait "$bench" || { echo "run $run failed: $(cat "$out/err")" >&2; exit 1; }
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
print("run %s: %.0f records/s, p50 %s us, p99 %s us" % (sys.argv[2], r["records_per_sec"], l["p50"], l["p99"]))' \
        "$out/result.json" "$run"
done
echo "all $runs runs finished"
