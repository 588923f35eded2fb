/* SPDX-License-Identifier: MIT */
/* Datagram sockets: creation, sendto/recvfrom through the ring, bind. */
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


int coil_socket_new_dgram(coil_loop_t *loop, int family, coil_socket_t **out)
{
	if (!loop || !out)
		return -EINVAL;
	if (family != AF_INET && family != AF_INET6 && family != AF_UNIX)
		return -EAFNOSUPPORT;
	int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	coil_channel_t *ch;
	int rc = coil__sock_channel_new(coil__pick_worker(loop), &ch);
	if (rc) {
		close(fd);
		return rc;
	}
	S(ch)->family = family;
	S(ch)->type = SOCK_DGRAM;
	ch->fd = fd;
	/* Datagrams are read with recvfrom, one per call: the channel's
	 * stream reader must never take them. */
	ch->mode = COIL_IO_WRITE;
	ch->rkind = COIL__RK_RECV;
	ch->is_socket = true;
	ch->dgram = true;
	atomic_store(&ch->st, COIL__CH_OPEN);
	/* Listed for loop stop even if only recvfrom is ever used. */
	coil__channel_register(ch);
	*out = ch;
	return 0;
}

/*
 * One sendto/recvfrom: a ring sendmsg/recvmsg on the home worker. Aborting
 * one cancels its ring operation (contract 1: the hook returns 1 and the
 * completion settles the handle). A datagram the kernel delivered to an
 * operation whose handle was settled meanwhile (the abort lost the race)
 * is stashed on the socket and given to the next recvfrom: none is lost.
 *
 * Receives (recvfrom and recvfrom_many, mmsg.c) are served in call order
 * (CPython/usocket): each socket keeps a queue of them (coil__sock_rx_*)
 * and only its head has a ring receive in flight; the kernel, given several
 * waiting receives, would wake the newest first. Aborting a waiting one
 * takes it out of the queue at once.
 */
struct dgram_op {
	struct coil__sockop h;
	struct msghdr msg;
	struct iovec iov;
	struct sockaddr_storage to;
	coil_datagram_t *dg; /* recvfrom */
	int flags;           /* MSG_DONTWAIT in non-blocking mode */
};

static coil__list *rx_queue(struct coil__sockx *x)
{
	if (!x->rxq.next)
		coil__list_init(&x->rxq);
	return &x->rxq;
}

/* Starts heads until one waits (or the queue is empty). A receive that ends
 * while starting leaves at once; the loop, not recursion, starts the next. */
static void rx_pump(struct coil__sockx *x)
{
	if (x->rx_pumping)
		return;
	x->rx_pumping = true;
	coil__list *q = rx_queue(x);
	while (!coil__list_empty(q)) {
		struct coil__rx *r = coil__container_of(q->next, struct coil__rx,
							link);
		if (r->started)
			break;
		r->started = true;
		r->start(r);
	}
	x->rx_pumping = false;
}

int coil__sock_rx_enter(coil_socket_t *s, struct coil__rx *r, bool dontwait)
{
	struct coil__sockx *x = coil__sock_x(S(s));
	if (!x)
		return -ENOMEM;
	coil__list *q = rx_queue(x);
	/* Others wait: the kernel has nothing and the stash is empty. */
	if (dontwait && !coil__list_empty(q))
		return -EAGAIN;
	r->queued = true;
	r->started = false;
	coil__list_add_tail(q, &r->link);
	rx_pump(x);
	return 0;
}

void coil__sock_rx_close(coil_socket_t *s)
{
	struct coil__sockx *x = coil__sock_xq(S(s));
	if (!x || !x->rxq.next || coil__list_empty(&x->rxq) || s->w->stopping)
		return; /* stopping: the loop cancels every ring op itself */
	struct coil__rx *r = coil__container_of(x->rxq.next, struct coil__rx,
						link);
	/* Its completion (-ECANCELED, read as -EBADF: the socket is closed)
	 * starts the next, which finds the socket closed, and so on. */
	if (r->ring)
		coil__prep_cancel(s->w, NULL, r->ring);
}

/* A receive's ring op ended with -ECANCELED: its own abort, the loop
 * stopping, or the socket closing (coil__sock_rx_close). */
int coil__sock_rx_cancel_err(coil_socket_t *s, bool aborting)
{
	return !aborting && !s->w->stopping &&
			       atomic_load(&s->st) == COIL__CH_CLOSED
		       ? -EBADF
		       : -ECANCELED;
}

