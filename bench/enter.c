/* SPDX-License-Identifier: MIT */
/* enter - the cost of one io_uring_enter with and without a registered ring
 * fd (io_uring_register_ring_fd), on a coil-like ring (SINGLE_ISSUER |
 * DEFER_TASKRUN | TASKRUN_FLAG) of a process with a second thread (so the
 * file table is shared and fdget must take a reference, as in coil).
 *
 *   enter [N]     N enters per measurement (default 1,000,000); 5 rounds,
 *                 alternating, medians
 *
 * Each enter submits one NOP and reaps it (io_uring_submit_and_get_events),
 * the shape of a busy coil turn. No coil: the ring calls are liburing's.
 */
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void *idle_thread(void *arg)
{
	(void)arg;
	pause();
	return NULL;
}

static double run(int registered, long n)
{
	struct io_uring r;
	struct io_uring_params p = {0};
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_TASKRUN_FLAG;
	if (io_uring_queue_init_params(64, &r, &p)) {
		p.flags = 0;
		if (io_uring_queue_init_params(64, &r, &p))
			return -1;
	}
	if (registered && io_uring_register_ring_fd(&r) != 1) {
		io_uring_queue_exit(&r);
		return -1;
	}
	double t0 = now_ns();
	for (long i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&r);
		io_uring_prep_nop(sqe);
		io_uring_submit_and_get_events(&r);
		struct io_uring_cqe *cqe;
		if (io_uring_peek_cqe(&r, &cqe) == 0)
			io_uring_cqe_seen(&r, cqe);
	}
	double t = (now_ns() - t0) / (double)n;
	io_uring_queue_exit(&r);
	return t;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	if (n <= 0)
		n = 1000000;
	pthread_t th;
	pthread_create(&th, NULL, idle_thread, NULL);
	double plain[5], reg[5];
	for (int i = 0; i < 5; i++) {
		plain[i] = run(0, n);
		reg[i] = run(1, n);
	}
	qsort(plain, 5, sizeof(double), cmp);
	qsort(reg, 5, sizeof(double), cmp);
	printf("# io_uring_enter (submit 1 NOP + get events), %ld per round, 5 "
	       "alternating rounds (bench/enter.c)\n", n);
	printf("plain ring fd        %7.1f ns/enter  (min %.1f, max %.1f)\n",
	       plain[2], plain[0], plain[4]);
	if (reg[0] < 0) {
		printf("registered ring fd   not supported here\n");
		return 0;
	}
	printf("registered ring fd   %7.1f ns/enter  (min %.1f, max %.1f)\n",
	       reg[2], reg[0], reg[4]);
	printf("ratio registered/plain: %.3f\n", reg[2] / plain[2]);
	return 0;
}
