/* SPDX-License-Identifier: MIT */
/* coil_ip: the promise. Settling, chaining with adoption, abort, timeouts,
 * all/any, and wait from ordinary threads. */
#include "internal.h"

#include <limits.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/*
 * Threading model. A handle's callback list and the ready queue are touched
 * only on its home worker. Settling claims the handle with an atomic flag
 * (so a second settle from any thread reports -EALREADY), writes the outcome,
 * then *publishes* it on the home worker: stores the state, wakes waiters
 * blocked in coil_ip_wait (futex on the state word) and queues the
 * callbacks. A settle from another thread forwards the publish through the
 * worker inbox. Callbacks are never run from inside a settle: they are
 * queued on the worker's ready list and run in order by the loop, with a
 * budget per turn. Only a callback attached to an already settled handle
 * runs at once (kaa's rule), on the home worker, and only while fewer than
 * COIL_IP_INLINE_DEPTH such callbacks are nested on that worker; deeper, it
 * is queued like any other (a trampoline), so no program grows the stack
 * with the number of settled handles it walks through.
 *
 * References come in two kinds, packed in one 64-bit word: *strong* ones
 * (low half: users, producers, the machinery that must keep a handle alive
 * to settle it) and *observer* ones (high half: held by what only waits on
 * the handle: a chained handle's link to what it waits on, timeouts,
 * combinators). The memory lives while either is nonzero. When the last
 * strong reference of a pending handle goes while something still waits on
 * it (an observer, or a callback), nothing can ever settle it: it fails with
 * COIL_BROKEN, so the chain behind it fails instead of hanging.
 *
 * Chains. coil_ip_then makes a chained handle whose embedded node `link`
 * sits on the source's callback list (holding a strong reference to the
 * chained handle) and whose `upstream` is the source (an observer
 * reference). When its callback returns a handle, the same node moves onto
 * that handle (adoption, no allocation) and `upstream` follows. Adoption
 * collapses: when a handle that others adopted itself adopts another on the
 * same worker, its adopters move on to the new one and, if nothing else can
 * reach it, the intermediate handle is freed; a loop written as adoption
 * therefore holds O(1) handles. Aborting a chained handle walks `upstream`
 * (iteratively) to the handle the chain really waits on and aborts that.
 */

/* Owner of an embedded then/adopt node. */
#define LINK_OWNER(n) (&coil__container_of((n), struct chain_ip, link)->ip)

enum cb_kind { CB_THEN, CB_ADOPT, CB_DONE, CB_INTERNAL, CB_REPEAT };
/* Who made a handle: decides what abort does without a hook. */
enum ip_kind {
	IP_USER,     /* coil_ip_new: not abortable without a hook */
	IP_INTERNAL, /* coil's own producers: fails at once without a hook */
	IP_CHAIN,    /* then/catch/finally: aborts what it waits on */
};

typedef struct cbnode {
	struct cbnode *next;
	coil_ip_t *src;  /* forwarding an attach from a foreign thread */
	coil__task task;
	int kind;
	union {
		struct {
			coil_then_cb ok, err;
			void *ud;
		} then;
		struct {
			coil_done_cb cb;
			void *ud;
		} done;
		struct {
			void (*fn)(coil_ip_t *src, void *arg);
			void *arg;
			/* Runs instead when fn never will (its loop is gone). */
			void (*drop)(void *arg);
		} internal;
	} u;
} cbnode;

#define STRONG1 ((uint64_t)1)
#define OBS1 ((uint64_t)1 << 32)

struct coil_ip_s {
	_Atomic uint64_t refs; /* strong (low 32 bits) + observers (high) */
	_Atomic int state;
	_Atomic int claimed;
	_Atomic int waiters;
	_Atomic bool observed;
	_Atomic bool publish_pending; /* settled off-home, callbacks not queued */
	uint8_t kind;                 /* enum ip_kind, fixed at creation */
	bool in_ready;
	coil__worker *home;
	int err;
	char *msg;      /* owned; NULL = coil_strerror(err) */
	int64_t ival;
	void *ptr;      /* pointer or bytes */
	size_t len;
	void (*free_fn)(void *);
	coil_ip_t *alias; /* outcome mirrored from another handle (a ref) */
	cbnode *cbs, **cbs_tail;
	coil_ip_t *ready_next; /* ready queue; also the free worklist */
	_Atomic(coil_abort_cb) abort_hook;
	void *abort_arg;
	coil__task publish_task;
};

/* A chained handle (kind IP_CHAIN): what it waits on now (an observer
 * reference, set and cleared on the home worker only), and the node that
 * sits on that handle's callback list. Other handles do without. */
struct chain_ip {
	coil_ip_t ip;
	coil_ip_t *upstream;
	cbnode link;
};

static inline struct chain_ip *CH(coil_ip_t *ip)
{
	return coil__container_of(ip, struct chain_ip, ip);
}

/* What ip waits on (a chain link), or NULL. */
static inline coil_ip_t *upstream_of(coil_ip_t *ip)
{
	return ip->kind == IP_CHAIN ? CH(ip)->upstream : NULL;
}

/* ---- the unobserved-failure handler: one lock, held while it runs, so
 * that once coil_set_unobserved_handler() returns the old handler neither
 * runs nor will run. Recursive: a handler may drop references itself. ---- */

static void default_unobserved(int err, const char *msg, void *ud)
{
	fprintf(stderr, "coil: unobserved failure: %s (%d)\n", msg, err);
}

static pthread_mutex_t unobserved_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static coil_unobserved_cb unobserved_cb = default_unobserved;
static void *unobserved_ud;

