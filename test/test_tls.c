/* SPDX-License-Identifier: MIT */
/* Tests for TLS channels (lib/tls.c) against real peers: coil <-> coil,
 * coil client <-> `openssl s_server`, `openssl s_client` <-> coil server,
 * with a CA and certificates made by the openssl command in a temporary
 * directory. TLS 1.2 and 1.3, ALPN, SNI, verification failures, handshake
 * timeouts, garbage, readline across records, a bulk echo, close_notify and
 * truncation. */
#include "helpers.h"
#include "tls_notls.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static coil_loop_t *L;
static char dir[256];

static char *path(const char *name)
{
	static char buf[8][512];
	static int k;
	char *p = buf[k++ % 8];
	snprintf(p, 512, "%s/%s", dir, name);
	return p;
}

static int sh(const char *fmt, ...) COIL_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
	char cmd[2000];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	char full[2400];
	snprintf(full, sizeof(full), "cd '%s' && (%s) >>gen.log 2>&1", dir, cmd);
	return system(full);
}

/* A CA, leaves for localhost (+127.0.0.1) and other.test signed by it, an
 * expired leaf and a self-signed one. */
static int make_certs(void)
{
	const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
	if (sh("openssl req -x509 %s -keyout ca.key -out ca.pem -days 30 "
	       "-subj /CN=coil-test-ca",
	       ec))
		return -1;
	const struct {
		const char *name, *cn, *san;
		int days;
	} leaves[] = {
		{"srv", "localhost", "DNS:localhost,IP:127.0.0.1", 30},
		{"other", "other.test", "DNS:other.test", 30},
		{"expired", "localhost", "DNS:localhost,IP:127.0.0.1", -1},
	};
	for (size_t i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++) {
		if (sh("openssl req %s -keyout %s.key -out %s.csr -subj /CN=%s",
		       ec, leaves[i].name, leaves[i].name, leaves[i].cn) ||
		    sh("printf 'subjectAltName=%s\\n' > %s.ext", leaves[i].san,
		       leaves[i].name) ||
		    sh("openssl x509 -req -in %s.csr -CA ca.pem -CAkey ca.key "
		       "-CAcreateserial -out %s.pem -days %d -extfile %s.ext",
		       leaves[i].name, leaves[i].name, leaves[i].days,
		       leaves[i].name))
			return -1;
	}
	if (sh("openssl req -x509 %s -keyout self.key -out self.pem -days 30 "
	       "-subj /CN=localhost -addext subjectAltName=DNS:localhost",
	       ec))
		return -1;
	return 0;
}

static coil_tls_ctx_t *server_ctx(const char *leaf)
{
	coil_tls_ctx_t *c = NULL;
	T_ASSERT_OK(coil_tls_ctx_new(COIL_TLS_SERVER, &c));
	char crt[64], key[64];
	snprintf(crt, sizeof(crt), "%s.pem", leaf);
	snprintf(key, sizeof(key), "%s.key", leaf);
	int rc = coil_tls_ctx_use_cert_file(c, path(crt), path(key));
	if (rc)
		fprintf(stderr, "cert: %s\n", coil_tls_ctx_error(c));
	T_ASSERT_OK(rc);
	return c;
}

static coil_tls_ctx_t *client_ctx(void)
{
	coil_tls_ctx_t *c = NULL;
	T_ASSERT_OK(coil_tls_ctx_new(COIL_TLS_CLIENT, &c));
	T_ASSERT_OK(coil_tls_ctx_set_ca(c, path("ca.pem"), NULL));
	return c;
}

/* Waits for ip and returns its error (0 when finished). */
static int w_err(coil_ip_t *ip)
{
	T_ASSERT_OK(t_wait(ip));
	return coil_ip_error(ip);
}

static void ip_done_ok(coil_ip_t *ip)
{
	int e = w_err(ip);
	if (e)
		fprintf(stderr, "failed: %d %s\n", e, coil_ip_message(ip));
	CU_ASSERT_EQUAL(e, 0);
	coil_ip_unref(ip);
}

/* Handshakes a coil client on a and a coil server on b. */
static void handshake_pair(coil_socket_t *a, coil_tls_ctx_t *cc,
			   const char *host, coil_socket_t *b,
			   coil_tls_ctx_t *sc)
{
	coil_ip_t *hc = coil_socket_starttls_client(a, cc, host);
	coil_ip_t *hs = coil_socket_starttls_server(b, sc);
	CU_ASSERT_PTR_NOT_NULL_FATAL(hc);
	CU_ASSERT_PTR_NOT_NULL_FATAL(hs);
	ip_done_ok(hc);
	ip_done_ok(hs);
}

static char *read_str(coil_ip_t *ip, size_t *n)
{
	T_ASSERT_OK(t_wait(ip));
	if (coil_ip_error(ip))
		fprintf(stderr, "read: %s\n", coil_ip_message(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), 0);
	size_t len = 0;
	const void *p = coil_ip_bytes(ip, &len);
	char *s = malloc(len + 1);
	if (len)
		memcpy(s, p, len);
	s[len] = 0;
	if (n)
		*n = len;
	coil_ip_unref(ip);
	return s;
}

static void expect_read(coil_ip_t *ip, const char *want)
{
	size_t n;
	char *s = read_str(ip, &n);
	CU_ASSERT_EQUAL(n, strlen(want));
	CU_ASSERT_STRING_EQUAL(s, want);
	free(s);
}

/* ---- coil <-> coil ---- */

