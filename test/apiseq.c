/* SPDX-License-Identifier: MIT */
/*
 * apiseq: random API sequences over real sockets with a byte-accounting
 * oracle. See apiseq.h for what one run does and docs/reliability.md for the
 * rules, the gates and the figures.
 *
 * How the oracle knows the order of events without looking inside coil:
 *  - The model of each connection lives on its home worker. Operations made
 *    there (posted tasks, callbacks) take effect at once. An operation made
 *    on a plain thread is forwarded by coil through the worker's inbox; the
 *    thread then posts a fence (coil_loop_post, same FIFO inbox) and holds
 *    the connection's lock across both, so when the fence runs the operation
 *    has taken effect, and no other operation on that connection came
 *    between. While a fence is outstanding the home side does not issue the
 *    operations whose order the oracle needs (reads, signal changes, steal).
 *  - Read requests are therefore known in the order the channel queues
 *    them. At the start of every signal callback the model notes which
 *    requests have settled (coil_ip_state): those took their bytes before
 *    the signal's bytes, the others after.
 *  - After coil_loop_free() every handle has settled (concepts.md rule 16),
 *    so the check walks the stream once: requests and line signals take
 *    bytes from a cursor; read-signal chunks are placed on the arrival
 *    stream; a chunk the signal took alone is a hole the readers skip.
 * The peer is a plain thread on the other end of the socket: it sends a
 * stream whose bytes are a function of (seed, offset) -- never 0, '\n' only
 * as line ends -- and keeps what it receives for the write check.
 */
#include "apiseq.h"

#include "coil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Allocation counting (contract 3, lib/alloc.c): used when present. */
size_t coil__alloc_live(void) __attribute__((weak));

#define AQ_CONNS 2
#define AQ_THREADS 2
#define AQ_ISSUERS (AQ_THREADS + 1) /* 0: home worker */
#define AQ_MAXREQ 4096
#define AQ_MAXCONNREQ 2048
#define AQ_MAXW 1024
#define AQ_MAXOPS 256
#define AQ_MAXCH 8
#define AQ_HDR 10
#define AQ_RXCAP (8u << 20)

/* ---- gates: operations held back while a known bug is open on main ---- */

enum {
	G_STEAL = 1u << 0,          /* coil_channel_steal */
	G_SELF_DISCONNECT = 1u << 1, /* on_read(NULL) inside the read callback */
	G_REPLACE = 1u << 2,        /* on_read(other) inside the read callback */
	G_ABORT_WRITE = 1u << 3,    /* coil_ip_abort on writes */
	G_ABORT_READINTO = 1u << 4, /* abort / timeout of readinto, read_exact */
	G_CLOSED_ORDER = 1u << 5,   /* rule: write callbacks before closed */
	G_INTO_BESIDE_LINE = 1u << 6, /* readinto beside the readline signal */
	G_RELEASE_RACE = 1u << 7,   /* home release while a forwarded call of
				       a plain thread is still in flight */
	G_ABORT_FOREIGN_READ = 1u << 8, /* abort / timeout of a read made on a
					   plain thread */
	G_SMALL_BUFFERS = 1u << 9, /* loops with 16 or 512-byte provided
				      buffers */
	G_CLOSE_PAUSED = 1u << 10, /* close / release while the read signal
				      may be connected (it may hold paused
				      bytes) */
	G_STEAL_IN_SIGNAL = 1u << 11, /* steal inside a signal callback of the
					 victim */
	G_RELEASE_IN_SIGNAL = 1u << 12, /* release inside a read or readline
					   callback */
	G_STEAL_CHAIN = 1u << 13, /* a second steal on one connection (the
				     thief stolen in turn) */
	G_TCP_SMALL_SNDBUF = 1u << 14, /* a 4 KiB SO_SNDBUF on TCP */
	G_OPS_DURING_STOP = 1u << 15, /* channel calls from callbacks that
					 coil_loop_free() runs */
	G_PBUF_INC = 1u << 16, /* loops with COIL_LOOP_PBUF_INC (F17) */
};

static const struct {
	unsigned bit;
	const char *name;
} gate_names[] = {
	{G_STEAL, "steal"},
	{G_SELF_DISCONNECT, "self-disconnect"},
	{G_REPLACE, "replace-read-cb"},
	{G_ABORT_WRITE, "abort-write"},
	{G_ABORT_READINTO, "abort-partial-read"},
	{G_CLOSED_ORDER, "closed-order"},
	{G_INTO_BESIDE_LINE, "readinto-beside-readline"},
	{G_RELEASE_RACE, "release-race"},
	{G_ABORT_FOREIGN_READ, "abort-foreign-read"},
	{G_SMALL_BUFFERS, "small-buffers"},
	{G_CLOSE_PAUSED, "close-paused-signal"},
	{G_STEAL_IN_SIGNAL, "steal-in-signal"},
	{G_RELEASE_IN_SIGNAL, "release-in-signal"},
	{G_STEAL_CHAIN, "steal-chain"},
	{G_TCP_SMALL_SNDBUF, "tcp-small-sndbuf"},
	{G_OPS_DURING_STOP, "ops-during-stop"},
	{G_PBUF_INC, "pbuf-inc"},
};

/* The gates in force on main today (docs/reliability.md). Only one is
 * left: tcp-small-sndbuf shrinks both socket buffers of an established TCP
 * connection to 4 KiB, which the kernel does not survive when the
 * connection stops reading while it writes (F8: its peer's segments,
 * acknowledgements included, are dropped; test/kernel/tcp_rcvbuf_stall.c
 * shows it without coil). coil documents setting small sizes before
 * connect or listen. small-buffers (F2/F14, the kernel's AF_UNIX multishot
 * EOF), steal-in-signal (F9) and ops-during-stop (F13) were opened after
 * their fixes: 7,904 ASan and 17,866 release sequences, none failed. */
/* pbuf-inc (loops with COIL_LOOP_PBUF_INC) was opened again in session 7:
 * F17 was this oracle placing a 1-byte chunk at the wrong one of its
 * candidate offsets (check_reads); 40,791 ASan and 18,640 release
 * sequences with it open, none failed. */
#define AQ_DEFAULT_GATES "tcp-small-sndbuf"

static unsigned gates_parse(const char *s)
{
	unsigned g = 0;
	while (s && *s) {
		const char *e = strchr(s, ',');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		for (size_t i = 0; i < sizeof(gate_names) / sizeof(gate_names[0]);
		     i++)
			if (strlen(gate_names[i].name) == n &&
			    !strncmp(gate_names[i].name, s, n))
				g |= gate_names[i].bit;
		s = e ? e + 1 : NULL;
	}
	return g;
}

static unsigned gates_get(void)
{
	const char *strict = getenv("COIL_APISEQ_STRICT");
	if (strict && *strict && strcmp(strict, "0"))
		return 0;
	const char *env = getenv("COIL_APISEQ_GATES");
	return gates_parse(env ? env : AQ_DEFAULT_GATES);
}

const char *apiseq_gates(void)
{
	static char buf[256];
	unsigned g = gates_get();
	buf[0] = 0;
	for (size_t i = 0; i < sizeof(gate_names) / sizeof(gate_names[0]); i++)
		if (g & gate_names[i].bit) {
			if (buf[0])
				strcat(buf, ",");
			strcat(buf, gate_names[i].name);
		}
	return buf;
}

/* ---- the stream ---- */

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static inline unsigned char sbyte(uint64_t seed, uint64_t i)
{
	uint64_t h = mix64(seed ^ (i * 0x9E3779B97F4A7C15ULL));
	if (h % 23 == 0)
		return '\n';
	unsigned b = 1 + (unsigned)((h >> 8) % 254);
	return (unsigned char)(b == '\n' ? 255 : b);
}

void apiseq_bytes(uint64_t seed, uint8_t *buf, size_t n)
{
	uint64_t s = mix64(seed + 0x1234567);
	for (size_t i = 0; i < n; i++) {
		s = mix64(s + i);
		buf[i] = (uint8_t)s;
	}
}

/* ---- model ---- */

enum { K_READ, K_LINE, K_EXACT, K_INTO, K_WRITE, K_TIMEOUT };
static const char *kind_name[] = {"read", "readline", "read_exact",
				  "readinto", "write", "timeout"};

enum {
	OP_READ, OP_LINE, OP_EXACT, OP_INTO, OP_WRITE, OP_WRITEV, OP_ABORT,
	OP_TIMEOUT, OP_CLOSE, OP_RELEASE, OP_STEAL, OP_ON_READ, OP_OFF_READ,
	OP_ON_LINE, OP_OFF_LINE, OP_ON_CLOSED, OP_OFF_CLOSED, OP_FREE,
	OP_COUNT
};
static const char *op_name[] = {
	"read", "readline", "read_exact", "readinto", "write", "writev",
	"abort", "timeout", "close", "release", "steal", "on_read",
	"on_read(NULL)", "on_readline", "on_readline(NULL)", "on_closed",
	"on_closed(NULL)", "loop_free"};
/* Byte -> operation, weighted towards I/O. */
static const unsigned char op_table[32] = {
	OP_READ, OP_READ, OP_READ, OP_READ, OP_LINE, OP_LINE, OP_LINE,
	OP_EXACT, OP_EXACT, OP_EXACT, OP_INTO, OP_INTO, OP_WRITE, OP_WRITE,
	OP_WRITE, OP_WRITE, OP_WRITEV, OP_WRITEV, OP_ABORT, OP_ABORT, OP_ABORT,
	OP_TIMEOUT, OP_TIMEOUT, OP_CLOSE, OP_RELEASE, OP_STEAL, OP_ON_READ,
	OP_ON_READ, OP_OFF_READ, OP_ON_LINE, OP_OFF_LINE, OP_ON_CLOSED};

enum { EV_LINE, EV_SIG };
enum { F_CONSUMED, F_SHARED, F_EITHER };

typedef struct aq_run aq_run;
typedef struct aq_conn aq_conn;

