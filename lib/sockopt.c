/* SPDX-License-Identifier: MIT */
/* Socket options: remembered before a descriptor exists, applied to it
 * when it does, set at once otherwise. */
#include "internal.h"
#include "sock.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <net/if.h>
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

static int set_flag(coil_socket_t *s, int8_t *field, int level, int opt,
		    int on)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int v = on != 0;
	*field = (int8_t)v;
	int rc = fd_opt(s, 0, level, opt, &v, sizeof(int));
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
	atomic_store(&S(s)->timeout_ms, ms); /* also the read timeout */
	return 0;
}

int coil_socket_set_blocking(coil_socket_t *s, int blocking)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	atomic_store(&S(s)->nonblocking, !blocking);
	atomic_store(&s->sock_nonblock, !blocking && S(s)->type == SOCK_STREAM);
	/* Start (or stop) receiving ahead on the home worker. */
	coil__channel_register(s);
	return 0;
}

/* libuv uv_tcp_keepalive(handle, enable, delay): SO_KEEPALIVE and the idle
 * time before the first probe (TCP_KEEPIDLE, seconds). */
int coil_socket_set_keepalive_delay(coil_socket_t *s, int on,
				    unsigned delay_s)
{
	if (!s || (on && (delay_s < 1 || delay_s > 32767)))
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int rc = coil_socket_set_keepalive(s, on);
	if (rc || !on)
		return rc;
	int v = (int)delay_s;
	S(s)->keepidle = v;
	rc = fd_opt(s, 0, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof(v));
	return rc == -EBADF ? 0 : rc;
}

/* libuv uv_tcp_close_reset: SO_LINGER {1, 0}, then an immediate close: the
 * kernel sends RST instead of FIN and drops what is unsent. */
int coil_socket_close_reset(coil_socket_t *s)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	if (S(s)->type != SOCK_STREAM || S(s)->family == AF_UNIX)
		return -EOPNOTSUPP;
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	int rc = fd_opt(s, 0, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (rc && rc != -EBADF)
		return rc;
	return coil_channel_close(s, 1);
}

static int ip_level_opt(coil_socket_t *s, int v4opt, int v6opt, int val)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int fam = S(s)->family;
	if (fam != AF_INET && fam != AF_INET6)
		return -EOPNOTSUPP;
	return fd_opt(s, 0, fam == AF_INET ? IPPROTO_IP : IPPROTO_IPV6,
		      fam == AF_INET ? v4opt : v6opt, &val, sizeof(val));
}

int coil_socket_set_broadcast(coil_socket_t *s, int on)
{
	if (!s)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int v = on != 0;
	return fd_opt(s, 0, SOL_SOCKET, SO_BROADCAST, &v, sizeof(v));
}

int coil_socket_set_ttl(coil_socket_t *s, int ttl)
{
	if (ttl < 1 || ttl > 255)
		return -EINVAL;
	return ip_level_opt(s, IP_TTL, IPV6_UNICAST_HOPS, ttl);
}

int coil_socket_set_multicast_ttl(coil_socket_t *s, int ttl)
{
	if (ttl < 0 || ttl > 255)
		return -EINVAL;
	return ip_level_opt(s, IP_MULTICAST_TTL, IPV6_MULTICAST_HOPS, ttl);
}

int coil_socket_set_multicast_loop(coil_socket_t *s, int on)
{
	return ip_level_opt(s, IP_MULTICAST_LOOP, IPV6_MULTICAST_LOOP, on != 0);
}

/* libuv uv_udp_set_membership: group is a numeric multicast address; iface
 * is, for IPv4, the local address of the interface (NULL: the kernel
 * picks), for IPv6 an interface name (NULL: the kernel picks). */
int coil_socket_set_membership(coil_socket_t *s, const char *group,
			       const char *iface, int join)
{
	if (!s || !group)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	int fam = S(s)->family;
	if (fam == AF_INET) {
		struct ip_mreqn m = {0};
		if (inet_pton(AF_INET, group, &m.imr_multiaddr) != 1 ||
		    !IN_MULTICAST(ntohl(m.imr_multiaddr.s_addr)))
			return -EINVAL;
		if (iface && inet_pton(AF_INET, iface, &m.imr_address) != 1)
			return -EINVAL;
		return fd_opt(s, 0, IPPROTO_IP,
			      join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &m,
			      sizeof(m));
	}
	if (fam == AF_INET6) {
		struct ipv6_mreq m = {0};
		if (inet_pton(AF_INET6, group, &m.ipv6mr_multiaddr) != 1 ||
		    !IN6_IS_ADDR_MULTICAST(&m.ipv6mr_multiaddr))
			return -EINVAL;
		if (iface && !(m.ipv6mr_interface = if_nametoindex(iface)))
			return -ENODEV;
		return fd_opt(s, 0, IPPROTO_IPV6,
			      join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP, &m,
			      sizeof(m));
	}
	return -EOPNOTSUPP;
}

/* IP_MULTICAST_IF: the interface multicast is sent from (IPv4: its local
 * address; IPv6: its name). */
int coil_socket_set_multicast_interface(coil_socket_t *s, const char *iface)
{
	if (!s || !iface)
		return -EINVAL;
	if (!S(s))
		return -ENOTSOCK;
	if (S(s)->family == AF_INET) {
		struct in_addr a;
		if (inet_pton(AF_INET, iface, &a) != 1)
			return -EINVAL;
		return fd_opt(s, 0, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof(a));
	}
	if (S(s)->family == AF_INET6) {
		int idx = (int)if_nametoindex(iface);
		if (!idx)
			return -ENODEV;
		return fd_opt(s, 0, IPPROTO_IPV6, IPV6_MULTICAST_IF, &idx,
			      sizeof(idx));
	}
	return -EOPNOTSUPP;
}
