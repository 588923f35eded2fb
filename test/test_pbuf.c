/* SPDX-License-Identifier: MIT */
/* Incremental provided-buffer consumption (IOU_PBUF_RING_INC, Linux 6.12,
 * lib/bufring.c): receives of every connection of a worker are packed into
 * the head buffer of its pool at increasing offsets, and a buffer goes back
 * to the ring once the kernel is done with it and every receive in it was
 * used (copied, or sent by a write_view). Each test echoes patterned
 * streams through coil over real sockets and checks every byte on the
 * peer's side, in order, then that every buffer came back (the pool's
 * counts); the fallbacks (no COIL_LOOP_PBUF_INC, the probe hidden) run the
 * same traffic with whole-buffer receives. */
#include "helpers.h"
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_INC, M_FLAG, M_HIDDEN };

static coil_loop_t *loop_mode(enum mode m, unsigned count, unsigned size)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	o.buf_count = count;
	o.buf_size = size;
	o.flags = m == M_FLAG ? 0 : COIL_LOOP_PBUF_INC;
	coil__probe_hide = m == M_HIDDEN ? COIL__FEAT_PBUF_INC : 0;
	return t_loop_opts(&o);
}

static void stat_run(void *p)
{
	coil__bufring_stats(coil__tls_worker, p);
}

static coil__bufring_stat stats(coil_loop_t *loop)
{
	coil__bufring_stat st;
	t_run_on(loop, 0, stat_run, &st);
	return st;
}

/* Waits (bounded) until every buffer is back in the ring. */
static coil__bufring_stat wait_all_back(coil_loop_t *loop)
{
	coil__bufring_stat st = stats(loop);
	for (int i = 0; i < 10000 && st.out; i++) {
		usleep(1000);
		st = stats(loop);
	}
	CU_ASSERT_EQUAL(st.out, 0);
	return st;
}

/* Whether this kernel takes IOU_PBUF_RING_INC (6.12): the tests of the
 * packing itself skip without it, the fallbacks run anyway. */
static bool kernel_has_inc(void)
{
	coil_loop_t *loop = loop_mode(M_INC, 0, 0);
	bool inc = stats(loop).inc;
	T_ASSERT_OK(coil_loop_free(loop));
	return inc;
}

/* Echoes every chunk back from the receive buffer itself (write_view: the
 * buffer stays held until the send is done). */
static void echo_view(coil_channel_t *ch, const void *data, size_t len,
		      void *ud)
{
	coil_ip_t *ip = coil_channel_write_view(ch, data, len);
	coil_ip_unref(ip);
}

/* Echoes by copying (the buffer goes back at once). */
static void echo_copy(coil_channel_t *ch, const void *data, size_t len,
		      void *ud)
{
	coil_ip_t *ip = coil_channel_write(ch, data, len);
	coil_ip_unref(ip);
}

static unsigned char pat(size_t conn, size_t off)
{
	return (unsigned char)((off * 131 + conn * 7919 + (off >> 9)) % 251);
}

/* n connections (socketpairs: coil's end echoes, the test drives the
 * other), each sending total bytes in chunks of 1..maxchunk bytes (at
 * most `window` unanswered) and checking the echo byte for byte. close_at
 * (if not 0): connection i of the odd ones is closed by coil after about
 * close_at * (i + 1) bytes, the others go on. Returns the bytes echoed. */
