/* SPDX-License-Identifier: MIT */
/* coil_loop: worker threads, one io_uring ring each; the only file that
 * talks to the ring (SQE preparation, submission, completion dispatch). */
#include "internal.h"

#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef IORING_OP_READ_MULTISHOT
#define IORING_OP_READ_MULTISHOT 49
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15) /* Linux 6.12 */
#endif

__thread coil__worker *coil__tls_worker;

/* Continuations run per loop turn before the worker looks at the ring again:
 * a long synchronous chain cannot starve I/O (Seastar's lesson). */
#define READY_BUDGET 256
/* Inbox tasks run per loop turn, for the same reason: a task that re-posts
 * itself, or a foreign thread posting faster than the worker runs, cannot
 * keep the worker from its completions. */
#define INBOX_BUDGET 256
/* CQEs copied out of the ring per batch. */
#define CQE_BATCH 64
/* Turns with sends that wait plainly, at most, after a batched wait whose
 * min-wait ran out (see idle_enter). */
#define MIN_WAIT_BACKOFF 1024

/* ---- kernel feature probe, once per process ----
 *
 * coil_loop_new() refuses a kernel that lacks what coil has no other path
 * for, with -ENOSYS and a message naming it (coil_loop_last_error()):
 * better than a channel that fails its first read with -EINVAL. Opcodes come
 * from IORING_REGISTER_PROBE; op flags the probe cannot show (multishot
 * recv and accept) and provided buffer rings are tried for real on a small
 * ring over a Unix socketpair and an autobound Unix listener.
 * Optional features (multishot read, a registered ring fd) fall back. */

/* The probe's answer is kept once it is definitive (features found, or
 * io_uring refused for good: -ENOSYS, -EPERM); a transient failure
 * (-EMFILE, -ENOMEM...) fails that coil_loop_new and is probed again next
 * time. probe_lock orders the writes before probe_done. */
static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic bool probe_done;
static unsigned char probe_ops[256];
static unsigned probe_have;     /* COIL__FEAT_* found */
static int probe_rc;            /* io_uring refused for good, or 0 */
unsigned coil__probe_hide;      /* tests: COIL__FEAT_* to treat as absent */

static const struct {
	int op;
	const char *name;
} required_ops[] = {
	{IORING_OP_READ, "READ"},         {IORING_OP_WRITEV, "WRITEV"},
	{IORING_OP_SEND, "SEND"},         {IORING_OP_RECV, "RECV"},
	{IORING_OP_SENDMSG, "SENDMSG"},   {IORING_OP_RECVMSG, "RECVMSG"},
	{IORING_OP_ACCEPT, "ACCEPT"},     {IORING_OP_CONNECT, "CONNECT"},
	{IORING_OP_POLL_ADD, "POLL_ADD"}, {IORING_OP_TIMEOUT, "TIMEOUT"},
	{IORING_OP_TIMEOUT_REMOVE, "TIMEOUT_REMOVE"},
	{IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
	{IORING_OP_CLOSE, "CLOSE"},       {IORING_OP_SHUTDOWN, "SHUTDOWN"},
};

/* Waits for the CQE of the op tagged `tag`, dropping others (bounded: the
 * probe must not hang a loaded machine; a timeout counts as "not proven
 * missing"). Returns 1 and fills res/flags, 0 on timeout, or <0. */
static int probe_wait(struct io_uring *r, uint64_t tag, int *res,
		      unsigned *flags)
{
	for (;;) {
		struct io_uring_cqe *cqe;
		struct __kernel_timespec ts = {.tv_sec = 2};
		int rc = io_uring_wait_cqe_timeout(r, &cqe, &ts);
		if (rc == -ETIME)
			return 0;
		if (rc < 0)
			return rc;
		bool mine = cqe->user_data == tag;
		*res = cqe->res;
		*flags = cqe->flags;
		io_uring_cqe_seen(r, cqe);
		if (mine)
			return 1;
	}
}

/* Arms a multishot recv of at most len bytes per CQE (0: no cap) from buffer
 * group 0 on a socketpair holding the bytes of `data`, and waits for its
 * first CQE (probe_wait's result; -errno if the pair cannot be made). The
 * op may stay armed: ring exit cancels it. */
static int probe_recv(struct io_uring *r, const char *data, unsigned len,
		      uint64_t tag, int *res, unsigned *fl)
{
	int sv[2], w = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	size_t n = strlen(data);
	struct io_uring_sqe *sqe = io_uring_get_sqe(r);
	if (write(sv[1], data, n) == (ssize_t)n && sqe) {
		io_uring_prep_recv_multishot(sqe, sv[0], NULL, len, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = 0;
		sqe->user_data = tag;
		io_uring_submit(r);
		w = probe_wait(r, tag, res, fl);
	}
	close(sv[0]);
	close(sv[1]);
	return w;
}

/*
 * Runs the op-flag features for real. Only a definitive answer from the
 * kernel (-EINVAL for the registration, a failed or single-shot CQE) marks
 * a feature missing: when the probe itself cannot run (no memory, no
 * descriptors, a timeout on a loaded machine), the feature counts as
 * present and a real use would report the error. Returns 0, or a transient
 * error (-ENOMEM, -EMFILE...) when a test could not be run: then the probe
 * is not kept and runs again for the next loop. Exits the ring.
 */
static int probe_live(struct io_uring *r)
{
	int transient = 0;
	probe_have |= COIL__FEAT_PBUF_RING | COIL__FEAT_RECV_MSHOT |
		      COIL__FEAT_ACCEPT_MSHOT;
	/* A provided buffer ring of two small buffers. */
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	void *mem = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE,
			 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED) {
		io_uring_queue_exit(r);
		return -ENOMEM;
	}
	struct io_uring_buf_ring *br = mem;
	io_uring_buf_ring_init(br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)br, .ring_entries = 2, .bgid = 0};
	int brc = io_uring_register_buf_ring(r, &reg, 0);
	if (brc == -EINVAL || brc == -ENOSYS || brc == -EOPNOTSUPP)
		probe_have &= ~(COIL__FEAT_PBUF_RING | COIL__FEAT_RECV_MSHOT);
	if (brc == 0) {
		for (int i = 0; i < 2; i++)
			io_uring_buf_ring_add(br, (char *)mem + pg + i * 64, 64,
					      (unsigned short)i,
					      io_uring_buf_ring_mask(2), i);
		io_uring_buf_ring_advance(br, 2);
		/* Multishot recv (6.0): a byte waits, so the CQE is at once. */
		int res = 0;
		unsigned fl = 0;
		int w = probe_recv(r, "x", 0, 1, &res, &fl);
		if (w < 0)
			transient = w;
		if (w > 0 && (res != 1 || !(fl & IORING_CQE_F_MORE)))
			probe_have &= ~COIL__FEAT_RECV_MSHOT;
		/* The per-receive cap of multishot recv (sqe->len, Linux
		 * 6.16; before, -EINVAL): two bytes wait, the first CQE may
		 * carry one. Takes the ring's second buffer. */
		w = probe_recv(r, "xy", 1, 3, &res, &fl);
		if (w < 0)
			transient = w;
		if (w > 0 && res == 1 && (fl & IORING_CQE_F_MORE))
			probe_have |= COIL__FEAT_RECV_CAP;
	}
	/* Multishot accept (5.19), on an autobound abstract Unix listener. */
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0)
		transient = -errno;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	socklen_t slen = sizeof(sa_family_t);
	if (ls >= 0 && bind(ls, (struct sockaddr *)&sun, slen) == 0 &&
	    listen(ls, 4) == 0 &&
	    (slen = sizeof(sun), getsockname(ls, (struct sockaddr *)&sun,
					    &slen)) == 0) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(r);
		if (sqe) {
			io_uring_prep_multishot_accept(sqe, ls, NULL, NULL,
						       SOCK_CLOEXEC);
			sqe->user_data = 2;
			io_uring_submit(r);
			int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			int res = 0;
			unsigned fl = 0;
			if (c >= 0 &&
			    connect(c, (struct sockaddr *)&sun, slen) == 0) {
				int w = probe_wait(r, 2, &res, &fl);
				if (w > 0 && (res < 0 || !(fl & IORING_CQE_F_MORE)))
					probe_have &= ~COIL__FEAT_ACCEPT_MSHOT;
				if (w > 0 && res >= 0)
					close(res);
			}
			if (c >= 0)
				close(c);
		}
	}
	if (ls >= 0)
		close(ls);
	io_uring_queue_exit(r); /* unregisters the buffer ring */
	munmap(mem, 2 * pg);
	if (brc && brc != -EINVAL && brc != -ENOSYS && brc != -EOPNOTSUPP)
		transient = brc;
	return transient;
}

