/* SPDX-License-Identifier: MIT */
/* Tests for coil_socket: connect (refused, fallback, forced IPv4), listen
 * and accept (TCP v4/v6, Unix, sharded, EMFILE), UDP, shutdown, options. */
#include "helpers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static coil_loop_t *L;

/* A port on 127.0.0.1 nobody listens on (bound, never listened). */
static unsigned short dead_port(int *keep)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	socklen_t l = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &l);
	*keep = fd;
	return ntohs(sa.sin_port);
}

static void test_connect_refused_then_retry(void)
{
	int keep;
	unsigned short port = dead_port(&keep);
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_new(L, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_ip_t *ip = coil_socket_connect(s, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -ECONNREFUSED);
	CU_ASSERT(strstr(coil_ip_message(ip), "127.0.0.1") != NULL);
	coil_ip_unref(ip);
	CU_ASSERT(!coil_socket_connected(s));
	CU_ASSERT(!coil_socket_connecting(s));
	/* Retry the same socket once something listens. */
	close(keep);
	unsigned short lport;
	int lfd = t_listen_tcp4(&lport);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", lport);
	ip = coil_socket_connect(s, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	CU_ASSERT(coil_socket_connected(s));
	/* Connecting again while connected is an error. */
	ip = coil_socket_connect(s, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EISCONN);
	coil_ip_unref(ip);
	coil_channel_release(s);
	close(lfd);
}

static void test_connect_bad_address(void)
{
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_new(L, &s));
	const char *bad[] = {"127.0.0.1:99999", "::1:80", "[::1]:80x", "", NULL};
	for (int i = 0; bad[i]; i++) {
		coil_ip_t *ip = coil_socket_connect(s, bad[i], 0);
		T_ASSERT_OK(t_wait(ip));
		CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FAILED);
		CU_ASSERT(coil_ip_error(ip) < 0);
		CU_ASSERT(strlen(coil_ip_message(ip)) > 0);
		coil_ip_unref(ip);
	}
	coil_ip_t *ip = coil_socket_connect(s, "127.0.0.1:http-no-such-svc", 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FAILED);
	coil_ip_unref(ip);
	coil_channel_release(s);
}

/* "localhost" with a server on 127.0.0.1 only: ::1 is refused (if it is
 * tried at all), the IPv4 address then connects. */
static void test_localhost_falls_back(void)
{
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_new(L, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "localhost:%u", port);
	coil_ip_t *ip = coil_socket_connect(s, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
	coil_sockinfo_t peer;
	T_ASSERT_OK(coil_socket_peer(s, &peer));
	CU_ASSERT_EQUAL(peer.port, port);
	CU_ASSERT_STRING_EQUAL(peer.reqhost, "localhost");
	coil_channel_release(s);
	close(lfd);
}

static void test_forced_ipv4_to_v6_fails(void)
{
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_new(L, &s));
	coil_ip_t *ip = coil_socket_connect(s, "[::1]:80", COIL_ADDR_IPV4);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FAILED);
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EAFNOSUPPORT);
	coil_ip_unref(ip);
	coil_channel_release(s);
}

/* new-client: 3 clients, each with the right peer/local, on a worker. */
struct clients {
	_Atomic int n;
	_Atomic int on_worker;
	_Atomic int per_worker[4];
	_Atomic int done;
	coil_sockinfo_t peer[32], local[32];
	coil_socket_t *sock[32];
};

static void on_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	struct clients *cl = ud;
	int i = atomic_fetch_add(&cl->n, 1);
	if (i < 32) {
		coil_socket_peer(c, &cl->peer[i]);
		coil_socket_local(c, &cl->local[i]);
		cl->sock[i] = c;
	}
	int w = coil_loop_current_worker(coil_channel_loop(c));
	if (w == coil_channel_worker(c))
		atomic_fetch_add(&cl->on_worker, 1);
	if (w >= 0 && w < 4)
		atomic_fetch_add(&cl->per_worker[w], 1);
	atomic_fetch_add(&cl->done, 1);
}

