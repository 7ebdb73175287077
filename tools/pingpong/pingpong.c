// The floor under flowd's unbatched round trip (scripts/bench-floor.sh): a TCP loopback
// ping-pong of SIZE-byte messages, one in flight, with nothing between read and write.
//
//   pingpong server PORT SPIN          echo on 127.0.0.1:PORT (one connection)
//   pingpong client PORT COUNT SPIN SIZE
//   pingpong spinner SECONDS           spin and yield as an idle flowd shard does
//
// SPIN 1 reads with MSG_DONTWAIT in a loop (the reader never sleeps), 0 blocks in recv
// (the reader sleeps and is woken by the kernel). The client prints records/s and the
// p50, p99 and p99.9 of its round trips in microseconds.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SIZE_MAX_BYTES 65536

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

// Reads exactly n bytes: 0 when done, -1 when the peer closed.
static int read_exact(int fd, char *buf, int n, int spin) {
    int got = 0;
    while (got < n) {
        int r = recv(fd, buf + got, n - got, spin ? MSG_DONTWAIT : 0);
        if (r > 0)
            got += r;
        else if (r == 0)
            return -1;
        else if (errno != EAGAIN && errno != EINTR)
            die("recv");
    }
    return 0;
}

static void write_exact(int fd, const char *buf, int n) {
    int sent = 0;
    while (sent < n) {
        int w = send(fd, buf + sent, n - sent, 0);
        if (w < 0 && errno != EINTR)
            die("send");
        if (w > 0)
            sent += w;
    }
}

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int server(int port, int spin) {
    struct sockaddr_in a = loopback(port);
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    if (l < 0)
        die("socket");
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1))
        die("bind");
    int s = accept(l, NULL, NULL);
    if (s < 0)
        die("accept");
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    static char buf[SIZE_MAX_BYTES];
    int size;
    if (read_exact(s, (char *)&size, sizeof size, 0) || size < 1 || size > SIZE_MAX_BYTES)
        return 1;
    while (read_exact(s, buf, size, spin) == 0)
        write_exact(s, buf, size);
    return 0;
}

static int client(int port, int count, int spin, int size) {
    if (count < 1 || size < 1 || size > SIZE_MAX_BYTES) {
        fprintf(stderr, "COUNT >= 1, 1 <= SIZE <= %d\n", SIZE_MAX_BYTES);
        return 2;
    }
    struct sockaddr_in a = loopback(port);
    int one = 1;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    // The server may still be starting: a bounded number of tries.
    int tries = 0;
    while (connect(s, (struct sockaddr *)&a, sizeof a)) {
        if (++tries == 100)
            die("connect");
        usleep(20000);
    }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    write_exact(s, (const char *)&size, sizeof size);
    static char buf[SIZE_MAX_BYTES];
    memset(buf, 'a', size);
    long long *took = malloc(sizeof(long long) * count);
    if (!took)
        die("malloc");
    long long start = now_ns();
    for (int i = 0; i < count; i++) {
        long long t = now_ns();
        write_exact(s, buf, size);
        if (read_exact(s, buf, size, spin))
            die("the server closed");
        took[i] = now_ns() - t;
    }
    long long total = now_ns() - start;
    qsort(took, count, sizeof *took, by_value);
    printf("%.0f %.1f %.1f %.1f\n", count * 1e9 / total, took[count / 2] / 1e3,
           took[(long long)count * 99 / 100] / 1e3, took[(long long)count * 999 / 1000] / 1e3);
    return 0;
}

static int spinner(int seconds) {
    long long end = now_ns() + seconds * 1000000000LL;
    while (now_ns() < end)
        sched_yield();
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "server"))
        return server(atoi(argv[2]), atoi(argv[3]));
    if (argc == 6 && !strcmp(argv[1], "client"))
        return client(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc == 3 && !strcmp(argv[1], "spinner"))
        return spinner(atoi(argv[2]));
    fprintf(stderr,
            "usage: pingpong server PORT SPIN | pingpong client PORT COUNT SPIN SIZE | "
            "pingpong spinner SECONDS\n");
    return 2;
}