/* Under probe_lock. Returns 0 when the answer is definitive. */
static int probe_kernel(void)
{
	struct io_uring r;
	int rc = io_uring_queue_init(8, &r, 0);
	if (rc == -EINVAL || rc == -ENOSYS || rc == -EPERM) {
		probe_rc = rc == -EINVAL ? -ENOSYS : rc;
		return 0;
	}
	if (rc)
		return rc;
	memset(probe_ops, 0, sizeof(probe_ops));
	probe_have = 0;
	struct io_uring_probe *p = io_uring_get_probe_ring(&r);
	if (p) {
		for (int op = 0; op < 256 && op <= p->last_op; op++)
			probe_ops[op] = io_uring_opcode_supported(p, op) ? 1 : 0;
		io_uring_free_probe(p);
	}
	bool ops = true;
	for (size_t i = 0; i < sizeof(required_ops) / sizeof(required_ops[0]); i++)
		ops = ops && probe_ops[required_ops[i].op];
	if (ops)
		probe_have |= COIL__FEAT_OPS;
	if (probe_ops[IORING_OP_READ_MULTISHOT])
		probe_have |= COIL__FEAT_READ_MSHOT;
	return probe_live(&r); /* exits the ring */
}

/* Probes unless done: 0, or the transient error that stopped it. */
static int probe(void)
{
	if (atomic_load_explicit(&probe_done, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&probe_lock);
	int rc = 0;
	if (!atomic_load_explicit(&probe_done, memory_order_relaxed)) {
		rc = probe_kernel();
		if (!rc)
			atomic_store_explicit(&probe_done, true,
					      memory_order_release);
	}
	pthread_mutex_unlock(&probe_lock);
	return rc;
}

unsigned coil__features(void)
{
	return probe() ? 0 : probe_have & ~coil__probe_hide;
}

bool coil__op_supported(const coil__worker *w, int opcode)
{
	if (probe() || opcode < 0 || opcode >= 256 || !probe_ops[opcode])
		return false;
	/* Optional opcodes a loop may be told (or a test may pretend) not
	 * to use. */
	if (opcode == IORING_OP_READ_MULTISHOT) {
		if (coil__probe_hide & COIL__FEAT_READ_MSHOT)
			return false;
		if (w && (w->loop->opts.flags & COIL_LOOP_NO_READ_MULTISHOT))
			return false;
	}
	return true;
}

/* ---- coil_loop_new's error text ---- */

static __thread char last_error[256];

#define set_error(...) \
	snprintf(last_error, sizeof(last_error), __VA_ARGS__)

const char *coil_loop_last_error(void)
{
	return last_error;
}

/* -ENOSYS with the names of what the kernel lacks, or 0. */
static int check_features(void)
{
	int prc = probe();
	if (prc) {
		set_error("probing io_uring: %s", strerror(-prc));
		return prc;
	}
	unsigned have = coil__features();
	if (probe_rc) {
		set_error("io_uring unavailable: io_uring_setup: %s%s",
			  strerror(-probe_rc),
			  probe_rc == -EPERM ? " (seccomp or kernel.io_uring_disabled?)"
					     : "");
		return probe_rc;
	}
	char miss[200] = "";
	size_t n = 0;
#define MISSING(...) \
	n += (size_t)snprintf(miss + n, n < sizeof(miss) ? sizeof(miss) - n : 0, \
			      __VA_ARGS__)
	if (!(have & COIL__FEAT_OPS)) {
		MISSING("%sopcodes", n ? ", " : "");
		for (size_t i = 0;
		     i < sizeof(required_ops) / sizeof(required_ops[0]); i++)
			if (!probe_ops[required_ops[i].op])
				MISSING(" %s", required_ops[i].name);
	}
	if (!(have & COIL__FEAT_PBUF_RING))
		MISSING("%sprovided buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19)",
			n ? ", " : "");
	if (!(have & COIL__FEAT_RECV_MSHOT))
		MISSING("%smultishot recv (IORING_RECV_MULTISHOT, Linux 6.0)",
			n ? ", " : "");
	if (!(have & COIL__FEAT_ACCEPT_MSHOT))
		MISSING("%smultishot accept (IORING_ACCEPT_MULTISHOT, Linux 5.19)",
			n ? ", " : "");
#undef MISSING
	if (!n)
		return 0;
	set_error("the kernel lacks io_uring features coil needs: %s", miss);
	return -ENOSYS;
}

uint64_t coil__now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- SQE preparation ---- */

/*
 * Returns a free SQE, submitting what is queued when the SQ is full (a full
 * SQ is not an error). NULL only when the ring is gone or the kernel refuses
 * the submit. The op is counted in ops_inflight until its final CQE.
 */
static struct io_uring_sqe *get_sqe(coil__worker *w, coil__op *op)
{
	if (coil__unlikely(w->dead))
		return NULL;
	struct io_uring_sqe *sqe = io_uring_get_sqe(w->ring);
	if (coil__unlikely(!sqe)) {
		/* The SQ is full: submit it. If the kernel refuses (-EBUSY:
		 * completions must be reaped first), fail fast until the next
		 * reap instead of trying again for every op of this turn. */
		if (w->sq_stuck)
			return NULL;
		int rc = io_uring_submit(w->ring);
		w->enters++;
		sqe = io_uring_get_sqe(w->ring);
		if (!sqe) {
			if (rc < 0)
				w->sq_stuck = true;
			return NULL;
		}
	}
	w->ops_inflight++;
	w->sqes++;
	(void)op;
	return sqe;
}

#define PREP_BEGIN(w, op)                                       \
	struct io_uring_sqe *sqe = get_sqe(w, op);              \
	if (coil__unlikely(!sqe))                               \
		return (w)->dead ? -ESHUTDOWN : -EBUSY;
#define PREP_END(op)                      \
	io_uring_sqe_set_data(sqe, op);   \
	return 0;

/* An fd argument below -1 names a fixed file slot (coil__fixed_fd). */
static inline void set_file(struct io_uring_sqe *sqe, int fd)
{
	if (fd < -1) {
		sqe->fd = -2 - fd;
		sqe->flags |= IOSQE_FIXED_FILE;
	}
}

int coil__prep_recv_multishot(coil__worker *w, coil__op *op, int fd)
{
	PREP_BEGIN(w, op);
	/* w->recv_cap (0: none) bounds each receive, and a receive that
	 * reaches it ends the kernel's retry loop for this turn, so one fast
	 * connection cannot take a run of buffers at once. */
	io_uring_prep_recv_multishot(sqe, fd, NULL, w->recv_cap, 0);
	set_file(sqe, fd);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = COIL__BGID;
	PREP_END(op);
}

int coil__prep_recv_select(coil__worker *w, coil__op *op, int fd)
{
	PREP_BEGIN(w, op);
	io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	set_file(sqe, fd);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = COIL__BGID;
	PREP_END(op);
}

int coil__prep_read_multishot(coil__worker *w, coil__op *op, int fd)
{
	PREP_BEGIN(w, op);
	io_uring_prep_rw(IORING_OP_READ_MULTISHOT, sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = COIL__BGID;
	PREP_END(op);
}

int coil__prep_read_select(coil__worker *w, coil__op *op, int fd)
{
	PREP_BEGIN(w, op);
	io_uring_prep_read(sqe, fd, NULL, coil__bufring_size(w), (__u64)-1);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = COIL__BGID;
	PREP_END(op);
}

int coil__prep_read(coil__worker *w, coil__op *op, int fd, void *buf,
		    unsigned len)
{
	PREP_BEGIN(w, op);
	io_uring_prep_read(sqe, fd, buf, len, (__u64)-1);
	PREP_END(op);
}

int coil__prep_send(coil__worker *w, coil__op *op, int fd, const void *buf,
		    size_t len, int flags)
{
	PREP_BEGIN(w, op);
	io_uring_prep_send(sqe, fd, buf, len, flags);
	set_file(sqe, fd);
	PREP_END(op);
}

int coil__prep_sendmsg(coil__worker *w, coil__op *op, int fd,
		       const struct msghdr *msg, int flags)
{
	PREP_BEGIN(w, op);
	io_uring_prep_sendmsg(sqe, fd, msg, (unsigned)flags);
	set_file(sqe, fd);
	PREP_END(op);
}

int coil__prep_recvmsg(coil__worker *w, coil__op *op, int fd,
		       struct msghdr *msg, int flags)
{
	PREP_BEGIN(w, op);
	io_uring_prep_recvmsg(sqe, fd, msg, (unsigned)flags);
	PREP_END(op);
}

int coil__prep_writev(coil__worker *w, coil__op *op, int fd,
		      const struct iovec *iov, unsigned n)
{
	PREP_BEGIN(w, op);
	io_uring_prep_writev(sqe, fd, iov, n, (__u64)-1);
	PREP_END(op);
}

int coil__prep_accept_multishot(coil__worker *w, coil__op *op, int fd)
{
	PREP_BEGIN(w, op);
	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL,
				       SOCK_CLOEXEC | SOCK_NONBLOCK);
	PREP_END(op);
}

int coil__prep_connect(coil__worker *w, coil__op *op, int fd,
		       const struct sockaddr *sa, socklen_t len)
{
	PREP_BEGIN(w, op);
	io_uring_prep_connect(sqe, fd, sa, len);
	PREP_END(op);
}

int coil__prep_poll_multishot(coil__worker *w, coil__op *op, int fd,
			      unsigned poll_mask)
{
	PREP_BEGIN(w, op);
	io_uring_prep_poll_multishot(sqe, fd, poll_mask);
	PREP_END(op);
}

int coil__prep_timeout(coil__worker *w, coil__op *op,
		       struct __kernel_timespec *ts)
{
	PREP_BEGIN(w, op);
	io_uring_prep_timeout(sqe, ts, 0, 0);
	PREP_END(op);
}

int coil__prep_timeout_update(coil__worker *w, coil__op *op,
			      coil__op *target, struct __kernel_timespec *ts)
{
	PREP_BEGIN(w, op);
	io_uring_prep_timeout_update(sqe, ts, (__u64)(uintptr_t)target, 0);
	PREP_END(op);
}

int coil__prep_cancel(coil__worker *w, coil__op *op, coil__op *target)
{
	PREP_BEGIN(w, op);
	io_uring_prep_cancel(sqe, target, IORING_ASYNC_CANCEL_ALL);
	PREP_END(op);
}

int coil__prep_timeout_remove(coil__worker *w, coil__op *op, coil__op *target)
{
	PREP_BEGIN(w, op);
	io_uring_prep_timeout_remove(sqe, (__u64)(uintptr_t)target, 0);
	PREP_END(op);
}

int coil__prep_close(coil__worker *w, coil__op *op, int fd)
{
	PREP_BEGIN(w, op);
	io_uring_prep_close(sqe, fd);
	PREP_END(op);
}

int coil__prep_files_update(coil__worker *w, coil__op *op, int *fd,
			    unsigned slot)
{
	PREP_BEGIN(w, op);
	io_uring_prep_files_update(sqe, fd, 1, (int)slot);
	PREP_END(op);
}

int coil__prep_shutdown(coil__worker *w, coil__op *op, int fd, int how)
{
	PREP_BEGIN(w, op);
	io_uring_prep_shutdown(sqe, fd, how);
	PREP_END(op);
}

/* ---- inbox and deferred work ---- */

void coil__post(coil__worker *w, coil__task *t)
{
	coil__task *old = atomic_load_explicit(&w->inbox, memory_order_relaxed);
	do {
		t->next = old;
	} while (!atomic_compare_exchange_weak_explicit(
		&w->inbox, &old, t, memory_order_release, memory_order_relaxed));
	/* Only the post that finds the inbox empty needs to wake the worker:
	 * later ones are drained by the same wake-up. The worker itself checks
	 * its inbox before sleeping, so it never needs the eventfd. */
	if (!old && !coil__on_worker(w) && !w->dead) {
		uint64_t one = 1;
		ssize_t r = write(w->efd, &one, sizeof(one));
		(void)r;
	}
}

/* Moves what was posted so far behind the tasks taken earlier and not yet
 * run (w->backlog, in post order). */
static void take_inbox(coil__worker *w)
{
	coil__task *t = atomic_exchange_explicit(&w->inbox, NULL,
						 memory_order_acquire);
	if (!t)
		return;
	coil__task *rev = NULL, *last = t;
	while (t) {
		coil__task *next = t->next;
		t->next = rev;
		rev = t;
		t = next;
	}
	if (w->backlog_tail)
		w->backlog_tail->next = rev;
	else
		w->backlog = rev;
	w->backlog_tail = last;
}

/* Runs up to budget tasks (0: all of them) in the order they were posted:
 * first the backlog, then what the inbox holds now. A task posted by a task
 * run here waits for the next call. Returns whether it ran any. */
static bool drain_inbox(coil__worker *w, unsigned budget)
{
	take_inbox(w);
	coil__task *t = w->backlog;
	if (!t)
		return false;
	/* Detach the whole backlog first: a task may post (to the inbox,
	 * never to the backlog), and the remainder is put back. */
	coil__task *stop = NULL;
	if (budget) {
		coil__task *p = t;
		for (unsigned i = 1; i < budget && p->next; i++)
			p = p->next;
		stop = p->next;
		p->next = NULL;
	}
	if (stop) {
		w->backlog = stop;
	} else {
		w->backlog = NULL;
		w->backlog_tail = NULL;
	}
	while (t) {
		coil__task *next = t->next;
		t->run(t);
		t = next;
	}
	return true;
}

static bool inbox_pending(coil__worker *w)
{
	return w->backlog || atomic_load(&w->inbox);
}

void coil__defer_add(coil__worker *w, coil__defer *d)
{
	if (d->queued)
		return;
	d->queued = true;
	coil__list_add_tail(&w->defers, &d->link);
}

void coil__defer_cancel(coil__defer *d)
{
	if (!d->queued)
		return;
	d->queued = false;
	coil__list_del(&d->link);
}

/* Runs the deferred work queued so far. Work it queues again (a re-arm
 * that found no free SQE because the CQ must be reaped first) waits for the
 * next turn, so this can never spin. */
static void run_defers(coil__worker *w)
{
	coil__list batch;
	coil__list_init(&batch);
	if (coil__list_empty(&w->defers))
		return;
	batch.next = w->defers.next;
	batch.prev = w->defers.prev;
	batch.next->prev = &batch;
	batch.prev->next = &batch;
	coil__list_init(&w->defers);
	while (!coil__list_empty(&batch)) {
		coil__defer *d = coil__container_of(batch.next, coil__defer,
						    link);
		coil__list_del(&d->link);
		d->queued = false;
		d->run(d);
	}
}

/* Runs the callbacks due (bounded), through the hook the layer that queued
 * them installed. */
static void run_ready(coil__worker *w)
{
	if (w->ready_head && w->run_ready)
		w->run_ready(w, READY_BUDGET);
}

/* ---- per-loop extensions ---- */

static coil__loop_ext *exts; /* registered before main, read-only after */

void coil__loop_ext_register(coil__loop_ext *e)
{
	e->next = exts;
	exts = e;
}

enum ext_hook { EXT_INIT, EXT_STARTED, EXT_STOP, EXT_FINI };

static void ext_call(coil_loop_t *loop, const coil__loop_ext *e,
		     enum ext_hook h)
{
	void (*fn)(coil_loop_t *) = h == EXT_INIT      ? e->init
				    : h == EXT_STARTED ? e->started
				    : h == EXT_STOP    ? e->stop
						       : e->fini;
	if (fn)
		fn(loop);
}

/* The list is newest first: init and started run in list order, stop and
 * fini mirror them (the last initialised stops first). */
static void ext_run_rev(coil_loop_t *loop, const coil__loop_ext *e,
			enum ext_hook h)
{
	if (!e)
		return;
	ext_run_rev(loop, e->next, h);
	ext_call(loop, e, h);
}

static void ext_run(coil_loop_t *loop, enum ext_hook h)
{
	if (h == EXT_STOP || h == EXT_FINI) {
		ext_run_rev(loop, exts, h);
		return;
	}
	for (const coil__loop_ext *e = exts; e; e = e->next)
		ext_call(loop, e, h);
}

void coil__closer_add(coil__worker *w, coil__closer *c)
{
	coil__list_add_tail(&w->closers, &c->link);
}

void coil__closer_del(coil__closer *c)
{
	coil__list_del(&c->link);
}

/* The held list's entries: the closer's close pointer is reused for fin
 * (the object is closed already). */
void coil__closer_hold(coil__worker *w, coil__closer *c,
		       void (*fin)(coil__closer *c))
{
	coil__list_del(&c->link);
	c->close = fin;
	coil__list_add_tail(&w->held, &c->link);
}

/* The worker ran its last callback: what the stop held goes now (each fin
 * unlists its closer, or the object's free does). */
static void release_held(coil__worker *w)
{
	while (!coil__list_empty(&w->held)) {
		coil__closer *c = coil__container_of(w->held.next, coil__closer,
						     link);
		coil__list_del(&c->link);
		c->close(c);
	}
	/* What those frees settled or deferred still runs (bounded: nothing
	 * can be in flight any more). */
	for (int i = 0; i < 16 && (w->ready_head || !coil__list_empty(&w->defers));
	     i++) {
		run_ready(w);
		run_defers(w);
	}
}

/* ---- the worker ---- */

static void efd_complete(coil__op *op, int res, unsigned flags);

/* Arms the eventfd read. Without an SQE (SQ full and the kernel refused the
 * submit), it retries from deferred work: until it is armed, the worker
 * counts as busy and never sleeps, since it would not hear plain-thread
 * posts. */
_Atomic unsigned coil__efd_arm_fail; /* tests: arms to fail as if no SQE */

static bool efd_arm_should_fail(void)
{
	unsigned v = atomic_load_explicit(&coil__efd_arm_fail,
					  memory_order_relaxed);
	while (v && !atomic_compare_exchange_weak(&coil__efd_arm_fail, &v, v - 1))
		;
	return v != 0;
}

static void arm_efd(coil__worker *w)
{
	w->efd_op.complete = efd_complete;
	if (coil__unlikely(efd_arm_should_fail()))
		coil__defer_add(w, &w->efd_retry);
	else if (coil__prep_read(w, &w->efd_op, w->efd, &w->efd_val,
				 sizeof(w->efd_val)) == 0)
		w->efd_armed = true;
	else if (!w->dead)
		coil__defer_add(w, &w->efd_retry);
}

static void efd_retry_run(coil__defer *d)
{
	arm_efd(coil__container_of(d, coil__worker, efd_retry));
}

/* The eventfd read stays armed even while stopping: objects still closing
 * may be freed from other threads through the inbox, and a stopping worker
 * must wake for them. Ring exit cancels it. */
static void efd_complete(coil__op *op, int res, unsigned flags)
{
	coil__worker *w = coil__container_of(op, coil__worker, efd_op);
	w->efd_armed = false;
	arm_efd(w);
}

/*
 * Creates the ring in the worker thread itself, because SINGLE_ISSUER binds
 * the ring to the task that creates it. Tries the best flags first and falls
 * back when the kernel says -EINVAL: DEFER_TASKRUN (6.1), COOP_TASKRUN (5.19),
 * then plain. CQSIZE keeps multishot bursts from overflowing the CQ.
 * TASKRUN_FLAG (5.19, with either) makes the kernel raise IORING_SQ_TASKRUN
 * when completions wait for the worker to enter it: a busy worker that
 * does not sleep looks at that flag each turn (see worker_run).
 */
static int ring_setup(coil__worker *w)
{
	const coil_loop_opts_t *o = &w->loop->opts;
	unsigned tries[3] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			IORING_SETUP_TASKRUN_FLAG,
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN |
			IORING_SETUP_TASKRUN_FLAG,
		0,
	};
	int rc = -EINVAL;
	w->ring = coil__calloc(1, sizeof(*w->ring));
	if (!w->ring)
		return -ENOMEM;
	/* Valgrind (3.19 and later releases we know of) does not mark a
	 * waiting io_uring_enter as blocking, so a worker asleep in the kernel
	 * keeps valgrind's big lock and every other thread stops. Under
	 * valgrind the worker sleeps in poll(2) on the ring fd instead (see
	 * worker_run), on a plain ring: task work must wake a task sleeping
	 * outside io_uring_enter, which DEFER_TASKRUN and COOP_TASKRUN do not
	 * promise. COIL_POLL_WAIT=1 takes the same path outside valgrind, so
	 * the suite can test it. */
	const char *pw = getenv("COIL_POLL_WAIT");
	w->poll_wait = coil__on_valgrind() || (pw && pw[0] == '1');
	for (int i = 0; i < 3; i++) {
		if (i == 0 && (o->flags & COIL_LOOP_NO_DEFER_TASKRUN))
			continue;
		if (i == 1 && (o->flags & COIL_LOOP_NO_COOP_TASKRUN))
			continue;
		if (i < 2 && w->poll_wait)
			continue;
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = tries[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
		p.cq_entries = o->cq_entries;
		rc = io_uring_queue_init_params(o->sq_entries, w->ring, &p);
		if (rc == 0) {
			w->ring_flags = (int)p.flags;
			return 0;
		}
		if (rc != -EINVAL)
			break;
	}
	coil__free(w->ring);
	w->ring = NULL;
	return rc;
}

static void report_start(coil__worker *w, int rc)
{
	coil_loop_t *loop = w->loop;
	pthread_mutex_lock(&loop->start_lock);
	w->start_rc = rc;
	loop->started++;
	pthread_cond_broadcast(&loop->start_cond);
	pthread_mutex_unlock(&loop->start_lock);
}

/* Whether a stopping worker has nothing left: no ring op in flight, no
 * object open, nothing queued. */
static bool drained(coil__worker *w)
{
	return w->ops_inflight == (w->efd_armed ? 1u : 0u) &&
	       coil__list_empty(&w->closers) &&
	       !w->ready_head && coil__list_empty(&w->defers) &&
	       !inbox_pending(w);
}

/*
 * Copies completions out of the CQ in batches, advances the CQ head, runs
 * the inbox, then dispatches: a completion handler may submit, settle
 * handles or free the op's memory without disturbing the ring.
 */
static unsigned reap(coil__worker *w)
{
	struct io_uring_cqe *cqes[CQE_BATCH];
	struct {
		coil__op *op;
		int res;
		unsigned flags;
	} batch[CQE_BATCH];
	unsigned total = 0;
	w->sq_stuck = false;
	for (;;) {
		unsigned n = io_uring_peek_batch_cqe(w->ring, cqes, CQE_BATCH);
		if (!n)
			break;
		for (unsigned i = 0; i < n; i++) {
			batch[i].op = io_uring_cqe_get_data(cqes[i]);
			batch[i].res = cqes[i]->res;
			batch[i].flags = cqes[i]->flags;
		}
		io_uring_cq_advance(w->ring, n);
		/* Tasks posted before these completions were seen run first:
		 * a call a foreign thread made before causing I/O (setting a
		 * signal, then writing to the peer) takes effect before the
		 * completion that I/O brings. The push happened before the
		 * cause, the cause before the CQE, the CQE before this peek.
		 * So all of them, not a budget's worth: the budget bounds a
		 * turn without completions; here the order wins. One
		 * snapshot: a task re-posting itself runs once more at most. */
		drain_inbox(w, 0);
		for (unsigned i = 0; i < n; i++) {
			if (!(batch[i].flags & IORING_CQE_F_MORE))
				w->ops_inflight--;
			if (batch[i].op)
				batch[i].op->complete(batch[i].op, batch[i].res,
						      batch[i].flags);
		}
		total += n;
		if (n < CQE_BATCH)
			break;
	}
	coil__bufring_flush(w);
	return total;
}

/* Whether every worker of the loop has found itself drained. */
static bool all_idle(const coil_loop_t *loop)
{
	for (unsigned i = 0; i < loop->nworkers; i++)
		if (!atomic_load(&loop->workers[i].idle))
			return false;
	return true;
}

/*
 * Whether the kernel holds completions that only an io_uring_enter with
 * GETEVENTS posts: deferred task work (DEFER_TASKRUN, or COOP_TASKRUN's
 * task work, flagged through TASKRUN_FLAG) or an overflowed CQ.
 */
static bool kernel_has_events(const coil__worker *w)
{
	unsigned f = IO_URING_READ_ONCE(*w->ring->sq.kflags);
	return f & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW);
}

