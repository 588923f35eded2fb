/* SPDX-License-Identifier: MIT */
/* Provided-buffer rings: one buffer group per worker, fed to multishot recv. */
#include "internal.h"

#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/*
 * Each worker registers one ring of `count` buffers of `size` bytes. Buffers
 * never stay with a channel: the channel copies (or shows) the bytes and the
 * buffer is recycled in the same completion batch, so a slow reader can never
 * starve the ring. Recycling is batched: coil__bufring_put() only writes
 * the ring entry, coil__bufring_flush() publishes the new tail once per batch.
 *
 * Incremental consumption (IOU_PBUF_RING_INC, Linux 6.12), when the kernel
 * has it and COIL_LOOP_PBUF_INC asks for it (off by default, F17): the kernel packs successive
 * receives (of any connection) into the head buffer at increasing offsets
 * and takes the next buffer only once the head one is full, so a small pool
 * serves many connections (a smaller footprint for the kernel's copies; not
 * counted: no PMU here, docs/performance.md). A completion then
 * names its buffer but not the offset: the ring tracks each buffer's fill
 * (off), which advances by each completion's length in completion order,
 * the order the kernel filled it in. A buffer has holders (refs): the
 * kernel while the buffer sits in the ring (until a completion for it
 * comes without IORING_CQE_F_BUF_MORE), and every completion's bytes until
 * coil__bufring_put() (at once for copied bytes, when the send is done for
 * a write_view). It goes back to the ring, at offset 0, when the last
 * holder lets go. Without the flag every completion ends the kernel's hold,
 * so each buffer holds one completion and goes back on its put (as before).
 *
 * liburing 2.3 has no io_uring_setup_buf_ring(), so the ring memory is mapped
 * here and registered with io_uring_register_buf_ring().
 */
#define COIL__IOU_PBUF_RING_INC 2u            /* io_uring_buf_reg.flags */
/* Default pools (coil_loop_opts_t buf_count/buf_size 0): 2 MiB when
 * buffers are shared by receives (docs/performance.md), 8 MiB otherwise. */
#define COIL__BUF_COUNT 256
#define COIL__BUF_SIZE 32768
#define COIL__BUF_COUNT_INC 64
#define COIL__BUF_SIZE_INC 32768

struct coil__bufring {
	struct io_uring_buf_ring *br;
	size_t ring_bytes;
	char *bufs;
	size_t bufs_bytes;
	unsigned count, size, mask;
	int pending; /* recycled entries not yet published */
	bool inc;    /* registered with IOU_PBUF_RING_INC */
	uint32_t *refs; /* inc: holders of each buffer */
	uint32_t *off;  /* inc: bytes the kernel has put in each buffer */
	unsigned out; /* buffers out of the ring (the kernel is done) */
	uint64_t enobufs, reuses;
	uint64_t nobytes_err, nobytes_zero, nobytes_nomore; /* F17 counts */
#ifdef COIL_PBUF_TRACE
	struct coil__pbuf_ev {
		uint64_t seq;
		const void *who;
		int res;
		unsigned flags, bid, off0, off1, refs;
		char op; /* T take, U unused, P put, R re-added */
	} ev[COIL_PBUF_TRACE_N];
	uint64_t nev;
	const void *who;
#endif
};

#ifdef COIL_PBUF_TRACE
/* The debug trace (F17): the last COIL_PBUF_TRACE_N events of this ring. */
static void trace(struct coil__bufring *r, char op, unsigned bid, int res,
		  unsigned flags, unsigned off0)
{
	struct coil__pbuf_ev *e = &r->ev[r->nev % COIL_PBUF_TRACE_N];
	*e = (struct coil__pbuf_ev){r->nev++, r->who, res, flags, bid, off0,
				    r->inc ? r->off[bid] : 0,
				    r->inc ? r->refs[bid] : 0, op};
}
#define TRACE(r, op, bid, res, flags, off0) trace(r, op, bid, res, flags, off0)
#else
#define TRACE(r, op, bid, res, flags, off0) ((void)0)
#endif

#ifdef COIL_PBUF_TRACE
void coil__bufring_trace_who(coil__worker *w, const void *who)
{
	if (w->bufring)
		w->bufring->who = who;
}
#endif

int coil__bufring_trace_dump(const coil__worker *w, FILE *f)
{
#ifdef COIL_PBUF_TRACE
	const struct coil__bufring *r = w->bufring;
	if (!r)
		return 0;
	uint64_t first = r->nev > COIL_PBUF_TRACE_N ? r->nev - COIL_PBUF_TRACE_N
						    : 0;
	fprintf(f, "pbuf trace: %llu events, last %llu (seq op bid res flags "
		   "off_before off_after refs who)\n",
		(unsigned long long)r->nev,
		(unsigned long long)(r->nev - first));
	for (uint64_t i = first; i < r->nev; i++) {
		const struct coil__pbuf_ev *e = &r->ev[i % COIL_PBUF_TRACE_N];
		fprintf(f, "%llu %c %u %d 0x%x %u %u %u %p\n",
			(unsigned long long)e->seq, e->op, e->bid, e->res,
			e->flags, e->off0, e->off1, e->refs, e->who);
	}
	return 1;
#else
	(void)w;
	(void)f;
	return 0;
#endif
}

