/* SPDX-License-Identifier: MIT */
/* Tests for coil_channel over socketpairs, pipes and TCP loopback: reads,
 * readline, read_exact, flow control, writes, close, foreign threads. */
#include "helpers.h"

#include <fcntl.h>
#include <stdint.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static coil_loop_t *L;

/* A channel on one end of a socketpair; *peer is the raw other end. */
static coil_channel_t *pair(int *peer)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	coil_channel_t *ch = NULL;
	T_ASSERT_OK(coil_channel_wrap(L, sv[0], COIL_IO_READ | COIL_IO_WRITE, &ch));
	*peer = sv[1];
	return ch;
}

/* Waits and returns the bytes as a NUL-terminated malloc'ed string. */
static char *wait_str(coil_ip_t *ip, size_t *len)
{
	CU_ASSERT_EQUAL(t_wait(ip), 0);
	size_t n = 0;
	const char *b = coil_ip_bytes(ip, &n);
	char *s = malloc(n + 1);
	memcpy(s, b ? b : "", n);
	s[n] = 0;
	if (len)
		*len = n;
	coil_ip_unref(ip);
	return s;
}

static void test_read_basic(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	CU_ASSERT(coil_channel_alive(ch));
	CU_ASSERT(coil_channel_fileno(ch) >= 0);
	coil_ip_t *ip = coil_channel_read(ch);
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_PENDING);
	T_ASSERT_OK(t_write_all(peer, "hello", 5));
	char *s = wait_str(ip, NULL);
	CU_ASSERT_STRING_EQUAL(s, "hello");
	free(s);
	/* chunk_size bounds a read. */
	T_ASSERT_OK(coil_channel_set_chunk_size(ch, 3));
	T_ASSERT_OK(t_write_all(peer, "abcdefg", 7));
	usleep(20000);
	s = wait_str(coil_channel_read(ch), NULL);
	CU_ASSERT_STRING_EQUAL(s, "abc");
	free(s);
	s = wait_str(coil_channel_read(ch), NULL);
	CU_ASSERT_STRING_EQUAL(s, "def");
	free(s);
	s = wait_str(coil_channel_read(ch), NULL);
	CU_ASSERT_STRING_EQUAL(s, "g");
	free(s);
	/* The peer closes: a read finishes with 0 bytes, the channel closes
	 * (kaa: expected = 0), and later reads also get 0 bytes. */
	close(peer);
	size_t n = 1;
	s = wait_str(coil_channel_read(ch), &n);
	CU_ASSERT_EQUAL(n, 0);
	free(s);
	s = wait_str(coil_channel_read(ch), &n);
	CU_ASSERT_EQUAL(n, 0);
	free(s);
	coil_channel_release(ch);
}

static void test_readline_basic(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	coil_ip_t *a = coil_channel_readline(ch);
	coil_ip_t *b = coil_channel_readline(ch);
	coil_ip_t *c = coil_channel_readline(ch);
	T_ASSERT_OK(t_write_all(peer, "one\ntw", 6));
	char *s = wait_str(a, NULL);
	CU_ASSERT_STRING_EQUAL(s, "one\n");
	free(s);
	CU_ASSERT_EQUAL(coil_ip_wait(b, 50), -ETIMEDOUT);
	T_ASSERT_OK(t_write_all(peer, "o\nthree", 7));
	s = wait_str(b, NULL);
	CU_ASSERT_STRING_EQUAL(s, "two\n");
	free(s);
	/* At EOF, the partial line, then empty. */
	shutdown(peer, SHUT_WR);
	s = wait_str(c, NULL);
	CU_ASSERT_STRING_EQUAL(s, "three");
	free(s);
	size_t n = 1;
	s = wait_str(coil_channel_readline(ch), &n);
	CU_ASSERT_EQUAL(n, 0);
	free(s);
	close(peer);
	coil_channel_release(ch);
}

/* A set of delimiters: \r or \n, leftmost match wins. */
/* Inside a read's callback (readline, read, read_exact; issued before the
 * bytes came or on the home worker after they were queued) the read queue's
 * size is what is left after the read took its bytes. (The session-7 INC
 * oracle saw a stale size in a read's callback once, in a shape not
 * reproduced here; this guards the simple shapes.) */
struct rq_seen {
	coil_channel_t *ch;
	_Atomic long used;
	_Atomic int readable;
};

static void rq_seen_cb(coil_ip_t *ip, void *ud)
{
	struct rq_seen *r = ud;
	atomic_store(&r->used, (long)coil_channel_read_queue_used(r->ch));
	atomic_store(&r->readable, coil_channel_readable(r->ch));
}

struct rq_task {
	struct rq_seen *r;
	int kind;
	coil_ip_t *ip;
	coil_ip_t *done;
};

static void rq_issue_task(void *p)
{
	struct rq_task *t = p;
	coil_channel_t *ch = t->r->ch;
	t->ip = t->kind == 0 ? coil_channel_readline(ch)
		: t->kind == 1 ? coil_channel_read(ch)
			       : coil_channel_read_exact(ch, 4);
	coil_ip_on_done(t->ip, rq_seen_cb, t->r);
	coil_ip_finish_int(t->done, 0);
}

static void test_read_queue_used_in_callback(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	T_ASSERT_OK(coil_channel_set_chunk_size(ch, 4));
	for (int round = 0; round < 30; round++) {
		struct rq_seen r = {.ch = ch, .used = -1, .readable = -1};
		/* One write: "one\n" serves the read, "tail" stays queued. */
		coil_ip_t *a = round % 3 == 0 ? coil_channel_readline(ch)
			       : round % 3 == 1 ? coil_channel_read(ch)
						: coil_channel_read_exact(ch, 4);
		T_ASSERT_OK(coil_ip_on_done(a, rq_seen_cb, &r));
		T_ASSERT_OK(t_write_all(peer, "one\ntail", 8));
		char *s = wait_str(a, NULL);
		CU_ASSERT_STRING_EQUAL(s, "one\n");
		free(s);
		for (int i = 0; i < 5000 && atomic_load(&r.used) < 0; i++)
			usleep(1000);
		CU_ASSERT_EQUAL(atomic_load(&r.used), 4);
		CU_ASSERT_EQUAL(atomic_load(&r.readable), 1);
		/* From this thread, once the worker is done: the same. */
		for (int i = 0; i < 5000 && coil_channel_read_queue_used(ch) != 4;
		     i++)
			usleep(1000);
		CU_ASSERT_EQUAL(coil_channel_read_queue_used(ch), 4);
		s = wait_str(coil_channel_read(ch), NULL);
		CU_ASSERT_STRING_EQUAL(s, "tail");
		free(s);

		/* The bytes queued first, the read issued on the worker. */
		T_ASSERT_OK(t_write_all(peer, "one\ntail", 8));
		for (int i = 0; i < 5000 && coil_channel_read_queue_used(ch) != 8;
		     i++)
			usleep(1000);
		struct rq_seen r2 = {.ch = ch, .used = -1, .readable = -1};
		struct rq_task t = {.r = &r2, .kind = round % 3,
				    .done = coil_ip_new(L)};
		CU_ASSERT_PTR_NOT_NULL_FATAL(t.done);
		T_ASSERT_OK(coil_loop_post(L, coil_channel_worker(ch),
					   rq_issue_task, &t));
		T_ASSERT_OK(t_wait(t.done));
		coil_ip_unref(t.done);
		s = wait_str(t.ip, NULL);
		CU_ASSERT_STRING_EQUAL(s, "one\n");
		free(s);
		for (int i = 0; i < 5000 && atomic_load(&r2.used) < 0; i++)
			usleep(1000);
		CU_ASSERT_EQUAL(atomic_load(&r2.used), 4);
		s = wait_str(coil_channel_read(ch), NULL);
		CU_ASSERT_STRING_EQUAL(s, "tail");
		free(s);
	}
	close(peer);
	coil_channel_release(ch);
}

