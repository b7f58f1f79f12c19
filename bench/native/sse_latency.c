/*
 * sse_latency: a native SSE load generator for plasma's fixed-rate latency figure.
 *
 * A Python client costs ~10 us per delivery when events are spaced (one wake-up and one read
 * per event per connection), so on 2 cores it, not the server, decides the latency. This one
 * costs ~1-2 us: one epoll loop, fixed buffers, and a scan for the bench event's "s" (sequence)
 * and "t" (publish time, ns since EPOCH_NS) fields in each data: line.
 *
 * usage: sse_latency HOST PORT CONNS EVENT_TYPE EPOCH_NS FIRST_SEQ COUNT TIMEOUT_S
 * Prints "ready" once every connection has its retry: line, then one JSON line at the end:
 * deliveries, lost/duplicated/reordered counts, latency percentiles in ms, own CPU seconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536

struct conn {
    int fd;
    int ready;             /* saw "retry:" */
    long long next;        /* next expected sequence number */
    long long got, dup, reorder;
    size_t len;
    char buf[BUF];
};

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static long long field(const char *line, const char *end, const char *name) {
    const char *p = memmem(line, end - line, name, strlen(name));
    if (!p) return -1;
    return strtoll(p + strlen(name), NULL, 10);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT CONNS TYPE EPOCH_NS FIRST_SEQ COUNT TIMEOUT_S\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), n = atoi(argv[3]);
    const char *type = argv[4];
    long long epoch = atoll(argv[5]), first = atoll(argv[6]), count = atoll(argv[7]);
    double timeout = atof(argv[8]);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    struct conn *conns = calloc(n, sizeof *conns);
    long long cap = (long long)n * count, nlat = 0;
    long long *lat = malloc(sizeof(long long) * (cap ? cap : 1));
    int ep = epoll_create1(0);
    char req[512];
    int reqlen = snprintf(req, sizeof req,
        "GET /?eventType=%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", type, host);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);

    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("connect");
            return 1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (write(fd, req, reqlen) != reqlen) { perror("write"); return 1; }
        conns[i].fd = fd;
        conns[i].next = first;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    int ready = 0, announced = 0;
    long long done_conns = 0, deadline = 0;
    struct epoll_event events[256];
    for (;;) {
        if (announced && !deadline) deadline = now_ns() + (long long)(timeout * 1e9);
        if (deadline && now_ns() > deadline) break;
        int k = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < k; e++) {
            struct conn *c = &conns[events[e].data.u32];
            ssize_t r = read(c->fd, c->buf + c->len, BUF - 1 - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            long long t_recv = now_ns();
            c->len += r;
            c->buf[c->len] = 0;
            char *p = c->buf, *end = c->buf + c->len;
            if (!c->ready) {
                char *q = strstr(p, "retry:");
                if (!q) continue;
                c->ready = 1;
                ready++;
            }
            /* Consume every complete line; keep a partial one for the next read. */
            char *nl;
            while ((nl = memchr(p, '\n', end - p)) != NULL) {
                if (nl - p > 6 && memcmp(p, "data: ", 6) == 0) {
                    long long s = field(p, nl, "\"s\":"), t = field(p, nl, "\"t\":");
                    if (s >= 0 && t >= 0) {
                        if (s == c->next) {
                            c->next++;
                            c->got++;
                            if (nlat < cap) lat[nlat++] = t_recv - epoch - t;
                            if (c->next == first + count) done_conns++;
                        } else if (s < c->next) {
                            c->dup++;
                        } else {
                            c->reorder++;
                            c->next = s + 1;
                        }
                    }
                }
                p = nl + 1;
            }
            c->len = end - p;
            memmove(c->buf, p, c->len);
        }
        if (!announced && ready == n) {
            printf("ready\n");
            fflush(stdout);
            announced = 1;
        }
        if (announced && done_conns == n) break;
    }

    long long got = 0, dup = 0, reorder = 0;
    for (int i = 0; i < n; i++) {
        got += conns[i].got;
        dup += conns[i].dup;
        reorder += conns[i].reorder;
    }
    qsort(lat, nlat, sizeof *lat, cmp_ll);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
#define PCT(q) (nlat ? lat[(long long)((nlat - 1) * (q))] / 1e6 : -1.0)
    printf("{\"connections\":%d,\"expected\":%lld,\"deliveries\":%lld,\"lost\":%lld,"
           "\"duplicated\":%lld,\"reordered\":%lld,\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,"
           "\"p99\":%.3f,\"max\":%.3f},\"cpu_seconds\":%.3f}\n",
           n, (long long)n * count, got, (long long)n * count - got, dup, reorder,
           PCT(0.5), PCT(0.9), PCT(0.99), nlat ? lat[nlat - 1] / 1e6 : -1.0, cpu);
    return 0;
}
