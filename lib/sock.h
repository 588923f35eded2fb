/* SPDX-License-Identifier: MIT */
/* Private state shared by the socket files (socket.c, connect.c,
 * listener.c, udp.c, sockopt.c). Nothing here is part of the API. */
#ifndef COIL_SOCK_H
#define COIL_SOCK_H

#include "internal.h"

struct connector;
struct listener;

/*
 * What only connecting, listening, bound, datagram or shut-down sockets
 * need, made on first use (coil__sock_x): an accepted client or a wrapped
 * stream socket never has one, so its socket state stays 32 bytes (issue
 * 14: idle memory per connection). Fields keep the thread rules they had
 * in struct coil__sock.
 */
struct coil__sockx {
	char reqhost[256];
	struct connector *conn;
	struct listener *lst;
	_Atomic(coil_new_client_cb) cb; /* new-client signal */
	void *cb_ud;
	char unix_path[128]; /* listener path to unlink on close */
	/* shutdown(SHUT_WR) waiting for the write queue */
	coil_ip_t *shut_ip;
	int shut_how;
	int accept_err;    /* the fatal accept error that closed the listener */
	/* udp.c, home worker: datagrams received for a recvfrom that was
	 * aborted (or settled) meanwhile, for the next recvfrom, in order. */
	struct coil__dg_stash *stash_head, **stash_tail;
	/* udp.c, home worker: recvfrom/recvfrom_many waiting their turn, in
	 * call order (struct coil__rx; initialised on first use); only the
	 * head has a ring receive in flight. */
	coil__list rxq;
	bool rx_pumping;
	/* coil_socket_bind on a stream socket before connect (bind_len 0:
	 * none): each connect attempt binds there first. Home worker. */
	struct sockaddr_storage bind_ss;
	socklen_t bind_len;
	int bind_flags;
};

struct coil__sock {
	/* The cold part, NULL until first needed; set once (compare and
	 * exchange, any thread), freed with the socket. */
	_Atomic(struct coil__sockx *) x;
	_Atomic unsigned timeout_ms;
	int bufsize;       /* pending buffer_size, 0 = kernel default */
	int keepidle;      /* TCP_KEEPIDLE seconds, 0 = kernel default */
	uint16_t family;
	uint8_t type;
	int8_t nodelay, keepalive, reuseaddr; /* -1: leave as is */
	_Atomic bool connecting, connected, listening;
	_Atomic bool nonblocking; /* usocket settimeout(0) / setblocking(0) */
	bool vreg;         /* listed as handed out through a handle (listener.c) */
};

/* An accepted client is one allocation, its channel with its socket state
 * right after it (coil__sock_channel_new): it must stay in jemalloc's
 * 224-byte size class (issue 14: RSS per idle connection, libuv ~262 B;
 * the 256-byte class costs 265 B of RSS per object, its 4 KiB slabs'
 * metadata included, the 224-byte class 226 B). */
_Static_assert(sizeof(struct coil_channel_s) + sizeof(struct coil__sock) <= 224,
	       "an accepted socket no longer fits 224 bytes");

/* s's cold part, made now if it has none: NULL only when out of memory.
 * Any thread. */
COIL__HIDDEN struct coil__sockx *coil__sock_x(struct coil__sock *s);
/* s's cold part or NULL if it never needed one. Any thread. */
static inline struct coil__sockx *coil__sock_xq(const struct coil__sock *s)
{
	return atomic_load_explicit(&((struct coil__sock *)s)->x,
				    memory_order_acquire);
}

struct coil__dg_stash {
	struct coil__dg_stash *next;
	coil_datagram_t *dg;
};
/* udp.c, home worker: connect(2) on a datagram socket (its default peer;
 * reads and writes without an address follow), after resolving a name;
 * settles ip. */
COIL__HIDDEN void coil__sock_dgram_connect(coil_socket_t *s, const char *text,
					   int flags, coil_ip_t *ip);
/* listener.c: a handed-out client is being freed (see client_free). */
COIL__HIDDEN void coil__sock_vreg_forget(coil_channel_t *c);
/* udp.c, home worker: the stash of datagrams for the next receive. */
COIL__HIDDEN void coil__sock_stash_push(struct coil__sock *s,
					coil_datagram_t *dg);
COIL__HIDDEN coil_datagram_t *coil__sock_stash_pop(struct coil__sock *s);
/* udp.c, home worker: one receive's place in its socket's queue. enter
 * links r at the tail (0, -ENOMEM, or -EAGAIN when others wait and
 * dontwait is set) and calls r->start when r becomes the head; the receive
 * calls leave when done (or aborted while waiting): the next one starts. */
struct coil__rx {
	coil__list link;
	void (*start)(struct coil__rx *r);
	coil__op *ring;   /* the head's ring receive while in flight */
	bool queued, started;
};
COIL__HIDDEN int coil__sock_rx_enter(coil_socket_t *s, struct coil__rx *r,
				     bool dontwait);
