/* SPDX-License-Identifier: MIT */
/* The one allocator seam: every coil allocation goes through here. */
#include "internal.h"

#include <pthread.h>
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
/*
 * Allocation counters (always on, read by tests and benchmarks through
 * coil__alloc_live / coil__alloc_total). Each thread counts its allocations
 * and its frees in its own record, written only by that thread with a plain
 * relaxed load and store (no locked instruction on the allocation path); a
 * reader sums the records of the live threads plus what exited threads left
 * behind. Live = allocations - frees over all threads, so a block freed on
 * another thread than the one that allocated it is counted right.
 */
static pthread_mutex_t acount_lock = PTHREAD_MUTEX_INITIALIZER;
static struct coil__acount *acount_list;
/* Counts of exited threads, and of allocations made while a thread exits. */
static _Atomic uint64_t acount_gone_allocs, acount_gone_frees;
static _Atomic uint64_t acount_gone_reused;
static pthread_key_t acount_key;
static pthread_once_t acount_once = PTHREAD_ONCE_INIT;
__thread struct coil__acount coil__tls_acount;

/* Thread exit: fold this thread's counts into the shared remainder. */
static void acount_exit(void *arg)
{
	struct coil__acount *a = arg;
	pthread_mutex_lock(&acount_lock);
	*a->pprev = a->next;
	if (a->next)
		a->next->pprev = a->pprev;
	atomic_fetch_add(&acount_gone_allocs, atomic_load(&a->allocs));
	atomic_fetch_add(&acount_gone_frees, atomic_load(&a->frees));
	atomic_fetch_add(&acount_gone_reused, atomic_load(&a->reused));
	a->state = 2;
	pthread_mutex_unlock(&acount_lock);
}

static void acount_init(void)
{
	pthread_key_create(&acount_key, acount_exit);
}

static void acount_register(struct coil__acount *a)
{
	pthread_once(&acount_once, acount_init);
	pthread_mutex_lock(&acount_lock);
	a->next = acount_list;
	a->pprev = &acount_list;
	if (acount_list)
		acount_list->pprev = &a->next;
	acount_list = a;
	a->state = 1;
	pthread_mutex_unlock(&acount_lock);
	pthread_setspecific(acount_key, a);
}

void coil__acount_slow(bool is_free, bool reused)
{
	struct coil__acount *a = &coil__tls_acount;
	if (a->state == 0) {
		acount_register(a);
		atomic_fetch_add(is_free ? &a->frees : &a->allocs, 1);
		if (reused)
			atomic_fetch_add(&a->reused, 1);
		return;
	}
	/* The thread is exiting (its record is folded already). */
	atomic_fetch_add(is_free ? &acount_gone_frees : &acount_gone_allocs, 1);
	if (reused)
		atomic_fetch_add(&acount_gone_reused, 1);
}

static inline void acount_alloc(void)
{
	coil__alloc_counted(true);
}

static inline void acount_free(void)
{
	coil__alloc_counted(false);
}

static void acount_sum(uint64_t *allocs, uint64_t *frees)
{
	pthread_mutex_lock(&acount_lock);
	uint64_t al = atomic_load(&acount_gone_allocs);
	uint64_t fr = atomic_load(&acount_gone_frees);
	for (struct coil__acount *a = acount_list; a; a = a->next) {
		al += atomic_load_explicit(&a->allocs, memory_order_relaxed);
		fr += atomic_load_explicit(&a->frees, memory_order_relaxed);
	}
	pthread_mutex_unlock(&acount_lock);
	*allocs = al;
	*frees = fr;
}

size_t coil__alloc_live(void)
{
	uint64_t al, fr;
	acount_sum(&al, &fr);
	return al > fr ? (size_t)(al - fr) : 0;
}

uint64_t coil__alloc_total(void)
{
	pthread_mutex_lock(&acount_lock);
	uint64_t al = atomic_load(&acount_gone_allocs);
	uint64_t re = atomic_load(&acount_gone_reused);
	for (struct coil__acount *a = acount_list; a; a = a->next) {
		/* reused first: a reuse bumps allocs before reused */
		re += atomic_load_explicit(&a->reused, memory_order_relaxed);
		al += atomic_load_explicit(&a->allocs, memory_order_relaxed);
	}
	pthread_mutex_unlock(&acount_lock);
	return al > re ? al - re : 0;
}

void *coil__malloc(size_t n)
{
#ifndef COIL_NO_JEMALLOC
	void *p = mallocx(n ? n : 1, 0);
#else
	void *p = malloc(n ? n : 1);
#endif
	if (p)
		acount_alloc();
	return p;
}

void *coil__calloc(size_t n, size_t size)
{
	if (size && n > SIZE_MAX / size)
		return NULL;
#ifndef COIL_NO_JEMALLOC
	size_t total = n * size;
	void *p = mallocx(total ? total : 1, MALLOCX_ZERO);
#else
	void *p = calloc(n ? n : 1, size ? size : 1);
#endif
	if (p)
		acount_alloc();
	return p;
}

/* A resize keeps the block's count: it is the same allocation. */
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
	acount_free();
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
