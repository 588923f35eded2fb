/* SPDX-License-Identifier: MIT */
/* Concurrent receives on one datagram socket are served in call order
 * (CPython/usocket semantics): recvfrom and recvfrom_many queue per socket,
 * one ring receive in flight, from plain threads and from the home worker;
 * aborting a queued one takes it out without losing a datagram; freeing the
 * loop settles every queued receive and frees what it held. */
#include "helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

size_t coil__alloc_live(void);

#define N 64

struct udp {
	coil_loop_t *loop;
	coil_socket_t *s;
	struct sockaddr_in to;
	int out; /* the plain sender */
};

static void udp_open(struct udp *u)
{
	u->loop = t_loop(1);
	T_ASSERT_OK(coil_socket_new_dgram(u->loop, AF_INET, &u->s));
	T_ASSERT_OK(coil_socket_bind(u->s, "127.0.0.1:0", 0));
	coil_sockinfo_t si;
	T_ASSERT_OK(coil_socket_local(u->s, &si));
	memset(&u->to, 0, sizeof(u->to));
	u->to.sin_family = AF_INET;
	u->to.sin_port = htons((unsigned short)si.port);
	u->to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	u->out = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CU_ASSERT_FATAL(u->out >= 0);
}

static void udp_close(struct udp *u)
{
	close(u->out);
	coil_channel_release(u->s);
	T_ASSERT_OK(coil_loop_free(u->loop));
}

static void send_dg(struct udp *u, int i)
{
	char msg[16];
	int n = snprintf(msg, sizeof(msg), "dg%d", i);
	CU_ASSERT(sendto(u->out, msg, (size_t)n, 0, (struct sockaddr *)&u->to,
			 sizeof(u->to)) == n);
}

/* Which dgN a datagram is, -1 if none. */
static int dg_index(const coil_datagram_t *dg)
{
	char buf[16];
	if (!dg || dg->len < 3 || dg->len >= sizeof(buf))
		return -1;
	memcpy(buf, dg->data, dg->len);
	buf[dg->len] = 0;
	int i;
	return sscanf(buf, "dg%d", &i) == 1 ? i : -1;
}

/* The datagram of a finished recvfrom, -1 if it failed. */
static int got(coil_ip_t *ip)
{
	if (t_wait(ip) || coil_ip_error(ip))
		return -1;
	return dg_index(coil_ip_ptr(ip));
}

/* The regression: two recvfroms, two datagrams: the first call gets the
 * first datagram (it used to be the second call, and with one datagram the
 * first stayed pending while the second finished). */
static void test_two_in_call_order(void)
{
	struct udp u;
	udp_open(&u);
	for (int round = 0; round < 20; round++) {
		coil_ip_t *a = coil_socket_recvfrom(u.s, 2048);
		coil_ip_t *b = coil_socket_recvfrom(u.s, 2048);
		CU_ASSERT_FATAL(a && b);
		send_dg(&u, 1);
		CU_ASSERT_EQUAL(got(a), 1);
		CU_ASSERT_EQUAL(coil_ip_state(b), COIL_IP_PENDING);
		send_dg(&u, 2);
		CU_ASSERT_EQUAL(got(b), 2);
		coil_ip_unref(a);
		coil_ip_unref(b);
	}
	udp_close(&u);
}

struct many {
	struct udp *u;
	coil_ip_t *ip[N];
	sem_t issued;
};

static void issue_all(void *arg)
{
	struct many *m = arg;
	for (int i = 0; i < N; i++)
		m->ip[i] = coil_socket_recvfrom(m->u->s, 2048);
	sem_post(&m->issued);
}

static void check_many(struct many *m)
{
	for (int i = 0; i < N; i++)
		CU_ASSERT_FATAL(m->ip[i] != NULL);
	for (int i = 0; i < N; i++)
		send_dg(m->u, i);
	int bad = 0;
	for (int i = 0; i < N; i++) {
		int g = got(m->ip[i]);
		if (g != i && bad++ < 4)
			fprintf(stderr, "recvfrom %d got dg%d\n", i, g);
		coil_ip_unref(m->ip[i]);
	}
	CU_ASSERT_EQUAL(bad, 0);
}

/* 64 recvfroms from a plain thread, 64 datagrams: each in call order. */
static void test_many_from_thread(void)
{
	struct udp u;
	udp_open(&u);
	struct many m = {.u = &u};
	sem_init(&m.issued, 0, 0);
	issue_all(&m);
	check_many(&m);
	sem_destroy(&m.issued);
	udp_close(&u);
}

/* The same, the calls made on the socket's home worker. */
static void test_many_from_worker(void)
{
	struct udp u;
	udp_open(&u);
	struct many m = {.u = &u};
	sem_init(&m.issued, 0, 0);
	T_ASSERT_OK(coil_loop_post(u.loop, coil_channel_worker(u.s), issue_all,
				   &m));
	while (sem_wait(&m.issued))
		;
	check_many(&m);
	sem_destroy(&m.issued);
	udp_close(&u);
}

