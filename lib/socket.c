/* SPDX-License-Identifier: MIT */
/* coil_socket (kaa Socket, coro sock, usocket): connect with Happy Eyeballs,
 * sharded listen with multishot accept, datagrams, options, addresses. */
#include "internal.h"

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

#include <liburing/io_uring.h>

/*
 * A socket is a channel (channel.c does all stream I/O) plus this state.
 * Connect runs on the home worker: the address is parsed, names resolve on
 * the resolver thread (addr.c), then attempts start in order with a 250 ms
 * head start each (RFC 8305): the first to connect wins and the others are
 * cancelled. A listener owns one shard per worker (TCP, SO_REUSEPORT) or one
 * shard on its home worker (Unix); each shard runs a multishot accept on its
 * own worker, so accepted clients live where they were accepted.
 */

#define HE_DELAY_MS 250
#define MAX_ATTEMPTS 8

struct connector;
struct listener;

struct coil__sock {
	int family;
	int type;
	_Atomic int connecting, connected, listening;
	int bufsize;       /* pending buffer_size, 0 = kernel default */
	int nodelay, keepalive, reuseaddr; /* -1: leave as is */
	_Atomic unsigned timeout_ms;
	char reqhost[256];
	struct connector *conn;
	struct listener *lst;
	_Atomic(coil_new_client_cb) cb; /* new-client signal */
	void *cb_ud;
	char unix_path[128]; /* listener path to unlink on close */
	/* shutdown(SHUT_WR) waiting for the write queue */
	coil_ip_t *shut_ip;
	int shut_how;
};

static inline struct coil__sock *S(const coil_socket_t *s)
{
	return s->sock;
}

static void sock_free(coil_channel_t *ch)
{
	coil__free(ch->sock);
	ch->sock = NULL;
}

static void listener_close(coil_channel_t *ch);

static int sock_alloc(coil_channel_t *ch)
{
	struct coil__sock *s = coil__calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->nodelay = s->keepalive = s->reuseaddr = -1;
	s->type = SOCK_STREAM;
	ch->sock = s;
	ch->sock_free = sock_free;
	ch->sock_close = listener_close;
	return 0;
}

int coil_socket_new(coil_loop_t *loop, coil_socket_t **out)
{
	if (!loop || !out)
		return -EINVAL;
	coil_channel_t *ch;
	int rc = coil__channel_new(coil__pick_worker(loop), &ch);
	if (rc)
		return rc;
	rc = sock_alloc(ch);
	if (rc) {
		coil__channel_put(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

/* Applies the remembered options to a fresh descriptor. */
static void apply_opts(struct coil__sock *s, int fd)
{
	int one = 1;
	if (s->bufsize > 0) {
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s->bufsize,
			   sizeof(s->bufsize));
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s->bufsize,
			   sizeof(s->bufsize));
	}
	if (s->reuseaddr >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &s->reuseaddr,
			   sizeof(int));
	if (s->keepalive >= 0)
		setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &s->keepalive,
			   sizeof(int));
	if (s->type == SOCK_STREAM && s->family != AF_UNIX)
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY,
			   s->nodelay >= 0 ? &s->nodelay : &one, sizeof(int));
}

/* ---- forwarding to the home worker ---- */

struct sock_call {
	coil__task task;
	coil_socket_t *s;
	void (*fn)(struct sock_call *c);
	coil_ip_t *ip;
	char *text;
	int flags;
	size_t n;
};

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
static void sock_call(struct sock_call *c)
{
	c->task.run = sock_call_run;
	coil__channel_get(c->s);
	if (coil__on_worker(c->s->w))
		sock_call_run(&c->task);
	else
		coil__post(c->s->w, &c->task);
}

static struct sock_call *sock_call_new(coil_socket_t *s, coil_ip_t *ip,
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

/* A handle that failed at once (bad arguments), never NULL unless OOM. */
static coil_ip_t *failed_ip(coil_socket_t *s, int err, const char *fmt,
			    const char *arg)
{
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (ip)
		coil_ip_fail(ip, err, fmt, arg);
	return ip;
}

/* ---- connect ---- */

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
	if (s->conn == c)
		s->conn = NULL;
	atomic_store(&s->connecting, 0);
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
	struct connector *c = coil__calloc(1, sizeof(*c));
	if (!c) {
		coil__ip_fail_msg(call->ip, -ENOMEM, NULL);
		return;
	}
	c->s = s;
	coil__channel_get(s);
	c->ip = coil_ip_ref(call->ip);
	c->refs = 1;
	ss->conn = c;
	atomic_store(&ss->connecting, 1);
	atomic_store(&ss->connected, 0);
	s->connecting = true;
	snprintf(ss->reqhost, sizeof(ss->reqhost), "%s", addr.host);
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
	sock_call(c);
	return ip;
}

/* ---- listen and accept ---- */

