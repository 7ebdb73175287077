"""Real Kafka clients for tests/it/kafka.rs: confluent-kafka (librdkafka), from
Debian's python3-confluent-kafka, run by /usr/bin/python3.

  group BROKER GROUP NAME DIR   a consumer-group member. It prints `assigned P,P,...`
                                at each assignment and `record P O VALUE` for each record,
                                after committing its offset (synchronously, one by one).
                                While DIR/NAME.hold exists it takes no record (its
                                partitions paused); once DIR/NAME.stop exists it closes
                                (leaving the group) and prints `closed`.

  produce BROKER COUNT           an idempotent producer (acks=all): COUNT records `r0`,
                                `r1`, ... to `events`, 100 at a time with a pause of 5 ms
                                between; prints `ok P O VALUE` for each record delivered,
                                `failed VALUE WHY` for each not, then `done N` (N: records
                                still undelivered after flush).

  bench BROKER COUNT SIZE IDEM   COUNT records of SIZE bytes to `events` as fast as the
                                producer takes them (acks=all; idempotent if IDEM is 1),
                                every one delivered; prints `records/s` (scripts/bench-kafka.sh).

  kafka-python BROKER           kafka-python (Debian's python3-kafka, a client of its own,
                                not librdkafka): 20 records `kp0`.. into the 4 partitions of
                                `events`; a member of group `kpg` reads and commits them, then
                                a second member reads none. Prints what each step saw.

  values BROKER                 kafka-python reads every partition of `events` from the start
                                and prints `KEY VALUE` for each record whose key starts `t-`,
                                VALUE as Python writes it (None for a null value, b'' for an
                                empty one).

Every loop is bounded: the script gives up after LIMIT_S seconds.
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

LIMIT_S = 120


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def group(broker, group_id, name, control):
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": group_id,
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    held = set()

    def on_assign(c, partitions):
        say("assigned " + ",".join(str(p.partition) for p in sorted(partitions, key=lambda p: p.partition)))
        held.clear()

    def on_revoke(c, partitions):
        say("revoked " + ",".join(str(p.partition) for p in partitions))

    consumer.subscribe(["events"], on_assign=on_assign, on_revoke=on_revoke)
    hold = os.path.join(control, name + ".hold")
    stop = os.path.join(control, name + ".stop")
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        if os.path.exists(stop):
            consumer.close()
            say("closed")
            return 0
        holding = os.path.exists(hold)
        if holding and not held:
            assignment = consumer.assignment()
            consumer.pause(assignment)
            held.update((p.topic, p.partition) for p in assignment)
            say("held")
        message = consumer.poll(0.1)
        if message is None:
            continue
        if message.error():
            say("error " + str(message.error()))
            continue
        if holding:
            # Taken before the pause: neither processed nor committed, so whoever owns
            # the partition next reads it.
            continue
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as e:
            # Not committed, so not processed: read it again (whoever owns it then).
            say("commit-refused %d %d %s" % (message.partition(), message.offset(), e))
            try:
                consumer.seek(TopicPartition(message.topic(), message.partition(), message.offset()))
            except KafkaException:
                pass
            continue
        say("record %d %d %s" % (message.partition(), message.offset(), message.value().decode()))
    say("gave up")
    return 1


def produce(broker, count):
    producer = Producer(
        {
            "bootstrap.servers": broker,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": LIMIT_S * 1000 // 2,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 500,
            "retry.backoff.ms": 100,
        }
    )

    def report(err, message):
        if err is not None:
            say("failed %s %s" % (message.value().decode(), err))
        else:
            say("ok %d %d %s" % (message.partition(), message.offset(), message.value().decode()))

    deadline = time.monotonic() + LIMIT_S
    for i in range(int(count)):
        while time.monotonic() < deadline:
            try:
                producer.produce("events", value=b"r%d" % i, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 100 == 99:
            producer.poll(0.005)
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    say("done %d" % left)
    return 0


def bench(broker, count, size, idempotent):
    count, size = int(count), int(size)
    producer = Producer(
        {
            "bootstrap.servers": broker,
            "enable.idempotence": idempotent == "1",
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1000000,
            "queue.buffering.max.kbytes": 1048576,
        }
    )
    failed = []

    def report(err, message):
        if err is not None:
            failed.append(err)

    value = b"x" * size
    started = time.monotonic()
    deadline = started + LIMIT_S
    for _ in range(count):
        while time.monotonic() < deadline:
            try:
                producer.produce("events", value=value, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.001)
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - started
    if left or failed:
        sys.exit("%d undelivered, %d failed: %s" % (left, len(failed), failed[:1]))
    say("%.0f" % (count / elapsed))
    return 0


def kafka_python(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    producer = KafkaProducer(bootstrap_servers=broker, acks="all")
    for i in range(20):
        producer.send("events", value=b"kp%d" % i, partition=i % 4)
    producer.flush(timeout=LIMIT_S)
    producer.close()
    say("produced 20")

    def member():
        return KafkaConsumer(
            "events",
            bootstrap_servers=broker,
            group_id="kpg",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=4000,
        )

    first = member()
    values = sorted(m.value.decode() for m in first)
    say("consumed " + ",".join(values))
    first.commit()
    committed = [first.committed(TopicPartition("events", p)) for p in range(4)]
    say("committed " + ",".join(str(c) for c in committed))
    first.close()
    second = member()
    say("again %d" % sum(1 for _ in second))
    second.close()
    say("done")
    return 0


def values(broker):
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=broker,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=4000,
    )
    consumer.assign([TopicPartition("events", p) for p in range(4)])
    consumer.seek_to_beginning()
    for m in consumer:
        if m.key is not None and m.key.startswith(b"t-"):
            say("%s %r" % (m.key.decode(), m.value))
    consumer.close()
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "group":
        sys.exit(group(*sys.argv[2:6]))
    if mode == "produce":
        sys.exit(produce(*sys.argv[2:4]))
    if mode == "kafka-python":
        sys.exit(kafka_python(sys.argv[2]))
    if mode == "values":
        sys.exit(values(sys.argv[2]))
    if mode == "bench":
        sys.exit(bench(*sys.argv[2:6]))
    sys.exit("unknown mode " + mode)
