/* SPDX-License-Identifier: MIT */
/* Micro-benchmarks of coil's core: InProgress settle + callback, one chain
 * step, one step of a loop written as adoption, and calls into a worker from
 * another thread, each beside a baseline measured in the same run (a plain
 * indirect call; a mutex/condvar thread hand-off). The InProgress lines also
 * give the allocations per step (coil's allocation counters).
 *
 *   micro [N]      N iterations per measurement (default 1,000,000)
 */
#include <coil.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static coil_loop_t *loop;
static long n_iter;

/* Allocation counters of the allocator seam (lib/alloc.c; static link).
 * MICRO_NO_ALLOC_COUNTERS builds against a library without them. */
#ifndef MICRO_NO_ALLOC_COUNTERS
uint64_t coil__alloc_total(void);
static uint64_t allocs(void)
{
	return coil__alloc_total();
}
#else
static uint64_t allocs(void)
{
	return 0;
}
#endif

/* ---- settle + callback, all on one worker ---- */

struct settle_ctx {
	long left;
	coil_ip_t *done;
	double t0, t1;
	uint64_t a0, a1;
};

/*
 * Each callback starts the next round: create, attach, settle, drop. Only
 * one handle is alive at a time, so this measures the steady-state cost of
 * a settle and its callback (allocation, the ready queue, the callback),
 * not page faults for a million live handles.
 */
static void on_settled(coil_ip_t *ip, void *ud);

static void settle_round(struct settle_ctx *c)
{
	coil_ip_t *ip = coil_ip_new(loop);
	coil_ip_on_done(ip, on_settled, c);
	coil_ip_finish_int(ip, c->left);
	coil_ip_unref(ip);
}

static void on_settled(coil_ip_t *ip, void *ud)
{
	struct settle_ctx *c = ud;
	if (--c->left == 0) {
		c->t1 = now_ns();
		c->a1 = allocs();
		coil_ip_finish_int(c->done, 0);
		return;
	}
	settle_round(c);
}

static void settle_task(void *arg)
{
	struct settle_ctx *c = arg;
	c->t0 = now_ns();
	c->a0 = allocs();
	settle_round(c);
}

/* ---- one chain step: a pending source, then(), settle, the callback ---- */

static coil_ip_t *chain_cb(coil_ip_t *src, void *ud);

static void chain_round(struct settle_ctx *c)
{
	coil_ip_t *ip = coil_ip_new(loop);
	coil_ip_t *chained = coil_ip_then(coil_ip_ref(ip), chain_cb, NULL, c);
	coil_ip_finish_int(ip, c->left);
	coil_ip_unref(ip);
	coil_ip_unref(chained);
}

static coil_ip_t *chain_cb(coil_ip_t *src, void *ud)
{
	struct settle_ctx *c = ud;
	if (--c->left == 0) {
		c->t1 = now_ns();
		c->a1 = allocs();
		coil_ip_finish_int(c->done, 0);
	} else {
		chain_round(c);
	}
	return NULL; /* the chained handle takes src's outcome */
}

static void chain_task(void *arg)
{
	struct settle_ctx *c = arg;
	c->t0 = now_ns();
	c->a0 = allocs();
	chain_round(c);
}

static void adopt_finished(coil_ip_t *ip, void *ud)
{
	struct settle_ctx *c = ud;
	coil_ip_finish_int(c->done, 0);
}

/* ---- one step of a loop written as adoption: each callback makes the next
 * piece of work (settled at once, so its callback runs next turn), chains
 * the next step on it and returns that chained handle ---- */

static coil_ip_t *adopt_step(coil_ip_t *src, void *ud)
{
	struct settle_ctx *c = ud;
	if (--c->left == 0) {
		c->t1 = now_ns();
		c->a1 = allocs();
		return NULL;
	}
	coil_ip_t *work = coil_ip_new(loop);
	coil_ip_t *next = coil_ip_then(coil_ip_ref(work), adopt_step, NULL, c);
	coil_ip_finish_int(work, c->left);
	coil_ip_unref(work);
	return next;
}

static void adopt_task(void *arg)
{
	struct settle_ctx *c = arg;
	c->t0 = now_ns();
	c->a0 = allocs();
	coil_ip_t *work = coil_ip_new(loop);
	coil_ip_t *p = coil_ip_then(coil_ip_ref(work), adopt_step, NULL, c);
	coil_ip_finish_int(work, 0);
	coil_ip_unref(work);
	/* The whole loop settles p once; done follows it. */
	coil_ip_t *d = coil_ip_then(p, NULL, NULL, NULL);
	coil_ip_on_done(d, adopt_finished, c);
	coil_ip_unref(d);
}

/* The baseline: the same number of indirect calls through a pointer. */
static void (*volatile baseline_fn)(long *);
static void bump(long *x)
{
	(*x)++;
}

/* ---- cross-thread calls ---- */

