/* SPDX-License-Identifier: MIT */
/* The byte queue behind readline and the delimiter splitter (buf.c). */
#ifndef COIL_BUF_H
#define COIL_BUF_H

#include <stdbool.h>
#include <stddef.h>

/* Bytes are buf[off .. off+len). Holds no storage when empty. */
typedef struct coil__bufq {
	char *buf;
	size_t off, len, cap;
} coil__bufq;

void coil__bufq_init(coil__bufq *q);
void coil__bufq_free(coil__bufq *q);
int coil__bufq_append(coil__bufq *q, const void *p, size_t n);
static inline const char *coil__bufq_data(const coil__bufq *q)
{
	return q->buf + q->off;
}
void coil__bufq_consume(coil__bufq *q, size_t n);
void *coil__bufq_take(coil__bufq *q, size_t n);

typedef struct coil__delims coil__delims;
extern const coil__delims coil__delims_default;
int coil__delims_new(const void *const *d, const size_t *lens, size_t n,
		     coil__delims **out);
void coil__delims_free(coil__delims *ds);
size_t coil__find_line(const char *data, size_t len, const coil__delims *ds,
		       size_t *scan, bool eof);

#endif