/*
 * One shard per accepting worker. A shard is not a channel: it only runs a
 * multishot accept, and lives until its last ring op completed.
 */
struct shard {
	coil__op op, cancel_op;
	coil__task arm_task;   /* start accepting, on the shard's worker */
	coil__task close_task; /* stop, on the shard's worker */
	coil__timer backoff;   /* EMFILE/ENFILE back-off */
	struct listener *l;
	coil__worker *w;
	int fd;
	bool armed, cancelling, backoff_armed, closing;
	unsigned backoff_ms;
	_Atomic int refs;      /* ops in flight + queued tasks + 1 */
};

struct listener {
	coil_socket_t *s;      /* home: s->w (a channel reference) */
	_Atomic int refs;
	size_t nshards;
	bool is_unix;
	_Atomic bool closing;
	_Atomic unsigned rr;   /* Unix: round-robin over workers */
	/* home worker only: */
	coil__list pending;    /* accept() requests */
	coil_socket_t **queue; /* accepted, not yet handed out */
	size_t qlen, qcap;
	int backlog;
	struct shard sh[];
};

struct accept_req {
	coil__list link;
	coil_ip_t *ip;
	size_t max;            /* accept_many; 0 for accept */
	bool many;
	struct listener *l;
	coil__timer timer;
	bool timer_armed;
	int refs;
};

static void listener_put(struct listener *l)
{
	if (atomic_fetch_sub(&l->refs, 1) != 1)
		return;
	for (size_t i = 0; i < l->qlen; i++)
		coil_channel_release(l->queue[i]);
	coil__free(l->queue);
	coil__channel_put(l->s);
	coil__free(l);
}

static void shard_put(struct shard *sh)
{
	if (atomic_fetch_sub(&sh->refs, 1) != 1)
		return;
	if (sh->fd >= 0)
		close(sh->fd);
	sh->fd = -1;
	listener_put(sh->l);
}

static void shard_arm(struct shard *sh);
static void accept_complete(coil__op *op, int res, unsigned flags);

static void shard_cancel_complete(coil__op *op, int res, unsigned flags)
{
	struct shard *sh = coil__container_of(op, struct shard, cancel_op);
	sh->cancelling = false;
	shard_put(sh);
}

static void shard_disarm(struct shard *sh)
{
	if (!sh->armed || sh->cancelling)
		return;
	sh->cancel_op.complete = shard_cancel_complete;
	if (coil__prep_cancel(sh->w, &sh->cancel_op, &sh->op) == 0) {
		sh->cancelling = true;
		atomic_fetch_add(&sh->refs, 1);
	}
}

static void backoff_fired(coil__timer *t, int res)
{
	struct shard *sh = coil__container_of(t, struct shard, backoff);
	sh->backoff_armed = false;
	if (!sh->closing)
		shard_arm(sh);
	shard_put(sh);
}

static void shard_arm(struct shard *sh)
{
	if (sh->armed || sh->cancelling || sh->backoff_armed || sh->closing ||
	    sh->fd < 0 || sh->w->stopping)
		return;
	sh->op.complete = accept_complete;
	if (coil__prep_accept_multishot(sh->w, &sh->op, sh->fd) == 0) {
		sh->armed = true;
		atomic_fetch_add(&sh->refs, 1);
	}
}

/* Client sockets are made on the worker that accepted them. */
static coil_socket_t *client_new(coil__worker *w, int fd, int family)
{
	coil_channel_t *ch;
	if (coil__channel_new(w, &ch))
		return NULL;
	if (sock_alloc(ch)) {
		coil__channel_put(ch);
		return NULL;
	}
	ch->sock->family = family;
	atomic_store(&ch->sock->connected, 1);
	if (family != AF_UNIX) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	coil__channel_attach_fd(ch, fd, COIL_IO_READ | COIL_IO_WRITE, true);
	return ch;
}

static void serve_accepts(struct listener *l);

struct handoff {
	coil__task task;
	struct listener *l;
	coil_socket_t *client;
	int fd;
	int family;
};

/* On the listener's home worker: queue an accepted client for accept(). */
static void handoff_home_run(coil__task *t)
{
	struct handoff *h = coil__container_of(t, struct handoff, task);
	struct listener *l = h->l;
	if (l->qlen >= (size_t)l->backlog || atomic_load(&l->closing)) {
		/* Nobody takes clients: like a full kernel backlog, turn the
		 * newest away instead of queueing without bound. */
		coil_channel_release(h->client);
		goto out;
	}
	if (l->qlen == l->qcap) {
		size_t cap = l->qcap ? l->qcap * 2 : 16;
		coil_socket_t **q = coil__realloc(l->queue, cap * sizeof(*q));
		if (!q) {
			coil_channel_release(h->client);
			goto out;
		}
		l->queue = q;
		l->qcap = cap;
	}
	l->queue[l->qlen++] = h->client;
	serve_accepts(l);
out:
	listener_put(l);
	coil__free(h);
}

