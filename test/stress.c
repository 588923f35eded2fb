/* SPDX-License-Identifier: MIT */
/* Stress and fault runs (`make stress`): many connections, churn, resets,
 * tiny buffer rings and CQs, foreign-thread storms, a large checksummed
 * stream. Everything on loopback, bounded in count and time. Sizes scale
 * with COIL_STRESS_SCALE (default 1; `make test` runs it at 0.1). */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef STRESS_DEFAULT_SCALE
#define STRESS_DEFAULT_SCALE 1.0
#endif
static double scale = STRESS_DEFAULT_SCALE;

static size_t scaled(size_t n)
{
	size_t v = (size_t)((double)n * scale);
	return v ? v : 1;
}

/* ---- an echo server on coil (read signal -> write, backpressure) ---- */

static void echo_read(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	coil_ip_t *w = coil_channel_write_view(ch, d, n);
	if (coil_ip_state(w) == COIL_IP_FAILED) {
		coil_ip_error(w);
		coil_channel_close(ch, 1); /* never drop bytes silently */
	}
	coil_ip_unref(w);
}

static void echo_closed(coil_channel_t *ch, int expected, void *ud)
{
	coil_channel_release(ch);
}

static void echo_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	coil_channel_set_queue_size(c, 4u << 20);
	coil_channel_on_read(c, echo_read, NULL);
	coil_channel_on_closed(c, echo_closed, NULL);
}

static coil_socket_t *echo_listen(coil_loop_t *loop, unsigned short *port)
{
	coil_socket_t *l = NULL;
	CU_ASSERT_FATAL(coil_socket_new(loop, &l) == 0);
	coil_socket_on_new_client(l, echo_client, NULL);
	CU_ASSERT_FATAL(coil_socket_listen(l, "127.0.0.1:0", 4096, 0) == 0);
	coil_sockinfo_t si;
	coil_socket_local(l, &si);
	*port = si.port;
	return l;
}

/* ---- many connections, each a chain of write -> read_exact -> verify ---- */

struct conn {
	coil_socket_t *s;
	unsigned id, seq, rounds;
	size_t len;
	char *msg;
	_Atomic int *done, *bad;
};

static void fill(char *p, size_t n, unsigned id, unsigned seq)
{
	unsigned x = id * 2654435761u + seq * 40503u + 1;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (char)(x >> 16);
	}
}

static void conn_step(struct conn *c);

static coil_ip_t *conn_got(coil_ip_t *src, void *ud)
{
	struct conn *c = ud;
	size_t n;
	const char *b = coil_ip_bytes(src, &n);
	if (n != c->len || memcmp(b, c->msg, n))
		atomic_fetch_add(c->bad, 1);
	c->seq++;
	conn_step(c);
	return NULL;
}

static coil_ip_t *conn_fail(coil_ip_t *src, void *ud)
{
	struct conn *c = ud;
	atomic_fetch_add(c->bad, 1);
	atomic_fetch_add(c->done, 1);
	return NULL;
}

static coil_ip_t *conn_connected(coil_ip_t *src, void *ud)
{
	conn_step(ud);
	return NULL;
}

/* One round trip of a random size (1..4096), or done. */
static void conn_step(struct conn *c)
{
	if (c->seq == c->rounds) {
		atomic_fetch_add(c->done, 1);
		return;
	}
	unsigned x = c->id * 7919u + c->seq * 104729u;
	c->len = 1 + x % 4096;
	fill(c->msg, c->len, c->id, c->seq);
	coil_ip_unref(coil_channel_write(c->s, c->msg, c->len));
	coil_ip_t *r = coil_channel_read_exact(c->s, c->len);
	coil_ip_unref(coil_ip_then(r, conn_got, conn_fail, c));
}

static void raise_nofile(rlim_t want)
{
	struct rlimit r;
	getrlimit(RLIMIT_NOFILE, &r);
	if (r.rlim_max < want) {
		r.rlim_max = want;
		r.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &r))
			getrlimit(RLIMIT_NOFILE, &r);
	}
	r.rlim_cur = r.rlim_max;
	setrlimit(RLIMIT_NOFILE, &r);
}

/* Opens n connections to port on a fresh client loop, runs them to the
 * end and keeps them open; fills in done/bad and the peak RSS seen. */
