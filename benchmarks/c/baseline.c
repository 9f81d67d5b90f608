/*
 * baseline: the reference TCP server the benchmarks measure gatekeeper against.
 *
 * A single-threaded, level-triggered epoll server that accepts the way
 * HAProxy and nginx do (non-blocking accept4() until EAGAIN on every wakeup)
 * and then does the least work each MODE needs:
 *
 *   close   accept, close.
 *   reset   accept, SO_LINGER {1,0}, close: the client gets a RST.
 *   reply   accept, write the 421 line (one non-blocking send), close.
 *   banner  accept, write "220 ready\r\n", then read and discard until the
 *           client closes.  Holds tens of thousands of idle connections.
 *   source  accept, write "220 ready\r\n", read one line "SEND <n>\n", write n
 *           bytes (byte k of the stream is k % 251), shutdown(SHUT_WR), close
 *           at the client's EOF.
 *   sink    accept, read and discard until EOF, close.
 *
 * Usage: baseline MODE HOST PORT [--timeout SECONDS]
 *
 * HOST is a numeric IPv4 or IPv6 address; PORT may be 0.  Once listening it
 * prints one JSON line {"port": N} on stdout, then serves until SIGTERM or
 * SIGINT (exit 0) or until --timeout seconds have passed (default 3600, a
 * safety net against forgotten servers; exit 1).  Counters go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

#define BACKLOG 4096
#define MAX_EVENTS 512
#define PATTERN_MOD 251
#define CHUNK (1u << 20)       /* largest single send() and recv() */
#define MAX_IO_PER_WAKEUP 16   /* reads/writes per connection per wakeup */
#define MAX_ACCEPT_PER_WAKEUP 4096
#define LINE_MAX_LEN 32

enum mode { M_CLOSE, M_RESET, M_REPLY, M_BANNER, M_SOURCE, M_SINK };
enum phase { P_FREE = 0, P_DRAIN, P_LINE, P_SEND };

static const char REPLY_421[] = "421 Service not available, closing control connection.\r\n";
static const char BANNER[] = "220 ready\r\n";

struct conn {                  /* indexed by file descriptor */
    uint64_t remaining;        /* source: payload bytes still to send */
    uint64_t sent;             /* source: payload bytes sent (pattern offset) */
    uint8_t phase;
    uint8_t linelen;
    char line[LINE_MAX_LEN];
};

static enum mode mode;
static int epfd = -1;
static struct conn *conns;     /* one per possible fd (RLIMIT_NOFILE) */
static size_t nconns;
static unsigned char *pattern; /* CHUNK + PATTERN_MOD bytes, pattern[i] = i % 251 */
static unsigned char *rxbuf;   /* CHUNK bytes, shared sink for reads */
static unsigned long long n_accepted, n_dropped, n_open, n_peak;

static double now_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        perror("getrlimit");
        exit(1);
    }
    nconns = rl.rlim_cur > (1u << 22) ? (1u << 22) : (size_t)rl.rlim_cur;
}

/* Per-connection complaints: the first few only, so stderr (often a pipe) stays small. */
static void warn(const char *msg, int err)
{
    static int count;
    if (count++ < 5)
        fprintf(stderr, "baseline: %s%s%s\n", msg, err ? ": " : "", err ? strerror(err) : "");
}

static void conn_close(int fd)
{
    if ((size_t)fd < nconns && conns[fd].phase != P_FREE) {
        conns[fd].phase = P_FREE;
        n_open--;
    }
    if (close(fd) != 0 && errno != EINTR)
        warn("close", errno);
}

static int ep_set(int op, int fd, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.fd = fd };
    if (epoll_ctl(epfd, op, fd, &ev) != 0) {
        warn("epoll_ctl", errno);
        return -1;
    }
    return 0;
}

/* Read and discard what is there; returns -1 once the connection is over (EOF or error). */
static int drain(int fd)
{
    for (int i = 0; i < MAX_IO_PER_WAKEUP; i++) {
        ssize_t r = recv(fd, rxbuf, CHUNK, 0);
        if (r > 0)
            continue;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return -1;  /* 0 = EOF, or ECONNRESET and friends */
    }
    return 0;  /* more may be there: level-triggered, so epoll reports it again */
}

