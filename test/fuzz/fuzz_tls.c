/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the TLS layer: arbitrary bytes from a client reach
 * a server-side TLS channel (a real loop, a real socketpair, a real
 * OpenSSL handshake). Whatever arrives, the handshake settles (an error
 * with a message, since the input cannot know the keys), the channel
 * closes, the peer sees the end of the stream and every channel is freed:
 * no crash, no hang, no leak. The seed corpus holds a real ClientHello. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "coil.h"

static coil_loop_t *loop;
static coil_tls_ctx_t *ctx;

/* A throw-away self-signed P-256 certificate, as PEM in memory. */
static void make_ctx(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	if (!k || !x)
		abort();
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	X509_NAME *n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
				   (const unsigned char *)"localhost", -1, -1, 0);
	X509_set_issuer_name(x, n);
	if (!X509_sign(x, k, EVP_sha256()))
		abort();
	BIO *bc = BIO_new(BIO_s_mem()), *bk = BIO_new(BIO_s_mem());
	PEM_write_bio_X509(bc, x);
	PEM_write_bio_PrivateKey(bk, k, NULL, NULL, 0, NULL, NULL);
	char *pc, *pk;
	long nc = BIO_get_mem_data(bc, &pc), nk = BIO_get_mem_data(bk, &pk);
	if (coil_tls_ctx_new(COIL_TLS_SERVER, &ctx) ||
	    coil_tls_ctx_use_cert_mem(ctx, pc, (size_t)nc, pk, (size_t)nk) ||
	    coil_tls_ctx_set_handshake_timeout(ctx, 5000)) {
		fprintf(stderr, "fuzz_tls: context: %s\n", coil_tls_ctx_error(ctx));
		abort();
	}
	const char *alpn[] = {"h2", "http/1.1"};
	coil_tls_ctx_set_alpn(ctx, alpn, 2);
	BIO_free(bc);
	BIO_free(bk);
	X509_free(x);
	EVP_PKEY_free(k);
}

static void atexit_free(void)
{
	coil_loop_free(loop);
	coil_tls_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!loop) {
		coil_loop_opts_t o;
		coil_loop_opts_init(&o);
		o.workers = 1;
		if (coil_loop_new(&loop, &o))
			abort();
		make_ctx();
		atexit(atexit_free);
	}
	if (size > 65536)
		return 0;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		abort();
	coil_socket_t *s;
	if (coil_socket_wrap(loop, sv[0], &s))
		abort();
	coil_ip_t *hs = coil_socket_starttls_server(s, ctx);
	if (!hs)
		abort();
	/* The input in up to three pieces, so that records split. */
	size_t cut1 = size / 3, cut2 = 2 * size / 3, off = 0;
	size_t cuts[3] = {cut1, cut2, size};
	for (int i = 0; i < 3; i++) {
		while (off < cuts[i]) {
			ssize_t w = send(sv[1], data + off, cuts[i] - off,
					 MSG_NOSIGNAL);
			if (w <= 0)
				break; /* the server closed: fine */
			off += (size_t)w;
		}
	}
	shutdown(sv[1], SHUT_WR);
	if (coil_ip_wait(hs, 20000))
		abort(); /* the handshake never settled */
	int e = coil_ip_error(hs);
	if (e == 0) {
		/* Not reachable without the keys; if it were, reading must
		 * still end. */
		coil_ip_t *r = coil_channel_read(s);
		if (!r || coil_ip_wait(r, 20000))
			abort();
		coil_ip_unref(r);
	} else if (!coil_ip_message(hs)[0]) {
		abort(); /* every failure says why */
	}
	coil_ip_unref(hs);
	coil_channel_release(s);
	/* The peer sees the end of the stream (the server closed). */
	char buf[4096];
	for (;;) {
		struct pollfd pf = {sv[1], POLLIN, 0};
		if (poll(&pf, 1, 20000) != 1)
			abort();
		ssize_t r = read(sv[1], buf, sizeof(buf));
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			break;
		if (r < 0)
			abort();
	}
	close(sv[1]);
	for (int i = 0; coil_live_channels() != 0; i++) {
		if (i > 20000)
			abort(); /* a channel was never freed */
		usleep(100);
	}
	return 0;
}
