/* SPDX-License-Identifier: MIT */
/* loadgen - epoll load generator for the coil benchmarks: echo, bulk and idle modes, every byte verified. */

/*
 *   loadgen [--host 127.0.0.1 --port P | --unix PATH] [--mode echo|bulk|idle|wait]
 *           [--conns N] [--size S] [--depth D] [--duration SEC] [--count M]
 *           [--threads 1|2] [--timeout SEC] [--ready-file PATH]
 *
 * echo: every connection keeps D messages of S bytes outstanding (D = 1 is
 *       ping-pong); a message's round trip runs from the moment its first
 *       byte is handed to the kernel until its last echoed byte is read.
 * bulk: the same machinery with big messages and a deep window (defaults
 *       64 KiB x 32), i.e. a stream in one direction read back as it comes.
 * idle: opens N connections, echoes one S-byte ping on each (so the server
 *       has really accepted and set up every one), then touches --ready-file
 *       and holds them for --duration seconds.
 * wait: tries to connect every 10 ms until it works or --timeout passes
 *       (exit 0 / 1); run.sh uses it to wait for a server to accept.
 *
 * Every echoed byte is compared with what was sent: the stream of connection
 * `id` at byte offset `off` carries pattern[(off + id * 7919) % PERIOD], so a
 * lost, duplicated, reordered or corrupted chunk is caught. A mismatch, an
 * unexpected EOF or a reset prints a message and exits 1.
 *
 * The result is one line of key=value pairs on stdout. The run is bounded:
 * echo/bulk stop at --duration (or after --count messages, with --timeout as
 * the cap), idle stops after its ping phase (capped by --timeout) plus the
 * hold time.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A prime period, so that the pattern never lines up with message sizes. */
#define PERIOD 65521u
/* Largest single read or write; the pattern table is PERIOD + IOMAX long so
 * that any chunk of the stream is one contiguous slice of it (no wrap). */
#define IOMAX (256u * 1024u)

/* Latency histogram: exact below 32 ns, then 32 sub-buckets per power of
 * two (about 3% resolution) up to 2^64 ns. */
#define SUB_BITS 5
#define SUB (1u << SUB_BITS)
#define NBUCKETS ((64 - SUB_BITS + 1) * SUB)

enum mode { M_ECHO, M_BULK, M_IDLE, M_WAIT };

struct conn {
	int fd;
	unsigned id;
	bool want_out;       /* EPOLLOUT currently requested */
	uint64_t sent;       /* bytes handed to the kernel */
	uint64_t target;     /* bytes of messages started (sent <= target) */
	uint64_t rcvd;       /* bytes read back and verified */
	uint64_t started;    /* messages started */
	uint64_t done;       /* messages fully echoed */
	uint64_t *ts;        /* start time of message k at ts[k % depth] */
};

struct worker {
	pthread_t tid;
	int ep;
	struct conn *conns;
	unsigned nconns;
	unsigned char *rbuf;
	uint64_t outstanding; /* sum over conns of started - done */
	uint64_t msgs, bytes;
	uint64_t hist[NBUCKETS];
};

static struct {
	enum mode mode;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	unsigned conns, size, depth, threads;
	double duration, timeout;
	uint64_t count;           /* total messages, 0 = run for duration */
	uint64_t per_conn_limit;  /* messages per connection, 0 = unlimited */
	const char *ready_file;
} cfg = {
	.mode = M_ECHO, .conns = 1, .size = 0, .depth = 0, .threads = 1,
	.duration = 2.0, .timeout = 60.0,
};