/*
 * struct io_uring_getevents_arg as Linux 6.12 has it: liburing 2.3 calls
 * min_wait_usec "pad" (older kernels want it zero).
 */
struct enter_arg {
	uint64_t sigmask;
	uint32_t sigmask_sz;
	uint32_t min_wait_usec;
	uint64_t ts;
};

/*
 * The worker's io_uring_enter, made here rather than through liburing's
 * submit calls so that a wait can carry the min-wait (liburing 2.3 has no
 * io_uring_submit_and_wait_min_timeout) and every enter is counted
 * (w->enters). Publishes the SQEs prepared since the last enter (the SQ
 * tail, as liburing's flush does: the syscall orders the stores), then
 * submits them and, with GETEVENTS, waits for wait_nr completions. arg:
 * NULL, or an extended argument (IORING_ENTER_EXT_ARG). Returns what
 * io_uring_enter returns, or -errno.
 */
static int ring_enter(coil__worker *w, unsigned wait_nr, unsigned flags,
		      const struct enter_arg *arg)
{
	struct io_uring_sq *sq = &w->ring->sq;
	unsigned tail = sq->sqe_tail;
	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		IO_URING_WRITE_ONCE(*sq->ktail, tail);
	}
	unsigned submit = tail - IO_URING_READ_ONCE(*sq->khead);
	int fd = w->ring->ring_fd;
	if (w->ring_registered) {
		fd = w->ring->enter_ring_fd;
		flags |= IORING_ENTER_REGISTERED_RING;
	}
	if (arg)
		flags |= IORING_ENTER_EXT_ARG;
	w->enters++;
	long rc = syscall(__NR_io_uring_enter, fd, submit, wait_nr, flags, arg,
			  arg ? sizeof(*arg) : 0);
	return rc < 0 ? -errno : (int)rc;
}