void coil__sock_rx_leave(coil_socket_t *s, struct coil__rx *r)
{
	if (!r->queued)
		return;
	struct coil__sockx *x = coil__sock_xq(S(s));
	bool head = x->rxq.next == &r->link;
	coil__list_del(&r->link);
	r->queued = false;
	if (head)
		rx_pump(x);
}

void coil__sock_stash_free(struct coil__sock *ss)
{
	struct coil__sockx *s = coil__sock_xq(ss);
	if (!s)
		return;
	while (s->stash_head) {
		struct coil__dg_stash *st = s->stash_head;
		s->stash_head = st->next;
		coil__free(st->dg);
		coil__free(st);
	}
	s->stash_tail = &s->stash_head;
}

void coil__sock_stash_push(struct coil__sock *ss, coil_datagram_t *dg)
{
	struct coil__sockx *s = coil__sock_x(ss);
	struct coil__dg_stash *st = s ? coil__malloc(sizeof(*st)) : NULL;
	if (!st) {
		coil__free(dg); /* out of memory: dropped, as the kernel would */
		return;
	}
	st->next = NULL;
	st->dg = dg;
	*s->stash_tail = st;
	s->stash_tail = &st->next;
}

coil_datagram_t *coil__sock_stash_pop(struct coil__sock *ss)
{
	struct coil__sockx *s = coil__sock_xq(ss);
	struct coil__dg_stash *st = s ? s->stash_head : NULL;
	if (!st)
		return NULL;
	s->stash_head = st->next;
	if (!s->stash_head)
		s->stash_tail = &s->stash_head;
	coil_datagram_t *dg = st->dg;
	coil__free(st);
	return dg;
}

static void dgram_free(struct dgram_op *d)
{
	coil__sockop_release(&d->h);
	if (d->h.send)
		coil__free(d->iov.iov_base);
	coil__free(d);
}

static const char *dgram_what(const struct dgram_op *d, int res)
{
	if (res == -ECANCELED)
		return d->h.send ? "sendto aborted" : "recvfrom aborted";
	if (res == -EAGAIN)
		return d->h.send ? "sendto would block (non-blocking socket)"
			       : "recvfrom: no datagram (non-blocking socket)";
	return d->h.send ? "sendto" : "recvfrom";
}

static void dgram_complete(coil__op *op, int res, unsigned flags)
{
	struct dgram_op *d = coil__container_of(op, struct dgram_op, h.op);
	d->h.inflight = false;
	d->h.rx.ring = NULL;
	if (res == -ECANCELED && !d->h.send)
		res = coil__sock_rx_cancel_err(d->h.s, d->h.cancelling);
	if (res == -EBADF && !d->h.send) {
		coil__ip_fail_msg(d->h.ip, res, "recvfrom: socket closed");
		coil__free(d->dg);
	} else if (res < 0) {
		coil__ip_fail_msg(d->h.ip, res, dgram_what(d, res));
		coil__free(d->dg);
	} else if (d->h.send) {
		coil_ip_finish_int(d->h.ip, res);
	} else {
		d->dg->len = (size_t)res;
		d->dg->fromlen = d->msg.msg_namelen;
		coil__mem_defined(d->dg->data, (size_t)res);
		coil__mem_defined(d->msg.msg_name, d->msg.msg_namelen);
		if (coil_ip_state(d->h.ip) != COIL_IP_PENDING ||
		    coil_ip_finish_ptr(d->h.ip, d->dg, coil_free))
			coil__sock_stash_push(S(d->h.s), d->dg);
	}
	/* After the stash: the next receive gets what this one could not. */
	coil__sock_rx_leave(d->h.s, &d->h.rx);
	dgram_free(d);
}

static int dgram_abort(coil_ip_t *ip, void *arg)
{
	return coil__sockop_abort(arg);
}

