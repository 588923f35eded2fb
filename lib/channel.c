/* SPDX-License-Identifier: MIT */
/* coil_channel (kaa IOChannel): buffered async read, readline, read_exact
 * and ordered writes on any stream fd, on the channel's home worker. */
#include "internal.h"
#include "sock.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <liburing/io_uring.h>

#ifndef IORING_OP_READ_MULTISHOT
#define IORING_OP_READ_MULTISHOT 49
#endif

/*
 * Reading. One multishot recv (multishot read for pipes and ttys, single
 * reads for regular files) is armed while someone wants bytes: a pending
 * read request, a read or readline signal. Each completion's provided buffer
 * is shown to the read signal, then copied where it is needed (a request's
 * result or the read queue) and recycled at once: no buffer stays with a
 * channel. When nobody wants bytes, or the read queue holds queue_size bytes,
 * the multishot is cancelled, so a fast producer blocks in the kernel rather
 * than in our memory; the decision is deferred to the end of the loop turn so
 * that a callback which reads again at once does not churn the ring.
 *
 * Writing. Requests queue in call order; at most one send (sendmsg with up to
 * COIL__IOV_BATCH requests gathered, MSG_WAITALL | MSG_NOSIGNAL) is in
 * flight, since io_uring does not order two sends on one socket. Short sends
 * resume from the remainder. A write finishes when its last byte was handed
 * to the kernel.
 *
 * Lifetime. refs counts the user's handle, every ring op in flight and
 * temporary holds around user callbacks; the channel is freed when the count
 * drops to zero, which can only happen after close, once every completion
 * (cancels' own included) has arrived.
 */

static _Atomic size_t live_channels;

size_t coil_live_channels(void)
{
	return atomic_load(&live_channels);
}

enum rr_kind { RR_READ, RR_LINE, RR_EXACT, RR_INTO, RR_READV };

typedef struct readreq {
	coil__list link;
	coil__task task;
	coil_channel_t *ch;
	coil_ip_t *ip;   /* the request's reference */
	int kind;
	bool queued;
	bool aborted;    /* aborted before it reached the home worker */
	bool cached;     /* a CC_READ block */
	size_t n;        /* EXACT/INTO/READV: bytes wanted */
	size_t got;      /* INTO: bytes copied so far */
	char *into;
	size_t nsizes;
	size_t sizes[];  /* READV */
} readreq;

typedef struct coil__writereq {
	struct coil__writereq *next;
	coil__task task;
	coil_channel_t *ch;
	coil_ip_t *ip;
	char *data;
	size_t len, off;
	void (*free_fn)(void *);
	int bid;          /* a provided buffer lent by write_view, or -1 */
	bool queued;      /* in the write queue (home worker) */
	bool started;     /* went into a send: bytes may be the kernel's */
	bool aborted;     /* aborted before it reached the home worker */
	bool cached;      /* a CC_WRITE block of WREQ_BLOCK bytes */
	bool inl;         /* the write part's own request (struct coil__chwr) */
} writereq;

/* Bytes a send copies into the write part's own request (struct
 * coil__chwr below): the part is then 768 bytes, one of jemalloc's size
 * classes (it was 448 without the request; a request of its own from the
 * cache is a 256-byte block). */
#define WR_INL 224

/* The write side (see struct coil_channel_s): exists while a write is queued,
 * a send or its cancel is in flight, or the linger timer runs. Not zeroed
 * when made: wr_get sets what must start known. */
struct coil__chwr {
	struct iovec iov[COIL__IOV_BATCH]; /* first: ch->iov points here */
	coil_channel_t *ch;
	writereq *wq_head;    /* the write queue, in call order */
	writereq **wq_tail;
	struct msghdr msg;
	coil__op send_op, send_cancel_op;
	int send_niov;
	bool linger_armed;
	uint64_t last_progress_ms;
	coil__timer linger_timer;
	/* One write request that lives in the part (home worker only): a
	 * coil_channel_send of up to WR_INL bytes made on the home worker
	 * while it is free copies into it instead of taking a request from
	 * the cache (the common answer: one small send in flight). It is
	 * queued like any request and freed by wreq_free (inl_busy false);
	 * the part is given back only with an empty queue, so never while
	 * it is in use. */
	bool inl_busy;
	writereq inl;
	char inl_data[WR_INL];
};
_Static_assert(sizeof(struct coil__chwr) <= 768,
	       "the write part stays in jemalloc's 768-byte class");

/* Rarely used state, allocated on first use (any thread: published with a
 * compare-and-swap), kept until the channel is freed. */
struct coil__chext {
	_Atomic size_t chunk_size;
	/* Drained signal: write queue at or below low_water after being
	 * above it. */
	_Atomic size_t low_water;
	void (*on_drain)(coil_channel_t *ch, void *ud);
	void *on_drain_ud;
	/* Backpressure across channels: this channel's read signal also
	 * pauses while gate's write queue is at or above half its size;
	 * gate->gated names this channel so its drain can wake it. */
	coil_channel_t *gate;
	_Atomic(coil_channel_t *) gated;
	_Atomic bool gate_paused;
	struct coil__relay *relay; /* as the relay's source */
	/* steal: the victim's receive still drains into steal_to (which
	 * holds steal_wait > 0 and reads nothing of its own until then). */
	coil_channel_t *steal_to;
	int steal_wait;
	_Atomic unsigned linger_ms; /* drain deadline of a graceful close */
	/* readline */
	_Atomic int nlines;   /* readline() calls not yet served */
	coil_read_cb on_line; /* the readline signal (home worker) */
	const coil__delims *delims; /* NULL: "\n" */
	size_t scan;
	void *on_line_ud;
	/* read-signal bytes held back by backpressure */
	coil__bufq sigq;
	size_t sig_back;      /* tail of the shown chunk the signal left */
};

/* The read side (see struct coil_channel_s), home worker only: exists
 * while a byte is queued (or the queue keeps storage for the next ones) or
 * a read request waits; given back (to the worker's cache) once both are
 * empty, so an idle channel read by its signal carries none of it. */
struct coil__chrd {
	coil__bufq rq;        /* bytes received and not yet consumed */
	coil__list reads;     /* pending read requests, in call order */
};

#define CH_CHUNK_DEFAULT ((size_t)1 << 20)

static inline struct coil__chext *X(const coil_channel_t *ch)
{
	return atomic_load_explicit(&((coil_channel_t *)ch)->ext,
				    memory_order_acquire);
}

/* The extension, allocated now if need be (any thread): NULL on -ENOMEM. */
static struct coil__chext *ext_get(coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	if (e)
		return e;
	e = coil__calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	atomic_init(&e->chunk_size, CH_CHUNK_DEFAULT);
	atomic_init(&e->low_water, SIZE_MAX);
	atomic_init(&e->linger_ms, COIL_CHANNEL_LINGER_DEFAULT_MS);
	coil__bufq_init(&e->sigq);
	struct coil__chext *seen = NULL;
	if (!atomic_compare_exchange_strong_explicit(&ch->ext, &seen, e,
						     memory_order_acq_rel,
						     memory_order_acquire)) {
		coil__free(e);
		return seen;
	}
	return e;
}

static const coil__bufq empty_q;

/* The held-back bytes (read only: empty without an extension). */
static inline const coil__bufq *sq(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? &e->sigq : &empty_q;
}

static inline size_t sq_len(const coil_channel_t *ch)
{
	return sq(ch)->len;
}

/* Home worker: frees the held-back bytes' storage. */
static inline void sq_free(coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	if (e)
		coil__bufq_free(&e->sigq);
}

/* Home worker: appends to the held-back bytes: 0 or -ENOMEM. */
static int sq_append(coil_channel_t *ch, const void *p, size_t n)
{
	if (!n)
		return 0;
	struct coil__chext *e = ext_get(ch);
	return e ? coil__bufq_append(&e->sigq, p, n) : -ENOMEM;
}

static inline size_t chunk_size(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? atomic_load_explicit(&e->chunk_size, memory_order_relaxed)
		 : CH_CHUNK_DEFAULT;
}

static inline const coil__delims *delims(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e && e->delims ? e->delims : &coil__delims_default;
}

static inline void scan_reset(coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	if (e)
		e->scan = 0;
}

static inline coil_channel_t *steal_to(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? e->steal_to : NULL;
}

static inline struct coil__relay *relay_of(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? e->relay : NULL;
}

static inline coil_channel_t *gated_of(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? atomic_load(&e->gated) : NULL;
}

static inline struct coil__chwr *WR(const coil_channel_t *ch)
{
	return ch->iov ? coil__container_of(ch->iov, struct coil__chwr, iov)
		       : NULL;
}

/* The first queued write (NULL: none, or no write part). */
static inline writereq *wq_head(const coil_channel_t *ch)
{
	struct coil__chwr *wr = WR(ch);
	return wr ? wr->wq_head : NULL;
}

static inline coil_read_cb line_cb(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? e->on_line : NULL;
}

static inline unsigned linger_ms(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	return e ? atomic_load(&e->linger_ms) : COIL_CHANNEL_LINGER_DEFAULT_MS;
}

/* The read queue (read only: empty without a read part). */
static inline const coil__bufq *RQ(const coil_channel_t *ch)
{
	return ch->rd ? &ch->rd->rq : &empty_q;
}

static inline size_t rq_len(const coil_channel_t *ch)
{
	return ch->rd ? ch->rd->rq.len : 0;
}

static inline bool reads_empty(const coil_channel_t *ch)
{
	return !ch->rd || coil__list_empty(&ch->rd->reads);
}

/* The oldest pending read request (the list must not be empty). */
static inline readreq *reads_first(const coil_channel_t *ch)
{
	return coil__container_of(ch->rd->reads.next, readreq, link);
}

/* ---- per-worker caches of read requests, write requests and write parts:
 * reused by the next allocation on that worker thread without a trip
 * through the allocator (freed when the thread exits). Off in sanitizer
 * and valgrind builds, where every allocation must be seen. A reuse counts
 * as a live allocation but not in coil__alloc_total (alloc.c). */
enum { CC_READ, CC_WRITE, CC_WR, CC_RD, CC_N };
/* Per kind: one turn may free a write per connection (a broadcast, or a
 * saturated server answering every connection in a turn), and a cache
 * smaller than that sends the excess through the allocator, which the next
 * turn pays again (as inprogress.c's PC_MAX; test_hot). */
#define CC_MAX 256
/* Write requests are cached as blocks with room for this many bytes in
 * all, so small copied writes (an echo) need no allocation. */
#define WREQ_BLOCK 256

#ifndef COIL_NO_JEMALLOC
struct ccache {
	void *head[CC_N];
	unsigned n[CC_N];
	bool keyed;
};
static __thread struct ccache ccache;
static pthread_key_t cc_key;
static pthread_once_t cc_once = PTHREAD_ONCE_INIT;

static void cc_exit(void *arg)
{
	struct ccache *c = arg;
	for (int k = 0; k < CC_N; k++) {
		while (c->head[k]) {
			void *p = c->head[k];
			c->head[k] = *(void **)p;
			coil__alloc_counted(true);
			coil__free(p);
		}
		c->n[k] = 0;
	}
}

static void cc_init(void)
{
	pthread_key_create(&cc_key, cc_exit);
}
#endif

#ifndef COIL_NO_JEMALLOC
/* A worker's first put: the cache is given back when its thread exits. */
static __attribute__((noinline, cold)) void cc_first_put(struct ccache *c)
{
	pthread_once(&cc_once, cc_init);
	pthread_setspecific(cc_key, c);
	c->keyed = true;
}
#endif

/* Inlined (once per answer each, for a request and a write part): k is a
 * constant at every call site. */
static inline __attribute__((always_inline)) void *cc_get(int k, size_t size)
{
#ifndef COIL_NO_JEMALLOC
	struct ccache *c = &ccache;
	if (coil__likely(coil__tls_worker && c->head[k])) {
		void *p = c->head[k];
		c->head[k] = *(void **)p;
		c->n[k]--;
		coil__alloc_reused();
		return p;
	}
#else
	(void)k;
#endif
	return coil__malloc(size);
}

static inline __attribute__((always_inline)) void cc_put(int k, void *p)
{
#ifndef COIL_NO_JEMALLOC
	struct ccache *c = &ccache;
	if (coil__likely(coil__tls_worker && c->n[k] < CC_MAX)) {
		if (coil__unlikely(!c->keyed))
			cc_first_put(c);
		*(void **)p = c->head[k];
		c->head[k] = p;
		c->n[k]++;
		coil__alloc_counted(false);
		return;
	}
#else
	(void)k;
#endif
	coil__free(p);
}

/* Home worker: the read part, made if need be (NULL on -ENOMEM). */
static struct coil__chrd *rd_get(coil_channel_t *ch)
{
	struct coil__chrd *rd = ch->rd;
	if (coil__likely(rd != NULL))
		return rd;
	rd = cc_get(CC_RD, sizeof(*rd));
	if (!rd)
		return NULL;
	coil__bufq_init(&rd->rq);
	coil__list_init(&rd->reads);
	ch->rd = rd;
	return rd;
}

/*
 * Home worker: gives the read part back if it holds nothing (no byte, no
 * storage, no request) and no frame is using it. The per-message paths do
 * not call this: a read served by the bytes that just came is usually
 * followed by the next one from its callback, and a round trip through the
 * cache for every message would cost more than the part. It runs at the end
 * of defer_run instead, which a receive that is no longer wanted always
 * reaches (to cancel a multishot receive), and on the rare paths (abort,
 * steal, STARTTLS, freeing). A one-shot receiver (AF_UNIX, pipes) whose
 * reads stopped may keep an empty part until its next deferred work.
 */
static void rd_put(coil_channel_t *ch)
{
	struct coil__chrd *rd = ch->rd;
	if (!rd || rd->rq.buf || !coil__list_empty(&rd->reads) ||
	    ch->in_process || ch->show_rq)
		return;
	ch->rd = NULL;
	cc_put(CC_RD, rd);
}

/* Home worker: appends n bytes to the read queue: 0 or -ENOMEM. */
static int rq_append(coil_channel_t *ch, const void *p, size_t n)
{
	if (!n)
		return 0;
	struct coil__chrd *rd = rd_get(ch);
	return rd ? coil__bufq_append(&rd->rq, p, n) : -ENOMEM;
}

/*
 * Home worker: defer_run(ch) runs before the worker sleeps again, once
 * however often this is called meanwhile. The channels with deferred work
 * are one list per worker, run by one coil__defer (chd_run), so a channel
 * carries a pointer for it, not a list node of its own; a queued channel
 * holds a reference, so it is never freed while listed. Off the home worker
 * (calls run by coil_loop_free after the worker left) nothing is deferred:
 * that work would never run.
 */
static void chd_run(coil__defer *d);

