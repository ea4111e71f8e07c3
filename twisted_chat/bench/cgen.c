/* The optional C load generator (``python -m twisted_chat.bench --generator c``).
 *
 * Same members, same wire format and same phases as loadgen.py's Python
 * workers, in one single-threaded epoll process, so that the generator's own
 * CPU stops dominating the latency it measures. Driven by
 * twisted_chat/bench/cgen.py over stdin/stdout, one command a line, one JSON
 * answer a line:
 *
 *   connect PORT RATE REGISTER TIMEOUT    -> {"registered":..,"seconds":..,"errors":..}
 *   settle QUIET TIMEOUT                  -> {"seconds":..}
 *   run RATE DURATION PAD QUIET MAX PROBES FILE -> {"sent":..,"received":..,...}
 *   quit
 *
 * Usage: cgen [-f FACE] MEMBERS SENDERS [ROOMS PER]. Senders are members 0, step,
 * 2*step, ... with step = MEMBERS / SENDERS (as loadgen.py). SENDERS may be 0:
 * a process that only receives what another one's senders say (a room split
 * over two servers); its run ends no earlier than DURATION after its start. Without ROOMS,
 * every member joins "lobby" and senders send plain lines there. With ROOMS
 * (rooms "r0".."r<ROOMS-1>"), member i joins the PER rooms r(i mod ROOMS),
 * r(i+1 mod ROOMS), ...: each room gets MEMBERS * PER / ROOMS members, and
 * neighbours share rooms. A sender addresses its rooms in turn with
 * "/say rK TEXT". Registration waits for the names line of a member's last
 * join ("-- in lobby:" in protocol v1, "-- in #lobby:" in v2). With PROBES = 0 every receiving
 * connection parses the send stamp of every line (C is cheap), so latency is
 * sampled from all deliveries (see cmd_run for PROBES > 0); samples (int64
 * microseconds) are written raw to FILE.
 * Lines are "xxxx... T<16-digit CLOCK_MONOTONIC microseconds>\r\n".
 *
 * -f FACE: the face the members speak (lobby only, no ROOMS):
 *   line  the line protocol (the default, as above);
 *   irc   "NICK b<i>", "USER b<i> 0 * :bench", "JOIN #lobby"; registered at
 *         RPL_ENDOFNAMES ("#lobby :End of /NAMES"); senders send
 *         "PRIVMSG #lobby :xxxx... T<stamp>", receivers count PRIVMSG lines
 *         (a PING line is answered with PONG);
 *   ws    "GET /ws" with Upgrade, a Sec-WebSocket-Key and an Origin of the
 *         server's own; after the 101, "/join lobby" in a masked text frame;
 *         registered at the JSON names event of lobby; senders send one
 *         masked text frame a message, receivers count the server's
 *         (unmasked) text frames and take the stamp from the payload; pings
 *         are answered. JSON mode echoes a sender's own message: each one
 *         is expected MEMBERS times ("echo": 1 in run's answer).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MARK 40
#define STAMP_DIGITS 16
#define TAIL 256
#define RECV (1 << 18)

#define PAY 512 /* WebSocket: the first bytes of a frame's payload kept */

enum { FACE_LINE, FACE_IRC, FACE_WS };

typedef struct {
    int fd, index, registered, closed, sender, probe;
    long long lines;
    int tail_len;
    char tail[TAIL];
    int pend_len;
    char pend[512];
    long long said; /* messages sent, for a sender's room rotation */
    /* WebSocket: reading the 101 answer's head (into tail), then frames:
     * the header so far, the payload bytes still to come, its first bytes */
    int http, hdr_len, in_frame, opcode, pay_len;
    unsigned char hdr[14];
    long long need;
    char pay[PAY];
} conn_t;

