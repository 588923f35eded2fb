/* SPDX-License-Identifier: MIT */
/*
 * bench/tls_bulk.c - the coil side of bench/tls.sh's bulk measurement: an
 * HTTPS server whose every request (any request head, keep-alive) is
 * answered with --bytes bytes of body, sent through coil's TLS layer in
 * 256 KiB zero-copy writes from one static buffer, at most four in flight
 * per connection. nginx does the same from a file of that size.
 *
 *   tls_bulk --port P --cert CHAIN.pem --key KEY.pem [--bytes N] [--threads T]
 */
#include <coil.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIECE (256u << 10)
#define INFLIGHT 4

static char zeros[PIECE];
static uint64_t body_bytes = 1ull << 30;

struct conn {
	coil_channel_t *ch;
	uint64_t left;      /* body bytes not yet queued */
	unsigned inflight;
	unsigned owed;      /* requests seen but not answered */
	char tail[3];       /* the last bytes seen, to find "\r\n\r\n" */
	size_t tail_len;
	int dead;           /* closed: freed when the last piece settles */
};

static void pump(struct conn *c);

static void piece_done(coil_ip_t *ip, void *ud)
{
	struct conn *c = ud;
	c->inflight--;
	if (c->dead) {
		if (!c->inflight)
			free(c);
		return;
	}
	if (coil_ip_error(ip) == 0)
		pump(c);
}

static void pump(struct conn *c)
{
	for (;;) {
		if (!c->left && !c->inflight && c->owed) {
			c->owed--;
			char head[128];
			int n = snprintf(head, sizeof(head),
					 "HTTP/1.1 200 OK\r\nContent-Length: %llu\r\n\r\n",
					 (unsigned long long)body_bytes);
			coil_ip_unref(coil_channel_write(c->ch, head, (size_t)n));
			c->left = body_bytes;
		}
		if (!c->left || c->inflight >= INFLIGHT)
			return;
		size_t n = c->left < PIECE ? (size_t)c->left : PIECE;
		coil_ip_t *w = coil_channel_write_owned(c->ch, zeros, n, NULL);
		if (!w)
			return;
		c->left -= n;
		c->inflight++;
		coil_ip_on_done(w, piece_done, c);
		coil_ip_unref(w);
	}
}

/* Counts request heads (each ends with an empty line). */
static void on_read(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	struct conn *c = ud;
	const char *p = data;
	for (size_t i = 0; i < len; i++) {
		char w[4];
		size_t k = 0;
		for (size_t j = 0; j < c->tail_len; j++)
			w[k++] = c->tail[j];
		w[k++] = p[i];
		if (k == 4 && !memcmp(w, "\r\n\r\n", 4)) {
			c->owed++;
			c->tail_len = 0;
			continue;
		}
		size_t keep = k < 3 ? k : 3;
		memcpy(c->tail, w + k - keep, keep);
		c->tail_len = keep;
	}
	pump(c);
}

static void on_closed(coil_channel_t *ch, int expected, void *ud)
{
	struct conn *c = ud;
	coil_channel_release(ch);
	if (c->inflight)
		c->dead = 1; /* piece_done frees it */
	else
		free(c);
}

static void on_client(coil_socket_t *l, coil_socket_t *ch, void *ud)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		coil_channel_release(ch);
		return;
	}
	c->ch = ch;
	coil_channel_set_queue_size(ch, INFLIGHT * PIECE + 4096);
	coil_channel_on_closed(ch, on_closed, c);
	coil_channel_on_read(ch, on_read, c);
}

int main(int argc, char **argv)
{
	const char *cert = NULL, *key = NULL;
	int port = 0;
	unsigned threads = 1;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--cert"))
			cert = argv[i + 1];
		else if (!strcmp(argv[i], "--key"))
			key = argv[i + 1];
		else if (!strcmp(argv[i], "--bytes"))
			body_bytes = strtoull(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--threads"))
			threads = (unsigned)atoi(argv[i + 1]);
	}
	if (!cert || !key || port <= 0) {
		fprintf(stderr, "usage: tls_bulk --port P --cert F --key F "
				"[--bytes N] [--threads T]\n");
		return 2;
	}
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);
	coil_loop_t *loop;
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = threads;
	coil_tls_ctx_t *ctx;
	coil_socket_t *l;
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	int rc = coil_loop_new(&loop, &o);
	if (!rc)
		rc = coil_tls_ctx_new(COIL_TLS_SERVER, &ctx);
	if (!rc)
		rc = coil_tls_ctx_use_cert_file(ctx, cert, key);
	if (!rc)
		rc = coil_socket_new(loop, &l);
	if (!rc)
		rc = coil_socket_on_new_tls_client(l, ctx, on_client, NULL);
	if (!rc)
		rc = coil_socket_listen(l, addr, 0, 0);
	if (rc) {
		fprintf(stderr, "tls_bulk: %s\n", coil_strerror(rc));
		return 1;
	}
	int sig;
	sigwait(&stop, &sig);
	coil_channel_release(l);
	coil_loop_free(loop);
	coil_tls_ctx_free(ctx);
	return 0;
}
