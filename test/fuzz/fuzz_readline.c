/* SPDX-License-Identifier: MIT */
/* libFuzzer target: readline splitting through a byte queue in random chunks. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CHECK(cond)                                                        \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "fuzz_readline: %s:%d: %s\n",     \
				__FILE__, __LINE__, #cond);                \
			abort();                                           \
		}                                                          \
	} while (0)

/* The delimiters as plain arrays, for the reference splitter. */
typedef struct {
	size_t n;
	const uint8_t *d[4];
	size_t l[4];
	size_t maxlen;
} dlist;

/*
 * The splitting rules written as directly as possible, independent of
 * buf.c's search strategies: from the left, the first listed delimiter
 * matching at a start wins, unless an earlier-listed one (or, when none
 * matched, any one) is a proper prefix of the rest and eof is false.
 */
static size_t ref_find(const uint8_t *s, size_t len, const dlist *dl, bool eof)
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

/* xorshift32: the chunking schedule, from a seed in the input. */
static uint32_t next_rand(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/*
 * Input layout: byte 0 picks the number of delimiters (1..4, low two bits)
 * and the largest chunk (upper bits); for each delimiter a length byte
 * (bit 7 clear: 1..4 bytes, so short overlapping delimiters are common; set:
 * 1..64) and then its bytes; four bytes of chunking seed; the rest is the
 * stream. The stream goes through a coil__bufq in random chunks while
 * coil__find_line cuts lines with its resumable scan, the way channel.c
 * does. Checked: every line is what the reference gives for the whole
 * stream at that point (so no line holds an earlier final match, and each
 * ends with the right delimiter), the scan never goes backwards more than a
 * delimiter's length, and the lines plus the unterminated rest reassemble
 * the stream exactly.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t at = 0;
	if (size < 1)
		return 0;
	dlist dl = {.n = 1 + (data[0] & 3)};
	size_t maxchunk = 1 + (data[0] >> 2);
	at = 1;
	for (size_t i = 0; i < dl.n; i++) {
		if (at >= size)
			return 0;
		uint8_t b = data[at++];
		size_t l = b & 0x80 ? 1 + (b & 63) : 1 + (b & 3);
		if (size - at < l)
			return 0;
		dl.d[i] = data + at;
		dl.l[i] = l;
		if (l > dl.maxlen)
			dl.maxlen = l;
		at += l;
	}
	if (size - at < 4)
		return 0;
	uint32_t x;
	memcpy(&x, data + at, 4);
	x |= 1; /* xorshift must not start at 0 */
	at += 4;
	const uint8_t *in = data + at;
	size_t len = size - at;

	coil__delims *ds = NULL;
	const void *dv[4];
	for (size_t i = 0; i < dl.n; i++)
		dv[i] = dl.d[i];
	CHECK(coil__delims_new(dv, dl.l, dl.n, &ds) == 0);
	CHECK(coil__delims_maxlen(ds) == dl.maxlen);

	coil__bufq q;
	coil__bufq_init(&q);
	uint8_t *out = malloc(len ? len : 1);
	CHECK(out);
	size_t off = 0, done = 0, scan = 0;
	while (off < len || q.len) {
		if (off < len) {
			size_t n = 1 + next_rand(&x) % maxchunk;
			if (n > len - off)
				n = len - off;
			CHECK(coil__bufq_append(&q, in + off, n) == 0);
			off += n;
		}
		bool eof = off == len;
		for (;;) {
			size_t prev = scan;
			size_t n = coil__find_line(coil__bufq_data(&q), q.len,
						   ds, &scan, eof);
			CHECK(scan <= q.len);
			CHECK(scan >= prev || prev > q.len);
			if (!n) {
				CHECK(scan + dl.maxlen > q.len || eof);
				if (eof)
					CHECK(!ref_find(in + done, len - done,
							&dl, true));
				break;
			}
			/* The reference over the line plus enough bytes for
			 * any delimiter starting inside it: exact there. */
			size_t win = n + dl.maxlen - 1;
			if (win > len - done)
				win = len - done;
			CHECK(ref_find(in + done, win, &dl, done + win == len)
			      == n);
			CHECK(n <= q.len);
			if (next_rand(&x) & 1) {
				uint8_t *t = coil__bufq_take(&q, n);
				CHECK(t);
				memcpy(out + done, t, n);
				coil__free(t);
			} else {
				memcpy(out + done, coil__bufq_data(&q), n);
				coil__bufq_consume(&q, n);
			}
			done += n;
			scan = 0;
		}
		if (eof && q.len) {
			/* The unterminated last line. */
			memcpy(out + done, coil__bufq_data(&q), q.len);
			done += q.len;
			coil__bufq_consume(&q, q.len);
		}
	}
	CHECK(done == len);
	CHECK(len == 0 || !memcmp(out, in, len));
	CHECK(q.len == 0);
	coil__bufq_free(&q);
	coil__delims_free(ds);
	free(out);
	return 0;
}