/* On the worker chosen for a Unix client: make it there, then deliver. */
static void deliver(struct listener *l, coil_socket_t *client);

static void handoff_worker_run(coil__task *t)
{
	struct handoff *h = coil__container_of(t, struct handoff, task);
	coil_socket_t *c = client_new(coil__tls_worker, h->fd, h->family);
	if (c)
		deliver(h->l, c);
	else
		close(h->fd);
	listener_put(h->l);
	coil__free(h);
}

/* Gives a new client to the new-client callback (here, on the client's
 * worker) or to the accept() queue on the listener's home worker. */
static void deliver(struct listener *l, coil_socket_t *client)
{
	struct coil__sock *ls = S(l->s);
	coil_new_client_cb cb = atomic_load(&ls->cb);
	if (atomic_load(&l->closing)) {
		coil_channel_release(client);
		return;
	}
	if (cb) {
		cb(l->s, client, ls->cb_ud);
		return;
	}
	struct handoff *h = coil__calloc(1, sizeof(*h));
	if (!h) {
		coil_channel_release(client);
		return;
	}
	h->l = l;
	h->client = client;
	h->task.run = handoff_home_run;
	atomic_fetch_add(&l->refs, 1);
	coil__post(l->s->w, &h->task);
}

static void accept_complete(coil__op *op, int res, unsigned flags)
{
	struct shard *sh = coil__container_of(op, struct shard, op);
	struct listener *l = sh->l;
	bool more = flags & IORING_CQE_F_MORE;
	if (!more)
		sh->armed = false;
	if (res >= 0) {
		sh->backoff_ms = 0;
		if (sh->closing || atomic_load(&l->closing) ||
		    sh->w->stopping) {
			close(res);
		} else if (l->is_unix && l->s->w->loop->nworkers > 1) {
			/* Unix clients are spread over the workers. */
			unsigned i = atomic_fetch_add(&l->rr, 1) %
				     l->s->w->loop->nworkers;
			coil__worker *tw = &l->s->w->loop->workers[i];
			struct handoff *h = coil__calloc(1, sizeof(*h));
			if (!h) {
				close(res);
			} else {
				h->l = l;
				h->fd = res;
				h->family = AF_UNIX;
				h->task.run = handoff_worker_run;
				atomic_fetch_add(&l->refs, 1);
				coil__post(tw, &h->task);
			}
		} else {
			coil_socket_t *c = client_new(sh->w, res,
						      S(l->s)->family);
			if (c)
				deliver(l, c);
			else
				close(res);
		}
	} else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS ||
		   res == -ENOMEM) {
		/* Out of descriptors: do not spin and do not give up. Back
		 * off (100 ms doubling to 1.6 s) and try again. */
		sh->backoff_ms = sh->backoff_ms ? sh->backoff_ms * 2 : 100;
		if (sh->backoff_ms > 1600)
			sh->backoff_ms = 1600;
		if (!sh->closing && !sh->backoff_armed &&
		    coil__timer_start(sh->w, &sh->backoff, sh->backoff_ms,
				      backoff_fired) == 0) {
			sh->backoff_armed = true;
			atomic_fetch_add(&sh->refs, 1);
		}
	}
	/* ECONNABORTED and other per-connection errors are skipped. */
	if (!more) {
		shard_arm(sh);
		shard_put(sh);
	}
}

static void shard_task_arm(coil__task *t)
{
	struct shard *sh = coil__container_of(t, struct shard, arm_task);
	shard_arm(sh);
	shard_put(sh);
}

static void shard_task_close(coil__task *t)
{
	struct shard *sh = coil__container_of(t, struct shard, close_task);
	sh->closing = true;
	shard_disarm(sh);
	if (sh->backoff_armed)
		coil__timer_cancel(&sh->backoff);
	shard_put(sh); /* the task's reference */
	shard_put(sh); /* the shard's own reference */
}

static void accept_req_done(struct accept_req *r)
{
	if (--r->refs)
		return;
	coil_ip_unref(r->ip);
	coil__free(r);
}

/* An accept_many result nobody stole: release its sockets too. */
static void clients_free(void *p)
{
	coil_clients_t *cl = p;
	for (size_t i = 0; i < cl->count; i++)
		coil_channel_release(cl->sock[i]);
	coil__free(cl);
}

