/* SPDX-License-Identifier: MIT */
/* Tests for the byte queue and the delimiter splitter (lib/buf.c). */
#include "helpers.h"

#include <stdarg.h>
#include <stdbool.h>

#include "buf.h"

static void test_bufq_basics(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	CU_ASSERT_EQUAL(q.len, 0);
	T_ASSERT_OK(coil__bufq_append(&q, "hello ", 6));
	T_ASSERT_OK(coil__bufq_append(&q, "world", 5));
	CU_ASSERT_EQUAL(q.len, 11);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), "hello world", 11), 0);
	coil__bufq_consume(&q, 6);
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), "world", 5), 0);
	char *t = coil__bufq_take(&q, 3);
	CU_ASSERT_EQUAL(memcmp(t, "wor", 3), 0);
	coil_free(t);
	/* Taking everything from the front hands the storage over. */
	coil__bufq_consume(&q, 0);
	T_ASSERT_OK(coil__bufq_append(&q, "!", 1));
	size_t len = q.len;
	t = coil__bufq_take(&q, len);
	CU_ASSERT_EQUAL(memcmp(t, "ld!", 3), 0);
	CU_ASSERT_EQUAL(q.len, 0);
	coil_free(t);
	t = coil__bufq_take(&q, 0);
	CU_ASSERT_PTR_NOT_NULL(t);
	coil_free(t);
	coil__bufq_free(&q);
}

/* Many appends and consumes: contents stay exact; an emptied large queue
 * gives its storage back. */
static void test_bufq_growth_and_shrink(void)
{
	coil__bufq q;
	coil__bufq_init(&q);
	unsigned char model[200000];
	size_t mlen = 0, next = 0;
	unsigned seed = 1;
	for (int i = 0; i < 20000; i++) {
		size_t n = (size_t)(rand_r(&seed) % 17);
		unsigned char tmp[17];
		for (size_t k = 0; k < n; k++)
			tmp[k] = (unsigned char)(next++);
		if (mlen + n <= sizeof(model)) {
			T_ASSERT_OK(coil__bufq_append(&q, tmp, n));
			memcpy(model + mlen, tmp, n);
			mlen += n;
		}
		size_t c = (size_t)(rand_r(&seed) % 13);
		if (c > mlen)
			c = mlen;
		coil__bufq_consume(&q, c);
		memmove(model, model + c, mlen - c);
		mlen -= c;
		CU_ASSERT_EQUAL_FATAL(q.len, mlen);
	}
	CU_ASSERT_EQUAL(memcmp(coil__bufq_data(&q), model, mlen), 0);
	char big[100000];
	memset(big, 'x', sizeof(big));
	T_ASSERT_OK(coil__bufq_append(&q, big, sizeof(big)));
	coil__bufq_consume(&q, q.len);
	CU_ASSERT_EQUAL(q.cap, 0);
	CU_ASSERT_PTR_NULL(q.buf);
	coil__bufq_free(&q);
}

static size_t find(const char *s, const coil__delims *ds, bool eof)
{
	size_t scan = 0;
	return coil__find_line(s, strlen(s), ds, &scan, eof);
}

static coil__delims *mk(int n, ...)
{
	const void *d[16];
	size_t l[16];
	va_list ap;
	va_start(ap, n);
	for (int i = 0; i < n; i++) {
		d[i] = va_arg(ap, const char *);
		l[i] = strlen(d[i]);
	}
	va_end(ap);
	coil__delims *ds = NULL;
	CU_ASSERT_EQUAL(coil__delims_new(d, l, (size_t)n, &ds), 0);
	return ds;
}

static void test_find_line_rules(void)
{
	const coil__delims *nl = &coil__delims_default;
	CU_ASSERT_EQUAL(find("abc\ndef\n", nl, false), 4);
	CU_ASSERT_EQUAL(find("abc", nl, false), 0);
	CU_ASSERT_EQUAL(find("", nl, false), 0);
	coil__delims *crlf = mk(1, "\r\n");
	CU_ASSERT_EQUAL(find("ab\r\ncd", crlf, false), 4);
	CU_ASSERT_EQUAL(find("ab\rcd\r\n", crlf, false), 7);
	CU_ASSERT_EQUAL(find("ab\r", crlf, false), 0);
	coil__delims_free(crlf);
	/* {"\r","\n"}: leftmost wins. */
	coil__delims *rn = mk(2, "\r", "\n");
	CU_ASSERT_EQUAL(find("a\nb\r", rn, false), 2);
	CU_ASSERT_EQUAL(find("ab\rc\n", rn, false), 3);
	coil__delims_free(rn);
	/* {"\r\n","\r"}: at the same start the first listed wins, and a
	 * trailing "\r" must wait: "\r\n" could still complete. */
	coil__delims *a = mk(2, "\r\n", "\r");
	CU_ASSERT_EQUAL(find("ab\r\n", a, false), 4);
	CU_ASSERT_EQUAL(find("ab\rc", a, false), 3);
	CU_ASSERT_EQUAL(find("ab\r", a, false), 0);
	CU_ASSERT_EQUAL(find("ab\r", a, true), 3);
	coil__delims_free(a);
	/* {"\r","\r\n"}: "\r" listed first wins at once. */
	coil__delims *b = mk(2, "\r", "\r\n");
	CU_ASSERT_EQUAL(find("ab\r\n", b, false), 3);
	CU_ASSERT_EQUAL(find("ab\r", b, false), 3);
	coil__delims_free(b);
	/* Binary delimiters with NUL bytes. */
	const void *d = "\0\1";
	size_t dl = 2;
	coil__delims *bin = NULL;
	T_ASSERT_OK(coil__delims_new(&d, &dl, 1, &bin));
	const char data[] = {'x', 0, 'y', 0, 1, 'z'};
	size_t scan = 0;
	CU_ASSERT_EQUAL(coil__find_line(data, sizeof(data), bin, &scan, false), 5);
	coil__delims_free(bin);
}

