/* SPDX-License-Identifier: MIT */
/* Batched datagrams (libuv UV_UDP_RECVMMSG, sendmmsg): io_uring has no
 * recvmmsg/sendmmsg opcode, so a batch waits through the ring for its first
 * datagram (or for room to send), then takes or sends the rest in one
 * non-blocking recvmmsg/sendmmsg on the home worker: one syscall per batch
 * instead of one ring operation per datagram. */
#include "internal.h"
#include "sock.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MMSG_MAX 1024

struct mmsg_op {
	struct coil__sockop h;
	size_t n, done;          /* datagrams wanted / handled so far */
	size_t max_size;         /* recv */
	coil_datagrams_t *out;   /* recv: the result being filled */
	struct mmsghdr *hdr;     /* n headers */
	struct iovec *iov;       /* n vectors */
	struct sockaddr_storage *to; /* send: n copied addresses */
	unsigned char *bytes;    /* send: the copied payloads, back to back */
};

static void datagrams_free(void *p)
{
	coil_datagrams_t *d = p;
	for (size_t i = 0; i < d->count; i++)
		coil__free(d->dg[i]);
	coil__free(d);
}

static void recv_drop_unfilled(struct mmsg_op *m);

static void mmsg_free(struct mmsg_op *m)
{
	/* After mmsg_end settled or stashed: the next receive's turn. */
	if (m->h.rx.queued)
		coil__sock_rx_leave(m->h.s, &m->h.rx);
	if (m->out) {
		recv_drop_unfilled(m);
		datagrams_free(m->out);
	}
	coil__free(m->hdr);
	coil__free(m->iov);
	coil__free(m->to);
	coil__free(m->bytes);
	coil__sockop_release(&m->h);
	coil__free(m);
}

static void mmsg_step(struct mmsg_op *m);

/* Ends the batch: recv finishes with what it got (an error only when it got
 * nothing), send with the count sent (an error only when none was). */
static void mmsg_end(struct mmsg_op *m, int err)
{
	if (m->out)
		recv_drop_unfilled(m);
	if (m->done == 0 && err) {
		coil_ip_fail(m->h.ip, err, "%s: %s",
			     m->h.send ? "sendto_many" : "recvfrom_many",
			     err == -ECANCELED ? "aborted" : coil_strerror(err));
	} else if (m->h.send) {
		coil_ip_finish_int(m->h.ip, (int64_t)m->done);
	} else {
		coil_datagrams_t *d = m->out;
		m->out = NULL;
		if (coil_ip_state(m->h.ip) != COIL_IP_PENDING ||
		    coil_ip_finish_ptr(m->h.ip, d, datagrams_free)) {
			/* Settled meanwhile: the datagrams go to the next
			 * receive, in order. */
			for (size_t i = 0; i < d->count; i++)
				coil__sock_stash_push(S(m->h.s), d->dg[i]);
			d->count = 0;
			datagrams_free(d);
		}
	}
	mmsg_free(m);
}

static void recv_fill(struct mmsg_op *m, size_t i, coil_datagram_t *dg)
{
	m->out->dg[m->out->count++] = dg;
	m->done = i + 1;
}

static void mmsg_complete(coil__op *op, int res, unsigned flags)
{
	struct mmsg_op *m = coil__container_of(op, struct mmsg_op, h.op);
	m->h.inflight = false;
	m->h.rx.ring = NULL;
	if (res == -ECANCELED && !m->h.send)
		res = coil__sock_rx_cancel_err(m->h.s, m->h.cancelling);
	if (res < 0) {
		mmsg_end(m, res);
		return;
	}
	if (m->h.send) {
		m->done++;
	} else {
		coil_datagram_t *dg = m->out->dg[m->out->count];
		dg->len = (size_t)res;
		dg->fromlen = m->hdr[m->done].msg_hdr.msg_namelen;
		coil__mem_defined(dg->data, (size_t)res);
		coil__mem_defined(&dg->from, dg->fromlen);
		recv_fill(m, m->done, dg);
	}
	if (m->h.aborted || m->h.cancelling) {
		mmsg_end(m, 0);
		return;
	}
	mmsg_step(m);
}

