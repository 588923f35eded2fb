/* SPDX-License-Identifier: MIT */
/* Tests for coil_monitor: readiness callbacks, level triggering, register
 * rules, unregister/free (also from the callback), stop, foreign threads. */
#include "helpers.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

enum action {
	ACT_NONE,
	ACT_DRAIN,      /* read everything available */
	ACT_UNREGISTER, /* unregister from inside the callback */
	ACT_FREE,       /* free from inside the callback */
	ACT_SWITCH,     /* unregister, then register switch_fd */
	ACT_UNREG_OTHER, /* unregister `other` and this one */
};

struct ctx {
	coil_loop_t *loop;
	coil_ip_t *ip;       /* finished with the call count once calls >= target */
	int target;
	int action;
	int drain_at;        /* ACT_NONE: drain on this call (0: never) */
	int switch_fd;
	coil_monitor_t *other;
	_Atomic int calls;
	_Atomic int events;  /* OR of every events value seen (>= 0) */
	_Atomic int last_err;
	_Atomic int last_fd;
	_Atomic int worker;  /* worker of the first call */
	_Atomic int wrong_worker;
	_Atomic int switch_rc;
};

static void ctx_init(struct ctx *c, coil_loop_t *loop, int target, int action)
{
	memset(c, 0, sizeof(*c));
	c->loop = loop;
	c->ip = coil_ip_new(loop);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c->ip);
	c->target = target;
	c->action = action;
	atomic_store(&c->worker, -2);
	atomic_store(&c->switch_rc, 1);
}