typedef struct aq_req {
	aq_conn *conn;
	coil_ip_t *ip;
	int kind;
	int issuer;
	int home;
	coil_channel_t *ch;
	size_t n;           /* read_exact / readinto size */
	unsigned char *buf; /* readinto buffer (zeroed: the stream has no 0) */
	uint32_t wseq;
	unsigned char *wdata; /* write: the whole record */
	size_t wlen;
	int home_cb;       /* write whose callback was attached at creation on
			      the home worker (closed-order rule) */
	atomic_int done;   /* callbacks run */
	atomic_int offhome; /* a callback ran off the home worker */
	atomic_int aborted; /* coil_ip_abort returned 0 */
	int stamp;          /* first signal event it had settled before */
	int appeared;       /* write: complete records seen by the peer */
	int truncated;      /* write: a cut record at the stream's end */
	int op;             /* the op index that made it (for reports) */
} aq_req;

typedef struct aq_event {
	int type, gen, flag;
	unsigned char *data;
	size_t len;
	coil_channel_t *ch;
	long long placed; /* read signal: where the check placed it */
} aq_event;

typedef struct aq_sub {
	aq_conn *conn;
	coil_channel_t *ch;
	int kind; /* EV_LINE, EV_SIG, or 2 for closed */
	int gen;
	int dead; /* disconnected (as far as the home side knows) */
	int echo;
	struct aq_sub *next;
} aq_sub;

struct aq_conn {
	aq_run *run;
	int idx;
	pthread_mutex_t mu; /* recursive; guards everything below */
	coil_channel_t *ch;
	coil_channel_t *chs[AQ_MAXCH]; /* every channel object of the conn */
	int closed_count[AQ_MAXCH];
	int nchs;
	int home;
	int tcp;
	size_t qsize;
	int close_on_eof;
	int released, closed_by_us, stole;
	int changes; /* close / release / steal made (for "gone" checks) */
	int in_sig;  /* inside a read-signal callback (any depth) */
	int in_line; /* inside a readline-signal callback (any depth) */
	int refs;    /* references the plain threads hold (coil_channel_ref) */
	int foreign_inflight;
	int line_on;
	aq_sub *read_sub, *line_sub, *closed_sub, *subs;
	int gen_next;
	aq_req *reads[AQ_MAXCONNREQ];
	int nreads, stamp_lo;
	aq_req *all[AQ_MAXCONNREQ];
	int nall;
	aq_req *w[AQ_ISSUERS][AQ_MAXW];
	int nw[AQ_ISSUERS];
	aq_event *ev;
	int nev, capev;
	uint8_t cbops[AQ_MAXOPS][2];
	int ncb, cbpos;
	/* peer */
	int peer_fd;
	pthread_t peer;
	int peer_started;
	uint64_t plan, sent, seed;
	_Atomic uint64_t sent_live, rx_live;
	uint32_t peer_rng;
	int peer_slow;
	unsigned char *rx;
	size_t rxlen;
	int rx_over, peer_reset, peer_timeout;
	/* drain */
	coil_ip_t *drain_done;
	int drain_full;
	int drain_reads;
};

struct aq_run {
	coil_loop_t *loop;
	FILE *logf; /* verbose output: stderr, or memory kept for failures */
	pthread_mutex_t logmu;
	unsigned gates;
	int verbose;
	aq_conn conns[AQ_CONNS];
	pthread_mutex_t mu;
	aq_req *reqs[AQ_MAXREQ];
	int nreqs;
	atomic_int failed;
	char *err;
	size_t errlen;
	uint8_t tops[AQ_THREADS][AQ_MAXOPS][3];
	int ntops[AQ_THREADS];
	atomic_int opno;
	atomic_int stopping; /* the main thread is in coil_loop_free() */
};

static _Thread_local int cb_depth;
static _Thread_local int aq_quiet; /* a trial walk of the check */
/* The run in progress (for a debugger: p *aq_current->conns[0].ch). */
static aq_run *volatile aq_current;
static _Thread_local int cur_op;

