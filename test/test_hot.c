/* SPDX-License-Identifier: MIT */
/* The per-message path under many connections (issue 14): what one worker
 * turn that serves a message on each of many connections costs in heap
 * allocations, counted by coil itself (coil__alloc_total, lib/alloc.c:
 * exact counts, no timing). Links libcoil.a for the internals. */
#include "helpers.h"
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

uint64_t coil__alloc_total(void);

static coil_loop_t *L;

/* Sanitizer and valgrind builds have no caches (every allocation is seen). */
#ifdef COIL_NO_JEMALLOC
#define CACHES 0
#else
#define CACHES 1
#endif

/* More connections than a per-worker cache of 64 blocks (the old bound)
 * and fewer than the CQ holds, so that one turn sees them all. */
#define N 160
#define MSG 64

static void nop_closed(coil_channel_t *ch, int expected, void *ud)
{
}

static coil_channel_t *chs[N];
static coil_ip_t *writes[N];
static _Atomic int wrote;

/* On the worker, in one callback: a message to each of the N channels (a
 * broadcast, or a turn that answers every connection), so that N write
 * requests and N write parts are alive at once; their sends complete in a
 * later turn, which frees them all. */
static void broadcast(void *arg)
{
	static const char msg[MSG] = "broadcast";
	for (int i = 0; i < N; i++) {
		coil_ip_unref(writes[i]); /* the last round's, here: on the worker */
		writes[i] = coil_channel_write(chs[i], msg, sizeof(msg));
	}
	atomic_store(&wrote, 1);
}

static int read_full(int fd, char *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue; /* a sanitizer's signal */
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/* One round: a broadcast, read whole by every peer; it ends when every
 * write has settled (its send's completion ran on the worker, which frees
 * the request next, before it runs the next round's task), so that rounds
 * do not overlap. */
static int round_trip(const int *peers)
{
	char in[MSG];
	int rc = 0;
	atomic_store(&wrote, 0);
	if (coil_loop_post(L, 0, broadcast, NULL))
		return -1;
	for (int i = 0; i < N; i++)
		if (read_full(peers[i], in, sizeof(in)) ||
		    strcmp(in, "broadcast"))
			return -1;
	if (!atomic_load(&wrote))
		return -1;
	for (int i = 0; i < N; i++)
		if (!writes[i] || coil_ip_wait(writes[i], 10000) ||
		    coil_ip_state(writes[i]) != COIL_IP_FINISHED)
			rc = -1;
	return rc;
}

/* ch[i] on one end of a socketpair, peers[i] the other (raw), n of them. */
static void open_n_pairs(coil_channel_t **ch, int *peers, int n)
{
	for (int i = 0; i < n; i++) {
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC,
					   0, sv) == 0);
		struct timeval tv = {.tv_sec = 10};
		setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		peers[i] = sv[1];
		T_ASSERT_OK(coil_channel_wrap(L, sv[0], COIL_IO_READ | COIL_IO_WRITE,
					      &ch[i]));
		T_ASSERT_OK(coil_channel_on_closed(ch[i], nop_closed, NULL));
	}
}

static void open_pairs(int *peers)
{
	open_n_pairs(chs, peers, N);
}

/*
 * The worker's caches must hold what one turn frees: they held 64 blocks
 * per kind, so a turn that freed N > 64 write requests and write parts
 * sent the excess through the allocator, and the next turn allocated them
 * again (2 x (N - 64) heap allocations per round here; http_echo under
 * callgrind, where wrk's 100 connections pile up, 0.67 per request).
 * Steady state now costs at most the round's posted task.
 */
static void test_many_connections_one_turn(void)
{
	static int peers[N];
	open_pairs(peers);
	/* Warm-up: caches filled. */
	for (int r = 0; r < 3; r++)
		CU_ASSERT_FATAL(round_trip(peers) == 0);
	const int rounds = t_on_valgrind() ? 3 : 20;
	uint64_t a0 = coil__alloc_total();
	for (int r = 0; r < rounds; r++)
		CU_ASSERT_FATAL(round_trip(peers) == 0);
	uint64_t a1 = coil__alloc_total();
	fprintf(stderr, "a message to each of %d connections in one turn: "
		"%.2f heap allocations per round (%s)\n", N,
		(double)(a1 - a0) / rounds, CACHES ? "caches" : "no caches");
	if (CACHES)
		CU_ASSERT(a1 - a0 <= 2u * (uint64_t)rounds);
	for (int i = 0; i < N; i++) {
		coil_ip_unref(writes[i]);
		writes[i] = NULL;
		close(peers[i]);
		coil_channel_release(chs[i]);
	}
}