struct many_result {
	int done, bad;
	long rss0, peak;
};

static struct conn *many_open(coil_loop_t *cli, unsigned short port,
			      size_t n, struct many_result *res,
			      _Atomic int *done, _Atomic int *bad)
{
	struct conn *cs = calloc(n, sizeof(*cs));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	res->rss0 = t_rss_kib();
	for (size_t i = 0; cs && i < n; i++) {
		struct conn *c = &cs[i];
		c->id = (unsigned)i;
		c->rounds = 5;
		c->msg = malloc(4096);
		c->done = done;
		c->bad = bad;
		if (!c->msg || coil_socket_new(cli, &c->s)) {
			atomic_fetch_add(bad, 1);
			atomic_fetch_add(done, 1);
			continue;
		}
		coil_ip_t *ip = coil_socket_connect(c->s, addr, 0);
		coil_ip_unref(coil_ip_then(ip, conn_connected, conn_fail, c));
	}
	res->peak = res->rss0;
	for (int i = 0; i < 120000 && atomic_load(done) < (int)n; i++) {
		usleep(1000);
		long rss = t_rss_kib();
		if (rss > res->peak)
			res->peak = rss;
	}
	res->done = atomic_load(done);
	res->bad = atomic_load(bad);
	return cs;
}

static void many_close(struct conn *cs, size_t n)
{
	for (size_t i = 0; cs && i < n; i++) {
		if (cs[i].s)
			coil_channel_release(cs[i].s);
		free(cs[i].msg);
	}
	free(cs);
}

/* The client half, in a child process: each process then needs one
 * descriptor per connection, so 10,000 connections fit a 20,000 hard
 * limit. Reads the port, reports a many_result, waits for a byte from the
 * parent (which counts the server's channels meanwhile), then closes. */
static void many_child(int in, int out, size_t n)
{
	unsigned short port;
	if (read(in, &port, sizeof(port)) != (ssize_t)sizeof(port))
		_exit(3);
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 2;
	coil_loop_t *cli = NULL;
	if (coil_loop_new(&cli, &o))
		_exit(4);
	_Atomic int done = 0, bad = 0;
	struct many_result res;
	struct conn *cs = many_open(cli, port, n, &res, &done, &bad);
	if (write(out, &res, sizeof(res)) != (ssize_t)sizeof(res))
		_exit(5);
	char go;
	if (read(in, &go, 1) != 1)
		_exit(6);
	many_close(cs, n);
	coil_loop_free(cli);
	_exit(0);
}

static void test_many_connections(void)
{
	size_t n = scaled(10000);
	raise_nofile(n + 1000);
	struct rlimit r;
	getrlimit(RLIMIT_NOFILE, &r);
	if (r.rlim_cur < n + 200) {
		n = r.rlim_cur - 200;
		fprintf(stderr, "(fd limit %lu: %zu connections)\n",
			(unsigned long)r.rlim_cur, n);
	}
	/* Fork before any thread of this test exists. */
	int to_child[2], to_parent[2];
	CU_ASSERT_FATAL(pipe(to_child) == 0 && pipe(to_parent) == 0);
	pid_t pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		close(to_child[1]);
		close(to_parent[0]);
		many_child(to_child[0], to_parent[1], n);
	}
	close(to_child[0]);
	close(to_parent[1]);
	size_t live0 = coil_live_channels();
	coil_loop_t *srv = t_loop(2);
	unsigned short port;
	coil_socket_t *l = echo_listen(srv, &port);
	long rss0 = t_rss_kib(), peak = rss0;
	CU_ASSERT_FATAL(write(to_child[1], &port, sizeof(port)) ==
			(ssize_t)sizeof(port));
	struct many_result res = {0};
	bool got = false;
	for (int i = 0; i < 130000 && !got; i++) {
		struct pollfd pfd = {.fd = to_parent[0], .events = POLLIN};
		if (poll(&pfd, 1, 1) == 1)
			got = read(to_parent[0], &res, sizeof(res)) ==
			      (ssize_t)sizeof(res);
		long rss = t_rss_kib();
		if (rss > peak)
			peak = rss;
	}
	/* Every connection is open on both sides now. */
	size_t held = coil_live_channels() - live0 - 1;
	CU_ASSERT(got);
	if (!got)
		kill(pid, SIGKILL);
	CU_ASSERT_EQUAL(res.done, (int)n);
	CU_ASSERT_EQUAL(res.bad, 0);
	CU_ASSERT_EQUAL(held, n);
	/* Bounded: the provided-buffer pools (2 x 8 MiB here) plus a few KiB
	 * per connection. Judged in release builds only: sanitizers and
	 * valgrind add their own per-allocation memory. */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
	if (!t_on_valgrind())
		CU_ASSERT((peak - rss0) < 32 * 1024 + (long)n * 8);