static void ch_defer(coil_channel_t *ch)
{
	coil__worker *w = ch->w;
	if (ch->dqueued || !coil__on_worker(w))
		return;
	if (coil__unlikely(!w->chd_tail)) {
		coil__defer_init(&w->chd, chd_run);
		w->chd_tail = &w->chd_head;
	}
	ch->dqueued = true;
	ch->dnext = NULL;
	coil__channel_get(ch);
	*w->chd_tail = ch;
	w->chd_tail = &ch->dnext;
	coil__defer_add(w, &w->chd);
}

static void defer_run(coil_channel_t *ch);

/* The worker's deferred channels, in the order they were queued. Work they
 * defer again while this runs waits for the next turn (a new list). */
static void chd_run(coil__defer *d)
{
	coil__worker *w = coil__container_of(d, coil__worker, chd);
	coil_channel_t *ch = w->chd_head;
	w->chd_head = NULL;
	w->chd_tail = &w->chd_head;
	while (ch) {
		coil_channel_t *next = ch->dnext; /* listed: referenced */
		ch->dqueued = false;
		defer_run(ch);
		ch = next;
	}
}

static void process(coil_channel_t *ch);
static void update_interest(coil_channel_t *ch);
static inline void kick_write(coil_channel_t *ch);
static void finish_close(coil_channel_t *ch);
static void maybe_close_fd(coil_channel_t *ch);
static void flush_sigq(coil_channel_t *ch);
static void finish_empty(coil_ip_t *ip);
static void process_api(coil_channel_t *ch);
static void emit_closed(coil_channel_t *ch);
static void steal_drained(coil_channel_t *victim);
static void linger_stop(coil_channel_t *ch);
static void fail_all_reads(coil_channel_t *ch, int err, const char *msg);
static void gate_wake(coil_channel_t *ch);
static void relay_check(coil_channel_t *ch);
static void drain_check(coil_channel_t *ch);

static inline bool on_home(const coil_channel_t *ch)
{
	return coil__on_worker(ch->w);
}

static inline int state(const coil_channel_t *ch)
{
	return atomic_load_explicit(&ch->st, memory_order_acquire);
}

static inline void set_state(coil_channel_t *ch, int st)
{
	atomic_store_explicit(&ch->st, st, memory_order_release);
}

/* ---- lifetime ---- */

void coil__channel_get(coil_channel_t *ch)
{
	atomic_fetch_add_explicit(&ch->refs, 1, memory_order_relaxed);
}

static void fail_writes(coil_channel_t *ch, int first_err, const char *msg);

static void channel_free(coil_channel_t *ch)
{
	/* Nothing a freed channel held may stay pending: its requests fail
	 * (normally close has settled them all already). */
	fail_all_reads(ch, -EBADF, "channel freed");
	fail_writes(ch, -EBADF, "channel freed");
	if (ch->iov) {
		cc_put(CC_WR, WR(ch));
		ch->iov = NULL;
	}
	if (ch->has_sock)
		coil__sock_free(ch);
	if (ch->flt) /* tls.c */
		ch->flt->ops->free(ch);
	if (ch->fslot >= 0) /* a descriptor retired without set_fd */
		coil__ftable_put(ch->w, ch->fslot);
	if (ch->registered)
		coil__closer_del(&ch->closer);
	/* (Never on the deferred list: it holds a reference.) */
	if (ch->rd) {
		coil__bufq_free(&ch->rd->rq);
		cc_put(CC_RD, ch->rd);
		ch->rd = NULL;
	}
	struct coil__chext *e = X(ch);
	if (e) {
		coil__bufq_free(&e->sigq);
		coil__delims_free((coil__delims *)e->delims);
		coil__free(e);
	}
	atomic_fetch_sub(&live_channels, 1);
	coil__free(ch);
}

static void free_task_run(coil__task *t)
{
	channel_free(coil__container_of(t, coil_channel_t, free_task));
}

/*
 * The last reference can be dropped on any thread (a listener shard, a
 * handle's value freed elsewhere), but the channel is unlisted from its
 * worker's closers there: free it on the home worker, or here once that
 * worker has exited.
 */