/* source: write the next chunks; returns -1 on error, 1 when all is sent, 0 to wait for EPOLLOUT. */
static int source_send(int fd, struct conn *c)
{
    for (int i = 0; i < MAX_IO_PER_WAKEUP && c->remaining > 0; i++) {
        size_t len = c->remaining < CHUNK ? (size_t)c->remaining : CHUNK;
        ssize_t w = send(fd, pattern + c->sent % PATTERN_MOD, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        c->sent += (uint64_t)w;
        c->remaining -= (uint64_t)w;
    }
    return c->remaining == 0 ? 1 : 0;
}

static void source_finish(int fd, struct conn *c)
{
    if (shutdown(fd, SHUT_WR) != 0 || ep_set(EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLRDHUP) != 0) {
        conn_close(fd);
        return;
    }
    c->phase = P_DRAIN;
}

/* source: collect "SEND <n>\n", then start sending. */
static void source_line(int fd, struct conn *c)
{
    for (int i = 0; i < MAX_IO_PER_WAKEUP; i++) {
        ssize_t r = recv(fd, c->line + c->linelen, 1, 0);  /* byte-wise: the line is tiny */
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) {
            conn_close(fd);
            return;
        }
        if (c->line[c->linelen] == '\n')
            break;
        if (++c->linelen >= LINE_MAX_LEN - 1) {
            warn("request line too long, closing", 0);
            conn_close(fd);
            return;
        }
        if (i == MAX_IO_PER_WAKEUP - 1)
            return;  /* rest of the line on the next wakeup */
    }
    c->line[c->linelen] = '\0';
    char *end = NULL;
    errno = 0;
    unsigned long long n = 0;
    if (strncmp(c->line, "SEND ", 5) == 0)
        n = strtoull(c->line + 5, &end, 10);
    if (end == NULL || end == c->line + 5 || errno != 0 || (*end != '\0' && *end != '\r')) {
        warn("bad request line, closing", 0);
        conn_close(fd);
        return;
    }
    c->remaining = n;
    c->sent = 0;
    c->phase = P_SEND;
    int rc = source_send(fd, c);
    if (rc < 0)
        conn_close(fd);
    else if (rc > 0)
        source_finish(fd, c);
    else if (ep_set(EPOLL_CTL_MOD, fd, EPOLLOUT) != 0)
        conn_close(fd);
}

static void on_conn_event(int fd, uint32_t events)
{
    if ((size_t)fd >= nconns || conns[fd].phase == P_FREE)
        return;  /* closed earlier in this batch of events */
    struct conn *c = &conns[fd];
    switch (c->phase) {
    case P_DRAIN:
        if (drain(fd) != 0)
            conn_close(fd);
        break;
    case P_LINE:
        source_line(fd, c);
        break;
    case P_SEND: {
        if (events & EPOLLERR) {
            conn_close(fd);
            break;
        }
        int rc = source_send(fd, c);
        if (rc < 0)
            conn_close(fd);
        else if (rc > 0)
            source_finish(fd, c);
        break;
    }
    default:
        break;
    }
}

static void on_accepted(int fd)
{
    switch (mode) {
    case M_CLOSE:
        conn_close(fd);
        return;
    case M_RESET: {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
            warn("setsockopt SO_LINGER", errno);
        conn_close(fd);
        return;
    }
    case M_REPLY:
        (void)send(fd, REPLY_421, sizeof REPLY_421 - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        conn_close(fd);
        return;
    default:
        break;
    }
    if ((size_t)fd >= nconns) {  /* cannot happen: fds stay below RLIMIT_NOFILE */
        conn_close(fd);
        return;
    }
    struct conn *c = &conns[fd];
    memset(c, 0, sizeof *c);
    c->phase = mode == M_SOURCE ? P_LINE : P_DRAIN;
    if (++n_open > n_peak)
        n_peak = n_open;
    if (mode != M_SINK && send(fd, BANNER, sizeof BANNER - 1, MSG_NOSIGNAL) < 0) {
        conn_close(fd);  /* a fresh socket takes 11 bytes; failing means the peer is gone */
        return;
    }
    if (ep_set(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP) != 0)
        conn_close(fd);
}

/* Accept until EAGAIN.  On EMFILE/ENFILE, spend the spare fd to accept and drop one. */
static void accept_all(int lfd, int *spare)
{
    for (int i = 0; i < MAX_ACCEPT_PER_WAKEUP; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            n_accepted++;
            on_accepted(fd);
            continue;
        }
        switch (errno) {
        case EAGAIN:
#if EAGAIN != EWOULDBLOCK
        case EWOULDBLOCK:
#endif
            return;
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
            continue;
        case EMFILE:
        case ENFILE:
            if (n_dropped++ == 0)
                fprintf(stderr, "baseline: out of file descriptors, dropping connections\n");
            if (*spare >= 0) {
                close(*spare);
                fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd >= 0)
                    close(fd);
                *spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
            }
            return;
        default:
            warn("accept4", errno);
            return;
        }
    }
}

