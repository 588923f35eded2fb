/* SPDX-License-Identifier: MIT */
/* Descriptor passing over Unix sockets (SCM_RIGHTS, both ways): a sendmsg /
 * recvmsg with ancillary data through the ring on the home worker. */
#include "internal.h"
#include "sock.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct fd_op {
	struct coil__sockop h;
	struct msghdr msg;
	struct iovec iov;
	int nfds;                 /* send: our dups, closed when done */
	int fds[COIL_FDMSG_MAX];
	coil_fdmsg_t *m;          /* recv: the result being filled */
	void *data;               /* send: a copy of the bytes */
	/* Aligned control buffer. Last: clang folds CMSG_SPACE() to a
	 * constant only as a GNU extension, allowed at the end alone. */
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * COIL_FDMSG_MAX)];
	} ctl;
};

/* The value's free function: descriptors nobody stole are closed. */
static void fdmsg_free(void *p)
{
	coil_fdmsg_t *m = p;
	for (int i = 0; i < m->nfds; i++)
		if (m->fds[i] >= 0)
			close(m->fds[i]);
	coil__free(m);
}

static void fd_op_free(struct fd_op *d)
{
	for (int i = 0; i < d->nfds; i++)
		close(d->fds[i]);
	coil__sockop_release(&d->h);
	coil__free(d->data);
	coil__free(d);
}

/* Descriptors that arrived in the control data (closing any that do not
 * fit, as the kernel truncates with MSG_CTRUNC). */
static void take_fds(struct fd_op *d)
{
	coil_fdmsg_t *m = d->m;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&d->msg); c;
	     c = CMSG_NXTHDR(&d->msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *fds = (int *)CMSG_DATA(c);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, &fds[i], sizeof(fd));
			if (m->nfds < COIL_FDMSG_MAX)
				m->fds[m->nfds++] = fd;
			else
				close(fd);
		}
	}
}

static void fd_complete(coil__op *op, int res, unsigned flags)
{
	struct fd_op *d = coil__container_of(op, struct fd_op, h.op);
	d->h.inflight = false;
	if (res < 0) {
		coil_ip_fail(d->h.ip, res, "%s: %s",
			     d->h.send ? "send_fds" : "recv_fds",
			     res == -ECANCELED ? "aborted" : coil_strerror(res));
		coil__free(d->m);
	} else if (d->h.send) {
		coil_ip_finish_int(d->h.ip, res);
	} else {
		coil__mem_defined(d->m->data, (size_t)res);
		coil__mem_defined(d->ctl.buf, d->msg.msg_controllen);
		d->m->len = (size_t)res;
		take_fds(d);
		if (coil_ip_state(d->h.ip) != COIL_IP_PENDING ||
		    coil_ip_finish_ptr(d->h.ip, d->m, fdmsg_free))
			fdmsg_free(d->m); /* settled meanwhile (cannot be: the
					   * abort hook waits for this) */
	}
	fd_op_free(d);
}

static int fd_abort(coil_ip_t *ip, void *arg)
{
	return coil__sockop_abort(arg);
}

static void fd_start(coil__task *t)
{
	struct fd_op *d = coil__container_of(t, struct fd_op, h.task);
	if (d->h.aborted || coil_ip_state(d->h.ip) != COIL_IP_PENDING) {
		coil__free(d->m);
		fd_op_free(d);
		return;
	}
	int rc = coil__sockop_prep_msg(&d->h, &d->msg,
				       d->h.send ? 0 : MSG_CMSG_CLOEXEC,
				       fd_complete);
	if (rc)
		fd_complete(&d->h.op, rc, 0);
}

static coil_ip_t *fd_submit(coil_socket_t *s, struct fd_op *d)
{
	d->msg.msg_iov = &d->iov;
	d->msg.msg_iovlen = 1;
	coil_ip_t *ip = coil__sockop_submit(s, &d->h, fd_start, fd_abort);
	if (!ip) {
		for (int i = 0; i < d->nfds; i++)
			close(d->fds[i]);
		coil__free(d->m);
		coil__free(d->data);
		coil__free(d);
	}
	return ip;
}

static int unix_check(coil_socket_t *s)
{
	if (!S(s))
		return -ENOTSOCK;
	if (S(s)->family != AF_UNIX)
		return -EOPNOTSUPP;
	return 0;
}

coil_ip_t *coil_socket_send_fds(coil_socket_t *s, const int *fds, int nfds,
				const void *data, size_t len)
{
	if (!s)
		return NULL;
	int rc = unix_check(s);
	if (rc)
		return coil__sock_failed_ip(s, rc, "send_fds: %s",
					    "not a Unix socket");
	if (nfds < 1 || nfds > COIL_FDMSG_MAX || !fds || !data || !len)
		return coil__sock_failed_ip(s, -EINVAL, "send_fds: %s",
					    "1..COIL_FDMSG_MAX descriptors and "
					    "at least one byte");
	struct fd_op *d = coil__calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->h.send = true;
	/* Our own duplicates: the caller may close its descriptors as soon
	 * as this returns; ours are closed once the kernel has its own. */
	for (int i = 0; i < nfds; i++) {
		int fd = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
		if (fd < 0) {
			int err = -errno;
			for (int j = 0; j < d->nfds; j++)
				close(d->fds[j]);
			coil__free(d);
			return coil__sock_failed_ip(s, err, "send_fds: %s",
						    "bad descriptor");
		}
		d->fds[d->nfds++] = fd;
	}
	d->data = coil__malloc(len);
	if (!d->data) {
		for (int j = 0; j < d->nfds; j++)
			close(d->fds[j]);
		coil__free(d);
		return NULL;
	}
	memcpy(d->data, data, len);
	d->iov.iov_base = d->data;
	d->iov.iov_len = len;
	memset(&d->ctl, 0, sizeof(d->ctl));
	d->msg.msg_control = d->ctl.buf;
	d->msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
	struct cmsghdr *c = CMSG_FIRSTHDR(&d->msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
	memcpy(CMSG_DATA(c), d->fds, sizeof(int) * (size_t)nfds);
	return fd_submit(s, d);
}

coil_ip_t *coil_socket_recv_fds(coil_socket_t *s, size_t max)
{
	if (!s)
		return NULL;
	int rc = unix_check(s);
	if (rc)
		return coil__sock_failed_ip(s, rc, "recv_fds: %s",
					    "not a Unix socket");
	if (!max || max > (1u << 24))
		return coil__sock_failed_ip(s, -EINVAL, "recv_fds: %s",
					    "size out of range");
	struct fd_op *d = coil__calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->m = coil__calloc(1, sizeof(*d->m) + max);
	if (!d->m) {
		coil__free(d);
		return NULL;
	}
	d->iov.iov_base = d->m->data;
	d->iov.iov_len = max;
	d->msg.msg_control = d->ctl.buf;
	d->msg.msg_controllen = sizeof(d->ctl.buf);
	return fd_submit(s, d);
}
