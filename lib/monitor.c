/* SPDX-License-Identifier: MIT */
/* coil_monitor (kaa IOMonitor): level-triggered readiness callbacks on any fd. */
#include "internal.h"

#include <poll.h>

#include <liburing/io_uring.h>

/*
 * Design.
 *
 * Two halves. The *wanted* registration (fd, condition and a generation
 * number) lives in one atomic word that any thread may compare-and-swap, so
 * register() can answer 0 / -EBUSY synchronously from whichever thread calls
 * it. The *ring* half (the poll op, the cancel op, the closer link, every user
 * callback) belongs to the home worker, which reconciles the ring with the
 * wanted word in reconcile(): a poll armed for an older word is cancelled; a new
 * poll is armed only once the previous poll op and its cancel have both
 * delivered their final CQEs, so one embedded coil__op is never in flight
 * twice and a late CQE can always be told apart (its word is stale).
 *
 * Level triggering. An io_uring multishot poll posts a CQE on every wake-up
 * of the file, not while it stays ready (the kernel adds EPOLLET, and refuses
 * IORING_POLL_ADD_LEVEL together with IORING_POLL_ADD_MULTI). To keep kaa's
 * semantics (the callback keeps firing while data sits unread), each callback
 * is followed by a re-check on the next loop turn: a task the worker posts to
 * itself polls the fd with poll(2) and a zero timeout, and fires again while
 * it is ready. At most one callback per monitor per turn comes from that
 * path, and other I/O of the worker is reaped in between.
 *
 * Threads. From a foreign thread, register/unregister/free change the wanted
 * word (and, for free, a pending bit) and post the embedded sync task unless
 * it is already queued; the home worker does the rest. `pend` carries both
 * "sync task queued" and "free requested" so that a foreign free's last touch
 * of the monitor is one atomic read-modify-write: the worker cannot see the
 * free request before the requester is done with the memory.
 *
 * Lifetime. The monitor is freed on the home worker once it is closed (the
 * user freed it, or the stopping loop closed it) and nothing refers to it any
 * more: no poll or cancel op in flight, no task queued, no callback running.
 */

/* Bits of the wanted word: fd + 1 (0: unregistered), condition, generation. */
#define WANT_FD_MASK 0xffffffffull
#define WANT_COND_SHIFT 32
#define WANT_COND_MASK 0x3ull
#define WANT_GEN_SHIFT 34

/* Bits of pend. */
#define PEND_SYNC 0x1u /* sync_task is queued in the home inbox */
#define PEND_FREE 0x2u /* coil_monitor_free() was called off the home worker */

struct coil_monitor_s {
	coil__closer closer;
	coil__worker *w;
	coil_monitor_cb cb;
	void *ud;
	_Atomic uint64_t want; /* the registration asked for (any thread) */
	_Atomic unsigned pend; /* PEND_* (any thread) */
	coil__task sync_task;  /* reconcile on the home worker */
	coil__task again_task; /* level re-check / deferred error delivery */
	/* Home worker only from here on. */
	coil__op poll_op;
	coil__op cancel_op;
	uint64_t armed;        /* the wanted word poll_op was armed for */
	uint64_t err_want;     /* arm_err belongs to this word */
	int arm_err;           /* arming failed; report it from again_task */
	unsigned in_cb;        /* user callbacks running (nesting depth) */
	bool listed;           /* on the worker's closer list */
	bool closed;           /* freed by the user or closed by stop */
	bool poll_inflight;    /* poll_op's final CQE has not arrived */
	bool cancel_inflight;  /* cancel_op's CQE has not arrived */
	bool again_posted;     /* again_task is queued */
};

static inline bool want_registered(uint64_t w)
{
	return (w & WANT_FD_MASK) != 0;
}

static inline int want_fd(uint64_t w)
{
	uint32_t lo = (uint32_t)(w & WANT_FD_MASK);
	return lo ? (int)(lo - 1) : -1;
}

static inline int want_cond(uint64_t w)
{
	return (int)((w >> WANT_COND_SHIFT) & WANT_COND_MASK);
}

