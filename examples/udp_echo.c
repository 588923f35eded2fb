/* SPDX-License-Identifier: MIT */
/* UDP echo server: each datagram goes back to its sender.
 *
 *   udp_echo [--bind 127.0.0.1:7001] [--count N]
 *
 * Serves N datagrams (0: until stopped) from one worker, driving the chain
 * recvfrom -> sendto -> recvfrom from callbacks. SIGINT or SIGTERM stop it
 * cleanly (exit 0): the signal arrives on the worker through a signalfd
 * monitor and settles the handle main() waits on.
 */
#include <coil.h>

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stop.h"

struct server {
	coil_socket_t *sock;
	long left; /* datagrams still to serve; < 0 = no limit */
	coil_ip_t *done;
};

static void receive(struct server *sv);

static void sent(coil_ip_t *ip, void *ud)
{
	receive(ud);
}

static void received(coil_ip_t *ip, void *ud)
{
	struct server *sv = ud;
	if (coil_ip_error(ip)) {
		coil_ip_finish_int(sv->done, coil_ip_error(ip));
		return;
	}
	if (coil_ip_state(sv->done) != COIL_IP_PENDING)
		return; /* stopped */
	coil_datagram_t *d = coil_ip_ptr(ip);
	coil_ip_t *s = coil_socket_sendto_sa(sv->sock, d->data, d->len,
					     (struct sockaddr *)&d->from,
					     d->fromlen);
	if (sv->left > 0)
		sv->left--;
	coil_ip_on_done(s, sent, sv);
	coil_ip_unref(s);
}

static void on_stop(int signo, void *ud)
{
	struct server *sv = ud;
	fprintf(stderr, "udp_echo: stopping (%s)\n",
		signo == SIGINT ? "SIGINT" : "SIGTERM");
	coil_ip_finish_int(sv->done, 0); /* -EALREADY if it just ended */
}

static void receive(struct server *sv)
{
	if (sv->left == 0) {
		coil_ip_finish_int(sv->done, 0);
		return;
	}
	if (coil_ip_state(sv->done) != COIL_IP_PENDING)
		return; /* stopped */
	coil_ip_t *r = coil_socket_recvfrom(sv->sock, 65536);
	coil_ip_on_done(r, received, sv);
	coil_ip_unref(r);
}

static void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [--bind ADDR (127.0.0.1:7001)] [--count N (0: no limit)]\n",
		argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *bind_addr = "127.0.0.1:7001";
	long count = 0;
	for (int i = 1; i < argc; i += 2) {
		if (i + 1 >= argc)
			usage(argv[0]);
		if (!strcmp(argv[i], "--bind"))
			bind_addr = argv[i + 1];
		else if (!strcmp(argv[i], "--count"))
			count = atol(argv[i + 1]);
		else
			usage(argv[0]);
	}
	stop_signals_block();
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	coil_loop_t *loop;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "udp_echo: cannot start: %s\n", coil_strerror(rc));
		return 1;
	}
	coil_addr_t a;
	rc = coil_addr_parse(bind_addr, COIL_ADDR_LISTEN, &a);
	if (rc) {
		fprintf(stderr, "udp_echo: %s: %s\n", bind_addr, a.error);
		coil_loop_free(loop);
		return 1;
	}
	struct server sv = {.left = count ? count : -1, .done = coil_ip_new(loop)};
	rc = sv.done ? coil_socket_new_dgram(loop, a.ss.ss_family, &sv.sock)
		     : -ENOMEM;
	if (!rc)
		rc = coil_socket_bind(sv.sock, bind_addr, 0);
	struct stop *st = NULL;
	if (!rc && !(st = stop_on_signal(loop, on_stop, &sv)))
		rc = -errno;
	if (rc) {
		fprintf(stderr, "udp_echo: cannot bind %s: %s\n", bind_addr,
			coil_strerror(rc));
		if (sv.sock)
			coil_channel_release(sv.sock);
		coil_ip_unref(sv.done);
		coil_loop_free(loop);
		stop_free(st);
		return 1;
	}
	fprintf(stderr, "udp_echo: on %s\n", bind_addr);
	receive(&sv);
	coil_ip_wait(sv.done, -1);
	rc = (int)coil_ip_int(sv.done);
	coil_channel_release(sv.sock); /* a pending recvfrom fails: ignored */
	coil_loop_free(loop);
	coil_ip_unref(sv.done);
	stop_free(st);
	return rc ? 1 : 0;
}
