/* stackbench-rate: the rate driver. An HTTP/1.1 load generator that must never be the limit.
 *
 * Written by hand, in C with epoll, because no packaged tool does what the rate sweep needs:
 * wrk, hey, bombardier and h2load are closed-loop only (or rate-limited without correcting for
 * coordinated omission); wrk2, vegeta, oha and k6, which do open-loop, are not in Debian. C
 * needs only gcc and zlib's headers, which a Python machine has, so `make demo` can build it in
 * a second on a fresh machine (Go or Rust would need a toolchain installed first). It needs no
 * library beyond libc: the histograms' zlib streams are written as stored (uncompressed)
 * deflate blocks, valid for every zlib reader, so not even zlib's headers are required.
 *
 * Two modes over C keep-alive connections (default 64), one request in flight per connection:
 * - closed loop (no --rate): each connection sends its next request as soon as the last answer
 *   is in, as wrk does: the server's capacity.
 * - open loop (--rate R): requests are due on a fixed schedule (uniform, or --poisson), whether
 *   or not earlier ones returned. A due request waits in the driver for a free connection, and
 *   that wait is part of its latency: "latency" runs from the intended send time (corrected for
 *   coordinated omission), "service" from the actual send (what a closed-loop tool reports).
 *
 * Every --interval seconds it prints one JSON line on stdout: cumulative counts (intended, sent,
 * completed, errors by kind) and, per route, the interval's exact latencies as HdrHistograms
 * (3 significant digits, microseconds, V2 compressed encoding in base64: what any HdrHistogram
 * library decodes, loadtest/histograms.py included). The last line ("end") adds its own CPU
 * time. Requests come from --request arguments (the scenario table, loadtest/driver/
 * scenarios.py, is the one place for what a scenario sends), mixed by smooth weighted round
 * robin, so a mix is deterministic.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_KINDS 32
#define MAX_ROUTES 32
#define READ_BUF 65536
#define HEAD_MAX 65536
#define QUEUE_MAX (1u << 22) /* due requests waiting for a connection; beyond: dropped */

/* ---- HdrHistogram: lowest 1, highest 3,600,000,000 (an hour in µs), 3 significant digits,
 * the setting of loadtest/histograms.py. Index arithmetic as in HdrHistogram_c. ---------- */
#define H_LOWEST 1
#define H_HIGHEST 3600000000LL
#define H_DIGITS 3
#define H_SUB_BUCKET_HALF_MAGNITUDE 10 /* sub_bucket_count = 2^ceil(log2(2 * 10^3)) = 2048 */
#define H_SUB_BUCKET_HALF_COUNT 1024
#define H_SUB_BUCKET_MASK 2047
#define H_BUCKET_COUNT 22 /* buckets until 2048 << (n - 1) exceeds H_HIGHEST */
#define H_COUNTS_LEN ((H_BUCKET_COUNT + 1) * H_SUB_BUCKET_HALF_COUNT)

typedef struct {
    int64_t counts[H_COUNTS_LEN];
    int64_t total;
    int32_t max_index;
} hist;

static int32_t h_index(int64_t value) {
    int pow2ceiling = 64 - __builtin_clzll((uint64_t)value | H_SUB_BUCKET_MASK);
    int bucket = pow2ceiling - (H_SUB_BUCKET_HALF_MAGNITUDE + 1);
    int32_t sub_bucket = (int32_t)(value >> bucket);
    return ((bucket + 1) << H_SUB_BUCKET_HALF_MAGNITUDE) + (sub_bucket - H_SUB_BUCKET_HALF_COUNT);
}

static void h_record(hist *h, int64_t value) {
    if (value < H_LOWEST) value = H_LOWEST;
    if (value > H_HIGHEST) value = H_HIGHEST;
    int32_t i = h_index(value);
    h->counts[i]++;
    h->total++;
    if (i > h->max_index) h->max_index = i;
}

