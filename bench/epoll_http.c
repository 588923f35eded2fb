/* SPDX-License-Identifier: MIT */
/* epoll_http - epoll HTTP/1.1 keep-alive responder answering every request with 200 "hello\n" (nginx `return 200` equivalent). */

/*
 *   epoll_http [--host 127.0.0.1] [--port P] [--threads N]
 *
 * The HTTP baseline for the benchmarks: the least work a server can do per
 * keep-alive request. N threads, one SO_REUSEPORT listener and one epoll
 * each. Parsing is minimal on purpose: a request head ends at "\r\n\r\n";
 * a Content-Length body is skipped; "Connection: close" closes after the
 * answer; several pipelined requests in one read get their answers in one
 * send. Heads longer than IN_CAP bytes close the connection. When the peer
 * does not take the answers, reading pauses until they are out.
 * Runs until killed; prints nothing on the hot path.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_CAP 8192

static const char RESPONSE[] =
	"HTTP/1.1 200 OK\r\n"
	"Server: epoll_http\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Length: 6\r\n"
	"Connection: keep-alive\r\n"
	"\r\n"
	"hello\n";
#define RESPONSE_LEN (sizeof(RESPONSE) - 1)

struct conn {
	int fd;
	bool close_after;     /* "Connection: close" seen: close once sent */
	unsigned in_len;      /* bytes in in[] */
	unsigned scanned;     /* in[0..scanned) holds no complete head end */
	size_t body_left;     /* request body bytes still to discard */
	char *out;            /* answers not yet taken by the kernel */
	size_t out_len, out_off, out_cap;
	char in[IN_CAP];
};

static struct in_addr host;
static int port = 8080;

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
	close(c->fd);
	free(c->out);
	free(c);
}

/* Case-insensitive search for header `name` (with its colon) in a head;
 * returns a pointer to its value or NULL. Only looks at line starts. */
static const char *find_header(const char *head, size_t len, const char *name)
{
	size_t nl = strlen(name);

	for (size_t i = 0; i + 2 + nl <= len; i++) {
		if (head[i] != '\n')
			continue;
		if (!strncasecmp(head + i + 1, name, nl)) {
			const char *v = head + i + 1 + nl;

			while (v < head + len && (*v == ' ' || *v == '\t'))
				v++;
			return v;
		}
	}
	return NULL;
}

static int out_append(struct conn *c, const char *p, size_t n)
{
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap * 2 : 4096;
		char *o;

		while (cap < c->out_len + n)
			cap *= 2;
		o = realloc(c->out, cap);
		if (!o)
			return -1;
		c->out = o;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
	return 0;
}

/* Answers every complete request head in c->in; returns -1 on error. */
static int parse(struct conn *c)
{
	unsigned pos = 0;

	for (;;) {
		const char *end;
		unsigned head_len;
		const char *cl;

		if (c->body_left) {
			size_t skip = c->in_len - pos;

			if (skip > c->body_left)
				skip = c->body_left;
			pos += (unsigned)skip;
			c->body_left -= skip;
			if (c->body_left)
				break;
		}
		/* No head end starts before c->scanned (a search that failed
		 * stopped 3 bytes short of the end: the terminator may
		 * straddle two reads), so resume from there. */
		if (c->scanned < pos)
			c->scanned = pos;
		end = memmem(c->in + c->scanned, c->in_len - c->scanned,
			     "\r\n\r\n", 4);
		if (!end) {
			c->scanned = c->in_len >= 3 ? c->in_len - 3 : 0;
			if (c->scanned < pos)
				c->scanned = pos;
			break;
		}
		head_len = (unsigned)(end + 4 - (c->in + pos));
		cl = find_header(c->in + pos, head_len, "content-length:");
		if (cl)
			c->body_left = strtoul(cl, NULL, 10);
		cl = find_header(c->in + pos, head_len, "connection:");
		if (cl && !strncasecmp(cl, "close", 5))
			c->close_after = true;
		if (out_append(c, RESPONSE, RESPONSE_LEN))
			return -1;
		pos += head_len;
		c->scanned = pos;
		if (c->close_after) {
			c->in_len = 0; /* ignore anything after it */
			c->scanned = 0;
			return 0;
		}
	}
	/* Keep the unfinished head at the start of the buffer. */
	memmove(c->in, c->in + pos, c->in_len - pos);
	c->in_len -= pos;
	c->scanned -= pos;
	return 0;
}

/* Sends what is queued: 1 = all out, 0 = kernel buffer full, -1 = error. */
static int flush(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off,
				 c->out_len - c->out_off, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR)
				continue;
			return -1;
		}
		c->out_off += (size_t)n;
	}
	c->out_len = c->out_off = 0;
	return 1;
}

static int set_events(int ep, struct conn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };

	return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Handles one event; returns -1 when the connection is finished. */
static int on_event(int ep, struct conn *c, uint32_t events)
{
	int rc;

	if (c->out_len) {
		/* Waiting for EPOLLOUT: finish the answers first. */
		rc = flush(c);
		if (rc <= 0)
			return rc;
		if (c->close_after)
			return -1;
		return set_events(ep, c, EPOLLIN);
	}
	if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		return 0;
	if (c->in_len == IN_CAP)
		return -1; /* head too large for this minimal server */
	{
		ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);

		if (n < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		if (n == 0)
			return -1;
		c->in_len += (unsigned)n;
	}
	if (parse(c))
		return -1;
	rc = flush(c);
	if (rc < 0)
		return -1;
	if (rc == 0)
		return set_events(ep, c, EPOLLOUT);
	return c->close_after ? -1 : 0;
}

static void accept_all(int ep, int lfd)
{
	for (;;) {
		int one = 1;
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct epoll_event ev = { .events = EPOLLIN };
		struct conn *c;

		if (fd < 0)
			return;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c = malloc(sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		memset(c, 0, offsetof(struct conn, in));
		c->fd = fd;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
			conn_close(c);
	}
}

static void *thread_main(void *arg)
{
	struct epoll_event evs[256], lev = { .events = EPOLLIN };
	int lfd = listen_socket(), ep = epoll_create1(EPOLL_CLOEXEC);

	(void)arg;
	if (ep < 0)
		fatal("epoll_create1");
	lev.data.ptr = NULL;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev))
		fatal("epoll_ctl");
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);

		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (!c)
				accept_all(ep, lfd);
			else if (on_event(ep, c, evs[i].events) < 0)
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
