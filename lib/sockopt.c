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
