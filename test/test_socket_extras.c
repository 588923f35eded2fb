/* SPDX-License-Identifier: MIT */
/* Issue 13, what libuv and usocket users reach for: non-blocking mode
 * (accept, recvfrom, connect), keepalive with a delay, close with reset,
 * UDP broadcast / TTL / multicast membership, SCM_RIGHTS descriptor passing
 * both ways with another process, reverse lookup off the worker. */
#include "helpers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned short local_port(coil_socket_t *s)
{
	coil_sockinfo_t si;
	if (coil_socket_local(s, &si))
		return 0;
	return (unsigned short)si.port;
}

/* usocket settimeout(0): accept and recvfrom that cannot complete now fail
 * with -EAGAIN at once and leave nothing behind: the datagram sent after
 * the failed recvfrom goes to the next one, the client that connects after
 * the failed accept to the next accept. */
static void test_nonblocking_accept_recvfrom(void)
{
	coil_loop_t *loop = t_loop(2);
	coil_socket_t *l = NULL, *u = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &l));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 16, 0));
	T_ASSERT_OK(coil_socket_set_blocking(l, 0));
	coil_ip_t *a = coil_socket_accept(l);
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_error(a), -EAGAIN);
	coil_ip_unref(a);
	int fd = t_connect_tcp4(local_port(l));
	/* Blocking again to wait for it (non-blocking would race the hand-off
	 * from the accepting worker). */
	T_ASSERT_OK(coil_socket_set_blocking(l, 1));
	a = coil_socket_accept(l);
	T_ASSERT_OK(t_wait(a));
	T_ASSERT_OK(coil_ip_error(a));
	coil_ip_unref(a);
	close(fd);

	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &u));
	T_ASSERT_OK(coil_socket_bind(u, "127.0.0.1:0", 0));
	T_ASSERT_OK(coil_socket_set_blocking(u, 0));
	for (int i = 0; i < 10; i++) {
		coil_ip_t *r = coil_socket_recvfrom(u, 64);
		T_ASSERT_OK(t_wait(r));
		CU_ASSERT_EQUAL(coil_ip_error(r), -EAGAIN);
		coil_ip_unref(r);
	}
	int sfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in to = {.sin_family = AF_INET,
				 .sin_port = htons(local_port(u)),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CU_ASSERT(sendto(sfd, "nb", 2, 0, (struct sockaddr *)&to, sizeof(to)) == 2);
	close(sfd);
	/* Loopback delivers before sendto returns: the datagram is there. */
	coil_ip_t *r = coil_socket_recvfrom(u, 64);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	coil_datagram_t *dg = coil_ip_ptr(r);
	CU_ASSERT(dg && dg->len == 2 && memcmp(dg->data, "nb", 2) == 0);
	coil_ip_unref(r);
	coil_channel_release(u);
	coil_channel_release(l);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* usocket recv in non-blocking mode: -EAGAIN when neither coil nor the
 * kernel holds a byte, taking nothing; the bytes sent afterwards (and a
 * partial line) are all still read, in order. */
static void test_nonblocking_recv(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *s = NULL;
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	T_ASSERT_OK(coil_socket_new(loop, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_ip_t *ip = coil_socket_connect(s, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	int peer = accept(lfd, NULL, NULL);
	T_ASSERT_OK(coil_socket_set_blocking(s, 0));
	for (int i = 0; i < 5; i++) {
		coil_ip_t *r = coil_channel_read(s);
		T_ASSERT_OK(t_wait(r));
		CU_ASSERT_EQUAL(coil_ip_error(r), -EAGAIN);
		coil_ip_unref(r);
	}
	CU_ASSERT(write(peer, "par", 3) == 3);
	/* Received ahead into coil's queue; until then reads say -EAGAIN. */
	for (int i = 0; i < 10000 && coil_channel_read_queue_used(s) < 3; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(coil_channel_read_queue_used(s), 3);
	/* "par" is no line yet: -EAGAIN, and "par" stays for later. */
	coil_ip_t *r = coil_channel_readline(s);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -EAGAIN);
	coil_ip_unref(r);
	CU_ASSERT_EQUAL(coil_channel_read_queue_used(s), 3);
	CU_ASSERT(write(peer, "tial\n", 5) == 5);
	T_ASSERT_OK(coil_socket_set_blocking(s, 1));
	r = coil_channel_readline(s);
	T_ASSERT_OK(t_wait(r));
	size_t n = 0;
	const char *p = coil_ip_bytes(r, &n);
	CU_ASSERT(n == 8 && memcmp(p, "partial\n", 8) == 0);
	coil_ip_unref(r);
	close(peer);
	close(lfd);
	coil_channel_release(s);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* Non-blocking connect says -EINPROGRESS and goes on: connecting() until
 * it ends, then connected(); writes queued meanwhile are sent. */
static void test_nonblocking_connect(void)
{
	coil_loop_t *loop = t_loop(1);
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &c));
	T_ASSERT_OK(coil_socket_set_blocking(c, 0));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_ip_t *ip = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINPROGRESS);
	coil_ip_unref(ip);
	coil_ip_t *w = coil_channel_write(c, "queued", 6);
	int afd = accept(lfd, NULL, NULL);
	CU_ASSERT_FATAL(afd >= 0);
	char buf[8];
	T_ASSERT_OK(t_read_exact(afd, buf, 6));
	CU_ASSERT(memcmp(buf, "queued", 6) == 0);
	T_ASSERT_OK(t_wait(w));
	T_ASSERT_OK(coil_ip_error(w));
	coil_ip_unref(w);
	CU_ASSERT(coil_socket_connected(c));
	CU_ASSERT(!coil_socket_connecting(c));
	close(afd);
	coil_channel_release(c);
	/* A refused one ends not connected. */
	close(lfd);
	T_ASSERT_OK(coil_socket_new(loop, &c));
	T_ASSERT_OK(coil_socket_set_blocking(c, 0));
	ip = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINPROGRESS);
	coil_ip_unref(ip);
	for (int i = 0; i < 5000 && coil_socket_connecting(c); i++)
		usleep(1000);
	CU_ASSERT(!coil_socket_connecting(c));
	CU_ASSERT(!coil_socket_connected(c));
	coil_channel_release(c);
	T_ASSERT_OK(coil_loop_free(loop));
}

static int fd_of(coil_socket_t *s)
{
	return coil_channel_fileno(s);
}

static void test_keepalive_delay(void)
{
	coil_loop_t *loop = t_loop(1);
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &c));
	/* Before the descriptor exists: applied when connect makes it. */
	T_ASSERT_OK(coil_socket_set_keepalive_delay(c, 1, 42));
	CU_ASSERT_EQUAL(coil_socket_set_keepalive_delay(c, 1, 0), -EINVAL);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_ip_t *ip = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	int v = 0;
	socklen_t l = sizeof(v);
	getsockopt(fd_of(c), SOL_SOCKET, SO_KEEPALIVE, &v, &l);
	CU_ASSERT_EQUAL(v, 1);
	getsockopt(fd_of(c), IPPROTO_TCP, TCP_KEEPIDLE, &v, &l);
	CU_ASSERT_EQUAL(v, 42);
	/* And on the live one. */
	T_ASSERT_OK(coil_socket_set_keepalive_delay(c, 1, 7));
	getsockopt(fd_of(c), IPPROTO_TCP, TCP_KEEPIDLE, &v, &l);
	CU_ASSERT_EQUAL(v, 7);
	T_ASSERT_OK(coil_socket_set_keepalive_delay(c, 0, 0));
	getsockopt(fd_of(c), SOL_SOCKET, SO_KEEPALIVE, &v, &l);
	CU_ASSERT_EQUAL(v, 0);
	coil_channel_release(c);
	close(lfd);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* uv_tcp_close_reset: the peer sees a reset, not an end of stream. */
