/*
 * loadgen: the load generator the benchmarks drive gatekeeper (and baseline) with.
 *
 * Usage: loadgen SUBCOMMAND HOST PORT [options]
 *
 *   flood   --count N --concurrency C [--rate R] [--close fin|reset] [--proxy v1]
 *           [--timeout S]
 *       N connections, C connects in flight (epoll).  Each connects, writes the
 *       PROXY v1 header if asked, then reads and discards until the server
 *       closes (EOF: "closed") or resets ("reset").  Refusals and other
 *       failures count as "errors" (and toward N).
 *       {"connections", "closed", "reset", "errors", "seconds", "rate"}
 *       --close reset: once the server has closed, end our side with an RST,
 *       so the server's socket skips TIME_WAIT (see latency below).
 *       --rate R: open loop, connection i starts at i / R seconds (at most C
 *       in flight still), as a flood from outside comes whatever the server's
 *       speed; without it a new connection starts as soon as one ends.
 *       SIGTERM or SIGINT ends a flood early: it prints what it did, exits 0.
 *
 *   latency --count N [--interval-us U] [--close fin|reset] [--proxy v1 [--src A.B.C.D]] [--timeout S]
 *       One blocking connection at a time: time from just before connect() to
 *       the first byte received (the banner), then a normal close; sleep U µs.
 *       --close reset ends each connection with an RST instead (no TIME_WAIT
 *       piles up on any side: tens of thousands of sockets in TIME_WAIT make
 *       every later connect() search longer for a free port, which would
 *       penalise whichever subject a benchmark measures last).
 *       The first 5% of the samples (at least 20, at most half) are warm-up
 *       and discarded; "count" is the samples kept.  Percentiles: nearest rank.
 *       {"count", "warmup", "p50_us", "p90_us", "p99_us", "mean_us", "max_us", "errors"}
 *
 *   bulk    --bytes B --streams S [--proxy v1] [--timeout S]
 *       S concurrent connections to `baseline source`: read the banner line,
 *       send "SEND <B>\n", read (1 MiB per recv) until EOF; a stream is good
 *       when exactly B bytes came and the first and last byte of every read
 *       follow the pattern (byte k is k % 251).  "seconds" runs from the first
 *       connect to the last EOF.
 *       {"streams", "bytes", "seconds", "mb_per_s", "errors"}
 *
 *   idle    --count N [--hold-seconds H] [--proxy v1] [--timeout S]
 *       Open N connections (at most 500 waiting for their banner at once),
 *       read the first bytes (the banner) of each, print
 *       {"open", "errors", "seconds"} and flush, then hold them open until
 *       stdin reaches EOF, H seconds pass (default 600), or SIGTERM/SIGINT;
 *       close them all and exit 0.  --timeout bounds the opening only.
 *
 * Every subcommand takes --bind ADDR: connect from that local address (say
 * 127.0.0.2, for a client the rules treat apart from 127.0.0.1).
 *
 * HOST is a numeric IPv4 or IPv6 address.  The PROXY v1 header is
 * "PROXY TCP4 <src> 127.0.0.1 <srcport> <PORT>\r\n" with src = 100.64.0.0 + i
 * for connection i (spread over 100.64.0.0/10; --src fixes it for latency)
 * and srcport = 1024 + i % 60000.
 *
 * Every run is bounded by its count and by --timeout (default 60 s): when the
 * time runs out the program prints the JSON of what it has and exits 1.
 * Results: exactly one JSON line on stdout.  Diagnostics: stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 512
#define CHUNK (1u << 20)       /* bulk: bytes per recv() */
#define MAX_IO_PER_WAKEUP 64   /* reads per connection per wakeup (level-triggered) */
#define PATTERN_MOD 251
#define IDLE_IN_FLIGHT 500
#define HEADER_MAX 108         /* the PROXY v1 maximum line length */
#define MAX_ERR_MSGS 5         /* per run, so a dead server cannot flood stderr */

static struct {
    long long count, concurrency, interval_us, bytes, streams, hold, rate;
    double timeout;
    int proxy;
    int reset;
    const char *src;
} opt = { .count = -1, .concurrency = -1, .interval_us = 0, .bytes = -1, .streams = -1,
          .hold = 600, .timeout = 60, .proxy = 0, .src = NULL };

static struct sockaddr_storage target;
static socklen_t target_len;
static struct sockaddr_storage source;   /* --bind: the local address to connect from */
static socklen_t source_len;
static int target_port;
static int epfd = -1;
static int err_msgs;

