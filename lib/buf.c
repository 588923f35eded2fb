/* SPDX-License-Identifier: MIT */
/* The byte queue behind readline and the delimiter splitter. */
#include "internal.h"

#include <string.h>

/* Storage above this is given back when the queue empties, so an idle
 * connection holds no read buffer. */
#define SHRINK_ABOVE (64 * 1024)

struct coil__delims {
	unsigned char n;
	unsigned char maxlen;
	unsigned char len[16];
	unsigned char first[16]; /* first byte of each, for the scan */
	char d[][64];
};

/* "\n", static: one delimiter of one byte. (A static initializer of the
 * flexible array member is a GNU C extension, which gcc and clang accept.) */
const coil__delims coil__delims_default = {
	.n = 1,
	.maxlen = 1,
	.len = {1},
	.first = {'\n'},
	.d = {"\n"},
};

void coil__bufq_init(coil__bufq *q)
{
	q->buf = NULL;
	q->off = q->len = q->cap = 0;
}

void coil__bufq_free(coil__bufq *q)
{
	coil__free(q->buf);
	coil__bufq_init(q);
}

/*
 * Appends n bytes. Compacts (moves the live bytes to the front) when the
 * dead prefix is at least as large as what is live, which keeps the cost
 * amortised O(1) per byte; grows by doubling otherwise. On -ENOMEM the queue
 * is unchanged.
 */
int coil__bufq_append(coil__bufq *q, const void *p, size_t n)
{
	if (!n)
		return 0;
	if (q->off + q->len + n > q->cap && q->off && q->off >= q->len) {
		memmove(q->buf, q->buf + q->off, q->len);
		q->off = 0;
	}
	if (q->off + q->len + n > q->cap) {
		size_t need = q->off + q->len + n;
		if (need < n)
			return -ENOMEM;
		size_t cap = q->cap ? q->cap : 256;
		while (cap < need) {
			if (cap > SIZE_MAX / 2)
				return -ENOMEM;
			cap *= 2;
		}
		char *b = coil__realloc(q->buf, cap);
		if (!b)
			return -ENOMEM;
		q->buf = b;
		q->cap = cap;
	}
	memcpy(q->buf + q->off + q->len, p, n);
	q->len += n;
	return 0;
}

void coil__bufq_consume(coil__bufq *q, size_t n)
{
	if (n > q->len)
		n = q->len;
	q->off += n;
	q->len -= n;
	if (!q->len) {
		q->off = 0;
		if (q->cap > SHRINK_ABOVE) {
			coil__free(q->buf);
			q->buf = NULL;
			q->cap = 0;
		}
	}
}

/*
 * Returns the first n bytes as a block of their own and consumes them. When
 * they are the whole queue and start at the front, the queue's own storage is
 * handed over (no copy) and the queue starts empty.
 */
void *coil__bufq_take(coil__bufq *q, size_t n)
{
	if (n > q->len)
		n = q->len;
	if (n && n == q->len && q->off == 0) {
		void *p = q->buf;
		coil__bufq_init(q);
		return p;
	}
	void *p = coil__malloc(n ? n : 1);
	if (!p)
		return NULL;
	if (n)
		memcpy(p, q->buf + q->off, n);
	coil__bufq_consume(q, n);
	return p;
}

int coil__delims_new(const void *const *d, const size_t *lens, size_t n,
		     coil__delims **out)
{
	if (!d || !lens || !out || n == 0 || n > 16)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!d[i] || lens[i] == 0 || lens[i] > 64)
			return -EINVAL;
	coil__delims *ds = coil__calloc(1, sizeof(*ds) + n * 64);
	if (!ds)
		return -ENOMEM;
	ds->n = (unsigned char)n;
	for (size_t i = 0; i < n; i++) {
		ds->len[i] = (unsigned char)lens[i];
		memcpy(ds->d[i], d[i], lens[i]);
		ds->first[i] = (unsigned char)ds->d[i][0];
		if (lens[i] > ds->maxlen)
			ds->maxlen = (unsigned char)lens[i];
	}
	*out = ds;
	return 0;
}

void coil__delims_free(coil__delims *ds)
{
	if (ds && ds != &coil__delims_default)
		coil__free(ds);
}

/* Whether the bytes data[p..len) are a proper prefix of delimiter i (it
 * could still match at p once more bytes arrive). */
static bool could_match(const char *data, size_t len, size_t p,
			const coil__delims *ds, unsigned i)
{
	size_t have = len - p;
	return have < ds->len[i] && !memcmp(data + p, ds->d[i], have);
}

/*
 * Leftmost match wins; at the same start the delimiter listed first wins,
 * which is decided only once no earlier-listed delimiter can still complete
 * at that start. *scan is the offset below which no delimiter can start: the
 * next call resumes there, so feeding a growing queue costs O(new bytes).
 */
size_t coil__find_line(const char *data, size_t len, const coil__delims *ds,
		       size_t *scan, bool eof)
{
	size_t p = *scan;
	if (p > len)
		p = 0; /* defensive: stale resume state */
	if (ds->n == 1 && ds->len[0] == 1) {
		const char *hit = memchr(data + p, ds->first[0], len - p);
		if (!hit) {
			*scan = len;
			return 0;
		}
		*scan = 0;
		return (size_t)(hit - data) + 1;
	}
	for (; p < len; p++) {
		unsigned char c = (unsigned char)data[p];
		bool pending = false; /* an earlier delimiter may still match */
		for (unsigned i = 0; i < ds->n; i++) {
			if (ds->first[i] != c)
				continue;
			size_t l = ds->len[i];
			if (p + l <= len && !memcmp(data + p, ds->d[i], l)) {
				if (pending && !eof) {
					*scan = p;
					return 0;
				}
				*scan = 0;
				return p + l;
			}
			if (!eof && could_match(data, len, p, ds, i))
				pending = true;
		}
		if (pending) {
			/* Nothing complete at p yet, but something may be:
			 * resume here when more bytes arrive. */
			*scan = p;
			return 0;
		}
	}
	*scan = len;
	return 0;
}