static size_t run_echo(coil_loop_t *loop, int n, size_t total,
		       size_t maxchunk, size_t window, coil_read_cb echo,
		       size_t close_at)
{
	int fds[64];
	coil_channel_t *chs[64];
	size_t sent[64] = {0}, got[64] = {0};
	bool closed[64] = {false};
	CU_ASSERT_FATAL(n <= 64);
	for (int i = 0; i < n; i++) {
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC,
					   0, sv) == 0);
		fcntl(sv[1], F_SETFL, O_NONBLOCK);
		fds[i] = sv[1];
		T_ASSERT_OK(coil_channel_wrap(loop, sv[0],
					      COIL_IO_READ | COIL_IO_WRITE,
					      &chs[i]));
		T_ASSERT_OK(coil_channel_on_read(chs[i], echo, NULL));
	}
	unsigned seed = 12345;
	unsigned char out[65536], in[65536];
	CU_ASSERT_FATAL(maxchunk <= sizeof(out));
	size_t echoed = 0;
	int idle = 0;
	for (;;) {
		bool busy = false, left = false;
		for (int i = 0; i < n; i++) {
			if (closed[i])
				continue;
			if (got[i] < total)
				left = true;
			if (close_at && (i & 1) &&
			    got[i] >= close_at * (size_t)(i + 1)) {
				coil_channel_close(chs[i], 1);
				closed[i] = true;
				continue;
			}
			if (sent[i] < total && sent[i] - got[i] < window) {
				seed = seed * 1103515245u + 12345u;
				size_t c = 1 + (seed >> 8) % maxchunk;
				if (c > total - sent[i])
					c = total - sent[i];
				for (size_t k = 0; k < c; k++)
					out[k] = pat((size_t)i, sent[i] + k);
				ssize_t w = write(fds[i], out, c);
				if (w > 0) {
					sent[i] += (size_t)w;
					busy = true;
				}
			}
			ssize_t r = read(fds[i], in, sizeof(in));
			if (r > 0) {
				for (ssize_t k = 0; k < r; k++)
					if (in[k] != pat((size_t)i, got[i] + (size_t)k)) {
						fprintf(stderr, "conn %d: byte %zu wrong\n",
							i, got[i] + (size_t)k);
						CU_FAIL_FATAL("echo mismatch");
					}
				got[i] += (size_t)r;
				echoed += (size_t)r;
				busy = true;
			} else if (r == 0) {
				CU_FAIL_FATAL("unexpected EOF");
			}
		}
		if (!left)
			break;
		if (busy) {
			idle = 0;
			continue;
		}
		/* Nothing moved: wait for the echo (bounded: 10 s idle). */
		struct pollfd pf[64];
		for (int i = 0; i < n; i++)
			pf[i] = (struct pollfd){.fd = closed[i] ? -1 : fds[i],
						 .events = POLLIN};
		if (poll(pf, (nfds_t)n, 100) == 0 && ++idle > 100)
			CU_FAIL_FATAL("echo stalled");
	}
	for (int i = 0; i < n; i++) {
		CU_ASSERT(closed[i] || got[i] == total);
		coil_channel_close(chs[i], 1);
		coil_channel_release(chs[i]);
		close(fds[i]);
	}
	return echoed;
}

static void test_default_pool(void)
{
	coil_loop_t *loop = loop_mode(M_INC, 0, 0);
	coil__bufring_stat st = stats(loop);
	/* 2 MiB shared, or (a kernel before 6.12) the whole-buffer 8 MiB. */
	CU_ASSERT_EQUAL(st.count, st.inc ? 64 : 256);
	CU_ASSERT_EQUAL(st.size, 32768);
	T_ASSERT_OK(coil_loop_free(loop));
	loop = loop_mode(M_FLAG, 0, 0);
	st = stats(loop);
	CU_ASSERT(!st.inc);
	CU_ASSERT_EQUAL(st.count, 256);
	CU_ASSERT_EQUAL(st.size, 32768);
	T_ASSERT_OK(coil_loop_free(loop));
	/* Hidden: the registration falls back, with the whole-buffer
	 * default pool, or the one asked for. */
	loop = loop_mode(M_HIDDEN, 0, 0);
	st = stats(loop);
	CU_ASSERT(!st.inc);
	CU_ASSERT_EQUAL(st.count, 256);
	CU_ASSERT_EQUAL(st.size, 32768);
	T_ASSERT_OK(coil_loop_free(loop));
	loop = loop_mode(M_HIDDEN, 8, 1024);
	st = stats(loop);
	CU_ASSERT(!st.inc);
	CU_ASSERT_EQUAL(st.count, 8);
	CU_ASSERT_EQUAL(st.size, 1024);
	T_ASSERT_OK(coil_loop_free(loop));
	coil__probe_hide = 0;
	/* Off by default; the flag is known to the options check, and
	 * COIL_LOOP_FLAGS carries it. */
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	loop = t_loop_opts(&o);
	CU_ASSERT(!stats(loop).inc);
	T_ASSERT_OK(coil_loop_free(loop));
	setenv("COIL_LOOP_FLAGS", "0x40", 1);
	loop = loop_mode(M_FLAG, 0, 0);
	unsetenv("COIL_LOOP_FLAGS");
	CU_ASSERT_EQUAL(stats(loop).inc, kernel_has_inc());
	T_ASSERT_OK(coil_loop_free(loop));
}

/* Ping-pong of 256-byte messages into 1 KiB buffers: each buffer takes
 * exactly four receives (the fourth ends it exactly), so the ring sees one
 * reuse per four messages; whole-buffer receives reuse one per message. */
