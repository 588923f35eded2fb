/* SPDX-License-Identifier: MIT */
/* coil_socket (kaa Socket, coro sock, usocket): the socket object, its
 * forwarding to the home worker, shutdown, wrap, socketpair and state.
 * Connect is in connect.c, listen/accept in listener.c, datagrams in udp.c,
 * options in sockopt.c. */
#include "internal.h"
#include "sock.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/*
 * A socket is a channel (channel.c does all stream I/O) plus this state.
 * Connect runs on the home worker: the address is parsed, names resolve on
 * the resolver thread (resolver.c), then attempts start in order with a 250 ms
 * head start each (RFC 8305): the first to connect wins and the others are
 * cancelled. A listener owns one shard per worker (TCP, SO_REUSEPORT) or one
 * shard on its home worker (Unix); each shard runs a multishot accept on its
 * own worker, so accepted clients live where they were accepted.
 */

/* The socket state of a socket made or wrapped here lives in the channel's
 * own allocation, right after the channel (one allocation per socket). */
static inline struct coil__sock *sock_inline(coil_channel_t *ch)
{
	return (struct coil__sock *)(ch + 1);
}

_Static_assert(sizeof(struct coil_channel_s) % _Alignof(struct coil__sock) == 0,
	       "the socket state after the channel is aligned");

/* The channel's free hook (has_sock set). */
void coil__sock_free(coil_channel_t *ch)
{
	struct coil__sock *s = S(ch);
	if (s->vreg)
		coil__sock_vreg_forget(ch);
	struct coil__sockx *x = coil__sock_xq(s);
	if (x) {
		coil__sock_stash_free(s);
		coil__free(x);
	}
	ch->has_sock = false;
}

/* The channel's close hook: ends a connect, fails a waiting shutdown, then
 * closes the listener part. Runs on the home worker. */
void coil__sock_closing(coil_channel_t *ch)
{
	struct coil__sock *s = S(ch);
	struct coil__sockx *x = s ? coil__sock_xq(s) : NULL;
	if (!x)
		return; /* never connected, listened, bound nor shut down */
	if (x->conn) {
		if (ch->w->stopping)
			coil__sock_conn_close(s, -ECANCELED,
					      "connect cancelled: loop stopped");
		else
			coil__sock_conn_close(s, -EBADF,
					      "socket closed while connecting");
	}
	if (x->shut_ip) {
		coil__ip_fail_msg(x->shut_ip, -EBADF, "socket closed");
		coil_ip_unref(x->shut_ip);
		x->shut_ip = NULL;
	}
	coil__sock_listener_close(ch);
	coil__sock_rx_close(ch); /* udp.c: waiting receives */
	/* A Unix datagram socket's bound path goes with it, as a listener's
	 * does (it stayed behind). */
	if (x->unix_path[0]) {
		unlink(x->unix_path);
		x->unix_path[0] = 0;
	}
}

struct coil__sockx *coil__sock_x(struct coil__sock *s)
{
	struct coil__sockx *x = coil__sock_xq(s);
	if (x)
		return x;
	struct coil__sockx *n = coil__calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->stash_tail = &n->stash_head;
	if (atomic_compare_exchange_strong_explicit(&s->x, &x, n,
						    memory_order_acq_rel,
						    memory_order_acquire))
		return n;
	coil__free(n); /* another thread made it first: x is theirs */
	return x;
}

static void sock_init(coil_channel_t *ch)
{
	struct coil__sock *s = sock_inline(ch);
	s->nodelay = s->keepalive = s->reuseaddr = -1;
	s->type = SOCK_STREAM;
	ch->has_sock = true;
}

int coil__sock_channel_new(coil__worker *w, coil_channel_t **out)
{
	coil_channel_t *ch;
	int rc = coil__channel_new_sized(
		w, sizeof(struct coil_channel_s) + sizeof(struct coil__sock), &ch);
	if (rc)
		return rc;
	sock_init(ch);
	*out = ch;
	return 0;
}

