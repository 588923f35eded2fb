/* SPDX-License-Identifier: MIT */
/* coil_ip: the promise. Settling, chaining with adoption, abort, timeouts,
 * all/any, and wait from ordinary threads. */
#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/*
 * Threading model. A handle's callback list and the ready queue are touched
 * only on its home worker. Settling claims the handle with an atomic flag
 * (so a second settle from any thread reports -EALREADY), writes the outcome,
 * then *publishes* it on the home worker: stores the state (release), wakes
 * waiters blocked in coil_ip_wait (futex on the state word) and queues the
 * callbacks. A settle from another thread forwards the publish through the
 * worker inbox. Callbacks are never run recursively from a settle: they are
 * queued on the worker's ready list and run in order by the loop, with a
 * budget per turn; only a callback attached to an already settled handle
 * runs at once (kaa's rule), on the home worker.
 */

enum cb_kind { CB_THEN, CB_DONE, CB_INTERNAL };

typedef struct cbnode {
	struct cbnode *next;
	coil__task task; /* forwarding an attach from a foreign thread */
	coil_ip_t *src;  /* the handle attached to (for forwarding) */
	int kind;
	union {
		struct {
			coil_then_cb ok, err;
			void *ud;
			coil_ip_t *chained; /* a reference */
		} then;
		struct {
			coil_done_cb cb;
			void *ud;
		} done;
		struct {
			void (*fn)(coil_ip_t *src, void *arg);
			void *arg;
		} internal;
	} u;
} cbnode;

struct coil_ip_s {
	_Atomic int refs;
	_Atomic int state;
	_Atomic int claimed;
	_Atomic int waiters;
	_Atomic bool observed;
	_Atomic bool publish_pending; /* settled off-home, callbacks not queued */
	coil__worker *home;
	int err;
	char *msg;      /* owned; NULL = coil_strerror(err) */
	int64_t ival;
	void *ptr;      /* pointer or bytes */
	size_t len;
	void (*free_fn)(void *);
	coil_ip_t *alias; /* outcome mirrored from another handle (a ref) */
	cbnode *cbs, **cbs_tail;
	coil_ip_t *ready_next;
	bool in_ready;
	coil_abort_cb abort_hook;
	void *abort_arg;
	coil__task publish_task;
};

static void default_unobserved(int err, const char *msg, void *ud)
{
	fprintf(stderr, "coil: unobserved failure: %s (%d)\n", msg, err);
}

static coil_unobserved_cb unobserved_cb = default_unobserved;
static void *unobserved_ud;

void coil_set_unobserved_handler(coil_unobserved_cb cb, void *ud)
{
	unobserved_cb = cb ? cb : default_unobserved;
	unobserved_ud = cb ? ud : NULL;
}

/* The handle whose value fields hold the outcome (follows a mirror). */
static inline const coil_ip_t *vsrc(const coil_ip_t *ip)
{
	return ip->alias ? ip->alias : ip;
}

coil_ip_t *coil__ip_new_on(coil__worker *w)
{
	coil_ip_t *ip = coil__calloc(1, sizeof(*ip));
	if (!ip)
		return NULL;
	atomic_init(&ip->refs, 1);
	ip->home = w;
	ip->cbs_tail = &ip->cbs;
	return ip;
}

coil_ip_t *coil_ip_new(coil_loop_t *loop)
{
	if (!loop)
		return NULL;
	return coil__ip_new_on(coil__pick_worker(loop));
}

coil__worker *coil__ip_home(const coil_ip_t *ip)
{
	return ip->home;
}

coil_loop_t *coil_ip_loop(const coil_ip_t *ip)
{
	return ip ? ip->home->loop : NULL;
}

coil_ip_t *coil_ip_ref(coil_ip_t *ip)
{
	if (ip)
		atomic_fetch_add_explicit(&ip->refs, 1, memory_order_relaxed);
	return ip;
}

static void cbnode_free(cbnode *n);

void coil_ip_unref(coil_ip_t *ip)
{
	if (!ip)
		return;
	if (atomic_fetch_sub_explicit(&ip->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (atomic_load(&ip->state) == COIL_IP_FAILED &&
	    !atomic_load(&ip->observed) && ip->err != -ECANCELED)
		unobserved_cb(ip->err, coil_ip_message(ip), unobserved_ud);
	/* A handle freed while pending never runs its callbacks; release
	 * what they hold. (Only possible for user-made handles nobody
	 * settles.) */
	cbnode *n = ip->cbs;
	while (n) {
		cbnode *next = n->next;
		cbnode_free(n);
		n = next;
	}
	if (ip->free_fn && ip->ptr)
		ip->free_fn(ip->ptr);
	coil_ip_unref(ip->alias);
	coil__free(ip->msg);
	coil__free(ip);
}

/* ---- publishing ---- */

static void futex_wake_all(_Atomic int *addr)
{
	syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
		NULL, 0);
}

/* Home worker only: make the outcome visible and queue the callbacks. */
static void publish(coil_ip_t *ip, int state)
{
	coil__worker *w = ip->home;
	/* A waiter may drop its reference the moment it sees the state: keep
	 * the handle alive until publishing is over. */
	coil_ip_ref(ip);
	atomic_store_explicit(&ip->state, state, memory_order_release);
	if (atomic_load(&ip->waiters))
		futex_wake_all(&ip->state);
	if (ip->cbs && !ip->in_ready) {
		ip->in_ready = true;
		coil_ip_ref(ip);
		ip->ready_next = NULL;
		if (w->ready_tail)
			w->ready_tail->ready_next = ip;
		else
			w->ready_head = ip;
		w->ready_tail = ip;
		w->run_ready = coil__ip_run_ready;
	}
	coil_ip_unref(ip);
}

static void publish_task_run(coil__task *t)
{
	coil_ip_t *ip = coil__container_of(t, coil_ip_t, publish_task);
	atomic_store_explicit(&ip->publish_pending, false,
			      memory_order_relaxed);
	publish(ip, atomic_load(&ip->state));
	coil_ip_unref(ip);
}

/*
 * After the claim and the outcome fields are written: publish. Off the home
 * worker, the state is stored (and waiters woken) right here, so a handle
 * that fails at once is seen failed at once from any thread; only queueing
 * the callbacks is forwarded. Until that forward runs, publish_pending makes
 * the home worker queue new callbacks behind the earlier ones instead of
 * running them at once, so attach order is kept.
 */
static void settle_claimed(coil_ip_t *ip)
{
	int st = ip->err ? COIL_IP_FAILED : COIL_IP_FINISHED;
	if (coil__on_worker(ip->home)) {
		publish(ip, st);
		return;
	}
	coil_ip_ref(ip);
	atomic_store_explicit(&ip->publish_pending, true, memory_order_relaxed);
	atomic_store_explicit(&ip->state, st, memory_order_release);
	if (atomic_load(&ip->waiters))
		futex_wake_all(&ip->state);
	ip->publish_task.run = publish_task_run;
	coil__post(ip->home, &ip->publish_task);
}

static bool claim(coil_ip_t *ip)
{
	int zero = 0;
	return ip && atomic_compare_exchange_strong(&ip->claimed, &zero, 1);
}

static int settle_value(coil_ip_t *ip, int64_t ival, void *ptr, size_t len,
			void (*free_fn)(void *))
{
	if (!claim(ip))
		return -EALREADY;
	ip->ival = ival;
	ip->ptr = ptr;
	ip->len = len;
	ip->free_fn = free_fn;
	ip->abort_hook = NULL;
	settle_claimed(ip);
	return 0;
}

int coil_ip_finish_int(coil_ip_t *ip, int64_t value)
{
	return settle_value(ip, value, NULL, 0, NULL);
}

int coil_ip_finish_ptr(coil_ip_t *ip, void *ptr, void (*free_fn)(void *))
{
	return settle_value(ip, 0, ptr, 0, free_fn);
}

int coil_ip_finish_bytes(coil_ip_t *ip, void *data, size_t len,
			 void (*free_fn)(void *))
{
	return settle_value(ip, (int64_t)len, data, len, free_fn);
}

static int fail_owned(coil_ip_t *ip, int err, char *msg)
{
	if (!claim(ip)) {
		coil__free(msg);
		return -EALREADY;
	}
	ip->err = err;
	ip->msg = msg;
	ip->abort_hook = NULL;
	settle_claimed(ip);
	return 0;
}

int coil_ip_failv(coil_ip_t *ip, int err, const char *fmt, va_list ap)
{
	if (!ip || err >= 0)
		return -EINVAL;
	char *msg = NULL;
	if (fmt) {
		va_list ap2;
		va_copy(ap2, ap);
		int n = vsnprintf(NULL, 0, fmt, ap2);
		va_end(ap2);
		if (n >= 0 && (msg = coil__malloc((size_t)n + 1)))
			vsnprintf(msg, (size_t)n + 1, fmt, ap);
	}
	return fail_owned(ip, err, msg);
}

int coil_ip_fail(coil_ip_t *ip, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int rc = coil_ip_failv(ip, err, fmt, ap);
	va_end(ap);
	return rc;
}

int coil__ip_fail_msg(coil_ip_t *ip, int err, const char *msg)
{
	if (!ip || err >= 0)
		return -EINVAL;
	return fail_owned(ip, err, msg ? coil__strdup(msg) : NULL);
}

int coil__ip_fail_bytes(coil_ip_t *ip, int err, void *data, size_t len,
			void (*free_fn)(void *))
{
	if (!claim(ip))
		return -EALREADY;
	ip->err = err;
	ip->ptr = data;
	ip->len = len;
	ip->ival = (int64_t)len;
	ip->free_fn = free_fn;
	ip->abort_hook = NULL;
	settle_claimed(ip);
	return 0;
}

/* dst takes src's outcome (src is settled). src's failure counts as
 * observed: it now lives on in dst. */
static int settle_mirror(coil_ip_t *dst, coil_ip_t *src)
{
	const coil_ip_t *root = vsrc(src);
	if (!claim(dst))
		return -EALREADY;
	atomic_store(&src->observed, true);
	dst->alias = coil_ip_ref((coil_ip_t *)root);
	dst->err = src->err;
	dst->abort_hook = NULL;
	settle_claimed(dst);
	return 0;
}

coil_ip_t *coil_ip_new_int(coil_loop_t *loop, int64_t value)
{
	coil_ip_t *ip = coil_ip_new(loop);
	if (ip)
		coil_ip_finish_int(ip, value);
	return ip;
}

coil_ip_t *coil_ip_new_error(coil_loop_t *loop, int err, const char *fmt, ...)
{
	if (err >= 0)
		return NULL;
	coil_ip_t *ip = coil_ip_new(loop);
	if (ip) {
		va_list ap;
		va_start(ap, fmt);
		coil_ip_failv(ip, err, fmt, ap);
		va_end(ap);
	}
	return ip;
}

/* ---- getters ---- */

int coil_ip_state(const coil_ip_t *ip)
{
	return ip ? atomic_load_explicit(&ip->state, memory_order_acquire)
		  : -EINVAL;
}

static bool settled(const coil_ip_t *ip)
{
	return atomic_load_explicit(&ip->state, memory_order_acquire) !=
	       COIL_IP_PENDING;
}

int64_t coil_ip_int(const coil_ip_t *ip)
{
	return ip && settled(ip) ? vsrc(ip)->ival : 0;
}

void *coil_ip_ptr(const coil_ip_t *ip)
{
	return ip && settled(ip) ? vsrc(ip)->ptr : NULL;
}

const void *coil_ip_bytes(const coil_ip_t *ip, size_t *len)
{
	if (!ip || !settled(ip)) {
		if (len)
			*len = 0;
		return NULL;
	}
	const coil_ip_t *v = vsrc(ip);
	if (len)
		*len = v->len;
	return v->ptr;
}

void *coil_ip_steal_ptr(coil_ip_t *ip)
{
	if (!ip || !settled(ip))
		return NULL;
	coil_ip_t *v = (coil_ip_t *)vsrc(ip);
	void *p = v->ptr;
	v->ptr = NULL;
	v->len = 0;
	v->free_fn = NULL;
	return p;
}

void *coil_ip_steal_bytes(coil_ip_t *ip, size_t *len)
{
	if (len)
		*len = ip && settled(ip) ? vsrc(ip)->len : 0;
	return coil_ip_steal_ptr(ip);
}

int coil_ip_error(coil_ip_t *ip)
{
	if (!ip)
		return -EINVAL;
	if (!settled(ip))
		return 0;
	atomic_store(&ip->observed, true);
	return ip->err;
}

const char *coil_ip_message(const coil_ip_t *ip)
{
	if (!ip || !settled(ip) || !ip->err)
		return "";
	const coil_ip_t *v = vsrc(ip);
	return v->msg ? v->msg : coil_strerror(ip->err);
}

/* ---- callbacks ---- */

static void cbnode_free(cbnode *n)
{
	if (n->kind == CB_THEN)
		coil_ip_unref(n->u.then.chained);
	coil__free(n);
}

/* Adopts r into dst: dst settles as r does. Consumes the reference to r. */
static void adopt(coil_ip_t *dst, coil_ip_t *r);

static void run_cb(coil_ip_t *src, cbnode *n)
{
	int st = atomic_load(&src->state);
	switch (n->kind) {
	case CB_THEN: {
		coil_ip_t *chained = n->u.then.chained;
		coil_then_cb f = st == COIL_IP_FINISHED ? n->u.then.ok
							: n->u.then.err;
		coil_ip_t *r = NULL;
		if (f) {
			if (st == COIL_IP_FAILED)
				atomic_store(&src->observed, true);
			r = f(src, n->u.then.ud);
		}
		if (r == src) {
			/* Returning the source itself means "pass it on". */
			coil_ip_unref(r);
			r = NULL;
		}
		if (r)
			adopt(chained, r);
		else
			settle_mirror(chained, src);
		break;
	}
	case CB_DONE:
		atomic_store(&src->observed, true);
		n->u.done.cb(src, n->u.done.ud);
		break;
	case CB_INTERNAL:
		n->u.internal.fn(src, n->u.internal.arg);
		break;
	}
	cbnode_free(n);
}

unsigned coil__ip_run_ready(coil__worker *w, unsigned budget)
{
	unsigned done = 0;
	while (w->ready_head && done < budget) {
		coil_ip_t *ip = w->ready_head;
		w->ready_head = ip->ready_next;
		if (!w->ready_head)
			w->ready_tail = NULL;
		/* Callbacks attached while these run see in_ready and queue
		 * behind them, so attach order is kept. */
		while (ip->cbs) {
			cbnode *n = ip->cbs;
			ip->cbs = n->next;
			if (!ip->cbs)
				ip->cbs_tail = &ip->cbs;
			run_cb(ip, n);
		}
		ip->in_ready = false;
		coil_ip_unref(ip);
		done++;
	}
	return done;
}

/* Home worker: run now if settled (kaa: a late callback fires at once),
 * else queue. */
static void attach_local(coil_ip_t *ip, cbnode *n)
{
	n->next = NULL;
	if (settled(ip) && !ip->in_ready &&
	    !atomic_load_explicit(&ip->publish_pending, memory_order_relaxed)) {
		run_cb(ip, n);
		return;
	}
	*ip->cbs_tail = n;
	ip->cbs_tail = &n->next;
}

static void attach_task_run(coil__task *t)
{
	cbnode *n = coil__container_of(t, cbnode, task);
	coil_ip_t *src = n->src;
	attach_local(src, n);
	coil_ip_unref(src);
}

static void attach(coil_ip_t *ip, cbnode *n)
{
	if (coil__on_worker(ip->home)) {
		attach_local(ip, n);
		return;
	}
	n->src = coil_ip_ref(ip);
	n->task.run = attach_task_run;
	coil__post(ip->home, &n->task);
}

static cbnode *cbnode_new(int kind)
{
	cbnode *n = coil__calloc(1, sizeof(*n));
	if (n)
		n->kind = kind;
	return n;
}

/* Internal observer used by adopt, timeout and the combinators. */
static int on_internal(coil_ip_t *ip, void (*fn)(coil_ip_t *, void *),
		       void *arg)
{
	cbnode *n = cbnode_new(CB_INTERNAL);
	if (!n)
		return -ENOMEM;
	n->u.internal.fn = fn;
	n->u.internal.arg = arg;
	attach(ip, n);
	return 0;
}

static void adopt_done(coil_ip_t *r, void *arg)
{
	coil_ip_t *dst = arg;
	settle_mirror(dst, r);
	coil_ip_unref(dst);
	coil_ip_unref(r);
}

static void adopt(coil_ip_t *dst, coil_ip_t *r)
{
	if (settled(r) && coil__on_worker(dst->home)) {
		settle_mirror(dst, r);
		coil_ip_unref(r);
		return;
	}
	coil_ip_ref(dst);
	if (on_internal(r, adopt_done, dst)) {
		coil_ip_unref(dst);
		coil__ip_fail_msg(dst, -ENOMEM, "out of memory adopting");
		coil_ip_unref(r);
	}
}

coil_ip_t *coil_ip_then(coil_ip_t *ip, coil_then_cb on_ok, coil_then_cb on_err,
			void *ud)
{
	if (!ip)
		return NULL;
	coil_ip_t *chained = coil__ip_new_on(ip->home);
	cbnode *n = chained ? cbnode_new(CB_THEN) : NULL;
	if (!n) {
		coil_ip_unref(chained);
		coil_ip_unref(ip);
		return NULL;
	}
	n->u.then.ok = on_ok;
	n->u.then.err = on_err;
	n->u.then.ud = ud;
	n->u.then.chained = coil_ip_ref(chained);
	attach(ip, n);
	coil_ip_unref(ip);
	return chained;
}

coil_ip_t *coil_ip_catch(coil_ip_t *ip, coil_then_cb on_err, void *ud)
{
	return coil_ip_then(ip, NULL, on_err, ud);
}

struct finally_ctx {
	coil_done_cb cb;
	void *ud;
};

static coil_ip_t *finally_cb(coil_ip_t *src, void *ud)
{
	struct finally_ctx c = *(struct finally_ctx *)ud;
	coil__free(ud);
	c.cb(src, c.ud);
	return NULL;
}

coil_ip_t *coil_ip_finally(coil_ip_t *ip, coil_done_cb cb, void *ud)
{
	if (!ip)
		return NULL;
	struct finally_ctx *c = coil__malloc(sizeof(*c));
	if (!c) {
		coil_ip_unref(ip);
		return NULL;
	}
	c->cb = cb;
	c->ud = ud;
	/* Same context for both paths; exactly one of them runs. */
	coil_ip_t *r = coil_ip_then(ip, finally_cb, finally_cb, c);
	if (!r)
		coil__free(c);
	return r;
}

int coil_ip_on_done(coil_ip_t *ip, coil_done_cb cb, void *ud)
{
	if (!ip || !cb)
		return -EINVAL;
	cbnode *n = cbnode_new(CB_DONE);
	if (!n)
		return -ENOMEM;
	atomic_store(&ip->observed, true);
	n->u.done.cb = cb;
	n->u.done.ud = ud;
	attach(ip, n);
	return 0;
}

/* ---- abort ---- */

void coil_ip_set_abort(coil_ip_t *ip, coil_abort_cb hook, void *arg)
{
	ip->abort_hook = hook;
	ip->abort_arg = arg;
}

static int abort_local(coil_ip_t *ip)
{
	if (atomic_load(&ip->claimed))
		return -EALREADY;
	coil_abort_cb hook = ip->abort_hook;
	ip->abort_hook = NULL;
	if (hook && hook(ip, ip->abort_arg) == 1)
		return 0;
	int rc = coil__ip_fail_msg(ip, -ECANCELED, "aborted");
	return rc;
}

struct abort_task {
	coil__task task;
	coil_ip_t *ip;
};

static void abort_task_run(coil__task *t)
{
	struct abort_task *a = coil__container_of(t, struct abort_task, task);
	abort_local(a->ip);
	coil_ip_unref(a->ip);
	coil__free(a);
}

int coil_ip_abort(coil_ip_t *ip)
{
	if (!ip)
		return -EINVAL;
	if (atomic_load(&ip->claimed))
		return -EALREADY;
	if (coil__on_worker(ip->home))
		return abort_local(ip);
	struct abort_task *a = coil__malloc(sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->task.run = abort_task_run;
	a->ip = coil_ip_ref(ip);
	coil__post(ip->home, &a->task);
	return 0;
}

/* ---- running something on a handle's home worker ---- */

static int run_on(coil__worker *w, void (*fn)(void *), void *arg)
{
	if (coil__on_worker(w)) {
		fn(arg);
		return 0;
	}
	return coil__post_fn(w, fn, arg);
}

/* ---- sleep ---- */

struct sleeper {
	coil__timer timer;
	coil_ip_t *ip; /* a reference */
	uint64_t ms;
};

static void sleep_fired(coil__timer *t, int res)
{
	struct sleeper *s = coil__container_of(t, struct sleeper, timer);
	if (res == 0)
		coil_ip_finish_int(s->ip, 0);
	else
		coil__ip_fail_msg(s->ip, res, res == -ECANCELED ? "aborted"
							       : NULL);
	coil_ip_unref(s->ip);
	coil__free(s);
}

static int sleep_abort(coil_ip_t *ip, void *arg)
{
	struct sleeper *s = arg;
	coil__timer_cancel(&s->timer);
	return 1; /* the timer callback settles the handle */
}

static void sleep_start(void *arg)
{
	struct sleeper *s = arg;
	coil_ip_set_abort(s->ip, sleep_abort, s);
	int rc = coil__timer_start(s->ip->home, &s->timer, s->ms, sleep_fired);
	if (rc) {
		s->ip->abort_hook = NULL;
		coil__ip_fail_msg(s->ip, rc, "cannot arm timer");
		coil_ip_unref(s->ip);
		coil__free(s);
	}
}

coil_ip_t *coil_sleep(coil_loop_t *loop, unsigned ms)
{
	coil_ip_t *ip = coil_ip_new(loop);
	struct sleeper *s = ip ? coil__calloc(1, sizeof(*s)) : NULL;
	if (!s) {
		coil_ip_unref(ip);
		return NULL;
	}
	s->ip = coil_ip_ref(ip);
	s->ms = ms;
	if (run_on(ip->home, sleep_start, s)) {
		coil_ip_unref(ip);
		coil_ip_unref(ip);
		coil__free(s);
		return NULL;
	}
	return ip;
}

/* ---- timeout ---- */

/*
 * The watch lives until both the timer callback and the source's callback
 * have run (refs = 2), so neither can see it freed.
 */
struct watch {
	coil__timer timer;
	coil_ip_t *src; /* a reference */
	coil_ip_t *out; /* a reference */
	uint64_t ms;
	int refs;
	bool abort_src;
};

static void watch_put(struct watch *wt)
{
	if (--wt->refs)
		return;
	coil_ip_unref(wt->src);
	coil_ip_unref(wt->out);
	coil__free(wt);
}

static void watch_fired(coil__timer *t, int res)
{
	struct watch *wt = coil__container_of(t, struct watch, timer);
	if (res == 0 && !settled(wt->src)) {
		coil__ip_fail_msg(wt->out, -ETIMEDOUT, "timed out");
		if (wt->abort_src)
			coil_ip_abort(wt->src);
	}
	watch_put(wt);
}

static void watch_src_done(coil_ip_t *src, void *arg)
{
	struct watch *wt = arg;
	/* The caller gave src away to the timeout: its outcome is observed
	 * here even when the mirror already timed out. */
	atomic_store(&src->observed, true);
	settle_mirror(wt->out, src);
	coil__timer_cancel(&wt->timer);
	watch_put(wt);
}

static void watch_start(void *arg)
{
	struct watch *wt = arg;
	int rc = coil__timer_start(wt->src->home, &wt->timer, wt->ms,
				   watch_fired);
	if (rc) {
		coil__ip_fail_msg(wt->out, rc, "cannot arm timer");
		wt->refs--;
	}
	if (on_internal(wt->src, watch_src_done, wt)) {
		coil__ip_fail_msg(wt->out, -ENOMEM, NULL);
		coil__timer_cancel(&wt->timer);
		watch_put(wt);
	}
}

static int timeout_abort(coil_ip_t *out, void *arg)
{
	struct watch *wt = arg;
	coil_ip_abort(wt->src);
	return 1; /* out settles when src does (with -ECANCELED) */
}

coil_ip_t *coil_ip_timeout(coil_ip_t *ip, unsigned ms, int abort_on_timeout)
{
	if (!ip)
		return NULL;
	coil_ip_t *out = coil__ip_new_on(ip->home);
	struct watch *wt = out ? coil__calloc(1, sizeof(*wt)) : NULL;
	if (!wt) {
		coil_ip_unref(out);
		coil_ip_unref(ip);
		return NULL;
	}
	wt->src = ip; /* the caller's reference, consumed */
	/* Aborting the mirror aborts what it mirrors. */
	coil_ip_set_abort(out, timeout_abort, wt);
	wt->out = coil_ip_ref(out);
	wt->ms = ms;
	wt->refs = 2;
	wt->abort_src = abort_on_timeout != 0;
	if (run_on(ip->home, watch_start, wt)) {
		coil_ip_unref(wt->out);
		coil_ip_unref(ip);
		coil__free(wt);
		coil_ip_unref(out);
		return NULL;
	}
	return out;
}

/* ---- all / any ---- */

struct group {
	_Atomic size_t left;   /* members not settled yet */
	_Atomic int won;       /* any: first settle claimed */
	_Atomic int refs;
	coil_ip_t *out;        /* a reference */
	size_t n;
	bool any;
	struct member {
		struct group *g;
		size_t index;
		coil_ip_t *ip;  /* a reference */
	} m[];
};

static void group_put(struct group *g)
{
	if (atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	for (size_t i = 0; i < g->n; i++)
		coil_ip_unref(g->m[i].ip);
	coil_ip_unref(g->out);
	coil__free(g);
}

/* any: out takes the index, the member and the member's outcome. */
static void any_settle(struct group *g, struct member *m)
{
	int zero = 0;
	if (!atomic_compare_exchange_strong(&g->won, &zero, 1))
		return;
	coil_ip_t *out = g->out, *src = m->ip;
	atomic_store(&src->observed, true);
	if (claim(out)) {
		out->ival = (int64_t)m->index;
		out->ptr = coil_ip_ref(src);
		out->free_fn = (void (*)(void *))coil_ip_unref;
		out->err = src->err;
		if (src->err)
			out->msg = coil__strdup(coil_ip_message(src));
		settle_claimed(out);
	}
}

static void member_done(coil_ip_t *src, void *arg)
{
	struct member *m = arg;
	struct group *g = m->g;
	if (g->any) {
		any_settle(g, m);
	} else if (atomic_fetch_sub(&g->left, 1) == 1) {
		coil_ip_finish_int(g->out, (int64_t)g->n);
	}
	group_put(g);
}

static coil_ip_t *group_new(coil_loop_t *loop, coil_ip_t *const *ips,
			    size_t n, bool any)
{
	if (!loop || (n && !ips))
		return NULL;
	coil_ip_t *out = coil_ip_new(loop);
	if (!out)
		return NULL;
	if (n == 0) {
		if (any)
			coil__ip_fail_msg(out, -EINVAL, "any of nothing");
		else
			coil_ip_finish_int(out, 0);
		return out;
	}
	struct group *g = coil__calloc(1, sizeof(*g) + n * sizeof(g->m[0]));
	if (!g) {
		coil_ip_unref(out);
		return NULL;
	}
	g->n = n;
	g->any = any;
	g->out = coil_ip_ref(out);
	atomic_init(&g->left, n);
	atomic_init(&g->refs, (int)n + 1);
	for (size_t i = 0; i < n; i++) {
		g->m[i].g = g;
		g->m[i].index = i;
		g->m[i].ip = coil_ip_ref(ips[i]);
	}
	/* Members settled before the group was made: the first of them in
	 * index order wins, whatever order their callbacks would run in. */
	for (size_t i = 0; any && i < n; i++) {
		if (settled(ips[i])) {
			any_settle(g, &g->m[i]);
			break;
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (on_internal(ips[i], member_done, &g->m[i])) {
			/* Out of memory: this member will never report;
			 * count it as settled so the group can finish. */
			coil__ip_fail_msg(out, -ENOMEM, NULL);
			if (!any && atomic_fetch_sub(&g->left, 1) == 1)
				coil_ip_finish_int(out, (int64_t)n);
			group_put(g);
		}
	}
	group_put(g);
	return out;
}

coil_ip_t *coil_ip_all(coil_loop_t *loop, coil_ip_t *const *ips, size_t n)
{
	return group_new(loop, ips, n, false);
}

coil_ip_t *coil_ip_any(coil_loop_t *loop, coil_ip_t *const *ips, size_t n)
{
	return group_new(loop, ips, n, true);
}

/* ---- wait ---- */

int coil_ip_wait(coil_ip_t *ip, int timeout_ms)
{
	if (!ip)
		return -EINVAL;
	if (coil__tls_worker)
		return -EDEADLK;
	atomic_store(&ip->observed, true);
	if (settled(ip))
		return 0;
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	if (timeout_ms >= 0) {
		deadline.tv_sec += timeout_ms / 1000;
		deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
		if (deadline.tv_nsec >= 1000000000) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000;
		}
	}
	atomic_fetch_add(&ip->waiters, 1);
	int rc = 0;
	while (!settled(ip)) {
		struct timespec rel, *relp = NULL;
		if (timeout_ms >= 0) {
			struct timespec now;
			clock_gettime(CLOCK_MONOTONIC, &now);
			rel.tv_sec = deadline.tv_sec - now.tv_sec;
			rel.tv_nsec = deadline.tv_nsec - now.tv_nsec;
			if (rel.tv_nsec < 0) {
				rel.tv_sec--;
				rel.tv_nsec += 1000000000;
			}
			if (rel.tv_sec < 0) {
				rc = -ETIMEDOUT;
				break;
			}
			relp = &rel;
		}
		/* Sleeps only while the state word still says PENDING. */
		syscall(SYS_futex, (int *)&ip->state, FUTEX_WAIT_PRIVATE,
			COIL_IP_PENDING, relp, NULL, 0);
	}
	atomic_fetch_sub(&ip->waiters, 1);
	return rc;
}

/* ---- errors ---- */

const char *coil_strerror(int err)
{
	if (err == COIL_EOF)
		return "end of stream";
	if (err == 0)
		return "success";
	if (err > 0)
		err = -err;
	/* strerrordesc_np is static text, thread-safe (glibc 2.32). */
	const char *s = strerrordesc_np(-err);
	return s ? s : "unknown error";
}
