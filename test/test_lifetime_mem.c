/* SPDX-License-Identifier: MIT */
/* Memory of channels (issue 14): what an idle connection carries, and the
 * allocations an echoed message costs in steady state, counted by coil
 * itself (coil__alloc_live / coil__alloc_total, lib/alloc.c: exact counts,
 * no timing). Links libcoil.a for the internals. */
#include "helpers.h"
#include "internal.h"
#include "sock.h"

#include <errno.h>
#ifndef COIL_NO_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static coil_loop_t *L;

/* Sanitizer and valgrind builds have no caches (every allocation is seen). */
#ifdef COIL_NO_JEMALLOC
#define CACHES 0
#else
#define CACHES 1
#endif

/* One round trip through the worker, so that what was posted has run. */
static void settle(void)
{
	coil_ip_t *ip = coil_sleep(L, 1);
	coil_ip_wait(ip, -1);
	coil_ip_unref(ip);
}

/* coil__alloc_live() read on the worker, after two round trips through it
 * (so that what earlier turns freed is freed): each reading includes its
 * own posted task, so two readings compare exactly. */
struct live_probe {
	size_t live;
	_Atomic int done;
};

static void live_probe_run(void *p)
{
	struct live_probe *lp = p;
	lp->live = coil__alloc_live();
	atomic_store(&lp->done, 1);
}

static size_t live_on_worker(void)
{
	struct live_probe lp = {0, 0};
	for (int round = 0; round < 3; round++) {
		atomic_store(&lp.done, 0);
		T_ASSERT_OK(coil_loop_post(L, 0, live_probe_run, &lp));
		for (int i = 0; i < 10000 && !atomic_load(&lp.done); i++)
			usleep(1000);
		CU_ASSERT_FATAL(atomic_load(&lp.done));
	}
	return lp.live;
}

static int raw_pair(int *peer)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -1;
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	*peer = sv[1];
	return sv[0];
}

/* Blocking 64-byte ping-pong from this thread: 0, or -1 if an echo did not
 * come back whole. */
static int pingpong(int fd, long n)
{
	char out[64], in[64];
	memset(out, 'x', sizeof(out));
	out[63] = '\n';
	for (long i = 0; i < n; i++) {
		ssize_t w;
		do
			w = write(fd, out, sizeof(out));
		while (w < 0 && errno == EINTR);
		if (w != (ssize_t)sizeof(out)) {
			fprintf(stderr, "pingpong %ld: write: %m\n", i);
			return -1;
		}
		size_t got = 0;
		while (got < sizeof(in)) {
			ssize_t r = read(fd, in + got, sizeof(in) - got);
			if (r < 0 && errno == EINTR)
				continue; /* a sanitizer's signal */
			if (r <= 0) {
				fprintf(stderr, "pingpong %ld: read %zd after %zu "
					"bytes: %m\n", i, r, got);
				return -1;
			}
			got += (size_t)r;
		}
		if (memcmp(in, out, sizeof(in))) {
			fprintf(stderr, "pingpong %ld: wrong bytes\n", i);
			return -1;
		}
	}
	return 0;
}

/* ---- idle ---- */

static void nop_read(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	(void)ch, (void)d, (void)n, (void)ud;
}

static void echo_read(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	(void)ud;
	coil_ip_unref(coil_channel_write_view(ch, d, n));
}

static void nop_closed(coil_channel_t *ch, int expected, void *ud)
{
	(void)ch, (void)expected, (void)ud;
}

/* The channel was 1016 bytes, every idle connection carrying its write
 * batch, msghdr, linger timer, relay and steal state and a mutex, then 288
 * (its read queue, pending-read list, readline signal, write queue head,
 * a deferred-work node and a socket state pointer inline). An idle channel
 * set up as echo_server sets up its clients (queue size, read and closed
 * signals) is now one allocation of at most 192 bytes, and a write's state
 * (and a read's) is given back once it is done. */