static void serve_accepts(struct listener *l)
{
	while (l->qlen && !coil__list_empty(&l->pending)) {
		struct accept_req *r = coil__container_of(l->pending.next,
							  struct accept_req, link);
		coil__list_del(&r->link);
		if (r->timer_armed)
			coil__timer_cancel(&r->timer);
		if (!r->many) {
			coil_socket_t *c = l->queue[0];
			memmove(l->queue, l->queue + 1,
				--l->qlen * sizeof(*l->queue));
			coil_ip_finish_ptr(r->ip, c,
					   (void (*)(void *))coil_channel_release);
		} else {
			size_t n = r->max && r->max < l->qlen ? r->max : l->qlen;
			coil_clients_t *cl = coil__malloc(sizeof(*cl) +
							  n * sizeof(cl->sock[0]));
			if (!cl) {
				coil__ip_fail_msg(r->ip, -ENOMEM, NULL);
			} else {
				cl->count = n;
				memcpy(cl->sock, l->queue, n * sizeof(cl->sock[0]));
				memmove(l->queue, l->queue + n,
					(l->qlen - n) * sizeof(*l->queue));
				l->qlen -= n;
				coil_ip_finish_ptr(r->ip, cl, clients_free);
			}
		}
		accept_req_done(r);
	}
}

static void accept_timer_fired(coil__timer *t, int res)
{
	struct accept_req *r = coil__container_of(t, struct accept_req, timer);
	r->timer_armed = false;
	if (res == 0 && !coil__list_empty(&r->link)) {
		coil__list_del(&r->link);
		coil__ip_fail_msg(r->ip, -ETIMEDOUT, "accept timed out");
		accept_req_done(r);
	}
	accept_req_done(r);
}

static int accept_abort(coil_ip_t *ip, void *arg)
{
	struct accept_req *r = arg;
	if (!coil__list_empty(&r->link)) {
		coil__list_del(&r->link);
		if (r->timer_armed)
			coil__timer_cancel(&r->timer);
		accept_req_done(r);
	}
	return 0;
}

static void accept_local(struct sock_call *c)
{
	struct listener *l = S(c->s)->lst;
	if (!l || atomic_load(&l->closing)) {
		coil__ip_fail_msg(c->ip, l ? -EBADF : -EINVAL,
				  l ? "listener closed" : "socket is not listening");
		return;
	}
	struct accept_req *r = coil__calloc(1, sizeof(*r));
	if (!r) {
		coil__ip_fail_msg(c->ip, -ENOMEM, NULL);
		return;
	}
	r->ip = coil_ip_ref(c->ip);
	r->many = c->flags;
	r->max = c->n;
	r->l = l;
	r->refs = 1;
	coil__list_init(&r->link);
	coil__list_add_tail(&l->pending, &r->link);
	coil_ip_set_abort(r->ip, accept_abort, r);
	unsigned tmo = atomic_load(&S(c->s)->timeout_ms);
	if (tmo && coil__timer_start(c->s->w, &r->timer, tmo,
				     accept_timer_fired) == 0) {
		r->timer_armed = true;
		r->refs++;
	}
	serve_accepts(l);
}

static coil_ip_t *accept_submit(coil_socket_t *s, bool many, size_t max)
{
	if (!s)
		return NULL;
	if (!S(s))
		return failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (!ip)
		return NULL;
	struct sock_call *c = sock_call_new(s, ip, accept_local);
	if (!c) {
		coil_ip_unref(ip);
		return NULL;
	}
	c->flags = many;
	c->n = max;
	sock_call(c);
	return ip;
}

coil_ip_t *coil_socket_accept(coil_socket_t *s)
{
	return accept_submit(s, false, 0);
}

coil_ip_t *coil_socket_accept_many(coil_socket_t *s, size_t max)
{
	return accept_submit(s, true, max);
}

/* The channel's close hook: stops the shards, fails pending accepts, removes
 * the Unix path. Runs on the home worker. */
static void listener_close(coil_channel_t *ch)
{
	struct coil__sock *s = ch->sock;
	if (!s)
		return;
	if (s->conn)
		conn_finish(s->conn, -EBADF, "socket closed while connecting");
	if (s->shut_ip) {
		coil__ip_fail_msg(s->shut_ip, -EBADF, "socket closed");
		coil_ip_unref(s->shut_ip);
		s->shut_ip = NULL;
	}
	struct listener *l = s->lst;
	if (!l)
		return;
	s->lst = NULL;
	atomic_store(&s->listening, 0);
	atomic_store(&l->closing, true);
	while (!coil__list_empty(&l->pending)) {
		struct accept_req *r = coil__container_of(l->pending.next,
							  struct accept_req, link);
		coil__list_del(&r->link);
		if (r->timer_armed)
			coil__timer_cancel(&r->timer);
		coil__ip_fail_msg(r->ip, -EBADF, "listener closed");
		accept_req_done(r);
	}
	if (s->unix_path[0]) {
		unlink(s->unix_path);
		s->unix_path[0] = 0;
	}
	for (size_t i = 0; i < l->nshards; i++) {
		struct shard *sh = &l->sh[i];
		sh->close_task.run = shard_task_close;
		atomic_fetch_add(&sh->refs, 1);
		if (coil__on_worker(sh->w))
			shard_task_close(&sh->close_task);
		else
			coil__post(sh->w, &sh->close_task);
	}
	listener_put(l);
}

