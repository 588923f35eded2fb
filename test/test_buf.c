/* SPDX-License-Identifier: MIT */
/* Tests for the byte queue and the delimiter splitter (lib/buf.c). */
#include "helpers.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

/* rand_r is enough here: fixed seeds make every failure reproduce. */
static unsigned rnd(unsigned *seed, unsigned n)
{
	return (unsigned)rand_r(seed) % n;
}

/* ---- byte queue ---- */

static void test_bufq_basics(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	CU_ASSERT_EQUAL(q.len, 0);
	CU_ASSERT_PTR_NULL(q.buf);
	CU_ASSERT_PTR_NOT_NULL(coil__bufq_data(&q));
	T_ASSERT_OK(coil__bufq_append(&q, NULL, 0));
	CU_ASSERT_PTR_NULL(q.buf); /* nothing appended, nothing allocated */
	T_ASSERT_OK(coil__bufq_append(&q, "hello ", 6));
	T_ASSERT_OK(coil__bufq_append(&q, "world", 5));
	CU_ASSERT_EQUAL(q.len, 11);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), "hello world", 11), 0);
	coil__bufq_consume(&q, 6);
	CU_ASSERT_EQUAL(q.off, 6);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), "world", 5), 0);
	char *t = coil__bufq_take(&q, 3);
	CU_ASSERT_EQUAL_FATAL(memcmp(t, "wor", 3), 0);
	coil_free(t);
	CU_ASSERT_EQUAL(q.len, 2);
	/* n == 0: a valid allocation, the queue untouched. */
	t = coil__bufq_take(&q, 0);
	CU_ASSERT_PTR_NOT_NULL(t);
	coil_free(t);
	CU_ASSERT_EQUAL(q.len, 2);
	/* Consuming everything resets off but keeps a small buffer. */
	coil__bufq_consume(&q, 2);
	CU_ASSERT_EQUAL(q.len, 0);
	CU_ASSERT_EQUAL(q.off, 0);
	CU_ASSERT_PTR_NOT_NULL(q.buf);
	/* Over-long consume and take are clamped. */
	T_ASSERT_OK(coil__bufq_append(&q, "ab", 2));
	coil__bufq_consume(&q, 10);
	CU_ASSERT_EQUAL(q.len, 0);
	T_ASSERT_OK(coil__bufq_append(&q, "cd", 2));
	t = coil__bufq_take(&q, 10);
	CU_ASSERT_EQUAL(memcmp(t, "cd", 2), 0);
	CU_ASSERT_EQUAL(q.len, 0);
	coil_free(t);
	coil__bufq_free(&q);
	CU_ASSERT_PTR_NULL(q.buf);
	CU_ASSERT_EQUAL(q.cap, 0);
	/* A size that cannot be represented fails with q unchanged. */
	T_ASSERT_OK(coil__bufq_append(&q, "x", 1));
	char *before = q.buf;
	CU_ASSERT_EQUAL(coil__bufq_append(&q, "y", SIZE_MAX), -ENOMEM);
	CU_ASSERT_PTR_EQUAL(q.buf, before);
	CU_ASSERT_EQUAL(q.len, 1);
	coil__bufq_free(&q);
}

/* A dead prefix at least as large as the live bytes is reclaimed by moving
 * them to the front, not by growing. */
static void test_bufq_compaction(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	char a[200], b[100];
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	T_ASSERT_OK(coil__bufq_append(&q, a, sizeof(a)));
	size_t cap = q.cap;
	CU_ASSERT(cap >= 200 && cap < 300);
	coil__bufq_consume(&q, 150); /* 50 live, 150 dead */
	T_ASSERT_OK(coil__bufq_append(&q, b, sizeof(b)));
	CU_ASSERT_EQUAL(q.cap, cap);
	CU_ASSERT_EQUAL(q.off, 0);
	CU_ASSERT_EQUAL(q.len, 150);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), a, 50), 0);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q) + 50, b, 100), 0);
	/* A small dead prefix is not worth a move: the queue grows, and the
	 * new block starts with the live bytes. */
	coil__bufq_consume(&q, 10);
	T_ASSERT_OK(coil__bufq_append(&q, a, sizeof(a)));
	CU_ASSERT(q.cap > cap);
	CU_ASSERT_EQUAL(q.off, 0);
	CU_ASSERT_EQUAL(q.len, 340);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), a, 40), 0);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q) + 40, b, 100), 0);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q) + 140, a, 200), 0);
	coil__bufq_free(&q);
}

