/* SPDX-License-Identifier: MIT */
/* The fixed file table (issue 14, lib/ftable.c): socket channels' ring ops
 * go through a registered slot mirroring their descriptor. A slot holds its
 * own reference to the file, so every way a descriptor is retired (close,
 * close with a receive in flight, rewrap, steal, dup's close, loop free)
 * must clear it, or the peer never sees the end of the stream. Each test
 * checks that from the peer's side, over real sockets, and checks the
 * worker's table counts; the fallbacks (flag, refusal, full table) run the
 * same traffic without slots. */
#include "helpers.h"
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* Runs fn(arg) on worker w of loop and waits for it to return. */
static coil_loop_t *loop_flags(unsigned workers, unsigned flags)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = workers;
	o.flags = flags;
	return t_loop_opts(&o);
}

struct stat_req {
	coil__ftable_stat st;
	coil_channel_t *ch;
	int fslot;
};

static void stat_run(void *p)
{
	struct stat_req *r = p;
	coil__ftable_stats(coil__tls_worker, &r->st);
	r->fslot = r->ch ? r->ch->fslot : -1;
}

/* Worker w's table, and ch's slot (ch may be NULL), read on the worker. */
static struct stat_req stats(coil_loop_t *loop, int w, coil_channel_t *ch)
{
	struct stat_req r;
	memset(&r, 0, sizeof(r));
	r.ch = ch;
	t_run_on(loop, w, stat_run, &r);
	return r;
}

/* A connected TCP pair over loopback: *srv for coil, *peer for the test. */
static void tcp_pair(int *srv, int *peer)
{
	unsigned short port;
	int l = t_listen_tcp4(&port);
	CU_ASSERT_FATAL(l >= 0);
	*peer = t_connect_tcp4(port);
	CU_ASSERT_FATAL(*peer >= 0);
	*srv = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CU_ASSERT_FATAL(*srv >= 0);
	close(l);
}

/* Reads the peer until the end of stream: 0 once it came, -1 if it did not
 * within 10 s (a slot still holding the socket) or on an error. */
static int peer_eof(int fd)
{
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char buf[65536];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n == 0)
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
	}
}

static void write_ok(coil_channel_t *ch, const char *s)
{
	coil_ip_t *ip = coil_channel_write(ch, s, strlen(s));
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	coil_ip_unref(ip);
}

static void peer_expect(int fd, const char *s)
{
	char buf[256];
	size_t n = strlen(s);
	CU_ASSERT_FATAL(n < sizeof(buf));
	CU_ASSERT_EQUAL_FATAL(t_read_exact(fd, buf, n), 0);
	CU_ASSERT(memcmp(buf, s, n) == 0);
}

/* Reads exactly n bytes from ch and checks them against s. */
static void read_expect(coil_channel_t *ch, const char *s)
{
	size_t n = strlen(s), got;
	coil_ip_t *ip = coil_channel_read_exact(ch, n);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	const char *p = coil_ip_bytes(ip, &got);
	CU_ASSERT_EQUAL(got, n);
	CU_ASSERT(p && memcmp(p, s, n) == 0);
	coil_ip_unref(ip);
}

static void close_release(coil_channel_t *ch)
{
	coil_channel_close(ch, 1);
	coil_channel_release(ch);
}

/* Waits (bounded) until worker w of loop holds no slot any more: a slot is
 * cleared on the worker after the close that the test's call started. */
static struct stat_req wait_no_slots(coil_loop_t *loop, int w)
{
	struct stat_req r = stats(loop, w, NULL);
	for (int i = 0; i < 10000 && r.st.live; i++) {
		usleep(1000);
		r = stats(loop, w, NULL);
	}
	CU_ASSERT_EQUAL(r.st.live, 0);
	CU_ASSERT_EQUAL(r.st.installs, r.st.clears);
	CU_ASSERT_EQUAL(r.st.fails, 0);
	return r;
}

