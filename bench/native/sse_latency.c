/*
 * sse_latency: a native SSE load generator for plasma's fixed-rate latency figure.
 *
 * A Python client costs ~10 us per delivery when events are spaced (one wake-up and one read
 * per event per connection), so on 2 cores it, not the server, decides the latency. This one
 * is one epoll loop with fixed buffers that scans each data: line for the bench event's "s"
 * (sequence) and "t" (publish time, ns since EPOCH_NS) fields.
 *
 * usage: sse_latency HOST PORT CONNS PATH EPOCH_NS FIRST_SEQ COUNT TIMEOUT_S
 * PATH is the subscription, e.g. "/?eventType=bench" (plasma) or "/sub?eventType=bench" (Nchan).
 * Prints "ready" once every connection has its 200 response head, then one JSON line at the end:
 * deliveries, lost/duplicated/reordered counts, latency percentiles in ms, own CPU seconds.
 *
 * Two latencies are kept for every delivery:
 * - "latency_ms": publish time to the moment this client's read returned;
 * - "arrival_ms": publish time to the moment the kernel queued the bytes on this client's
 *   socket (SO_TIMESTAMPNS), i.e. when the server's write handed them over; this one does
 *   not depend on how soon the client got to read. TCP gives one timestamp per read, the
 *   newest segment's: events that arrive together in one read share it, which can only
 *   overstate their latency.
 * With SSE_LATENCY_DUMP=FILE in the environment, every delivery is also written to FILE
 * as "sequence connection publish_ns arrival_ns read_ns" (ns since EPOCH_NS), for analysis.
 *
 * TLS (compiled with -DSSE_TLS, linked with -lssl -lcrypto; on with SSE_LATENCY_TLS_CA=FILE,
 * the PEM certificate to trust): each connection's handshake runs blocking on its socket, then
 * reads go recvmsg -> memory BIO -> SSL_read, so the kernel's arrival timestamp of the
 * encrypted bytes is kept exactly as in cleartext.
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
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifdef SSE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define BUF 65536
#define BATCH 256

struct conn {
    int fd;
#ifdef SSE_TLS
    SSL *ssl;              /* NULL in cleartext */
    BIO *in;               /* what recvmsg read, for SSL_read */
#endif
    int ready;             /* saw the 200 response head */
    long long next;        /* next expected sequence number */
    long long got, dup, reorder;
    size_t len;
    char buf[BUF];
};

/* What every read adds to. */
static struct {
    long long epoch, first, count;
    long long *lat, *arr, nlat, cap;
    long long ready, done_conns;
    FILE *dump;
    struct conn *conns;
} run;

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