static void test_coil_coil(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	handshake_pair(a, cc, "localhost", b, sc);
	coil_tls_info_t ia, ib;
	T_ASSERT_OK(coil_tls_info(a, &ia));
	T_ASSERT_OK(coil_tls_info(b, &ib));
	CU_ASSERT_STRING_EQUAL(ia.version, "TLSv1.3");
	CU_ASSERT_STRING_EQUAL(ib.version, "TLSv1.3");
	CU_ASSERT(strstr(ia.peer_subject, "CN=localhost") != NULL);
	CU_ASSERT_STRING_EQUAL(ib.peer_subject, "");
	CU_ASSERT_STRING_EQUAL(ib.server_name, "localhost");
	CU_ASSERT_EQUAL(ia.server, 0);
	CU_ASSERT_EQUAL(ib.server, 1);
	CU_ASSERT(strlen(ia.cipher) > 0);

	/* Every read kind over the encrypted stream. */
	ip_done_ok(coil_channel_write(a, "hello\nworld", 11));
	expect_read(coil_channel_readline(b), "hello\n");
	expect_read(coil_channel_read_exact(b, 3), "wor");
	char buf[2];
	coil_ip_t *ri = coil_channel_readinto(b, buf, 2);
	T_ASSERT_OK(t_wait(ri));
	CU_ASSERT_EQUAL(coil_ip_int(ri), 2);
	CU_ASSERT(memcmp(buf, "ld", 2) == 0);
	coil_ip_unref(ri);
	struct iovec iov[2] = {{"abc", 3}, {"defg", 4}};
	ip_done_ok(coil_channel_writev(b, iov, 2));
	size_t sizes[2] = {2, 5};
	coil_ip_t *rv = coil_channel_readv(a, sizes, 2);
	T_ASSERT_OK(t_wait(rv));
	coil_readv_t *v = coil_ip_ptr(rv);
	CU_ASSERT_EQUAL_FATAL(v->count, 2);
	CU_ASSERT(v->iov[0].iov_len == 2 && !memcmp(v->iov[0].iov_base, "ab", 2));
	CU_ASSERT(v->iov[1].iov_len == 5 &&
		  !memcmp(v->iov[1].iov_base, "cdefg", 5));
	coil_ip_unref(rv);

	/* close(0) sends close_notify after the queued writes: the peer
	 * reads them, then a clean end of stream (0 bytes, no error). */
	coil_ip_unref(coil_channel_write(a, "last", 4));
	T_ASSERT_OK(coil_channel_close(a, 0));
	expect_read(coil_channel_read_exact(b, 4), "last");
	expect_read(coil_channel_read(b), "");
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* Writes made right after starttls, before the handshake finished, wait for
 * it and go encrypted; TLS 1.2 and ALPN negotiation. */
static void test_tls12_alpn_early_writes(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	T_ASSERT_OK(coil_tls_ctx_set_versions(cc, 0, COIL_TLS_1_2));
	const char *cp[] = {"h2", "http/1.1"};
	const char *sp[] = {"http/1.1", "spdy/3"};
	T_ASSERT_OK(coil_tls_ctx_set_alpn(cc, cp, 2));
	T_ASSERT_OK(coil_tls_ctx_set_alpn(sc, sp, 2));
	coil_ip_t *hc = coil_socket_starttls_client(a, cc, "localhost");
	coil_ip_t *w = coil_channel_write(a, "early bytes\n", 12);
	coil_ip_t *hs = coil_socket_starttls_server(b, sc);
	ip_done_ok(hc);
	ip_done_ok(hs);
	ip_done_ok(w);
	expect_read(coil_channel_readline(b), "early bytes\n");
	coil_tls_info_t ia, ib;
	T_ASSERT_OK(coil_tls_info(a, &ia));
	T_ASSERT_OK(coil_tls_info(b, &ib));
	CU_ASSERT_STRING_EQUAL(ia.version, "TLSv1.2");
	CU_ASSERT_STRING_EQUAL(ib.version, "TLSv1.2");
	CU_ASSERT_STRING_EQUAL(ia.alpn, "http/1.1");
	CU_ASSERT_STRING_EQUAL(ib.alpn, "http/1.1");
	/* The context is read-only once used. */
	CU_ASSERT_EQUAL(coil_tls_ctx_set_alpn(cc, cp, 1), -EBUSY);
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* ---- coil client <-> openssl s_server ---- */

typedef struct proc {
	pid_t pid;
	int in, out;
} proc_t;

/* Runs argv with stdin/stdout on pipes (stderr: to stdout when merge). */
static void spawn(proc_t *p, char *const argv[], int merge)
{
	int pin[2], pout[2];
	CU_ASSERT_FATAL(pipe(pin) == 0 && pipe(pout) == 0);
	p->pid = fork();
	CU_ASSERT_FATAL(p->pid >= 0);
	if (p->pid == 0) {
		dup2(pin[0], 0);
		dup2(pout[1], 1);
		if (merge)
			dup2(pout[1], 2);
		else {
			int e = open("/dev/null", O_WRONLY);
			dup2(e, 2);
		}
		close(pin[1]);
		close(pout[0]);
		execvp(argv[0], argv);
		_exit(127);
	}
	close(pin[0]);
	close(pout[1]);
	p->in = pin[1];
	p->out = pout[0];
}

/* Reads from p until `want` appears (or EOF / 10 s); returns what came. */
static char *proc_read_until(proc_t *p, const char *want, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap + 1);
	buf[0] = 0;
	for (int spins = 0; spins < 1000; spins++) {
		if (want && strstr(buf, want))
			break;
		struct pollfd pf = {p->out, POLLIN, 0};
		if (poll(&pf, 1, 10) <= 0)
			continue;
		ssize_t r = read(p->out, buf + n, cap - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		buf[n] = 0;
		if (n == cap)
			break;
	}
	if (len)
		*len = n;
	return buf;
}

static void proc_end(proc_t *p)
{
	if (p->in >= 0)
		close(p->in);
	close(p->out);
	kill(p->pid, SIGTERM);
	waitpid(p->pid, NULL, 0);
}

/* s_server on 127.0.0.1, ephemeral port: returns the port. www: a status
 * page; else the default mode (what the client sends is printed, "DONE"
 * after its close_notify). */
static unsigned s_server_mode(proc_t *p, int www, const char *extra1,
			      const char *extra2)
{
	char *argv[] = {"openssl", "s_server", "-accept", "127.0.0.1:0",
			"-cert", path("srv.pem"), "-key", path("srv.key"),
			"-naccept", "1", "-www", (char *)extra1, (char *)extra2,
			NULL};
	if (!www) /* the options after it move up one */
		memmove(&argv[10], &argv[11], 3 * sizeof(argv[0]));
	spawn(p, argv, 1);
	char *s = proc_read_until(p, "ACCEPT", NULL);
	char *a = strstr(s, "ACCEPT");
	unsigned port = 0;
	if (a) {
		char *nl = strchr(a, '\n');
		for (int i = 0; i < 50 && !nl; i++) {
			free(s);
			s = proc_read_until(p, "\n", NULL);
			a = s;
			nl = strchr(a, '\n');
		}
		char *c = strrchr(a, ':');
		if (c)
			port = (unsigned)atoi(c + 1);
	}
	free(s);
	CU_ASSERT_FATAL(port > 0);
	return port;
}

static unsigned s_server(proc_t *p, const char *extra1, const char *extra2)
{
	return s_server_mode(p, 1, extra1, extra2);
}

static void client_vs_s_server(const char *ver, const char *want)
{
	proc_t p;
	unsigned port = s_server(&p, ver, NULL);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_new(L, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	ip_done_ok(coil_socket_connect(s, addr, 0));
	coil_tls_ctx_t *cc = client_ctx();
	ip_done_ok(coil_socket_starttls_client(s, cc, "localhost"));
	coil_tls_info_t i;
	T_ASSERT_OK(coil_tls_info(s, &i));
	CU_ASSERT_STRING_EQUAL(i.version, want);
	ip_done_ok(coil_channel_write(s, "GET / HTTP/1.0\r\n\r\n", 18));
	/* The status page, then s_server's close_notify: a clean end. */
	char *line = read_str(coil_channel_readline(s), NULL);
	CU_ASSERT(strncmp(line, "HTTP/1.0 200", 12) == 0);
	free(line);
	size_t total = 0;
	for (int k = 0; k < 10000; k++) {
		size_t n;
		char *body = read_str(coil_channel_read(s), &n);
		free(body);
		total += n;
		if (!n)
			break;
	}
	CU_ASSERT(total > 0);
	coil_channel_release(s);
	coil_tls_ctx_free(cc);
	proc_end(&p);
}

static void test_client_vs_s_server_13(void)
{
	client_vs_s_server("-tls1_3", "TLSv1.3");
}

static void test_client_vs_s_server_12(void)
{
	client_vs_s_server("-tls1_2", "TLSv1.2");
}

/* ---- openssl s_client <-> coil server (the TLS listener) ---- */

struct srv {
	_Atomic int clients;   /* published after the fields below */
	_Atomic int seen;      /* the first client fills them */
	char alpn[256], version[16];
};

static void echo_read(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	coil_ip_t *w = coil_channel_write(ch, d, n);
	/* A lost echo must not go unnoticed: the client would wait. */
	if (!w || coil_ip_state(w) == COIL_IP_FAILED) {
		fprintf(stderr, "echo write failed: %s\n",
			w ? coil_ip_message(w) : "ENOMEM");
		coil_channel_close(ch, 1);
	}
	coil_ip_unref(w);
}

static void echo_closed(coil_channel_t *ch, int expected, void *ud)
{
	coil_channel_release(ch);
}

static void on_tls_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	struct srv *s = ud;
	coil_tls_info_t i;
	if (coil_tls_info(c, &i) == 0) {
		if (atomic_fetch_add(&s->seen, 1) == 0) {
			snprintf(s->alpn, sizeof(s->alpn), "%s", i.alpn);
			snprintf(s->version, sizeof(s->version), "%s", i.version);
		}
		atomic_fetch_add(&s->clients, 1);
	}
	coil_channel_on_closed(c, echo_closed, NULL);
	/* Bytes held while the read signal is paused come back in pieces
	 * of chunk_size: keep them well below half the write queue, so
	 * that the echo never finds the queue full. */
	coil_channel_set_chunk_size(c, 64u << 10);
	coil_channel_on_read(c, echo_read, NULL);
}

static coil_socket_t *tls_listener(coil_tls_ctx_t *sc, struct srv *s,
				   unsigned *port)
{
	coil_socket_t *l;
	T_ASSERT_OK(coil_socket_new(L, &l));
	T_ASSERT_OK(coil_socket_on_new_tls_client(l, sc, on_tls_client, s));
	T_ASSERT_OK(coil_socket_listen(l, "127.0.0.1:0", 64, 0));
	coil_sockinfo_t li;
	T_ASSERT_OK(coil_socket_local(l, &li));
	*port = li.port;
	return l;
}

static void s_client_vs_server(const char *ver, const char *want)
{
	coil_tls_ctx_t *sc = server_ctx("srv");
	const char *sp[] = {"coil/1"};
	T_ASSERT_OK(coil_tls_ctx_set_alpn(sc, sp, 1));
	struct srv s = {0};
	unsigned port;
	coil_socket_t *l = tls_listener(sc, &s, &port);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	char *argv[] = {"openssl", "s_client", "-connect", addr, "-CAfile",
			path("ca.pem"), "-verify_return_error", "-servername",
			"localhost", "-alpn", "coil/1", "-brief", (char *)ver,
			NULL};
	proc_t p;
	spawn(&p, argv, 1);
	/* Wait for the handshake, then echo a line through it. */
	char *out = proc_read_until(&p, "CONNECTION ESTABLISHED", NULL);
	CU_ASSERT(strstr(out, "CONNECTION ESTABLISHED") != NULL);
	free(out);
	CU_ASSERT_EQUAL(write(p.in, "ping over tls\n", 14), 14);
	out = proc_read_until(&p, "ping over tls", NULL);
	CU_ASSERT(strstr(out, "ping over tls") != NULL);
	free(out);
	if (!strcmp(want, "TLSv1.3")) {
		/* A TLS 1.3 KeyUpdate asking for ours ("K"): answered, and the
		 * stream goes on under the new keys. */
		CU_ASSERT_EQUAL(write(p.in, "K\n", 2), 2);
		out = proc_read_until(&p, "KEYUPDATE", NULL);
		CU_ASSERT(strstr(out, "KEYUPDATE") != NULL);
		free(out);
		CU_ASSERT_EQUAL(write(p.in, "after key update\n", 17), 17);
		out = proc_read_until(&p, "after key update", NULL);
		CU_ASSERT(strstr(out, "after key update") != NULL);
		free(out);
	}
	CU_ASSERT_EQUAL(atomic_load(&s.clients), 1);
	CU_ASSERT_STRING_EQUAL(s.alpn, "coil/1");
	CU_ASSERT_STRING_EQUAL(s.version, want);
	proc_end(&p);
	coil_channel_release(l);
	coil_tls_ctx_free(sc);
}

static void test_s_client_vs_server_13(void)
{
	s_client_vs_server("-tls1_3", "TLSv1.3");
}

static void test_s_client_vs_server_12(void)
{
	s_client_vs_server("-tls1_2", "TLSv1.2");
}

/* TLS 1.2 renegotiation is refused: s_client's "R" command asks for one and
 * gets OpenSSL's "no renegotiation" back from the coil server. */
static void test_renegotiation_refused(void)
{
	coil_tls_ctx_t *sc = server_ctx("srv");
	struct srv s = {0};
	unsigned port;
	coil_socket_t *l = tls_listener(sc, &s, &port);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	char *argv[] = {"openssl", "s_client", "-connect", addr, "-CAfile",
			path("ca.pem"), "-verify_return_error", "-servername",
			"localhost", "-brief", "-tls1_2", NULL};
	proc_t p;
	spawn(&p, argv, 1);
	char *out = proc_read_until(&p, "CONNECTION ESTABLISHED", NULL);
	free(out);
	CU_ASSERT_EQUAL(write(p.in, "before\n", 7), 7);
	out = proc_read_until(&p, "before", NULL);
	CU_ASSERT(strstr(out, "before") != NULL);
	free(out);
	/* (Also orders the worker's writes to s before s leaves scope.) */
	CU_ASSERT_EQUAL(atomic_load(&s.clients), 1);
	CU_ASSERT_EQUAL(write(p.in, "R\n", 2), 2);
	out = proc_read_until(&p, "no renegotiation", NULL);
	if (!strstr(out, "no renegotiation"))
		fprintf(stderr, "s_client: %s\n", out);
	CU_ASSERT(strstr(out, "no renegotiation") != NULL);
	free(out);
	proc_end(&p);
	coil_channel_release(l);
	coil_tls_ctx_free(sc);
}

/* A server's HelloRequest (s_server's "R" command) is refused by a coil
 * client. */
static void test_client_refuses_renegotiation(void)
{
	char *argv[] = {"openssl", "s_server", "-accept", "127.0.0.1:0",
			"-cert", path("srv.pem"), "-key", path("srv.key"),
			"-naccept", "1", "-tls1_2", NULL};
	proc_t p;
	spawn(&p, argv, 1);
	char *out = proc_read_until(&p, "ACCEPT", NULL);
	char *a = strstr(out, "ACCEPT");
	unsigned port = 0;
	if (a && strchr(a, '\n')) {
		char *c = strrchr(a, ':');
		port = c ? (unsigned)atoi(c + 1) : 0;
	}
	free(out);
	CU_ASSERT_FATAL(port > 0);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_new(L, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	ip_done_ok(coil_socket_connect(s, addr, 0));
	coil_tls_ctx_t *cc = client_ctx();
	ip_done_ok(coil_socket_starttls_client(s, cc, "localhost"));
	ip_done_ok(coil_channel_write(s, "hi\n", 3));
	out = proc_read_until(&p, "hi", NULL);
	free(out);
	/* s_server sends a HelloRequest; the client answers no_renegotiation
	 * and s_server gives up with a handshake_failure alert. (With
	 * renegotiation allowed the read would wait: it was renegotiated.) */
	coil_ip_t *r = coil_channel_read(s);
	CU_ASSERT_EQUAL(write(p.in, "R\n", 2), 2);
	CU_ASSERT_EQUAL(w_err(r), -EPROTO);
	CU_ASSERT(strstr(coil_ip_message(r), "handshake failure") != NULL);
	coil_ip_unref(r);
	proc_end(&p);
	coil_channel_release(s);
	coil_tls_ctx_free(cc);
}

/* ---- SNI: the server's callback chooses between two certificates ---- */

static coil_tls_ctx_t *sni_other;

static coil_tls_ctx_t *pick_ctx(const char *name, void *ud)
{
	int *calls = ud;
	(*calls)++;
	return name && !strcmp(name, "other.test") ? sni_other : NULL;
}

static void sni_round(coil_tls_ctx_t *cc, coil_tls_ctx_t *sc,
		      const char *host, const char *want_cn)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	handshake_pair(a, cc, host, b, sc);
	coil_tls_info_t ia, ib;
	T_ASSERT_OK(coil_tls_info(a, &ia));
	T_ASSERT_OK(coil_tls_info(b, &ib));
	CU_ASSERT(strstr(ia.peer_subject, want_cn) != NULL);
	CU_ASSERT_STRING_EQUAL(ib.server_name, host);
	coil_channel_release(a);
	coil_channel_release(b);
}

static void test_sni_two_certs(void)
{
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	sni_other = server_ctx("other");
	int calls = 0;
	T_ASSERT_OK(coil_tls_ctx_set_sni_cb(sc, pick_ctx, &calls));
	CU_ASSERT_EQUAL(coil_tls_ctx_set_sni_cb(cc, pick_ctx, &calls), -EINVAL);
	sni_round(cc, sc, "other.test", "CN=other.test");
	sni_round(cc, sc, "localhost", "CN=localhost");
	CU_ASSERT_EQUAL(calls, 2);
	/* Connections hold their own references: freeing now is fine. */
	coil_tls_ctx_free(sni_other);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* ---- verification failures: each with a readable reason ---- */

static void verify_fails(const char *leaf, const char *host,
			 coil_tls_ctx_t *cc, const char *reason)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *sc = server_ctx(leaf);
	coil_ip_t *hc = coil_socket_starttls_client(a, cc, host);
	coil_ip_t *hs = coil_socket_starttls_server(b, sc);
	CU_ASSERT_EQUAL(w_err(hc), -EKEYREJECTED);
	const char *m = coil_ip_message(hc);
	if (!strcasestr(m, reason))
		fprintf(stderr, "message: %s\n", m);
	CU_ASSERT(strcasestr(m, reason) != NULL);
	CU_ASSERT(strstr(m, "certificate verify failed") != NULL);
	/* The server learns it from the client's alert. */
	CU_ASSERT_EQUAL(w_err(hs), -EPROTO);
	if (!strstr(coil_ip_message(hs), "alert"))
		fprintf(stderr, "server: %s\n", coil_ip_message(hs));
	CU_ASSERT(strstr(coil_ip_message(hs), "alert") != NULL);
	coil_ip_unref(hc);
	coil_ip_unref(hs);
	/* A failed handshake closes the channel. */
	CU_ASSERT(!coil_channel_alive(a));
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(sc);
}

static void test_verify_failures(void)
{
	coil_tls_ctx_t *cc = client_ctx();
	verify_fails("srv", "wrong.test", cc, "Hostname mismatch");
	verify_fails("srv", "127.0.0.2", cc, "IP address mismatch");
	verify_fails("expired", "localhost", cc, "certificate has expired");
	verify_fails("self", "localhost", cc, "self-signed certificate");
	/* A client context without a CA of its own uses the system store,
	 * which does not know the test CA. */
	coil_tls_ctx_t *sys = NULL;
	T_ASSERT_OK(coil_tls_ctx_new(COIL_TLS_CLIENT, &sys));
	verify_fails("srv", "localhost", sys, "unable to get local issuer");
	coil_tls_ctx_free(sys);
	/* The right name and an IP literal the certificate lists. */
	coil_tls_ctx_t *sc = server_ctx("srv");
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	handshake_pair(a, cc, "127.0.0.1", b, sc);
	coil_channel_release(a);
	coil_channel_release(b);
	/* VERIFY_NONE accepts the self-signed one. */
	coil_tls_ctx_t *lax = client_ctx();
	T_ASSERT_OK(coil_tls_ctx_set_verify(lax, COIL_TLS_VERIFY_NONE));
	coil_tls_ctx_t *ss = server_ctx("self");
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	handshake_pair(a, lax, "localhost", b, ss);
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(lax);
	coil_tls_ctx_free(ss);
	coil_tls_ctx_free(sc);
	coil_tls_ctx_free(cc);
}

/* Client certificates: REQUIRE refuses a client without one. */
static void test_client_cert_required(void)
{
	coil_tls_ctx_t *sc = server_ctx("srv");
	T_ASSERT_OK(coil_tls_ctx_set_verify(sc, COIL_TLS_VERIFY_REQUIRE));
	T_ASSERT_OK(coil_tls_ctx_set_ca(sc, path("ca.pem"), NULL));
	coil_tls_ctx_t *anon = client_ctx();
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_ip_t *hc = coil_socket_starttls_client(a, anon, "localhost");
	coil_ip_t *hs = coil_socket_starttls_server(b, sc);
	CU_ASSERT_EQUAL(w_err(hs), -EPROTO);
	CU_ASSERT(strstr(coil_ip_message(hs), "certificate") != NULL);
	/* TLS 1.3: the client may finish first, then see the alert. */
	t_wait(hc);
	coil_ip_unref(hc);
	coil_ip_unref(hs);
	coil_channel_release(a);
	coil_channel_release(b);
	/* With a certificate (from memory) it passes, and the server sees
	 * its subject. */
	coil_tls_ctx_t *cert = client_ctx();
	char *crt = NULL, *key = NULL;
	size_t nc = 0, nk = 0;
	FILE *f = fopen(path("other.pem"), "r");
	CU_ASSERT_FATAL(f != NULL);
	crt = malloc(65536);
	nc = fread(crt, 1, 65536, f);
	fclose(f);
	f = fopen(path("other.key"), "r");
	CU_ASSERT_FATAL(f != NULL);
	key = malloc(65536);
	nk = fread(key, 1, 65536, f);
	fclose(f);
	T_ASSERT_OK(coil_tls_ctx_use_cert_mem(cert, crt, nc, key, nk));
	CU_ASSERT_EQUAL(coil_tls_ctx_use_cert_mem(cert, key, nk, crt, nc),
			-EINVAL);
	CU_ASSERT(strlen(coil_tls_ctx_error(cert)) > 0);
	free(crt);
	free(key);
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	handshake_pair(a, cert, "localhost", b, sc);
	coil_tls_info_t ib;
	T_ASSERT_OK(coil_tls_info(b, &ib));
	CU_ASSERT(strstr(ib.peer_subject, "CN=other.test") != NULL);
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(cert);
	coil_tls_ctx_free(anon);
	coil_tls_ctx_free(sc);
}

/* ---- handshakes that never complete, garbage ---- */

/* A raw peer on a socketpair: the coil end runs a server handshake with a
 * 150 ms timeout; `send` is what the peer sends before going silent. */
static void stalled_handshake(const void *send, size_t n, int want)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_wrap(L, sv[0], &s));
	coil_tls_ctx_t *sc = server_ctx("srv");
	T_ASSERT_OK(coil_tls_ctx_set_handshake_timeout(sc, 150));
	if (n)
		CU_ASSERT_EQUAL(write(sv[1], send, n), (ssize_t)n);
	coil_ip_t *hs = coil_socket_starttls_server(s, sc);
	CU_ASSERT_EQUAL(w_err(hs), want);
	CU_ASSERT(strlen(coil_ip_message(hs)) > 0);
	coil_ip_unref(hs);
	/* The channel was closed: the peer reads the end of the stream
	 * (after an alert, for garbage). */
	char buf[4096];
	struct pollfd pf = {sv[1], POLLIN, 0};
	ssize_t r = 1;
	for (int i = 0; i < 100 && r > 0; i++) {
		CU_ASSERT(poll(&pf, 1, 10000) == 1);
		r = read(sv[1], buf, sizeof(buf));
	}
	CU_ASSERT(r == 0 || (r < 0 && errno == ECONNRESET));
	CU_ASSERT(!coil_channel_alive(s));
	coil_channel_release(s);
	close(sv[1]);
	coil_tls_ctx_free(sc);
}