static double now_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void note_error(const char *what, int err)
{
    if (err_msgs++ < MAX_ERR_MSGS)
        fprintf(stderr, "loadgen: %s: %s\n", what, strerror(err));
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        perror("getrlimit");
        exit(1);
    }
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        perror("setrlimit (continuing with the soft limit)");
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (p == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(1);
    }
    return p;
}

static void resolve(const char *host, const char *port)
{
    struct addrinfo hints = { 0 }, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "loadgen: %s %s: %s\n", host, port, gai_strerror(rc));
        exit(2);
    }
    memcpy(&target, ai->ai_addr, ai->ai_addrlen);
    target_len = ai->ai_addrlen;
    target_port = atoi(port);
    freeaddrinfo(ai);
}

static void resolve_source(const char *host)
{
    struct addrinfo hints = { 0 }, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, "0", &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "loadgen: --bind %s: %s\n", host, gai_strerror(rc));
        exit(2);
    }
    memcpy(&source, ai->ai_addr, ai->ai_addrlen);
    source_len = ai->ai_addrlen;
    freeaddrinfo(ai);
}

/* Bind to the --bind address, if any, before connecting; 0 or -errno. */
static int bind_source(int fd)
{
    if (source_len == 0)
        return 0;
    int one = 1;  /* pick the port at connect(), by the 4-tuple, not at bind() */
    if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) != 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&source, source_len) != 0)
        return -errno;
    return 0;
}

/* The PROXY v1 line for connection i; returns its length. */
static int proxy_header(char *buf, long long i)
{
    char src[INET_ADDRSTRLEN];
    if (opt.src != NULL) {
        snprintf(src, sizeof src, "%s", opt.src);
    } else {
        uint32_t a = 0x64400000u + (uint32_t)(i % (1 << 22));  /* 100.64.0.0/10 */
        snprintf(src, sizeof src, "%u.%u.%u.%u", a >> 24, (a >> 16) & 255, (a >> 8) & 255,
                 a & 255);
    }
    return snprintf(buf, HEADER_MAX + 1, "PROXY TCP4 %s 127.0.0.1 %lld %d\r\n", src,
                    1024 + i % 60000, target_port);
}

/* Write the header (if --proxy) on a just-connected socket; returns 0 or an errno. */
static int send_header(int fd, long long i)
{
    if (!opt.proxy)
        return 0;
    char hdr[HEADER_MAX + 1];
    int len = proxy_header(hdr, i);
    for (;;) {
        ssize_t w = send(fd, hdr, (size_t)len, MSG_NOSIGNAL);
        if (w == len)
            return 0;
        if (w < 0 && errno == EINTR)
            continue;
        return w < 0 ? errno : EIO;  /* a short write on a fresh socket: not expected */
    }
}

static int ep_set(int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = { .events = events, .data.u64 = data };
    if (epoll_ctl(epfd, op, fd, &ev) != 0) {
        perror("epoll_ctl");
        return -1;
    }
    return 0;
}

/* Start a non-blocking connect registered for EPOLLOUT; returns the fd, or -errno. */
static int start_connect(uint64_t data)
{
    int fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int bound = bind_source(fd);
    if (bound != 0) {
        close(fd);
        return bound;
    }
    if (connect(fd, (struct sockaddr *)&target, target_len) != 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        return -err;
    }
    if (ep_set(EPOLL_CTL_ADD, fd, EPOLLOUT, data) != 0) {
        close(fd);
        return -EIO;
    }
    return fd;
}

static int so_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        return errno;
    return err;
}

/* Milliseconds to wait in epoll_wait: at most 1 s, at least 1 ms, never past the deadline. */
static int wait_ms(double deadline)
{
    double left = deadline - now_s();
    if (left >= 1.0)
        return 1000;
    return left <= 0 ? 0 : (int)(left * 1000) + 1;
}

static int epoll_wait_retry(struct epoll_event *evs, double deadline)
{
    int n = epoll_wait(epfd, evs, MAX_EVENTS, wait_ms(deadline));
    if (n < 0 && errno != EINTR) {
        perror("epoll_wait");
        exit(1);
    }
    return n < 0 ? 0 : n;
}

static void setup_epoll(void)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("epoll_create1");
        exit(1);
    }
}

/* ---------------------------------------------------------------- flood */