static void packing(enum mode m)
{
	coil_loop_t *loop = loop_mode(m, 4, 1024);
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				   sv) == 0);
	coil_channel_t *ch;
	T_ASSERT_OK(coil_channel_wrap(loop, sv[0], COIL_IO_READ | COIL_IO_WRITE,
				      &ch));
	T_ASSERT_OK(coil_channel_on_read(ch, echo_view, NULL));
	uint64_t before = stats(loop).reuses;
	int msgs = 400;
	for (int i = 0; i < msgs; i++) {
		unsigned char b[256], e[256];
		for (int k = 0; k < 256; k++)
			b[k] = pat(0, (size_t)i * 256 + (size_t)k);
		CU_ASSERT_EQUAL_FATAL(t_write_all(sv[1], b, sizeof(b)), 0);
		CU_ASSERT_EQUAL_FATAL(t_read_exact(sv[1], e, sizeof(e)), 0);
		CU_ASSERT_FATAL(memcmp(b, e, sizeof(b)) == 0);
	}
	coil__bufring_stat st = wait_all_back(loop);
	uint64_t reuses = st.reuses - before;
	uint64_t want = m == M_INC ? (uint64_t)msgs / 4 : (uint64_t)msgs;
	CU_ASSERT_EQUAL(reuses, want);
	coil_channel_close(ch, 1);
	coil_channel_release(ch);
	close(sv[1]);
	T_ASSERT_OK(coil_loop_free(loop));
	coil__probe_hide = 0;
}

static void test_packing(void)
{
	if (!kernel_has_inc()) {
		fprintf(stderr, "pbuf: no IOU_PBUF_RING_INC, packing skipped\n");
		return;
	}
	packing(M_INC);
}

static void test_packing_fallbacks(void)
{
	packing(M_FLAG);
	packing(M_HIDDEN);
}

/* 32 connections share a pool of 8 x 1000 bytes (receives cross and end
 * buffers at every offset, and the pool runs dry: ENOBUFS, re-armed, no
 * byte lost), echoing with write_view and by copy. */
static void many(enum mode m, coil_read_cb echo)
{
	coil_loop_t *loop = loop_mode(m, 8, 1000);
	size_t total = t_on_valgrind() ? 16384 : 131072;
	size_t n = run_echo(loop, 32, total, 3000, 8192, echo, 0);
	CU_ASSERT_EQUAL(n, 32 * total);
	coil__bufring_stat st = wait_all_back(loop);
	CU_ASSERT(st.enobufs > 0);
	T_ASSERT_OK(coil_loop_free(loop));
	coil__probe_hide = 0;
}

static void test_many_view(void) { many(M_INC, echo_view); }
static void test_many_copy(void) { many(M_INC, echo_copy); }
static void test_many_fallback_flag(void) { many(M_FLAG, echo_view); }
static void test_many_fallback_hidden(void) { many(M_HIDDEN, echo_view); }

/* Half the connections are closed by coil mid-stream while their bytes
 * (and write_views of them) share buffers with the others': the others'
 * streams stay intact and every buffer comes back. */
static void test_close_midstream(void)
{
	coil_loop_t *loop = loop_mode(M_INC, 8, 4096);
	size_t total = t_on_valgrind() ? 16384 : 262144;
	run_echo(loop, 16, total, 5000, 16384, echo_view, total / 40);
	wait_all_back(loop);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* The loop freed (the handles still held, as test_fixed does) while
 * receives are armed and bytes sit in buffers (a write_view's send
 * pending, or bytes unread): no leak, no crash (ASan, valgrind). */
static void test_loop_free_busy(void)
{
	coil_loop_t *loop = loop_mode(M_INC, 4, 1024);
	int peers[8];
	for (int i = 0; i < 8; i++) {
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC,
					   0, sv) == 0);
		peers[i] = sv[1];
		coil_channel_t *ch;
		T_ASSERT_OK(coil_channel_wrap(loop, sv[0],
					      COIL_IO_READ | COIL_IO_WRITE, &ch));
		T_ASSERT_OK(coil_channel_on_read(ch, echo_view, NULL));
		char b[700];
		memset(b, 'a' + i, sizeof(b));
		CU_ASSERT_EQUAL(t_write_all(sv[1], b, sizeof(b)), 0);
	}
	T_ASSERT_OK(coil_loop_free(loop));
	for (int i = 0; i < 8; i++)
		close(peers[i]);
}

/* Ends of stream between receives that share buffers: connections
 * receive a few bytes and see their peer's EOF, one after another, then
 * echoes through the same small pool are checked byte for byte and every
 * buffer must come back. A completion that names a buffer without bytes
 * must give it back only if the kernel consumed it (coil__bufring_unused;
 * the zero-length case of io_kbuf_inc_commit). On this kernel the EOF
 * completions name no buffer, so this passes with the old handling too:
 * it guards the path, it does not reproduce F17. */