int coil_socket_new(coil_loop_t *loop, coil_socket_t **out)
{
	if (!loop || !out)
		return -EINVAL;
	coil_channel_t *ch;
	int rc = coil__sock_channel_new(coil__pick_worker(loop), &ch);
	if (rc)
		return rc;
	atomic_store(&ch->sock_unconnected, true); /* reads: -ENOTCONN */
	/* Listed for loop stop from the start: a socket that is never used,
	 * or is still connecting, is closed and freed by coil_loop_free. */
	coil__channel_register(ch);
	*out = ch;
	return 0;
}

/* Applies the remembered options to a fresh descriptor. */
void coil__sock_apply_opts(struct coil__sock *s, int fd)
{
	int one = 1;
	if (s->bufsize > 0) {
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s->bufsize,
			   sizeof(s->bufsize));
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s->bufsize,
			   sizeof(s->bufsize));
	}
	int reuse = s->reuseaddr, alive = s->keepalive;
	int nodelay = s->nodelay >= 0 ? s->nodelay : one;
	if (reuse >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(int));
	if (alive >= 0)
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &alive, sizeof(int));
	if (s->type == SOCK_STREAM && s->family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof(int));
	if (s->keepidle > 0 && s->type == SOCK_STREAM && s->family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &s->keepidle,
			   sizeof(int));
}

/* ---- forwarding to the home worker ---- */
static void sock_call_run(coil__task *t)
{
	struct sock_call *c = coil__container_of(t, struct sock_call, task);
	c->fn(c);
	coil__channel_put(c->s);
	coil_ip_unref(c->ip);
	coil__free(c->text);
	coil__free(c);
}

/* Runs fn on s's home worker (now if this is it). c is consumed. */
void coil__sock_call(struct sock_call *c)
{
	c->task.run = sock_call_run;
	coil__channel_get(c->s);
	if (coil__on_worker(c->s->w))
		sock_call_run(&c->task);
	else
		coil__post(c->s->w, &c->task);
}
struct sock_call *coil__sock_call_new(coil_socket_t *s, coil_ip_t *ip,
				     void (*fn)(struct sock_call *))
{
	struct sock_call *c = coil__calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->s = s;
	c->fn = fn;
	c->ip = coil_ip_ref(ip);
	return c;
}
coil_ip_t *coil__sock_failed_ip(coil_socket_t *s, int err, const char *fmt,
				const char *arg)
{
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (ip)
		coil_ip_fail(ip, err, fmt, arg);
	return ip;
}

/* ---- socket operations through the ring (struct coil__sockop) ---- */

coil_ip_t *coil__sockop_submit(coil_socket_t *s, struct coil__sockop *o,
			       void (*start)(coil__task *), coil_abort_cb abort)
{
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (!ip)
		return NULL;
	o->ip = coil_ip_ref(ip);
	o->s = s;
	coil__channel_get(s);
	o->task.run = start;
	coil_ip_set_abort(ip, abort, o);
	if (coil__on_worker(s->w))
		start(&o->task);
	else
		coil__post(s->w, &o->task);
	return ip;
}

int coil__sockop_abort(struct coil__sockop *o)
{
	if (!o->inflight) {
		o->aborted = true;
		if (o->rx.queued && !o->rx.started) {
			/* Waiting its turn: out of the queue now, freed by
			 * its task (the caller may still use the handle). */
			coil__sock_rx_leave(o->s, &o->rx);
			coil__post(o->s->w, &o->task);
		}
		return 0;
	}
	if (!o->cancelling && coil__prep_cancel(o->s->w, NULL, &o->op) == 0)
		o->cancelling = true;
	return o->cancelling ? 1 : -EBUSY;
}

int coil__sockop_prep_msg(struct coil__sockop *o, struct msghdr *msg,
			  int flags, void (*complete)(coil__op *, int, unsigned))
{
	coil_socket_t *s = o->s;
	if (s->fd < 0 || atomic_load(&s->st) == COIL__CH_CLOSED)
		return -EBADF;
	o->op.complete = complete;
	int rc = o->send ? coil__prep_sendmsg(s->w, &o->op, s->fd, msg,
					      MSG_NOSIGNAL | flags)
			 : coil__prep_recvmsg(s->w, &o->op, s->fd, msg, flags);
	if (rc)
		return rc;
	o->inflight = true;
	if (!o->send)
		o->rx.ring = &o->op;
	return 0;
}

