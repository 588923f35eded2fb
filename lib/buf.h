/* SPDX-License-Identifier: MIT */
/* The byte queue behind readline and the delimiter splitter (buf.c). */
#ifndef COIL_BUF_H
#define COIL_BUF_H

#include <stdbool.h>
#include <stddef.h>

/* ---- byte queue
 *
 * A contiguous FIFO of bytes: the live bytes are buf[off .. off+len), so a
 * line is always one pointer and a length. Four words; holds no storage
 * (buf == NULL, cap == 0) until the first append and again after
 * coil__bufq_free. Not thread-safe: one owner (the channel's worker). */
typedef struct coil__bufq {
	char *buf;
	size_t off, len, cap;
} coil__bufq;

/* Storage larger than this is freed when the queue empties. */
#define COIL__BUFQ_KEEP_MAX (64 * 1024)

void coil__bufq_init(coil__bufq *q);
/* Frees the storage; the queue is empty and usable again. */
void coil__bufq_free(coil__bufq *q);
/* Appends n bytes: 0, or -ENOMEM with q unchanged. Growth is amortised
 * (doubling); a large dead prefix is reclaimed by moving the live bytes to
 * the front rather than by growing. n == 0 is a no-op (p may be NULL). */
int coil__bufq_append(coil__bufq *q, const void *p, size_t n);
/* Puts n bytes in front of the live ones (bytes handed back to where they
 * were consumed from): 0, or -ENOMEM with q unchanged. p must not point into
 * q's storage. n == 0 is a no-op. */
int coil__bufq_prepend(coil__bufq *q, const void *p, size_t n);
/* The first live byte; valid until the next append, consume or take. An
 * empty queue without storage gives "" (never NULL + 0, which UBSan flags). */
static inline const char *coil__bufq_data(const coil__bufq *q)
{
	return q->buf ? q->buf + q->off : "";
}
/* Drops the first n bytes (n <= len; more is clamped). When the queue
 * empties, off returns to 0 and storage above COIL__BUFQ_KEEP_MAX is freed. */
void coil__bufq_consume(coil__bufq *q, size_t n);
/* Frees the storage if the queue is empty (an idle reader keeps nothing);
 * no-op otherwise. */
void coil__bufq_trim(coil__bufq *q);
/* Returns a coil__malloc'ed block (free with coil__free / coil_free) holding
 * the first n bytes and consumes them. Taking everything hands the queue's
 * own storage over (moved to the front, shrunk if mostly unused) instead of
 * copying, leaving q empty with no storage. NULL on -ENOMEM, q unchanged.
 * n == 0 returns a valid 1-byte allocation. n > len is clamped. */
void *coil__bufq_take(coil__bufq *q, size_t n);

/* ---- delimiter sets */

/* Opaque: 1..COIL__DELIMS_MAX delimiters of 1..COIL__DELIM_MAXLEN bytes
 * each, binary-safe, in the order given. Custom sets are one compact heap
 * block (a small header plus the delimiter bytes). */
typedef struct coil__delims coil__delims;
#define COIL__DELIMS_MAX 16
#define COIL__DELIM_MAXLEN 64

/* "\n", static, never freed. */
extern const coil__delims coil__delims_default;
/* Copies n delimiters d[i] of lens[i] bytes into a new set: 0, -EINVAL
 * (n == 0 or > 16, a length 0 or > 64, a NULL pointer), -ENOMEM. */
int coil__delims_new(const void *const *d, const size_t *lens, size_t n,
		     coil__delims **out);
/* Ignores NULL and &coil__delims_default. */
void coil__delims_free(coil__delims *ds);
/* The longest delimiter's length (1..64). */
size_t coil__delims_maxlen(const coil__delims *ds);

/*
 * Finds the end of the first line in data[0..len): returns the line length
 * including its delimiter (> 0), or 0 if no final match yet. Leftmost match
 * wins; of delimiters matching at the same start byte, the one listed first
 * wins. A match is final only if no delimiter listed earlier could still
 * match at that same start once more bytes arrive (data ends inside a proper
 * prefix of it); with eof, no more bytes will come, so a match is always
 * final.
 *
 * *scan is resume state owned by the caller: 0 for fresh data. The function
 * advances it past bytes where no delimiter can start (on a hit, to the
 * line's delimiter), so repeated calls as data grows cost O(new bytes). The
 * caller resets *scan = 0 after consuming a line. A *scan beyond len (stale
 * state) restarts from 0.
 */
size_t coil__find_line(const char *data, size_t len, const coil__delims *ds,
		       size_t *scan, bool eof);

#endif /* COIL_BUF_H */