static _Atomic int eof_closed;

static void eof_drop(coil_channel_t *ch, const void *data, size_t len,
		     void *ud)
{
}

static void eof_closed_cb(coil_channel_t *ch, int expected, void *ud)
{
	atomic_fetch_add(&eof_closed, 1);
}

static void eof_then_echo(enum mode m)
{
	coil_loop_t *loop = loop_mode(m, 4, 1024);
	atomic_store(&eof_closed, 0);
	for (int i = 0; i < 12; i++) {
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC,
					   0, sv) == 0);
		coil_channel_t *ch;
		T_ASSERT_OK(coil_channel_wrap(loop, sv[0], COIL_IO_READ, &ch));
		T_ASSERT_OK(coil_channel_on_closed(ch, eof_closed_cb, NULL));
		T_ASSERT_OK(coil_channel_on_read(ch, eof_drop, NULL));
		char b[64];
		memset(b, 'e', sizeof(b));
		CU_ASSERT_EQUAL(t_write_all(sv[1], b, 17 + (size_t)i * 3), 0);
		usleep(2000); /* the bytes arrive in their own receive */
		shutdown(sv[1], SHUT_WR);
		for (int k = 0; k < 5000 && atomic_load(&eof_closed) <= i; k++)
			usleep(1000);
		CU_ASSERT_EQUAL_FATAL(atomic_load(&eof_closed), i + 1);
		coil_channel_release(ch);
		close(sv[1]);
	}
	size_t total = t_on_valgrind() ? 8192 : 65536;
	CU_ASSERT_EQUAL(run_echo(loop, 4, total, 900, 4096, echo_copy, 0),
			4 * total);
	wait_all_back(loop);
	T_ASSERT_OK(coil_loop_free(loop));
	coil__probe_hide = 0;
}

static void test_eof_keeps_buffer(void)
{
	eof_then_echo(M_INC);
	eof_then_echo(M_FLAG);
}

/* The per-receive cap of multishot recv (Linux 6.16): buf_size where the
 * kernel takes it; none with COIL_LOOP_NO_RECV_CAP or the probe hidden.
 * The same traffic runs with and without. */
static void cap_run(void *p)
{
	*(unsigned *)p = coil__tls_worker->recv_cap;
}

static unsigned recv_cap(coil_loop_t *loop)
{
	unsigned cap = 0;
	t_run_on(loop, 0, cap_run, &cap);
	return cap;
}

static void cap_echo(unsigned flags, unsigned hide, unsigned want)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	o.buf_count = 8;
	o.buf_size = 1000;
	o.flags = flags;
	coil__probe_hide = hide;
	coil_loop_t *loop = t_loop_opts(&o);
	CU_ASSERT_EQUAL(recv_cap(loop), want);
	size_t total = t_on_valgrind() ? 16384 : 131072;
	CU_ASSERT_EQUAL(run_echo(loop, 8, total, 3000, 8192, echo_view, 0),
			8 * total);
	wait_all_back(loop);
	T_ASSERT_OK(coil_loop_free(loop));
	coil__probe_hide = 0;
}

static void test_recv_cap(void)
{
	bool have = coil__features() & COIL__FEAT_RECV_CAP;
	if (!have)
		fprintf(stderr, "pbuf: no multishot recv cap (Linux 6.16)\n");
	cap_echo(0, 0, have ? 1000 : 0);
	cap_echo(COIL_LOOP_NO_RECV_CAP, 0, 0);
	cap_echo(0, COIL__FEAT_RECV_CAP, 0);
	cap_echo(COIL_LOOP_PBUF_INC, 0, have ? 1000 : 0);
}


/*
 * The F17 oracle: many connections (socketpairs and TCP on 127.0.0.1) on
 * one or two workers with a tiny incremental pool; plain peer threads
 * write a deterministic stream pat(conn, offset) in random pieces with
 * random pauses, then shut down writing. The coil side checks every byte
 * of every read-signal chunk at once, in order, and mixes in what touches
 * buffers: write_view echoes (the buffer is lent), copied echoes,
 * backpressure (small queues, peers that stop draining: the signal pauses,
 * the multishot recv is cancelled and re-armed), readinto / read_exact /
 * read between chunks (the signal disconnected meanwhile), end of stream,
 * close and release mid-stream. Each round picks DEFER_TASKRUN, the recv
 * cap and fixed files on or off. Bounded in make test (about a second);
 * COIL_PBUF_ORACLE_SECONDS=n runs rounds for n seconds. A wrong byte
 * prints the connection, offset and chunk and, in a -DCOIL_PBUF_TRACE
 * build, the worker's buffer trace.
 */