size_t coil__alloc_live(void); /* lib/alloc.c (tests link statically) */

static void test_handshake_timeout(void)
{
	size_t before = coil_live_channels();
	size_t mem_before = coil__alloc_live();
	stalled_handshake(NULL, 0, -ETIMEDOUT);
	/* A ClientHello cut in the middle: the record header promises more
	 * than ever comes. */
	static const unsigned char partial[] = {0x16, 0x03, 0x01, 0x02, 0x00,
						0x01, 0x00, 0x01, 0xfc, 0x03,
						0x03, 0xaa, 0xbb};
	stalled_handshake(partial, sizeof(partial), -ETIMEDOUT);
	for (int i = 0; i < 1000 && coil_live_channels() > before; i++)
		usleep(1000);
	CU_ASSERT(coil_live_channels() <= before);
	/* And coil's own memory for them is given back (a little slack for
	 * handles other threads hold for a moment). */
	size_t mem = coil__alloc_live();
	for (int i = 0; i < 1000 && mem > mem_before + 8; i++) {
		usleep(1000);
		mem = coil__alloc_live();
	}
	if (mem > mem_before + 8)
		fprintf(stderr, "live allocations %zu, before %zu\n", mem,
			mem_before);
	CU_ASSERT(mem <= mem_before + 8);
}