COIL__HIDDEN void coil__sock_rx_leave(coil_socket_t *s, struct coil__rx *r);

/*
 * The head of one socket operation through the ring on the home worker:
 * udp.c's sendto/recvfrom, mmsg.c's batches, fdpass.c's descriptor passing
 * (each embeds it as member h). socket.c serves them all with the helpers
 * below.
 */
struct coil__sockop {
	coil__op op;
	coil__task task;     /* runs the start on the home worker */
	coil_socket_t *s;    /* holds a channel reference */
	coil_ip_t *ip;       /* holds a handle reference */
	struct coil__rx rx;  /* receives: their place in the socket's queue */
	bool send;
	bool inflight;       /* the ring op is submitted */
	bool aborted;        /* aborted before it was submitted: it never will be */
	bool cancelling;     /* a cancel of the ring op is submitted */
};
/* Any thread: makes o's handle on s's home worker with abort hook
 * abort(ip, o), takes a reference on s and on the handle, and runs start
 * (o->task) there, now if this is it. NULL: out of memory, nothing taken
 * (the caller frees what o holds). */
COIL__HIDDEN coil_ip_t *coil__sockop_submit(coil_socket_t *s,
		struct coil__sockop *o, void (*start)(coil__task *),
		coil_abort_cb abort);
/* Home worker, the abort hooks' common part. Not submitted yet: marks o
 * aborted (a receive waiting its turn leaves the queue and o's task is
 * posted to free it) and returns 0; in flight: starts a cancel of the ring
 * op once and returns 1, or -EBUSY if no cancel could be submitted. */
COIL__HIDDEN int coil__sockop_abort(struct coil__sockop *o);
/* Home worker: prepares a sendmsg (send: MSG_NOSIGNAL | flags) or a
 * recvmsg (flags) of msg on o's socket that completes with complete: 0
 * with o in flight (a receive's rx.ring set), -EBADF when the socket has
 * no descriptor or is closed, or the prep's error. */
COIL__HIDDEN int coil__sockop_prep_msg(struct coil__sockop *o,
		struct msghdr *msg, int flags,
		void (*complete)(coil__op *, int, unsigned));
/* Drops the references submit took (any thread). */
COIL__HIDDEN void coil__sockop_release(struct coil__sockop *o);

/* udp.c, socket close (home worker): the head's ring receive is cancelled;
 * it and the receives behind it fail with -EBADF. */
COIL__HIDDEN void coil__sock_rx_close(coil_socket_t *s);
/* udp.c: the error for a receive whose ring op ended with -ECANCELED:
 * -EBADF if the socket closed (not an abort, not the loop stopping). */
COIL__HIDDEN int coil__sock_rx_cancel_err(coil_socket_t *s, bool aborting);
/* udp.c: frees the stashed datagrams (socket free). */
COIL__HIDDEN void coil__sock_stash_free(struct coil__sock *s);

static inline struct coil__sock *S(const coil_socket_t *s)
{
	return coil__ch_sock(s);
}

/* ---- forwarding to the home worker (socket.c) */
struct sock_call {
	coil__task task;
	coil_socket_t *s;
	void (*fn)(struct sock_call *c);
	coil_ip_t *ip;
	char *text;
	int flags;
	size_t n;
};

/* Runs fn on s's home worker (now if this is it). c is consumed. */
COIL__HIDDEN void coil__sock_call(struct sock_call *c);
COIL__HIDDEN struct sock_call *coil__sock_call_new(coil_socket_t *s,
		coil_ip_t *ip, void (*fn)(struct sock_call *));
/* A handle that failed at once (bad arguments), never NULL unless OOM. */
COIL__HIDDEN coil_ip_t *coil__sock_failed_ip(coil_socket_t *s, int err,
		const char *fmt, const char *arg);
/* A new channel homed on w with its socket state in the same allocation
 * (coil__channel_new's rules): 0 or -ENOMEM. */
COIL__HIDDEN int coil__sock_channel_new(coil__worker *w, coil_channel_t **out);
/* Applies the remembered options to a fresh descriptor. */
COIL__HIDDEN void coil__sock_apply_opts(struct coil__sock *s, int fd);

/* connect.c: ends a connect in progress with err (socket closing). */
COIL__HIDDEN void coil__sock_conn_close(struct coil__sock *s, int err,
					const char *msg);
/* listener.c: the close part for listeners (stops shards, fails accepts,
 * unlinks the Unix path). */
COIL__HIDDEN void coil__sock_listener_close(coil_channel_t *ch);
/* listener.c: Unix path rules before bind (EADDRINUSE if live). */
struct sockaddr_un;
COIL__HIDDEN int coil__sock_unix_prepare(const struct sockaddr_un *sun,
					 socklen_t len);

#define sock_call_new coil__sock_call_new
#define failed_ip coil__sock_failed_ip
#define apply_opts coil__sock_apply_opts
#define unix_prepare coil__sock_unix_prepare

#endif /* COIL_SOCK_H */
