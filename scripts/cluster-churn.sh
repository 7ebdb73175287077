#!/usr/bin/env bash
# The cluster churn soak: peers join and leave gracefully, one after another, while a
# producer runs; at the end every acked record must be present exactly once.
#
#   scripts/cluster-churn.sh [ROUNDS]   (default 50; the normal tests run 2)
set -euo pipefail
cd "$(dirname "$0")/.."
FLOWD_CHURN_ROUNDS=${1:-50} cargo test --release --test it peers_join_and_leave -- --nocapture
