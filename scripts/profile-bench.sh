#!/usr/bin/env bash
# Profiles one criterion bench with perf (software cpu-clock event, so it works on VMs
# without hardware counters) and prints the hottest symbols, self and with children.
# Installs linux-perf if missing. Writes target/profile/<name>.perf.data; with
# inferno-flamegraph on PATH (cargo install inferno) also an SVG flamegraph.
# Usage: [BENCH=log|ops] scripts/profile-bench.sh 'append/none/100B/batch1000' [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
filter="${1:?usage: $0 BENCH_FILTER [seconds]}"
seconds="${2:-6}"

source scripts/ensure-perf.sh

target="${BENCH:-log}"
cargo bench --bench "$target" --no-run >&2
bench=$(ls -t target/release/deps/"$target"-* | grep -v '\.d$' | head -1)
mkdir -p target/profile
name=$(echo "$filter" | tr '/' '_')
data="target/profile/$name.perf.data"
# --profile-time runs the bench body only: no criterion analysis in the profile.
perf record -e cpu-clock -g -o "$data" -- "$bench" --bench --profile-time "$seconds" "$filter" >/dev/null 2>&1
echo "== self time"
perf report -i "$data" --no-children --percent-limit 1 --stdio -g none 2>/dev/null | grep -E '^ +[0-9]'
echo "== with children"
perf report -i "$data" --children --percent-limit 4 --stdio -g none 2>/dev/null | grep -E '^ +[0-9]'
if command -v inferno-flamegraph >/dev/null 2>&1; then
  perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph > "target/profile/$name.svg"
  echo "flamegraph: target/profile/$name.svg"
fi