/* A written-to socket channel gets a slot; closing it, the peer reads the
 * end of stream (the slot's reference went with the descriptor). */
static void test_close_peer_sees_eof(void)
{
	coil_loop_t *loop = t_loop(1);
	int srv, peer;
	tcp_pair(&srv, &peer);
	coil_channel_t *ch;
	T_ASSERT_OK(coil_channel_wrap(loop, srv, COIL_IO_READ | COIL_IO_WRITE,
				      &ch));
	write_ok(ch, "ping");
	peer_expect(peer, "ping");
	struct stat_req r = stats(loop, 0, ch);
	CU_ASSERT(r.st.slots > 0);
	CU_ASSERT(r.fslot >= 0);
	CU_ASSERT_EQUAL(r.st.live, 1);
	CU_ASSERT_EQUAL(r.st.installs, 1);
	/* Reads go through the slot too. */
	CU_ASSERT_EQUAL(t_write_all(peer, "pong", 4), 0);
	read_expect(ch, "pong");
	/* The handle is still held: only the close may end the stream. */
	coil_channel_close(ch, 1);
	CU_ASSERT_EQUAL(peer_eof(peer), 0);
	wait_no_slots(loop, 0);
	coil_channel_release(ch);
	close(peer);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* Closed while its receive (through the slot) waits for bytes that never
 * come: the receive is cancelled, the read fails, the peer sees EOF. */
static void test_close_with_recv_in_flight(void)
{
	coil_loop_t *loop = t_loop(1);
	int srv, peer;
	tcp_pair(&srv, &peer);
	coil_channel_t *ch;
	T_ASSERT_OK(coil_channel_wrap(loop, srv, COIL_IO_READ | COIL_IO_WRITE,
				      &ch));
	coil_ip_t *rd = coil_channel_read(ch);
	CU_ASSERT_FATAL(rd != NULL);
	/* The receive is armed once the slot is (both on the worker, in
	 * that order): wait until the slot exists. */
	struct stat_req r = stats(loop, 0, ch);
	for (int i = 0; i < 10000 && r.fslot < 0; i++) {
		usleep(1000);
		r = stats(loop, 0, ch);
	}
	CU_ASSERT(r.fslot >= 0);
	coil_channel_close(ch, 1);
	CU_ASSERT_EQUAL(t_wait(rd), 0); /* settled (empty or failed) */
	size_t got = 1;
	if (!coil_ip_error(rd))
		coil_ip_bytes(rd, &got);
	CU_ASSERT(coil_ip_error(rd) != 0 || got == 0);
	coil_ip_unref(rd);
	CU_ASSERT_EQUAL(peer_eof(peer), 0);
	wait_no_slots(loop, 0);
	coil_channel_release(ch);
	close(peer);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* 10,000 socket pairs made, used both ways and closed: the slots are
 * reused (the table's high-water mark stays at the handful open at once),
 * every byte reaches its own pair although descriptor numbers and slots
 * are reused all the time, and nothing stays installed. */
static void test_slot_reuse_cycles(void)
{
	coil_loop_t *loop = t_loop(1);
	int n = t_on_valgrind() ? 500 : 10000;
	for (int i = 0; i < n; i++) {
		coil_socket_t *a, *b;
		T_ASSERT_OK(coil_socketpair(loop, AF_UNIX, SOCK_STREAM, &a, &b));
		char msg[32];
		snprintf(msg, sizeof(msg), "cycle %06d", i);
		write_ok(a, msg);
		read_expect(b, msg);
		write_ok(b, msg);
		read_expect(a, msg);
		close_release(a);
		close_release(b);
	}
	struct stat_req r = wait_no_slots(loop, 0);
	CU_ASSERT_EQUAL(r.st.installs, 2 * (uint64_t)n);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* TCP: 300 connections made through coil (connect), each echoed by the
 * test and closed by coil; the test's end must see EOF every time. */
static void test_connect_close_cycles(void)
{
	coil_loop_t *loop = t_loop(1);
	unsigned short port;
	int l = t_listen_tcp4(&port);
	CU_ASSERT_FATAL(l >= 0);
	char addr[32];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	for (int i = 0; i < 300; i++) {
		coil_socket_t *s;
		T_ASSERT_OK(coil_socket_new(loop, &s));
		coil_ip_t *ip = coil_socket_connect(s, addr, 0);
		T_ASSERT_OK(t_wait(ip));
		T_ASSERT_OK(coil_ip_error(ip));
		coil_ip_unref(ip);
		int peer = accept4(l, NULL, NULL, SOCK_CLOEXEC);
		CU_ASSERT_FATAL(peer >= 0);
		write_ok(s, "hi");
		peer_expect(peer, "hi");
		coil_channel_close(s, 1);
		CU_ASSERT_EQUAL_FATAL(peer_eof(peer), 0);
		coil_channel_release(s);
		close(peer);
	}
	wait_no_slots(loop, 0);
	close(l);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* A table of 4 slots and 12 connections: the first 4 get slots, the rest
 * their plain descriptors, all carry bytes; closing slotted ones frees
 * their slots for the next connections. */
static void test_more_connections_than_slots(void)
{
	coil__ftable_size_override = 4;
	coil_loop_t *loop = t_loop(1);
	coil__ftable_size_override = 0;
	enum { N = 12 };
	coil_channel_t *ch[N];
	int peer[N];
	for (int i = 0; i < N; i++) {
		int srv;
		tcp_pair(&srv, &peer[i]);
		T_ASSERT_OK(coil_channel_wrap(loop, srv,
					      COIL_IO_READ | COIL_IO_WRITE,
					      &ch[i]));
		write_ok(ch[i], "x");
		peer_expect(peer[i], "x");
	}
	int slotted = 0;
	for (int i = 0; i < N; i++) {
		struct stat_req r = stats(loop, 0, ch[i]);
		CU_ASSERT_EQUAL(r.st.slots, 4);
		CU_ASSERT_EQUAL(r.fslot >= 0, i < 4);
		slotted += r.fslot >= 0;
		/* Both ways, slot or not. */
		CU_ASSERT_EQUAL(t_write_all(peer[i], "y", 1), 0);
		read_expect(ch[i], "y");
	}
	CU_ASSERT_EQUAL(slotted, 4);
	/* Two slotted ones go; two new connections take their slots. */
	for (int i = 0; i < 2; i++) {
		coil_channel_close(ch[i], 1);
		CU_ASSERT_EQUAL(peer_eof(peer[i]), 0);
		coil_channel_release(ch[i]);
		close(peer[i]);
		int srv;
		tcp_pair(&srv, &peer[i]);
		T_ASSERT_OK(coil_channel_wrap(loop, srv,
					      COIL_IO_READ | COIL_IO_WRITE,
					      &ch[i]));
	}
	/* Wait until the two closes cleared their slots, then use the new
	 * ones (their slot is taken on their first op). */
	struct stat_req r = stats(loop, 0, NULL);
	for (int i = 0; i < 10000 && r.st.live != 2; i++) {
		usleep(1000);
		r = stats(loop, 0, NULL);
	}
	for (int i = 0; i < 2; i++) {
		write_ok(ch[i], "z");
		peer_expect(peer[i], "z");
		CU_ASSERT(stats(loop, 0, ch[i]).fslot >= 0);
	}
	for (int i = 0; i < N; i++) {
		coil_channel_close(ch[i], 1);
		CU_ASSERT_EQUAL(peer_eof(peer[i]), 0);
		coil_channel_release(ch[i]);
		close(peer[i]);
	}
	wait_no_slots(loop, 0);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* The same traffic with no table: the flag, and a registration the kernel
 * refuses (more slots than RLIMIT_NOFILE and its own maximum). */
static void no_table_traffic(coil_loop_t *loop)
{
	int srv, peer;
	tcp_pair(&srv, &peer);
	coil_channel_t *ch;
	T_ASSERT_OK(coil_channel_wrap(loop, srv, COIL_IO_READ | COIL_IO_WRITE,
				      &ch));
	write_ok(ch, "ping");
	peer_expect(peer, "ping");
	CU_ASSERT_EQUAL(t_write_all(peer, "pong", 4), 0);
	read_expect(ch, "pong");
	struct stat_req r = stats(loop, 0, ch);
	CU_ASSERT_EQUAL(r.st.slots, 0);
	CU_ASSERT_EQUAL(r.fslot, -1);
	coil_channel_close(ch, 1);
	CU_ASSERT_EQUAL(peer_eof(peer), 0);
	coil_channel_release(ch);
	close(peer);
}

static void test_fallback_flag(void)
{
	coil_loop_t *loop = loop_flags(1, COIL_LOOP_NO_FIXED_FILES);
	no_table_traffic(loop);
	T_ASSERT_OK(coil_loop_free(loop));
}

static void test_fallback_refused(void)
{
	coil__ftable_size_override = 1u << 30;
	coil_loop_t *loop = t_loop(1);
	coil__ftable_size_override = 0;
	no_table_traffic(loop);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* rewrap: the old descriptor (and its slot) goes, its peer sees EOF; the
 * queued and later bytes go to the new one, through a new slot. */
static void test_rewrap(void)
{
	coil_loop_t *loop = t_loop(1);
	int s1, p1, s2, p2;
	tcp_pair(&s1, &p1);
	tcp_pair(&s2, &p2);
	coil_channel_t *ch;
	T_ASSERT_OK(coil_channel_wrap(loop, s1, COIL_IO_READ | COIL_IO_WRITE,
				      &ch));
	write_ok(ch, "one");
	peer_expect(p1, "one");
	CU_ASSERT(stats(loop, 0, ch).fslot >= 0);
	T_ASSERT_OK(coil_channel_rewrap(ch, s2, COIL_IO_READ | COIL_IO_WRITE));
	CU_ASSERT_EQUAL(peer_eof(p1), 0);
	write_ok(ch, "two");
	peer_expect(p2, "two");
	struct stat_req r = stats(loop, 0, ch);
	CU_ASSERT(r.fslot >= 0);
	CU_ASSERT_EQUAL(r.st.live, 1);
	CU_ASSERT_EQUAL(r.st.installs, 2);
	coil_channel_close(ch, 1);
	CU_ASSERT_EQUAL(peer_eof(p2), 0);
	wait_no_slots(loop, 0);
	coil_channel_release(ch);
	close(p1);
	close(p2);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* dup: the copy gets its own slot; closing the original leaves the socket
 * open through the copy (its bytes still arrive), closing the copy ends
 * it. */
static void test_dup(void)
{
	coil_loop_t *loop = t_loop(1);
	int srv, peer;
	tcp_pair(&srv, &peer);
	coil_channel_t *ch, *d;
	T_ASSERT_OK(coil_channel_wrap(loop, srv, COIL_IO_READ | COIL_IO_WRITE,
				      &ch));
	write_ok(ch, "a");
	T_ASSERT_OK(coil_channel_dup(ch, &d));
	write_ok(d, "b");
	peer_expect(peer, "ab");
	int s1 = stats(loop, 0, ch).fslot, s2 = stats(loop, 0, d).fslot;
	CU_ASSERT(s1 >= 0 && s2 >= 0 && s1 != s2);
	close_release(ch);
	write_ok(d, "c");
	peer_expect(peer, "c");
	coil_channel_close(d, 1);
	CU_ASSERT_EQUAL(peer_eof(peer), 0);
	wait_no_slots(loop, 0);
	coil_channel_release(d);
	close(peer);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* steal, on the home worker: the victim (with a slot) is closed, the thief
 * reads and writes the socket through a slot of its own; closing the thief
 * ends the stream. */
struct steal_req {
	coil_channel_t *thief, *victim;
	int rc;
};

static void steal_run(void *p)
{
	struct steal_req *s = p;
	s->rc = coil_channel_steal(s->thief, s->victim);
}

static void test_steal(void)
{
	coil_loop_t *loop = t_loop(1);
	int srv, peer;
	tcp_pair(&srv, &peer);
	struct steal_req s;
	T_ASSERT_OK(coil_channel_wrap(loop, srv, COIL_IO_READ | COIL_IO_WRITE,
				      &s.victim));
	T_ASSERT_OK(coil_channel_new(loop, &s.thief));
	write_ok(s.victim, "v");
	peer_expect(peer, "v");
	CU_ASSERT(stats(loop, 0, s.victim).fslot >= 0);
	t_run_on(loop, 0, steal_run, &s);
	T_ASSERT_OK(s.rc);
	write_ok(s.thief, "t");
	peer_expect(peer, "t");
	CU_ASSERT_EQUAL(t_write_all(peer, "r", 1), 0);
	read_expect(s.thief, "r");
	CU_ASSERT(stats(loop, 0, s.thief).fslot >= 0);
	CU_ASSERT_EQUAL(stats(loop, 0, s.victim).fslot, -1);
	coil_channel_close(s.thief, 1);
	CU_ASSERT_EQUAL(peer_eof(peer), 0);
	wait_no_slots(loop, 0);
	coil_channel_release(s.victim);
	coil_channel_release(s.thief);
	close(peer);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* coil_loop_free with socket channels in several states: idle with a
 * slot, a receive in flight, a write queued and being sent, closing
 * gracefully behind a queued write, never used (no slot). Every peer sees
 * the end of the stream once coil_loop_free has returned. (A send blocked
 * on a full socket whose peer never reads is left out: coil_loop_free
 * then hangs in about a third of the runs, fixed files or not; reported.) */
static void test_loop_free_every_state(void)
{
	coil_loop_t *loop = t_loop(2);
	enum { N = 5 };
	coil_channel_t *ch[N];
	int peer[N];
	for (int i = 0; i < N; i++) {
		int srv;
		tcp_pair(&srv, &peer[i]);
		T_ASSERT_OK(coil_channel_wrap(loop, srv,
					      COIL_IO_READ | COIL_IO_WRITE,
					      &ch[i]));
	}
	write_ok(ch[0], "idle");                     /* 0: idle, slot */
	peer_expect(peer[0], "idle");
	coil_ip_t *rd = coil_channel_read(ch[1]);    /* 1: receive waits */
	coil_ip_t *w2 = coil_channel_write(ch[2], "queued", 6); /* 2 */
	coil_ip_t *w3 = coil_channel_write(ch[3], "closing", 7); /* 3 */
	coil_channel_close(ch[3], 0);
	/* 4: never used. */
	T_ASSERT_OK(coil_loop_free(loop));
	for (int i = 0; i < N; i++) {
		CU_ASSERT_EQUAL(peer_eof(peer[i]), 0);
		close(peer[i]);
	}
	coil_ip_unref(rd);
	coil_ip_unref(w2);
	coil_ip_unref(w3);
}

/* A datagram socket's sends go through a slot as well (recvfrom does
 * not), and the descriptor the user sees stays the one it is. */
static void test_dgram_send(void)
{
	coil_loop_t *loop = t_loop(1);
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) ==
			0);
	coil_channel_t *ch;
	T_ASSERT_OK(coil_channel_wrap(loop, sv[0], COIL_IO_WRITE, &ch));
	write_ok(ch, "dgram");
	char buf[16];
	CU_ASSERT_EQUAL(recv(sv[1], buf, sizeof(buf), 0), 5);
	CU_ASSERT_EQUAL(coil_channel_fileno(ch), sv[0]);
	CU_ASSERT(stats(loop, 0, ch).fslot >= 0);
	coil_channel_close(ch, 1);
	wait_no_slots(loop, 0);
	coil_channel_release(ch);
	close(sv[1]);
	T_ASSERT_OK(coil_loop_free(loop));
}

/* TLS: the records go out both through the channel's ring sends (slot)
 * and tls.c's direct sends (descriptor), to the same socket; closing one
 * end ends the other's read (its FIN arrived). Skipped without TLS or the
 * openssl command to make a certificate. */
static void test_tls_channel(void)
{
	if (!coil_tls_available())
		return;
	char dir[] = "/tmp/coil-fixed-XXXXXX";
	if (!mkdtemp(dir))
		return;
	char cmd[512];
	snprintf(cmd, sizeof(cmd),
		 "cd %s && openssl req -x509 -newkey ec -pkeyopt "
		 "ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem "
		 "-days 2 -subj /CN=localhost >/dev/null 2>&1",
		 dir);
	if (system(cmd) != 0) {
		fprintf(stderr, "tls_channel: no openssl command, skipped\n");
		return;
	}
	char crt[64], key[64];
	snprintf(crt, sizeof(crt), "%s/c.pem", dir);
	snprintf(key, sizeof(key), "%s/k.pem", dir);
	coil_tls_ctx_t *sc = NULL, *cc = NULL;
	T_ASSERT_OK(coil_tls_ctx_new(COIL_TLS_SERVER, &sc));
	T_ASSERT_OK(coil_tls_ctx_use_cert_file(sc, crt, key));
	T_ASSERT_OK(coil_tls_ctx_new(COIL_TLS_CLIENT, &cc));
	T_ASSERT_OK(coil_tls_ctx_set_verify(cc, COIL_TLS_VERIFY_NONE));
	coil_loop_t *loop = t_loop(1);
	int fa, fb;
	tcp_pair(&fa, &fb);
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socket_wrap(loop, fa, &a));
	T_ASSERT_OK(coil_socket_wrap(loop, fb, &b));
	coil_ip_t *hc = coil_socket_starttls_client(a, cc, "localhost");
	coil_ip_t *hs = coil_socket_starttls_server(b, sc);
	T_ASSERT_OK(t_wait(hc));
	T_ASSERT_OK(t_wait(hs));
	T_ASSERT_OK(coil_ip_error(hc));
	T_ASSERT_OK(coil_ip_error(hs));
	coil_ip_unref(hc);
	coil_ip_unref(hs);
	write_ok(a, "secret");
	read_expect(b, "secret");
	write_ok(b, "answer");
	read_expect(a, "answer");
	CU_ASSERT(stats(loop, 0, a).fslot >= 0);
	CU_ASSERT(stats(loop, 0, b).fslot >= 0);
	coil_ip_t *rd = coil_channel_read(b);
	coil_channel_close(a, 1);
	T_ASSERT_OK(t_wait(rd)); /* settles once a's FIN came */
	coil_ip_unref(rd);
	coil_channel_close(b, 1);
	wait_no_slots(loop, 0);
	coil_channel_release(a);
	coil_channel_release(b);
	T_ASSERT_OK(coil_loop_free(loop));
	coil_tls_ctx_free(sc);
	coil_tls_ctx_free(cc);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "tls_channel: could not remove %s\n", dir);
}

static const coil_test_t tests[] = {
	{"close_peer_sees_eof", test_close_peer_sees_eof},
	{"close_with_recv_in_flight", test_close_with_recv_in_flight},
	{"slot_reuse_cycles", test_slot_reuse_cycles},
	{"connect_close_cycles", test_connect_close_cycles},
	{"more_connections_than_slots", test_more_connections_than_slots},
	{"fallback_flag", test_fallback_flag},
	{"fallback_refused", test_fallback_refused},
	{"rewrap", test_rewrap},
	{"dup", test_dup},
	{"steal", test_steal},
	{"loop_free_every_state", test_loop_free_every_state},
	{"dgram_send", test_dgram_send},
	{"tls_channel", test_tls_channel},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("fixed", tests, argc, argv);
}
