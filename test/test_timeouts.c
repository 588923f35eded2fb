/* SPDX-License-Identifier: MIT */
/*
 * Socket timeouts on the worker's deadline list (lib/timer.c, issue 14):
 * they still fire (read, readline, read_exact, accept, connect), lose no
 * byte that arrived before expiry, fire in deadline order, survive a change
 * of the timeout while reads are pending and a loop freed with deadlines
 * pending, and cost no ring operation per read when they do not fire.
 */
#include "helpers.h"
#include "internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define HOUR_MS (3600u * 1000u)

static coil_loop_t *L;

/* A fresh one-worker loop per test: the ring-op counts then see only the
 * test's own timers. */
static void setup(void)
{
	L = t_loop(1);
}

static void teardown(void)
{
	coil_loop_free(L);
	L = NULL;
}

static void fresh(void)
{
	teardown();
	setup();
}

/* A channel (a socket object on one end of a socketpair, so the socket
 * timeout applies) and the raw peer. */
static coil_socket_t *pair(int *peer)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_wrap(L, sv[0], &s));
	*peer = sv[1];
	return s;
}

/* Runs fn(arg) on worker 0 and waits for it. */
struct on_worker {
	void (*fn)(void *arg);
	void *arg;
	atomic_int done;
};

static void on_worker_run(void *arg)
{
	struct on_worker *o = arg;
	o->fn(o->arg);
	atomic_store(&o->done, 1);
}

static void run_on_worker(void (*fn)(void *), void *arg)
{
	struct on_worker o = {.fn = fn, .arg = arg};
	T_ASSERT_OK(coil_loop_post(L, 0, on_worker_run, &o));
	while (!atomic_load(&o.done))
		usleep(100);
}

struct counts {
	uint64_t sqes, timer_ops;
};

static void read_counts(void *arg)
{
	struct counts *c = arg;
	coil__worker *w = coil__tls_worker;
	c->sqes = w->sqes;
	c->timer_ops = coil__timer_ring_ops(w);
}

static struct counts counts(void)
{
	struct counts c;
	run_on_worker(read_counts, &c);
	return c;
}

static void test_read_times_out_keeps_partial_bytes(void)
{
	int peer;
	coil_socket_t *s = pair(&peer);
	T_ASSERT_OK(coil_socket_set_timeout(s, 20));
	/* read: nothing arrives. */
	coil_ip_t *r = coil_channel_read(s);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -ETIMEDOUT);
	coil_ip_unref(r);
	/* read_exact: 4 of 10 bytes arrive before the expiry. */
	T_ASSERT_OK(t_write_all(peer, "0123", 4));
	r = coil_channel_read_exact(s, 10);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -ETIMEDOUT);
	coil_ip_unref(r);
	/* readline: part of a line arrives before the expiry. */
	coil_ip_t *l = coil_channel_readline(s);
	T_ASSERT_OK(t_wait(l));
	CU_ASSERT_EQUAL(coil_ip_error(l), -ETIMEDOUT);
	coil_ip_unref(l);
	T_ASSERT_OK(t_write_all(peer, "45", 2));
	l = coil_channel_readline(s);
	T_ASSERT_OK(t_wait(l));
	CU_ASSERT_EQUAL(coil_ip_error(l), -ETIMEDOUT);
	coil_ip_unref(l);
	/* No byte lost: the whole stream comes back in order. */
	T_ASSERT_OK(coil_socket_set_timeout(s, 0));
	T_ASSERT_OK(t_write_all(peer, "6789\n", 5));
	l = coil_channel_readline(s);
	T_ASSERT_OK(t_wait(l));
	size_t n = 0;
	const char *b = coil_ip_bytes(l, &n);
	CU_ASSERT_EQUAL(n, 11);
	CU_ASSERT(b && memcmp(b, "0123456789\n", 11) == 0);
	coil_ip_unref(l);
	coil_channel_release(s);
	close(peer);
}

