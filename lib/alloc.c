/* SPDX-License-Identifier: MIT */
/* The one allocator seam: every coil allocation goes through here. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#ifndef COIL_NO_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

/*
 * coil allocates through jemalloc's non-standard entry points (mallocx and
 * friends) rather than malloc: linking libcoil then never changes which malloc
 * the host program gets, while coil's own objects still come from jemalloc's
 * per-thread caches, which is what keeps per-operation allocations cheap on
 * the workers. Sanitizer and valgrind builds define COIL_NO_JEMALLOC so the
 * tools see every allocation.
 */
void *coil__malloc(size_t n)
{
#ifndef COIL_NO_JEMALLOC
	return mallocx(n ? n : 1, 0);
#else
	return malloc(n ? n : 1);
#endif
}

void *coil__calloc(size_t n, size_t size)
{
	if (size && n > SIZE_MAX / size)
		return NULL;
#ifndef COIL_NO_JEMALLOC
	size_t total = n * size;
	return mallocx(total ? total : 1, MALLOCX_ZERO);
#else
	return calloc(n ? n : 1, size ? size : 1);
#endif
}

void *coil__realloc(void *p, size_t n)
{
	if (!p)
		return coil__malloc(n);
#ifndef COIL_NO_JEMALLOC
	return rallocx(p, n ? n : 1, 0);
#else
	return realloc(p, n ? n : 1);
#endif
}

void coil__free(void *p)
{
	if (!p)
		return;
#ifndef COIL_NO_JEMALLOC
	dallocx(p, 0);
#else
	free(p);
#endif
}

char *coil__strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = coil__malloc(n);
	if (d)
		memcpy(d, s, n);
	return d;
}

void coil_free(void *p)
{
	coil__free(p);
}
