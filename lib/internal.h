/* SPDX-License-Identifier: MIT */
/* Private declarations shared by the files of lib/: workers, ring ops, the
 * allocator seam, the byte queue. Nothing here is part of the API. */
#ifndef COIL_INTERNAL_H
#define COIL_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <linux/time_types.h>

#include "coil.h"

#define COIL__HIDDEN __attribute__((visibility("hidden")))
#define coil__container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))
#define coil__likely(x) __builtin_expect(!!(x), 1)
#define coil__unlikely(x) __builtin_expect(!!(x), 0)

/* Valgrind support (no cost outside valgrind: its client requests are a
 * few no-op instructions). The kernel fills memory through the ring where
 * memcheck cannot see it, so completions that carry bytes say so. */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define COIL__HAVE_VALGRIND 1
#endif
#endif
#ifdef COIL__HAVE_VALGRIND
#define coil__on_valgrind() (RUNNING_ON_VALGRIND != 0)
#define coil__mem_defined(p, n) ((void)VALGRIND_MAKE_MEM_DEFINED((p), (n)))
#else
#define coil__on_valgrind() 0
#define coil__mem_defined(p, n) ((void)0)
#endif

/* ---- allocator seam (alloc.c): jemalloc's non-standard API unless built
 * with COIL_NO_JEMALLOC (sanitizer builds), so coil never changes the
 * process's malloc. */
void *coil__malloc(size_t n);
void *coil__calloc(size_t n, size_t size);
void *coil__realloc(void *p, size_t n);
void coil__free(void *p);
char *coil__strdup(const char *s);
/* Allocation counters over the seam, always on and cheap (per-thread records
 * summed on read; any thread): allocations live now, process-wide, and
 * allocations ever made (a realloc is not a new one). Tests and benchmarks
 * call them directly (static link). */
size_t coil__alloc_live(void);
uint64_t coil__alloc_total(void);
/* The calling thread's counts (alloc.c), here so that the caches above
 * the seam count inline: written only by their thread (a relaxed load and
 * store, no locked instruction); state 1 once listed for the readers. */
struct coil__acount {
	_Atomic uint64_t allocs, frees;
	_Atomic uint64_t reused; /* of allocs: served by a cache (channel.c) */
	struct coil__acount *next, **pprev;
	int state; /* 0 unregistered, 1 listed, 2 thread exiting */
};
extern __thread struct coil__acount coil__tls_acount;
/* A thread's first count (registers its record) or one made while it
 * exits (goes to the shared remainder). */
void coil__acount_slow(bool is_free, bool reused);

static inline void coil__acount_bump(_Atomic uint64_t *c)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

/* Counts an allocation (alloc) or a free that a cache above the seam made
 * without calling it, so the counters stay true. Calling thread. */
static inline void coil__alloc_counted(bool alloc)
{
	struct coil__acount *a = &coil__tls_acount;
	if (coil__likely(a->state == 1))
		coil__acount_bump(alloc ? &a->allocs : &a->frees);
	else
		coil__acount_slow(!alloc, false);
}

/* Counts an object a cache above the seam handed out again (channel.c's
 * request caches): live like an allocation, but not in coil__alloc_total,
 * which counts trips through the allocator. Calling thread. */
static inline void coil__alloc_reused(void)
{
	struct coil__acount *a = &coil__tls_acount;
	if (coil__likely(a->state == 1)) {
		coil__acount_bump(&a->allocs);
		coil__acount_bump(&a->reused);
	} else {
		coil__acount_slow(false, true);
	}
}

/* ---- doubly linked intrusive list */
typedef struct coil__list {
	struct coil__list *next, *prev;
} coil__list;

static inline void coil__list_init(coil__list *l) { l->next = l->prev = l; }
static inline bool coil__list_empty(const coil__list *l) { return l->next == l; }
static inline void coil__list_add_tail(coil__list *l, coil__list *n)
{
	n->prev = l->prev;
	n->next = l;
	l->prev->next = n;
	l->prev = n;
}
static inline void coil__list_del(coil__list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = n;
}

/* ---- ring operations (loop.c). Every SQE's user_data points at a coil__op;
 * its complete callback runs on the worker for each CQE (several for
 * multishot). ops_inflight counts SQEs whose final CQE has not arrived. */
typedef struct coil__worker coil__worker;
typedef struct coil__op coil__op;
typedef void (*coil__op_cb)(coil__op *op, int res, unsigned flags);

struct coil__op {
	coil__op_cb complete;
};