static void test_accept_and_connect_time_out(void)
{
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 8, 0));
	T_ASSERT_OK(coil_socket_set_timeout(l, 20));
	coil_ip_t *a = coil_socket_accept(l);
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_error(a), -ETIMEDOUT);
	coil_ip_unref(a);
	coil_channel_release(l);

	/* connect: a listener whose accept queue is full drops SYNs, so
	 * the handshake cannot finish before the socket timeout. */
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CU_ASSERT_FATAL(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CU_ASSERT_FATAL(listen(lfd, 0) == 0);
	socklen_t sl = sizeof(sin);
	getsockname(lfd, (struct sockaddr *)&sin, &sl);
	int fill[4];
	for (int i = 0; i < 4; i++) {
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC |
						  SOCK_NONBLOCK, 0);
		connect(fill[i], (struct sockaddr *)&sin, sizeof(sin));
	}
	usleep(20000); /* not a timing assertion: lets the queue fill */
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(L, &c));
	T_ASSERT_OK(coil_socket_set_timeout(c, 30));
	coil_ip_t *cn = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(cn));
	CU_ASSERT_EQUAL(coil_ip_error(cn), -ETIMEDOUT);
	coil_ip_unref(cn);
	coil_channel_release(c);
	for (int i = 0; i < 4; i++)
		close(fill[i]);
	close(lfd);
}

/* ---- deadline order, on the timer list itself ---- */

#define NT 8
struct order {
	coil__timer t[NT];
	uint64_t fired_deadline[NT];
	int fired_idx[NT];
	int res[NT];
	int n;
	atomic_int left;
};

static struct order *order_cur;

static void order_fired(coil__timer *t, int res)
{
	struct order *o = order_cur;
	int i = (int)(t - o->t);
	o->fired_idx[o->n] = i;
	o->fired_deadline[o->n] = t->deadline;
	o->res[o->n] = res;
	o->n++;
	atomic_fetch_sub(&o->left, 1);
}

static void order_start(void *arg)
{
	struct order *o = arg;
	static const unsigned ms[NT] = {70, 10, 50, 30, 60, 20, 40, 35};
	for (int i = 0; i < NT; i++)
		CU_ASSERT_EQUAL(coil__timer_start(coil__tls_worker, &o->t[i],
						  ms[i], order_fired), 0);
	/* One is cancelled: it reports -ECANCELED, later, not from here. */
	coil__timer_cancel(&o->t[4]);
	CU_ASSERT_EQUAL(o->n, 0);
}

static void test_timers_fire_in_deadline_order(void)
{
	fresh();
	static struct order o;
	memset(&o, 0, sizeof(o));
	order_cur = &o;
	atomic_store(&o.left, NT);
	struct counts c0 = counts();
	run_on_worker(order_start, &o);
	while (atomic_load(&o.left))
		usleep(1000);
	CU_ASSERT_EQUAL(o.n, NT);
	int cancelled = 0;
	uint64_t last = 0;
	for (int i = 0; i < o.n; i++) {
		if (o.res[i] == -ECANCELED) {
			CU_ASSERT_EQUAL(o.fired_idx[i], 4);
			cancelled++;
			continue;
		}
		CU_ASSERT_EQUAL(o.res[i], 0);
		CU_ASSERT(o.fired_deadline[i] >= last);
		last = o.fired_deadline[i];
	}
	CU_ASSERT_EQUAL(cancelled, 1);
	/* 8 timers, one ring timeout: arms and moves only, never one per
	 * timer started (the first arm, one update per new earliest: at
	 * most 10 ms -> ... here 70, 10 = 2), plus re-arms on expiry. */
	struct counts c1 = counts();
	CU_ASSERT(c1.timer_ops - c0.timer_ops <= 2 + NT);
}

/* Many channels with different socket timeouts: each read fails with
 * -ETIMEDOUT, and the expiry order follows the deadlines. */
#define NCH 6
static atomic_int exp_seq;
static int exp_at[NCH];

static void on_expired(coil_ip_t *ip, void *ud)
{
	int i = (int)(intptr_t)ud;
	if (coil_ip_error(ip) == -ETIMEDOUT)
		exp_at[i] = atomic_fetch_add(&exp_seq, 1);
	else
		exp_at[i] = -100 + coil_ip_error(ip);
}

struct many {
	coil_socket_t *s[NCH];
	coil_ip_t *ip[NCH];
};

