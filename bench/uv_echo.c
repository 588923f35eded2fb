/* SPDX-License-Identifier: MIT */
/* uv_echo - libuv echo server, the "established event library" baseline for coil's benchmarks. */

/*
 *   uv_echo [--host 127.0.0.1] [--port P] [--threads N]
 *
 * N threads, each with its own uv_loop_t and its own SO_REUSEPORT listener
 * (libuv 1.44 cannot set SO_REUSEPORT itself, so the socket is made here and
 * handed over with uv_tcp_open). Reads land in one per-loop buffer; the echo
 * is tried with uv_try_write first, and only what the kernel does not take
 * is copied into a heap buffer and queued with uv_write. This is the
 * efficient way to use libuv, so the comparison is not against a strawman.
 * Reading stops while more than QUEUE_MAX bytes wait to be written.
 * Runs until killed; prints nothing on the hot path.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define RBUF (64 * 1024)
#define QUEUE_MAX (1024 * 1024)

struct thread_ctx {
	uv_loop_t loop;
	uv_tcp_t server;
	char buf[RBUF]; /* every read of this loop lands here */
};

struct write_req {
	uv_write_t req;
	char data[]; /* copy of the bytes the kernel did not take at once */
};

static struct in_addr host;
static int port = 7000;

static void fatal(const char *what, int err)
{
	fprintf(stderr, "uv_echo: %s: %s\n", what, uv_strerror(err));
	exit(1);
}

static void on_close(uv_handle_t *h)
{
	free(h);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct thread_ctx *t = h->loop->data;

	(void)suggested;
	*buf = uv_buf_init(t->buf, RBUF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status)
{
	uv_stream_t *s = req->handle;

	free(req);
	if (status < 0) {
		if (!uv_is_closing((uv_handle_t *)s))
			uv_close((uv_handle_t *)s, on_close);
		return;
	}
	/* Resume reading once the backlog is small again. */
	if (!uv_is_closing((uv_handle_t *)s) && !uv_is_readable(s) &&
	    s->write_queue_size < QUEUE_MAX / 2)
		uv_read_start(s, on_alloc, on_read);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	size_t off = 0;
	struct write_req *w;
	uv_buf_t b;

	if (nread < 0) {
		/* EOF or error: queued writes are cancelled by uv_close. */
		uv_close((uv_handle_t *)s, on_close);
		return;
	}
	if (nread == 0)
		return;
	/* Nothing queued: write in place, no copy, no request. */
	if (!s->write_queue_size) {
		b = uv_buf_init(buf->base, (unsigned)nread);
		int n = uv_try_write(s, &b, 1);

		if (n == nread)
			return;
		if (n < 0 && n != UV_EAGAIN) {
			uv_close((uv_handle_t *)s, on_close);
			return;
		}
		if (n > 0)
			off = (size_t)n;
	}
	w = malloc(sizeof(*w) + (size_t)nread - off);
	if (!w) {
		uv_close((uv_handle_t *)s, on_close);
		return;
	}
	memcpy(w->data, buf->base + off, (size_t)nread - off);
	b = uv_buf_init(w->data, (unsigned)((size_t)nread - off));
	if (uv_write(&w->req, s, &b, 1, on_write)) {
		free(w);
		uv_close((uv_handle_t *)s, on_close);
		return;
	}
	if (s->write_queue_size > QUEUE_MAX)
		uv_read_stop(s);
}

static void on_connection(uv_stream_t *server, int status)
{
	uv_tcp_t *c;

	if (status < 0)
		return;
	c = malloc(sizeof(*c));
	if (!c)
		return;
	uv_tcp_init(server->loop, c);
	if (uv_accept(server, (uv_stream_t *)c)) {
		uv_close((uv_handle_t *)c, on_close);
		return;
	}
	uv_tcp_nodelay(c, 1);
	uv_read_start((uv_stream_t *)c, on_alloc, on_read);
}

static int listen_socket(void)
{
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons((uint16_t)port),
		.sin_addr = host,
	};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		perror("uv_echo: listen socket");
		exit(1);
	}
	return fd;
}

static void *thread_main(void *arg)
{
	struct thread_ctx *t = arg;
	int rc;

	if ((rc = uv_loop_init(&t->loop)))
		fatal("uv_loop_init", rc);
	t->loop.data = t;
	uv_tcp_init(&t->loop, &t->server);
	if ((rc = uv_tcp_open(&t->server, listen_socket())))
		fatal("uv_tcp_open", rc);
	if ((rc = uv_listen((uv_stream_t *)&t->server, SOMAXCONN,
			    on_connection)))
		fatal("uv_listen", rc);
	uv_run(&t->loop, UV_RUN_DEFAULT);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *h = "127.0.0.1";
	int threads = 1;
	pthread_t *tids;
	struct thread_ctx *ts;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--host"))
			h = argv[i + 1];
		else if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[i + 1]);
	}
	if (argc % 2 == 0 || inet_pton(AF_INET, h, &host) != 1 ||
	    port <= 0 || port > 65535 || threads < 1 || threads > 256) {
		fprintf(stderr, "usage: %s [--host IPv4] [--port P] "
			"[--threads N]\n", argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	tids = calloc((size_t)threads, sizeof(*tids));
	ts = calloc((size_t)threads, sizeof(*ts));
	if (!tids || !ts)
		fatal("calloc", UV_ENOMEM);
	for (int t = 0; t < threads; t++)
		if (pthread_create(&tids[t], NULL, thread_main, &ts[t]))
			fatal("pthread_create", UV_EAGAIN);
	for (int t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	return 0;
}