/*
 * One turn's syscall while the worker is busy (it must not sleep, so never
 * a min-wait either): submit what is queued and, when the kernel flags
 * events it holds for us, have them posted (a plain submit does not run
 * DEFER_TASKRUN's task work, so a busy worker would never see a
 * completion). Nothing queued and nothing flagged: no syscall at all.
 */
static int busy_enter(coil__worker *w)
{
	if (kernel_has_events(w))
		return ring_enter(w, 0, IORING_ENTER_GETEVENTS, NULL);
	if (io_uring_sq_ready(w->ring))
		return ring_enter(w, 0, 0, NULL);
	return 0;
}

/*
 * How many of the SQEs about to be submitted are sends or writes: on a
 * socket with room they complete inline, during the submit itself.
 */
static unsigned queued_sends(const coil__worker *w)
{
	const struct io_uring_sq *sq = &w->ring->sq;
	unsigned n = 0;
	for (unsigned i = IO_URING_READ_ONCE(*sq->khead); i != sq->sqe_tail; i++) {
		switch (sq->sqes[i & sq->ring_mask].opcode) {
		case IORING_OP_SEND:
		case IORING_OP_SENDMSG:
		case IORING_OP_WRITE:
		case IORING_OP_WRITEV:
		case IORING_OP_SEND_ZC:
		case IORING_OP_SENDMSG_ZC:
			n++;
			break;
		}
	}
	return n;
}

