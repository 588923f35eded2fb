/* SPDX-License-Identifier: MIT */
/* Hostile teardown (issue 12): coil_loop_free() with every kind of object in
 * every state, and close/release from inside every callback and from plain
 * threads racing the worker. Both matrices are tables: each row sets up one
 * situation on a fresh loop and registers the handles it holds with the
 * outcomes the documentation allows; the runner frees the loop (or waits for
 * the action), then checks that every handle settled exactly once with an
 * allowed outcome, that no callback ran after coil_loop_free() returned
 * (rule 16), and that coil's live allocations and channels are back to
 * where they were before the loop was made. ASan/LSan, TSan and valgrind
 * runs of this program check the rest (use after free, races, leaks). */
#include "helpers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

size_t coil__alloc_live(void); /* lib/alloc.c (tests link statically) */

/* ---- outcomes a handle may have ---- */
#define A_OK 0x1      /* finished */
#define A_EOF 0x2     /* COIL_EOF */
#define A_BADF 0x4    /* -EBADF */
#define A_CANCEL 0x8  /* -ECANCELED */
#define A_ANYERR 0x10 /* any failure (resolver results, TLS alerts) */
#define A_READ (A_OK | A_EOF)          /* rule 16: buffered bytes or EOF */
#define A_IO (A_BADF | A_CANCEL)       /* writes, accepts, connects */
#define A_TIMER A_CANCEL               /* sleeps, timeouts, resolutions */

#define MAXH 48
#define MAXFD 48

struct slot {
	coil_ip_t *ip;
	int allow;
	const char *what;
	_Atomic int ran;  /* on_done callbacks run */
	_Atomic int late; /* ... after coil_loop_free() returned */
};

struct td {
	coil_loop_t *loop;
	struct slot h[MAXH];
	int nh;
	int fds[MAXFD];
	int nfds;
	char buf[8][4096]; /* readinto targets, alive until the row ends */
	int nbuf;
	_Atomic int freed;
	_Atomic int mon_calls;
	_Atomic int mon_late;
	_Atomic int sig_late;
	coil_ip_t *bare; /* a coil_ip_new() handle nobody settles */
	_Atomic int closed_calls;
	_Atomic int closed_unexpected;
	int closed_want;
	pthread_t waiter;
	int has_waiter;
	_Atomic int waiter_rc;
};

static char tlsdir[256];
static coil_tls_ctx_t *sctx, *cctx;

static void slot_done(coil_ip_t *ip, void *ud)
{
	(void)ip;
	struct slot *s = ud;
	atomic_fetch_add(&s->ran, 1);
}

static struct td *T; /* the running row (callbacks look at freed) */

static void slot_done_checked(coil_ip_t *ip, void *ud)
{
	slot_done(ip, ud);
	if (atomic_load(&T->freed))
		atomic_fetch_add(&((struct slot *)ud)->late, 1);
}

static coil_ip_t *track(struct td *t, coil_ip_t *ip, int allow,
			const char *what)
{
	CU_ASSERT_FATAL(ip != NULL);
	CU_ASSERT_FATAL(t->nh < MAXH);
	struct slot *s = &t->h[t->nh++];
	s->ip = ip;
	s->allow = allow;
	s->what = what;
	CU_ASSERT_EQUAL(coil_ip_on_done(ip, slot_done_checked, s), 0);
	return ip;
}

static int keep_fd(struct td *t, int fd)
{
	CU_ASSERT_FATAL(fd >= 0 && t->nfds < MAXFD);
	t->fds[t->nfds++] = fd;
	return fd;
}

static int outcome_bit(coil_ip_t *ip)
{
	if (coil_ip_state(ip) == COIL_IP_FINISHED)
		return A_OK;
	int e = coil_ip_error(ip);
	if (e == COIL_EOF)
		return A_EOF;
	if (e == -EBADF)
		return A_BADF;
	if (e == -ECANCELED)
		return A_CANCEL;
	return A_ANYERR;
}

/* A stream socketpair: one end wrapped as a coil socket on t's loop, the
 * other raw (kept, closed at the end of the row). */
static coil_socket_t *pair(struct td *t, int *peer)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_wrap(t->loop, sv[0], &s));
	keep_fd(t, sv[1]);
	if (peer)
		*peer = sv[1];
	return s;
}

