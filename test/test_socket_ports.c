/* SPDX-License-Identifier: MIT */
/* Issue 13: ports are exclusive unless shared on request (two loops, two
 * processes), the caller's SO_REUSEADDR is respected, connected UDP with
 * ICMP errors, persistent accept errors reported instead of spun on, the
 * IPv4 wildcard, binding a client before connect. Each test makes its own
 * loops, so the fork tests fork a process without threads. */
#include "helpers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
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

/* A TCP port that was free a moment ago (bound to 0, then closed). */
static unsigned short free_port(int family)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_storage ss = {.ss_family = (sa_family_t)family};
	socklen_t l = family == AF_INET ? sizeof(struct sockaddr_in)
					: sizeof(struct sockaddr_in6);
	if (family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	else
		((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
	bind(fd, (struct sockaddr *)&ss, l);
	getsockname(fd, (struct sockaddr *)&ss, &l);
	close(fd);
	return family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
				 : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* A raw socket that asks to share the port (SO_REUSEPORT), as another
 * program of the same user would: 0 if it could bind, else -errno. */
static int raw_bind_reuseport(int family, unsigned short port)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_storage ss = {.ss_family = (sa_family_t)family};
	socklen_t l;
	if (family == AF_INET) {
		struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
		v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		v4->sin_port = htons(port);
		l = sizeof(*v4);
	} else {
		struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
		v6->sin6_addr = in6addr_loopback;
		v6->sin6_port = htons(port);
		l = sizeof(*v6);
	}
	int rc = bind(fd, (struct sockaddr *)&ss, l) ? -errno : 0;
	if (!rc)
		rc = listen(fd, 4) ? -errno : 0;
	close(fd);
	return rc;
}

/* Two loops of two workers each (the case where every shard set
 * SO_REUSEPORT): the second listen on the port fails, and so does another
 * program's SO_REUSEPORT socket. */
static void exclusive_two_loops(const char *host_fmt, int family)
{
	coil_loop_t *la = t_loop(2), *lb = t_loop(2);
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socket_new(la, &a));
	T_ASSERT_OK(coil_socket_new(lb, &b));
	char addr[64];
	snprintf(addr, sizeof(addr), host_fmt, 0);
	T_ASSERT_OK(coil_socket_listen(a, addr, 16, 0));
	unsigned short port = local_port(a);
	snprintf(addr, sizeof(addr), host_fmt, port);
	CU_ASSERT_EQUAL(coil_socket_listen(b, addr, 16, 0), -EADDRINUSE);
	CU_ASSERT_EQUAL(coil_socket_listen(b, addr, 16, COIL_ADDR_REUSEPORT),
			-EADDRINUSE);
	CU_ASSERT_EQUAL(raw_bind_reuseport(family, port), -EADDRINUSE);
	coil_channel_release(a);
	coil_channel_release(b);
	T_ASSERT_OK(coil_loop_free(la));
	T_ASSERT_OK(coil_loop_free(lb));
}

static void test_exclusive_two_loops(void)
{
	exclusive_two_loops("127.0.0.1:%u", AF_INET);
	exclusive_two_loops("[::1]:%u", AF_INET6);
}

struct counts {
	_Atomic int slot; /* next free slot */
	_Atomic int n;    /* clients stored (after the store) */
	coil_socket_t *sock[64];
};

static void on_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	struct counts *k = ud;
	int i = atomic_fetch_add(&k->slot, 1);
	if (i < 64)
		k->sock[i] = c;
	else
		coil_channel_release(c);
	atomic_fetch_add(&k->n, 1);
}

/* Both ask to share: both listen, and the kernel splits the clients. */
static void test_shared_two_loops(void)
{
	coil_loop_t *la = t_loop(2), *lb = t_loop(1);
	coil_socket_t *a = NULL, *b = NULL;
	struct counts ka = {0}, kb = {0};
	T_ASSERT_OK(coil_socket_new(la, &a));
	T_ASSERT_OK(coil_socket_new(lb, &b));
	T_ASSERT_OK(coil_socket_on_new_client(a, on_client, &ka));
	T_ASSERT_OK(coil_socket_on_new_client(b, on_client, &kb));
	T_ASSERT_OK(coil_socket_listen(a, "127.0.0.1:0", 64, COIL_ADDR_REUSEPORT));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", local_port(a));
	T_ASSERT_OK(coil_socket_listen(b, addr, 64, COIL_ADDR_REUSEPORT));
	/* SO_REUSEPORT hashes by source port over the three sockets: 32
	 * connects missing one loop entirely has a chance of about 2^-18. */
	int fds[32];
	for (int i = 0; i < 32; i++)
		fds[i] = t_connect_tcp4(local_port(a));
	for (int i = 0; i < 5000 && atomic_load(&ka.n) + atomic_load(&kb.n) < 32; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&ka.n) + atomic_load(&kb.n), 32);
	CU_ASSERT(atomic_load(&ka.n) > 0);
	CU_ASSERT(atomic_load(&kb.n) > 0);
	for (int i = 0; i < 32; i++)
		close(fds[i]);
	coil_channel_release(a);
	coil_channel_release(b);
	T_ASSERT_OK(coil_loop_free(la));
	T_ASSERT_OK(coil_loop_free(lb));
	for (int i = 0; i < atomic_load(&ka.n) && i < 64; i++)
		(void)ka.sock[i]; /* released by the loop (rule 16) */
}