/* The word for (fd, cond) one generation after cur; fd < 0: unregistered. */
static inline uint64_t want_next(uint64_t cur, int fd, int cond)
{
	uint64_t gen = (cur >> WANT_GEN_SHIFT) + 1;
	uint64_t w = gen << WANT_GEN_SHIFT;
	if (fd >= 0)
		w |= (uint64_t)((uint32_t)fd + 1) |
		     (uint64_t)cond << WANT_COND_SHIFT;
	return w;
}

static unsigned poll_mask(int cond)
{
	unsigned mask = 0;
	if (cond & COIL_IO_READ)
		mask |= POLLIN;
	if (cond & COIL_IO_WRITE)
		mask |= POLLOUT;
	return mask;
}

/*
 * Poll bits to COIL_IO_* for the requested condition. Input, hang-up and
 * error mean "a read will not block" (it returns data, EOF or the error).
 * Error and hang-up are also reported to a write-only monitor: otherwise a
 * writer waiting on a pipe whose reader has gone, or on a reset socket, would
 * never learn that its next write fails.
 */
static int map_events(unsigned revents, int cond)
{
	int ev = 0;
	if ((cond & COIL_IO_READ) &&
	    (revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)))
		ev |= COIL_IO_READ;
	if ((cond & COIL_IO_WRITE) &&
	    ((revents & (POLLOUT | POLLERR)) ||
	     (!(cond & COIL_IO_READ) && (revents & POLLHUP))))
		ev |= COIL_IO_WRITE;
	return ev;
}

/*
 * Frees m once it is closed and nothing refers to it. Every home-worker entry
 * point ends with this call and touches m no more afterwards; in_cb keeps a
 * monitor freed from inside its own callback alive until the callback is
 * over.
 */
static void maybe_free(coil_monitor_t *m)
{
	if (!m->closed || m->in_cb || m->poll_inflight || m->cancel_inflight ||
	    m->again_posted || (atomic_load(&m->pend) & PEND_SYNC))
		return;
	if (m->listed)
		coil__closer_del(&m->closer);
	coil__free(m);
}

/* Queues the sync task on the home inbox unless it is queued already. Any
 * thread; also the home worker's way to retry when no SQE could be had. */
static void post_sync(coil_monitor_t *m)
{
	if (!(atomic_fetch_or(&m->pend, PEND_SYNC) & PEND_SYNC))
		coil__post(m->w, &m->sync_task);
}

/* Home worker: queue the level re-check (or an error report) for the next
 * loop turn. */
static void post_again(coil_monitor_t *m)
{
	if (m->again_posted || m->closed)
		return;
	m->again_posted = true;
	coil__post(m->w, &m->again_task);
}

static void fire(coil_monitor_t *m, int fd, int events)
{
	m->in_cb++;
	m->cb(m, fd, events, m->ud);
	m->in_cb--;
}

/* Whether callbacks for the registration `armed` may still start. */
static bool current(const coil_monitor_t *m, uint64_t armed)
{
	return !m->closed && atomic_load(&m->want) == armed;
}

/*
 * Polling for `armed` failed with err: the monitor becomes unregistered and
 * the callback sees err, unless the registration changed meanwhile (then the
 * error belongs to a registration nobody watches any more).
 */
static void fail(coil_monitor_t *m, uint64_t armed, int err)
{
	uint64_t exp = armed;
	if (m->closed ||
	    !atomic_compare_exchange_strong(&m->want, &exp,
					    want_next(armed, -1, 0)))
		return;
	fire(m, want_fd(armed), err);
}

/*
 * Home worker: brings the ring in line with the wanted word. Cancels a poll
 * armed for a stale word; arms a poll for the wanted one once neither the
 * old poll nor its cancel is in flight. Never runs user callbacks, so it is
 * safe anywhere on the home worker, including inside public calls.
 */
