#!/usr/bin/env bash
# The SIGKILL crash tests at length: ROUNDS kill rounds in each durability mode (every,
# group, none; default 500). The normal test run does 12 per mode.
# Usage: scripts/crash-soak.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
FLOWD_CRASH_ROUNDS="${1:-500}" cargo test --release --test it crash:: -- --nocapture