static void drain_fd(int fd)
{
	char buf[4096];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

static void mon_cb(coil_monitor_t *m, int fd, int events, void *ud)
{
	struct ctx *c = ud;
	int n = atomic_fetch_add(&c->calls, 1) + 1;
	int wk = coil_loop_current_worker(c->loop);
	int exp = -2;
	if (!atomic_compare_exchange_strong(&c->worker, &exp, wk) && exp != wk)
		atomic_fetch_add(&c->wrong_worker, 1);
	if (wk < 0)
		atomic_fetch_add(&c->wrong_worker, 1);
	atomic_store(&c->last_fd, fd);
	if (events < 0)
		atomic_store(&c->last_err, events);
	else
		atomic_fetch_or(&c->events, events);
	switch (c->action) {
	case ACT_DRAIN:
		drain_fd(fd);
		break;
	case ACT_UNREGISTER:
		coil_monitor_unregister(m);
		break;
	case ACT_FREE:
		coil_monitor_free(m);
		break;
	case ACT_SWITCH:
		if (n == 1) {
			coil_monitor_unregister(m);
			atomic_store(&c->switch_rc,
				     coil_monitor_register(m, c->switch_fd,
							   COIL_IO_READ));
		} else {
			drain_fd(fd);
		}
		break;
	case ACT_UNREG_OTHER:
		coil_monitor_unregister(c->other);
		coil_monitor_unregister(m);
		break;
	default:
		if (c->drain_at && n == c->drain_at)
			drain_fd(fd);
		break;
	}
	if (n >= c->target)
		coil_ip_finish_int(c->ip, n); /* -EALREADY after the first */
}

static void rt_task(void *arg)
{
	coil_ip_finish_int(arg, 0);
}

/* One round trip through worker `wk`: everything that worker queued before
 * has run by the time this returns. Several in a row span several loop turns,
 * which is how the tests check that no further callback comes, without
 * sleeping. */
static void round_trips(coil_loop_t *loop, int wk, int n)
{
	for (int i = 0; i < n; i++) {
		coil_ip_t *ip = coil_ip_new(loop);
		CU_ASSERT_PTR_NOT_NULL_FATAL(ip);
		T_ASSERT_OK(coil_loop_post(loop, wk, rt_task, ip));
		T_ASSERT_OK(t_wait(ip));
		coil_ip_unref(ip);
	}
}

/* Points the callback at a fresh handle and new settings. Round trips through
 * every worker before (a callback still running has returned) and after (the
 * new values are published to the workers before a callback reads them). */
static void ctx_next(struct ctx *c, int target, int action)
{
	unsigned n = coil_loop_workers(c->loop);
	for (unsigned w = 0; w < n; w++)
		round_trips(c->loop, (int)w, 1);
	coil_ip_unref(c->ip);
	c->ip = coil_ip_new(c->loop);
	CU_ASSERT_PTR_NOT_NULL_FATAL(c->ip);
	c->target = target;
	c->action = action;
	for (unsigned w = 0; w < n; w++)
		round_trips(c->loop, (int)w, 1);
}

static void make_pipe(int p[2])
{
	T_ASSERT_OK(pipe2(p, O_NONBLOCK | O_CLOEXEC));
}

/* What most tests share: a loop, a callback context, two pipes (p is the
 * watched one, q a second) and a monitor on the context, not registered. */
struct fx {
	coil_loop_t *loop;
	struct ctx c;
	int p[2], q[2];
	coil_monitor_t *m;
};

static void fx_open(struct fx *f, unsigned workers, int target, int action)
{
	f->loop = t_loop(workers);
	ctx_init(&f->c, f->loop, target, action);
	make_pipe(f->p);
	make_pipe(f->q);
	f->m = NULL;
	T_ASSERT_OK(coil_monitor_new(f->loop, mon_cb, &f->c, &f->m));
}

/* Closes one of the fixture's descriptors early (fx_close skips it). */
static void fx_closefd(int *fd)
{
	close(*fd);
	*fd = -1;
}

/* Frees the monitor (unless the test did and set it NULL), then the loop,
 * the handle and what is left of the pipes. */
static void fx_close(struct fx *f)
{
	if (f->m)
		coil_monitor_free(f->m);
	T_ASSERT_OK(coil_loop_free(f->loop));
	coil_ip_unref(f->c.ip);
	for (int i = 0; i < 2; i++) {
		if (f->p[i] >= 0)
			close(f->p[i]);
		if (f->q[i] >= 0)
			close(f->q[i]);
	}
}

static void test_readable_pipe(void)
{
	struct fx f;
	fx_open(&f, 1, 1, ACT_DRAIN);
	CU_ASSERT_EQUAL(coil_monitor_active(f.m), 0);
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	CU_ASSERT_EQUAL(coil_monitor_active(f.m), 1);
	T_ASSERT_OK(t_write_all(f.p[1], "x", 1));
	T_ASSERT_OK(t_wait(f.c.ip));
	CU_ASSERT_EQUAL(atomic_load(&f.c.events), COIL_IO_READ);
	CU_ASSERT_EQUAL(atomic_load(&f.c.last_fd), f.p[0]);
	CU_ASSERT_EQUAL(atomic_load(&f.c.worker), 0);
	CU_ASSERT_EQUAL(atomic_load(&f.c.wrong_worker), 0);
	CU_ASSERT_EQUAL(atomic_load(&f.c.last_err), 0);
	fx_close(&f);
}

static void test_writable_socket(void)
{
	coil_loop_t *loop = t_loop(1);
	struct ctx c;
	ctx_init(&c, loop, 1, ACT_UNREGISTER);
	int sv[2];
	T_ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	coil_monitor_t *m = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &c, &m));
	T_ASSERT_OK(coil_monitor_register(m, sv[0], COIL_IO_WRITE));
	T_ASSERT_OK(t_wait(c.ip));
	CU_ASSERT_EQUAL(atomic_load(&c.events), COIL_IO_WRITE);
	CU_ASSERT_EQUAL(atomic_load(&c.last_fd), sv[0]);
	/* Unregistered from the callback: nothing more, though still writable. */
	round_trips(loop, 0, 3);
	CU_ASSERT_EQUAL(atomic_load(&c.calls), 1);
	CU_ASSERT_EQUAL(coil_monitor_active(m), 0);

	/* READ|WRITE with data waiting reports both. */
	struct ctx c2;
	ctx_init(&c2, loop, 1, ACT_UNREGISTER);
	coil_monitor_t *m2 = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &c2, &m2));
	T_ASSERT_OK(t_write_all(sv[1], "y", 1));
	T_ASSERT_OK(coil_monitor_register(m2, sv[0],
					  COIL_IO_READ | COIL_IO_WRITE));
	T_ASSERT_OK(t_wait(c2.ip));
	CU_ASSERT_EQUAL(atomic_load(&c2.events), COIL_IO_READ | COIL_IO_WRITE);
	coil_monitor_free(m);
	coil_monitor_free(m2);
	T_ASSERT_OK(coil_loop_free(loop));
	coil_ip_unref(c.ip);
	coil_ip_unref(c2.ip);
	close(sv[0]);
	close(sv[1]);
}

