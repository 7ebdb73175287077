#!/usr/bin/env bash
# Fuzzes one decoder of untrusted bytes with cargo fuzz (libFuzzer) for a bounded time.
#   scripts/fuzz.sh                       every target, 60 seconds each
#   scripts/fuzz.sh TARGET [SECONDS]      one target (default 60 s)
#   scripts/fuzz.sh all SECONDS           every target, SECONDS each
# Targets (fuzz/fuzz_targets/): frame_decoder (client frames), peer_frames (peer frames,
# data-plane, hand-over and replication bodies, HELLO), http_bodies (record bodies, query strings),
# exec_answers (both worker protocols), journal_replay (the consumer journal), batches
# (a client's batch, PRODUCE_BATCH and BATCHES), kafka_requests (the Kafka door's
# requests and the record batches in a produce).
# A crash leaves its input in fuzz/artifacts/TARGET/; replay it with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# and turn it into a regression test beside the decoder.
# Needs a nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(frame_decoder peer_frames http_bodies exec_answers journal_replay batches kafka_requests)
target="${1:-all}"
seconds="${2:-${FUZZ_SECONDS:-60}}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
if [ "$target" = all ]; then
  run=("${targets[@]}")
else
  run=("$target")
fi
for t in "${run[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048
done
