/* SPDX-License-Identifier: MIT */
/* uring_echo - minimal hand-written liburing echo server: the "floor" coil's abstractions are measured against. */

/*
 *   uring_echo [--host 127.0.0.1] [--port P] [--threads N]
 *              [--buf-size BYTES] [--buf-count N] [--upstream IPv4:PORT]
 *
 * Per thread: one ring (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN, falling
 * back to plain flags on kernels without them), one SO_REUSEPORT listener
 * with a multishot accept, and one provided-buffer ring (default 256 buffers
 * of 32 KiB) that every connection's multishot recv draws from.
 *
 * A received buffer is sent back as is (no copy) and goes back to the buffer
 * ring when its send completes. Each connection has at most one send in
 * flight; buffers received meanwhile wait in a FIFO linked through the
 * per-buffer next[] array, so queueing costs no memory per connection and
 * cannot overflow (a buffer is in at most one queue). Short sends are
 * resumed from where they stopped.
 *
 * When the buffer ring runs dry the kernel ends a multishot recv with
 * -ENOBUFS; the connection is parked and re-armed once buffers come back.
 * One io_uring_submit_and_wait() per loop turn; runs until killed and prints
 * nothing on the hot path.
 *
 * --upstream makes it the relay floor (bench/run.sh's "relay" scenario):
 * each client gets a connection to the upstream (a blocking connect(2) on
 * accept: loopback), and what one side receives is sent, from the same
 * buffer, on the other. A side's end of stream becomes shutdown(SHUT_WR) on
 * the other once the bytes before it are sent; the pair is freed when both
 * directions ended, or when a send fails. No flow control beyond the
 * buffer ring (a slow side holds buffers until the ring runs dry).
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
/* user_data = pointer | tag; struct conn is malloc'ed, so 8-byte aligned. */
#define TAG_ACCEPT 1u
#define TAG_RECV 2u
#define TAG_SEND 3u
#define TAG_MASK 3u

struct conn {
	int fd;
	int32_t head, tail;  /* queued buffer ids, -1 = none */
	uint32_t head_off;   /* bytes of the head buffer already sent */
	bool recv_armed;     /* a multishot recv is live */
	bool send_inflight;
	bool eof;            /* peer finished sending (or recv failed) */
	bool dead;           /* send failed: drop everything, then close */
	bool stalled;        /* parked on ctx->stalled waiting for buffers */
	bool shut;           /* relay: shutdown(SHUT_WR) passed on to fd */
	struct conn *stall_next;
	struct conn *peer;   /* relay: the other side (NULL: echo) */
};

struct ctx {
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	char *bufs;
	int32_t *next;        /* FIFO link per buffer id */
	uint32_t *len;        /* bytes received into each buffer */
	unsigned mask;
	int recycled;         /* buffers added since the last advance */
	int lfd;
	struct conn *stalled; /* connections waiting for free buffers */
};

static struct in_addr host;
static int port = 7000;
static struct sockaddr_in upstream; /* relay mode when sin_port != 0 */
static unsigned buf_size = 32768, buf_count = 256;

static void fatal(const char *what, int err)
{
	fprintf(stderr, "uring_echo: %s: %s\n", what, strerror(err));
	exit(1);
}

