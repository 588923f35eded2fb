/* SPDX-License-Identifier: MIT */
/* What a build without OpenSSL (TLS=0) promises: every coil_tls_* function
 * and the TLS socket calls fail with -ENOTSUP (handles: already failed with
 * -ENOTSUP), nothing crashes on NULL contexts, and plain sockets work as
 * before. Used by test_tls's notls test (in a TLS=0 build) and by the
 * probe that test_tls's notls_link builds against the library. Returns the
 * number of broken promises, each told on stderr. */
#ifndef COIL_TEST_TLS_NOTLS_H
#define COIL_TEST_TLS_NOTLS_H

#include <coil.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define NOTLS_EXPECT(cond)                                                  \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "notls: %s:%d: %s\n", __FILE__,     \
				__LINE__, #cond);                           \
			bad++;                                              \
		}                                                           \
	} while (0)

static void notls_no_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	(void)l;
	(void)ud;
	coil_channel_release(c);
}

static coil_tls_ctx_t *notls_no_sni(const char *name, void *ud)
{
	(void)name;
	(void)ud;
	return NULL;
}

/* Waits for ip (a handle that must already be failed or settle soon) and
 * returns its error; unrefs it. */
static int notls_wait_err(coil_ip_t *ip)
{
	if (!ip)
		return 1;
	int e = coil_ip_wait(ip, 10000) ? -ETIME : coil_ip_error(ip);
	coil_ip_unref(ip);
	return e;
}

static int notls_check(coil_loop_t *loop)
{
	int bad = 0;
	NOTLS_EXPECT(coil_tls_available() == 0);
	coil_tls_ctx_t *c = (coil_tls_ctx_t *)&bad;
	NOTLS_EXPECT(coil_tls_ctx_new(COIL_TLS_CLIENT, &c) == -ENOTSUP);
	NOTLS_EXPECT(c == NULL);
	c = (coil_tls_ctx_t *)&bad;
	NOTLS_EXPECT(coil_tls_ctx_new(COIL_TLS_SERVER, &c) == -ENOTSUP);
	NOTLS_EXPECT(c == NULL);
	NOTLS_EXPECT(coil_tls_ctx_ref(NULL) == NULL);
	coil_tls_ctx_free(NULL);
	const char *why = coil_tls_ctx_error(NULL);
	NOTLS_EXPECT(why && strstr(why, "TLS=0"));
	NOTLS_EXPECT(coil_tls_ctx_use_cert_file(NULL, "a", "b") == -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_use_cert_mem(NULL, "a", 1, "b", 1) ==
		     -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_ca(NULL, "a", NULL) == -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_ca_mem(NULL, "a", 1) == -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_verify(NULL, COIL_TLS_VERIFY_NONE) ==
		     -ENOTSUP);
	const char *protos[] = {"h2"};
	NOTLS_EXPECT(coil_tls_ctx_set_alpn(NULL, protos, 1) == -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_versions(NULL, COIL_TLS_1_2,
					       COIL_TLS_1_3) == -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_ciphers(NULL, NULL, NULL) == -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_session_resumption(NULL, 1) ==
		     -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_handshake_timeout(NULL, 100) ==
		     -ENOTSUP);
	NOTLS_EXPECT(coil_tls_ctx_set_sni_cb(NULL, notls_no_sni, NULL) ==
		     -ENOTSUP);

	coil_socket_t *a, *b;
	if (coil_socketpair(loop, AF_UNIX, SOCK_STREAM, &a, &b)) {
		fprintf(stderr, "notls: socketpair failed\n");
		return bad + 1;
	}
	NOTLS_EXPECT(notls_wait_err(coil_socket_starttls_client(a, NULL,
								"x")) ==
		     -ENOTSUP);
	NOTLS_EXPECT(notls_wait_err(coil_socket_starttls_server(b, NULL)) ==
		     -ENOTSUP);
	coil_tls_info_t info;
	NOTLS_EXPECT(coil_tls_info(a, &info) == -ENOTSUP);
	/* The channels stay plain and usable, shutdown included. */
	NOTLS_EXPECT(notls_wait_err(coil_channel_write(a, "hi", 2)) == 0);
	NOTLS_EXPECT(notls_wait_err(coil_socket_shutdown(a, SHUT_WR)) == 0);
	coil_ip_t *r = coil_channel_read_exact(b, 2);
	NOTLS_EXPECT(coil_ip_wait(r, 10000) == 0 && coil_ip_error(r) == 0);
	size_t n = 0;
	const void *p = coil_ip_state(r) == COIL_IP_FINISHED
				? coil_ip_bytes(r, &n)
				: NULL;
	NOTLS_EXPECT(n == 2 && p && !memcmp(p, "hi", 2));
	coil_ip_unref(r);
	coil_channel_release(a);
	coil_channel_release(b);

	coil_socket_t *l;
	if (coil_socket_new(loop, &l) == 0) {
		NOTLS_EXPECT(coil_socket_on_new_tls_client(l, NULL,
							   notls_no_client,
							   NULL) == -ENOTSUP);
		coil_channel_release(l);
	}
	return bad;
}

#endif /* COIL_TEST_TLS_NOTLS_H */