static void violation(aq_run *run, const char *fmt, ...) COIL_PRINTF(2, 3);
static void violation(aq_run *run, const char *fmt, ...)
{
	if (aq_quiet)
		return;
	pthread_mutex_lock(&run->mu);
	if (!atomic_exchange(&run->failed, 1) && run->err && run->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(run->err, run->errlen, fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&run->mu);
}

static void vlog(aq_run *run, const char *fmt, ...) COIL_PRINTF(2, 3);
static void vlog(aq_run *run, const char *fmt, ...)
{
	if (run->verbose <= 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&run->logmu);
	vfprintf(run->logf, fmt, ap);
	pthread_mutex_unlock(&run->logmu);
	va_end(ap);
}

static aq_req *req_new(aq_conn *c, int kind, int issuer)
{
	aq_run *run = c->run;
	if (c->nall >= AQ_MAXCONNREQ || c->nreads >= AQ_MAXCONNREQ)
		return NULL;
	aq_req *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	pthread_mutex_lock(&run->mu);
	if (run->nreqs >= AQ_MAXREQ) {
		pthread_mutex_unlock(&run->mu);
		free(r);
		return NULL;
	}
	run->reqs[run->nreqs++] = r;
	r->op = cur_op;
	pthread_mutex_unlock(&run->mu);
	r->conn = c;
	r->kind = kind;
	r->issuer = issuer;
	r->home = c->home;
	r->ch = c->ch;
	r->stamp = -1;
	c->all[c->nall++] = r;
	if (kind <= K_INTO)
		c->reads[c->nreads++] = r;
	return r;
}

static int chan_index(aq_conn *c, coil_channel_t *ch)
{
	for (int i = 0; i < c->nchs; i++)
		if (c->chs[i] == ch)
			return i;
	return -1;
}

/* ---- callbacks ---- */

static void op_do(aq_conn *c, int op, int arg, int issuer, aq_sub *in,
		  const void *view, size_t vlen);

/* Runs the connection's next in-callback operation (home worker, lock
 * held), bounded in depth so late-attach chains stay shallow. */
static void cb_next(aq_conn *c, aq_sub *in, const void *view, size_t vlen)
{
	if (cb_depth >= 3 || c->cbpos >= c->ncb || c->released)
		return;
	if (atomic_load(&c->run->stopping) &&
	    (c->run->gates & G_OPS_DURING_STOP))
		return;
	int i = c->cbpos++;
	cb_depth++;
	op_do(c, c->cbops[i][0], c->cbops[i][1], 0, in, view, vlen);
	cb_depth--;
}

static void check_home(aq_conn *c, const char *what)
{
	int cur = coil_loop_current_worker(c->run->loop);
	if (cur != c->home)
		violation(c->run, "conn %d: %s callback ran on worker %d, home %d",
			  c->idx, what, cur, c->home);
}

static void stamp_scan(aq_conn *c)
{
	int e = c->nev;
	for (int i = c->stamp_lo; i < c->nreads; i++) {
		aq_req *r = c->reads[i];
		if (r->stamp < 0 && r->ip &&
		    coil_ip_state(r->ip) != COIL_IP_PENDING)
			r->stamp = e;
	}
	while (c->stamp_lo < c->nreads && c->reads[c->stamp_lo]->stamp >= 0)
		c->stamp_lo++;
}

static int share_rule_return(void)
{
	const char *r = getenv("COIL_APISEQ_SHARE_RULE");
	return r && !strcmp(r, "return");
}

/* Readers beside the read signal: a queued request of this channel or a
 * connected readline signal (home worker, lock held). */
static bool sig_consumers(aq_conn *c, coil_channel_t *ch)
{
	if (c->line_on && c->line_sub && c->line_sub->ch == ch)
		return true;
	for (int i = c->stamp_lo; i < c->nreads; i++) {
		aq_req *r = c->reads[i];
		if (r->ch == ch && r->ip &&
		    coil_ip_state(r->ip) == COIL_IP_PENDING)
			return true;
	}
	return false;
}

static void sig_event(aq_sub *s, coil_channel_t *ch, const void *data,
		      size_t len, int type)
{
	aq_conn *c = s->conn;
	pthread_mutex_lock(&c->mu);
	check_home(c, type == EV_SIG ? "read" : "readline");
	if (s->ch != ch)
		violation(c->run, "conn %d: signal callback got another channel",
			  c->idx);
	if (s->dead)
		violation(c->run,
			  "conn %d: %s callback (gen %d) ran after it was "
			  "disconnected or its channel released/stolen",
			  c->idx, type == EV_SIG ? "read" : "readline", s->gen);
	if (!len)
		violation(c->run, "conn %d: signal callback with 0 bytes", c->idx);
	vlog(c->run, "  conn %d %s callback gen %d: %zu bytes (event %d)\n",
	     c->idx, type == EV_SIG ? "read" : "readline", s->gen, len, c->nev);
	stamp_scan(c);
	if (c->nev == c->capev) {
		int cap = c->capev ? c->capev * 2 : 64;
		aq_event *n = realloc(c->ev, (size_t)cap * sizeof(*n));
		if (!n)
			abort();
		c->ev = n;
		c->capev = cap;
	}
	aq_event *ev = &c->ev[c->nev++];
	ev->type = type;
	ev->gen = s->gen;
	ev->ch = ch;
	ev->placed = -1;
	ev->len = len;
	ev->data = malloc(len ? len : 1);
	if (!ev->data)
		abort();
	memcpy(ev->data, data, len);
	ev->flag = F_CONSUMED;
	int idx = (int)(ev - c->ev);
	int changes = c->changes;
	/* The read signal alone takes a chunk when no request is queued and
	 * no readline signal is connected as the chunk is shown
	 * (docs/channel.md "Signals": a read the callback itself issues gets
	 * the next bytes). COIL_APISEQ_SHARE_RULE=return decides it as the
	 * callback returns instead (the rule main had for a while). */
	int at_return = share_rule_return();
	int flag = F_CONSUMED;
	int inflight = c->foreign_inflight;
	int ci = chan_index(c, ch);
	if (type == EV_SIG && !at_return)
		flag = sig_consumers(c, ch) ? F_SHARED : F_CONSUMED;
	int *in_ctr = type == EV_SIG ? &c->in_sig : &c->in_line;
	(*in_ctr)++;
	cb_next(c, s, data, len);
	(*in_ctr)--;
	ev = &c->ev[idx];
	if (type == EV_SIG) {
		if (at_return)
			flag = sig_consumers(c, ch) ? F_SHARED : F_CONSUMED;
		/* A plain thread's call in flight, or a callback that closed,
		 * released or stole: either may be right. */
		if (inflight || c->foreign_inflight || c->closed_by_us ||
		    changes != c->changes || (ci >= 0 && c->closed_count[ci]))
			flag = F_EITHER;
	}
	ev->flag = flag;
	pthread_mutex_unlock(&c->mu);
}

static void read_cb(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	sig_event(ud, ch, data, len, EV_SIG);
}

static void line_cb(coil_channel_t *ch, const void *data, size_t len, void *ud)
{
	sig_event(ud, ch, data, len, EV_LINE);
}

static void closed_cb(coil_channel_t *ch, int expected, void *ud)
{
	aq_sub *s = ud;
	aq_conn *c = s->conn;
	pthread_mutex_lock(&c->mu);
	check_home(c, "closed");
	int ci = chan_index(c, ch);
	if (s->dead)
		violation(c->run,
			  "conn %d: closed callback ran after it was "
			  "disconnected or its channel released",
			  c->idx);
	if (ci < 0 || s->ch != ch) {
		violation(c->run, "conn %d: closed callback for an unknown channel",
			  c->idx);
	} else if (++c->closed_count[ci] > 1) {
		violation(c->run, "conn %d: closed fired %d times on channel %d",
			  c->idx, c->closed_count[ci], ci);
	}
	if (!(c->run->gates & G_CLOSED_ORDER)) {
		for (int i = 0; i < c->nall; i++) {
			aq_req *r = c->all[i];
			if (r->kind == K_WRITE && r->ch == ch && r->home_cb &&
			    !atomic_load(&r->done))
				violation(c->run,
					  "conn %d: closed fired before the "
					  "callback of write seq %u (op %d) "
					  "[rule closed-order]",
					  c->idx, r->wseq, r->op);
		}
	}
	(void)expected;
	cb_next(c, s, NULL, 0);
	pthread_mutex_unlock(&c->mu);
}

static void done_cb(coil_ip_t *ip, void *ud)
{
	aq_req *r = ud;
	aq_conn *c = r->conn;
	if (atomic_fetch_add(&r->done, 1) > 0)
		violation(c->run, "conn %d: %s handle (op %d) callback ran twice",
			  c->idx, kind_name[r->kind], r->op);
	if (coil_loop_current_worker(c->run->loop) != r->home)
		atomic_store(&r->offhome, 1);
	if (coil_ip_state(ip) == COIL_IP_PENDING)
		violation(c->run, "conn %d: callback of a pending handle", c->idx);
	pthread_mutex_lock(&c->mu);
	cb_next(c, NULL, NULL, 0);
	pthread_mutex_unlock(&c->mu);
}

static void attach(aq_req *r)
{
	if (!r->ip)
		return;
	if (coil_ip_on_done(r->ip, done_cb, r))
		violation(r->conn->run, "coil_ip_on_done failed");
}

/* ---- fences: a plain thread's op has taken effect on the home worker ---- */

typedef struct aq_fence {
	aq_conn *c;
	int op, rc;
	aq_sub *sub;
} aq_fence;

static void sub_kill(aq_sub **slot)
{
	if (*slot)
		(*slot)->dead = 1;
	*slot = NULL;
}

/* Applies what op did to the model (home worker, lock held). */
static void model_apply(aq_conn *c, int op, int rc, aq_sub *sub)
{
	switch (op) {
	case OP_ON_READ:
		if (!rc) {
			sub_kill(&c->read_sub);
			c->read_sub = sub;
		} else if (sub) {
			sub->dead = 1;
		}
		break;
	case OP_OFF_READ:
		if (!rc)
			sub_kill(&c->read_sub);
		break;
	case OP_ON_LINE:
		if (!rc) {
			sub_kill(&c->line_sub);
			c->line_sub = sub;
			c->line_on = 1;
		} else if (sub) {
			sub->dead = 1;
		}
		break;
	case OP_OFF_LINE:
		if (!rc) {
			sub_kill(&c->line_sub);
			c->line_on = 0;
		}
		break;
	case OP_ON_CLOSED:
		if (!rc) {
			sub_kill(&c->closed_sub);
			c->closed_sub = sub;
		} else if (sub) {
			sub->dead = 1;
		}
		break;
	case OP_OFF_CLOSED:
		if (!rc)
			sub_kill(&c->closed_sub);
		break;
	case OP_RELEASE:
		sub_kill(&c->read_sub);
		sub_kill(&c->line_sub);
		sub_kill(&c->closed_sub);
		c->line_on = 0;
		break;
	}
}

static void fence_run(void *arg)
{
	aq_fence *f = arg;
	aq_conn *c = f->c;
	pthread_mutex_lock(&c->mu);
	c->foreign_inflight--;
	model_apply(c, f->op, f->rc, f->sub);
	pthread_mutex_unlock(&c->mu);
	free(f);
}

static aq_sub *sub_new(aq_conn *c, int kind, int echo)
{
	aq_sub *s = calloc(1, sizeof(*s));
	if (!s)
		abort();
	s->conn = c;
	s->ch = c->ch;
	s->kind = kind;
	s->gen = c->gen_next++;
	s->echo = echo;
	s->next = c->subs;
	c->subs = s;
	return s;
}

/* ---- operations ---- */

static void make_record(aq_req *r, int issuer, uint32_t seq, const void *body,
			size_t blen, uint64_t salt)
{
	r->wlen = AQ_HDR + blen;
	r->wdata = malloc(r->wlen);
	if (!r->wdata)
		abort();
	unsigned char *p = r->wdata;
	p[0] = 0xA5;
	p[1] = (unsigned char)issuer;
	memcpy(p + 2, &seq, 4);
	uint32_t l = (uint32_t)blen;
	memcpy(p + 6, &l, 4);
	if (body) {
		memcpy(p + AQ_HDR, body, blen);
	} else {
		for (size_t j = 0; j < blen; j++)
			p[AQ_HDR + j] = (unsigned char)mix64(salt + j * 31 + seq);
	}
	r->wseq = seq;
}

static size_t wsize(int arg)
{
	if (arg % 17 == 0)
		return 20000 + (size_t)arg * 200;
	return 1 + (size_t)(arg * 7);
}

static bool op_needs_order(int op)
{
	switch (op) {
	case OP_READ: case OP_LINE: case OP_EXACT: case OP_INTO:
	case OP_TIMEOUT: case OP_STEAL: case OP_ON_READ: case OP_OFF_READ:
	case OP_ON_LINE: case OP_OFF_LINE: case OP_ON_CLOSED:
	case OP_OFF_CLOSED:
		return true;
	}
	return false;
}

static aq_req *issue_read(aq_conn *c, int kind, int arg, int issuer)
{
	aq_req *r = req_new(c, kind, issuer);
	if (!r)
		return NULL;
	switch (kind) {
	case K_READ:
		r->ip = coil_channel_read(c->ch);
		break;
	case K_LINE:
		r->ip = coil_channel_readline(c->ch);
		break;
	case K_EXACT:
		r->n = 1 + (size_t)arg * 3;
		r->ip = coil_channel_read_exact(c->ch, r->n);
		break;
	case K_INTO:
		r->n = 1 + (size_t)arg * 3;
		r->buf = calloc(1, r->n);
		if (!r->buf)
			abort();
		r->ip = coil_channel_readinto(c->ch, r->buf, r->n);
		break;
	}
	if (!r->ip)
		violation(c->run, "conn %d: %s returned NULL", c->idx,
			  kind_name[kind]);
	attach(r);
	return r;
}

static void issue_write(aq_conn *c, int arg, int issuer, int vec,
			const void *view, size_t vlen)
{
	if (c->nw[issuer] >= AQ_MAXW)
		return;
	aq_req *r = req_new(c, K_WRITE, issuer);
	if (!r)
		return;
	uint32_t seq = (uint32_t)c->nw[issuer];
	c->w[issuer][c->nw[issuer]++] = r;
	make_record(r, issuer, seq, view, view ? vlen : wsize(arg),
		    (uint64_t)c->idx << 40 | (uint64_t)issuer << 32);
	if (view) {
		struct iovec iov[2] = {{r->wdata, AQ_HDR},
				       {(void *)view, vlen}};
		r->ip = coil_channel_writev(c->ch, iov, 2);
	} else if (vec) {
		struct iovec iov[4];
		int n = 1 + arg % 4;
		size_t off = 0;
		for (int i = 0; i < n; i++) {
			size_t left = r->wlen - off;
			size_t part = i == n - 1 ? left : left / (size_t)(n - i);
			iov[i].iov_base = r->wdata + off;
			iov[i].iov_len = part;
			off += part;
		}
		r->ip = coil_channel_writev(c->ch, iov, n);
	} else {
		r->ip = coil_channel_write(c->ch, r->wdata, r->wlen);
	}
	if (!r->ip)
		violation(c->run, "conn %d: write returned NULL", c->idx);
	r->home_cb = issuer == 0;
	attach(r);
}

static void do_steal(aq_conn *c, int issuer)
{
	coil_channel_t *n = NULL;
	if (c->nchs >= AQ_MAXCH)
		return;
	int rc = coil_channel_new(c->run->loop, &n);
	if (rc) {
		violation(c->run, "coil_channel_new: %d", rc);
		return;
	}
	if (issuer) {
		rc = coil_channel_steal(n, c->ch);
		if (rc != -EXDEV)
			violation(c->run,
				  "conn %d: steal from a plain thread returned "
				  "%d, want -EXDEV",
				  c->idx, rc);
		coil_channel_release(n);
		return;
	}
	if (coil_channel_worker(n) != c->home) {
		violation(c->run,
			  "conn %d: channel made on worker %d has home %d",
			  c->idx, c->home, coil_channel_worker(n));
		coil_channel_release(n);
		return;
	}
	rc = coil_channel_steal(n, c->ch);
	vlog(c->run, "  steal -> %d\n", rc);
	if (rc == 0) {
		c->chs[c->nchs++] = n;
		c->ch = n;
		c->stole++;
		c->changes++;
		sub_kill(&c->read_sub);
		sub_kill(&c->line_sub);
		c->closed_sub = NULL; /* stays alive: closed fires on the old */
		c->line_on = 0;
		if (c->qsize)
			coil_channel_set_queue_size(n, c->qsize);
		coil_channel_set_close_on_eof(n, c->close_on_eof);
	} else {
		if (rc != -EBUSY && rc != -EBADF)
			violation(c->run, "conn %d: steal returned %d", c->idx,
				  rc);
		coil_channel_release(n);
	}
}

static void do_abort(aq_conn *c, int arg, int issuer)
{
	if (!c->nall)
		return;
	aq_req *r = c->all[(unsigned)arg % (unsigned)c->nall];
	if (!r->ip)
		return;
	if (r->kind == K_WRITE && (c->run->gates & G_ABORT_WRITE))
		return;
	if ((r->kind == K_INTO || r->kind == K_EXACT) &&
	    (c->run->gates & G_ABORT_READINTO))
		return;
	if (r->kind <= K_INTO && r->issuer &&
	    (c->run->gates & G_ABORT_FOREIGN_READ))
		return;
	int before = coil_ip_state(r->ip);
	int rc = coil_ip_abort(r->ip);
	vlog(c->run, "  abort %s (op %d) -> %d\n", kind_name[r->kind], r->op,
	     rc);
	if (rc == 0)
		atomic_store(&r->aborted, 1);
	if (issuer == 0 && r->home == c->home) {
		if (before != COIL_IP_PENDING && rc != -EALREADY)
			violation(c->run,
				  "conn %d: abort of a settled %s returned %d",
				  c->idx, kind_name[r->kind], rc);
		if (before == COIL_IP_PENDING && rc != 0 &&
		    !(rc == -EBUSY && r->kind == K_WRITE))
			violation(c->run,
				  "conn %d: abort of a pending %s (op %d) "
				  "returned %d",
				  c->idx, kind_name[r->kind], r->op, rc);
	} else if (rc != 0 && rc != -EALREADY) {
		violation(c->run, "conn %d: abort from a thread returned %d",
			  c->idx, rc);
	}
}

static void op_do(aq_conn *c, int op, int arg, int issuer, aq_sub *in,
		  const void *view, size_t vlen)
{
	aq_run *run = c->run;
	pthread_mutex_lock(&c->mu);
	if (c->released ||
	    (issuer == 0 && c->foreign_inflight &&
	     (op_needs_order(op) ||
	      (op == OP_RELEASE && (run->gates & G_RELEASE_RACE))))) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if (op == OP_INTO && c->line_on && (run->gates & G_INTO_BESIDE_LINE))
		op = OP_EXACT;
	if (op == OP_RELEASE && (run->gates & G_RELEASE_IN_SIGNAL) &&
	    (c->in_sig || c->in_line)) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if ((op == OP_CLOSE || op == OP_RELEASE) &&
	    (run->gates & G_CLOSE_PAUSED) &&
	    (c->read_sub || c->foreign_inflight)) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	int saved_op = cur_op;
	cur_op = atomic_fetch_add(&run->opno, 1) + 1;
	vlog(run, "#%d conn %d %s: %s(%d)%s\n", cur_op, c->idx,
	     issuer ? (issuer == 1 ? "thread1" : "thread2")
		    : (in ? "in-signal" : cb_depth ? "in-callback" : "home"),
	     op_name[op], arg, c->foreign_inflight ? " [fence pending]" : "");
	if (issuer)
		c->foreign_inflight++;
	int rc = 0;
	aq_sub *sub = NULL;
	switch (op) {
	case OP_READ:
		issue_read(c, K_READ, arg, issuer);
		break;
	case OP_LINE:
		issue_read(c, K_LINE, arg, issuer);
		break;
	case OP_EXACT:
		issue_read(c, K_EXACT, arg, issuer);
		break;
	case OP_INTO:
		issue_read(c, K_INTO, arg, issuer);
		break;
	case OP_WRITE:
	case OP_WRITEV:
		if (in && in->kind == EV_SIG && view && (arg & 1))
			issue_write(c, arg, issuer, 1, view, vlen); /* echo */
		else
			issue_write(c, arg, issuer, op == OP_WRITEV, NULL, 0);
		break;
	case OP_ABORT:
		do_abort(c, arg, issuer);
		break;
	case OP_TIMEOUT: {
		int kind = arg & 3;
		if (kind >= K_EXACT && (run->gates & G_ABORT_READINTO))
			kind = K_READ;
		aq_req *src = issue_read(c, kind, arg >> 2, issuer);
		if (!src || !src->ip ||
		    (issuer && (run->gates & G_ABORT_FOREIGN_READ)))
			break;
		aq_req *t = req_new(c, K_TIMEOUT, issuer);
		if (!t)
			break;
		t->ip = coil_ip_timeout(coil_ip_ref(src->ip),
					(unsigned)(arg >> 5), arg & 16);
		if (!t->ip)
			violation(run, "coil_ip_timeout returned NULL");
		attach(t);
		break;
	}
	case OP_CLOSE:
		c->closed_by_us = 1;
		c->changes++;
		rc = coil_channel_close(c->ch, arg & 1);
		if (rc)
			violation(run, "conn %d: close returned %d", c->idx, rc);
		break;
	case OP_RELEASE:
		c->released = 1;
		c->changes++;
		/* While plain threads hold references this is not the last
		 * release: the channel and its signals live on. */
		if (c->refs && c->ch == c->chs[0]) {
			op = -1;
			coil_channel_release(c->ch);
			break;
		}
		if (!issuer)
			model_apply(c, OP_RELEASE, 0, NULL);
		coil_channel_release(c->ch);
		break;
	case OP_STEAL:
		if ((run->gates & G_STEAL) || c->foreign_inflight ||
		    (c->stole && (run->gates & G_STEAL_CHAIN)) ||
		    ((run->gates & G_STEAL_IN_SIGNAL) && (c->in_sig || c->in_line)))
			break;
		do_steal(c, issuer);
		break;
	case OP_ON_READ:
	case OP_OFF_READ:
	case OP_ON_LINE:
	case OP_OFF_LINE:
	case OP_ON_CLOSED:
	case OP_OFF_CLOSED: {
		if (c->in_sig && (run->gates & G_REPLACE) && op == OP_ON_READ) {
			op = -1; /* gated: nothing done */
			break;
		}
		if (c->in_sig && (run->gates & G_SELF_DISCONNECT) &&
		    op == OP_OFF_READ) {
			op = -1;
			break;
		}
		int kind = op <= OP_OFF_READ ? EV_SIG : op <= OP_OFF_LINE ? EV_LINE : 2;
		bool on = op == OP_ON_READ || op == OP_ON_LINE || op == OP_ON_CLOSED;
		aq_sub **slot = kind == EV_SIG    ? &c->read_sub
				: kind == EV_LINE ? &c->line_sub
						  : &c->closed_sub;
		aq_sub *prev = *slot;
		int prev_on = c->line_on;
		if (on)
			sub = sub_new(c, kind, arg & 1);
		/* On the home worker the model changes before the call: the
		 * call may run callbacks (a flush, lines) that change it
		 * again, and those must win. */
		if (!issuer)
			model_apply(c, op, 0, sub);
		if (kind == EV_SIG)
			rc = coil_channel_on_read(c->ch, on ? read_cb : NULL,
						  on ? sub : NULL);
		else if (kind == EV_LINE)
			rc = coil_channel_on_readline(c->ch, on ? line_cb : NULL,
						      on ? sub : NULL);
		else
			rc = coil_channel_on_closed(c->ch, on ? closed_cb : NULL,
						    on ? sub : NULL);
		if (rc && !issuer) {
			/* Refused: nothing changed (no callback ran). */
			if (sub)
				sub->dead = 1;
			if (prev)
				prev->dead = 0;
			*slot = prev;
			c->line_on = prev_on;
		}
		if (rc && rc != -EBUSY && rc != -EBADF)
			violation(run, "conn %d: %s returned %d", c->idx,
				  op_name[op], rc);
		break;
	}
	case OP_FREE:
		/* Only the main thread frees; from a worker it is refused. */
		if (coil_loop_current_worker(run->loop) >= 0) {
			rc = coil_loop_free(run->loop);
			if (rc != -EDEADLK)
				violation(run, "coil_loop_free on a worker: %d",
					  rc);
		}
		rc = 0;
		break;
	}
	if (issuer) {
		aq_fence *f = calloc(1, sizeof(*f));
		if (!f)
			abort();
		f->c = c;
		f->op = op;
		f->rc = rc;
		f->sub = sub;
		if (coil_loop_post(run->loop, c->home, fence_run, f)) {
			violation(run, "coil_loop_post (fence) failed");
			free(f);
		}
	}
	cur_op = saved_op;
	pthread_mutex_unlock(&c->mu);
}

/* ---- contexts ---- */

typedef struct aq_task {
	aq_conn *c;
	int op, arg;
} aq_task;

static void home_task(void *arg)
{
	aq_task *t = arg;
	op_do(t->c, t->op, t->arg, 0, NULL, NULL, 0);
	free(t);
}

typedef struct aq_thread {
	aq_run *run;
	int k;
} aq_thread;

static void *user_thread(void *arg)
{
	aq_thread *th = arg;
	aq_run *run = th->run;
	for (int i = 0; i < run->ntops[th->k]; i++) {
		uint8_t *o = run->tops[th->k][i];
		op_do(&run->conns[o[0]], o[1], o[2], th->k + 1, NULL, NULL, 0);
		if (o[2] & 8)
			sched_yield();
	}
	/* Drop the references taken for this thread (contract 4). */
	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		pthread_mutex_lock(&c->mu);
		if (c->refs) {
			c->refs--;
			bool last = !c->refs && c->released && c->ch == c->chs[0];
			if (last)
				c->foreign_inflight++;
			coil_channel_release(c->chs[0]);
			if (last) {
				/* The last release: the signals end once it
				 * took effect (the fence). */
				aq_fence *f = calloc(1, sizeof(*f));
				if (!f)
					abort();
				f->c = c;
				f->op = OP_RELEASE;
				if (coil_loop_post(run->loop, c->home, fence_run,
						   f)) {
					violation(run, "coil_loop_post failed");
					free(f);
				}
			}
		}
		pthread_mutex_unlock(&c->mu);
	}
	return NULL;
}