/* One byte, never read for four calls: the callback keeps coming (level
 * triggered). Drained on call 5: it stops. */
static void test_level_triggered(void)
{
	struct fx f;
	fx_open(&f, 1, 5, ACT_NONE);
	f.c.drain_at = 5;
	T_ASSERT_OK(t_write_all(f.p[1], "z", 1));
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	T_ASSERT_OK(t_wait(f.c.ip));
	round_trips(f.loop, 0, 5);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), 5);
	CU_ASSERT_EQUAL(coil_monitor_active(f.m), 1);
	/* New data: fires again (edge after a quiet period). */
	ctx_next(&f.c, 6, ACT_DRAIN);
	T_ASSERT_OK(t_write_all(f.p[1], "w", 1));
	T_ASSERT_OK(t_wait(f.c.ip));
	round_trips(f.loop, 0, 3);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), 6);
	CU_ASSERT_EQUAL(atomic_load(&f.c.wrong_worker), 0);
	fx_close(&f);
}

static void noop_cb(coil_monitor_t *m, int fd, int events, void *ud)
{
}

static void test_register_rules(void)
{
	coil_loop_t *loop = t_loop(1);
	int p[2], q[2];
	make_pipe(p);
	make_pipe(q);
	coil_monitor_t *m = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, noop_cb, NULL, &m));
	T_ASSERT_OK(coil_monitor_register(m, p[0], COIL_IO_READ));
	CU_ASSERT_EQUAL(coil_monitor_register(m, p[0], COIL_IO_READ), 0);
	CU_ASSERT_EQUAL(coil_monitor_register(m, q[0], COIL_IO_READ), -EBUSY);
	CU_ASSERT_EQUAL(coil_monitor_register(m, p[0], COIL_IO_WRITE), -EBUSY);
	CU_ASSERT_EQUAL(coil_monitor_register(m, p[0],
					      COIL_IO_READ | COIL_IO_WRITE),
			-EBUSY);
	CU_ASSERT_EQUAL(coil_monitor_active(m), 1);
	CU_ASSERT_EQUAL(coil_monitor_unregister(m), 0);
	CU_ASSERT_EQUAL(coil_monitor_unregister(m), 0); /* again: no-op */
	CU_ASSERT_EQUAL(coil_monitor_active(m), 0);
	CU_ASSERT_EQUAL(coil_monitor_register(m, q[0], COIL_IO_READ), 0);
	CU_ASSERT_EQUAL(coil_monitor_register(m, q[0], COIL_IO_READ), 0);
	CU_ASSERT_EQUAL(coil_monitor_register(m, p[0], COIL_IO_READ), -EBUSY);
	coil_monitor_free(m);
	T_ASSERT_OK(coil_loop_free(loop));
	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
}

static void test_bad_args(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_monitor_t *m = (coil_monitor_t *)1;
	CU_ASSERT_EQUAL(coil_monitor_new(NULL, noop_cb, NULL, &m), -EINVAL);
	CU_ASSERT_PTR_NULL(m);
	CU_ASSERT_EQUAL(coil_monitor_new(loop, NULL, NULL, &m), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_new(loop, noop_cb, NULL, NULL), -EINVAL);
	T_ASSERT_OK(coil_monitor_new(loop, noop_cb, NULL, &m));
	CU_ASSERT_EQUAL(coil_monitor_register(m, -1, COIL_IO_READ), -EBADF);
	CU_ASSERT_EQUAL(coil_monitor_register(m, 0, 0), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_register(m, 0, 4), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_register(m, 0, -1), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_register(m, 0, COIL_IO_READ | 8), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_active(m), 0);
	CU_ASSERT_EQUAL(coil_monitor_register(NULL, 0, COIL_IO_READ), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_unregister(NULL), -EINVAL);
	CU_ASSERT_EQUAL(coil_monitor_active(NULL), 0);
	coil_monitor_free(NULL);
	coil_monitor_free(m);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* After unregister (from this thread, then confirmed by a round trip through
 * the home worker), new data brings no callback. */
static void test_unregister_stops(void)
{
	struct fx f;
	fx_open(&f, 1, 1, ACT_DRAIN);
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	T_ASSERT_OK(t_write_all(f.p[1], "a", 1));
	T_ASSERT_OK(t_wait(f.c.ip));
	T_ASSERT_OK(coil_monitor_unregister(f.m));
	CU_ASSERT_EQUAL(coil_monitor_active(f.m), 0);
	round_trips(f.loop, 0, 2);
	int before = atomic_load(&f.c.calls);
	T_ASSERT_OK(t_write_all(f.p[1], "bcd", 3));
	round_trips(f.loop, 0, 5);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), before);
	/* The data is still there: nobody read it. */
	char buf[8];
	CU_ASSERT_EQUAL(read(f.p[0], buf, sizeof(buf)), 3);
	fx_close(&f);
}