/* Aborting a queued receive (the middle one) takes it out of the queue: the
 * next datagrams go to the first and the third, nothing is lost. */
static void abort_middle(void *arg)
{
	struct many *m = arg;
	m->ip[0] = coil_socket_recvfrom(m->u->s, 2048);
	m->ip[1] = coil_socket_recvfrom(m->u->s, 2048);
	m->ip[2] = coil_socket_recvfrom(m->u->s, 2048);
	/* On the home worker the abort of a queued receive is immediate. */
	CU_ASSERT_EQUAL(coil_ip_abort(m->ip[1]), 0);
	CU_ASSERT_EQUAL(coil_ip_state(m->ip[1]), COIL_IP_FAILED);
	sem_post(&m->issued);
}

static void test_abort_middle(void)
{
	struct udp u;
	udp_open(&u);
	for (int on_worker = 0; on_worker < 2; on_worker++) {
		struct many m = {.u = &u};
		sem_init(&m.issued, 0, 0);
		if (on_worker) {
			T_ASSERT_OK(coil_loop_post(u.loop, 0, abort_middle, &m));
			while (sem_wait(&m.issued))
				;
		} else {
			for (int i = 0; i < 3; i++)
				m.ip[i] = coil_socket_recvfrom(u.s, 2048);
			CU_ASSERT_EQUAL(coil_ip_abort(m.ip[1]), 0);
		}
		T_ASSERT_OK(t_wait(m.ip[1]));
		CU_ASSERT_EQUAL(coil_ip_error(m.ip[1]), -ECANCELED);
		send_dg(&u, 1);
		send_dg(&u, 2);
		CU_ASSERT_EQUAL(got(m.ip[0]), 1);
		CU_ASSERT_EQUAL(got(m.ip[2]), 2);
		/* And the head aborted while waiting: the next one takes over. */
		coil_ip_t *h = coil_socket_recvfrom(u.s, 2048);
		coil_ip_t *n = coil_socket_recvfrom(u.s, 2048);
		CU_ASSERT_EQUAL(coil_ip_abort(h), 0);
		T_ASSERT_OK(t_wait(h));
		send_dg(&u, 3);
		int gh = coil_ip_error(h) ? -1 : dg_index(coil_ip_ptr(h));
		if (gh != 3) /* unless the abort lost the race to dg3 */
			CU_ASSERT_EQUAL(got(n), 3);
		for (int i = 0; i < 3; i++)
			coil_ip_unref(m.ip[i]);
		coil_ip_unref(h);
		coil_ip_unref(n);
		sem_destroy(&m.issued);
	}
	udp_close(&u);
}

/* recvfrom and recvfrom_many queued together are served in call order:
 * what they get, in call order, is the datagrams in the order sent. */
static void test_mixed_with_many(void)
{
	struct udp u;
	udp_open(&u);
	for (int round = 0; round < 10; round++) {
		coil_ip_t *r1 = coil_socket_recvfrom(u.s, 2048);
		coil_ip_t *m = coil_socket_recvfrom_many(u.s, 8, 2048);
		coil_ip_t *r3 = coil_socket_recvfrom(u.s, 2048);
		CU_ASSERT_FATAL(r1 && m && r3);
		send_dg(&u, 0);
		CU_ASSERT_EQUAL(got(r1), 0);
		CU_ASSERT_EQUAL(coil_ip_state(m), COIL_IP_PENDING);
		send_dg(&u, 1);
		send_dg(&u, 2);
		T_ASSERT_OK(t_wait(m));
		T_ASSERT_OK(coil_ip_error(m));
		coil_datagrams_t *d = coil_ip_ptr(m);
		CU_ASSERT_FATAL(d && d->count >= 1 && d->count <= 2);
		int next = 1;
		for (size_t i = 0; i < d->count; i++)
			CU_ASSERT_EQUAL(dg_index(d->dg[i]), next++);
		send_dg(&u, 3);
		CU_ASSERT_EQUAL(got(r3), next++);
		if (next < 4) { /* the batch took one: dg3 is left */
			coil_ip_t *r4 = coil_socket_recvfrom_many(u.s, 8, 2048);
			T_ASSERT_OK(t_wait(r4));
			T_ASSERT_OK(coil_ip_error(r4));
			d = coil_ip_ptr(r4);
			for (size_t i = 0; d && i < d->count; i++)
				CU_ASSERT_EQUAL(dg_index(d->dg[i]), next++);
			coil_ip_unref(r4);
		}
		CU_ASSERT_EQUAL(next, 4);
		coil_ip_unref(r1);
		coil_ip_unref(m);
		coil_ip_unref(r3);
	}
	udp_close(&u);
}

/* Non-blocking mode (usocket settimeout(0)): a receive behind one that
 * waits fails with -EAGAIN at once (nothing can be there for it), and the
 * waiting one still gets the next datagram. */
