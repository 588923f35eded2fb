/* SPDX-License-Identifier: MIT */
/* allocs - heap allocations per echoed message, counted by coil itself
 * (coil__alloc_total(), alloc.c), on the three echo paths of coil's API:
 *
 *   signal   coil_channel_on_read + coil_channel_write_view (echo_server)
 *   read     coil_channel_read() + coil_ip_on_done + coil_channel_write()
 *   readline coil_channel_readline() + coil_ip_on_done + coil_channel_write()
 *
 *   allocs [N]     N messages per path after 1,000 warm-up ones (default 20,000)
 *
 * One worker serves one end of a Unix stream socketpair; this thread is the
 * client (blocking 64-byte ping-pong, so exactly one message is in flight).
 * Counts are exact, not sampled: allocations made between the first and the
 * last measured message, divided by N. Then the memory of idle connections:
 * 1,000 sockets wrapped with a read signal connected (what echo_server holds
 * per accepted client), as live allocations per connection, beside the
 * sizes of the structures they are. Links libcoil.a (coil__ internals).
 */
#include "internal.h"
#include "sock.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { P_SIGNAL, P_READ, P_READLINE };
static const char *const names[] = {"signal+write_view", "read+write",
				    "readline+write"};

struct srv {
	coil_channel_t *ch;
	int path;
};

static void on_read(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	(void)ud;
	coil_ip_t *w = coil_channel_write_view(ch, data, len);
	coil_ip_unref(w);
}

static void start_read(struct srv *s);

static void on_data(coil_ip_t *ip, void *ud)
{
	struct srv *s = ud;
	size_t len = 0;
	const void *p = coil_ip_bytes(ip, &len);
	if (coil_ip_state(ip) != COIL_IP_FINISHED || !len)
		return; /* closed */
	coil_ip_unref(coil_channel_write(s->ch, p, len));
	start_read(s);
}

static void start_read(struct srv *s)
{
	coil_ip_t *r = s->path == P_READ ? coil_channel_read(s->ch)
					 : coil_channel_readline(s->ch);
	if (!r)
		return;
	coil_ip_on_done(r, on_data, s);
	coil_ip_unref(r);
}

static void start_task(void *arg)
{
	struct srv *s = arg;
	if (s->path == P_SIGNAL)
		coil_channel_on_read(s->ch, on_read, NULL);
	else
		start_read(s);
}

static void nop_read(coil_channel_t *ch, const void *data, size_t len,
		     void *ud)
{
	(void)ch;
	(void)data;
	(void)len;
	(void)ud;
}

static void connect_signal(void *arg)
{
	coil_channel_on_read(arg, nop_read, NULL);
}

/* Live allocations per idle socket, and the structures behind them. */
static int idle_memory(coil_loop_t *loop)
{
	enum { N = 1000 };
	static coil_socket_t *socks[N];
	static int peers[N];
	size_t live0 = coil__alloc_live();
	for (int i = 0; i < N; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) ||
		    coil_socket_wrap(loop, sv[0], &socks[i]) ||
		    coil_loop_post(loop, 0, connect_signal, socks[i]))
			return 1;
		peers[i] = sv[1];
	}
	/* One more round trip through the worker: every signal connected. */
	coil_ip_t *ip = coil_sleep(loop, 1);
	coil_ip_wait(ip, -1);
	coil_ip_unref(ip);
	size_t live1 = coil__alloc_live();
	printf("idle sockets (read signal connected, %d of them): %.2f live "
	       "allocations per socket\n", N, (double)(live1 - live0) / N);
	printf("  sizeof(struct coil_channel_s) %zu B, sizeof(struct coil__sock) "
	       "%zu B\n", sizeof(struct coil_channel_s), sizeof(struct coil__sock));
	for (int i = 0; i < N; i++) {
		coil_channel_release(socks[i]);
		close(peers[i]);
	}
	return 0;
}

static int pingpong(int fd, long n)
{
	char out[64], in[64];
	memset(out, 'x', sizeof(out));
	out[63] = '\n';
	for (long i = 0; i < n; i++) {
		if (write(fd, out, sizeof(out)) != (ssize_t)sizeof(out))
			return -1;
		size_t got = 0;
		while (got < sizeof(in)) {
			ssize_t r = read(fd, in + got, sizeof(in) - got);
			if (r <= 0)
				return -1;
			got += (size_t)r;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 20000;
	if (n <= 0)
		n = 20000;
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	coil_loop_t *loop;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "allocs: coil_loop_new: %s (%s)\n", strerror(-rc),
			coil_loop_last_error());
		return 1;
	}
	printf("heap allocations per echoed 64-byte message (coil__alloc_total, "
	       "%ld messages, one in flight)\n", n);
	int status = 0;
	for (int path = P_SIGNAL; path <= P_READLINE; path++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			return 1;
		/* Static: callbacks may still run after the release. */
		static struct srv srvs[3];
		struct srv *s = &srvs[path];
		s->path = path;
		if (coil_channel_wrap(loop, sv[0], COIL_IO_READ | COIL_IO_WRITE,
				      &s->ch) ||
		    coil_loop_post(loop, 0, start_task, s))
			return 1;
		if (pingpong(sv[1], 1000)) {
			status = 1;
			break;
		}
		uint64_t a0 = coil__alloc_total();
		if (pingpong(sv[1], n)) {
			status = 1;
			break;
		}
		uint64_t a1 = coil__alloc_total();
		printf("  %-18s %6.2f allocations/message\n", names[path],
		       (double)(a1 - a0) / (double)n);
		close(sv[1]);
		coil_channel_release(s->ch);
	}
	if (!status)
		status = idle_memory(loop);
	coil_loop_free(loop);
	return status;
}
