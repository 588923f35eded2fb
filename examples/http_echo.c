/* SPDX-License-Identifier: MIT */
/* HTTP/1.1 echo server on coil: the main example (`make run`).
 *
 *   http_echo [OPTION]...        (http_echo --help lists them all)
 *
 * An origin server (RFC 9110/9112) for what it does: every request is
 * answered with 200 and a text/plain body that echoes it: the request line,
 * the headers as received, an empty line, then the body (Content-Length or
 * chunked). GET /hello answers "hello\n", the same work the nginx baseline
 * does in `make bench`. HEAD gets the same headers and no body. Every answer
 * carries Date and Content-Length. Keep-alive and pipelining work; HTTP/1.1
 * keeps the connection unless "Connection: close", HTTP/1.0 only with
 * "Connection: keep-alive", which the answer then confirms. Expect:
 * 100-continue is answered before the body is read. Malformed requests get
 * 400 (HTTP/1.1 without Host too), over-long request lines 414, oversize
 * heads 431, oversize bodies 413, other transfer codings 501, other
 * versions 505, and requests that do not arrive in time 408 (the head has
 * --header-timeout from its first byte; a body may pause at most
 * --body-timeout between two reads, as nginx's client_body_timeout). A
 * client that pipelines faster than it reads is answered as its answers
 * drain; one that gets more than 4 MiB of requests ahead of them gets 503.
 * Every rejected client gets one line on stderr (--log-level info, the
 * default, or warn; error turns them off); --access-log FILE logs every
 * request (off by default, so benchmarks stay clean).
 * SIGINT or SIGTERM stop it gracefully: the listener closes, responses in
 * flight are finished, then the loop stops (exit 0).
 * With --cert FILE --key FILE it serves HTTPS (TLS 1.2/1.3, ALPN http/1.1)
 * with the same behaviour: clients arrive handshaken through
 * coil_socket_on_new_tls_client; a handshake must finish within
 * --header-timeout.
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

/* Option defaults and limits, printed by --help. */
#define DEF_HOST "127.0.0.1"
#define DEF_PORT 8080
#define DEF_IDLE_MS 15000u
#define DEF_HEADER_MS 10000u
#define DEF_BODY_MS 10000u
#define MAX_TIMEOUT_MS 86400000ul /* one day */
#define MIN_HEAD 64ul
#define MAX_HEAD (1ul << 20)
#define MAX_BODY_LIMIT (1ul << 30)
#define MAX_THREADS 1024ul

enum { LOG_ERROR, LOG_WARN, LOG_INFO };

static struct http_limits limits = HTTP_LIMITS_DEFAULT;
static unsigned idle_timeout_ms = DEF_IDLE_MS;
static unsigned header_timeout_ms = DEF_HEADER_MS;
static unsigned body_timeout_ms = DEF_BODY_MS;
static int log_level = LOG_INFO;
static FILE *access_log; /* NULL: off */
static coil_loop_t *loop;
static _Atomic int stopping;
static _Atomic long open_conns;

enum { ST_HEAD, ST_BODY, ST_CLOSING };

/* Room kept for the request line in the logs (it is cut there). */
#define REQLINE_MAX 120

/* One connection; touched only on its channel's worker. */
struct conn {
	struct conn *prev, *next; /* the worker's list, for timeouts */
	coil_channel_t *ch;
	int state;
	const char *view;          /* set during on_read: the callback's bytes,
				      parsed where they are (in_off, in_len
				      index them) until own() copies what is
				      left into in */
	char *in;                  /* input buffer; unparsed bytes start at */
	size_t in_off;             /* in + in_off (consumed bytes are skipped, */
	size_t in_len, in_cap;     /* and moved out once per read, not per
				      request: pipelining stays linear) */
	size_t last_len;           /* bytes already scanned for the head end */
	int64_t content_length;    /* of the request being read */
	bool chunked, keep_alive, hello, is_head;
	int minor;                 /* HTTP/1.<minor> of the request */
	char *head;                /* the head, echoed back */
	size_t head_len;
	char *body;                /* decoded body so far */
	size_t body_len;
	struct http_chunked chunked_dec;
	uint64_t last_active, req_start, body_start;
	bool drain_on;             /* the drained signal is connected */
	char reqline[REQLINE_MAX]; /* for the logs ("" when they are off,
				      and for a request answered at once
				      while the access log is off) */
	char *peer;                /* the client's address, once logged */
};