static void small_sndbuf(coil_channel_t *ch)
{
	int v = 4096;
	setsockopt(coil_channel_fileno(ch), SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
}

/* Bounded wait (10 s) for a condition polled from the test thread. */
#define WAIT_UNTIL(cond)                                                    \
	do {                                                                \
		for (int w_ = 0; w_ < 10000 && !(cond); w_++)               \
			usleep(1000);                                       \
		CU_ASSERT(cond);                                            \
	} while (0)

static unsigned short port_of(coil_socket_t *s)
{
	coil_sockinfo_t si;
	if (coil_socket_local(s, &si))
		return 0;
	return si.port;
}

/* ==== Part 1: coil_loop_free() with everything in every state ==== */

static void closed_cb(coil_channel_t *ch, int expected, void *ud)
{
	struct td *t = ud;
	atomic_fetch_add(&t->closed_calls, 1);
	if (!expected)
		atomic_fetch_add(&t->closed_unexpected, 1);
	if (atomic_load(&t->freed))
		atomic_fetch_add(&t->sig_late, 1);
	/* What a closed callback usually does: let go of the channel. */
	coil_channel_release(ch);
}

static void *waiter_run(void *arg)
{
	struct td *t = arg;
	atomic_store(&t->waiter_rc, coil_ip_wait(t->h[0].ip, 10000));
	return NULL;
}

static void s_chan_idle(struct td *t)
{
	/* Rule 16: the stop closes an unreleased channel and its closed
	 * callback runs once, expected = 1; a released one's never runs. */
	coil_socket_t *a = pair(t, NULL);
	T_ASSERT_OK(coil_channel_on_closed(a, closed_cb, t));
	t->closed_want = 1;
	coil_socket_t *b = pair(t, NULL);
	coil_channel_ref(b);
	T_ASSERT_OK(coil_channel_on_closed(b, closed_cb, t));
	coil_channel_release(b);
	coil_channel_release(b);
	coil_channel_t *d;
	T_ASSERT_OK(coil_channel_dup(a, &d));
	track(t, coil_channel_read(d), A_READ, "read on a dup");
	/* A plain thread blocked in coil_ip_wait() on a read: the stop
	 * settles the read and wakes it. */
	track(t, coil_channel_read(a), A_READ, "read waited on");
	CU_ASSERT_FATAL(pthread_create(&t->waiter, NULL, waiter_run, t) == 0);
	t->has_waiter = 1;
	coil_channel_t *r, *w;
	T_ASSERT_OK(coil_channel_pipe(t->loop, &r, &w));
	coil_channel_t *n;
	T_ASSERT_OK(coil_channel_new(t->loop, &n));
	track(t, coil_channel_write(n, "queued", 6), A_IO, "write, no fd");
}

static void s_chan_pending_reads(struct td *t)
{
	coil_socket_t *a = pair(t, NULL);
	track(t, coil_channel_read(a), A_READ, "read");
	track(t, coil_channel_readline(a), A_READ, "readline");
	track(t, coil_channel_read_exact(a, 100), A_READ, "read_exact");
	track(t, coil_channel_readinto(a, t->buf[t->nbuf++], 100), A_READ,
	      "readinto");
	size_t sizes[2] = {10, 20};
	track(t, coil_channel_readv(a, sizes, 2), A_READ, "readv");
	/* Half a line and a few bytes buffered: reads get them, then EOF. */
	coil_socket_t *b = pair(t, NULL);
	int pb = t->fds[t->nfds - 1];
	CU_ASSERT(write(pb, "part", 4) == 4);
	coil_ip_t *first = coil_channel_read_exact(b, 2);
	T_ASSERT_OK(t_wait(first));
	coil_ip_unref(first);
	track(t, coil_channel_readline(b), A_READ, "readline, partial line");
	track(t, coil_channel_read_exact(b, 50), A_READ, "read_exact, partial");
	coil_channel_t *r, *w;
	T_ASSERT_OK(coil_channel_pipe(t->loop, &r, &w));
	track(t, coil_channel_read(r), A_READ, "pipe read");
}

static coil_ip_t *then_pass(coil_ip_t *src, void *ud)
{
	(void)ud;
	return src;
}

static void s_chan_chained_reads(struct td *t)
{
	coil_socket_t *a = pair(t, NULL);
	coil_ip_t *c = coil_ip_then(coil_channel_read(a), then_pass, then_pass,
				    NULL);
	track(t, c, A_READ | A_CANCEL, "then(read)");
	track(t, coil_ip_timeout(coil_channel_readline(a), 60000, 1), A_READ,
	      "timeout(readline)");
}

/* Writes queued behind a peer that never reads, with the channel open,
 * closing gracefully (lingering) or released while it drains. */
static void queue_writes(struct td *t, coil_channel_t *ch, int keep)
{
	small_sndbuf(ch);
	size_t big = 512u * 1024; /* half the default queue_size */
	coil_ip_t *w = coil_channel_write_owned(ch, calloc(1, big), big, free);
	if (keep)
		track(t, w, A_IO, "big write");
	else
		coil_ip_unref(w);
	for (int i = 0; i < 3; i++) {
		w = coil_channel_write(ch, "tail", 4);
		if (keep)
			track(t, w, A_IO, "queued write");
		else
			coil_ip_unref(w);
	}
}

static void s_chan_queued_writes(struct td *t)
{
	coil_socket_t *a = pair(t, NULL);
	queue_writes(t, a, 1);
	track(t, coil_channel_read(a), A_READ, "read beside writes");
}

static void s_chan_closing(struct td *t)
{
	coil_socket_t *a = pair(t, NULL);
	queue_writes(t, a, 1);
	T_ASSERT_OK(coil_channel_close(a, 0));
	coil_socket_t *b = pair(t, NULL);
	T_ASSERT_OK(coil_channel_set_linger(b, 60000));
	queue_writes(t, b, 0);
	T_ASSERT_OK(coil_channel_close(b, 0));
}

static void s_chan_released_draining(struct td *t)
{
	coil_socket_t *a = pair(t, NULL);
	queue_writes(t, a, 1);
	coil_channel_release(a);
	coil_socket_t *b = pair(t, NULL);
	queue_writes(t, b, 0);
	coil_channel_t *ref = coil_channel_ref(b);
	coil_channel_release(b);
	coil_channel_release(ref);
}

/* Echo whose own write queue reached half queue_size: the read signal is
 * paused by backpressure, bytes wait in the kernel. */
static void echo_cb(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	(void)ud;
	if (atomic_load(&T->freed))
		atomic_fetch_add(&T->sig_late, 1);
	coil_ip_unref(coil_channel_write(ch, data, len));
}

static void s_chan_paused_signal(struct td *t)
{
	int peer;
	coil_socket_t *a = pair(t, &peer);
	small_sndbuf(a);
	T_ASSERT_OK(coil_channel_set_queue_size(a, 64 * 1024));
	T_ASSERT_OK(coil_channel_on_read(a, echo_cb, NULL));
	static char chunk[16384];
	for (int i = 0; i < 10000 && coil_channel_write_queue_used(a) < 32768;
	     i++)
		if (send(peer, chunk, sizeof(chunk), MSG_DONTWAIT | MSG_NOSIGNAL) <= 0)
			usleep(1000);
	CU_ASSERT(coil_channel_write_queue_used(a) >= 32768);
	track(t, coil_channel_read(a), A_READ, "read beside paused signal");
}

static void s_sock_never_used(struct td *t)
{
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_new(t->loop, &s));
	T_ASSERT_OK(coil_socket_new(t->loop, &s));
	track(t, coil_channel_write(s, "before connect", 14), A_IO,
	      "write before connect");
	T_ASSERT_OK(coil_socket_new_dgram(t->loop, AF_INET, &s));
	T_ASSERT_OK(coil_socket_new_dgram(t->loop, AF_INET6, &s));
	T_ASSERT_OK(coil_socket_new_dgram(t->loop, AF_UNIX, &s));
}

/* A connect to a listener whose accept and SYN queues are full stays
 * pending (the kernel drops the SYNs). */
static void s_sock_connecting(struct td *t)
{
	int lfd = keep_fd(t, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CU_ASSERT_FATAL(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CU_ASSERT_FATAL(listen(lfd, 0) == 0);
	socklen_t l = sizeof(sa);
	getsockname(lfd, (struct sockaddr *)&sa, &l);
	for (int i = 0; i < 4; i++) {
		int f = keep_fd(t, socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK |
							   SOCK_CLOEXEC, 0));
		connect(f, (struct sockaddr *)&sa, sizeof(sa));
	}
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sa.sin_port));
	for (int i = 0; i < 2; i++) {
		coil_socket_t *s;
		T_ASSERT_OK(coil_socket_new(t->loop, &s));
		track(t, coil_socket_connect(s, addr, 0), A_IO, "connect");
		track(t, coil_channel_write(s, "x", 1), A_IO,
		      "write while connecting");
		track(t, coil_channel_read(s), A_READ | A_IO,
		      "read while connecting");
	}
	/* A name: the connect waits for the resolver first. */
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_new(t->loop, &s));
	snprintf(addr, sizeof(addr), "localhost:%u", ntohs(sa.sin_port));
	track(t, coil_socket_connect(s, addr, 0), A_IO | A_ANYERR,
	      "connect by name");
}

static void s_sock_listening(struct td *t)
{
	coil_socket_t *l;
	T_ASSERT_OK(coil_socket_new(t->loop, &l));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 16, 0));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port_of(l));
	coil_addr_t a;
	T_ASSERT_OK(coil_addr_parse(addr, 0, &a));
	for (int i = 0; i < 3; i++) {
		int f = keep_fd(t, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
		CU_ASSERT(connect(f, (struct sockaddr *)&a.ss, a.sslen) == 0);
	}
	/* One accepted and held (its client released with the handle),
	 * pending ones on a listener nobody connects to. */
	coil_ip_t *got = coil_socket_accept(l);
	T_ASSERT_OK(t_wait(got));
	track(t, got, A_OK, "accepted");
	coil_socket_t *l2;
	T_ASSERT_OK(coil_socket_new(t->loop, &l2));
	T_ASSERT_OK(coil_socket_listen(l2, "127.0.0.1:0", 4, 0));
	track(t, coil_socket_accept(l2), A_IO, "accept");
	track(t, coil_socket_accept_many(l2, 8), A_IO, "accept_many");
	coil_socket_t *l3;
	T_ASSERT_OK(coil_socket_new(t->loop, &l3));
	T_ASSERT_OK(coil_socket_listen(l3, "127.0.0.1:0", 4,
				       COIL_ADDR_REUSEPORT));
	track(t, coil_socket_accept(l3), A_IO, "accept (reuseport)");
	track(t, coil_socket_accept_many(l3, 0), A_IO,
	      "accept_many (reuseport)");
}

