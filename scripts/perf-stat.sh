#!/usr/bin/env bash
# Counts what one `flowd bench` scenario costs with perf stat: CPU time, context switches,
# migrations and page faults always (software events); cycles, instructions, cache and
# branch misses too where the machine has hardware counters (many VMs have none).
# Installs perf if missing.
# Usage: scripts/perf-stat.sh SCENARIO [flowd bench args...]
#   e.g. scripts/perf-stat.sh ingest --records 2000000 --durability none
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:?usage: $0 ingest|consume|pipeline|reqreply [flowd bench args...]}"
shift

source scripts/ensure-perf.sh

events=task-clock,context-switches,cpu-migrations,page-faults
if perf stat -e cycles true 2>&1 | grep -q 'not supported'; then
  echo "(no hardware counters here: software events only)" >&2
else
  events="$events,cycles,instructions,cache-misses,branch-misses"
fi

cargo build --release --quiet --bin flowd
perf stat -e "$events" -- target/release/flowd bench "$scenario" "$@"
