#!/usr/bin/env bash
# The fault harness (tests/it/nemesis.rs) for longer: peers each in a network namespace
# of its own, a producer through every peer, kills, pauses and network cuts one at a
# time, then a checker reading every partition through every peer.
#
#   scripts/nemesis.sh --peers 3 --minutes 30 [--seed N]
#
# Needs root, iproute2 and nftables. A failing run prints its seed and the history of
# faults; run it again with --seed to replay the same choices.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=3
minutes=10
seed=$$
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) peers=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "usage: $0 [--peers N] [--minutes M] [--seed S]" >&2; exit 2 ;;
  esac
done
echo "nemesis: $peers peers, $minutes minutes, seed $seed"
FLOWD_NEMESIS_PEERS=$peers FLOWD_NEMESIS_SECONDS=$((minutes * 60)) FLOWD_NEMESIS_SEED=$seed \
  cargo test --release --test it nemesis -- --nocapture --test-threads 1