/* Binds one listening socket. */
static int bind_listen(const struct sockaddr *sa, socklen_t len, int backlog,
		       bool reuseport, struct coil__sock *s, int *out)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
			0);
	if (fd < 0)
		return -errno;
	int one = 1, zero = 0;
	if (sa->sa_family != AF_UNIX) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR,
			   s->reuseaddr >= 0 ? &s->reuseaddr : &one, sizeof(int));
		if (reuseport)
			setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		if (sa->sa_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
				   sizeof(zero));
	}
	if (s->bufsize > 0) {
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s->bufsize, sizeof(int));
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s->bufsize, sizeof(int));
	}
	if (bind(fd, sa, len) || listen(fd, backlog)) {
		int err = -errno;
		close(fd);
		return err;
	}
	*out = fd;
	return 0;
}

/*
 * Whether a listening socket is bound to path, from /proc/net/unix (flag
 * __SO_ACCEPTCON, 0x10000). Returns 1, 0, or -1 when /proc cannot tell.
 * Asking the kernel this way, rather than connecting to the path, does not
 * hand the live listener a spurious client.
 */
static int unix_listening(const char *path)
{
	FILE *f = fopen("/proc/net/unix", "re");
	if (!f)
		return -1;
	char line[512];
	int found = 0;
	size_t plen = strlen(path);
	while (!found && fgets(line, sizeof(line), f)) {
		unsigned long flags;
		char *p = line, *end;
		/* Num: RefCount Protocol Flags Type St Inode Path */
		for (int field = 0; field < 3 && p; field++) {
			p = strchr(p, ' ');
			while (p && *p == ' ')
				p++;
		}
		if (!p)
			continue;
		flags = strtoul(p, &end, 16);
		if (!(flags & 0x10000))
			continue;
		char *path_at = strrchr(line, ' ');
		if (!path_at)
			continue;
		path_at++;
		size_t n = strcspn(path_at, "\n");
		if (n == plen && !memcmp(path_at, path, plen))
			found = 1;
	}
	fclose(f);
	return found;
}

/* Unix path rules: a live socket at the path is EADDRINUSE, a stale one is
 * replaced, anything else that is not a socket is EADDRINUSE. */