static void h_reset(hist *h) {
    if (h->total) memset(h->counts, 0, sizeof(int64_t) * (size_t)(h->max_index + 1));
    h->total = 0;
    h->max_index = -1;
}

static size_t zigzag(uint8_t *out, int64_t value) {
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    size_t n = 0;
    /* HdrHistogram's LEB128: at most 9 bytes, the ninth holding 8 bits */
    while (n < 8 && v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

/* A zlib stream of stored deflate blocks (RFC 1950/1951): header, blocks of at most 65,535
 * bytes, Adler-32. Returns its length. */
static size_t zlib_stored(uint8_t *out, const uint8_t *data, size_t len) {
    size_t at = 0;
    out[at++] = 0x78, out[at++] = 0x01;
    size_t done = 0;
    do {
        size_t block = len - done > 65535 ? 65535 : len - done;
        out[at++] = done + block == len; /* BFINAL on the last, BTYPE 00: stored */
        out[at++] = (uint8_t)block, out[at++] = (uint8_t)(block >> 8);
        out[at++] = (uint8_t)~block, out[at++] = (uint8_t)(~block >> 8);
        memcpy(out + at, data + done, block);
        at += block, done += block;
    } while (done < len);
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < len; i++) a = (a + data[i]) % 65521, b = (b + a) % 65521;
    put32(out + at, b << 16 | a);
    return at + 4;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The V2 compressed encoding, base64: compression cookie, length, then zlib of (encoding
 * cookie, payload length, normalizing offset, digits, lowest, highest, ratio 1.0, counts as
 * ZigZag LEB128 with each run of zeros as one negative count). Returns a malloc'd string. */
static char *h_encode(const hist *h) {
    static uint8_t payload[40 + (size_t)H_COUNTS_LEN * 9];
    static uint8_t packed[8 + 40 + (size_t)H_COUNTS_LEN * 9 + 8192];
    size_t n = 40;
    int32_t limit = h->total ? h->max_index + 1 : 0;
    for (int32_t i = 0; i < limit;) {
        if (h->counts[i] == 0) {
            int32_t zeros = 0;
            while (i < limit && h->counts[i] == 0) zeros++, i++;
            n += zigzag(payload + n, -(int64_t)zeros);
        } else {
            n += zigzag(payload + n, h->counts[i++]);
        }
    }
    put32(payload, 0x1c849303u | 0x10u);
    put32(payload + 4, (uint32_t)(n - 40));
    put32(payload + 8, 0);
    put32(payload + 12, H_DIGITS);
    put64(payload + 16, H_LOWEST);
    put64(payload + 24, (uint64_t)H_HIGHEST);
    double ratio = 1.0;
    uint64_t bits;
    memcpy(&bits, &ratio, sizeof bits);
    put64(payload + 32, bits);
    size_t packed_len = zlib_stored(packed + 8, payload, n);
    put32(packed, 0x1c849304u | 0x10u);
    put32(packed + 4, (uint32_t)packed_len);
    size_t raw = packed_len + 8, at = 0;
    char *out = malloc((raw + 2) / 3 * 4 + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < raw; i += 3) {
        uint32_t v = (uint32_t)packed[i] << 16;
        if (i + 1 < raw) v |= (uint32_t)packed[i + 1] << 8;
        if (i + 2 < raw) v |= packed[i + 2];
        out[at++] = B64[(v >> 18) & 63];
        out[at++] = B64[(v >> 12) & 63];
        out[at++] = i + 1 < raw ? B64[(v >> 6) & 63] : '=';
        out[at++] = i + 2 < raw ? B64[v & 63] : '=';
    }
    out[at] = 0;
    return out;
}

/* ---- requests and routes ----------------------------------------------------------------- */
typedef struct {
    char *bytes;
    size_t len;
    int route;
    int weight, current; /* smooth weighted round robin */
} kind;

typedef struct {
    char name[256];
    hist latency, service;
} route;

static kind kinds[MAX_KINDS];
static int nkinds;
static route routes[MAX_ROUTES];
static int nroutes;

static int pick_kind(void) {
    int total = 0, best = 0;
    for (int i = 0; i < nkinds; i++) {
        kinds[i].current += kinds[i].weight;
        total += kinds[i].weight;
        if (kinds[i].current > kinds[best].current) best = i;
    }
    kinds[best].current -= total;
    return best;
}

/* ---- connections --------------------------------------------------------------------------- */
enum { C_CONNECTING, C_IDLE, C_SENDING, C_HEAD, C_BODY, C_CHUNK_LINE, C_CHUNK_DATA, C_TRAILER };

typedef struct conn {
    int fd;
    int state;
    int kind;
    size_t sent;           /* bytes of the request written */
    int64_t intended_ns;   /* when the request was due (open loop), else its send time */
    int64_t sent_ns;       /* when its first byte was written */
    char head[HEAD_MAX];   /* the response head so far */
    size_t head_len;
    int64_t remaining;     /* body bytes (or chunk bytes) still to come */
    int status;
    int close_after;
    int in_idle;           /* on the idle stack */
    int want_write;        /* EPOLLOUT asked for: a write would have blocked */
} conn;

static struct sockaddr_in target;
static int epfd;
static conn *conns;
static int nconns;
static int *idle_stack, nidle;

static struct {
    uint64_t intended, sent, completed, dropped;
    uint64_t err_connect, err_reset, err_timeout, err_status, err_parse;
    uint64_t connects;
} totals;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void watch(conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, op, c->fd, &ev);
}

static int idle_capacity;

static void push_idle(conn *c) {
    if (c->in_idle) return;
    if (nidle == idle_capacity) { /* stale entries (connections replaced) piled up: rebuild */
        nidle = 0;
        for (int i = 0; i < nconns; i++)
            if (conns[i].in_idle && conns[i].state == C_IDLE) idle_stack[nidle++] = i;
    }
    idle_stack[nidle++] = (int)(c - conns);
    c->in_idle = 1;
}

static void open_conn(conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = C_CONNECTING;
    c->in_idle = 0;
    c->want_write = 1;
    totals.connects++;
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        totals.err_connect++;
        close(c->fd);
        c->fd = -1;
        return;
    }
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

/* Replace a connection; `counter` counts the request lost on it, if one was in flight (it is
 * never recorded as a latency). */
static void fail_conn(conn *c, uint64_t *counter) {
    if (counter) (*counter)++;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    open_conn(c);
}

static int closed_loop;
static void send_request(conn *c, int64_t intended);

static void write_more(conn *c) {
    kind *k = &kinds[c->kind];
    while (c->sent < k->len) {
        ssize_t n = send(c->fd, k->bytes + c->sent, k->len - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) {
                if (!c->want_write) watch(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
                c->want_write = 1;
                return;
            }
            fail_conn(c, &totals.err_reset);
            return;
        }
        c->sent += (size_t)n;
    }
    c->state = C_HEAD;
    c->head_len = 0;
    /* EPOLLIN stays registered; epoll is touched only when a write blocked (no syscall per
     * request beyond the send and the recv). */
    if (c->want_write) watch(c, EPOLLIN, EPOLL_CTL_MOD);
    c->want_write = 0;
}

static void send_request(conn *c, int64_t intended) {
    c->kind = pick_kind();
    c->sent = 0;
    c->sent_ns = now_ns();
    c->intended_ns = intended ? intended : c->sent_ns;
    c->state = C_SENDING;
    c->in_idle = 0;
    totals.sent++;
    write_more(c);
}

/* Due requests waiting for a free connection (open loop): their intended times, in order. */
static int64_t *queue;
static uint32_t q_head, q_len;
static int measuring = 1;

static void dispatch(void);

static void complete(conn *c) {
    int64_t t = now_ns();
    route *r = &routes[kinds[c->kind].route];
    h_record(&r->latency, (t - c->intended_ns + 500) / 1000);
    h_record(&r->service, (t - c->sent_ns + 500) / 1000);
    totals.completed++;
    if (c->status < 200 || c->status >= 400) totals.err_status++;
    if (c->close_after) {
        close(c->fd);
        c->fd = -1;
        open_conn(c);
        return;
    }
    c->state = C_IDLE;
    if (closed_loop && measuring) {
        send_request(c, 0);
    } else if (!closed_loop) {
        push_idle(c);
        dispatch();
    }
}

static int header_is(const char *line, size_t len, const char *name) {
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

static const char *value_of(const char *line, size_t len, size_t name_len, size_t *out_len) {
    const char *v = line + name_len + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    *out_len = (size_t)(end - v);
    return v;
}

/* Parse a complete head: status, framing. Returns 0, or -1 if malformed. */
static int parse_head(conn *c, size_t head_len) {
    const char *h = c->head;
    if (head_len < 12 || strncmp(h, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(h + 9);
    c->remaining = 0;
    c->close_after = h[7] == '0';
    int chunked = 0, has_length = 0;
    const char *p = memchr(h, '\n', head_len);
    while (p && (size_t)(p - h) < head_len) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', head_len - (size_t)(line - h));
        if (!eol) break;
        size_t len = (size_t)(eol - line);
        if (len && line[len - 1] == '\r') len--;
        if (len == 0) break;
        size_t vlen;
        if (header_is(line, len, "content-length")) {
            const char *v = value_of(line, len, 14, &vlen);
            c->remaining = strtoll(v, NULL, 10);
            has_length = 1;
        } else if (header_is(line, len, "transfer-encoding")) {
            const char *v = value_of(line, len, 17, &vlen);
            chunked = vlen >= 7 && strncasecmp(v + vlen - 7, "chunked", 7) == 0;
        } else if (header_is(line, len, "connection")) {
            const char *v = value_of(line, len, 10, &vlen);
            if (vlen == 5 && strncasecmp(v, "close", 5) == 0) c->close_after = 1;
            if (vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0) c->close_after = 0;
        }
        p = eol;
    }
    int no_body = c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200);
    if (no_body) c->state = C_IDLE;
    else if (chunked) c->state = C_CHUNK_LINE;
    else c->state = C_BODY;
    if (c->state == C_BODY && !has_length) c->remaining = -1, c->close_after = 1; /* to EOF */
    return 0;
}

/* Feed bytes to a connection's response parser; returns bytes consumed, or -1 on error. */
static ssize_t feed(conn *c, const char *data, size_t len) {
    size_t used = 0;
    while (used < len) {
        if (c->state == C_HEAD || c->state == C_CHUNK_LINE || c->state == C_TRAILER) {
            /* accumulate a line (or a whole head) in c->head */
            const char *nl = memchr(data + used, '\n', len - used);
            size_t take = nl ? (size_t)(nl - (data + used)) + 1 : len - used;
            if (c->head_len + take > HEAD_MAX) return -1;
            memcpy(c->head + c->head_len, data + used, take);
            c->head_len += take;
            used += take;
            if (!nl) return (ssize_t)used;
            size_t n = c->head_len;
            if (c->state == C_HEAD) {
                if (n < 4 || memcmp(c->head + n - 4, "\r\n\r\n", 4) != 0)
                    continue; /* not the empty line yet */
                if (parse_head(c, n) < 0) return -1;
                c->head_len = 0;
                if (c->state == C_IDLE || (c->state == C_BODY && c->remaining == 0)) {
                    complete(c);
                    return (ssize_t)used;
                }
            } else if (c->state == C_CHUNK_LINE) {
                char *end;
                c->head[n] = 0;
                long long size = strtoll(c->head, &end, 16);
                c->head_len = 0;
                if (end == c->head || size < 0) return -1;
                if (size == 0) {
                    c->state = C_TRAILER;
                } else {
                    c->remaining = size + 2; /* the data and its CRLF */
                    c->state = C_CHUNK_DATA;
                }
            } else { /* trailer lines until an empty one */
                c->head_len = 0;
                if (n <= 2) {
                    complete(c);
                    return (ssize_t)used;
                }
            }
        } else if (c->state == C_BODY && c->remaining < 0) {
            used = len; /* a body delimited by the close */
        } else if (c->state == C_BODY || c->state == C_CHUNK_DATA) {
            size_t take = len - used < (size_t)c->remaining ? len - used : (size_t)c->remaining;
            c->remaining -= (int64_t)take;
            used += take;
            if (c->remaining == 0) {
                if (c->state == C_BODY) {
                    complete(c);
                    return (ssize_t)used;
                }
                c->state = C_CHUNK_LINE;
            }
        } else {
            return -1; /* bytes nobody asked for */
        }
    }
    return (ssize_t)used;
}

static char readbuf[READ_BUF];

static void on_readable(conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, readbuf, sizeof readbuf, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            fail_conn(c, &totals.err_reset);
            return;
        }
        if (n == 0) {
            if (c->state == C_BODY && c->remaining < 0) {
                complete(c); /* the close ends the body; complete() replaces the connection */
                return;
            }
            /* closed: an error if a request was in flight, else the server's idle close */
            fail_conn(c, c->state >= C_SENDING ? &totals.err_reset : NULL);
            return;
        }
        size_t off = 0;
        while (off < (size_t)n) {
            if (c->state < C_HEAD) {
                totals.err_parse++;
                fail_conn(c, NULL);
                return;
            }
            ssize_t used = feed(c, readbuf + off, (size_t)n - off);
            if (used < 0) {
                totals.err_parse++;
                fail_conn(c, NULL);
                return;
            }
            off += (size_t)used;
            if (c->fd < 0 || c->state < C_HEAD) {
                if (off < (size_t)n && c->fd >= 0) {
                    totals.err_parse++;
                    fail_conn(c, NULL);
                }
                break;
            }
        }
        if (c->fd < 0 || c->state < C_HEAD) return;
        if ((size_t)n < sizeof readbuf) return;
    }
}

