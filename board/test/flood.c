/*
 * The board test's idle-connection flood (guest side; built static for aarch64 by
 * scripts/board-test). Loopback only: every address is 127.x.y.z, checked.
 *
 *   tgflood PORT HOLD_S SPEC [TOKEN_FILE]
 *
 * SPEC is N/S+M: N connections spread over S source addresses 127.0.0.2 .. 127.0.0.S+1, plus M
 * from 127.0.0.1. Opens them all (non-blocking connects, 30 s at most), sends nothing, holds
 * them HOLD_S seconds, and meanwhile, with TOKEN_FILE, asks GET /api/v1/monitoring/status with
 * the right token from 127.0.0.250 every second on a fresh connection (5 s at most each): the
 * operator reaching the API while the flood holds it. Prints one line of key=value results:
 *   attempted= up= open_at_end= probes= probes_200= probe_max_ms= probe_statuses=
 * then closes everything. Exit 0 unless it could not run at all.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define OPEN_DEADLINE_MS 30000
#define PROBE_TIMEOUT_MS 5000

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int loopback(const char *a) { return strncmp(a, "127.", 4) == 0; }

static int open_from(const char *src, int port) {
    struct sockaddr_in s = {0}, d = {0};
    if (!loopback(src)) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    s.sin_family = AF_INET;
    inet_pton(AF_INET, src, &s.sin_addr);
    if (bind(fd, (struct sockaddr *)&s, sizeof s) < 0) {
        close(fd);
        return -1;
    }
    d.sin_family = AF_INET;
    d.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
    if (connect(fd, (struct sockaddr *)&d, sizeof d) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Waits for fd's events until the deadline (ms, monotonic); returns revents or 0. */
static int wait_fd(int fd, short ev, double deadline) {
    for (int i = 0; i < 1000; i++) {
        double left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, (int)left + 1);
        if (r > 0) return p.revents;
        if (r == 0) return 0;
        if (errno != EINTR) return 0;
    }
    return 0;
}

/* One request with the token; returns the HTTP status (0: none) and its time in *ms. */
static int probe(int port, const char *token, double *ms) {
    double t0 = now_ms(), deadline = t0 + PROBE_TIMEOUT_MS;
    int status = 0;
    int fd = open_from("127.0.0.250", port);
    *ms = 0;
    if (fd < 0) return 0;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET /api/v1/monitoring/status HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     "Authorization: Bearer %s\r\nConnection: close\r\n\r\n",
                     port, token);
    int err = 0;
    socklen_t el = sizeof err;
    if (n <= 0 || n >= (int)sizeof req) goto out;
    if (!(wait_fd(fd, POLLOUT, deadline) & POLLOUT)) goto out;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) goto out;
    for (int off = 0; off < n;) {
        if (!(wait_fd(fd, POLLOUT, deadline) & POLLOUT)) goto out;
        ssize_t w = write(fd, req + off, n - off);
        if (w <= 0 && errno != EAGAIN) goto out;
        if (w > 0) off += w;
    }
    char buf[64];
    int got = 0;
    while (got < 12) {
        if (!(wait_fd(fd, POLLIN, deadline) & (POLLIN | POLLHUP | POLLERR))) goto out;
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
        if (r <= 0) {
            if (r < 0 && errno == EAGAIN) continue;
            goto out;
        }
        got += r;
    }
    buf[got] = 0;
    if (strncmp(buf, "HTTP/1.", 7) == 0) status = atoi(buf + 9);
out:
    *ms = now_ms() - t0;
    close(fd);
    return status;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: tgflood PORT HOLD_S N/S+M [TOKEN_FILE]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    double hold = atof(argv[2]);
    int n = 0, s = 1, m = 0;
    if (sscanf(argv[3], "%d/%d+%d", &n, &s, &m) < 2 || n < 0 || s < 1 || s > 200 || m < 0 ||
        n + m > MAX_CONNS || port <= 0 || hold < 0 || hold > 600) {
        fprintf(stderr, "tgflood: bad arguments\n");
        return 2;
    }
    char token[256] = "";
    if (argc > 4) {
        FILE *f = fopen(argv[4], "r");
        if (f) {
            if (!fgets(token, sizeof token, f)) token[0] = 0;
            fclose(f);
        }
        token[strcspn(token, "\r\n")] = 0;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)(n + m + 64)) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)(n + m + 64) ? rl.rlim_max : (rlim_t)(n + m + 64);
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    static int fds[MAX_CONNS];
    static struct pollfd pf[MAX_CONNS];
    int total = 0;
    char src[32];
    for (int i = 0; i < n + m; i++) {
        if (i < n)
            snprintf(src, sizeof src, "127.0.0.%d", 2 + i % s);
        else
            snprintf(src, sizeof src, "127.0.0.1");
        int fd = open_from(src, port);
        if (fd >= 0) fds[total++] = fd;
    }
    /* Connects done (or failed) within the deadline. */
    int up = 0;
    double deadline = now_ms() + OPEN_DEADLINE_MS;
    int pending = total;
    static char state[MAX_CONNS]; /* 0 pending, 1 up, 2 failed */
    while (pending > 0 && now_ms() < deadline) {
        int k = 0;
        static int idx[MAX_CONNS];
        for (int i = 0; i < total; i++)
            if (!state[i]) {
                pf[k] = (struct pollfd){fds[i], POLLOUT, 0};
                idx[k++] = i;
            }
        int r = poll(pf, k, 200);
        if (r < 0 && errno != EINTR) break;
        for (int j = 0; j < k && r > 0; j++) {
            if (!pf[j].revents) continue;
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(fds[idx[j]], SOL_SOCKET, SO_ERROR, &err, &el);
            state[idx[j]] = err ? 2 : 1;
            pending--;
            if (!err) up++;
        }
    }
    /* Hold, probing with the token every second. */
    int probes = 0, probes_ok = 0;
    double probe_max = 0;
    char statuses[512] = "";
    double end = now_ms() + hold * 1000;
    while (now_ms() < end) {
        double t = now_ms();
        if (token[0] && probes < 600) {
            double ms;
            int st = probe(port, token, &ms);
            probes++;
            if (st == 200) probes_ok++;
            if (ms > probe_max) probe_max = ms;
            size_t l = strlen(statuses);
            if (l + 8 < sizeof statuses) snprintf(statuses + l, sizeof statuses - l, "%s%d", l ? "," : "", st);
        }
        double left = 1000 - (now_ms() - t);
        if (left > 0 && now_ms() + left < end) usleep((useconds_t)(left * 1000));
        else if (now_ms() + left >= end) {
            double rest = end - now_ms();
            if (rest > 0) usleep((useconds_t)(rest * 1000));
        }
    }
    /* Still open: up and not readable (EOF, RST or an answer would be). */
    int k = 0;
    for (int i = 0; i < total; i++)
        if (state[i] == 1) pf[k++] = (struct pollfd){fds[i], POLLIN, 0};
    int ended = poll(pf, k, 0);
    if (ended < 0) ended = 0;
    printf("attempted=%d up=%d open_at_end=%d probes=%d probes_200=%d probe_max_ms=%.0f probe_statuses=%s\n",
           n + m, up, k - ended, probes, probes_ok, probe_max, statuses[0] ? statuses : "-");
    fflush(stdout);
    for (int i = 0; i < total; i++) close(fds[i]);
    return 0;
}