static void test_idle_channel_is_small(void)
{
	CU_ASSERT(sizeof(struct coil_channel_s) <= 192);
	enum { N = 200 };
	static coil_channel_t *chs[N];
	static int peers[N];
	size_t live0 = live_on_worker();
	for (int i = 0; i < N; i++) {
		int fd = raw_pair(&peers[i]);
		CU_ASSERT_FATAL(fd >= 0);
		T_ASSERT_OK(coil_channel_wrap(L, fd, COIL_IO_READ | COIL_IO_WRITE,
					      &chs[i]));
		T_ASSERT_OK(coil_channel_set_queue_size(chs[i], 4u << 20));
		T_ASSERT_OK(coil_channel_on_read(chs[i], i % 2 ? echo_read
							       : nop_read,
						 NULL));
		T_ASSERT_OK(coil_channel_on_closed(chs[i], nop_closed, NULL));
	}
	size_t live1 = live_on_worker();
	CU_ASSERT_EQUAL(live1 - live0, (size_t)N);
	/* Half of them echo a message; once the echoes are back and sent,
	 * they are idle again and hold what they held before. */
	for (int i = 1; i < N; i += 2)
		CU_ASSERT(pingpong(peers[i], 1) == 0);
	size_t live2 = live_on_worker();
	if (CACHES) {
		CU_ASSERT_EQUAL(live2, live1);
	} else {
		CU_ASSERT(live2 <= live1);
	}
	if (live2 != live1)
		fprintf(stderr, "idle: live %zu -> %zu -> %zu\n", live0, live1,
			live2);
	for (int i = 0; i < N; i++) {
		coil_channel_release(chs[i]);
		close(peers[i]);
	}
	settle();
}

/* ---- idle accepted sockets ---- */

/* What echo_server does with a new client: queue size, read and closed
 * signals; the clients are kept so the test can look at them. */
enum { NACC = 100 };
static coil_socket_t *acc[NACC];
static _Atomic int nacc;
static _Atomic int acc_cold; /* clients that had a cold socket part */

static void acc_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	(void)l, (void)ud;
	int i = atomic_load(&nacc);
	if (i >= NACC) {
		coil_channel_release(c);
		return;
	}
	if (coil__sock_xq(S(c)))
		atomic_fetch_add(&acc_cold, 1);
	coil_channel_set_queue_size(c, 4u << 20);
	coil_channel_on_read(c, echo_read, NULL);
	coil_channel_on_closed(c, nop_closed, NULL);
	acc[i] = c;
	atomic_store(&nacc, i + 1);
}

/*
 * An accepted TCP client, idle with echo_server's signals connected, is one
 * allocation of at most 224 bytes (jemalloc's 224-byte size class, whose
 * 28 KiB slabs cost about 2 B per object more; libuv needs about 262 B per
 * idle connection): its 192-byte channel with its socket state inside (at
 * most 32 bytes: what only connecting, listening, bound, datagram or
 * shut-down sockets need is a part made on first use, which an accepted
 * client never makes). It was two, 320 + 640 bytes (reqhost[256],
 * unix_path[128], the bind address inline), then one of 320.
 */