static void test_three_clients(void)
{
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	struct clients cl = {0};
	T_ASSERT_OK(coil_socket_on_new_client(l, on_client, &cl));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 16, 0));
	CU_ASSERT(coil_socket_listening(l));
	coil_sockinfo_t li;
	T_ASSERT_OK(coil_socket_local(l, &li));
	CU_ASSERT_STRING_EQUAL(li.host, "127.0.0.1");
	CU_ASSERT(li.port > 0);
	int fds[3];
	unsigned short cports[3];
	for (int i = 0; i < 3; i++) {
		fds[i] = t_connect_tcp4(li.port);
		struct sockaddr_in sa;
		socklen_t sl = sizeof(sa);
		getsockname(fds[i], (struct sockaddr *)&sa, &sl);
		cports[i] = ntohs(sa.sin_port);
	}
	for (int i = 0; i < 2000 && atomic_load(&cl.done) < 3; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&cl.done), 3);
	CU_ASSERT_EQUAL(atomic_load(&cl.on_worker), 3);
	for (int i = 0; i < 3; i++) {
		int found = 0;
		for (int k = 0; k < 3; k++)
			if (cl.peer[i].port == cports[k])
				found = 1;
		CU_ASSERT(found);
		CU_ASSERT_STRING_EQUAL(cl.peer[i].host, "127.0.0.1");
		CU_ASSERT_EQUAL(cl.local[i].port, li.port);
		CU_ASSERT(coil_socket_connected(cl.sock[i]));
	}
	for (int i = 0; i < 3; i++) {
		close(fds[i]);
		coil_channel_release(cl.sock[i]);
	}
	coil_channel_release(l);
}

/* Echo over IPv4 and IPv6 with the client half-closing (SHUT_WR): the server
 * sees EOF, finishes its writes, then closes. */
static void on_echo_read(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	coil_ip_unref(coil_channel_write(ch, d, n));
}

static void on_echo_closed(coil_channel_t *ch, int expected, void *ud)
{
	coil_channel_release(ch);
}

static void on_echo_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	coil_channel_on_read(c, on_echo_read, NULL);
	/* The channel closes itself at EOF after its writes drain; our handle
	 * goes with it (releasing it now would close the client at once). */
	coil_channel_on_closed(c, on_echo_closed, NULL);
}

static void echo_roundtrip(const char *listen_addr, const char *connect_fmt)
{
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_on_new_client(l, on_echo_client, NULL));
	int rc = coil_socket_listen(l, listen_addr, 0, 0);
	if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT) {
		fprintf(stderr, "(skipping %s: %s)\n", listen_addr,
			coil_strerror(rc));
		coil_channel_release(l);
		return;
	}
	T_ASSERT_OK(rc);
	coil_sockinfo_t li;
	T_ASSERT_OK(coil_socket_local(l, &li));
	char addr[80];
	snprintf(addr, sizeof(addr), connect_fmt, li.port);
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(L, &c));
	coil_ip_t *ip = coil_socket_connect(c, addr, 0);
	/* Written before the connect finishes: queued, then sent. */
	char msg[100000];
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (char)(i * 13);
	coil_ip_t *w = coil_channel_write(c, msg, sizeof(msg));
	coil_ip_t *sh = coil_socket_shutdown(c, SHUT_WR);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	T_ASSERT_OK(t_wait(sh));
	T_ASSERT_OK(coil_ip_error(sh));
	coil_ip_t *r = coil_channel_read_exact(c, sizeof(msg));
	T_ASSERT_OK(t_wait(r));
	size_t n;
	const char *b = coil_ip_bytes(r, &n);
	CU_ASSERT_EQUAL(n, sizeof(msg));
	CU_ASSERT(b && memcmp(b, msg, sizeof(msg)) == 0);
	/* Then EOF. */
	coil_ip_t *e = coil_channel_read(c);
	T_ASSERT_OK(t_wait(e));
	coil_ip_bytes(e, &n);
	CU_ASSERT_EQUAL(n, 0);
	coil_ip_unref(ip);
	coil_ip_unref(w);
	coil_ip_unref(sh);
	coil_ip_unref(r);
	coil_ip_unref(e);
	coil_channel_release(c);
	coil_channel_release(l);
}

static void test_echo_v4_shutdown(void)
{
	echo_roundtrip("127.0.0.1:0", "127.0.0.1:%u");
}

static void test_echo_v6_shutdown(void)
{
	echo_roundtrip("[::1]:0", "[::1]:%u");
}