/* Started on the worker in increasing timeout order after the longest
 * one: the longest is first on the list, each later one is a new earliest
 * or goes in the middle. Deadlines are start time + timeout, and starts
 * only grow, so the increasing-timeout ones keep their order whatever the
 * scheduling; the longest one (started first, 200 ms) can only expire last
 * if no stall of 150 ms hit this task, which a slow machine may break:
 * it is not asserted. */
static void many_start(void *arg)
{
	struct many *m = arg;
	for (int i = 0; i < NCH; i++) {
		coil_socket_set_timeout(m->s[i], i == 0 ? 200 : 10u * (unsigned)i);
		m->ip[i] = coil_channel_read(m->s[i]);
		coil_ip_on_done(m->ip[i], on_expired, (void *)(intptr_t)i);
	}
}

static void test_many_channels_expire_in_order(void)
{
	fresh();
	struct many m;
	int peers[NCH];
	for (int i = 0; i < NCH; i++)
		m.s[i] = pair(&peers[i]);
	atomic_store(&exp_seq, 0);
	run_on_worker(many_start, &m);
	for (int i = 0; i < NCH; i++) {
		T_ASSERT_OK(t_wait(m.ip[i]));
		CU_ASSERT_EQUAL(coil_ip_error(m.ip[i]), -ETIMEDOUT);
	}
	for (int i = 1; i < NCH; i++)
		CU_ASSERT(exp_at[i] >= 0);
	for (int i = 2; i < NCH; i++)
		CU_ASSERT(exp_at[i] > exp_at[i - 1]);
	for (int i = 0; i < NCH; i++) {
		coil_ip_unref(m.ip[i]);
		coil_channel_release(m.s[i]);
		close(peers[i]);
	}
}

/* A shorter timeout set while a read with a long one is pending: the new
 * read (queued behind) expires first, which moves the worker's one ring
 * timeout earlier (one timeout-update); the first read is untouched and
 * still gets its bytes. */
static void test_timeout_changed_while_pending(void)
{
	fresh();
	int peer;
	coil_socket_t *s = pair(&peer);
	struct counts c0 = counts();
	T_ASSERT_OK(coil_socket_set_timeout(s, HOUR_MS));
	coil_ip_t *a = coil_channel_read_exact(s, 4);
	T_ASSERT_OK(coil_socket_set_timeout(s, 20));
	coil_ip_t *b = coil_channel_read(s);
	T_ASSERT_OK(t_wait(b));
	CU_ASSERT_EQUAL(coil_ip_error(b), -ETIMEDOUT);
	CU_ASSERT_EQUAL(coil_ip_state(a), COIL_IP_PENDING);
	T_ASSERT_OK(t_write_all(peer, "abcd", 4));
	T_ASSERT_OK(t_wait(a));
	size_t n = 0;
	const char *d = coil_ip_bytes(a, &n);
	CU_ASSERT_EQUAL(n, 4);
	CU_ASSERT(d && memcmp(d, "abcd", 4) == 0);
	/* arm (1 h), update (20 ms), re-arm for the hour after the expiry. */
	struct counts c1 = counts();
	CU_ASSERT_EQUAL(c1.timer_ops - c0.timer_ops, 3);
	coil_ip_unref(a);
	coil_ip_unref(b);
	coil_channel_release(s);
	close(peer);
}

/* The loop freed with reads, a sleep and a timeout pending on the
 * deadline list: everything is released. */
static void test_loop_free_with_pending_deadlines(void)
{
	coil_loop_free(L); /* this test makes its own */
	size_t live0 = coil__alloc_live();
	L = t_loop(1);
	int peer;
	coil_socket_t *s = pair(&peer);
	T_ASSERT_OK(coil_socket_set_timeout(s, HOUR_MS));
	coil_ip_t *r1 = coil_channel_read(s);
	coil_ip_t *r2 = coil_channel_readline(s);
	coil_ip_t *sl = coil_sleep(L, HOUR_MS);
	coil_ip_t *to = coil_ip_timeout(coil_sleep(L, HOUR_MS), HOUR_MS / 2, 1);
	CU_ASSERT_EQUAL(coil_ip_state(r1), COIL_IP_PENDING);
	coil_ip_unref(r1);
	coil_ip_unref(r2);
	coil_ip_unref(sl);
	coil_ip_unref(to);
	coil_channel_release(s);
	coil_loop_free(L);
	close(peer);
	CU_ASSERT_EQUAL(coil__alloc_live(), live0);
	L = t_loop(1);
}