void coil__sockop_release(struct coil__sockop *o)
{
	coil_ip_unref(o->ip);
	if (o->s)
		coil__channel_put(o->s);
}

/* ---- shutdown ---- */

static void do_shutdown(coil_socket_t *s)
{
	struct coil__sockx *ss = coil__sock_xq(S(s));
	/* TLS: close_notify goes out before the write side is shut; this
	 * runs again when the send carrying it completed. */
	if (s->fd >= 0 && ss->shut_how != SHUT_RD &&
	    coil__tls_shutdown_write(s)) {
		s->sock_drain_wait = true;
		return;
	}
	coil_ip_t *ip = ss->shut_ip;
	ss->shut_ip = NULL;
	s->sock_drain_wait = false;
	if (s->fd < 0)
		coil__ip_fail_msg(ip, -ENOTCONN, "shutdown: not connected");
	else if (shutdown(s->fd, ss->shut_how))
		coil_ip_fail(ip, -errno, "shutdown: %s", coil_strerror(-errno));
	else
		coil_ip_finish_int(ip, 0);
	coil_ip_unref(ip);
}

/* The channel's drain hook: the write queue is empty. */
void coil__sock_drained(coil_channel_t *ch)
{
	do_shutdown(ch);
}

static void shutdown_local(struct sock_call *c)
{
	coil_socket_t *s = c->s;
	struct coil__sockx *ss = coil__sock_x(S(s));
	if (!ss) {
		coil__ip_fail_msg(c->ip, -ENOMEM, "shutdown: out of memory");
		return;
	}
	if (ss->shut_ip) {
		coil__ip_fail_msg(c->ip, -EALREADY, "shutdown in progress");
		return;
	}
	ss->shut_ip = coil_ip_ref(c->ip);
	ss->shut_how = (int)c->n;
	if ((c->n == SHUT_WR || c->n == SHUT_RDWR) &&
	    (coil__channel_writes_queued(s) || s->send_inflight ||
	     s->connecting)) {
		/* Queued writes leave first: shutdown when the queue drains. */
		s->sock_drain_wait = true;
		return;
	}
	do_shutdown(s);
}

coil_ip_t *coil_socket_shutdown(coil_socket_t *s, int how)
{
	if (!s)
		return NULL;
	if (!S(s))
		return failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return failed_ip(s, -EINVAL, "shutdown: bad how%s", "");
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (!ip)
		return NULL;
	struct sock_call *c = sock_call_new(s, ip, shutdown_local);
	if (!c) {
		coil_ip_unref(ip);
		return NULL;
	}
	c->n = (size_t)how;
	coil__sock_call(c);
	return ip;
}

/* ---- wrap ---- */

int coil_socket_wrap(coil_loop_t *loop, int fd, coil_socket_t **out)
{
	if (!loop || !out)
		return -EINVAL;
	if (fd < 0)
		return -EBADF;
	int type = 0, acc = 0;
	socklen_t l = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l))
		return errno == ENOTSOCK ? -ENOTSOCK : -errno;
	l = sizeof(acc);
	getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l);
	if (acc)
		return -EOPNOTSUPP; /* listen() makes listeners */
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl))
		return -errno;
	coil_socket_t *s;
	int rc = coil__channel_wrap_sized(loop, fd, COIL_IO_READ | COIL_IO_WRITE,
					  sizeof(struct coil_channel_s) +
					  sizeof(struct coil__sock),
					  sock_init, &s);
	if (rc)
		return rc;
	S(s)->family = ss.ss_family;
	S(s)->type = type;
	sl = sizeof(ss);
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
		atomic_store(&S(s)->connected, 1);
	*out = s;
	return 0;
}
int coil_socket_connecting(const coil_socket_t *s)
{
	return s && S(s) && atomic_load(&S(s)->connecting);
}