static void test_close_reset(void)
{
	coil_loop_t *loop = t_loop(1);
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &c));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_ip_t *ip = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	int afd = accept(lfd, NULL, NULL);
	T_ASSERT_OK(coil_socket_close_reset(c));
	struct pollfd p = {.fd = afd, .events = POLLIN};
	CU_ASSERT(poll(&p, 1, 10000) == 1);
	char b;
	ssize_t n = recv(afd, &b, 1, 0);
	CU_ASSERT_EQUAL(n, -1);
	CU_ASSERT_EQUAL(errno, ECONNRESET);
	close(afd);
	coil_channel_release(c);
	/* Not for Unix sockets. */
	coil_socket_t *a = NULL, *b2 = NULL;
	T_ASSERT_OK(coil_socketpair(loop, AF_UNIX, SOCK_STREAM, &a, &b2));
	CU_ASSERT_EQUAL(coil_socket_close_reset(a), -EOPNOTSUPP);
	coil_channel_release(a);
	coil_channel_release(b2);
	close(lfd);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* SO_BROADCAST: a send to the loopback broadcast address is refused
 * (-EACCES) without it and goes with it; TTLs land on the descriptor. */
static void test_udp_broadcast_ttl(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *u = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &u));
	T_ASSERT_OK(coil_socket_bind(u, ":0", 0));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.255.255.255:%u", local_port(u));
	coil_ip_t *s = coil_socket_sendto(u, "b", 1, addr);
	T_ASSERT_OK(t_wait(s));
	CU_ASSERT_EQUAL(coil_ip_error(s), -EACCES);
	coil_ip_unref(s);
	T_ASSERT_OK(coil_socket_set_broadcast(u, 1));
	s = coil_socket_sendto(u, "b", 1, addr);
	T_ASSERT_OK(t_wait(s));
	CU_ASSERT_EQUAL(coil_ip_int(s), 1);
	coil_ip_unref(s);
	T_ASSERT_OK(coil_socket_set_ttl(u, 9));
	T_ASSERT_OK(coil_socket_set_multicast_ttl(u, 3));
	T_ASSERT_OK(coil_socket_set_multicast_loop(u, 0));
	CU_ASSERT_EQUAL(coil_socket_set_ttl(u, 0), -EINVAL);
	int v = 0;
	socklen_t l = sizeof(v);
	getsockopt(fd_of(u), IPPROTO_IP, IP_TTL, &v, &l);
	CU_ASSERT_EQUAL(v, 9);
	unsigned char c = 0;
	socklen_t cl = sizeof(c);
	getsockopt(fd_of(u), IPPROTO_IP, IP_MULTICAST_TTL, &c, &cl);
	CU_ASSERT_EQUAL(c, 3);
	cl = sizeof(c);
	getsockopt(fd_of(u), IPPROTO_IP, IP_MULTICAST_LOOP, &c, &cl);
	CU_ASSERT_EQUAL(c, 0);
	coil_channel_release(u);
	coil_socket_t *u6 = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET6, &u6));
	T_ASSERT_OK(coil_socket_set_ttl(u6, 17));
	l = sizeof(v);
	getsockopt(fd_of(u6), IPPROTO_IPV6, IPV6_UNICAST_HOPS, &v, &l);
	CU_ASSERT_EQUAL(v, 17);
	coil_channel_release(u6);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* Multicast membership: join a group on the loopback interface, send to
 * the group from that interface, receive it; leave; bad groups refused. */