static void finish_task(void *arg)
{
	coil_ip_finish_int(arg, 0);
}

/* Waits until everything posted to worker w so far has run. */
static int barrier(aq_run *run, int w)
{
	coil_ip_t *ip = coil_ip_new(run->loop);
	if (!ip)
		return -ENOMEM;
	int rc = coil_loop_post(run->loop, w, finish_task, ip);
	if (!rc)
		rc = coil_ip_wait(ip, 20000);
	coil_ip_unref(ip);
	return rc;
}

/* ---- the drain: read until the end of stream ---- */

static void drain_step(coil_ip_t *ip, void *ud);

static void drain_read(aq_conn *c)
{
	aq_req *r = req_new(c, K_READ, 0);
	if (!r) {
		c->drain_full = 0;
		coil_ip_finish_int(c->drain_done, 0);
		return;
	}
	c->drain_reads++;
	r->op = -1; /* the final drain */
	r->ip = coil_channel_read(c->ch);
	if (!r->ip) {
		violation(c->run, "read returned NULL");
		return;
	}
	attach(r);
	if (coil_ip_on_done(r->ip, drain_step, c))
		violation(c->run, "coil_ip_on_done failed");
}

static void drain_step(coil_ip_t *ip, void *ud)
{
	aq_conn *c = ud;
	size_t n = 0;
	coil_ip_bytes(ip, &n);
	pthread_mutex_lock(&c->mu);
	if (coil_ip_error(ip) || !n) {
		if (coil_ip_error(ip))
			c->drain_full = 0;
		coil_ip_finish_int(c->drain_done, 0);
	} else {
		drain_read(c);
	}
	pthread_mutex_unlock(&c->mu);
}