#endif
	CU_ASSERT(write(to_child[1], "x", 1) == 1);
	int status = 0;
	CU_ASSERT(waitpid(pid, &status, 0) == pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(to_child[1]);
	close(to_parent[0]);
	fprintf(stderr, "(%zu concurrent connections x 5 round trips "
		"verified; server held %zu; server RSS %ld -> peak %ld KiB = "
		"%.2f KiB per connection; client process %ld -> %ld KiB)\n",
		n, held, rss0, peak, (double)(peak - rss0) / (double)n,
		res.rss0, res.peak);
	/* The server side sees every close. */
	for (int i = 0; i < 20000 && coil_live_channels() > live0 + 1; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(coil_live_channels(), live0 + 1);
	coil_channel_release(l);
	coil_loop_free(srv);
}

/* ---- a large stream, random write sizes, checksummed end to end ---- */

struct streamer {
	unsigned short port;
	size_t total;
	uint64_t sent_sum, recv_sum;
	size_t received;
	int fd;
};

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 1099511628211ull;
	}
	return h;
}

static void *stream_writer(void *arg)
{
	struct streamer *s = arg;
	unsigned seed = (unsigned)s->port ^ (unsigned)s->fd;
	char *buf = calloc(1, 262144);
	size_t off = 0;
	uint64_t h = 1469598103934665603ull;
	while (off < s->total) {
		size_t n = 1 + (size_t)rand_r(&seed) % 262144;
		if (n > s->total - off)
			n = s->total - off;
		for (size_t i = 0; i < n; i += 64)
			buf[i] = (char)rand_r(&seed);
		h = fnv(h, (unsigned char *)buf, n);
		if (t_write_all(s->fd, buf, n))
			break;
		off += n;
	}
	s->sent_sum = h;
	shutdown(s->fd, SHUT_WR);
	free(buf);
	return NULL;
}

static void *stream_run(void *arg)
{
	struct streamer *s = arg;
	s->fd = t_connect_tcp4(s->port);
	struct timeval tv = {.tv_sec = 30};
	setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	pthread_t w;
	pthread_create(&w, NULL, stream_writer, s);
	unsigned char *buf = malloc(1 << 16);
	uint64_t h = 1469598103934665603ull;
	for (;;) {
		ssize_t n = read(s->fd, buf, 1 << 16);
		if (n <= 0)
			break;
		h = fnv(h, buf, (size_t)n);
		s->received += (size_t)n;
	}
	s->recv_sum = h;
	pthread_join(w, NULL);
	close(s->fd);
	free(buf);
	return NULL;
}

static void stream_through(coil_loop_t *srv, size_t conns, size_t per_conn)
{
	unsigned short port;
	coil_socket_t *l = echo_listen(srv, &port);
	struct streamer *st = calloc(conns, sizeof(*st));
	pthread_t *th = calloc(conns, sizeof(*th));
	for (size_t i = 0; i < conns; i++) {
		st[i].port = port;
		st[i].total = per_conn;
		pthread_create(&th[i], NULL, stream_run, &st[i]);
	}
	size_t total = 0;
	int bad = 0;
	for (size_t i = 0; i < conns; i++) {
		pthread_join(th[i], NULL);
		total += st[i].received;
		if (st[i].received != per_conn || st[i].recv_sum != st[i].sent_sum)
			bad++;
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(total, conns * per_conn);
	fprintf(stderr, "(%zu MiB echoed over %zu connections, checksums equal: %s)\n",
		total >> 20, conns, bad ? "NO" : "yes");
	free(st);
	free(th);
	coil_channel_release(l);
}

static void test_stream_1gib(void)
{
	coil_loop_t *srv = t_loop(2);
	stream_through(srv, 8, scaled(128u << 20));
	coil_loop_free(srv);
}

/* A deliberately tiny buffer ring (-ENOBUFS every turn) and small CQ
 * (overflow): correct, only slower. */
static void test_tiny_ring_and_cq(void)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 2;
	o.buf_count = 2;
	o.buf_size = 512;
	o.sq_entries = 8;
	o.cq_entries = 16;
	coil_loop_t *srv = NULL;
	T_ASSERT_OK(coil_loop_new(&srv, &o));
	stream_through(srv, 16, scaled(4u << 20));
	coil_loop_free(srv);
}