/* Account for every complete event in c->buf; keep a partial line for the next read. */
static void consume(struct conn *c, long long t_arrival, long long t_recv) {
    c->buf[c->len] = 0;
    char *p = c->buf, *end = c->buf + c->len;
    if (!c->ready) {
        char *head_end = strstr(p, "\r\n\r\n");
        if (!head_end) return;
        if (strncmp(p, "HTTP/1.1 200", 12) != 0) {
            fprintf(stderr, "subscription refused: %.*s\n", (int)(strcspn(p, "\r")), p);
            exit(1);
        }
        c->ready = 1;
        run.ready++;
        p = head_end + 4;
    }
    char *nl;
    while ((nl = memchr(p, '\n', end - p)) != NULL) {
        if (nl - p > 6 && memcmp(p, "data: ", 6) == 0) {
            long long s = field(p, nl, "\"s\":"), t = field(p, nl, "\"t\":");
            if (s >= 0 && t >= 0) {
                if (s == c->next) {
                    c->next++;
                    c->got++;
                    if (run.nlat < run.cap) {
                        run.arr[run.nlat] = t_arrival - run.epoch - t;
                        run.lat[run.nlat++] = t_recv - run.epoch - t;
                        if (run.dump)
                            fprintf(run.dump, "%lld %ld %lld %lld %lld\n", s, (long)(c - run.conns),
                                    t, t_arrival - run.epoch, t_recv - run.epoch);
                    }
                    if (c->next == run.first + run.count) run.done_conns++;
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

/* Read what one connection has and account for every complete event in it. */
static void on_readable(int ep, struct conn *c) {
#ifdef SSE_TLS
    static char raw[BUF];
    char *into = c->ssl ? raw : c->buf + c->len;
    size_t room = c->ssl ? BUF : BUF - 1 - c->len;
#else
    char *into = c->buf + c->len;
    size_t room = BUF - 1 - c->len;
#endif
    struct iovec iov = {.iov_base = into, .iov_len = room};
    union {
        char space[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control.space, .msg_controllen = sizeof control.space};
    ssize_t r = recvmsg(c->fd, &msg, 0);
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        if (c->next != run.first + run.count)
            fprintf(stderr, "connection %ld closed by the server\n", (long)(c - run.conns));
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        return;
    }
    long long t_recv = now_ns(), t_arrival = t_recv;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            t_arrival = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        }
    }
#ifdef SSE_TLS
    if (c->ssl) {
        /* The bytes read are records: OpenSSL decrypts them into the line buffer, which is
         * emptied of complete lines after every piece (a record may finish one begun in an
         * earlier read, so the plaintext can be larger than this read). */
        BIO_write(c->in, raw, (int)r);
        for (;;) {
            int n = SSL_read(c->ssl, c->buf + c->len, (int)(BUF - 1 - c->len));
            if (n <= 0) {
                int err = SSL_get_error(c->ssl, n);
                if (err != SSL_ERROR_WANT_READ) {
                    fprintf(stderr, "TLS error %d on connection %ld\n", err, (long)(c - run.conns));
                    ERR_print_errors_fp(stderr);
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                }
                return;
            }
            c->len += n;
            consume(c, t_arrival, t_recv);
            if (c->len >= BUF - 1) {
                fprintf(stderr, "line too long on connection %ld\n", (long)(c - run.conns));
                exit(1);
            }
        }
    }
#endif
    c->len += r;
    consume(c, t_arrival, t_recv);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT CONNS PATH EPOCH_NS FIRST_SEQ COUNT TIMEOUT_S\n",
                argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), n = atoi(argv[3]);
    const char *path = argv[4];
    run.epoch = atoll(argv[5]);
    run.first = atoll(argv[6]);
    run.count = atoll(argv[7]);
    double timeout = atof(argv[8]);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    struct conn *conns = calloc(n, sizeof *conns);
    run.conns = conns;
    const char *dump = getenv("SSE_LATENCY_DUMP");
    if (dump && !(run.dump = fopen(dump, "w"))) {
        perror(dump);
        return 2;
    }
    run.cap = (long long)n * run.count;
    run.lat = malloc(sizeof(long long) * (run.cap ? run.cap : 1));
    run.arr = malloc(sizeof(long long) * (run.cap ? run.cap : 1));
    int ep = epoll_create1(0);
#ifdef SSE_TLS
    SSL_CTX *tls = NULL;
    const char *ca = getenv("SSE_LATENCY_TLS_CA");
    if (ca && *ca) {
        static const unsigned char alpn[] = "\x08http/1.1";
        tls = SSL_CTX_new(TLS_client_method());
        if (!tls || SSL_CTX_load_verify_locations(tls, ca, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 2;
        }
        SSL_CTX_set_verify(tls, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_alpn_protos(tls, alpn, sizeof alpn - 1);
    }
#endif
    char req[512];
    int reqlen = snprintf(req, sizeof req,
        "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, host);
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
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
#ifdef SSE_TLS
        if (tls) {
            SSL *ssl = SSL_new(tls);
            SSL_set_fd(ssl, fd);
            SSL_set_tlsext_host_name(ssl, "localhost");
            SSL_set1_host(ssl, "localhost");
            if (SSL_connect(ssl) != 1 || SSL_write(ssl, req, reqlen) != reqlen) {
                ERR_print_errors_fp(stderr);
                fprintf(stderr, "TLS handshake or request failed on connection %d\n", i);
                return 1;
            }
            /* From here on the records recvmsg reads are fed to OpenSSL by hand. */
            conns[i].in = BIO_new(BIO_s_mem());
            SSL_set0_rbio(ssl, conns[i].in);
            conns[i].ssl = ssl;
        } else
#endif
        if (write(fd, req, reqlen) != reqlen) { perror("write"); return 1; }
        conns[i].fd = fd;
        conns[i].next = run.first;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    int announced = 0;
    long long deadline = 0;
    struct epoll_event events[BATCH];
    for (;;) {
        long long now = now_ns();
        if (announced && !deadline) deadline = now + (long long)(timeout * 1e9);
        if (deadline && now > deadline) break;
        int k = epoll_wait(ep, events, BATCH, 100);
        for (int e = 0; e < k; e++) on_readable(ep, &conns[events[e].data.u32]);
        if (!announced && run.ready == n) {
            printf("ready\n");
            fflush(stdout);
            announced = 1;
        }
        if (announced && run.done_conns == n) break;
    }

    long long got = 0, dup = 0, reorder = 0, expected = (long long)n * run.count;
    for (int i = 0; i < n; i++) {
        got += conns[i].got;
        dup += conns[i].dup;
        reorder += conns[i].reorder;
    }
    if (run.dump) fclose(run.dump);
    long long nlat = run.nlat;
    qsort(run.lat, nlat, sizeof *run.lat, cmp_ll);
    qsort(run.arr, nlat, sizeof *run.arr, cmp_ll);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
#define PCT(a, q) (nlat ? (a)[(long long)((nlat - 1) * (q))] / 1e6 : -1.0)
    printf("{\"connections\":%d,\"expected\":%lld,"
           "\"deliveries\":%lld,\"lost\":%lld,\"duplicated\":%lld,\"reordered\":%lld,"
           "\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"arrival_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"cpu_seconds\":%.3f}\n",
           n, expected, got, expected - got, dup, reorder,
           PCT(run.lat, 0.5), PCT(run.lat, 0.9), PCT(run.lat, 0.99), PCT(run.lat, 1.0),
           PCT(run.arr, 0.5), PCT(run.arr, 0.9), PCT(run.arr, 0.99), PCT(run.arr, 1.0), cpu);
    return 0;
}
