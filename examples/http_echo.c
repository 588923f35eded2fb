/* SPDX-License-Identifier: MIT */
/* HTTP/1.1 echo server on coil: the main example (`make run`).
 *
 *   http_echo [--host 127.0.0.1] [--port 8080] [--threads N]
 *             [--max-head BYTES] [--max-body BYTES]
 *             [--idle-timeout MS] [--header-timeout MS]
 *             [--cert CHAIN.pem --key KEY.pem]
 *
 * With --cert and --key it serves HTTPS (TLS 1.2/1.3, ALPN http/1.1) with
 * the same behaviour: clients arrive handshaken (coil_socket_on_new_tls_
 * client); a handshake must finish within the header timeout.
 * Every request is answered with 200 and a text/plain body that echoes it:
 * the request line, the headers as received, an empty line, then the body
 * (Content-Length or chunked). GET /hello answers "hello\n", the same work
 * the nginx baseline does in `make bench`. Keep-alive and pipelining work;
 * "Connection: close" and HTTP/1.0 are honoured. Malformed requests get 400,
 * oversize heads 431, oversize bodies 413, other transfer codings 501,
 * other versions 505, and requests that do not arrive in time 408. A client
 * that pipelines faster than it reads is answered as its answers drain; one
 * that gets more than 4 MiB of requests ahead of them gets 503. SIGINT or
 * SIGTERM stop it gracefully: the listener closes, responses in flight are
 * finished, then the loop stops.
 */
#include <coil.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http_parser.h"

static struct http_limits limits = HTTP_LIMITS_DEFAULT;
static unsigned idle_timeout_ms = 15000;
static unsigned header_timeout_ms = 10000;
static coil_loop_t *loop;
static _Atomic int stopping;
static _Atomic long open_conns;

enum { ST_HEAD, ST_BODY, ST_CLOSING };

/* One connection; touched only on its channel's worker. */
struct conn {
	struct conn *prev, *next; /* the worker's list, for timeouts */
	coil_channel_t *ch;
	int state;
	char *in;                  /* input buffer; unparsed bytes start at */
	size_t in_off;             /* in + in_off (consumed bytes are skipped, */
	size_t in_len, in_cap;     /* and moved out once per read, not per
				      request: pipelining stays linear) */
	size_t last_len;           /* bytes already scanned for the head end */
	int64_t content_length;    /* of the request being read */
	bool chunked, keep_alive, hello;
	char *head;                /* the head, echoed back */
	size_t head_len;
	char *body;                /* decoded body so far */
	size_t body_len;
	struct http_chunked chunked_dec;
	uint64_t last_active, req_start;
	coil_ip_t *last_write;     /* newest response write, to await drain */
	bool waiting;              /* a drain callback holds this conn */
	bool dead;                 /* closed while waiting: freed by it */
};

/* Per-worker list of connections, swept once a second for timeouts. */
struct worker_state {
	struct conn *conns;
	coil_ip_t *tick;
};
static struct worker_state *workers;

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 500: return "Internal Server Error";
	case 400: return "Bad Request";
	case 408: return "Request Timeout";
	case 413: return "Content Too Large";
	case 431: return "Request Header Fields Too Large";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

/* Unanswered pipelined input one connection may hold while its client
 * does not read the answers; past it the client gets 503 and a close. */
#define MAX_BACKLOG (4u << 20)

static void conn_free(struct conn *c)
{
	coil_ip_unref(c->last_write);
	free(c->in);
	free(c->head);
	free(c->body);
	free(c);
}

/* Keeps the newest write's handle. A write refused at once (write queue
 * full, channel closed) ends the connection: an answer is never dropped
 * while later ones go out. */
static void queued(struct conn *c, coil_ip_t *w)
{
	if (!w || coil_ip_state(w) == COIL_IP_FAILED) {
		if (w)
			coil_ip_error(w); /* seen: not an unobserved failure */
		coil_ip_unref(w);
		if (c->state != ST_CLOSING) {
			c->state = ST_CLOSING;
			coil_channel_close(c->ch, 1);
		}
		return;
	}
	coil_ip_unref(c->last_write);
	c->last_write = w;
}

static void conn_close(struct conn *c)
{
	if (c->state == ST_CLOSING)
		return;
	c->state = ST_CLOSING;
	coil_channel_close(c->ch, 0); /* queued responses drain first */
}

/* An error status, then close: after a framing error the stream cannot be
 * trusted, so no further request is read. */
static void send_error(struct conn *c, int status)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf),
			 "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
			 status, reason(status), strlen(reason(status)) + 1,
			 reason(status));
	queued(c, coil_channel_write(c->ch, buf, (size_t)n));
	conn_close(c);
}