static void test_delims_bad(void)
{
	coil__delims *ds = NULL;
	const void *d[17];
	size_t l[17];
	for (int i = 0; i < 17; i++) {
		d[i] = "x";
		l[i] = 1;
	}
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 0, &ds), -EINVAL);
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 17, &ds), -EINVAL);
	l[0] = 0;
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 1, &ds), -EINVAL);
	l[0] = 65;
	CU_ASSERT_EQUAL(coil__delims_new(d, l, 1, &ds), -EINVAL);
	CU_ASSERT_EQUAL(coil__delims_new(NULL, l, 1, &ds), -EINVAL);
	coil__delims_free(NULL);
	coil__delims_free((coil__delims *)&coil__delims_default);
}

/*
 * The acceptance test at the splitter level: 10,000 lines with delimiter
 * sets of 1..20-byte delimiters, fed in random 1..20-byte chunks, split
 * exactly: each line ends with the leftmost delimiter, they reassemble the
 * input, and the resumable scan gives the same answers as a fresh one.
 */
static void test_random_chunks_reassemble(void)
{
	unsigned seed = 42;
	for (int round = 0; round < 4; round++) {
		char dbuf[3][21];
		const void *d[3];
		size_t l[3];
		int nd = 1 + round % 3;
		for (int i = 0; i < nd; i++) {
			l[i] = 1 + (size_t)(rand_r(&seed) % 20);
			for (size_t k = 0; k < l[i]; k++)
				dbuf[i][k] = (char)('A' + i); /* no overlap with text */
			d[i] = dbuf[i];
		}
		coil__delims *ds = NULL;
		T_ASSERT_OK(coil__delims_new(d, l, (size_t)nd, &ds));
		size_t cap = 10000 * 60, len = 0;
		char *in = malloc(cap);
		for (int i = 0; i < 10000; i++) {
			size_t n = (size_t)(rand_r(&seed) % 30);
			for (size_t k = 0; k < n; k++)
				in[len++] = (char)('a' + rand_r(&seed) % 26);
			int which = rand_r(&seed) % nd;
			memcpy(in + len, d[which], l[which]);
			len += l[which];
		}
		coil__bufq q;
		coil__bufq_init(&q);
		size_t off = 0, outlen = 0, scan = 0, lines = 0;
		int bad = 0;
		char *out = malloc(len);
		while (off < len || q.len) {
			if (off < len) {
				size_t n = 1 + (size_t)(rand_r(&seed) % 20);
				if (n > len - off)
					n = len - off;
				coil__bufq_append(&q, in + off, n);
				off += n;
			}
			for (;;) {
				size_t n = coil__find_line(coil__bufq_data(&q), q.len,
							   ds, &scan, off == len);
				if (!n) {
					if (off == len && q.len) {
						bad++; /* input ends with a delimiter */
						q.len = 0;
					}
					break;
				}
				memcpy(out + outlen, coil__bufq_data(&q), n);
				outlen += n;
				coil__bufq_consume(&q, n);
				scan = 0;
				lines++;
			}
		}
		CU_ASSERT_EQUAL(bad, 0);
		CU_ASSERT_EQUAL(lines, 10000);
		CU_ASSERT_EQUAL(outlen, len);
		CU_ASSERT_EQUAL(memcmp(in, out, len), 0);
		free(in);
		free(out);
		coil__bufq_free(&q);
		coil__delims_free(ds);
	}
}

static const coil_test_t tests[] = {
	{"bufq_basics", test_bufq_basics},
	{"bufq_growth_and_shrink", test_bufq_growth_and_shrink},
	{"find_line_rules", test_find_line_rules},
	{"delims_bad", test_delims_bad},
	{"random_chunks_reassemble", test_random_chunks_reassemble},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("buf", tests, argc, argv);
}
