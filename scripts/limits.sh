#!/usr/bin/env bash
# This machine's raw limits, the denominators of the README's ratios:
#   disk:     sequential 1 MiB writes buffered and with fdatasync each (scripts/disk-limits.sh),
#             and 4 KiB write + fdatasync round trips per second (the `every` floor)
#   loopback: TCP throughput over 127.0.0.1 with iperf3 (one stream, 5 s)
#   memory:   memcpy of 256 MiB buffers (best of five)
# Installs fio and iperf3 if missing. Prints one JSON object; --human prints a line each.
# Usage: scripts/limits.sh [--dir DIR] [--human]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${TMPDIR:-/tmp}"
human=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --human) human=1; shift ;;
    *) echo "usage: $0 [--dir DIR] [--human]" >&2; exit 2 ;;
  esac
done

need=()
command -v fio >/dev/null 2>&1 || need+=(fio)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
    || { echo "could not install ${need[*]} (apt-get install ${need[*]})" >&2; exit 1; }
fi

disk=$(scripts/disk-limits.sh --dir "$dir" --size 1024)

work=$(mktemp -d "$dir/flowd-limits.XXXXXX")
iperf_pid=""
cleanup() {
  [ -n "$iperf_pid" ] && kill "$iperf_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
small_sync=$(fio --name=sync4k --directory="$work" --rw=write --bs=4k --size=32M --ioengine=psync \
  --fdatasync=1 --unlink=1 --output-format=json 2>/dev/null)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
iperf3 -s -B 127.0.0.1 -p "$port" -1 >/dev/null 2>&1 &
iperf_pid=$!
tcp=""
for _ in $(seq 50); do
  if tcp=$(iperf3 -c 127.0.0.1 -p "$port" -t 5 -J 2>/dev/null); then break; fi
  sleep 0.1
done

python3 - "$disk" "$small_sync" "$tcp" "$human" <<'PY'
import json, sys, time
disk = json.loads(sys.argv[1])
sync = json.loads(sys.argv[2])["jobs"][0]
tcp = json.loads(sys.argv[3]) if sys.argv[3] else None
# memcpy: a same-length slice assignment between two buffers already faulted in is one
# memmove; best of five 256 MiB copies.
src, dst = bytearray(256 << 20), bytearray(256 << 20)
dst[:] = src
times = []
for _ in range(5):
    t = time.perf_counter()
    dst[:] = src
    times.append(time.perf_counter() - t)
best = min(times)
result = dict(disk)
result["fdatasync_4k_writes_per_sec"] = round(sync["write"]["iops"])
result["fdatasync_4k_p50_us"] = round(sync["sync"]["lat_ns"]["percentile"]["50.000000"] / 1000 + sync["write"]["clat_ns"]["percentile"]["50.000000"] / 1000)
result["loopback_tcp_gbit_per_sec"] = round(tcp["end"]["sum_received"]["bits_per_second"] / 1e9, 1) if tcp else None
result["memcpy_gib_per_sec"] = round((256 / 1024) / best, 1)
if sys.argv[4] == "1":
    print(f"buffered sequential write:            {result['buffered_write_mib_per_sec']:8.1f} MiB/s")
    print(f"sequential write, fdatasync per MiB:  {result['fdatasync_per_mib_write_mib_per_sec']:8.1f} MiB/s")
    print(f"4 KiB write + fdatasync:              {result['fdatasync_4k_writes_per_sec']:8d} /s (p50 {result['fdatasync_4k_p50_us']} us)")
    print(f"loopback TCP, one stream:             {result['loopback_tcp_gbit_per_sec']:8.1f} Gbit/s")
    print(f"memcpy, 256 MiB:                      {result['memcpy_gib_per_sec']:8.1f} GiB/s")
else:
    print(json.dumps(result))
PY