/* ---- churn: connect/close storms and resets while streams run ---- */

struct churn {
	unsigned short port;
	size_t iters;
	int failures;
};

static void *churner(void *arg)
{
	struct churn *c = arg;
	for (size_t i = 0; i < c->iters; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_port = htons(c->port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
			c->failures++;
			close(fd);
			continue;
		}
		char buf[4096] = {0};
		switch (i % 3) {
		case 0: /* write and vanish with a reset mid-transfer */
			write(fd, buf, sizeof(buf));
			struct linger lg = {1, 0};
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			break;
		case 1: /* half-close, then read the echo back */
			write(fd, buf, 100);
			shutdown(fd, SHUT_WR);
			while (read(fd, buf, sizeof(buf)) > 0)
				;
			break;
		default: /* connect and close at once */
			break;
		}
		close(fd);
	}
	return NULL;
}

static void test_churn_with_traffic(void)
{
	coil_loop_t *srv = t_loop(2);
	size_t live0 = coil_live_channels();
	unsigned short port;
	coil_socket_t *l = echo_listen(srv, &port);
	struct churn ch[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		ch[i] = (struct churn){port, scaled(2000), 0};
		pthread_create(&th[i], NULL, churner, &ch[i]);
	}
	/* Traffic that must stay intact meanwhile. */
	struct streamer st = {.port = port, .total = scaled(64u << 20)};
	pthread_t s;
	pthread_create(&s, NULL, stream_run, &st);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CU_ASSERT_EQUAL(ch[i].failures, 0);
	}
	pthread_join(s, NULL);
	CU_ASSERT_EQUAL(st.received, st.total);
	CU_ASSERT_EQUAL(st.recv_sum, st.sent_sum);
	/* Every server-side channel is gone again (bounded wait). */
	for (int i = 0; i < 5000 && coil_live_channels() > live0 + 1; i++)
		usleep(1000);
	CU_ASSERT(coil_live_channels() <= live0 + 1);
	coil_channel_release(l);
	coil_loop_free(srv);
}

/* ---- EMFILE at accept: a connection storm against a server that is out
 * of descriptors. It backs off, keeps serving the connections it holds, and
 * serves every waiting client as descriptors free up. ---- */

#define STORM_MSG 700

struct emfile_client {
	unsigned short port;
	int *fds;
	size_t n;
	_Atomic int ok, bad, stop;
};

static void emfile_msg(char *p, int fd)
{
	fill(p, STORM_MSG, (unsigned)fd, 77);
}

/* Connects all of its sockets (they wait in the backlog) and writes a
 * message on each; then, in whatever order the server gets to them, reads
 * each echo and half-closes, which lets the server close its end and free
 * a descriptor. */