static void on_event(conn *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            totals.err_connect++;
            close(c->fd);
            c->fd = -1;
            usleep(1000); /* a refused connect retried at once would spin */
            open_conn(c);
            return;
        }
        c->state = C_IDLE;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
        c->want_write = 0;
        if (closed_loop) {
            if (measuring) send_request(c, 0);
        } else {
            push_idle(c);
            dispatch();
        }
        return;
    }
    if (c->state == C_SENDING && (events & EPOLLOUT)) {
        write_more(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (c->state == C_IDLE) {
            /* the server closed an idle connection (or sent something unasked) */
            char b[64];
            ssize_t n = recv(c->fd, b, sizeof b, 0);
            if (n < 0 && errno == EAGAIN) return;
            if (n > 0) totals.err_parse++;
            fail_conn(c, NULL); /* its stale idle-stack entry is skipped by dispatch() */
            return;
        }
        on_readable(c);
    }
}

static void dispatch(void) {
    while (q_len && nidle) {
        conn *c = &conns[idle_stack[--nidle]];
        if (!c->in_idle || c->state != C_IDLE || c->fd < 0) continue; /* left the stack */
        int64_t due = queue[q_head];
        q_head = (q_head + 1) % QUEUE_MAX;
        q_len--;
        send_request(c, due);
    }
}

