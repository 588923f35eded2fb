/* SPDX-License-Identifier: MIT */
/* coil_socket_listen / accept: sharded listeners with multishot accept,
 * clients handed to the new-client signal or the accept() queue. */
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

#include <liburing/io_uring.h>

static void shard_task_arm(coil__task *t);

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
	unsigned errs;         /* errors in a row */
	unsigned backoff_ms;
	_Atomic int refs;      /* ops in flight + queued tasks + 1 */
};

struct listener {
	coil_socket_t *s;      /* home: s->w (a channel reference) */
	_Atomic int refs;
	size_t nshards;
	bool distribute;       /* one shard; clients spread round-robin */
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

/*
 * A client on its way to an accept() caller (in a handoff task, then in the
 * listener's queue) is held twice: by the reference that becomes the
 * caller's, and by one of its own (taken on the client's worker in
 * deliver). At loop stop the client's worker may close it and drop the
 * first on the caller's behalf before the listener's home worker is done
 * with it; the second keeps its memory valid until the listener lets go.
 */
static void client_drop(coil_socket_t *c)
{
	coil_channel_release(c); /* a no-op if the stop already did it */
	coil__channel_put(c);
}

static void vreg_add(coil_socket_t *c);

/* Hands a queued client to its caller: the caller's reference stays. */
static coil_socket_t *client_give(coil_socket_t *c)
{
	vreg_add(c);
	coil__channel_put(c);
	return c;
}

static void listener_put(struct listener *l)
{
	if (atomic_fetch_sub(&l->refs, 1) != 1)
		return;
	for (size_t i = 0; i < l->qlen; i++)
		client_drop(l->queue[i]);
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
static void accept_req_done(struct accept_req *r);
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
	if (coil__sock_channel_new(w, &ch))
		return NULL;
	S(ch)->family = family;
	atomic_store(&S(ch)->connected, 1);
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
	if (l->qlen >= (size_t)l->backlog || atomic_load(&l->closing) ||
	    atomic_load(&l->s->w->loop->stopping)) {
		/* Nobody takes clients: like a full kernel backlog, turn the
		 * newest away instead of queueing without bound. */
		client_drop(h->client);
		goto out;
	}
	if (l->qlen == l->qcap) {
		size_t cap = l->qcap ? l->qcap * 2 : 16;
		coil_socket_t **q = coil__realloc(l->queue, cap * sizeof(*q));
		if (!q) {
			client_drop(h->client);
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
	coil_socket_t *c = NULL;
	if (!coil__tls_worker->stopping && !atomic_load(&h->l->closing))
		c = client_new(coil__tls_worker, h->fd, h->family);
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
	struct coil__sockx *ls = coil__sock_xq(S(l->s)); /* made by listen */
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
	coil__channel_get(client); /* see client_drop */
	h->task.run = handoff_home_run;
	atomic_fetch_add(&l->refs, 1);
	coil__post(l->s->w, &h->task);
}

/*
 * What an accept error means (accept(2), "Error handling"): errors of one
 * connection are skipped (the next is accepted), resource shortages back
 * off, anything else is about the listening socket and is fatal.
 */
enum { ACC_SKIP, ACC_BACKOFF, ACC_FATAL };
#define ACC_SKIP_MAX 16 /* this many skips in a row back off too */

static int accept_error_class(int err)
{
	switch (-err) {
	case ECONNABORTED: case EPROTO: case EPERM: case ENETDOWN:
	case ENOPROTOOPT: case EHOSTDOWN: case ENONET: case EHOSTUNREACH:
	case ENETUNREACH: case EINTR: case EAGAIN: case ETIMEDOUT:
	case ECONNRESET:
		return ACC_SKIP;
	case EMFILE: case ENFILE: case ENOBUFS: case ENOMEM:
		return ACC_BACKOFF;
	default:
		return ACC_FATAL;
	}
}

struct listener_fail_task {
	coil__task task;
	struct listener *l;
	int err;
};

/* On the listener's home worker: fail the waiting accepts with the error,
 * remember it for later ones, close the listener (closed, expected = 0). */
static void listener_fail_run(coil__task *t)
{
	struct listener_fail_task *f =
		coil__container_of(t, struct listener_fail_task, task);
	struct listener *l = f->l;
	coil_socket_t *s = l->s;
	struct coil__sockx *x = coil__sock_xq(S(s)); /* made by listen */
	if (!atomic_load(&l->closing) && x->lst == l) {
		char msg[96];
		snprintf(msg, sizeof(msg), "accept failed: %s",
			 coil_strerror(f->err));
		x->accept_err = f->err;
		while (!coil__list_empty(&l->pending)) {
			struct accept_req *r = coil__container_of(
				l->pending.next, struct accept_req, link);
			coil__list_del(&r->link);
			if (r->timer_armed)
				coil__timer_cancel(&r->timer);
			coil__ip_fail_msg(r->ip, f->err, msg);
			accept_req_done(r);
		}
		coil__channel_close_local(s, true, false);
	}
	listener_put(l);
	coil__free(f);
}

static void listener_fail(struct listener *l, int err)
{
	struct listener_fail_task *f = coil__calloc(1, sizeof(*f));
	if (!f)
		return; /* the shard stops; the listener stays as it is */
	f->l = l;
	f->err = err;
	f->task.run = listener_fail_run;
	atomic_fetch_add(&l->refs, 1);
	if (coil__on_worker(l->s->w))
		listener_fail_run(&f->task);
	else
		coil__post(l->s->w, &f->task);
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
		sh->errs = 0;
		if (sh->closing || atomic_load(&l->closing) ||
		    sh->w->stopping) {
			close(res);
		} else if (l->distribute && l->s->w->loop->nworkers > 1) {
			/* One accepting shard: clients are spread over the
			 * workers round-robin. */
			unsigned i = atomic_fetch_add(&l->rr, 1) %
				     l->s->w->loop->nworkers;
			coil__worker *tw = &l->s->w->loop->workers[i];
			struct handoff *h = coil__calloc(1, sizeof(*h));
			if (!h) {
				close(res);
			} else {
				h->l = l;
				h->fd = res;
				h->family = S(l->s)->family;
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
	} else if (res == -ECANCELED) {
		/* Our own cancel (close, stop): nothing to do. */
	} else if (accept_error_class(res) == ACC_FATAL) {
		/* The listening socket itself is broken (shut down, closed
		 * under us...): re-arming would spin. Report it and close. */
		if (!sh->closing && !atomic_load(&l->closing))
			listener_fail(l, res);
		sh->closing = true;
	} else if (accept_error_class(res) == ACC_BACKOFF ||
		   ++sh->errs > ACC_SKIP_MAX) {
		/* Out of descriptors or memory, or skippable errors that do
		 * not stop: do not spin and do not give up. Back off (100 ms
		 * doubling to 1.6 s) and try again. */
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
	if (more && sh->closing)
		shard_disarm(sh);
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

/*
 * Clients handed out through accept()/accept_many() handles. A handle whose
 * value nobody stole releases the client when it is freed, which may be
 * after the loop's stop closed and freed that client (rule 16: handles
 * outlive the loop), or on another thread at the very moment the stop
 * frees it. So the value's free function never trusts the pointer: handed
 * out clients are listed here (a process-wide set keyed by address) until
 * either the handle's free function takes them out or the channel is freed
 * (sock_free), whichever comes first, under one lock. Found, with a
 * reference still held, it is released; not found, the stop already did.
 * (A client freed by the stop whose address is reused by a newer handed-out
 * client before the old handle is freed would be mistaken for it; the
 * window needs a handle kept across coil_loop_free and a new loop's
 * accept.)
 */
#define VREG_BUCKETS 1024u

struct vreg_node {
	struct vreg_node *next;
	coil_channel_t *ch;
};

static pthread_mutex_t vreg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vreg_node *vreg[VREG_BUCKETS];

static unsigned vreg_hash(const void *p)
{
	uintptr_t x = (uintptr_t)p >> 4;
	x ^= x >> 15;
	x *= 0x2c1b3c6dU;
	x ^= x >> 12;
	return (unsigned)(x % VREG_BUCKETS);
}

/* Lists c (home worker of the listener, at hand-out). */
static void vreg_add(coil_socket_t *c)
{
	struct vreg_node *n = coil__malloc(sizeof(*n));
	if (!n)
		return; /* its handle's free function then leaves it alone */
	n->ch = c;
	S(c)->vreg = true;
	unsigned h = vreg_hash(c);
	pthread_mutex_lock(&vreg_lock);
	n->next = vreg[h];
	vreg[h] = n;
	pthread_mutex_unlock(&vreg_lock);
}

/* Takes c out of the set; true if it was there. Under vreg_lock. */
static bool vreg_take_locked(const coil_channel_t *c)
{
	for (struct vreg_node **pp = &vreg[vreg_hash(c)]; *pp;
	     pp = &(*pp)->next) {
		if ((*pp)->ch == c) {
			struct vreg_node *n = *pp;
			*pp = n->next;
			coil__free(n);
			return true;
		}
	}
	return false;
}

/* sock_free: the channel is being freed; forget it. */
void coil__sock_vreg_forget(coil_channel_t *c)
{
	pthread_mutex_lock(&vreg_lock);
	vreg_take_locked(c);
	pthread_mutex_unlock(&vreg_lock);
}

/* The value of an accept() result nobody stole. */
static void client_free(void *p)
{
	coil_channel_t *c = p;
	bool held = false;
	pthread_mutex_lock(&vreg_lock);
	if (vreg_take_locked(c)) {
		/* Listed, so not freed yet; take a reference unless its last
		 * one is already gone (its free is waiting for this lock). */
		int refs = atomic_load(&c->refs);
		while (refs > 0 &&
		       !atomic_compare_exchange_weak(&c->refs, &refs, refs + 1))
			;
		held = refs > 0;
	}
	pthread_mutex_unlock(&vreg_lock);
	if (held) {
		coil_channel_release(c);
		coil__channel_put(c);
	}
}

/* An accept_many result nobody stole: release its sockets too. */
static void clients_free(void *p)
{
	coil_clients_t *cl = p;
	for (size_t i = 0; i < cl->count; i++)
		client_free(cl->sock[i]);
	coil__free(cl);
}

static void serve_accepts(struct listener *l)
{
	/* Once the loop stops, clients are the stop's to close: handing one
	 * out now would give the caller a socket being freed under it. */
	if (atomic_load(&l->s->w->loop->stopping))
		return;
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
			coil_ip_finish_ptr(r->ip, client_give(c), client_free);
		} else {
			size_t n = r->max && r->max < l->qlen ? r->max : l->qlen;
			coil_clients_t *cl = coil__malloc(sizeof(*cl) +
							  n * sizeof(cl->sock[0]));
			if (!cl) {
				coil__ip_fail_msg(r->ip, -ENOMEM, NULL);
			} else {
				cl->count = n;
				for (size_t i = 0; i < n; i++)
					cl->sock[i] = client_give(l->queue[i]);
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
	struct coil__sockx *x = coil__sock_xq(S(c->s));
	struct listener *l = x ? x->lst : NULL;
	if (!l && x && x->accept_err) {
		coil_ip_fail(c->ip, x->accept_err,
			     "listener stopped: accept failed: %s",
			     coil_strerror(x->accept_err));
		return;
	}
	if (!l || atomic_load(&l->closing)) {
		coil__ip_fail_msg(c->ip, l ? -EBADF : -EINVAL,
				  l ? "listener closed" : "socket is not listening");
		return;
	}
	if (atomic_load(&S(c->s)->nonblocking) && !l->qlen) {
		coil__ip_fail_msg(c->ip, -EAGAIN,
				  "accept: no client waiting (non-blocking "
				  "socket)");
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
	coil__sock_call(c);
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

/* The listener part of the channel's close hook: stops the shards, fails
 * pending accepts, removes the Unix path. Runs on the home worker. */
void coil__sock_listener_close(coil_channel_t *ch)
{
	struct coil__sock *s = S(ch);
	struct coil__sockx *x = coil__sock_xq(s);
	struct listener *l = x ? x->lst : NULL;
	if (!l)
		return;
	x->lst = NULL;
	atomic_store(&s->listening, 0);
	atomic_store(&ch->listening, false); /* chan: see read_refused */
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
	if (x->unix_path[0]) {
		unlink(x->unix_path);
		x->unix_path[0] = 0;
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
	int one = 1, zero = 0, reuse = s->reuseaddr >= 0 ? s->reuseaddr : 1;
	if (sa->sa_family != AF_UNIX) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(int));
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
int coil__sock_unix_prepare(const struct sockaddr_un *sun, socklen_t len)
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
	struct coil__sockx *x = coil__sock_x(ss);
	if (!x)
		return -ENOMEM;
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
	/*
	 * Exclusive by default: one listening socket without SO_REUSEPORT, so
	 * any other bind to the port fails with -EADDRINUSE. It has one shard,
	 * on the home worker, and accepted clients are spread over the workers
	 * round-robin (as Unix listeners always are; node's cluster does the
	 * same because the kernel's wake-ups favour one waiter: several
	 * multishot accepts on one socket gave every client to one worker).
	 * COIL_ADDR_REUSEPORT makes one SO_REUSEPORT socket and multishot
	 * accept per worker instead: the kernel spreads connections by hash,
	 * with no hand-off, and any socket of the same user may join.
	 */
	bool share = !is_unix && (flags & COIL_ADDR_REUSEPORT);
	size_t n = share ? loop->nworkers : 1;
	struct listener *l = coil__calloc(1, sizeof(*l) + n * sizeof(l->sh[0]));
	if (!l)
		return -ENOMEM;
	l->s = s;
	l->nshards = n;
	l->distribute = !share;
	l->backlog = backlog;
	/* Every shard's fd first, so a failure part-way closes only what was
	 * made (zeroed ones closed descriptor 0: another worker's eventfd). */
	for (size_t i = 0; i < n; i++)
		l->sh[i].fd = -1;
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
		sh->w = share ? &loop->workers[i] : s->w;
		rc = bind_listen((struct sockaddr *)&ss_addr, sslen, backlog,
				 share, ss, &sh->fd);
		if (rc)
			break;
		if (i == 0 && share) {
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
		snprintf(x->unix_path, sizeof(x->unix_path), "%s",
			 ((struct sockaddr_un *)&ss_addr)->sun_path);
	/* Each shard holds a listener reference until its last op is done. */
	atomic_fetch_add(&l->refs, (int)n);
	coil__channel_get(s);
	x->lst = l;
	atomic_store(&ss->listening, 1);
	/* chan: reads and writes on a listener fail at once (-ENOTCONN). */
	atomic_store(&s->listening, true);
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
	struct coil__sockx *x = coil__sock_x(S(s));
	if (!x)
		return -ENOMEM;
	x->cb_ud = ud;
	atomic_store(&x->cb, cb);
	return 0;
}

