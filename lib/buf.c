/* SPDX-License-Identifier: MIT */
/* The byte queue behind readline and the delimiter splitter. */
#include "internal.h"

#include <string.h>

/* First allocation of a queue; later ones double. */
#define BUFQ_MIN 256

/* How the splitter searches, chosen once per set in coil__delims_new. */
enum {
	SPLIT_BYTE, /* one delimiter of one byte: memchr */
	SPLIT_ONE,  /* one delimiter of 2..64 bytes: memchr on its first byte */
	SPLIT_FEW,  /* a set with at most FEW_FIRSTS distinct first bytes */
	SPLIT_MANY, /* a set with more: a 256-bit table of first bytes */
};
#define FEW_FIRSTS 3

/*
 * A delimiter set in one allocation: a 68-byte header and the delimiter
 * bytes back to back in list order (delimiter i starts at the sum of the
 * lengths before it), so "\r\n" costs 70 bytes rather than a fixed 16 x 64
 * table. firsts[] holds the distinct first bytes, in which the set scanner
 * looks for candidate starts.
 */
struct coil__delims {
	unsigned char n;
	unsigned char kind;
	unsigned char maxlen;
	unsigned char nfirst;
	unsigned char len[COIL__DELIMS_MAX];
	unsigned char firsts[COIL__DELIMS_MAX];
	uint32_t firstmap[8];
	char bytes[];
};

/* "\n", static. (Initializing a flexible array member in a static object is
 * a GNU C extension that gcc and clang both accept.) */
const coil__delims coil__delims_default = {
	.n = 1,
	.kind = SPLIT_BYTE,
	.maxlen = 1,
	.nfirst = 1,
	.len = {1},
	.firsts = {'\n'},
	.firstmap = {[0] = 1u << '\n'},
	.bytes = "\n",
};

/* ---- byte queue ---- */

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
 * Makes room for n more bytes after the live ones, or returns -ENOMEM with q
 * unchanged. When the dead prefix (off) is at least as large as the live
 * bytes and the free space would suffice, the live bytes move to the front:
 * that memmove is paid for by the bytes consumed since, so it stays
 * amortised O(1) per byte, and a queue that is read as fast as it is filled
 * never grows. Otherwise capacity doubles until it fits; a buffer with a dead
 * prefix is then copied live-bytes-only into a fresh block rather than
 * realloc'ed, so the prefix is not carried along.
 */
static int bufq_reserve(coil__bufq *q, size_t n)
{
	if (n <= q->cap - q->off - q->len)
		return 0;
	if (q->len > SIZE_MAX - n)
		return -ENOMEM;
	size_t need = q->len + n;
	if (q->off >= q->len && need <= q->cap) {
		memmove(q->buf, q->buf + q->off, q->len);
		q->off = 0;
		return 0;
	}
	size_t cap = q->cap ? q->cap : BUFQ_MIN;
	while (cap < need) {
		if (cap > SIZE_MAX / 2) {
			cap = need;
			break;
		}
		cap *= 2;
	}
	char *b;
	if (q->off == 0) {
		b = coil__realloc(q->buf, cap);
		if (!b)
			return -ENOMEM;
	} else {
		b = coil__malloc(cap);
		if (!b)
			return -ENOMEM;
		memcpy(b, q->buf + q->off, q->len);
		coil__free(q->buf);
		q->off = 0;
	}
	q->buf = b;
	q->cap = cap;
	return 0;
}

int coil__bufq_prepend(coil__bufq *q, const void *p, size_t n)
{
	if (!n)
		return 0;
	if (n <= q->off) {
		/* The dead prefix has room (the usual case: the bytes were
		 * just consumed from there). */
		q->off -= n;
		memmove(q->buf + q->off, p, n);
		q->len += n;
		return 0;
	}
	if (q->len > SIZE_MAX - n)
		return -ENOMEM;
	size_t cap = q->cap ? q->cap : BUFQ_MIN;
	while (cap < q->len + n)
		cap = cap > SIZE_MAX / 2 ? q->len + n : cap * 2;
	char *b = coil__malloc(cap);
	if (!b)
		return -ENOMEM;
	memcpy(b, p, n);
	if (q->len)
		memcpy(b + n, q->buf + q->off, q->len);
	coil__free(q->buf);
	q->buf = b;
	q->off = 0;
	q->len += n;
	q->cap = cap;
	return 0;
}

int coil__bufq_append(coil__bufq *q, const void *p, size_t n)
{
	if (!n)
		return 0;
	int rc = bufq_reserve(q, n);
	if (rc)
		return rc;
	memcpy(q->buf + q->off + q->len, p, n);
	q->len += n;
	return 0;
}