static void s_sock_udp(struct td *t)
{
	coil_socket_t *u;
	T_ASSERT_OK(coil_socket_new_dgram(t->loop, AF_INET, &u));
	T_ASSERT_OK(coil_socket_bind(u, "127.0.0.1:0", 0));
	track(t, coil_socket_recvfrom(u, 1500), A_IO, "recvfrom");
	track(t, coil_socket_recvfrom_many(u, 8, 1500), A_IO, "recvfrom_many");
	coil_socket_t *v;
	T_ASSERT_OK(coil_socket_new_dgram(t->loop, AF_INET6, &v));
	T_ASSERT_OK(coil_socket_bind(v, "[::1]:0", 0));
	track(t, coil_socket_recvfrom_many(v, 1024, 65536), A_IO,
	      "recvfrom_many v6");
}

static void s_sock_fdpass(struct td *t)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(t->loop, AF_UNIX, SOCK_STREAM, &a, &b));
	/* Finished (empty) when the stop closes its peer b first. */
	track(t, coil_socket_recv_fds(a, 64), A_IO | A_OK, "recv_fds");
	T_ASSERT_OK(coil_socketpair(t->loop, AF_UNIX, SOCK_STREAM, &a, &b));
	/* Fill b -> a so a send_fds on b must wait for room. */
	static char chunk[65536];
	int fd = coil_channel_fileno(b);
	while (send(fd, chunk, sizeof(chunk), MSG_DONTWAIT | MSG_NOSIGNAL) > 0)
		;
	int one = keep_fd(t, dup(0));
	track(t, coil_socket_send_fds(b, &one, 1, "fd", 2), A_IO | A_ANYERR,
	      "send_fds into a full buffer");
}

static void release_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	(void)l;
	(void)ud;
	coil_channel_release(c);
}

static void s_tls(struct td *t)
{
	if (!sctx)
		return;
	/* Mid-handshake: the peer never answers. */
	coil_socket_t *c = pair(t, NULL);
	track(t, coil_socket_starttls_client(c, cctx, "localhost"),
	      A_IO | A_ANYERR, "starttls client, silent peer");
	coil_socket_t *s = pair(t, NULL);
	track(t, coil_socket_starttls_server(s, sctx), A_IO | A_ANYERR,
	      "starttls server, silent peer");
	/* Handshaken, with a pending read and queued writes. */
	coil_socket_t *x, *y;
	T_ASSERT_OK(coil_socketpair(t->loop, AF_UNIX, SOCK_STREAM, &x, &y));
	coil_ip_t *hx = coil_socket_starttls_client(x, cctx, NULL);
	coil_ip_t *hy = coil_socket_starttls_server(y, sctx);
	T_ASSERT_OK(t_wait(hx));
	T_ASSERT_OK(t_wait(hy));
	T_ASSERT_OK(coil_ip_error(hx));
	T_ASSERT_OK(coil_ip_error(hy));
	track(t, hx, A_OK, "handshake client");
	track(t, hy, A_OK, "handshake server");
	track(t, coil_channel_read(x), A_READ | A_ANYERR, "tls read");
	track(t, coil_channel_read_exact(y, 1000), A_READ | A_ANYERR,
	      "tls read_exact");
	small_sndbuf(y);
	size_t big = 1u << 20;
	track(t, coil_channel_write_owned(y, calloc(1, big), big, free),
	      A_IO | A_ANYERR, "tls big write");
	/* A TLS listener with a client that never says hello. */
	coil_socket_t *l;
	T_ASSERT_OK(coil_socket_new(t->loop, &l));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 4, 0));
	T_ASSERT_OK(coil_socket_on_new_tls_client(l, sctx, release_client,
						  NULL));
	coil_addr_t a;
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port_of(l));
	T_ASSERT_OK(coil_addr_parse(addr, 0, &a));
	int f = keep_fd(t, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	CU_ASSERT(connect(f, (struct sockaddr *)&a.ss, a.sslen) == 0);
}

static void s_relays(struct td *t)
{
	/* Active, its source idle. */
	coil_socket_t *a = pair(t, NULL), *b = pair(t, NULL);
	track(t, coil_channel_relay(a, b), A_OK | A_ANYERR | A_IO,
	      "relay, idle source");
	/* Paused: the destination's reader sleeps. */
	int pc;
	coil_socket_t *c = pair(t, &pc), *d = pair(t, NULL);
	small_sndbuf(d);
	T_ASSERT_OK(coil_channel_set_queue_size(d, 128 * 1024));
	track(t, coil_channel_relay(c, d), A_OK | A_ANYERR | A_IO,
	      "relay, paused");
	static char chunk[16384];
	for (int i = 0; i < 10000 && coil_channel_write_queue_used(d) < 65536;
	     i++)
		if (send(pc, chunk, sizeof(chunk), MSG_DONTWAIT | MSG_NOSIGNAL) <= 0)
			usleep(1000);
	CU_ASSERT(coil_channel_write_queue_used(d) >= 65536);
	/* Both ways between two coil sockets, released by the caller. */
	coil_socket_t *e, *f;
	T_ASSERT_OK(coil_socketpair(t->loop, AF_UNIX, SOCK_STREAM, &e, &f));
	coil_socket_t *g = pair(t, NULL);
	coil_ip_t *two[2] = {coil_channel_relay(e, g), coil_channel_relay(g, e)};
	track(t, two[0], A_OK | A_ANYERR | A_IO, "relay e->g");
	track(t, two[1], A_OK | A_ANYERR | A_IO, "relay g->e");
	track(t, coil_ip_all(t->loop, two, 2), A_OK, "all(relays)");
	coil_channel_release(e);
}

static void mon_cb(coil_monitor_t *m, int fd, int events, void *ud)
{
	(void)m;
	(void)fd;
	(void)events;
	struct td *t = ud;
	atomic_fetch_add(&t->mon_calls, 1);
	if (atomic_load(&t->freed))
		atomic_fetch_add(&t->mon_late, 1);
}

static void s_monitors(struct td *t)
{
	int p[2];
	CU_ASSERT_FATAL(pipe(p) == 0);
	keep_fd(t, p[0]);
	keep_fd(t, p[1]);
	coil_monitor_t *m;
	T_ASSERT_OK(coil_monitor_new(t->loop, mon_cb, t, &m));
	T_ASSERT_OK(coil_monitor_register(m, p[0], COIL_IO_READ));
	/* Always ready: it fires every loop turn until the stop. */
	T_ASSERT_OK(coil_monitor_new(t->loop, mon_cb, t, &m));
	T_ASSERT_OK(coil_monitor_register(m, p[1], COIL_IO_WRITE));
	T_ASSERT_OK(coil_monitor_new(t->loop, mon_cb, t, &m)); /* unused */
	WAIT_UNTIL(atomic_load(&t->mon_calls) > 0);
}

static coil_ip_t *repeat_body(coil_ip_t *prev, void *ud)
{
	(void)prev;
	return coil_sleep(ud, 60000);
}

static void s_timers(struct td *t)
{
	track(t, coil_sleep(t->loop, 60000), A_TIMER, "sleep");
	coil_ip_t *s = coil_sleep(t->loop, 60000);
	coil_ip_ref(s);
	track(t, s, A_TIMER, "sleep under timeout");
	track(t, coil_ip_timeout(s, 60000, 1), A_TIMER, "timeout(sleep)");
	/* An unabortable source: the stop fails the timeout alone, and the
	 * coil_ip_new() handle stays pending (rule 16). */
	t->bare = coil_ip_new(t->loop);
	track(t, coil_ip_timeout(coil_ip_ref(t->bare), 60000, 1), A_TIMER,
	      "timeout(ip_new)");
	track(t, coil_ip_repeat(t->loop, repeat_body, t->loop), A_TIMER,
	      "repeat(sleep)");
	track(t, coil_resolve(t->loop, "localhost:80", 0),
	      A_OK | A_TIMER | A_ANYERR, "resolve");
	track(t, coil_resolve(t->loop, "name.invalid:80", 0),
	      A_OK | A_TIMER | A_ANYERR, "resolve, unknown");
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				 .sin_port = htons(80)};
	track(t, coil_reverse_lookup(t->loop, (struct sockaddr *)&sa,
				     sizeof(sa), 0),
	      A_OK | A_TIMER | A_ANYERR, "reverse_lookup");
}