static void *emfile_client_run(void *arg)
{
	struct emfile_client *st = arg;
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = htons(st->port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	char msg[STORM_MSG];
	struct pollfd *pf = calloc(st->n, sizeof(*pf));
	char *got = malloc(st->n * STORM_MSG);
	size_t *have = calloc(st->n, sizeof(*have));
	size_t left = st->n;
	for (size_t i = 0; i < st->n; i++) {
		pf[i].fd = st->fds[i];
		pf[i].events = POLLIN;
		if (connect(st->fds[i], (struct sockaddr *)&sa, sizeof(sa)) ||
		    (emfile_msg(msg, st->fds[i]),
		     t_write_all(st->fds[i], msg, STORM_MSG))) {
			atomic_fetch_add(&st->bad, 1);
			pf[i].fd = -1;
			left--;
		}
	}
	while (left && !atomic_load(&st->stop)) {
		if (poll(pf, st->n, 100) < 0)
			break;
		for (size_t i = 0; i < st->n; i++) {
			if (pf[i].fd < 0 || !pf[i].revents)
				continue;
			char *g = got + i * STORM_MSG;
			ssize_t r = read(pf[i].fd, g + have[i],
					 STORM_MSG - have[i]);
			if (r > 0)
				have[i] += (size_t)r;
			if (r > 0 && have[i] < STORM_MSG)
				continue;
			emfile_msg(msg, pf[i].fd);
			if (have[i] == STORM_MSG && !memcmp(g, msg, STORM_MSG))
				atomic_fetch_add(&st->ok, 1);
			else
				atomic_fetch_add(&st->bad, 1);
			shutdown(pf[i].fd, SHUT_WR);
			pf[i].fd = -1;
			left--;
		}
	}
	free(pf);
	free(got);
	free(have);
	return NULL;
}

static void test_emfile_storm(void)
{
	enum { THREADS = 4, FREE_FDS = 8 };
	size_t n = scaled(400);
	if (n < 6 * FREE_FDS)
		n = 6 * FREE_FDS;
	struct rlimit old, lim;
	getrlimit(RLIMIT_NOFILE, &old);

	/* A low limit first: a multishot accept keeps the limit that was in
	 * force when it was armed. Then the clients' sockets and the server,
	 * then every other descriptor below the limit taken, then FREE_FDS
	 * given back: the server can hold at most FREE_FDS clients at once. */
	int first = dup(0);
	close(first);
	lim = old;
	lim.rlim_cur = (rlim_t)first + n + 64;
	CU_ASSERT_FATAL(setrlimit(RLIMIT_NOFILE, &lim) == 0);
	int *fds = calloc(n, sizeof(*fds));
	for (size_t i = 0; i < n; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		CU_ASSERT_FATAL(fds[i] >= 0);
	}
	coil_loop_t *srv = t_loop(2);
	unsigned short port;
	coil_socket_t *l = echo_listen(srv, &port);
	size_t live0 = coil_live_channels();
	int hog[128], nhog = 0;
	for (;;) {
		int fd = dup(0);
		if (fd < 0)
			break;
		CU_ASSERT_FATAL(nhog < 128);
		hog[nhog++] = fd;
	}
	CU_ASSERT_FATAL(nhog >= FREE_FDS);
	for (int i = 0; i < FREE_FDS; i++)
		close(hog[--nhog]);

	struct emfile_client st[THREADS];
	pthread_t th[THREADS];
	for (int t = 0; t < THREADS; t++) {
		size_t lo = n * (size_t)t / THREADS;
		size_t hi = n * (size_t)(t + 1) / THREADS;
		st[t] = (struct emfile_client){.port = port, .fds = fds + lo,
				       .n = hi - lo};
		pthread_create(&th[t], NULL, emfile_client_run, &st[t]);
	}
	/* Sample how many clients the server holds at once. */
	size_t most = 0;
	int ok = 0, bad = 0;
	for (int i = 0; i < 120000; i++) {
		size_t live = coil_live_channels() - live0;
		if (live > most)
			most = live;
		ok = bad = 0;
		for (int t = 0; t < THREADS; t++) {
			ok += atomic_load(&st[t].ok);
			bad += atomic_load(&st[t].bad);
		}
		if ((size_t)(ok + bad) == n)
			break;
		usleep(1000);
	}
	for (int t = 0; t < THREADS; t++) /* only when failing */
		atomic_store(&st[t].stop, 1);
	for (int t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	ok = bad = 0;
	for (int t = 0; t < THREADS; t++) {
		ok += atomic_load(&st[t].ok);
		bad += atomic_load(&st[t].bad);
	}
	CU_ASSERT_EQUAL(ok, (int)n);
	CU_ASSERT_EQUAL(bad, 0);
	/* Channel objects outlive their descriptor for a moment (closed, free
	 * pending), so the count may pass FREE_FDS a little; far fewer than n
	 * at once shows the limit held. Valgrind keeps its own view of the
	 * limit: dup() sees it, the kernel's accept does not. */
	if (!t_on_valgrind())
		CU_ASSERT(most <= 2 * FREE_FDS);
	fprintf(stderr, "(EMFILE storm: %zu clients served through %d free "
		"descriptors, at most %zu held at once)\n", n, FREE_FDS, most);

	for (int i = 0; i < nhog; i++)
		close(hog[i]);
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
	setrlimit(RLIMIT_NOFILE, &old);
	/* The listener still serves, and every server-side channel is gone. */
	int fd = t_connect_tcp4(port);
	char msg[STORM_MSG], got[STORM_MSG];
	emfile_msg(msg, 1);
	CU_ASSERT(t_write_all(fd, msg, STORM_MSG) == 0);
	CU_ASSERT(t_read_exact(fd, got, STORM_MSG) == 0);
	CU_ASSERT(!memcmp(got, msg, STORM_MSG));
	close(fd);
	for (int i = 0; i < 5000 && coil_live_channels() > live0; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(coil_live_channels(), live0);
	coil_channel_release(l);
	coil_loop_free(srv);
}

/* ---- foreign-thread storm: 8 threads write to and close channels owned
 * by 2 workers while traffic flows ---- */

struct storm {
	coil_channel_t **ch;
	size_t n;
	unsigned seed;
	unsigned char tid;
	int writes;
	coil_ip_t **ips;  /* per write, kept to count what was delivered */
	int *target;      /* channel index per write, -1 for a close */
};

/* An 8-byte record: magic, thread, sequence (little endian), magic. */
#define REC 8
static void rec_make(unsigned char *r, unsigned char tid, uint32_t seq)
{
	r[0] = 0xC0;
	r[1] = tid;
	memcpy(r + 2, &seq, 4);
	r[6] = 0xEE;
	r[7] = 0x0F;
}

static void *stormer(void *arg)
{
	struct storm *s = arg;
	for (int i = 0; i < s->writes; i++) {
		int k = (int)((size_t)rand_r(&s->seed) % s->n);
		coil_channel_t *c = s->ch[k];
		if (rand_r(&s->seed) % 1000 == 0) {
			coil_channel_close(c, rand_r(&s->seed) % 2);
			s->target[i] = -1;
			s->ips[i] = NULL;
		} else {
			unsigned char r[REC];
			rec_make(r, s->tid, (uint32_t)i);
			s->target[i] = k;
			s->ips[i] = coil_channel_write(c, r, REC);
		}
	}
	return NULL;
}

/* What a peer received: records per writer thread, in order. */
struct peer_rx {
	unsigned char part[REC];
	size_t plen;
	int got[8];
	int64_t last[8];
	int bad;
	bool eof;
};

static void peer_take(struct peer_rx *p, const unsigned char *d, size_t n)
{
	while (n) {
		size_t k = REC - p->plen < n ? REC - p->plen : n;
		memcpy(p->part + p->plen, d, k);
		p->plen += k;
		d += k;
		n -= k;
		if (p->plen < REC)
			break;
		p->plen = 0;
		uint32_t seq;
		memcpy(&seq, p->part + 2, 4);
		unsigned t = p->part[1];
		if (p->part[0] != 0xC0 || p->part[6] != 0xEE ||
		    p->part[7] != 0x0F || t >= 8 || (int64_t)seq <= p->last[t]) {
			p->bad++;
			continue;
		}
		p->last[t] = seq;
		p->got[t]++;
	}
}

static void peers_drain(int *peer, struct peer_rx *rx, int n)
{
	unsigned char buf[65536];
	for (int i = 0; i < n; i++) {
		ssize_t r = -1;
		while (!rx[i].eof && (r = read(peer[i], buf, sizeof(buf))) != 0) {
			if (r < 0) {
				if (errno != EAGAIN && errno != EWOULDBLOCK)
					rx[i].eof = true; /* reset */
				break;
			}
			peer_take(&rx[i], buf, (size_t)r);
		}
		if (!rx[i].eof && r == 0)
			rx[i].eof = true;
	}
}

/* Every write that a foreign thread saw succeed reached the peer, in the
 * thread's order, as whole records; closes and writes race freely. */
static void test_foreign_storm(void)
{
	coil_loop_t *loop = t_loop(2);
	enum { N = 64, T = 8 };
	coil_channel_t *ch[N];
	int peer[N];
	struct peer_rx *rx = calloc(N, sizeof(*rx));
	for (int i = 0; i < N; i++) {
		int sv[2];
		socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv);
		T_ASSERT_OK(coil_channel_wrap(loop, sv[0], COIL_IO_READ | COIL_IO_WRITE,
					      &ch[i]));
		peer[i] = sv[1];
		for (int t = 0; t < T; t++)
			rx[i].last[t] = -1;
	}
	int writes = (int)scaled(4000);
	if (writes < 1000) /* cheap: every run gets a real storm */
		writes = 1000;
	struct storm st[T];
	pthread_t th[T];
	for (int i = 0; i < T; i++) {
		st[i] = (struct storm){ch, N, (unsigned)i * 77u + 1,
				       (unsigned char)i, writes,
				       calloc((size_t)writes, sizeof(coil_ip_t *)),
				       calloc((size_t)writes, sizeof(int))};
		pthread_create(&th[i], NULL, stormer, &st[i]);
	}
	/* Drain the peers meanwhile so writes keep flowing. */
	for (int round = 0; round < 200; round++) {
		peers_drain(peer, rx, N);
		usleep(500);
	}
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	/* Count the writes that succeeded, per channel and thread. */
	int (*ok)[T] = calloc(N, sizeof(*ok));
	int failed = 0;
	for (int t = 0; t < T; t++) {
		for (int i = 0; i < writes; i++) {
			coil_ip_t *w = st[t].ips[i];
			if (!w)
				continue;
			while (coil_ip_wait(w, 10) == -ETIMEDOUT)
				peers_drain(peer, rx, N);
			if (coil_ip_error(w) == 0)
				ok[st[t].target[i]][t]++;
			else
				failed++;
			coil_ip_unref(w);
		}
		free(st[t].ips);
		free(st[t].target);
	}
	/* Close everything; the peers read to the end. */
	for (int i = 0; i < N; i++)
		coil_channel_release(ch[i]);
	for (int round = 0; round < 5000; round++) {
		peers_drain(peer, rx, N);
		int open = 0;
		for (int i = 0; i < N; i++)
			open += !rx[i].eof;
		if (!open)
			break;
		usleep(1000);
	}
	int lost = 0, bad = 0, eofs = 0, extra = 0;
	long delivered = 0;
	for (int i = 0; i < N; i++) {
		eofs += rx[i].eof;
		bad += rx[i].bad;
		for (int t = 0; t < T; t++) {
			/* A cancelled send may leave part of one more record
			 * (it then fails); never fewer than the successes. */
			if (rx[i].got[t] < ok[i][t])
				lost += ok[i][t] - rx[i].got[t];
			if (rx[i].got[t] > ok[i][t])
				extra += rx[i].got[t] - ok[i][t];
			delivered += rx[i].got[t];
		}
		close(peer[i]);
	}
	CU_ASSERT_EQUAL(eofs, N);
	CU_ASSERT_EQUAL(lost, 0);
	CU_ASSERT_EQUAL(bad, 0);
	/* A write reported failed whose bytes all arrived would mislead. */
	CU_ASSERT_EQUAL(extra, 0);
	fprintf(stderr, "(foreign storm: %d threads x %d writes/closes on %d "
		"channels: %ld records delivered in order, %d writes failed "
		"after closes, %d lost, %d delivered but reported failed)\n",
		T, writes, N, delivered, failed, lost, extra);
	free(ok);
	free(rx);
	coil_loop_free(loop);
}

static const coil_test_t tests[] = {
	{"many_connections", test_many_connections},
	{"stream_1gib", test_stream_1gib},
	{"tiny_ring_and_cq", test_tiny_ring_and_cq},
	{"churn_with_traffic", test_churn_with_traffic},
	{"emfile_storm", test_emfile_storm},
	{"foreign_storm", test_foreign_storm},
	{NULL, NULL},
};

/* The echo server here drops its write handles; writes that fail because a
 * churning peer reset the connection are expected, so count them rather
 * than print a line each. */
static _Atomic long unobserved;
static void count_unobserved(int err, const char *msg, void *ud)
{
	atomic_fetch_add(&unobserved, 1);
}

int main(int argc, char **argv)
{
	coil_set_unobserved_handler(count_unobserved, NULL);
	const char *sc = getenv("COIL_STRESS_SCALE");
	if (sc && atof(sc) > 0)
		scale = atof(sc);
	signal(SIGPIPE, SIG_IGN); /* the raw test clients write to reset peers */
	int rc = coil_test_main("stress", tests, argc, argv);
	fprintf(stderr, "(%ld write failures after peer resets, unobserved by "
		"design)\n", atomic_load(&unobserved));
	return rc;
}