/* On the worker, in one callback (nothing completes meanwhile): an
 * answer to each of N / 2 idle channels with coil_channel_send and to the
 * other half with coil_channel_write, counted in live allocations (a
 * cache's reuse counts as one): a small send makes only the channel's
 * write part (its request is the part's own), no InProgress; a write
 * makes its request and the handle too. */
size_t coil__alloc_live(void);
static size_t sends_live, writes_live;

static void send_then_write(void *arg)
{
	static const char msg[MSG] = "broadcast";
	size_t l0 = coil__alloc_live();
	for (int i = 0; i < N / 2; i++)
		if (coil_channel_send(chs[i], msg, sizeof(msg)))
			return;
	size_t l1 = coil__alloc_live();
	for (int i = N / 2; i < N; i++)
		writes[i] = coil_channel_write(chs[i], msg, sizeof(msg));
	size_t l2 = coil__alloc_live();
	sends_live = l1 - l0;
	writes_live = l2 - l1;
}

static void test_send_makes_no_handle(void)
{
	static int peers[N];
	open_pairs(peers);
	t_run_on(L, 0, send_then_write, NULL);
	CU_ASSERT_EQUAL(sends_live, 1u * (N / 2));
	CU_ASSERT_EQUAL(writes_live, 3u * (N / 2));
	char in[MSG];
	for (int i = 0; i < N; i++) {
		CU_ASSERT_FATAL(read_full(peers[i], in, sizeof(in)) == 0);
		CU_ASSERT(i < N / 2 ||
			  (writes[i] && coil_ip_wait(writes[i], 10000) == 0));
		coil_ip_unref(writes[i]);
		writes[i] = NULL;
		close(peers[i]);
		coil_channel_release(chs[i]);
	}
}

/* The write part's own request serves one send at a time: a second send
 * while it is queued takes a request of its own (2 live allocations for
 * the two), the bytes go in call order, and a send refused on the home
 * worker (closed channel) gives back the part it was made in (live count
 * unchanged). */
#define NB 4
static coil_channel_t *busy_ch[NB];
static size_t busy_live, refused_live;
static int refused_rc;

static void send_twice(void *arg)
{
	size_t l0 = coil__alloc_live();
	for (int i = 0; i < NB; i++)
		if (coil_channel_send(busy_ch[i], "first,", 6) ||
		    coil_channel_send(busy_ch[i], "second", 6))
			return;
	busy_live = coil__alloc_live() - l0;
}

static void send_after_close(void *arg)
{
	coil_channel_t *ch = arg;
	size_t l0 = coil__alloc_live();
	refused_rc = coil_channel_send(ch, "late", 4);
	refused_live = coil__alloc_live() - l0;
}

static void test_send_inline_one_at_a_time(void)
{
	int peers[NB];
	open_n_pairs(busy_ch, peers, NB);
	busy_live = SIZE_MAX;
	t_run_on(L, 0, send_twice, NULL);
	CU_ASSERT_EQUAL(busy_live, 2u * NB);
	for (int i = 0; i < NB; i++) {
		char in[13] = {0};
		CU_ASSERT_FATAL(read_full(peers[i], in, 12) == 0);
		CU_ASSERT_STRING_EQUAL(in, "first,second");
	}
	T_ASSERT_OK(coil_channel_close(busy_ch[0], 1));
	refused_live = SIZE_MAX;
	t_run_on(L, 0, send_after_close, busy_ch[0]);
	CU_ASSERT_EQUAL(refused_rc, -EBADF);
	CU_ASSERT_EQUAL(refused_live, 0u);
	for (int i = 0; i < NB; i++) {
		close(peers[i]);
		coil_channel_release(busy_ch[i]);
	}
}

static const coil_test_t tests[] = {
	{"many_connections_one_turn", test_many_connections_one_turn},
	{"send_makes_no_handle", test_send_makes_no_handle},
	{"send_inline_one_at_a_time", test_send_inline_one_at_a_time},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	L = t_loop(1);
	int rc = coil_test_main("hot", tests, argc, argv);
	coil_loop_free(L);
	return rc;
}