static void test_garbage_closed(void)
{
	char junk[4096];
	memset(junk, 'G', sizeof(junk));
	memcpy(junk, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
	stalled_handshake(junk, sizeof(junk), -EPROTO);
	/* A peer that floods garbage is cut off at the first bad record:
	 * it cannot make the server hold what it sends. */
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_wrap(L, sv[0], &s));
	coil_tls_ctx_t *sc = server_ctx("srv");
	coil_ip_t *hs = coil_socket_starttls_server(s, sc);
	size_t sent = 0;
	const size_t limit = 256u << 20;
	while (sent < limit) {
		ssize_t w = send(sv[1], junk, sizeof(junk), MSG_NOSIGNAL);
		if (w <= 0)
			break;
		sent += (size_t)w;
	}
	CU_ASSERT(sent < limit);
	CU_ASSERT_EQUAL(w_err(hs), -EPROTO);
	coil_ip_unref(hs);
	coil_channel_release(s);
	close(sv[1]);
	coil_tls_ctx_free(sc);
}

/* Aborting the handshake closes the channel: the handle itself (no
 * timeout) or the timeout's handle wrapped around it (the default). */
static void handshake_abort(unsigned timeout_ms)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_wrap(L, sv[0], &s));
	coil_tls_ctx_t *cc = client_ctx();
	T_ASSERT_OK(coil_tls_ctx_set_handshake_timeout(cc, timeout_ms));
	coil_ip_t *hc = coil_socket_starttls_client(s, cc, "localhost");
	/* The ClientHello arrives, then the abort. */
	char buf[4096];
	CU_ASSERT(read(sv[1], buf, sizeof(buf)) > 5);
	CU_ASSERT_EQUAL(buf[0], 0x16);
	T_ASSERT_OK(coil_ip_abort(hc));
	int e = w_err(hc);
	if (e != -ECANCELED)
		fprintf(stderr, "abort: %d %s\n", e, coil_ip_message(hc));
	CU_ASSERT_EQUAL(e, -ECANCELED);
	coil_ip_unref(hc);
	CU_ASSERT_EQUAL(read(sv[1], buf, sizeof(buf)), 0);
	coil_channel_release(s);
	close(sv[1]);
	coil_tls_ctx_free(cc);
}

static void test_handshake_abort(void)
{
	handshake_abort(0);
	handshake_abort(10000);
}

/* Stopping a loop with TLS channels open, handshaken and mid-handshake:
 * everything is closed and freed (ASan's leak check), the pending
 * handshake fails. */