static void test_multicast_membership(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *rx = NULL, *tx = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &rx));
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &tx));
	T_ASSERT_OK(coil_socket_bind(rx, ":0", 0));
	CU_ASSERT_EQUAL(coil_socket_set_membership(rx, "10.0.0.1", NULL, 1),
			-EINVAL);
	CU_ASSERT_EQUAL(coil_socket_set_membership(rx, "nope", NULL, 1),
			-EINVAL);
	T_ASSERT_OK(coil_socket_set_membership(rx, "239.255.77.1",
					       "127.0.0.1", 1));
	T_ASSERT_OK(coil_socket_set_multicast_interface(tx, "127.0.0.1"));
	T_ASSERT_OK(coil_socket_set_multicast_loop(tx, 1));
	char addr[64];
	snprintf(addr, sizeof(addr), "239.255.77.1:%u", local_port(rx));
	coil_ip_t *r = coil_socket_recvfrom(rx, 64);
	coil_ip_t *s = coil_socket_sendto(tx, "mc", 2, addr);
	T_ASSERT_OK(t_wait(s));
	T_ASSERT_OK(coil_ip_error(s));
	coil_ip_unref(s);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	coil_datagram_t *dg = coil_ip_ptr(r);
	CU_ASSERT(dg && dg->len == 2 && memcmp(dg->data, "mc", 2) == 0);
	coil_ip_unref(r);
	T_ASSERT_OK(coil_socket_set_membership(rx, "239.255.77.1",
					       "127.0.0.1", 0));
	/* Leaving twice: the kernel says it is not a member. */
	CU_ASSERT(coil_socket_set_membership(rx, "239.255.77.1", "127.0.0.1",
					     0) < 0);
	coil_channel_release(rx);
	coil_channel_release(tx);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* SCM_RIGHTS both ways with another process: a live TCP connection goes to
 * the child, which writes on it; the child sends back a pipe's read end,
 * which the parent reads. */
