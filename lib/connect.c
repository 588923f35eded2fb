/* SPDX-License-Identifier: MIT */
/* coil_socket_connect: numeric addresses at once, names through the
 * resolver, Happy Eyeballs over the results (RFC 8305). */
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

#define HE_DELAY_MS 250
#define MAX_ATTEMPTS 8

struct attempt {
	coil__op op;
	coil__op cancel_op;
	struct connector *c;
	struct sockaddr_storage sa;
	socklen_t len;
	int fd;
	bool inflight, cancelling;
};

struct connector {
	coil_socket_t *s;     /* a channel reference */
	coil_ip_t *ip;        /* the connect handle (a reference) */
	coil_ip_t *resolve;   /* pending resolution (a reference) */
	coil_addrlist_t *list;
	size_t next;          /* next address to try */
	int refs;             /* ops and timers in flight + 1 while active */
	int best_err;
	char best_msg[160];
	bool done;
	bool detached;        /* non-blocking: ip is the connector's own */
	coil__timer he;       /* head start for the next attempt */
	bool he_armed;
	coil__timer deadline; /* socket timeout */
	bool deadline_armed;
	struct attempt att[MAX_ATTEMPTS];
	int natt;
};

static void conn_put(struct connector *c)
{
	if (--c->refs)
		return;
	coil_ip_unref(c->ip);
	coil_ip_unref(c->resolve);
	coil__free(c->list);
	coil__channel_put(c->s);
	coil__free(c);
}

static void attempt_cancel_complete(coil__op *op, int res, unsigned flags)
{
	struct attempt *a = coil__container_of(op, struct attempt, cancel_op);
	a->cancelling = false;
	conn_put(a->c);
}

/* Ends the connect: cancels what is still running, settles the handle. */
static void conn_finish(struct connector *c, int err, const char *msg)
{
	if (c->done)
		return;
	c->done = true;
	struct coil__sock *s = S(c->s);
	struct coil__sockx *x = coil__sock_xq(s); /* made by connect_local */
	if (x->conn == c)
		x->conn = NULL;
	atomic_store(&s->connecting, 0);
	atomic_store(&c->s->sock_connecting, false);
	c->s->connecting = false;
	for (int i = 0; i < c->natt; i++) {
		struct attempt *a = &c->att[i];
		if (a->inflight && !a->cancelling) {
			a->cancel_op.complete = attempt_cancel_complete;
			if (coil__prep_cancel(c->s->w, &a->cancel_op, &a->op) == 0) {
				a->cancelling = true;
				c->refs++;
			}
		}
	}
	if (c->he_armed)
		coil__timer_cancel(&c->he);
	if (c->deadline_armed)
		coil__timer_cancel(&c->deadline);
	if (c->resolve)
		coil_ip_abort(c->resolve);
	if (err) {
		/* Queued writes wait for a later connect (kaa: writes before
		 * open are queued); the socket can connect again. */
		coil__ip_fail_msg(c->ip, err, msg);
		if (c->detached)
			(void)coil_ip_error(c->ip); /* nobody else looks */
	} else {
		atomic_store(&s->connected, 1);
		coil__channel_connected(c->s);
		coil_ip_finish_int(c->ip, 0);
	}
	conn_put(c);
}

/* Remembers the most useful error: a refusal or timeout beats the rest. */
static void conn_note_error(struct connector *c, int err,
			    const struct sockaddr *sa, socklen_t len)
{
	bool better = !c->best_err || err == -ECONNREFUSED ||
		      (err == -ETIMEDOUT && c->best_err != -ECONNREFUSED);
	if (!better)
		return;
	char where[128];
	if (coil_addr_format(sa, len, where, sizeof(where)) < 0)
		snprintf(where, sizeof(where), "?");
	c->best_err = err;
	snprintf(c->best_msg, sizeof(c->best_msg), "connect to %s: %s", where,
		 coil_strerror(err));
}

static void attempt_next(struct connector *c);

/* A client socket bound before connect (coil_socket_bind): binds the
 * attempt's descriptor there. On failure records why and returns it. */