static void s_combinators(struct td *t)
{
	coil_socket_t *a = pair(t, NULL);
	coil_ip_t *m[3] = {coil_sleep(t->loop, 60000), coil_channel_read(a),
			   coil_sleep(t->loop, 50000)};
	track(t, m[0], A_TIMER, "member sleep");
	track(t, m[1], A_READ, "member read");
	track(t, m[2], A_TIMER, "member sleep 2");
	track(t, coil_ip_all(t->loop, m, 3), A_OK, "all");
	track(t, coil_ip_any(t->loop, m, 3), A_OK, "any");
	coil_ip_t *inner[2] = {coil_ip_all(t->loop, m, 2),
			       coil_ip_any(t->loop, m + 1, 2)};
	track(t, inner[0], A_OK, "all, nested");
	track(t, inner[1], A_OK, "any, nested");
	track(t, coil_ip_timeout(coil_ip_any(t->loop, inner, 2), 60000, 1),
	      A_OK | A_TIMER, "timeout(any(all, any))");
}

struct row {
	const char *name;
	void (*setup)(struct td *t);
};

static const struct row free_rows[] = {
	{"chan_idle", s_chan_idle},
	{"chan_pending_reads", s_chan_pending_reads},
	{"chan_chained_reads", s_chan_chained_reads},
	{"chan_queued_writes", s_chan_queued_writes},
	{"chan_closing", s_chan_closing},
	{"chan_released_draining", s_chan_released_draining},
	{"chan_paused_signal", s_chan_paused_signal},
	{"sock_never_used", s_sock_never_used},
	{"sock_connecting", s_sock_connecting},
	{"sock_listening", s_sock_listening},
	{"sock_udp", s_sock_udp},
	{"sock_fdpass", s_sock_fdpass},
	{"tls", s_tls},
	{"relays", s_relays},
	{"monitors", s_monitors},
	{"timers", s_timers},
	{"combinators", s_combinators},
	{NULL, NULL},
};

static void check_settled(struct td *t, const char *row)
{
	for (int i = 0; i < t->nh; i++) {
		struct slot *s = &t->h[i];
		int st = coil_ip_state(s->ip);
		int bit = st == COIL_IP_PENDING ? 0 : outcome_bit(s->ip);
		int ran = atomic_load(&s->ran);
		if (!(bit & s->allow) || ran != 1 || atomic_load(&s->late) ||
		    getenv("COIL_TD_VERBOSE"))
			fprintf(stderr,
				"%s: %s: state %d error %d (%s) \"%s\", "
				"on_done ran %d (%d late)\n",
				row, s->what, st, coil_ip_error(s->ip),
				coil_strerror(coil_ip_error(s->ip)),
				coil_ip_message(s->ip), ran,
				atomic_load(&s->late));
		CU_ASSERT(bit & s->allow);
		CU_ASSERT_EQUAL(ran, 1);
		CU_ASSERT_EQUAL(atomic_load(&s->late), 0);
		/* The getters of rule 16. */
		size_t len = 0;
		(void)coil_ip_int(s->ip);
		(void)coil_ip_ptr(s->ip);
		(void)coil_ip_bytes(s->ip, &len);
		CU_ASSERT_PTR_NOT_NULL(coil_ip_message(s->ip));
	}
}

static void finish_row(struct td *t)
{
	for (int i = 0; i < t->nh; i++)
		coil_ip_unref(t->h[i].ip);
	for (int i = 0; i < t->nfds; i++)
		close(t->fds[i]);
}

static void run_free_row(const struct row *r, unsigned workers)
{
	size_t live0 = coil_live_channels();
	size_t alloc0 = coil__alloc_live();
	struct td *t = calloc(1, sizeof(*t));
	T = t;
	t->loop = t_loop(workers);
	r->setup(t);
	T_ASSERT_OK(coil_loop_free(t->loop));
	atomic_store(&t->freed, 1);
	if (t->has_waiter) {
		pthread_join(t->waiter, NULL);
		CU_ASSERT_EQUAL(atomic_load(&t->waiter_rc), 0);
	}
	check_settled(t, r->name);
	CU_ASSERT_EQUAL(atomic_load(&t->mon_late), 0);
	CU_ASSERT_EQUAL(atomic_load(&t->sig_late), 0);
	if (atomic_load(&t->closed_calls) != t->closed_want)
		fprintf(stderr, "%s: closed ran %d times\n", r->name,
			atomic_load(&t->closed_calls));
	CU_ASSERT_EQUAL(atomic_load(&t->closed_calls), t->closed_want);
	CU_ASSERT_EQUAL(atomic_load(&t->closed_unexpected), 0);
	if (t->bare) {
		CU_ASSERT_EQUAL(coil_ip_state(t->bare), COIL_IP_PENDING);
		coil_ip_unref(t->bare);
	}
	finish_row(t);
	/* Nothing ran late even while the handles went. */
	for (int i = 0; i < t->nh; i++)
		CU_ASSERT_EQUAL(atomic_load(&t->h[i].ran), 1);
	size_t live1 = coil_live_channels(), alloc1 = coil__alloc_live();
	if (live1 != live0 || alloc1 != alloc0)
		fprintf(stderr, "%s (%u workers): channels %zu -> %zu, "
				"allocations %zu -> %zu\n",
			r->name, workers, live0, live1, alloc0, alloc1);
	CU_ASSERT_EQUAL(live1, live0);
	CU_ASSERT_EQUAL(alloc1, alloc0);
	T = NULL;
	free(t);
}

static void test_free_matrix(void)
{
	for (const struct row *r = free_rows; r->name; r++)
		for (unsigned w = 1; w <= 2; w++)
			run_free_row(r, w);
}


/* ==== Part 2: close and release from inside every callback ==== */

enum { ACT_CLOSE0, ACT_CLOSE1, ACT_RELEASE, ACT_N };
static const char *const act_name[] = {"close(0)", "close(1)", "release"};

struct cbx {
	struct td *t;
	coil_channel_t *ch; /* the victim */
	coil_monitor_t *m;
	coil_channel_t *other; /* the test's, released at the end */
	int act;
	int peer; /* raw end, -1 if none */
	int ufd;  /* raw UDP sender */
	char addr[64];
	_Atomic int calls; /* callbacks of the victim's signal */
	_Atomic int acted;
	_Atomic int released;
};

static void act(struct cbx *x)
{
	if (atomic_fetch_add(&x->acted, 1))
		return;
	switch (x->act) {
	case ACT_CLOSE0:
		coil_channel_close(x->ch, 0);
		break;
	case ACT_CLOSE1:
		coil_channel_close(x->ch, 1);
		break;
	default:
		atomic_store(&x->released, 1);
		coil_channel_release(x->ch);
		break;
	}
}

static void x_read(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	struct cbx *x = ud;
	atomic_fetch_add(&x->calls, 1);
	act(x);
}

static void x_closed(coil_channel_t *ch, int expected, void *ud)
{
	x_read(ch, NULL, 0, ud);
}

static void x_drain(coil_channel_t *ch, void *ud)
{
	x_read(ch, NULL, 0, ud);
}