/* ---- cross-thread tasks: an intrusive MPSC inbox per worker */
typedef struct coil__task coil__task;
struct coil__task {
	coil__task *next;
	void (*run)(coil__task *t);
};

/* Deferred work on the worker, run before it next sleeps (not a syscall). */
typedef struct coil__defer {
	coil__list link;
	void (*run)(struct coil__defer *d);
	bool queued;
} coil__defer;

struct coil__bufring;
struct coil_ip_s;

/* Objects that must be closed when their worker stops (channels, listeners,
 * monitors) embed a closer and list it with coil__closer_add. On stop, close
 * runs on the worker; the object must then unlist itself (coil__closer_del)
 * once its ring operations have drained, and free itself even if the user
 * still holds a handle (the handle is invalid after coil_loop_free). */
typedef struct coil__closer {
	coil__list link;
	void (*close)(struct coil__closer *c);
} coil__closer;

/* Objects the stop closed but that callbacks may still call during it
 * (the user's handle stays valid until coil_loop_free returns, rule 16)
 * hold on with coil__closer_hold: the closer moves to the worker's held
 * list (no longer counted as open) and fin(c) runs on the worker once it
 * has run its last callback, before the worker exits. */
void coil__closer_hold(coil__worker *w, coil__closer *c,
		       void (*fin)(coil__closer *c));

/* A worker's timer queue (timer.c, see "timers" below). */
typedef struct coil__timerq {
	coil__list list;     /* coil__timer by deadline (lazily initialised) */
	coil__op op;         /* the worker's one ring timeout */
	struct __kernel_timespec ts;
	uint64_t armed_at;   /* deadline the ring timeout fires at */
	bool armed;          /* the ring timeout is in flight */
	coil__defer retry;   /* a re-arm that found no SQE */
	uint64_t ring_ops;   /* ring ops the timers issued (tests, bench) */
} coil__timerq;

struct coil__worker {
	coil_loop_t *loop;
	unsigned index;
	pthread_t thread;
	struct io_uring *ring; /* allocated so liburing.h stays in loop.c */
	int ring_flags;
	bool poll_wait;    /* sleep in poll(2), not io_uring_enter (valgrind) */
	int efd;               /* eventfd: wake-ups from other threads */
	_Atomic(coil__task *) inbox;
	/* Tasks taken from the inbox and not yet run (budget), in post order. */
	coil__task *backlog, *backlog_tail;
	coil__op efd_op;
	uint64_t efd_val;
	bool efd_armed;
	coil__defer efd_retry; /* re-arms the eventfd read that found no SQE */
	bool sq_stuck;         /* SQ full and the kernel said -EBUSY: reap */
	bool stopping;         /* stop requested: close everything, drain */
	uint64_t stop_cancel_ms; /* the stop's last cancel-all (coil__now_ms) */
	_Atomic bool dead;     /* ring gone: preps fail with -ESHUTDOWN */
	_Atomic bool idle;     /* stopping and found drained (see worker_run) */
	int start_rc;          /* ring setup result reported to coil_loop_new */
	const char *start_what; /* the step start_rc is from */
	bool ring_registered;  /* io_uring_register_ring_fd succeeded */
	/* Settled InProgress handles whose callbacks are due (run in order),
	 * and the function that runs them (installed by inprogress.c when it
	 * queues one; the loop core calls it each turn while ready_head). */
	struct coil_ip_s *ready_head, *ready_tail;
	unsigned (*run_ready)(coil__worker *w, unsigned budget);
	unsigned ip_depth;     /* late-attach callbacks nested now (inprogress.c) */
	void *ip_frame;        /* innermost then-callback running (inprogress.c) */
	void *ip_cache[3];     /* freed handles/nodes for reuse (inprogress.c) */
	unsigned ip_cache_n[3];
	coil__list defers;     /* coil__defer, run before sleeping */
	/* channel.c: channels with deferred work, in order (linked through
	 * their dnext, each holding a reference while queued), run by chd. */
	struct coil_channel_s *chd_head, **chd_tail;
	coil__defer chd;
	coil__list closers;    /* coil__closer: objects to close on stop */
	coil__list held;       /* coil__closer: closed, released at exit */
	unsigned long ops_inflight;
	struct coil__bufring *bufring;
	unsigned pinned;       /* provided buffers lent to zero-copy writes */
	unsigned rr_next;      /* round-robin cursor for handing out clients */
	coil__timerq timerq;   /* timer.c: deadline list, one ring timeout */
	uint64_t sqes;         /* SQEs prepared so far (tests, bench) */
	struct coil__ftable *ftable; /* ftable.c: fixed files, or NULL */
	uint64_t enters;       /* io_uring_enter calls made (tests, bench) */
	uint64_t min_waits;    /* of them, waits with the kernel's min-wait */
	uint64_t min_wait_misses; /* of those, ended by the min-wait (loop.c) */
	unsigned min_wait_us;  /* batch_wait_us in effect (0: feature off) */
	unsigned recv_cap;     /* multishot recv's per-receive cap (0: none) */
	unsigned mw_backoff, mw_skip; /* plain waits after misses (loop.c) */
};

