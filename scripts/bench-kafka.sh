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
# include that client-side work.
# Usage: [ROUNDS=3] [RECORDS=1000000] [SIZE=100] scripts/bench-kafka.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
records="${RECORDS:-1000000}"
size="${SIZE:-100}"
/usr/bin/python3 -c "import confluent_kafka" >/dev/null 2>&1 || {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-confluent-kafka) >/dev/null 2>&1 \
    || { echo "could not install confluent-kafka (apt-get install python3-confluent-kafka)" >&2; exit 1; }
}
command -v kcat >/dev/null 2>&1 || {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat) >/dev/null 2>&1 \
    || { echo "could not install kcat (apt-get install kcat)" >&2; exit 1; }
}
cargo build --release --quiet
flowd=$(pwd)/target/release/flowd

work=$(mktemp -d /var/tmp/flowd-kafka.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

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
"$flowd" run "$work/kafka.toml" > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 100); do
  grep -q '^listening http' "$work/out" 2>/dev/null && break
  sleep 0.1
done
tcp=$(awk '/^listening tcp/ {print $3}' "$work/out")
kafka=$(awk '/^listening kafka/ {print $3}' "$work/out")
[ -n "$tcp" ] && [ -n "$kafka" ] || { echo "flowd did not start: $(cat "$work/err")" >&2; exit 1; }

# One line per record: a SIZE-byte value (kcat -P takes a line as a record's value).
python3 -c "
import sys
line = ('x' * ($size - 1) + '\n').encode()
sys.stdout.buffer.write(line * $records)" > "$work/records"

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
own=(); via_kafka=(); via_py=(); via_idem=()
for _ in $(seq "$rounds"); do
  own+=("$("$flowd" bench ingest --to "$tcp" --topic events --records "$records" --size "$size" --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["records_per_sec"])')")
  start=$(now)
  kcat -P -b "$kafka" -t events -X acks=all -X linger.ms=5 -X batch.num.messages=10000 \
    -X queue.buffering.max.messages=1000000 < "$work/records"
  end=$(now)
  via_kafka+=("$(python3 -c "print($records / ($end - $start))")")
  via_py+=("$(/usr/bin/python3 tests/it/kafka_clients.py bench "$kafka" "$records" "$size" 0)")
  via_idem+=("$(/usr/bin/python3 tests/it/kafka_clients.py bench "$kafka" "$records" "$size" 1)")
done
o=$(median "${own[@]}"); k=$(median "${via_kafka[@]}"); p=$(median "${via_py[@]}"); i=$(median "${via_idem[@]}")
echo "| producer | records/s | Kafka door / own protocol | runs |"
echo "|---|---:|---:|---|"
printf '| flowd bench ingest (own protocol) | %.0f | | %s|\n' "$o" "$(printf '%.0f ' "${own[@]}")"
printf '| kcat -P (librdkafka, Kafka door) | %.0f | %.2fx | %s|\n' "$k" \
  "$(python3 -c "print($k / $o)")" "$(printf '%.0f ' "${via_kafka[@]}")"
printf '| confluent-kafka (Python, librdkafka, Kafka door) | %.0f | %.2fx | %s|\n' "$p" \
  "$(python3 -c "print($p / $o)")" "$(printf '%.0f ' "${via_py[@]}")"
printf '| confluent-kafka, enable.idempotence | %.0f | %.2fx | %s|\n' "$i" \
  "$(python3 -c "print($i / $o)")" "$(printf '%.0f ' "${via_idem[@]}")"
