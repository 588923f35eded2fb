/* SPDX-License-Identifier: MIT */
/* Provided-buffer rings: one buffer group per worker, fed to multishot recv. */
#include "internal.h"

#include <liburing.h>
#include <string.h>
#include <sys/mman.h>

/*
 * Each worker registers one ring of `count` buffers of `size` bytes. Buffers
 * never stay with a channel: the channel copies (or shows) the bytes and the
 * buffer is recycled in the same completion batch, so a slow reader can never
 * starve the ring. Recycling is batched: coil__bufring_recycle() only writes
 * the ring entry, coil__bufring_flush() publishes the new tail once per batch.
 *
 * liburing 2.3 has no io_uring_setup_buf_ring(), so the ring memory is mapped
 * here and registered with io_uring_register_buf_ring().
 */
struct coil__bufring {
	struct io_uring_buf_ring *br;
	size_t ring_bytes;
	char *bufs;
	size_t bufs_bytes;
	unsigned count, size, mask;
	int pending; /* recycled entries not yet published */
};

int coil__bufring_init(coil__worker *w, unsigned count, unsigned size)
{
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
	if (r->br == MAP_FAILED) {
		coil__free(r);
		return -ENOMEM;
	}
	r->bufs_bytes = (size_t)count * size;
	r->bufs = mmap(NULL, r->bufs_bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r->bufs == MAP_FAILED) {
		munmap(r->br, r->ring_bytes);
		coil__free(r);
		return -ENOMEM;
	}
	io_uring_buf_ring_init(r->br);
	struct io_uring_buf_reg reg = {
		.ring_addr = (unsigned long)r->br,
		.ring_entries = count,
		.bgid = COIL__BGID,
	};
	int rc = io_uring_register_buf_ring(w->ring, &reg, 0);
	if (rc) {
		munmap(r->bufs, r->bufs_bytes);
		munmap(r->br, r->ring_bytes);
		coil__free(r);
		return rc;
	}
	for (unsigned i = 0; i < count; i++)
		io_uring_buf_ring_add(r->br, r->bufs + (size_t)i * size, size,
				      (unsigned short)i, (int)r->mask, (int)i);
	io_uring_buf_ring_advance(r->br, (int)count);
	w->bufring = r;
	return 0;
}

void coil__bufring_free(coil__worker *w)
{
	struct coil__bufring *r = w->bufring;
	if (!r)
		return;
	io_uring_unregister_buf_ring(w->ring, COIL__BGID);
	munmap(r->bufs, r->bufs_bytes);
	munmap(r->br, r->ring_bytes);
	coil__free(r);
	w->bufring = NULL;
}

void *coil__bufring_buf(coil__worker *w, unsigned bid)
{
	return w->bufring->bufs + (size_t)bid * w->bufring->size;
}

void coil__bufring_recycle(coil__worker *w, unsigned bid)
{
	struct coil__bufring *r = w->bufring;
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

unsigned coil__bufring_size(const coil__worker *w)
{
	return w->bufring->size;
}

unsigned coil__bufring_count(const coil__worker *w)
{
	return w->bufring->count;
}