static void reconcile(coil_monitor_t *m)
{
	uint64_t want = m->closed ? 0 : atomic_load(&m->want);
	int rc;

	if (m->poll_inflight) {
		if (m->armed == want || m->cancel_inflight)
			return;
		rc = coil__prep_cancel(m->w, &m->cancel_op, &m->poll_op);
		if (rc == 0)
			m->cancel_inflight = true;
		else if (rc == -EBUSY)
			post_sync(m); /* no SQE now: try again next turn */
		else
			m->poll_inflight = false; /* the ring is gone, and
						   * its ops with it */
		return;
	}
	if (m->cancel_inflight || !want_registered(want))
		return;
	rc = coil__prep_poll_multishot(m->w, &m->poll_op, want_fd(want),
				       poll_mask(want_cond(want)));
	if (rc == 0) {
		m->poll_inflight = true;
		m->armed = want;
	} else if (rc == -EBUSY) {
		post_sync(m);
	} else {
		/* The ring is gone: report it like a failed poll, but from a
		 * task, never from inside the register call. */
		m->arm_err = rc;
		m->err_want = want;
		post_again(m);
	}
}

/*
 * Each poll CQE: the poll bits (or -errno) for the registration the op was
 * armed for. Only a CQE for the current registration reaches the callback.
 * A CQE without IORING_CQE_F_MORE ends the op; if the kernel ended it while
 * the registration stands (res >= 0), reconcile() arms a new one.
 */
static void poll_complete(coil__op *op, int res, unsigned flags)
{
	coil_monitor_t *m = coil__container_of(op, coil_monitor_t, poll_op);
	uint64_t armed = m->armed;

	if (!(flags & IORING_CQE_F_MORE))
		m->poll_inflight = false;
	if (current(m, armed)) {
		if (res < 0) {
			fail(m, armed, res);
		} else if (!m->again_posted) {
			/* With a re-check queued, that one reports the
			 * state of the next turn; firing here as well would
			 * only double the callback. */
			int ev = map_events((unsigned)res, want_cond(armed));
			if (ev) {
				fire(m, want_fd(armed), ev);
				if (current(m, armed))
					post_again(m);
			}
		}
	}
	reconcile(m);
	maybe_free(m);
}

static void cancel_complete(coil__op *op, int res, unsigned flags)
{
	coil_monitor_t *m = coil__container_of(op, coil_monitor_t, cancel_op);
	m->cancel_inflight = false;
	reconcile(m);
	maybe_free(m);
}

/*
 * The level re-check, one loop turn after a callback: while the fd is still
 * ready for the registered condition the callback runs again, once per turn.
 * Also delivers an arming failure left by reconcile().
 */
static void again_run(coil__task *t)
{
	coil_monitor_t *m = coil__container_of(t, coil_monitor_t, again_task);
	m->again_posted = false;
	if (m->arm_err) {
		int err = m->arm_err;
		m->arm_err = 0;
		fail(m, m->err_want, err);
	} else if (m->poll_inflight && current(m, m->armed)) {
		uint64_t armed = m->armed;
		int cond = want_cond(armed);
		struct pollfd p = {.fd = want_fd(armed),
				   .events = (short)poll_mask(cond)};
		if (poll(&p, 1, 0) == 1) {
			int ev = map_events((unsigned)p.revents, cond);
			if (ev) {
				fire(m, p.fd, ev);
				if (current(m, armed))
					post_again(m);
			}
		}
	}
	reconcile(m);
	maybe_free(m);
}

/*
 * The sync task: picks up what foreign threads changed. On its first run for
 * a monitor created off its home worker it also lists the closer; a worker
 * already stopping gets no new closer (its stop walk is over) and the monitor
 * is closed at once instead, as the stop would have done.
 */
static void sync_run(coil__task *t)
{
	coil_monitor_t *m = coil__container_of(t, coil_monitor_t, sync_task);
	unsigned p = atomic_fetch_and(&m->pend, ~PEND_SYNC);
	if (p & PEND_FREE)
		m->closed = true;
	if (!m->listed && !m->closed) {
		if (m->w->stopping) {
			m->closed = true;
		} else {
			coil__closer_add(m->w, &m->closer);
			m->listed = true;
		}
	}
	reconcile(m);
	maybe_free(m);
}

/* The loop is stopping: no callback runs any more; the monitor goes away once
 * its ring ops have drained, whether or not the user freed it. */