static void test_readline_delimiter_set(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	const void *d[] = {"\r\n", "\r", "\n"};
	size_t lens[] = {2, 1, 1};
	T_ASSERT_OK(coil_channel_set_delimiters(ch, d, lens, 3));
	T_ASSERT_OK(t_write_all(peer, "a\rb\nc\r\nd\n", 9));
	const char *want[] = {"a\r", "b\n", "c\r\n", "d\n"};
	for (int i = 0; i < 4; i++) {
		char *s = wait_str(coil_channel_readline(ch), NULL);
		CU_ASSERT_STRING_EQUAL(s, want[i]);
		free(s);
	}
	CU_ASSERT_EQUAL(coil_channel_set_delimiters(ch, d, lens, 0), -EINVAL);
	CU_ASSERT_EQUAL(coil_channel_set_delimiter(ch, ""), -EINVAL);
	close(peer);
	coil_channel_release(ch);
}

/* The acceptance test: 10k lines with 1..20-byte delimiters written in
 * random 1..20-byte chunks arrive exact. */
struct writer_arg {
	int fd;
	const char *buf;
	size_t len;
	unsigned seed;
};

static void *chunk_writer(void *arg)
{
	struct writer_arg *w = arg;
	size_t off = 0;
	unsigned seed = w->seed;
	while (off < w->len) {
		size_t n = 1 + (size_t)(rand_r(&seed) % 20);
		if (n > w->len - off)
			n = w->len - off;
		if (t_write_all(w->fd, w->buf + off, n))
			break;
		off += n;
	}
	return NULL;
}

static void test_readline_random_chunks(void)
{
	for (size_t dl = 1; dl <= 20; dl += 19) {
		int peer;
		coil_channel_t *ch = pair(&peer);
		char delim[21];
		for (size_t i = 0; i < dl; i++)
			delim[i] = (char)('#' + i % 3);
		delim[dl] = 0;
		T_ASSERT_OK(coil_channel_set_delimiter(ch, delim));
		/* Lines of letters only, so the delimiter never occurs early. */
		size_t cap = 10000 * (40 + dl), len = 0;
		char *buf = malloc(cap);
		size_t *ends = malloc(10000 * sizeof(size_t));
		unsigned seed = 7;
		for (int i = 0; i < 10000; i++) {
			size_t n = (size_t)(rand_r(&seed) % 40);
			for (size_t k = 0; k < n; k++)
				buf[len++] = (char)('a' + rand_r(&seed) % 26);
			memcpy(buf + len, delim, dl);
			len += dl;
			ends[i] = len;
		}
		struct writer_arg wa = {peer, buf, len, 11};
		pthread_t th;
		pthread_create(&th, NULL, chunk_writer, &wa);
		size_t pos = 0;
		int bad = 0;
		for (int i = 0; i < 10000; i++) {
			coil_ip_t *ip = coil_channel_readline(ch);
			if (t_wait(ip)) {
				bad++;
				coil_ip_unref(ip);
				break;
			}
			size_t n;
			const char *b = coil_ip_bytes(ip, &n);
			if (n != ends[i] - pos || memcmp(b, buf + pos, n))
				bad++;
			pos = ends[i];
			coil_ip_unref(ip);
		}
		CU_ASSERT_EQUAL(bad, 0);
		pthread_join(th, NULL);
		free(buf);
		free(ends);
		close(peer);
		coil_channel_release(ch);
	}
}

/* A line longer than queue_size comes in queue_size pieces, no byte lost. */
static void test_readline_over_queue_size(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	T_ASSERT_OK(coil_channel_set_queue_size(ch, 1000));
	char big[2601];
	for (int i = 0; i < 2600; i++)
		big[i] = (char)('a' + i % 26);
	big[2600] = '\n';
	T_ASSERT_OK(t_write_all(peer, big, sizeof(big)));
	size_t total = 0, n;
	char *got = malloc(4000);
	while (total < sizeof(big)) {
		char *s = wait_str(coil_channel_readline(ch), &n);
		CU_ASSERT(n <= 1000);
		CU_ASSERT(n > 0);
		if (!n) {
			free(s);
			break;
		}
		memcpy(got + total, s, n);
		total += n;
		free(s);
	}
	CU_ASSERT_EQUAL(total, sizeof(big));
	CU_ASSERT_EQUAL(memcmp(got, big, sizeof(big)), 0);
	free(got);
	close(peer);
	coil_channel_release(ch);
}

static void test_read_exact_and_eof(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	coil_ip_t *a = coil_channel_read_exact(ch, 4);
	coil_ip_t *b = coil_channel_read_exact(ch, 10);
	T_ASSERT_OK(t_write_all(peer, "12", 2));
	CU_ASSERT_EQUAL(coil_ip_wait(a, 50), -ETIMEDOUT);
	T_ASSERT_OK(t_write_all(peer, "345678", 6));
	char *s = wait_str(a, NULL);
	CU_ASSERT_STRING_EQUAL(s, "1234");
	free(s);
	close(peer);
	/* EOF before 10 bytes: fails with COIL_EOF and the partial bytes. */
	T_ASSERT_OK(t_wait(b));
	CU_ASSERT_EQUAL(coil_ip_error(b), COIL_EOF);
	size_t n;
	const char *p = coil_ip_bytes(b, &n);
	CU_ASSERT_EQUAL(n, 4);
	CU_ASSERT_EQUAL(memcmp(p, "5678", 4), 0);
	coil_ip_unref(b);
	/* n == 0 finishes at once; too large is refused. */
	coil_ip_t *z = coil_channel_read_exact(ch, 0);
	T_ASSERT_OK(t_wait(z));
	CU_ASSERT_EQUAL(coil_ip_state(z), COIL_IP_FINISHED);
	coil_ip_unref(z);
	z = coil_channel_read_exact(ch, (size_t)1 << 40);
	T_ASSERT_OK(t_wait(z));
	CU_ASSERT_EQUAL(coil_ip_error(z), -EMSGSIZE);
	coil_ip_unref(z);
	coil_channel_release(ch);
}