/*
 * The idle turn's syscall: submit and sleep until a completion arrives.
 *
 * A send that completes inline during the submit satisfies a wait for one
 * completion at once: at one connection every echoed message cost two
 * enters, one returning with the send's CQE and one waiting for the next
 * receive. With the min-wait on (w->min_wait_us) and k sends or writes
 * among the SQEs, it waits for k + 1 completions instead, but at most
 * min_wait_us: then the kernel returns with whatever has arrived, or, when
 * nothing has, keeps waiting (the general timeout, a day, only gives the
 * min-wait something to be shorter than: without one the kernel ends the
 * wait at min_wait_us even when nothing came). So the next receive comes
 * back in the same enter as the sends' CQEs. A ring timeout (coil's
 * timers) ends the wait at once whatever the count: the kernel wakes a
 * waiter on every timeout. A turn that submitted no send (a re-arm, a
 * timer, nothing) waits for one completion, as without the option.
 */
static int idle_enter(coil__worker *w)
{
	unsigned k = w->min_wait_us ? queued_sends(w) : 0;
	if (k && w->mw_skip) {
		w->mw_skip--;
		k = 0;
	}
	if (!k)
		return ring_enter(w, 1, IORING_ENTER_GETEVENTS, NULL);
	static const struct __kernel_timespec day = {.tv_sec = 86400};
	struct enter_arg arg = {.min_wait_usec = w->min_wait_us,
				.ts = (uint64_t)(uintptr_t)&day};
	w->min_waits++;
	int rc = ring_enter(w, k + 1, IORING_ENTER_GETEVENTS, &arg);
	/* Fewer than k + 1: the min-wait ran out (or a timer ended it). A
	 * program whose sends are not followed by other events (a writer
	 * that waits for each write's completion before the next) would pay
	 * the whole min-wait on every write: after a miss, the next 1, 2,
	 * 4 ... up to MIN_WAIT_BACKOFF turns with sends wait plainly, so
	 * such a program pays it once per MIN_WAIT_BACKOFF writes at most,
	 * while a connection that keeps answering keeps batching. */
	if (io_uring_cq_ready(w->ring) < k + 1) {
		w->min_wait_misses++;
		w->mw_backoff = w->mw_backoff ? w->mw_backoff * 2 : 1;
		if (w->mw_backoff > MIN_WAIT_BACKOFF)
			w->mw_backoff = MIN_WAIT_BACKOFF;
		w->mw_skip = w->mw_backoff;
	} else {
		w->mw_backoff = 0;
	}
	return rc;
}

