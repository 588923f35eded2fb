/* SPDX-License-Identifier: MIT */
/*
 * Timers on the ring itself (IORING_OP_TIMEOUT): no timer thread, no
 * timerfd, and no ring operation per timer in the common case.
 *
 * Each worker keeps its pending timers on one list ordered by deadline and
 * arms one ring timeout for the earliest. A timer that is cancelled before
 * it fires (a read that completed before its socket timeout) is only taken
 * off the list; the ring timeout stays armed and, when it fires, finds
 * nothing due and is re-armed for the next deadline, if any. A new timer
 * costs a ring operation only when it becomes the earliest deadline and
 * comes before the armed one (a timeout-update), or when nothing is armed.
 * With equal timeouts deadlines only grow, so a stream of reads with a
 * socket timeout costs one ring timeout per timeout period, not two ring
 * operations per read (issue 14).
 */
#include "internal.h"

#include <time.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static coil__timerq *queue(coil__worker *w)
{
	coil__timerq *q = &w->timerq;
	if (coil__unlikely(!q->list.next))
		coil__list_init(&q->list); /* workers are zeroed: lazily */
	return q;
}

static coil__worker *queue_worker(coil__timerq *q)
{
	return coil__container_of(q, coil__worker, timerq);
}

static void set_rel(struct __kernel_timespec *ts, uint64_t deadline,
		    uint64_t now)
{
	uint64_t rel = deadline > now ? deadline - now : 0;
	ts->tv_sec = (long long)(rel / 1000000000u);
	ts->tv_nsec = (long long)(rel % 1000000000u);
}

static coil__timer *head(coil__timerq *q)
{
	return coil__list_empty(&q->list)
		       ? NULL
		       : coil__container_of(q->list.next, coil__timer, link);
}

/*
 * Makes the ring timeout fire no later than the earliest deadline: arms it
 * when nothing is armed, moves it earlier when the head comes before it,
 * otherwise does nothing (an armed timeout that fires early just re-arms).
 */
static int queue_arm(coil__worker *w, coil__timerq *q)
{
	coil__timer *h = head(q);
	if (!h || w->stopping)
		return 0;
	if (q->armed && q->armed_at <= h->deadline)
		return 0;
	set_rel(&q->ts, h->deadline, now_ns());
	int rc = q->armed ? coil__prep_timeout_update(w, NULL, &q->op, &q->ts)
			  : coil__prep_timeout(w, &q->op, &q->ts);
	if (rc)
		return rc;
	q->ring_ops++;
	q->armed = true;
	q->armed_at = h->deadline;
	return 0;
}

static void unlist(coil__timer *t)
{
	coil__list_del(&t->link);
	t->listed = false;
}

/* Runs the timers that are due (all of them, with -ECANCELED for those not
 * due, when the worker stops), then re-arms for what is left. */
static void queue_expire(coil__worker *w, coil__timerq *q)
{
	uint64_t now = now_ns();
	coil__timer *t;
	while ((t = head(q)) && (t->deadline <= now || w->stopping)) {
		unlist(t);
		coil__timer_cb cb = t->cb;
		t->cb = NULL;
		if (cb)
			cb(t, t->deadline <= now ? 0 : -ECANCELED);
	}
	if (queue_arm(w, q))
		coil__defer_add(w, &q->retry);
}

static void queue_fired(coil__op *op, int res, unsigned flags)
{
	(void)res; /* -ETIME, or -ECANCELED from the stop's cancel-all */
	(void)flags;
	coil__timerq *q = coil__container_of(op, coil__timerq, op);
	q->armed = false;
	queue_expire(queue_worker(q), q);
}

static void queue_retry(coil__defer *d)
{
	coil__timerq *q = coil__container_of(d, coil__timerq, retry);
	coil__worker *w = queue_worker(q);
	if (q->armed)
		return;
	queue_expire(w, q);
}

static void timer_done(coil__defer *d)
{
	coil__timer *t = coil__container_of(d, coil__timer, done);
	t->cancelling = false;
	coil__timer_cb cb = t->cb;
	t->cb = NULL;
	if (cb)
		cb(t, -ECANCELED);
}

int coil__timer_start(coil__worker *w, coil__timer *t, uint64_t ms,
		      coil__timer_cb cb)
{
	if (w->stopping)
		return -ESHUTDOWN;
	if (t->listed || t->cancelling)
		return -EBUSY;
	coil__timerq *q = queue(w);
	if (!q->op.complete) {
		q->op.complete = queue_fired;
		coil__defer_init(&q->retry, queue_retry);
	}
	if (ms > UINT64_MAX / 2000000u)
		ms = UINT64_MAX / 2000000u; /* far enough: no overflow */
	t->w = w;
	t->cb = cb;
	t->cancelling = false;
	t->deadline = now_ns() + ms * 1000000u;
	coil__defer_init(&t->done, timer_done);
	/* Deadlines mostly grow: search from the latest. Equal deadlines
	 * fire in start order. */
	coil__list *pos = q->list.prev;
	while (pos != &q->list &&
	       coil__container_of(pos, coil__timer, link)->deadline >
		       t->deadline)
		pos = pos->prev;
	t->link.prev = pos;
	t->link.next = pos->next;
	pos->next->prev = &t->link;
	pos->next = &t->link;
	t->listed = true;
	int rc = queue_arm(w, q);
	if (rc) {
		unlist(t);
		t->cb = NULL;
		return rc;
	}
	return 0;
}

void coil__timer_cancel(coil__timer *t)
{
	if (!t->listed)
		return;
	unlist(t);
	t->cancelling = true;
	coil__defer_add(t->w, &t->done);
}

uint64_t coil__timer_ring_ops(const coil__worker *w)
{
	return w->timerq.ring_ops;
}