/* A byte written to pipe p brings exactly the next call, on p's read end. */
static void one_more_call(struct fx *f, const int p[2], const char *byte)
{
	ctx_next(&f->c, atomic_load(&f->c.calls) + 1, ACT_DRAIN);
	T_ASSERT_OK(t_write_all(p[1], byte, 1));
	T_ASSERT_OK(t_wait(f->c.ip));
	CU_ASSERT_EQUAL(atomic_load(&f->c.last_fd), p[0]);
}

/* Re-register right after unregister, before the old poll's cancellation
 * can have completed, on the same fd and then on another one. */
static void test_reregister(void)
{
	struct fx f;
	fx_open(&f, 1, 1, ACT_DRAIN);
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	T_ASSERT_OK(t_write_all(f.p[1], "1", 1));
	T_ASSERT_OK(t_wait(f.c.ip));

	for (int i = 0; i < 20; i++) {
		T_ASSERT_OK(coil_monitor_unregister(f.m));
		T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	}
	one_more_call(&f, f.p, "2");

	T_ASSERT_OK(coil_monitor_unregister(f.m));
	T_ASSERT_OK(coil_monitor_register(f.m, f.q[0], COIL_IO_READ));
	one_more_call(&f, f.q, "3");
	/* The old fd is no longer watched. */
	int before = atomic_load(&f.c.calls);
	T_ASSERT_OK(t_write_all(f.p[1], "4", 1));
	round_trips(f.loop, 0, 4);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), before);
	fx_close(&f);
}

struct pair_args {
	coil_monitor_t *a, *b;
	int fa, fb;
	coil_ip_t *done;
};

static void register_pair(void *arg)
{
	struct pair_args *pa = arg;
	int rc = coil_monitor_register(pa->a, pa->fa, COIL_IO_READ);
	if (!rc)
		rc = coil_monitor_register(pa->b, pa->fb, COIL_IO_READ);
	coil_ip_finish_int(pa->done, rc);
}

/* Both fds are ready when both polls are armed in one submission, so both
 * completions arrive in one batch. Each callback unregisters the other
 * monitor: whichever runs first, the other's completion, already reaped,
 * must not reach its callback. */
static void test_unregister_other_in_callback(void)
{
	coil_loop_t *loop = t_loop(1);
	struct ctx ca, cb;
	ctx_init(&ca, loop, 1, ACT_UNREG_OTHER);
	ctx_init(&cb, loop, 1, ACT_UNREG_OTHER);
	int p[2], q[2];
	make_pipe(p);
	make_pipe(q);
	T_ASSERT_OK(t_write_all(p[1], "a", 1));
	T_ASSERT_OK(t_write_all(q[1], "b", 1));
	coil_monitor_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &ca, &a));
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &cb, &b));
	ca.other = b;
	cb.other = a;
	coil_ip_t *both[2] = {ca.ip, cb.ip};
	coil_ip_t *first = coil_ip_any(loop, both, 2);
	CU_ASSERT_PTR_NOT_NULL_FATAL(first);
	struct pair_args pa = {.a = a, .b = b, .fa = p[0], .fb = q[0],
			       .done = coil_ip_new(loop)};
	T_ASSERT_OK(coil_loop_post(loop, 0, register_pair, &pa));
	T_ASSERT_OK(t_wait(pa.done));
	CU_ASSERT_EQUAL(coil_ip_int(pa.done), 0);
	T_ASSERT_OK(t_wait(first));
	round_trips(loop, 0, 3);
	CU_ASSERT_EQUAL(atomic_load(&ca.calls) + atomic_load(&cb.calls), 1);
	CU_ASSERT_EQUAL(coil_monitor_active(a), 0);
	CU_ASSERT_EQUAL(coil_monitor_active(b), 0);
	/* The loser never settles by itself; settle it so coil_ip_any lets go
	 * of its members. */
	coil_ip_finish_int(ca.ip, 0);
	coil_ip_finish_int(cb.ip, 0);
	coil_ip_unref(first);
	coil_monitor_free(a);
	coil_monitor_free(b);
	T_ASSERT_OK(coil_loop_free(loop));
	coil_ip_unref(pa.done);
	coil_ip_unref(ca.ip);
	coil_ip_unref(cb.ip);
	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
}