/* A recvfrom's turn (the head of the socket's queue). */
static void dgram_rx_start(struct coil__rx *r)
{
	struct dgram_op *d = coil__container_of(r, struct dgram_op, h.rx);
	coil_socket_t *s = d->h.s;
	int rc;
	if (coil_ip_state(d->h.ip) != COIL_IP_PENDING) {
		coil__sock_rx_leave(s, &d->h.rx);
		coil__free(d->dg);
		dgram_free(d);
		return;
	}
	coil_datagram_t *dg = coil__sock_stash_pop(S(s));
	if (dg) {
		size_t max = d->iov.iov_len;
		if (dg->len > max)
			dg->len = max; /* truncated, as recvfrom does */
		coil__free(d->dg);
		d->dg = NULL;
		if (coil_ip_finish_ptr(d->h.ip, dg, coil_free))
			coil__sock_stash_push(S(s), dg); /* settled meanwhile */
		coil__sock_rx_leave(s, &d->h.rx);
		dgram_free(d);
		return;
	}
	if (s->w->stopping) {
		/* Its turn came as the loop stops: no new ring op. */
		coil__ip_fail_msg(d->h.ip, -ECANCELED,
				  "recvfrom: the loop is stopping");
		coil__free(d->dg);
		coil__sock_rx_leave(s, &d->h.rx);
		dgram_free(d);
		return;
	}
	rc = coil__sockop_prep_msg(&d->h, &d->msg, d->flags, dgram_complete);
	if (rc)
		dgram_complete(&d->h.op, rc, 0);
}

static void dgram_start(coil__task *t)
{
	struct dgram_op *d = coil__container_of(t, struct dgram_op, h.task);
	coil_socket_t *s = d->h.s;
	int rc;
	if (d->h.aborted || coil_ip_state(d->h.ip) != COIL_IP_PENDING) {
		coil__free(d->dg);
		dgram_free(d);
		return;
	}
	if (!d->h.send) {
		d->h.rx.start = dgram_rx_start;
		rc = coil__sock_rx_enter(s, &d->h.rx, d->flags & MSG_DONTWAIT);
		if (rc)
			dgram_complete(&d->h.op, rc, 0);
		return;
	}
	rc = coil__sockop_prep_msg(&d->h, &d->msg, d->flags, dgram_complete);
	if (rc)
		dgram_complete(&d->h.op, rc, 0);
}

static coil_ip_t *dgram_submit(coil_socket_t *s, struct dgram_op *d)
{
	d->msg.msg_iov = &d->iov;
	d->msg.msg_iovlen = 1;
	if (atomic_load(&S(s)->nonblocking))
		d->flags = MSG_DONTWAIT;
	coil_ip_t *ip = coil__sockop_submit(s, &d->h, dgram_start, dgram_abort);
	if (!ip) {
		if (d->h.send)
			coil__free(d->iov.iov_base);
		coil__free(d->dg);
		coil__free(d);
	}
	return ip;
}

coil_ip_t *coil_socket_sendto_sa(coil_socket_t *s, const void *data,
				 size_t len, const struct sockaddr *sa,
				 socklen_t salen)
{
	if (!s)
		return NULL;
	if (!data && len)
		return failed_ip(s, -EINVAL, "sendto: no data%s", "");
	if (!S(s))
		return failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (salen > sizeof(struct sockaddr_storage))
		return failed_ip(s, -EINVAL, "address too long%s", "");
	struct dgram_op *d = coil__calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->h.send = true;
	d->iov.iov_base = coil__malloc(len ? len : 1); /* empty datagrams too */
	if (!d->iov.iov_base) {
		coil__free(d);
		return NULL;
	}
	if (len)
		memcpy(d->iov.iov_base, data, len);
	d->iov.iov_len = len;
	if (sa) {
		memcpy(&d->to, sa, salen);
		d->msg.msg_name = &d->to;
		d->msg.msg_namelen = salen;
	}
	return dgram_submit(s, d);
}

coil_ip_t *coil_socket_sendto(coil_socket_t *s, const void *data, size_t len,
			      const char *addr)
{
	if (!s)
		return NULL;
	if (!addr)
		return coil_socket_sendto_sa(s, data, len, NULL, 0);
	coil_addr_t a;
	int rc = coil_addr_parse(addr, COIL_ADDR_DGRAM, &a);
	if (rc)
		return failed_ip(s, rc, "%s", a.error);
	if (!a.numeric && a.kind != COIL_ADDR_UNIX)
		return failed_ip(s, -EINVAL,
				 "sendto %s: needs a numeric address (resolve "
				 "names with coil_resolve)", addr);
	return coil_socket_sendto_sa(s, data, len, (struct sockaddr *)&a.ss,
				     a.sslen);
}

coil_ip_t *coil_socket_recvfrom(coil_socket_t *s, size_t max)
{
	if (!s)
		return NULL;
	if (!S(s))
		return failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (!max || max > (1u << 24))
		return failed_ip(s, -EINVAL, "recvfrom size out of range%s", "");
	struct dgram_op *d = coil__calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->dg = coil__malloc(sizeof(*d->dg) + max);
	if (!d->dg) {
		coil__free(d);
		return NULL;
	}
	memset(d->dg, 0, sizeof(*d->dg));
	d->iov.iov_base = d->dg->data;
	d->iov.iov_len = max;
	d->msg.msg_name = &d->dg->from;
	d->msg.msg_namelen = sizeof(d->dg->from);
	return dgram_submit(s, d);
}