static void x_done(coil_ip_t *ip, void *ud)
{
	x_read(NULL, NULL, 0, ud);
}

static coil_ip_t *x_then(coil_ip_t *src, void *ud)
{
	x_read(NULL, NULL, 0, ud);
	return NULL;
}

static void x_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	coil_channel_release(c);
	x_read(NULL, NULL, 0, ud);
}

static void x_mon(coil_monitor_t *m, int fd, int events, void *ud)
{
	struct cbx *x = ud;
	atomic_fetch_add(&x->calls, 1);
	if (atomic_fetch_add(&x->acted, 1))
		return;
	if (x->act == ACT_CLOSE0) {
		coil_monitor_unregister(m);
	} else {
		atomic_store(&x->released, 1);
		coil_monitor_free(m);
	}
}

static void witness(struct cbx *x)
{
	track(x->t, coil_channel_read_exact(x->ch, 1u << 16),
	      A_READ | A_IO, "witness read_exact");
}

/* The victim channel. Each row makes its witness read before anything
 * can make the action run: after that the test must not touch ch. */
static void chan_victim(struct cbx *x)
{
	x->ch = pair(x->t, &x->peer);
}


static void poke(struct cbx *x, const char *data)
{
	if (send(x->peer, data, strlen(data), MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
	    errno != EPIPE && errno != ECONNRESET)
		CU_FAIL("send to the victim");
}

static void a_read_sig(struct cbx *x)
{
	chan_victim(x);
	T_ASSERT_OK(coil_channel_on_read(x->ch, x_read, x));
	witness(x);
	poke(x, "hello");
}

static void a_line_sig(struct cbx *x)
{
	chan_victim(x);
	T_ASSERT_OK(coil_channel_on_readline(x->ch, x_read, x));
	witness(x);
	poke(x, "a\nb\nc\n");
}

static void a_closed(struct cbx *x)
{
	chan_victim(x);
	T_ASSERT_OK(coil_channel_on_closed(x->ch, x_closed, x));
	witness(x);
	shutdown(x->peer, SHUT_WR);
}

static void a_drain(struct cbx *x)
{
	chan_victim(x);
	small_sndbuf(x->ch);
	T_ASSERT_OK(coil_channel_set_queue_size(x->ch, 64 * 1024));
	T_ASSERT_OK(coil_channel_on_drain(x->ch, x_drain, x));
	witness(x);
	static char big[48 * 1024];
	track(x->t, coil_channel_write(x->ch, big, sizeof(big)), A_OK | A_IO,
	      "write over the low-water mark");
	static char sink[sizeof(big)];
	CU_ASSERT_EQUAL(t_read_exact(x->peer, sink, sizeof(sink)), 0);
}

static void done_on(struct cbx *x, coil_ip_t *ip, const char *what,
		    const char *data)
{
	track(x->t, ip, A_READ | A_IO, what);
	CU_ASSERT_EQUAL(coil_ip_on_done(ip, x_done, x), 0);
	if (data) {
		witness(x); /* behind ip, which waits for data */
		poke(x, data);
	}
}

static void a_done_read(struct cbx *x)
{
	chan_victim(x);
	done_on(x, coil_channel_read(x->ch), "read", "hello");
}

static void a_done_readline(struct cbx *x)
{
	chan_victim(x);
	done_on(x, coil_channel_readline(x->ch), "readline", "hello\nmore");
}

static void a_done_read_exact(struct cbx *x)
{
	chan_victim(x);
	done_on(x, coil_channel_read_exact(x->ch, 5), "read_exact", "hello!");
}

static void a_done_readinto(struct cbx *x)
{
	chan_victim(x);
	done_on(x, coil_channel_readinto(x->ch, x->t->buf[0], 5), "readinto",
		"hello!");
}

static void a_done_readv(struct cbx *x)
{
	chan_victim(x);
	size_t sizes[2] = {2, 3};
	done_on(x, coil_channel_readv(x->ch, sizes, 2), "readv", "hello!");
}

static void a_done_write(struct cbx *x)
{
	chan_victim(x);
	witness(x); /* first: the write may complete at once */
	done_on(x, coil_channel_write(x->ch, "out", 3), "write", NULL);
}

static void a_then_read(struct cbx *x)
{
	chan_victim(x);
	coil_ip_t *c = coil_ip_then(coil_channel_read(x->ch), x_then, x_then, x);
	track(x->t, c, A_OK, "then(read)");
	witness(x);
	poke(x, "hello");
}

static void a_done_connect(struct cbx *x)
{
	int lfd = keep_fd(x->t, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CU_ASSERT_FATAL(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CU_ASSERT_FATAL(listen(lfd, 4) == 0);
	socklen_t l = sizeof(sa);
	getsockname(lfd, (struct sockaddr *)&sa, &l);
	snprintf(x->addr, sizeof(x->addr), "127.0.0.1:%u", ntohs(sa.sin_port));
	T_ASSERT_OK(coil_socket_new(x->t->loop, &x->ch));
	coil_ip_t *c = coil_socket_connect(x->ch, x->addr, 0);
	track(x->t, coil_channel_write(x->ch, "queued", 6), A_OK | A_IO,
	      "write queued before connect");
	track(x->t, c, A_OK, "connect");
	CU_ASSERT_EQUAL(coil_ip_on_done(c, x_done, x), 0);
}

static void listener_victim(struct cbx *x)
{
	T_ASSERT_OK(coil_socket_new(x->t->loop, &x->ch));
	T_ASSERT_OK(coil_socket_listen(x->ch, "127.0.0.1:0", 16, 0));
	snprintf(x->addr, sizeof(x->addr), "127.0.0.1:%u", port_of(x->ch));
}

static void raw_connects(struct cbx *x, int n)
{
	coil_addr_t a;
	T_ASSERT_OK(coil_addr_parse(x->addr, 0, &a));
	for (int i = 0; i < n; i++) {
		int f = keep_fd(x->t, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
		/* May be refused or reset once the callback closed the
		 * listener. */
		(void)!connect(f, (struct sockaddr *)&a.ss, a.sslen);
	}
}

static void a_done_accept(struct cbx *x)
{
	listener_victim(x);
	coil_ip_t *ip = coil_socket_accept(x->ch);
	track(x->t, ip, A_OK, "accept");
	CU_ASSERT_EQUAL(coil_ip_on_done(ip, x_done, x), 0);
	track(x->t, coil_socket_accept_many(x->ch, 4), A_OK | A_IO | A_ANYERR,
	      "accept_many behind it");
	raw_connects(x, 3);
}

static void a_new_client(struct cbx *x)
{
	listener_victim(x);
	T_ASSERT_OK(coil_socket_on_new_client(x->ch, x_client, x));
	raw_connects(x, 3);
}

static void a_done_recvfrom(struct cbx *x)
{
	T_ASSERT_OK(coil_socket_new_dgram(x->t->loop, AF_INET, &x->ch));
	T_ASSERT_OK(coil_socket_bind(x->ch, "127.0.0.1:0", 0));
	coil_ip_t *ip = coil_socket_recvfrom(x->ch, 100);
	track(x->t, ip, A_OK, "recvfrom");
	CU_ASSERT_EQUAL(coil_ip_on_done(ip, x_done, x), 0);
	/* One receive is enough here: concurrent recvfroms are served in
	 * call order (test_udp_order covers them). */
	coil_addr_t a;
	snprintf(x->addr, sizeof(x->addr), "127.0.0.1:%u", port_of(x->ch));
	T_ASSERT_OK(coil_addr_parse(x->addr, 0, &a));
	int u = keep_fd(x->t, socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
	CU_ASSERT(sendto(u, "dg", 2, 0, (struct sockaddr *)&a.ss, a.sslen) == 2);
}

static void a_monitor(struct cbx *x)
{
	int p[2];
	CU_ASSERT_FATAL(pipe(p) == 0);
	keep_fd(x->t, p[0]);
	keep_fd(x->t, p[1]);
	T_ASSERT_OK(coil_monitor_new(x->t->loop, x_mon, x, &x->m));
	T_ASSERT_OK(coil_monitor_register(x->m, p[1], COIL_IO_WRITE));
}

static void a_tls_handshake(struct cbx *x)
{
	coil_socket_t *b;
	T_ASSERT_OK(coil_socketpair(x->t->loop, AF_UNIX, SOCK_STREAM, &x->ch,
				    &b));
	coil_ip_t *hc = coil_socket_starttls_client(x->ch, cctx, NULL);
	track(x->t, coil_socket_starttls_server(b, sctx), A_OK | A_ANYERR,
	      "server handshake");
	track(x->t, hc, A_OK, "client handshake");
	CU_ASSERT_EQUAL(coil_ip_on_done(hc, x_done, x), 0);
	track(x->t, coil_channel_write(x->ch, "after", 5), A_OK | A_IO |
	      A_ANYERR, "write behind the handshake");
	x->other = b;
}

static void a_tls_read_sig(struct cbx *x)
{
	coil_socket_t *b;
	T_ASSERT_OK(coil_socketpair(x->t->loop, AF_UNIX, SOCK_STREAM, &x->ch,
				    &b));
	coil_ip_t *hc = coil_socket_starttls_client(x->ch, cctx, NULL);
	coil_ip_t *hs = coil_socket_starttls_server(b, sctx);
	T_ASSERT_OK(t_wait(hc));
	T_ASSERT_OK(t_wait(hs));
	track(x->t, hc, A_OK, "client handshake");
	track(x->t, hs, A_OK, "server handshake");
	T_ASSERT_OK(coil_channel_on_read(x->ch, x_read, x));
	witness(x);
	track(x->t, coil_channel_write(b, "hello", 5), A_OK, "tls write");
	x->other = b;
}

static void a_done_relay(struct cbx *x)
{
	chan_victim(x);
	x->other = pair(x->t, NULL);
	witness(x);
	coil_ip_t *r = coil_channel_relay(x->ch, x->other);
	track(x->t, r, A_OK, "relay");
	CU_ASSERT_EQUAL(coil_ip_on_done(r, x_done, x), 0);
	poke(x, "relayed bytes");
	shutdown(x->peer, SHUT_WR);
}

static void a_tls_closed(struct cbx *x)
{
	coil_socket_t *b;
	T_ASSERT_OK(coil_socketpair(x->t->loop, AF_UNIX, SOCK_STREAM, &x->ch,
				    &b));
	coil_ip_t *hc = coil_socket_starttls_client(x->ch, cctx, NULL);
	coil_ip_t *hs = coil_socket_starttls_server(b, sctx);
	T_ASSERT_OK(t_wait(hc));
	T_ASSERT_OK(t_wait(hs));
	track(x->t, hc, A_OK, "client handshake");
	track(x->t, hs, A_OK, "server handshake");
	T_ASSERT_OK(coil_channel_on_closed(x->ch, x_closed, x));
	witness(x);
	/* close_notify from the server: the client's stream ends. */
	coil_channel_release(b);
}

struct cbrow {
	const char *name;
	void (*arm)(struct cbx *x);
	int signal; /* a signal: after release it must not run again */
	int tls;
};

static const struct cbrow cb_rows[] = {
	{"read signal", a_read_sig, 1, 0},
	{"readline signal", a_line_sig, 1, 0},
	{"closed", a_closed, 1, 0},
	{"drained", a_drain, 1, 0},
	{"on_done(read)", a_done_read, 0, 0},
	{"on_done(readline)", a_done_readline, 0, 0},
	{"on_done(read_exact)", a_done_read_exact, 0, 0},
	{"on_done(readinto)", a_done_readinto, 0, 0},
	{"on_done(readv)", a_done_readv, 0, 0},
	{"on_done(write)", a_done_write, 0, 0},
	{"then(read)", a_then_read, 0, 0},
	{"on_done(connect)", a_done_connect, 0, 0},
	{"on_done(accept)", a_done_accept, 0, 0},
	{"new client", a_new_client, 0, 0},
	{"on_done(recvfrom)", a_done_recvfrom, 0, 0},
	{"monitor", a_monitor, 1, 0},
	{"on_done(relay)", a_done_relay, 0, 0},
	{"on_done(starttls)", a_tls_handshake, 0, 1},
	{"tls closed", a_tls_closed, 1, 1},
	{"tls read signal", a_tls_read_sig, 1, 1},
	{NULL, NULL, 0, 0},
};

static void barrier_task(void *arg)
{
	atomic_fetch_add((_Atomic int *)arg, 1);
}

/* Every worker ran a task posted after this call: what was due before has
 * run. */
static void barrier(coil_loop_t *loop)
{
	for (int round = 0; round < 2; round++) {
		_Atomic int n = 0;
		unsigned nw = coil_loop_workers(loop);
		for (unsigned i = 0; i < nw; i++)
			T_ASSERT_OK(coil_loop_post(loop, (int)i, barrier_task, &n));
		WAIT_UNTIL(atomic_load(&n) == (int)nw);
	}
}

static void run_cb_row(const struct cbrow *r, int action, unsigned workers)
{
	size_t live0 = coil_live_channels();
	size_t alloc0 = coil__alloc_live();
	struct td *t = calloc(1, sizeof(*t));
	struct cbx *x = calloc(1, sizeof(*x));
	T = t;
	x->t = t;
	x->act = action;
	x->peer = -1;
	t->loop = t_loop(workers);
	r->arm(x);
	WAIT_UNTIL(atomic_load(&x->acted) > 0);
	if (!atomic_load(&x->acted)) {
		fprintf(stderr, "%s, %s (%u workers): the callback never ran; "
				"victim alive %d, read queue %zu\n",
			r->name, act_name[action], workers,
			x->ch ? coil_channel_alive(x->ch) : -1,
			x->ch ? coil_channel_read_queue_used(x->ch) : 0);
		for (int i = 0; i < t->nh; i++)
			fprintf(stderr, "  %s: state %d\n", t->h[i].what,
				coil_ip_state(t->h[i].ip));
	}
	CU_ASSERT_FATAL(atomic_load(&x->acted) > 0);
	for (int i = 0; i < t->nh; i++) {
		int rc = t_wait(t->h[i].ip);
		if (rc)
			fprintf(stderr, "%s, %s: %s still pending\n", r->name,
				act_name[action], t->h[i].what);
		CU_ASSERT_EQUAL(rc, 0);
	}
	barrier(t->loop);
	if (r->signal && atomic_load(&x->released)) {
		/* Released (or freed) inside its own callback: no callback
		 * of it runs again, whatever arrives. */
		int calls = atomic_load(&x->calls);
		if (x->peer >= 0)
			poke(x, "again\n");
		barrier(t->loop);
		CU_ASSERT_EQUAL(atomic_load(&x->calls), calls);
	}
	check_settled(t, r->name);
	if (!atomic_load(&x->released)) {
		if (x->m)
			coil_monitor_free(x->m);
		else
			coil_channel_release(x->ch);
	}
	if (x->other)
		coil_channel_release(x->other);
	T_ASSERT_OK(coil_loop_free(t->loop));
	finish_row(t);
	size_t live1 = coil_live_channels(), alloc1 = coil__alloc_live();
	if (live1 != live0 || alloc1 != alloc0)
		fprintf(stderr, "%s, %s (%u workers): channels %zu -> %zu, "
				"allocations %zu -> %zu\n",
			r->name, act_name[action], workers, live0, live1,
			alloc0, alloc1);
	CU_ASSERT_EQUAL(live1, live0);
	CU_ASSERT_EQUAL(alloc1, alloc0);
	T = NULL;
	free(x);
	free(t);
}

static void test_act_in_callbacks(void)
{
	const char *only = getenv("COIL_TD_ROW");
	for (const struct cbrow *r = cb_rows; r->name; r++) {
		if ((r->tls && !sctx) || (only && strcmp(only, r->name)))
			continue;
		for (int a = 0; a < ACT_N; a++)
			for (unsigned w = 1; w <= 2; w++)
				run_cb_row(r, a, w);
	}
}


/* ==== Part 3: plain threads racing the worker ==== */

#define RACE_OPS 16

struct racer {
	coil_channel_t *ref; /* this thread's own reference */
	int kind;
	int peer;
	struct slot h[RACE_OPS * 2];
	int nh;
	pthread_t th;
};

static _Atomic int race_go;
static _Atomic int race_reads;

static void race_read_cb(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	atomic_fetch_add(&race_reads, 1);
	/* Echo a little: the worker writes while the threads close. */
	if (n)
		coil_ip_unref(coil_channel_write(ch, d, n < 64 ? n : 64));
}

static void race_track(struct racer *r, coil_ip_t *ip, int allow,
		       const char *what)
{
	if (!ip)
		return;
	struct slot *s = &r->h[r->nh++];
	s->ip = ip;
	s->allow = allow;
	s->what = what;
	coil_ip_on_done(ip, slot_done, s);
}

static void *racer_run(void *arg)
{
	struct racer *r = arg;
	while (!atomic_load(&race_go))
		;
	static const char msg[] = "0123456789abcdef\n";
	for (int i = 0; i < RACE_OPS; i++) {
		switch (r->kind) {
		case 0: /* reads of every kind, then an immediate close */
			race_track(r, i % 2 ? coil_channel_read(r->ref)
					    : coil_channel_readline(r->ref),
				   A_READ | A_BADF, "racing read");
			break;
		case 1: /* writes, every other one aborted */ {
			coil_ip_t *w = coil_channel_write(r->ref, msg, 17);
			race_track(r, w, A_OK | A_IO | A_ANYERR,
				   "racing write");
			if (w && i % 2)
				coil_ip_abort(w);
			break;
		}
		case 2: /* the peer talks: the read signal runs */
			(void)!send(r->peer, msg, 17,
				    MSG_DONTWAIT | MSG_NOSIGNAL);
			break;
		default: /* graceful close, signals switched */
			if (i == RACE_OPS / 2)
				coil_channel_close(r->ref, 0);
			coil_channel_on_read(r->ref, i % 2 ? race_read_cb
							   : NULL, NULL);
			break;
		}
	}
	if (r->kind == 0)
		coil_channel_close(r->ref, 1);
	coil_channel_release(r->ref);
	return NULL;
}

static void test_threads_race_worker(void)
{
	int rounds = t_on_valgrind() ? 4 : 60;
	for (int round = 0; round < rounds; round++) {
		size_t live0 = coil_live_channels();
		size_t alloc0 = coil__alloc_live();
		struct td *t = calloc(1, sizeof(*t));
		T = t;
		t->loop = t_loop(1 + round % 2);
		int peer;
		coil_socket_t *ch = pair(t, &peer);
		T_ASSERT_OK(coil_channel_on_read(ch, race_read_cb, NULL));
		struct racer r[4];
		memset(r, 0, sizeof(r));
		atomic_store(&race_go, 0);
		for (int i = 0; i < 4; i++) {
			r[i].ref = coil_channel_ref(ch);
			r[i].kind = (i + round) % 4;
			r[i].peer = peer;
			CU_ASSERT_FATAL(pthread_create(&r[i].th, NULL, racer_run,
						       &r[i]) == 0);
		}
		coil_channel_release(ch); /* ours goes first */
		atomic_store(&race_go, 1);
		for (int i = 0; i < 4; i++)
			pthread_join(r[i].th, NULL);
		/* Every handle settles, once, without the loop's stop. */
		for (int i = 0; i < 4; i++)
			for (int j = 0; j < r[i].nh; j++) {
				int rc = t_wait(r[i].h[j].ip);
				if (rc)
					fprintf(stderr, "round %d: %s pending\n",
						round, r[i].h[j].what);
				CU_ASSERT_EQUAL_FATAL(rc, 0);
			}
		barrier(t->loop);
		T_ASSERT_OK(coil_loop_free(t->loop));
		for (int i = 0; i < 4; i++)
			for (int j = 0; j < r[i].nh; j++) {
				struct slot *s = &r[i].h[j];
				int bit = outcome_bit(s->ip);
				if (!(bit & s->allow))
					fprintf(stderr, "round %d: %s: %d %s\n",
						round, s->what,
						coil_ip_error(s->ip),
						coil_ip_message(s->ip));
				CU_ASSERT(bit & s->allow);
				CU_ASSERT_EQUAL(atomic_load(&s->ran), 1);
				coil_ip_unref(s->ip);
			}
		finish_row(t);
		CU_ASSERT_EQUAL(coil_live_channels(), live0);
		CU_ASSERT_EQUAL(coil__alloc_live(), alloc0);
		T = NULL;
		free(t);
	}
}


/* Monitors freed from a plain thread while their callbacks run on the
 * worker and another thread flips their registration. */
struct mon_race {
	coil_monitor_t *m;
	int fd;
	_Atomic int calls;
	_Atomic int stop;
};

static void mon_race_cb(coil_monitor_t *m, int fd, int events, void *ud)
{
	struct mon_race *mr = ud;
	atomic_fetch_add(&mr->calls, 1);
}

static void *mon_flipper(void *arg)
{
	struct mon_race *mr = arg;
	for (int i = 0; i < 50 && !atomic_load(&mr->stop); i++) {
		coil_monitor_unregister(mr->m);
		coil_monitor_register(mr->m, mr->fd, COIL_IO_WRITE);
	}
	return NULL;
}

static void test_monitor_free_races(void)
{
	int rounds = t_on_valgrind() ? 3 : 30;
	for (int round = 0; round < rounds; round++) {
		size_t alloc0 = coil__alloc_live();
		coil_loop_t *loop = t_loop(1 + round % 2);
		int p[2];
		CU_ASSERT_FATAL(pipe(p) == 0);
		struct mon_race *mr = calloc(1, sizeof(*mr));
		mr->fd = p[1];
		T_ASSERT_OK(coil_monitor_new(loop, mon_race_cb, mr, &mr->m));
		T_ASSERT_OK(coil_monitor_register(mr->m, p[1], COIL_IO_WRITE));
		WAIT_UNTIL(atomic_load(&mr->calls) > 0);
		pthread_t th;
		CU_ASSERT_FATAL(pthread_create(&th, NULL, mon_flipper, mr) == 0);
		/* The flipper only uses m until it sees stop. */
		for (int i = 0; i < 10; i++)
			coil_loop_post(loop, -1, barrier_task, &mr->stop);
		pthread_join(th, NULL);
		coil_monitor_free(mr->m);
		if (round % 3 == 0) {
			/* Free a second one with the loop. */
			coil_monitor_t *m2;
			T_ASSERT_OK(coil_monitor_new(loop, mon_race_cb, mr, &m2));
			T_ASSERT_OK(coil_monitor_register(m2, p[1], COIL_IO_WRITE));
		}
		T_ASSERT_OK(coil_loop_free(loop));
		int calls = atomic_load(&mr->calls);
		close(p[0]);
		close(p[1]);
		CU_ASSERT_EQUAL(atomic_load(&mr->calls), calls);
		CU_ASSERT_EQUAL(coil__alloc_live(), alloc0);
		free(mr);
	}
}

/* ==== release inside a callback of the stop ==== */

/*
 * apiseq (session 5, ASan, 2 of some thousand sequences): a channel whose
 * user called coil_channel_release() from a callback that ran during
 * coil_loop_free() (a pending read failing) still got its closed callback
 * afterwards: the stop had already taken the user's reference over, so the
 * release returned early without disconnecting the callbacks. Rule: after
 * the user's release no callback of that channel runs.
 */
struct rel_in_stop {
	coil_channel_t *ch;
	_Atomic int released;
	_Atomic int closed_after;
	_Atomic int closed_runs;
};

static void ris_closed(coil_channel_t *ch, int expected, void *ud)
{
	struct rel_in_stop *r = ud;
	atomic_fetch_add(&r->closed_runs, 1);
	if (atomic_load(&r->released))
		atomic_fetch_add(&r->closed_after, 1);
}

static void ris_read_done(coil_ip_t *ip, void *ud)
{
	struct rel_in_stop *r = ud;
	atomic_store(&r->released, 1);
	coil_channel_release(r->ch);
}

static void test_release_in_stop_callback(void)
{
	for (int round = 0; round < 20; round++) {
		coil_loop_t *loop = t_loop(1);
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC,
					   0, sv) == 0);
		struct rel_in_stop r = {0};
		coil_socket_t *s = NULL;
		T_ASSERT_OK(coil_socket_wrap(loop, sv[0], &s));
		r.ch = s;
		T_ASSERT_OK(coil_channel_on_closed(s, ris_closed, &r));
		coil_ip_t *rd = coil_channel_read(s);
		CU_ASSERT_FATAL(rd != NULL);
		T_ASSERT_OK(coil_ip_on_done(rd, ris_read_done, &r));
		coil_ip_unref(rd);
		coil_loop_free(loop);
		CU_ASSERT_EQUAL(atomic_load(&r.released), 1);
		CU_ASSERT_EQUAL(atomic_load(&r.closed_after), 0);
		close(sv[1]);
	}
}

/* ==== coil_loop_free with a send blocked on a full socket ==== */

/*
 * Found while testing fixed files (session 5): coil_loop_free() hung in a
 * third to a half of the runs when a send was blocked on a full TCP socket
 * whose peer never reads: the stop's one cancel-all left the kernel's
 * IORING_OP_SEND waiting (visible in the ring's fdinfo), and the worker
 * waited for its completion forever. The test frees the loop on a helper
 * thread and gives it 30 s (a hang detector, not a timing assertion: the
 * free takes milliseconds).
 */
struct free_job {
	coil_loop_t *loop;
	_Atomic int done;
};

static void *free_job_run(void *arg)
{
	struct free_job *j = arg;
	coil_loop_free(j->loop);
	atomic_store(&j->done, 1);
	return NULL;
}

static void tcp_pair(int *a, int *b)
{
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CU_ASSERT_FATAL(ls >= 0);
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sin);
	CU_ASSERT_FATAL(bind(ls, (struct sockaddr *)&sin, sl) == 0);
	CU_ASSERT_FATAL(listen(ls, 4) == 0);
	CU_ASSERT_FATAL(getsockname(ls, (struct sockaddr *)&sin, &sl) == 0);
	*a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int small = 4096;
	setsockopt(*a, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	CU_ASSERT_FATAL(connect(*a, (struct sockaddr *)&sin, sl) == 0);
	*b = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	CU_ASSERT_FATAL(*b >= 0);
	setsockopt(*b, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	close(ls);
}

static void test_free_with_blocked_send(void)
{
	int rounds = t_on_valgrind() ? 3 : 12;
	for (int round = 0; round < rounds; round++) {
		coil_loop_t *loop = t_loop(round % 2 ? 2 : 1);
		enum { N = 3 };
		int peer[N];
		coil_ip_t *wr[N];
		static char big[768 * 1024];
		coil_channel_t *ch[N];
		/* Variants: the handle kept or released, a graceful close
		 * behind the write, the free at once or once the sends wait. */
		int v = round % 4;
		for (int i = 0; i < N; i++) {
			int fd;
			tcp_pair(&fd, &peer[i]);
			T_ASSERT_OK(coil_channel_wrap(loop, fd,
						      COIL_IO_READ | COIL_IO_WRITE,
						      &ch[i]));
			wr[i] = coil_channel_write(ch[i], big, sizeof(big));
			CU_ASSERT_FATAL(wr[i] != NULL);
			if (v == 1)
				coil_channel_close(ch[i], 0);
			if (v == 2)
				coil_channel_release(ch[i]);
		}
		if (v >= 2)
			usleep(20 * 1000); /* the sends wait in the kernel */
		struct free_job j = {.loop = loop};
		pthread_t th;
		CU_ASSERT_FATAL(pthread_create(&th, NULL, free_job_run, &j) == 0);
		for (int w = 0; w < 30000 && !atomic_load(&j.done); w++)
			usleep(1000);
		CU_ASSERT_EQUAL_FATAL(atomic_load(&j.done), 1);
		pthread_join(th, NULL);
		for (int i = 0; i < N; i++) {
			CU_ASSERT_NOT_EQUAL(coil_ip_state(wr[i]), COIL_IP_PENDING);
			coil_ip_unref(wr[i]);
			close(peer[i]);
		}
		(void)ch;
	}
}

/* ==== main ==== */

static const coil_test_t tests[] = {
	{"free_matrix", test_free_matrix},
	{"act_in_callbacks", test_act_in_callbacks},
	{"threads_race_worker", test_threads_race_worker},
	{"monitor_free_races", test_monitor_free_races},
	{"release_in_stop_callback", test_release_in_stop_callback},
	{"free_with_blocked_send", test_free_with_blocked_send},
	{NULL, NULL},
};

static int sh(const char *cmd)
{
	char full[1024];
	snprintf(full, sizeof(full), "cd '%s' && (%s) >gen.log 2>&1", tlsdir,
		 cmd);
	return system(full);
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	int made = 0;
	if (coil_tls_available()) {
		const char *tmp = getenv("TMPDIR");
		snprintf(tlsdir, sizeof(tlsdir), "%s/coil-td-XXXXXX",
			 tmp ? tmp : "/tmp");
		if (mkdtemp(tlsdir) &&
		    sh("openssl req -x509 -newkey ec -pkeyopt "
		       "ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem "
		       "-days 2 -subj /CN=localhost") == 0) {
			made = 1;
			char crt[300], key[300];
			snprintf(crt, sizeof(crt), "%s/c.pem", tlsdir);
			snprintf(key, sizeof(key), "%s/k.pem", tlsdir);
			if (coil_tls_ctx_new(COIL_TLS_SERVER, &sctx) ||
			    coil_tls_ctx_use_cert_file(sctx, crt, key) ||
			    coil_tls_ctx_new(COIL_TLS_CLIENT, &cctx) ||
			    coil_tls_ctx_set_verify(cctx, COIL_TLS_VERIFY_NONE)) {
				fprintf(stderr, "coil-test: TLS contexts failed\n");
				return 1;
			}
		} else {
			fprintf(stderr, "coil-test: no openssl command: the "
					"TLS rows are skipped\n");
		}
	}
	int rc = coil_test_main("teardown", tests, argc, argv);
	coil_tls_ctx_free(sctx);
	coil_tls_ctx_free(cctx);
	if (made) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tlsdir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", tlsdir);
	}
	return rc;
}