#define OR_MAX 48

struct or_conn {
	int id;
	coil_channel_t *ch;
	int peer;
	bool tcp;
	size_t total;
	/* coil side, its home worker only */
	size_t pos;
	unsigned rng;
	bool in_read, eof, gone, finished;
	size_t close_at; /* 0: never */
	size_t rlen;
	int rkind;
	char rbuf[1024];
	/* peer side */
	size_t sent;
	bool shut, dead;
	unsigned stall; /* rounds the peer does not drain */
};

static struct or_conn or_c[OR_MAX];
static _Atomic int or_finished, or_bad;
static _Atomic unsigned long long or_bytes, or_chunks, or_reads, or_views,
	or_closes, or_paused;

static unsigned or_rand(unsigned *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

static void or_read_next(struct or_conn *c);
static coil_loop_t *or_loop;
static void or_finish(struct or_conn *c);
static void or_on_read(coil_channel_t *ch, const void *data, size_t len,
		       void *ud);

/* Bytes queued for read() are not shown to a new signal: read them first;
 * so does a closed channel, up to its 0 bytes. */
static void or_resume(void *p)
{
	struct or_conn *c = p;
	c->in_read = false;
	if (c->finished)
		return;
	if (c->gone) {
		or_finish(c);
		return;
	}
	if (coil_channel_read_queue_used(c->ch) || c->eof) {
		or_read_next(c);
		return;
	}
	T_ASSERT_OK(coil_channel_on_read(c->ch, or_on_read, c));
}
static void or_on_read(coil_channel_t *ch, const void *data, size_t len,
		       void *ud);

/* Checks n bytes at the stream's offset c->pos and moves on. */
static void or_check(struct or_conn *c, const unsigned char *p, size_t n,
		     const char *how)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] == pat((size_t)c->id, c->pos + i))
			continue;
		if (atomic_fetch_add(&or_bad, 1) < 3) {
			fprintf(stderr,
				"pbuf oracle: conn %d (%s, ch %p) %s chunk of "
				"%zu at offset %zu: byte %zu is %u, not %u\n",
				c->id, c->tcp ? "tcp" : "unix", (void *)c->ch,
				how, n, c->pos, i, p[i],
				pat((size_t)c->id, c->pos + i));
			for (size_t k = 0; k < n && k < 64; k++)
				fprintf(stderr, " %u/%u", p[k],
					pat((size_t)c->id, c->pos + k));
			fprintf(stderr, "\n");
			if (coil__tls_worker)
				coil__bufring_trace_dump(coil__tls_worker,
							 stderr);
		}
		break;
	}
	c->pos += n;
	atomic_fetch_add_explicit(&or_bytes, n, memory_order_relaxed);
}

static void or_finish(struct or_conn *c)
{
	if (c->finished)
		return;
	c->finished = true;
	if (!c->gone && c->pos != c->total) {
		fprintf(stderr, "pbuf oracle: conn %d ended at %zu of %zu\n",
			c->id, c->pos, c->total);
		atomic_fetch_add(&or_bad, 1);
	}
	if (!c->gone) {
		c->gone = true;
		coil_channel_release(c->ch);
	}
	atomic_fetch_add(&or_finished, 1);
}

static void or_read_done(coil_ip_t *ip, void *ud)
{
	struct or_conn *c = ud;
	size_t n = 0;
	const void *b = NULL;
	int err = coil_ip_error(ip);
	if (c->rkind == 0) {
		n = err ? 0 : (size_t)coil_ip_int(ip);
		b = c->rbuf;
	} else {
		b = coil_ip_bytes(ip, &n);
	}
	or_check(c, b, n, c->rkind == 0 ? "readinto" : c->rkind == 1 ?
		 "read_exact" : "read");
	atomic_fetch_add_explicit(&or_reads, 1, memory_order_relaxed);
	bool end = err || n == 0 || (c->rkind != 2 && n < c->rlen);
	coil_ip_unref(ip);
	c->in_read = false;
	if (c->finished)
		return;
	if (c->gone) { /* closed by us meanwhile */
		or_finish(c);
		return;
	}
	if (end) {
		or_finish(c);
		return;
	}
	if (c->close_at && c->pos >= c->close_at) {
		atomic_fetch_add_explicit(&or_closes, 1, memory_order_relaxed);
		c->gone = true;
		coil_channel_close(c->ch, (int)(or_rand(&c->rng) & 1));
		coil_channel_release(c->ch);
		or_finish(c);
		return;
	}
	if (c->eof || (or_rand(&c->rng) & 3) == 0) {
		or_read_next(c);
		return;
	}
	/* Back to the signal from a task of its own: inside this callback
	 * the read queue's count is the snapshot from before the bytes that
	 * served the read were queued. in_read stays set until then. */
	c->in_read = true;
	T_ASSERT_OK(coil_loop_post(or_loop, -1, or_resume, c));
}

