#!/usr/bin/env bash
# How fast a replacement copies, and what the copy does to a producer's latency
# (tests/it/healing.rs, heal_bench): three peers with about 200 MB, one SIGKILLed for
# good, a fourth joins and copies its share after the 2 s grace; a probe producer
# measures produce-to-ack before and during the copy.
#
#   scripts/heal-bench.sh [--rate 20MiB] [--mb 200]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=20MiB
mb=200
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --mb) mb=$2; shift 2 ;;
    *) echo "usage: $0 [--rate BYTES] [--mb MB]" >&2; exit 2 ;;
  esac
done
FLOWD_HEAL_BENCH_RATE=$rate FLOWD_HEAL_BENCH_MB=$mb \
  cargo test --release --test it healing::heal_bench -- --ignored --nocapture --test-threads 1
