/* SPDX-License-Identifier: MIT */
/* Socket options: remembered before a descriptor exists, applied to it
 * when it does, set at once otherwise. */
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

/* The descriptor is used under the channel's fd lock (chan, issue 12): a
 * close on the home worker cannot hand the number to a new file meanwhile.
 * -EBADF means no descriptor (yet, or any more). */
struct opt_call {
	int get, level, opt;
	void *val;
	socklen_t len;
};

static int opt_on_fd(int fd, void *arg)
{
	struct opt_call *o = arg;
	int rc = o->get ? getsockopt(fd, o->level, o->opt, o->val, &o->len)
			: setsockopt(fd, o->level, o->opt, o->val, o->len);
	return rc ? -errno : 0;
}

static int fd_opt(coil_socket_t *s, int get, int level, int opt, void *val,
		  socklen_t len)
{
	struct opt_call o = {get, level, opt, val, len};
	return coil__channel_fd_call(s, opt_on_fd, &o);
}

int coil_socket_set_buffer_size(coil_socket_t *s, int bytes)
{
	if (!s || bytes <= 0)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	S(s)->bufsize = bytes;
	int rc = fd_opt(s, 0, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
	if (!rc)
		rc = fd_opt(s, 0, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
	return rc == -EBADF ? 0 : rc;
}

int coil_socket_buffer_size(const coil_socket_t *s)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int v = 0;
	int rc = fd_opt((coil_socket_t *)s, 1, SOL_SOCKET, SO_RCVBUF, &v,
			sizeof(v));
	if (rc == -EBADF)
		return S(s)->bufsize ? S(s)->bufsize : -EBADF;
	return rc ? rc : v;
}

static int set_flag(coil_socket_t *s, int *field, int level, int opt, int on)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	*field = on != 0;
	int rc = fd_opt(s, 0, level, opt, field, sizeof(int));
	return rc == -EBADF ? 0 : rc;
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