static void or_read_next(struct or_conn *c)
{
	unsigned r = or_rand(&c->rng);
	c->rkind = (int)(r % 3);
	c->rlen = 1 + (r >> 8) % (c->rkind == 2 ? 1 : sizeof(c->rbuf));
	coil_ip_t *ip = c->rkind == 0 ? coil_channel_readinto(c->ch, c->rbuf,
							      c->rlen)
		      : c->rkind == 1 ? coil_channel_read_exact(c->ch, c->rlen)
				      : coil_channel_read(c->ch);
	CU_ASSERT_FATAL(ip != NULL);
	c->in_read = true;
	T_ASSERT_OK(coil_ip_on_done(ip, or_read_done, c));
}

static void or_on_read(coil_channel_t *ch, const void *data, size_t len,
		       void *ud)
{
	struct or_conn *c = ud;
	atomic_fetch_add_explicit(&or_chunks, 1, memory_order_relaxed);
	or_check(c, data, len, "read-signal");
	size_t used = coil_channel_write_queue_used(ch);
	size_t qs = coil_channel_queue_size(ch);
	unsigned r = or_rand(&c->rng) % 16;
	if (c->close_at && c->pos >= c->close_at) {
		atomic_fetch_add_explicit(&or_closes, 1, memory_order_relaxed);
		c->gone = true;
		if (r & 1)
			coil_channel_close(ch, (int)(r & 2));
		coil_channel_release(ch);
		or_finish(c);
		return;
	}
	if (r < 9 && used + len <= qs) {
		atomic_fetch_add_explicit(&or_views, 1, memory_order_relaxed);
		coil_ip_unref(coil_channel_write_view(ch, data, len));
	} else if (r < 11 && used + len <= qs) {
		coil_ip_unref(coil_channel_write(ch, data, len));
	} else if (r < 13) {
		T_ASSERT_OK(coil_channel_on_read(ch, NULL, NULL));
		or_read_next(c);
		return;
	}
	/* The echo took the queue to its half: the signal pauses. */
	if (coil_channel_write_queue_used(ch) >= qs / 2)
		atomic_fetch_add_explicit(&or_paused, 1, memory_order_relaxed);
}

static void or_on_closed(coil_channel_t *ch, int expected, void *ud)
{
	struct or_conn *c = ud;
	c->eof = true;
	if (!c->in_read && !c->finished)
		or_finish(c);
}

static void or_nop(void *p)
{
}

static _Atomic bool or_stop;

/* The peers: one thread drives them all, non-blocking. */
static void *or_peer(void *arg)
{
	int n = *(int *)arg;
	unsigned s = 0x9e3779b9u ^ (unsigned)n;
	unsigned char out[2048], in[8192];
	while (!atomic_load(&or_stop) && atomic_load(&or_finished) < n) {
		bool busy = false;
		for (int i = 0; i < n; i++) {
			struct or_conn *c = &or_c[i];
			if (c->dead)
				continue;
			if (c->stall) {
				c->stall--;
			} else {
				ssize_t r = read(c->peer, in, sizeof(in));
				if (r > 0)
					busy = true;
				if ((or_rand(&s) & 15) == 0)
					c->stall = 1 + or_rand(&s) % 400;
			}
			if (c->shut || (or_rand(&s) & 7) == 0)
				continue;
			size_t k = 1 + or_rand(&s) % ((or_rand(&s) & 3) ? 64
								   : 1500);
			if (k > c->total - c->sent)
				k = c->total - c->sent;
			for (size_t j = 0; j < k; j++)
				out[j] = pat((size_t)i, c->sent + j);
			ssize_t w = send(c->peer, out, k, MSG_NOSIGNAL);
			if (w > 0) {
				c->sent += (size_t)w;
				busy = true;
			} else if (w < 0 && errno != EAGAIN) {
				c->dead = true; /* closed by coil */
			}
			if (c->sent == c->total) {
				shutdown(c->peer, SHUT_WR);
				c->shut = true;
			}
		}
		unsigned p = or_rand(&s) & 31;
		if (!busy || p == 0)
			usleep(p == 0 ? or_rand(&s) % 300 : 50);
	}
	return NULL;
}

struct or_cfg {
	unsigned flags, workers, count, size;
};

