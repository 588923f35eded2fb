/* SPDX-License-Identifier: MIT */
/* relay - a TCP relay on coil for the benchmarks: each client is relayed to
 * an upstream server with coil_channel_relay() both ways.
 *
 *   relay --upstream HOST:PORT [--host 127.0.0.1] [--port 7001] [--threads N]
 *
 * For each accepted client, a socket is created on the worker that accepted
 * it (so both channels share a home worker and the relay is zero-copy),
 * connected to the upstream, then coil_channel_relay(client, up) and
 * coil_channel_relay(up, client) move the bytes. The end of one direction is
 * passed on as shutdown(SHUT_WR) to the other side; a failed direction (a
 * reset, a closed destination) closes both at once. Both sockets are
 * released once both directions have settled. Runs until SIGINT or SIGTERM.
 *
 * bench/run.sh (scenario "relay") puts loadgen --mode bulk in front and an
 * echo server behind, and measures this process's CPU per MB.
 */
#include <coil.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static coil_loop_t *loop;
static const char *upstream;

/* One client and its upstream; everything runs on their shared worker. */
struct conn {
	coil_socket_t *client, *up;
	coil_ip_t *fwd, *back; /* client -> up, up -> client */
	int settled;           /* directions settled (2: release) */
};

static void conn_free(struct conn *c)
{
	if (c->fwd)
		coil_ip_unref(c->fwd);
	if (c->back)
		coil_ip_unref(c->back);
	coil_channel_release(c->client);
	coil_channel_release(c->up);
	free(c);
}

static void shut_done(coil_ip_t *ip, void *ud)
{
	(void)ip;
	(void)ud; /* a failed shutdown shows up as the other relay's end */
}

/* One direction settled: pass its end of stream on to the destination as a
 * half close (the echo behind sends the rest back, then ends too), or, on a
 * failure, close both sides at once so the other direction ends as well. */
static void dir_done(coil_ip_t *ip, coil_socket_t *dst, struct conn *c)
{
	if (coil_ip_error(ip) == 0) {
		coil_ip_t *s = coil_socket_shutdown(dst, SHUT_WR);
		if (s) {
			coil_ip_on_done(s, shut_done, NULL);
			coil_ip_unref(s);
		}
	} else {
		coil_channel_close(c->client, 1);
		coil_channel_close(c->up, 1);
	}
	if (++c->settled == 2)
		conn_free(c);
}

static void fwd_done(coil_ip_t *ip, void *ud)
{
	struct conn *c = ud;
	dir_done(ip, c->up, c);
}

static void back_done(coil_ip_t *ip, void *ud)
{
	struct conn *c = ud;
	dir_done(ip, c->client, c);
}

/* Starts one direction. Without memory for it (NULL handle or callback),
 * its callback never runs: it counts as settled now, and both sides close
 * at once so that the other direction ends too. */
static void start_dir(struct conn *c, coil_ip_t **slot, coil_socket_t *src,
		      coil_socket_t *dst, coil_done_cb cb)
{
	*slot = coil_channel_relay(src, dst);
	if (*slot && !coil_ip_on_done(*slot, cb, c))
		return; /* cb may have run already (and freed c) */
	fprintf(stderr, "relay: out of memory\n");
	coil_channel_close(c->client, 1);
	coil_channel_close(c->up, 1);
	if (++c->settled == 2)
		conn_free(c);
}

static void connected(coil_ip_t *ip, void *ud)
{
	struct conn *c = ud;
	if (coil_ip_error(ip)) {
		fprintf(stderr, "relay: connect %s: %s\n", upstream,
			coil_ip_message(ip));
		conn_free(c);
		return;
	}
	/* Neither callback can end c before both were started: each
	 * direction counts once, and conn_free needs two. */
	start_dir(c, &c->fwd, c->client, c->up, fwd_done);
	start_dir(c, &c->back, c->up, c->client, back_done);
}

/* Runs on the worker that accepted client: the upstream socket is made
 * here, so it gets the same home worker (coil_socket_new picks the calling
 * worker). */
static void on_client(coil_socket_t *listener, coil_socket_t *client, void *ud)
{
	(void)listener;
	(void)ud;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		coil_channel_release(client);
		return;
	}
	c->client = client;
	if (coil_socket_new(loop, &c->up)) {
		coil_channel_release(client);
		free(c);
		return;
	}
	/* Half closes pass through: a side's end of stream must not close it
	 * while the other direction still writes to it. */
	coil_channel_set_close_on_eof(client, 0);
	coil_channel_set_close_on_eof(c->up, 0);
	coil_ip_t *ip = coil_socket_connect(c->up, upstream, 0);
	if (!ip || coil_ip_on_done(ip, connected, c)) {
		if (ip)
			coil_ip_unref(ip);
		coil_channel_release(c->up);
		coil_channel_release(client);
		free(c);
		return;
	}
	coil_ip_unref(ip);
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1";
	int port = 7001;
	unsigned threads = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--host") && i + 1 < argc)
			host = argv[++i];
		else if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--upstream") && i + 1 < argc)
			upstream = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = (unsigned)atoi(argv[++i]);
		else
			upstream = NULL, i = argc;
	}
	if (!upstream) {
		fprintf(stderr, "usage: %s --upstream HOST:PORT [--host H] "
			"[--port P] [--threads N]\n", argv[0]);
		return 2;
	}
	char addr[300];
	snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
		 host, port);

	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = threads;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "relay: %s\n", coil_strerror(rc));
		return 1;
	}
	coil_socket_t *l;
	rc = coil_socket_new(loop, &l);
	if (!rc)
		rc = coil_socket_on_new_client(l, on_client, NULL);
	if (!rc)
		rc = coil_socket_listen(l, addr, 0, 0);
	if (rc) {
		fprintf(stderr, "relay: listen %s: %s\n", addr,
			coil_strerror(rc));
		coil_loop_free(loop);
		return 1;
	}
	fprintf(stderr, "relay: %s -> %s with %u workers\n", addr, upstream,
		coil_loop_workers(loop));
	int sig;
	sigwait(&stop, &sig);
	coil_channel_release(l);
	coil_loop_free(loop);
	return 0;
}
