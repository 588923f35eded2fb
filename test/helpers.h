/* SPDX-License-Identifier: MIT */
/* Shared helpers for the CUnit test programs: each test_*.c is one program
 * with one suite, run by `make test` under a per-program timeout. */
#ifndef COIL_TEST_HELPERS_H
#define COIL_TEST_HELPERS_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coil.h"

typedef struct {
	const char *name;
	void (*fn)(void);
} coil_test_t;

/* Runs every test of the table as one CUnit suite; exit status 0 only when
 * all passed. A suite whose kernel feature is missing calls
 * coil_test_skip_suite() from its init. */
int coil_test_main(const char *suite, const coil_test_t *tests, int argc,
		   char **argv);

/* A loop with `workers` workers; fails the test (and aborts the program) if
 * it cannot be created. */
coil_loop_t *t_loop(unsigned workers);
/* The same with options (filled by coil_loop_opts_init first). */
coil_loop_t *t_loop_opts(const coil_loop_opts_t *o);

/* Waits for ip (at most 10 s: a hang fails instead of blocking the suite). */
int t_wait(coil_ip_t *ip);
/* Runs fn(arg) on worker w of loop and waits (10 s at most, then fails the
 * test) until it returned. */
void t_run_on(coil_loop_t *loop, int w, void (*fn)(void *), void *arg);

/* Binds a TCP listener on 127.0.0.1 with an ephemeral port; returns fd and
 * sets *port. */
int t_listen_tcp4(unsigned short *port);
/* Blocking connect to 127.0.0.1:port; returns fd. */
int t_connect_tcp4(unsigned short port);
/* Writes all / reads exactly n with blocking calls (timeouts 10 s). */
int t_write_all(int fd, const void *buf, size_t n);
int t_read_exact(int fd, void *buf, size_t n);

/* Counts the bytes of memory coil itself holds is not observable from here;
 * this returns the process's resident set size in KiB. */
long t_rss_kib(void);
/* Nonzero when the test runs under valgrind (make valgrind). */
int t_on_valgrind(void);

#define T_ASSERT_OK(expr)                                            \
	do {                                                         \
		int t_rc_ = (expr);                                  \
		if (t_rc_ != 0)                                      \
			fprintf(stderr, "%s:%d: %s = %d (%s)\n",     \
				__FILE__, __LINE__, #expr, t_rc_,    \
				coil_strerror(t_rc_));               \
		CU_ASSERT_EQUAL_FATAL(t_rc_, 0);                     \
	} while (0)

#endif