/* Per-worker list of connections, swept once a second for timeouts. */
struct worker_state {
	struct conn *conns;
	coil_ip_t *tick;
};
static struct worker_state *workers;

/* Milliseconds for the timeouts, which a once-a-second sweep checks: the
 * coarse clock (the kernel's tick, a few ms) is exact enough and is a plain
 * memory read where CLOCK_MONOTONIC reads the TSC, several times per
 * request. */
static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The Date header's value (RFC 9110 5.6.7 IMF-fixdate), formatted once a
 * second per worker thread. strftime's names are the C locale's: this
 * program never calls setlocale. */
static const char *http_date(void)
{
	static __thread time_t sec = -1;
	static __thread char buf[40];
	time_t t = time(NULL);
	if (t != sec) {
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		sec = t;
	}
	return buf;
}

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 408: return "Request Timeout";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

/* Why a parser status was sent, for the rejection log. */
static const char *why(int status)
{
	switch (status) {
	case 400: return "malformed request";
	case 413: return "body over --max-body";
	case 414: return "request line over --max-head";
	case 431: return "head over --max-head or --max-headers";
	case 501: return "unsupported transfer coding";
	case 505: return "unsupported HTTP version";
	default: return "";
	}
}

/* The client's address, for the logs: looked up once per connection, on
 * its first log line. */
static const char *peer_text(struct conn *c)
{
	if (c->peer)
		return c->peer;
	char buf[300];
	coil_sockinfo_t si;
	if (coil_socket_peer(c->ch, &si))
		snprintf(buf, sizeof(buf), "?");
	else if (si.family == AF_INET6)
		snprintf(buf, sizeof(buf), "[%s]:%u", si.host, si.port);
	else if (si.family == AF_UNIX)
		snprintf(buf, sizeof(buf), "unix");
	else
		snprintf(buf, sizeof(buf), "%s:%u", si.host, si.port);
	c->peer = strdup(buf);
	return c->peer ? c->peer : "?";
}

/* Keeps the request line (up to its end or REQLINE_MAX) for the logs. */
static void keep_reqline(struct conn *c, const char *p, size_t n)
{
	if (!access_log && log_level < LOG_WARN)
		return;
	size_t i = 0;
	while (i < n && i < REQLINE_MAX - 1 && p[i] != '\r' && p[i] != '\n') {
		unsigned char b = (unsigned char)p[i];
		c->reqline[i] = b >= 0x20 && b < 0x7f && b != '"' ? (char)b : '?';
		i++;
	}
	c->reqline[i] = 0;
}

/* One access-log line (Common Log Format: client, time, request line,
 * status, body bytes). stdio locks the stream per call, so lines from
 * several workers never interleave. */
static void log_access(struct conn *c, int status, size_t bytes)
{
	if (!access_log)
		return;
	char when[64];
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S +0000", &tm);
	fprintf(access_log, "%s - - [%s] \"%s\" %d %zu\n", peer_text(c), when,
		c->reqline, status, bytes);
}

/* One line per rejected client, at warn level. */
static void log_reject(struct conn *c, int status, const char *what)
{
	if (log_level < LOG_WARN)
		return;
	fprintf(stderr, "http_echo: %s: %d %s (%s)%s%s%s\n", peer_text(c), status,
		reason(status), what, c->reqline[0] ? " \"" : "", c->reqline,
		c->reqline[0] ? "\"" : "");
}

/* Unanswered pipelined input one connection may hold while its client
 * does not read the answers; past it the client gets 503 and a close. */
#define MAX_BACKLOG (4u << 20)

static void conn_free(struct conn *c)
{
	free(c->in);
	free(c->head);
	free(c->body);
	free(c->peer);
	free(c);
}

