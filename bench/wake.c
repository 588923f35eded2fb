/* SPDX-License-Identifier: MIT */
/*
 * Worker-to-worker wake-up: eventfd vs IORING_OP_MSG_RING.
 *
 * Two threads, each owning a ring set up like a coil worker's
 * (SINGLE_ISSUER | DEFER_TASKRUN, falling back to plain), play ping-pong:
 * each round, one thread wakes the other, which wakes it back. Both sleep in
 * io_uring_submit_and_wait() between rounds, as coil's workers do.
 *
 *   eventfd:  each ring keeps a read armed on its own eventfd; a wake-up is
 *             a write(2) on the other's eventfd (what coil does today).
 *   msg_ring: a wake-up is an IORING_OP_MSG_RING SQE on the waker's own
 *             ring that posts a CQE into the other ring (what DESIGN.md
 *             planned); IOSQE_CQE_SKIP_SUCCESS drops the sender's CQE.
 *
 * Prints the round-trip time and the CPU time per wake-up (both threads,
 * user + system) of each, and their ratio. Does not link coil.
 *
 *   wake [ROUNDS]     default 200,000 round trips per method
 */
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { M_EVENTFD, M_MSGRING };

struct side {
	struct io_uring ring;
	int efd;
	uint64_t efd_val;
	struct side *peer;
	int method;
	long rounds;
	int starter;
	_Atomic int *ready;
	double cpu_s;
	int err;
};

#define TAG_EFD 1
#define TAG_MSG 2

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double thread_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_THREAD, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static int ring_init(struct io_uring *ring)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	if (io_uring_queue_init_params(64, ring, &p) == 0)
		return 0;
	memset(&p, 0, sizeof(p));
	return io_uring_queue_init_params(64, ring, &p);
}

static void arm_efd(struct side *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	io_uring_prep_read(sqe, s->efd, &s->efd_val, sizeof(s->efd_val), 0);
	io_uring_sqe_set_data64(sqe, TAG_EFD);
}

static int wake_peer(struct side *s)
{
	if (s->method == M_EVENTFD) {
		uint64_t one = 1;
		return write(s->peer->efd, &one, sizeof(one)) == sizeof(one)
			       ? 0
			       : -errno;
	}
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	io_uring_prep_msg_ring(sqe, s->peer->ring.ring_fd, 0, TAG_MSG, 0);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, 0);
	return 0;
}

/* Sleeps until the peer's wake-up arrives; re-arms the eventfd read. */
static int wait_wake(struct side *s)
{
	for (;;) {
		struct io_uring_cqe *cqe;
		int rc = io_uring_submit_and_wait(&s->ring, 1);
		if (rc < 0 && rc != -EINTR)
			return rc;
		unsigned head, n = 0;
		int woke = 0;
		io_uring_for_each_cqe(&s->ring, head, cqe)
		{
			n++;
			uint64_t tag = io_uring_cqe_get_data64(cqe);
			if (cqe->res < 0 && tag)
				return cqe->res;
			if (tag == TAG_EFD) {
				arm_efd(s);
				woke = 1;
			} else if (tag == TAG_MSG) {
				woke = 1;
			}
		}
		io_uring_cq_advance(&s->ring, n);
		if (woke)
			return 0;
	}
}

static void *side_run(void *arg)
{
	struct side *s = arg;
	s->err = ring_init(&s->ring);
	if (!s->err && s->method == M_EVENTFD)
		arm_efd(s);
	if (!s->err)
		io_uring_submit(&s->ring);
	atomic_fetch_add(s->ready, 1);
	while (atomic_load(s->ready) < 2)
		;
	if (s->err || s->peer->err)
		return NULL;
	double c0 = thread_cpu_s();
	for (long i = 0; i < s->rounds && !s->err; i++) {
		if (s->starter) {
			s->err = wake_peer(s);
			if (!s->err)
				s->err = wait_wake(s);
		} else {
			s->err = wait_wake(s);
			if (!s->err)
				s->err = wake_peer(s);
			if (!s->err && s->method == M_MSGRING)
				io_uring_submit(&s->ring);
		}
	}
	s->cpu_s = thread_cpu_s() - c0;
	/* Let the peer's last wait finish before the ring goes away. */
	atomic_fetch_add(s->ready, 1);
	while (atomic_load(s->ready) < 4)
		;
	io_uring_queue_exit(&s->ring);
	return NULL;
}

struct result {
	double rtt_ns, cpu_ns_per_wake;
	int err;
};

static struct result run(int method, long rounds)
{
	struct side a, b;
	_Atomic int ready = 0;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.efd = eventfd(0, EFD_CLOEXEC);
	b.efd = eventfd(0, EFD_CLOEXEC);
	a.peer = &b;
	b.peer = &a;
	a.method = b.method = method;
	a.rounds = b.rounds = rounds;
	a.starter = 1;
	a.ready = b.ready = &ready;
	pthread_t ta, tb;
	double t0 = now_s();
	pthread_create(&ta, NULL, side_run, &a);
	pthread_create(&tb, NULL, side_run, &b);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);
	double t1 = now_s();
	close(a.efd);
	close(b.efd);
	struct result r = {0, 0, a.err ? a.err : b.err};
	r.rtt_ns = (t1 - t0) * 1e9 / (double)rounds;
	r.cpu_ns_per_wake = (a.cpu_s + b.cpu_s) * 1e9 / (double)(2 * rounds);
	return r;
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 200000;
	if (rounds <= 0) {
		fprintf(stderr, "usage: %s [ROUNDS]\n", argv[0]);
		return 2;
	}
	printf("# worker-to-worker wake-up, %ld round trips each (bench/wake.c)\n",
	       rounds);
	/* Alternate the two, three times each; report the medians. */
	double rtt[2][3], cpu[2][3];
	for (int k = 0; k < 3; k++) {
		for (int m = 0; m < 2; m++) {
			struct result r = run(m, rounds);
			if (r.err) {
				fprintf(stderr, "wake: %s: %s\n",
					m ? "msg_ring" : "eventfd", strerror(-r.err));
				return 1;
			}
			rtt[m][k] = r.rtt_ns;
			cpu[m][k] = r.cpu_ns_per_wake;
		}
	}
	for (int m = 0; m < 2; m++) {
		for (int i = 0; i < 3; i++)
			for (int j = i + 1; j < 3; j++) {
				if (rtt[m][j] < rtt[m][i]) {
					double t = rtt[m][i]; rtt[m][i] = rtt[m][j]; rtt[m][j] = t;
				}
				if (cpu[m][j] < cpu[m][i]) {
					double t = cpu[m][i]; cpu[m][i] = cpu[m][j]; cpu[m][j] = t;
				}
			}
	}
	printf("eventfd   round trip %8.0f ns   cpu per wake-up %6.0f ns\n",
	       rtt[0][1], cpu[0][1]);
	printf("msg_ring  round trip %8.0f ns   cpu per wake-up %6.0f ns\n",
	       rtt[1][1], cpu[1][1]);
	printf("ratio msg_ring/eventfd: round trip %.2f, cpu %.2f\n",
	       rtt[1][1] / rtt[0][1], cpu[1][1] / cpu[0][1]);
	return 0;
}
