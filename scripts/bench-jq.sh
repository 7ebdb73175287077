#!/usr/bin/env bash
# A purchases.toml-style dataflow end to end (issue 29): a jq filter stage, then a jq
# map stage that reshapes each kept record, driven by `flowd bench pipeline`. With a
# second binary (an older build) both run the same load one after the other, so their
# ratio comes from one run of this script.
#   scripts/bench-jq.sh [RECORDS] [OTHER_FLOWD]   (default 400000 records)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
records="${1:-400000}"
other="${2:-}"
work=$(mktemp -d /var/tmp/flowd-jq.XXXXXX)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin flowd --manifest-path "$root/Cargo.toml"
# The bench's values are {"t":MICROS,"n":SEQ,"p":"aaa..."}: the filter keeps three in
# four (n % 4 != 3), the map reshapes them as purchases.toml does its purchases.
cat >"$work/jq.toml" <<'TOML'
[engine]
data_dir = "flowd-data/bench-jq"

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
run() {
    "$1" bench pipeline --dataflow "$work/jq.toml" --records "$records" --expect "$expect" \
        --durability none --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["latency_us"]
print("%.0f %s %s" % (r["records_per_sec"], l["p50"], l["p99"]))'
}
echo "binary records/s p50_us p99_us ($records inputs, $expect outputs)"
echo "this $(run "$root/target/release/flowd")"
if [ -n "$other" ]; then
    echo "other $(run "$other")"
fi