static void test_nonblocking_behind_waiting(void)
{
	struct udp u;
	udp_open(&u);
	coil_ip_t *a = coil_socket_recvfrom(u.s, 2048);
	T_ASSERT_OK(coil_socket_set_blocking(u.s, 0));
	coil_ip_t *b = coil_socket_recvfrom(u.s, 2048);
	coil_ip_t *c = coil_socket_recvfrom_many(u.s, 4, 2048);
	T_ASSERT_OK(t_wait(b));
	CU_ASSERT_EQUAL(coil_ip_error(b), -EAGAIN);
	T_ASSERT_OK(t_wait(c));
	CU_ASSERT_EQUAL(coil_ip_error(c), -EAGAIN);
	send_dg(&u, 7);
	CU_ASSERT_EQUAL(got(a), 7);
	coil_ip_unref(a);
	coil_ip_unref(b);
	coil_ip_unref(c);
	udp_close(&u);
}

/* Aborts racing datagrams: every third of 96 queued receives is aborted
 * while the datagrams arrive. What the others get, in call order, is in
 * the order sent, and nothing is lost: the rest is there for the receives
 * made afterwards. */
static void test_aborts_race_datagrams(void)
{
	enum { M = 96 }; /* well inside the default receive buffer */
	struct udp u;
	udp_open(&u);
	coil_ip_t *ip[M];
	for (int i = 0; i < M; i++)
		ip[i] = coil_socket_recvfrom(u.s, 2048);
	static unsigned char seen[M];
	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < M; i++) {
		send_dg(&u, i);
		if (i % 3 == 1)
			coil_ip_abort(ip[i]);
	}
	int last = -1, ok = 0, order_bad = 0;
	for (int i = 0; i < M; i++) {
		if (i % 3 == 1) {
			T_ASSERT_OK(t_wait(ip[i]));
		}
		int g = got(ip[i]);
		if (g >= 0) {
			if (g <= last)
				order_bad++;
			last = g;
			if (g < M)
				seen[g]++;
			ok++;
		}
		coil_ip_unref(ip[i]);
	}
	CU_ASSERT_EQUAL(order_bad, 0);
	/* What the aborted ones did not take is still there, in order. */
	while (ok < M) {
		coil_ip_t *r = coil_socket_recvfrom(u.s, 2048);
		int g = got(r);
		coil_ip_unref(r);
		CU_ASSERT_FATAL(g > last && g < M);
		last = g;
		seen[g]++;
		ok++;
	}
	for (int i = 0; i < M; i++)
		CU_ASSERT_EQUAL(seen[i], 1);
	udp_close(&u);
}

/* Closing the socket fails the waiting receives with -EBADF (the head's
 * ring receive is cancelled), none is left pending. */
static void test_close_fails_queued(void)
{
	struct udp u;
	udp_open(&u);
	coil_ip_t *ip[6];
	for (int i = 0; i < 6; i++)
		ip[i] = i == 2 ? coil_socket_recvfrom_many(u.s, 4, 2048)
			       : coil_socket_recvfrom(u.s, 2048);
	T_ASSERT_OK(coil_channel_close(u.s, 0));
	for (int i = 0; i < 6; i++) {
		T_ASSERT_OK(t_wait(ip[i]));
		CU_ASSERT_EQUAL(coil_ip_error(ip[i]), -EBADF);
		coil_ip_unref(ip[i]);
	}
	udp_close(&u);
}

/* Freeing the loop with receives queued settles them all and frees what
 * they held. */
static void test_queued_at_loop_free(void)
{
	size_t live0 = coil__alloc_live();
	struct udp u;
	udp_open(&u);
	coil_ip_t *ip[10];
	for (int i = 0; i < 10; i++)
		ip[i] = i % 3 == 1 ? coil_socket_recvfrom_many(u.s, 4, 2048)
				   : coil_socket_recvfrom(u.s, 2048);
	CU_ASSERT_EQUAL(coil_ip_abort(ip[5]), 0);
	close(u.out);
	coil_channel_release(u.s);
	T_ASSERT_OK(coil_loop_free(u.loop));
	for (int i = 0; i < 10; i++) {
		CU_ASSERT_EQUAL(coil_ip_state(ip[i]), COIL_IP_FAILED);
		coil_ip_unref(ip[i]);
	}
	size_t live = coil__alloc_live();
	if (live != live0)
		fprintf(stderr, "live allocations %zu, were %zu\n", live, live0);
	CU_ASSERT_EQUAL(live, live0);
}

static const coil_test_t tests[] = {
	{"two_in_call_order", test_two_in_call_order},
	{"many_from_thread", test_many_from_thread},
	{"many_from_worker", test_many_from_worker},
	{"abort_middle", test_abort_middle},
	{"mixed_with_many", test_mixed_with_many},
	{"nonblocking_behind_waiting", test_nonblocking_behind_waiting},
	{"aborts_race_datagrams", test_aborts_race_datagrams},
	{"close_fails_queued", test_close_fails_queued},
	{"queued_at_loop_free", test_queued_at_loop_free},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("udp_order", tests, argc, argv);
}
