/* SPDX-License-Identifier: MIT */
/* Tests for coil_ip: settle, chaining and adoption, error skipping, abort
 * races, timeouts, all/any, wait from foreign threads, unobserved failures. */
#include "helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static coil_loop_t *L;

/* Allocation counters of the allocator seam (lib/alloc.c, static link). */
size_t coil__alloc_live(void);
uint64_t coil__alloc_total(void);

/* Waits (at most 10 s) until coil's live allocations come back to `want`:
 * workers drop their last references a moment after a wait returns. */
static size_t live_settles_to(size_t want)
{
	size_t live = coil__alloc_live();
	for (int i = 0; i < 10000 && live != want; i++) {
		usleep(1000);
		live = coil__alloc_live();
	}
	return live;
}

/* ---- settle and getters ---- */

static void test_settle_once(void)
{
	coil_ip_t *ip = coil_ip_new(L);
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_PENDING);
	CU_ASSERT_EQUAL(coil_ip_int(ip), 0);
	T_ASSERT_OK(coil_ip_finish_int(ip, 42));
	CU_ASSERT_EQUAL(coil_ip_finish_int(ip, 43), -EALREADY);
	CU_ASSERT_EQUAL(coil_ip_fail(ip, -EIO, "x"), -EALREADY);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FINISHED);
	CU_ASSERT_EQUAL(coil_ip_int(ip), 42);
	CU_ASSERT_EQUAL(coil_ip_error(ip), 0);
	CU_ASSERT_STRING_EQUAL(coil_ip_message(ip), "");
	CU_ASSERT_EQUAL(coil_ip_abort(ip), -EALREADY);
	coil_ip_unref(ip);

	ip = coil_ip_new(L);
	CU_ASSERT_EQUAL(coil_ip_fail(ip, 5, "positive"), -EINVAL);
	T_ASSERT_OK(coil_ip_fail(ip, -ECONNREFUSED, "connect %s", "x:1"));
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FAILED);
	CU_ASSERT_EQUAL(coil_ip_error(ip), -ECONNREFUSED);
	CU_ASSERT_STRING_EQUAL(coil_ip_message(ip), "connect x:1");
	coil_ip_unref(ip);

	/* Bytes are owned by the handle until stolen. */
	ip = coil_ip_new(L);
	char *buf = malloc(5);
	memcpy(buf, "hello", 5);
	T_ASSERT_OK(coil_ip_finish_bytes(ip, buf, 5, free));
	T_ASSERT_OK(t_wait(ip));
	size_t len = 0;
	const char *b = coil_ip_bytes(ip, &len);
	CU_ASSERT_EQUAL(len, 5);
	CU_ASSERT_EQUAL(memcmp(b, "hello", 5), 0);
	char *mine = coil_ip_steal_bytes(ip, &len);
	CU_ASSERT_PTR_EQUAL(mine, buf);
	CU_ASSERT_PTR_NULL(coil_ip_bytes(ip, NULL));
	coil_ip_unref(ip);
	free(mine);
	CU_ASSERT_STRING_EQUAL(coil_strerror(COIL_EOF), "end of stream");
	CU_ASSERT_STRING_EQUAL(coil_strerror(-ENOENT), "No such file or directory");
}

/* ---- callbacks ---- */

struct rec {
	_Atomic int ok, err, done;
	_Atomic int on_worker;
	_Atomic int order[8];
	_Atomic int norder;
	int64_t last;
	int last_err;
};

static coil_ip_t *rec_ok(coil_ip_t *src, void *ud)
{
	struct rec *r = ud;
	r->last = coil_ip_int(src);
	if (coil_loop_current_worker(L) >= 0)
		atomic_fetch_add(&r->on_worker, 1);
	atomic_fetch_add(&r->ok, 1);
	return NULL;
}

static coil_ip_t *rec_err(coil_ip_t *src, void *ud)
{
	struct rec *r = ud;
	r->last_err = coil_ip_error(src);
	atomic_fetch_add(&r->err, 1);
	return NULL;
}

