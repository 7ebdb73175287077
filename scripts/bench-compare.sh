#!/usr/bin/env bash
# Two flowd binaries side by side, in one run: the same `flowd bench` scenarios, taking
# turns, ROUNDS times each (default 3); prints the median records/s of each and the
# ratio NEW / OLD. Build the old one from a revision first, e.g.
#   git worktree add /tmp/flowd-old REV && cargo build --release --manifest-path /tmp/flowd-old/Cargo.toml
#   scripts/bench-compare.sh /tmp/flowd-old/target/release/flowd target/release/flowd
set -euo pipefail
old="$1"
new="$2"
rounds="${3:-3}"
scenarios=(
  "ingest --records 2000000 --durability none"
  "ingest --records 2000000 --durability group"
  "consume --records 2000000 --durability group"
  "pipeline --records 500000 --durability group"
  "reqreply --requests 20000"
)
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate() { "$1" bench $2 --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["records_per_sec"])'; }
printf '| scenario | old records/s | new records/s | new / old |\n|---|---:|---:|---:|\n'
for scenario in "${scenarios[@]}"; do
  o=(); n=()
  for _ in $(seq "$rounds"); do
    o+=("$(rate "$old" "$scenario")")
    n+=("$(rate "$new" "$scenario")")
  done
  om=$(printf '%s\n' "${o[@]}" | median)
  nm=$(printf '%s\n' "${n[@]}" | median)
  python3 - "$scenario" "$om" "$nm" <<'PY'
import sys
s, o, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
print(f"| `flowd bench {s}` | {o/1e6:.2f} M | {n/1e6:.2f} M | {n/o:.2f} |" if o > 1e5 else f"| `flowd bench {s}` | {o/1e3:.1f} k | {n/1e3:.1f} k | {n/o:.2f} |")
PY
done