void coil__channel_put(coil_channel_t *ch)
{
	if (atomic_fetch_sub_explicit(&ch->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (on_home(ch) || ch->w->dead) {
		channel_free(ch);
		return;
	}
	ch->free_task.run = free_task_run;
	coil__post(ch->w, &ch->free_task);
}

/* The stopped worker ran its last callback: the user's reference goes. */
static void held_release(coil__closer *c)
{
	coil__channel_put(coil__container_of(c, coil_channel_t, closer));
}

static void closer_close(coil__closer *c)
{
	coil_channel_t *ch = coil__container_of(c, coil_channel_t, closer);
	/* A channel whose last reference is already gone only waits for its
	 * free task (posted from another thread): leave it alone. */
	int refs = atomic_load(&ch->refs);
	do {
		if (refs == 0)
			return;
	} while (!atomic_compare_exchange_weak(&ch->refs, &refs, refs + 1));
	/* The loop is stopping: close now and drop the user's handle on the
	 * user's behalf (it is invalid once coil_loop_free returns). Until
	 * then callbacks that run during the stop (the failed requests', the
	 * closed signal) may still call the channel: the stop holds the
	 * user's reference until the worker has run its last callback
	 * (apiseq F13: such a call touched a channel the stop had freed). */
	coil__channel_close_local(ch, true, true);
	if (!ch->user_released) {
		ch->user_released = true;
		coil__closer_hold(ch->w, &ch->closer, held_release);
	}
	coil__channel_put(ch);
}

static void chd_run(coil__defer *d);

int coil__channel_new(coil__worker *w, coil_channel_t **out)
{
	return coil__channel_new_sized(w, sizeof(coil_channel_t), out);
}

int coil__channel_new_sized(coil__worker *w, size_t size,
			    coil_channel_t **out)
{
	coil_channel_t *ch = coil__calloc(1, size);
	if (!ch)
		return -ENOMEM;
	ch->w = w;
	atomic_init(&ch->refs, 1);
	atomic_init(&ch->urefs, 1);
	atomic_init(&ch->st, COIL__CH_NEW);
	ch->fd = -1;
	ch->fslot = -1;
	ch->close_on_eof = true;
	ch->close_expected = true;
	coil__list_init(&ch->closer.link);
	ch->closer.close = closer_close;
	atomic_init(&ch->queue_size, 1u << 20);
	atomic_fetch_add(&live_channels, 1);
	*out = ch;
	return 0;
}

/* Home worker: list the channel for loop stop, once. */
static void do_register(coil_channel_t *ch)
{
	if (!ch->registered) {
		ch->registered = true;
		coil__closer_add(ch->w, &ch->closer);
		/* Listed after the stop walk (a client accepted in the last
		 * batch, a call that arrived late): closed at the end of this
		 * turn, not under the caller's feet. */
		if (ch->w->stopping)
			ch_defer(ch);
	}
}

/* ---- forwarding calls from other threads ---- */

/*
 * A call made off the home worker is packed into a task and run there. The
 * task holds a channel reference so the channel outlives the trip.
 */
enum call_kind {
	CALL_REGISTER,
	CALL_ATTACH,
	CALL_CLOSE,
	CALL_RELEASE,
	CALL_ON_READ,
	CALL_ON_LINE,
	CALL_ON_CLOSED,
	CALL_DELIMS,
	CALL_INTEREST,
	CALL_EOF_CLOSE,
	CALL_REWRAP,
	CALL_WAKE,
	CALL_UNGATE,
	CALL_ON_DRAIN,
	CALL_RELAY,
	CALL_RELAY_CHECK,
};

struct call {
	coil__task task;
	coil_channel_t *ch;
	int kind;
	int i;
	void *cb;
	void *ud;
};

static void call_local(coil_channel_t *ch, int kind, int i, void *cb,
		       void *ud);
static void rewrap_local(coil_channel_t *ch, int fd, int mode);
static void relay_start(coil_channel_t *src, struct coil__relay *r);
static void relay_dst_closed(coil_channel_t *src, coil_channel_t *dst);

static void call_task_run(coil__task *t)
{
	struct call *c = coil__container_of(t, struct call, task);
	call_local(c->ch, c->kind, c->i, c->cb, c->ud);
	coil__channel_put(c->ch);
	coil__free(c);
}

static int call(coil_channel_t *ch, int kind, int i, void *cb, void *ud)
{
	if (on_home(ch)) {
		call_local(ch, kind, i, cb, ud);
		return 0;
	}
	struct call *c = coil__malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->task.run = call_task_run;
	c->ch = ch;
	c->kind = kind;
	c->i = i;
	c->cb = cb;
	c->ud = ud;
	coil__channel_get(ch);
	coil__post(ch->w, &c->task);
	return 0;
}

/* ---- reading: the ring side ---- */

static void recv_complete(coil__op *op, int res, unsigned flags);
static void recv_cancel_complete(coil__op *op, int res, unsigned flags);

/*
 * Backpressure for the read signal. While half the write queue is in use,
 * bytes for the read signal wait in sigq (in order, none lost) and reading
 * stops; as writes drain they are shown to the signal again. The bytes that
 * were already received when the pause began are bounded by what one
 * completion batch can carry (the worker's provided buffers).
 */
static bool queue_high(const coil_channel_t *ch)
{
	return atomic_load(&ch->wq_used) >= atomic_load(&ch->queue_size) / 2;
}

/* The low-water mark: set, or a quarter of queue_size. */
static size_t low_water(const coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	size_t lw = e ? atomic_load_explicit(&e->low_water, memory_order_relaxed)
		      : SIZE_MAX;
	return lw != SIZE_MAX ? lw : atomic_load(&ch->queue_size) / 4;
}

/*
 * The gate (a relay's destination, maybe on another worker) pauses this
 * channel's read signal while its own write queue is high. The flag is
 * raised before the second look, and the gate drops its queue before it
 * looks at the flag (gate_wake), so one of the two always sees the other.
 */
static bool gate_high(coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	coil_channel_t *g = e ? e->gate : NULL;
	if (!g || !queue_high(g))
		return false;
	atomic_store(&e->gate_paused, true);
	if (queue_high(g))
		return true;
	atomic_store(&e->gate_paused, false);
	return false;
}

static bool signal_paused(coil_channel_t *ch)
{
	return queue_high(ch) || gate_high(ch);
}

static bool want_read(coil_channel_t *ch)
{
	if (ch->fd < 0 || ch->eof || !(ch->mode & COIL_IO_READ) ||
	    state(ch) != COIL__CH_OPEN || ch->w->stopping)
		return false;
	struct coil__chext *e = X(ch);
	struct coil__chrd *rd = ch->rd;
	if (coil__likely(!e && !rd && !ch->flt)) {
		/* The common case, the rest below without what is absent:
		 * no read waits, nothing is queued or held back, no gate. */
		if (ch->on_read)
			return !queue_high(ch);
		return atomic_load(&ch->sock_nonblock);
	}
	if (e && e->steal_wait)
		return false;
	if (ch->flt && ch->flt->ops->want_input(ch)) /* tls.c: a handshake */
		return true;
	size_t limit = atomic_load_explicit(&ch->queue_size,
					    memory_order_relaxed);
	bool reads = rd && !coil__list_empty(&rd->reads);
	if (reads) {
		readreq *r = reads_first(ch);
		if ((r->kind == RR_EXACT || r->kind == RR_READV) && r->n > limit)
			limit = r->n;
	}
	if (rd && rd->rq.len >= limit)
		return false;
	/* A read-signal consumer that writes back (echo, relay) is not fed
	 * faster than its writes drain (see signal_paused). */
	if (ch->on_read && (signal_paused(ch) || (e && e->sigq.len)))
		return false;
	return ch->on_read || (e && e->on_line) || reads ||
	       atomic_load(&ch->sock_nonblock); /* sock: buffer ahead */
}

/* The file a ring op on ch names: a socket's fixed file slot (issue 14,
 * ftable.c; taken on its first op, mirroring ch->fd), else ch->fd. */
static inline int ring_fd(coil_channel_t *ch)
{
	if (ch->fslot < 0 && ch->is_socket && ch->fd >= 0 && ch->w->ftable)
		ch->fslot = coil__ftable_get(ch->w, ch->fd);
	return ch->fslot >= 0 ? coil__fixed_fd(ch->fslot) : ch->fd;
}

static void arm_recv(coil_channel_t *ch)
{
	int rc;
	ch->recv_op.complete = recv_complete;
	switch (ch->rkind) {
	case COIL__RK_RECV:
		rc = coil__prep_recv_multishot(ch->w, &ch->recv_op, ring_fd(ch));
		break;
	case COIL__RK_RECV_ONCE:
		rc = coil__prep_recv_select(ch->w, &ch->recv_op, ring_fd(ch));
		break;
	case COIL__RK_READ_MSHOT:
		rc = coil__prep_read_multishot(ch->w, &ch->recv_op, ch->fd);
		break;
	default:
		rc = coil__prep_read_select(ch->w, &ch->recv_op, ch->fd);
		break;
	}
	if (rc) {
		/* No SQE even after a submit: try again before sleeping
		 * (unless the ring is gone for good). */
		if (rc != -ESHUTDOWN)
			ch_defer(ch);
		return;
	}
	ch->recv_armed = true;
	coil__channel_get(ch);
}

static void cancel_recv(coil_channel_t *ch)
{
	/* A stopping worker cancels everything in one request (loop.c). */
	if (!ch->recv_armed || ch->recv_cancelling || ch->w->stopping)
		return;
	ch->recv_cancel_op.complete = recv_cancel_complete;
	int rc = coil__prep_cancel(ch->w, &ch->recv_cancel_op, &ch->recv_op);
	if (rc == 0) {
		ch->recv_cancelling = true;
		coil__channel_get(ch);
	} else if (rc != -ESHUTDOWN) {
		ch_defer(ch);
	}
}

/* Arms reading when wanted; a disarm waits for the end of the turn. */
static void update_interest(coil_channel_t *ch)
{
	if (want_read(ch)) {
		if (!ch->recv_armed && !ch->recv_cancelling && !ch->starved)
			arm_recv(ch);
	} else if (ch->recv_armed && !ch->recv_cancelling) {
		ch_defer(ch);
	}
}

/* Runs ch's deferred work; drops the reference the list held. */
static void defer_run(coil_channel_t *ch)
{
	/* The callbacks run below may release the channel: the list's
	 * reference keeps it until the end of this run (apiseq F10, a
	 * heap-use-after-free). */
	ch->starved = false;
	/* Work an API call left for later so that no user callback runs
	 * inside it (rule 13): held-back bytes for a new read signal, lines
	 * for a new readline signal. */
	if (sq_len(ch) && state(ch) == COIL__CH_OPEN)
		flush_sigq(ch);
	if (ch->lines_due) {
		ch->lines_due = false;
		process(ch);
	}
	/* A send that found no SQE (SQ full, kernel busy) was deferred too. */
	kick_write(ch);
	if (want_read(ch)) {
		if (!ch->recv_armed && !ch->recv_cancelling)
			arm_recv(ch);
	} else if (ch->recv_armed) {
		cancel_recv(ch);
	}
	if (state(ch) == COIL__CH_CLOSED)
		maybe_close_fd(ch);
	if (ch->w->stopping && ch->registered && !ch->user_released)
		closer_close(&ch->closer);
	rd_put(ch);
	coil__channel_put(ch); /* last: may free the channel */
}

static void recv_cancel_complete(coil__op *op, int res, unsigned flags)
{
	coil_channel_t *ch = coil__container_of(op, coil_channel_t,
						recv_cancel_op);
	ch->recv_cancelling = false;
	/* Re-arm only now: a new recv must never be hit by an old cancel. */
	update_interest(ch);
	maybe_close_fd(ch);
	coil__channel_put(ch);
}

static void set_eof(coil_channel_t *ch, int err);
static void on_bytes(coil_channel_t *ch, const char *p, size_t n, int bid);

static void recv_complete(coil__op *op, int res, unsigned flags)
{
	coil_channel_t *ch = coil__container_of(op, coil_channel_t, recv_op);
	bool more = flags & IORING_CQE_F_MORE;
	if (!more)
		ch->recv_armed = false;
	/* A provided buffer with bytes: this completion holds it until the
	 * put below (or a zero-copy write's end). One named without bytes
	 * (an end of stream, an error) goes back only if the kernel consumed
	 * it (coil__bufring_unused). */
	unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
	char *buf = NULL;
	coil__bufring_trace_who(ch->w, ch); /* -DCOIL_PBUF_TRACE only */
	if ((flags & IORING_CQE_F_BUFFER) && res > 0)
		buf = coil__bufring_take(ch->w, flags, res);
	else if (flags & IORING_CQE_F_BUFFER)
		coil__bufring_unused(ch->w, flags, res);
	coil_channel_t *to = steal_to(ch);
	if (res > 0 && to) {
		/* Stolen: what the old receive still takes belongs to the
		 * thief, in order, before anything it reads itself. */
		while (steal_to(to)) /* the thief was stolen in turn */
			to = steal_to(to);
		if (buf && state(to) == COIL__CH_OPEN && !to->eof)
			on_bytes(to, buf, (size_t)res, -1);
		if (buf)
			coil__bufring_put(ch->w, bid);
	} else if (res > 0 && buf) {
		/* Bytes that arrive after close are dropped: the user asked
		 * for the channel to stop. */
		if (state(ch) == COIL__CH_OPEN && !ch->eof && ch->flt)
			ch->flt->ops->input(ch, buf, (size_t)res); /* tls.c */
		else if (state(ch) == COIL__CH_OPEN && !ch->eof)
			on_bytes(ch, buf, (size_t)res, (int)bid);
		/* Given back now, unless a zero-copy write kept it. */
		if (ch->cur_kept)
			ch->cur_kept = false;
		else
			coil__bufring_put(ch->w, bid);
	} else if (res > 0) {
		/* Bytes without a buffer: not from coil's receives. */
		set_eof(ch, -EIO);
	} else if (to) {
		/* The thief's own receive will see the end or the error. */
	} else if (res == 0) {
		set_eof(ch, ch->flt ? ch->flt->ops->eof(ch) : 0); /* tls.c */
	} else if (res == -ENOBUFS) {
		/* The worker's buffers ran out within one batch. They are all
		 * recycled by the end of it: re-arm then (from the defer, not
		 * now, or the new recv would find the ring still empty). No
		 * byte was lost: the bytes wait in the socket. */
		coil__bufring_enobufs(ch->w);
		ch->starved = true;
		ch_defer(ch);
	} else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
		set_eof(ch, res);
	}
	if (!more) {
		if (to)
			steal_drained(ch);
		update_interest(ch);
		maybe_close_fd(ch);
		coil__channel_put(ch);
	}
}

/* ---- reading: serving requests ---- */

static void rq_changed(coil_channel_t *ch)
{
	atomic_store_explicit(&ch->rq_used, rq_len(ch), memory_order_relaxed);
}

static void rq_consume(coil_channel_t *ch, size_t n)
{
	if (ch->rd)
		coil__bufq_consume(&ch->rd->rq, n);
	scan_reset(ch);
}

static readreq *rreq_alloc(size_t nsizes)
{
	size_t size = sizeof(readreq) + nsizes * sizeof(size_t);
	readreq *r = nsizes ? coil__malloc(size) : cc_get(CC_READ, size);
	if (r) {
		memset(r, 0, size);
		r->cached = !nsizes;
	}
	return r;
}

static void rreq_free(readreq *r)
{
	if (r->cached)
		cc_put(CC_READ, r);
	else
		coil__free(r);
}

static void req_done(coil_channel_t *ch, readreq *r)
{
	coil__list_del(&r->link);
	r->queued = false;
	if (r->kind == RR_LINE)
		atomic_fetch_sub(&X(ch)->nlines, 1);
	coil_ip_unref(r->ip);
	rreq_free(r);
}

/* Finishes r with the first n bytes of the read queue. */
static void req_take(coil_channel_t *ch, readreq *r, size_t n, int err)
{
	void *p = n ? coil__bufq_take(&ch->rd->rq, n) : NULL;
	scan_reset(ch);
	if (n && !p) {
		coil__ip_fail_msg(r->ip, -ENOMEM, "out of memory for a read");
	} else if (err) {
		coil__ip_fail_bytes(r->ip, err, p, n, coil_free);
	} else if (!p) {
		finish_empty(r->ip);
	} else {
		coil_ip_finish_bytes(r->ip, p, n, coil_free);
	}
	req_done(ch, r);
}

/* 0 bytes as an allocation of their own, so that a caller who steals them
 * may coil_free() them like any other result. */
static void finish_empty(coil_ip_t *ip)
{
	void *p = coil__malloc(1);
	if (p)
		coil_ip_finish_bytes(ip, p, 0, coil_free);
	else
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
}

/* At end of stream with nothing for r: 0 bytes, or the read error. */
static const char *rerr_msg(const coil_channel_t *ch)
{
	return ch->flt ? ch->flt->ops->errtext(ch) : NULL; /* tls.c */
}

static void req_end(coil_channel_t *ch, readreq *r)
{
	if (ch->rerr)
		coil__ip_fail_msg(r->ip, ch->rerr, rerr_msg(ch));
	else
		finish_empty(r->ip);
	req_done(ch, r);
}

static void readv_finish(coil_channel_t *ch, readreq *r, size_t have)
{
	size_t count = 0, left = have;
	for (size_t i = 0; i < r->nsizes && left; i++) {
		count++;
		left -= left < r->sizes[i] ? left : r->sizes[i];
	}
	size_t hdr = sizeof(coil_readv_t) + count * sizeof(struct iovec);
	coil_readv_t *v = coil__malloc(hdr + have);
	if (!v) {
		coil__ip_fail_msg(r->ip, -ENOMEM, "out of memory for readv");
		req_done(ch, r);
		return;
	}
	char *p = (char *)v + hdr;
	if (have)
		memcpy(p, coil__bufq_data(RQ(ch)), have);
	rq_consume(ch, have);
	v->count = count;
	left = have;
	for (size_t i = 0; i < count; i++) {
		size_t n = left < r->sizes[i] ? left : r->sizes[i];
		v->iov[i].iov_base = p;
		v->iov[i].iov_len = n;
		p += n;
		left -= n;
	}
	coil_ip_finish_ptr(r->ip, v, coil_free);
	req_done(ch, r);
}

/* The end of the stream as readers see it: bytes still held for a paused
 * read signal come first (flush_sigq hands them on). */
static inline bool rq_eof(const coil_channel_t *ch)
{
	return ch->eof && !sq_len(ch);
}

/* Serves the request at the head of the queue if it can be; returns whether
 * it completed. */
static bool serve(coil_channel_t *ch, readreq *r)
{
	size_t have = rq_len(ch);
	const char *d = coil__bufq_data(RQ(ch));
	size_t qsize = atomic_load_explicit(&ch->queue_size,
					    memory_order_relaxed);
	switch (r->kind) {
	case RR_READ: {
		size_t chunk = chunk_size(ch);
		if (have) {
			req_take(ch, r, have < chunk ? have : chunk, 0);
			return true;
		}
		break;
	}
	case RR_LINE: {
		struct coil__chext *e = X(ch); /* read_submit made it */
		size_t n = have ? coil__find_line(d, have, delims(ch), &e->scan,
						  rq_eof(ch))
				: 0;
		if ((!n && have >= qsize) || n > qsize)
			n = qsize; /* an over-long line, in pieces */
		if (!n && rq_eof(ch))
			n = have; /* the partial line at the end */
		if (n) {
			req_take(ch, r, n, 0);
			return true;
		}
		break;
	}
	case RR_EXACT:
		if (have >= r->n) {
			req_take(ch, r, r->n, 0);
			return true;
		}
		if (rq_eof(ch)) {
			req_take(ch, r, have, ch->rerr ? ch->rerr : COIL_EOF);
			return true;
		}
		return false;
	case RR_INTO: {
		size_t n = r->n - r->got;
		if (n > have)
			n = have;
		if (n) {
			memcpy(r->into + r->got, d, n);
			r->got += n;
			rq_consume(ch, n);
		}
		if (r->got == r->n || rq_eof(ch)) {
			if (!r->got && ch->rerr)
				coil__ip_fail_msg(r->ip, ch->rerr, rerr_msg(ch));
			else
				coil_ip_finish_int(r->ip, (int64_t)r->got);
			req_done(ch, r);
			return true;
		}
		return false;
	}
	case RR_READV:
		if (have >= r->n || rq_eof(ch)) {
			readv_finish(ch, r, have < r->n ? have : r->n);
			return true;
		}
		return false;
	}
	if (rq_eof(ch)) {
		req_end(ch, r);
		return true;
	}
	return false;
}

/* Emits complete lines to the readline signal (a view into the queue). */
static void emit_lines(coil_channel_t *ch)
{
	size_t qsize = atomic_load_explicit(&ch->queue_size,
					    memory_order_relaxed);
	struct coil__chext *e = X(ch); /* on_readline made it */
	while (e->on_line && rq_len(ch)) {
		size_t n = coil__find_line(coil__bufq_data(RQ(ch)), rq_len(ch),
					   delims(ch), &e->scan, rq_eof(ch));
		if ((!n && rq_len(ch) >= qsize) || n > qsize)
			n = qsize;
		if (!n && rq_eof(ch))
			n = rq_len(ch);
		if (!n)
			break;
		ch->show_rq = true;
		e->on_line(ch, coil__bufq_data(RQ(ch)), n, e->on_line_ud);
		ch->show_rq = false;
		rq_consume(ch, n);
	}
}

/*
 * Serves pending requests from the read queue in order, then the readline
 * signal. User callbacks (signals) can re-enter the channel (read, close,
 * release); a re-entry while serving only marks the work to be redone, so
 * the queue is never walked by two frames at once.
 */
static void process(coil_channel_t *ch)
{
	if (ch->in_process) {
		ch->process_again = true;
		return;
	}
	ch->in_process = true;
	coil__channel_get(ch);
	do {
		ch->process_again = false;
		while (!reads_empty(ch)) {
			if (!serve(ch, reads_first(ch)))
				break;
		}
		if (line_cb(ch))
			emit_lines(ch);
	} while (ch->process_again);
	ch->in_process = false;
	rq_changed(ch);
	update_interest(ch);
	coil__channel_put(ch);
}

/*
 * process() for API calls (read, close, signal changes): serves requests,
 * whose handles only queue their callbacks, but leaves the readline signal
 * to the end of the turn, so that no user callback runs inside the call
 * (rule 13).
 */
static void process_api(coil_channel_t *ch)
{
	struct coil__chext *e = X(ch);
	if (!e || !e->on_line) {
		process(ch);
		return;
	}
	coil_read_cb cb = e->on_line;
	e->on_line = NULL;
	process(ch);
	e->on_line = cb;
	if (rq_len(ch)) {
		ch->lines_due = true;
		ch_defer(ch);
	}
	update_interest(ch);
}

/* The provided buffer a read signal is shown right now on this thread
 * (write views of it may keep the buffer): a frame on the stack of on_bytes,
 * so an idle channel carries none of it. */
struct showing {
	coil_channel_t *ch;
	const char *buf;
	size_t len;
	int bid;
	bool kept;
};
static __thread struct showing *showing;

static void on_bytes(coil_channel_t *ch, const char *p, size_t n, int bid)
{
	/* Readers beside the signal (waiting as the chunk is shown) get it
	 * too; without them the signal alone consumed it, even if it
	 * disconnected itself or issued a read meanwhile (that read gets the
	 * next bytes, not these again). */
	bool others = !reads_empty(ch) || line_cb(ch);
	bool shown = false;
	if (!ch->on_read && sq_len(ch)) {
		/* Held for a read signal disconnected since, not yet handed
		 * on (the defer does that at the end of the turn): those bytes
		 * come first. */
		struct coil__chext *e = X(ch);
		if (rq_append(ch, coil__bufq_data(&e->sigq), e->sigq.len)) {
			set_eof(ch, -ENOMEM);
			return;
		}
		coil__bufq_consume(&e->sigq, e->sigq.len);
	}
	if (ch->on_read) {
		if (sq_len(ch) || signal_paused(ch)) {
			/* Held for the signal; other consumers get them
			 * when it does (flush_sigq), so order is kept. */
			if (sq_append(ch, p, n)) {
				set_eof(ch, -ENOMEM);
				return;
			}
			cancel_recv(ch);
			return;
		} else {
			coil__channel_get(ch);
			struct showing f = {ch, p, n, bid, false};
			struct showing *prev = showing;
			showing = &f;
			struct coil__chext *e = X(ch);
			if (e)
				e->sig_back = 0;
			ch->on_read(ch, p, n, ch->on_read_ud);
			showing = prev;
			if (f.kept)
				ch->cur_kept = true;
			shown = true;
			e = X(ch);
			if (e && e->sig_back && state(ch) == COIL__CH_OPEN) {
				/* The relay took only the head of the chunk:
				 * the rest waits for it, first in line. */
				size_t back = e->sig_back;
				e->sig_back = 0;
				if (sq_append(ch, p + n - back, back))
					set_eof(ch, -ENOMEM);
				cancel_recv(ch);
				n -= back;
			}
			bool gone = state(ch) != COIL__CH_OPEN;
			/* Backpressure takes effect now, not at the end of
			 * the turn. */
			if (!gone && !want_read(ch))
				cancel_recv(ch);
			coil__channel_put(ch);
			if (gone)
				return;
		}
	}
	if (shown && !others)
		return; /* the read signal alone took these bytes */
	/* Fast path: an empty queue and a plain read at the head. */
	if (!rq_len(ch) && !line_cb(ch) && !reads_empty(ch)) {
		readreq *r = reads_first(ch);
		size_t chunk = chunk_size(ch);
		if (r->kind == RR_READ && n <= chunk) {
			void *copy = coil__malloc(n);
			if (copy) {
				memcpy(copy, p, n);
				coil_ip_finish_bytes(r->ip, copy, n, coil_free);
				req_done(ch, r);
				update_interest(ch);
				return;
			}
		}
	}
	if (rq_append(ch, p, n)) {
		/* Cannot keep the bytes: end the stream with an error rather
		 * than lose some silently. */
		set_eof(ch, -ENOMEM);
		return;
	}
	process(ch);
}

/* Shows bytes held back by the pause to the read signal, as the write
 * queue allows. */
static void flush_sigq(coil_channel_t *ch)
{
	/* One frame at a time: a nested flush (a callback that replaced
	 * the signal) would show the chunk being shown again. */
	if (ch->in_flush) {
		ch->flush_again = true;
		return;
	}
	struct coil__chext *e = X(ch);
	if (!e) {
		update_interest(ch); /* nothing was ever held back */
		return;
	}
	ch->in_flush = true;
	coil__channel_get(ch);
	size_t chunk = chunk_size(ch);
	bool fed = false;
again:
	ch->flush_again = false;
	/* Held-back bytes are shown in pieces no larger than a receive
	 * buffer, as they arrived. */
	if (ch->w->bufring && coil__bufring_size(ch->w) < chunk)
		chunk = coil__bufring_size(ch->w);
	while (e->sigq.len && ch->on_read && !signal_paused(ch) &&
	       state(ch) == COIL__CH_OPEN) {
		size_t n = e->sigq.len < chunk ? e->sigq.len : chunk;
		bool others = !reads_empty(ch) || line_cb(ch);
		e->sig_back = 0;
		ch->show_sigq = true;
		ch->on_read(ch, coil__bufq_data(&e->sigq), n, ch->on_read_ud);
		ch->show_sigq = false;
		if (e->sig_back) {
			n -= e->sig_back; /* left at the front */
			e->sig_back = 0;
		}
		if (state(ch) == COIL__CH_OPEN && others) {
			/* Readers beside the signal see the same bytes. */
			if (rq_append(ch, coil__bufq_data(&e->sigq), n))
				set_eof(ch, -ENOMEM);
			fed = true;
		}
		coil__bufq_consume(&e->sigq, n);
	}
	if (e->sigq.len && !ch->on_read && state(ch) == COIL__CH_OPEN) {
		/* The signal was disconnected before it saw these bytes:
		 * they belong to read() and readline() now. Everything in
		 * the read queue arrived before them. */
		if (rq_append(ch, coil__bufq_data(&e->sigq), e->sigq.len))
			set_eof(ch, -ENOMEM);
		coil__bufq_consume(&e->sigq, e->sigq.len);
		fed = true;
	}
	if (!ch->on_read || state(ch) != COIL__CH_OPEN)
		coil__bufq_free(&e->sigq);
	if (ch->flush_again)
		goto again;
	ch->in_flush = false;
	if (fed)
		process(ch);
	relay_check(ch);
	if (!e->sigq.len && ch->close_after_sigq) {
		/* The end of stream waited for the signal to see it all. */
		ch->close_after_sigq = false;
		coil__channel_close_local(ch, false, false);
	}
	update_interest(ch);
	coil__channel_put(ch);
}

static void set_eof(coil_channel_t *ch, int err)
{
	if (ch->eof)
		return;
	ch->eof = true;
	if (err)
		ch->rerr = err;
	process(ch);
	if (err)
		coil__channel_close_local(ch, true, false);
	else if (ch->close_on_eof && sq_len(ch))
		ch->close_after_sigq = true; /* see flush_sigq */
	else if (ch->close_on_eof)
		coil__channel_close_local(ch, false, false);
	relay_check(ch);
}

/* ---- reading: the API ---- */

static void read_task_run(coil__task *t);

/*
 * Abort of a read (its own, or its timeout's). A request not yet served has
 * taken nothing from the stream. A readinto that copied part of what it
 * wants gives those bytes back to the front of the read queue, where they
 * came from (it is always the head request), so the next read starts with
 * them: an aborted read loses no byte. The handle fails with -ECANCELED.
 */
static int read_abort(coil_ip_t *ip, void *arg)
{
	readreq *r = arg;
	coil_channel_t *ch = r->ch;
	if (!r->queued) {
		/* Still on its way to the home worker: dropped on arrival. */
		r->aborted = true;
		return 0;
	}
	if (r->kind == RR_INTO && r->got) {
		if (coil__bufq_prepend(&ch->rd->rq, r->into, r->got)) {
			coil__ip_fail_msg(r->ip, -ENOMEM,
					  "out of memory returning the bytes "
					  "of an aborted readinto");
			coil__list_del(&r->link);
			r->queued = false;
			coil_ip_unref(r->ip);
			rreq_free(r);
			set_eof(ch, -ENOMEM);
			return 1;
		}
		scan_reset(ch);
		rq_changed(ch);
	}
	coil__list_del(&r->link);
	r->queued = false;
	if (r->kind == RR_LINE)
		atomic_fetch_sub(&X(ch)->nlines, 1);
	coil_ip_unref(r->ip);
	rreq_free(r);
	/* The next request may be served by what the aborted one left. */
	if (!reads_empty(ch) && rq_len(ch))
		process_api(ch);
	rd_put(ch);
	update_interest(ch);
	return 0;
}

/* Requests this channel can never serve fail at once. */
static int read_refused(coil_channel_t *ch, const char **msg)
{
	if (atomic_load(&ch->listening)) {
		*msg = "read on a listening socket (use accept)";
		return -ENOTCONN;
	}
	if (state(ch) == COIL__CH_NEW && atomic_load(&ch->sock_unconnected) &&
	    !atomic_load(&ch->sock_connecting)) {
		*msg = "read on a socket that is not connected";
		return -ENOTCONN;
	}
	if (state(ch) != COIL__CH_NEW && !(ch->mode & COIL_IO_READ)) {
		*msg = "read on a channel not open for reading";
		return -EBADF;
	}
	return 0;
}

/*
 * sock (issue 13): a socket in usocket's non-blocking mode keeps receiving
 * into the read queue (up to queue_size, see want_read), as the kernel's
 * socket buffer would; a read that what is already here does not serve
 * fails with -EAGAIN and takes nothing (aborted as read_abort does).
 */
static void nonblock_read_check(coil_channel_t *ch, coil_ip_t *ip, readreq *r)
{
	read_abort(ip, r);
	coil__ip_fail_msg(ip, -EAGAIN, "read would block (non-blocking socket)");
}

static void read_enqueue(coil_channel_t *ch, readreq *r)
{
	do_register(ch);
	const char *msg = NULL;
	int err = r->aborted ? -ECANCELED : read_refused(ch, &msg);
	struct coil__chrd *rd = err ? NULL : rd_get(ch);
	if (!err && !rd)
		err = -ENOMEM, msg = "out of memory for a read";
	if (err) {
		if (err != -ECANCELED)
			coil__ip_fail_msg(r->ip, err, msg);
		if (r->kind == RR_LINE)
			atomic_fetch_sub(&X(ch)->nlines, 1);
		coil_ip_unref(r->ip);
		rreq_free(r);
		return;
	}
	r->queued = true;
	coil__list_add_tail(&rd->reads, &r->link);
	if (state(ch) >= COIL__CH_CLOSING)
		ch->eof = true;
	coil_ip_t *ip = coil_ip_ref(r->ip);
	process_api(ch);
	if (atomic_load(&ch->sock_nonblock) && coil_ip_state(ip) == COIL_IP_PENDING)
		nonblock_read_check(ch, ip, r);
	coil_ip_unref(ip);
}

static void read_task_run(coil__task *t)
{
	readreq *r = coil__container_of(t, readreq, task);
	coil_channel_t *ch = r->ch;
	read_enqueue(ch, r);
	coil__channel_put(ch);
}

/* Settles every pending read with err (a channel freed with requests left,
 * which close normally prevents). */
static void fail_all_reads(coil_channel_t *ch, int err, const char *msg)
{
	while (!reads_empty(ch)) {
		readreq *r = reads_first(ch);
		coil__ip_fail_msg(r->ip, err, msg);
		req_done(ch, r);
	}
	rd_put(ch);
}

static coil_ip_t *read_submit(coil_channel_t *ch, int kind, size_t n,
			      void *into, const size_t *sizes, size_t nsizes)
{
	if (!ch)
		return NULL;
	coil_ip_t *ip = coil__ip_new_on(ch->w);
	if (!ip)
		return NULL;
	if (kind == RR_LINE && atomic_load(&ch->has_line_cb)) {
		coil__ip_fail_msg(ip, -EBUSY,
				  "readline() while a readline callback is "
				  "connected");
		return ip;
	}
	size_t limit = atomic_load(&ch->queue_size) + chunk_size(ch);
	if ((kind == RR_EXACT || kind == RR_READV) && n > limit) {
		coil_ip_fail(ip, -EMSGSIZE,
			     "read of %zu bytes exceeds queue_size + chunk_size "
			     "(%zu)", n, limit);
		return ip;
	}
	if ((kind == RR_EXACT || kind == RR_READV || kind == RR_INTO) && !n) {
		if (kind == RR_INTO)
			coil_ip_finish_int(ip, 0);
		else if (kind == RR_EXACT)
			finish_empty(ip);
		else {
			coil_readv_t *v = coil__calloc(1, sizeof(*v));
			if (v)
				coil_ip_finish_ptr(ip, v, coil_free);
			else
				coil__ip_fail_msg(ip, -ENOMEM, NULL);
		}
		return ip;
	}
	struct coil__chext *e = kind == RR_LINE ? ext_get(ch) : NULL;
	readreq *r = kind == RR_LINE && !e ? NULL : rreq_alloc(nsizes);
	if (!r) {
		coil_ip_unref(ip);
		return NULL;
	}
	r->ch = ch;
	r->ip = coil_ip_ref(ip);
	r->kind = kind;
	r->n = n;
	r->into = into;
	r->nsizes = nsizes;
	if (nsizes)
		memcpy(r->sizes, sizes, nsizes * sizeof(size_t));
	coil__list_init(&r->link);
	if (kind == RR_LINE)
		atomic_fetch_add(&e->nlines, 1);
	/* Set before anyone else sees ip, so an abort always finds it. */
	coil_ip_set_abort(ip, read_abort, r);
	if (on_home(ch)) {
		read_enqueue(ch, r);
	} else {
		r->task.run = read_task_run;
		coil__channel_get(ch);
		coil__post(ch->w, &r->task);
	}
	/* usocket settimeout: the read fails with -ETIMEDOUT and is aborted,
	 * which takes nothing from the stream. */
	unsigned tmo = ch->has_sock ? atomic_load(&S(ch)->timeout_ms) : 0;
	if (tmo)
		ip = coil_ip_timeout(ip, tmo, 1);
	return ip;
}

coil_ip_t *coil_channel_read(coil_channel_t *ch)
{
	return read_submit(ch, RR_READ, 0, NULL, NULL, 0);
}

coil_ip_t *coil_channel_readline(coil_channel_t *ch)
{
	return read_submit(ch, RR_LINE, 0, NULL, NULL, 0);
}

coil_ip_t *coil_channel_read_exact(coil_channel_t *ch, size_t n)
{
	return read_submit(ch, RR_EXACT, n, NULL, NULL, 0);
}

coil_ip_t *coil_channel_readinto(coil_channel_t *ch, void *buf, size_t n)
{
	if (ch && !buf && n) {
		coil_ip_t *ip = coil__ip_new_on(ch->w);
		if (ip)
			coil__ip_fail_msg(ip, -EINVAL, "readinto: NULL buffer");
		return ip;
	}
	return read_submit(ch, RR_INTO, n, buf, NULL, 0);
}

coil_ip_t *coil_channel_readv(coil_channel_t *ch, const size_t *sizes,
			      size_t n)
{
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (total + sizes[i] < total)
			total = SIZE_MAX;
		else
			total += sizes[i];
	}
	if (ch && n > 1024) {
		coil_ip_t *ip = coil__ip_new_on(ch->w);
		if (ip)
			coil__ip_fail_msg(ip, -EINVAL, "readv: too many buffers");
		return ip;
	}
	return read_submit(ch, RR_READV, total, NULL, sizes, n);
}