/* Unregister and re-register to another fd from inside the callback. */
static void test_switch_in_callback(void)
{
	struct fx f;
	fx_open(&f, 1, 2, ACT_SWITCH);
	f.c.switch_fd = f.q[0];
	T_ASSERT_OK(t_write_all(f.p[1], "p", 1));
	T_ASSERT_OK(t_write_all(f.q[1], "q", 1));
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	T_ASSERT_OK(t_wait(f.c.ip));
	CU_ASSERT_EQUAL(atomic_load(&f.c.switch_rc), 0);
	CU_ASSERT_EQUAL(atomic_load(&f.c.last_fd), f.q[0]);
	round_trips(f.loop, 0, 3);
	/* p still holds its unread byte, but p is not watched any more. */
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), 2);
	fx_close(&f);
}

/* Free from inside the callback with data left unread (the level re-check
 * would fire again): exactly one call, and ASan sees no use after free. */
static void test_free_in_callback(void)
{
	struct fx f;
	fx_open(&f, 1, 1, ACT_FREE);
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	T_ASSERT_OK(t_write_all(f.p[1], "f", 1));
	T_ASSERT_OK(t_wait(f.c.ip));
	f.m = NULL; /* freed by the callback */
	T_ASSERT_OK(t_write_all(f.p[1], "g", 1));
	round_trips(f.loop, 0, 5);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), 1);
	fx_close(&f);
}

/* Free while the poll is in flight, from this thread, then at once free the
 * loop; and a second monitor freed with no round trip at all. */
static void test_free_inflight(void)
{
	struct fx f;
	fx_open(&f, 1, 1, ACT_DRAIN);
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	round_trips(f.loop, 0, 2); /* the poll is armed now */
	coil_monitor_free(f.m);
	T_ASSERT_OK(t_write_all(f.p[1], "x", 1));
	round_trips(f.loop, 0, 3);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), 0);

	for (int i = 0; i < 50; i++) {
		T_ASSERT_OK(coil_monitor_new(f.loop, mon_cb, &f.c, &f.m));
		T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
		coil_monitor_free(f.m);
	}
	/* The last one is freed by fx_close, right before the loop. */
	T_ASSERT_OK(coil_monitor_new(f.loop, mon_cb, &f.c, &f.m));
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	fx_close(&f);
}

/* A hung-up pipe reads as READ (EOF); an fd that is not open fails the poll
 * with -EBADF and leaves the monitor unregistered. */
static void test_hup_and_bad_fd(void)
{
	struct fx f;
	fx_open(&f, 1, 1, ACT_UNREGISTER);
	coil_loop_t *loop = f.loop;
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	round_trips(loop, 0, 1);
	fx_closefd(&f.p[1]);
	T_ASSERT_OK(t_wait(f.c.ip));
	CU_ASSERT_EQUAL(atomic_load(&f.c.events), COIL_IO_READ);
	CU_ASSERT_EQUAL(atomic_load(&f.c.last_err), 0);
	round_trips(loop, 0, 3);
	CU_ASSERT_EQUAL(atomic_load(&f.c.calls), 1);

	/* A write-only monitor on a pipe whose reader has gone hears it. */
	struct ctx cw;
	ctx_init(&cw, loop, 1, ACT_UNREGISTER);
	coil_monitor_t *mw = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &cw, &mw));
	fx_closefd(&f.q[0]);
	T_ASSERT_OK(coil_monitor_register(mw, f.q[1], COIL_IO_WRITE));
	T_ASSERT_OK(t_wait(cw.ip));
	CU_ASSERT_EQUAL(atomic_load(&cw.events), COIL_IO_WRITE);
	fx_closefd(&f.q[1]);

	/* A closed descriptor number. */
	struct ctx cb;
	ctx_init(&cb, loop, 1, ACT_NONE);
	int bad = dup(f.p[0]);
	CU_ASSERT_FATAL(bad >= 0);
	close(bad);
	coil_monitor_t *mb = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &cb, &mb));
	T_ASSERT_OK(coil_monitor_register(mb, bad, COIL_IO_READ));
	T_ASSERT_OK(t_wait(cb.ip));
	CU_ASSERT_EQUAL(atomic_load(&cb.last_err), -EBADF);
	CU_ASSERT_EQUAL(atomic_load(&cb.last_fd), bad);
	CU_ASSERT_EQUAL(coil_monitor_active(mb), 0);
	round_trips(loop, 0, 2);
	CU_ASSERT_EQUAL(atomic_load(&cb.calls), 1);
	/* The error callback may free its monitor (no poll left in flight). */
	struct ctx cf;
	ctx_init(&cf, loop, 1, ACT_FREE);
	coil_monitor_t *mf = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &cf, &mf));
	T_ASSERT_OK(coil_monitor_register(mf, bad, COIL_IO_WRITE));
	T_ASSERT_OK(t_wait(cf.ip));
	CU_ASSERT_EQUAL(atomic_load(&cf.last_err), -EBADF);
	round_trips(loop, 0, 2);
	CU_ASSERT_EQUAL(atomic_load(&cf.calls), 1);
	coil_ip_unref(cf.ip);
	/* Usable again afterwards. */
	T_ASSERT_OK(coil_monitor_register(mb, f.p[0], COIL_IO_READ));
	coil_monitor_free(mb);
	coil_monitor_free(mw);
	fx_close(&f);
	coil_ip_unref(cw.ip);
	coil_ip_unref(cb.ip);
}

