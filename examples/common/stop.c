/* SPDX-License-Identifier: MIT */
/* SIGINT / SIGTERM delivered through a signalfd watched by a coil monitor:
 * the handler runs on a worker, where it may abort handles or finish one
 * that the main thread waits on. */
#include "stop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <unistd.h>

struct stop {
	int fd;
	int fired;
	stop_cb cb;
	void *ud;
};

static void stop_set(sigset_t *s)
{
	sigemptyset(s);
	sigaddset(s, SIGINT);
	sigaddset(s, SIGTERM);
}

int stop_signals_block(void)
{
	sigset_t s;
	stop_set(&s);
	return pthread_sigmask(SIG_BLOCK, &s, NULL) ? -1 : 0;
}

static void on_ready(coil_monitor_t *m, int fd, int events, void *ud)
{
	struct stop *st = ud;
	struct signalfd_siginfo si;
	int signo = SIGTERM;
	if (events > 0 && read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		signo = (int)si.ssi_signo;
	if (st->fired)
		return;
	st->fired = 1;
	coil_monitor_unregister(m);
	st->cb(signo, st->ud);
}

struct stop *stop_on_signal(coil_loop_t *loop, stop_cb cb, void *ud)
{
	sigset_t s;
	stop_set(&s);
	struct stop *st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	st->cb = cb;
	st->ud = ud;
	st->fd = signalfd(-1, &s, SFD_NONBLOCK | SFD_CLOEXEC);
	coil_monitor_t *m = NULL;
	int rc = st->fd < 0 ? -errno : coil_monitor_new(loop, on_ready, st, &m);
	if (!rc)
		rc = coil_monitor_register(m, st->fd, COIL_IO_READ);
	if (rc) {
		if (m)
			coil_monitor_free(m);
		if (st->fd >= 0)
			close(st->fd);
		free(st);
		errno = -rc;
		return NULL;
	}
	return st;
}

void stop_free(struct stop *st)
{
	if (!st)
		return;
	close(st->fd);
	free(st);
}
