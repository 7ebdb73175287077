#!/usr/bin/env bash
# The storage benchmarks beside this machine's raw disk limits, measured in one run.
# Runs scripts/disk-limits.sh, then `cargo bench --bench log`, then prints a markdown
# table (also written to target/bench-storage.md) with records/s, MiB/s and the ratio of
# `group` appends to the raw fdatasync-per-MiB bandwidth.
# Usage: scripts/bench-storage.sh [extra criterion args, e.g. --measurement-time 4]
set -euo pipefail
cd "$(dirname "$0")/.."

limits=$(scripts/disk-limits.sh --size 1024)
echo "disk limits: $limits" >&2
cargo bench --bench log -- "$@" >&2

python3 - "$limits" <<'PY' | tee target/bench-storage.md
import json, pathlib, re, sys

limits = json.loads(sys.argv[1])
raw_sync = limits["fdatasync_per_mib_write_mib_per_sec"]
raw_buffered = limits["buffered_write_mib_per_sec"]
rows = []
for bench in sorted(pathlib.Path("target/criterion").glob("*/*/**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    estimates = json.loads((bench.parent / "estimates.json").read_text())
    seconds = estimates["mean"]["point_estimate"] / 1e9
    throughput = meta.get("throughput") or {}
    batch = re.search(r"batch(\d+)", meta["full_id"])
    if batch:
        records = int(batch.group(1))
    else:
        records = throughput.get("Elements", 1)
    log_bytes = throughput.get("Bytes")
    rows.append((meta["full_id"], seconds, records / seconds, log_bytes / seconds / (1 << 20) if log_bytes else None))

print(f"Disk limits (scripts/disk-limits.sh, same run): buffered write {raw_buffered:.0f} MiB/s, "
      f"write + fdatasync per MiB {raw_sync:.0f} MiB/s\n")
print("| benchmark | time per iteration | records/s | log MiB/s | vs fdatasync per MiB |")
print("|---|---:|---:|---:|---:|")
for name, seconds, per_sec, mib in rows:
    ratio = f"{mib / raw_sync:.0%}" if mib is not None and "/group/" in name else ""
    mib_text = f"{mib:.0f}" if mib is not None else ""
    if seconds >= 1e-3:
        time_text = f"{seconds * 1e3:.2f} ms"
    elif seconds >= 1e-6:
        time_text = f"{seconds * 1e6:.1f} µs"
    else:
        time_text = f"{seconds * 1e9:.0f} ns"
    print(f"| {name} | {time_text} | {per_sec / 1e6:.2f} M | {mib_text} | {ratio} |")
PY