static conn_t *conns;
static int members, nsenders, ep, errors_;
static int nrooms, per_member; /* 0, 0: everybody in lobby */
static int face = FACE_LINE, port_;
static uint32_t rng = 2463534242u; /* xorshift32, for WebSocket masking keys */
static conn_t **by_fd;
static int max_fd = 1 << 20;
static char rbuf[RECV + TAIL];
static int64_t *samples;
static size_t nsamples, capsamples;
static int sampling;

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double now_s(void) { return now_us() / 1e6; }

static double cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec / 1e6;
}

static void sample(int64_t v) {
    if (nsamples == capsamples) {
        capsamples = capsamples ? capsamples * 2 : 1 << 16;
        samples = realloc(samples, capsamples * sizeof *samples);
        if (!samples) { perror("realloc"); exit(2); }
    }
    samples[nsamples++] = v;
}

static void close_conn(conn_t *c) {
    if (c->closed) return;
    c->closed = 1;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    by_fd[c->fd] = NULL;
}

/* Parse the stamps of the complete lines in buf[0:n] (tail first), keep the rest. */
static void parse_lines(conn_t *c, char *data, ssize_t n, int64_t now) {
    /* data points into rbuf at offset TAIL, so the tail can be prepended in place */
    char *buf = data - c->tail_len;
    memcpy(buf, c->tail, c->tail_len);
    size_t len = n + c->tail_len;
    char *p = buf, *end = buf + len, *nl;
    while ((nl = memchr(p, '\n', end - p)) != NULL) {
        /* the stamp: " T" + 16 digits, then "\r" */
        char *q = nl;
        if (q > p && q[-1] == '\r') q--;
        if (q - p >= STAMP_DIGITS + 2 && q[-STAMP_DIGITS - 2] == ' ' &&
            q[-STAMP_DIGITS - 1] == 'T') {
            int64_t v = 0;
            int ok = 1;
            for (char *d = q - STAMP_DIGITS; d < q; d++) {
                if (*d < '0' || *d > '9') { ok = 0; break; }
                v = v * 10 + (*d - '0');
            }
            if (ok) sample(now - v);
        }
        p = nl + 1;
    }
    size_t rest = end - p;
    if (rest > TAIL) rest = 0; /* a line too long to hold a stamp we'd want: drop */
    memmove(c->tail, p, rest);
    c->tail_len = (int)rest;
}

/* The room of a member's k-th join (k < per_member). */
static int room_of(const conn_t *c, long long k) {
    return (int)((c->index + k) % nrooms);
}

/* The names line of the member's last join: v1 "-- in NAME:", v2 "-- in #NAME:". */
static int names_seen(const conn_t *c, const char *buf, size_t len) {
    char v1[MARK], v2[MARK];
    if (face == FACE_IRC) {
        /* RPL_ENDOFNAMES, the last line of the answer to JOIN */
        return memmem(buf, len, "#lobby :End of /NAMES", 21) != NULL;
    }
    if (nrooms) {
        int r = room_of(c, per_member - 1);
        snprintf(v1, sizeof v1, "-- in r%d:", r);
        snprintf(v2, sizeof v2, "-- in #r%d:", r);
    } else {
        snprintf(v1, sizeof v1, "-- in lobby:");
        snprintf(v2, sizeof v2, "-- in #lobby:");
    }
    return memmem(buf, len, v1, strlen(v1)) != NULL || memmem(buf, len, v2, strlen(v2)) != NULL;
}

static void do_send(conn_t *c, const char *line, int len);

/* IRC: answer every complete "PING token" line of buf with "PONG token";
 * returns how many (they are not deliveries). */
static int irc_pings(conn_t *c, const char *buf, size_t len) {
    const char *p = buf, *end = buf + len, *nl;
    int pings = 0;
    while ((nl = memchr(p, '\n', end - p)) != NULL) {
        if (nl - p > 5 && memcmp(p, "PING ", 5) == 0) {
            char pong[300];
            int l = (int)(nl - p - 5);
            if (l && p[5 + l - 1] == '\r') l--;
            if (l > 250) l = 250;
            do_send(c, pong, snprintf(pong, sizeof pong, "PONG %.*s\r\n", l, p + 5));
            pings++;
        }
        p = nl + 1;
    }
    return pings;
}