static void test_readinto_readv(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	char buf[8] = {0};
	coil_ip_t *a = coil_channel_readinto(ch, buf, 6);
	size_t sizes[] = {3, 4, 5};
	coil_ip_t *b = coil_channel_readv(ch, sizes, 3);
	T_ASSERT_OK(t_write_all(peer, "abc", 3));
	T_ASSERT_OK(t_write_all(peer, "defGHIJKLM", 10));
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_int(a), 6);
	CU_ASSERT_EQUAL(memcmp(buf, "abcdef", 6), 0);
	coil_ip_unref(a);
	/* readv: EOF after 7 of 12 bytes: 3 full + 4 full, the third missing. */
	close(peer);
	T_ASSERT_OK(t_wait(b));
	coil_readv_t *v = coil_ip_ptr(b);
	CU_ASSERT_PTR_NOT_NULL_FATAL(v);
	CU_ASSERT_EQUAL(v->count, 2);
	CU_ASSERT_EQUAL(v->iov[0].iov_len, 3);
	CU_ASSERT_EQUAL(memcmp(v->iov[0].iov_base, "GHI", 3), 0);
	CU_ASSERT_EQUAL(v->iov[1].iov_len, 4);
	CU_ASSERT_EQUAL(memcmp(v->iov[1].iov_base, "JKLM", 4), 0);
	coil_ip_unref(b);
	coil_channel_release(ch);
}

/* The read signal sees every chunk without stealing from read(). */
struct sig {
	_Atomic size_t bytes;
	_Atomic int closed, expected;
	_Atomic int lines;
	char last[64];
};

static void on_read_cb(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	struct sig *s = ud;
	atomic_fetch_add(&s->bytes, n);
}

static void on_closed_cb(coil_channel_t *ch, int expected, void *ud)
{
	struct sig *s = ud;
	atomic_store(&s->expected, expected);
	atomic_fetch_add(&s->closed, 1);
}

static void on_line_cb(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	struct sig *s = ud;
	size_t m = n < 63 ? n : 63;
	memcpy(s->last, d, m);
	s->last[m] = 0;
	atomic_fetch_add(&s->lines, 1);
}

static void test_signals(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	struct sig s = {0};
	T_ASSERT_OK(coil_channel_on_read(ch, on_read_cb, &s));
	T_ASSERT_OK(coil_channel_on_closed(ch, on_closed_cb, &s));
	coil_ip_t *r = coil_channel_read(ch);
	T_ASSERT_OK(t_write_all(peer, "12345", 5));
	char *str = wait_str(r, NULL);
	CU_ASSERT_STRING_EQUAL(str, "12345");
	free(str);
	for (int i = 0; i < 1000 && atomic_load(&s.bytes) < 5; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.bytes), 5);
	/* With only the signal connected, bytes flow to it and do not pile
	 * up in the read queue. */
	T_ASSERT_OK(t_write_all(peer, "abc", 3));
	for (int i = 0; i < 1000 && atomic_load(&s.bytes) < 8; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.bytes), 8);
	CU_ASSERT_EQUAL(coil_channel_read_queue_used(ch), 0);
	/* readline signal, exclusive with readline(). */
	T_ASSERT_OK(coil_channel_on_read(ch, NULL, NULL));
	T_ASSERT_OK(coil_channel_on_readline(ch, on_line_cb, &s));
	coil_ip_t *rl = coil_channel_readline(ch);
	T_ASSERT_OK(t_wait(rl));
	CU_ASSERT_EQUAL(coil_ip_error(rl), -EBUSY);
	coil_ip_unref(rl);
	T_ASSERT_OK(t_write_all(peer, "line one\nline two\n", 18));
	for (int i = 0; i < 1000 && atomic_load(&s.lines) < 2; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.lines), 2);
	CU_ASSERT_STRING_EQUAL(s.last, "line two\n");
	T_ASSERT_OK(coil_channel_on_readline(ch, NULL, NULL));
	rl = coil_channel_readline(ch);
	CU_ASSERT_EQUAL(coil_channel_on_readline(ch, on_line_cb, &s), -EBUSY);
	T_ASSERT_OK(t_write_all(peer, "x\n", 2));
	str = wait_str(rl, NULL);
	CU_ASSERT_STRING_EQUAL(str, "x\n");
	free(str);
	/* Unexpected close by the peer: closed(expected = 0), once. The end of
	 * stream is noticed by a read (nobody reading = nothing consumed, kaa's
	 * flow control). */
	close(peer);
	free(wait_str(coil_channel_read(ch), NULL));
	for (int i = 0; i < 1000 && !atomic_load(&s.closed); i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.closed), 1);
	CU_ASSERT_EQUAL(atomic_load(&s.expected), 0);
	CU_ASSERT(!coil_channel_alive(ch));
	coil_channel_close(ch, 0);
	usleep(10000);
	CU_ASSERT_EQUAL(atomic_load(&s.closed), 1);
	coil_channel_release(ch);
}

static void test_write_order_and_writev(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	coil_ip_t *ips[100];
	char expect[100 * 8], got[100 * 8];
	size_t len = 0;
	for (int i = 0; i < 100; i++) {
		char tmp[16];
		snprintf(tmp, sizeof(tmp), "%07d,", i % 10000000);
		memcpy(expect + len, tmp, 8);
		len += 8;
		if (i % 2) {
			ips[i] = coil_channel_write(ch, tmp, 8);
		} else {
			struct iovec iov[2] = {{tmp, 3}, {tmp + 3, 5}};
			ips[i] = coil_channel_writev(ch, iov, 2);
		}
	}
	T_ASSERT_OK(t_read_exact(peer, got, len));
	CU_ASSERT_EQUAL(memcmp(got, expect, len), 0);
	for (int i = 0; i < 100; i++) {
		T_ASSERT_OK(t_wait(ips[i]));
		CU_ASSERT_EQUAL(coil_ip_int(ips[i]), 8);
		coil_ip_unref(ips[i]);
	}
	/* Empty write: 0 at once. */
	coil_ip_t *e = coil_channel_write(ch, "", 0);
	T_ASSERT_OK(t_wait(e));
	CU_ASSERT_EQUAL(coil_ip_int(e), 0);
	coil_ip_unref(e);
	close(peer);
	coil_channel_release(ch);
}

static _Atomic int owned_freed;
static void owned_free(void *p)
{
	free(p);
	atomic_fetch_add(&owned_freed, 1);
}