struct coil_loop_s {
	unsigned nworkers;
	coil_loop_opts_t opts;
	coil__worker *workers;
	_Atomic unsigned rr;   /* round-robin for foreign-thread homes */
	_Atomic int stopping;
	pthread_mutex_t start_lock;
	pthread_cond_t start_cond;
	unsigned started;      /* workers that finished ring setup */
	/* resolver thread (addr.c) */
	pthread_mutex_t res_lock;
	pthread_cond_t res_cond;
	coil__task *res_head, *res_tail;
	pthread_t res_thread;
	bool res_started, res_stop;
};

/* The worker the calling thread is, or NULL. */
extern __thread coil__worker *coil__tls_worker;

static inline bool coil__on_worker(const coil__worker *w)
{
	return coil__tls_worker == w;
}

void coil__closer_add(coil__worker *w, coil__closer *c);
void coil__closer_del(coil__closer *c);

/* Picks a home worker: the calling worker if it belongs to loop, else the
 * next round-robin. */
coil__worker *coil__pick_worker(coil_loop_t *loop);

/* Posts t to w's inbox (any thread); w runs t->run(t) on its thread. */
void coil__post(coil__worker *w, coil__task *t);
/* Posts fn(arg) to w (allocating the task): 0 or -ENOMEM. Any thread. */
int coil__post_fn(coil__worker *w, void (*fn)(void *), void *arg);

/* Schedules d to run on the current worker before it sleeps again. */
void coil__defer_add(coil__worker *w, coil__defer *d);
static inline void coil__defer_init(coil__defer *d, void (*run)(coil__defer *))
{
	coil__list_init(&d->link);
	d->run = run;
	d->queued = false;
}
void coil__defer_cancel(coil__defer *d);

/* SQE preparation: each returns 0 or -ENOMEM/-EBUSY if no SQE could be had
 * even after submitting. Counts the op in ops_inflight until the CQE without
 * IORING_CQE_F_MORE. All are worker-only. */
int coil__prep_recv_multishot(coil__worker *w, coil__op *op, int fd);
int coil__prep_read_multishot(coil__worker *w, coil__op *op, int fd);
int coil__prep_read_select(coil__worker *w, coil__op *op, int fd);
/* One recv into a provided buffer (no multishot). */
int coil__prep_recv_select(coil__worker *w, coil__op *op, int fd);
int coil__prep_read(coil__worker *w, coil__op *op, int fd, void *buf,
		    unsigned len);
int coil__prep_send(coil__worker *w, coil__op *op, int fd, const void *buf,
		    size_t len, int flags);
int coil__prep_sendmsg(coil__worker *w, coil__op *op, int fd,
		       const struct msghdr *msg, int flags);
int coil__prep_recvmsg(coil__worker *w, coil__op *op, int fd,
		       struct msghdr *msg, int flags);
int coil__prep_writev(coil__worker *w, coil__op *op, int fd,
		      const struct iovec *iov, unsigned n);
int coil__prep_accept_multishot(coil__worker *w, coil__op *op, int fd);
int coil__prep_connect(coil__worker *w, coil__op *op, int fd,
		       const struct sockaddr *sa, socklen_t len);
int coil__prep_poll_multishot(coil__worker *w, coil__op *op, int fd,
			      unsigned poll_mask);
int coil__prep_timeout(coil__worker *w, coil__op *op,
		       struct __kernel_timespec *ts);
/* Cancels the op whose user_data is target (all matches). op may be NULL:
 * the cancel's own completion is then ignored (but still counted). */
int coil__prep_cancel(coil__worker *w, coil__op *op, coil__op *target);
int coil__prep_timeout_remove(coil__worker *w, coil__op *op, coil__op *target);
/* Moves the pending timeout target to expire ts from now (op may be NULL). */
int coil__prep_timeout_update(coil__worker *w, coil__op *op,
			      coil__op *target, struct __kernel_timespec *ts);