/* The result of a write (coil_channel_send: no handle per answer, a send
 * error closes the channel). A write refused at once (write queue full,
 * channel closed) ends the connection: an answer is never dropped while
 * later ones go out. */
static void queued(struct conn *c, int rc)
{
	if (rc && c->state != ST_CLOSING) {
		c->state = ST_CLOSING;
		coil_channel_close(c->ch, 1);
	}
}

static void conn_close(struct conn *c)
{
	if (c->state == ST_CLOSING)
		return;
	c->state = ST_CLOSING;
	coil_channel_close(c->ch, 0); /* queued responses drain first */
}

/* The fixed start of every 200 answer, up to the Content-Length value:
 * rebuilt once a second, per worker thread (a 200 is the one
 * answer worth keeping printf out of: it costs more than the rest of a
 * small request). */
static __thread char hello_buf[192]; /* see hello_answer */
static __thread size_t hello_len;

static size_t ok_prefix(const char **out)
{
	static __thread time_t sec = -1;
	static __thread char buf[160];
	static __thread size_t len;
	time_t t = time(NULL);
	if (t != sec) {
		len = (size_t)snprintf(buf, sizeof(buf),
				       "HTTP/1.1 200 OK\r\nDate: %s\r\n"
				       "Content-Type: text/plain\r\nContent-Length: ",
				       http_date());
		memcpy(hello_buf, buf, len);
		memcpy(hello_buf + len, "6\r\n\r\nhello\n", 11);
		hello_len = len + 11;
		sec = t;
	}
	*out = buf;
	return len;
}

/* The whole answer to a GET /hello that keeps an HTTP/1.1 connection
 * open (the common request), rebuilt with ok_prefix: the same bytes
 * head_fmt and respond would put together, without putting them together
 * per request. */
static size_t hello_answer(const char **out)
{
	const char *pre;
	ok_prefix(&pre);
	*out = hello_buf;
	return hello_len;
}

/* The status line and headers of an answer with a body of clen bytes.
 * keep: the connection stays open; HTTP/1.0 clients are told so (their
 * default is to close), HTTP/1.1 clients are told when it closes. n must
 * be at least 256. */
static int head_fmt(char *buf, size_t n, int status, size_t clen, bool keep,
		    int minor)
{
	const char *conn = !keep ? "Connection: close\r\n"
			   : minor == 0 ? "Connection: keep-alive\r\n"
					: "";
	if (status != 200)
		return snprintf(buf, n,
				"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: text/plain\r\n"
				"Content-Length: %zu\r\n%s\r\n",
				status, reason(status), http_date(), clen, conn);
	const char *pre;
	size_t len = ok_prefix(&pre);
	memcpy(buf, pre, len);
	char digits[24];
	size_t nd = 0;
	do {
		digits[sizeof(digits) - ++nd] = (char)('0' + clen % 10);
		clen /= 10;
	} while (clen);
	memcpy(buf + len, digits + sizeof(digits) - nd, nd);
	len += nd;
	memcpy(buf + len, "\r\n", 2);
	len += 2;
	size_t nc = !keep ? sizeof("Connection: close\r\n") - 1
		    : minor == 0 ? sizeof("Connection: keep-alive\r\n") - 1
				 : 0;
	memcpy(buf + len, conn, nc);
	len += nc;
	memcpy(buf + len, "\r\n", 2);
	return (int)(len + 2);
}

/* An error status, then close: after a framing error the stream cannot be
 * trusted, so no further request is read. */
static void send_error(struct conn *c, int status, const char *what)
{
	char buf[512];
	const char *r = reason(status);
	int n = head_fmt(buf, sizeof(buf), status, strlen(r) + 1, false, 1);
	n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s\n", r);
	log_reject(c, status, what);
	log_access(c, status, strlen(r) + 1);
	queued(c, coil_channel_send(c->ch, buf, (size_t)n));
	conn_close(c);
}

/* The echo response: status and headers, then the request's head and body,
 * in one buffer handed to the channel without a copy. HEAD gets the same
 * headers, Content-Length included, and no body. */