/* ---- writing ---- */

static void send_complete(coil__op *op, int res, unsigned flags);

/* Gives a lent provided buffer back to the ring (once its bytes are sent or
 * the write failed). */
static void wreq_return_buffer(writereq *r)
{
	coil__worker *w = r->ch->w;
	if (r->bid < 0)
		return;
	if (w->bufring) {
		coil__bufring_put(w, (unsigned)r->bid);
		coil__bufring_flush(w);
	}
	w->pinned--;
	r->bid = -1;
}

static void wreq_free(writereq *r)
{
	wreq_return_buffer(r);
	if (r->free_fn)
		r->free_fn(r->data);
	if (r->ip)
		coil_ip_unref(r->ip);
	if (r->cached)
		cc_put(CC_WRITE, r);
	else if (r->inl)
		coil__container_of(r, struct coil__chwr, inl)->inl_busy = false;
	else
		coil__free(r);
}

/* A write request with room for len bytes behind it (extra: copy them
 * there), zeroed, bid -1. */
static writereq *wreq_alloc(size_t extra)
{
	size_t size = sizeof(writereq) + extra;
	bool cached = size <= WREQ_BLOCK;
	writereq *r = cached ? cc_get(CC_WRITE, WREQ_BLOCK)
			     : coil__malloc(size);
	if (!r)
		return NULL;
	memset(r, 0, sizeof(*r));
	r->cached = cached;
	r->bid = -1;
	return r;
}

static void wq_release(coil_channel_t *ch, size_t n)
{
	atomic_fetch_sub_explicit(&ch->wq_used, n, memory_order_relaxed);
}

/* Home worker: the write part, made if need be (NULL on -ENOMEM). */
static struct coil__chwr *wr_get(coil_channel_t *ch)
{
	struct coil__chwr *wr = WR(ch);
	if (wr)
		return wr;
	wr = cc_get(CC_WR, sizeof(*wr));
	if (!wr)
		return NULL;
	/* Only what is read before it is written (once per answer: a clear
	 * of the whole part was a third of this): the queue, the linger
	 * state and the timer's two flags (coil__timer_start sets the
	 * rest). The iovec batch, msg, the ops' callbacks and send_niov are
	 * set by each send, last_progress_ms when linger starts. A field
	 * added here that must start at zero is cleared here too. */
	wr->wq_head = NULL;
	wr->inl_busy = false;
	wr->linger_armed = false;
	wr->linger_timer.listed = false;
	wr->linger_timer.cancelling = false;
	wr->ch = ch;
	wr->wq_tail = &wr->wq_head;
	ch->iov = wr->iov;
	return wr;
}