static int unix_prepare(const struct sockaddr_un *sun, socklen_t len)
{
	if (!sun->sun_path[0])
		return 0; /* abstract namespace */
	struct stat st;
	if (lstat(sun->sun_path, &st))
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EADDRINUSE;
	int live = unix_listening(sun->sun_path);
	if (live == 1)
		return -EADDRINUSE;
	if (live == 0) {
		unlink(sun->sun_path);
		return 0;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int rc = connect(fd, (const struct sockaddr *)sun, len);
	int err = errno;
	close(fd);
	if (rc == 0)
		return -EADDRINUSE;
	if (err == ECONNREFUSED || err == ENOENT) {
		unlink(sun->sun_path);
		return 0;
	}
	return -err;
}

struct listen_arm {
	coil__task task;
	struct shard *sh;
};

static int listen_do(coil_socket_t *s, const char *text, int backlog,
		     int flags)
{
	struct coil__sock *ss = S(s);
	if (atomic_load(&ss->listening))
		return -EALREADY;
	if (atomic_load(&ss->connecting) || atomic_load(&ss->connected) ||
	    s->fd >= 0)
		return -EISCONN;
	if (atomic_load(&s->st) == COIL__CH_CLOSED)
		return -EBADF;
	coil_addr_t addr;
	int rc = coil_addr_parse(text, COIL_ADDR_LISTEN | (flags & COIL_ADDR_IPV4),
				 &addr);
	if (rc)
		return rc;
	struct sockaddr_storage ss_addr;
	socklen_t sslen;
	if (addr.numeric || addr.kind == COIL_ADDR_UNIX) {
		memcpy(&ss_addr, &addr.ss, addr.sslen);
		sslen = addr.sslen;
	} else {
		/* kaa: a host name here resolves synchronously. */
		coil_ip_t *r = coil_resolve(s->w->loop, text,
					    flags & COIL_ADDR_IPV4);
		if (!r)
			return -ENOMEM;
		if (coil__tls_worker) {
			coil_ip_abort(r);
			coil_ip_unref(r);
			return -EDEADLK;
		}
		coil_ip_wait(r, -1);
		rc = coil_ip_error(r);
		coil_addrlist_t *lst = rc ? NULL : coil_ip_ptr(r);
		if (!rc && (!lst || !lst->count))
			rc = -ENOENT;
		if (!rc) {
			memcpy(&ss_addr, &lst->addrs[0].ss, lst->addrs[0].len);
			sslen = lst->addrs[0].len;
		}
		coil_ip_unref(r);
		if (rc)
			return rc;
	}
	if (backlog <= 0)
		backlog = SOMAXCONN;
	bool is_unix = ss_addr.ss_family == AF_UNIX;
	coil_loop_t *loop = s->w->loop;
	size_t n = is_unix ? 1 : loop->nworkers;
	struct listener *l = coil__calloc(1, sizeof(*l) + n * sizeof(l->sh[0]));
	if (!l)
		return -ENOMEM;
	l->s = s;
	l->nshards = n;
	l->is_unix = is_unix;
	l->backlog = backlog;
	coil__list_init(&l->pending);
	atomic_init(&l->refs, 1);
	if (is_unix) {
		rc = unix_prepare((struct sockaddr_un *)&ss_addr, sslen);
		if (rc) {
			coil__free(l);
			return rc;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct shard *sh = &l->sh[i];
		sh->l = l;
		sh->fd = -1;
		atomic_init(&sh->refs, 1);
		sh->w = is_unix ? s->w : &loop->workers[i];
		rc = bind_listen((struct sockaddr *)&ss_addr, sslen, backlog,
				 n > 1, ss, &sh->fd);
		if (rc)
			break;
		if (i == 0 && !is_unix) {
			/* Port 0: the rest bind to the port the first got. */
			socklen_t sl = sizeof(ss_addr);
			getsockname(sh->fd, (struct sockaddr *)&ss_addr, &sl);
		}
	}
	if (rc) {
		for (size_t i = 0; i < n; i++)
			if (l->sh[i].fd >= 0)
				close(l->sh[i].fd);
		coil__free(l);
		return rc;
	}
	ss->family = ss_addr.ss_family;
	if (is_unix && ((struct sockaddr_un *)&ss_addr)->sun_path[0])
		snprintf(ss->unix_path, sizeof(ss->unix_path), "%s",
			 ((struct sockaddr_un *)&ss_addr)->sun_path);
	/* Each shard holds a listener reference until its last op is done. */
	atomic_fetch_add(&l->refs, (int)n);
	coil__channel_get(s);
	ss->lst = l;
	atomic_store(&ss->listening, 1);
	/* The socket's own descriptor (fileno, local) is a dup of the home
	 * shard's, so the channel's close logic stays the same. */
	struct shard *home = &l->sh[0];
	for (size_t i = 0; i < n; i++)
		if (l->sh[i].w == s->w)
			home = &l->sh[i];
	int dfd = fcntl(home->fd, F_DUPFD_CLOEXEC, 0);
	if (dfd >= 0) /* mode 0: no stream reading or writing on it */
		coil__channel_attach_fd(s, dfd, 0, true);
	/* Start accepting on every shard's worker. */
	for (size_t i = 0; i < n; i++) {
		struct shard *sh = &l->sh[i];
		sh->arm_task.run = shard_task_arm;
		atomic_fetch_add(&sh->refs, 1);
		if (coil__on_worker(sh->w))
			shard_task_arm(&sh->arm_task);
		else
			coil__post(sh->w, &sh->arm_task);
	}
	return 0;
}

struct listen_sync {
	coil_socket_t *s;
	const char *text;
	int backlog, flags;
	coil_ip_t *done;
};

static void listen_task(void *arg)
{
	struct listen_sync *ls = arg;
	coil_ip_finish_int(ls->done, listen_do(ls->s, ls->text, ls->backlog,
					       ls->flags));
}

int coil_socket_listen(coil_socket_t *s, const char *addr, int backlog,
		       int flags)
{
	if (!s || !addr)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	if (coil__on_worker(s->w))
		return listen_do(s, addr, backlog, flags);
	/* Bind on the home worker (the listener's state lives there) and wait:
	 * listen is synchronous for its caller. */
	if (coil__tls_worker) {
		/* Another worker cannot block on this one. */
		return -EDEADLK;
	}
	coil_addr_t probe;
	int rc = coil_addr_parse(addr, COIL_ADDR_LISTEN | (flags & COIL_ADDR_IPV4),
				 &probe);
	if (rc)
		return rc;
	struct listen_sync ls = {s, addr, backlog, flags, coil__ip_new_on(s->w)};
	if (!ls.done)
		return -ENOMEM;
	if (!probe.numeric && probe.kind != COIL_ADDR_UNIX) {
		/* A host name: resolve here (this thread may block), then bind
		 * the numeric result on the home worker. */
		coil_ip_t *r = coil_resolve(s->w->loop, addr,
					    flags & COIL_ADDR_IPV4);
		if (!r) {
			coil_ip_unref(ls.done);
			return -ENOMEM;
		}
		coil_ip_wait(r, -1);
		rc = coil_ip_error(r);
		coil_addrlist_t *lst = rc ? NULL : coil_ip_ptr(r);
		char text[128];
		if (!rc && lst && lst->count &&
		    coil_addr_format((struct sockaddr *)&lst->addrs[0].ss,
				     lst->addrs[0].len, text, sizeof(text)) > 0) {
			coil_ip_unref(r);
			ls.text = text;
			rc = coil_loop_post(s->w->loop, (int)s->w->index,
					    listen_task, &ls);
			if (!rc) {
				coil_ip_wait(ls.done, -1);
				rc = (int)coil_ip_int(ls.done);
			}
			coil_ip_unref(ls.done);
			return rc;
		}
		coil_ip_unref(r);
		coil_ip_unref(ls.done);
		return rc ? rc : -ENOENT;
	}
	rc = coil_loop_post(s->w->loop, (int)s->w->index, listen_task, &ls);
	if (!rc) {
		coil_ip_wait(ls.done, -1);
		rc = (int)coil_ip_int(ls.done);
	}
	coil_ip_unref(ls.done);
	return rc;
}

/*
 * new-client: stored on the socket (so it may be connected before listen)
 * and read atomically by the shard workers. A client accepted while no
 * callback is connected goes to the accept() queue instead.
 */
int coil_socket_on_new_client(coil_socket_t *s, coil_new_client_cb cb,
			      void *ud)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	S(s)->cb_ud = ud;
	atomic_store(&S(s)->cb, cb);
	return 0;
}

/* ---- datagrams ---- */

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
	int rc = coil__channel_new(coil__pick_worker(loop), &ch);
	if (!rc)
		rc = sock_alloc(ch);
	if (rc) {
		if (ch)
			coil__channel_put(ch);
		close(fd);
		return rc;
	}
	ch->sock->family = family;
	ch->sock->type = SOCK_DGRAM;
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

struct dgram_op {
	coil__op op;
	coil__task task;
	coil_socket_t *s;
	coil_ip_t *ip;
	struct msghdr msg;
	struct iovec iov;
	struct sockaddr_storage to;
	coil_datagram_t *dg; /* recvfrom */
	bool send;
};

static void dgram_complete(coil__op *op, int res, unsigned flags)
{
	struct dgram_op *d = coil__container_of(op, struct dgram_op, op);
	if (res < 0) {
		coil__ip_fail_msg(d->ip, res, d->send ? "sendto" : "recvfrom");
		coil__free(d->dg);
	} else if (d->send) {
		coil_ip_finish_int(d->ip, res);
	} else {
		d->dg->len = (size_t)res;
		d->dg->fromlen = d->msg.msg_namelen;
		coil__mem_defined(d->dg->data, (size_t)res);
		coil__mem_defined(d->msg.msg_name, d->msg.msg_namelen);
		coil_ip_finish_ptr(d->ip, d->dg, coil_free);
	}
	coil_ip_unref(d->ip);
	coil__channel_put(d->s);
	if (d->send)
		coil__free(d->iov.iov_base);
	coil__free(d);
}

static void dgram_start(coil__task *t)
{
	struct dgram_op *d = coil__container_of(t, struct dgram_op, task);
	coil_socket_t *s = d->s;
	int rc;
	if (s->fd < 0 || atomic_load(&s->st) == COIL__CH_CLOSED) {
		rc = -EBADF;
	} else {
		d->op.complete = dgram_complete;
		rc = d->send ? coil__prep_sendmsg(s->w, &d->op, s->fd, &d->msg,
						  MSG_NOSIGNAL)
			     : coil__prep_recvmsg(s->w, &d->op, s->fd, &d->msg,
						  0);
	}
	if (rc)
		dgram_complete(&d->op, rc, 0);
}

static coil_ip_t *dgram_submit(coil_socket_t *s, struct dgram_op *d)
{
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (!ip) {
		if (d->send)
			coil__free(d->iov.iov_base);
		coil__free(d->dg);
		coil__free(d);
		return NULL;
	}
	d->ip = coil_ip_ref(ip);
	d->s = s;
	coil__channel_get(s);
	d->msg.msg_iov = &d->iov;
	d->msg.msg_iovlen = 1;
	d->task.run = dgram_start;
	if (coil__on_worker(s->w))
		dgram_start(&d->task);
	else
		coil__post(s->w, &d->task);
	return ip;
}

coil_ip_t *coil_socket_sendto_sa(coil_socket_t *s, const void *data,
				 size_t len, const struct sockaddr *sa,
				 socklen_t salen)
{
	if (!s || (!data && len))
		return NULL;
	if (!S(s))
		return failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (salen > sizeof(struct sockaddr_storage))
		return failed_ip(s, -EINVAL, "address too long%s", "");
	struct dgram_op *d = coil__calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->send = true;
	d->iov.iov_base = coil__malloc(len);
	if (!d->iov.iov_base) {
		coil__free(d);
		return NULL;
	}
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
		struct sockaddr_in *v4 = (struct sockaddr_in *)&a.ss;
		struct sockaddr_in6 v6 = {.sin6_family = AF_INET6,
					  .sin6_port = v4->sin_port};
		v6.sin6_addr.s6_addr[10] = 0xff;
		v6.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&v6.sin6_addr.s6_addr[12], &v4->sin_addr, 4);
		memcpy(&a.ss, &v6, sizeof(v6));
		a.sslen = sizeof(v6);
	}
	int one = 1;
	setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s->fd, (struct sockaddr *)&a.ss, a.sslen))
		return -errno;
	if (a.kind == COIL_ADDR_UNIX)
		snprintf(S(s)->unix_path, sizeof(S(s)->unix_path), "%s",
			 ((struct sockaddr_un *)&a.ss)->sun_path);
	return 0;
}

