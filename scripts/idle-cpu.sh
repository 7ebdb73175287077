#!/usr/bin/env bash
# Idle CPU of `flowd run dataflows/ingest.toml` (issue 29): before any traffic, then
# after 200,000 records and one `flowd tail --group` read, with nothing more coming.
# CPU time is the sum of every thread's run time (/proc/PID/task/*/schedstat, in ns).
#   scripts/idle-cpu.sh [SECONDS]   (default 60)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds="${1:-60}"
work=$(mktemp -d /var/tmp/flowd-idle.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet --bin flowd --manifest-path "$root/Cargo.toml"
flowd="$root/target/release/flowd"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp=$(free_port); http=$(free_port)
sed -e "s|^data_dir = .*|data_dir = \"$work/data\"|" -e "s|^tcp = .*|tcp = \"127.0.0.1:$tcp\"|" \
    -e "s|^http = .*|http = \"127.0.0.1:$http\"|" "$root/dataflows/ingest.toml" >"$work/ingest.toml"
"$flowd" run "$work/ingest.toml" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$http/status" >/dev/null && break; sleep 0.1; done
cpu_ns() { cat /proc/"$pid"/task/*/schedstat | awk '{s += $1} END {print s}'; }
share() { python3 -c "print(f'{100 * $1 / ($2 * 1e9):.3f}% of a core ({$1 / 1e6:.1f} ms of CPU in $2 s)')"; }
a=$(cpu_ns); sleep 10; b=$(cpu_ns)
echo "before traffic, 10 s: $(share $((b - a)) 10)"
seq 1 200000 | "$flowd" send events --to "127.0.0.1:$tcp" >/dev/null
read=$(timeout 60 "$flowd" tail events --group g1 --from "127.0.0.1:$tcp" | wc -l)
echo "sent 200000 records, read $read as group g1"
sleep 2
a=$(cpu_ns); sleep "$seconds"; b=$(cpu_ns)
echo "after traffic, $seconds s: $(share $((b - a)) "$seconds"); CPU since start $(python3 -c "print(f'{$b / 1e9:.2f}')") s"
