#!/usr/bin/env bash
# Profiles one `flowd bench` scenario with perf and renders a flamegraph SVG (inferno).
# Samples the software cpu-clock event, so it works on VMs without hardware counters, with
# DWARF call graphs (the release build keeps line tables; it has no frame pointers).
# Installs perf and inferno if missing. Writes target/profile/<scenario>.{perf.data,svg}
# and prints the hottest symbols by self time.
# Usage: [DELAY_MS=N] scripts/perf-record.sh SCENARIO [flowd bench args...]
#   DELAY_MS: start sampling N ms after the start (e.g. past consume's untimed fill)
#   e.g. DELAY_MS=2500 scripts/perf-record.sh consume --records 4000000
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:?usage: $0 ingest|consume|pipeline|reqreply [flowd bench args...]}"
shift

source scripts/ensure-perf.sh
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
  echo "installing inferno..." >&2
  cargo install inferno --locked --quiet || { echo "could not install inferno (cargo install inferno)" >&2; exit 1; }
fi

cargo build --release --quiet --bin flowd
mkdir -p target/profile
data="target/profile/$scenario.perf.data"
svg="target/profile/$scenario.svg"
# 999 Hz and 16 KiB of stack per sample keep a minute's profile to a few hundred MB.
perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -D "${DELAY_MS:-0}" -o "$data" -- \
  target/release/flowd bench "$scenario" "$@" >&2
echo "== self time, by symbol (>= 1%)"
perf report -i "$data" --no-children --percent-limit 1 --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' || true
perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "flowd bench $scenario $*" >"$svg"
echo "flamegraph: $svg"