static void test_idle_accepted_socket_is_small(void)
{
	CU_ASSERT(sizeof(struct coil__sock) <= 32);
	CU_ASSERT(sizeof(struct coil_channel_s) + sizeof(struct coil__sock) <=
		  224);
#ifndef COIL_NO_JEMALLOC
	/* The allocation coil__sock_channel_new makes, in jemalloc's terms. */
	CU_ASSERT_EQUAL(nallocx(sizeof(struct coil_channel_s) +
				sizeof(struct coil__sock), 0), 224);
#endif
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_on_new_client(l, acc_client, NULL));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", NACC + 16, 0));
	coil_sockinfo_t li;
	T_ASSERT_OK(coil_socket_local(l, &li));
	CU_ASSERT_PTR_NOT_NULL(coil__sock_xq(S(l))); /* a listener has one */
	static int fds[NACC + 1];
	/* One warm-up client (and its echo), then the measured ones. */
	fds[NACC] = t_connect_tcp4(li.port);
	CU_ASSERT_FATAL(fds[NACC] >= 0);
	for (int i = 0; i < 10000 && atomic_load(&nacc) < 1; i++)
		usleep(1000);
	CU_ASSERT_FATAL(atomic_load(&nacc) == 1);
	CU_ASSERT(pingpong(fds[NACC], 1) == 0);
	size_t live0 = live_on_worker();
	for (int i = 0; i < NACC - 1; i++) {
		fds[i] = t_connect_tcp4(li.port);
		CU_ASSERT_FATAL(fds[i] >= 0);
	}
	for (int i = 0; i < 10000 && atomic_load(&nacc) < NACC; i++)
		usleep(1000);
	CU_ASSERT_FATAL(atomic_load(&nacc) == NACC);
	size_t live1 = live_on_worker();
	fprintf(stderr, "idle accepted sockets: %.2f live allocations each, "
		"sizeof channel %zu, socket %zu\n",
		(double)(live1 - live0) / (NACC - 1),
		sizeof(struct coil_channel_s), sizeof(struct coil__sock));
	CU_ASSERT_EQUAL(live1 - live0, (size_t)(NACC - 1));
	CU_ASSERT_EQUAL(atomic_load(&acc_cold), 0);
	for (int i = 0; i < NACC; i++) {
		CU_ASSERT_PTR_NULL(coil__sock_xq(S(acc[i])));
		CU_ASSERT_PTR_EQUAL(S(acc[i]), (void *)(acc[i] + 1));
		/* Echoed or not, an idle client holds no read or write part
		 * (read on this thread: the worker is idle, the fields are
		 * settled, and the pointers are all this looks at). */
		CU_ASSERT_PTR_NULL(acc[i]->rd);
		CU_ASSERT_PTR_NULL(acc[i]->iov);
	}
	for (int i = 0; i < NACC; i++) {
		coil_channel_release(acc[i]);
		close(fds[i]);
	}
	coil_channel_release(l);
	settle();
}

/* A wrapped socket (coil_socket_wrap, coil_socketpair) carries its socket
 * state inside its channel's allocation too: one allocation per socket (it
 * was two, the socket state separate). */
static void test_wrapped_socket_is_one_allocation(void)
{
	size_t live0 = live_on_worker();
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	CU_ASSERT_EQUAL(live_on_worker() - live0, 2);
	CU_ASSERT_PTR_EQUAL(S(a), (void *)(a + 1));
	CU_ASSERT_PTR_EQUAL(S(b), (void *)(b + 1));
	CU_ASSERT_EQUAL(S(a)->type, SOCK_STREAM);
	CU_ASSERT_EQUAL(S(a)->family, AF_UNIX);
	coil_channel_release(a);
	coil_channel_release(b);
	settle();
}

/* ---- the read part ---- */

struct rd_probe {
	coil_channel_t *ch;
	bool has_rd;
	_Atomic int done;
};

static void rd_probe_run(void *p)
{
	struct rd_probe *q = p;
	q->has_rd = q->ch->rd != NULL;
	atomic_store(&q->done, 1);
}

/* Whether ch has a read part, looked at on its worker after two round
 * trips through it (a part that emptied goes back at the end of the turn,
 * which the first round trip may precede). */
static bool has_read_part(coil_channel_t *ch)
{
	struct rd_probe q = {ch, false, 0};
	for (int round = 0; round < 2; round++) {
		atomic_store(&q.done, 0);
		T_ASSERT_OK(coil_loop_post(L, 0, rd_probe_run, &q));
		for (int i = 0; i < 10000 && !atomic_load(&q.done); i++)
			usleep(1000);
		CU_ASSERT_FATAL(atomic_load(&q.done));
	}
	return q.has_rd;
}

/* Waits (bounded, for a condition, not a time) until ch's read queue
 * holds n bytes. */