/* accept() with a timeout, then a real one. */
static void test_accept_timeout(void)
{
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 8, 0));
	T_ASSERT_OK(coil_socket_set_timeout(l, 50));
	coil_ip_t *a = coil_socket_accept(l);
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_error(a), -ETIMEDOUT);
	coil_ip_unref(a);
	T_ASSERT_OK(coil_socket_set_timeout(l, 0));
	coil_sockinfo_t li;
	coil_socket_local(l, &li);
	a = coil_socket_accept(l);
	int fd = t_connect_tcp4(li.port);
	T_ASSERT_OK(t_wait(a));
	T_ASSERT_OK(coil_ip_error(a));
	coil_socket_t *c = coil_ip_steal_ptr(a);
	CU_ASSERT_PTR_NOT_NULL(c);
	coil_ip_unref(a);
	/* accept_many gets every queued client. */
	int more[3];
	for (int i = 0; i < 3; i++)
		more[i] = t_connect_tcp4(li.port);
	usleep(50000);
	coil_ip_t *m = coil_socket_accept_many(l, 0);
	T_ASSERT_OK(t_wait(m));
	coil_clients_t *cl = coil_ip_steal_ptr(m);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cl);
	CU_ASSERT(cl->count >= 1 && cl->count <= 3);
	size_t got = cl->count;
	for (size_t i = 0; i < cl->count; i++)
		coil_channel_release(cl->sock[i]);
	coil_free(cl);
	coil_ip_unref(m);
	while (got < 3) {
		m = coil_socket_accept(l);
		T_ASSERT_OK(t_wait(m));
		coil_channel_release(coil_ip_steal_ptr(m));
		coil_ip_unref(m);
		got++;
	}
	for (int i = 0; i < 3; i++)
		close(more[i]);
	close(fd);
	coil_channel_release(c);
	/* accept on a socket that is not listening. */
	coil_socket_t *n = NULL;
	coil_socket_new(L, &n);
	a = coil_socket_accept(n);
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_error(a), -EINVAL);
	coil_ip_unref(a);
	coil_channel_release(n);
	coil_channel_release(l);
}

/* Unix: listen, a live socket at the path is EADDRINUSE, a stale one is
 * replaced, closing removes the path. */