static int bind_first(struct connector *c, struct attempt *a)
{
	struct coil__sockx *s = coil__sock_xq(S(c->s));
	if (!s->bind_len)
		return 0;
	int err = 0;
	if (s->bind_ss.ss_family != a->sa.ss_family) {
		err = -EAFNOSUPPORT;
	} else {
		if (s->bind_flags & COIL_ADDR_REUSEPORT) {
			int one = 1;
			setsockopt(a->fd, SOL_SOCKET, SO_REUSEPORT, &one,
				   sizeof(one));
		}
		if (bind(a->fd, (struct sockaddr *)&s->bind_ss, s->bind_len))
			err = -errno;
	}
	if (err && !c->best_err) {
		char where[128];
		if (coil_addr_format((struct sockaddr *)&s->bind_ss, s->bind_len,
				     where, sizeof(where)) < 0)
			snprintf(where, sizeof(where), "?");
		c->best_err = err;
		snprintf(c->best_msg, sizeof(c->best_msg),
			 "bind to %s before connect: %s", where,
			 coil_strerror(err));
	}
	return err;
}

static bool attempts_inflight(const struct connector *c)
{
	for (int i = 0; i < c->natt; i++)
		if (c->att[i].inflight)
			return true;
	return false;
}

static void conn_check_exhausted(struct connector *c)
{
	if (c->done || attempts_inflight(c))
		return;
	if (c->list && c->next < c->list->count) {
		attempt_next(c);
		return;
	}
	conn_finish(c, c->best_err ? c->best_err : -EHOSTUNREACH,
		    c->best_err ? c->best_msg : "no address to connect to");
}

static void attempt_complete(coil__op *op, int res, unsigned flags)
{
	struct attempt *a = coil__container_of(op, struct attempt, op);
	struct connector *c = a->c;
	a->inflight = false;
	if (res == 0 && !c->done) {
		coil_socket_t *s = c->s;
		S(s)->family = a->sa.ss_family;
		coil__channel_attach_fd(s, a->fd, COIL_IO_READ | COIL_IO_WRITE,
					true);
		a->fd = -1;
		conn_finish(c, 0, NULL);
	} else {
		close(a->fd);
		a->fd = -1;
		if (res == 0)
			res = -ECANCELED; /* won after the race was decided */
		if (res != -ECANCELED)
			conn_note_error(c, res, (struct sockaddr *)&a->sa, a->len);
		conn_check_exhausted(c);
	}
	conn_put(c);
}

static void he_fired(coil__timer *t, int res)
{
	struct connector *c = coil__container_of(t, struct connector, he);
	c->he_armed = false;
	if (res == 0 && !c->done && c->list && c->next < c->list->count)
		attempt_next(c);
	conn_put(c);
}

/* Starts a connect to the next address, and the head-start timer for the
 * one after it. */