static const char hello_keep[] =
	"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
	"Content-Length: 6\r\n\r\nhello\n";
static const char hello_close[] =
	"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
	"Content-Length: 6\r\nConnection: close\r\n\r\nhello\n";

/* The echo response: status and headers, then the request's head and body,
 * in one buffer handed to the channel without a copy. */
static void respond(struct conn *c)
{
	bool keep = c->keep_alive && !atomic_load(&stopping);
	if (c->hello) {
		/* Static bytes: nothing to allocate or free. */
		const char *r = keep ? hello_keep : hello_close;
		size_t n = keep ? sizeof(hello_keep) - 1 : sizeof(hello_close) - 1;
		queued(c, coil_channel_write_owned(c->ch, (void *)r, n, NULL));
	} else {
		size_t blen = c->head_len + c->body_len;
		char *out = malloc(blen + 160);
		if (!out) {
			send_error(c, 500);
			return;
		}
		int n = snprintf(out, 160,
				 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
				 "Content-Length: %zu\r\n%s\r\n", blen,
				 keep ? "" : "Connection: close\r\n");
		memcpy(out + n, c->head, c->head_len);
		if (c->body_len)
			memcpy(out + n + c->head_len, c->body, c->body_len);
		queued(c, coil_channel_write_owned(c->ch, out, (size_t)n + blen,
						   free));
	}
	free(c->head);
	free(c->body);
	c->head = c->body = NULL;
	c->head_len = c->body_len = 0;
	c->state = ST_HEAD;
	c->req_start = 0;
	if (!keep)
		conn_close(c);
}

static char *in_data(struct conn *c)
{
	return c->in + c->in_off;
}

static void consume(struct conn *c, size_t n)
{
	c->in_off += n;
	c->in_len -= n;
	if (!c->in_len)
		c->in_off = 0;
}

static void process(struct conn *c);

static void drained(coil_ip_t *w, void *ud)
{
	struct conn *c = ud;
	c->waiting = false;
	if (c->dead)
		conn_free(c);
	else
		process(c);
}

/* A client that pipelines faster than it reads: answer more once the
 * queued answers drain (the newest write settles when all have gone out).
 * Half the queue is also where coil stops showing it new bytes. */
static bool backlogged(struct conn *c)
{
	if (coil_channel_write_queue_used(c->ch) <
	    coil_channel_queue_size(c->ch) / 2)
		return false;
	if (!c->waiting && c->last_write) {
		c->waiting = true;
		if (coil_ip_on_done(c->last_write, drained, c))
			c->waiting = false;
	}
	return true;
}

/* Parses and answers every complete request in the buffer, in order
 * (pipelining), until more bytes are needed or the answers back up. */
static void process(struct conn *c)
{
	while (c->state != ST_CLOSING) {
		if (c->state == ST_HEAD) {
			if (!c->in_len || backlogged(c))
				return;
			if (!c->req_start)
				c->req_start = now_ms();
			/* The parsed request lives on the stack: a connection
			 * keeps only what framing and the answer need. */
			struct http_request req;
			int r = http_parse_request(in_data(c), c->in_len, c->last_len,
						   &req, &limits);
			if (r == HTTP_INCOMPLETE) {
				c->last_len = c->in_len;
				return;
			}
			if (r < 0) {
				send_error(c, -r);
				return;
			}
			c->last_len = 0;
			c->content_length = req.content_length;
			c->chunked = req.chunked;
			c->keep_alive = req.keep_alive;
			c->hello = req.method_len == 3 &&
				   !memcmp(req.method, "GET", 3) &&
				   req.target_len == 6 &&
				   !memcmp(req.target, "/hello", 6);
			bool expect = req.expect_continue;
			c->head_len = 0;
			if (!c->hello) {
				c->head = malloc((size_t)r);
				if (!c->head) {
					send_error(c, 500);
					return;
				}
				memcpy(c->head, in_data(c), (size_t)r);
				c->head_len = (size_t)r;
			}
			consume(c, (size_t)r);
			http_chunked_init(&c->chunked_dec, &limits);
			size_t want = c->chunked ? 0
				      : c->content_length > 0
					      ? (size_t)c->content_length
					      : 0;
			if (c->chunked || want) {
				c->body = malloc(c->chunked ? 4096 : want);
				if (!c->body) {
					send_error(c, 500);
					return;
				}
				if (expect && c->in_len == 0)
					queued(c, coil_channel_write_owned(
						c->ch,
						(void *)"HTTP/1.1 100 Continue\r\n\r\n",
						25, NULL));
			}
			c->state = ST_BODY;
		}
		if (c->state == ST_BODY) {
			if (c->chunked) {
				/* Decoded in place: the data moves to the front of
				 * the input, anything after the body follows it. */
				size_t n = c->in_len;
				int r = http_chunked_decode(&c->chunked_dec, in_data(c),
							    &n);
				char *b = realloc(c->body, c->body_len + n + 1);
				if (!b) {
					send_error(c, 500);
					return;
				}
				c->body = b;
				if (n)
					memcpy(c->body + c->body_len, in_data(c), n);
				c->body_len += n;
				if (r == HTTP_INCOMPLETE) {
					c->in_len = 0;
					c->in_off = 0;
					return;
				}
				if (r < 0) {
					send_error(c, -r);
					return;
				}
				/* r bytes of the next request follow at
				 * in_data[n]. */
				c->in_len = n + (size_t)r;
				consume(c, n);
			} else {
				size_t want = c->content_length > 0
						      ? (size_t)c->content_length
						      : 0;
				size_t n = want - c->body_len;
				if (n > c->in_len)
					n = c->in_len;
				if (n)
					memcpy(c->body + c->body_len, in_data(c), n);
				c->body_len += n;
				consume(c, n);
				if (c->body_len < want)
					return;
			}
			respond(c);
		}
	}
}