static void drain_task(void *arg)
{
	aq_conn *c = arg;
	pthread_mutex_lock(&c->mu);
	c->cbpos = c->ncb; /* no more scripted ops */
	if (c->released) {
		c->drain_full = 0;
		coil_ip_finish_int(c->drain_done, 0);
	} else {
		c->drain_full = !c->closed_by_us;
		drain_read(c);
	}
	pthread_mutex_unlock(&c->mu);
}

/* ---- the peer ---- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t rng32(uint32_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 17;
	*s ^= *s << 5;
	return *s;
}

static void *peer_main(void *arg)
{
	aq_conn *c = arg;
	int fd = c->peer_fd;
	unsigned char buf[16384];
	uint64_t sent = 0;
	int wdone = 0, rdone = 0;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	if (!c->plan) {
		shutdown(fd, SHUT_WR);
		wdone = 1;
	}
	uint64_t deadline = now_ms() + 60000;
	while (!rdone || !wdone) {
		if (now_ms() > deadline) {
			c->peer_timeout = 1;
			break;
		}
		struct pollfd p = {fd, (short)((rdone ? 0 : POLLIN) |
					       (wdone ? 0 : POLLOUT)),
				   0};
		poll(&p, 1, 50);
		if (!wdone && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
			uint32_t r = rng32(&c->peer_rng);
			size_t n = r % 16 == 0 ? 1 + r / 16 % 8
				 : r % 16 == 1 ? 1 + r / 16 % sizeof(buf)
					       : 16 + r / 16 % 700;
			if (n > c->plan - sent)
				n = (size_t)(c->plan - sent);
			for (size_t j = 0; j < n; j++)
				buf[j] = sbyte(c->seed, sent + j);
			ssize_t k = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (k > 0) {
				sent += (uint64_t)k;
				atomic_store(&c->sent_live, sent);
			}
			else if (k < 0 && errno != EAGAIN && errno != EINTR)
				wdone = 1;
			if (sent == c->plan && !wdone) {
				shutdown(fd, SHUT_WR);
				wdone = 1;
			}
		}
		if (!rdone && (p.revents & (POLLIN | POLLERR | POLLHUP))) {
			ssize_t k = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (k > 0) {
				if (c->rxlen + (size_t)k <= AQ_RXCAP) {
					memcpy(c->rx + c->rxlen, buf, (size_t)k);
					c->rxlen += (size_t)k;
					atomic_store(&c->rx_live, c->rxlen);
				} else {
					c->rx_over = 1;
				}
				if (c->peer_slow && rng32(&c->peer_rng) % 4 == 0) {
					struct timespec ts = {0, 200000};
					nanosleep(&ts, NULL);
				}
			} else if (k == 0) {
				rdone = 1;
			} else if (errno != EAGAIN && errno != EINTR) {
				/* ECONNRESET, EPIPE: a TCP close with unread
				 * input sends a reset, and the peer's kernel
				 * may drop what it had not yet handed over. */
				c->peer_reset = 1;
				rdone = 1;
			}
		}
	}
	c->sent = sent;
	return NULL;
}

static int tcp_pair(int fds[2])
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		return -errno;
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 4) ||
	    getsockname(l, (struct sockaddr *)&a, &al)) {
		int e = -errno;
		close(l);
		return e;
	}
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&a, sizeof(a))) {
		int e = -errno;
		if (cfd >= 0)
			close(cfd);
		close(l);
		return e;
	}
	int sfd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	int e = sfd < 0 ? -errno : 0;
	close(l);
	if (sfd < 0) {
		close(cfd);
		return e;
	}
	int one = 1;
	setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	fds[0] = sfd;
	fds[1] = cfd;
	return 0;
}

/* ---- the check ---- */

typedef struct hole {
	uint64_t a;
	size_t len;
	int maybe;
	int ev; /* the signal event it came from */
} hole;

typedef struct walk {
	aq_conn *c;
	uint64_t T;
	hole *h;
	int nh, caph, hi;
	char what[160];
	int quiet;              /* a trial walk: report nothing */
	unsigned char *pref;    /* per event: 1 = try "consumed" first */
	int last_shared;        /* last maybe-hole taken as shared by default */
	/* A short first chunk of a signal connection (under 8 bytes) matches
	 * at many offsets: per event, how many of its candidate places to
	 * pass over; last_amb, the last such chunk the walk placed that had
	 * another candidate further on (F17: a 1-byte chunk placed at the
	 * first match, inside bytes a read took later). */
	unsigned short *skip;
	int last_amb;
} walk;

/* Matches d[0..n) against the stream from p, skipping the holes from hi
 * on; a maybe-hole is tried both ways (shared first). Returns the end in
 * *endp, the next hole in *endhi; 0 on success. */
static int match_from(walk *wk, const unsigned char *d, size_t n, uint64_t p,
		      int hi, uint64_t *endp, int *endhi)
{
	aq_conn *c = wk->c;
	while (n) {
		while (hi < wk->nh && wk->h[hi].a + wk->h[hi].len <= p &&
		       !(wk->h[hi].a == p))
			hi++;
		if (hi < wk->nh && wk->h[hi].a == p && wk->h[hi].len) {
			if (!wk->h[hi].maybe) {
				p += wk->h[hi].len;
				hi++;
				continue;
			}
			size_t keep = wk->h[hi].len;
			int ev = wk->h[hi].ev;
			bool consumed_first = wk->pref && wk->pref[ev];
			wk->h[hi].maybe = 0;
			if (!consumed_first) {
				wk->h[hi].len = 0; /* shared: not a hole */
				int save = wk->last_shared;
				wk->last_shared = ev;
				if (!match_from(wk, d, n, p, hi + 1, endp, endhi))
					return 0;
				wk->last_shared = save;
				wk->h[hi].len = keep; /* consumed */
				p += keep;
				hi++;
				continue;
			}
			/* consumed first, then shared */
			uint64_t e2;
			int h2;
			if (!match_from(wk, d, n, p + keep, hi + 1, &e2, &h2)) {
				*endp = e2;
				*endhi = h2;
				return 0;
			}
			wk->h[hi].len = 0;
			continue;
		}
		size_t run = n;
		if (hi < wk->nh && wk->h[hi].a > p && wk->h[hi].a < p + run)
			run = (size_t)(wk->h[hi].a - p);
		if (p + run > c->sent)
			return -1;
		for (size_t j = 0; j < run; j++)
			if (d[j] != sbyte(c->seed, p + j))
				return -1;
		d += run;
		n -= run;
		p += run;
	}
	*endp = p;
	*endhi = hi;
	return 0;
}

static int take(walk *wk, const unsigned char *d, size_t n, const char *who)
{
	uint64_t end;
	int endhi;
	if (!n)
		return 0;
	if (match_from(wk, d, n, wk->T, wk->hi, &end, &endhi)) {
		if (wk->quiet)
			return -1;
		size_t off = 0;
		while (off < n && wk->T + off < wk->c->sent &&
		       d[off] == sbyte(wk->c->seed, wk->T + off))
			off++;
		/* Where did it come from? */
		long long at = -1;
		uint64_t lim = wk->c->sent > n ? wk->c->sent - n : 0;
		for (uint64_t a = 0; a <= lim && n >= 4; a++) {
			size_t j = 0;
			while (j < n && d[j] == sbyte(wk->c->seed, a + j))
				j++;
			if (j == n) {
				at = (long long)a;
				break;
			}
		}
		violation(wk->c->run,
			  "conn %d: %s got %zu bytes that are not the next "
			  "bytes of the stream (expected offset %llu, first %zu "
			  "match; the bytes are at offset %lld of %llu sent): "
			  "a byte lost, doubled or reordered",
			  wk->c->idx, who, n, (unsigned long long)wk->T, off, at,
			  (unsigned long long)wk->c->sent);
		return -1;
	}
	wk->T = end;
	wk->hi = endhi;
	return 0;
}

static size_t req_bytes(aq_req *r, const unsigned char **d)
{
	size_t n = 0;
	*d = NULL;
	if (r->kind == K_INTO) {
		/* A failed readinto reports no count: what it had copied
		 * went back to the front of the read queue (docs/channel.md
		 * "Aborting"); the buffer keeps a copy that is not a
		 * delivery. */
		if (coil_ip_state(r->ip) != COIL_IP_FINISHED)
			return 0;
		while (n < r->n && r->buf[n])
			n++;
		*d = r->buf;
		return n;
	}
	*d = coil_ip_bytes(r->ip, &n);
	return *d ? n : 0;
}

