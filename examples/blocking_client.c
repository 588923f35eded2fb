/* SPDX-License-Identifier: MIT */
/* The coro/usocket blocking style from a plain thread: every coil operation
 * returns a handle, and coil_ip_wait blocks this (non-worker) thread on it.
 *
 *   blocking_client ADDR [COUNT]   sends COUNT lines, checks every echo
 */
#include <coil.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Waits and checks: the blocking equivalent of "raise on error". */
static int must(coil_ip_t *ip, const char *what)
{
	if (!ip) {
		fprintf(stderr, "blocking_client: %s: out of memory\n", what);
		return -1;
	}
	int rc = coil_ip_wait(ip, 10000);
	if (!rc)
		rc = coil_ip_error(ip);
	if (rc)
		fprintf(stderr, "blocking_client: %s: %s\n", what,
			rc == -ETIMEDOUT && coil_ip_state(ip) == COIL_IP_PENDING
				? "timed out"
				: coil_ip_message(ip));
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s ADDR [COUNT]\n", argv[0]);
		return 2;
	}
	int count = argc > 2 ? atoi(argv[2]) : 10;
	coil_loop_t *loop;
	if (coil_loop_new(&loop, NULL))
		return 1;
	coil_socket_t *s;
	coil_socket_new(loop, &s);
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
	if (!status)
		printf("blocking_client: %d lines echoed\n", count);
	coil_channel_release(s);
	coil_loop_free(loop);
	return status;
}