static void rec_done(coil_ip_t *src, void *ud)
{
	struct rec *r = ud;
	int i = atomic_fetch_add(&r->norder, 1);
	if (i < 8)
		r->order[i] = atomic_fetch_add(&r->done, 1);
}

static void test_then_runs_once_on_worker(void)
{
	struct rec r = {0};
	coil_ip_t *ip = coil_ip_new(L);
	coil_ip_t *c = coil_ip_then(coil_ip_ref(ip), rec_ok, rec_err, &r);
	CU_ASSERT_EQUAL(atomic_load(&r.ok), 0);
	coil_ip_finish_int(ip, 7);
	T_ASSERT_OK(t_wait(c));
	CU_ASSERT_EQUAL(atomic_load(&r.ok), 1);
	CU_ASSERT_EQUAL(atomic_load(&r.err), 0);
	CU_ASSERT_EQUAL(atomic_load(&r.on_worker), 1);
	CU_ASSERT_EQUAL(r.last, 7);
	/* NULL from the callback passes the outcome through. */
	CU_ASSERT_EQUAL(coil_ip_int(c), 7);
	coil_ip_unref(c);
	coil_ip_unref(ip);
}

/* Attached after settling, from a worker: runs at once, inside then(). */
struct late_ctx {
	coil_ip_t *done;
	struct rec r;
	int ran_inside;
};

static void late_task(void *arg)
{
	struct late_ctx *c = arg;
	coil_ip_t *ip = coil_ip_new_int(L, 3);
	coil_ip_t *x = coil_ip_then(ip, rec_ok, NULL, &c->r);
	c->ran_inside = atomic_load(&c->r.ok);
	coil_ip_unref(x);
	coil_ip_finish_int(c->done, 0);
}

static void test_late_callback_runs_at_once(void)
{
	struct late_ctx c = {.done = coil_ip_new(L)};
	T_ASSERT_OK(coil_loop_post(L, 0, late_task, &c));
	T_ASSERT_OK(t_wait(c.done));
	CU_ASSERT_EQUAL(c.ran_inside, 1);
	CU_ASSERT_EQUAL(c.r.last, 3);
	coil_ip_unref(c.done);

	/* From a foreign thread it runs on the home worker, once. */
	struct rec r = {0};
	coil_ip_t *x = coil_ip_then(coil_ip_new_int(L, 9), rec_ok, NULL, &r);
	T_ASSERT_OK(t_wait(x));
	CU_ASSERT_EQUAL(atomic_load(&r.ok), 1);
	CU_ASSERT_EQUAL(atomic_load(&r.on_worker), 1);
	coil_ip_unref(x);
}

/* Callbacks run in the order they were attached. */
static void test_callback_order(void)
{
	struct rec r = {0};
	coil_ip_t *ip = coil_ip_new(L);
	for (int i = 0; i < 5; i++)
		T_ASSERT_OK(coil_ip_on_done(ip, rec_done, &r));
	coil_ip_finish_int(ip, 1);
	coil_ip_t *tail = coil_ip_then(coil_ip_ref(ip), NULL, NULL, NULL);
	T_ASSERT_OK(t_wait(tail));
	for (int i = 0; i < 100 && atomic_load(&r.done) < 5; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&r.done), 5);
	for (int i = 0; i < 5; i++)
		CU_ASSERT_EQUAL(r.order[i], i);
	coil_ip_unref(tail);
	coil_ip_unref(ip);
}

/* A callback that returns a pending handle: the chain adopts it. */
static coil_ip_t *step_sleep(coil_ip_t *src, void *ud)
{
	_Atomic int *steps = ud;
	atomic_fetch_add(steps, 1);
	return coil_sleep(coil_ip_loop(src), 20);
}

static coil_ip_t *step_value(coil_ip_t *src, void *ud)
{
	_Atomic int *steps = ud;
	atomic_fetch_add(steps, 1);
	return coil_ip_new_int(coil_ip_loop(src), 100 + atomic_load(steps));
}