static int check_req(walk *wk, aq_req *r)
{
	aq_conn *c = wk->c;
	const unsigned char *d;
	size_t n = req_bytes(r, &d);
	int st = coil_ip_state(r->ip);
	int err = st == COIL_IP_FAILED ? coil_ip_error(r->ip) : 0;
	char who[96];
	snprintf(who, sizeof(who), "%s (op %d, %s, error %d)",
		 kind_name[r->kind], r->op,
		 r->issuer ? "plain thread" : "home", err);
	if (r->kind == K_INTO && st == COIL_IP_FINISHED &&
	    (size_t)coil_ip_int(r->ip) != n) {
		violation(c->run,
			  "conn %d: %s finished with %lld but filled %zu bytes",
			  c->idx, who, (long long)coil_ip_int(r->ip), n);
		return -1;
	}
	if (r->kind == K_EXACT && st == COIL_IP_FINISHED && n != r->n) {
		violation(c->run, "conn %d: %s finished with %zu of %zu bytes",
			  c->idx, who, n, r->n);
		return -1;
	}
	if (r->kind == K_LINE && n > 1 && memchr(d, '\n', n - 1)) {
		violation(c->run, "conn %d: %s holds a delimiter before its end",
			  c->idx, who);
		return -1;
	}
	return take(wk, d, n, who);
}

static long long find_at(aq_conn *c, const unsigned char *d, size_t n)
{
	if (!n)
		return -1;
	for (uint64_t a = 0; a + n <= c->sent; a++) {
		size_t j = 0;
		while (j < n && d[j] == sbyte(c->seed, a + j))
			j++;
		if (j == n)
			return (long long)a;
	}
	return -2;
}

static void dump_conn(aq_conn *c)
{
	FILE *lf = c->run->logf;
	fprintf(lf, "conn %d: sent %llu, %d reads, %d events\n", c->idx,
		(unsigned long long)c->sent, c->nreads, c->nev);
	for (int i = 0; i < c->nreads; i++) {
		aq_req *r = c->reads[i];
		const unsigned char *d;
		size_t n = r->ip ? req_bytes(r, &d) : 0;
		fprintf(lf,
			"  req %d: %s op %d %s ch %d stamp %d state %d err %d "
			"len %zu at %lld\n",
			i, kind_name[r->kind], r->op, r->issuer ? "thr" : "home",
			chan_index(c, r->ch), r->stamp,
			r->ip ? coil_ip_state(r->ip) : -1,
			r->ip && coil_ip_state(r->ip) == COIL_IP_FAILED
				? coil_ip_error(r->ip)
				: 0,
			n, r->ip ? find_at(c, d, n) : -1);
	}
	for (int e = 0; e < c->nev; e++) {
		aq_event *ev = &c->ev[e];
		fprintf(lf, "  ev %d: %s gen %d flag %s len %zu at %lld "
			"(placed at %lld)\n", e,
			ev->type == EV_LINE ? "line" : "sig", ev->gen,
			ev->flag == F_SHARED     ? "shared"
			: ev->flag == F_CONSUMED ? "consumed"
						 : "either",
			ev->len, find_at(c, ev->data, ev->len),
			ev->type == EV_LINE ? -1 : ev->placed);
	}
}

static int check_reads_walk(aq_conn *c, unsigned char *pref,
			    unsigned short *skip, int *last_shared,
			    int *last_amb)
{
	walk wk = {0};
	wk.c = c;
	wk.pref = pref;
	wk.skip = skip;
	wk.last_shared = -1;
	wk.last_amb = -1;
	wk.quiet = aq_quiet;
	int ri = 0, rc = 0;
	uint64_t sigend = 0;
	int lastgen = -1;
	bool *done = calloc((size_t)c->nreads + 1, 1);
	if (!done)
		abort();
	for (int e = 0; e <= c->nev && !rc; e++) {
		/* Requests settled before event e, in queue order. */
		for (int i = ri; i < c->nreads && !rc; i++) {
			aq_req *r = c->reads[i];
			if (done[i] || !r->ip)
				continue;
			if (e < c->nev && (r->stamp < 0 || r->stamp > e))
				continue;
			const unsigned char *d;
			size_t n = req_bytes(r, &d);
			/* A nonzero request served while an earlier one with
			 * bytes was still waiting breaks the queue order. */
			for (int j = ri; j < i && n; j++) {
				if (done[j] || !c->reads[j]->ip)
					continue;
				const unsigned char *d2;
				if (req_bytes(c->reads[j], &d2)) {
					violation(c->run,
						  "conn %d: %s (op %d) settled "
						  "before the earlier %s (op %d)",
						  c->idx, kind_name[r->kind],
						  r->op,
						  kind_name[c->reads[j]->kind],
						  c->reads[j]->op);
					rc = -1;
				}
			}
			if (rc)
				break;
			done[i] = true;
			rc = check_req(&wk, r);
		}
		while (ri < c->nreads && (done[ri] || !c->reads[ri]->ip))
			ri++;
		if (rc || e == c->nev)
			break;
		aq_event *ev = &c->ev[e];
		if (ev->type == EV_LINE) {
			char who[64];
			snprintf(who, sizeof(who), "readline signal (event %d)", e);
			if (ev->len > 1 && memchr(ev->data, '\n', ev->len - 1)) {
				violation(c->run,
					  "conn %d: %s holds a delimiter "
					  "before its end",
					  c->idx, who);
				rc = -1;
				break;
			}
			rc = take(&wk, ev->data, ev->len, who);
			continue;
		}
		/* A read-signal chunk: where on the arrival stream? */
		uint64_t a = sigend;
		bool found = false;
		bool shortfirst = ev->gen != lastgen && ev->len < 8;
		unsigned skipn = shortfirst ? skip[e] : 0;
		if (ev->gen == lastgen) {
			found = a + ev->len <= c->sent;
			for (size_t j = 0; found && j < ev->len; j++)
				found = ev->data[j] == sbyte(c->seed, a + j);
		} else {
			if (a < wk.T)
				a = wk.T;
			/* A short first chunk of a connection of the signal
			 * matches at many offsets: place it just before the
			 * next read-signal chunk when the bytes fit there. */
			aq_event *nx = NULL;
			for (int k = e + 1; k < c->nev && !nx; k++)
				if (c->ev[k].type == EV_SIG)
					nx = &c->ev[k];
			/* (also across a reconnection: the signal sees the
			 * arrival order, and a reconnection in the callback
			 * leaves no gap) */
			if (ev->len < 8 && nx && nx->len >= 8 && !skipn) {
				long long na = -1;
				for (uint64_t b = a + ev->len;
				     b + nx->len <= c->sent; b++) {
					size_t j = 0;
					while (j < nx->len &&
					       nx->data[j] == sbyte(c->seed, b + j))
						j++;
					if (j == nx->len) {
						na = (long long)b;
						break;
					}
				}
				if (na >= (long long)ev->len) {
					uint64_t cand = (uint64_t)na - ev->len;
					size_t j = 0;
					while (j < ev->len &&
					       ev->data[j] == sbyte(c->seed, cand + j))
						j++;
					if (j == ev->len && cand >= a) {
						a = cand;
						found = true;
					}
				}
			}
			for (; !found && a + ev->len <= c->sent; a++) {
				size_t j = 0;
				while (j < ev->len &&
				       ev->data[j] == sbyte(c->seed, a + j))
					j++;
				if (j == ev->len && skipn) {
					skipn--; /* a place tried before */
					continue;
				}
				found = j == ev->len;
				if (found)
					break;
			}
			/* Another place further on: a later trial may move
			 * the chunk there. */
			for (uint64_t b = a + 1;
			     found && shortfirst && b + ev->len <= c->sent;
			     b++) {
				size_t j = 0;
				while (j < ev->len &&
				       ev->data[j] == sbyte(c->seed, b + j))
					j++;
				if (j == ev->len) {
					wk.last_amb = e;
					break;
				}
			}
		}
		if (!found || a < wk.T) {
			violation(c->run,
				  "conn %d: read signal (event %d, gen %d, %zu "
				  "bytes) is not the next arrival after offset "
				  "%llu (taken up to %llu): a byte shown twice, "
				  "or lost",
				  c->idx, e, ev->gen, ev->len,
				  (unsigned long long)sigend,
				  (unsigned long long)wk.T);
			rc = -1;
			break;
		}
		sigend = a + ev->len;
		lastgen = ev->gen;
		ev->placed = (long long)a;
		if (ev->flag == F_SHARED)
			continue;
		if (ev->flag == F_CONSUMED && a == wk.T &&
		    !(wk.hi < wk.nh && wk.h[wk.hi].a == a)) {
			wk.T += ev->len;
			continue;
		}
		if (wk.nh == wk.caph) {
			wk.caph = wk.caph ? wk.caph * 2 : 32;
			wk.h = realloc(wk.h, (size_t)wk.caph * sizeof(hole));
			if (!wk.h)
				abort();
		}
		wk.h[wk.nh++] = (hole){a, ev->len, ev->flag == F_EITHER, e};
	}
	/* Skip the holes at the cursor: the delivered frontier. */
	while (!rc && wk.hi < wk.nh && wk.h[wk.hi].a <= wk.T) {
		if (wk.h[wk.hi].a == wk.T)
			wk.T += wk.h[wk.hi].len;
		wk.hi++;
	}
	if (!rc && c->drain_full && wk.T != c->sent) {
		rc = -1;
		violation(c->run,
			  "conn %d: after a full drain %llu of %llu bytes were "
			  "taken: bytes lost",
			  c->idx, (unsigned long long)wk.T,
			  (unsigned long long)c->sent);
	}
	*last_shared = wk.last_shared;
	*last_amb = wk.last_amb;
	if (aq_quiet) {
		free(wk.h);
		free(done);
		return rc;
	}
	vlog(c->run,
	     "conn %d: sent %llu, taken %llu, %d reads, %d signal events, "
	     "full drain %d\n",
	     c->idx, (unsigned long long)c->sent, (unsigned long long)wk.T,
	     c->nreads, c->nev, c->drain_full);
	if ((rc || atomic_load(&c->run->failed)) && c->run->verbose > 1)
		dump_conn(c);
	free(wk.h);
	free(done);
	return rc;
}

/* The read check. A chunk the read signal may or may not have taken alone
 * (a plain thread's call was in flight) is first assumed shared; when the
 * walk fails later, the last such choice is flipped and the walk redone. */