int coil__prep_close(coil__worker *w, coil__op *op, int fd);
/* IORING_OP_FILES_UPDATE of one slot of w's fixed file table to *fd, which
 * the kernel reads when the SQE is issued (it must stay valid until then;
 * -1 clears the slot). */
int coil__prep_files_update(coil__worker *w, coil__op *op, int *fd,
			    unsigned slot);
int coil__prep_shutdown(coil__worker *w, coil__op *op, int fd, int how);
/* Whether the kernel supports an opcode (probed once per process) and, for
 * optional ones, whether w's loop may use it (COIL_LOOP_NO_READ_MULTISHOT).
 * Any thread. */
bool coil__op_supported(const coil__worker *w, int opcode);
/* Kernel features found by the probe (loop.c), minus coil__probe_hide. */
#define COIL__FEAT_OPS 0x1u          /* every opcode coil needs */
#define COIL__FEAT_PBUF_RING 0x2u    /* IORING_REGISTER_PBUF_RING */
#define COIL__FEAT_RECV_MSHOT 0x4u   /* IORING_RECV_MULTISHOT */
#define COIL__FEAT_ACCEPT_MSHOT 0x8u /* IORING_ACCEPT_MULTISHOT */
#define COIL__FEAT_READ_MSHOT 0x10u  /* IORING_OP_READ_MULTISHOT (optional) */
#define COIL__FEAT_PBUF_INC 0x200u   /* IOU_PBUF_RING_INC (optional;
					* coil__probe_hide only: the
					* registration says) */
#define COIL__FEAT_RECV_CAP 0x400u   /* multishot recv's per-receive cap
					* (optional; Linux 6.16) */
#define COIL__FEAT_MIN_TIMEOUT 0x100u /* IORING_FEAT_MIN_TIMEOUT (optional;
					* coil__probe_hide only: the ring's
					* features say) */
unsigned coil__features(void);
/* Tests set bits here to make coil behave as if the kernel lacked them. */
extern unsigned coil__probe_hide;
/* Tests: the next N eventfd-read arms fail as if no SQE could be had. */
extern _Atomic unsigned coil__efd_arm_fail;

/* ---- fixed files (ftable.c): a per-worker registered file table whose
 * slots mirror socket channels' descriptors (issue 14). The fd argument of
 * the coil__prep_* functions above may name a slot: coil__fixed_fd(slot)
 * (a value below -1, never a descriptor) makes the SQE use slot with
 * IOSQE_FIXED_FILE. Worker-only, except where said. */
static inline int coil__fixed_fd(int slot) { return -2 - slot; }
/* Registers w's table unless COIL_LOOP_NO_FIXED_FILES, the kernel lacks it
 * or refuses it (then w->ftable stays NULL); frees it (before ring exit). */
void coil__ftable_init(coil__worker *w);
void coil__ftable_free(coil__worker *w);
/* A slot mirroring fd, its install queued on the ring ahead of any SQE
 * prepared after this call; -1 when there is none to give (no table, full,
 * stopping). */
int coil__ftable_get(coil__worker *w, int fd);
/* Clears slot (queued, or at once while stopping) and frees it. Off the
 * worker a no-op: the table's unregistration clears it. */
void coil__ftable_put(coil__worker *w, int slot);
typedef struct coil__ftable_stat {
	unsigned slots, live;
	uint64_t installs, clears, fails;
} coil__ftable_stat;
/* Tests: w's table (zeros without one); w's thread, or after it exited. */
void coil__ftable_stats(const coil__worker *w, coil__ftable_stat *st);
/* Tests: slots per table (0: the default, RLIMIT_NOFILE up to 65536); set
 * before coil_loop_new. */
extern unsigned coil__ftable_size_override;

/* ---- provided buffers (bufring.c), one group per worker; worker-only */
#define COIL__BGID 0
#define COIL__CQE_F_BUF_MORE (1u << 4) /* IORING_CQE_F_BUF_MORE (6.12) */
/* count/size 0: the defaults (which depend on incremental consumption). */
int coil__bufring_init(coil__worker *w, unsigned count, unsigned size);
void coil__bufring_free(coil__worker *w);
/* A completion that carries IORING_CQE_F_BUFFER and res > 0 bytes: where
 * they are. The completion then holds the buffer (bid = flags >> the buffer
 * shift) until coil__bufring_put(w, bid), which every such completion must
 * get exactly once, after its bytes are used. */
char *coil__bufring_take(coil__worker *w, unsigned flags, int res);
/* A completion that carries IORING_CQE_F_BUFFER and res <= 0 (no bytes):
 * gives the buffer back if, and only if, the kernel consumed it. Instead of
 * take/put. */