int coil_socket_connected(const coil_socket_t *s)
{
	return s && S(s) && atomic_load(&S(s)->connected) &&
	       coil_channel_alive(s);
}

int coil_socket_listening(const coil_socket_t *s)
{
	return s && S(s) && atomic_load(&S(s)->listening) &&
	       coil_channel_alive(s);
}

/* getsockname / getpeername of the socket as a coil_sockinfo_t, under the
 * channel's fd lock (never on a reused descriptor number). */
struct name_call {
	int (*get)(int, struct sockaddr *, socklen_t *);
	struct sockaddr_storage ss;
	socklen_t len;
};

static int name_on_fd(int fd, void *arg)
{
	struct name_call *c = arg;
	c->len = sizeof(c->ss);
	return c->get(fd, (struct sockaddr *)&c->ss, &c->len) ? -errno : 0;
}

static int sockinfo_of(const coil_socket_t *s, coil_sockinfo_t *out,
		       int (*get)(int, struct sockaddr *, socklen_t *))
{
	if (!s || !out)
		return -EINVAL;
	struct name_call c = {.get = get};
	int rc = coil__channel_fd_call((coil_socket_t *)s, name_on_fd, &c);
	if (rc)
		return rc;
	return coil_sockinfo_from((struct sockaddr *)&c.ss, c.len, out);
}

int coil_socket_local(const coil_socket_t *s, coil_sockinfo_t *out)
{
	return sockinfo_of(s, out, getsockname);
}

int coil_socket_peer(const coil_socket_t *s, coil_sockinfo_t *out)
{
	int rc = sockinfo_of(s, out, getpeername);
	struct coil__sockx *x = !rc && S(s) ? coil__sock_xq(S(s)) : NULL;
	if (x)
		snprintf(out->reqhost, sizeof(out->reqhost), "%s",
			 x->reqhost);
	return rc;
}

int coil_socketpair(coil_loop_t *loop, int domain, int type, coil_socket_t **a,
		    coil_socket_t **b)
{
	if (!loop || !a || !b)
		return -EINVAL;
	int sv[2];
	if (socketpair(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv))
		return -errno;
	int rc = coil_socket_wrap(loop, sv[0], a);
	if (rc) {
		close(sv[0]);
		close(sv[1]);
		return rc;
	}
	rc = coil_socket_wrap(loop, sv[1], b);
	if (rc) {
		coil_channel_release(*a);
		close(sv[1]);
		return rc;
	}
	return 0;
}

/* ---- try_write (libuv uv_try_write) ---- */

struct try_send {
	const void *data;
	size_t len;
};

static int try_send_on_fd(int fd, void *arg)
{
	struct try_send *t = arg;
	ssize_t n = send(fd, t->data, t->len, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0)
		return errno == EWOULDBLOCK ? -EAGAIN : -errno;
	return (int)(n > INT32_MAX ? INT32_MAX : n);
}

/*
 * Sends what fits in the socket buffer now, with no queueing: only when
 * nothing is queued or in flight (so it never overtakes an earlier write),
 * under the fd lock (so never on a reused descriptor).
 */
int64_t coil_socket_try_write(coil_socket_t *s, const void *data, size_t len)
{
	if (!s || (!data && len))
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	if (s->flt)
		return -EOPNOTSUPP; /* a stream filter (TLS) must see every byte */
	if (!len)
		return 0;
	if (atomic_load(&S(s)->connecting) || atomic_load(&s->wq_used))
		return -EAGAIN;
	if (atomic_load(&s->close_req))
		return -EBADF;
	if (len > INT32_MAX)
		len = INT32_MAX;
	struct try_send t = {data, len};
	int rc = coil__channel_fd_call(s, try_send_on_fd, &t);
	if (rc == -EBADF && !atomic_load(&S(s)->connected) &&
	    atomic_load(&s->st) == COIL__CH_NEW)
		return -ENOTCONN;
	return rc;
}