static void or_stat_add(coil_loop_t *loop, unsigned workers,
			coil__bufring_stat *sum)
{
	memset(sum, 0, sizeof(*sum));
	for (unsigned w = 0; w < workers; w++) {
		coil__bufring_stat st;
		t_run_on(loop, (int)w, stat_run, &st);
		sum->inc |= st.inc;
		sum->out += st.out;
		sum->enobufs += st.enobufs;
		sum->reuses += st.reuses;
		sum->nobytes_err += st.nobytes_err;
		sum->nobytes_zero += st.nobytes_zero;
		sum->nobytes_nomore += st.nobytes_nomore;
	}
}

static unsigned long long or_nobytes, or_nomore, or_rounds, or_enobufs,
	or_reuses;

/* One round: n connections of total bytes each. */
static void or_round(const struct or_cfg *cfg, unsigned seed, int n,
		     size_t total)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = cfg->workers;
	o.buf_count = cfg->count;
	o.buf_size = cfg->size;
	o.flags = COIL_LOOP_PBUF_INC | cfg->flags;
	coil_loop_t *loop = t_loop_opts(&o);
	or_loop = loop;
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	atomic_store(&or_finished, 0);
	atomic_store(&or_stop, false);
	unsigned s = seed | 1;
	for (int i = 0; i < n; i++) {
		struct or_conn *c = &or_c[i];
		memset(c, 0, sizeof(*c));
		c->id = i;
		c->rng = seed * 2654435761u + (unsigned)i * 40503u + 1;
		c->total = total / 2 + or_rand(&s) % total;
		c->tcp = i % 3 == 2;
		int fd;
		if (c->tcp) {
			c->peer = t_connect_tcp4(port);
			fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			CU_ASSERT_FATAL(fd >= 0);
			int small = 2048 + (int)(or_rand(&s) % 8192);
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small,
				   sizeof(small));
		} else {
			int sv[2];
			CU_ASSERT_FATAL(socketpair(AF_UNIX,
						   SOCK_STREAM | SOCK_CLOEXEC,
						   0, sv) == 0);
			fd = sv[0];
			c->peer = sv[1];
		}
		fcntl(c->peer, F_SETFL, O_NONBLOCK);
		/* Small socket buffers for the echo: it backs up into the
		 * write queue while the peer stalls (backpressure). */
		int sb = 2048 + (int)(or_rand(&s) % 4096);
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof(sb));
		setsockopt(c->peer, SOL_SOCKET, SO_RCVBUF, &sb, sizeof(sb));
		if (or_rand(&s) % 5 == 0)
			c->close_at = 1 + or_rand(&s) % c->total;
		T_ASSERT_OK(coil_channel_wrap(loop, fd,
					      COIL_IO_READ | COIL_IO_WRITE,
					      &c->ch));
		coil_channel_set_queue_size(c->ch, 512 + or_rand(&s) % 8192);
	}
	close(lfd);
	/* Signals connected on the home worker, all before any byte. */
	for (int i = 0; i < n; i++) {
		struct or_conn *c = &or_c[i];
		coil_channel_on_closed(c->ch, or_on_closed, c);
		coil_channel_on_read(c->ch, or_on_read, c);
	}
	/* Forwarded to the home workers in order: run after them. */
	for (unsigned w = 0; w < cfg->workers; w++)
		t_run_on(loop, (int)w, or_nop, NULL);
	pthread_t t;
	CU_ASSERT_FATAL(pthread_create(&t, NULL, or_peer, &n) == 0);
	for (int k = 0; k < 30000 && atomic_load(&or_finished) < n; k++)
		usleep(1000);
	atomic_store(&or_stop, true);
	pthread_join(t, NULL);
	if (atomic_load(&or_finished) < n) {
		for (int i = 0; i < n; i++)
			if (!or_c[i].finished)
				fprintf(stderr, "pbuf oracle: conn %d stuck at "
					"%zu of %zu (sent %zu, in_read %d, "
					"eof %d, read queue %zu, write queue "
					"%zu of %zu)\n", i, or_c[i].pos,
					or_c[i].total, or_c[i].sent,
					or_c[i].in_read, or_c[i].eof,
					coil_channel_read_queue_used(or_c[i].ch),
					coil_channel_write_queue_used(or_c[i].ch),
					coil_channel_queue_size(or_c[i].ch));
		CU_FAIL("pbuf oracle: connections did not finish");
	}
	coil__bufring_stat st;
	or_stat_add(loop, cfg->workers, &st);
	if (!st.inc)
		fprintf(stderr, "pbuf oracle: no incremental buffers here\n");
	or_nobytes += st.nobytes_err + st.nobytes_zero;
	or_nomore += st.nobytes_nomore;
	or_enobufs += st.enobufs;
	or_reuses += st.reuses;
	or_rounds++;
	for (int i = 0; i < n; i++)
		close(or_c[i].peer);
	T_ASSERT_OK(coil_loop_free(loop));
	CU_ASSERT_EQUAL(atomic_load(&or_bad), 0);
}