/* The loop is freed with monitors still registered and never freed: one
 * firing level-triggered (data unread), one idle, one never registered.
 * ASan's leak check and the test timeout catch leaks and hangs. */
static void test_loop_free_with_monitors(void)
{
	coil_loop_t *loop = t_loop(2);
	struct ctx c;
	ctx_init(&c, loop, 3, ACT_NONE);
	int p[2], q[2];
	make_pipe(p);
	make_pipe(q);
	coil_monitor_t *m1 = NULL, *m2 = NULL, *m3 = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &c, &m1));
	T_ASSERT_OK(coil_monitor_new(loop, noop_cb, NULL, &m2));
	T_ASSERT_OK(coil_monitor_new(loop, noop_cb, NULL, &m3));
	T_ASSERT_OK(t_write_all(p[1], "l", 1));
	T_ASSERT_OK(coil_monitor_register(m1, p[0], COIL_IO_READ));
	T_ASSERT_OK(coil_monitor_register(m2, q[0], COIL_IO_READ));
	T_ASSERT_OK(t_wait(c.ip));
	T_ASSERT_OK(coil_loop_free(loop));
	CU_ASSERT(atomic_load(&c.calls) >= 3);

	/* And right after creation, before any worker turn. */
	loop = t_loop(2);
	for (int i = 0; i < 8; i++) {
		T_ASSERT_OK(coil_monitor_new(loop, noop_cb, NULL, &m1));
		T_ASSERT_OK(coil_monitor_register(m1, q[0], COIL_IO_READ));
	}
	T_ASSERT_OK(coil_loop_free(loop));
	coil_ip_unref(c.ip);
	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
}

struct reg_args {
	coil_monitor_t *m;
	int fd;
	int rc;
};

static void *register_thread(void *arg)
{
	struct reg_args *a = arg;
	a->rc = coil_monitor_register(a->m, a->fd, COIL_IO_READ);
	return NULL;
}

struct new_args {
	coil_loop_t *loop;
	struct ctx *c;
	coil_monitor_t *m;
	coil_ip_t *done;
};

static void new_on_worker(void *arg)
{
	struct new_args *a = arg;
	int rc = coil_monitor_new(a->loop, mon_cb, a->c, &a->m);
	coil_ip_finish_int(a->done, rc);
}

/* Two workers: a monitor created on worker 1 (so homed there), registered
 * from a thread coil did not create; callbacks run on worker 1 only. Then a
 * monitor created here (round-robin home), registered from another thread. */
