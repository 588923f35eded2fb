/* SPDX-License-Identifier: MIT */
/* The coro/usocket blocking style from a plain thread: every coil operation
 * returns a handle, and coil_ip_wait blocks this (non-worker) thread on it.
 *
 *   blocking_client ADDR [COUNT]   sends COUNT lines, checks every echo
 *
 * SIGINT or SIGTERM abort the operation being waited on; the client then
 * cleans up and exits 0.
 */
#include <coil.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stop.h"

/* The handle main() waits on, for the stop signal to abort. */
static pthread_mutex_t waiting_lock = PTHREAD_MUTEX_INITIALIZER;
static coil_ip_t *waiting;
static bool interrupted;

static void on_stop(int signo, void *ud)
{
	pthread_mutex_lock(&waiting_lock);
	interrupted = true;
	if (waiting)
		coil_ip_abort(waiting);
	pthread_mutex_unlock(&waiting_lock);
}

/* Waits and checks: the blocking equivalent of "raise on error". The
 * message of a failed handle already names the operation ("connect to
 * ADDR: ..."); other messages get what in front. */
static int must(coil_ip_t *ip, const char *what)
{
	if (!ip) {
		fprintf(stderr, "blocking_client: %s: out of memory\n", what);
		return -1;
	}
	pthread_mutex_lock(&waiting_lock);
	waiting = interrupted ? NULL : ip;
	if (interrupted)
		coil_ip_abort(ip);
	pthread_mutex_unlock(&waiting_lock);
	int rc = coil_ip_wait(ip, 10000);
	pthread_mutex_lock(&waiting_lock);
	waiting = NULL;
	pthread_mutex_unlock(&waiting_lock);
	if (!rc)
		rc = coil_ip_error(ip);
	if (rc && interrupted)
		return rc; /* main says so */
	if (rc == -ETIMEDOUT && coil_ip_state(ip) == COIL_IP_PENDING) {
		fprintf(stderr, "blocking_client: %s: no answer in 10 s\n", what);
	} else if (rc) {
		const char *m = coil_ip_message(ip);
		bool named = !strncmp(m, what, strlen(what));
		fprintf(stderr, "blocking_client: %s%s%s\n", named ? "" : what,
			named ? "" : ": ", m);
	}
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s ADDR [COUNT]\n", argv[0]);
		return 2;
	}
	int count = argc > 2 ? atoi(argv[2]) : 10;
	stop_signals_block();
	coil_loop_t *loop;
	int rc = coil_loop_new(&loop, NULL);
	if (rc) {
		fprintf(stderr, "blocking_client: cannot start: %s\n",
			coil_strerror(rc));
		return 1;
	}
	struct stop *st = stop_on_signal(loop, on_stop, NULL);
	coil_socket_t *s;
	rc = coil_socket_new(loop, &s);
	if (rc) {
		fprintf(stderr, "blocking_client: %s\n", coil_strerror(rc));
		coil_loop_free(loop);
		stop_free(st);
		return 1;
	}
	coil_socket_set_timeout(s, 5000); /* usocket settimeout */
	int status = 0;
	coil_ip_t *ip = coil_socket_connect(s, argv[1], 0);
	if (must(ip, "connect"))
		status = 1;
	coil_ip_unref(ip);
	for (int i = 0; i < count && !status; i++) {
		char line[64];
		int n = snprintf(line, sizeof(line), "line %d\n", i);
		ip = coil_channel_write(s, line, (size_t)n); /* sendall */
		if (must(ip, "write"))
			status = 1;
		coil_ip_unref(ip);
		ip = coil_channel_read_exact(s, (size_t)n); /* recv_exact */
		if (!status && must(ip, "read")) {
			status = 1;
		} else if (!status && memcmp(coil_ip_bytes(ip, NULL), line, (size_t)n)) {
			fprintf(stderr, "blocking_client: echo mismatch\n");
			status = 1;
		}
		coil_ip_unref(ip);
	}
	if (interrupted) {
		fprintf(stderr, "blocking_client: interrupted, stopping\n");
		status = 0;
	} else if (!status) {
		printf("blocking_client: %d lines echoed\n", count);
	}
	coil_channel_release(s);
	coil_loop_free(loop);
	stop_free(st);
	return status;
}