/* Exclusive mode still spreads clients over the workers (round-robin). */
static void test_exclusive_spreads_over_workers(void)
{
	coil_loop_t *la = t_loop(2);
	coil_socket_t *a = NULL;
	struct counts k = {0};
	T_ASSERT_OK(coil_socket_new(la, &a));
	T_ASSERT_OK(coil_socket_on_new_client(a, on_client, &k));
	T_ASSERT_OK(coil_socket_listen(a, "127.0.0.1:0", 64, 0));
	int fds[8];
	for (int i = 0; i < 8; i++)
		fds[i] = t_connect_tcp4(local_port(a));
	for (int i = 0; i < 5000 && atomic_load(&k.n) < 8; i++)
		usleep(1000);
	CU_ASSERT_EQUAL_FATAL(atomic_load(&k.n), 8);
	int per[2] = {0, 0};
	for (int i = 0; i < 8; i++)
		per[coil_channel_worker(k.sock[i])]++;
	CU_ASSERT_EQUAL(per[0], 4);
	CU_ASSERT_EQUAL(per[1], 4);
	for (int i = 0; i < 8; i++) {
		coil_channel_release(k.sock[i]);
		close(fds[i]);
	}
	coil_channel_release(a);
	T_ASSERT_OK(coil_loop_free(la));
}

/* Two processes race to listen on one port at the same moment (a pipe
 * releases both): exclusive, exactly one wins; shared, both do. */
static int race_child(int go_fd, int res_fd, int hold_fd, unsigned short port,
		      int flags)
{
	coil_loop_t *loop = NULL;
	if (coil_loop_new(&loop, NULL))
		return 2;
	coil_socket_t *s = NULL;
	if (coil_socket_new(loop, &s))
		return 2;
	char c, addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	if (read(go_fd, &c, 1) != 1)
		return 2;
	int rc = coil_socket_listen(s, addr, 16, flags);
	if (write(res_fd, &rc, sizeof(rc)) != sizeof(rc))
		return 2;
	/* Hold the port until the parent has both results. */
	if (read(hold_fd, &c, 1) < 0)
		return 2;
	coil_channel_release(s);
	coil_loop_free(loop);
	return 0;
}