void coil__bufring_unused(coil__worker *w, unsigned flags, int res);
/* Drops one hold on buffer bid; the last gives it back to the kernel (made
 * visible at the end of the batch). */
void coil__bufring_put(coil__worker *w, unsigned bid);
/* Publishes recycled buffers; called once per completion batch. */
void coil__bufring_flush(coil__worker *w);
/* Whether a write may keep a received buffer (write_view): so that slow
 * peers cannot hold the ring, at most half of it is kept that way. */
bool coil__bufring_may_lend(const coil__worker *w);
/* Counts a receive that found the ring empty (-ENOBUFS). */
void coil__bufring_enobufs(coil__worker *w);
unsigned coil__bufring_size(const coil__worker *w);
unsigned coil__bufring_count(const coil__worker *w);
typedef struct coil__bufring_stat {
	unsigned count, size;
	bool inc;      /* incremental consumption in use */
	unsigned out;  /* buffers out of the ring now */
	uint64_t enobufs, reuses;
	/* Completions naming a buffer without bytes (coil__bufring_unused):
	 * res < 0, res == 0, and incremental ones without BUF_MORE (those
	 * the handling before 485efdc put back at offset 0: F17). */
	uint64_t nobytes_err, nobytes_zero, nobytes_nomore;
} coil__bufring_stat;
/* Tests, bench: w's ring (zeros without one); w's thread. */
void coil__bufring_stats(const coil__worker *w, coil__bufring_stat *st);
/* Debug trace (F17), compiled in with -DCOIL_PBUF_TRACE only (nothing
 * otherwise): the last COIL_PBUF_TRACE_N take/unused/put events of w's ring
 * (bid, res, flags, offset before and after, holders, the channel named by
 * the last coil__bufring_trace_who). dump prints them to f on w's thread and
 * returns 1, or 0 when the trace is not compiled in. */
#ifndef COIL_PBUF_TRACE_N
#define COIL_PBUF_TRACE_N 4096
#endif
#ifdef COIL_PBUF_TRACE
void coil__bufring_trace_who(coil__worker *w, const void *who);
#else
#define coil__bufring_trace_who(w, who) ((void)0)
#endif
int coil__bufring_trace_dump(const coil__worker *w, FILE *f);

/* ---- InProgress internals used by I/O objects (inprogress.c) */
coil_ip_t *coil__ip_new_on(coil__worker *w);
/* Settle from the home worker with a value/failure; never fails on the home
 * worker for a pending handle that this caller owns the settling of. */
int coil__ip_fail_msg(coil_ip_t *ip, int err, const char *msg);
/* loop.c: a loop was created (live) / is about to be freed (!live); a
 * handle dropped after its loop is gone then never posts to it. */
/* Runs due callbacks; returns how many handles it processed (bounded). */
unsigned coil__ip_run_ready(coil__worker *w, unsigned budget);
coil__worker *coil__ip_home(const coil_ip_t *ip);
/* Value for bytes-failed results (read_exact EOF keeps the partial bytes). */
int coil__ip_fail_bytes(coil_ip_t *ip, int err, void *data, size_t len,
			void (*free_fn)(void *));

/* ---- timers (timer.c) */
/*
 * A worker's timers sit on one list ordered by deadline (CLOCK_MONOTONIC,
 * ns), and one ring timeout is armed for the earliest of them. Starting a
 * timer whose deadline is later than the armed one, and cancelling any
 * timer, costs no ring operation: the armed timeout is moved earlier (one
 * timeout-update) only when a new earliest deadline comes before it, and is
 * re-armed lazily when it fires with later timers left (issue 14).
 */
typedef struct coil__timer coil__timer;
typedef void (*coil__timer_cb)(coil__timer *t, int res);
struct coil__timer {
	coil__list link;     /* on the worker's deadline list */
	coil__defer done;    /* runs cb(t, -ECANCELED) after a cancel */
	uint64_t deadline;   /* CLOCK_MONOTONIC ns */
	coil__worker *w;
	coil__timer_cb cb;
	bool listed;         /* on the deadline list */
	bool cancelling;     /* cancelled, its callback not yet run */
};
/* Arms t on w (the calling worker) to fire once after ms. cb(t, 0) runs at
 * expiry, cb(t, -ECANCELED) after coil__timer_cancel or when the worker
 * stops; either way exactly once and never from inside coil__timer_start
 * or coil__timer_cancel, so cb may free t. */
int coil__timer_start(coil__worker *w, coil__timer *t, uint64_t ms,
		      coil__timer_cb cb);