static void test_unix_listen(void)
{
	char path[108];
	snprintf(path, sizeof(path), "/tmp/coil-test-%d.sock", (int)getpid());
	unlink(path);
	coil_socket_t *l = NULL, *l2 = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_listen(l, path, 0, 0));
	struct stat st;
	CU_ASSERT_EQUAL(stat(path, &st), 0);
	T_ASSERT_OK(coil_socket_new(L, &l2));
	CU_ASSERT_EQUAL(coil_socket_listen(l2, path, 0, 0), -EADDRINUSE);
	/* A client connects and talks. */
	coil_socket_t *c = NULL;
	T_ASSERT_OK(coil_socket_new(L, &c));
	coil_ip_t *a = coil_socket_accept(l);
	coil_ip_t *ip = coil_socket_connect(c, path, 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	T_ASSERT_OK(t_wait(a));
	coil_socket_t *srv = coil_ip_steal_ptr(a);
	coil_ip_t *w = coil_channel_write(c, "unix\n", 5);
	coil_ip_t *rl = coil_channel_readline(srv);
	T_ASSERT_OK(t_wait(rl));
	size_t n;
	const char *b = coil_ip_bytes(rl, &n);
	CU_ASSERT(n == 5 && memcmp(b, "unix\n", 5) == 0);
	coil_ip_unref(rl);
	coil_ip_unref(w);
	coil_ip_unref(a);
	coil_ip_unref(ip);
	coil_channel_release(srv);
	coil_channel_release(c);
	/* Closing the listener removes the path. */
	coil_channel_close(l, 0);
	for (int i = 0; i < 1000 && stat(path, &st) == 0; i++)
		usleep(1000);
	CU_ASSERT_NOT_EQUAL(stat(path, &st), 0);
	coil_channel_release(l);
	/* A stale socket file (nobody listening) is replaced. */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	CU_ASSERT_EQUAL(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	T_ASSERT_OK(coil_socket_listen(l2, path, 0, 0));
	coil_channel_release(l2);
	for (int i = 0; i < 1000 && stat(path, &st) == 0; i++)
		usleep(1000);
	CU_ASSERT_NOT_EQUAL(stat(path, &st), 0);
	/* A path that is not a socket is refused. */
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	close(fd);
	coil_socket_t *l3 = NULL;
	coil_socket_new(L, &l3);
	CU_ASSERT_EQUAL(coil_socket_listen(l3, path, 0, 0), -EADDRINUSE);
	coil_channel_release(l3);
	unlink(path);
}

static void udp_roundtrip(int family, const char *bind_addr, const char *to_fmt)
{
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socket_new_dgram(L, family, &a));
	T_ASSERT_OK(coil_socket_new_dgram(L, family, &b));
	int rc = coil_socket_bind(a, bind_addr, 0);
	if (rc == -EADDRNOTAVAIL) {
		coil_channel_release(a);
		coil_channel_release(b);
		return;
	}
	T_ASSERT_OK(rc);
	coil_sockinfo_t ai;
	T_ASSERT_OK(coil_socket_local(a, &ai));
	char to[80];
	snprintf(to, sizeof(to), to_fmt, ai.port);
	coil_ip_t *r = coil_socket_recvfrom(a, 2048);
	for (int i = 0; i < 3; i++) {
		coil_ip_t *s = coil_socket_sendto(b, "datagram!!", 8 + (size_t)i, to);
		T_ASSERT_OK(t_wait(s));
		T_ASSERT_OK(coil_ip_error(s));
		CU_ASSERT_EQUAL(coil_ip_int(s), 8 + i);
		coil_ip_unref(s);
	}
	T_ASSERT_OK(t_wait(r));
	coil_datagram_t *d = coil_ip_ptr(r);
	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	CU_ASSERT_EQUAL(d->len, 8);
	CU_ASSERT_EQUAL(memcmp(d->data, "datagram", 8), 0);
	/* Boundaries are kept: the next two are 9 and 10 bytes. */
	for (int i = 1; i < 3; i++) {
		coil_ip_t *r2 = coil_socket_recvfrom(a, 2048);
		T_ASSERT_OK(t_wait(r2));
		coil_datagram_t *d2 = coil_ip_ptr(r2);
		CU_ASSERT_EQUAL(d2->len, (size_t)(8 + i));
		coil_ip_unref(r2);
	}
	/* Reply to the sender's address. */
	coil_ip_t *s = coil_socket_sendto_sa(a, "pong", 4,
					     (struct sockaddr *)&d->from,
					     d->fromlen);
	coil_ip_t *r3 = coil_socket_recvfrom(b, 16);
	T_ASSERT_OK(t_wait(r3));
	coil_datagram_t *d3 = coil_ip_ptr(r3);
	CU_ASSERT(d3 && d3->len == 4 && memcmp(d3->data, "pong", 4) == 0);
	t_wait(s);
	coil_ip_unref(s);
	coil_ip_unref(r3);
	coil_ip_unref(r);
	coil_channel_release(a);
	coil_channel_release(b);
}

static void test_udp_v4(void)
{
	udp_roundtrip(AF_INET, "127.0.0.1:0", "127.0.0.1:%u");
}

static void test_udp_v6(void)
{
	udp_roundtrip(AF_INET6, "[::1]:0", "[::1]:%u");
}

/* EMFILE at accept: the listener backs off and recovers when descriptors
 * free up. */
static void test_accept_emfile_recovers(void)
{
	struct rlimit old, lim;
	getrlimit(RLIMIT_NOFILE, &old);
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	struct clients cl = {0};
	T_ASSERT_OK(coil_socket_on_new_client(l, on_client, &cl));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 64, 0));
	coil_sockinfo_t li;
	coil_socket_local(l, &li);
	/* Use up the descriptors below a low limit. */
	int first = dup(0);
	close(first);
	lim = old;
	lim.rlim_cur = (rlim_t)first + 40;
	setrlimit(RLIMIT_NOFILE, &lim);
	int hog[64], nhog = 0;
	int c1 = t_connect_tcp4(li.port); /* the client side needs fds too */
	int c2 = t_connect_tcp4(li.port);
	for (;;) {
		int fd = dup(0);
		if (fd < 0)
			break;
		if (nhog < 64)
			hog[nhog++] = fd;
		else {
			close(fd);
			break;
		}
	}
	usleep(150000); /* the accept hits EMFILE and backs off */
	int during = atomic_load(&cl.done);
	for (int i = 0; i < nhog; i++)
		close(hog[i]);
	setrlimit(RLIMIT_NOFILE, &old);
	for (int i = 0; i < 4000 && atomic_load(&cl.done) < 2; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&cl.done), 2);
	CU_ASSERT(during <= 2);
	for (int i = 0; i < atomic_load(&cl.done) && i < 32; i++)
		coil_channel_release(cl.sock[i]);
	close(c1);
	close(c2);
	coil_channel_release(l);
}

