/*
 * kafka-load: librdkafka's own producer at full speed, for scripts/bench-kafka.sh.
 *
 * Produces COUNT records of SIZE bytes (keyless, so librdkafka's sticky partitioner
 * spreads them over the topic's partitions) to TOPIC at BROKER with acks=all, and exits
 * once every record is delivered. It prints one line: "<delivered> <failed> <seconds>
 * <records/s>". Extra librdkafka settings come as KEY=VALUE arguments (for example
 * enable.idempotence=true). No record is built from input: what is measured is
 * librdkafka and the broker, not a client's own parsing.
 *
 * Build: cc -O2 -o kafka-load kafka_load.c -lrdkafka   (Debian: librdkafka-dev)
 * Usage: kafka-load BROKER TOPIC COUNT SIZE [KEY=VALUE ...]
 */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long delivered;
static long failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    if (m->err) {
        if (failed < 5)
            fprintf(stderr, "kafka-load: a record failed: %s\n", rd_kafka_err2str(m->err));
        failed++;
    } else {
        delivered++;
    }
}

static int set(rd_kafka_conf_t *conf, const char *key, const char *value) {
    char err[512];
    if (rd_kafka_conf_set(conf, key, value, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kafka-load: %s=%s: %s\n", key, value, err);
        return -1;
    }
    return 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: kafka-load BROKER TOPIC COUNT SIZE [KEY=VALUE ...]\n");
        return 2;
    }
    const char *topic = argv[2];
    long count = atol(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    if (count <= 0 || size == 0 || size > (1 << 20)) {
        fprintf(stderr, "kafka-load: COUNT must be positive and SIZE 1 to 1048576 bytes\n");
        return 2;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", argv[1]) || set(conf, "acks", "all") ||
        set(conf, "linger.ms", "5") || set(conf, "batch.num.messages", "10000") ||
        set(conf, "queue.buffering.max.messages", "1000000") ||
        set(conf, "queue.buffering.max.kbytes", "1048576"))
        return 2;
    for (int i = 5; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "kafka-load: %s is not KEY=VALUE\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        if (set(conf, argv[i], eq + 1))
            return 2;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "kafka-load: %s\n", err);
        return 1;
    }
    char *value = malloc(size);
    if (!value)
        return 1;
    memset(value, 'x', size);
    double start = now_s();
    for (long i = 0; i < count; i++) {
        for (;;) {
            rd_kafka_resp_err_t e = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE(value, size),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                break;
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "kafka-load: produce: %s\n", rd_kafka_err2str(e));
                return 1;
            }
            rd_kafka_poll(rk, 10);
        }
        if ((i & 1023) == 0)
            rd_kafka_poll(rk, 0);
    }
    /* Every record delivered or failed, within two minutes. */
    rd_kafka_resp_err_t flushed = rd_kafka_flush(rk, 120000);
    double took = now_s() - start;
    printf("%ld %ld %.3f %.0f\n", delivered, failed, took, (double)delivered / took);
    rd_kafka_destroy(rk);
    free(value);
    return flushed == RD_KAFKA_RESP_ERR_NO_ERROR && failed == 0 && delivered == count ? 0 : 1;
}