static int fd_child(int sock)
{
	char b;
	char ctl[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = &b, .iov_len = 1};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
			   .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	if (recvmsg(sock, &m, 0) != 1)
		return 2;
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	if (!c || c->cmsg_type != SCM_RIGHTS)
		return 3;
	int tcp;
	memcpy(&tcp, CMSG_DATA(c), sizeof(tcp));
	if (write(tcp, "from child", 10) != 10)
		return 4;
	close(tcp);
	int p[2];
	if (pipe(p))
		return 5;
	if (write(p[1], "via pipe", 8) != 8)
		return 6;
	close(p[1]);
	memset(ctl, 0, sizeof(ctl));
	struct msghdr o = {.msg_iov = &iov, .msg_iovlen = 1,
			   .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	c = CMSG_FIRSTHDR(&o);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &p[0], sizeof(int));
	b = 'P';
	if (sendmsg(sock, &o, 0) != 1)
		return 7;
	close(p[0]);
	return 0;
}

static void test_pass_descriptors(void)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	pid_t pid = fork(); /* no coil thread exists yet */
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		close(sv[0]);
		_exit(fd_child(sv[1]));
	}
	close(sv[1]);
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_wrap(loop, sv[0], &s));
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	int cfd = t_connect_tcp4(port);
	int afd = accept(lfd, NULL, NULL);
	coil_ip_t *ip = coil_socket_send_fds(s, &afd, 1, "T", 1);
	close(afd); /* coil holds its own duplicate until sent */
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_int(ip), 1);
	coil_ip_unref(ip);
	char buf[16] = {0};
	T_ASSERT_OK(t_read_exact(cfd, buf, 10));
	CU_ASSERT(memcmp(buf, "from child", 10) == 0);
	ip = coil_socket_recv_fds(s, 8);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_fdmsg_t *m = coil_ip_steal_ptr(ip);
	coil_ip_unref(ip);
	CU_ASSERT_FATAL(m != NULL);
	CU_ASSERT_EQUAL(m->len, 1);
	CU_ASSERT_EQUAL(m->data[0], 'P');
	CU_ASSERT_EQUAL_FATAL(m->nfds, 1);
	CU_ASSERT(fcntl(m->fds[0], F_GETFD) & FD_CLOEXEC);
	T_ASSERT_OK(t_read_exact(m->fds[0], buf, 8));
	CU_ASSERT(memcmp(buf, "via pipe", 8) == 0);
	close(m->fds[0]);
	coil_free(m);
	int st = 0;
	waitpid(pid, &st, 0);
	CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* Bad uses. */
	int one = 0;
	ip = coil_socket_send_fds(s, &one, 0, "x", 1);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINVAL);
	coil_ip_unref(ip);
	coil_socket_t *u = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &u));
	ip = coil_socket_recv_fds(u, 8);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EOPNOTSUPP);
	coil_ip_unref(ip);
	coil_channel_release(u);
	close(cfd);
	close(lfd);
	coil_channel_release(s);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* An aborted recv_fds cancels its receive: what comes later (bytes and
 * descriptor) goes to the next one, and a value never stolen closes its
 * descriptors. */
static void test_recv_fds_abort_and_close(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socketpair(loop, AF_UNIX, SOCK_DGRAM, &a, &b));
	coil_ip_t *r = coil_socket_recv_fds(b, 8);
	CU_ASSERT_EQUAL(coil_ip_abort(r), 0);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -ECANCELED);
	coil_ip_unref(r);
	int p[2];
	CU_ASSERT_FATAL(pipe(p) == 0);
	coil_ip_t *s = coil_socket_send_fds(a, &p[1], 1, "w", 1);
	close(p[1]);
	T_ASSERT_OK(t_wait(s));
	T_ASSERT_OK(coil_ip_error(s));
	coil_ip_unref(s);
	r = coil_socket_recv_fds(b, 8);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	coil_fdmsg_t *m = coil_ip_ptr(r);
	CU_ASSERT_FATAL(m && m->nfds == 1);
	/* Not stolen: unref closes the write end, so the read end sees EOF. */
	coil_ip_unref(r);
	char c;
	CU_ASSERT_EQUAL(read(p[0], &c, 1), 0);
	close(p[0]);
	coil_channel_release(a);
	coil_channel_release(b);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* getnameinfo off the worker: numeric and by name, IPv4 and IPv6, and
 * what is not an IP address. */