/* ---- ring operations per read with a socket timeout that never fires */

struct pingpong {
	coil_socket_t *s;
	int peer;
	int n, i, errors;
	struct counts before, after;
	atomic_int done;
};

/*
 * n sequential one-byte reads driven on the worker, as a server does it: a
 * read, a byte from the peer (a plain write(2) on the raw end, no ring op),
 * and the next read from the completion callback. Nothing is posted from
 * another thread, so the worker's SQE count is exactly what the reads and
 * their timeouts cost.
 */
static void pp_next(struct pingpong *p);

static void pp_done(coil_ip_t *ip, void *ud)
{
	struct pingpong *p = ud;
	if (coil_ip_error(ip) != 0)
		p->errors++;
	coil_ip_unref(ip);
	pp_next(p);
}

static void pp_next(struct pingpong *p)
{
	if (p->i == p->n) {
		read_counts(&p->after);
		atomic_store(&p->done, 1);
		return;
	}
	p->i++;
	coil_ip_t *r = coil_channel_read(p->s);
	char c = 'x';
	if (!r || write(p->peer, &c, 1) != 1 ||
	    coil_ip_on_done(r, pp_done, p) != 0) {
		p->errors++;
		p->i = p->n;
		coil_ip_unref(r);
		pp_next(p);
	}
}

static void pp_start(void *arg)
{
	struct pingpong *p = arg;
	read_counts(&p->before);
	pp_next(p);
}

static struct counts pp_run(struct pingpong *p, int n)
{
	p->n = n;
	p->i = 0;
	atomic_store(&p->done, 0);
	T_ASSERT_OK(coil_loop_post(L, 0, pp_start, p));
	while (!atomic_load(&p->done))
		usleep(1000);
	CU_ASSERT_EQUAL(p->errors, 0);
	return (struct counts){p->after.sqes - p->before.sqes,
			       p->after.timer_ops - p->before.timer_ops};
}

static void test_ring_ops_per_read(void)
{
	fresh();
	int n = t_on_valgrind() ? 100 : 10000;
	static struct pingpong p;
	memset(&p, 0, sizeof(p));
	p.s = pair(&p.peer);
	pp_run(&p, 10); /* warm up */
	struct counts plain = pp_run(&p, n);
	T_ASSERT_OK(coil_socket_set_timeout(p.s, HOUR_MS));
	struct counts timed = pp_run(&p, n);
	fprintf(stderr, "ring ops for %d reads: %llu without a socket timeout, "
			"%llu with one (of which timer ops %llu)\n",
		n, (unsigned long long)plain.sqes,
		(unsigned long long)timed.sqes,
		(unsigned long long)timed.timer_ops);
	/* The timeout arms the worker's one ring timeout once: no ring op
	 * per read (before: a timeout and a timeout-remove per read). */
	CU_ASSERT_EQUAL(plain.timer_ops, 0);
	CU_ASSERT_EQUAL(timed.timer_ops, 1);
	CU_ASSERT_EQUAL(timed.sqes, plain.sqes + 1);
	coil_channel_release(p.s);
	close(p.peer);
}

static const coil_test_t tests[] = {
	{"read_times_out_keeps_partial_bytes",
	 test_read_times_out_keeps_partial_bytes},
	{"accept_and_connect_time_out", test_accept_and_connect_time_out},
	{"timers_fire_in_deadline_order", test_timers_fire_in_deadline_order},
	{"many_channels_expire_in_order", test_many_channels_expire_in_order},
	{"timeout_changed_while_pending", test_timeout_changed_while_pending},
	{"loop_free_with_pending_deadlines",
	 test_loop_free_with_pending_deadlines},
	{"ring_ops_per_read", test_ring_ops_per_read},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	setup();
	int rc = coil_test_main("timeouts", tests, argc, argv);
	teardown();
	return rc;
}