/* The min-wait a worker uses: the loop's batch_wait_us where the ring has
 * IORING_FEAT_MIN_TIMEOUT (6.12), not turned off, and the worker sleeps in
 * io_uring_enter (not in poll(2): see ring_setup). */
static unsigned min_wait_us(const coil__worker *w)
{
	const coil_loop_opts_t *o = &w->loop->opts;
	if (!o->batch_wait_us || w->poll_wait ||
	    (o->flags & COIL_LOOP_NO_MIN_WAIT) ||
	    !(w->ring->features & IORING_FEAT_MIN_TIMEOUT) ||
	    (coil__probe_hide & COIL__FEAT_MIN_TIMEOUT))
		return 0;
	return o->batch_wait_us;
}

/*
 * The loop turn: inbox, due callbacks, deferred work (each bounded), then
 * one submit that also waits for completions unless work is already
 * pending, then reap.
 *
 * Stopping: objects on one worker can hold objects on another (a listener
 * and its shards), so a worker leaves only once every worker is drained at
 * the same time; until then it polls for that every few milliseconds while
 * still serving its inbox (a plain wait with a 5 ms timeout: no min-wait).
 * Tasks that reach a worker after it left are run by coil_loop_free.
 */
static void stop_cancel_all(coil__worker *w);

static void worker_run(coil__worker *w)
{
	static const struct __kernel_timespec stop_poll = {
		.tv_nsec = 5 * 1000 * 1000};
	const struct enter_arg stop_arg = {.ts = (uint64_t)(uintptr_t)&stop_poll};
	for (;;) {
		drain_inbox(w, INBOX_BUDGET);
		run_ready(w);
		run_defers(w);
		if (w->stopping) {
			bool d = drained(w);
			atomic_store(&w->idle, d);
			if (d && all_idle(w->loop))
				break;
			/* One cancel-all can miss an operation: a send blocked
			 * on a full socket whose retry was running as task work
			 * when the cancel looked (its poll not armed) stayed in
			 * the kernel and the stop waited for it forever
			 * (test_teardown free_with_blocked_send). While ops
			 * stay in flight, cancel again every 50 ms. */
			if (!d && w->ops_inflight > (w->efd_armed ? 1u : 0u) &&
			    coil__now_ms() - w->stop_cancel_ms >= 50)
				stop_cancel_all(w);
		}
		bool busy = w->ready_head || inbox_pending(w) ||
			    !coil__list_empty(&w->defers);
		int rc = busy || w->poll_wait ? busy_enter(w)
		       : w->stopping ? ring_enter(w, 1, IORING_ENTER_GETEVENTS,
						  &stop_arg)
				     : idle_enter(w);
		if (rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN &&
		    rc != -ETIME) {
			fprintf(stderr, "coil: worker %u: io_uring_enter: %s\n",
				w->index, strerror(-rc));
		}
		if (w->poll_wait && !busy && !io_uring_cq_ready(w->ring)) {
			struct pollfd pfd = {.fd = w->ring->ring_fd,
					     .events = POLLIN};
			poll(&pfd, 1, w->stopping ? 5 : -1);
		}
		reap(w);
	}
}