static void test_adopt_pending(void)
{
	_Atomic int steps = 0;
	coil_ip_t *p = coil_ip_new_int(L, 1);
	p = coil_ip_then(p, step_sleep, NULL, &steps);
	p = coil_ip_then(p, step_sleep, NULL, &steps);
	p = coil_ip_then(p, step_value, NULL, &steps);
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	T_ASSERT_OK(t_wait(p));
	CU_ASSERT_EQUAL(atomic_load(&steps), 3);
	CU_ASSERT_EQUAL(coil_ip_state(p), COIL_IP_FINISHED);
	CU_ASSERT_EQUAL(coil_ip_int(p), 103);
	coil_ip_unref(p);
}

/* An error skips every on_ok to the first on_err; that handler can recover. */
static coil_ip_t *must_not_run(coil_ip_t *src, void *ud)
{
	_Atomic int *bad = ud;
	atomic_fetch_add(bad, 1);
	return NULL;
}

static coil_ip_t *recover(coil_ip_t *src, void *ud)
{
	int *seen = ud;
	*seen = coil_ip_error(src);
	return coil_ip_new_int(coil_ip_loop(src), 77);
}

static coil_ip_t *fail_step(coil_ip_t *src, void *ud)
{
	return coil_ip_new_error(coil_ip_loop(src), -EPIPE, "broken at %d", 2);
}

static void test_error_skips_to_handler(void)
{
	_Atomic int bad = 0;
	int seen = 0;
	coil_ip_t *p = coil_ip_new_int(L, 1);
	p = coil_ip_then(p, fail_step, NULL, NULL);
	p = coil_ip_then(p, must_not_run, NULL, &bad);
	p = coil_ip_then(p, must_not_run, NULL, &bad);
	p = coil_ip_catch(p, recover, &seen);
	p = coil_ip_then(p, step_value, NULL, &bad);
	T_ASSERT_OK(t_wait(p));
	CU_ASSERT_EQUAL(seen, -EPIPE);
	CU_ASSERT_EQUAL(atomic_load(&bad), 1); /* only the step after recover */
	CU_ASSERT_EQUAL(coil_ip_state(p), COIL_IP_FINISHED);
	coil_ip_unref(p);

	/* Without a handler, the end of the chain carries the error and its
	 * message. */
	p = coil_ip_then(coil_ip_new_int(L, 1), fail_step, NULL, NULL);
	p = coil_ip_then(p, must_not_run, NULL, &bad);
	T_ASSERT_OK(t_wait(p));
	CU_ASSERT_EQUAL(coil_ip_error(p), -EPIPE);
	CU_ASSERT_STRING_EQUAL(coil_ip_message(p), "broken at 2");
	coil_ip_unref(p);
}

static void fin(coil_ip_t *src, void *ud)
{
	_Atomic int *n = ud;
	atomic_fetch_add(n, 1);
}

static void test_finally(void)
{
	_Atomic int n = 0;
	coil_ip_t *a = coil_ip_finally(coil_ip_new_int(L, 5), fin, &n);
	coil_ip_t *b = coil_ip_finally(coil_ip_new_error(L, -EIO, NULL), fin, &n);
	T_ASSERT_OK(t_wait(a));
	T_ASSERT_OK(t_wait(b));
	CU_ASSERT_EQUAL(atomic_load(&n), 2);
	CU_ASSERT_EQUAL(coil_ip_int(a), 5);
	CU_ASSERT_EQUAL(coil_ip_error(b), -EIO);
	CU_ASSERT_STRING_EQUAL(coil_ip_message(b), "Input/output error");
	coil_ip_unref(a);
	coil_ip_unref(b);
	CU_ASSERT_PTR_NULL(coil_ip_then(NULL, NULL, NULL, NULL));
}

/* ---- abort ---- */

static int hook_calls;
static int async_hook(coil_ip_t *ip, void *arg)
{
	hook_calls++;
	return 1; /* we settle it ourselves later */
}