static unsigned char *pattern;    /* PERIOD + IOMAX bytes */
static atomic_uint_fast64_t claim; /* messages claimed in --count mode */
static atomic_bool stop_all;       /* set at the deadline or on count */
static uint64_t deadline_ns;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("loadgen: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static const unsigned char *pat_at(unsigned id, uint64_t off)
{
	return pattern + (off + (uint64_t)id * 7919u) % PERIOD;
}

static void pattern_init(void)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	pattern = malloc(PERIOD + IOMAX);
	if (!pattern)
		die("out of memory");
	for (unsigned i = 0; i < PERIOD; i++) {
		/* xorshift64: cheap bytes with no short period of their own */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		pattern[i] = (unsigned char)(x >> 24);
	}
	for (unsigned i = PERIOD; i < PERIOD + IOMAX; i++)
		pattern[i] = pattern[i - PERIOD];
}

static unsigned hist_index(uint64_t v)
{
	unsigned msb;

	if (v < SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return (msb - SUB_BITS + 1) * SUB + (unsigned)(v >> (msb - SUB_BITS)) - SUB;
}

/* Middle of bucket idx, in ns. */
static double hist_value(unsigned idx)
{
	unsigned msb, m;

	if (idx < SUB)
		return idx;
	msb = idx / SUB + SUB_BITS - 1;
	m = idx % SUB + SUB;
	return ((double)m + 0.5) * (double)(1ull << (msb - SUB_BITS));
}

static double hist_pct(const uint64_t *h, uint64_t total, double pct)
{
	uint64_t want, seen = 0;

	if (!total)
		return 0;
	want = (uint64_t)((double)total * pct / 100.0);
	if (want >= total)
		want = total - 1;
	for (unsigned i = 0; i < NBUCKETS; i++) {
		seen += h[i];
		if (seen > want)
			return hist_value(i);
	}
	return 0;
}

static int open_socket(void)
{
	int fd = socket(cfg.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = { .tv_sec = 5 };
	int one = 1;

	if (fd < 0)
		die("socket: %s", strerror(errno));
	/* A blocking connect bounded by SO_SNDTIMEO: on loopback the
	 * handshake completes inside connect(), and a full accept queue only
	 * delays it (SYN retransmit) instead of failing the whole run. */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (cfg.addr.ss_family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static int wait_mode(void)
{
	uint64_t end = now_ns() + (uint64_t)(cfg.timeout * 1e9);

	for (;;) {
		int fd = open_socket();

		if (!connect(fd, (struct sockaddr *)&cfg.addr, cfg.addrlen)) {
			close(fd);
			return 0;
		}
		close(fd);
		if (now_ns() >= end) {
			fprintf(stderr, "loadgen: nothing accepts connections "
				"after %.1f s\n", cfg.timeout);
			return 1;
		}
		usleep(10000);
	}
}

static void set_out(struct worker *w, struct conn *c, bool on)
{
	struct epoll_event ev = {
		.events = EPOLLIN | (on ? EPOLLOUT : 0),
		.data.ptr = c,
	};

	if (c->want_out == on)
		return;
	c->want_out = on;
	if (epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev))
		die("epoll_ctl: %s", strerror(errno));
}

/* May connection c start one more message? */
static bool may_start(struct conn *c)
{
	if (atomic_load_explicit(&stop_all, memory_order_relaxed))
		return false;
	if (c->started - c->done >= cfg.depth)
		return false;
	if (cfg.per_conn_limit && c->started >= cfg.per_conn_limit)
		return false;
	if (cfg.count && atomic_fetch_add(&claim, 1) >= cfg.count)
		return false;
	return true;
}

/* Start as many messages as the window allows, then write what we can. */
static void pump(struct worker *w, struct conn *c, uint64_t now)
{
	while (may_start(c)) {
		c->ts[c->started % cfg.depth] = now;
		c->started++;
		c->target += cfg.size;
		w->outstanding++;
	}
	while (c->sent < c->target) {
		uint64_t left = c->target - c->sent;
		size_t len = left < IOMAX ? (size_t)left : IOMAX;
		ssize_t n = send(c->fd, pat_at(c->id, c->sent), len,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			if (errno == EINTR)
				continue;
			die("conn %u: send: %s after %llu bytes", c->id,
			    strerror(errno), (unsigned long long)c->sent);
		}
		c->sent += (uint64_t)n;
	}
	/* Ask for EPOLLOUT only while the kernel's send buffer is full. */
	set_out(w, c, c->sent < c->target);
}

static void verify(const struct conn *c, const unsigned char *buf, size_t n)
{
	const unsigned char *want = pat_at(c->id, c->rcvd);

	if (memcmp(buf, want, n) == 0)
		return;
	for (size_t i = 0; i < n; i++)
		if (buf[i] != want[i])
			die("conn %u: echoed byte %llu is 0x%02x, expected "
			    "0x%02x (data corrupted or reordered)", c->id,
			    (unsigned long long)(c->rcvd + i), buf[i], want[i]);
}

static void on_readable(struct worker *w, struct conn *c)
{
	ssize_t n = recv(c->fd, w->rbuf, IOMAX, MSG_DONTWAIT);
	uint64_t now, full;

	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		die("conn %u: recv: %s after %llu bytes", c->id,
		    strerror(errno), (unsigned long long)c->rcvd);
	}
	if (n == 0)
		die("conn %u: server closed the connection after echoing "
		    "%llu of %llu bytes", c->id,
		    (unsigned long long)c->rcvd, (unsigned long long)c->sent);
	if (c->rcvd + (uint64_t)n > c->sent)
		die("conn %u: server echoed %llu bytes but only %llu were sent",
		    c->id, (unsigned long long)(c->rcvd + (uint64_t)n),
		    (unsigned long long)c->sent);
	verify(c, w->rbuf, (size_t)n);
	c->rcvd += (uint64_t)n;
	w->bytes += (uint64_t)n;

	/* One clock read per recv: it stamps both the messages this chunk
	 * completes and the ones started right after. */
	now = now_ns();
	full = c->rcvd / cfg.size;
	while (c->done < full) {
		uint64_t t0 = c->ts[c->done % cfg.depth];

		w->hist[hist_index(now - t0)]++;
		c->done++;
		w->msgs++;
		w->outstanding--;
	}
	pump(w, c, now);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[256];
	uint64_t now = now_ns();

	for (unsigned i = 0; i < w->nconns; i++)
		pump(w, &w->conns[i], now);

	for (;;) {
		int n = epoll_wait(w->ep, evs, 256, 5);

		if (n < 0 && errno != EINTR)
			die("epoll_wait: %s", strerror(errno));
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				on_readable(w, c);
			else if (evs[i].events & EPOLLOUT)
				pump(w, c, now_ns());
		}
		if (atomic_load_explicit(&stop_all, memory_order_relaxed))
			break;
		if (now_ns() >= deadline_ns) {
			/* echo/bulk: the measured window is over; idle and
			 * --count: the safety cap was hit. */
			if (cfg.mode != M_IDLE && !cfg.count) {
				atomic_store(&stop_all, true);
				break;
			}
			die("timed out after %.1f s with %llu messages "
			    "outstanding", cfg.timeout,
			    (unsigned long long)w->outstanding);
		}
		/* Count and idle modes end when nothing is outstanding: every
		 * completion calls pump(), so an empty window means no
		 * message could be started any more. */
		if ((cfg.count || cfg.per_conn_limit) && !w->outstanding)
			break;
	}
	return NULL;
}

static void connect_all(struct worker *ws)
{
	for (unsigned i = 0; i < cfg.conns; i++) {
		struct worker *w = &ws[i % cfg.threads];
		struct conn *c = &w->conns[w->nconns++];
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		int fd = open_socket();

		if (connect(fd, (struct sockaddr *)&cfg.addr, cfg.addrlen))
			die("connect #%u: %s", i, strerror(errno));
		if (fcntl(fd, F_SETFL, O_NONBLOCK))
			die("fcntl: %s", strerror(errno));
		c->fd = fd;
		c->id = i;
		c->ts = calloc(cfg.depth, sizeof(*c->ts));
		if (!c->ts)
			die("out of memory");
		if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev))
			die("epoll_ctl: %s", strerror(errno));
	}
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--host H --port P | --unix PATH] "
		"[--mode echo|bulk|idle|wait]\n"
		"       [--conns N] [--size S] [--depth D] [--duration SEC] "
		"[--count M]\n"
		"       [--threads 1|2] [--timeout SEC] [--ready-file PATH]\n",
		argv0);
	exit(2);
}