static void stop_task_run(coil__task *t);

static void *worker_main(void *arg)
{
	coil__worker *w = arg;
	coil__tls_worker = w;

	/* Workers take no asynchronous signals: they belong to the program's
	 * own threads. A write to a pipe whose reader is gone then leaves a
	 * blocked SIGPIPE instead of killing the process. */
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);

	int rc = ring_setup(w);
	w->start_what = "io_uring_queue_init";
	if (!rc) {
		w->start_what = "provided buffer ring";
		rc = coil__bufring_init(w, w->loop->opts.buf_count,
					w->loop->opts.buf_size);
		if (rc) {
			io_uring_queue_exit(w->ring);
			coil__free(w->ring);
			w->ring = NULL;
		}
	}
	/* A registered ring fd (5.18) saves io_uring_enter the fd lookup;
	 * liburing uses it once registered. Failure is fine: the plain fd. */
	if (!rc && !(w->loop->opts.flags & COIL_LOOP_NO_REGISTERED_RING) &&
	    io_uring_register_ring_fd(w->ring) == 1)
		w->ring_registered = true;
	/* A fixed file table (ftable.c); without one, plain descriptors. */
	if (!rc)
		coil__ftable_init(w);
	if (!rc)
		w->min_wait_us = min_wait_us(w);
	if (!rc && (coil__features() & COIL__FEAT_RECV_CAP) &&
	    !(w->loop->opts.flags & COIL_LOOP_NO_RECV_CAP))
		w->recv_cap = coil__bufring_size(w);
	report_start(w, rc);
	if (rc) {
		w->dead = true;
		return NULL;
	}
	arm_efd(w);
	worker_run(w);
	release_held(w);
	coil__ftable_free(w);
	coil__bufring_free(w);
	io_uring_queue_exit(w->ring);
	coil__free(w->ring);
	w->ring = NULL;
	w->dead = true;
	return NULL;
}

/* ---- stop ---- */

/*
 * Whatever is still in flight (timers, operations of objects that close
 * asynchronously) is cancelled in one go; the completions arrive with
 * -ECANCELED and release their memory. The eventfd read is cancelled too
 * and re-armed by its completion.
 */
static void stop_cancel_all(coil__worker *w)
{
	struct io_uring_sqe *sqe = get_sqe(w, NULL);
	if (sqe) {
		io_uring_prep_cancel(sqe, NULL,
				     IORING_ASYNC_CANCEL_ANY |
					     IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data(sqe, NULL);
	}
	w->stop_cancel_ms = coil__now_ms();
}

static void stop_task_run(coil__task *t)
{
	coil__worker *w = coil__tls_worker;
	coil__free(t);
	w->stopping = true;
	/* Closing an object may unlist it at once or only after its ring ops
	 * drain; walk a snapshot so both are fine. */
	coil__list *pos = w->closers.next;
	while (pos != &w->closers) {
		coil__list *next = pos->next;
		coil__closer *c = coil__container_of(pos, coil__closer, link);
		c->close(c);
		pos = next;
	}
	stop_cancel_all(w);
}

/* ---- public API ---- */

void coil_loop_opts_init(coil_loop_opts_t *opts)
{
	if (!opts)
		return;
	memset(opts, 0, sizeof(*opts));
	opts->size = sizeof(*opts);
}

/* The size of the first published coil_loop_opts_t (through flags): the
 * smallest a caller may pass. */
#define OPTS_V1_SIZE (offsetof(coil_loop_opts_t, flags) + sizeof(unsigned))

/* Copies the caller's options (of the caller's size) into *o. */
static int copy_opts(coil_loop_opts_t *o, const coil_loop_opts_t *in)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	if (!in)
		return 0;
	if (in->size < OPTS_V1_SIZE) {
		set_error("coil_loop_opts_t.size is %zu: fill the options with "
			  "coil_loop_opts_init() first",
			  in->size);
		return -EINVAL;
	}
	if (in->size > sizeof(*o)) {
		const unsigned char *extra = (const unsigned char *)in + sizeof(*o);
		for (size_t i = 0; i < in->size - sizeof(*o); i++)
			if (extra[i]) {
				set_error("coil_loop_opts_t of %zu bytes sets options "
					  "this coil (%zu bytes) does not know",
					  in->size, sizeof(*o));
				return -E2BIG;
			}
	}
	memcpy(o, in, in->size < sizeof(*o) ? in->size : sizeof(*o));
	o->size = sizeof(*o);
	return 0;
}

#define OPT_BAD(...) (set_error(__VA_ARGS__), -EINVAL)

static int normalise_opts(coil_loop_opts_t *o)
{
	if (!o->workers) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		o->workers = n > 0 ? (unsigned)n : 1;
	}
	if (o->workers > 1024)
		return OPT_BAD("workers %u: at most 1024", o->workers);
	if (!o->sq_entries)
		o->sq_entries = 256;
	if (o->sq_entries > 32768)
		return OPT_BAD("sq_entries %u: at most 32768", o->sq_entries);
	if (!o->cq_entries)
		o->cq_entries = o->sq_entries * 16;
	if (o->cq_entries < o->sq_entries || o->cq_entries > 1u << 20)
		return OPT_BAD("cq_entries %u: from sq_entries (%u) to 1048576",
			       o->cq_entries, o->sq_entries);
	/* buf_count, buf_size 0: bufring.c picks, once it knows whether the
	 * kernel consumes buffers incrementally. */
	if (o->buf_count & (o->buf_count - 1) || o->buf_count > 32768)
		return OPT_BAD("buf_count %u: a power of two, at most 32768",
			       o->buf_count);
	if (o->buf_size > (1u << 24))
		return OPT_BAD("buf_size %u: at most 16 MiB", o->buf_size);
	if (o->flags & ~(COIL_LOOP_NO_DEFER_TASKRUN | COIL_LOOP_NO_COOP_TASKRUN |
			 COIL_LOOP_NO_READ_MULTISHOT |
			 COIL_LOOP_NO_REGISTERED_RING | COIL_LOOP_NO_MIN_WAIT |
			 COIL_LOOP_NO_FIXED_FILES | COIL_LOOP_PBUF_INC |
			 COIL_LOOP_NO_RECV_CAP))
		return OPT_BAD("flags 0x%x: unknown COIL_LOOP_* bits", o->flags);
	if (o->batch_wait_us > 1000000)
		return OPT_BAD("batch_wait_us %u: at most 1000000 (1 s)",
			       o->batch_wait_us);
	return 0;
}