static void respond(struct conn *c)
{
	bool keep = c->keep_alive && !atomic_load(&stopping);
	size_t blen = c->hello ? 6 : c->head_len + c->body_len;
	if (c->hello && !c->is_head && keep && c->minor) {
		const char *a;
		size_t n = hello_answer(&a);
		queued(c, coil_channel_send(c->ch, a, n));
	} else if (c->hello || c->is_head) {
		char buf[512];
		int n = head_fmt(buf, sizeof(buf), 200, blen, keep, c->minor);
		if (!c->is_head) {
			memcpy(buf + n, "hello\n", 6);
			n += 6;
		}
		queued(c, coil_channel_send(c->ch, buf, (size_t)n));
	} else {
		char *out = malloc(blen + 256);
		if (!out) {
			send_error(c, 500, "out of memory");
			return;
		}
		int n = head_fmt(out, 256, 200, blen, keep, c->minor);
		memcpy(out + n, c->head, c->head_len);
		if (c->body_len)
			memcpy(out + n + c->head_len, c->body, c->body_len);
		queued(c, coil_channel_send_owned(c->ch, out, (size_t)n + blen,
						  free));
	}
	log_access(c, 200, c->is_head ? 0 : blen);
	if (c->head || c->body) { /* /hello has neither: no free() per request */
		free(c->head);
		free(c->body);
		c->head = c->body = NULL;
	}
	c->head_len = c->body_len = 0;
	c->state = ST_HEAD;
	c->req_start = 0;
	if (!keep)
		conn_close(c);
}

static const char *in_data(struct conn *c)
{
	return (c->view ? c->view : c->in) + c->in_off;
}

/* Room in c->in for `need` more bytes behind the unparsed ones (which move
 * to the front first); false when out of memory. */
static bool reserve(struct conn *c, size_t need)
{
	if (c->in_off && c->in_off + c->in_len + need > c->in_cap) {
		memmove(c->in, c->in + c->in_off, c->in_len); /* once per read */
		c->in_off = 0;
	}
	if (c->in_off + c->in_len + need > c->in_cap) {
		size_t cap = c->in_cap ? c->in_cap : 4096;
		while (cap < c->in_len + need)
			cap *= 2;
		char *b = realloc(c->in, cap);
		if (!b)
			return false;
		c->in = b;
		c->in_cap = cap;
	}
	return true;
}

/* The unparsed bytes of a view move into c->in (which is empty then):
 * before the view goes, and before anything decodes in place. */
static bool own(struct conn *c)
{
	if (!c->view)
		return true;
	const char *p = c->view + c->in_off;
	size_t n = c->in_len;
	c->view = NULL;
	c->in_off = c->in_len = 0;
	if (!n)
		return true;
	if (!reserve(c, n))
		return false;
	memcpy(c->in, p, n);
	c->in_len = n;
	return true;
}

static void consume(struct conn *c, size_t n)
{
	c->in_off += n;
	c->in_len -= n;
	if (!c->in_len)
		c->in_off = 0;
}

static void process(struct conn *c);

/* now_ms() when the callback that runs process() began (on_read,
 * drained): the times process() records (a request's start, its body's)
 * read it instead of the clock, once per read rather than three times
 * per request. */
static __thread uint64_t cb_ms;

/* The drained signal: never after on_closed (which releases the
 * channel), so c is alive. */
static void drained(coil_channel_t *ch, void *ud)
{
	cb_ms = now_ms();
	process(ud);
}

/* A client that pipelines faster than it reads: answer more once the
 * queued answers drained to the low-water mark (a quarter of the queue;
 * the drained signal, connected the first time: most connections never
 * need it). Half the queue is also where coil stops showing it new
 * bytes. */
static bool backlogged(struct conn *c)
{
	if (coil_channel_write_queue_used(c->ch) <
	    coil_channel_queue_size(c->ch) / 2)
		return false;
	if (!c->drain_on) {
		if (coil_channel_on_drain(c->ch, drained, c)) {
			/* No memory for it: stop reading, answer what is
			 * queued, close. */
			conn_close(c);
			return true;
		}
		c->drain_on = true;
	}
	return true;
}