/* Wait for events until `wait_ns` from now, to the nanosecond: epoll_pwait2 (Linux 5.11); where
 * it is missing (older kernels, valgrind), a timerfd in the epoll set, since epoll_wait's
 * millisecond timeout would send open-loop requests up to a millisecond late. */
static int timer_fd = -1;

static int wait_events(struct epoll_event *events, int max, int64_t wait_ns) {
    if (timer_fd < 0) {
        struct timespec ts = {.tv_sec = wait_ns / 1000000000LL, .tv_nsec = wait_ns % 1000000000LL};
        int n = epoll_pwait2(epfd, events, max, &ts, NULL);
        if (n >= 0 || errno != ENOSYS) return n;
        timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (timer_fd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, timer_fd, &ev) < 0) return -1;
    }
    if (wait_ns <= 0) return epoll_wait(epfd, events, max, 0);
    struct itimerspec at = {.it_value = {.tv_sec = wait_ns / 1000000000LL,
                                         .tv_nsec = wait_ns % 1000000000LL}};
    timerfd_settime(timer_fd, 0, &at, NULL);
    return epoll_wait(epfd, events, max, -1);
}

/* ---- reporting ----------------------------------------------------------------------------- */
static void print_line(const char *type, double elapsed, int with_cpu) {
    printf("{\"type\":\"%s\",\"elapsed\":%.6f,\"intended\":%llu,\"sent\":%llu,\"completed\":%llu,"
           "\"dropped\":%llu,\"queued\":%u,\"connects\":%llu,"
           "\"errors\":{\"connect\":%llu,\"reset\":%llu,\"timeout\":%llu,\"status\":%llu,"
           "\"parse\":%llu},\"routes\":{",
           type, elapsed, (unsigned long long)totals.intended, (unsigned long long)totals.sent,
           (unsigned long long)totals.completed, (unsigned long long)totals.dropped, q_len,
           (unsigned long long)totals.connects, (unsigned long long)totals.err_connect,
           (unsigned long long)totals.err_reset, (unsigned long long)totals.err_timeout,
           (unsigned long long)totals.err_status, (unsigned long long)totals.err_parse);
    int first = 1;
    for (int i = 0; i < nroutes; i++) {
        if (!routes[i].latency.total) continue;
        char *lat = h_encode(&routes[i].latency), *svc = h_encode(&routes[i].service);
        printf("%s\"%s\":{\"latency\":\"%s\",\"service\":\"%s\"}", first ? "" : ",",
               routes[i].name, lat ? lat : "", svc ? svc : "");
        free(lat);
        free(svc);
        first = 0;
        h_reset(&routes[i].latency);
        h_reset(&routes[i].service);
    }
    printf("}");
    if (with_cpu) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf(",\"cpu_user_s\":%.6f,\"cpu_system_s\":%.6f",
               ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
               ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    }
    printf("}\n");
    fflush(stdout);
}