static int check_reads(aq_conn *c)
{
	unsigned char *pref = calloc((size_t)c->nev + 1, 1);
	unsigned short *skip = calloc((size_t)c->nev + 1, sizeof(*skip));
	if (!pref || !skip)
		abort();
	int rc = 0, last = -1, amb = -1;
	for (int tries = 0; tries < 256; tries++) {
		aq_quiet = 1;
		rc = check_reads_walk(c, pref, skip, &last, &amb);
		aq_quiet = 0;
		if (!rc)
			break;
		if (last >= 0 && !pref[last]) {
			pref[last] = 1;
			continue;
		}
		if (amb < 0)
			break;
		/* The next place of the last ambiguous short chunk, the
		 * later ones back at their first (an odometer). */
		skip[amb]++;
		for (int k = amb + 1; k < c->nev; k++)
			skip[k] = 0;
	}
	rc = check_reads_walk(c, pref, skip, &last, &amb); /* reports */
	for (int k = 0; k < c->nev && !aq_quiet; k++)
		if (skip[k])
			vlog(c->run,
			     "conn %d: read signal (event %d, %zu bytes) placed "
			     "at %lld, its candidate %d (not the first match)\n",
			     c->idx, k, c->ev[k].len, c->ev[k].placed,
			     skip[k] + 1);
	free(pref);
	free(skip);
	return rc;
}

static aq_req *wfind(aq_conn *c, int issuer, uint32_t seq)
{
	if (issuer < 0 || issuer >= AQ_ISSUERS || seq >= (uint32_t)c->nw[issuer])
		return NULL;
	return c->w[issuer][seq];
}

static void check_writes(aq_conn *c)
{
	size_t p = 0;
	long long last[AQ_ISSUERS] = {-1, -1, -1};
	while (p < c->rxlen) {
		const unsigned char *h = c->rx + p;
		if (c->rxlen - p < AQ_HDR) {
			/* A cut header: only at the end; find its write by
			 * its fields if they are there. */
			aq_req *r = c->rxlen - p >= 6
					    ? wfind(c, h[1], (uint32_t)h[2] |
								 (uint32_t)h[3] << 8 |
								 (uint32_t)h[4] << 16 |
								 (uint32_t)h[5] << 24)
					    : NULL;
			if (r)
				r->truncated = 1;
			break;
		}
		uint32_t seq, len;
		memcpy(&seq, h + 2, 4);
		memcpy(&len, h + 6, 4);
		aq_req *r = h[0] == 0xA5 ? wfind(c, h[1], seq) : NULL;
		if (!r || r->wlen != AQ_HDR + len ||
		    memcmp(h, r->wdata, AQ_HDR)) {
			violation(c->run,
				  "conn %d: peer received bytes at offset %zu "
				  "that start no write (a write lost, cut or "
				  "doubled before them)",
				  c->idx, p);
			return;
		}
		size_t have = c->rxlen - p;
		if (have < r->wlen) {
			if (memcmp(h, r->wdata, have))
				violation(c->run,
					  "conn %d: write seq %u corrupted",
					  c->idx, seq);
			r->truncated = 1;
			break;
		}
		if (memcmp(h, r->wdata, r->wlen)) {
			violation(c->run, "conn %d: write seq %u corrupted",
				  c->idx, seq);
			return;
		}
		if ((long long)seq <= last[h[1]])
			violation(c->run,
				  "conn %d: write %u of issuer %d arrived after "
				  "its write %lld",
				  c->idx, seq, h[1], last[h[1]]);
		last[h[1]] = seq;
		r->appeared++;
		p += r->wlen;
	}
	for (int k = 0; k < AQ_ISSUERS; k++)
		for (int i = 0; i < c->nw[k]; i++) {
			aq_req *r = c->w[k][i];
			if (!r->ip)
				continue;
			int st = coil_ip_state(r->ip);
			int err = st == COIL_IP_FAILED ? coil_ip_error(r->ip) : 0;
			if (r->appeared > 1)
				violation(c->run,
					  "conn %d: write seq %u (op %d) "
					  "delivered %d times",
					  c->idx, r->wseq, r->op, r->appeared);
			if (st == COIL_IP_FINISHED) {
				if ((size_t)coil_ip_int(r->ip) != r->wlen)
					violation(c->run,
						  "conn %d: write finished with "
						  "%lld, length %zu",
						  c->idx,
						  (long long)coil_ip_int(r->ip),
						  r->wlen);
				/* TCP: closing with unread input resets the
				 * connection and the kernel drops its send
				 * queue (RFC 2525 2.17), so a finished write
				 * may never arrive once the sequence closed
				 * or released the channel. */
				bool tcp_cut = c->tcp && (c->closed_by_us ||
							  c->released);
				if (!r->appeared && !c->peer_reset &&
				    !c->rx_over && !c->peer_timeout && !tcp_cut)
					violation(c->run,
						  "conn %d: write seq %u (op %d, "
						  "%s) finished but never "
						  "reached the peer",
						  c->idx, r->wseq, r->op,
						  r->issuer ? "plain thread"
							    : "home");
			} else if (st == COIL_IP_FAILED && r->appeared) {
				violation(c->run,
					  "conn %d: write seq %u (op %d) failed "
					  "with %d%s but reached the peer whole",
					  c->idx, r->wseq, r->op, err,
					  atomic_load(&r->aborted)
						  ? " after an abort"
						  : "");
			}
		}
}

static void check_handles(aq_run *run)
{
	for (int i = 0; i < run->nreqs; i++) {
		aq_req *r = run->reqs[i];
		if (!r->ip)
			continue;
		if (coil_ip_state(r->ip) == COIL_IP_PENDING)
			violation(run,
				  "conn %d: %s handle (op %d%s, %s, channel %d) "
				  "still pending after coil_loop_free",
				  r->conn->idx, kind_name[r->kind], r->op,
				  r->op < 0 ? " = final drain" : "",
				  r->issuer ? "plain thread" : "home",
				  chan_index(r->conn, r->ch));
		int d = atomic_load(&r->done);
		if (d != 1)
			violation(run,
				  "conn %d: %s handle (op %d) callback ran %d "
				  "times",
				  r->conn->idx, kind_name[r->kind], r->op, d);
		if (atomic_load(&r->offhome))
			violation(run,
				  "conn %d: %s handle (op %d) callback ran off "
				  "its home worker",
				  r->conn->idx, kind_name[r->kind], r->op);
	}
}

/* ---- one run ---- */

static void unobserved_quiet(int err, const char *msg, void *ud)
{
	(void)err;
	(void)msg;
	(void)ud;
}