static void attempt_next(struct connector *c)
{
	while (!c->done && c->list && c->next < c->list->count &&
	       c->natt < MAX_ATTEMPTS) {
		struct attempt *a = &c->att[c->natt];
		memset(a, 0, sizeof(*a));
		a->c = c;
		a->len = c->list->addrs[c->next].len;
		memcpy(&a->sa, &c->list->addrs[c->next].ss, a->len);
		c->next++;
		struct coil__sock *s = S(c->s);
		s->family = a->sa.ss_family;
		a->fd = socket(a->sa.ss_family,
			       SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (a->fd < 0) {
			conn_note_error(c, -errno, (struct sockaddr *)&a->sa,
					a->len);
			continue;
		}
		apply_opts(s, a->fd);
		int brc = bind_first(c, a);
		if (brc) {
			close(a->fd);
			continue;
		}
		a->op.complete = attempt_complete;
		if (coil__prep_connect(c->s->w, &a->op, a->fd,
				       (struct sockaddr *)&a->sa, a->len)) {
			close(a->fd);
			conn_note_error(c, -EBUSY, (struct sockaddr *)&a->sa,
					a->len);
			continue;
		}
		a->inflight = true;
		c->natt++;
		c->refs++;
		if (c->next < c->list->count && !c->he_armed &&
		    coil__timer_start(c->s->w, &c->he, HE_DELAY_MS, he_fired) == 0) {
			c->he_armed = true;
			c->refs++;
		}
		return;
	}
	conn_check_exhausted(c);
}

static void deadline_fired(coil__timer *t, int res)
{
	struct connector *c = coil__container_of(t, struct connector, deadline);
	c->deadline_armed = false;
	if (res == 0)
		conn_finish(c, -ETIMEDOUT, "connect timed out");
	conn_put(c);
}

static void resolved(coil_ip_t *ip, void *arg)
{
	struct connector *c = arg;
	if (!c->done) {
		if (coil_ip_error(ip)) {
			conn_finish(c, coil_ip_error(ip), coil_ip_message(ip));
		} else {
			c->list = coil_ip_steal_ptr(ip);
			c->next = 0;
			attempt_next(c);
		}
	}
	conn_put(c);
}

static int connect_abort(coil_ip_t *ip, void *arg)
{
	struct connector *c = arg;
	conn_finish(c, -ECANCELED, "connect aborted");
	return 1;
}

static void connect_local(struct sock_call *call)
{
	coil_socket_t *s = call->s;
	struct coil__sock *ss = S(s);
	if (atomic_load(&ss->connecting)) {
		coil__ip_fail_msg(call->ip, -EALREADY, "already connecting");
		return;
	}
	if (ss->type == SOCK_DGRAM) {
		coil__sock_dgram_connect(s, call->text, call->flags, call->ip);
		return;
	}
	if (atomic_load(&ss->connected) && coil_channel_alive(s)) {
		coil__ip_fail_msg(call->ip, -EISCONN, "already connected");
		return;
	}
	if (atomic_load(&ss->listening)) {
		coil__ip_fail_msg(call->ip, -EINVAL, "socket is listening");
		return;
	}
	if (atomic_load(&s->st) == COIL__CH_CLOSED) {
		coil__ip_fail_msg(call->ip, -EBADF, "socket is closed");
		return;
	}
	coil_addr_t addr;
	int rc = coil_addr_parse(call->text, call->flags & COIL_ADDR_IPV4,
				 &addr);
	if (rc) {
		coil__ip_fail_msg(call->ip, rc, addr.error);
		return;
	}
	struct coil__sockx *x = coil__sock_x(ss);
	struct connector *c = x ? coil__calloc(1, sizeof(*c)) : NULL;
	if (!c) {
		coil__ip_fail_msg(call->ip, -ENOMEM, NULL);
		return;
	}
	c->s = s;
	coil__channel_get(s);
	c->ip = coil_ip_ref(call->ip);
	c->refs = 1;
	x->conn = c;
	atomic_store(&ss->connecting, 1);
	atomic_store(&ss->connected, 0);
	atomic_store(&s->sock_connecting, true); /* alive, reads wait */
	s->connecting = true;
	snprintf(x->reqhost, sizeof(x->reqhost), "%s", addr.host);
	if (atomic_load(&ss->nonblocking)) {
		/* usocket non-blocking connect: the call says it is in
		 * progress, the connect goes on (connecting() is 1 until it
		 * ends; connected() says how). The connector settles a handle
		 * of its own. */
		coil_ip_t *inner = coil__ip_new_on(s->w);
		if (inner) {
			coil__ip_fail_msg(c->ip, -EINPROGRESS,
					  "connect in progress (non-blocking "
					  "socket)");
			coil_ip_unref(c->ip);
			c->ip = inner;
			c->detached = true;
		}
	}
	coil_ip_set_abort(c->ip, connect_abort, c);
	unsigned tmo = atomic_load(&ss->timeout_ms);
	if (tmo && coil__timer_start(s->w, &c->deadline, tmo, deadline_fired) == 0) {
		c->deadline_armed = true;
		c->refs++;
	}
	if (addr.numeric || addr.kind == COIL_ADDR_UNIX) {
		c->list = coil__calloc(1, sizeof(*c->list) + sizeof(c->list->addrs[0]));
		if (!c->list) {
			conn_finish(c, -ENOMEM, NULL);
			return;
		}
		c->list->count = 1;
		memcpy(&c->list->addrs[0].ss, &addr.ss, addr.sslen);
		c->list->addrs[0].len = addr.sslen;
		attempt_next(c);
		return;
	}
	c->resolve = coil_resolve(s->w->loop, call->text,
				  call->flags & COIL_ADDR_IPV4);
	if (!c->resolve) {
		conn_finish(c, -ENOMEM, NULL);
		return;
	}
	c->refs++;
	if (coil_ip_on_done(c->resolve, resolved, c)) {
		c->refs--;
		conn_finish(c, -ENOMEM, NULL);
	}
}

coil_ip_t *coil_socket_connect(coil_socket_t *s, const char *addr, int flags)
{
	if (!s)
		return NULL;
	if (!S(s))
		return failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (!addr)
		return failed_ip(s, -EINVAL, "no address%s", "");
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (!ip)
		return NULL;
	struct sock_call *c = sock_call_new(s, ip, connect_local);
	if (!c || !(c->text = coil__strdup(addr))) {
		if (c) {
			coil_ip_unref(c->ip);
			coil__free(c);
		}
		coil_ip_unref(ip);
		return NULL;
	}
	c->flags = flags;
	coil__sock_call(c);
	return ip;
}

void coil__sock_conn_close(struct coil__sock *s, int err, const char *msg)
{
	struct coil__sockx *x = coil__sock_xq(s);
	if (x && x->conn)
		conn_finish(x->conn, err, msg);
}