static uint32_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* A client's WebSocket frame (RFC 6455 5.2): final, opcode, masked with a
 * fresh key; returns its length in out (len + 8 bytes at most, len < 65536). */
static int ws_frame(char *out, int opcode, const char *payload, int len) {
    int h = 0;
    out[h++] = (char)(0x80 | opcode);
    if (len < 126) {
        out[h++] = (char)(0x80 | len);
    } else {
        out[h++] = (char)(0x80 | 126);
        out[h++] = (char)(len >> 8);
        out[h++] = (char)(len & 0xff);
    }
    uint32_t key = xorshift();
    unsigned char *mask = (unsigned char *)out + h;
    memcpy(mask, &key, 4);
    h += 4;
    for (int i = 0; i < len; i++) out[h + i] = (char)(payload[i] ^ mask[i & 3]);
    return h + len;
}

/* The stamp " T" + 16 digits, the last one in buf; -1 if none. */
static int64_t find_stamp(const char *buf, int len) {
    for (int i = len - STAMP_DIGITS - 2; i >= 0; i--) {
        if (buf[i] != ' ' || buf[i + 1] != 'T') continue;
        int64_t v = 0;
        int k;
        for (k = 0; k < STAMP_DIGITS; k++) {
            char d = buf[i + 2 + k];
            if (d < '0' || d > '9') break;
            v = v * 10 + (d - '0');
        }
        if (k == STAMP_DIGITS) return v;
    }
    return -1;
}

#define WS_NAMES "\"type\":\"names\",\"room\":\"lobby\""

/* A whole WebSocket frame has arrived (its first PAY payload bytes in pay).
 * Returns -1 if the connection is closed. */
static int ws_frame_done(conn_t *c, int64_t now) {
    c->in_frame = 0;
    switch (c->opcode) {
    case 1: /* text: one event of the JSON mode */
        if (!c->registered) {
            if (memmem(c->pay, c->pay_len, WS_NAMES, strlen(WS_NAMES))) c->registered = 1;
        } else {
            c->lines++;
            if (sampling == 1 || (sampling == 2 && c->probe)) {
                int64_t v = find_stamp(c->pay, c->pay_len);
                if (v >= 0) sample(now - v);
            }
        }
        return 0;
    case 9: { /* ping: the pong carries its payload (at most 125 bytes) */
        char pong[PAY + 16];
        do_send(c, pong, ws_frame(pong, 0xA, c->pay, c->pay_len));
        return 0;
    }
    case 8: /* close: the server is done with us */
        errors_++;
        close_conn(c);
        return -1;
    default:
        return 0;
    }
}

/* WebSocket input: the 101 answer, then frames. -1 if the connection closed. */
static int ws_input(conn_t *c, char *p, ssize_t n) {
    char *end = p + n;
    int64_t now = 0;
    if (sampling) now = now_us();
    while (c->http && p < end) {
        if (c->tail_len >= TAIL) { errors_++; close_conn(c); return -1; }
        c->tail[c->tail_len++] = *p++;
        if (c->tail_len >= 4 && memcmp(c->tail + c->tail_len - 4, "\r\n\r\n", 4) == 0) {
            if (c->tail_len < 12 || memcmp(c->tail, "HTTP/1.1 101", 12) != 0) {
                errors_++;
                close_conn(c);
                return -1;
            }
            c->http = 0;
            c->tail_len = 0;
            char join[64];
            do_send(c, join, ws_frame(join, 1, "/join lobby", 11));
        }
    }
    while (p < end) {
        if (!c->in_frame) {
            c->hdr[c->hdr_len++] = (unsigned char)*p++;
            int want = 2;
            if (c->hdr_len >= 2) {
                int l7 = c->hdr[1] & 0x7f;
                want += (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->hdr[1] & 0x80) ? 4 : 0);
            }
            if (c->hdr_len < want) continue;
            int l7 = c->hdr[1] & 0x7f;
            long long len = l7;
            if (l7 == 126) len = (c->hdr[2] << 8) | c->hdr[3];
            if (l7 == 127) {
                len = 0;
                for (int k = 2; k < 10; k++) len = (len << 8) | c->hdr[k];
            }
            if (c->hdr[1] & 0x80) errors_++; /* a server's frames are never masked */
            c->opcode = c->hdr[0] & 0x0f;
            c->need = len;
            c->pay_len = 0;
            c->hdr_len = 0;
            c->in_frame = 1;
            if (len == 0 && ws_frame_done(c, now) < 0) return -1;
            continue;
        }
        long long k = end - p < c->need ? end - p : c->need;
        if (c->pay_len < PAY && (!c->registered || c->opcode != 1 || sampling == 1 ||
                                 (sampling == 2 && c->probe))) {
            int m = k < PAY - c->pay_len ? (int)k : PAY - c->pay_len;
            memcpy(c->pay + c->pay_len, p, m);
            c->pay_len += m;
        }
        p += k;
        c->need -= k;
        if (!c->need && ws_frame_done(c, now) < 0) return -1;
    }
    return 0;
}