/* Many appends and consumes against a model: contents stay exact, capacity
 * stays within a small factor of the most ever held. */
static void test_bufq_growth_model(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	static unsigned char model[200000];
	size_t mlen = 0, peak = 0;
	unsigned seed = 1, next = 0;
	for (int i = 0; i < 50000; i++) {
		size_t n = rnd(&seed, 40);
		unsigned char tmp[40];
		for (size_t k = 0; k < n; k++)
			tmp[k] = (unsigned char)(next++ * 7);
		if (mlen + n <= sizeof(model)) {
			T_ASSERT_OK(coil__bufq_append(&q, tmp, n));
			memcpy(model + mlen, tmp, n);
			mlen += n;
		}
		if (mlen > peak)
			peak = mlen;
		size_t c = rnd(&seed, 38);
		if (c > mlen)
			c = mlen;
		if (rnd(&seed, 3) == 0) {
			char *t = coil__bufq_take(&q, c);
			CU_ASSERT_PTR_NOT_NULL_FATAL(t);
			CU_ASSERT_EQUAL_FATAL(memcmp(t, model, c), 0);
			coil_free(t);
		} else {
			coil__bufq_consume(&q, c);
		}
		memmove(model, model + c, mlen - c);
		mlen -= c;
		CU_ASSERT_EQUAL_FATAL(q.len, mlen);
		CU_ASSERT_FATAL(q.off + q.len <= q.cap);
		CU_ASSERT_FATAL(q.cap <= 4 * peak + 256);
	}
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), model, mlen), 0);
	coil__bufq_free(&q);
}

/* Taking the whole queue hands its block over: no copy from the front, a
 * move from an offset, and the queue keeps no storage afterwards. */
static void test_bufq_take_whole(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	char line[200];
	for (size_t i = 0; i < sizeof(line); i++)
		line[i] = (char)i;
	T_ASSERT_OK(coil__bufq_append(&q, line, sizeof(line)));
	char *buf = q.buf;
	char *t = coil__bufq_take(&q, q.len);
	CU_ASSERT_PTR_EQUAL(t, buf);
	CU_ASSERT_EQUAL(memcmp(t, line, sizeof(line)), 0);
	CU_ASSERT_PTR_NULL(q.buf);
	CU_ASSERT_EQUAL(q.cap, 0);
	CU_ASSERT_EQUAL(q.len, 0);
	coil_free(t);
	/* From an offset: the bytes move to the front of the same block (or
	 * a shrunk one); either way they are exact. */
	T_ASSERT_OK(coil__bufq_append(&q, line, sizeof(line)));
	coil__bufq_consume(&q, 50);
	t = coil__bufq_take(&q, q.len);
	CU_ASSERT_EQUAL(memcmp(t, line + 50, 150), 0);
	CU_ASSERT_PTR_NULL(q.buf);
	coil_free(t);
	/* A short remainder of a big block: shrunk, still exact. */
	static char big[50000];
	memset(big, 'z', sizeof(big));
	T_ASSERT_OK(coil__bufq_append(&q, big, sizeof(big)));
	T_ASSERT_OK(coil__bufq_append(&q, "end", 3));
	coil__bufq_consume(&q, sizeof(big));
	t = coil__bufq_take(&q, 3);
	CU_ASSERT_EQUAL(memcmp(t, "end", 3), 0);
	CU_ASSERT_PTR_NULL(q.buf);
	coil_free(t);
	coil__bufq_free(&q);
}

/* An emptied queue above 64 KiB frees its storage; smaller ones keep it
 * until coil__bufq_trim. */