static void parse_args(int argc, char **argv)
{
	const char *host = "127.0.0.1", *unix_path = NULL;
	int port = -1;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!v)
			usage(argv[0]);
		i++;
		if (!strcmp(a, "--host"))
			host = v;
		else if (!strcmp(a, "--port"))
			port = atoi(v);
		else if (!strcmp(a, "--unix"))
			unix_path = v;
		else if (!strcmp(a, "--conns"))
			cfg.conns = (unsigned)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--size"))
			cfg.size = (unsigned)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--depth"))
			cfg.depth = (unsigned)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--duration"))
			cfg.duration = atof(v);
		else if (!strcmp(a, "--timeout"))
			cfg.timeout = atof(v);
		else if (!strcmp(a, "--count"))
			cfg.count = strtoull(v, NULL, 0);
		else if (!strcmp(a, "--threads"))
			cfg.threads = (unsigned)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--ready-file"))
			cfg.ready_file = v;
		else if (!strcmp(a, "--mode")) {
			if (!strcmp(v, "echo"))
				cfg.mode = M_ECHO;
			else if (!strcmp(v, "bulk"))
				cfg.mode = M_BULK;
			else if (!strcmp(v, "idle"))
				cfg.mode = M_IDLE;
			else if (!strcmp(v, "wait"))
				cfg.mode = M_WAIT;
			else
				usage(argv[0]);
		} else {
			usage(argv[0]);
		}
	}

	if (unix_path) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&cfg.addr;

		if (strlen(unix_path) >= sizeof(sun->sun_path))
			die("unix path too long");
		sun->sun_family = AF_UNIX;
		strcpy(sun->sun_path, unix_path);
		cfg.addrlen = sizeof(*sun);
	} else {
		struct sockaddr_in *sin = (struct sockaddr_in *)&cfg.addr;
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&cfg.addr;

		if (port <= 0 || port > 65535)
			die("--port P (1..65535) or --unix PATH is required");
		if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
			sin->sin_family = AF_INET;
			sin->sin_port = htons((uint16_t)port);
			cfg.addrlen = sizeof(*sin);
		} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons((uint16_t)port);
			cfg.addrlen = sizeof(*sin6);
		} else {
			die("--host takes a numeric IPv4 or IPv6 address");
		}
	}

	/* Mode defaults: bulk wants big messages and a deep window. */
	if (!cfg.size)
		cfg.size = cfg.mode == M_BULK ? 65536 : cfg.mode == M_IDLE ? 16 : 64;
	if (!cfg.depth)
		cfg.depth = cfg.mode == M_BULK ? 32 : 1;
	if (cfg.mode == M_IDLE) {
		cfg.per_conn_limit = 1;
		cfg.depth = 1;
		cfg.count = 0;
	}
	if (!cfg.conns || cfg.conns > 1000000 || !cfg.size ||
	    cfg.threads < 1 || cfg.threads > 2 || cfg.duration <= 0 ||
	    cfg.timeout <= 0 || cfg.duration > 3600 || cfg.timeout > 3600)
		die("bad option value (conns>=1, size>=1, threads 1..2, "
		    "0 < duration, timeout <= 3600)");
	if (cfg.threads > cfg.conns)
		cfg.threads = cfg.conns;
}