/* Registers r's ring, incremental if wanted and the kernel takes it. */
static int bufring_register(coil__worker *w, struct coil__bufring *r, bool inc)
{
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)r->br,
		.ring_entries = r->count,
		.bgid = COIL__BGID,
	};
	if (inc) {
		/* liburing 2.3 names the field pad; the kernel, flags. */
		reg.pad = COIL__IOU_PBUF_RING_INC;
		/* Tests hide the flag as a kernel before 6.12 refuses it. */
		int rc = coil__probe_hide & COIL__FEAT_PBUF_INC
				 ? -EINVAL
				 : io_uring_register_buf_ring(w->ring, &reg, 0);
		if (rc != -EINVAL)
			return rc ? rc : 1;
		/* Before 6.12: an unknown flag. The plain ring then. */
		reg.pad = 0;
	}
	return io_uring_register_buf_ring(w->ring, &reg, 0);
}

static void bufring_unmap(struct coil__bufring *r)
{
	if (r->bufs && r->bufs != MAP_FAILED)
		munmap(r->bufs, r->bufs_bytes);
	if (r->br && r->br != MAP_FAILED)
		munmap(r->br, r->ring_bytes);
	coil__free(r->refs);
	coil__free(r);
}

/* count/size 0: the default for inc. */
static int bufring_new(coil__worker *w, unsigned count, unsigned size,
		       bool inc)
{
	if (!count)
		count = inc ? COIL__BUF_COUNT_INC : COIL__BUF_COUNT;
	if (!size)
		size = inc ? COIL__BUF_SIZE_INC : COIL__BUF_SIZE;
	if (!count || (count & (count - 1)) || count > 32768 || !size)
		return -EINVAL;
	struct coil__bufring *r = coil__calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->count = count;
	r->size = size;
	r->mask = (unsigned)io_uring_buf_ring_mask(count);
	r->ring_bytes = count * sizeof(struct io_uring_buf);
	r->br = mmap(NULL, r->ring_bytes, PROT_READ | PROT_WRITE,
		     MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	r->bufs_bytes = (size_t)count * size;
	r->bufs = mmap(NULL, r->bufs_bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	r->refs = coil__calloc(2 * (size_t)count, sizeof(uint32_t));
	if (r->br == MAP_FAILED || r->bufs == MAP_FAILED || !r->refs) {
		bufring_unmap(r);
		return -ENOMEM;
	}
	r->off = r->refs + count;
	io_uring_buf_ring_init(r->br);
	int rc = bufring_register(w, r, inc);
	if (rc < 0) {
		bufring_unmap(r);
		return rc;
	}
	r->inc = rc == 1;
	if (inc && !r->inc && !w->loop->opts.buf_count) {
		/* A kernel before 6.12 with the small default pool: make it
		 * the whole-buffer default (a second registration). */
		io_uring_unregister_buf_ring(w->ring, COIL__BGID);
		bufring_unmap(r);
		return bufring_new(w, 0, w->loop->opts.buf_size, false);
	}
	for (unsigned i = 0; i < count; i++) {
		io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * size, size,
				      (unsigned short)i, (int)r->mask, (int)i);
		r->refs[i] = 1; /* the kernel's */
	}
	io_uring_buf_ring_advance(r->br, (int)count);
	w->bufring = r;
	return 0;
}

int coil__bufring_init(coil__worker *w, unsigned count, unsigned size)
{
	bool inc = w->loop->opts.flags & COIL_LOOP_PBUF_INC;
	return bufring_new(w, count, size, inc);
}

void coil__bufring_free(coil__worker *w)
{
	struct coil__bufring *r = w->bufring;
	if (!r)
		return;
#ifdef COIL_PBUF_TRACE
	/* Debug builds: COIL_PBUF_TRACE_DUMP=file appends the trace of every
	 * ring freed (apiseq replays: the failing run's last loop). */
	/* COIL_PBUF_TRACE_COUNTS=file: only the counts, one line a ring. */
	const char *dump = getenv("COIL_PBUF_TRACE_DUMP");
	const char *counts = getenv("COIL_PBUF_TRACE_COUNTS");
	FILE *df = dump ? fopen(dump, "a") : counts ? fopen(counts, "a") : NULL;
	if (df) {
		fprintf(df, "ring inc %d events %llu: nobytes err %llu zero %llu "
			    "nomore %llu\n",
			r->inc, (unsigned long long)r->nev,
			(unsigned long long)r->nobytes_err,
			(unsigned long long)r->nobytes_zero,
			(unsigned long long)r->nobytes_nomore);
		if (dump)
			coil__bufring_trace_dump(w, df);
		fclose(df);
	}
#endif
	io_uring_unregister_buf_ring(w->ring, COIL__BGID);
	bufring_unmap(r);
	w->bufring = NULL;
}

char *coil__bufring_take(coil__worker *w, unsigned flags, int res)
{
	struct coil__bufring *r = w->bufring;
	unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
	char *p = r->bufs + (size_t)bid * r->size;
	if (!r->inc) {
		r->out++;
		return p;
	}
	unsigned off0 = r->off[bid];
	p += off0;
	r->off[bid] += (unsigned)res;
	if (flags & COIL__CQE_F_BUF_MORE)
		r->refs[bid]++; /* the kernel keeps filling it */
	else
		r->out++; /* the kernel's hold passes to this completion */
	TRACE(r, 'T', bid, res, flags, off0);
	return p;
}

/*
 * A completion that names a buffer but carries no bytes (res <= 0): what
 * the kernel did with the buffer depends on the result, not on the flags
 * (io_kbuf_commit in io_uring/kbuf.c):
 * - res < 0: nothing was committed; the buffer is still in the ring for
 *   both kinds. Giving it back would put it in the ring twice.
 * - res == 0, whole buffers: the ring's head moved past it (consumed):
 *   it goes back.
 * - res == 0, incremental: nothing was consumed, the buffer stays at the
 *   ring's head at its current fill. Kernels before the fix "io_uring/kbuf:
 *   don't consume buffer for a zero length transfer" (liburing issue 1553)
 *   report it without IORING_CQE_F_BUF_MORE all the same; treating that as
 *   the end of the kernel's hold put the buffer back at offset 0 while the
 *   kernel kept filling it further on, so later completions showed stale
 *   bytes (apiseq seed 8000049, an EOF with 512-byte buffers).
 */
void coil__bufring_unused(coil__worker *w, unsigned flags, int res)
{
	struct coil__bufring *r = w->bufring;
	unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
	/* Counted (cold path): what the handling before 485efdc gave back. */
	if (res < 0)
		r->nobytes_err++;
	else
		r->nobytes_zero++;
	if (r->inc && !(flags & COIL__CQE_F_BUF_MORE))
		r->nobytes_nomore++;
	TRACE(r, 'U', bid, res, flags, r->inc ? r->off[bid] : 0);
	if (res != 0 || r->inc)
		return;
	r->out++;
	coil__bufring_put(w, bid);
}

void coil__bufring_put(coil__worker *w, unsigned bid)
{
	struct coil__bufring *r = w->bufring;
	unsigned off0 = r->inc ? r->off[bid] : 0;
	(void)off0; /* the trace's */
	if (r->inc && --r->refs[bid]) {
		TRACE(r, 'P', bid, 0, 0, off0);
		return;
	}
	if (r->inc) {
		r->refs[bid] = 1;
		r->off[bid] = 0;
	}
	TRACE(r, 'R', bid, 0, 0, off0);
	r->out--;
	r->reuses++;
	io_uring_buf_ring_add(r->br, r->bufs + (size_t)bid * r->size, r->size,
			      (unsigned short)bid, (int)r->mask, r->pending++);
}

void coil__bufring_flush(coil__worker *w)
{
	struct coil__bufring *r = w->bufring;
	if (r && r->pending) {
		io_uring_buf_ring_advance(r->br, r->pending);
		r->pending = 0;
	}
}

void coil__bufring_enobufs(coil__worker *w)
{
	w->bufring->enobufs++;
}

unsigned coil__bufring_size(const coil__worker *w)
{
	return w->bufring->size;
}

unsigned coil__bufring_count(const coil__worker *w)
{
	return w->bufring->count;
}

bool coil__bufring_may_lend(const coil__worker *w)
{
	const struct coil__bufring *r = w->bufring;
	/* Incremental: holds share buffers, so count the buffers kept out of
	 * the ring; otherwise each lent buffer is one hold. */
	return (r->inc ? r->out : w->pinned) < r->count / 2;
}

void coil__bufring_stats(const coil__worker *w, coil__bufring_stat *st)
{
	memset(st, 0, sizeof(*st));
	const struct coil__bufring *r = w->bufring;
	if (!r)
		return;
	st->count = r->count;
	st->size = r->size;
	st->inc = r->inc;
	st->out = r->out;
	st->enobufs = r->enobufs;
	st->reuses = r->reuses;
	st->nobytes_err = r->nobytes_err;
	st->nobytes_zero = r->nobytes_zero;
	st->nobytes_nomore = r->nobytes_nomore;
}
