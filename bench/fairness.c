/* SPDX-License-Identifier: MIT */
/* fairness - how late a 10 ms coil_sleep() fires while its worker is
 * saturated by callbacks (a task that re-posts itself without end), on each
 * ring mode; beside the same timer on an idle worker. The batched-wait
 * cases (batch_wait_us = 100 ms) show that neither a busy worker nor one
 * whose last turn sent something (so that it waits for one completion
 * more than the send's, up to 100 ms) holds the timer back: the ring
 * timeout ends the wait.
 *
 *   fairness [TRIALS]    trials per case (default 21); prints median and max
 *
 * The lateness is measured on the worker itself: the re-posting task notes
 * the first turn on which the timer's handle has settled. One worker, so
 * the loop's own fairness (budgets, reaping while busy) is what is measured;
 * on a loaded machine the scheduler's own delays add to it.
 */
#include <coil.h>

#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

struct trial {
	coil_loop_t *loop;
	coil_ip_t *timer, *done;
	double start, fired;
	unsigned long spins;
	int busy;
	coil_channel_t *ch; /* write a byte in the timer's turn */
};

static void spin(void *arg)
{
	struct trial *t = arg;
	t->spins++;
	if (coil_ip_state(t->timer) != COIL_IP_PENDING) {
		t->fired = now_ms();
		coil_ip_finish_int(t->done, 0);
		return;
	}
	if (now_ms() - t->start > 5000) { /* never fired: give up */
		t->fired = -1;
		coil_ip_finish_int(t->done, 0);
		return;
	}
	if (coil_loop_post(t->loop, 0, spin, t))
		coil_ip_finish_int(t->done, -1);
}

static void on_timer(coil_ip_t *ip, void *ud)
{
	struct trial *t = ud;
	(void)ip;
	if (!t->busy) {
		t->fired = now_ms();
		coil_ip_finish_int(t->done, 0);
	}
}

static void start(void *arg)
{
	struct trial *t = arg;
	t->start = now_ms();
	t->timer = coil_sleep(t->loop, 10);
	coil_ip_on_done(t->timer, on_timer, t);
	if (t->ch)
		coil_ip_unref(coil_channel_write(t->ch, "x", 1));
	if (t->busy)
		spin(t);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 21;
	if (n < 1 || n > 1000)
		n = 21;
	static const struct {
		const char *name;
		unsigned flags;
		int busy;
		unsigned batch_wait_us;
		int write;
	} cases[] = {
		{"idle worker, default ring", 0, 0, 0, 0},
		{"saturated, DEFER_TASKRUN ring", 0, 1, 0, 0},
		{"saturated, COOP_TASKRUN ring", COIL_LOOP_NO_DEFER_TASKRUN, 1, 0, 0},
		{"saturated, plain ring",
		 COIL_LOOP_NO_DEFER_TASKRUN | COIL_LOOP_NO_COOP_TASKRUN, 1, 0, 0},
		{"saturated, batch wait 100 ms", 0, 1, 100000, 0},
		{"after a send, batch wait 100 ms", 0, 0, 100000, 1},
	};
	double *late = calloc((size_t)n, sizeof(*late));
	struct trial **trials = calloc((size_t)n, sizeof(*trials));
	if (!late || !trials)
		return 1;
	printf("# 10 ms coil_sleep: ms late (fire time - 10 ms), %d trials each "
	       "(bench/fairness.c)\n", n);
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		coil_loop_opts_t o;
		coil_loop_opts_init(&o);
		o.workers = 1;
		o.flags = cases[c].flags;
		o.batch_wait_us = cases[c].batch_wait_us;
		coil_loop_t *loop;
		if (coil_loop_new(&loop, &o)) {
			printf("%-32s loop: %s\n", cases[c].name,
			       coil_loop_last_error());
			continue;
		}
		/* The send's peer never reads: n bytes fit its buffer. */
		coil_channel_t *ch = NULL;
		int sv[2] = {-1, -1};
		if (cases[c].write &&
		    (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) ||
		     coil_channel_wrap(loop, sv[0], COIL_IO_READ | COIL_IO_WRITE,
				       &ch)))
			return 1;
		int never = 0;
		unsigned long spins = 0;
		for (int i = 0; i < n; i++) {
			/* Kept until the loop is freed: the timer's callback
			 * may still run after done settled. */
			struct trial *t = calloc(1, sizeof(*t));
			if (!t)
				return 1;
			trials[i] = t;
			t->loop = loop;
			t->busy = cases[c].busy;
			t->ch = ch;
			t->done = coil_ip_new(loop);
			if (!t->done || coil_loop_post(loop, 0, start, t))
				return 1;
			coil_ip_wait(t->done, -1);
			if (t->fired < 0)
				never++;
			late[i] = t->fired < 0 ? 5000 : t->fired - t->start - 10;
			spins += t->spins;
		}
		qsort(late, (size_t)n, sizeof(*late), cmp);
		printf("%-32s median %7.2f ms   max %8.2f ms   never fired %d",
		       cases[c].name, late[n / 2], late[n - 1], never);
		if (cases[c].busy)
			printf("   (%lu re-posts per trial)", spins / (unsigned long)n);
		printf("\n");
		if (ch)
			coil_channel_release(ch);
		coil_loop_free(loop);
		if (sv[1] >= 0)
			close(sv[1]);
		for (int i = 0; i < n; i++) {
			coil_ip_unref(trials[i]->timer);
			coil_ip_unref(trials[i]->done);
			free(trials[i]);
		}
	}
	free(late);
	free(trials);
	return 0;
}