/*
 * Consuming is just moving off; the bytes are reclaimed later by compaction
 * or by the reset when the queue empties, which is also where a buffer that
 * grew past COIL__BUFQ_KEEP_MAX for one burst is given back, so one big
 * message does not pin its peak for the life of the connection.
 */
void coil__bufq_consume(coil__bufq *q, size_t n)
{
	if (n > q->len)
		n = q->len;
	q->off += n;
	q->len -= n;
	if (q->len)
		return;
	q->off = 0;
	if (q->cap > COIL__BUFQ_KEEP_MAX)
		coil__bufq_free(q);
}

void coil__bufq_trim(coil__bufq *q)
{
	if (!q->len)
		coil__bufq_free(q);
}

/*
 * Taking everything is the common readline case (one line per arrival), so
 * the queue's block itself is handed over: moved to the front if needed
 * (costing what a copy would, minus an allocation) and given back by
 * realloc if less than half of it is used, so a short line does not pin a
 * large buffer in the caller's hands. A failed shrink keeps the larger
 * block, which is still correct. A prefix is copied into a fresh block.
 */
void *coil__bufq_take(coil__bufq *q, size_t n)
{
	if (n > q->len)
		n = q->len;
	if (!n)
		return coil__malloc(1);
	if (n < q->len) {
		void *p = coil__malloc(n);
		if (!p)
			return NULL;
		memcpy(p, q->buf + q->off, n);
		coil__bufq_consume(q, n);
		return p;
	}
	char *p = q->buf;
	if (q->off)
		memmove(p, p + q->off, n);
	if (q->cap / 2 > n) {
		char *s = coil__realloc(p, n);
		if (s)
			p = s;
	}
	coil__bufq_init(q);
	return p;
}

/* ---- delimiter sets ---- */

/*
 * Validates everything before allocating, so a bad list allocates nothing.
 * The search strategy is fixed here, once per set: one byte (memchr), one
 * longer delimiter (memchr on its first byte), a set with up to FEW_FIRSTS
 * distinct first bytes (one memchr stream each), or the first-byte table.
 */
int coil__delims_new(const void *const *d, const size_t *lens, size_t n,
		     coil__delims **out)
{
	if (!d || !lens || !out || n == 0 || n > COIL__DELIMS_MAX)
		return -EINVAL;
	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (!d[i] || lens[i] == 0 || lens[i] > COIL__DELIM_MAXLEN)
			return -EINVAL;
		total += lens[i];
	}
	coil__delims *ds = coil__calloc(1, sizeof(*ds) + total);
	if (!ds)
		return -ENOMEM;
	ds->n = (unsigned char)n;
	char *at = ds->bytes;
	for (size_t i = 0; i < n; i++) {
		unsigned char f = *(const unsigned char *)d[i];
		ds->len[i] = (unsigned char)lens[i];
		memcpy(at, d[i], lens[i]);
		at += lens[i];
		if (lens[i] > ds->maxlen)
			ds->maxlen = (unsigned char)lens[i];
		if (!(ds->firstmap[f >> 5] & (1u << (f & 31)))) {
			ds->firstmap[f >> 5] |= 1u << (f & 31);
			ds->firsts[ds->nfirst++] = f;
		}
	}
	if (n == 1)
		ds->kind = lens[0] == 1 ? SPLIT_BYTE : SPLIT_ONE;
	else
		ds->kind = ds->nfirst <= FEW_FIRSTS ? SPLIT_FEW : SPLIT_MANY;
	*out = ds;
	return 0;
}

void coil__delims_free(coil__delims *ds)
{
	if (ds && ds != &coil__delims_default)
		coil__free(ds);
}

size_t coil__delims_maxlen(const coil__delims *ds)
{
	return ds->maxlen;
}

/* ---- the splitter ---- */

/*
 * One delimiter of two or more bytes: memchr finds each occurrence of its
 * first byte, memcmp checks the rest. In the last len-1 bytes a full match
 * cannot fit; there a proper prefix means "wait" (unless eof: nothing more
 * can match). Cost per byte is memchr's plus, at each first-byte hit, a
 * compare of at most 63 bytes.
 */