/*
 * Client-side TIME_WAIT is no concern here: the server closes first, so the
 * TIME_WAIT sockets are on the server side and ours go through LAST_ACK to
 * CLOSED; 50,000 connections in a row do not exhaust the ephemeral ports.
 */
struct flood_slot {
    int fd;
    int connected;
    long long idx;
};

static struct {
    long long launched, done, closed, reset, errors;
} fl;

static double flood_t0;

/* With --rate: may another connection start now?  (Open loop: connection i starts at
 * t0 + i / rate, however fast the server is, as a flood from outside would.) */
static int flood_due(void)
{
    return opt.rate <= 0 || (double)fl.launched < (now_s() - flood_t0) * (double)opt.rate;
}

static void flood_launch(struct flood_slot *s, uint32_t slot)
{
    s->fd = -1;
    while (fl.launched < opt.count && flood_due()) {
        s->idx = fl.launched++;
        s->connected = 0;
        int fd = start_connect(slot);
        if (fd >= 0) {
            s->fd = fd;
            return;
        }
        note_error("connect", -fd);
        fl.errors++;
        fl.done++;
    }
}

enum outcome { CLOSED, RESET, FAILED };

static void flood_finish(struct flood_slot *s, uint32_t slot, enum outcome how, int err)
{
    if (how == CLOSED)
        fl.closed++;
    else if (how == RESET)
        fl.reset++;
    else {
        fl.errors++;
        note_error("flood connection", err);
    }
    fl.done++;
    if (opt.reset) {  /* after the server's close: no TIME_WAIT left on either side */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        if (setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
            perror("setsockopt SO_LINGER");
    }
    close(s->fd);
    flood_launch(s, slot);
}

static void flood_event(struct flood_slot *s, uint32_t slot)
{
    static char buf[4096];
    if (!s->connected) {
        int err = so_error(s->fd);
        if (err == 0)
            err = send_header(s->fd, s->idx);
        if (err == ECONNRESET || err == EPIPE) {
            flood_finish(s, slot, RESET, 0);  /* reset right after the handshake */
        } else if (err != 0) {
            flood_finish(s, slot, FAILED, err);
        } else {
            s->connected = 1;
            if (ep_set(EPOLL_CTL_MOD, s->fd, EPOLLIN | EPOLLRDHUP, slot) != 0)
                flood_finish(s, slot, FAILED, EIO);
        }
        return;
    }
    for (int i = 0; i < MAX_IO_PER_WAKEUP; i++) {
        ssize_t r = recv(s->fd, buf, sizeof buf, 0);
        if (r > 0)
            continue;  /* the 421 line, or a banner: discarded */
        if (r == 0) {
            flood_finish(s, slot, CLOSED, 0);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        flood_finish(s, slot, errno == ECONNRESET ? RESET : FAILED, errno);
        return;
    }
}

static int block_signals(void);

/* A flood ends at --count, at --timeout, or at SIGTERM/SIGINT (then it prints what it did
 * and exits 0: a driver can run it "until I am done measuring"). */
#define FLOOD_SIGNAL UINT64_MAX

static int run_flood(void)
{
    if (opt.count < 0 || opt.concurrency <= 0) {
        fprintf(stderr, "loadgen flood: --count N and --concurrency C are required\n");
        return 2;
    }
    long long nslots = opt.concurrency < opt.count ? opt.concurrency : opt.count;
    struct flood_slot *slots = xcalloc((size_t)(nslots > 0 ? nslots : 1), sizeof *slots);
    struct epoll_event evs[MAX_EVENTS];
    setup_epoll();
    int sfd = block_signals();
    if (ep_set(EPOLL_CTL_ADD, sfd, EPOLLIN, FLOOD_SIGNAL) != 0)
        exit(1);
    double t0 = now_s(), deadline = t0 + opt.timeout;
    flood_t0 = t0;
    for (long long i = 0; i < nslots; i++)
        flood_launch(&slots[i], (uint32_t)i);
    int timed_out = 0, stopped = 0;
    while (fl.done < opt.count && !stopped) {
        double now = now_s();
        if (now >= deadline) {
            timed_out = 1;
            break;
        }
        if (opt.rate > 0)  /* start what is due in free slots; wake up within 1 ms */
            for (long long i = 0; i < nslots && flood_due(); i++)
                if (slots[i].fd < 0)
                    flood_launch(&slots[i], (uint32_t)i);
        int n = epoll_wait_retry(evs, opt.rate > 0 && now + 0.001 < deadline ? now + 0.001
                                                                             : deadline);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == FLOOD_SIGNAL) {
                stopped = 1;
                continue;
            }
            uint32_t slot = (uint32_t)evs[i].data.u64;
            if (slots[slot].fd >= 0)
                flood_event(&slots[slot], slot);
        }
    }
    double secs = now_s() - t0;
    printf("{\"connections\": %lld, \"closed\": %lld, \"reset\": %lld, \"errors\": %lld, "
           "\"seconds\": %.6f, \"rate\": %.1f}\n",
           fl.done, fl.closed, fl.reset, fl.errors, secs, secs > 0 ? (double)fl.done / secs : 0);
    for (long long i = 0; i < nslots; i++)
        if (slots[i].fd >= 0)
            close(slots[i].fd);
    free(slots);
    close(sfd);
    if (timed_out)
        fprintf(stderr, "loadgen flood: --timeout %g s reached\n", opt.timeout);
    return timed_out ? 1 : 0;
}