static void test_abort(void)
{
	coil_ip_t *ip = coil_ip_new(L);
	T_ASSERT_OK(coil_ip_abort(ip));
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -ECANCELED);
	CU_ASSERT_EQUAL(coil_ip_abort(ip), -EALREADY);
	coil_ip_unref(ip);

	/* Abort of a sleep cancels its timer on the ring. */
	ip = coil_sleep(L, 60000);
	T_ASSERT_OK(coil_ip_abort(ip));
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -ECANCELED);
	coil_ip_unref(ip);
}

struct hook_ctx {
	coil_ip_t *ip;
	coil_ip_t *done;
	int abort_rc;
};

static void hook_task(void *arg)
{
	struct hook_ctx *h = arg;
	/* Created here, so this worker is its home and the abort runs the
	 * hook synchronously. */
	h->ip = coil_ip_new(L);
	coil_ip_set_abort(h->ip, async_hook, NULL);
	h->abort_rc = coil_ip_abort(h->ip);
	/* The hook said "I settle it": it is still pending, and the real
	 * outcome wins. */
	CU_ASSERT_EQUAL(coil_ip_state(h->ip), COIL_IP_PENDING);
	coil_ip_finish_int(h->ip, 11);
	coil_ip_finish_int(h->done, 0);
}

static void test_abort_hook_reports_real_outcome(void)
{
	struct hook_ctx h = {.done = coil_ip_new(L)};
	hook_calls = 0;
	T_ASSERT_OK(coil_loop_post(L, 0, hook_task, &h));
	T_ASSERT_OK(t_wait(h.done));
	T_ASSERT_OK(t_wait(h.ip));
	CU_ASSERT_EQUAL(hook_calls, 1);
	CU_ASSERT_EQUAL(coil_ip_state(h.ip), COIL_IP_FINISHED);
	CU_ASSERT_EQUAL(coil_ip_int(h.ip), 11);
	coil_ip_unref(h.ip);
	coil_ip_unref(h.done);
}

/* Abort racing with completion, from a foreign thread: each handle ends
 * exactly one way, and never hangs. */
static void test_abort_race(void)
{
	int finished = 0, cancelled = 0;
	for (int i = 0; i < 300; i++) {
		coil_ip_t *ip = coil_sleep(L, (unsigned)(i % 3));
		if (i % 2)
			usleep((useconds_t)(i % 7) * 100);
		int rc = coil_ip_abort(ip);
		CU_ASSERT(rc == 0 || rc == -EALREADY);
		T_ASSERT_OK(t_wait(ip));
		if (coil_ip_state(ip) == COIL_IP_FINISHED)
			finished++;
		else if (coil_ip_error(ip) == -ECANCELED)
			cancelled++;
		coil_ip_unref(ip);
	}
	CU_ASSERT_EQUAL(finished + cancelled, 300);
	CU_ASSERT(cancelled > 0);
}

/* ---- timeout ---- */

static void test_timeout(void)
{
	/* Expires: the timeout fails, the original stays pending. */
	coil_ip_t *orig = coil_sleep(L, 60000);
	coil_ip_t *t = coil_ip_timeout(coil_ip_ref(orig), 20, 0);
	T_ASSERT_OK(t_wait(t));
	CU_ASSERT_EQUAL(coil_ip_error(t), -ETIMEDOUT);
	CU_ASSERT_EQUAL(coil_ip_state(orig), COIL_IP_PENDING);
	coil_ip_abort(orig);
	T_ASSERT_OK(t_wait(orig));
	coil_ip_unref(orig);
	coil_ip_unref(t);

	/* Expires with abort: the original is aborted too. */
	orig = coil_sleep(L, 60000);
	t = coil_ip_timeout(coil_ip_ref(orig), 20, 1);
	T_ASSERT_OK(t_wait(t));
	CU_ASSERT_EQUAL(coil_ip_error(t), -ETIMEDOUT);
	T_ASSERT_OK(t_wait(orig));
	CU_ASSERT_EQUAL(coil_ip_error(orig), -ECANCELED);
	coil_ip_unref(orig);
	coil_ip_unref(t);

	/* Does not expire: mirrors the value, and the timer is cancelled
	 * (loop free would otherwise wait; valgrind/ASan see no leak). */
	t = coil_ip_timeout(coil_ip_new_int(L, 5), 60000, 1);
	T_ASSERT_OK(t_wait(t));
	CU_ASSERT_EQUAL(coil_ip_int(t), 5);
	coil_ip_unref(t);

	/* Mirrors failures too. */
	t = coil_ip_timeout(coil_ip_new_error(L, -EIO, "disk"), 60000, 0);
	T_ASSERT_OK(t_wait(t));
	CU_ASSERT_EQUAL(coil_ip_error(t), -EIO);
	CU_ASSERT_STRING_EQUAL(coil_ip_message(t), "disk");
	coil_ip_unref(t);
}