static void test_write_owned_and_queue_full(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	size_t big = 1 << 20;
	T_ASSERT_OK(coil_channel_set_queue_size(ch, big));
	char *data = malloc(big);
	memset(data, 'x', big);
	atomic_store(&owned_freed, 0);
	coil_ip_t *w1 = coil_channel_write_owned(ch, data, big, owned_free);
	CU_ASSERT_PTR_NOT_NULL_FATAL(w1);
	/* kaa's bound: a write that would take the queue past queue_size
	 * fails whole with nothing queued, even into an empty queue. A
	 * channel without a descriptor keeps its queue, so the sizes are
	 * exact. */
	static char small[4097];
	coil_channel_t *q;
	T_ASSERT_OK(coil_channel_new(L, &q));
	T_ASSERT_OK(coil_channel_set_queue_size(q, 4096));
	coil_ip_t *huge = coil_channel_write(q, small, 4097);
	CU_ASSERT_EQUAL(coil_ip_error(huge), -ENOBUFS);
	CU_ASSERT_PTR_NOT_NULL(strstr(coil_ip_message(huge), "queue_size"));
	coil_ip_unref(huge);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 0);
	coil_ip_t *fits = coil_channel_write(q, small, 4000);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 4000);
	coil_ip_t *w2 = coil_channel_write(q, "more more more more more more "
					      "more more more more more more "
					      "more more more more more more "
					      "more more more more more more",
					   100);
	CU_ASSERT_EQUAL(coil_ip_state(w2), COIL_IP_FAILED);
	CU_ASSERT_EQUAL(coil_ip_error(w2), -ENOBUFS);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 4000);
	coil_ip_unref(w2);
	coil_ip_t *last = coil_channel_write(q, small, 96);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 4096);
	coil_channel_release(q);
	T_ASSERT_OK(t_wait(fits));
	CU_ASSERT_EQUAL(coil_ip_error(fits), -EBADF);
	coil_ip_unref(fits);
	T_ASSERT_OK(t_wait(last));
	coil_ip_unref(last);
	char *sink = malloc(big);
	T_ASSERT_OK(t_read_exact(peer, sink, big));
	T_ASSERT_OK(t_wait(w1));
	CU_ASSERT_EQUAL(coil_ip_int(w1), (int64_t)big);
	coil_ip_unref(w1);
	CU_ASSERT_EQUAL(atomic_load(&owned_freed), 1);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(ch), 0);
	free(sink);
	close(peer);
	coil_channel_release(ch);
}

/* Writes before a descriptor exists are queued and flushed on rewrap. */
static void test_write_before_open(void)
{
	coil_channel_t *ch = NULL;
	T_ASSERT_OK(coil_channel_new(L, &ch));
	CU_ASSERT(coil_channel_writable(ch));
	CU_ASSERT(!coil_channel_alive(ch));
	coil_ip_t *w = coil_channel_write(ch, "early", 5);
	usleep(10000);
	CU_ASSERT_EQUAL(coil_ip_state(w), COIL_IP_PENDING);
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	T_ASSERT_OK(coil_channel_rewrap(ch, sv[0], COIL_IO_READ | COIL_IO_WRITE));
	char got[5];
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	T_ASSERT_OK(t_read_exact(sv[1], got, 5));
	CU_ASSERT_EQUAL(memcmp(got, "early", 5), 0);
	T_ASSERT_OK(t_wait(w));
	coil_ip_unref(w);
	close(sv[1]);
	coil_channel_release(ch);
}

/* close(immediate=0): writes drain, then the fd closes; reads pending get
 * what is buffered or empty; closed(expected=1) once; later ops -EBADF. */
static void test_close_graceful(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	struct sig s = {0};
	coil_channel_on_closed(ch, on_closed_cb, &s);
	coil_ip_t *rd = coil_channel_read(ch);
	coil_ip_t *rl = coil_channel_readline(ch);
	coil_ip_t *w = coil_channel_write(ch, "bye", 3);
	T_ASSERT_OK(coil_channel_close(ch, 0));
	CU_ASSERT(!coil_channel_alive(ch));
	T_ASSERT_OK(coil_channel_close(ch, 0)); /* a second close: no-op */
	char got[3];
	T_ASSERT_OK(t_read_exact(peer, got, 3));
	CU_ASSERT_EQUAL(memcmp(got, "bye", 3), 0);
	/* The peer then sees EOF. */
	char c;
	CU_ASSERT_EQUAL(read(peer, &c, 1), 0);
	T_ASSERT_OK(t_wait(w));
	CU_ASSERT_EQUAL(coil_ip_int(w), 3);
	size_t n = 1;
	free(wait_str(rd, &n));
	CU_ASSERT_EQUAL(n, 0);
	free(wait_str(rl, &n));
	CU_ASSERT_EQUAL(n, 0);
	for (int i = 0; i < 1000 && !atomic_load(&s.closed); i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.closed), 1);
	CU_ASSERT_EQUAL(atomic_load(&s.expected), 1);
	coil_ip_unref(w);
	w = coil_channel_write(ch, "late", 4);
	T_ASSERT_OK(t_wait(w));
	CU_ASSERT_EQUAL(coil_ip_error(w), -EBADF);
	coil_ip_unref(w);
	CU_ASSERT_EQUAL(coil_channel_fileno(ch), -1);
	close(peer);
	coil_channel_release(ch);
}

/* close(immediate=1) with writes queued behind a full socket: they fail with
 * -EBADF; a pending read settles promptly. */
static void test_close_immediate_in_flight(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	int sndbuf = 4096;
	setsockopt(coil_channel_fileno(ch), SOL_SOCKET, SO_SNDBUF, &sndbuf,
		   sizeof(sndbuf));
	T_ASSERT_OK(coil_channel_set_queue_size(ch, 4u << 20));
	coil_ip_t *rd = coil_channel_read(ch);
	coil_ip_t *ex = coil_channel_read_exact(ch, 100);
	T_ASSERT_OK(t_write_all(peer, "12", 2));
	usleep(20000);
	char *big = calloc(1, 1 << 20);
	coil_ip_t *w1 = coil_channel_write(ch, big, 1 << 20);
	coil_ip_t *w2 = coil_channel_write(ch, "x", 1);
	free(big);
	usleep(20000);
	T_ASSERT_OK(coil_channel_close(ch, 1));
	T_ASSERT_OK(t_wait(w1));
	T_ASSERT_OK(t_wait(w2));
	T_ASSERT_OK(t_wait(rd));
	T_ASSERT_OK(t_wait(ex));
	CU_ASSERT_EQUAL(coil_ip_state(w1), COIL_IP_FAILED);
	if (coil_ip_error(w2) != -EBADF)
		fprintf(stderr, "w1 %d %s w2 %d %s\n", coil_ip_error(w1),
			coil_ip_message(w1), coil_ip_error(w2),
			coil_ip_message(w2));
	CU_ASSERT_EQUAL(coil_ip_error(w2), -EBADF);
	size_t n;
	coil_ip_bytes(rd, &n);
	CU_ASSERT_EQUAL(n, 2); /* the bytes that were there */
	CU_ASSERT_EQUAL(coil_ip_error(ex), COIL_EOF);
	coil_ip_unref(w1);
	coil_ip_unref(w2);
	coil_ip_unref(rd);
	coil_ip_unref(ex);
	close(peer);
	coil_channel_release(ch);
}

/* Flow control: 8 MiB from a producer with no reader stays in the kernel
 * (the producer blocks), memory stays bounded; then a reader gets every byte
 * intact. */
struct producer {
	int fd;
	size_t len;
	_Atomic size_t sent;
};