void coil_set_unobserved_handler(coil_unobserved_cb cb, void *ud)
{
	pthread_mutex_lock(&unobserved_lock);
	unobserved_cb = cb ? cb : default_unobserved;
	unobserved_ud = cb ? ud : NULL;
	pthread_mutex_unlock(&unobserved_lock);
}

static void report_unobserved(int err, const char *msg)
{
	pthread_mutex_lock(&unobserved_lock);
	unobserved_cb(err, msg, unobserved_ud);
	pthread_mutex_unlock(&unobserved_lock);
}

/* ---- live loops: a handle whose last reference goes after its loop was
 * freed must not post to the dead worker (every loop is registered once its
 * workers run and unregistered when it is freed, by the loop extension
 * ip_ext below). Only the rare broken-promise path off the home worker looks. */

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static coil_loop_t **live_loops;
static size_t live_n, live_cap;

static void pc_drain(coil_loop_t *loop);

static void ip_loop_live(coil_loop_t *loop, bool live)
{
	if (!live)
		pc_drain(loop);
	pthread_mutex_lock(&live_lock);
	if (live) {
		if (live_n == live_cap) {
			size_t cap = live_cap ? live_cap * 2 : 8;
			coil_loop_t **n =
				coil__realloc(live_loops, cap * sizeof(*n));
			if (n) {
				live_loops = n;
				live_cap = cap;
			}
		}
		if (live_n < live_cap)
			live_loops[live_n++] = loop;
	} else {
		for (size_t i = 0; i < live_n; i++) {
			if (live_loops[i] == loop) {
				live_loops[i] = live_loops[--live_n];
				break;
			}
		}
		if (!live_n) {
			coil__free(live_loops);
			live_loops = NULL;
			live_cap = 0;
		}
	}
	pthread_mutex_unlock(&live_lock);
}

static void ip_loop_started(coil_loop_t *loop)
{
	ip_loop_live(loop, true);
}

static void ip_loop_fini(coil_loop_t *loop)
{
	ip_loop_live(loop, false);
}

/* A loop extension: the loop core runs these for every loop without
 * knowing InProgress by name. A program that never links this file makes
 * no handles, so needs no live list. */
static coil__loop_ext ip_ext = {.started = ip_loop_started,
				.fini = ip_loop_fini};
__attribute__((constructor)) static void ip_ext_register(void)
{
	coil__loop_ext_register(&ip_ext);
}

static bool home_alive(const coil__worker *w)
{
	if (coil__on_worker(w))
		return true;
	bool alive = false;
	pthread_mutex_lock(&live_lock);
	for (size_t i = 0; i < live_n && !alive; i++) {
		coil_loop_t *l = live_loops[i];
		alive = w >= l->workers && w < l->workers + l->nworkers;
	}
	pthread_mutex_unlock(&live_lock);
	return alive;
}

/* The handle whose value fields hold the outcome (follows a mirror). */
static inline const coil_ip_t *vsrc(const coil_ip_t *ip)
{
	return ip->alias ? ip->alias : ip;
}

/*
 * Per-worker caches of freed handles and nodes (bounded), reused by the next
 * allocation on that worker: a settle or a chain step then costs no trip
 * through the allocator. Only on workers (their lists are theirs alone),
 * and not in sanitizer or valgrind builds, where every allocation must be
 * seen. The allocation counters still count each reuse and each caching.
 */
enum { PC_PLAIN, PC_CHAIN, PC_NODE };
#define PC_MAX 256

static size_t pc_size(int k)
{
	return k == PC_PLAIN ? sizeof(coil_ip_t)
	     : k == PC_CHAIN ? sizeof(struct chain_ip)
			     : sizeof(cbnode);
}

static void *pc_get(int k)
{
#ifndef COIL_NO_JEMALLOC
	coil__worker *w = coil__tls_worker;
	if (w && w->ip_cache[k]) {
		void *p = w->ip_cache[k];
		w->ip_cache[k] = *(void **)p;
		w->ip_cache_n[k]--;
		memset(p, 0, pc_size(k));
		coil__alloc_reused(); /* live again, but no heap allocation */
		return p;
	}
#endif
	return coil__calloc(1, pc_size(k));
}

static void pc_put(int k, void *p)
{
#ifndef COIL_NO_JEMALLOC
	coil__worker *w = coil__tls_worker;
	if (w && w->ip_cache_n[k] < PC_MAX) {
		*(void **)p = w->ip_cache[k];
		w->ip_cache[k] = p;
		w->ip_cache_n[k]++;
		coil__alloc_counted(false);
		return;
	}
#endif
	coil__free(p);
}

/* The loop is being freed: give its workers' caches back. */
static void pc_drain(coil_loop_t *loop)
{
	for (unsigned i = 0; i < loop->nworkers; i++) {
		coil__worker *w = &loop->workers[i];
		for (int k = 0; k < 3; k++) {
			while (w->ip_cache[k]) {
				void *p = w->ip_cache[k];
				w->ip_cache[k] = *(void **)p;
				coil__alloc_counted(true);
				coil__free(p);
			}
			w->ip_cache_n[k] = 0;
		}
	}
}

static coil_ip_t *ip_alloc(coil__worker *w, int kind, uint64_t refs)
{
	coil_ip_t *ip = pc_get(kind == IP_CHAIN ? PC_CHAIN : PC_PLAIN);
	if (!ip)
		return NULL;
	atomic_init(&ip->refs, refs);
	ip->home = w;
	ip->kind = (uint8_t)kind;
	ip->cbs_tail = &ip->cbs;
	return ip;
}

coil_ip_t *coil__ip_new_on(coil__worker *w)
{
	return ip_alloc(w, IP_INTERNAL, STRONG1);
}

