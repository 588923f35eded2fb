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
 * coil__alloc_live / coil__alloc_total). Each thread counts into its own
 * record, written only by that thread with plain relaxed loads and stores (no
 * locked instruction on the allocation path); a reader sums the records of
 * the live threads plus what exited threads left behind. A block freed on
 * another thread than the one that allocated it makes one record go up and
 * another down: only the sum means anything.
 */
struct acount {
	_Atomic int64_t live;
	_Atomic uint64_t total;
	struct acount *next, **pprev;
	int state; /* 0 unregistered, 1 listed, 2 thread exiting */
};

static pthread_mutex_t acount_lock = PTHREAD_MUTEX_INITIALIZER;
static struct acount *acount_list;
/* Counts of exited threads, and of allocations made while a thread exits. */
static _Atomic int64_t acount_gone_live;
static _Atomic uint64_t acount_gone_total;
static pthread_key_t acount_key;
static pthread_once_t acount_once = PTHREAD_ONCE_INIT;
static __thread struct acount tls_acount;

/* Thread exit: fold this thread's counts into the shared remainder. */
static void acount_exit(void *arg)
{
	struct acount *a = arg;
	pthread_mutex_lock(&acount_lock);
	*a->pprev = a->next;
	if (a->next)
		a->next->pprev = a->pprev;
	atomic_fetch_add(&acount_gone_live, atomic_load(&a->live));
	atomic_fetch_add(&acount_gone_total, atomic_load(&a->total));
	a->state = 2;
	pthread_mutex_unlock(&acount_lock);
}

static void acount_init(void)
{
	pthread_key_create(&acount_key, acount_exit);
}

static void acount_register(struct acount *a)
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

static inline void acount_add(int64_t live, uint64_t total)
{
	struct acount *a = &tls_acount;
	if (coil__likely(a->state == 1)) {
		/* Single writer: a relaxed load-add-store is enough. */
		atomic_store_explicit(&a->live,
				      atomic_load_explicit(&a->live,
							   memory_order_relaxed) +
					      live,
				      memory_order_relaxed);
		atomic_store_explicit(&a->total,
				      atomic_load_explicit(&a->total,
							   memory_order_relaxed) +
					      total,
				      memory_order_relaxed);
		return;
	}
	if (a->state == 0) {
		acount_register(a);
		acount_add(live, total);
		return;
	}
	/* The thread is exiting (its record is folded already). */
	atomic_fetch_add_explicit(&acount_gone_live, live,
				  memory_order_relaxed);
	atomic_fetch_add_explicit(&acount_gone_total, total,
				  memory_order_relaxed);
}

size_t coil__alloc_live(void)
{
	pthread_mutex_lock(&acount_lock);
	int64_t live = atomic_load(&acount_gone_live);
	for (struct acount *a = acount_list; a; a = a->next)
		live += atomic_load_explicit(&a->live, memory_order_relaxed);
	pthread_mutex_unlock(&acount_lock);
	return live > 0 ? (size_t)live : 0;
}

uint64_t coil__alloc_total(void)
{
	pthread_mutex_lock(&acount_lock);
	uint64_t total = atomic_load(&acount_gone_total);
	for (struct acount *a = acount_list; a; a = a->next)
		total += atomic_load_explicit(&a->total, memory_order_relaxed);
	pthread_mutex_unlock(&acount_lock);
	return total;
}

void *coil__malloc(size_t n)
{
#ifndef COIL_NO_JEMALLOC
	void *p = mallocx(n ? n : 1, 0);
#else
	void *p = malloc(n ? n : 1);
#endif
	if (p)
		acount_add(1, 1);
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
		acount_add(1, 1);
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
	acount_add(-1, 0);
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