static void *produce(void *arg)
{
	struct producer *p = arg;
	char buf[65536];
	size_t off = 0;
	while (off < p->len) {
		size_t n = sizeof(buf);
		if (n > p->len - off)
			n = p->len - off;
		for (size_t i = 0; i < n; i++)
			buf[i] = (char)((off + i) * 7 + (off + i) / 251);
		if (t_write_all(p->fd, buf, n))
			break;
		off += n;
		atomic_store(&p->sent, off);
	}
	return NULL;
}

static void test_flow_control_8mib(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	T_ASSERT_OK(coil_channel_set_queue_size(ch, 64 * 1024));
	/* A readline with no delimiter in sight keeps the channel reading
	 * until the queue is full; then it must stop. */
	struct producer p = {.fd = peer, .len = 8u << 20};
	const void *d = "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8";
	size_t dl = 8;
	coil_channel_set_delimiters(ch, &d, &dl, 1);
	pthread_t th;
	pthread_create(&th, NULL, produce, &p);
	usleep(300000);
	/* The producer is blocked: the kernel buffers plus our bounded queue
	 * hold far less than 8 MiB. */
	size_t sent = atomic_load(&p.sent);
	CU_ASSERT(sent < (4u << 20));
	CU_ASSERT(coil_channel_read_queue_used(ch) <= 64 * 1024 + 2 * 32768);
	/* Now read everything with read_exact in 1 MiB pieces and verify. */
	size_t off = 0;
	int bad = 0;
	while (off < p.len) {
		size_t n = (size_t)1 << 20;
		coil_ip_t *ip = coil_channel_read_exact(ch, n);
		if (t_wait(ip) || coil_ip_state(ip) != COIL_IP_FINISHED) {
			bad++;
			coil_ip_unref(ip);
			break;
		}
		const unsigned char *b = coil_ip_bytes(ip, NULL);
		for (size_t i = 0; i < n; i++)
			if (b[i] != (unsigned char)((off + i) * 7 + (off + i) / 251))
				bad++;
		off += n;
		coil_ip_unref(ip);
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(off, p.len);
	pthread_join(th, NULL);
	close(peer);
	coil_channel_release(ch);
}

/* Peer reset during an 8 MiB write: the write fails with an error (no
 * SIGPIPE kills us), later writes fail with -EBADF, closed(expected=0). */
static void test_peer_reset_during_write(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	struct sig s = {0};
	coil_channel_on_closed(ch, on_closed_cb, &s);
	size_t big = 8u << 20;
	T_ASSERT_OK(coil_channel_set_queue_size(ch, big));
	char *data = calloc(1, big);
	coil_ip_t *w = coil_channel_write_owned(ch, data, big, free);
	char buf[4096];
	T_ASSERT_OK(t_read_exact(peer, buf, sizeof(buf)));
	close(peer);
	T_ASSERT_OK(t_wait(w));
	CU_ASSERT_EQUAL(coil_ip_state(w), COIL_IP_FAILED);
	int err = coil_ip_error(w);
	CU_ASSERT(err == -EPIPE || err == -ECONNRESET);
	coil_ip_unref(w);
	for (int i = 0; i < 1000 && !atomic_load(&s.closed); i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.closed), 1);
	CU_ASSERT_EQUAL(atomic_load(&s.expected), 0);
	w = coil_channel_write(ch, "x", 1);
	T_ASSERT_OK(t_wait(w));
	CU_ASSERT_EQUAL(coil_ip_error(w), -EBADF);
	coil_ip_unref(w);
	coil_channel_release(ch);
}

/* coil_channel_send / send_owned (no handle): the same queue, order and
 * bounds as the writes with handles, results as -errno, and a send error
 * told by the closed signal. */
struct home_send {
	coil_channel_t *ch;
	int rc[3];
};

static void home_send_run(void *arg)
{
	struct home_send *h = arg;
	h->rc[0] = coil_channel_send(h->ch, "home,", 5);
	h->rc[1] = coil_channel_send_owned(h->ch, (void *)"owned,", 6, NULL);
	h->rc[2] = coil_channel_send(h->ch, "", 0);
}

static void pipe_send_run(void *arg)
{
	struct home_send *h = arg;
	h->rc[0] = coil_channel_send(h->ch, "x", 1);
}

static void close_send_run(void *arg)
{
	struct home_send *h = arg;
	h->rc[0] = coil_channel_close(h->ch, 1);
	h->rc[1] = coil_channel_send(h->ch, "x", 1);
}

static void test_send_without_handle(void)
{
	CU_ASSERT_EQUAL(coil_channel_send(NULL, "x", 1), -EINVAL);
	atomic_store(&owned_freed, 0);
	CU_ASSERT_EQUAL(coil_channel_send_owned(NULL, malloc(4), 4, owned_free),
			-EINVAL);
	CU_ASSERT_EQUAL(atomic_load(&owned_freed), 1);

	/* Order across send, send_owned and write, from this thread and
	 * from the home worker. */
	int peer;
	coil_channel_t *ch = pair(&peer);
	CU_ASSERT_EQUAL(coil_channel_send(ch, NULL, 1), -EINVAL);
	CU_ASSERT_EQUAL(coil_channel_send(ch, "", 0), 0);
	CU_ASSERT_EQUAL(coil_channel_send(ch, "one,", 4), 0);
	coil_ip_t *w = coil_channel_write(ch, "two,", 4);
	char *three = strdup("three,");
	CU_ASSERT_EQUAL(coil_channel_send_owned(ch, three, 6, owned_free), 0);
	struct home_send h = {ch, {1, 1, 1}};
	t_run_on(L, coil_channel_worker(ch), home_send_run, &h);
	CU_ASSERT_EQUAL(h.rc[0], 0);
	CU_ASSERT_EQUAL(h.rc[1], 0);
	CU_ASSERT_EQUAL(h.rc[2], 0);
	const char want[] = "one,two,three,home,owned,";
	char got[sizeof(want)] = {0};
	T_ASSERT_OK(t_read_exact(peer, got, sizeof(want) - 1));
	CU_ASSERT_STRING_EQUAL(got, want);
	T_ASSERT_OK(t_wait(w));
	CU_ASSERT_EQUAL(coil_ip_int(w), 4);
	coil_ip_unref(w);
	for (int i = 0; i < 1000 && atomic_load(&owned_freed) < 2; i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&owned_freed), 2);

	/* A send error closes the channel (expected = 0); later sends get
	 * -EBADF at once. */
	struct sig s = {0};
	T_ASSERT_OK(coil_channel_on_closed(ch, on_closed_cb, &s));
	size_t big = 8u << 20;
	T_ASSERT_OK(coil_channel_set_queue_size(ch, big));
	char *data = calloc(1, big);
	CU_ASSERT_EQUAL(coil_channel_send_owned(ch, data, big, owned_free), 0);
	char buf[4096];
	T_ASSERT_OK(t_read_exact(peer, buf, sizeof(buf)));
	close(peer);
	for (int i = 0; i < 5000 && !atomic_load(&s.closed); i++)
		usleep(1000);
	CU_ASSERT_EQUAL(atomic_load(&s.closed), 1);
	CU_ASSERT_EQUAL(atomic_load(&s.expected), 0);
	CU_ASSERT_EQUAL(atomic_load(&owned_freed), 3);
	CU_ASSERT_EQUAL(coil_channel_send(ch, "x", 1), -EBADF);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(ch), 0);
	coil_channel_release(ch);

	/* kaa's bound, exact on a channel without a descriptor: nothing
	 * queued past queue_size; -EBADF after close. */
	static char small[4097];
	coil_channel_t *q;
	T_ASSERT_OK(coil_channel_new(L, &q));
	T_ASSERT_OK(coil_channel_set_queue_size(q, 4096));
	CU_ASSERT_EQUAL(coil_channel_send(q, small, 4097), -ENOBUFS);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 0);
	CU_ASSERT_EQUAL(coil_channel_send(q, small, 4000), 0);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 4000);
	CU_ASSERT_EQUAL(coil_channel_send_owned(q, small, 97, NULL), -ENOBUFS);
	CU_ASSERT_EQUAL(coil_channel_send_owned(q, small, 96, NULL), 0);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 4096);
	/* On the home worker the close takes effect at once (from another
	 * thread, once it got there: a send before is dropped with the
	 * queue, as a write's handle would fail then). */
	struct home_send hq = {q, {1, 1, 1}};
	t_run_on(L, coil_channel_worker(q), close_send_run, &hq);
	CU_ASSERT_EQUAL(hq.rc[0], 0);
	CU_ASSERT_EQUAL(hq.rc[1], -EBADF);
	CU_ASSERT_EQUAL(coil_channel_write_queue_used(q), 0);
	coil_channel_release(q);

	/* On the home worker, a channel not open for writing is -EBADF. */
	coil_channel_t *r, *pw;
	T_ASSERT_OK(coil_channel_pipe(L, &r, &pw));
	struct home_send hp = {r, {1, 1, 1}};
	t_run_on(L, coil_channel_worker(r), pipe_send_run, &hp);
	CU_ASSERT_EQUAL(hp.rc[0], -EBADF);
	coil_channel_release(pw);
	coil_channel_release(r);
}