/* ---- arguments ----------------------------------------------------------------------------- */
static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static void die(const char *message) {
    fprintf(stderr, "stackbench-rate: error: %s\n", message);
    exit(2);
}

/* --request 'ROUTE METHOD TARGET WEIGHT [CONTENT-TYPE BODY-HEX]', fields separated by tabs */
static void add_request(const char *spec, const char *host_header) {
    if (nkinds == MAX_KINDS) die("too many --request");
    char *copy = strdup(spec), *fields[6] = {0}, *save = NULL;
    int n = 0;
    for (char *f = strtok_r(copy, "\t", &save); f && n < 6; f = strtok_r(NULL, "\t", &save))
        fields[n++] = f;
    if (n != 4 && n != 6) die("--request needs ROUTE, METHOD, TARGET, WEIGHT [, TYPE, BODY-HEX]");
    int weight = atoi(fields[3]);
    if (weight < 1) die("--request weight must be a positive integer");
    size_t body_len = n == 6 ? strlen(fields[5]) / 2 : 0;
    char *body = malloc(body_len + 1);
    for (size_t i = 0; i < body_len; i++) {
        int hi = hexval(fields[5][2 * i]), lo = hexval(fields[5][2 * i + 1]);
        if (hi < 0 || lo < 0) die("--request body must be hex");
        body[i] = (char)(hi << 4 | lo);
    }
    size_t cap = strlen(fields[1]) + strlen(fields[2]) + strlen(host_header) + 256 + body_len;
    char *bytes = malloc(cap);
    int len = snprintf(bytes, cap, "%s %s HTTP/1.1\r\nHost: %s\r\n", fields[1], fields[2],
                       host_header);
    if (n == 6)
        len += snprintf(bytes + len, cap - (size_t)len,
                        "Content-Type: %s\r\nContent-Length: %zu\r\n", fields[4], body_len);
    len += snprintf(bytes + len, cap - (size_t)len, "\r\n");
    memcpy(bytes + len, body, body_len);
    free(body);
    int r = 0;
    while (r < nroutes && strcmp(routes[r].name, fields[0]) != 0) r++;
    if (r == nroutes) {
        if (nroutes == MAX_ROUTES) die("too many routes");
        if (strlen(fields[0]) >= sizeof routes[r].name || strpbrk(fields[0], "\"\\"))
            die("a route name must be short and free of quotes and backslashes");
        strcpy(routes[r].name, fields[0]);
        h_reset(&routes[r].latency);
        h_reset(&routes[r].service);
        nroutes++;
    }
    kinds[nkinds++] = (kind){.bytes = bytes, .len = (size_t)len + body_len, .route = r,
                             .weight = weight};
    free(copy);
}