static void closer_close(coil__closer *c)
{
	coil_monitor_t *m = coil__container_of(c, coil_monitor_t, closer);
	m->closed = true;
	reconcile(m);
	maybe_free(m);
}

/* After the wanted word changed: reconcile now on the home worker, else hand
 * the work to it. */
static void kick(coil_monitor_t *m)
{
	if (coil__on_worker(m->w))
		reconcile(m);
	else
		post_sync(m);
}

int coil_monitor_new(coil_loop_t *loop, coil_monitor_cb cb, void *ud,
		     coil_monitor_t **out)
{
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!loop || !cb)
		return -EINVAL;
	if (atomic_load(&loop->stopping))
		return -ESHUTDOWN;
	coil_monitor_t *m = coil__calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->w = coil__pick_worker(loop);
	m->cb = cb;
	m->ud = ud;
	m->closer.close = closer_close;
	coil__list_init(&m->closer.link);
	m->sync_task.run = sync_run;
	m->again_task.run = again_run;
	m->poll_op.complete = poll_complete;
	m->cancel_op.complete = cancel_complete;
	atomic_init(&m->want, 0);
	atomic_init(&m->pend, 0);
	if (coil__on_worker(m->w)) {
		if (m->w->stopping) {
			coil__free(m);
			return -ESHUTDOWN;
		}
		coil__closer_add(m->w, &m->closer);
		m->listed = true;
	} else {
		post_sync(m);
	}
	*out = m;
	return 0;
}

/*
 * The checks and the claim happen on the calling thread (one CAS on the
 * wanted word), so the result is exact from any thread; arming the poll
 * happens on the home worker. Errors from polling itself (a closed fd, for
 * instance) arrive later through the callback as a negative errno.
 */
int coil_monitor_register(coil_monitor_t *m, int fd, int condition)
{
	if (!m)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	if (condition != COIL_IO_READ && condition != COIL_IO_WRITE &&
	    condition != (COIL_IO_READ | COIL_IO_WRITE))
		return -EINVAL;
	uint64_t cur = atomic_load(&m->want);
	uint64_t next;
	do {
		if (want_registered(cur))
			return want_fd(cur) == fd && want_cond(cur) == condition
				       ? 0
				       : -EBUSY;
		if (atomic_load(&m->w->loop->stopping))
			return -ESHUTDOWN;
		next = want_next(cur, fd, condition);
	} while (!atomic_compare_exchange_weak(&m->want, &cur, next));
	kick(m);
	return 0;
}

/*
 * On the home worker (a callback included) unregister takes effect at once:
 * no callback for the old registration starts afterwards. From another
 * thread it is asynchronous in the sense that a callback already running on
 * the home worker may still be finishing when this returns; none starts after
 * the wanted word was swapped here, because every callback checks it first.
 * The ring's poll is cancelled on the home worker in either case.
 */
int coil_monitor_unregister(coil_monitor_t *m)
{
	if (!m)
		return -EINVAL;
	uint64_t cur = atomic_load(&m->want);
	do {
		if (!want_registered(cur))
			return 0;
	} while (!atomic_compare_exchange_weak(&m->want, &cur,
					       want_next(cur, -1, 0)));
	kick(m);
	return 0;
}

int coil_monitor_active(const coil_monitor_t *m)
{
	return m && want_registered(atomic_load(&m->want)) ? 1 : 0;
}

/*
 * Unregisters, then frees on the home worker once the ring has let go of
 * the monitor. Safe from inside the monitor's own callback (the memory lives
 * until the callback returns). From another thread, the handle must not be
 * used after the call; the fetch_or on pend is the last access to it.
 */
void coil_monitor_free(coil_monitor_t *m)
{
	if (!m)
		return;
	coil_monitor_unregister(m);
	if (coil__on_worker(m->w)) {
		m->closed = true;
		reconcile(m);
		maybe_free(m);
		return;
	}
	if (!(atomic_fetch_or(&m->pend, PEND_SYNC | PEND_FREE) & PEND_SYNC))
		coil__post(m->w, &m->sync_task);
}