/* Home worker: gives the write part back once nothing uses it. */
static void wr_put(coil_channel_t *ch)
{
	struct coil__chwr *wr = WR(ch);
	if (!wr || wr->wq_head || ch->send_inflight || ch->send_cancelling ||
	    wr->linger_armed)
		return;
	ch->iov = NULL;
	cc_put(CC_WR, wr);
}

/* Fails every queued write (the one in flight is left to its completion). */
static void fail_writes(coil_channel_t *ch, int first_err, const char *msg)
{
	struct coil__chwr *wr = WR(ch);
	writereq *r = wr ? wr->wq_head : NULL;
	if (wr) {
		wr->wq_head = NULL;
		wr->wq_tail = &wr->wq_head;
	}
	int err = first_err;
	while (r) {
		writereq *next = r->next;
		wq_release(ch, r->len - r->off);
		coil__ip_fail_msg(r->ip, err, err == first_err ? msg : NULL);
		/* Writes failed only because the channel closed under them
		 * are a consequence, already told by the closed signal: they
		 * do not count as unobserved failures. */
		if (err == -EBADF)
			coil_ip_error(r->ip);
		wreq_free(r);
		err = -EBADF;
		r = next;
	}
	wr_put(ch);
	gate_wake(ch);
}

/* The error writes fail with when the channel closed under them. */
static int closed_err(const coil_channel_t *ch, const char **msg)
{
	if (ch->linger_expired) {
		*msg = "linger: the write queue made no progress for the "
		       "channel's linger time";
		return -ETIMEDOUT;
	}
	*msg = "channel closed";
	return -EBADF;
}

static void fail_closed_writes(coil_channel_t *ch)
{
	const char *msg;
	int err = closed_err(ch, &msg);
	fail_writes(ch, err, msg);
}

static bool can_send(const coil_channel_t *ch)
{
	int st = state(ch);
	return ch->fd >= 0 && !ch->connecting && (ch->mode & COIL_IO_WRITE) &&
	       (st == COIL__CH_OPEN || st == COIL__CH_CLOSING);
}

/* tls.c: the filter has bytes of its own to send (or owes them at close). */
static inline bool flt_pending(const coil_channel_t *ch)
{
	return ch->flt && ch->flt->ops->pending(ch);
}

static void kick_write_now(coil_channel_t *ch);

/* Sends what is queued, unless a send is in flight (inline: send_complete
 * and a write to a busy channel mostly stop here). */
static inline void kick_write(coil_channel_t *ch)
{
	if (ch->send_inflight || (!wq_head(ch) && !ch->flt))
		return;
	kick_write_now(ch);
}

static void kick_write_now(coil_channel_t *ch)
{
	if (ch->send_inflight || (!wq_head(ch) && !flt_pending(ch)) ||
	    !can_send(ch))
		return;
	struct coil__chwr *wr = wr_get(ch);
	if (!wr) {
		/* No memory for the write part now: try again later. */
		ch_defer(ch);
		return;
	}
	int n = 0, batch = ch->dgram ? 1 : COIL__IOV_BATCH;
	for (writereq *r = wr->wq_head; r && n < batch; r = r->next) {
		r->started = true;
		wr->iov[n].iov_base = r->data + r->off;
		wr->iov[n].iov_len = r->len - r->off;
		n++;
	}
	if (ch->flt && !(n = ch->flt->ops->prep_send(ch, n))) { /* tls.c */
		wr_put(ch);
		return;
	}
	wr->send_niov = n;
	wr->send_op.complete = send_complete;
	int rc;
	if (!ch->is_socket) {
		rc = coil__prep_writev(ch->w, &wr->send_op, ch->fd, wr->iov,
				       (unsigned)n);
	} else if (n == 1) {
		rc = coil__prep_send(ch->w, &wr->send_op, ring_fd(ch),
				     wr->iov[0].iov_base, wr->iov[0].iov_len,
				     ch->dgram ? MSG_NOSIGNAL
					       : MSG_NOSIGNAL | MSG_WAITALL);
	} else {
		memset(&wr->msg, 0, sizeof(wr->msg));
		wr->msg.msg_iov = wr->iov;
		wr->msg.msg_iovlen = (size_t)n;
		rc = coil__prep_sendmsg(ch->w, &wr->send_op, ring_fd(ch), &wr->msg,
					MSG_NOSIGNAL | MSG_WAITALL);
	}
	if (rc) {
		if (rc != -ESHUTDOWN)
			ch_defer(ch);
		wr_put(ch);
		return;
	}
	ch->send_inflight = true;
	coil__channel_get(ch);
}

static void send_complete(coil__op *op, int res, unsigned flags)
{
	struct coil__chwr *wr = coil__container_of(op, struct coil__chwr,
						   send_op);
	coil_channel_t *ch = wr->ch;
	ch->send_inflight = false;
	size_t done = res > 0 ? (size_t)res : 0;
	if (done && wr->linger_armed)
		wr->last_progress_ms = coil__now_ms();
	if (ch->flt && done) /* tls.c: sent bytes -> plaintext bytes */
		done = ch->flt->ops->sent(ch, done);
	while (wr->wq_head && done) {
		writereq *r = wr->wq_head;
		size_t left = r->len - r->off;
		size_t n = done < left ? done : left;
		r->off += n;
		done -= n;
		wq_release(ch, n);
		if (r->off < r->len) {
			/* Its bytes not yet sent go again, first. */
			r->started = false;
			break;
		}
		wr->wq_head = r->next;
		if (!wr->wq_head)
			wr->wq_tail = &wr->wq_head;
		r->queued = false;
		/* The bytes are the kernel's now: give the buffer back before
		 * the handle settles, so a waiter may reuse it at once. */
		if (r->free_fn) {
			r->free_fn(r->data);
			r->free_fn = NULL;
		}
		wreq_return_buffer(r);
		if (r->ip)
			coil_ip_finish_int(r->ip, (int64_t)r->len);
		wreq_free(r);
	}
	/* The rest of a partial batch was not sent: abortable again. */
	for (writereq *r = wr->wq_head; r; r = r->next)
		if (!r->off)
			r->started = false;
	int st = state(ch);
	if (res < 0 && res != -EINTR && res != -EAGAIN) {
		if (st == COIL__CH_CLOSED || res == -ECANCELED) {
			fail_closed_writes(ch);
		} else {
			char msg[96];
			snprintf(msg, sizeof(msg), "send: %s", coil_strerror(res));
			fail_writes(ch, res, msg);
			coil__channel_close_local(ch, true, false);
		}
	} else if (st == COIL__CH_CLOSED) {
		fail_closed_writes(ch);
	} else {
		kick_write(ch);
		/* Writes drained: a paused read signal gets its waiting bytes,
		 * then the channel reads again. With nothing held back (no
		 * extension) and the receive still armed below the pause
		 * mark, there is nothing to resume: the completion only
		 * shrank the queue, and every other reason to stop reading
		 * re-evaluates the interest where it arises. */
		if (ch->on_read && (X(ch) || !ch->recv_armed ||
				    ch->recv_cancelling || queue_high(ch)))
			flush_sigq(ch);
		if (ch->sock_drain_wait && !wq_head(ch))
			coil__sock_drained(ch);
		drain_check(ch);
		gate_wake(ch);
		if (st == COIL__CH_CLOSING && !wq_head(ch) && !flt_pending(ch))
			finish_close(ch);
	}
	if (state(ch) == COIL__CH_CLOSED) { /* both need it */
		emit_closed(ch);
		maybe_close_fd(ch);
	}
	wr_put(ch); /* wr may be gone from here on */
	coil__channel_put(ch);
}

/* Drained signal: the write queue fell to the low-water mark after being
 * above it (or after a write was refused as the queue was full). */
static void drain_check(coil_channel_t *ch)
{
	if (!atomic_load(&ch->drain_armed) ||
	    atomic_load(&ch->wq_used) > low_water(ch) ||
	    state(ch) != COIL__CH_OPEN)
		return;
	atomic_store(&ch->drain_armed, false);
	struct coil__chext *e = X(ch);
	if (e && e->on_drain && !ch->user_released)
		e->on_drain(ch, e->on_drain_ud);
}

/*
 * Abort of a write (contract 1). A write still in the queue, none of whose
 * bytes went into a send, is removed: the peer gets none of it and later
 * writes keep their order. A write that started is refused with -EBUSY (its
 * handle stays pending and completes normally).
 */
static int write_abort(coil_ip_t *ip, void *arg)
{
	writereq *r = arg;
	coil_channel_t *ch = r->ch;
	if (!r->queued) {
		/* Still on its way to the home worker: dropped on arrival. */
		r->aborted = true;
		return 0;
	}
	if (r->started || r->off)
		return -EBUSY;
	struct coil__chwr *wr = WR(ch); /* a queued write has one */
	writereq **pp = &wr->wq_head;
	while (*pp && *pp != r)
		pp = &(*pp)->next;
	if (!*pp)
		return -EBUSY;
	*pp = r->next;
	if (wr->wq_tail == &r->next)
		wr->wq_tail = pp;
	r->queued = false;
	wq_release(ch, r->len);
	coil__ip_fail_msg(r->ip, -ECANCELED, "aborted");
	wreq_free(r);
	gate_wake(ch);
	if (!wr->wq_head && !ch->send_inflight &&
	    state(ch) == COIL__CH_CLOSING)
		finish_close(ch);
	wr_put(ch);
	return 1;
}

/* Home worker: queues r (0), or fails and frees it (the -errno). */
static int write_enqueue(coil_channel_t *ch, writereq *r)
{
	do_register(ch);
	const char *msg = NULL;
	int err = 0;
	if (r->aborted)
		err = -ECANCELED; /* already failed by the abort */
	else if (state(ch) >= COIL__CH_CLOSING)
		err = -EBADF, msg = "write after close";
	else if (atomic_load(&ch->listening))
		err = -ENOTCONN, msg = "write on a listening socket";
	else if (state(ch) != COIL__CH_NEW && !(ch->mode & COIL_IO_WRITE))
		err = -EBADF, msg = "write on a channel not open for writing";
	struct coil__chwr *wr = err ? NULL : wr_get(ch);
	if (!err && !wr)
		err = -ENOMEM, msg = "out of memory for the write queue";
	if (err) {
		wq_release(ch, r->len);
		if (err != -ECANCELED)
			coil__ip_fail_msg(r->ip, err, msg);
		wreq_free(r);
		wr_put(ch); /* the part an inline request was made in */
		gate_wake(ch);
		return err;
	}
	r->queued = true;
	*wr->wq_tail = r;
	wr->wq_tail = &r->next;
	if (atomic_load(&ch->wq_used) > low_water(ch))
		atomic_store(&ch->drain_armed, true);
	kick_write(ch);
	return 0;
}

static void write_task_run(coil__task *t)
{
	writereq *r = coil__container_of(t, writereq, task);
	coil_channel_t *ch = r->ch;
	bool told = r->ip != NULL;
	int err = write_enqueue(ch, r);
	/* A handle-less write (coil_channel_send) the home worker could not
	 * queue has no one to tell: rather than leave a hole in the stream,
	 * the channel closes (the closed signal, expected = 0). A channel
	 * already closing needs nothing more. */
	if (err == -ENOMEM && !told)
		coil__channel_close_local(ch, true, false);
	coil__channel_put(ch);
}

/* Reserves len bytes of ch's write queue in the caller's thread: true, or
 * false with nothing reserved (*used: the bytes in use then). */
static bool wq_reserve(coil_channel_t *ch, size_t len, size_t *used)
{
	size_t qsize = atomic_load(&ch->queue_size);
	*used = atomic_load(&ch->wq_used);
	do {
		/* kaa: the write queue never exceeds queue_size; a write that
		 * would take it past fails whole, with nothing queued. */
		if (*used + len > qsize || *used + len < *used) {
			if (*used)
				atomic_store(&ch->drain_armed, true);
			return false;
		}
	} while (!atomic_compare_exchange_weak(&ch->wq_used, used, *used + len));
	return true;
}

/* Queues r (its queue space reserved) on the home worker now, returning
 * write_enqueue's result, or posts it there (0). */
static int write_route(coil_channel_t *ch, writereq *r)
{
	if (coil__likely(on_home(ch)))
		return write_enqueue(ch, r);
	r->task.run = write_task_run;
	coil__channel_get(ch);
	coil__post(ch->w, &r->task);
	return 0;
}

/*
 * Common path of every write: settle at once what can be settled (empty,
 * closed, queue full), else reserve queue space in the caller's thread, so
 * that the "fails at once with nothing queued" rule holds from any thread,
 * and queue on the home worker.
 */
static coil_ip_t *write_submit(coil_channel_t *ch, writereq *r)
{
	coil_ip_t *ip = coil__ip_new_on(ch->w);
	if (!ip) {
		wreq_free(r);
		return NULL;
	}
	r->ip = coil_ip_ref(ip);
	r->ch = ch;
	if (!r->len) {
		coil_ip_finish_int(ip, 0);
		wreq_free(r);
		return ip;
	}
	if (state(ch) >= COIL__CH_CLOSING) {
		coil__ip_fail_msg(ip, -EBADF, "write after close");
		wreq_free(r);
		return ip;
	}
	size_t used;
	if (!wq_reserve(ch, r->len, &used)) {
		coil_ip_fail(ip, -ENOBUFS,
			     "write of %zu bytes would take the write queue "
			     "past queue_size (%zu of %zu bytes used)",
			     r->len, used, atomic_load(&ch->queue_size));
		wreq_free(r);
		return ip;
	}
	/* Set before anyone else sees ip, so an abort always finds it. */
	coil_ip_set_abort(ip, write_abort, r);
	write_route(ch, r); /* a refusal fails ip */
	return ip;
}

/*
 * write_submit without a handle (coil_channel_send): nothing to make,
 * settle or abort. What would fail the handle at once is the result; on
 * the home worker that includes write_enqueue's refusals.
 */
static int send_submit(coil_channel_t *ch, writereq *r)
{
	r->ch = ch;
	int err = 0;
	size_t used;
	if (!r->len)
		err = 0;
	else if (state(ch) >= COIL__CH_CLOSING)
		err = -EBADF;
	else if (atomic_load(&ch->listening))
		err = -ENOTCONN;
	else if (!wq_reserve(ch, r->len, &used))
		err = -ENOBUFS;
	else
		return write_route(ch, r);
	bool inl = r->inl;
	wreq_free(r);
	if (inl)
		wr_put(ch); /* made for r (home worker) */
	return err;
}

