#!/usr/bin/env bash
# What TLS costs: `flowd bench ingest` and `flowd bench reqreply` with the door in plain
# TCP and in TLS 1.3 (a CA made for the run), alternated ROUNDS times in one run on this
# machine, each scenario's median records/s and TLS's ratio to plaintext printed as a
# markdown table.
# Usage: [ROUNDS=3] [RECORDS=5000000] [REQUESTS=100000] scripts/bench-tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
records="${RECORDS:-5000000}"
requests="${REQUESTS:-100000}"
cargo build --release --quiet
flowd=target/release/flowd

rate() { python3 -c 'import json,sys; print(json.load(sys.stdin)["records_per_sec"])'; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

echo "| scenario | plain records/s | TLS records/s | TLS / plain | runs |"
echo "|---|---:|---:|---:|---|"
for scenario in ingest reqreply; do
  case "$scenario" in
    ingest) args=(--records "$records") ;;
    reqreply) args=(--requests "$requests") ;;
  esac
  plain=(); tls=()
  for _ in $(seq "$rounds"); do
    plain+=("$("$flowd" bench "$scenario" "${args[@]}" --json | rate)")
    tls+=("$("$flowd" bench "$scenario" "${args[@]}" --tls --json | rate)")
  done
  p=$(median "${plain[@]}"); t=$(median "${tls[@]}")
  printf '| %s | %.0f | %.0f | %.2fx | plain %s; TLS %s |\n' "$scenario" "$p" "$t" \
    "$(python3 -c "print($t / $p)")" "$(printf '%.0f ' "${plain[@]}")" "$(printf '%.0f ' "${tls[@]}")"
done