static void test_bufq_shrink_when_empty(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	static char big[100000];
	memset(big, 'x', sizeof(big));
	T_ASSERT_OK(coil__bufq_append(&q, big, sizeof(big)));
	CU_ASSERT(q.cap > COIL__BUFQ_KEEP_MAX);
	coil__bufq_consume(&q, 60000);
	CU_ASSERT_PTR_NOT_NULL(q.buf); /* not empty yet */
	coil__bufq_consume(&q, q.len);
	CU_ASSERT_PTR_NULL(q.buf);
	CU_ASSERT_EQUAL(q.cap, 0);
	CU_ASSERT_EQUAL(q.off, 0);
	T_ASSERT_OK(coil__bufq_append(&q, big, 1000));
	coil__bufq_consume(&q, 1000);
	CU_ASSERT_PTR_NOT_NULL(q.buf);
	T_ASSERT_OK(coil__bufq_append(&q, big, 10));
	coil__bufq_trim(&q); /* not empty: no-op */
	CU_ASSERT_EQUAL(q.len, 10);
	coil__bufq_consume(&q, 10);
	coil__bufq_trim(&q);
	CU_ASSERT_PTR_NULL(q.buf);
	CU_ASSERT_EQUAL(q.cap, 0);
	coil__bufq_free(&q);
}

/* ---- delimiter sets ---- */

static coil__delims *mkn(size_t n, const char *const *d, const size_t *l)
{
	coil__delims *ds = NULL;
	int rc = coil__delims_new((const void *const *)d, l, n, &ds);
	CU_ASSERT_EQUAL_FATAL(rc, 0);
	return ds;
}

/* mk(n, "a", "b", ...): a set of C-string delimiters. */
static coil__delims *mk(int n, ...)
{
	const char *d[16];
	size_t l[16];
	va_list ap;
	va_start(ap, n);
	for (int i = 0; i < n; i++) {
		d[i] = va_arg(ap, const char *);
		l[i] = strlen(d[i]);
	}
	va_end(ap);
	return mkn((size_t)n, d, l);
}

static size_t find(const char *s, const coil__delims *ds, bool eof)
{
	size_t scan = 0;
	return coil__find_line(s, strlen(s), ds, &scan, eof);
}

static void test_delims_bad(void)
{
	coil__delims *ds = NULL;
	const void *d[17];
	size_t l[17];
	static const char long_delim[65];
	for (int i = 0; i < 17; i++) {
		d[i] = "x";
		l[i] = 1;
	}
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 0, &ds), -EINVAL);
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 17, &ds), -EINVAL);
	CU_ASSERT_EQUAL(coil__delims_new(NULL, l, 1, &ds), -EINVAL);
	CU_ASSERT_EQUAL(coil__delims_new(d, NULL, 1, &ds), -EINVAL);
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 1, NULL), -EINVAL);
	l[3] = 0;
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 4, &ds), -EINVAL);
	l[3] = 65;
	d[3] = long_delim;
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 4, &ds), -EINVAL);
	l[3] = 64;
	d[2] = NULL;
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 4, &ds), -EINVAL);
	CU_ASSERT_PTR_NULL(ds);
	/* The limits themselves are fine. */
	d[2] = "x";
	T_ASSERT_OK(coil__delims_new(d, l, 16, &ds));
	CU_ASSERT_EQUAL(coil__delims_maxlen(ds), 64);
	coil__delims_free(ds);
	coil__delims_free(NULL);
	coil__delims_free((coil__delims *)&coil__delims_default);
	CU_ASSERT_EQUAL(coil__delims_maxlen(&coil__delims_default), 1);
}

/* ---- the splitter: rules ---- */

