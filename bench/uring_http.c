/* SPDX-License-Identifier: MIT */
/* uring_http - minimal hand-written liburing HTTP/1.1 keep-alive responder: 200 "hello\n" to every request (the io_uring floor for the HTTP scenario). */

/*
 *   uring_http [--host 127.0.0.1] [--port P] [--threads N]
 *
 * Per thread: one ring (SINGLE_ISSUER | DEFER_TASKRUN, else plain), one
 * SO_REUSEPORT listener with a multishot accept, one provided-buffer ring
 * (256 x 4 KiB) feeding every connection's multishot recv. Parsing is the
 * least a keep-alive responder can do, as in epoll_http: a request ends at
 * "\r\n\r\n" (tracked across reads by a 0..3 match state); request bodies
 * are not supported (wrk's GET has none). The buffer goes back to the ring
 * at once; the answers owed are counted per connection and sent from one
 * static buffer of repeated responses, one send in flight per connection.
 * One io_uring_submit_and_wait() per turn; runs until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define BGID 1
#define BUF_SIZE 4096
#define BUF_COUNT 256
#define TAG_ACCEPT 1u
#define TAG_RECV 2u
#define TAG_SEND 3u
#define TAG_MASK 3u
#define MAX_BATCH 64 /* answers per send */

static const char RESPONSE[] =
	"HTTP/1.1 200 OK\r\n"
	"Server: uring_http\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Length: 6\r\n"
	"Connection: keep-alive\r\n"
	"\r\n"
	"hello\n";
#define RLEN (sizeof(RESPONSE) - 1)
static char answers[RLEN * MAX_BATCH];

struct conn {
	int fd;
	unsigned match;     /* bytes of "\r\n\r\n" matched so far */
	unsigned owed;      /* answers not yet handed to a send */
	size_t send_left;   /* bytes of the send in flight still to go */
	size_t send_off;
	bool recv_armed, send_inflight, eof, dead;
};

struct ctx {
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	char *bufs;
	unsigned mask;
	int recycled;
	int lfd;
};

static struct in_addr host;
static int port = 8080;

static void fatal(const char *what, int err)
{
	fprintf(stderr, "uring_http: %s: %s\n", what, strerror(err));
	exit(1);
}

static struct io_uring_sqe *get_sqe(struct ctx *x)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&x->ring);
	if (!sqe) {
		io_uring_submit(&x->ring);
		sqe = io_uring_get_sqe(&x->ring);
		if (!sqe)
			fatal("io_uring_get_sqe", EBUSY);
	}
	return sqe;
}

static void *tagged(struct conn *c, unsigned tag)
{
	return (void *)((uintptr_t)c | tag);
}

static void arm_accept(struct ctx *x)
{
	struct io_uring_sqe *sqe = get_sqe(x);
	io_uring_prep_multishot_accept(sqe, x->lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data(sqe, tagged(NULL, TAG_ACCEPT));
}

static void arm_recv(struct ctx *x, struct conn *c)
{
	struct io_uring_sqe *sqe = get_sqe(x);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	io_uring_sqe_set_data(sqe, tagged(c, TAG_RECV));
	c->recv_armed = true;
}

static void recycle(struct ctx *x, unsigned bid)
{
	io_uring_buf_ring_add(x->br, x->bufs + (size_t)bid * BUF_SIZE,
			      BUF_SIZE, (unsigned short)bid, (int)x->mask,
			      x->recycled++);
}

static void issue_send(struct ctx *x, struct conn *c)
{
	struct io_uring_sqe *sqe = get_sqe(x);
	io_uring_prep_send(sqe, c->fd, answers + c->send_off, c->send_left,
			   MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, tagged(c, TAG_SEND));
	c->send_inflight = true;
}

/* Sends the answers owed, up to MAX_BATCH in one send. */
static void flush(struct ctx *x, struct conn *c)
{
	if (c->send_inflight || !c->owed || c->dead)
		return;
	unsigned n = c->owed < MAX_BATCH ? c->owed : MAX_BATCH;
	c->owed -= n;
	c->send_off = 0;
	c->send_left = n * RLEN;
	issue_send(x, c);
}

static void maybe_close(struct conn *c)
{
	if (c->recv_armed || c->send_inflight)
		return;
	if (!c->dead && !(c->eof && !c->owed))
		return;
	close(c->fd);
	free(c);
}

/* Counts the request heads that end in these bytes. */
static void scan(struct conn *c, const char *p, size_t n)
{
	static const char end[4] = {'\r', '\n', '\r', '\n'};
	unsigned m = c->match;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == end[m]) {
			if (++m == 4) {
				c->owed++;
				m = 0;
			}
		} else {
			m = p[i] == '\r' ? 1 : 0;
		}
	}
	c->match = m;
}

static void on_accept(struct ctx *x, struct io_uring_cqe *cqe)
{
	int one = 1;
	if (!(cqe->flags & IORING_CQE_F_MORE))
		arm_accept(x);
	if (cqe->res < 0)
		return;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(cqe->res);
		return;
	}
	c->fd = cqe->res;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	arm_recv(x, c);
}