static double number(const char *flag, const char *text, double low, double high) {
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !(v >= low && v <= high)) {
        static char message[256];
        snprintf(message, sizeof message, "%s must be a number from %g to %g, not '%s'", flag,
                 low, high, text);
        die(message);
    }
    return v;
}

/* --encode-values: values in µs on stdin, one per line; prints the encoded histogram (the
 * encoder's own test, read back by loadtest/histograms.py). */
static int encode_values(void) {
    static hist h;
    h_reset(&h);
    long long v;
    while (scanf("%lld", &v) == 1) h_record(&h, v);
    char *text = h_encode(&h);
    if (!text) return 1;
    printf("%s\n", text);
    free(text);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: stackbench-rate --host IP --port N --request SPEC [--request SPEC ...]\n"
            "         [--connections 64] [--duration 3] [--rate R [--poisson] [--seed N]]\n"
            "         [--interval 0.5] [--timeout 10] [--host-header H]\n"
            "       stackbench-rate --encode-values < values\n"
            "SPEC: ROUTE<TAB>METHOD<TAB>TARGET<TAB>WEIGHT[<TAB>CONTENT-TYPE<TAB>BODY-HEX]\n");
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *host_header = NULL;
    const char *specs[MAX_KINDS];
    int nspecs = 0, port = 0, poisson = 0;
    double duration = 3, rate = 0, interval = 0.5, timeout = 10;
    unsigned seed = 1;
    nconns = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--encode-values") == 0) return encode_values();
        if (strcmp(a, "--poisson") == 0) {
            poisson = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            return 0;
        }
        if (i + 1 >= argc) {
            usage();
            die("every option but --poisson takes a value");
        }
        const char *v = argv[++i];
        if (strcmp(a, "--host") == 0) host = v;
        else if (strcmp(a, "--port") == 0) port = (int)number(a, v, 1, 65535);
        else if (strcmp(a, "--connections") == 0) nconns = (int)number(a, v, 1, 100000);
        else if (strcmp(a, "--duration") == 0) duration = number(a, v, 0.01, 86400);
        else if (strcmp(a, "--rate") == 0) rate = number(a, v, 0.001, 1e8);
        else if (strcmp(a, "--interval") == 0) interval = number(a, v, 0.01, 3600);
        else if (strcmp(a, "--timeout") == 0) timeout = number(a, v, 0.001, 3600);
        else if (strcmp(a, "--seed") == 0) seed = (unsigned)number(a, v, 0, 4294967295.0);
        else if (strcmp(a, "--host-header") == 0) host_header = v;
        else if (strcmp(a, "--request") == 0) {
            if (nspecs == MAX_KINDS) die("too many --request");
            specs[nspecs++] = v;
        } else {
            usage();
            fprintf(stderr, "stackbench-rate: error: unknown option %s\n", a);
            return 2;
        }
    }
    if (!port) die("--port is required");
    if (!nspecs) die("at least one --request is required");
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1) die("--host must be an IPv4 address");
    char default_host[64];
    snprintf(default_host, sizeof default_host, "%s:%d", host, port);
    for (int i = 0; i < nspecs; i++) add_request(specs[i], host_header ? host_header : default_host);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconns + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)nconns + 64 ? rl.rlim_max : (rlim_t)nconns + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    closed_loop = rate <= 0;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)nconns, sizeof(conn));
    idle_capacity = nconns * 2 + 16;
    idle_stack = calloc((size_t)idle_capacity, sizeof(int));
    queue = closed_loop ? NULL : malloc(sizeof(int64_t) * QUEUE_MAX);
    if (!conns || !idle_stack || (!closed_loop && !queue)) die("out of memory");
    srand48(seed);

    int64_t start = now_ns();
    int64_t end = start + (int64_t)(duration * 1e9);
    int64_t next_report = start + (int64_t)(interval * 1e9);
    int64_t timeout_ns = (int64_t)(timeout * 1e9);
    double gap_ns = closed_loop ? 0 : 1e9 / rate;
    double next_due = (double)start;
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        open_conn(&conns[i]);
    }
    struct epoll_event events[256];
    /* After the end, a grace period for answers in flight (not the ones still queued). */
    int64_t grace_end = end + (int64_t)(1e9 < timeout_ns ? 1e9 : timeout_ns);
    for (;;) {
        int64_t t = now_ns();
        if (t >= end && measuring) {
            /* The last measured interval ends here; the "end" line then adds the answers
             * that were still in flight. */
            measuring = 0;
            totals.dropped += q_len; /* due but never sent */
            q_len = 0;
            print_line("interval", (double)(t - start) / 1e9, 0);
            next_report = INT64_MAX;
        }
        if (!measuring) {
            int busy = 0;
            for (int i = 0; i < nconns; i++) busy += conns[i].state >= C_SENDING;
            if (!busy || t >= grace_end) break;
        }
        if (measuring && !closed_loop) {
            while (next_due <= (double)t && next_due < (double)end) {
                totals.intended++;
                if (q_len == QUEUE_MAX) {
                    totals.dropped++;
                } else {
                    queue[(q_head + q_len) % QUEUE_MAX] = (int64_t)next_due;
                    q_len++;
                }
                next_due += poisson ? -log(1.0 - drand48()) * gap_ns : gap_ns;
            }
            dispatch();
        }
        if (t >= next_report) {
            /* requests in flight past the timeout: counted, their connections replaced */
            for (int i = 0; i < nconns; i++) {
                conn *c = &conns[i];
                if (c->state >= C_SENDING && t - c->sent_ns > timeout_ns && c->fd >= 0)
                    fail_conn(c, &totals.err_timeout);
            }
            print_line("interval", (double)(t - start) / 1e9, 0);
            next_report += (int64_t)(interval * 1e9);
            if (next_report < t) next_report = t + (int64_t)(interval * 1e9);
            if (next_report > end - (int64_t)(interval * 0.25e9)) next_report = end;
        }
        int64_t wake = next_report;
        if (measuring && !closed_loop && next_due < (double)wake) wake = (int64_t)next_due;
        if (measuring && end < wake) wake = end;
        if (!measuring && grace_end < wake) wake = grace_end;
        int64_t wait = wake - now_ns();
        if (wait < 0) wait = 0;
        int n = wait_events(events, 256, wait);
        if (n < 0 && errno != EINTR) die("waiting for events failed");
        for (int i = 0; i < n; i++) {
            conn *c = events[i].data.ptr;
            if (c == NULL) { /* the fallback's timer */
                uint64_t expired;
                if (read(timer_fd, &expired, sizeof expired) < 0) continue;
                continue;
            }
            if (c->fd >= 0) on_event(c, events[i].events);
        }
    }
    print_line("end", (double)(now_ns() - start) / 1e9, 1);
    return 0;
}