void coil__timer_cancel(coil__timer *t);
/* Tests: ring operations the timers of w issued so far (w's thread). */
uint64_t coil__timer_ring_ops(const coil__worker *w);

/* ---- per-loop extensions (loop.c): a part of coil that keeps state in
 * every loop without the loop core knowing it by name registers once per
 * process (from a constructor, before any loop exists). Every hook may be
 * NULL. coil_loop_new runs each init before starting workers and, once
 * every worker runs, each started; coil_loop_free runs each stop (in
 * reverse order) before stopping the workers, and each fini (in reverse
 * order) after they have exited and their last tasks ran, just before the
 * loop's memory goes. A failed coil_loop_new runs stop (never started nor
 * fini). */
typedef struct coil__loop_ext {
	void (*init)(coil_loop_t *loop);
	void (*stop)(coil_loop_t *loop);
	void (*started)(coil_loop_t *loop);
	void (*fini)(coil_loop_t *loop);
	struct coil__loop_ext *next;
} coil__loop_ext;
void coil__loop_ext_register(coil__loop_ext *e);

/* ---- resolver (resolver.c): getaddrinfo on a per-loop thread started on first
 * use; a loop extension (init/stop run by loop.c). */
void coil__resolver_init(coil_loop_t *loop);
void coil__resolver_stop(coil_loop_t *loop);

/* ---- monotonic time */
uint64_t coil__now_ms(void);


/* ---- channels (channel.c), shared with socket.c */
#include "buf.h"

#define COIL__IOV_BATCH 16

enum { COIL__CH_NEW, COIL__CH_OPEN, COIL__CH_CLOSING, COIL__CH_CLOSED };
enum { COIL__RK_RECV, COIL__RK_READ_MSHOT, COIL__RK_READ_ONCE,
       COIL__RK_RECV_ONCE /* AF_UNIX stream: one-shot recv (channel.c) */ };

struct coil__writereq;
struct coil__sock;

/*
 * A channel is laid out so that an idle connection carries only what idle
 * needs (issue 14): the write side (the write queue, iovec batch, msghdr,
 * send ops, the linger timer) lives in struct coil__chwr, allocated when a
 * write is queued and given back once the queue is empty with no send in
 * flight; the read queue and the pending read requests in struct
 * coil__chrd, allocated when a byte is queued or a read waits and given
 * back once both are empty (a per-worker cache keeps both cheap); rarely
 * used state (relay/gate, drained signal, steal, the readline signal and
 * delimiters, the read signal's held-back bytes, chunk size, linger time)
 * in struct coil__chext, allocated on first use and kept until the channel
 * is freed. Flags only the home worker touches are bits; a channel with
 * deferred work is on its worker's list through one pointer. An accepted
 * socket is one allocation in jemalloc's 224-byte class: 192 B here, 32 B
 * of socket state.
 */
struct coil__chwr;
struct coil__chext;
struct coil__chrd;

