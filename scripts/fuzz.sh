#!/usr/bin/env bash
# Fuzzes the protocol frame decoder with cargo fuzz (libFuzzer) for a bounded time.
#   scripts/fuzz.sh            60 seconds
#   FUZZ_SECONDS=600 scripts/fuzz.sh
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz run frame_decoder -- -max_total_time="$seconds" -max_len=65536