static void test_reverse_lookup(void)
{
	coil_loop_t *loop = t_loop(1);
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons(80),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	coil_ip_t *ip = coil_reverse_lookup(loop, (struct sockaddr *)&v4,
					    sizeof(v4),
					    NI_NUMERICHOST | NI_NUMERICSERV);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_nameinfo_t *ni = coil_ip_ptr(ip);
	CU_ASSERT_FATAL(ni != NULL);
	CU_ASSERT_STRING_EQUAL(ni->host, "127.0.0.1");
	CU_ASSERT_STRING_EQUAL(ni->service, "80");
	coil_ip_unref(ip);
	/* By name: whatever /etc/hosts or DNS says, it is a name. */
	ip = coil_reverse_lookup(loop, (struct sockaddr *)&v4, sizeof(v4),
				 NI_NUMERICSERV);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	ni = coil_ip_ptr(ip);
	CU_ASSERT(ni && ni->host[0]);
	coil_ip_unref(ip);
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6,
				  .sin6_port = htons(443),
				  .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	ip = coil_reverse_lookup(loop, (struct sockaddr *)&v6, sizeof(v6),
				 NI_NUMERICHOST | NI_NUMERICSERV);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	ni = coil_ip_ptr(ip);
	CU_ASSERT(ni && strcmp(ni->host, "::1") == 0);
	CU_ASSERT(ni && strcmp(ni->service, "443") == 0);
	coil_ip_unref(ip);
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	ip = coil_reverse_lookup(loop, (struct sockaddr *)&un, sizeof(un), 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINVAL);
	coil_ip_unref(ip);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* uv_try_write: sends what fits now; -EAGAIN while writes are queued (it
 * never overtakes them) or the buffer is full; -ENOTCONN before connect. */
static void test_try_write(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *fresh = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &fresh));
	CU_ASSERT_EQUAL(coil_socket_try_write(fresh, "x", 1), -ENOTCONN);
	coil_channel_release(fresh);
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socketpair(loop, AF_UNIX, SOCK_STREAM, &a, &b));
	CU_ASSERT_EQUAL(coil_socket_try_write(a, "hello", 5), 5);
	coil_ip_t *r = coil_channel_read_exact(b, 5);
	T_ASSERT_OK(t_wait(r));
	size_t n = 0;
	const char *p = coil_ip_bytes(r, &n);
	CU_ASSERT(n == 5 && memcmp(p, "hello", 5) == 0);
	coil_ip_unref(r);
	/* Fill the socket buffer: try_write then sends less, then nothing. */
	int small = 4096;
	setsockopt(coil_channel_fileno(a), SOL_SOCKET, SO_SNDBUF, &small,
		   sizeof(small));
	static char big[1 << 20];
	int64_t sent = coil_socket_try_write(a, big, sizeof(big));
	CU_ASSERT(sent > 0 && sent < (int64_t)sizeof(big));
	int64_t again = 0;
	for (int i = 0; i < 100 && again >= 0; i++)
		again = coil_socket_try_write(a, big, sizeof(big));
	CU_ASSERT_EQUAL(again, -EAGAIN);
	/* A queued write makes it wait its turn. */
	coil_ip_t *w = coil_channel_write(a, "q", 1);
	CU_ASSERT_EQUAL(coil_socket_try_write(a, "z", 1), -EAGAIN);
	coil_ip_abort(w);
	coil_ip_unref(w);
	coil_channel_release(a);
	coil_channel_release(b);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* recvmmsg/sendmmsg style batches: 10 datagrams sent in one call arrive
 * whole and in order in batches; a batch waits for its first datagram. */