/* Pipes: multishot read for the read end, writev for the write end; a
 * write to a pipe whose reader is gone fails with -EPIPE, no SIGPIPE. */
static void test_pipe(void)
{
	coil_channel_t *r, *w;
	T_ASSERT_OK(coil_channel_pipe(L, &r, &w));
	coil_ip_t *rl = coil_channel_readline(r);
	coil_ip_t *wr = coil_channel_write(w, "through a pipe\n", 15);
	char *s = wait_str(rl, NULL);
	CU_ASSERT_STRING_EQUAL(s, "through a pipe\n");
	free(s);
	T_ASSERT_OK(t_wait(wr));
	coil_ip_unref(wr);
	coil_channel_close(w, 0);
	size_t n = 1;
	free(wait_str(coil_channel_read(r), &n));
	CU_ASSERT_EQUAL(n, 0);
	coil_channel_release(w);
	coil_channel_release(r);

	T_ASSERT_OK(coil_channel_pipe(L, &r, &w));
	coil_channel_close(r, 1);
	usleep(20000);
	wr = coil_channel_write(w, "nobody", 6);
	T_ASSERT_OK(t_wait(wr));
	CU_ASSERT_EQUAL(coil_ip_error(wr), -EPIPE);
	coil_ip_unref(wr);
	coil_channel_release(w);
	coil_channel_release(r);
}

/* 1,000 channels and a worker ring of 8 buffers: -ENOBUFS everywhere, no
 * byte lost, no stall. */
static void test_bufring_exhaustion(void)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	o.buf_count = 8;
	o.buf_size = 1024;
	coil_loop_t *loop = NULL;
	T_ASSERT_OK(coil_loop_new(&loop, &o));
	enum { N = 1000 };
	coil_channel_t *ch[N];
	int peer[N];
	coil_ip_t *ip[N];
	for (int i = 0; i < N; i++) {
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
		T_ASSERT_OK(coil_channel_wrap(loop, sv[0],
					      COIL_IO_READ | COIL_IO_WRITE, &ch[i]));
		peer[i] = sv[1];
		ip[i] = coil_channel_read_exact(ch[i], 3000);
	}
	char msg[3000];
	for (int i = 0; i < N; i++) {
		for (int k = 0; k < 3000; k++)
			msg[k] = (char)(i + k);
		T_ASSERT_OK(t_write_all(peer[i], msg, 3000));
	}
	int bad = 0;
	for (int i = 0; i < N; i++) {
		if (coil_ip_wait(ip[i], 20000)) {
			bad++;
			continue;
		}
		size_t n;
		const char *b = coil_ip_bytes(ip[i], &n);
		if (n != 3000)
			bad++;
		else
			for (int k = 0; k < 3000; k++)
				if (b[k] != (char)(i + k))
					bad++;
	}
	CU_ASSERT_EQUAL(bad, 0);
	for (int i = 0; i < N; i++) {
		coil_ip_unref(ip[i]);
		coil_channel_release(ch[i]);
		close(peer[i]);
	}
	coil_loop_free(loop);
}

/* 8 foreign threads write to one channel at once: every message arrives
 * whole (writes are atomic units in the queue) and every write settles. */
struct fw {
	coil_channel_t *ch;
	int id;
	int failed;
};

static void *foreign_writer(void *arg)
{
	struct fw *f = arg;
	for (int i = 0; i < 500; i++) {
		char msg[16];
		snprintf(msg, sizeof(msg), "%d:%05d;", f->id, i);
		coil_ip_t *ip = coil_channel_write(f->ch, msg, 8);
		if (!ip || coil_ip_wait(ip, 10000) ||
		    coil_ip_state(ip) != COIL_IP_FINISHED)
			f->failed++;
		coil_ip_unref(ip);
	}
	return NULL;
}

static void test_foreign_thread_writes(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	pthread_t th[8];
	struct fw f[8];
	for (int i = 0; i < 8; i++) {
		f[i] = (struct fw){ch, i, 0};
		pthread_create(&th[i], NULL, foreign_writer, &f[i]);
	}
	char *buf = malloc(8 * 500 * 8 + 1);
	T_ASSERT_OK(t_read_exact(peer, buf, 8 * 500 * 8));
	buf[8 * 500 * 8] = 0; /* sscanf reads a string */
	int next[8] = {0}, bad = 0;
	for (int k = 0; k < 8 * 500; k++) {
		int id, seq;
		if (sscanf(buf + k * 8, "%d:%05d;", &id, &seq) != 2 || id < 0 ||
		    id > 7 || seq != next[id]++)
			bad++;
	}
	CU_ASSERT_EQUAL(bad, 0);
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		CU_ASSERT_EQUAL(f[i].failed, 0);
	}
	free(buf);
	close(peer);
	coil_channel_release(ch);
}