static size_t find_one(const char *data, size_t len, const coil__delims *ds,
		       size_t p, size_t *scan, bool eof)
{
	const char *d = ds->bytes;
	size_t l = ds->len[0];
	while (p < len) {
		const char *h = memchr(data + p, d[0], len - p);
		if (!h)
			break;
		p = (size_t)(h - data);
		size_t have = len - p;
		if (have >= l) {
			if (!memcmp(h + 1, d + 1, l - 1)) {
				*scan = p;
				return p + l;
			}
		} else {
			if (eof)
				break;
			if (!memcmp(h + 1, d + 1, have - 1)) {
				*scan = p;
				return 0;
			}
		}
		p++;
	}
	*scan = len;
	return 0;
}

/*
 * Decides a candidate start p of a set (data[p] is some delimiter's first
 * byte). Returns the line length on a final match; 0 with *wait set if the
 * answer at p depends on bytes not yet here (an earlier-listed delimiter is
 * a proper prefix of the tail, or any delimiter is and none matched); 0
 * with *wait clear if nothing can ever match at p.
 */
static size_t at_candidate(const char *data, size_t len, const coil__delims *ds,
			   size_t p, bool eof, bool *wait)
{
	const char *d = ds->bytes;
	size_t have = len - p;
	bool pending = false;
	*wait = false;
	for (unsigned i = 0; i < ds->n; d += ds->len[i], i++) {
		size_t l = ds->len[i];
		if (d[0] != data[p])
			continue;
		if (have >= l) {
			if (memcmp(data + p + 1, d + 1, l - 1))
				continue;
			if (pending) {
				*wait = true;
				return 0;
			}
			return p + l;
		}
		if (!eof && !memcmp(data + p + 1, d + 1, have - 1))
			pending = true;
	}
	*wait = pending;
	return 0;
}

/*
 * A set with few distinct first bytes (the usual "\r\n" + "\n" kinds): one
 * memchr stream per first byte, each remembering its next hit, so the next
 * candidate is the smallest of them and every byte is looked at by each
 * stream once, at memchr speed.
 */
static size_t find_few(const char *data, size_t len, const coil__delims *ds,
		       size_t p, size_t *scan, bool eof)
{
	size_t next[FEW_FIRSTS];
	unsigned k = ds->nfirst;
	for (unsigned j = 0; j < k; j++) {
		const char *h = memchr(data + p, ds->firsts[j], len - p);
		next[j] = h ? (size_t)(h - data) : len;
	}
	for (;;) {
		unsigned jmin = 0;
		for (unsigned j = 1; j < k; j++)
			if (next[j] < next[jmin])
				jmin = j;
		p = next[jmin];
		if (p >= len)
			break;
		bool wait;
		size_t n = at_candidate(data, len, ds, p, eof, &wait);
		if (n || wait) {
			*scan = p;
			return n;
		}
		const char *h = p + 1 < len ?
			memchr(data + p + 1, ds->firsts[jmin], len - p - 1) :
			NULL;
		next[jmin] = h ? (size_t)(h - data) : len;
	}
	*scan = len;
	return 0;
}

/* A set with many distinct first bytes: a table lookup per byte. */
static size_t find_many(const char *data, size_t len, const coil__delims *ds,
			size_t p, size_t *scan, bool eof)
{
	for (; p < len; p++) {
		unsigned char c = (unsigned char)data[p];
		if (!(ds->firstmap[c >> 5] & (1u << (c & 31))))
			continue;
		bool wait;
		size_t n = at_candidate(data, len, ds, p, eof, &wait);
		if (n || wait) {
			*scan = p;
			return n;
		}
	}
	*scan = len;
	return 0;
}

/*
 * Resumes at *scan: every byte before it was found to start no final match
 * by an earlier call on a prefix of the same data, and more bytes cannot
 * change that, because a start that could still complete stops the scan
 * there (*scan is left on it). So each call looks at the new bytes plus at
 * most maxlen - 1 old ones. A *scan beyond len is stale state from other
 * data: start over rather than read out of bounds.
 */
size_t coil__find_line(const char *data, size_t len, const coil__delims *ds,
		       size_t *scan, bool eof)
{
	size_t p = *scan <= len ? *scan : 0;
	if (p >= len) {
		*scan = len;
		return 0;
	}
	switch (ds->kind) {
	case SPLIT_BYTE: {
		const char *h = memchr(data + p, ds->bytes[0], len - p);
		if (!h) {
			*scan = len;
			return 0;
		}
		*scan = (size_t)(h - data);
		return *scan + 1;
	}
	case SPLIT_ONE:
		return find_one(data, len, ds, p, scan, eof);
	case SPLIT_FEW:
		return find_few(data, len, ds, p, scan, eof);
	default:
		return find_many(data, len, ds, p, scan, eof);
	}
}