/* ---- all / any ---- */

static void test_all_any(void)
{
	coil_ip_t *m[4];
	m[0] = coil_ip_new_int(L, 1);                 /* already settled */
	m[1] = coil_ip_new_error(L, -EIO, "bad");     /* already failed */
	m[2] = coil_sleep(L, 30);
	m[3] = coil_ip_new(L);
	coil_ip_t *all = coil_ip_all(L, m, 4);
	coil_ip_t *any = coil_ip_any(L, m, 4);
	T_ASSERT_OK(t_wait(any));
	/* m[0] settled first (it was settled before any was made). */
	CU_ASSERT_EQUAL(coil_ip_int(any), 0);
	CU_ASSERT_PTR_EQUAL(coil_ip_ptr(any), m[0]);
	CU_ASSERT_EQUAL(coil_ip_state(any), COIL_IP_FINISHED);
	CU_ASSERT_EQUAL(coil_ip_wait(all, 100), -ETIMEDOUT);
	coil_ip_fail(m[3], -EPIPE, NULL);
	T_ASSERT_OK(t_wait(all));
	/* A failed member does not fail all. */
	CU_ASSERT_EQUAL(coil_ip_state(all), COIL_IP_FINISHED);
	CU_ASSERT_EQUAL(coil_ip_int(all), 4);
	coil_ip_error(m[1]);
	coil_ip_error(m[3]);
	for (int i = 0; i < 4; i++)
		coil_ip_unref(m[i]);
	coil_ip_unref(all);
	coil_ip_unref(any);

	/* any takes the outcome of the first, failure included. */
	coil_ip_t *n[2] = {coil_sleep(L, 60000), coil_ip_new(L)};
	any = coil_ip_any(L, n, 2);
	coil_ip_fail(n[1], -ECONNRESET, "reset");
	T_ASSERT_OK(t_wait(any));
	CU_ASSERT_EQUAL(coil_ip_int(any), 1);
	CU_ASSERT_EQUAL(coil_ip_error(any), -ECONNRESET);
	CU_ASSERT_STRING_EQUAL(coil_ip_message(any), "reset");
	coil_ip_abort(n[0]);
	t_wait(n[0]);
	coil_ip_unref(n[0]);
	coil_ip_unref(n[1]);
	coil_ip_unref(any);

	/* Empty groups. */
	all = coil_ip_all(L, NULL, 0);
	any = coil_ip_any(L, NULL, 0);
	T_ASSERT_OK(t_wait(all));
	T_ASSERT_OK(t_wait(any));
	CU_ASSERT_EQUAL(coil_ip_int(all), 0);
	CU_ASSERT_EQUAL(coil_ip_error(any), -EINVAL);
	coil_ip_unref(all);
	coil_ip_unref(any);
}

/* ---- wait and foreign threads ---- */

struct waiter {
	coil_ip_t *ip;
	int rc;
	int64_t v;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;
	w->rc = coil_ip_wait(w->ip, 10000);
	w->v = coil_ip_int(w->ip);
	return NULL;
}