coil_ip_t *coil_ip_new(coil_loop_t *loop)
{
	if (!loop)
		return NULL;
	return ip_alloc(coil__pick_worker(loop), IP_USER, STRONG1);
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
		atomic_fetch_add_explicit(&ip->refs, STRONG1,
					  memory_order_relaxed);
	return ip;
}

static inline void obs_ref(coil_ip_t *ip)
{
	atomic_fetch_add_explicit(&ip->refs, OBS1, memory_order_relaxed);
}

static void ip_free(coil_ip_t *ip);
static void obs_unref(coil_ip_t *ip);
static void repeat_dropped(cbnode *n);
static void broken(coil_ip_t *ip);
static void cbnode_release(cbnode *n);
static int fail_owned(coil_ip_t *ip, int err, char *msg);

static inline bool is_claimed(const coil_ip_t *ip)
{
	return atomic_load_explicit(&ip->claimed, memory_order_acquire) != 0;
}

void coil_ip_unref(coil_ip_t *ip)
{
	if (!ip)
		return;
	uint64_t old = atomic_load_explicit(&ip->refs, memory_order_relaxed);
	for (;;) {
		if ((uint32_t)old == 1 && (old >> 32) && !is_claimed(ip)) {
			/* The last strong reference of a pending handle that
			 * observers wait on: trade it for an observer one (so
			 * an observer letting go meanwhile cannot free it under
			 * us), break the handle, then let go. */
			if (atomic_compare_exchange_weak_explicit(
				    &ip->refs, &old, old - STRONG1 + OBS1,
				    memory_order_acq_rel, memory_order_relaxed)) {
				broken(ip);
				obs_unref(ip);
				return;
			}
			continue;
		}
		if (atomic_compare_exchange_weak_explicit(
			    &ip->refs, &old, old - STRONG1, memory_order_acq_rel,
			    memory_order_relaxed))
			break;
	}
	if (old != STRONG1)
		return;
	/* Nothing refers to it any more. A pending handle that still has
	 * callbacks is failed (they run) before it goes. */
	if (!is_claimed(ip) && ip->cbs && home_alive(ip->home)) {
		atomic_store_explicit(&ip->refs, STRONG1, memory_order_relaxed);
		broken(ip);
		coil_ip_unref(ip);
		return;
	}
	ip_free(ip);
}

static void obs_unref(coil_ip_t *ip)
{
	uint64_t old = atomic_fetch_sub_explicit(&ip->refs, OBS1,
						 memory_order_acq_rel);
	if (old == OBS1)
		ip_free(ip);
}

/* Fails a pending handle nobody can settle any more: its callbacks and
 * observers see COIL_BROKEN. The caller keeps the handle alive. */
static void broken(coil_ip_t *ip)
{
	if (!home_alive(ip->home)) {
		/* Its loop is gone: the callbacks can never run. Release what
		 * they hold (their chained handles hold observer references
		 * to ip: ip is freed once those go). */
		cbnode *n = ip->cbs;
		ip->cbs = NULL;
		ip->cbs_tail = &ip->cbs;
		while (n) {
			cbnode *next = n->next;
			cbnode_release(n);
			n = next;
		}
		return;
	}
	fail_owned(ip, COIL_BROKEN,
		   coil__strdup("broken promise: the last reference to a "
				"pending handle was dropped"));
}

/*
 * Frees a handle whose references are all gone. Freeing can release other
 * handles (its mirror, what it waited on, the owners of callbacks that never
 * ran): those are put on a per-thread worklist instead of being freed
 * recursively, so a long chain is freed in constant stack.
 */
static __thread coil_ip_t *free_head;
static __thread bool freeing;

static void ip_free_one(coil_ip_t *ip)
{
	if (atomic_load(&ip->state) == COIL_IP_FAILED &&
	    !atomic_load(&ip->observed) && ip->err != -ECANCELED)
		report_unobserved(ip->err, coil_ip_message(ip));
	/* A handle freed while pending never runs its callbacks; release
	 * what they hold (only after its loop is gone, or for callbacks
	 * attached while it was being freed). */
	cbnode *n = ip->cbs;
	while (n) {
		cbnode *next = n->next;
		cbnode_release(n);
		n = next;
	}
	if (ip->free_fn && ip->ptr)
		ip->free_fn(ip->ptr);
	coil_ip_unref(ip->alias);
	coil_ip_t *up = upstream_of(ip);
	if (up)
		obs_unref(up);
	coil__free(ip->msg);
	pc_put(ip->kind == IP_CHAIN ? PC_CHAIN : PC_PLAIN, ip);
}

static void ip_free(coil_ip_t *ip)
{
	ip->ready_next = free_head;
	free_head = ip;
	if (freeing)
		return;
	freeing = true;
	while (free_head) {
		coil_ip_t *x = free_head;
		free_head = x->ready_next;
		ip_free_one(x);
	}
	freeing = false;
}

/* ---- publishing ---- */

static void futex_wake_all(_Atomic int *addr)
{
	syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
		NULL, 0);
}

/*
 * Publishing the state against coil_ip_wait is the store-buffering pattern:
 * the settler stores the state then loads the waiter count; a waiter
 * increments the count then loads the state. Without a full fence on both
 * sides each may miss the other's store (the settler sees no waiter, the
 * waiter sees PENDING and sleeps: a lost wake-up). The fence is asymmetric:
 * the settle path, hot on every worker, only has a compiler barrier, and the
 * waiter, which is about to block anyway, issues membarrier(2), which makes
 * every running thread of the process execute a full barrier. So either the
 * settler's load comes after that barrier and sees the new waiter, or its
 * store came before it and the waiter sees the state. Where membarrier is
 * not available (old kernel, seccomp, valgrind) settlers use a sequentially
 * consistent store instead, and waiters that started before that switch
 * re-check the state every millisecond.
 */
