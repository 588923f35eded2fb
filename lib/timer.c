/* SPDX-License-Identifier: MIT */
/* Timers on the ring itself (IORING_OP_TIMEOUT): no timer thread, no timerfd. */
#include "internal.h"

/*
 * A timer owns two ring ops: the timeout and, when cancelled, a
 * timeout-remove. Its callback runs only once both have completed, so the
 * owner may free the timer from the callback; a remove that races with the
 * expiry can therefore never hit memory that was reused.
 */
static void timer_maybe_done(coil__timer *t)
{
	if (t->armed || t->cancelling)
		return;
	coil__timer_cb cb = t->cb;
	t->cb = NULL;
	if (cb)
		cb(t, t->res);
}

static void timer_complete(coil__op *op, int res, unsigned flags)
{
	coil__timer *t = coil__container_of(op, coil__timer, op);
	t->armed = false;
	/* -ETIME is a normal expiry; -ECANCELED comes from timeout-remove. */
	t->res = res == -ETIME ? 0 : res;
	timer_maybe_done(t);
}

static void cancel_complete(coil__op *op, int res, unsigned flags)
{
	coil__timer *t = coil__container_of(op, coil__timer, cancel_op);
	t->cancelling = false;
	timer_maybe_done(t);
}

int coil__timer_start(coil__worker *w, coil__timer *t, uint64_t ms,
		      coil__timer_cb cb)
{
	if (w->stopping)
		return -ESHUTDOWN;
	t->w = w;
	t->cb = cb;
	t->res = 0;
	t->cancelling = false;
	t->ts.tv_sec = (long long)(ms / 1000);
	t->ts.tv_nsec = (long long)(ms % 1000) * 1000000;
	t->op.complete = timer_complete;
	t->cancel_op.complete = cancel_complete;
	int rc = coil__prep_timeout(w, &t->op, &t->ts);
	t->armed = rc == 0;
	return rc;
}

void coil__timer_cancel(coil__timer *t)
{
	if (!t->armed || t->cancelling)
		return;
	if (coil__prep_timeout_remove(t->w, &t->cancel_op, &t->op) == 0)
		t->cancelling = true;
}