/* -------------------------------------------------------------- latency */

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least p% of the samples at or below it. */
static double percentile_us(const long long *sorted, long long n, long long p)
{
    if (n == 0)
        return 0;
    long long rank = (p * n + 99) / 100;  /* ceil(p / 100 * n), in integers */
    if (rank < 1)
        rank = 1;
    return (double)sorted[rank - 1] / 1000.0;
}

static void set_timeouts(int fd, double left)
{
    if (left < 0.001)
        left = 0.001;
    struct timeval tv = { .tv_sec = (time_t)left,
                          .tv_usec = (suseconds_t)((left - (double)(time_t)left) * 1e6) };
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0
        || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        perror("setsockopt SO_RCVTIMEO/SO_SNDTIMEO");
}

static long long ns_between(struct timespec a, struct timespec b)
{
    return (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
}

/* One connection: nanoseconds from connect() to the first byte, or -errno. */
static long long latency_one(long long i, double deadline)
{
    char buf[512];
    int fd = socket(target.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int bound = bind_source(fd);
    if (bound != 0) {
        close(fd);
        return bound;
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        perror("setsockopt TCP_NODELAY");
    set_timeouts(fd, deadline - now_s());  /* SO_SNDTIMEO bounds connect() too */
    struct timespec t0, t1;
    long long result;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (connect(fd, (struct sockaddr *)&target, target_len) != 0) {
        result = -errno;
        goto out;
    }
    int err = send_header(fd, i);
    if (err != 0) {
        result = -err;
        goto out;
    }
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r > 0)
            break;
        if (r < 0 && errno == EINTR)
            continue;
        result = r == 0 ? -ECONNABORTED : -errno;  /* closed before a byte, or timed out */
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    result = ns_between(t0, t1);
out:
    if (opt.reset) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
            perror("setsockopt SO_LINGER");
    }
    close(fd);
    return result;
}

static void sleep_us(long long us)
{
    struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int run_latency(void)
{
    if (opt.count <= 0) {
        fprintf(stderr, "loadgen latency: --count N is required\n");
        return 2;
    }
    long long *samples = xcalloc((size_t)opt.count, sizeof *samples);
    long long n = 0, errors = 0, attempts = 0;
    double deadline = now_s() + opt.timeout;
    int timed_out = 0;
    for (; attempts < opt.count; attempts++) {
        if (now_s() >= deadline) {
            timed_out = 1;
            break;
        }
        long long r = latency_one(attempts, deadline);
        if (r >= 0) {
            samples[n++] = r;
        } else {
            errors++;
            note_error("latency connection", (int)-r);
        }
        if (opt.interval_us > 0)
            sleep_us(opt.interval_us);
    }
    /* Warm-up: the first 5% of the samples (at least 20, at most half) are discarded. */
    long long warm = n / 20 > 20 ? n / 20 : 20;
    if (warm > n / 2)
        warm = n / 2;
    long long *kept = samples + warm, k = n - warm;
    qsort(kept, (size_t)k, sizeof *kept, cmp_ll);
    double sum = 0;
    for (long long i = 0; i < k; i++)
        sum += (double)kept[i];
    printf("{\"count\": %lld, \"warmup\": %lld, \"p50_us\": %.1f, \"p90_us\": %.1f, "
           "\"p99_us\": %.1f, \"mean_us\": %.1f, \"max_us\": %.1f, \"errors\": %lld}\n",
           k, warm, percentile_us(kept, k, 50), percentile_us(kept, k, 90),
           percentile_us(kept, k, 99), k ? sum / (double)k / 1000.0 : 0,
           k ? (double)kept[k - 1] / 1000.0 : 0, errors);
    free(samples);
    if (timed_out)
        fprintf(stderr, "loadgen latency: --timeout %g s reached after %lld connections\n",
                opt.timeout, attempts);
    return timed_out ? 1 : 0;
}

/* ----------------------------------------------------------------- bulk */

enum bulk_phase { B_CONNECTING, B_BANNER, B_BODY, B_DONE };

struct bulk_stream {
    int fd;
    int phase;
    int bad;             /* the pattern did not match */
    uint64_t got;        /* payload bytes received */
    size_t linelen;
    char line[256];
};

static unsigned char *rxbuf;

static void check_pattern(struct bulk_stream *s, const unsigned char *p, size_t len)
{
    if (len == 0)
        return;
    if (p[0] != s->got % PATTERN_MOD || p[len - 1] != (s->got + len - 1) % PATTERN_MOD)
        s->bad = 1;
    s->got += len;
}

/* Returns 1 when the stream is over (good or not), 0 to keep waiting. */
static int bulk_event(struct bulk_stream *s, uint32_t idx, int *failed)
{
    *failed = 1;
    if (s->phase == B_CONNECTING) {
        int err = so_error(s->fd);
        if (err == 0)
            err = send_header(s->fd, idx);
        if (err != 0) {
            note_error("bulk connect", err);
            return 1;
        }
        s->phase = B_BANNER;
        return ep_set(EPOLL_CTL_MOD, s->fd, EPOLLIN | EPOLLRDHUP, idx) != 0;
    }
    if (s->phase == B_BANNER) {
        ssize_t r = recv(s->fd, s->line + s->linelen, sizeof s->line - s->linelen, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r <= 0) {
            note_error("bulk banner", r == 0 ? ECONNABORTED : errno);
            return 1;
        }
        s->linelen += (size_t)r;
        char *nl = memchr(s->line, '\n', s->linelen);
        if (nl == NULL) {
            if (s->linelen < sizeof s->line)
                return 0;
            fprintf(stderr, "loadgen bulk: no banner line in %zu bytes\n", s->linelen);
            return 1;
        }
        size_t extra = s->linelen - (size_t)(nl + 1 - s->line);
        check_pattern(s, (unsigned char *)nl + 1, extra);  /* payload that came along */
        char req[64];
        int len = snprintf(req, sizeof req, "SEND %lld\n", opt.bytes);
        ssize_t w;
        do
            w = send(s->fd, req, (size_t)len, MSG_NOSIGNAL);
        while (w < 0 && errno == EINTR);
        if (w != len) {
            note_error("bulk request", w < 0 ? errno : EIO);
            return 1;
        }
        s->phase = B_BODY;
        return 0;
    }
    for (int i = 0; i < MAX_IO_PER_WAKEUP; i++) {
        ssize_t r = recv(s->fd, rxbuf, CHUNK, 0);
        if (r > 0) {
            check_pattern(s, rxbuf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r < 0) {
            note_error("bulk body", errno);
            return 1;
        }
        *failed = s->bad || s->got != (uint64_t)opt.bytes;
        if (*failed)
            fprintf(stderr, "loadgen bulk: stream %u: %llu bytes of %lld%s\n", idx,
                    (unsigned long long)s->got, opt.bytes, s->bad ? ", pattern mismatch" : "");
        return 1;
    }
    return 0;
}

static int run_bulk(void)
{
    if (opt.bytes < 0 || opt.streams <= 0) {
        fprintf(stderr, "loadgen bulk: --bytes B and --streams S are required\n");
        return 2;
    }
    struct bulk_stream *st = xcalloc((size_t)opt.streams, sizeof *st);
    rxbuf = xcalloc(CHUNK, 1);
    struct epoll_event evs[MAX_EVENTS];
    setup_epoll();
    long long errors = 0, finished = 0;
    double t0 = now_s(), t_last = t0, deadline = t0 + opt.timeout;
    for (long long i = 0; i < opt.streams; i++) {
        st[i].fd = start_connect((uint64_t)i);
        if (st[i].fd < 0) {
            note_error("bulk connect", -st[i].fd);
            st[i].phase = B_DONE;
            errors++;
            finished++;
        }
    }
    int timed_out = 0;
    while (finished < opt.streams) {
        if (now_s() >= deadline) {
            timed_out = 1;
            break;
        }
        int n = epoll_wait_retry(evs, deadline);
        for (int i = 0; i < n; i++) {
            uint32_t idx = (uint32_t)evs[i].data.u64;
            struct bulk_stream *s = &st[idx];
            int failed;
            if (s->phase == B_DONE || !bulk_event(s, idx, &failed))
                continue;
            s->phase = B_DONE;
            close(s->fd);
            errors += failed;
            finished++;
            t_last = now_s();
        }
    }
    if (timed_out)
        t_last = now_s();
    unsigned long long total = 0;
    for (long long i = 0; i < opt.streams; i++) {
        total += st[i].got;
        if (st[i].phase != B_DONE) {
            close(st[i].fd);
            errors++;
        }
    }
    double secs = t_last - t0;
    printf("{\"streams\": %lld, \"bytes\": %llu, \"seconds\": %.6f, \"mb_per_s\": %.1f, "
           "\"errors\": %lld}\n",
           opt.streams, total, secs, secs > 0 ? (double)total / 1e6 / secs : 0, errors);
    free(st);
    free(rxbuf);
    if (timed_out)
        fprintf(stderr, "loadgen bulk: --timeout %g s reached\n", opt.timeout);
    return timed_out ? 1 : 0;
}

/* ----------------------------------------------------------------- idle */

enum idle_state { I_FREE, I_CONNECTING, I_BANNER, I_OPEN };

static int block_signals(void)
{
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0) {
        perror("sigprocmask");
        exit(1);
    }
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        perror("signalfd");
        exit(1);
    }
    return sfd;
}

/* Hold until stdin's EOF, a signal, or `seconds`.  Returns what ended it. */
static const char *idle_hold(int sfd, double seconds)
{
    static char buf[4096];
    struct pollfd pfd[2] = { { .fd = 0, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
    double deadline = now_s() + seconds;
    while (now_s() < deadline) {
        int n = poll(pfd, 2, wait_ms(deadline));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return "poll error";
        }
        if (pfd[1].revents)
            return "signal";
        if (pfd[0].revents & POLLNVAL) {
            pfd[0].fd = -1;  /* no stdin at all: wait for the time or a signal */
        } else if (pfd[0].revents) {
            ssize_t r = read(0, buf, sizeof buf);
            if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
                return "stdin closed";
        }
    }
    return "hold time";
}

static int run_idle(void)
{
    if (opt.count < 0 || opt.hold < 0) {
        fprintf(stderr, "loadgen idle: --count N is required\n");
        return 2;
    }
    int sfd = block_signals();
    int *fds = xcalloc((size_t)opt.count, sizeof *fds);
    unsigned char *state = xcalloc((size_t)opt.count, 1);
    struct epoll_event evs[MAX_EVENTS];
    char buf[512];
    setup_epoll();
    if (ep_set(EPOLL_CTL_ADD, sfd, EPOLLIN, UINT64_MAX) != 0)
        return 1;
    long long launched = 0, pending = 0, open = 0, errors = 0;
    double t0 = now_s(), deadline = t0 + opt.timeout;
    int interrupted = 0, timed_out = 0;
    while (open + errors < opt.count) {
        while (pending < IDLE_IN_FLIGHT && launched < opt.count) {
            long long i = launched++;
            int fd = start_connect((uint64_t)i);
            if (fd < 0) {
                note_error("idle connect", -fd);
                errors++;
                continue;
            }
            fds[i] = fd;
            state[i] = I_CONNECTING;
            pending++;
        }
        if (open + errors >= opt.count)
            break;
        if (now_s() >= deadline) {
            timed_out = 1;
            break;
        }
        int n = epoll_wait_retry(evs, deadline);
        for (int e = 0; e < n; e++) {
            if (evs[e].data.u64 == UINT64_MAX) {
                interrupted = 1;
                continue;
            }
            long long i = (long long)evs[e].data.u64;
            int fd = fds[i], err = 0;
            if (state[i] == I_CONNECTING) {
                err = so_error(fd);
                if (err == 0)
                    err = send_header(fd, i);
                if (err == 0 && ep_set(EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLRDHUP, (uint64_t)i) == 0) {
                    state[i] = I_BANNER;
                    continue;
                }
            } else if (state[i] == I_BANNER) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
                    continue;
                if (r > 0 && epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) == 0) {
                    state[i] = I_OPEN;  /* out of epoll: later bytes wake nothing */
                    open++;
                    pending--;
                    continue;
                }
                err = r == 0 ? ECONNABORTED : errno;
            } else {
                continue;
            }
            note_error("idle connection", err ? err : EIO);
            close(fd);
            state[i] = I_FREE;
            errors++;
            pending--;
        }
        if (interrupted)
            break;
    }
    printf("{\"open\": %lld, \"errors\": %lld, \"seconds\": %.6f}\n", open, errors, now_s() - t0);
    if (fflush(stdout) != 0)
        perror("stdout");
    int status = 0;
    if (timed_out || interrupted) {
        fprintf(stderr, "loadgen idle: %s while opening\n",
                timed_out ? "--timeout reached" : "interrupted");
        status = 1;
    } else {
        const char *why = idle_hold(sfd, (double)opt.hold);
        long long gone = 0;
        for (long long i = 0; i < opt.count; i++) {
            if (state[i] != I_OPEN)
                continue;
            ssize_t r = recv(fds[i], buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
                gone++;
        }
        fprintf(stderr, "loadgen idle: held %lld connections until %s; %lld closed by the peer\n",
                open, why, gone);
    }
    for (long long i = 0; i < opt.count; i++)
        if (state[i] != I_FREE)
            close(fds[i]);
    free(fds);
    free(state);
    close(sfd);
    return status;
}

/* ----------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen flood HOST PORT --count N --concurrency C [--rate R] [--close fin|reset] [--proxy v1] "
            "[--timeout S]\n"
            "       (every subcommand also takes --bind ADDR: connect from that address)\n"
            "       loadgen latency HOST PORT --count N [--interval-us U] [--close fin|reset] "
            "[--proxy v1 [--src A.B.C.D]] [--timeout S]\n"
            "       loadgen bulk HOST PORT --bytes B --streams S [--proxy v1] [--timeout S]\n"
            "       loadgen idle HOST PORT --count N [--hold-seconds H] [--proxy v1] "
            "[--timeout S]\n");
    exit(2);
}

static long long parse_ll(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        usage();
    const char *cmd = argv[1];
    for (int i = 4; i < argc; i += 2) {
        const char *name = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (val == NULL)
            usage();
        if (strcmp(name, "--count") == 0)
            opt.count = parse_ll(val);
        else if (strcmp(name, "--concurrency") == 0)
            opt.concurrency = parse_ll(val);
        else if (strcmp(name, "--interval-us") == 0)
            opt.interval_us = parse_ll(val);
        else if (strcmp(name, "--bytes") == 0)
            opt.bytes = parse_ll(val);
        else if (strcmp(name, "--streams") == 0)
            opt.streams = parse_ll(val);
        else if (strcmp(name, "--rate") == 0)
            opt.rate = parse_ll(val);
        else if (strcmp(name, "--hold-seconds") == 0)
            opt.hold = parse_ll(val);
        else if (strcmp(name, "--timeout") == 0) {
            char *end;
            opt.timeout = strtod(val, &end);
            if (*end != '\0' || !(opt.timeout > 0))
                usage();
        } else if (strcmp(name, "--proxy") == 0) {
            if (strcmp(val, "v1") != 0)
                usage();
            opt.proxy = 1;
        } else if (strcmp(name, "--close") == 0) {
            if (strcmp(val, "reset") == 0)
                opt.reset = 1;
            else if (strcmp(val, "fin") != 0)
                usage();
        } else if (strcmp(name, "--bind") == 0) {
            resolve_source(val);
        } else if (strcmp(name, "--src") == 0) {
            struct in_addr a;
            if (inet_pton(AF_INET, val, &a) != 1)
                usage();
            opt.src = val;
        } else {
            usage();
        }
    }
    if (opt.count > (1LL << 31) || opt.streams > (1LL << 31) || opt.concurrency > (1LL << 31))
        usage();
    raise_nofile();
    resolve(argv[2], argv[3]);
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        perror("signal");
    if (strcmp(cmd, "flood") == 0)
        return run_flood();
    if (strcmp(cmd, "latency") == 0)
        return run_latency();
    if (strcmp(cmd, "bulk") == 0)
        return run_bulk();
    if (strcmp(cmd, "idle") == 0)
        return run_idle();
    usage();
}