static void wait_queued(coil_channel_t *ch, size_t n)
{
	for (int i = 0; i < 10000 && coil_channel_read_queue_used(ch) != n; i++)
		usleep(1000);
	CU_ASSERT_FATAL(coil_channel_read_queue_used(ch) == n);
}

static void put(int fd, const char *s)
{
	CU_ASSERT_FATAL(write(fd, s, strlen(s)) == (ssize_t)strlen(s));
}

static void expect_bytes(coil_ip_t *ip, const char *want)
{
	CU_ASSERT_FATAL(coil_ip_wait(ip, 10000) == 0);
	size_t len = 0;
	const void *p = coil_ip_bytes(ip, &len);
	CU_ASSERT_EQUAL(len, strlen(want));
	CU_ASSERT(p && len == strlen(want) && !memcmp(p, want, len));
	coil_ip_unref(ip);
}

/*
 * The read queue and the pending read requests are a part of the channel
 * made while they are used: a waiting read holds it (with the bytes that do
 * not serve it yet), and once the read is served the channel holds what it
 * held before (the part given back, at the end of the turn, so a read
 * issued from the served one's callback keeps it), and a connection that
 * stopped reading carries none of it. It was inline: 48 bytes in every
 * channel.
 */
static void test_read_part_given_back(void)
{
	/* TCP, as a server's clients are (a multishot receive: when reads
	 * stop, the deferred work that cancels it gives the part back). */
	unsigned short port = 0;
	int lfd = t_listen_tcp4(&port);
	CU_ASSERT_FATAL(lfd >= 0);
	int peer = t_connect_tcp4(port);
	CU_ASSERT_FATAL(peer >= 0);
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	CU_ASSERT_FATAL(fd >= 0);
	close(lfd);
	coil_channel_t *ch = NULL;
	T_ASSERT_OK(coil_channel_wrap(L, fd, COIL_IO_READ | COIL_IO_WRITE, &ch));
	size_t live0 = live_on_worker();
	CU_ASSERT(!has_read_part(ch));
	coil_ip_t *ip = coil_channel_read_exact(ch, 8);
	CU_ASSERT_FATAL(ip != NULL);
	put(peer, "abcd");
	wait_queued(ch, 4);
	CU_ASSERT(has_read_part(ch)); /* the request and 4 queued bytes */
	put(peer, "efgh");
	expect_bytes(ip, "abcdefgh");
	CU_ASSERT(!has_read_part(ch));
	CU_ASSERT_EQUAL(live_on_worker(), live0);
	/* readline: a partial line waits in the part; the line's end
	 * serves the read and gives it back. */
	ip = coil_channel_readline(ch);
	CU_ASSERT_FATAL(ip != NULL);
	put(peer, "xy");
	wait_queued(ch, 2);
	CU_ASSERT(has_read_part(ch));
	put(peer, "z\n");
	expect_bytes(ip, "xyz\n");
	CU_ASSERT(!has_read_part(ch));
	/* A plain read() served straight from the receive. */
	ip = coil_channel_read(ch);
	CU_ASSERT_FATAL(ip != NULL);
	put(peer, "q");
	expect_bytes(ip, "q");
	CU_ASSERT(!has_read_part(ch));
	coil_channel_release(ch);
	close(peer);
	settle();
}

/* ---- allocations per echoed message ---- */

enum { P_SIGNAL, P_READ, P_READLINE };

struct srv {
	coil_channel_t *ch;
	int path;
};

static void srv_start_read(struct srv *s);

static void srv_on_data(coil_ip_t *ip, void *ud)
{
	struct srv *s = ud;
	size_t len = 0;
	const void *p = coil_ip_bytes(ip, &len);
	if (coil_ip_state(ip) != COIL_IP_FINISHED || !len)
		return; /* closed */
	coil_ip_unref(coil_channel_write(s->ch, p, len));
	srv_start_read(s);
}

