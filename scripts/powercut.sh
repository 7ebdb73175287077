#!/usr/bin/env bash
# Simulated power cuts at N seeded points of recorded engine runs (tests/it/powercut.rs):
# after each, no acked record may be lost or changed, no consumer ack lost, no cursor
# ahead of its data, and every stage output written exactly once.
#   scripts/powercut.sh          1000 cuts
#   scripts/powercut.sh N        N cuts
# A failing cut prints the command that replays it; its run is kept in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-1000}"
FLOWD_POWERCUT_SEEDS="$seeds" cargo test --release --test it issue20_power_cuts -- --nocapture 2>&1 \
  | grep -E "power cuts|seed |replay|test result"