/* A write request holding a copy of len bytes; NULL on -ENOMEM. */
static writereq *wreq_copy(const void *data, size_t len)
{
	writereq *r = wreq_alloc(len);
	if (r) {
		r->data = (char *)(r + 1);
		r->len = len;
		if (len)
			memcpy(r->data, data, len);
	}
	return r;
}

coil_ip_t *coil_channel_write(coil_channel_t *ch, const void *data, size_t len)
{
	if (!ch || (!data && len))
		return NULL;
	writereq *r = wreq_copy(data, len);
	return r ? write_submit(ch, r) : NULL;
}

/* Home worker: the write part's own request holding a copy of len (<=
 * WR_INL) bytes, or NULL when it is in use or there is no memory for the
 * part (wreq_copy then, which reports -ENOMEM if need be). */
static writereq *wreq_inline(coil_channel_t *ch, const void *data, size_t len)
{
	struct coil__chwr *wr = wr_get(ch);
	if (!wr || wr->inl_busy)
		return NULL;
	writereq *r = &wr->inl;
	/* wreq_alloc's clear, field by field (a send needs no task): the
	 * memset of the whole request was a third of this. */
	r->next = NULL;
	r->ip = NULL;
	r->data = wr->inl_data;
	r->len = len;
	r->off = 0;
	r->free_fn = NULL;
	r->bid = -1;
	r->queued = r->started = r->aborted = r->cached = false;
	r->inl = true;
	memcpy(r->data, data, len);
	wr->inl_busy = true;
	return r;
}

int coil_channel_send(coil_channel_t *ch, const void *data, size_t len)
{
	if (!ch || (!data && len))
		return -EINVAL;
	writereq *r = NULL;
	if (len && len <= WR_INL && on_home(ch))
		r = wreq_inline(ch, data, len);
	if (!r)
		r = wreq_copy(data, len);
	return r ? send_submit(ch, r) : -ENOMEM;
}

int coil_channel_send_owned(coil_channel_t *ch, void *data, size_t len,
			    void (*free_fn)(void *))
{
	if (!ch || (!data && len)) {
		if (free_fn && data)
			free_fn(data);
		return -EINVAL;
	}
	writereq *r = wreq_alloc(0);
	if (!r) {
		if (free_fn)
			free_fn(data);
		return -ENOMEM;
	}
	r->data = data;
	r->len = len;
	r->free_fn = free_fn;
	return send_submit(ch, r);
}

coil_ip_t *coil_channel_writev(coil_channel_t *ch, const struct iovec *iov,
			       int iovcnt)
{
	if (!ch || iovcnt < 0 || (iovcnt && !iov))
		return NULL;
	size_t len = 0;
	for (int i = 0; i < iovcnt; i++)
		len += iov[i].iov_len;
	/* The bytes are copied right behind the request: one allocation (or
	 * none: a small one comes from the worker's cache). */
	writereq *r = wreq_alloc(len);
	if (!r)
		return NULL;
	r->data = (char *)(r + 1);
	r->len = len;
	char *p = r->data;
	for (int i = 0; i < iovcnt; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	return write_submit(ch, r);
}

/*
 * Zero-copy echo and relay: inside a read-signal callback, bytes of the
 * chunk being shown are written straight from the worker's provided buffer,
 * which then stays with this write until its bytes are sent (the floor
 * io_uring servers do the same). So that slow peers can never hold the
 * ring, a worker lends at most half its buffers this way; beyond that, and
 * anywhere else, the bytes are copied as by coil_channel_write.
 */
coil_ip_t *coil_channel_write_view(coil_channel_t *ch, const void *data,
				   size_t len)
{
	if (!ch)
		return NULL;
	const char *d = data;
	/* The chunk shown right now, by ch itself (echo) or by another
	 * channel of the same worker (relay). */
	struct showing *f = showing;
	if (!on_home(ch) || !f || f->ch->w != ch->w || f->bid < 0 ||
	    f->kept || !len || d < f->buf || d + len > f->buf + f->len ||
	    !coil__bufring_may_lend(ch->w))
		return coil_channel_write(ch, data, len);
	writereq *r = wreq_alloc(0);
	if (!r)
		return NULL;
	r->data = (char *)d;
	r->len = len;
	r->bid = f->bid;
	r->ch = ch;
	f->kept = true;
	ch->w->pinned++;
	return write_submit(ch, r);
}

coil_ip_t *coil_channel_write_owned(coil_channel_t *ch, void *data, size_t len,
				    void (*free_fn)(void *))
{
	if (!ch || (!data && len)) {
		if (free_fn && data)
			free_fn(data);
		return NULL;
	}
	writereq *r = wreq_alloc(0);
	if (!r) {
		if (free_fn)
			free_fn(data);
		return NULL;
	}
	r->data = data;
	r->len = len;
	r->free_fn = free_fn;
	return write_submit(ch, r);
}

/* ---- closing ---- */

/* The ring's close of a retired descriptor needs nothing of the channel
 * (the number is no longer the channel's): one op shared by all. */
static void close_complete(coil__op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;
	(void)flags;
}

static coil__op close_op = {close_complete};

/* The descriptor is closed only when no op of ours uses it any more. */
static void maybe_close_fd(coil_channel_t *ch)
{
	if (state(ch) != COIL__CH_CLOSED || ch->fd < 0 || ch->recv_armed ||
	    ch->recv_cancelling || ch->send_inflight || ch->send_cancelling)
		return;
	int fd = ch->fd;
	coil__channel_set_fd(ch, -1);
	/* Batched on the ring normally; directly while stopping, when the
	 * ring is busy draining everything else. */
	if (ch->w->stopping || coil__prep_close(ch->w, &close_op, fd) != 0)
		close(fd);
}

static void send_cancel_complete(coil__op *op, int res, unsigned flags)
{
	struct coil__chwr *wr = coil__container_of(op, struct coil__chwr,
						   send_cancel_op);
	coil_channel_t *ch = wr->ch;
	ch->send_cancelling = false;
	maybe_close_fd(ch);
	wr_put(ch);
	coil__channel_put(ch);
}

static void finish_close(coil_channel_t *ch)
{
	if (state(ch) == COIL__CH_CLOSED)
		return;
	set_state(ch, COIL__CH_CLOSED);
	ch->eof = true;
	coil__channel_get(ch);
	linger_stop(ch);
	if (ch->send_inflight && !ch->send_cancelling && !ch->w->stopping) {
		/* Its completion fails what is left; the data must stay
		 * valid until then. */
		struct coil__chwr *wr = WR(ch); /* a send in flight has one */
		wr->send_cancel_op.complete = send_cancel_complete;
		if (coil__prep_cancel(ch->w, &wr->send_cancel_op,
				      &wr->send_op) == 0) {
			ch->send_cancelling = true;
			coil__channel_get(ch);
		}
	} else if (!ch->send_inflight) {
		fail_closed_writes(ch);
	}
	cancel_recv(ch);
	process_api(ch);
	ch->lines_due = false; /* the signal saw what it could: closed now */
	if (ch->flt) /* tls.c */
		ch->flt->ops->closed(ch);
	if (ch->has_sock)
		coil__sock_closing(ch);
	maybe_close_fd(ch);
	emit_closed(ch);
	relay_check(ch);
	coil_channel_t *src = gated_of(ch);
	if (src) {
		/* A relay writes into this channel: it ends now. */
		coil__channel_get(ch);
		if (call(src, CALL_RELAY_CHECK, 0, ch, NULL))
			coil__channel_put(ch);
	}
	coil__channel_put(ch);
}

static void closed_run(coil_ip_t *ip, void *ud)
{
	coil_channel_t *ch = ud;
	/* A user release disconnects on_closed; a channel the stop released
	 * for its user keeps it (rule 16: it runs, expected = 1). */
	if (ch->on_closed)
		ch->on_closed(ch, ch->close_expected, ch->on_closed_ud);
	coil__channel_put(ch);
}

/*
 * The closed signal fires once the channel is closed and every write has
 * settled, through the ready queue behind the writes' callbacks (libuv's
 * order: every write callback before the close callback), and never inside
 * the call that closed the channel (rule 13).
 */
static void emit_closed(coil_channel_t *ch)
{
	if (ch->closed_emitted || state(ch) != COIL__CH_CLOSED ||
	    ch->send_inflight || wq_head(ch))
		return;
	ch->closed_emitted = true;
	if (!ch->on_closed)
		return;
	coil_ip_t *ip = coil__ip_new_on(ch->w);
	if (!ip)
		return; /* -ENOMEM: the signal is lost, never run inline */
	coil__channel_get(ch);
	if (coil_ip_on_done(ip, closed_run, ch))
		coil__channel_put(ch);
	coil_ip_finish_int(ip, 0);
	coil_ip_unref(ip);
}

/* ---- linger: the drain deadline of a graceful close ---- */

static void linger_fire(coil__timer *t, int res)
{
	struct coil__chwr *wr = coil__container_of(t, struct coil__chwr,
						   linger_timer);
	coil_channel_t *ch = wr->ch;
	wr->linger_armed = false;
	if (res == 0 && state(ch) == COIL__CH_CLOSING) {
		uint64_t ms = linger_ms(ch);
		uint64_t idle = coil__now_ms() - wr->last_progress_ms;
		if (idle >= ms) {
			/* No write progress for the whole linger time: the
			 * peer does not read; give its memory back. */
			ch->linger_expired = true;
			coil__channel_close_local(ch, true, ch->close_expected);
		} else if (coil__timer_start(ch->w, &wr->linger_timer,
					     ms - idle, linger_fire) == 0) {
			wr->linger_armed = true;
			return; /* keeps its reference */
		}
	}
	wr_put(ch);
	coil__channel_put(ch);
}

/* Entering CLOSING with writes queued: the deadline starts now and moves
 * with every send that makes progress (nginx send_timeout). Returns false
 * when it cannot run (no memory for the write part). */
static bool linger_start(coil_channel_t *ch)
{
	unsigned ms = linger_ms(ch);
	struct coil__chwr *wr = wr_get(ch);
	if (!wr)
		return false;
	wr->last_progress_ms = coil__now_ms();
	if (wr->linger_armed || ch->w->stopping)
		return true;
	if (coil__timer_start(ch->w, &wr->linger_timer, ms, linger_fire) == 0) {
		wr->linger_armed = true;
		coil__channel_get(ch);
	}
	return true;
}

static void linger_stop(coil_channel_t *ch)
{
	struct coil__chwr *wr = WR(ch);
	if (wr && wr->linger_armed)
		coil__timer_cancel(&wr->linger_timer);
}

void coil__channel_close_local(coil_channel_t *ch, bool immediate,
			       bool expected)
{
	int st = state(ch);
	if (st == COIL__CH_CLOSED || (st == COIL__CH_CLOSING && !immediate))
		return;
	if (st != COIL__CH_CLOSING)
		ch->close_expected = expected;
	coil__channel_get(ch);
	/* Bytes a paused read signal had not been shown yet are buffered
	 * bytes like the read queue's: readers get them (after what is
	 * queued) and then the end of stream. */
	if (sq_len(ch)) {
		if (rq_append(ch, coil__bufq_data(sq(ch)), sq_len(ch)))
			ch->rerr = -ENOMEM;
		sq_free(ch);
		ch->close_after_sigq = false;
		rq_changed(ch);
	}
	if (ch->flt) /* tls.c: close_notify is owed, or cannot be sent */
		immediate = ch->flt->ops->closing(ch, immediate);
	if (!immediate && (wq_head(ch) || flt_pending(ch)) && ch->fd >= 0) {
		/* kaa close(immediate=False): not alive any more, but the
		 * queued writes drain first. Reading stops now. */
		set_state(ch, COIL__CH_CLOSING);
		ch->eof = true;
		process_api(ch);
		cancel_recv(ch);
		if (linger_ms(ch) == 0 || !linger_start(ch)) {
			ch->linger_expired = true;
			finish_close(ch);
		} else if (!ch->connecting) {
			kick_write(ch);
		}
	} else {
		finish_close(ch);
	}
	coil__channel_put(ch);
}

/* sock (issue 13): 1 when the descriptor number no longer names an open
 * file: it was closed behind coil's back. */
static int fd_gone(int fd, void *arg)
{
	return fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

int coil_channel_close(coil_channel_t *ch, int immediate)
{
	if (!ch)
		return -EINVAL;
	/* kaa/CPython: closing a descriptor closed underneath says EBADF
	 * (the channel still closes). */
	bool gone = !atomic_load(&ch->close_req) &&
		    coil__channel_fd_call(ch, fd_gone, NULL) == 1;
	/* kaa: alive is false as soon as close() returns, from any thread. */
	atomic_store(&ch->close_req, true);
	int rc = call(ch, CALL_CLOSE, immediate, NULL, NULL);
	return rc ? rc : gone ? -EBADF : 0;
}

coil_channel_t *coil_channel_ref(coil_channel_t *ch)
{
	if (ch)
		atomic_fetch_add(&ch->urefs, 1);
	return ch;
}

void coil_channel_release(coil_channel_t *ch)
{
	if (ch && atomic_fetch_sub(&ch->urefs, 1) == 1)
		call(ch, CALL_RELEASE, 0, NULL, NULL);
}

/* ---- calls run on the home worker ---- */

static void call_local(coil_channel_t *ch, int kind, int i, void *cb, void *ud)
{
	switch (kind) {
	case CALL_REGISTER:
		do_register(ch);
		update_interest(ch);
		kick_write(ch);
		break;
	case CALL_ATTACH:
		do_register(ch);
		update_interest(ch);
		kick_write(ch);
		break;
	case CALL_CLOSE:
		do_register(ch);
		coil__channel_close_local(ch, i != 0, true);
		break;
	case CALL_RELEASE:
		/* No callback of ch runs after its user's release, also when
		 * the stop took the user's reference over already (a release
		 * from a callback that ran during coil_loop_free). */
		ch->on_read = NULL;
		ch->on_closed = NULL;
		if (X(ch)) {
			X(ch)->on_line = NULL;
			X(ch)->on_drain = NULL;
		}
		atomic_store(&ch->has_line_cb, false);
		if (ch->user_released)
			break;
		coil__channel_get(ch);
		ch->user_released = true;
		coil__channel_close_local(ch, false, true);
		coil__channel_put(ch); /* the user's reference */
		coil__channel_put(ch);
		break;
	case CALL_ON_READ:
		do_register(ch);
		ch->on_read = (coil_read_cb)cb;
		ch->on_read_ud = ud;
		/* Held-back bytes go to the new signal, or to readers, at the
		 * end of the turn: never inside this call (rule 13). */
		if (sq_len(ch))
			ch_defer(ch);
		update_interest(ch);
		break;
	case CALL_ON_LINE:
		do_register(ch);
		if (X(ch)) { /* made by coil_channel_on_readline */
			X(ch)->on_line = (coil_read_cb)cb;
			X(ch)->on_line_ud = ud;
		}
		process_api(ch);
		break;
	case CALL_ON_DRAIN:
		/* made by coil_channel_on_drain */
		X(ch)->on_drain = (void (*)(coil_channel_t *, void *))cb;
		X(ch)->on_drain_ud = ud;
		break;
	case CALL_WAKE:
		/* A gate drained: show what the pause held, read again. */
		if (sq_len(ch))
			flush_sigq(ch);
		update_interest(ch);
		break;
	case CALL_RELAY:
		relay_start(ch, cb);
		break;
	case CALL_RELAY_CHECK:
		if (cb)
			relay_dst_closed(ch, cb);
		relay_check(ch);
		if (cb)
			coil__channel_put((coil_channel_t *)cb);
		break;
	case CALL_UNGATE:
		/* The relay ended: forget its source (run here, the only
		 * thread that reads gated). */
		if (gated_of(ch) == cb)
			atomic_store(&X(ch)->gated, NULL);
		coil__channel_put((coil_channel_t *)cb);
		break;
	case CALL_ON_CLOSED:
		ch->on_closed = (coil_closed_cb)cb;
		ch->on_closed_ud = ud;
		break;
	case CALL_DELIMS:
		/* made by coil_channel_set_delimiters */
		coil__delims_free((coil__delims *)X(ch)->delims);
		X(ch)->delims = cb;
		X(ch)->scan = 0;
		process_api(ch);
		break;
	case CALL_INTEREST:
		process_api(ch);
		break;
	case CALL_EOF_CLOSE:
		ch->close_on_eof = i != 0;
		break;
	case CALL_REWRAP:
		rewrap_local(ch, i, (int)(intptr_t)ud);
		break;
	}
}

int coil_channel_on_read(coil_channel_t *ch, coil_read_cb cb, void *ud)
{
	if (!ch)
		return -EINVAL;
	return call(ch, CALL_ON_READ, 0, (void *)cb, ud);
}

int coil_channel_on_readline(coil_channel_t *ch, coil_read_cb cb, void *ud)
{
	if (!ch)
		return -EINVAL;
	struct coil__chext *e = cb ? ext_get(ch) : X(ch);
	if (cb && !e)
		return -ENOMEM;
	if (cb && atomic_load(&e->nlines))
		return -EBUSY;
	atomic_store(&ch->has_line_cb, cb != NULL);
	return call(ch, CALL_ON_LINE, 0, (void *)cb, ud);
}

int coil_channel_on_closed(coil_channel_t *ch, coil_closed_cb cb, void *ud)
{
	if (!ch)
		return -EINVAL;
	return call(ch, CALL_ON_CLOSED, 0, (void *)cb, ud);
}

/* ---- creation ---- */

void coil__channel_register(coil_channel_t *ch)
{
	call(ch, CALL_REGISTER, 0, NULL, NULL);
}

/*
 * A multishot recv on an AF_UNIX stream socket can miss the end of stream
 * (Linux 6.17+, apiseq F2): when the peer's shutdown lands while the
 * receive takes the last bytes, AF_UNIX says no byte is left and the
 * receive waits for a wakeup the shutdown already gave; no CQE ever comes.
 * One-shot receives (re-armed after each completion) see it.
 */
static int socket_kind(int fd)
{
	int dom = 0, type = 0;
	socklen_t l1 = sizeof(dom), l2 = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l1) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l2) == 0 &&
	    dom == AF_UNIX && type == SOCK_STREAM)
		return COIL__RK_RECV_ONCE;
	return COIL__RK_RECV;
}