static void srv_start_read(struct srv *s)
{
	coil_ip_t *r = s->path == P_READ ? coil_channel_read(s->ch)
					 : coil_channel_readline(s->ch);
	if (!r)
		return;
	coil_ip_on_done(r, srv_on_data, s);
	coil_ip_unref(r);
}

static void srv_start(void *arg)
{
	struct srv *s = arg;
	if (s->path == P_SIGNAL)
		coil_channel_on_read(s->ch, echo_read, NULL);
	else
		srv_start_read(s);
}

/* Allocations over n echoed messages after a warm-up, on one path. */
static uint64_t allocs_for(int path, long n)
{
	static struct srv srvs[3]; /* callbacks may run after the release */
	struct srv *s = &srvs[path];
	int peer;
	int fd = raw_pair(&peer);
	CU_ASSERT_FATAL(fd >= 0);
	s->path = path;
	T_ASSERT_OK(coil_channel_wrap(L, fd, COIL_IO_READ | COIL_IO_WRITE,
				      &s->ch));
	T_ASSERT_OK(coil_loop_post(L, 0, srv_start, s));
	CU_ASSERT_FATAL(pingpong(peer, 300) == 0);
	uint64_t a0 = coil__alloc_total();
	CU_ASSERT_FATAL(pingpong(peer, n) == 0);
	uint64_t a1 = coil__alloc_total();
	close(peer);
	coil_channel_release(s->ch);
	settle();
	return a1 - a0;
}

/*
 * Steady state, one message in flight: heap allocations, counted by the
 * allocator seam (a cache handing an object out again is no heap
 * allocation). With the read signal and write_view a message costs none:
 * the write request and the write's handle come from the worker's caches
 * (issue 14's goal: zero). With read()/readline() and write() it costs one,
 * the read's result bytes (goal: at most two); handles, callback nodes and
 * requests come from the caches. Without caches (sanitizer and valgrind
 * builds) every object is a heap allocation: 3 and 8 (the read part, which
 * a read request needs while it waits, is one of them).
 */
static void test_allocs_per_message(void)
{
	long n = t_on_valgrind() ? 200 : 2000;
	uint64_t sig = allocs_for(P_SIGNAL, n);
	uint64_t rd = allocs_for(P_READ, n);
	uint64_t ln = allocs_for(P_READLINE, n);
	fprintf(stderr, "allocations per message: signal+write_view %.2f, "
		"read+write %.2f, readline+write %.2f (%s)\n",
		(double)sig / (double)n, (double)rd / (double)n,
		(double)ln / (double)n, CACHES ? "caches" : "no caches");
	/* A message's allocations all happen between its write and its echo:
	 * the window holds n messages' worth, plus at most one straggler. */
	uint64_t per_sig = CACHES ? 0 : 3, per_rd = CACHES ? 1 : 8;
	/* The read signal and read() get what one receive brought: where
	 * the kernel packs receives into shared buffers (incremental
	 * consumption, 32 KiB buffers by default) a message that meets a
	 * buffer's end comes in two, shown or read twice (and, without
	 * caches, echoed by two writes): one in 512 of the 64-byte messages. */
	uint64_t splits = (uint64_t)n * 64 / 32768 + 1;
	CU_ASSERT(sig <= per_sig * ((uint64_t)n + splits) + 2);
	CU_ASSERT(rd <= per_rd * ((uint64_t)n + splits) + 4);
	CU_ASSERT(ln <= per_rd * (uint64_t)n + 4);
}

static const coil_test_t tests[] = {
	{"idle_channel_is_small", test_idle_channel_is_small},
	{"idle_accepted_socket_is_small", test_idle_accepted_socket_is_small},
	{"wrapped_socket_is_one_allocation",
	 test_wrapped_socket_is_one_allocation},
	{"read_part_given_back", test_read_part_given_back},
	{"allocs_per_message", test_allocs_per_message},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	L = t_loop(1);
	int rc = coil_test_main("lifetime_mem", tests, argc, argv);
	coil_loop_free(L);
	return rc;
}