static void on_recv(struct ctx *x, struct conn *c, struct io_uring_cqe *cqe)
{
	if (cqe->res > 0) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		if (!c->dead)
			scan(c, x->bufs + (size_t)bid * BUF_SIZE,
			     (size_t)cqe->res);
		recycle(x, bid);
		flush(x, c);
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		return;
	c->recv_armed = false;
	if ((cqe->res > 0 || cqe->res == -ENOBUFS) && !c->dead) {
		arm_recv(x, c); /* buffers come back at the end of the turn */
	} else {
		c->eof = true;
		maybe_close(c);
	}
}

static void on_send(struct ctx *x, struct conn *c, struct io_uring_cqe *cqe)
{
	c->send_inflight = false;
	if (cqe->res <= 0) {
		c->dead = true;
		shutdown(c->fd, SHUT_RDWR);
		maybe_close(c);
		return;
	}
	c->send_off += (size_t)cqe->res;
	c->send_left -= (size_t)cqe->res;
	if (c->send_left)
		issue_send(x, c);
	else
		flush(x, c);
	maybe_close(c);
}

static void setup_buffers(struct ctx *x)
{
	struct io_uring_buf_reg reg = {0};
	size_t ring_bytes = BUF_COUNT * sizeof(struct io_uring_buf);
	x->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (x->br == MAP_FAILED)
		fatal("mmap", errno);
	reg.ring_addr = (uintptr_t)x->br;
	reg.ring_entries = BUF_COUNT;
	reg.bgid = BGID;
	int ret = io_uring_register_buf_ring(&x->ring, &reg, 0);
	if (ret)
		fatal("io_uring_register_buf_ring", -ret);
	io_uring_buf_ring_init(x->br);
	x->bufs = malloc((size_t)BUF_COUNT * BUF_SIZE);
	if (!x->bufs)
		fatal("malloc", ENOMEM);
	x->mask = (unsigned)io_uring_buf_ring_mask(BUF_COUNT);
	for (unsigned i = 0; i < BUF_COUNT; i++)
		recycle(x, i);
	io_uring_buf_ring_advance(x->br, x->recycled);
	x->recycled = 0;
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
	if (fd < 0)
		fatal("socket", errno);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
		fatal("setsockopt", errno);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)))
		fatal("bind", errno);
	if (listen(fd, SOMAXCONN))
		fatal("listen", errno);
	return fd;
}

static void *thread_main(void *arg)
{
	struct ctx *x = arg;
	struct io_uring_params p = {0};
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_CQSIZE;
	p.cq_entries = 8192;
	int ret = io_uring_queue_init_params(256, &x->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = 8192;
		ret = io_uring_queue_init_params(256, &x->ring, &p);
	}
	if (ret)
		fatal("io_uring_queue_init", -ret);
	setup_buffers(x);
	x->lfd = listen_socket();
	arm_accept(x);
	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		ret = io_uring_submit_and_wait(&x->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			fatal("io_uring_submit_and_wait", -ret);
		io_uring_for_each_cqe(&x->ring, head, cqe) {
			uintptr_t ud = (uintptr_t)io_uring_cqe_get_data(cqe);
			struct conn *c = (struct conn *)(ud & ~(uintptr_t)TAG_MASK);
			switch (ud & TAG_MASK) {
			case TAG_ACCEPT:
				on_accept(x, cqe);
				break;
			case TAG_RECV:
				on_recv(x, c, cqe);
				break;
			case TAG_SEND:
				on_send(x, c, cqe);
				break;
			}
			seen++;
		}
		io_uring_cq_advance(&x->ring, seen);
		if (x->recycled) {
			io_uring_buf_ring_advance(x->br, x->recycled);
			x->recycled = 0;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *h = "127.0.0.1";
	int threads = 1;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--host"))
			h = argv[i + 1];
		else if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[i + 1]);
	}
	if (argc % 2 == 0 || inet_pton(AF_INET, h, &host) != 1 || port <= 0 ||
	    port > 65535 || threads < 1 || threads > 256) {
		fprintf(stderr, "usage: %s [--host IPv4] [--port P] [--threads N]\n",
			argv[0]);
		return 2;
	}
	for (unsigned i = 0; i < MAX_BATCH; i++)
		memcpy(answers + i * RLEN, RESPONSE, RLEN);
	signal(SIGPIPE, SIG_IGN);
	struct ctx *xs = calloc((size_t)threads, sizeof(*xs));
	if (!xs)
		fatal("calloc", ENOMEM);
	for (int t = 0; t < threads; t++) {
		pthread_t tid;
		if (pthread_create(&tid, NULL, thread_main, &xs[t]))
			fatal("pthread_create", EAGAIN);
		if (t == threads - 1)
			pthread_join(tid, NULL);
		else
			pthread_detach(tid);
	}
	return 0;
}