struct coil_channel_s {
	coil__closer closer;
	coil__worker *w;
	_Atomic int refs;     /* user handle + ring ops in flight + holds */
	_Atomic int st;       /* COIL__CH_* */
	/* User references (coil_channel_ref); the last release is the
	 * release. Together they hold one reference in refs. */
	_Atomic int urefs;
	int rerr;             /* read error that ended the stream */
	int fd;
	int fslot;            /* fixed file slot mirroring fd, or -1 (ftable.c) */
	uint8_t mode;         /* COIL_IO_READ | COIL_IO_WRITE */
	uint8_t rkind;
	_Atomic bool close_req; /* close() was called (alive is false) */
	/* socket.c sets it on a listener: reads and writes on it fail at
	 * once with -ENOTCONN instead of waiting forever. */
	_Atomic bool listening;
	/* socket.c (sock, issue 13): a stream socket that never had a
	 * descriptor fails reads with -ENOTCONN unless it is connecting
	 * (sock_unconnected), and counts as alive/readable while it connects
	 * (sock_connecting, kaa). Both stay false for plain channels. */
	_Atomic bool sock_unconnected, sock_connecting;
	/* socket.c: usocket non-blocking mode: reads that cannot be served
	 * now fail with -EAGAIN (channel.c nonblock_read_check). */
	_Atomic bool sock_nonblock;
	_Atomic bool has_line_cb;
	_Atomic bool drain_armed; /* see coil_channel_on_drain */
	/* A spinlock taken around every use of fd off the home worker
	 * (fileno, dup, socket options) and by the home worker when it
	 * retires the number, so no one acts on a descriptor number that was
	 * reused. */
	_Atomic bool fd_lock;
	bool is_socket;           /* read by coil_channel_dup on any thread */
	/* A socket made or wrapped by socket.c: its state (struct
	 * coil__sock, coil__ch_sock) follows this struct in the channel's
	 * own allocation. Set before the channel is shared, then read on any
	 * thread; cleared when it is freed. With it, channel.c calls
	 * coil__sock_closing (on close: connect, shutdown, listener shards,
	 * Unix unlink) and coil__sock_free (on free). */
	bool has_sock;
	bool connecting;          /* sockets: writes wait for the connect */
	/* Home worker only. */
	bool dgram : 1;           /* one datagram per send, no gathering */
	bool registered : 1;      /* on the worker's closer list */
	bool user_released : 1;
	bool eof : 1;             /* no more bytes will be read */
	bool close_on_eof : 1;
	bool close_after_sigq : 1; /* EOF seen; close once sigq is shown */
	bool closed_emitted : 1;
	bool close_expected : 1;
	bool recv_armed : 1, recv_cancelling : 1;
	bool starved : 1;         /* -ENOBUFS: re-arm once buffers are back */
	bool send_inflight : 1, send_cancelling : 1;
	bool in_process : 1, process_again : 1;
	bool lines_due : 1;       /* readline signal to be served (deferred) */
	bool in_flush : 1, flush_again : 1; /* flush_sigq running / to rerun */
	bool cur_kept : 1;        /* write_view kept the buffer just shown */
	/* Queued bytes at the front of rq / sigq are being shown to a signal
	 * right now (consumed when the callback returns): a steal inside the
	 * callback does not move them. */
	bool show_rq : 1, show_sigq : 1;
	bool linger_expired : 1;
	/* socket.c: a shutdown(SHUT_WR) waits for the write queue to drain
	 * (coil__sock_drained runs once it is empty). */
	bool sock_drain_wait : 1;
	bool dqueued : 1;         /* on the worker's deferred-channel list */
	union {
		struct {
			coil__op recv_op;
			coil__op recv_cancel_op;
		};
		coil__task free_task; /* the last put off the home worker */
	};
	/* The read part (struct coil__chrd: the read queue, the pending
	 * read requests in call order), home worker only: NULL while no byte
	 * is queued, no read is pending and the queue holds no storage. */
	struct coil__chrd *rd;
	_Atomic size_t rq_used;
	_Atomic size_t wq_used;
	_Atomic size_t queue_size;
	coil_read_cb on_read;
	void *on_read_ud;
	coil_closed_cb on_closed;
	void *on_closed_ud;
	/* The worker's deferred-channel list (chd_head): interest check,
	 * re-arm after -ENOBUFS, work left for the end of the turn. */
	struct coil_channel_s *dnext;
	/* The write part's iovec batch (its first member), NULL while no
	 * write is queued (the write queue is in the write part); tls.c's
	 * prep_send rewrites iov[0..n). */
	struct iovec *iov;
	_Atomic(struct coil__chext *) ext;
	void *data;
	/* tls.c: a stream filter between the ring and the queues (NULL: the
	 * bytes go through as they are): its state, which begins with its
	 * ops. See coil__filter_ops. */
	struct coil__filter *flt;
};

/* Home worker: whether a write is queued (not yet fully sent). */
bool coil__channel_writes_queued(const coil_channel_t *ch);
/* Home worker: whether anyone wants the channel's bytes (a read signal, a
 * readline signal, a pending read request). */
bool coil__channel_has_consumer(const coil_channel_t *ch);
/* Home worker: takes every byte of the read queue (*n of them) as a
 * coil__malloc'ed block: NULL with *n == 0 when it is empty, NULL with
 * *n > 0 on -ENOMEM (the bytes are dropped either way). */
void *coil__channel_take_queued(coil_channel_t *ch, size_t *n);

/* A stream filter's state begins with this (tls.c). */
struct coil__filter {
	const struct coil__filter_ops *ops;
};

/* socket.c state of a socket (NULL for a plain channel), right after the
 * channel in its allocation (coil__channel_new_sized). Its timeout_ms is
 * the channel's read timeout (usocket settimeout). Any thread. */
static inline struct coil__sock *coil__ch_sock(const coil_channel_t *ch)
{
	return ch->has_sock ? (struct coil__sock *)(void *)((
				      coil_channel_t *)ch + 1)
			    : NULL;
}

/* socket.c hooks for channels with has_sock set (home worker). */
void coil__sock_closing(coil_channel_t *ch);
void coil__sock_free(coil_channel_t *ch);
void coil__sock_drained(coil_channel_t *ch);