/* Chooses how to read fd: multishot recv for sockets (one-shot on AF_UNIX
 * streams), multishot read for other pollable files when the kernel has
 * it, single reads otherwise. */
static int read_kind(coil__worker *w, int fd, bool is_socket)
{
	if (is_socket)
		return socket_kind(fd);
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
		return socket_kind(fd);
	if (fstat(fd, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) &&
	    coil__op_supported(w, IORING_OP_READ_MULTISHOT))
		return COIL__RK_READ_MSHOT;
	return COIL__RK_READ_ONCE;
}

/* The fd lock: a one-byte spinlock (held only around a short system call
 * such as fcntl or setsockopt), yielding the CPU while another thread holds
 * it. */
static void fd_lock(coil_channel_t *ch)
{
	unsigned spins = 0;
	while (atomic_exchange_explicit(&ch->fd_lock, true,
					memory_order_acquire)) {
		while (atomic_load_explicit(&ch->fd_lock, memory_order_relaxed))
			if (++spins > 64)
				sched_yield();
	}
}

static void fd_unlock(coil_channel_t *ch)
{
	atomic_store_explicit(&ch->fd_lock, false, memory_order_release);
}

void coil__channel_set_fd(coil_channel_t *ch, int fd)
{
	/* A fixed slot holds its own reference to the file: it goes with the
	 * number, before the number is closed (ftable.c). */
	if (ch->fslot >= 0 && fd != ch->fd) {
		coil__ftable_put(ch->w, ch->fslot);
		ch->fslot = -1;
	}
	fd_lock(ch);
	__atomic_store_n(&ch->fd, fd, __ATOMIC_RELAXED); /* read by alive() */
	fd_unlock(ch);
}

int coil__channel_fd_call(coil_channel_t *ch, int (*fn)(int fd, void *arg),
			  void *arg)
{
	fd_lock(ch);
	int rc = ch->fd >= 0 && state(ch) != COIL__CH_CLOSED ? fn(ch->fd, arg)
							     : -EBADF;
	fd_unlock(ch);
	return rc;
}

void coil__channel_attach_fd(coil_channel_t *ch, int fd, int mode,
			     bool is_socket)
{
	coil__channel_set_fd(ch, fd);
	ch->mode = mode;
	ch->rkind = read_kind(ch->w, fd, is_socket);
	ch->is_socket = ch->rkind == COIL__RK_RECV ||
			ch->rkind == COIL__RK_RECV_ONCE;
	ch->eof = false;
	ch->rerr = 0;
	set_state(ch, COIL__CH_OPEN);
	do_register(ch);
	/* What waited for a descriptor and this one cannot serve fails. */
	if (!(mode & COIL_IO_READ))
		fail_all_reads(ch, -EBADF,
			       "read on a channel not open for reading");
	if (!(mode & COIL_IO_WRITE) && !ch->send_inflight)
		fail_writes(ch, -EBADF,
			    "write on a channel not open for writing");
	update_interest(ch);
	kick_write(ch);
}

void coil__channel_connected(coil_channel_t *ch)
{
	ch->connecting = false;
	kick_write(ch);
	if (!wq_head(ch) && !ch->send_inflight && ch->sock_drain_wait)
		coil__sock_drained(ch);
}