static void test_wait_8_threads(void)
{
	coil_ip_t *ip = coil_ip_new(L);
	pthread_t th[8];
	struct waiter w[8];
	for (int i = 0; i < 8; i++) {
		w[i] = (struct waiter){.ip = ip, .rc = 1};
		pthread_create(&th[i], NULL, wait_thread, &w[i]);
	}
	usleep(20000);
	/* Settle from yet another foreign thread (this one). */
	T_ASSERT_OK(coil_ip_finish_int(ip, 99));
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		CU_ASSERT_EQUAL(w[i].rc, 0);
		CU_ASSERT_EQUAL(w[i].v, 99);
	}
	coil_ip_unref(ip);

	/* A wait that times out leaves the handle pending. */
	ip = coil_ip_new(L);
	CU_ASSERT_EQUAL(coil_ip_wait(ip, 30), -ETIMEDOUT);
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_PENDING);
	coil_ip_abort(ip);
	t_wait(ip);
	coil_ip_unref(ip);
}

/* Settle from 8 foreign threads racing: exactly one wins. */
struct racer {
	coil_ip_t *ip;
	int64_t id;
	int rc;
};

static void *settle_thread(void *arg)
{
	struct racer *r = arg;
	r->rc = coil_ip_finish_int(r->ip, r->id);
	return NULL;
}

static void test_settle_race_foreign(void)
{
	for (int round = 0; round < 50; round++) {
		coil_ip_t *ip = coil_ip_new(L);
		struct rec rr = {0};
		coil_ip_t *c = coil_ip_then(coil_ip_ref(ip), rec_ok, NULL, &rr);
		pthread_t th[8];
		struct racer r[8];
		for (int i = 0; i < 8; i++) {
			r[i] = (struct racer){ip, i, 1};
			pthread_create(&th[i], NULL, settle_thread, &r[i]);
		}
		int wins = 0;
		int64_t winner = -1;
		for (int i = 0; i < 8; i++) {
			pthread_join(th[i], NULL);
			if (r[i].rc == 0) {
				wins++;
				winner = r[i].id;
			} else {
				CU_ASSERT_EQUAL(r[i].rc, -EALREADY);
			}
		}
		CU_ASSERT_EQUAL(wins, 1);
		T_ASSERT_OK(t_wait(c));
		CU_ASSERT_EQUAL(atomic_load(&rr.ok), 1);
		CU_ASSERT_EQUAL(coil_ip_int(ip), winner);
		coil_ip_unref(c);
		coil_ip_unref(ip);
	}
}

struct deadlk {
	coil_ip_t *target, *out;
};

static void deadlk_task(void *arg)
{
	struct deadlk *d = arg;
	coil_ip_finish_int(d->out, coil_ip_wait(d->target, 1000));
}

static void test_wait_on_worker_is_edeadlk(void)
{
	struct deadlk d = {coil_ip_new(L), coil_ip_new(L)};
	T_ASSERT_OK(coil_loop_post(L, 1, deadlk_task, &d));
	T_ASSERT_OK(t_wait(d.out));
	CU_ASSERT_EQUAL(coil_ip_int(d.out), -EDEADLK);
	CU_ASSERT_EQUAL(coil_ip_state(d.target), COIL_IP_PENDING);
	coil_ip_abort(d.target);
	t_wait(d.target);
	coil_ip_unref(d.target);
	coil_ip_unref(d.out);
}

/* ---- unobserved failures ---- */

static _Atomic int unobserved;
static _Atomic int unobserved_err;

static void count_unobserved(int err, const char *msg, void *ud)
{
	atomic_store(&unobserved_err, err);
	atomic_fetch_add(&unobserved, 1);
}