int main(int argc, char **argv)
{
	struct worker *ws;
	uint64_t start, end, msgs = 0, bytes = 0;
	static uint64_t hist[NBUCKETS];
	double secs;

	parse_args(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (cfg.mode == M_WAIT)
		return wait_mode();

	pattern_init();
	ws = calloc(cfg.threads, sizeof(*ws));
	if (!ws)
		die("out of memory");
	for (unsigned t = 0; t < cfg.threads; t++) {
		ws[t].ep = epoll_create1(EPOLL_CLOEXEC);
		ws[t].conns = calloc(cfg.conns / cfg.threads + 1,
				     sizeof(struct conn));
		ws[t].rbuf = malloc(IOMAX);
		if (ws[t].ep < 0 || !ws[t].conns || !ws[t].rbuf)
			die("setup: %s", strerror(errno));
	}
	connect_all(ws);

	/* The clock starts once every connection is up, so connection setup
	 * is not part of the message rate. */
	start = now_ns();
	deadline_ns = start + (uint64_t)(((cfg.mode == M_IDLE || cfg.count) ?
					  cfg.timeout : cfg.duration) * 1e9);
	for (unsigned t = 0; t < cfg.threads; t++)
		if (pthread_create(&ws[t].tid, NULL, worker_main, &ws[t]))
			die("pthread_create failed");
	for (unsigned t = 0; t < cfg.threads; t++)
		pthread_join(ws[t].tid, NULL);
	end = now_ns();

	for (unsigned t = 0; t < cfg.threads; t++) {
		msgs += ws[t].msgs;
		bytes += ws[t].bytes;
		for (unsigned i = 0; i < NBUCKETS; i++)
			hist[i] += ws[t].hist[i];
	}
	secs = (double)(end - start) / 1e9;

	if (cfg.mode == M_IDLE) {
		/* Every connection has echoed its ping: the server holds
		 * cfg.conns live connections now. Tell run.sh, then hold. */
		if (cfg.ready_file) {
			int fd = open(cfg.ready_file, O_WRONLY | O_CREAT |
				      O_TRUNC | O_CLOEXEC, 0644);
			if (fd < 0)
				die("%s: %s", cfg.ready_file, strerror(errno));
			close(fd);
		}
		fprintf(stderr, "loadgen: %u connections up, holding %.1f s\n",
			cfg.conns, cfg.duration);
		usleep((useconds_t)(cfg.duration * 1e6));
	}

	printf("mode=%s conns=%u size=%u depth=%u threads=%u secs=%.3f "
	       "msgs=%llu bytes=%llu msgs_per_s=%.0f mb_per_s=%.2f "
	       "gb_per_s=%.3f p50_us=%.1f p99_us=%.1f p999_us=%.1f "
	       "verified=1\n",
	       cfg.mode == M_ECHO ? "echo" : cfg.mode == M_BULK ? "bulk" : "idle",
	       cfg.conns, cfg.size, cfg.depth, cfg.threads, secs,
	       (unsigned long long)msgs, (unsigned long long)bytes,
	       (double)msgs / secs, (double)bytes / secs / 1e6,
	       (double)bytes / secs / 1e9,
	       hist_pct(hist, msgs, 50) / 1e3, hist_pct(hist, msgs, 99) / 1e3,
	       hist_pct(hist, msgs, 99.9) / 1e3);
	fflush(stdout);

	/* Close without lingering: an RST leaves no TIME_WAIT behind, which
	 * matters after 10,000-connection idle runs repeated per server. */
	for (unsigned t = 0; t < cfg.threads; t++) {
		for (unsigned i = 0; i < ws[t].nconns; i++) {
			struct linger lg = { .l_onoff = 1, .l_linger = 0 };

			setsockopt(ws[t].conns[i].fd, SOL_SOCKET, SO_LINGER,
				   &lg, sizeof(lg));
			close(ws[t].conns[i].fd);
			free(ws[t].conns[i].ts);
		}
		free(ws[t].conns);
		free(ws[t].rbuf);
		close(ws[t].ep);
	}
	free(ws);
	free(pattern);
	return 0;
}