static bool view_eq(const char *p, size_t n, const char *lit)
{
	return n == strlen(lit) && !memcmp(p, lit, n);
}

/* A complete head: decides framing and the answer; false when the
 * connection was rejected. */
static bool start_request(struct conn *c, const struct http_request *req,
			  size_t head_len)
{
	const char *head = in_data(c); /* valid until this returns */
	bool body = req->chunked || req->content_length > 0;
	/* The request line is for the logs of what may still happen to this
	 * request: its access-log line, an error now or while its body comes.
	 * A request without a body is answered at once: the line is only
	 * cleared (copying it was about 300 instructions of a /hello
	 * request's 2,400). */
	if (access_log || body)
		keep_reqline(c, head, head_len);
	else
		c->reqline[0] = 0;
	c->minor = req->minor;
	if (req->minor >= 1 && !req->host) {
		/* RFC 9112 3.2: a 1.1 request without Host is a 400. */
		keep_reqline(c, head, head_len);
		send_error(c, 400, "HTTP/1.1 request without Host");
		return false;
	}
	c->content_length = req->content_length;
	c->chunked = req->chunked;
	c->keep_alive = req->keep_alive;
	c->is_head = view_eq(req->method, req->method_len, "HEAD");
	c->hello = (c->is_head || view_eq(req->method, req->method_len, "GET")) &&
		   view_eq(req->target, req->target_len, "/hello");
	c->head_len = 0;
	if (!c->hello) {
		c->head = malloc(head_len);
		if (!c->head) {
			keep_reqline(c, head, head_len);
			send_error(c, 500, "out of memory");
			return false;
		}
		memcpy(c->head, in_data(c), head_len);
		c->head_len = head_len;
	}
	consume(c, head_len);
	if (c->chunked)
		http_chunked_init(&c->chunked_dec, &limits);
	size_t want = c->chunked ? 0
		      : c->content_length > 0 ? (size_t)c->content_length
					      : 0;
	if (c->chunked || want) {
		c->body = malloc(c->chunked ? 4096 : want);
		if (!c->body) {
			send_error(c, 500, "out of memory");
			return false;
		}
		/* 100-continue means nothing to an HTTP/1.0 client (RFC 9110
		 * 10.1.1); sent only when the body has not started yet. */
		if (req->expect_continue && req->minor >= 1 && c->in_len == 0)
			queued(c, coil_channel_send_owned(
				c->ch, (void *)"HTTP/1.1 100 Continue\r\n\r\n", 25,
				NULL));
	}
	c->body_start = cb_ms;
	c->state = ST_BODY;
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
				c->req_start = cb_ms;
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
				keep_reqline(c, in_data(c), c->in_len);
				send_error(c, -r, why(-r));
				return;
			}
			c->last_len = 0;
			if (!start_request(c, &req, (size_t)r))
				return;
		}
		if (c->state == ST_BODY) {
			if (c->chunked) {
				/* Decoded in place: the data moves to the front of
				 * the input, anything after the body follows it. */
				if (!own(c)) { /* decoded in place, below */
					send_error(c, 500, "out of memory");
					return;
				}
				size_t n = c->in_len;
				int r = http_chunked_decode(&c->chunked_dec,
							    c->in + c->in_off, &n);
				char *b = realloc(c->body, c->body_len + n + 1);
				if (!b) {
					send_error(c, 500, "out of memory");
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
					send_error(c, -r, why(-r));
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
	c->last_active = cb_ms = now_ms();
	/* Bound what waits unparsed: a head longer than the limit is refused
	 * by the parser; body bytes are consumed as they come; requests
	 * waiting behind unread answers are capped. */
	if (c->in_len + len > MAX_BACKLOG) {
		send_error(c, 503, "over 4 MiB of requests ahead of its answers");
		return;
	}
	if (!c->in_len) {
		/* Nothing waits: parse the bytes where coil shows them and
		 * keep only what is left (most reads hold whole requests, and
		 * leave nothing). */
		c->view = data;
		c->in_off = 0;
		c->in_len = len;
		process(c);
		if (!own(c))
			send_error(c, 500, "out of memory");
		return;
	}
	if (!reserve(c, len)) {
		send_error(c, 500, "out of memory");
		return;
	}
	memcpy(c->in + c->in_off + c->in_len, data, len);
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
 * that have not finished a request head in time (slowloris), or whose body
 * stalled. */
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
	char what[96];
	for (struct conn *c = ws->conns, *next; c; c = next) {
		next = c->next;
		if (c->state == ST_CLOSING)
			continue;
		if (c->state == ST_BODY) {
			/* Inactivity between reads of the body, counted from the
			 * head's end (or the 100 Continue) at first. */
			uint64_t last = c->last_active > c->body_start
						? c->last_active
						: c->body_start;
			if (now - last > body_timeout_ms) {
				snprintf(what, sizeof(what),
					 "body stalled for %u ms, %zu bytes in",
					 body_timeout_ms, c->body_len);
				send_error(c, 408, what);
			}
		} else if (c->req_start) {
			if (now - c->req_start > header_timeout_ms) {
				keep_reqline(c, in_data(c), c->in_len);
				snprintf(what, sizeof(what),
					 "no complete head in %u ms",
					 header_timeout_ms);
				send_error(c, 408, what);
			}
		} else if (now - c->last_active > idle_timeout_ms) {
			conn_close(c);
		}
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
	if (err != -EPIPE && err != -ECONNRESET && log_level >= LOG_ERROR)
		fprintf(stderr, "http_echo: %s (%d)\n", msg, err);
}

static void help(void)
{
	printf(
"usage: http_echo [OPTION]...\n"
"An HTTP/1.1 echo server on coil: every request is answered with 200 and a\n"
"text/plain body holding the request as received (request line, headers,\n"
"blank line, decoded body); GET /hello answers \"hello\\n\"; HEAD gets the\n"
"headers only. Stops cleanly on SIGINT or SIGTERM.\n"
"\n"
"Options (default, limits):\n"
"  --host HOST          address or name to listen on (" DEF_HOST "; \"::\" or\n"
"                       0.0.0.0 for all interfaces)\n"
"  --port PORT          TCP port (%d; 0..65535, 0 picks a free one)\n"
"  --threads N          worker threads (0 = one per CPU; 0..%lu)\n"
"  --batch-wait US      a worker that has just sent N responses waits for\n"
"                       N + 1 completions, at most US microseconds\n"
"                       (coil_loop_opts_t's batch_wait_us; 0 = off, the\n"
"                       default; 0..1000000)\n"
"  --max-head BYTES     request line + headers (%zu; %lu..%lu); a longer\n"
"                       request line gets 414, a longer head 431\n"
"  --max-headers N      header fields per request (%zu; 1..%d), else 431\n"
"  --max-body BYTES     request body, Content-Length or chunked (%llu;\n"
"                       0..%lu), else 413\n"
"  --header-timeout MS  a request head must arrive within MS of its first\n"
"                       byte (%u; 1..%lu), else 408\n"
"  --body-timeout MS    a request body may pause at most MS between two\n"
"                       reads (%u; 1..%lu), else 408\n"
"  --idle-timeout MS    a kept-alive connection without a request closes\n"
"                       after MS (%u; 1..%lu)\n"
"  --access-log FILE    one line per request, Common Log Format, appended to\n"
"                       FILE (\"-\": stdout; default: off)\n"
"  --log-level LEVEL    stderr: error (failures only), warn (also one line\n"
"                       per rejected client: 4xx/5xx, timeouts), info (also\n"
"                       start and stop) (default: info)\n"
"  --cert FILE          serve HTTPS: PEM certificate chain (with --key)\n"
"  --key FILE           its PEM private key (default: plain HTTP)\n"
"  --help               this text, then exit 0\n"
"  --version            the program's and coil's version, then exit 0\n",
	       DEF_PORT, MAX_THREADS, limits.max_head, MIN_HEAD, MAX_HEAD,
	       limits.max_headers, HTTP_MAX_HEADERS,
	       (unsigned long long)limits.max_body, MAX_BODY_LIMIT, DEF_HEADER_MS,
	       MAX_TIMEOUT_MS, DEF_BODY_MS, MAX_TIMEOUT_MS, DEF_IDLE_MS,
	       MAX_TIMEOUT_MS);
}

static void usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "http_echo: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nhttp_echo: --help lists the options\n");
	exit(2);
}

/* A decimal option value within [lo, hi]. */
static unsigned long num_arg(const char *opt, const char *v, unsigned long lo,
			     unsigned long hi)
{
	char *end;
	errno = 0;
	unsigned long n = strtoul(v, &end, 10);
	if (!*v || *end || *v == '-' || errno || n < lo || n > hi) {
		char msg[160];
		snprintf(msg, sizeof(msg), "%s wants a number from %lu to %lu, not '%%s'",
			 opt, lo, hi);
		usage_error(msg, v);
	}
	return n;
}

/* Resolves --host before listening, so that a bad name is reported with the
 * resolver's words; returns the first address as text, or NULL. */
static char *resolve_listen(const char *addr, char *out, size_t n)
{
	coil_ip_t *ip = coil_resolve(loop, addr, COIL_ADDR_LISTEN);
	if (!ip || coil_ip_wait(ip, 30000) || coil_ip_error(ip)) {
		fprintf(stderr, "http_echo: cannot listen on %s: %s\n", addr,
			!ip ? "out of memory"
			: coil_ip_state(ip) == COIL_IP_PENDING
				? "the name did not resolve within 30 s"
				: coil_ip_message(ip));
		coil_ip_unref(ip);
		return NULL;
	}
	const coil_addrlist_t *al = coil_ip_ptr(ip);
	int rc = al && al->count ? coil_addr_format((const struct sockaddr *)&al->addrs[0].ss,
						    al->addrs[0].len, out, n)
				 : -ENOENT;
	coil_ip_unref(ip);
	if (rc < 0) {
		fprintf(stderr, "http_echo: cannot listen on %s: %s\n", addr,
			coil_strerror(rc));
		return NULL;
	}
	return out;
}

int main(int argc, char **argv)
{
	const char *host = DEF_HOST;
	int port = DEF_PORT;
	unsigned threads = 0, batch_wait = 0;
	const char *cert = NULL, *key = NULL; /* --cert/--key: HTTPS */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			help();
			return 0;
		}
		if (!strcmp(a, "--version")) {
			printf("http_echo (coil %s)\n", coil_version());
			return 0;
		}
		if (strncmp(a, "--", 2))
			usage_error("unexpected argument '%s'", a);
		if (i + 1 >= argc)
			usage_error("%s wants a value", a);
		const char *v = argv[++i];
		if (!strcmp(a, "--host"))
			host = v;
		else if (!strcmp(a, "--cert"))
			cert = v;
		else if (!strcmp(a, "--key"))
			key = v;
		else if (!strcmp(a, "--port"))
			port = (int)num_arg(a, v, 0, 65535);
		else if (!strcmp(a, "--threads"))
			threads = (unsigned)num_arg(a, v, 0, MAX_THREADS);
		else if (!strcmp(a, "--batch-wait"))
			batch_wait = (unsigned)num_arg(a, v, 0, 1000000);
		else if (!strcmp(a, "--max-head"))
			limits.max_head = num_arg(a, v, MIN_HEAD, MAX_HEAD);
		else if (!strcmp(a, "--max-headers"))
			limits.max_headers = num_arg(a, v, 1, HTTP_MAX_HEADERS);
		else if (!strcmp(a, "--max-body"))
			limits.max_body = num_arg(a, v, 0, MAX_BODY_LIMIT);
		else if (!strcmp(a, "--idle-timeout"))
			idle_timeout_ms = (unsigned)num_arg(a, v, 1, MAX_TIMEOUT_MS);
		else if (!strcmp(a, "--header-timeout"))
			header_timeout_ms = (unsigned)num_arg(a, v, 1, MAX_TIMEOUT_MS);
		else if (!strcmp(a, "--body-timeout"))
			body_timeout_ms = (unsigned)num_arg(a, v, 1, MAX_TIMEOUT_MS);
		else if (!strcmp(a, "--access-log")) {
			access_log = !strcmp(v, "-") ? stdout : fopen(v, "a");
			if (!access_log) {
				fprintf(stderr, "http_echo: --access-log %s: %s\n", v,
					strerror(errno));
				return 2;
			}
			setvbuf(access_log, NULL, _IOLBF, 0);
		} else if (!strcmp(a, "--log-level")) {
			if (!strcmp(v, "error"))
				log_level = LOG_ERROR;
			else if (!strcmp(v, "warn"))
				log_level = LOG_WARN;
			else if (!strcmp(v, "info"))
				log_level = LOG_INFO;
			else
				usage_error("--log-level is error, warn or info, not '%s'",
					    v);
		} else
			usage_error("unknown option '%s'", a);
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
	o.batch_wait_us = batch_wait;
	int rc = coil_loop_new(&loop, &o);
	if (rc) {
		fprintf(stderr, "http_echo: cannot start: %s\n", coil_strerror(rc));
		return 1;
	}
	unsigned nw = coil_loop_workers(loop);
	workers = calloc(nw, sizeof(*workers));
	char addr[300], numeric[300];
	snprintf(addr, sizeof(addr), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
		 port);
	coil_tls_ctx_t *tls = NULL;
	if ((cert != NULL) != (key != NULL))
		usage_error("%s: --cert and --key go together", cert ? cert : key);
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
	coil_socket_t *l = NULL;
	rc = workers ? 0 : -ENOMEM;
	if (!rc && !resolve_listen(addr, numeric, sizeof(numeric))) {
		coil_loop_free(loop);
		return 1;
	}
	if (!rc)
		rc = coil_socket_new(loop, &l);
	if (!rc && tls)
		rc = coil_socket_on_new_tls_client(l, tls, on_client, NULL);
	else if (!rc)
		rc = coil_socket_on_new_client(l, on_client, NULL);
	if (!rc)
		rc = coil_socket_listen(l, numeric, 0, 0);
	if (rc) {
		fprintf(stderr, "http_echo: cannot listen on %s: %s%s\n", addr,
			coil_strerror(rc),
			rc == -EADDRINUSE
				? " (another server has this port: stop it, or choose "
				  "another with --port, e.g. make run PORT=9000)"
			: rc == -EACCES && port < 1024
				? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
				: "");
		if (l)
			coil_channel_release(l);
		coil_loop_free(loop);
		free(workers);
		return 1;
	}
	for (unsigned i = 0; i < nw; i++)
		coil_loop_post(loop, (int)i, start_tick, &workers[i]);
	/* The banner comes once listen succeeded, with the bound address
	 * (the port the kernel picked for --port 0). */
	coil_sockinfo_t si;
	char url[400];
	if (!coil_socket_local(l, &si))
		snprintf(url, sizeof(url),
			 si.family == AF_INET6 ? "http%s://[%s]:%u/" : "http%s://%s:%u/",
			 tls ? "s" : "", si.host, si.port);
	else
		snprintf(url, sizeof(url), "http%s://%s/", tls ? "s" : "", numeric);
	if (log_level >= LOG_INFO) {
		fprintf(stderr,
			"http_echo: listening on %s with %u worker%s (coil %s); "
			"Ctrl-C stops it\n"
			"http_echo: try: curl -s %shello ; curl -s -d 'hi' %secho\n",
			url, nw, nw == 1 ? "" : "s", coil_version(), url, url);
	}

	int sig;
	sigwait(&stop, &sig);
	if (log_level >= LOG_INFO)
		fprintf(stderr, "http_echo: stopping (%s)\n",
			sig == SIGINT ? "SIGINT" : "SIGTERM");
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
	if (access_log && access_log != stdout)
		fclose(access_log);
	return 0;
}