/* A v4 address for a v6 socket, as v4-mapped. */
static void map_v4(coil_addr_t *a)
{
	struct sockaddr_in *v4 = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6,
				  .sin6_port = v4->sin_port};
	v6.sin6_addr.s6_addr[10] = 0xff;
	v6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&v6.sin6_addr.s6_addr[12], &v4->sin_addr, 4);
	memcpy(&a->ss, &v6, sizeof(v6));
	a->sslen = sizeof(v6);
}

/*
 * Connected UDP (CPython/usocket connect on SOCK_DGRAM, libuv
 * uv_udp_connect): connect(2) sets the default peer and filters what is
 * received to it; coil_channel_write then sends one datagram per write,
 * coil_channel_read and recvfrom receive from it, and errors the kernel
 * learns from ICMP (port unreachable: -ECONNREFUSED) fail the next receive
 * or send. The descriptor stays the datagram socket.
 */
/* connect(2) to one numeric address (home worker). */
static int dgram_connect_addr(coil_socket_t *s, coil_addr_t *a)
{
	if (s->fd < 0 || atomic_load(&s->st) == COIL__CH_CLOSED)
		return -EBADF;
	struct coil__sockx *x = coil__sock_x(S(s));
	if (!x)
		return -ENOMEM;
	if (a->ss.ss_family == AF_INET && S(s)->family == AF_INET6)
		map_v4(a);
	else if (a->ss.ss_family != S(s)->family)
		return -EAFNOSUPPORT;
	if (connect(s->fd, (struct sockaddr *)&a->ss, a->sslen))
		return -errno;
	snprintf(x->reqhost, sizeof(x->reqhost), "%s", a->host);
	atomic_store(&S(s)->connected, 1);
	/* Now the channel may read: only from the peer. */
	s->mode |= COIL_IO_READ;
	return 0;
}

struct dgram_resolve {
	coil_socket_t *s;   /* a channel reference */
	coil_ip_t *ip;      /* the connect handle (a reference) */
	coil_ip_t *r;       /* the resolution (a reference) */
	char host[256];
};

/* The name resolved (on the socket's home worker): connect to the first
 * address of the socket's family (IPv4 ones too for an IPv6 socket). */
static void dgram_resolved(coil_ip_t *r, void *arg)
{
	struct dgram_resolve *d = arg;
	coil_socket_t *s = d->s;
	int rc = coil_ip_error(r);
	const char *msg = rc ? coil_ip_message(r) : NULL;
	if (!rc) {
		coil_addrlist_t *l = coil_ip_ptr(r);
		rc = -EAFNOSUPPORT;
		for (size_t pass = 0; pass < 2 && rc == -EAFNOSUPPORT; pass++) {
			for (size_t i = 0; l && i < l->count; i++) {
				int fam = l->addrs[i].ss.ss_family;
				bool fits = pass == 0 ? fam == S(s)->family
						      : S(s)->family == AF_INET6 &&
								fam == AF_INET;
				if (!fits)
					continue;
				coil_addr_t a;
				memset(&a, 0, sizeof(a));
				memcpy(&a.ss, &l->addrs[i].ss, l->addrs[i].len);
				a.sslen = l->addrs[i].len;
				snprintf(a.host, sizeof(a.host), "%s", d->host);
				rc = dgram_connect_addr(s, &a);
				break;
			}
		}
	}
	if (rc)
		coil_ip_fail(d->ip, rc, "connect %s: %s", d->host,
			     msg ? msg : coil_strerror(rc));
	else
		coil_ip_finish_int(d->ip, 0);
	coil_ip_unref(d->ip);
	coil_ip_unref(d->r);
	coil__channel_put(s);
	coil__free(d);
}

/*
 * Connected UDP (CPython/usocket connect on SOCK_DGRAM, libuv
 * uv_udp_connect): connect(2) sets the default peer and filters what is
 * received to it; coil_channel_write then sends one datagram per write,
 * coil_channel_read and recvfrom receive from it, and errors the kernel
 * learns from ICMP (port unreachable: -ECONNREFUSED) fail the next receive
 * or send. The descriptor stays the datagram socket. Numeric addresses
 * connect at once; names resolve on the resolver thread first. Settles ip.
 */