static int listen_on(const char *host, const char *port)
{
    struct addrinfo hints = { 0 }, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "baseline: %s %s: %s\n", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0
        || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, BACKLOG) != 0) {
        perror("baseline: listen");
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

static int parse_mode(const char *s)
{
    static const char *names[] = { "close", "reset", "reply", "banner", "source", "sink" };
    for (int i = 0; i < 6; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: baseline close|reset|reply|banner|source|sink HOST PORT "
                    "[--timeout SECONDS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double timeout = 3600;
    if (argc != 4 && argc != 6)
        usage();
    int m = parse_mode(argv[1]);
    if (m < 0)
        usage();
    mode = (enum mode)m;
    if (argc == 6) {
        char *end;
        timeout = strtod(argv[5], &end);
        if (strcmp(argv[4], "--timeout") != 0 || *end != '\0' || !(timeout > 0))
            usage();
    }

    raise_nofile();
    conns = calloc(nconns, sizeof *conns);
    pattern = malloc(CHUNK + PATTERN_MOD);
    rxbuf = malloc(CHUNK);
    if (conns == NULL || pattern == NULL || rxbuf == NULL) {
        fprintf(stderr, "baseline: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < CHUNK + PATTERN_MOD; i++)
        pattern[i] = (unsigned char)(i % PATTERN_MOD);

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0) {
        perror("sigprocmask");
        return 1;
    }
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    int spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int lfd = listen_on(argv[2], argv[3]);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || spare < 0 || lfd < 0 || epfd < 0) {
        perror("baseline: setup");
        return 1;
    }
    if (ep_set(EPOLL_CTL_ADD, lfd, EPOLLIN) != 0 || ep_set(EPOLL_CTL_ADD, sfd, EPOLLIN) != 0)
        return 1;

    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(lfd, (struct sockaddr *)&ss, &sl) != 0) {
        perror("getsockname");
        return 1;
    }
    int port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    printf("{\"port\": %d}\n", port);
    if (fflush(stdout) != 0) {
        perror("stdout");
        return 1;
    }

    const double deadline = now_s() + timeout;
    struct epoll_event evs[MAX_EVENTS];
    int status = 1;  /* until a signal says otherwise: the time limit ran out */
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) {
            fprintf(stderr, "baseline: --timeout %g s reached\n", timeout);
            break;
        }
        int n = epoll_wait(epfd, evs, MAX_EVENTS, left > 1.0 ? 1000 : (int)(left * 1000) + 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            break;
        }
        int stop = 0;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd)
                accept_all(lfd, &spare);
            else if (fd == sfd)
                stop = 1;
            else
                on_conn_event(fd, evs[i].events);
        }
        if (stop) {
            status = 0;
            break;
        }
    }

    fprintf(stderr, "baseline %s: accepted %llu, dropped %llu, open %llu, peak open %llu\n",
            argv[1], n_accepted, n_dropped, n_open, n_peak);
    for (size_t fd = 0; fd < nconns; fd++)
        if (conns[fd].phase != P_FREE)
            conn_close((int)fd);
    close(lfd);
    close(sfd);
    close(spare);
    close(epfd);
    free(conns);
    free(pattern);
    free(rxbuf);
    return status;
}