enum { SB_UNKNOWN, SB_MEMBARRIER, SB_FENCE };
static _Atomic int sb_mode = SB_UNKNOWN;
static pthread_once_t sb_once = PTHREAD_ONCE_INIT;

static void sb_init(void)
{
	int ok = syscall(SYS_membarrier,
			 MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
	atomic_store(&sb_mode, ok ? SB_MEMBARRIER : SB_FENCE);
}

static void store_state(coil_ip_t *ip, int state)
{
	if (coil__likely(atomic_load_explicit(&sb_mode, memory_order_relaxed) !=
			 SB_FENCE)) {
		atomic_store_explicit(&ip->state, state, memory_order_release);
		atomic_signal_fence(memory_order_seq_cst);
	} else {
		atomic_store_explicit(&ip->state, state, memory_order_seq_cst);
	}
	if (atomic_load_explicit(&ip->waiters, memory_order_seq_cst))
		futex_wake_all(&ip->state);
}

/* The waiter's half (after the waiter count went up): false when the
 * waiter must poll because the barrier could not be had. */
static bool sb_waiter_fence(void)
{
	pthread_once(&sb_once, sb_init);
	if (atomic_load(&sb_mode) == SB_MEMBARRIER &&
	    syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
		return true;
	/* From now on settlers use seq_cst stores; this waiter polls, in
	 * case a settle already went the cheap way. */
	atomic_store(&sb_mode, SB_FENCE);
	return false;
}

static void ready_push(coil__worker *w, coil_ip_t *ip)
{
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

/* Home worker only: the outcome is final; drop the link to what the handle
 * waited on and queue the callbacks. */
static void publish_local(coil_ip_t *ip)
{
	coil_ip_t *up = upstream_of(ip);
	if (up) {
		CH(ip)->upstream = NULL;
		obs_unref(up);
	}
	if (ip->cbs && !ip->in_ready)
		ready_push(ip->home, ip);
}

static void publish_task_run(coil__task *t)
{
	coil_ip_t *ip = coil__container_of(t, coil_ip_t, publish_task);
	atomic_store_explicit(&ip->publish_pending, false,
			      memory_order_relaxed);
	publish_local(ip);
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
	/* A waiter may drop its reference the moment it sees the state: keep
	 * the handle alive until publishing is over. */
	coil_ip_ref(ip);
	if (coil__on_worker(ip->home)) {
		store_state(ip, st);
		publish_local(ip);
		coil_ip_unref(ip);
		return;
	}
	atomic_store_explicit(&ip->publish_pending, true, memory_order_relaxed);
	store_state(ip, st);
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

/* Releases a node that will not run (or has run): an embedded node gives
 * back its reference to its owner, others are freed. */
static void cbnode_release(cbnode *n)
{
	if (n->kind == CB_THEN || n->kind == CB_ADOPT) {
		coil_ip_unref(LINK_OWNER(n));
		return;
	}
	if (n->kind == CB_REPEAT) {
		repeat_dropped(n);
		return;
	}
	if (n->kind == CB_INTERNAL && n->u.internal.drop)
		n->u.internal.drop(n->u.internal.arg);
	pc_put(PC_NODE, n);
}

/*
 * A then-callback running on a worker: lets coil_ip_return_int/_error fill
 * in the chained handle's outcome without a handle of their own. Frames
 * nest when callbacks run inline inside a callback.
 */
struct then_frame {
	struct then_frame *prev;
	coil_ip_t *src;
	bool set;
	int err;
	int64_t ival;
	char *msg;
};

static char return_tag;
#define RETURN_SENTINEL ((coil_ip_t *)(void *)&return_tag)

static void adopt(coil_ip_t *dst, coil_ip_t *r);
static void repeat_fired(coil_ip_t *src, cbnode *n);

/* Settles the chained handle c of a then-node from the callback's result r
 * (NULL / src: pass src on; the sentinel: the frame's value; else adopt).
 * Consumes the node's reference to c. */
static void then_result(coil_ip_t *src, coil_ip_t *c, coil_ip_t *r,
			struct then_frame *f)
{
	if (r == RETURN_SENTINEL) {
		if (!f->set)
			fail_owned(c, -EINVAL,
				   coil__strdup("then-callback returned a "
						"stale coil_ip_return_* value"));
		else if (f->err)
			fail_owned(c, f->err, f->msg);
		else
			coil_ip_finish_int(c, f->ival);
		f->msg = NULL;
		coil_ip_unref(c);
		return;
	}
	coil__free(f->msg);
	f->msg = NULL;
	if (r == c) {
		/* It would wait for itself forever. */
		fail_owned(c, -EINVAL,
			   coil__strdup("then-callback returned its own "
					"chained handle"));
		coil_ip_unref(r);
		coil_ip_unref(c);
		return;
	}
	if (r && r != src) {
		adopt(c, r);
		return;
	}
	/* NULL, or src itself (borrowed: "pass it on", no reference moves). */
	settle_mirror(c, src);
	coil_ip_unref(c);
}

static void run_cb(coil_ip_t *src, cbnode *n)
{
	int st = atomic_load(&src->state);
	switch (n->kind) {
	case CB_THEN: {
		coil_ip_t *c = LINK_OWNER(n);
		if (is_claimed(c)) {
			/* Aborted (or settled by hand): the callback of a
			 * chain that was stopped never runs. */
			coil_ip_unref(c);
			return;
		}
		coil_then_cb fn = st == COIL_IP_FINISHED ? n->u.then.ok
							 : n->u.then.err;
		coil_ip_t *r = NULL;
		coil__worker *w = c->home;
		struct then_frame f = {.prev = w->ip_frame, .src = src};
		if (fn) {
			if (st == COIL_IP_FAILED)
				atomic_store(&src->observed, true);
			w->ip_frame = &f;
			r = fn(src, n->u.then.ud);
			w->ip_frame = f.prev;
		}
		then_result(src, c, r, &f);
		return;
	}
	case CB_ADOPT: {
		coil_ip_t *c = LINK_OWNER(n);
		settle_mirror(c, src);
		coil_ip_unref(c);
		return;
	}
	case CB_DONE:
		atomic_store(&src->observed, true);
		n->u.done.cb(src, n->u.done.ud);
		break;
	case CB_INTERNAL:
		n->u.internal.fn(src, n->u.internal.arg);
		break;
	case CB_REPEAT:
		repeat_fired(src, n); /* embedded in the loop's state */
		return;
	}
	pc_put(PC_NODE, n);
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

static inline void cbs_append(coil_ip_t *ip, cbnode *n)
{
	n->next = NULL;
	*ip->cbs_tail = n;
	ip->cbs_tail = &n->next;
}

/*
 * Home worker: run now if settled (kaa: a late callback fires at once), up
 * to COIL_IP_INLINE_DEPTH nested on this worker; deeper, or while earlier
 * callbacks of ip are still queued, queue it behind them.
 */
static void attach_local(coil_ip_t *ip, cbnode *n)
{
	if (!settled(ip)) {
		cbs_append(ip, n);
		return;
	}
	coil__worker *w = ip->home;
	if (!ip->in_ready &&
	    !atomic_load_explicit(&ip->publish_pending, memory_order_relaxed)) {
		if (w->ip_depth < COIL_IP_INLINE_DEPTH) {
			n->next = NULL;
			w->ip_depth++;
			run_cb(ip, n);
			w->ip_depth--;
			return;
		}
		cbs_append(ip, n);
		ready_push(w, ip);
		return;
	}
	cbs_append(ip, n);
}

static void attach_task_run(coil__task *t)
{
	cbnode *n = coil__container_of(t, cbnode, task);
	coil_ip_t *src = n->src;
	n->src = NULL;
	attach_local(src, n);
	coil_ip_unref(src);
}

/* Attaches n to ip without consuming a reference (the caller holds one). */
static void attach_borrowed(coil_ip_t *ip, cbnode *n)
{
	if (coil__on_worker(ip->home)) {
		attach_local(ip, n);
		return;
	}
	n->src = coil_ip_ref(ip);
	n->task.run = attach_task_run;
	coil__post(ip->home, &n->task);
}

/* Attaches n to ip; consumes one strong reference to ip. */
static void attach_consume(coil_ip_t *ip, cbnode *n)
{
	if (coil__on_worker(ip->home)) {
		attach_local(ip, n);
		coil_ip_unref(ip);
		return;
	}
	n->src = ip;
	n->task.run = attach_task_run;
	coil__post(ip->home, &n->task);
}

static cbnode *cbnode_new(int kind)
{
	cbnode *n = pc_get(PC_NODE);
	if (n)
		n->kind = kind;
	return n;
}

/* Internal observer used by timeout and the combinators. */
static int on_internal(coil_ip_t *ip, void (*fn)(coil_ip_t *, void *),
		       void (*drop)(void *), void *arg)
{
	cbnode *n = cbnode_new(CB_INTERNAL);
	if (!n)
		return -ENOMEM;
	n->u.internal.fn = fn;
	n->u.internal.arg = arg;
	n->u.internal.drop = drop;
	attach_borrowed(ip, n);
	return 0;
}

/*
 * c (pending, on its home worker) takes the handles that adopted it onto r,
 * which c is about to adopt, when they share c's worker: they then wait on
 * r directly and c drops out of their chain.
 */
static void move_adopters(coil_ip_t *c, coil_ip_t *r)
{
	cbnode **pp = &c->cbs;
	while (*pp) {
		cbnode *m = *pp;
		coil_ip_t *d = m->kind == CB_ADOPT ? LINK_OWNER(m) : NULL;
		if (!d || d->home != c->home || CH(d)->upstream != c) {
			pp = &m->next;
			continue;
		}
		*pp = m->next;
		if (!*pp)
			c->cbs_tail = pp;
		obs_ref(r);
		CH(d)->upstream = r;
		obs_unref(c);
		cbs_append(r, m);
	}
}

/*
 * The chained handle c (pending, its node free, the node's reference to c
 * passed in) now settles as r does. Consumes the reference to r and the
 * node's reference to c. Runs on c's home worker.
 */
static void adopt(coil_ip_t *c, coil_ip_t *r)
{
	cbnode *n = &CH(c)->link;
	if (is_claimed(c)) {
		/* The chain was aborted while its callback ran: what the
		 * callback started is not wanted any more. */
		coil_ip_abort(r);
		coil_ip_unref(r);
		coil_ip_unref(c);
		return;
	}
	if (settled(r)) {
		settle_mirror(c, r);
		coil_ip_unref(r);
		coil_ip_unref(c);
		return;
	}
	coil_ip_t *old = CH(c)->upstream;
	if (r->home == c->home) {
		move_adopters(c, r);
		if (!c->cbs &&
		    (uint32_t)atomic_load_explicit(&c->refs,
						   memory_order_acquire) == 1 &&
		    !atomic_load(&c->waiters)) {
			/* Nothing but this node can reach c: it drops out,
			 * and its adopters already wait on r. */
			coil_ip_unref(r);
			coil_ip_unref(c);
			return;
		}
	}
	obs_ref(r);
	CH(c)->upstream = r;
	if (old)
		obs_unref(old);
	n->kind = CB_ADOPT;
	/* Consumes the reference the callback gave us. */
	attach_consume(r, n);
}

coil_ip_t *coil_ip_then(coil_ip_t *ip, coil_then_cb on_ok, coil_then_cb on_err,
			void *ud)
{
	if (!ip)
		return NULL;
	/* One reference for the caller, one for the node on ip's list. */
	coil_ip_t *c = ip_alloc(ip->home, IP_CHAIN, 2 * STRONG1);
	if (!c) {
		coil_ip_unref(ip);
		return NULL;
	}
	cbnode *n = &CH(c)->link;
	n->kind = CB_THEN;
	n->u.then.ok = on_ok;
	n->u.then.err = on_err;
	n->u.then.ud = ud;
	obs_ref(ip);
	CH(c)->upstream = ip;
	attach_consume(ip, n);
	return c;
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
	attach_borrowed(ip, n);
	return 0;
}

/* ---- returning a plain outcome from a then-callback ---- */

static struct then_frame *frame_for(coil_ip_t *src)
{
	coil__worker *w = coil__tls_worker;
	struct then_frame *f = w ? w->ip_frame : NULL;
	return f && f->src == src && !f->set ? f : NULL;
}

coil_ip_t *coil_ip_return_int(coil_ip_t *src, int64_t value)
{
	if (!src)
		return NULL;
	struct then_frame *f = frame_for(src);
	if (!f)
		return coil_ip_new_int(coil_ip_loop(src), value);
	f->set = true;
	f->ival = value;
	return RETURN_SENTINEL;
}

coil_ip_t *coil_ip_return_error(coil_ip_t *src, int err, const char *fmt, ...)
{
	if (!src)
		return NULL;
	if (err >= 0)
		err = -EINVAL;
	char *msg = NULL;
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(NULL, 0, fmt, ap);
		va_end(ap);
		if (n >= 0 && (msg = coil__malloc((size_t)n + 1))) {
			va_start(ap, fmt);
			vsnprintf(msg, (size_t)n + 1, fmt, ap);
			va_end(ap);
		}
	}
	struct then_frame *f = frame_for(src);
	if (!f) {
		coil_ip_t *ip = coil_ip_new(coil_ip_loop(src));
		if (ip)
			fail_owned(ip, err, msg);
		else
			coil__free(msg);
		return ip;
	}
	f->set = true;
	f->err = err;
	f->msg = msg;
	return RETURN_SENTINEL;
}

/* ---- repeat: a loop without the chaining ---- */

/*
 * The loop's state lives on out's home worker: body runs there, and only
 * there is `cur` (the iteration in flight, an observer reference) changed
 * or read. The node sits on cur; when cur settles on another worker, the
 * step is posted home. Nothing is allocated per iteration.
 */
struct repeat {
	cbnode node;      /* CB_REPEAT, on cur */
	coil__task task;  /* a step to run on out's home */
	coil_ip_t *out;   /* the loop's handle (a reference) */
	coil_ip_t *cur;   /* an observer reference, or NULL */
	coil_repeat_cb body;
	void *ud;
};

static void repeat_release(struct repeat *R)
{
	if (R->cur)
		obs_unref(R->cur);
	coil_ip_unref(R->out);
	coil__free(R);
}

static void repeat_step(struct repeat *R)
{
	coil_ip_t *out = R->out, *prev = R->cur;
	if (is_claimed(out)) {
		repeat_release(R); /* aborted: body is not called again */
		return;
	}
	if (out->home->stopping) {
		/* coil_loop_free: a body that starts the next iteration
		 * whatever the last one's outcome would keep the worker busy
		 * forever, each new sleep failing at once. */
		coil_ip_fail(out, -ECANCELED, "repeat: the loop is stopping");
		repeat_release(R);
		return;
	}
	coil_ip_t *next = R->body(prev, R->ud);
	if (next && is_claimed(out)) {
		/* Aborted from inside body: what it started is not wanted. */
		coil_ip_abort(next);
		coil_ip_unref(next);
		next = NULL;
	}
	if (!next || next == prev) {
		if (prev)
			settle_mirror(out, prev);
		else
			coil_ip_finish_int(out, 0);
		repeat_release(R);
		return;
	}
	obs_ref(next);
	R->cur = next;
	if (prev)
		obs_unref(prev);
	R->node.kind = CB_REPEAT;
	/* Consumes body's reference. A next that has settled already runs
	 * the next step at once, within the depth rule. */
	attach_consume(next, &R->node);
}

static void repeat_task_run(coil__task *t)
{
	repeat_step(coil__container_of(t, struct repeat, task));
}

static void repeat_fired(coil_ip_t *src, cbnode *n)
{
	struct repeat *R = coil__container_of(n, struct repeat, node);
	if (coil__on_worker(R->out->home)) {
		repeat_step(R);
		return;
	}
	R->task.run = repeat_task_run;
	coil__post(R->out->home, &R->task);
}

static void repeat_dropped(cbnode *n)
{
	repeat_release(coil__container_of(n, struct repeat, node));
}

/* Out's home: aborts the iteration in flight; out fails now (the step then
 * finds it settled and stops), unless that iteration refuses. */
static int repeat_abort(coil_ip_t *out, void *arg)
{
	struct repeat *R = arg;
	int rc = R->cur ? coil_ip_abort(R->cur) : 0;
	if (rc < 0 && rc != -ENOTSUP && rc != -EALREADY)
		return rc;
	return 0;
}

coil_ip_t *coil_ip_repeat(coil_loop_t *loop, coil_repeat_cb body, void *ud)
{
	if (!loop)
		return NULL;
	if (!body)
		return coil_ip_new_error(loop, -EINVAL, "repeat: no body");
	coil_ip_t *out = coil_ip_new(loop);
	struct repeat *R = out ? coil__calloc(1, sizeof(*R)) : NULL;
	if (!R) {
		coil_ip_unref(out);
		return NULL;
	}
	R->out = coil_ip_ref(out);
	R->body = body;
	R->ud = ud;
	coil_ip_set_abort(out, repeat_abort, R);
	/* The first call to body is posted, even from out's home: no user
	 * callback runs inside the call that started the loop. */
	R->task.run = repeat_task_run;
	coil__post(out->home, &R->task);
	return out;
}

/* ---- abort ---- */

void coil_ip_set_abort(coil_ip_t *ip, coil_abort_cb hook, void *arg)
{
	if (!ip)
		return;
	ip->abort_arg = arg;
	atomic_store_explicit(&ip->abort_hook, hook, memory_order_release);
}

static int fail_cancelled(coil_ip_t *ip)
{
	return coil__ip_fail_msg(ip, -ECANCELED, "aborted");
}

/* Aborts one handle that is not a waiting chain link (home worker). */
static int abort_one(coil_ip_t *ip)
{
	if (is_claimed(ip))
		return -EALREADY;
	coil_abort_cb hook =
		atomic_load_explicit(&ip->abort_hook, memory_order_acquire);
	if (hook) {
		int rc = hook(ip, ip->abort_arg);
		if (rc < 0)
			return rc; /* refused: the handle stays pending */
		if (rc == 1)
			return 0;  /* the hook settles it */
	} else if (ip->kind == IP_USER) {
		return -ENOTSUP;
	}
	return fail_cancelled(ip);
}

/*
 * Home worker. A chain link (a pending handle with an upstream) has no
 * outcome of its own: walk to the first handle of the chain that is not a
 * link on this worker, abort that, and if it did not refuse, fail every link
 * on the way with -ECANCELED now, so none of their callbacks runs. The walk
 * is a loop: a chain of any length aborts in constant stack.
 */
static int abort_local(coil_ip_t *ip)
{
	if (is_claimed(ip))
		return -EALREADY;
	if (!upstream_of(ip) ||
	    atomic_load_explicit(&ip->abort_hook, memory_order_acquire))
		return abort_one(ip);
	coil_ip_t *x = ip;
	for (;;) {
		coil_ip_t *up = upstream_of(x);
		if (up->home != ip->home || is_claimed(up) || !upstream_of(up) ||
		    atomic_load_explicit(&up->abort_hook, memory_order_acquire))
			break;
		x = up;
	}
	coil_ip_t *target = upstream_of(x);
	int rc = 0;
	if (!is_claimed(target))
		rc = target->home == ip->home ? abort_one(target)
					      : coil_ip_abort(target);
	/* What the chain waits on may not be abortable (a handle of your
	 * own): the chain still stops waiting. A refusal stops the abort. */
	if (rc < 0 && rc != -ENOTSUP && rc != -EALREADY)
		return rc;
	coil_ip_t *y = ip;
	for (;;) {
		coil_ip_t *next = y == x ? NULL : coil_ip_ref(upstream_of(y));
		fail_cancelled(y);
		if (y != ip)
			coil_ip_unref(y);
		if (!next)
			break;
		y = next;
	}
	return 0;
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
	if (is_claimed(ip))
		return -EALREADY;
	if (coil__on_worker(ip->home))
		return abort_local(ip);
	/* Known here already: a handle of your own without a hook. */
	if (ip->kind == IP_USER &&
	    !atomic_load_explicit(&ip->abort_hook, memory_order_acquire))
		return -ENOTSUP;
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
	bool armed;
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

/* Home worker. Before the timer is armed the handle just fails; once armed,
 * the ring timeout is removed and its completion settles the handle. */
static int sleep_abort(coil_ip_t *ip, void *arg)
{
	struct sleeper *s = arg;
	if (!s->armed)
		return 0;
	coil__timer_cancel(&s->timer);
	return 1;
}

static void sleep_start(void *arg)
{
	struct sleeper *s = arg;
	int rc = is_claimed(s->ip) ? -ECANCELED
				   : coil__timer_start(s->ip->home, &s->timer,
						       s->ms, sleep_fired);
	if (rc) {
		coil__ip_fail_msg(s->ip, rc, "cannot arm timer");
		coil_ip_unref(s->ip);
		coil__free(s);
		return;
	}
	s->armed = true;
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
	/* Set before anyone else sees ip; the hook runs on the home worker,
	 * after sleep_start (posted first). */
	coil_ip_set_abort(ip, sleep_abort, s);
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
 * have run (refs = 2), so neither can see it freed. It only observes the
 * source (an observer reference): if the source's producer lets go of it,
 * the source breaks and the timeout mirrors that.
 */
struct watch {
	coil__timer timer;
	coil_ip_t *src; /* an observer reference */
	coil_ip_t *out; /* a reference */
	uint64_t ms;
	int refs;
	bool abort_src;
};

static void watch_put(struct watch *wt)
{
	if (--wt->refs)
		return;
	obs_unref(wt->src);
	coil_ip_unref(wt->out);
	coil__free(wt);
}

static void watch_fired(coil__timer *t, int res)
{
	struct watch *wt = coil__container_of(t, struct watch, timer);
	if (res == 0 && !settled(wt->src) && !is_claimed(wt->out)) {
		coil__ip_fail_msg(wt->out, -ETIMEDOUT, "timed out");
		if (wt->abort_src)
			coil_ip_abort(wt->src);
	} else if (res != 0 && !settled(wt->src) && !is_claimed(wt->out)) {
		/* The stop cancelled the timer (a settle or an abort cancels
		 * it only once src or out settled): the mirror of a source
		 * nobody settles would stay pending past coil_loop_free. */
		coil__ip_fail_msg(wt->out, -ECANCELED, "the loop is stopping");
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

static void watch_drop(void *arg)
{
	watch_put(arg);
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
	if (on_internal(wt->src, watch_src_done, watch_drop, wt)) {
		coil__ip_fail_msg(wt->out, -ENOMEM, NULL);
		coil__timer_cancel(&wt->timer);
		watch_put(wt);
	}
}

/* Aborting the mirror aborts what it mirrors; a refusal is the mirror's. */
static int timeout_abort(coil_ip_t *out, void *arg)
{
	struct watch *wt = arg;
	int rc = abort_local(wt->src);
	if (rc == -ENOTSUP) {
		/* Not abortable (a handle of your own): stop waiting. */
		coil__timer_cancel(&wt->timer);
		return 0;
	}
	if (rc < 0 && rc != -EALREADY)
		return rc;
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
	/* The caller's reference becomes an observer one. */
	obs_ref(ip);
	wt->src = ip;
	coil_ip_set_abort(out, timeout_abort, wt);
	wt->out = coil_ip_ref(out);
	wt->ms = ms;
	wt->refs = 2;
	wt->abort_src = abort_on_timeout != 0;
	if (run_on(ip->home, watch_start, wt)) {
		coil_ip_unref(wt->out);
		obs_unref(ip);
		coil_ip_unref(ip);
		coil__free(wt);
		coil_ip_unref(out);
		return NULL;
	}
	coil_ip_unref(ip);
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
		coil_ip_t *ip;  /* an observer reference */
	} m[];
};

static void group_put(struct group *g)
{
	if (atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	for (size_t i = 0; i < g->n; i++)
		obs_unref(g->m[i].ip);
	coil_ip_unref(g->out);
	coil__free(g);
}

/* The value free function of any: the member it holds. */
static void unref_member(void *p)
{
	coil_ip_unref(p);
}

/* any (kaa InProgressAny): out finishes, whatever the member's outcome,
 * with the index and the member, which carries its own outcome. */
static void any_settle(struct group *g, struct member *m)
{
	int zero = 0;
	if (!atomic_compare_exchange_strong(&g->won, &zero, 1))
		return;
	coil_ip_t *out = g->out;
	if (!claim(out))
		return;
	out->ival = (int64_t)m->index;
	out->ptr = coil_ip_ref(m->ip);
	out->free_fn = unref_member;
	settle_claimed(out);
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

/* Aborting a combinator aborts its pending members (a member that refuses
 * keeps running) and fails the combinator now. Runs on out's home. */
static int group_abort(coil_ip_t *out, void *arg)
{
	struct group *g = arg;
	for (size_t i = 0; i < g->n; i++)
		if (!settled(g->m[i].ip))
			coil_ip_abort(g->m[i].ip);
	return 0;
}

static void group_drop(void *arg)
{
	group_put(arg);
}

/* The member's loop is gone. If the combinator's is too, its own
 * callbacks (the hook release among them) will never run either: release
 * them, or the group and the combinator would hold each other. */
static void member_drop(void *arg)
{
	struct group *g = ((struct member *)arg)->g;
	coil_ip_t *out = g->out;
	if (!is_claimed(out) && !home_alive(out->home)) {
		cbnode *n = out->cbs;
		out->cbs = NULL;
		out->cbs_tail = &out->cbs;
		while (n) {
			cbnode *next = n->next;
			cbnode_release(n);
			n = next;
		}
	}
	group_put(g);
}

/* Keeps the group alive for its abort hook until out has settled: both
 * run on out's home worker. */
static void group_hook_release(coil_ip_t *out, void *arg)
{
	group_put(arg);
}

static coil_ip_t *group_new(coil_loop_t *loop, coil_ip_t *const *ips,
			    size_t n, bool any)
{
	if (!loop || (n && !ips))
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!ips[i])
			return coil_ip_new_error(loop, -EINVAL,
						 "%s: member %zu is NULL",
						 any ? "any" : "all", i);
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
	/* One per member, one for this function, one for the abort hook. */
	atomic_init(&g->refs, (int)n + 2);
	for (size_t i = 0; i < n; i++) {
		g->m[i].g = g;
		g->m[i].index = i;
		g->m[i].ip = ips[i];
		obs_ref(ips[i]);
	}
	coil_ip_set_abort(out, group_abort, g);
	if (on_internal(out, group_hook_release, group_drop, g)) {
		coil_ip_set_abort(out, NULL, NULL);
		group_put(g);
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
		if (on_internal(ips[i], member_done, member_drop, &g->m[i])) {
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
	/* The waiter's half of the store-buffering fence (see store_state). */
	atomic_fetch_add_explicit(&ip->waiters, 1, memory_order_seq_cst);
	bool poll = !sb_waiter_fence();
	int rc = 0;
	while (atomic_load_explicit(&ip->state, memory_order_seq_cst) ==
	       COIL_IP_PENDING) {
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
		/* Without the barrier a settle may not see this waiter: look
		 * again every millisecond. */
		struct timespec ms1 = {.tv_nsec = 1000000};
		if (poll && (!relp || rel.tv_sec > 0 || rel.tv_nsec > 1000000))
			relp = &ms1;
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
	if (err == COIL_BROKEN)
		return "broken promise: nothing can settle the handle waited on";
	if (err == 0)
		return "success";
	if (err > 0)
		err = -err;
	/* strerrordesc_np is static text, thread-safe (glibc 2.32). */
	const char *s = strerrordesc_np(-err);
	return s ? s : "unknown error";
}