/* Two workers share a listener: both get clients. */
static void test_two_workers_share_listener(void)
{
	coil_socket_t *l = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	struct clients cl = {0};
	T_ASSERT_OK(coil_socket_on_new_client(l, on_client, &cl));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 64, 0));
	coil_sockinfo_t li;
	coil_socket_local(l, &li);
	int fds[16];
	/* One accepting socket, clients handed out round-robin. */
	for (int i = 0; i < 16; i++)
		fds[i] = t_connect_tcp4(li.port);
	for (int i = 0; i < 2000 && atomic_load(&cl.done) < 16; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&cl.done), 16);
	int seen[2] = {atomic_load(&cl.per_worker[0]),
		       atomic_load(&cl.per_worker[1])};
	for (int i = 0; i < 16 && i < atomic_load(&cl.done); i++)
		coil_channel_release(cl.sock[i]);
	for (int i = 0; i < 16; i++)
		close(fds[i]);
	CU_ASSERT(seen[0] > 0);
	CU_ASSERT(seen[1] > 0);
	coil_channel_release(l);
}

/* The blocking style from a plain thread: connect, sendall, recv_exact,
 * accept, all by waiting on handles. */
static void test_blocking_style(void)
{
	coil_socket_t *l = NULL, *c = NULL;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 0, 0));
	coil_sockinfo_t li;
	coil_socket_local(l, &li);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", li.port);
	T_ASSERT_OK(coil_socket_new(L, &c));
	coil_ip_t *cn = coil_socket_connect(c, addr, 0);
	coil_ip_t *ac = coil_socket_accept(l);
	T_ASSERT_OK(coil_ip_wait(cn, 5000));
	T_ASSERT_OK(coil_ip_wait(ac, 5000));
	coil_socket_t *srv = coil_ip_steal_ptr(ac);
	coil_ip_t *w = coil_channel_write(c, "0123456789", 10);
	coil_ip_t *r = coil_channel_read_exact(srv, 10);
	T_ASSERT_OK(coil_ip_wait(w, 5000));
	T_ASSERT_OK(coil_ip_wait(r, 5000));
	CU_ASSERT_EQUAL(coil_ip_int(w), 10);
	CU_ASSERT_EQUAL(memcmp(coil_ip_bytes(r, NULL), "0123456789", 10), 0);
	/* A read with a socket timeout fails with -ETIMEDOUT, and takes no
	 * byte: the next read still gets what arrives later. */
	T_ASSERT_OK(coil_socket_set_timeout(srv, 30));
	coil_ip_t *t = coil_channel_read(srv);
	T_ASSERT_OK(coil_ip_wait(t, 5000));
	CU_ASSERT_EQUAL(coil_ip_error(t), -ETIMEDOUT);
	coil_socket_set_timeout(srv, 0);
	coil_ip_unref(coil_channel_write(c, "later", 5));
	coil_ip_t *r2 = coil_channel_read_exact(srv, 5);
	T_ASSERT_OK(coil_ip_wait(r2, 5000));
	CU_ASSERT_EQUAL(memcmp(coil_ip_bytes(r2, NULL), "later", 5), 0);
	coil_ip_unref(t);
	coil_ip_unref(r2);
	coil_ip_unref(cn);
	coil_ip_unref(ac);
	coil_ip_unref(w);
	coil_ip_unref(r);
	coil_channel_release(srv);
	coil_channel_release(c);
	coil_channel_release(l);
}