/* Home worker or any thread: runs fn(fd, arg) with ch's descriptor held
 * open (the fd lock), or returns -EBADF when it has none or is closed.
 * Socket options, local/peer, dup go through here. */
int coil__channel_fd_call(coil_channel_t *ch, int (*fn)(int fd, void *arg),
			  void *arg);
/* Home worker: gives ch descriptor fd (-1: none) under the fd lock. */
void coil__channel_set_fd(coil_channel_t *ch, int fd);

/* Allocates a channel homed on w with no descriptor (st NEW), holding the
 * caller's reference. Any thread. */
int coil__channel_new(coil__worker *w, coil_channel_t **out);
/* The same with size bytes allocated (at least sizeof the channel): what
 * follows the struct is zeroed and freed with it (socket state). */
int coil__channel_new_sized(coil__worker *w, size_t size,
			    coil_channel_t **out);
/* coil_channel_wrap with size bytes allocated (coil__channel_new_sized) and
 * init(ch) run before the channel is shared with its worker. */
int coil__channel_wrap_sized(coil_loop_t *loop, int fd, int mode, size_t size,
			     void (*init)(coil_channel_t *ch),
			     coil_channel_t **out);
/* Gives ch its descriptor (home worker only): starts reads if anyone wants
 * them, flushes queued writes unless ch->connecting. */
void coil__channel_attach_fd(coil_channel_t *ch, int fd, int mode,
			     bool is_socket);
/* Lists ch for loop stop on its home worker (any thread). */
void coil__channel_register(coil_channel_t *ch);
/* Home worker: the socket finished connecting; flush queued writes. */
void coil__channel_connected(coil_channel_t *ch);
/* Home worker: close now (immediate) with the closed signal's expected. */
void coil__channel_close_local(coil_channel_t *ch, bool immediate,
			       bool expected);
/* Reference counting for objects that keep a channel alive. */
void coil__channel_get(coil_channel_t *ch);
void coil__channel_put(coil_channel_t *ch);

/* ---- stream filters (tls.c): a layer that rewrites the bytes between the
 * ring and the channel's queues, on the home worker. The read queue and the
 * write queue keep holding plaintext; the filter sees every received chunk,
 * and turns the plaintext a send would carry into the bytes to send. */
struct coil__filter_ops {
	/* Received bytes (a view valid during the call); the plaintext goes
	 * on with coil__channel_deliver(). */
	void (*input)(coil_channel_t *ch, const char *p, size_t n);
	/* The peer's end of stream: 0 to end cleanly, or the error to end
	 * the stream with (a truncated TLS stream). */
	int (*eof)(coil_channel_t *ch);
	/* ch->iov[0..n) hold the queued plaintext a send would carry; the
	 * filter replaces them with the bytes to send and returns their
	 * count (0: nothing to send now). */
	int (*prep_send)(coil_channel_t *ch, int n);
	/* res bytes of that send went out: returns how many plaintext bytes
	 * of the write queue are now sent. */
	size_t (*sent)(coil_channel_t *ch, size_t res);
	/* Output of the filter's own is waiting (or owed at close). */
	bool (*pending)(const coil_channel_t *ch);
	/* Reading is wanted even with no reader (a handshake). */
	bool (*want_input)(const coil_channel_t *ch);
	/* close(immediate) begins: returns whether to close immediately. */
	bool (*closing)(coil_channel_t *ch, bool immediate);
	/* The channel is closed (the descriptor may still be closing). */
	void (*closed)(coil_channel_t *ch);
	/* Text for the read error the filter ended the stream with, or NULL. */
	const char *(*errtext)(const coil_channel_t *ch);
	void (*free)(coil_channel_t *ch);
};
/* Home worker: plaintext from the filter enters the channel's queues, as
 * received bytes do without one. Dropped once the channel is not open. */
void coil__channel_deliver(coil_channel_t *ch, const char *p, size_t n);
/* Home worker: ends the stream (err 0: end of stream, else a read error). */
void coil__channel_end(coil_channel_t *ch, int err);
/* Home worker: sends what is due and re-evaluates reading. */
void coil__channel_kick(coil_channel_t *ch);
/* tls.c, home worker (socket.c's shutdown, write queue drained): on a TLS
 * channel, sends close_notify once and returns 1 while its records are
 * still being sent (call again after the next send completed); 0 when the
 * socket may be shut down now (not TLS, sent, handshake not done, failed). */
int coil__tls_shutdown_write(coil_channel_t *ch);

#endif /* COIL_INTERNAL_H */
