#!/usr/bin/env bash
# The machine's raw sequential-write limits, for the README's performance table:
#   buffered:  1 MiB writes into the page cache, no sync (what `none` appends ride on)
#   fdatasync: 1 MiB writes, each followed by fdatasync (the floor `group` commit beats)
# Installs fio if missing. Prints one JSON object; --human prints a line per figure.
# Usage: scripts/disk-limits.sh [--dir DIR] [--size MiB] [--human]
set -euo pipefail

dir="${TMPDIR:-/tmp}"
size_mib=2048
human=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --size) size_mib="$2"; shift 2 ;;
    --human) human=1; shift ;;
    *) echo "usage: $0 [--dir DIR] [--size MiB] [--human]" >&2; exit 2 ;;
  esac
done

if ! command -v fio >/dev/null 2>&1; then
  echo "installing fio..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio) >/dev/null 2>&1 \
    || { echo "could not install fio (apt-get install fio)" >&2; exit 1; }
fi

work=$(mktemp -d "$dir/flowd-limits.XXXXXX")
trap 'rm -rf "$work"' EXIT

run() { # name, extra fio args...
  local name="$1"; shift
  fio --name="$name" --directory="$work" --rw=write --bs=1M --size="${size_mib}M" \
      --ioengine=psync --direct=0 --numjobs=1 --fallocate=native --unlink=1 \
      --output-format=json "$@" 2>/dev/null
}

buffered=$(run buffered)
fdatasync=$(run fdatasync --fdatasync=1 --size="$(( size_mib / 2 ))M")

python3 - "$buffered" "$fdatasync" "$human" <<'PY'
import json, sys
def mib_s(report):
    job = json.loads(report)["jobs"][0]["write"]
    return job["bw_bytes"] / (1 << 20)
result = {
    "buffered_write_mib_per_sec": round(mib_s(sys.argv[1]), 1),
    "fdatasync_per_mib_write_mib_per_sec": round(mib_s(sys.argv[2]), 1),
}
if sys.argv[3] == "1":
    print(f"buffered sequential write:            {result['buffered_write_mib_per_sec']:8.1f} MiB/s")
    print(f"sequential write, fdatasync per MiB:  {result['fdatasync_per_mib_write_mib_per_sec']:8.1f} MiB/s")
else:
    print(json.dumps(result))
PY
