/* SPDX-License-Identifier: MIT */
/* Promise chaining: connect -> write -> readline -> close, with one error
 * handler at the end of the chain.
 *
 *   chain_client ADDR [LINE]     e.g. chain_client 127.0.0.1:7000 hello
 *
 * Talks to any line echo server (examples/echo_server). Prints the line that
 * came back, or the first error of the chain. SIGINT or SIGTERM abort the
 * chain (aborting it aborts the step it waits on); it then cleans up and
 * exits 0.
 */
#include <coil.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "stop.h"

/* The chain main() waits on, for the stop signal to abort. */
static pthread_mutex_t chain_lock = PTHREAD_MUTEX_INITIALIZER;
static coil_ip_t *chain;
static bool interrupted;

static void on_stop(int signo, void *ud)
{
	pthread_mutex_lock(&chain_lock);
	interrupted = true;
	if (chain)
		coil_ip_abort(chain);
	pthread_mutex_unlock(&chain_lock);
}

struct ctx {
	coil_socket_t *sock;
	const char *line;
	char reply[256];
};

/* Each step returns the handle of the next operation; the chain adopts it,
 * so the steps read top to bottom. An error anywhere skips every on_ok
 * callback and lands in on_error. */
static coil_ip_t *connected(coil_ip_t *src, void *ud)
{
	struct ctx *c = ud;
	char buf[300];
	int n = snprintf(buf, sizeof(buf), "%s\n", c->line);
	return coil_channel_write(c->sock, buf, (size_t)n);
}

static coil_ip_t *written(coil_ip_t *src, void *ud)
{
	struct ctx *c = ud;
	return coil_channel_readline(c->sock);
}

static coil_ip_t *got_line(coil_ip_t *src, void *ud)
{
	struct ctx *c = ud;
	size_t n;
	const char *b = coil_ip_bytes(src, &n);
	if (n >= sizeof(c->reply))
		n = sizeof(c->reply) - 1;
	memcpy(c->reply, b, n);
	c->reply[n] = 0;
	coil_channel_close(c->sock, 0);
	return coil_ip_new_int(coil_ip_loop(src), (int64_t)n);
}

static coil_ip_t *on_error(coil_ip_t *src, void *ud)
{
	if (!interrupted)
		fprintf(stderr, "chain_client: %s\n", coil_ip_message(src));
	return NULL; /* keep the failure: main reports the exit status */
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s ADDR [LINE]\n", argv[0]);
		return 2;
	}
	stop_signals_block();
	coil_loop_t *loop;
	int rc = coil_loop_new(&loop, NULL);
	if (rc) {
		fprintf(stderr, "chain_client: cannot start: %s\n", coil_strerror(rc));
		return 1;
	}
	struct stop *st = stop_on_signal(loop, on_stop, NULL);
	struct ctx c = {.line = argc > 2 ? argv[2] : "hello, coil"};
	rc = coil_socket_new(loop, &c.sock);
	if (rc) {
		fprintf(stderr, "chain_client: %s\n", coil_strerror(rc));
		coil_loop_free(loop);
		stop_free(st);
		return 1;
	}
	coil_ip_t *p = coil_socket_connect(c.sock, argv[1], 0);
	p = coil_ip_then(p, connected, NULL, &c);
	p = coil_ip_then(p, written, NULL, &c);
	p = coil_ip_then(p, got_line, NULL, &c);
	p = coil_ip_catch(p, on_error, &c);
	pthread_mutex_lock(&chain_lock);
	chain = p;
	if (interrupted && p)
		coil_ip_abort(p);
	pthread_mutex_unlock(&chain_lock);
	/* This thread is not a worker, so it may block on the result. */
	int status = 1;
	if (p && coil_ip_wait(p, 10000) == 0 && !coil_ip_error(p)) {
		printf("%s", c.reply);
		status = 0;
	} else if (p && coil_ip_state(p) == COIL_IP_PENDING) {
		fprintf(stderr, "chain_client: no answer in 10 s\n");
	}
	pthread_mutex_lock(&chain_lock);
	chain = NULL;
	pthread_mutex_unlock(&chain_lock);
	if (interrupted) {
		fprintf(stderr, "chain_client: interrupted, stopping\n");
		status = 0;
	}
	coil_ip_unref(p);
	coil_channel_release(c.sock);
	coil_loop_free(loop);
	stop_free(st);
	return status;
}