/* Abort of a pending read takes nothing from the stream. */
static void test_abort_read_keeps_bytes(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	coil_ip_t *a = coil_channel_readline(ch);
	T_ASSERT_OK(coil_ip_abort(a));
	T_ASSERT_OK(t_wait(a));
	CU_ASSERT_EQUAL(coil_ip_error(a), -ECANCELED);
	coil_ip_unref(a);
	T_ASSERT_OK(t_write_all(peer, "kept\n", 5));
	char *s = wait_str(coil_channel_readline(ch), NULL);
	CU_ASSERT_STRING_EQUAL(s, "kept\n");
	free(s);
	close(peer);
	coil_channel_release(ch);
}

/* Channels of earlier tests are freed asynchronously: wait until the
 * count holds still. */
static size_t settled_live(void)
{
	size_t last = coil_live_channels();
	for (int stable = 0, i = 0; stable < 5 && i < 1000; i++) {
		usleep(2000);
		size_t now = coil_live_channels();
		stable = now == last ? stable + 1 : 0;
		last = now;
	}
	return last;
}

static void test_dup_steal_live(void)
{
	size_t live0 = settled_live();
	int peer;
	coil_channel_t *ch = pair(&peer);
	CU_ASSERT_EQUAL(coil_live_channels(), live0 + 1);
	coil_channel_t *d = NULL;
	T_ASSERT_OK(coil_channel_dup(ch, &d));
	CU_ASSERT_EQUAL(coil_live_channels(), live0 + 2);
	CU_ASSERT_NOT_EQUAL(coil_channel_fileno(d), coil_channel_fileno(ch));
	coil_ip_t *w = coil_channel_write(d, "via dup", 7);
	char got[7];
	T_ASSERT_OK(t_read_exact(peer, got, 7));
	CU_ASSERT_EQUAL(memcmp(got, "via dup", 7), 0);
	T_ASSERT_OK(t_wait(w));
	coil_ip_unref(w);
	coil_channel_release(d);
	/* steal runs on the home worker only. */
	coil_channel_t *other = NULL;
	T_ASSERT_OK(coil_channel_new(L, &other));
	CU_ASSERT_EQUAL(coil_channel_steal(other, ch), -EXDEV);
	coil_channel_release(other);
	close(peer);
	coil_channel_release(ch);
	/* <= : a channel of an earlier test may still have been on its way
	 * out when live0 was read (seen under valgrind on a loaded machine:
	 * the count ended one below live0). */
	for (int i = 0; i < 5000 && coil_live_channels() > live0; i++)
		usleep(1000);
	if (coil_live_channels() > live0)
		fprintf(stderr, "dup_steal_live: %zu live channels, %zu before\n",
			coil_live_channels(), live0);
	CU_ASSERT(coil_live_channels() <= live0);
}

/* steal on the home worker: b takes a's descriptor, a is closed. */
struct steal_ctx {
	int fd;
	coil_channel_t *a, *b;
	coil_ip_t *done;
};

static void steal_task(void *arg)
{
	struct steal_ctx *c = arg;
	int rc = coil_channel_wrap(L, c->fd, COIL_IO_READ | COIL_IO_WRITE, &c->a);
	if (!rc)
		rc = coil_channel_new(L, &c->b);
	if (!rc)
		rc = coil_channel_steal(c->b, c->a);
	coil_ip_finish_int(c->done, rc);
}

static void test_steal(void)
{
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	struct steal_ctx c = {.fd = sv[0], .done = coil_ip_new(L)};
	T_ASSERT_OK(coil_loop_post(L, 1, steal_task, &c));
	T_ASSERT_OK(t_wait(c.done));
	CU_ASSERT_EQUAL(coil_ip_int(c.done), 0);
	coil_ip_unref(c.done);
	CU_ASSERT(!coil_channel_alive(c.a));
	CU_ASSERT(coil_channel_alive(c.b));
	coil_ip_t *rl = coil_channel_readline(c.b);
	T_ASSERT_OK(t_write_all(sv[1], "stolen\n", 7));
	char *s = wait_str(rl, NULL);
	CU_ASSERT_STRING_EQUAL(s, "stolen\n");
	free(s);
	close(sv[1]);
	coil_channel_release(c.a);
	coil_channel_release(c.b);
}

static void test_bad_input(void)
{
	coil_channel_t *ch = NULL;
	CU_ASSERT_EQUAL(coil_channel_wrap(L, -1, COIL_IO_READ, &ch), -EBADF);
	CU_ASSERT_EQUAL(coil_channel_wrap(L, 0, 0, &ch), -EINVAL);
	CU_ASSERT_EQUAL(coil_channel_wrap(NULL, 0, COIL_IO_READ, &ch), -EINVAL);
	int fd = open("/dev/null", O_RDONLY);
	close(fd);
	CU_ASSERT_EQUAL(coil_channel_wrap(L, fd, COIL_IO_READ, &ch), -EBADF);
	CU_ASSERT_PTR_NULL(coil_channel_read(NULL));
	CU_ASSERT_EQUAL(coil_channel_close(NULL, 0), -EINVAL);
	int peer;
	ch = pair(&peer);
	CU_ASSERT_EQUAL(coil_channel_set_queue_size(ch, 0), -EINVAL);
	CU_ASSERT_EQUAL(coil_channel_set_chunk_size(ch, 0), -EINVAL);
	coil_ip_t *ip = coil_channel_readinto(ch, NULL, 5);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINVAL);
	coil_ip_unref(ip);
	close(peer);
	coil_channel_release(ch);
}

/* Zero-copy echo with write_view, on a loop with only 4 receive buffers
 * (so the half-the-ring lending limit is hit and copies take over): every
 * byte of 4 MiB comes back in order. */
static void view_echo(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	coil_ip_t *w = coil_channel_write_view(ch, d, n);
	if (coil_ip_state(w) == COIL_IP_FAILED)
		coil_ip_error(w);
	coil_ip_unref(w);
}

static void *view_reader(void *arg)
{
	int fd = *(int *)arg;
	size_t n = 4u << 20, off = 0;
	unsigned char *buf = malloc(65536);
	int bad = 0;
	while (off < n) {
		ssize_t r = read(fd, buf, 65536);
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != (unsigned char)((off + (size_t)i) * 31 >> 3))
				bad++;
		off += (size_t)r;
	}
	free(buf);
	return (void *)(intptr_t)(bad || off != n);
}

static void test_write_view_zero_copy(void)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = 1;
	o.buf_count = 4;
	o.buf_size = 4096;
	coil_loop_t *loop = NULL;
	T_ASSERT_OK(coil_loop_new(&loop, &o));
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	coil_channel_t *ch = NULL;
	T_ASSERT_OK(coil_channel_wrap(loop, sv[0], COIL_IO_READ | COIL_IO_WRITE, &ch));
	T_ASSERT_OK(coil_channel_on_read(ch, view_echo, NULL));
	pthread_t th;
	pthread_create(&th, NULL, view_reader, &sv[1]);
	unsigned char *data = malloc(4u << 20);
	for (size_t i = 0; i < (4u << 20); i++)
		data[i] = (unsigned char)(i * 31 >> 3);
	T_ASSERT_OK(t_write_all(sv[1], data, 4u << 20));
	void *res;
	pthread_join(th, &res);
	CU_ASSERT_PTR_NULL(res);
	/* Outside a read callback it is a plain copying write. */
	coil_ip_t *w = coil_channel_write_view(ch, "copy", 4);
	char got[4];
	T_ASSERT_OK(t_read_exact(sv[1], got, 4));
	CU_ASSERT_EQUAL(memcmp(got, "copy", 4), 0);
	T_ASSERT_OK(t_wait(w));
	coil_ip_unref(w);
	free(data);
	close(sv[1]);
	coil_channel_release(ch);
	coil_loop_free(loop);
}

