/* SPDX-License-Identifier: MIT */
/* SIGINT / SIGTERM as an event on a coil worker, for the examples that
 * block in coil_ip_wait() rather than in sigwait(). */
#ifndef COIL_EXAMPLES_STOP_H
#define COIL_EXAMPLES_STOP_H

#include <coil.h>

/* Blocks SIGINT and SIGTERM in the calling thread (call it before creating
 * the loop, so that no thread takes their default action) and returns 0. */
int stop_signals_block(void);

/* Calls cb(signo, ud) on a worker of loop when SIGINT or SIGTERM arrives
 * (a signalfd watched by a coil monitor), at most once. Returns the state,
 * or NULL with errno set. */
typedef void (*stop_cb)(int signo, void *ud);
struct stop;
struct stop *stop_on_signal(coil_loop_t *loop, stop_cb cb, void *ud);

/* After coil_loop_free (which takes the monitor down): closes the signalfd
 * and frees the state. NULL is ignored. */
void stop_free(struct stop *st);

#endif