static void test_find_newline(void)
{
	const coil__delims *nl = &coil__delims_default;
	CU_ASSERT_EQUAL(find("abc\ndef\n", nl, false), 4);
	CU_ASSERT_EQUAL(find("\n", nl, false), 1);
	CU_ASSERT_EQUAL(find("abc", nl, false), 0);
	CU_ASSERT_EQUAL(find("abc", nl, true), 0);
	CU_ASSERT_EQUAL(find("", nl, false), 0);
	/* Empty data, even without a buffer. */
	size_t scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(NULL, 0, nl, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 0);
	/* Resuming: a miss leaves scan at the end, a hit at the delimiter. */
	const char *s = "hello\nworld\n";
	CU_ASSERT_EQUAL(coil__find_line(s, 3, nl, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 3);
	CU_ASSERT_EQUAL(coil__find_line(s, 12, nl, &scan, false), 6);
	CU_ASSERT_EQUAL(scan, 5);
	CU_ASSERT_EQUAL(coil__find_line(s, 12, nl, &scan, false), 6);
	/* Stale state beyond len restarts instead of reading past the end. */
	scan = 100;
	CU_ASSERT_EQUAL(coil__find_line(s, 12, nl, &scan, false), 6);
	scan = 13;
	CU_ASSERT_EQUAL(coil__find_line(s, 12, nl, &scan, false), 6);
}

static void test_find_crlf(void)
{
	coil__delims *crlf = mk(1, "\r\n");
	CU_ASSERT_EQUAL(find("ab\r\ncd", crlf, false), 4);
	CU_ASSERT_EQUAL(find("ab\rcd\r\n", crlf, false), 7);
	CU_ASSERT_EQUAL(find("\r\r\r\n", crlf, false), 4);
	CU_ASSERT_EQUAL(find("ab\ncd", crlf, false), 0);
	CU_ASSERT_EQUAL(find("ab\r", crlf, false), 0);
	CU_ASSERT_EQUAL(find("ab\r", crlf, true), 0);
	CU_ASSERT_EQUAL(find("\r", crlf, false), 0); /* len < delimiter */
	/* The delimiter split across arrivals, same scan throughout. */
	const char *s = "abc\r\nx";
	size_t scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(s, 4, crlf, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 3); /* waits on the '\r' */
	CU_ASSERT_EQUAL(coil__find_line(s, 5, crlf, &scan, false), 5);
	CU_ASSERT_EQUAL(scan, 3);
	/* A '\r' not followed by '\n' is passed over once known. */
	s = "ab\rc\r\n";
	scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(s, 3, crlf, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 2);
	CU_ASSERT_EQUAL(coil__find_line(s, 4, crlf, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 4);
	CU_ASSERT_EQUAL(coil__find_line(s, 6, crlf, &scan, false), 6);
	coil__delims_free(crlf);
}

static void test_find_sets(void)
{
	/* {"\r","\n"}: leftmost wins, both final at once. */
	coil__delims *rn = mk(2, "\r", "\n");
	CU_ASSERT_EQUAL(find("a\nb\r", rn, false), 2);
	CU_ASSERT_EQUAL(find("ab\rc\n", rn, false), 3);
	CU_ASSERT_EQUAL(find("ab\r", rn, false), 3);
	CU_ASSERT_EQUAL(find("ab\r\n", rn, false), 3);
	CU_ASSERT_EQUAL(find("abc", rn, false), 0);
	coil__delims_free(rn);
	/* {"\r\n","\r"}: at the same start the first listed wins, so a
	 * trailing "\r" must wait: "\r\n" could still complete. */
	coil__delims *a = mk(2, "\r\n", "\r");
	CU_ASSERT_EQUAL(find("ab\r\n", a, false), 4);
	CU_ASSERT_EQUAL(find("ab\rc", a, false), 3);
	CU_ASSERT_EQUAL(find("ab\r", a, false), 0);
	CU_ASSERT_EQUAL(find("ab\r", a, true), 3);
	CU_ASSERT_EQUAL(find("\r\r\n", a, false), 1);
	size_t scan = 0;
	CU_ASSERT_EQUAL(coil__find_line("ab\r\n", 3, a, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 2);
	CU_ASSERT_EQUAL(coil__find_line("ab\r\n", 4, a, &scan, false), 4);
	scan = 0;
	CU_ASSERT_EQUAL(coil__find_line("ab\rx", 3, a, &scan, false), 0);
	CU_ASSERT_EQUAL(coil__find_line("ab\rx", 4, a, &scan, false), 3);
	scan = 0;
	CU_ASSERT_EQUAL(coil__find_line("ab\r", 3, a, &scan, false), 0);
	CU_ASSERT_EQUAL(coil__find_line("ab\r", 3, a, &scan, true), 3);
	coil__delims_free(a);
	/* {"\r","\r\n"}: "\r" is listed first and wins at once; the "\n"
	 * then starts the next line. */
	coil__delims *b = mk(2, "\r", "\r\n");
	CU_ASSERT_EQUAL(find("ab\r\n", b, false), 3);
	CU_ASSERT_EQUAL(find("ab\r", b, false), 3);
	coil__delims_free(b);
	/* A later-listed prefix also blocks: nothing is final at 'x' yet, and
	 * a match further right must not be taken over it. */
	coil__delims *c = mk(2, "y", "xyz");
	CU_ASSERT_EQUAL(find("axy", c, false), 0);
	CU_ASSERT_EQUAL(find("axy", c, true), 3); /* "y" at 2 */
	CU_ASSERT_EQUAL(find("axyz", c, false), 4);
	CU_ASSERT_EQUAL(find("axyq", c, false), 3);
	coil__delims_free(c);
	/* A longer delimiter listed first, overlapping a shorter one inside
	 * it: the shorter starts later, so the longer (leftmost) wins. */
	coil__delims *e = mk(3, "--END--", "END", "\n");
	CU_ASSERT_EQUAL(find("a--END--b", e, false), 8);
	CU_ASSERT_EQUAL(find("a-END\n", e, false), 5);
	CU_ASSERT_EQUAL(find("a--EN", e, false), 0);
	CU_ASSERT_EQUAL(find("a--EN", e, true), 0);
	CU_ASSERT_EQUAL(find("a--ENX\n", e, false), 7);
	coil__delims_free(e);
	/* Many distinct first bytes (the table path). */
	coil__delims *m = mk(6, "A1", "B2", "C3", "D4", "E5", "\n");
	CU_ASSERT_EQUAL(find("xxA2B3C3yy", m, false), 8);
	CU_ASSERT_EQUAL(find("xxE", m, false), 0);
	CU_ASSERT_EQUAL(find("xxE", m, true), 0);
	CU_ASSERT_EQUAL(find("xxE\n", m, false), 4);
	coil__delims_free(m);
}

static void test_find_binary(void)
{
	const char *d[2] = {"\0\1", "\0"};
	size_t l[2] = {2, 1};
	coil__delims *bin = mkn(1, d, l);
	const char data[] = {'x', 0, 'y', 0, 1, 'z'};
	size_t scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(data, sizeof(data), bin, &scan, false),
			5);
	scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(data, 4, bin, &scan, false), 0);
	CU_ASSERT_EQUAL(scan, 3);
	coil__delims_free(bin);
	/* {"\0\1", "\0"}: a trailing NUL waits for the byte after it. */
	coil__delims *set = mkn(2, d, l);
	scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(data, 2, set, &scan, false), 0);
	CU_ASSERT_EQUAL(coil__find_line(data, 3, set, &scan, false), 2);
	scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(data + 2, 3, set, &scan, false), 3);
	coil__delims_free(set);
	/* A 64-byte delimiter of NULs and 0xff, arriving a byte at a time. */
	char big[64], in[100];
	for (int i = 0; i < 64; i++)
		big[i] = (char)(i % 2 ? 0xff : 0);
	memset(in, 'q', 36);
	memcpy(in + 36, big, 64);
	d[0] = big;
	l[0] = 64;
	coil__delims *b64 = mkn(1, d, l);
	scan = 0;
	for (size_t n = 1; n < 100; n++) {
		CU_ASSERT_EQUAL_FATAL(coil__find_line(in, n, b64, &scan, false),
				      0);
		CU_ASSERT_FATAL(scan <= n && scan + 63 >= n);
	}
	CU_ASSERT_EQUAL(coil__find_line(in, 100, b64, &scan, false), 100);
	coil__delims_free(b64);
}