static void on_read(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	struct conn *c = ud;
	if (c->state == ST_CLOSING)
		return;
	c->last_active = now_ms();
	/* Bound what waits unparsed: a head longer than the limit is refused
	 * by the parser; body bytes are consumed as they come; requests
	 * waiting behind unread answers are capped. */
	if (c->in_len + len > MAX_BACKLOG) {
		send_error(c, 503);
		return;
	}
	if (c->in_off && c->in_off + c->in_len + len > c->in_cap) {
		memmove(c->in, in_data(c), c->in_len); /* once per read */
		c->in_off = 0;
	}
	if (c->in_off + c->in_len + len > c->in_cap) {
		size_t cap = c->in_cap ? c->in_cap : 4096;
		while (cap < c->in_len + len)
			cap *= 2;
		char *b = realloc(c->in, cap);
		if (!b) {
			send_error(c, 500);
			return;
		}
		c->in = b;
		c->in_cap = cap;
	}
	memcpy(in_data(c) + c->in_len, data, len);
	c->in_len += len;
	process(c);
	/* Shrink an idle buffer so idle connections hold little memory. */
	if (!c->in_len && c->in_cap > 16384) {
		free(c->in);
		c->in = NULL;
		c->in_cap = 0;
	}
}

static void on_closed(coil_channel_t *ch, int expected, void *ud)
{
	struct conn *c = ud;
	struct worker_state *ws = &workers[coil_channel_worker(ch)];
	if (c->prev)
		c->prev->next = c->next;
	else
		ws->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	if (c->waiting)
		c->dead = true; /* drained() frees it */
	else
		conn_free(c);
	coil_channel_release(ch);
	atomic_fetch_sub(&open_conns, 1);
}

static void on_client(coil_socket_t *l, coil_socket_t *client, void *ud)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		coil_channel_release(client);
		return;
	}
	atomic_fetch_add(&open_conns, 1);
	c->ch = client;
	c->last_active = now_ms();
	struct worker_state *ws = &workers[coil_channel_worker(client)];
	c->next = ws->conns;
	if (c->next)
		c->next->prev = c;
	ws->conns = c;
	coil_channel_on_closed(client, on_closed, c);
	coil_channel_on_read(client, on_read, c);
}

/* Once a second on each worker: close connections that sat idle too long,
 * or that have not finished a request head in time (slowloris). */
static void tick(coil_ip_t *ip, void *ud);

static void arm_tick(struct worker_state *ws)
{
	ws->tick = coil_sleep(loop, 1000);
	if (ws->tick)
		coil_ip_on_done(ws->tick, tick, ws);
}

static void tick(coil_ip_t *ip, void *ud)
{
	struct worker_state *ws = ud;
	coil_ip_unref(ws->tick);
	ws->tick = NULL;
	if (coil_ip_error(ip))
		return; /* the loop is stopping */
	uint64_t now = now_ms();
	for (struct conn *c = ws->conns, *next; c; c = next) {
		next = c->next;
		if (c->state == ST_CLOSING)
			continue;
		bool mid_request = c->req_start || c->state == ST_BODY;
		if (mid_request && now - c->req_start > header_timeout_ms)
			send_error(c, 408);
		else if (!mid_request && now - c->last_active > idle_timeout_ms)
			conn_close(c);
	}
	arm_tick(ws);
}

static void start_tick(void *arg)
{
	arm_tick(arg);
}

/* Graceful stop, on each worker: idle connections close now, busy ones
 * after their current response (respond() sees `stopping`). */