/* A read signal whose answers back up is paused: bytes wait for it.
 * Disconnecting it then must leave those bytes to read(), not drop them. */
static _Atomic size_t backed_seen;
static void backed_up_cb(coil_channel_t *ch, const void *d, size_t n,
			 void *ud)
{
	if (atomic_fetch_add(&backed_seen, n) == 0) {
		/* One answer larger than the peer will take unread (the
		 * socket buffers hold less than 48 KiB here: see below). */
		size_t big = 48 * 1024;
		char *b = calloc(1, big);
		coil_ip_unref(coil_channel_write_owned(ch, b, big, free));
	}
}

static void test_paused_signal_disconnect_keeps_bytes(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	atomic_store(&backed_seen, 0);
	T_ASSERT_OK(coil_channel_set_queue_size(ch, 64 * 1024));
	int sndbuf = 4096;
	setsockopt(coil_channel_fileno(ch), SOL_SOCKET, SO_SNDBUF, &sndbuf,
		   sizeof(sndbuf));
	/* The bytes wait in the socket first, so that arming the receive
	 * brings several completions in one batch: the first one's answer
	 * pauses the signal and the rest wait for it in coil. */
	enum { TOTAL = 200 * 1024 };
	char *data = malloc(TOTAL);
	for (int i = 0; i < TOTAL; i++)
		data[i] = (char)(i * 31 + i / 997);
	T_ASSERT_OK(t_write_all(peer, data, TOTAL));
	T_ASSERT_OK(coil_channel_on_read(ch, backed_up_cb, NULL));
	for (int i = 0; i < 2000 && !atomic_load(&backed_seen); i++)
		usleep(1000);
	usleep(50000);
	size_t seen = atomic_load(&backed_seen);
	CU_ASSERT(seen > 0 && seen < TOTAL);
	CU_ASSERT(coil_channel_write_queue_used(ch) >= 32 * 1024);
	/* Disconnected while paused: what it did not see is read()'s. */
	T_ASSERT_OK(coil_channel_on_read(ch, NULL, NULL));
	coil_ip_t *r = coil_channel_read_exact(ch, TOTAL - seen);
	T_ASSERT_OK(t_wait(r));
	size_t n = 0;
	const char *b = coil_ip_bytes(r, &n);
	CU_ASSERT_EQUAL(n, TOTAL - seen);
	CU_ASSERT(b && n == TOTAL - seen && !memcmp(b, data + seen, n));
	coil_ip_unref(r);
	CU_ASSERT_EQUAL(atomic_load(&backed_seen), seen);
	free(data);
	coil_channel_close(ch, 1);
	coil_channel_release(ch);
	close(peer);
}

/* A call a foreign thread makes before it causes I/O takes effect before
 * the completion of that I/O: switch the read signal, then write to the
 * peer; the byte must reach the new signal. Run on a default loop and on
 * one whose workers sleep in poll(2) (the valgrind path), where a wake-up
 * and the receive often complete in one batch. */
struct which {
	_Atomic int got[2];
};
static void sig_a(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	atomic_fetch_add(&((struct which *)ud)->got[0], (int)n);
}
static void sig_b(coil_channel_t *ch, const void *d, size_t n, void *ud)
{
	atomic_fetch_add(&((struct which *)ud)->got[1], (int)n);
}

static void test_foreign_call_before_io(void)
{
	for (int mode = 0; mode < 2; mode++) {
		if (mode)
			setenv("COIL_POLL_WAIT", "1", 1);
		coil_loop_t *loop = t_loop(1);
		if (mode)
			unsetenv("COIL_POLL_WAIT");
		int sv[2];
		CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
		coil_channel_t *ch;
		T_ASSERT_OK(coil_channel_wrap(loop, sv[0],
					      COIL_IO_READ | COIL_IO_WRITE, &ch));
		struct which w = {0};
		int wrong = 0;
		for (int i = 0; i < 200; i++) {
			int to = i & 1;
			T_ASSERT_OK(coil_channel_on_read(ch, to ? sig_b : sig_a,
							 &w));
			int before = atomic_load(&w.got[0]) +
				     atomic_load(&w.got[1]);
			int other = atomic_load(&w.got[!to]);
			T_ASSERT_OK(t_write_all(sv[1], "x", 1));
			for (int k = 0; k < 5000 &&
					atomic_load(&w.got[0]) +
							atomic_load(&w.got[1]) ==
						before;
			     k++)
				usleep(100);
			wrong += atomic_load(&w.got[!to]) != other;
		}
		CU_ASSERT_EQUAL(wrong, 0);
		CU_ASSERT_EQUAL(atomic_load(&w.got[0]) + atomic_load(&w.got[1]),
				200);
		coil_channel_release(ch);
		close(sv[1]);
		coil_loop_free(loop);
	}
}

static const coil_test_t tests[] = {
	{"write_view_zero_copy", test_write_view_zero_copy},
	{"read_basic", test_read_basic},
	{"readline_basic", test_readline_basic},
	{"read_queue_used_in_callback", test_read_queue_used_in_callback},
	{"readline_delimiter_set", test_readline_delimiter_set},
	{"readline_random_chunks", test_readline_random_chunks},
	{"readline_over_queue_size", test_readline_over_queue_size},
	{"read_exact_and_eof", test_read_exact_and_eof},
	{"readinto_readv", test_readinto_readv},
	{"signals", test_signals},
	{"write_order_and_writev", test_write_order_and_writev},
	{"write_owned_and_queue_full", test_write_owned_and_queue_full},
	{"write_before_open", test_write_before_open},
	{"close_graceful", test_close_graceful},
	{"close_immediate_in_flight", test_close_immediate_in_flight},
	{"flow_control_8mib", test_flow_control_8mib},
	{"peer_reset_during_write", test_peer_reset_during_write},
	{"send_without_handle", test_send_without_handle},
	{"pipe", test_pipe},
	{"bufring_exhaustion", test_bufring_exhaustion},
	{"foreign_thread_writes", test_foreign_thread_writes},
	{"abort_read_keeps_bytes", test_abort_read_keeps_bytes},
	{"dup_steal_live", test_dup_steal_live},
	{"steal", test_steal},
	{"bad_input", test_bad_input},
	{"paused_signal_disconnect_keeps_bytes",
	 test_paused_signal_disconnect_keeps_bytes},
	{"foreign_call_before_io", test_foreign_call_before_io},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	/* A SIGPIPE would kill the test: prove coil never raises one. */
	L = t_loop(2);
	int rc = coil_test_main("channel", tests, argc, argv);
	coil_loop_free(L);
	return rc;
}