/* ---- the splitter against a reference ---- */

/* A delimiter list as plain arrays, for the reference splitter. */
typedef struct {
	size_t n;
	const char *d[16];
	size_t l[16];
} dlist;

/* The rules written down as directly as possible: for each start from the
 * left, the first listed delimiter matching there wins unless an
 * earlier-listed one (or, with no match, any one) is a proper prefix of the
 * rest of the data. */
static size_t ref_find(const char *s, size_t len, const dlist *dl, bool eof)
{
	for (size_t p = 0; p < len; p++) {
		bool pending = false;
		for (size_t i = 0; i < dl->n; i++) {
			size_t l = dl->l[i];
			if (p + l <= len) {
				if (!memcmp(s + p, dl->d[i], l))
					return pending ? 0 : p + l;
			} else if (!eof && !memcmp(s + p, dl->d[i], len - p)) {
				pending = true;
			}
		}
		if (pending)
			return 0;
	}
	return 0;
}

/*
 * Streams in[] through a byte queue in random chunks of 1..maxchunk bytes,
 * cutting lines with find_line and the resumable scan, and checks each line
 * against the reference applied to the whole input (which is what final
 * means: more bytes cannot change it). At the end the rest is the partial
 * last line. Returns the number of lines with a delimiter.
 */
static size_t stream_check(const char *in, size_t len, const dlist *dl,
			   const coil__delims *ds, unsigned *seed,
			   size_t maxchunk)
{
	coil__bufq q;
	coil__bufq_init(&q);
	size_t off = 0, done = 0, scan = 0, lines = 0;
	while (off < len || q.len) {
		if (off < len) {
			size_t n = 1 + rnd(seed, (unsigned)maxchunk);
			if (n > len - off)
				n = len - off;
			T_ASSERT_OK(coil__bufq_append(&q, in + off, n));
			off += n;
		}
		bool eof = off == len;
		for (;;) {
			size_t n = coil__find_line(coil__bufq_data(&q), q.len,
						   ds, &scan, eof);
			size_t want = ref_find(in + done, len - done, dl, true);
			if (!n) {
				/* Not final yet: the reference on what has
				 * arrived agrees, and either more is coming
				 * or there is no line at all. */
				CU_ASSERT_EQUAL_FATAL(
					ref_find(coil__bufq_data(&q), q.len,
						 dl, eof), 0);
				CU_ASSERT_FATAL(!eof || !want);
				CU_ASSERT_FATAL(scan <= q.len);
				CU_ASSERT_FATAL(scan + coil__delims_maxlen(ds) >
						q.len);
				break;
			}
			CU_ASSERT_EQUAL_FATAL(n, want);
			CU_ASSERT_EQUAL_FATAL(memcmp(coil__bufq_data(&q),
						     in + done, n), 0);
			void *t = coil__bufq_take(&q, n);
			CU_ASSERT_PTR_NOT_NULL_FATAL(t);
			coil_free(t);
			done += n;
			scan = 0;
			lines++;
		}
		if (eof) {
			done += q.len; /* the partial last line */
			coil__bufq_consume(&q, q.len);
		}
	}
	CU_ASSERT_EQUAL(done, len);
	coil__bufq_free(&q);
	return lines;
}