static int prepare_fd(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

int coil_channel_new(coil_loop_t *loop, coil_channel_t **out)
{
	if (!loop || !out)
		return -EINVAL;
	return coil__channel_new(coil__pick_worker(loop), out);
}

/*
 * Wraps fd on a home worker. The descriptor fields are set here, in the
 * caller's thread, before anyone else can see the channel; starting reads and
 * listing the channel for loop stop happen on the home worker.
 */
int coil_channel_wrap(coil_loop_t *loop, int fd, int mode,
		      coil_channel_t **out)
{
	return coil__channel_wrap_sized(loop, fd, mode, sizeof(coil_channel_t),
					NULL, out);
}

int coil__channel_wrap_sized(coil_loop_t *loop, int fd, int mode, size_t size,
			     void (*init)(coil_channel_t *ch),
			     coil_channel_t **out)
{
	if (!loop || !out)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	if (!mode || (mode & ~(COIL_IO_READ | COIL_IO_WRITE)))
		return -EINVAL;
	int rc = prepare_fd(fd);
	if (rc)
		return rc;
	coil_channel_t *ch;
	rc = coil__channel_new_sized(coil__pick_worker(loop), size, &ch);
	if (rc)
		return rc;
	if (init)
		init(ch);
	ch->fd = fd;
	ch->mode = mode;
	ch->rkind = read_kind(ch->w, fd, false);
	ch->is_socket = ch->rkind == COIL__RK_RECV ||
			ch->rkind == COIL__RK_RECV_ONCE;
	set_state(ch, COIL__CH_OPEN);
	rc = call(ch, CALL_ATTACH, 0, NULL, NULL);
	if (rc) {
		ch->fd = -1;
		set_state(ch, COIL__CH_CLOSED);
		coil__channel_put(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

static void rewrap_local(coil_channel_t *ch, int fd, int mode)
{
	if (ch->fd >= 0 && state(ch) != COIL__CH_CLOSED) {
		/* kaa wrap(): the old descriptor is closed first. Its
		 * ring ops are cancelled; the old fd is closed here since
		 * the channel lives on with the new one. */
		cancel_recv(ch);
		/* A recv still in flight holds the file itself, not the
		 * number, and is being cancelled: closing the number now is
		 * safe. */
		int old = ch->fd;
		coil__channel_set_fd(ch, -1);
		close(old);
	}
	coil__channel_attach_fd(ch, fd, mode, false);
	kick_write(ch);
}

/* tls.c: a filtered channel's stream state can be neither copied nor moved
 * with its descriptor (any thread: flt is published with a release). */
static inline bool has_filter(const coil_channel_t *ch)
{
	return __atomic_load_n(&ch->flt, __ATOMIC_ACQUIRE) != NULL;
}

int coil_channel_rewrap(coil_channel_t *ch, int fd, int mode)
{
	if (!ch)
		return -EINVAL;
	if (has_filter(ch)) /* tls.c */
		return -EOPNOTSUPP;
	if (fd < 0)
		return -EBADF;
	if (!mode || (mode & ~(COIL_IO_READ | COIL_IO_WRITE)))
		return -EINVAL;
	if (state(ch) == COIL__CH_CLOSED)
		return -EBADF;
	int rc = prepare_fd(fd);
	if (rc)
		return rc;
	return call(ch, CALL_REWRAP, fd, NULL, (void *)(intptr_t)mode);
}

int coil_channel_pipe(coil_loop_t *loop, coil_channel_t **rd,
		      coil_channel_t **wr)
{
	if (!loop || !rd || !wr)
		return -EINVAL;
	int p[2];
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
		return -errno;
	int rc = coil_channel_wrap(loop, p[0], COIL_IO_READ, rd);
	if (rc) {
		close(p[0]);
		close(p[1]);
		return rc;
	}
	rc = coil_channel_wrap(loop, p[1], COIL_IO_WRITE, wr);
	if (rc) {
		coil_channel_release(*rd);
		close(p[1]);
		return rc;
	}
	return 0;
}

static int dup_fd(int fd, void *arg)
{
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	return nfd < 0 ? -errno : nfd;
}

int coil_channel_dup(coil_channel_t *ch, coil_channel_t **out)
{
	if (!ch || !out)
		return -EINVAL;
	if (has_filter(ch)) /* tls.c */
		return -EOPNOTSUPP;
	int nfd = coil__channel_fd_call(ch, dup_fd, NULL);
	if (nfd < 0)
		return nfd;
	coil_channel_t *d;
	int rc = coil__channel_new(ch->w, &d);
	if (rc) {
		close(nfd);
		return rc;
	}
	d->fd = nfd;
	d->mode = ch->mode;
	d->rkind = ch->rkind;
	d->is_socket = ch->is_socket;
	set_state(d, COIL__CH_OPEN);
	rc = call(d, CALL_ATTACH, 0, NULL, NULL);
	if (rc) {
		close(nfd);
		d->fd = -1;
		set_state(d, COIL__CH_CLOSED);
		coil__channel_put(d);
		return rc;
	}
	*out = d;
	return 0;
}

/*
 * kaa steal(): ch takes other's descriptor and its buffered bytes. Both
 * channels must share a home worker, where this runs synchronously; other's
 * ring ops are cancelled, and it is closed (expected) without closing the
 * descriptor, which now belongs to ch.
 */
int coil_channel_steal(coil_channel_t *ch, coil_channel_t *other)
{
	if (!ch || !other || ch == other)
		return -EINVAL;
	if (has_filter(ch) || has_filter(other)) /* tls.c */
		return -EOPNOTSUPP;
	if (ch->w != other->w)
		return -EXDEV;
	if (!on_home(ch))
		return -EXDEV;
	if (other->fd < 0 || state(other) == COIL__CH_CLOSED)
		return -EBADF;
	if (other->recv_armed || other->send_inflight || wq_head(other)) {
		/* The ring still uses other's fd through ops that will
		 * complete later: refuse rather than share it. */
		if (other->send_inflight || wq_head(other))
			return -EBUSY;
	}
	if (steal_to(other) || steal_to(ch))
		return -EBUSY; /* already stolen, or a victim itself */
	/* Inside other's readline callback, or its read callback showing
	 * held-back bytes, the bytes shown are a view into other's queues,
	 * consumed when the callback returns: moving them would deliver them
	 * twice (apiseq F9). (A read callback shown a fresh receive may
	 * steal: that chunk is in no queue.) */
	if (other->show_rq || other->show_sigq)
		return -EBUSY;
	bool to_sig = ch->on_read != NULL;
	/* What the steal needs, made first so that it cannot fail half-way. */
	if (((other->recv_armed || (X(other) && X(other)->steal_wait)) &&
	     (!ext_get(ch) || !ext_get(other))) ||
	    (to_sig && sq_len(other) && !ext_get(ch)))
		return -ENOMEM;
	int fd = fcntl(other->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* other's bytes in arrival order: its read queue (already shown to
	 * its read signal), then what a pause held back (never shown), then
	 * what its receive still takes until the cancel lands. Shown bytes
	 * go to ch's readers; unshown ones to ch's read signal if it has one
	 * (through sigq, flushed at the end of the turn), else to its
	 * readers. */
	if (rq_append(ch, coil__bufq_data(RQ(other)), rq_len(other)) ||
	    (to_sig ? sq_append(ch, coil__bufq_data(sq(other)), sq_len(other))
		    : rq_append(ch, coil__bufq_data(sq(other)),
				sq_len(other)))) {
		rd_put(ch);
		close(fd);
		return -ENOMEM;
	}
	if (other->rd)
		coil__bufq_free(&other->rd->rq);
	rd_put(other);
	sq_free(other);
	other->close_after_sigq = false;
	rq_changed(other);
	if (sq_len(ch))
		ch_defer(ch);
	int mode = other->mode;
	bool sock = other->is_socket;
	if (other->recv_armed || (X(other) && X(other)->steal_wait)) {
		/* Until its last completion (or, for a thief stolen while it
		 * still waits on its own victim, until that one's), ch reads
		 * nothing of its own: every byte in order (apiseq F11). */
		X(other)->steal_to = ch;
		coil__channel_get(ch);
		X(ch)->steal_wait++;
	}
	coil__channel_close_local(other, true, true);
	if (ch->fd >= 0 && state(ch) != COIL__CH_CLOSED)
		rewrap_local(ch, fd, mode);
	else
		coil__channel_attach_fd(ch, fd, mode, sock);
	process_api(ch);
	return 0;
}

/* The victim's receive ended: the thief reads for itself from now on. */
static void steal_drained(coil_channel_t *victim)
{
	coil_channel_t *ch = X(victim)->steal_to;
	X(victim)->steal_to = NULL;
	if (--X(ch)->steal_wait == 0 && X(ch)->steal_to)
		steal_drained(ch); /* ch was stolen too: its thief goes on */
	update_interest(ch);
	coil__channel_put(ch);
}

/* ---- stream filters (tls.c) ---- */

void coil__channel_deliver(coil_channel_t *ch, const char *p, size_t n)
{
	if (state(ch) == COIL__CH_OPEN && !ch->eof && n)
		on_bytes(ch, p, n, -1);
}

void coil__channel_end(coil_channel_t *ch, int err)
{
	set_eof(ch, err);
}

void coil__channel_kick(coil_channel_t *ch)
{
	kick_write(ch);
	update_interest(ch);
}

bool coil__channel_has_consumer(const coil_channel_t *ch)
{
	return ch->on_read || line_cb(ch) || !reads_empty(ch);
}

void *coil__channel_take_queued(coil_channel_t *ch, size_t *n)
{
	*n = rq_len(ch);
	void *p = NULL;
	if (*n) {
		p = coil__malloc(*n);
		if (p)
			memcpy(p, coil__bufq_data(RQ(ch)), *n);
		rq_consume(ch, *n);
	}
	rd_put(ch);
	rq_changed(ch);
	return p;
}

/* ---- socket.c ---- */

bool coil__channel_writes_queued(const coil_channel_t *ch)
{
	return wq_head(ch) != NULL;
}

/* ---- properties ---- */

static int fd_number(int fd, void *arg)
{
	return fd;
}

/* The number, read under the fd lock: it is the channel's as of the call
 * (use it on the home worker, where it cannot change under you). */
int coil_channel_fileno(const coil_channel_t *ch)
{
	if (!ch)
		return -1;
	int fd = coil__channel_fd_call((coil_channel_t *)ch, fd_number, NULL);
	return fd < 0 ? -1 : fd;
}

int coil_channel_alive(const coil_channel_t *ch)
{
	if (ch && state(ch) == COIL__CH_NEW && atomic_load(&ch->sock_connecting))
		return !atomic_load(&ch->close_req); /* kaa: alive while connecting */
	return ch && state(ch) == COIL__CH_OPEN &&
	       __atomic_load_n(&ch->fd, __ATOMIC_RELAXED) >= 0 &&
	       !atomic_load(&ch->close_req);
}

int coil_channel_readable(const coil_channel_t *ch)
{
	if (!ch)
		return 0;
	return coil_channel_alive(ch) || atomic_load(&ch->rq_used) > 0;
}

int coil_channel_writable(const coil_channel_t *ch)
{
	if (!ch)
		return 0;
	int st = state(ch);
	return st == COIL__CH_NEW || (st == COIL__CH_OPEN &&
				      (ch->mode & COIL_IO_WRITE));
}

size_t coil_channel_read_queue_used(const coil_channel_t *ch)
{
	return ch ? atomic_load(&ch->rq_used) : 0;
}

size_t coil_channel_write_queue_used(const coil_channel_t *ch)
{
	return ch ? atomic_load(&ch->wq_used) : 0;
}

size_t coil_channel_queue_size(const coil_channel_t *ch)
{
	return ch ? atomic_load(&ch->queue_size) : 0;
}

size_t coil_channel_chunk_size(const coil_channel_t *ch)
{
	return ch ? chunk_size(ch) : 0;
}

int coil_channel_set_queue_size(coil_channel_t *ch, size_t n)
{
	if (!ch || !n)
		return -EINVAL;
	atomic_store(&ch->queue_size, n);
	return call(ch, CALL_INTEREST, 0, NULL, NULL);
}

int coil_channel_set_chunk_size(coil_channel_t *ch, size_t n)
{
	if (!ch || !n)
		return -EINVAL;
	struct coil__chext *e = ext_get(ch);
	if (!e)
		return -ENOMEM;
	atomic_store(&e->chunk_size, n);
	return 0;
}

int coil_channel_set_close_on_eof(coil_channel_t *ch, int on)
{
	if (!ch)
		return -EINVAL;
	/* Read on the home worker only, so it is set there too. */
	return call(ch, CALL_EOF_CLOSE, on != 0, NULL, NULL);
}

int coil_channel_set_delimiters(coil_channel_t *ch, const void *const *delims,
				const size_t *lens, size_t n)
{
	if (!ch)
		return -EINVAL;
	coil__delims *ds;
	int rc = coil__delims_new(delims, lens, n, &ds);
	if (rc)
		return rc;
	if (!ext_get(ch)) {
		coil__delims_free(ds);
		return -ENOMEM;
	}
	rc = call(ch, CALL_DELIMS, 0, ds, NULL);
	if (rc)
		coil__delims_free(ds);
	return rc;
}

int coil_channel_set_delimiter(coil_channel_t *ch, const char *delim)
{
	if (!delim)
		return -EINVAL;
	size_t len = strlen(delim);
	const void *d = delim;
	return coil_channel_set_delimiters(ch, &d, &len, 1);
}

coil_loop_t *coil_channel_loop(const coil_channel_t *ch)
{
	return ch ? ch->w->loop : NULL;
}

int coil_channel_worker(const coil_channel_t *ch)
{
	return ch ? (int)ch->w->index : -EINVAL;
}

void coil_channel_set_data(coil_channel_t *ch, void *data)
{
	if (ch)
		ch->data = data;
}

void *coil_channel_get_data(const coil_channel_t *ch)
{
	return ch ? ch->data : NULL;
}

/* ---- drained signal, linger, references ---- */

int coil_channel_on_drain(coil_channel_t *ch,
			  void (*cb)(coil_channel_t *ch, void *ud), void *ud)
{
	if (!ch)
		return -EINVAL;
	if (!ext_get(ch))
		return -ENOMEM;
	return call(ch, CALL_ON_DRAIN, 0, (void *)cb, ud);
}

int coil_channel_set_low_water(coil_channel_t *ch, size_t n)
{
	if (!ch || n == SIZE_MAX)
		return -EINVAL;
	struct coil__chext *e = ext_get(ch);
	if (!e)
		return -ENOMEM;
	atomic_store(&e->low_water, n);
	return 0;
}

size_t coil_channel_low_water(const coil_channel_t *ch)
{
	return ch ? low_water(ch) : 0;
}

int coil_channel_set_linger(coil_channel_t *ch, unsigned ms)
{
	if (!ch)
		return -EINVAL;
	struct coil__chext *e = X(ch);
	if (!e && ms == COIL_CHANNEL_LINGER_DEFAULT_MS)
		return 0; /* the default: no extension needed */
	e = ext_get(ch);
	if (!e)
		return -ENOMEM;
	atomic_store(&e->linger_ms, ms);
	return 0;
}

unsigned coil_channel_linger(const coil_channel_t *ch)
{
	return ch ? linger_ms(ch) : 0;
}

/* ---- relay: src's bytes into dst, paced by dst's write queue ---- */

struct coil__relay {
	_Atomic int refs;        /* the relay + one per write in flight */
	coil_channel_t *src, *dst;
	coil_ip_t *ip;
	_Atomic uint64_t out;    /* bytes dst handed to the kernel */
	_Atomic int err;         /* first write error */
	_Atomic unsigned pending;
	_Atomic bool src_done;
	bool active;
};

static void relay_put(struct coil__relay *r)
{
	if (atomic_fetch_sub(&r->refs, 1) == 1) {
		coil_ip_unref(r->ip);
		coil__channel_put(r->src);
		coil__channel_put(r->dst);
		coil__free(r);
	}
}

/* The gate (dst, on its home worker) drained to its low-water mark: wake
 * a source that paused for it. */
static void gate_wake(coil_channel_t *ch)
{
	coil_channel_t *src = gated_of(ch);
	if (!src)
		return;
	if (atomic_load(&ch->wq_used) > low_water(ch) &&
	    state(ch) != COIL__CH_CLOSED)
		return;
	if (atomic_exchange(&X(src)->gate_paused, false))
		call(src, CALL_WAKE, 0, NULL, NULL);
}

static void relay_on_read(coil_channel_t *src, const void *data, size_t len,
			  void *ud);

static void relay_end(struct coil__relay *r, int err, const char *msg)
{
	coil_channel_t *src = r->src, *dst = r->dst;
	r->active = false;
	struct coil__chext *se = X(src);
	se->relay = NULL;
	if (src->on_read == relay_on_read)
		src->on_read = NULL; /* not a signal the user connected since */
	se->gate = NULL;
	atomic_store(&se->gate_paused, false);
	/* Held-back bytes now belong to src's readers (end of the turn). */
	if (se->sigq.len)
		ch_defer(src);
	if (err)
		coil__ip_fail_msg(r->ip, err, msg);
	else
		coil_ip_finish_int(r->ip, (int64_t)atomic_load(&r->out));
	/* dst forgets src on its own worker (the one that reads gated),
	 * holding src until then. */
	coil__channel_get(src);
	if (call(dst, CALL_UNGATE, 0, src, NULL))
		coil__channel_put(src);
	update_interest(src);
	relay_put(r);
}

/* src's home worker: ends the relay once src's stream ended and every
 * write settled, or at the first write error. */
static void relay_check(coil_channel_t *ch)
{
	struct coil__relay *r = relay_of(ch);
	if (!r || !r->active)
		return;
	int err = atomic_load(&r->err);
	if (err) {
		relay_end(r, err, "relay: a write to the destination failed");
		return;
	}
	bool ended = (ch->eof && !sq_len(ch)) ||
		     state(ch) == COIL__CH_CLOSED;
	if (!ended)
		return;
	atomic_store(&r->src_done, true);
	if (atomic_load(&r->pending))
		return; /* the last write's completion checks again */
	if (ch->rerr)
		relay_end(r, ch->rerr, "relay: the source failed");
	else
		relay_end(r, 0, NULL);
}

static void relay_dst_closed(coil_channel_t *src, coil_channel_t *dst)
{
	struct coil__relay *r = relay_of(src);
	if (r && r->active && r->dst == dst) {
		int zero = 0;
		atomic_compare_exchange_strong(&r->err, &zero, -EPIPE);
	}
}

/* dst's home worker: a relayed write settled. */
static void relay_write_done(coil_ip_t *w, void *ud)
{
	struct coil__relay *r = ud;
	int err = coil_ip_error(w);
	if (err) {
		int zero = 0;
		atomic_compare_exchange_strong(&r->err, &zero, err);
	} else {
		atomic_fetch_add(&r->out, (uint64_t)coil_ip_int(w));
	}
	if (atomic_fetch_sub(&r->pending, 1) == 1 || err) {
		if (err || atomic_load(&r->src_done))
			call(r->src, CALL_RELAY_CHECK, 0, NULL, NULL);
	}
	relay_put(r);
}

static void relay_on_read(coil_channel_t *src, const void *data, size_t len,
			  void *ud)
{
	struct coil__relay *r = ud;
	if (!r->active)
		return;
	/* Only what fits in dst's queue; the rest waits in src (sig_back)
	 * until dst drains (its queue is full, so src is paused). */
	size_t qsize = atomic_load(&r->dst->queue_size);
	size_t used = atomic_load(&r->dst->wq_used);
	size_t room = used < qsize ? qsize - used : 0;
	if (room < len && state(r->dst) == COIL__CH_OPEN) {
		X(src)->sig_back = len - room; /* a relay source has one */
		len = room;
		if (!len) {
			gate_high(src);
			return;
		}
	}
	coil_ip_t *w = coil_channel_write_view(r->dst, data, len);
	if (!w) {
		int zero = 0;
		atomic_compare_exchange_strong(&r->err, &zero, -ENOMEM);
		ch_defer(src);
		return;
	}
	atomic_fetch_add(&r->pending, 1);
	atomic_fetch_add(&r->refs, 1);
	if (coil_ip_on_done(w, relay_write_done, r)) {
		atomic_fetch_sub(&r->pending, 1);
		relay_put(r);
		int zero = 0;
		atomic_compare_exchange_strong(&r->err, &zero, -ENOMEM);
	}
	coil_ip_unref(w);
}

static int relay_abort(coil_ip_t *ip, void *arg)
{
	struct coil__relay *r = arg;
	if (r->active)
		relay_end(r, -ECANCELED, "relay aborted");
	return 1;
}

static void relay_start(coil_channel_t *src, struct coil__relay *r)
{
	do_register(src);
	const char *msg = NULL;
	int err = 0;
	if (relay_of(src) || src->on_read)
		err = -EBUSY, msg = "relay: the source already has a read "
				    "signal or relay";
	else if (atomic_load(&src->listening) ||
		 (state(src) != COIL__CH_NEW && !(src->mode & COIL_IO_READ)))
		err = -EBADF, msg = "relay: the source is not open for reading";
	else if (gated_of(r->dst))
		err = -EBUSY, msg = "relay: the destination already has a "
				    "relay source";
	if (err) {
		coil__ip_fail_msg(r->ip, err, msg);
		relay_put(r);
		return;
	}
	r->active = true;
	X(src)->relay = r; /* both made by coil_channel_relay */
	X(src)->gate = r->dst;
	/* The relay's reference on src, dropped by dst's CALL_UNGATE. */
	atomic_store(&X(r->dst)->gated, src);
	coil_ip_set_abort(r->ip, relay_abort, r);
	src->on_read = relay_on_read;
	src->on_read_ud = r;
	if (sq_len(src))
		ch_defer(src);
	update_interest(src);
	relay_check(src);
}

coil_ip_t *coil_channel_relay(coil_channel_t *src, coil_channel_t *dst)
{
	if (!src)
		return NULL;
	coil_ip_t *ip = coil__ip_new_on(src->w);
	if (!ip)
		return NULL;
	if (!dst || dst == src) {
		coil__ip_fail_msg(ip, -EINVAL, "relay: bad destination");
		return ip;
	}
	if (!ext_get(src) || !ext_get(dst)) {
		coil_ip_unref(ip);
		return NULL;
	}
	struct coil__relay *r = coil__calloc(1, sizeof(*r));
	if (!r) {
		coil_ip_unref(ip);
		return NULL;
	}
	atomic_init(&r->refs, 1);
	r->src = src;
	r->dst = dst;
	r->ip = coil_ip_ref(ip);
	coil__channel_get(src);
	coil__channel_get(dst);
	if (call(src, CALL_RELAY, 0, r, NULL)) {
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
		relay_put(r);
	}
	return ip;
}