/* IRC, registered: the complete lines of data (after the partial line kept
 * in tail, which is kept in turn). A delivery is a PRIVMSG line, so that
 * nothing else (the JOINs of the presence batches of a big channel, a late
 * replayed line...) passes for one; PINGs are answered. */
static void irc_lines(conn_t *c, char *data, ssize_t n, int sample_it) {
    /* data points into rbuf at offset TAIL, so the tail can be prepended in place */
    char *buf = data - c->tail_len;
    memcpy(buf, c->tail, c->tail_len);
    char *p = buf, *end = data + n, *nl;
    int64_t now = sample_it ? now_us() : 0;
    while ((nl = memchr(p, '\n', end - p)) != NULL) {
        size_t len = nl - p;
        if (len > 5 && memcmp(p, "PING ", 5) == 0) {
            irc_pings(c, p, len + 1);
        } else if (memmem(p, len, " PRIVMSG ", 9)) {
            c->lines++;
            if (sample_it) {
                int64_t v = find_stamp(p, (int)len);
                if (v >= 0) sample(now - v);
            }
        }
        p = nl + 1;
    }
    size_t rest = end - p;
    if (rest > TAIL) rest = 0; /* a line too long to be one of ours: dropped */
    memmove(c->tail, p, rest);
    c->tail_len = (int)rest;
}

