/* SPDX-License-Identifier: MIT */
/* TCP (or Unix) echo server on coil: every byte read is written back.
 *
 *   echo_server [--host 127.0.0.1] [--port 7000] [--listen ADDR] [--threads N]
 *               [--batch-wait US] [--bufs COUNTxSIZE]
 *
 * --listen takes any coil address: "127.0.0.1:7000", "[::1]:7000", ":7000",
 * "7000" or a Unix socket path. --batch-wait sets coil_loop_opts_t's
 * batch_wait_us (0, the default, is off); --bufs its receive pool, e.g.
 * 64x16384 (buf_count x buf_size; the default: 0x0). It runs until SIGINT
 * or SIGTERM.
 */
#include <coil.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The read signal sees each chunk as it arrives (a view into the worker's
 * receive buffer); write_view sends it from that buffer without a copy. The
 * write's handle is dropped at once: a failed write closes the channel, and
 * that is all an echo server needs to know. */
static void write_done(coil_ip_t *ip, void *ud)
{
	/* The channel pauses reading while half its write queue is in use,
	 * so this fails only if the client stops reading while a burst is
	 * still arriving; never drop bytes silently: hang up instead. */
	if (coil_ip_error(ip) == -ENOBUFS)
		coil_channel_close(ud, 1);
}

static void on_read(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	coil_ip_t *w = coil_channel_write_view(ch, data, len);
	if (coil_ip_state(w) == COIL_IP_FAILED)
		coil_ip_on_done(w, write_done, ch);
	coil_ip_unref(w);
}

/* The peer's end of stream closes the channel once its queued writes have
 * drained; then our handle can go. (Releasing it earlier would close the
 * connection.) */
static void on_closed(coil_channel_t *ch, int expected, void *ud)
{
	coil_channel_release(ch);
}

/* Each client lives on the worker that accepted it; so do its callbacks. */
static void on_client(coil_socket_t *listener, coil_socket_t *client, void *ud)
{
	/* Room for what is in flight when the read side pauses (see
	 * write_done). */
	coil_channel_set_queue_size(client, 4u << 20);
	coil_channel_on_read(client, on_read, NULL);
	coil_channel_on_closed(client, on_closed, NULL);
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *listen_addr = NULL;
	int port = 7000;
	unsigned threads = 0, batch_wait = 0, buf_count = 0, buf_size = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--host") && i + 1 < argc)
			host = argv[++i];
		else if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			listen_addr = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--batch-wait") && i + 1 < argc)
			batch_wait = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--bufs") && i + 1 < argc &&
			 sscanf(argv[i + 1], "%ux%u", &buf_count, &buf_size) == 2)
			i++;
		else {
			fprintf(stderr, "usage: %s [--host H] [--port P] "
				"[--listen ADDR] [--threads N] "
				"[--batch-wait US] [--bufs COUNTxSIZE]\n",
				argv[0]);
			return 2;
		}
	}
	char addr[300];
	if (!listen_addr) {
		snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
			 host, port);
		listen_addr = addr;
	}

	/* Block the stop signals before the workers start so that only this
	 * thread receives them (workers block every signal anyway). */
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = threads;
	o.batch_wait_us = batch_wait;
	o.buf_count = buf_count;
	o.buf_size = buf_size;
	coil_loop_t *loop;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "echo_server: %s\n", coil_strerror(rc));
		return 1;
	}
	coil_socket_t *l;
	rc = coil_socket_new(loop, &l);
	if (!rc)
		rc = coil_socket_on_new_client(l, on_client, NULL);
	if (!rc)
		rc = coil_socket_listen(l, listen_addr, 0, 0);
	if (rc) {
		fprintf(stderr, "echo_server: listen %s: %s\n", listen_addr,
			coil_strerror(rc));
		coil_loop_free(loop);
		return 1;
	}
	fprintf(stderr, "echo_server: listening on %s with %u workers\n",
		listen_addr, coil_loop_workers(loop));
	int sig;
	sigwait(&stop, &sig);
	coil_channel_release(l);
	coil_loop_free(loop);
	return 0;
}
