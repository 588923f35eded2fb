/* SPDX-License-Identifier: MIT */
/* epoll_echo - classic epoll echo server, the readiness-model baseline for coil's benchmarks. */

/*
 *   epoll_echo [--host 127.0.0.1] [--port P] [--threads N]
 *
 * N threads, each with its own SO_REUSEPORT listening socket and its own
 * epoll instance, so the kernel spreads connections and no state is shared.
 * Level-triggered: one recv per readiness event (another event follows if
 * more is queued), written straight back. When the peer does not take the
 * whole echo, the rest is kept, reading stops (EPOLLIN off) and EPOLLOUT is
 * armed until the backlog is gone: memory per connection stays bounded.
 * Runs until killed; prints nothing on the hot path.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RBUF (64 * 1024)

struct conn {
	int fd;
	unsigned pend_len, pend_off; /* unsent tail of the last echo */
	char *pend;
};

static struct in_addr host;
static int port = 7000;

static void fatal(const char *what)
{
	perror(what);
	exit(1);
}

static int listen_socket(void)
{
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons((uint16_t)port),
		.sin_addr = host,
	};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		fatal("socket");
	/* One listener per thread: the kernel load-balances accepts. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
		fatal("setsockopt");
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)))
		fatal("bind");
	if (listen(fd, SOMAXCONN))
		fatal("listen");
	return fd;
}

static void conn_close(struct conn *c)
{
	close(c->fd); /* also removes it from the epoll set */
	free(c->pend);
	free(c);
}

static int conn_events(int ep, struct conn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };

	return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes the pending tail; returns -1 on a fatal error. */
static int flush_pending(int ep, struct conn *c)
{
	while (c->pend_off < c->pend_len) {
		ssize_t n = send(c->fd, c->pend + c->pend_off,
				 c->pend_len - c->pend_off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR)
				continue;
			return -1;
		}
		c->pend_off += (unsigned)n;
	}
	/* All out: back to reading. */
	c->pend_len = c->pend_off = 0;
	return conn_events(ep, c, EPOLLIN);
}

/* One recv and its echo; returns -1 when the connection is finished. */
static int on_readable(int ep, struct conn *c, char *buf)
{
	ssize_t n = recv(c->fd, buf, RBUF, 0), off = 0;

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (n == 0)
		return -1;
	while (off < n) {
		ssize_t w = send(c->fd, buf + off, (size_t)(n - off),
				 MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -1;
			/* Keep the rest, stop reading until it is out. */
			c->pend = realloc(c->pend, (size_t)(n - off));
			if (!c->pend)
				return -1;
			memcpy(c->pend, buf + off, (size_t)(n - off));
			c->pend_len = (unsigned)(n - off);
			c->pend_off = 0;
			return conn_events(ep, c, EPOLLOUT);
		}
		off += w;
	}
	return 0;
}

static void accept_all(int ep, int lfd)
{
	for (;;) {
		int one = 1;
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct epoll_event ev = { .events = EPOLLIN };
		struct conn *c;

		if (fd < 0)
			return; /* EAGAIN, or EMFILE etc.: try again later */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) {
			conn_close(c);
			continue;
		}
	}
}

static void *thread_main(void *arg)
{
	struct epoll_event evs[256], lev = { .events = EPOLLIN };
	int lfd = listen_socket(), ep = epoll_create1(EPOLL_CLOEXEC);
	char *buf = malloc(RBUF);

	(void)arg;
	if (ep < 0 || !buf)
		fatal("setup");
	lev.data.ptr = NULL; /* NULL marks the listener */
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev))
		fatal("epoll_ctl");
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);

		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			int rc;

			if (!c) {
				accept_all(ep, lfd);
				continue;
			}
			if (c->pend_len)
				rc = flush_pending(ep, c);
			else
				rc = on_readable(ep, c, buf);
			if (rc < 0)
				conn_close(c);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *h = "127.0.0.1";
	int threads = 1;
	pthread_t *tids;

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
	if (!tids)
		fatal("calloc");
	for (int t = 0; t < threads; t++)
		if (pthread_create(&tids[t], NULL, thread_main, NULL))
			fatal("pthread_create");
	for (int t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	return 0;
}