static void test_udp_batches(void)
{
	coil_loop_t *loop = t_loop(2);
	coil_socket_t *rx = NULL, *tx = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &rx));
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &tx));
	T_ASSERT_OK(coil_socket_bind(rx, "127.0.0.1:0", 0));
	struct sockaddr_in to = {.sin_family = AF_INET,
				 .sin_port = htons(local_port(rx)),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	coil_ip_t *r = coil_socket_recvfrom_many(rx, 4, 64);
	CU_ASSERT_EQUAL(coil_ip_wait(r, 50), -ETIMEDOUT); /* waits */
	char text[10][8];
	coil_dgram_out_t out[10];
	for (int i = 0; i < 10; i++) {
		int len = snprintf(text[i], sizeof(text[i]), "d%d", i);
		out[i] = (coil_dgram_out_t){text[i], (size_t)len,
					    (struct sockaddr *)&to, sizeof(to)};
	}
	coil_ip_t *s = coil_socket_sendto_many(tx, out, 10);
	T_ASSERT_OK(t_wait(s));
	T_ASSERT_OK(coil_ip_error(s));
	CU_ASSERT_EQUAL(coil_ip_int(s), 10);
	coil_ip_unref(s);
	int next = 0;
	while (next < 10) {
		if (!r)
			r = coil_socket_recvfrom_many(rx, 4, 64);
		T_ASSERT_OK(t_wait(r));
		T_ASSERT_OK(coil_ip_error(r));
		coil_datagrams_t *d = coil_ip_ptr(r);
		CU_ASSERT_FATAL(d && d->count >= 1 && d->count <= 4);
		for (size_t i = 0; i < d->count; i++, next++) {
			char want[8];
			int len = snprintf(want, sizeof(want), "d%d", next);
			CU_ASSERT_EQUAL(d->dg[i]->len, (size_t)len);
			CU_ASSERT(memcmp(d->dg[i]->data, want, (size_t)len) == 0);
			CU_ASSERT_EQUAL(ntohs(((struct sockaddr_in *)&d->dg[i]->from)->sin_port),
					local_port(tx));
		}
		coil_ip_unref(r);
		r = NULL;
	}
	CU_ASSERT_EQUAL(next, 10);
	/* Non-blocking: nothing there. */
	T_ASSERT_OK(coil_socket_set_blocking(rx, 0));
	r = coil_socket_recvfrom_many(rx, 4, 64);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -EAGAIN);
	coil_ip_unref(r);
	/* Aborted while waiting: the next batch gets what comes later. */
	T_ASSERT_OK(coil_socket_set_blocking(rx, 1));
	r = coil_socket_recvfrom_many(rx, 4, 64);
	CU_ASSERT_EQUAL(coil_ip_abort(r), 0);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -ECANCELED);
	coil_ip_unref(r);
	s = coil_socket_sendto_many(tx, out, 2);
	T_ASSERT_OK(t_wait(s));
	coil_ip_unref(s);
	r = coil_socket_recvfrom_many(rx, 4, 64);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	coil_datagrams_t *d = coil_ip_ptr(r);
	CU_ASSERT(d && d->count >= 1 && d->dg[0]->len == 2 &&
		  memcmp(d->dg[0]->data, "d0", 2) == 0);
	coil_ip_unref(r);
	r = coil_socket_recvfrom_many(rx, 0, 64);
	CU_ASSERT_EQUAL(coil_ip_error(r), -EINVAL);
	coil_ip_unref(r);
	coil_channel_release(rx);
	coil_channel_release(tx);
	T_ASSERT_OK(coil_loop_free(loop));
}

static const coil_test_t tests[] = {
	{"pass_descriptors", test_pass_descriptors}, /* forks: first */
	{"try_write", test_try_write},
	{"udp_batches", test_udp_batches},
	{"reverse_lookup", test_reverse_lookup},
	{"recv_fds_abort_and_close", test_recv_fds_abort_and_close},
	{"nonblocking_accept_recvfrom", test_nonblocking_accept_recvfrom},
	{"nonblocking_connect", test_nonblocking_connect},
	{"nonblocking_recv", test_nonblocking_recv},
	{"keepalive_delay", test_keepalive_delay},
	{"close_reset", test_close_reset},
	{"udp_broadcast_ttl", test_udp_broadcast_ttl},
	{"multicast_membership", test_multicast_membership},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("socket_extras", tests, argc, argv);
}