static void race(int flags, int *wins, int *inuse)
{
	unsigned short port = free_port(AF_INET);
	int go[2], res[2], hold[2];
	CU_ASSERT_FATAL(pipe(go) == 0 && pipe(res) == 0 && pipe(hold) == 0);
	pid_t pids[2];
	for (int i = 0; i < 2; i++) {
		pids[i] = fork();
		CU_ASSERT_FATAL(pids[i] >= 0);
		if (pids[i] == 0) {
			close(go[1]);
			close(res[0]);
			close(hold[1]);
			_exit(race_child(go[0], res[1], hold[0], port, flags));
		}
	}
	close(go[0]);
	close(res[1]);
	close(hold[0]);
	CU_ASSERT(write(go[1], "gg", 2) == 2);
	*wins = *inuse = 0;
	for (int i = 0; i < 2; i++) {
		int rc = 1;
		CU_ASSERT(read(res[0], &rc, sizeof(rc)) == sizeof(rc));
		if (rc == 0)
			(*wins)++;
		else if (rc == -EADDRINUSE)
			(*inuse)++;
	}
	close(hold[1]);
	for (int i = 0; i < 2; i++) {
		int st = 0;
		waitpid(pids[i], &st, 0);
		CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	close(go[1]);
	close(res[0]);
}

static void test_two_processes_race(void)
{
	int wins, inuse;
	race(0, &wins, &inuse);
	CU_ASSERT_EQUAL(wins, 1);
	CU_ASSERT_EQUAL(inuse, 1);
	race(COIL_ADDR_REUSEPORT, &wins, &inuse);
	CU_ASSERT_EQUAL(wins, 2);
	CU_ASSERT_EQUAL(inuse, 0);
}

/* coil_socket_bind forced SO_REUSEADDR on: a second bind to a UDP port in
 * use succeeded. Now it fails unless both sockets asked to share. */
static void test_udp_bind_respects_reuseaddr(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *a = NULL, *b = NULL, *c = NULL, *d = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &a));
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &b));
	T_ASSERT_OK(coil_socket_bind(a, "127.0.0.1:0", 0));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", local_port(a));
	CU_ASSERT_EQUAL(coil_socket_bind(b, addr, 0), -EADDRINUSE);
	/* Both asking (SO_REUSEADDR on both) share, as the kernel allows. */
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &c));
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &d));
	T_ASSERT_OK(coil_socket_set_reuseaddr(c, 1));
	T_ASSERT_OK(coil_socket_set_reuseaddr(d, 1));
	T_ASSERT_OK(coil_socket_bind(c, "127.0.0.1:0", 0));
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", local_port(c));
	T_ASSERT_OK(coil_socket_bind(d, addr, 0));
	coil_channel_release(a);
	coil_channel_release(b);
	coil_channel_release(c);
	coil_channel_release(d);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* ":P" on an AF_INET socket is IPv4's any address (it was parsed as the
 * IPv6 wildcard: -EAFNOSUPPORT). */
static void test_ipv4_wildcard(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *u = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &u));
	T_ASSERT_OK(coil_socket_bind(u, ":0", 0));
	coil_sockinfo_t si;
	T_ASSERT_OK(coil_socket_local(u, &si));
	CU_ASSERT_EQUAL(si.family, AF_INET);
	CU_ASSERT(si.port != 0);
	coil_channel_release(u);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* Connected UDP: connect sets the default peer (it made a TCP connection
 * instead); write and read need no address. */
static void connected_udp(int family, const char *any, const char *fmt)
{
	coil_loop_t *loop = t_loop(2);
	coil_socket_t *srv = NULL, *cli = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, family, &srv));
	T_ASSERT_OK(coil_socket_new_dgram(loop, family, &cli));
	T_ASSERT_OK(coil_socket_bind(srv, any, 0));
	char addr[64];
	snprintf(addr, sizeof(addr), fmt, local_port(srv));
	coil_ip_t *ip = coil_socket_connect(cli, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	CU_ASSERT(coil_socket_connected(cli));
	int type = 0;
	socklen_t tl = sizeof(type);
	getsockopt(coil_channel_fileno(cli), SOL_SOCKET, SO_TYPE, &type, &tl);
	CU_ASSERT_EQUAL(type, SOCK_DGRAM);
	/* Client to server: a write is one datagram. */
	coil_ip_t *w = coil_channel_write(cli, "ping", 4);
	coil_ip_t *r = coil_socket_recvfrom(srv, 64);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	coil_datagram_t *dg = coil_ip_ptr(r);
	CU_ASSERT_FATAL(dg != NULL);
	CU_ASSERT_EQUAL(dg->len, 4);
	CU_ASSERT(memcmp(dg->data, "ping", 4) == 0);
	T_ASSERT_OK(t_wait(w));
	T_ASSERT_OK(coil_ip_error(w));
	coil_ip_unref(w);
	/* Server back to the client's address: the client reads it. */
	coil_ip_t *s = coil_socket_sendto_sa(srv, "pong", 4,
					     (struct sockaddr *)&dg->from,
					     dg->fromlen);
	T_ASSERT_OK(t_wait(s));
	coil_ip_unref(s);
	coil_ip_unref(r);
	r = coil_channel_read(cli);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	size_t n = 0;
	const void *p = coil_ip_bytes(r, &n);
	CU_ASSERT_EQUAL(n, 4);
	CU_ASSERT(p && memcmp(p, "pong", 4) == 0);
	coil_ip_unref(r);
	coil_sockinfo_t peer;
	T_ASSERT_OK(coil_socket_peer(cli, &peer));
	CU_ASSERT_EQUAL(peer.port, local_port(srv));
	coil_channel_release(srv);
	coil_channel_release(cli);
	T_ASSERT_OK(coil_loop_free(loop));
}

static void test_connected_udp(void)
{
	connected_udp(AF_INET, "127.0.0.1:0", "127.0.0.1:%u");
	connected_udp(AF_INET6, "[::1]:0", "[::1]:%u");
	/* A name resolves first (off the worker), as CPython's connect does. */
	connected_udp(AF_INET, "127.0.0.1:0", "localhost:%u");
}