/* ---- shutdown ---- */

static void do_shutdown(coil_socket_t *s)
{
	struct coil__sock *ss = S(s);
	coil_ip_t *ip = ss->shut_ip;
	ss->shut_ip = NULL;
	s->drained_fn = NULL;
	if (s->fd < 0)
		coil__ip_fail_msg(ip, -ENOTCONN, "shutdown: not connected");
	else if (shutdown(s->fd, ss->shut_how))
		coil_ip_fail(ip, -errno, "shutdown: %s", coil_strerror(-errno));
	else
		coil_ip_finish_int(ip, 0);
	coil_ip_unref(ip);
}

static void shutdown_local(struct sock_call *c)
{
	coil_socket_t *s = c->s;
	struct coil__sock *ss = S(s);
	if (ss->shut_ip) {
		coil__ip_fail_msg(c->ip, -EALREADY, "shutdown in progress");
		return;
	}
	ss->shut_ip = coil_ip_ref(c->ip);
	ss->shut_how = (int)c->n;
	if ((c->n == SHUT_WR || c->n == SHUT_RDWR) &&
	    (s->wq_head || s->send_inflight || s->connecting)) {
		/* Queued writes leave first: shutdown when the queue drains. */
		s->drained_fn = do_shutdown;
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
	sock_call(c);
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
	int rc = coil_channel_wrap(loop, fd, COIL_IO_READ | COIL_IO_WRITE, &s);
	if (rc)
		return rc;
	rc = sock_alloc(s);
	if (rc) {
		s->fd = -1;
		coil_channel_release(s);
		return rc;
	}
	s->sock->family = ss.ss_family;
	s->sock->type = type;
	sl = sizeof(ss);
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
		atomic_store(&s->sock->connected, 1);
	*out = s;
	return 0;
}

/* ---- options and properties ---- */

int coil_socket_set_buffer_size(coil_socket_t *s, int bytes)
{
	if (!s || bytes <= 0)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	S(s)->bufsize = bytes;
	int fd = coil_channel_fileno(s);
	if (fd >= 0 &&
	    (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)) ||
	     setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes))))
		return -errno;
	return 0;
}

