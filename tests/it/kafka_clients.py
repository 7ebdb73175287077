"""Real Kafka clients for tests/it/kafka.rs: confluent-kafka (librdkafka), from
Debian's python3-confluent-kafka, run by /usr/bin/python3.

  group BROKER GROUP NAME DIR   a consumer-group member. It prints `assigned P,P,...`
                                at each assignment and `record P O VALUE` for each record,
                                after committing its offset (synchronously, one by one).
                                While DIR/NAME.hold exists it takes no record (its
                                partitions paused); once DIR/NAME.stop exists it closes
                                (leaving the group) and prints `closed`.

Every loop is bounded: the script gives up after LIMIT_S seconds.
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition

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


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "group":
        sys.exit(group(*sys.argv[2:6]))
    sys.exit("unknown mode " + mode)