/* Datagram buffers for slots done..n-1 of a receive. */
static int recv_prepare(struct mmsg_op *m, size_t from)
{
	for (size_t i = from; i < m->n; i++) {
		coil_datagram_t *dg = coil__malloc(sizeof(*dg) + m->max_size);
		if (!dg)
			return -ENOMEM;
		memset(dg, 0, sizeof(*dg));
		m->out->dg[i] = dg; /* parked past count until filled */
		m->iov[i].iov_base = dg->data;
		m->iov[i].iov_len = m->max_size;
		memset(&m->hdr[i], 0, sizeof(m->hdr[i]));
		m->hdr[i].msg_hdr.msg_name = &dg->from;
		m->hdr[i].msg_hdr.msg_namelen = sizeof(dg->from);
		m->hdr[i].msg_hdr.msg_iov = &m->iov[i];
		m->hdr[i].msg_hdr.msg_iovlen = 1;
	}
	return 0;
}

static void recv_drop_unfilled(struct mmsg_op *m)
{
	if (!m->out)
		return;
	for (size_t i = m->out->count; i < m->n; i++) {
		coil__free(m->out->dg[i]);
		m->out->dg[i] = NULL;
	}
}

/* One step on the home worker: as much as a non-blocking batch call does,
 * then (if nothing moved) one ring op that waits. */
static void mmsg_step(struct mmsg_op *m)
{
	coil_socket_t *s = m->h.s;
	if (s->fd < 0 || atomic_load(&s->st) == COIL__CH_CLOSED) {
		if (!m->h.send)
			recv_drop_unfilled(m);
		mmsg_end(m, -EBADF);
		return;
	}
	while (m->done < m->n) {
		int k;
		if (m->h.send)
			k = sendmmsg(s->fd, m->hdr + m->done,
				     (unsigned)(m->n - m->done),
				     MSG_DONTWAIT | MSG_NOSIGNAL);
		else
			k = recvmmsg(s->fd, m->hdr + m->done,
				     (unsigned)(m->n - m->done), MSG_DONTWAIT,
				     NULL);
		if (k > 0) {
			for (int i = 0; i < k; i++) {
				size_t at = m->done;
				if (m->h.send) {
					m->done++;
					continue;
				}
				coil_datagram_t *dg = m->out->dg[at];
				dg->len = m->hdr[at].msg_len;
				dg->fromlen = m->hdr[at].msg_hdr.msg_namelen;
				recv_fill(m, at, dg);
			}
			continue;
		}
		int err = k < 0 ? -errno : -EAGAIN;
		if (err != -EAGAIN) {
			mmsg_end(m, err); /* what was done counts */
			return;
		}
		if (!m->h.send && m->done > 0) {
			mmsg_end(m, 0); /* a receive ends at the first pause */
			return;
		}
		if (atomic_load(&S(s)->nonblocking)) {
			mmsg_end(m, m->done ? 0 : -EAGAIN);
			return;
		}
		break; /* wait through the ring */
	}
	if (m->done == m->n) {
		mmsg_end(m, 0);
		return;
	}
	/* Nothing (more) can move now: wait through the ring for one. */
	int rc = coil__sockop_prep_msg(&m->h, &m->hdr[m->done].msg_hdr, 0,
				       mmsg_complete);
	if (rc) {
		if (!m->h.send)
			recv_drop_unfilled(m);
		mmsg_end(m, rc);
	}
}

static int mmsg_abort(coil_ip_t *ip, void *arg)
{
	return coil__sockop_abort(arg);
}

/* A receive's turn (the head of the socket's queue, udp.c). */
static void mmsg_rx_start(struct coil__rx *r)
{
	struct mmsg_op *m = coil__container_of(r, struct mmsg_op, h.rx);
	if (coil_ip_state(m->h.ip) != COIL_IP_PENDING) {
		mmsg_free(m);
		return;
	}
	/* Datagrams kept from an aborted receive come first. */
	coil_datagram_t *dg;
	while (m->out->count < m->n && (dg = coil__sock_stash_pop(S(m->h.s)))) {
		size_t at = m->out->count;
		coil__free(m->out->dg[at]);
		if (dg->len > m->max_size)
			dg->len = m->max_size;
		recv_fill(m, at, dg);
	}
	if (m->done) {
		mmsg_end(m, 0);
		return;
	}
	if (m->h.s->w->stopping) {
		mmsg_end(m, -ECANCELED); /* no new ring op */
		return;
	}
	mmsg_step(m);
}