int coil_loop_new(coil_loop_t **out, const coil_loop_opts_t *opts)
{
	last_error[0] = 0;
	if (!out) {
		set_error("out is NULL");
		return -EINVAL;
	}
	*out = NULL;
	coil_loop_opts_t o;
	int rc = copy_opts(&o, opts);
	/* COIL_LOOP_FLAGS (a number, e.g. 0x8) adds COIL_LOOP_NO_* flags to
	 * every loop of the process: comparisons and fallback tests without
	 * rebuilding the program. */
	const char *ev = getenv("COIL_LOOP_FLAGS");
	if (!rc && ev && *ev) {
		char *end;
		unsigned long f = strtoul(ev, &end, 0);
		if (*end || f > ~0u) {
			set_error("COIL_LOOP_FLAGS=%s: not a number", ev);
			rc = -EINVAL;
		}
		o.flags |= (unsigned)f;
	}
	if (!rc)
		rc = normalise_opts(&o);
	if (!rc)
		rc = check_features();
	if (rc)
		return rc;
	coil_loop_t *loop = coil__calloc(1, sizeof(*loop));
	if (!loop) {
		set_error("out of memory");
		return -ENOMEM;
	}
	loop->opts = o;
	loop->nworkers = loop->opts.workers;
	loop->workers = coil__calloc(loop->nworkers, sizeof(coil__worker));
	if (!loop->workers) {
		coil__free(loop);
		set_error("out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&loop->start_lock, NULL);
	pthread_cond_init(&loop->start_cond, NULL);
	ext_run(loop, EXT_INIT);

	unsigned spawned = 0;
	for (unsigned i = 0; i < loop->nworkers; i++) {
		coil__worker *w = &loop->workers[i];
		w->loop = loop;
		w->index = i;
		coil__list_init(&w->defers);
		coil__list_init(&w->closers);
		coil__list_init(&w->held);
		coil__defer_init(&w->efd_retry, efd_retry_run);
		w->efd = eventfd(0, EFD_CLOEXEC);
		if (w->efd < 0) {
			rc = -errno;
			set_error("worker %u: eventfd: %s", i, strerror(-rc));
			break;
		}
		rc = -pthread_create(&w->thread, NULL, worker_main, w);
		if (rc) {
			set_error("worker %u: pthread_create: %s", i, strerror(-rc));
			close(w->efd);
			w->efd = -1;
			break;
		}
		spawned++;
	}
	/* Wait for every started worker to report its ring setup. */
	pthread_mutex_lock(&loop->start_lock);
	while (loop->started < spawned)
		pthread_cond_wait(&loop->start_cond, &loop->start_lock);
	pthread_mutex_unlock(&loop->start_lock);
	for (unsigned i = 0; i < spawned && !rc; i++) {
		rc = loop->workers[i].start_rc;
		if (rc)
			set_error("worker %u: %s: %s", i,
				  loop->workers[i].start_what, strerror(-rc));
	}
	if (rc) {
		/* Stop the workers that did start, then unwind. */
		for (unsigned i = 0; i < spawned; i++) {
			coil__worker *w = &loop->workers[i];
			if (!w->dead) {
				coil__task *t = coil__malloc(sizeof(*t));
				if (t) {
					t->run = stop_task_run;
					coil__post(w, t);
				}
			}
			pthread_join(w->thread, NULL);
			close(w->efd);
		}
		ext_run(loop, EXT_STOP);
		pthread_mutex_destroy(&loop->start_lock);
		pthread_cond_destroy(&loop->start_cond);
		coil__free(loop->workers);
		coil__free(loop);
		return rc;
	}
	ext_run(loop, EXT_STARTED);
	*out = loop;
	return 0;
}

int coil_loop_free(coil_loop_t *loop)
{
	if (!loop)
		return 0;
	if (coil__tls_worker && coil__tls_worker->loop == loop)
		return -EDEADLK;
	atomic_store(&loop->stopping, 1);
	ext_run(loop, EXT_STOP);
	for (unsigned i = 0; i < loop->nworkers; i++) {
		coil__task *t = coil__malloc(sizeof(*t));
		if (!t)
			abort(); /* cannot stop a worker without its task */
		t->run = stop_task_run;
		coil__post(&loop->workers[i], t);
	}
	for (unsigned i = 0; i < loop->nworkers; i++)
		pthread_join(loop->workers[i].thread, NULL);
	/* Tasks posted to a worker after it exited (by another worker still
	 * closing its objects): run them here, once no worker runs any more,
	 * as that worker, where every ring operation fails with -ESHUTDOWN,
	 * so their memory is released. A task may post to another worker:
	 * repeat until a whole pass finds nothing. */
	for (bool more = true; more;) {
		more = false;
		for (unsigned i = 0; i < loop->nworkers; i++) {
			coil__worker *w = &loop->workers[i];
			coil__tls_worker = w;
			while (drain_inbox(w, 0) || w->ready_head) {
				run_ready(w);
				run_defers(w);
				more = true;
			}
			coil__tls_worker = NULL;
		}
	}
	ext_run(loop, EXT_FINI);
	for (unsigned i = 0; i < loop->nworkers; i++)
		close(loop->workers[i].efd);
	pthread_mutex_destroy(&loop->start_lock);
	pthread_cond_destroy(&loop->start_cond);
	coil__free(loop->workers);
	coil__free(loop);
	return 0;
}

unsigned coil_loop_workers(const coil_loop_t *loop)
{
	return loop ? loop->nworkers : 0;
}

int coil_loop_current_worker(const coil_loop_t *loop)
{
	coil__worker *w = coil__tls_worker;
	return (w && w->loop == loop) ? (int)w->index : -1;
}

int coil_loop_ring_flags(const coil_loop_t *loop, unsigned worker)
{
	if (!loop || worker >= loop->nworkers)
		return -EINVAL;
	return loop->workers[worker].ring_flags;
}

coil__worker *coil__pick_worker(coil_loop_t *loop)
{
	coil__worker *w = coil__tls_worker;
	if (w && w->loop == loop)
		return w;
	unsigned i = atomic_fetch_add_explicit(&loop->rr, 1,
					       memory_order_relaxed);
	return &loop->workers[i % loop->nworkers];
}

struct user_task {
	coil__task task;
	coil_task_cb fn;
	void *arg;
};

static void user_task_run(coil__task *t)
{
	struct user_task *u = coil__container_of(t, struct user_task, task);
	coil_task_cb fn = u->fn;
	void *arg = u->arg;
	coil__free(u);
	fn(arg);
}

int coil_loop_post(coil_loop_t *loop, int worker, coil_task_cb fn, void *arg)
{
	if (!loop || !fn || worker < -1 || (worker >= 0 &&
					     (unsigned)worker >= loop->nworkers))
		return -EINVAL;
	if (atomic_load(&loop->stopping))
		return -ESHUTDOWN;
	coil__worker *w = worker < 0 ? coil__pick_worker(loop)
				     : &loop->workers[worker];
	return coil__post_fn(w, fn, arg);
}

int coil__post_fn(coil__worker *w, void (*fn)(void *), void *arg)
{
	struct user_task *u = coil__malloc(sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->task.run = user_task_run;
	u->fn = fn;
	u->arg = arg;
	coil__post(w, &u->task);
	return 0;
}