/* Read once. Returns bytes read, 0 if nothing now, -1 on EOF/error (closed). */
static ssize_t do_recv(conn_t *c) {
    char *data = rbuf + TAIL;
    ssize_t n = recv(c->fd, data, RECV, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (n <= 0) {
        errors_++;
        close_conn(c);
        return -1;
    }
    if (face == FACE_WS) return ws_input(c, data, n) < 0 ? -1 : n;
    if (!c->registered) {
        /* look for the names line across reads: keep the last bytes */
        int keep = MARK;
        char *buf = data - c->tail_len;
        memcpy(buf, c->tail, c->tail_len);
        size_t len = n + c->tail_len;
        if (face == FACE_IRC) irc_pings(c, buf, len);
        if (names_seen(c, buf, len)) {
            c->registered = 1;
            c->tail_len = 0;
        } else {
            size_t k = len < (size_t)keep ? len : (size_t)keep;
            memmove(c->tail, buf + len - k, k);
            c->tail_len = (int)k;
        }
        return n;
    }
    if (face == FACE_IRC) {
        irc_lines(c, data, n, sampling == 1 || (sampling == 2 && c->probe));
        return n;
    }
    /* memchr-style line counting */
    char *p = data, *end = data + n;
    long long lines = 0;
    while ((p = memchr(p, '\n', end - p)) != NULL) { lines++; p++; }
    c->lines += lines;
    if (sampling == 1 || (sampling == 2 && c->probe)) parse_lines(c, data, n, now_us());
    return n;
}

static void do_send(conn_t *c, const char *line, int len) {
    if (c->closed) return;
    if (len && c->pend_len + len <= (int)sizeof c->pend) {
        memcpy(c->pend + c->pend_len, line, len);
        c->pend_len += len;
    } else if (len) {
        errors_++; /* cannot even queue it: counted, never silently lost */
        return;
    }
    if (!c->pend_len) return;
    ssize_t n = send(c->fd, c->pend, c->pend_len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        errors_++;
        c->pend_len = 0;
        return;
    }
    memmove(c->pend, c->pend + n, c->pend_len - n);
    c->pend_len -= (int)n;
}

static void cmd_connect(int port, double rate, int reg, double timeout) {
    double start = now_s(), deadline = start + timeout;
    int opened = 0, waiting = 0;
    port_ = port;
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct epoll_event evs[1024];
    while ((opened < members || waiting) && now_s() < deadline) {
        int due = (int)((now_s() - start) * rate) + 1;
        while (opened < members && opened < due) {
            conn_t *c = &conns[opened];
            c->index = opened++;
            c->closed = 0;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0) { errors_++; c->closed = 1; continue; }
            /* RST on close: no TIME_WAIT eating loopback ports between runs */
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
                errors_++;
                close(fd);
                c->closed = 1;
                continue;
            }
            c->fd = fd;
            by_fd[fd] = c;
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            waiting++;
        }
        int n = epoll_wait(ep, evs, 1024, 1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->closed) continue;
            uint32_t e = evs[i].events;
            if ((e & EPOLLOUT) && !c->registered) {
                if (e & (EPOLLERR | EPOLLHUP)) {
                    errors_++;
                    close_conn(c);
                    waiting--;
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                if (face == FACE_IRC) {
                    /* registration, then the channel: done at RPL_ENDOFNAMES */
                    char hello[128];
                    do_send(c, hello, snprintf(hello, sizeof hello,
                                               "NICK b%d\r\nUSER b%d 0 * :bench\r\n"
                                               "JOIN #lobby\r\n", c->index, c->index));
                } else if (face == FACE_WS) {
                    /* the Upgrade; "/join lobby" follows the 101 (ws_input) */
                    char hello[400];
                    char key[25];
                    static const char b64[] =
                        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                    for (int k = 0; k < 22; k++) key[k] = b64[xorshift() & 63];
                    memcpy(key + 22, "==", 3);
                    c->http = 1;
                    do_send(c, hello, snprintf(hello, sizeof hello,
                            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                            "Origin: http://127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n", port_, port_, key));
                } else if (reg || nrooms) {
                    /* the bare baseline answers room joins too */
                    char join[64];
                    if (!nrooms) do_send(c, join, snprintf(join, sizeof join, "/join lobby\r\n"));
                    for (int k = 0; k < per_member; k++)
                        do_send(c, join, snprintf(join, sizeof join, "/join r%d\r\n",
                                                  room_of(c, k)));
                } else {
                    c->registered = 1;
                    waiting--;
                }
                continue;
            }
            if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int was = c->registered;
                ssize_t r = do_recv(c);
                if (r < 0) { if (!was) waiting--; continue; }
                if (!was && c->registered) waiting--;
            }
        }
    }
    int registered = 0;
    for (int i = 0; i < members; i++) {
        if (!conns[i].closed && conns[i].registered) registered++;
        conns[i].tail_len = 0;
    }
    printf("{\"registered\": %d, \"seconds\": %.6f, \"errors\": %d}\n", registered,
           now_s() - start, errors_);
}

static void reset_counts(void) {
    for (int i = 0; i < members; i++) { conns[i].lines = 0; conns[i].tail_len = 0; }
}

static void cmd_settle(double quiet, double timeout) {
    double start = now_s(), last = start;
    struct epoll_event evs[1024];
    sampling = 0;
    while (now_s() - last < quiet && now_s() - start < timeout) {
        int n = epoll_wait(ep, evs, 1024, 10);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c->closed && do_recv(c) > 0) last = now_s();
        }
    }
    reset_counts();
    printf("{\"seconds\": %.6f}\n", now_s() - start);
}