int apiseq_run(const uint8_t *data, size_t len, int verbose, char *err,
	       size_t errlen)
{
	static const size_t qsizes[4] = {0, 1024, 4096, 65536};
	aq_run *run = calloc(1, sizeof(*run));
	if (!run)
		return 1;
	if (err && errlen)
		err[0] = 0;
	run->err = err;
	run->errlen = errlen;
	run->verbose = verbose;
	run->logf = stderr;
	/* COIL_APISEQ_LOGFAIL=prefix: log verbosely to memory and write the
	 * log of a failing run to prefix.<n> (long unattended runs). */
	const char *logfail = getenv("COIL_APISEQ_LOGFAIL");
	char *logbuf = NULL;
	size_t loglen = 0;
	if (logfail && *logfail) {
		FILE *m = open_memstream(&logbuf, &loglen);
		if (m) {
			run->logf = m;
			run->verbose = 2;
		}
	}
	run->gates = gates_get();
	aq_current = run;
	pthread_mutex_init(&run->mu, NULL);
	pthread_mutex_init(&run->logmu, NULL);
	coil_set_unobserved_handler(unobserved_quiet, NULL);

	uint8_t cfg[8] = {0};
	for (size_t i = 0; i < 8 && i < len; i++)
		cfg[i] = data[i];
	const uint8_t *ops = len > 8 ? data + 8 : NULL;
	size_t nops = len > 8 ? (len - 8) / 3 : 0;
	if (nops > AQ_MAXOPS)
		nops = AQ_MAXOPS;

	size_t live0 = coil_live_channels();
	size_t alloc0 = coil__alloc_live ? coil__alloc_live() : 0;

	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 2;
	/* Few, small provided buffers: the ENOBUFS and pause paths. */
	o.buf_count = (cfg[5] & 1) && !(run->gates & G_SMALL_BUFFERS) ? 16 : 0;
	o.buf_size = (cfg[5] & 2) && !(run->gates & G_SMALL_BUFFERS) ? 512 : 0;
	/* The ring features' fallbacks and options: no fixed-file table,
	 * batched waits (a 100 us min-wait), no DEFER_TASKRUN. */
	if (cfg[5] & 32)
		o.flags |= COIL_LOOP_NO_FIXED_FILES;
	if (cfg[5] & 64)
		o.batch_wait_us = 100;
	if (cfg[5] & 128)
		o.flags |= COIL_LOOP_NO_DEFER_TASKRUN;
	/* Whole-buffer receives and no per-receive cap (config byte 1's
	 * high bits; its low four pick the queue sizes). */
	if ((cfg[1] & 16) && !(run->gates & G_PBUF_INC))
		o.flags |= COIL_LOOP_PBUF_INC;
	if (cfg[1] & 32)
		o.flags |= COIL_LOOP_NO_RECV_CAP;
	vlog(run,
	     "apiseq: buf_count %u buf_size %u sndbuf %d thread refs %d "
	     "loop flags 0x%x batch_wait_us %u\n",
	     o.buf_count, o.buf_size, (cfg[5] & 4) ? 4096 : 0, !!(cfg[5] & 16),
	     o.flags, o.batch_wait_us);
	int rc = coil_loop_new(&run->loop, &o);
	if (rc) {
		snprintf(err, errlen, "coil_loop_new: %s", coil_strerror(rc));
		free(run);
		return 1;
	}

	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		c->run = run;
		c->idx = i;
		c->peer_fd = -1;
		pthread_mutex_init(&c->mu, &ma);
		c->tcp = (cfg[0] >> i) & 1;
		c->close_on_eof = !((cfg[0] >> (2 + i)) & 1);
		c->qsize = qsizes[(cfg[1] >> (2 * i)) & 3];
		c->plan = (uint64_t)cfg[2 + i] * 256 + (cfg[4] & 0x7f);
		c->seed = mix64(cfg[6] + 977u * cfg[7] + (uint64_t)i * 7919 + 1);
		c->peer_rng = (uint32_t)c->seed | 1;
		c->peer_slow = (cfg[4] >> 7) & 1;
		c->rx = malloc(AQ_RXCAP);
		if (!c->rx)
			abort();
		int fds[2];
		if (c->tcp)
			rc = tcp_pair(fds);
		else
			rc = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
					fds)
				     ? -errno
				     : 0;
		if (rc) {
			violation(run, "socket pair: %s", coil_strerror(rc));
			c->released = 1;
			continue;
		}
		c->peer_fd = fds[1];
		rc = coil_socket_wrap(run->loop, fds[0], &c->ch);
		if (rc) {
			violation(run, "coil_socket_wrap: %s", coil_strerror(rc));
			close(fds[0]);
			c->released = 1;
			continue;
		}
		c->chs[c->nchs++] = c->ch;
		c->home = coil_channel_worker(c->ch);
		if (c->qsize)
			coil_channel_set_queue_size(c->ch, c->qsize);
		coil_channel_set_close_on_eof(c->ch, c->close_on_eof);
		if ((cfg[5] & 4) &&
		    !(c->tcp && (run->gates & G_TCP_SMALL_SNDBUF)))
			coil_socket_set_buffer_size(c->ch, 4096);
		c->drain_done = coil_ip_new(run->loop);
		if (!c->drain_done)
			abort();
	}
	pthread_mutexattr_destroy(&ma);
	vlog(run,
	     "apiseq: conn0 %s qsize %zu plan %llu eofclose %d; conn1 %s "
	     "qsize %zu plan %llu eofclose %d; gates %s\n",
	     run->conns[0].tcp ? "tcp" : "unix", run->conns[0].qsize,
	     (unsigned long long)run->conns[0].plan, run->conns[0].close_on_eof,
	     run->conns[1].tcp ? "tcp" : "unix", run->conns[1].qsize,
	     (unsigned long long)run->conns[1].plan, run->conns[1].close_on_eof,
	     apiseq_gates());

	/* Split the operations: main thread (home posts), plain threads,
	 * callbacks. */
	size_t nmain = 0;
	uint8_t (*mainops)[3] = calloc(nops + 1, 3);
	if (!mainops)
		abort();
	for (size_t i = 0; i < nops; i++) {
		const uint8_t *b = ops + 3 * i;
		int ctx = b[0] & 3, ci = (b[0] >> 2) & 1;
		int op = op_table[b[1] & 31];
		int arg = b[2];
		if (op == OP_RELEASE && (b[1] >> 5) != 7)
			op = OP_READ; /* rare: it ends the connection */
		if (op == OP_CLOSE && (b[1] >> 5) < 4)
			op = OP_WRITE;
		if (op == OP_CLOSE && (b[1] >> 5) == 7 && arg >= 250)
			op = OP_FREE;
		aq_conn *c = &run->conns[ci];
		if (ctx == 0 || (op == OP_FREE && ctx != 3)) {
			mainops[nmain][0] = (uint8_t)ci;
			mainops[nmain][1] = (uint8_t)op;
			mainops[nmain][2] = (uint8_t)arg;
			nmain++;
		} else if (ctx == 3) {
			c->cbops[c->ncb][0] = (uint8_t)op;
			c->cbops[c->ncb][1] = (uint8_t)arg;
			c->ncb++;
		} else {
			int k = ctx - 1;
			uint8_t *t = run->tops[k][run->ntops[k]++];
			t[0] = (uint8_t)ci;
			t[1] = (uint8_t)op;
			t[2] = (uint8_t)arg;
		}
	}

	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		if (c->peer_fd < 0)
			continue;
		if (pthread_create(&c->peer, NULL, peer_main, c) == 0)
			c->peer_started = 1;
	}
	/* Plain threads that hold their own references (coil_channel_ref,
	 * contract 4): a release by the sequence is then not the last one. */
	for (int i = 0; i < AQ_CONNS && (cfg[5] & 16); i++) {
		aq_conn *c = &run->conns[i];
		if (!c->ch)
			continue;
		for (int k = 0; k < AQ_THREADS; k++) {
			if (coil_channel_ref(c->ch) != c->ch)
				violation(run, "coil_channel_ref returned another "
					       "channel");
			c->refs++;
		}
	}
	pthread_t th[AQ_THREADS];
	aq_thread ta[AQ_THREADS];
	for (int k = 0; k < AQ_THREADS; k++) {
		ta[k].run = run;
		ta[k].k = k;
		if (pthread_create(&th[k], NULL, user_thread, &ta[k]))
			abort();
	}
	int freed_early = 0;
	for (size_t i = 0; i < nmain; i++) {
		aq_conn *c = &run->conns[mainops[i][0]];
		if (mainops[i][1] == OP_FREE) {
			vlog(run, "main: loop_free now\n");
			freed_early = 1;
			break;
		}
		aq_task *t = calloc(1, sizeof(*t));
		if (!t)
			abort();
		t->c = c;
		t->op = mainops[i][1];
		t->arg = mainops[i][2];
		int yield = t->arg & 4;
		if (coil_loop_post(run->loop, c->home, home_task, t))
			free(t);
		if (yield)
			sched_yield();
	}
	for (int k = 0; k < AQ_THREADS; k++)
		pthread_join(th[k], NULL);
	free(mainops);

	if (!freed_early) {
		for (int w = 0; w < 2; w++)
			if (barrier(run, w))
				violation(run, "barrier on worker %d timed out", w);
		for (int i = 0; i < AQ_CONNS; i++) {
			aq_conn *c = &run->conns[i];
			if (!c->drain_done)
				continue;
			if (coil_loop_post(run->loop, c->home, drain_task, c))
				violation(run, "post drain failed");
		}
		for (int i = 0; i < AQ_CONNS; i++) {
			aq_conn *c = &run->conns[i];
			int wrc = c->drain_done
					  ? coil_ip_wait(c->drain_done, 20000)
					  : 0;
			if (wrc) {
				pthread_mutex_lock(&c->mu);
				violation(run,
					  "conn %d: the final drain did not end "
					  "(%d) in 20 s (a read never settled or "
					  "the stream never ended): peer sent "
					  "%llu of %llu, received %llu; channel "
					  "alive %d, read queue %zu, write queue "
					  "%zu, %d drain reads",
					  i, wrc,
					  (unsigned long long)atomic_load(
						  &c->sent_live),
					  (unsigned long long)c->plan,
					  (unsigned long long)atomic_load(
						  &c->rx_live),
					  coil_channel_alive(c->ch),
					  coil_channel_read_queue_used(c->ch),
					  coil_channel_write_queue_used(c->ch),
					  c->drain_reads);
				c->drain_full = 0;
				pthread_mutex_unlock(&c->mu);
			}
		}
		/* Release the channels still held, on their home worker
		 * (their closed callbacks then do not run), or leave them
		 * to the loop's stop. */
		for (int i = 0; i < AQ_CONNS && (cfg[5] & 8); i++) {
			aq_conn *c = &run->conns[i];
			aq_task *t = calloc(1, sizeof(*t));
			if (!t)
				abort();
			t->c = c;
			t->op = OP_RELEASE;
			if (!c->ch || coil_loop_post(run->loop, c->home,
						     home_task, t))
				free(t);
		}
		for (int w = 0; w < 2 && (cfg[5] & 8); w++)
			barrier(run, w);
	}
	/* Old channels left by a steal: released before the free. */
	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		for (int j = 0; j < c->nchs; j++)
			if (c->chs[j] != c->ch)
				coil_channel_release(c->chs[j]);
	}
	atomic_store(&run->stopping, 1);
	rc = coil_loop_free(run->loop);
	if (rc)
		violation(run, "coil_loop_free: %d", rc);
	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		if (c->peer_started)
			pthread_join(c->peer, NULL);
		if (c->peer_fd >= 0)
			close(c->peer_fd);
		if (c->peer_timeout)
			violation(run,
				  "conn %d: the peer saw no end of stream in 60 "
				  "s: the channel's descriptor stayed open",
				  i);
	}

	/* The oracle. */
	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		if (!c->nchs)
			continue;
		if (c->drain_done && coil_ip_state(c->drain_done) != COIL_IP_FINISHED)
			c->drain_full = 0;
		if (freed_early) {
			c->drain_full = 0;
			c->closed_by_us = 1; /* the stop closed it at once */
		}
		check_reads(c);
		check_writes(c);
		for (int j = 0; j < c->nchs; j++) {
			if (c->closed_count[j] > 1)
				violation(run, "conn %d: closed fired %d times",
					  i, c->closed_count[j]);
		}
	}
	check_handles(run);

	for (int i = 0; i < run->nreqs; i++) {
		aq_req *r = run->reqs[i];
		if (r->ip)
			coil_ip_unref(r->ip);
		free(r->buf);
		free(r->wdata);
		free(r);
	}
	for (int i = 0; i < AQ_CONNS; i++) {
		aq_conn *c = &run->conns[i];
		if (c->drain_done)
			coil_ip_unref(c->drain_done);
		for (int e = 0; e < c->nev; e++)
			free(c->ev[e].data);
		free(c->ev);
		while (c->subs) {
			aq_sub *s = c->subs;
			c->subs = s->next;
			free(s);
		}
		free(c->rx);
		pthread_mutex_destroy(&c->mu);
	}
	size_t live1 = coil_live_channels();
	if (live1 != live0)
		violation(run, "%zu channels still alive after coil_loop_free "
			       "(%zu before)",
			  live1, live0);
	if (coil__alloc_live) {
		size_t a1 = coil__alloc_live();
		if (a1 != alloc0)
			violation(run,
				  "coil allocations: %zu live after the run, %zu "
				  "before (leak)",
				  a1, alloc0);
	}
	coil_set_unobserved_handler(NULL, NULL);
	int failed = atomic_load(&run->failed);
	if (run->logf != stderr) {
		static atomic_int nlog;
		if (failed) {
			fprintf(run->logf, "FAILED: %s\n", err ? err : "");
			fflush(run->logf);
			char path[512];
			snprintf(path, sizeof(path), "%s.%d", logfail,
				 atomic_fetch_add(&nlog, 1));
			FILE *f = fopen(path, "w");
			if (f) {
				fwrite(logbuf, 1, loglen, f);
				fclose(f);
			}
		}
		fclose(run->logf);
		free(logbuf);
	}
	pthread_mutex_destroy(&run->mu);
	pthread_mutex_destroy(&run->logmu);
	free(run);
	return failed ? 1 : 0;
}