/* A connected UDP socket sending to a port nobody listens on gets the
 * ICMP port-unreachable as -ECONNREFUSED on its next receive. */
static void test_connected_udp_icmp_refused(void)
{
	coil_loop_t *loop = t_loop(1);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	socklen_t l = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &l);
	close(fd); /* the port is now closed */
	coil_socket_t *u = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(loop, AF_INET, &u));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sa.sin_port));
	coil_ip_t *ip = coil_socket_connect(u, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	coil_ip_t *r = coil_socket_recvfrom(u, 64);
	coil_ip_t *w = coil_channel_write(u, "x", 1);
	T_ASSERT_OK(t_wait(w));
	coil_ip_unref(w);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -ECONNREFUSED);
	coil_ip_unref(r);
	/* The socket stays usable: recvfrom reports, it does not close. */
	CU_ASSERT(coil_channel_alive(u));
	coil_channel_release(u);
	T_ASSERT_OK(coil_loop_free(loop));
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

struct closed_note {
	_Atomic int n;
	_Atomic int expected;
};

static void on_closed(coil_channel_t *ch, int expected, void *ud)
{
	struct closed_note *c = ud;
	atomic_store(&c->expected, expected);
	atomic_fetch_add(&c->n, 1);
}

/* A listener whose accept fails for good (the socket shut down under it:
 * accept says -EINVAL every time) re-armed at once and spun a core at 98%.
 * Now the error is fatal: pending and later accepts fail with it and the
 * listener closes with expected = 0. */
static void persistent_accept_error(int flags)
{
	coil_loop_t *loop = t_loop(2);
	coil_socket_t *s = NULL;
	struct closed_note cn = {0};
	T_ASSERT_OK(coil_socket_new(loop, &s));
	T_ASSERT_OK(coil_channel_on_closed(s, on_closed, &cn));
	T_ASSERT_OK(coil_socket_listen(s, "127.0.0.1:0", 16, flags));
	coil_ip_t *a = coil_socket_accept(s);
	CU_ASSERT_EQUAL(coil_ip_wait(a, 50), -ETIMEDOUT);
	/* Break the listening socket under coil. */
	CU_ASSERT(shutdown(coil_channel_fileno(s), SHUT_RDWR) == 0);
	CU_ASSERT_EQUAL(coil_ip_wait(a, 5000), 0);
	CU_ASSERT_EQUAL(coil_ip_error(a), -EINVAL);
	CU_ASSERT(strstr(coil_ip_message(a), "accept failed") != NULL);
	coil_ip_unref(a);
	for (int i = 0; i < 5000 && !atomic_load(&cn.n); i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&cn.n), 1);
	CU_ASSERT_EQUAL(atomic_load(&cn.expected), 0);
	CU_ASSERT(!coil_socket_listening(s));
	a = coil_socket_accept(s);
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_error(a), -EINVAL);
	coil_ip_unref(a);
	/* While it lasts (the listener stays broken), the process is idle:
	 * under 20% of a core over 300 ms. */
	double c0 = cpu_seconds();
	usleep(300 * 1000);
	double used = cpu_seconds() - c0;
	CU_ASSERT(used < 0.3 * 0.2);
	coil_channel_release(s);
	T_ASSERT_OK(coil_loop_free(loop));
}

static void test_persistent_accept_error(void)
{
	persistent_accept_error(0);
	persistent_accept_error(COIL_ADDR_REUSEPORT);
}

/* libuv uv_tcp_bind before uv_tcp_connect: the client's local address is
 * the one bound. */
static void test_bind_before_connect(void)
{
	coil_loop_t *loop = t_loop(1);
	unsigned short lport;
	int lfd = t_listen_tcp4(&lport);
	unsigned short mine = free_port(AF_INET);
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &c));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", mine);
	T_ASSERT_OK(coil_socket_bind(c, addr, 0));
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", lport);
	coil_ip_t *ip = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	coil_sockinfo_t si;
	T_ASSERT_OK(coil_socket_local(c, &si));
	CU_ASSERT_EQUAL(si.port, mine);
	int afd = accept(lfd, NULL, NULL);
	struct sockaddr_in peer;
	socklen_t pl = sizeof(peer);
	getpeername(afd, (struct sockaddr *)&peer, &pl);
	CU_ASSERT_EQUAL(ntohs(peer.sin_port), mine);
	close(afd);
	coil_channel_release(c);
	/* A bound address of the wrong family fails the connect, saying so. */
	T_ASSERT_OK(coil_socket_new(loop, &c));
	T_ASSERT_OK(coil_socket_bind(c, "[::1]:0", 0));
	ip = coil_socket_connect(c, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EAFNOSUPPORT);
	CU_ASSERT(strstr(coil_ip_message(ip), "bind") != NULL);
	coil_ip_unref(ip);
	coil_channel_release(c);
	close(lfd);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* usocket/CPython: a read on a socket that never connected fails with
 * -ENOTCONN (it waited forever); reads issued while connecting wait and get
 * the bytes. kaa: alive and readable are true while connecting. */