/* Random delimiter sets over a tiny alphabet, so that overlaps, shared
 * prefixes and same-start ties happen all the time. */
static void test_find_random_vs_reference(void)
{
	unsigned seed = 7;
	static const char alpha[] = "ab\r\n";
	for (int round = 0; round < 3000; round++) {
		char store[16][8];
		dlist dl = {.n = 1 + rnd(&seed, 5)};
		for (size_t i = 0; i < dl.n; i++) {
			dl.l[i] = 1 + rnd(&seed, 4);
			for (size_t k = 0; k < dl.l[i]; k++)
				store[i][k] = alpha[rnd(&seed, 4)];
			dl.d[i] = store[i];
		}
		coil__delims *ds = mkn(dl.n, dl.d, dl.l);
		char in[300];
		size_t len = rnd(&seed, sizeof(in));
		for (size_t k = 0; k < len; k++)
			in[k] = alpha[rnd(&seed, 4)];
		/* Fresh calls on every prefix agree with the reference. */
		for (size_t n = 0; n <= len && n < 40; n++) {
			size_t scan = 0;
			for (int eof = 0; eof < 2; eof++)
				CU_ASSERT_EQUAL_FATAL(
					coil__find_line(in, n, ds, &scan, eof),
					ref_find(in, n, &dl, eof));
		}
		stream_check(in, len, &dl, ds, &seed, 1 + rnd(&seed, 20));
		coil__delims_free(ds);
	}
}

/*
 * The acceptance test at the splitter level: 10,000 lines ending in
 * delimiters of 1..20 bytes, fed in random 1..20-byte chunks, come back as
 * exactly those lines, each ending with its delimiter. Each delimiter opens
 * with a marker byte of its own (NUL, CR, LF, 0xff, ...) that occurs nowhere
 * else, so the expected lines are unambiguous.
 */