static void close_idle(void *arg)
{
	struct worker_state *ws = arg;
	for (struct conn *c = ws->conns, *next; c; c = next) {
		next = c->next;
		if (c->state == ST_HEAD && !c->in_len)
			conn_close(c);
	}
}

/* Answers to a client that went away fail with EPIPE or ECONNRESET and
 * nobody holds their handles; that is normal for a server, so only other
 * failures are reported. */
static void on_unobserved(int err, const char *msg, void *ud)
{
	if (err != -EPIPE && err != -ECONNRESET)
		fprintf(stderr, "http_echo: %s (%d)\n", msg, err);
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--host H] [--port P] [--threads N] [--max-head B]\n"
		"          [--max-body B] [--idle-timeout MS] [--header-timeout MS]\n"
		"          [--cert CHAIN.pem --key KEY.pem]\n",
		argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1";
	int port = 8080;
	unsigned threads = 0;
	const char *cert = NULL, *key = NULL; /* --cert/--key: HTTPS */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			usage(argv[0]);
		const char *v = argv[++i];
		char *end;
		unsigned long n = strtoul(v, &end, 10);
		if (!strcmp(a, "--host")) {
			host = v;
			continue;
		}
		if (!strcmp(a, "--cert") || !strcmp(a, "--key")) {
			*(a[2] == 'c' ? &cert : &key) = v;
			continue;
		}
		if (*end || !*v)
			usage(argv[0]);
		if (!strcmp(a, "--port") && n <= 65535)
			port = (int)n;
		else if (!strcmp(a, "--threads") && n <= 1024)
			threads = (unsigned)n;
		else if (!strcmp(a, "--max-head") && n >= 64)
			limits.max_head = n;
		else if (!strcmp(a, "--max-body"))
			limits.max_body = n;
		else if (!strcmp(a, "--idle-timeout") && n > 0)
			idle_timeout_ms = (unsigned)n;
		else if (!strcmp(a, "--header-timeout") && n > 0)
			header_timeout_ms = (unsigned)n;
		else
			usage(argv[0]);
	}
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);
	/* Writes to a reset peer fail with EPIPE inside coil, never raise
	 * SIGPIPE; nothing else here writes to sockets. */

	coil_set_unobserved_handler(on_unobserved, NULL);

	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = threads;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "http_echo: cannot start: %s\n", coil_strerror(rc));
		return 1;
	}
	unsigned nw = coil_loop_workers(loop);
	workers = calloc(nw, sizeof(*workers));
	char addr[300];
	snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
		 port);
	coil_tls_ctx_t *tls = NULL;
	if ((cert != NULL) != (key != NULL))
		usage(argv[0]);
	if (cert) {
		static const char *const alpn[] = {"http/1.1"};
		rc = coil_tls_ctx_new(COIL_TLS_SERVER, &tls);
		if (!rc)
			rc = coil_tls_ctx_use_cert_file(tls, cert, key);
		if (!rc)
			rc = coil_tls_ctx_set_alpn(tls, alpn, 1);
		if (!rc)
			rc = coil_tls_ctx_set_handshake_timeout(tls,
								header_timeout_ms);
		if (rc) {
			fprintf(stderr, "http_echo: TLS: %s %s\n",
				coil_strerror(rc), coil_tls_ctx_error(tls));
			coil_loop_free(loop);
			return 1;
		}
	}
	coil_socket_t *l;
	rc = coil_socket_new(loop, &l);
	if (!rc && tls)
		rc = coil_socket_on_new_tls_client(l, tls, on_client, NULL);
	else if (!rc)
		rc = coil_socket_on_new_client(l, on_client, NULL);
	if (!rc)
		rc = coil_socket_listen(l, addr, 0, 0);
	if (rc) {
		fprintf(stderr, "http_echo: listen %s: %s\n", addr, coil_strerror(rc));
		coil_loop_free(loop);
		return 1;
	}
	for (unsigned i = 0; i < nw; i++)
		coil_loop_post(loop, (int)i, start_tick, &workers[i]);
	fprintf(stderr, "http_echo: serving http%s://%s/ with %u workers\n",
		tls ? "s" : "", addr, nw);

	int sig;
	sigwait(&stop, &sig);
	fprintf(stderr, "http_echo: stopping (signal %d)\n", sig);
	atomic_store(&stopping, 1);
	coil_channel_close(l, 1);
	coil_channel_release(l);
	for (unsigned i = 0; i < nw; i++)
		coil_loop_post(loop, (int)i, close_idle, &workers[i]);
	/* In-flight responses get up to two seconds to finish. */
	for (int i = 0; i < 200 && atomic_load(&open_conns) > 0; i++)
		usleep(10000);
	coil_loop_free(loop);
	coil_tls_ctx_free(tls);
	free(workers);
	return 0;
}