static void test_options(void)
{
	coil_socket_t *s = NULL;
	T_ASSERT_OK(coil_socket_new(L, &s));
	CU_ASSERT_EQUAL(coil_socket_buffer_size(s), -EBADF);
	T_ASSERT_OK(coil_socket_set_buffer_size(s, 65536));
	CU_ASSERT_EQUAL(coil_socket_buffer_size(s), 65536);
	CU_ASSERT_EQUAL(coil_socket_set_buffer_size(s, 0), -EINVAL);
	unsigned short port;
	int lfd = t_listen_tcp4(&port);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_ip_t *ip = coil_socket_connect(s, addr, 0);
	T_ASSERT_OK(t_wait(ip));
	coil_ip_unref(ip);
	/* Applied to the live socket: the kernel reports double. */
	CU_ASSERT(coil_socket_buffer_size(s) >= 65536);
	T_ASSERT_OK(coil_socket_set_nodelay(s, 1));
	T_ASSERT_OK(coil_socket_set_keepalive(s, 1));
	T_ASSERT_OK(coil_socket_set_reuseaddr(s, 1));
	coil_sockinfo_t li;
	T_ASSERT_OK(coil_socket_local(s, &li));
	CU_ASSERT_EQUAL(li.family, AF_INET);
	/* A channel that is not a socket. */
	coil_channel_t *r, *w;
	coil_channel_pipe(L, &r, &w);
	CU_ASSERT_EQUAL(coil_socket_set_nodelay(r, 1), -ENOTSOCK);
	coil_channel_release(r);
	coil_channel_release(w);
	coil_channel_release(s);
	close(lfd);
	/* wrap a connected socket fd. */
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	coil_socket_t *ws = NULL;
	T_ASSERT_OK(coil_socket_wrap(L, sv[0], &ws));
	CU_ASSERT(coil_socket_connected(ws));
	coil_channel_release(ws);
	close(sv[1]);
	int pfd[2];
	pipe(pfd);
	CU_ASSERT_EQUAL(coil_socket_wrap(L, pfd[0], &ws), -ENOTSOCK);
	close(pfd[0]);
	close(pfd[1]);
}

/* coro socketpair: two connected sockets. Zero-byte results at end of
 * stream are real allocations: stealing and freeing them is fine. */
static void test_socketpair(void)
{
	coil_socket_t *a = NULL, *b = NULL;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	CU_ASSERT(coil_socket_connected(a));
	CU_ASSERT(coil_socket_connected(b));
	coil_sockinfo_t si;
	T_ASSERT_OK(coil_socket_local(a, &si));
	CU_ASSERT_EQUAL(si.family, AF_UNIX);
	coil_ip_t *w = coil_channel_write(a, "pair\n", 5);
	coil_ip_t *r = coil_channel_readline(b);
	T_ASSERT_OK(t_wait(r));
	CU_ASSERT_EQUAL(coil_ip_int(r), 5);
	coil_ip_unref(r);
	coil_ip_unref(w);
	coil_ip_t *sh = coil_socket_shutdown(a, SHUT_WR);
	T_ASSERT_OK(t_wait(sh));
	coil_ip_unref(sh);
	r = coil_channel_read(b);
	T_ASSERT_OK(t_wait(r));
	size_t n = 1;
	void *p = coil_ip_steal_bytes(r, &n);
	CU_ASSERT_EQUAL(n, 0);
	CU_ASSERT_PTR_NOT_NULL(p);
	coil_free(p);
	coil_ip_unref(r);
	coil_channel_release(a);
	coil_channel_release(b);
	CU_ASSERT_EQUAL(coil_socketpair(L, AF_INET, SOCK_STREAM, &a, &b),
			-EOPNOTSUPP);
}

static const coil_test_t tests[] = {
	{"socketpair", test_socketpair},
	{"connect_refused_then_retry", test_connect_refused_then_retry},
	{"connect_bad_address", test_connect_bad_address},
	{"localhost_falls_back", test_localhost_falls_back},
	{"forced_ipv4_to_v6_fails", test_forced_ipv4_to_v6_fails},
	{"three_clients", test_three_clients},
	{"echo_v4_shutdown", test_echo_v4_shutdown},
	{"echo_v6_shutdown", test_echo_v6_shutdown},
	{"accept_timeout", test_accept_timeout},
	{"unix_listen", test_unix_listen},
	{"udp_v4", test_udp_v4},
	{"udp_v6", test_udp_v6},
	{"accept_emfile_recovers", test_accept_emfile_recovers},
	{"two_workers_share_listener", test_two_workers_share_listener},
	{"blocking_style", test_blocking_style},
	{"options", test_options},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	L = t_loop(2);
	int rc = coil_test_main("socket", tests, argc, argv);
	coil_loop_free(L);
	return rc;
}