struct post_ctx {
	_Atomic long left;
	coil_ip_t *done;
};

static void post_task(void *arg)
{
	struct post_ctx *c = arg;
	if (atomic_fetch_sub(&c->left, 1) == 1)
		coil_ip_finish_int(c->done, 0);
}

static void rtt_task(void *arg)
{
	coil_ip_finish_int(arg, 0);
}

/* Baseline hand-off: mutex + condvar ping-pong between two threads. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long turn;

static void *ponger(void *arg)
{
	long n = *(long *)arg;
	for (long i = 0; i < n; i++) {
		pthread_mutex_lock(&mu);
		while (turn != 1)
			pthread_cond_wait(&cv, &mu);
		turn = 0;
		pthread_cond_signal(&cv);
		pthread_mutex_unlock(&mu);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	n_iter = argc > 1 ? atol(argv[1]) : 1000000;
	if (n_iter <= 0)
		n_iter = 1000000;
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "micro: %s\n", coil_strerror(rc));
		return 1;
	}
	printf("# coil micro-benchmarks, %ld iterations each (bench/micro.c)\n",
	       n_iter);

	/* 1. settle + callback */
	struct settle_ctx sc = {.left = n_iter, .done = coil_ip_new(loop)};
	coil_loop_post(loop, 0, settle_task, &sc);
	coil_ip_wait(sc.done, -1);
	coil_ip_unref(sc.done);
	double settle = (sc.t1 - sc.t0) / (double)n_iter;
	long x = 0;
	baseline_fn = bump;
	double b0 = now_ns();
	for (long i = 0; i < n_iter; i++)
		baseline_fn(&x);
	double call = (now_ns() - b0) / (double)n_iter;
	printf("ip_new+on_done+finish+callback  %8.1f ns/op   (indirect call "
	       "baseline %.1f ns; %.2f allocations/op)\n", settle, call,
	       (double)(sc.a1 - sc.a0) / (double)n_iter);

	/* 1b. one chain step */
	struct settle_ctx cc = {.left = n_iter, .done = coil_ip_new(loop)};
	coil_loop_post(loop, 0, chain_task, &cc);
	coil_ip_wait(cc.done, -1);
	coil_ip_unref(cc.done);
	printf("chain step (new+then+finish+cb) %8.1f ns/op   (%.2f "
	       "allocations/op)\n", (cc.t1 - cc.t0) / (double)n_iter,
	       (double)(cc.a1 - cc.a0) / (double)n_iter);

	/* 1c. one adoption-loop step */
	struct settle_ctx ac = {.left = n_iter, .done = coil_ip_new(loop)};
	coil_loop_post(loop, 0, adopt_task, &ac);
	coil_ip_wait(ac.done, -1);
	coil_ip_unref(ac.done);
	printf("adoption loop step              %8.1f ns/op   (%.2f "
	       "allocations/op: the work and the chained handle)\n",
	       (ac.t1 - ac.t0) / (double)n_iter,
	       (double)(ac.a1 - ac.a0) / (double)n_iter);

	/* 2. cross-thread posts, pipelined (throughput) */
	struct post_ctx pc = {.left = n_iter, .done = coil_ip_new(loop)};
	double p0 = now_ns();
	for (long i = 0; i < n_iter; i++)
		while (coil_loop_post(loop, 0, post_task, &pc) == -ENOMEM)
			;
	coil_ip_wait(pc.done, -1);
	double post = (now_ns() - p0) / (double)n_iter;
	coil_ip_unref(pc.done);

	/* 3. cross-thread round trip: post, worker settles, caller wakes */
	long rtt_n = n_iter / 20 > 0 ? n_iter / 20 : 1;
	double r0 = now_ns();
	for (long i = 0; i < rtt_n; i++) {
		coil_ip_t *ip = coil_ip_new(loop);
		coil_loop_post(loop, 0, rtt_task, ip);
		coil_ip_wait(ip, -1);
		coil_ip_unref(ip);
	}
	double rtt = (now_ns() - r0) / (double)rtt_n;
	pthread_t th;
	turn = 0;
	pthread_create(&th, NULL, ponger, &rtt_n);
	double m0 = now_ns();
	for (long i = 0; i < rtt_n; i++) {
		pthread_mutex_lock(&mu);
		turn = 1;
		pthread_cond_signal(&cv);
		while (turn != 0)
			pthread_cond_wait(&cv, &mu);
		pthread_mutex_unlock(&mu);
	}
	double mrtt = (now_ns() - m0) / (double)rtt_n;
	pthread_join(th, NULL);
	printf("cross-thread post (pipelined)   %8.1f ns/op\n", post);
	printf("cross-thread round trip         %8.1f ns/op   (mutex+condvar "
	       "ping-pong baseline %.1f ns, ratio %.2f)\n", rtt, mrtt, rtt / mrtt);
	coil_loop_free(loop);
	return 0;
}