static void test_unconnected_and_connecting(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_new(loop, &s));
	coil_ip_t *r = coil_channel_read(s);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_error(r), -ENOTCONN);
	coil_ip_unref(r);
	CU_ASSERT(!coil_channel_alive(s));
	/* A listener whose queues are full: the connect stays pending. */
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CU_ASSERT_FATAL(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	CU_ASSERT_FATAL(listen(lfd, 0) == 0);
	socklen_t l = sizeof(sa);
	getsockname(lfd, (struct sockaddr *)&sa, &l);
	int fill[4];
	for (int i = 0; i < 4; i++) {
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(fill[i], (struct sockaddr *)&sa, sizeof(sa));
	}
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sa.sin_port));
	coil_ip_t *c = coil_socket_connect(s, addr, 0);
	r = coil_channel_read(s);
	CU_ASSERT_EQUAL(coil_ip_wait(c, 100), -ETIMEDOUT);
	CU_ASSERT(coil_socket_connecting(s));
	CU_ASSERT(coil_channel_alive(s));
	CU_ASSERT(coil_channel_readable(s));
	CU_ASSERT_EQUAL(coil_ip_state(r), COIL_IP_PENDING);
	/* Make room: accept and drop the fillers; the connect completes. */
	for (int i = 0; i < 4; i++)
		close(fill[i]);
	int afd = -1;
	for (int i = 0; i < 10 && afd < 0; i++) {
		int fd = accept(lfd, NULL, NULL); /* a filler, then ours */
		struct sockaddr_in peer;
		socklen_t pl = sizeof(peer);
		coil_sockinfo_t mine;
		getpeername(fd, (struct sockaddr *)&peer, &pl);
		if (t_wait(c) == 0 && coil_socket_local(s, &mine) == 0 &&
		    mine.port == ntohs(peer.sin_port))
			afd = fd;
		else
			close(fd);
	}
	CU_ASSERT_FATAL(afd >= 0);
	T_ASSERT_OK(coil_ip_error(c));
	coil_ip_unref(c);
	CU_ASSERT(write(afd, "late", 4) == 4);
	T_ASSERT_OK(t_wait(r));
	T_ASSERT_OK(coil_ip_error(r));
	size_t n = 0;
	coil_ip_bytes(r, &n);
	CU_ASSERT_EQUAL(n, 4);
	coil_ip_unref(r);
	close(afd);
	close(lfd);
	coil_channel_release(s);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* kaa/CPython: closing a descriptor closed behind the library's back says
 * -EBADF (it said 0). */
static void test_close_fd_closed_underneath(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socketpair(loop, AF_UNIX, SOCK_STREAM, &a, &b));
	CU_ASSERT(close(coil_channel_fileno(a)) == 0);
	CU_ASSERT_EQUAL(coil_channel_close(a, 1), -EBADF);
	T_ASSERT_OK(coil_channel_close(b, 1));
	coil_channel_release(a);
	coil_channel_release(b);
	T_ASSERT_OK(coil_loop_free(loop));
}

static const coil_test_t tests[] = {
	{"unconnected_and_connecting", test_unconnected_and_connecting},
	{"close_fd_closed_underneath", test_close_fd_closed_underneath},
	{"exclusive_two_loops", test_exclusive_two_loops},
	{"shared_two_loops", test_shared_two_loops},
	{"exclusive_spreads_over_workers", test_exclusive_spreads_over_workers},
	{"two_processes_race", test_two_processes_race},
	{"udp_bind_respects_reuseaddr", test_udp_bind_respects_reuseaddr},
	{"ipv4_wildcard", test_ipv4_wildcard},
	{"connected_udp", test_connected_udp},
	{"connected_udp_icmp_refused", test_connected_udp_icmp_refused},
	{"persistent_accept_error", test_persistent_accept_error},
	{"bind_before_connect", test_bind_before_connect},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("socket_ports", tests, argc, argv);
}