static void test_acceptance_random_chunks(void)
{
	static const char markers[] = {'\n', '\r', 0, (char)0xff, '|', 1};
	unsigned seed = 42;
	for (int round = 0; round < 6; round++) {
		char store[6][20];
		dlist dl = {.n = 1 + (size_t)round};
		for (size_t i = 0; i < dl.n; i++) {
			dl.l[i] = 1 + rnd(&seed, 20);
			store[i][0] = markers[i];
			for (size_t k = 1; k < dl.l[i]; k++)
				store[i][k] = (char)('0' + rnd(&seed, 10));
			dl.d[i] = store[i];
		}
		coil__delims *ds = mkn(dl.n, dl.d, dl.l);
		size_t cap = 10000 * 50, len = 0, nlines = 10000;
		char *in = malloc(cap);
		size_t *ends = malloc(nlines * sizeof(*ends));
		size_t *which = malloc(nlines * sizeof(*which));
		CU_ASSERT_PTR_NOT_NULL_FATAL(in);
		for (size_t i = 0; i < nlines; i++) {
			size_t n = rnd(&seed, 30);
			for (size_t k = 0; k < n; k++)
				in[len++] = (char)('a' + rnd(&seed, 26));
			which[i] = rnd(&seed, (unsigned)dl.n);
			memcpy(in + len, dl.d[which[i]], dl.l[which[i]]);
			len += dl.l[which[i]];
			ends[i] = len;
		}
		coil__bufq q;
		coil__bufq_init(&q);
		size_t off = 0, scan = 0, lines = 0, start = 0;
		while (off < len) {
			size_t n = 1 + rnd(&seed, 20);
			if (n > len - off)
				n = len - off;
			T_ASSERT_OK(coil__bufq_append(&q, in + off, n));
			off += n;
			while ((n = coil__find_line(coil__bufq_data(&q), q.len,
						    ds, &scan, off == len))) {
				char *t = coil__bufq_take(&q, n);
				CU_ASSERT_PTR_NOT_NULL_FATAL(t);
				scan = 0;
				CU_ASSERT_FATAL(lines < nlines);
				const char *d = dl.d[which[lines]];
				size_t dlen = dl.l[which[lines]];
				CU_ASSERT_EQUAL_FATAL(start + n, ends[lines]);
				CU_ASSERT_FATAL(n >= dlen &&
						!memcmp(t + n - dlen, d, dlen));
				CU_ASSERT_EQUAL_FATAL(memcmp(t, in + start, n),
						      0);
				coil_free(t);
				start += n;
				lines++;
			}
		}
		CU_ASSERT_EQUAL(lines, nlines);
		CU_ASSERT_EQUAL(start, len);
		CU_ASSERT_EQUAL(q.len, 0);
		coil__bufq_free(&q);
		coil__delims_free(ds);
		free(in);
		free(ends);
		free(which);
	}
}

/* A line arriving a byte at a time costs O(total), not O(total^2): with a
 * 64-byte delimiter whose first byte is everywhere, a rescan from 0 on every
 * call would take seconds here; the resumable scan takes milliseconds. */
static void test_find_no_rescan(void)
{
	size_t len = 200000;
	char *in = malloc(len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(in);
	memset(in, 'a', len);
	char d64[64];
	memset(d64, 'a', 63);
	d64[63] = 'b';
	const char *d[2] = {d64, "\n"};
	size_t l[2] = {64, 1};
	coil__delims *one = mkn(1, d, l), *two = mkn(2, d, l);
	for (int k = 0; k < 2; k++) {
		coil__delims *ds = k ? two : one;
		size_t scan = 0, last = 0;
		for (size_t n = 1; n <= len; n += 7) {
			CU_ASSERT_EQUAL_FATAL(
				coil__find_line(in, n, ds, &scan, false), 0);
			last = n;
		}
		CU_ASSERT(scan <= last && scan + 64 > last);
	}
	in[len - 1] = 'b';
	size_t scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(in, len, two, &scan, false), len);
	coil__delims_free(one);
	coil__delims_free(two);
	free(in);
}

static const coil_test_t tests[] = {
	{"bufq_basics", test_bufq_basics},
	{"bufq_compaction", test_bufq_compaction},
	{"bufq_growth_model", test_bufq_growth_model},
	{"bufq_take_whole", test_bufq_take_whole},
	{"bufq_shrink_when_empty", test_bufq_shrink_when_empty},
	{"delims_bad", test_delims_bad},
	{"find_newline", test_find_newline},
	{"find_crlf", test_find_crlf},
	{"find_sets", test_find_sets},
	{"find_binary", test_find_binary},
	{"find_random_vs_reference", test_find_random_vs_reference},
	{"acceptance_random_chunks", test_acceptance_random_chunks},
	{"find_no_rescan", test_find_no_rescan},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("buf", tests, argc, argv);
}