static struct io_uring_sqe *get_sqe(struct ctx *x)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&x->ring);

	if (!sqe) {
		/* SQ full: push what is queued, then there is room. */
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

/* Hands buffer bid back to the kernel; made visible at the next advance. */
static void recycle(struct ctx *x, int32_t bid)
{
	io_uring_buf_ring_add(x->br, x->bufs + (size_t)bid * buf_size,
			      buf_size, (unsigned short)bid, (int)x->mask,
			      x->recycled++);
}

static void start_send(struct ctx *x, struct conn *c)
{
	struct io_uring_sqe *sqe = get_sqe(x);
	int32_t bid = c->head;

	io_uring_prep_send(sqe, c->fd,
			   x->bufs + (size_t)bid * buf_size + c->head_off,
			   x->len[bid] - c->head_off, MSG_NOSIGNAL);
	io_uring_sqe_set_data(sqe, tagged(c, TAG_SEND));
	c->send_inflight = true;
}

static void drop_queue(struct ctx *x, struct conn *c)
{
	while (c->head >= 0) {
		int32_t bid = c->head;

		c->head = x->next[bid];
		recycle(x, bid);
	}
	c->tail = -1;
	c->head_off = 0;
}

static bool idle(const struct conn *c)
{
	return !c->recv_armed && !c->send_inflight && !c->stalled;
}

/* Relay: c's source (its peer) ended and everything it sent went out on
 * c: pass the end on. */
static void pass_eof(struct conn *c)
{
	if (c->peer && c->peer->eof && c->head < 0 && !c->send_inflight &&
	    !c->shut && !c->dead) {
		c->shut = true;
		shutdown(c->fd, SHUT_WR);
	}
}

/* Frees c (and its peer) once nothing of it is left in the kernel. In
 * relay mode a side's queue holds what it is to send (received from its
 * peer), so the pair is done once both ended and both queues are empty. */
static void maybe_close(struct ctx *x, struct conn *c)
{
	struct conn *p = c->peer;

	if (p) {
		if (!idle(c) || !idle(p))
			return;
		if (!c->dead && !p->dead &&
		    !(c->eof && p->eof && c->head < 0 && p->head < 0))
			return;
		drop_queue(x, p);
		close(p->fd);
		free(p);
	} else {
		if (!idle(c))
			return;
		if (!c->dead && !(c->eof && c->head < 0))
			return;
	}
	drop_queue(x, c);
	close(c->fd);
	free(c);
}

/* Relay: a send failed or a side broke: both sides stop. */
static void kill_pair(struct ctx *x, struct conn *c)
{
	struct conn *sides[2] = { c, c->peer };

	for (int i = 0; i < 2; i++) {
		sides[i]->dead = true;
		/* A buffer being sent stays until its send completes. */
		if (!sides[i]->send_inflight)
			drop_queue(x, sides[i]);
		shutdown(sides[i]->fd, SHUT_RDWR);
	}
	maybe_close(x, c);
}

static void on_accept(struct ctx *x, struct io_uring_cqe *cqe)
{
	int one = 1;
	struct conn *c;

	if (!(cqe->flags & IORING_CQE_F_MORE))
		arm_accept(x); /* the multishot ended (error, overflow) */
	if (cqe->res < 0)
		return; /* e.g. EMFILE: keep serving the others */
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(cqe->res);
		return;
	}
	c->fd = cqe->res;
	c->head = c->tail = -1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (upstream.sin_port) {
		struct conn *u = calloc(1, sizeof(*u));
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (!u || fd < 0 ||
		    connect(fd, (struct sockaddr *)&upstream,
			    sizeof(upstream))) {
			perror("uring_echo: upstream");
			if (fd >= 0)
				close(fd);
			free(u);
			close(c->fd);
			free(c);
			return;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		u->fd = fd;
		u->head = u->tail = -1;
		u->peer = c;
		c->peer = u;
		arm_recv(x, u);
	}
	arm_recv(x, c);
}

static void on_recv(struct ctx *x, struct conn *c, struct io_uring_cqe *cqe)
{
	/* Echo: back on c; relay: on to the other side. */
	struct conn *out = c->peer ? c->peer : c;

	if (cqe->res > 0) {
		int32_t bid = (int32_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);

		if (c->dead) {
			recycle(x, bid);
		} else {
			x->len[bid] = (uint32_t)cqe->res;
			x->next[bid] = -1;
			if (out->tail >= 0)
				x->next[out->tail] = bid;
			else
				out->head = bid;
			out->tail = bid;
			if (!out->send_inflight)
				start_send(x, out);
		}
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		return;
	c->recv_armed = false;
	if (cqe->res == -ENOBUFS && !c->dead) {
		/* Buffer ring empty: wait for sends to give some back. */
		c->stalled = true;
		c->stall_next = x->stalled;
		x->stalled = c;
	} else if (cqe->res > 0 && !c->dead) {
		arm_recv(x, c); /* ended for another reason, data still flows */
	} else if (c->peer && cqe->res < 0 && !c->dead) {
		c->eof = true;
		kill_pair(x, c); /* a broken side: stop both */
	} else {
		c->eof = true; /* 0 = peer closed; < 0 = error */
		if (c->peer)
			pass_eof(c->peer);
		maybe_close(x, c);
	}
}

static void on_send(struct ctx *x, struct conn *c, struct io_uring_cqe *cqe)
{
	c->send_inflight = false;
	if (c->dead) { /* relay: the pair was stopped meanwhile */
		drop_queue(x, c);
		maybe_close(x, c);
		return;
	}
	if (cqe->res < 0) {
		/* The peer is gone: drop the queue and make the multishot
		 * recv finish so the connection can be freed. */
		if (c->peer) {
			kill_pair(x, c);
			return;
		}
		c->dead = true;
		drop_queue(x, c);
		shutdown(c->fd, SHUT_RDWR);
		maybe_close(x, c);
		return;
	}
	c->head_off += (uint32_t)cqe->res;
	if (c->head_off >= x->len[c->head]) {
		int32_t bid = c->head;

		c->head = x->next[bid];
		if (c->head < 0)
			c->tail = -1;
		c->head_off = 0;
		recycle(x, bid);
	}
	/* Either the rest of a short send or the next queued buffer. */
	if (c->head >= 0) {
		start_send(x, c);
	} else {
		pass_eof(c);
		maybe_close(x, c);
	}
}

static void setup_buffers(struct ctx *x)
{
	struct io_uring_buf_reg reg = { 0 };
	size_t ring_bytes = (size_t)buf_count * sizeof(struct io_uring_buf);
	int ret;

	/* The buffer ring must be page aligned: mmap gives that. */
	x->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (x->br == MAP_FAILED)
		fatal("mmap", errno);
	reg.ring_addr = (uintptr_t)x->br;
	reg.ring_entries = buf_count;
	reg.bgid = BGID;
	ret = io_uring_register_buf_ring(&x->ring, &reg, 0);
	if (ret)
		fatal("io_uring_register_buf_ring", -ret);
	io_uring_buf_ring_init(x->br);

	x->bufs = malloc((size_t)buf_count * buf_size);
	x->next = calloc(buf_count, sizeof(*x->next));
	x->len = calloc(buf_count, sizeof(*x->len));
	if (!x->bufs || !x->next || !x->len)
		fatal("malloc", ENOMEM);
	x->mask = (unsigned)io_uring_buf_ring_mask(buf_count);
	for (unsigned i = 0; i < buf_count; i++)
		recycle(x, (int32_t)i);
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

static void ring_init(struct ctx *x)
{
	struct io_uring_params p = { 0 };
	int ret;

	/* The ring is created on the thread that will submit to it: that is
	 * what SINGLE_ISSUER requires, and DEFER_TASKRUN runs completion work
	 * only when this thread enters the kernel, i.e. in batches. */
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_CQSIZE;
	p.cq_entries = 8192;
	ret = io_uring_queue_init_params(256, &x->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = 8192;
		fprintf(stderr, "uring_echo: no DEFER_TASKRUN here, plain ring\n");
		ret = io_uring_queue_init_params(256, &x->ring, &p);
	}
	if (ret)
		fatal("io_uring_queue_init", -ret);
}

static void *thread_main(void *arg)
{
	struct ctx *x = arg;

	ring_init(x);
	setup_buffers(x);
	x->lfd = listen_socket();
	arm_accept(x);

	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int ret = io_uring_submit_and_wait(&x->ring, 1);

		if (ret < 0 && ret != -EINTR && ret != -EAGAIN &&
		    ret != -EBUSY)
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

		/* Publish the buffers freed this turn in one store, then
		 * restart the receivers that were waiting for them. */
		if (x->recycled) {
			io_uring_buf_ring_advance(x->br, x->recycled);
			x->recycled = 0;
			while (x->stalled) {
				struct conn *c = x->stalled;

				x->stalled = c->stall_next;
				c->stalled = false;
				if (c->dead)
					maybe_close(x, c);
				else
					arm_recv(x, c);
			}
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	const char *h = "127.0.0.1";
	int threads = 1;
	struct ctx *xs;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--host"))
			h = argv[i + 1];
		else if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--buf-size"))
			buf_size = (unsigned)strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--buf-count"))
			buf_count = (unsigned)strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--upstream")) {
			char a[64], *colon;

			snprintf(a, sizeof(a), "%s", argv[i + 1]);
			colon = strrchr(a, ':');
			if (!colon)
				argc = 0; /* usage */
			else {
				*colon = 0;
				upstream.sin_family = AF_INET;
				upstream.sin_port = htons((uint16_t)atoi(colon + 1));
				if (inet_pton(AF_INET, a, &upstream.sin_addr) != 1 ||
				    !upstream.sin_port)
					argc = 0;
			}
		} else
			argc = 0;
	}
	/* Buffer ids are 16 bits and the ring size a power of two. */
	if (argc % 2 == 0 || inet_pton(AF_INET, h, &host) != 1 ||
	    port <= 0 || port > 65535 || threads < 1 || threads > 256 ||
	    buf_size < 64 || buf_size > (1u << 24) || buf_count < 1 ||
	    buf_count > 32768 || (buf_count & (buf_count - 1))) {
		fprintf(stderr, "usage: %s [--host IPv4] [--port P] "
			"[--threads N] [--buf-size B] [--buf-count N (2^k)] "
			"[--upstream IPv4:PORT]\n",
			argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	xs = calloc((size_t)threads, sizeof(*xs));
	if (!xs)
		fatal("calloc", ENOMEM);
	for (int t = 0; t < threads; t++) {
		pthread_t tid;

		if (pthread_create(&tid, NULL, thread_main, &xs[t]))
			fatal("pthread_create", EAGAIN);
		if (t == threads - 1)
			pthread_join(tid, NULL); /* never returns */
		else
			pthread_detach(tid);
	}
	return 0;
}