static void test_loop_free_with_tls_open(void)
{
	coil_loop_t *l2 = t_loop(2);
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	coil_socket_t *a, *b, *c;
	T_ASSERT_OK(coil_socketpair(l2, AF_UNIX, SOCK_STREAM, &a, &b));
	handshake_pair(a, cc, "localhost", b, sc);
	ip_done_ok(coil_channel_write(a, "unread", 6));
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	T_ASSERT_OK(coil_socket_wrap(l2, sv[0], &c));
	coil_ip_t *hs = coil_socket_starttls_server(c, sc);
	T_ASSERT_OK(coil_loop_free(l2));
	CU_ASSERT_NOT_EQUAL(coil_ip_state(hs), COIL_IP_PENDING);
	CU_ASSERT(coil_ip_error(hs) < 0);
	coil_ip_unref(hs);
	close(sv[1]);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* Bad arguments and states. */
static void test_starttls_errors(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	coil_ip_t *ip = coil_socket_starttls_client(a, sc, "localhost");
	CU_ASSERT_EQUAL(w_err(ip), -EINVAL);
	coil_ip_unref(ip);
	ip = coil_socket_starttls_server(a, NULL);
	CU_ASSERT_EQUAL(w_err(ip), -EINVAL);
	coil_ip_unref(ip);
	CU_ASSERT_PTR_NULL(coil_socket_starttls_server(NULL, sc));
	CU_ASSERT_EQUAL(coil_tls_ctx_new(7, &cc), -EINVAL);
	CU_ASSERT_EQUAL(coil_tls_ctx_set_verify(cc, 9), -EINVAL);
	CU_ASSERT_EQUAL(coil_tls_ctx_set_versions(cc, COIL_TLS_1_3,
						  COIL_TLS_1_2), -EINVAL);
	const char *bad[] = {""};
	CU_ASSERT_EQUAL(coil_tls_ctx_set_alpn(cc, bad, 1), -EINVAL);
	CU_ASSERT_EQUAL(coil_tls_ctx_set_ca(cc, path("nonexistent.pem"), NULL),
			-EINVAL);
	CU_ASSERT(strlen(coil_tls_ctx_error(cc)) > 0);
	CU_ASSERT_EQUAL(coil_tls_ctx_use_cert_file(sc, path("nope.pem"),
						   path("srv.key")), -EINVAL);
	CU_ASSERT(strstr(coil_tls_ctx_error(sc), "nope.pem") != NULL);
	/* No TLS on a plain channel. */
	coil_tls_info_t i;
	CU_ASSERT_EQUAL(coil_tls_info(a, &i), -ENOTCONN);
	/* starttls twice. */
	handshake_pair(a, cc, "localhost", b, sc);
	/* The TLS state cannot be copied or moved with the descriptor. */
	coil_channel_t *d = NULL;
	CU_ASSERT_EQUAL(coil_channel_dup(a, &d), -EOPNOTSUPP);
	CU_ASSERT_EQUAL(coil_channel_steal(a, b), -EOPNOTSUPP);
	int fd2 = dup(0);
	CU_ASSERT_EQUAL(coil_channel_rewrap(a, fd2, COIL_IO_READ), -EOPNOTSUPP);
	close(fd2);
	ip = coil_socket_starttls_client(a, cc, "localhost");
	CU_ASSERT_EQUAL(w_err(ip), -EALREADY);
	coil_ip_unref(ip);
	T_ASSERT_OK(coil_channel_close(a, 1));
	coil_channel_release(a);
	coil_channel_release(b);
	/* After close: -ENOTCONN. */
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	T_ASSERT_OK(coil_channel_close(a, 1));
	ip = coil_socket_starttls_client(a, cc, "localhost");
	CU_ASSERT_EQUAL(w_err(ip), -ENOTCONN);
	coil_ip_unref(ip);
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* ---- records and lines ---- */

/* Lines split across records (each write waited for, so each is a record
 * of its own), several delimiters, the readline signal. */
struct lines {
	char got[8][32];
	_Atomic int n;
};

static void on_line(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	struct lines *l = ud;
	int k = atomic_load(&l->n);
	if (k < 8 && n < 32) {
		memcpy(l->got[k], d, n);
		l->got[k][n] = 0;
	}
	atomic_store(&l->n, k + 1);
}

static void test_readline_across_records(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	handshake_pair(a, cc, "localhost", b, sc);
	const char *parts[] = {"ab", "cd\r", "\nef", "gh\n", "x\r\ny"};
	for (int i = 0; i < 5; i++)
		ip_done_ok(coil_channel_write(a, parts[i], strlen(parts[i])));
	const void *d[] = {"\r\n", "\n"};
	size_t dl[] = {2, 1};
	T_ASSERT_OK(coil_channel_set_delimiters(b, d, dl, 2));
	expect_read(coil_channel_readline(b), "abcd\r\n");
	expect_read(coil_channel_readline(b), "efgh\n");
	expect_read(coil_channel_readline(b), "x\r\n");
	/* The readline signal over the same stream. */
	struct lines l = {0};
	/* channel.c counts a readline() as pending until just after its
	 * handle settled: a caller woken by t_wait can still see -EBUSY for
	 * a moment (reported to chan). */
	int rc = -EBUSY;
	for (int i = 0; i < 1000 && rc == -EBUSY; i++)
		if ((rc = coil_channel_on_readline(b, on_line, &l)) == -EBUSY)
			usleep(1000);
	T_ASSERT_OK(rc);
	ip_done_ok(coil_channel_write(a, "z\n", 2));
	ip_done_ok(coil_channel_write(a, "1\r", 2));
	ip_done_ok(coil_channel_write(a, "\n", 1));
	for (int i = 0; i < 5000 && atomic_load(&l.n) < 2; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&l.n), 2);
	CU_ASSERT_STRING_EQUAL(l.got[0], "yz\n");
	CU_ASSERT_STRING_EQUAL(l.got[1], "1\r\n");
	T_ASSERT_OK(coil_channel_on_readline(b, NULL, NULL));
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* Channel behaviours that must not change over TLS: the write queue bound
 * (-ENOBUFS, counted in plaintext), the socket read timeout (the read fails,
 * the stream stays usable), close(1) with a write still queued, and
 * write_view inside a read signal (copied). */
static void on_read_view(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	coil_ip_unref(coil_channel_write_view(ch, d, n));
}

static void test_channel_behaviours_over_tls(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	handshake_pair(a, cc, "localhost", b, sc);
	/* Read timeout: fails with -ETIMEDOUT, takes nothing. */
	T_ASSERT_OK(coil_socket_set_timeout(b, 50));
	coil_ip_t *r = coil_channel_read(b);
	CU_ASSERT_EQUAL(w_err(r), -ETIMEDOUT);
	coil_ip_unref(r);
	ip_done_ok(coil_channel_write(a, "after timeout\n", 14));
	expect_read(coil_channel_readline(b), "after timeout\n");
	T_ASSERT_OK(coil_socket_set_timeout(b, 0));
	/* write_view in a read signal: an echo through b. */
	T_ASSERT_OK(coil_channel_on_read(b, on_read_view, NULL));
	ip_done_ok(coil_channel_write(a, "viewed", 6));
	expect_read(coil_channel_read_exact(a, 6), "viewed");
	T_ASSERT_OK(coil_channel_on_read(b, NULL, NULL));
	/* The write queue bound, in plaintext bytes: b does not read, so
	 * two 2 MiB writes fill a 4 MiB queue (the kernel and b's side absorb
	 * well under 2 MiB of it) and a third does not fit. */
	T_ASSERT_OK(coil_channel_set_queue_size(a, 4u << 20));
	size_t big = 2u << 20;
	char *p = calloc(1, big);
	coil_ip_t *w1 = coil_channel_write(a, p, big);
	coil_ip_t *w0 = coil_channel_write(a, p, big);
	coil_ip_t *w2 = coil_channel_write(a, p, big);
	int e2 = w_err(w2);
	if (e2 != -ENOBUFS)
		fprintf(stderr, "w2: %d %s\n", e2, coil_ip_message(w2));
	CU_ASSERT_EQUAL(e2, -ENOBUFS);
	coil_ip_unref(w2);
	CU_ASSERT(coil_channel_write_queue_used(a) > big);
	CU_ASSERT(coil_channel_write_queue_used(a) <= 2 * big);
	CU_ASSERT_EQUAL(coil_ip_state(w0), COIL_IP_PENDING);
	/* close(1): the write that could not finish fails, no hang. */
	T_ASSERT_OK(coil_channel_close(a, 1));
	CU_ASSERT(w_err(w0) < 0);
	coil_ip_unref(w0);
	T_ASSERT_OK(t_wait(w1));
	coil_ip_unref(w1);
	free(p);
	/* b sees bytes, then the truncation (no close_notify after close(1)),
	 * or a reset: either way an error, never a clean end. */
	coil_ip_t *rest = NULL;
	for (int i = 0; i < 100000; i++) {
		rest = coil_channel_read(b);
		T_ASSERT_OK(t_wait(rest));
		if (coil_ip_error(rest))
			break;
		size_t n = 0;
		coil_ip_bytes(rest, &n);
		CU_ASSERT(n > 0);
		coil_ip_unref(rest);
		rest = NULL;
	}
	CU_ASSERT_PTR_NOT_NULL(rest);
	if (rest) {
		int e = coil_ip_error(rest);
		CU_ASSERT(e == -EPROTO || e == -ECONNRESET);
		coil_ip_unref(rest);
	}
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* ---- close_notify and truncation ---- */

static void test_truncation_is_error(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	handshake_pair(a, cc, "localhost", b, sc);
	/* a reads everything the server sent (its session tickets came
	 * first), so that closing a is a plain FIN, not a reset. */
	ip_done_ok(coil_channel_write(b, "x", 1));
	expect_read(coil_channel_read(a), "x");
	ip_done_ok(coil_channel_write(a, "partial", 7));
	/* close(1) sends no close_notify: the server reads the bytes that
	 * came, then a read error, not the end of the stream. */
	T_ASSERT_OK(coil_channel_close(a, 1));
	expect_read(coil_channel_read_exact(b, 7), "partial");
	coil_ip_t *r = coil_channel_read(b);
	int e = w_err(r);
	if (e != -EPROTO)
		fprintf(stderr, "truncation: %d %s\n", e, coil_ip_message(r));
	CU_ASSERT_EQUAL(e, -EPROTO);
	CU_ASSERT(strstr(coil_ip_message(r), "truncated") != NULL);
	coil_ip_unref(r);
	coil_channel_release(a);
	coil_channel_release(b);
	/* A raw peer closing after the handshake: the same. A peer that
	 * ends with close_notify: a clean end (test_coil_coil). */
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* coil_socket_shutdown(SHUT_WR) on a TLS channel sends close_notify after
 * the queued writes, then shuts the socket's write side: the peer reads the
 * bytes and a clean end of stream (not a truncation), and can still answer,
 * which the shut side reads up to the peer's own close_notify. A write
 * after it fails and closes the channel. (Before the hook in
 * socket.c's shutdown, the peer saw -EPROTO "stream truncated".) */
static void test_shutdown_sends_close_notify(void)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	handshake_pair(a, cc, "localhost", b, sc);
	/* Half-closed streams: b answers after the end of a's. */
	T_ASSERT_OK(coil_channel_set_close_on_eof(b, 0));
	/* Queued, then the shutdown waits for it. */
	coil_ip_unref(coil_channel_write(a, "request", 7));
	ip_done_ok(coil_socket_shutdown(a, SHUT_WR));
	expect_read(coil_channel_read_exact(b, 7), "request");
	expect_read(coil_channel_read(b), ""); /* clean end, no -EPROTO */
	/* The other direction still works, to b's own close_notify. */
	coil_ip_unref(coil_channel_write(b, "reply", 5));
	T_ASSERT_OK(coil_channel_close(b, 0));
	expect_read(coil_channel_read_exact(a, 5), "reply");
	expect_read(coil_channel_read(a), "");
	coil_channel_release(a);
	coil_channel_release(b);

	/* Nothing queued: close_notify at once; then a write fails. SHUT_RDWR
	 * sends it too. */
	for (int how = SHUT_WR; how <= SHUT_RDWR; how++) {
		T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
		handshake_pair(a, cc, "localhost", b, sc);
		ip_done_ok(coil_socket_shutdown(a, how));
		if (how == SHUT_WR) {
			/* Before a can see any end of b's. */
			/* Before a can see any end of b's. The write
			 * fails and a closes (as a plain socket does on
			 * its send's -EPIPE), nothing is sent after the
			 * close_notify: b still sees a clean end. */
			coil_ip_t *w = coil_channel_write(a, "late", 4);
			int e = w_err(w);
			if (e != -EBADF)
				fprintf(stderr, "late write: %d %s\n", e,
					coil_ip_message(w));
			CU_ASSERT_EQUAL(e, -EBADF);
			coil_ip_unref(w);
			CU_ASSERT_EQUAL(coil_channel_alive(a), 0);
		}
		expect_read(coil_channel_read(b), "");
		coil_channel_release(a);
		coil_channel_release(b);
	}
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* The same against openssl s_server (default mode: it prints what it
 * reads, "DONE" on the client's close_notify, then closes with its own). */
static void shutdown_vs_s_server(const char *ver)
{
	proc_t p;
	unsigned port = s_server_mode(&p, 0, ver, NULL);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_new(L, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	ip_done_ok(coil_socket_connect(s, addr, 0));
	coil_tls_ctx_t *cc = client_ctx();
	ip_done_ok(coil_socket_starttls_client(s, cc, "localhost"));
	coil_ip_unref(coil_channel_write(s, "ping from coil\n", 15));
	ip_done_ok(coil_socket_shutdown(s, SHUT_WR));
	char *out = proc_read_until(&p, "DONE", NULL);
	if (!strstr(out, "DONE"))
		fprintf(stderr, "s_server said: %s\n", out);
	CU_ASSERT(strstr(out, "ping from coil") != NULL);
	CU_ASSERT(strstr(out, "DONE") != NULL);
	CU_ASSERT(strstr(out, "unexpected eof") == NULL);
	free(out);
	/* s_server answers with its close_notify: a clean end here. */
	expect_read(coil_channel_read(s), "");
	coil_channel_release(s);
	coil_tls_ctx_free(cc);
	proc_end(&p);
}

static void test_shutdown_vs_s_server(void)
{
	shutdown_vs_s_server("-tls1_3");
	shutdown_vs_s_server("-tls1_2");
}

/* ---- session resumption ---- */

static void resume_round(coil_tls_ctx_t *cc, coil_tls_ctx_t *sc, int want)
{
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	handshake_pair(a, cc, "localhost", b, sc);
	coil_tls_info_t ia, ib;
	T_ASSERT_OK(coil_tls_info(a, &ia));
	T_ASSERT_OK(coil_tls_info(b, &ib));
	CU_ASSERT_EQUAL(ia.session_reused, want);
	CU_ASSERT_EQUAL(ib.session_reused, want);
	/* TLS 1.3 tickets come after the handshake: read once. */
	ip_done_ok(coil_channel_write(b, "t", 1));
	expect_read(coil_channel_read(a), "t");
	T_ASSERT_OK(coil_channel_close(a, 0));
	expect_read(coil_channel_read(b), "");
	coil_channel_release(a);
	coil_channel_release(b);
}

static void test_session_resumption(void)
{
	coil_tls_ctx_t *cc = client_ctx(), *sc = server_ctx("srv");
	resume_round(cc, sc, 0);
	resume_round(cc, sc, 1);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
	/* Off on the server: never resumed. */
	cc = client_ctx();
	sc = server_ctx("srv");
	T_ASSERT_OK(coil_tls_ctx_set_session_resumption(sc, 0));
	resume_round(cc, sc, 0);
	resume_round(cc, sc, 0);
	coil_tls_ctx_free(cc);
	coil_tls_ctx_free(sc);
}

/* A client's first bytes travel with its Finished (coil queues them during
 * the handshake): the TLS listener's new-client callback connects its read
 * signal after the handshake finished, and the signal must still see them.
 * (Failed before the records were held: the echo never came.) */
static void test_listener_first_bytes_with_finished(void)
{
	coil_tls_ctx_t *sc = server_ctx("srv"), *cc = client_ctx();
	struct srv sv = {0};
	unsigned port;
	coil_socket_t *l = tls_listener(sc, &sv, &port);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	for (int i = 0; i < 20; i++) {
		coil_socket_t *s;
		T_ASSERT_OK(coil_socket_new(L, &s));
		ip_done_ok(coil_socket_connect(s, addr, 0));
		coil_ip_t *hc = coil_socket_starttls_client(s, cc, "localhost");
		coil_ip_t *w = coil_channel_write(s, "first\n", 6);
		ip_done_ok(hc);
		ip_done_ok(w);
		expect_read(coil_channel_readline(s), "first\n");
		coil_channel_release(s);
	}
	CU_ASSERT_EQUAL(atomic_load(&sv.clients), 20);
	coil_channel_release(l);
	coil_tls_ctx_free(sc);
	coil_tls_ctx_free(cc);
}

/* The same with starttls called directly: the read signal is connected in
 * the handshake's callback, after the bytes that came with the client's
 * Finished arrived; it still sees them (they were held undecrypted until
 * someone wanted them). */
static void connect_echo(coil_ip_t *ip, void *ud)
{
	coil_channel_t *ch = ud;
	if (coil_ip_error(ip) == 0)
		coil_channel_on_read(ch, echo_read, NULL);
}

static void test_signal_connected_after_handshake(void)
{
	coil_tls_ctx_t *sc = server_ctx("srv"), *cc = client_ctx();
	for (int i = 0; i < 20; i++) {
		coil_socket_t *a, *b;
		T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
		coil_ip_t *hs = coil_socket_starttls_server(b, sc);
		T_ASSERT_OK(coil_ip_on_done(hs, connect_echo, b));
		coil_ip_t *hc = coil_socket_starttls_client(a, cc, "localhost");
		coil_ip_t *w = coil_channel_write(a, "first\n", 6);
		ip_done_ok(hc);
		ip_done_ok(w);
		expect_read(coil_channel_readline(a), "first\n");
		/* And plain reads see what came with the Finished too. */
		coil_ip_unref(hs);
		coil_channel_release(a);
		coil_channel_release(b);
	}
	coil_socket_t *a, *b;
	T_ASSERT_OK(coil_socketpair(L, AF_UNIX, SOCK_STREAM, &a, &b));
	coil_ip_t *hs = coil_socket_starttls_server(b, sc);
	coil_ip_t *hc = coil_socket_starttls_client(a, cc, "localhost");
	coil_ip_t *w = coil_channel_write(a, "read later\n", 11);
	ip_done_ok(hc);
	ip_done_ok(w);
	ip_done_ok(hs);
	expect_read(coil_channel_readline(b), "read later\n");
	/* Held records that end with close_notify: a clean end. */
	T_ASSERT_OK(coil_channel_set_close_on_eof(b, 0));
	ip_done_ok(coil_channel_write(a, "bye\n", 4));
	T_ASSERT_OK(coil_channel_close(a, 0));
	expect_read(coil_channel_readline(b), "bye\n");
	expect_read(coil_channel_read(b), "");
	coil_channel_release(a);
	coil_channel_release(b);
	coil_tls_ctx_free(sc);
	coil_tls_ctx_free(cc);
}

/* Many clients at once through the TLS listener on two workers: every
 * handshake, echo and close_notify completes, nothing is left behind. */
static void test_many_clients(void)
{
	size_t before = coil_live_channels();
	enum { N = 100 };
	coil_tls_ctx_t *sc = server_ctx("srv"), *cc = client_ctx();
	struct srv sv = {0};
	unsigned port;
	coil_socket_t *l = tls_listener(sc, &sv, &port);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	coil_socket_t *s[N];
	coil_ip_t *hs[N], *rd[N];
	for (int i = 0; i < N; i++) {
		T_ASSERT_OK(coil_socket_new(L, &s[i]));
		coil_ip_t *c = coil_socket_connect(s[i], addr, 0);
		T_ASSERT_OK(t_wait(c));
		T_ASSERT_OK(coil_ip_error(c));
		coil_ip_unref(c);
		hs[i] = coil_socket_starttls_client(s[i], cc, "localhost");
		char line[32];
		int n = snprintf(line, sizeof(line), "client %d\n", i);
		coil_ip_unref(coil_channel_write(s[i], line, (size_t)n));
		rd[i] = coil_channel_readline(s[i]);
	}
	int ok = 0;
	for (int i = 0; i < N; i++) {
		ip_done_ok(hs[i]);
		char want[32];
		snprintf(want, sizeof(want), "client %d\n", i);
		T_ASSERT_OK(t_wait(rd[i]));
		size_t n = 0;
		const char *p = coil_ip_bytes(rd[i], &n);
		if (n == strlen(want) && !memcmp(p, want, n))
			ok++;
		coil_ip_unref(rd[i]);
		coil_channel_release(s[i]);
	}
	CU_ASSERT_EQUAL(ok, N);
	CU_ASSERT_EQUAL(atomic_load(&sv.clients), N);
	coil_channel_release(l);
	for (int i = 0; i < 5000 && coil_live_channels() > before; i++)
		usleep(1000);
	CU_ASSERT(coil_live_channels() <= before);
	coil_tls_ctx_free(sc);
	coil_tls_ctx_free(cc);
}

/* ---- bulk: bytes through a TLS echo server, equal checksums ---- */

struct bulk {
	coil_socket_t *s;
	size_t total;
	uint64_t sum;
	int err;
};

static uint64_t fnv(uint64_t h, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static void fill_block(unsigned char *p, size_t n, uint64_t *x)
{
	for (size_t i = 0; i < n; i++) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		p[i] = (unsigned char)*x;
	}
}

static void *bulk_writer(void *arg)
{
	struct bulk *b = arg;
	size_t blk = 256u << 10;
	unsigned char *buf = malloc(blk);
	uint64_t x = 88172645463325252ull, h = 14695981039346656037ull;
	for (size_t done = 0; done < b->total && !b->err;) {
		size_t n = b->total - done < blk ? b->total - done : blk;
		fill_block(buf, n, &x);
		h = fnv(h, buf, n);
		coil_ip_t *w = coil_channel_write(b->s, buf, n);
		if (!w || coil_ip_wait(w, 60000) || coil_ip_error(w))
			b->err = -EIO;
		coil_ip_unref(w);
		done += n;
	}
	b->sum = h;
	free(buf);
	return NULL;
}

static void test_bulk_echo(void)
{
	size_t mb = t_on_valgrind() ? 2 : 32;
	const char *env = getenv("COIL_TLS_BULK_MB");
	if (env && atoi(env) > 0)
		mb = (size_t)atoi(env);
	coil_tls_ctx_t *sc = server_ctx("srv"), *cc = client_ctx();
	struct srv sv = {0};
	unsigned port;
	coil_socket_t *l = tls_listener(sc, &sv, &port);
	coil_socket_t *s;
	T_ASSERT_OK(coil_socket_new(L, &s));
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	ip_done_ok(coil_socket_connect(s, addr, 0));
	ip_done_ok(coil_socket_starttls_client(s, cc, "localhost"));
	struct bulk b = {s, mb << 20, 0, 0};
	pthread_t th;
	CU_ASSERT_FATAL(pthread_create(&th, NULL, bulk_writer, &b) == 0);
	size_t blk = 1u << 20, got = 0;
	unsigned char *buf = malloc(blk);
	uint64_t h = 14695981039346656037ull;
	while (got < b.total) {
		size_t n = b.total - got < blk ? b.total - got : blk;
		coil_ip_t *r = coil_channel_readinto(s, buf, n);
		if (coil_ip_wait(r, 60000) || coil_ip_error(r) ||
		    coil_ip_int(r) != (int64_t)n) {
			fprintf(stderr, "bulk read failed at %zu: %s\n", got,
				coil_ip_message(r));
			coil_ip_unref(r);
			break;
		}
		coil_ip_unref(r);
		h = fnv(h, buf, n);
		got += n;
	}
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(atomic_load(&sv.clients), 1);
	CU_ASSERT_EQUAL(b.err, 0);
	CU_ASSERT_EQUAL(got, b.total);
	CU_ASSERT(h == b.sum);
	free(buf);
	/* close_notify, then the server's: both ends close cleanly. */
	T_ASSERT_OK(coil_channel_close(s, 0));
	coil_channel_release(s);
	coil_channel_release(l);
	coil_tls_ctx_free(sc);
	coil_tls_ctx_free(cc);
}

/* ---- http_echo --cert/--key against curl --cacert ---- */

static char exdir[512];

static char *run_out(const char *cmd, int *status)
{
	FILE *p = popen(cmd, "r");
	size_t cap = 1 << 16, len = 0, n;
	char *out = calloc(1, cap + 1);
	while (p && (n = fread(out + len, 1, cap - len, p)) > 0)
		len += n;
	int st = p ? pclose(p) : -1;
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	return out;
}

static void test_https_echo_with_curl(void)
{
	if (system("command -v curl >/dev/null 2>&1") != 0) {
		fprintf(stderr, "(curl missing: skipped)\n");
		return;
	}
	unsigned short port;
	int keep = t_listen_tcp4(&port);
	close(keep);
	char exe[600], ps[16];
	snprintf(exe, sizeof(exe), "%s/http_echo", exdir);
	snprintf(ps, sizeof(ps), "%u", port);
	char *argv[] = {exe, "--host", "127.0.0.1", "--port", ps,
			"--threads", "2", "--cert", path("srv.pem"), "--key",
			path("srv.key"), NULL};
	proc_t p;
	spawn(&p, argv, 1);
	char *out = proc_read_until(&p, "listening on", NULL);
	CU_ASSERT(strstr(out, "listening on https://") != NULL);
	free(out);
	char cmd[1500];
	const char *base = "curl -sS --max-time 10 --cacert '%s' --resolve "
			   "localhost:%u:127.0.0.1 ";
	int st;
	/* Two requests on one kept-alive connection, then a POST. */
	int k = snprintf(cmd, sizeof(cmd), base, path("ca.pem"), port);
	snprintf(cmd + k, sizeof(cmd) - k,
		 "https://localhost:%u/hello https://localhost:%u/hello", port,
		 port);
	out = run_out(cmd, &st);
	if (st || strcmp(out, "hello\nhello\n"))
		fprintf(stderr, "curl exit %d: '%s'\n", st, out);
	CU_ASSERT_EQUAL(st, 0);
	CU_ASSERT_STRING_EQUAL(out, "hello\nhello\n");
	free(out);
	snprintf(cmd + k, sizeof(cmd) - k,
		 "-d 'tls body' https://localhost:%u/echo", port);
	out = run_out(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	CU_ASSERT(strstr(out, "POST /echo HTTP/1.1") != NULL);
	CU_ASSERT(strstr(out, "tls body") != NULL);
	free(out);
	/* Without the CA, curl refuses the certificate (exit 60). */
	snprintf(cmd, sizeof(cmd),
		 "curl -s --max-time 10 --resolve localhost:%u:127.0.0.1 "
		 "https://localhost:%u/hello", port, port);
	out = run_out(cmd, &st);
	CU_ASSERT_EQUAL(st, 60);
	free(out);
	/* Plain HTTP to the HTTPS port gets no answer, only a close. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s --max-time 10 http://127.0.0.1:%u/hello", port);
	out = run_out(cmd, &st);
	CU_ASSERT(st != 0);
	free(out);
	kill(p.pid, SIGTERM);
	int ws;
	waitpid(p.pid, &ws, 0);
	CU_ASSERT(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
	close(p.in);
	close(p.out);
}

/* ---- a build without OpenSSL ---- */

static void show_log(const char *what)
{
	char cmd[600];
	fprintf(stderr, "notls_link: %s; the end of %s:\n", what,
		path("gen.log"));
	snprintf(cmd, sizeof(cmd), "tail -20 '%s' >&2", path("gen.log"));
	if (system(cmd) != 0)
		fprintf(stderr, "(cannot show it)\n");
}

/* What `make TLS=0` changes is lib/tls.c's other half: it is compiled here
 * without COIL_HAVE_OPENSSL (the project's warnings, -Werror, this
 * variant's sanitizer), linked with this build's libcoil.a and no OpenSSL
 * libraries (so nothing else in the library needs them: a link error
 * otherwise), and the program checks every TLS function fails with
 * -ENOTSUP (test/tls_notls.h, also run by the notls test of a TLS=0
 * build). `make stress` builds and runs the real TLS=0 test_tls too. */
static void test_notls_link(void)
{
	char bdir[PATH_MAX], tmpl[PATH_MAX + 8];
	snprintf(tmpl, sizeof(tmpl), "%s/..", exdir);
	if (!realpath(tmpl, bdir)) {
		CU_FAIL("cannot find the build directory");
		return;
	}
	char root[PATH_MAX];
	snprintf(tmpl, sizeof(tmpl), "%s/../..", bdir);
	char src[PATH_MAX + 16];
	if (!realpath(tmpl, root) ||
	    (snprintf(src, sizeof(src), "%s/lib/tls.c", root),
	     access(src, R_OK))) {
		printf("\n  note: skipped: no sources next to %s\n", bdir);
		CU_PASS("skipped");
		return;
	}
	const char *variant = strrchr(bdir, '/') ? strrchr(bdir, '/') + 1 : bdir;
	/* Keep in step with the Makefile's SAN and JEMALLOC per variant. */
	const char *san = "", *defs = "-DCOIL_NO_JEMALLOC", *libs = "";
	if (!strcmp(variant, "asan"))
		san = "-fsanitize=address,undefined -fno-omit-frame-pointer "
		      "-fno-sanitize-recover=undefined";
	else if (!strcmp(variant, "tsan"))
		san = "-fsanitize=thread -fno-omit-frame-pointer";
	else if (strcmp(variant, "valgrind"))
		defs = "", libs = "-ljemalloc";
	FILE *f = fopen(path("notls_probe.c"), "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("#include \"tls_notls.h\"\n"
	      "int main(void)\n{\n"
	      "\tcoil_loop_opts_t o;\n\tcoil_loop_opts_init(&o);\n"
	      "\to.workers = 1;\n\tcoil_loop_t *l;\n"
	      "\tif (coil_loop_new(&l, &o))\n\t\treturn 2;\n"
	      "\tint bad = notls_check(l);\n\tcoil_loop_free(l);\n"
	      "\treturn bad ? 1 : 0;\n}\n",
	      f);
	fclose(f);
	const char *warn = "-std=gnu11 -O1 -g -Wall -Wextra -Werror "
			   "-Wno-unused-parameter -Wshadow -Wstrict-prototypes";
	int rc = sh("cc %s %s -D_GNU_SOURCE %s -I'%s/include' -I'%s/lib' "
		    "-fvisibility=hidden -c '%s' -o tls_notls.o",
		    warn, san, defs, root, root, src);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	rc = sh("cc %s %s -D_GNU_SOURCE -I'%s/include' -I'%s/test' "
		"-o notls_probe notls_probe.c tls_notls.o '%s/libcoil.a' "
		"-luring -lpthread -lm %s",
		warn, san, root, root, bdir, libs);
	if (rc)
		show_log("link failed");
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	/* No OpenSSL came along. */
	CU_ASSERT_NOT_EQUAL(sh("nm notls_probe | grep -q ' SSL_'"), 0);
	rc = sh("./notls_probe");
	if (rc)
		show_log("the probe failed");
	CU_ASSERT_EQUAL(rc, 0);
}

static const coil_test_t tests[] = {
	{"coil_coil", test_coil_coil},
	{"tls12_alpn_early_writes", test_tls12_alpn_early_writes},
	{"client_vs_s_server_13", test_client_vs_s_server_13},
	{"client_vs_s_server_12", test_client_vs_s_server_12},
	{"s_client_vs_server_13", test_s_client_vs_server_13},
	{"s_client_vs_server_12", test_s_client_vs_server_12},
	{"renegotiation_refused", test_renegotiation_refused},
	{"client_refuses_renegotiation", test_client_refuses_renegotiation},
	{"sni_two_certs", test_sni_two_certs},
	{"verify_failures", test_verify_failures},
	{"client_cert_required", test_client_cert_required},
	{"handshake_timeout", test_handshake_timeout},
	{"garbage_closed", test_garbage_closed},
	{"handshake_abort", test_handshake_abort},
	{"loop_free_with_tls_open", test_loop_free_with_tls_open},
	{"starttls_errors", test_starttls_errors},
	{"readline_across_records", test_readline_across_records},
	{"truncation_is_error", test_truncation_is_error},
	{"shutdown_sends_close_notify", test_shutdown_sends_close_notify},
	{"shutdown_vs_s_server", test_shutdown_vs_s_server},
	{"channel_behaviours_over_tls", test_channel_behaviours_over_tls},
	{"session_resumption", test_session_resumption},
	{"listener_first_bytes_with_finished",
	 test_listener_first_bytes_with_finished},
	{"signal_connected_after_handshake",
	 test_signal_connected_after_handshake},
	{"many_clients", test_many_clients},
	{"bulk_echo", test_bulk_echo},
	{"https_echo_with_curl", test_https_echo_with_curl},
	{"notls_link", test_notls_link},
	{NULL, NULL},
};

/* A TLS=0 build: every TLS function fails with -ENOTSUP. */
static void test_notls(void)
{
	CU_ASSERT_EQUAL(notls_check(L), 0);
}

static const coil_test_t notls_tests[] = {
	{"notls", test_notls},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	/* build/<variant>/test/test_tls -> build/<variant>/examples */
	char self[512];
	snprintf(self, sizeof(self), "%s", argv[0]);
	snprintf(exdir, sizeof(exdir), "%s/../examples", dirname(self));
	L = t_loop(2);
	int rc;
	if (!coil_tls_available()) {
		rc = coil_test_main("tls", notls_tests, argc, argv);
		coil_loop_free(L);
		return rc;
	}
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/coil-tls-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dir) || make_certs()) {
		fprintf(stderr, "coil-test: cannot make certificates with the "
				"openssl command (see %s/gen.log)\n", dir);
		return 1;
	}
	rc = coil_test_main("tls", tests, argc, argv);
	coil_loop_free(L);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	return rc;
}