static void test_two_workers_foreign(void)
{
	coil_loop_t *loop = t_loop(2);
	struct ctx c;
	ctx_init(&c, loop, 4, ACT_NONE);
	c.drain_at = 4;
	int p[2];
	make_pipe(p);
	struct new_args na = {.loop = loop, .c = &c, .done = coil_ip_new(loop)};
	T_ASSERT_OK(coil_loop_post(loop, 1, new_on_worker, &na));
	T_ASSERT_OK(t_wait(na.done));
	CU_ASSERT_EQUAL(coil_ip_int(na.done), 0);
	coil_ip_unref(na.done);

	T_ASSERT_OK(t_write_all(p[1], "t", 1));
	struct reg_args ra = {.m = na.m, .fd = p[0]};
	pthread_t th;
	T_ASSERT_OK(pthread_create(&th, NULL, register_thread, &ra));
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(ra.rc, 0);
	T_ASSERT_OK(t_wait(c.ip));
	CU_ASSERT_EQUAL(atomic_load(&c.worker), 1);
	CU_ASSERT_EQUAL(atomic_load(&c.wrong_worker), 0);
	/* The same registration from yet another thread: a no-op. */
	T_ASSERT_OK(pthread_create(&th, NULL, register_thread, &ra));
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(ra.rc, 0);
	round_trips(loop, 1, 3);
	CU_ASSERT_EQUAL(atomic_load(&c.calls), 4);
	coil_monitor_free(na.m);

	struct ctx c2;
	ctx_init(&c2, loop, 1, ACT_DRAIN);
	coil_monitor_t *m2 = NULL;
	T_ASSERT_OK(coil_monitor_new(loop, mon_cb, &c2, &m2));
	struct reg_args rb = {.m = m2, .fd = p[0]};
	T_ASSERT_OK(pthread_create(&th, NULL, register_thread, &rb));
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(rb.rc, 0);
	T_ASSERT_OK(t_write_all(p[1], "u", 1));
	T_ASSERT_OK(t_wait(c2.ip));
	CU_ASSERT(atomic_load(&c2.worker) >= 0);
	CU_ASSERT_EQUAL(atomic_load(&c2.wrong_worker), 0);
	coil_monitor_free(m2);
	T_ASSERT_OK(coil_loop_free(loop));
	coil_ip_unref(c.ip);
	coil_ip_unref(c2.ip);
	close(p[0]);
	close(p[1]);
}

/* Racing threads toggle one monitor while data flows; callbacks may come
 * and go, but the results stay consistent and nothing leaks or races. */
struct toggle_args {
	coil_monitor_t *m;
	int fd;
	_Atomic int ok;
};

static void *toggle_thread(void *arg)
{
	struct toggle_args *a = arg;
	for (int i = 0; i < 2000; i++) {
		int rc = coil_monitor_register(a->m, a->fd, COIL_IO_READ);
		if (rc == 0 || rc == -EBUSY)
			atomic_fetch_add(&a->ok, 1);
		coil_monitor_unregister(a->m);
	}
	return NULL;
}

static void test_toggle_race(void)
{
	struct fx f;
	fx_open(&f, 2, 1000000, ACT_NONE);
	T_ASSERT_OK(t_write_all(f.p[1], "r", 1)); /* stays unread: level fires */
	struct toggle_args a = {.m = f.m, .fd = f.p[0]};
	pthread_t th[3];
	for (int i = 0; i < 3; i++)
		T_ASSERT_OK(pthread_create(&th[i], NULL, toggle_thread, &a));
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	CU_ASSERT_EQUAL(atomic_load(&a.ok), 3 * 2000);
	CU_ASSERT_EQUAL(atomic_load(&f.c.wrong_worker), 0);
	CU_ASSERT_EQUAL(coil_monitor_active(f.m), 0);
	/* Still works after the storm. */
	ctx_next(&f.c, atomic_load(&f.c.calls) + 1, ACT_UNREGISTER);
	T_ASSERT_OK(coil_monitor_register(f.m, f.p[0], COIL_IO_READ));
	T_ASSERT_OK(t_wait(f.c.ip));
	fx_close(&f);
}

static const coil_test_t tests[] = {
	{"readable_pipe", test_readable_pipe},
	{"writable_socket", test_writable_socket},
	{"level_triggered", test_level_triggered},
	{"register_rules", test_register_rules},
	{"bad_args", test_bad_args},
	{"unregister_stops", test_unregister_stops},
	{"unregister_other_in_callback", test_unregister_other_in_callback},
	{"reregister", test_reregister},
	{"switch_in_callback", test_switch_in_callback},
	{"free_in_callback", test_free_in_callback},
	{"free_inflight", test_free_inflight},
	{"hup_and_bad_fd", test_hup_and_bad_fd},
	{"loop_free_with_monitors", test_loop_free_with_monitors},
	{"two_workers_foreign", test_two_workers_foreign},
	{"toggle_race", test_toggle_race},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("monitor", tests, argc, argv);
}