static void mmsg_start(coil__task *t)
{
	struct mmsg_op *m = coil__container_of(t, struct mmsg_op, h.task);
	if (m->h.aborted || coil_ip_state(m->h.ip) != COIL_IP_PENDING) {
		if (!m->h.send)
			recv_drop_unfilled(m);
		mmsg_free(m);
		return;
	}
	if (!m->h.send) {
		m->h.rx.start = mmsg_rx_start;
		int rc = coil__sock_rx_enter(m->h.s, &m->h.rx,
					     atomic_load(&S(m->h.s)->nonblocking));
		if (rc)
			mmsg_end(m, rc);
		return;
	}
	mmsg_step(m);
}

static coil_ip_t *mmsg_submit(coil_socket_t *s, struct mmsg_op *m)
{
	coil_ip_t *ip = coil__sockop_submit(s, &m->h, mmsg_start, mmsg_abort);
	if (!ip) {
		if (!m->h.send)
			recv_drop_unfilled(m);
		mmsg_free(m);
	}
	return ip;
}

static struct mmsg_op *mmsg_new(size_t n)
{
	struct mmsg_op *m = coil__calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->n = n;
	m->hdr = coil__calloc(n, sizeof(*m->hdr));
	m->iov = coil__calloc(n, sizeof(*m->iov));
	if (!m->hdr || !m->iov) {
		mmsg_free(m);
		return NULL;
	}
	return m;
}

coil_ip_t *coil_socket_recvfrom_many(coil_socket_t *s, size_t max_count,
				     size_t max_size)
{
	if (!s)
		return NULL;
	if (!S(s))
		return coil__sock_failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (!max_count || max_count > MMSG_MAX || !max_size ||
	    max_size > (1u << 24))
		return coil__sock_failed_ip(s, -EINVAL, "recvfrom_many: %s",
					    "count or size out of range");
	struct mmsg_op *m = mmsg_new(max_count);
	if (!m)
		return NULL;
	m->max_size = max_size;
	m->out = coil__calloc(1, sizeof(*m->out) +
				     max_count * sizeof(m->out->dg[0]));
	if (!m->out || recv_prepare(m, 0)) {
		if (m->out)
			recv_drop_unfilled(m);
		mmsg_free(m);
		return NULL;
	}
	return mmsg_submit(s, m);
}

coil_ip_t *coil_socket_sendto_many(coil_socket_t *s,
				   const coil_dgram_out_t *msgs, size_t n)
{
	if (!s)
		return NULL;
	if (!S(s))
		return coil__sock_failed_ip(s, -ENOTSOCK, "not a socket%s", "");
	if (!msgs || !n || n > MMSG_MAX)
		return coil__sock_failed_ip(s, -EINVAL, "sendto_many: %s",
					    "1..1024 datagrams");
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if ((!msgs[i].data && msgs[i].len) ||
		    msgs[i].tolen > sizeof(struct sockaddr_storage) ||
		    (msgs[i].tolen && !msgs[i].to))
			return coil__sock_failed_ip(s, -EINVAL, "sendto_many: %s",
						    "bad datagram");
		total += msgs[i].len;
	}
	struct mmsg_op *m = mmsg_new(n);
	if (!m)
		return NULL;
	m->h.send = true;
	m->to = coil__calloc(n, sizeof(*m->to));
	m->bytes = coil__malloc(total ? total : 1);
	if (!m->to || !m->bytes) {
		mmsg_free(m);
		return NULL;
	}
	size_t off = 0;
	for (size_t i = 0; i < n; i++) {
		if (msgs[i].len)
			memcpy(m->bytes + off, msgs[i].data, msgs[i].len);
		m->iov[i].iov_base = m->bytes + off;
		m->iov[i].iov_len = msgs[i].len;
		off += msgs[i].len;
		m->hdr[i].msg_hdr.msg_iov = &m->iov[i];
		m->hdr[i].msg_hdr.msg_iovlen = 1;
		if (msgs[i].tolen) {
			memcpy(&m->to[i], msgs[i].to, msgs[i].tolen);
			m->hdr[i].msg_hdr.msg_name = &m->to[i];
			m->hdr[i].msg_hdr.msg_namelen = msgs[i].tolen;
		}
	}
	return mmsg_submit(s, m);
}