/* Echo writes fail once a peer is gone (closes mid-stream, the round's
 * end): counted, not printed. */
static _Atomic unsigned long long or_unobserved;

static void or_unobserved_cb(int err, const char *msg, void *ud)
{
	atomic_fetch_add_explicit(&or_unobserved, 1, memory_order_relaxed);
}

static void test_inc_oracle(void)
{
	static const unsigned fl[] = {
		0,
		COIL_LOOP_NO_DEFER_TASKRUN,
		COIL_LOOP_NO_RECV_CAP,
		COIL_LOOP_NO_FIXED_FILES,
		COIL_LOOP_NO_DEFER_TASKRUN | COIL_LOOP_NO_RECV_CAP,
		COIL_LOOP_NO_DEFER_TASKRUN | COIL_LOOP_NO_FIXED_FILES,
		COIL_LOOP_NO_RECV_CAP | COIL_LOOP_NO_FIXED_FILES,
		COIL_LOOP_NO_DEFER_TASKRUN | COIL_LOOP_NO_RECV_CAP |
			COIL_LOOP_NO_FIXED_FILES,
	};
	const char *env = getenv("COIL_PBUF_ORACLE_SECONDS");
	double secs = env ? atof(env) : 0;
	const char *fenv = getenv("COIL_PBUF_ORACLE_FLAGS"); /* one config */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	atomic_store(&or_bad, 0);
	coil_set_unobserved_handler(or_unobserved_cb, NULL);
	unsigned seed = env ? (unsigned)time(NULL) : 8000049u;
	unsigned long long byround[8] = {0};
	for (unsigned r = 0;; r++) {
		unsigned k = r % 8;
		struct or_cfg cfg = {
			.flags = fenv ? (unsigned)strtoul(fenv, NULL, 0)
				      : fl[k],
			.workers = 1 + (r / 8) % 2,
			.count = (r / 16) % 2 ? 64 : 16,
			.size = 512,
		};
		unsigned long long b0 = atomic_load(&or_bytes);
		or_round(&cfg, seed + r, t_on_valgrind() ? 6 : 24,
			 t_on_valgrind() ? 4096 : 24576);
		byround[k] += atomic_load(&or_bytes) - b0;
		if (atomic_load(&or_bad))
			break;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double el = (double)(t1.tv_sec - t0.tv_sec) +
			    (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
		if (r + 1 >= 8 && el >= secs)
			break;
	}
	fprintf(stderr,
		"pbuf oracle: seed %u, %llu rounds, %llu bytes checked in %llu "
		"read-signal chunks and %llu reads; %llu write_views, %llu "
		"closes mid-stream, %llu pauses (an echo took the write queue to half); "
		"%llu buffer reuses, %llu ENOBUFS; completions naming a "
		"buffer without bytes: %llu (incremental without BUF_MORE: "
		"%llu); bytes by config (flags order of the table):",
		seed, or_rounds, (unsigned long long)atomic_load(&or_bytes),
		(unsigned long long)atomic_load(&or_chunks),
		(unsigned long long)atomic_load(&or_reads),
		(unsigned long long)atomic_load(&or_views),
		(unsigned long long)atomic_load(&or_closes),
		(unsigned long long)atomic_load(&or_paused), or_reuses,
		or_enobufs, or_nobytes, or_nomore);
	for (int k = 0; k < 8; k++)
		fprintf(stderr, " %llu", byround[k]);
	fprintf(stderr, "; %llu echo writes failed after their peer left\n",
		(unsigned long long)atomic_load(&or_unobserved));
	coil_set_unobserved_handler(NULL, NULL);
	CU_ASSERT_EQUAL(atomic_load(&or_bad), 0);
}

static const coil_test_t tests[] = {
	{"default_pool", test_default_pool},
	{"packing", test_packing},
	{"packing_fallbacks", test_packing_fallbacks},
	{"many_view", test_many_view},
	{"many_copy", test_many_copy},
	{"many_fallback_flag", test_many_fallback_flag},
	{"many_fallback_hidden", test_many_fallback_hidden},
	{"close_midstream", test_close_midstream},
	{"loop_free_busy", test_loop_free_busy},
	{"recv_cap", test_recv_cap},
	{"eof_keeps_buffer", test_eof_keeps_buffer},
	{"inc_oracle", test_inc_oracle},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("pbuf", tests, argc, argv);
}
