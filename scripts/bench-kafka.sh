#!/usr/bin/env bash
# What the Kafka door costs: one flowd engine (durability group, 4 partitions) with its
# binary protocol and its Kafka door, and the same workload (RECORDS records of SIZE
# bytes) produced through each, alternated ROUNDS times in one run: librdkafka's producer
# (kcat -P, acks=all, every record delivered when it exits) and confluent-kafka's
# (Python over librdkafka, acks=all, plain and idempotent: tests/it/kafka_clients.py
# bench) into the Kafka door, and `flowd bench ingest --to` (batches of 1000, 32 in
# flight) into the binary protocol. Prints a markdown table: each side's median
# records/s and the Kafka door's ratio. kcat reads its records as lines from a file and
# confluent-kafka's producer is called once per record from Python, so their rows
# include that client-side work; tools/kafka-load (C, librdkafka's producer alone, no
# input parsing; built here from librdkafka-dev) is the native row. A second table says
# how much CPU each side spent per million records (the client's user+sys by
# /usr/bin/time, flowd's from /proc), which shows who limits the rate on this machine.
# FLOWD=PATH runs that flowd binary instead of this tree's release build (to set two
# builds side by side).
# Usage: [ROUNDS=3] [RECORDS=1000000] [SIZE=100] [FLOWD=PATH] scripts/bench-kafka.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
records="${RECORDS:-1000000}"
size="${SIZE:-100}"
/usr/bin/python3 -c "import confluent_kafka" >/dev/null 2>&1 || {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-confluent-kafka) >/dev/null 2>&1 \
    || { echo "could not install confluent-kafka (apt-get install python3-confluent-kafka)" >&2; exit 1; }
}
[ -f /usr/include/librdkafka/rdkafka.h ] || {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librdkafka-dev) >/dev/null 2>&1 \
    || { echo "could not install librdkafka-dev (apt-get install librdkafka-dev)" >&2; exit 1; }
}
command -v kcat >/dev/null 2>&1 || {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat) >/dev/null 2>&1 \
    || { echo "could not install kcat (apt-get install kcat)" >&2; exit 1; }
}
if [ -n "${FLOWD:-}" ]; then
  flowd=$(realpath "$FLOWD")
else
  cargo build --release --quiet
  flowd=$(pwd)/target/release/flowd
fi

source scripts/start-flowd.sh
flowd_work kafka
cc -O2 -Wall -Wextra -o "$work/kafka-load" tools/kafka-load/kafka_load.c -lrdkafka

cat > "$work/kafka.toml" <<TOML
[engine]
data_dir = "$work/data"
durability = "group"

[ingest]
tcp = "127.0.0.1:0"
http = "127.0.0.1:0"
kafka = "127.0.0.1:0"

[[topic]]
name = "events"
partitions = 4
TOML
start_flowd "$flowd" "$work/kafka.toml" "$work"
tcp=$(listen_addr "$work" tcp)
kafka=$(listen_addr "$work" kafka)
[ -n "$tcp" ] && [ -n "$kafka" ] || { echo "flowd did not start: $(cat "$work/err")" >&2; exit 1; }

# One line per record: a SIZE-byte value (kcat -P takes a line as a record's value).
python3 -c "
import sys
line = ('x' * ($size - 1) + '\n').encode()
sys.stdout.buffer.write(line * $records)" > "$work/records"

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# flowd's CPU seconds so far (user + system).
engine_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$pid/stat"; }
# Runs a client under /usr/bin/time; sets client_s and engine_s (CPU seconds of each).
measured() {
  local before after
  before=$(engine_cpu)
  /usr/bin/time -f '%U %S' -o "$work/time" "$@"
  after=$(engine_cpu)
  client_s=$(awk '{print $1 + $2}' "$work/time")
  engine_s=$(python3 -c "print($after - $before)")
}
own=(); via_kafka=(); via_py=(); via_idem=(); via_native=()
own_client=(); own_engine=(); native_client=(); native_engine=()
for _ in $(seq "$rounds"); do
  measured "$flowd" bench ingest --to "$tcp" --topic events --records "$records" --size "$size" --json \
    > "$work/own.json"
  own+=("$(python3 -c 'import json,sys; print(json.load(sys.stdin)["records_per_sec"])' < "$work/own.json")")
  own_client+=("$client_s"); own_engine+=("$engine_s")
  measured "$work/kafka-load" "$kafka" events "$records" "$size" > "$work/native"
  via_native+=("$(awk '{print $4}' "$work/native")")
  native_client+=("$client_s"); native_engine+=("$engine_s")
  start=$(now)
  kcat -P -b "$kafka" -t events -X acks=all -X linger.ms=5 -X batch.num.messages=10000 \
    -X queue.buffering.max.messages=1000000 < "$work/records"
  end=$(now)
  via_kafka+=("$(python3 -c "print($records / ($end - $start))")")
  via_py+=("$(/usr/bin/python3 tests/it/kafka_clients.py bench "$kafka" "$records" "$size" 0)")
  via_idem+=("$(/usr/bin/python3 tests/it/kafka_clients.py bench "$kafka" "$records" "$size" 1)")
done
o=$(median "${own[@]}"); k=$(median "${via_kafka[@]}"); p=$(median "${via_py[@]}"); i=$(median "${via_idem[@]}")
n=$(median "${via_native[@]}")
echo "| producer | records/s | Kafka door / own protocol | runs |"
echo "|---|---:|---:|---|"
printf '| flowd bench ingest (own protocol) | %.0f | | %s|\n' "$o" "$(printf '%.0f ' "${own[@]}")"
printf '| kafka-load (C, librdkafka, Kafka door) | %.0f | %.2fx | %s|\n' "$n" \
  "$(python3 -c "print($n / $o)")" "$(printf '%.0f ' "${via_native[@]}")"
printf '| kcat -P (librdkafka, Kafka door) | %.0f | %.2fx | %s|\n' "$k" \
  "$(python3 -c "print($k / $o)")" "$(printf '%.0f ' "${via_kafka[@]}")"
printf '| confluent-kafka (Python, librdkafka, Kafka door) | %.0f | %.2fx | %s|\n' "$p" \
  "$(python3 -c "print($p / $o)")" "$(printf '%.0f ' "${via_py[@]}")"
printf '| confluent-kafka, enable.idempotence | %.0f | %.2fx | %s|\n' "$i" \
  "$(python3 -c "print($i / $o)")" "$(printf '%.0f ' "${via_idem[@]}")"
echo
per_m() { python3 -c "print('%.2f' % ($1 * 1e6 / $records))"; }
echo "| CPU s per 1M records (median) | client | flowd |"
echo "|---|---:|---:|"
echo "| flowd bench ingest (own protocol) | $(per_m "$(median "${own_client[@]}")") | $(per_m "$(median "${own_engine[@]}")") |"
echo "| kafka-load (librdkafka, Kafka door) | $(per_m "$(median "${native_client[@]}")") | $(per_m "$(median "${native_engine[@]}")") |"