void coil__sock_dgram_connect(coil_socket_t *s, const char *text, int flags,
			      coil_ip_t *ip)
{
	coil_addr_t a;
	int rc = coil_addr_parse(text, COIL_ADDR_DGRAM | (flags & COIL_ADDR_IPV4),
				 &a);
	if (rc) {
		coil__ip_fail_msg(ip, rc, a.error);
		return;
	}
	if (a.numeric || a.kind == COIL_ADDR_UNIX) {
		rc = dgram_connect_addr(s, &a);
		if (rc)
			coil_ip_fail(ip, rc, "connect %s: %s", text,
				     coil_strerror(rc));
		else
			coil_ip_finish_int(ip, 0);
		return;
	}
	struct dgram_resolve *d = coil__calloc(1, sizeof(*d));
	coil_ip_t *r = d ? coil_resolve(s->w->loop, text,
					COIL_ADDR_DGRAM | (flags & COIL_ADDR_IPV4))
			 : NULL;
	if (!r) {
		coil__free(d);
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
		return;
	}
	d->s = s;
	coil__channel_get(s);
	d->ip = coil_ip_ref(ip);
	d->r = r;
	snprintf(d->host, sizeof(d->host), "%s", a.host);
	if (coil_ip_on_done(r, dgram_resolved, d)) {
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
		coil_ip_unref(d->ip);
		coil_ip_unref(d->r);
		coil__channel_put(s);
		coil__free(d);
	}
}

int coil_socket_bind(coil_socket_t *s, const char *addr, int flags)
{
	if (!s || !addr)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	coil_addr_t a;
	int rc = coil_addr_parse(addr, COIL_ADDR_LISTEN | COIL_ADDR_DGRAM |
					       (flags & COIL_ADDR_IPV4),
				 &a);
	if (rc)
		return rc;
	if (!a.numeric && a.kind != COIL_ADDR_UNIX)
		return -EINVAL;
	if (a.kind == COIL_ADDR_INET && !a.host[0] && S(s)->family == AF_INET) {
		/* ":P" on an IPv4 socket is IPv4's any address (CPython and
		 * coro bind ('', port) so), not the IPv6 wildcard. */
		rc = coil_addr_parse(addr, COIL_ADDR_LISTEN | COIL_ADDR_DGRAM |
						   COIL_ADDR_IPV4, &a);
		if (rc)
			return rc;
	}
	if (s->fd < 0 && S(s)->type == SOCK_STREAM) {
		/* A client socket (libuv uv_tcp_bind before uv_tcp_connect):
		 * every connect attempt binds to this address first. */
		if (atomic_load(&S(s)->listening) ||
		    atomic_load(&S(s)->connecting))
			return -EINVAL;
		if (a.kind == COIL_ADDR_UNIX)
			return -EOPNOTSUPP;
		struct coil__sockx *x = coil__sock_x(S(s));
		if (!x)
			return -ENOMEM;
		memcpy(&x->bind_ss, &a.ss, a.sslen);
		x->bind_len = a.sslen;
		x->bind_flags = flags;
		return 0;
	}
	if (s->fd < 0)
		return -EBADF;
	if (a.kind == COIL_ADDR_UNIX) {
		rc = unix_prepare((struct sockaddr_un *)&a.ss, a.sslen);
		if (rc)
			return rc;
	} else if (a.ss.ss_family == AF_INET6 && S(s)->family == AF_INET) {
		return -EAFNOSUPPORT;
	} else if (a.ss.ss_family == AF_INET && S(s)->family == AF_INET6) {
		/* Bind a v4 address on a v6 socket as v4-mapped. */
		map_v4(&a);
	}
	/* The caller's SO_REUSEADDR (coil_socket_set_reuseaddr) was applied
	 * when set: a port in use is -EADDRINUSE unless both asked to share. */
	if (flags & COIL_ADDR_REUSEPORT) {
		int one = 1;
		if (setsockopt(s->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
			return -errno;
	}
	struct coil__sockx *x = a.kind == COIL_ADDR_UNIX ? coil__sock_x(S(s))
							 : NULL;
	if (a.kind == COIL_ADDR_UNIX && !x)
		return -ENOMEM; /* before bind: no path left behind */
	if (bind(s->fd, (struct sockaddr *)&a.ss, a.sslen))
		return -errno;
	if (x)
		snprintf(x->unix_path, sizeof(x->unix_path), "%s",
			 ((struct sockaddr_un *)&a.ss)->sun_path);
	return 0;
}