static void test_unobserved_failure_reported(void)
{
	coil_set_unobserved_handler(count_unobserved, NULL);
	atomic_store(&unobserved, 0);
	coil_ip_t *ip = coil_ip_new_error(L, -EPROTO, "nobody looked");
	coil_ip_wait(ip, 1000); /* wait observes: take it back */
	coil_ip_unref(ip);
	CU_ASSERT_EQUAL(atomic_load(&unobserved), 0);

	ip = coil_ip_new(L);
	coil_ip_fail(ip, -EPROTO, "nobody looked");
	coil_ip_unref(ip);
	/* The last reference may be dropped on the worker: wait for it. */
	for (int i = 0; i < 5000 && !atomic_load(&unobserved); i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&unobserved), 1);
	CU_ASSERT_EQUAL(atomic_load(&unobserved_err), -EPROTO);

	/* A chain reports once, at its end, not at every link. */
	atomic_store(&unobserved, 0);
	coil_ip_t *p = coil_ip_then(coil_ip_new_error(L, -EIO, NULL), NULL,
				    NULL, NULL);
	coil_ip_unref(p);
	for (int i = 0; i < 5000 && !atomic_load(&unobserved); i++)
		usleep(1000);
	usleep(20000); /* a second report would show up by now */
	CU_ASSERT_EQUAL(atomic_load(&unobserved), 1);
	/* Aborts are deliberate and not reported. */
	atomic_store(&unobserved, 0);
	ip = coil_ip_new(L);
	coil_ip_abort(ip);
	coil_ip_unref(ip);
	usleep(20000);
	CU_ASSERT_EQUAL(atomic_load(&unobserved), 0);
	coil_set_unobserved_handler(NULL, NULL);
}

/* A long synchronous chain does not recurse or starve: 100k links. */
static coil_ip_t *inc(coil_ip_t *src, void *ud)
{
	return coil_ip_new_int(coil_ip_loop(src), coil_ip_int(src) + 1);
}

static void test_long_chain(void)
{
	coil_ip_t *p = coil_ip_new(L);
	coil_ip_t *head = coil_ip_ref(p);
	for (int i = 0; i < 100000; i++)
		p = coil_ip_then(p, inc, NULL, NULL);
	coil_ip_finish_int(head, 0);
	coil_ip_unref(head);
	T_ASSERT_OK(coil_ip_wait(p, 60000));
	CU_ASSERT_EQUAL(coil_ip_int(p), 100000);
	coil_ip_unref(p);
}

static void test_sleep(void)
{
	coil_ip_t *ip = coil_sleep(L, 30);
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_PENDING);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FINISHED);
	coil_ip_unref(ip);
}

/* The counters see allocations made on any thread, and frees on another
 * thread than the allocation's. */
static void *unref_thread(void *arg)
{
	coil_ip_t **ips = arg;
	for (int i = 0; i < 100; i++)
		coil_ip_unref(ips[i]);
	return NULL;
}

static void test_alloc_counters(void)
{
	size_t base = live_settles_to(coil__alloc_live());
	uint64_t total = coil__alloc_total();
	coil_ip_t *ips[100];
	for (int i = 0; i < 100; i++) {
		ips[i] = coil_ip_new(L);
		T_ASSERT_OK(coil_ip_finish_int(ips[i], i));
	}
	CU_ASSERT(coil__alloc_live() >= base + 100);
	CU_ASSERT(coil__alloc_total() >= total + 100);
	for (int i = 0; i < 100; i++)
		T_ASSERT_OK(t_wait(ips[i]));
	pthread_t th;
	CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, unref_thread, ips), 0);
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(live_settles_to(base), base);
	CU_ASSERT(coil__alloc_total() >= total + 100);
}

static const coil_test_t tests[] = {
	{"alloc_counters", test_alloc_counters},
	{"settle_once", test_settle_once},
	{"then_runs_once_on_worker", test_then_runs_once_on_worker},
	{"late_callback_runs_at_once", test_late_callback_runs_at_once},
	{"callback_order", test_callback_order},
	{"adopt_pending", test_adopt_pending},
	{"error_skips_to_handler", test_error_skips_to_handler},
	{"finally", test_finally},
	{"abort", test_abort},
	{"abort_hook_reports_real_outcome", test_abort_hook_reports_real_outcome},
	{"abort_race", test_abort_race},
	{"timeout", test_timeout},
	{"all_any", test_all_any},
	{"wait_8_threads", test_wait_8_threads},
	{"settle_race_foreign", test_settle_race_foreign},
	{"wait_on_worker_is_edeadlk", test_wait_on_worker_is_edeadlk},
	{"unobserved_failure_reported", test_unobserved_failure_reported},
	{"long_chain", test_long_chain},
	{"sleep", test_sleep},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	L = t_loop(2);
	int rc = coil_test_main("inprogress", tests, argc, argv);
	coil_loop_free(L);
	return rc;
}