int coil_socket_buffer_size(const coil_socket_t *s)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int fd = coil_channel_fileno(s);
	if (fd < 0)
		return S(s)->bufsize ? S(s)->bufsize : -EBADF;
	int v = 0;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &l))
		return -errno;
	return v;
}

static int set_flag(coil_socket_t *s, int *field, int level, int opt, int on)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	*field = on != 0;
	int fd = coil_channel_fileno(s);
	if (fd >= 0 && setsockopt(fd, level, opt, field, sizeof(int)))
		return -errno;
	return 0;
}

int coil_socket_set_nodelay(coil_socket_t *s, int on)
{
	return set_flag(s, s && S(s) ? &S(s)->nodelay : NULL, IPPROTO_TCP,
			TCP_NODELAY, on);
}

int coil_socket_set_keepalive(coil_socket_t *s, int on)
{
	return set_flag(s, s && S(s) ? &S(s)->keepalive : NULL, SOL_SOCKET,
			SO_KEEPALIVE, on);
}

int coil_socket_set_reuseaddr(coil_socket_t *s, int on)
{
	return set_flag(s, s && S(s) ? &S(s)->reuseaddr : NULL, SOL_SOCKET,
			SO_REUSEADDR, on);
}

int coil_socket_set_timeout(coil_socket_t *s, unsigned ms)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	atomic_store(&S(s)->timeout_ms, ms);
	atomic_store(&s->read_timeout_ms, ms);
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

/* getsockname / getpeername of the socket as a coil_sockinfo_t. */
static int sockinfo_of(const coil_socket_t *s, coil_sockinfo_t *out,
		       int (*get)(int, struct sockaddr *, socklen_t *))
{
	if (!s || !out)
		return -EINVAL;
	int fd = coil_channel_fileno(s);
	if (fd < 0)
		return -EBADF;
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	if (get(fd, (struct sockaddr *)&ss, &l))
		return -errno;
	return coil_sockinfo_from((struct sockaddr *)&ss, l, out);
}

int coil_socket_local(const coil_socket_t *s, coil_sockinfo_t *out)
{
	return sockinfo_of(s, out, getsockname);
}

int coil_socket_peer(const coil_socket_t *s, coil_sockinfo_t *out)
{
	int rc = sockinfo_of(s, out, getpeername);
	if (!rc && S(s))
		snprintf(out->reqhost, sizeof(out->reqhost), "%s",
			 S(s)->reqhost);
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