static void set_events(conn_t *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* PROBES > 0: deferred reads. Only PROBES receivers (spread over the members,
 * as loadgen.py picks its probes) are read while messages are being sent, and
 * only they sample latency; the others are read, and counted, once the last
 * message is sent, so the generator's reading does not compete with the
 * server for the CPU during the measurement. PROBES = 0: every receiver is
 * read all along and samples every delivery. */
static void cmd_run(double rate, double duration, int pad, double quiet, double dmax,
                    int probes, const char *path) {
    conn_t **senders = malloc(sizeof *senders * (nsenders + 1));
    int ns = 0;
    for (int i = 0; i < members; i++)
        if (conns[i].sender && !conns[i].closed) senders[ns++] = &conns[i];
    long long total = ns ? (long long)(rate * duration) : 0, sent = 0;
    char line[4096];
    if (pad > (int)sizeof line - 96) pad = (int)sizeof line - 96;
    for (int i = 0; i < members; i++) conns[i].said = 0;
    memset(line, 'x', pad);
    reset_counts();
    nsamples = 0;
    int deferred = 0;
    for (int i = 0; i < members; i++) conns[i].probe = 0;
    if (probes > 0) {
        int *cand = malloc(sizeof *cand * members), n = 0;
        for (int i = 0; i < members; i++)
            if (!conns[i].closed && !conns[i].sender) cand[n++] = i;
        int m = probes < n ? probes : n;
        for (int k = 0; k < m; k++) conns[cand[((long long)k * n + n / 2) / m]].probe = 1;
        free(cand);
        for (int i = 0; i < members; i++)
            if (!conns[i].closed && !conns[i].probe) set_events(&conns[i], 0);
        deferred = 1;
    }
    sampling = deferred ? 2 : 1;
    double cpu0 = cpu_s();
    double t0 = now_s() + 0.2, end = t0 + duration;
    while (now_s() < t0) usleep(1000);
    double last_data = now_s();
    struct epoll_event evs[1024];
    for (;;) {
        double now = now_s();
        if (sent < total) {
            long long due = (long long)((now - t0) * rate) + 1;
            if (due > total) due = total;
            while (sent < due) {
                conn_t *c = senders[sent % ns];
                int len;
                if (face == FACE_IRC) {
                    int head = snprintf(line, 32, "PRIVMSG #lobby :");
                    memset(line + head, 'x', pad);
                    len = head + pad + snprintf(line + head + pad, sizeof line - head - pad,
                                                " T%016lld\r\n", (long long)now_us());
                } else if (face == FACE_WS) {
                    /* one masked text frame: the line without its CRLF */
                    char text[4096];
                    memset(text, 'x', pad);
                    int tl = pad + snprintf(text + pad, sizeof text - pad, " T%016lld",
                                            (long long)now_us());
                    len = ws_frame(line, 1, text, tl);
                } else if (nrooms) {
                    int head = snprintf(line, 32, "/say r%d ", room_of(c, c->said % per_member));
                    memset(line + head, 'x', pad);
                    len = head + pad + snprintf(line + head + pad, sizeof line - head - pad,
                                                " T%016lld\r\n", (long long)now_us());
                } else {
                    len = pad + snprintf(line + pad, sizeof line - pad, " T%016lld\r\n",
                                         (long long)now_us());
                }
                c->said++;
                do_send(c, line, len);
                sent++;
            }
        } else if (deferred && now >= end) {
            for (int i = 0; i < members; i++)
                if (!conns[i].closed && !conns[i].probe) set_events(&conns[i], EPOLLIN);
            deferred = 0;
            last_data = now;
        } else if (!deferred && now >= end && (now - last_data > quiet || now > end + dmax)) {
            /* not before the end: a process without senders (one half of a
             * room split over two processes, see cluster/bench.py) waits for
             * the other's messages all along, however long a silence */
            break;
        }
        int n = epoll_wait(ep, evs, 1024, sent < total ? 1 : 10);
        int got = 0;
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c->closed && do_recv(c) > 0) got = 1;
        }
        if (got) last_data = now_s();
        if (sent < total)
            for (int i = 0; i < ns; i++)
                if (senders[i]->pend_len) do_send(senders[i], NULL, 0);
    }
    sampling = 0;
    long long received = 0;
    int receivers = 0;
    for (int i = 0; i < members; i++) {
        received += conns[i].lines;
        if (!conns[i].closed) receivers++;
    }
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(samples, sizeof *samples, nsamples, f);
        fclose(f);
    } else {
        errors_++;
    }
    /* members of the room a message is said in: each message is expected that many - 1 times */
    int fanout = nrooms ? (int)((long long)receivers * per_member / nrooms) : receivers;
    /* echo: a WebSocket sender gets its own message back (JSON mode) */
    printf("{\"sent\": %lld, \"received\": %lld, \"receivers\": %d, \"fanout\": %d, "
           "\"echo\": %d, \"samples\": %zu, \"cpu\": %.6f, \"wall\": %.6f, "
           "\"errors\": %d}\n", sent, received, receivers, fanout, face == FACE_WS,
           nsamples, cpu_s() - cpu0, now_s() - t0, errors_);
    free(senders);
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "-f") == 0) {
        if (strcmp(argv[2], "irc") == 0) face = FACE_IRC;
        else if (strcmp(argv[2], "ws") == 0) face = FACE_WS;
        else if (strcmp(argv[2], "line") != 0) argc = 0;
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    if ((argc != 3 && argc != 5) || (face != FACE_LINE && argc == 5)) {
        fprintf(stderr, "usage: %s [-f line|irc|ws] MEMBERS SENDERS [ROOMS PER] "
                "(rooms: line face only)\n", argv[0]);
        return 2;
    }
    members = atoi(argv[1]);
    nsenders = atoi(argv[2]);
    if (argc == 5) {
        nrooms = atoi(argv[3]);
        per_member = atoi(argv[4]);
        if (nrooms < 1 || per_member < 1 || per_member > nrooms || members % nrooms) {
            fprintf(stderr, "cgen: need 1 <= PER <= ROOMS, ROOMS dividing MEMBERS\n");
            return 2;
        }
    }
    if (members < 1 || nsenders < 0 || nsenders > members) {
        fprintf(stderr, "cgen: need 0 <= SENDERS <= MEMBERS\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (long)rl.rlim_cur < max_fd)
        max_fd = (int)rl.rlim_cur;
    conns = calloc(members, sizeof *conns);
    by_fd = calloc(max_fd, sizeof *by_fd);
    ep = epoll_create1(0);
    int step = nsenders ? members / nsenders : 1;
    if (step < 1) step = 1;
    for (int k = 0; k < nsenders; k++) conns[k * step].sender = 1;
    for (int i = 0; i < members; i++) conns[i].closed = 1; /* until opened */
    setvbuf(stdout, NULL, _IOLBF, 0);
    char cmd[1024];
    while (fgets(cmd, sizeof cmd, stdin)) {
        int port, reg, pad;
        double a, b, c, d;
        char path[900];
        if (sscanf(cmd, "connect %d %lf %d %lf", &port, &a, &reg, &b) == 4) {
            cmd_connect(port, a, reg, b);
        } else if (sscanf(cmd, "settle %lf %lf", &a, &b) == 2) {
            cmd_settle(a, b);
        } else if (sscanf(cmd, "run %lf %lf %d %lf %lf %d %899s", &a, &b, &pad, &c, &d,
                          &port, path) == 7) {
            cmd_run(a, b, pad, c, d, port, path);
        } else if (strncmp(cmd, "quit", 4) == 0) {
            break;
        } else {
            printf("{\"error\": \"bad command\"}\n");
        }
    }
    for (int i = 0; i < members; i++)
        if (!conns[i].closed) close_conn(&conns[i]);
    return 0;
}
