#!/usr/bin/env bash
# A purchases.toml-style dataflow end to end (issue 29): a jq filter stage, then a jq
# map stage that reshapes each kept record. The engine runs as `flowd run` and this
# build's `flowd bench pipeline --to` drives it. With a second binary (an older build)
# its engine runs the same load right after, driven by the same client, so the ratio
# is the engines' alone and comes from one run of this script.
#   scripts/bench-jq.sh [RECORDS] [OTHER_FLOWD]   (default 400000 records)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
records="${1:-400000}"
other="${2:-}"
source "$root/scripts/start-flowd.sh"
flowd_work jq
cargo build --release --quiet --bin flowd --manifest-path "$root/Cargo.toml"
client="$root/target/release/flowd"
# The bench's values are {"t":MICROS,"n":SEQ,"p":"aaa..."}: the filter keeps three in
# four (n % 4 != 3), the map reshapes them as purchases.toml does its purchases.
cat >"$work/jq.toml" <<TOML
[engine]
data_dir = "$work/data"

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"

[[topic]]
name = "bench"
partitions = 2

[[topic]]
name = "kept"
partitions = 2

[[topic]]
name = "bench-out"
partitions = 2

[[stage]]
name = "only-some"
from = "bench"
op = { filter = '.n % 4 != 3' }
to = "kept"

[[stage]]
name = "reshape"
from = "kept"
op = { map = '{t, n, total: (.n * 1.5), tag: "n\(.n)"}' }
to = "bench-out"
TOML
expect=$(( records - records / 4 ))
# Starts engine $1 on a fresh data dir and drives it with this build's client.
run() {
    rm -rf "$work/data"
    start_flowd "$1" "$work/jq.toml" "$work"
    tcp=$(listen_addr "$work" tcp)
    [ -n "$tcp" ] || { echo "$1 did not start: $(cat "$work/err")" >&2; exit 1; }
    "$client" bench pipeline --to "$tcp" --topic bench --output bench-out --records "$records" \
        --expect "$expect" --durability none --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print("%.0f %s %s" % (r["records_per_sec"], l["p50"], l["p99"]))'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
}
echo "binary records/s p50_us p99_us ($records inputs, $expect outputs)"
# Not in $(...): the engine's pid must stay this shell's, for the cleanup on exit.
printf 'this '
run "$root/target/release/flowd"
if [ -n "$other" ]; then
    printf 'other '
    run "$other"
fi
