/* SPDX-License-Identifier: MIT */
/* The per-worker fixed file table: registered slots that mirror the regular
 * descriptors of socket channels, so their ring ops skip the fd lookup. */
#include "internal.h"

#include <liburing.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * Each worker registers one sparse table (IORING_RSRC_REGISTER_SPARSE, 5.19)
 * when its ring is set up. A socket channel takes a slot on its first ring
 * op (channel.c's ring_fd): the slot gets the channel's descriptor through an
 * IORING_OP_FILES_UPDATE SQE prepared just before that op's SQE. The kernel
 * issues a worker's SQEs in order and runs FILES_UPDATE inline at issue, so
 * the slot holds the file before the op looks it up; no link is needed. The
 * user still sees, and coil still uses for everything but the hot ops, the
 * regular descriptor: the slot is a second reference to the same file.
 *
 * That second reference is the danger: a socket stays open while a slot
 * holds it. So the slot is cleared whenever the channel's descriptor is
 * retired or replaced (coil__channel_set_fd, on the home worker), by a
 * FILES_UPDATE of -1 prepared before the ring's close of the descriptor (or
 * synchronously, io_uring_register_files_update, while the worker stops or
 * when no SQE can be had), and the whole table is unregistered before the
 * ring exits.
 *
 * The descriptor an install names is read by the kernel when the SQE is
 * issued, not when it is prepared: the SQE points at fds[slot], which this
 * file owns, never at the channel. Releasing a slot sets fds[slot] to -1
 * first, so an install still waiting in the SQ clears the slot instead of
 * looking up a number that may be reused by then. A slot freed and taken
 * again before the submit is fine too: its clear and its new install issue
 * in that order.
 *
 * Slots are handed out from a free stack (last freed, first reused) and,
 * while it is empty, from the part of the table never used yet, so only the
 * pages of slots in use are touched. A channel that gets no slot (table
 * full, the feature off or missing, registration refused) uses its
 * descriptor, as every channel did before.
 *
 * An install can fail in the kernel only without memory (a small node
 * allocation) or for a descriptor that is no longer open (a bug here). The
 * ops that use the slot then fail with -EBADF and end their channel with
 * that error; the worker counts the failure and stops handing out slots.
 */
struct coil__ftable {
	unsigned nslots;
	unsigned used;      /* slots [0, used) have been handed out once */
	unsigned nfree;     /* entries on the free stack */
	unsigned live;      /* slots held by channels now */
	bool broken;        /* an install failed: no more slots */
	coil__op install_op, clear_op;
	uint64_t installs, clears, fails;
	int *fds;           /* what each slot mirrors, read at issue */
	unsigned *free;     /* the free stack */
};

/* Tests: the table's size (0: the default); set before coil_loop_new. */
unsigned coil__ftable_size_override;

static const int no_fd = -1;

/* Table size: the soft RLIMIT_NOFILE (more descriptors than that cannot be
 * open, so more slots would never be used; the kernel refuses more too),
 * at most COIL__FTABLE_MAX. */
#define COIL__FTABLE_MAX 65536u

static unsigned table_size(void)
{
	if (coil__ftable_size_override)
		return coil__ftable_size_override;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 1024;
	rlim_t n = rl.rlim_cur;
	return n > COIL__FTABLE_MAX ? COIL__FTABLE_MAX : (unsigned)n;
}

static void install_complete(coil__op *op, int res, unsigned flags)
{
	(void)flags;
	coil__worker *w = coil__tls_worker;
	struct coil__ftable *ft = w->ftable;
	if (res < 0 && ft) {
		ft->fails++;
		if (!ft->broken)
			fprintf(stderr,
				"coil: worker %u: fixed file install failed: %s; "
				"no more fixed files on this worker\n",
				w->index, strerror(-res));
		ft->broken = true;
	}
	(void)op;
}

static void clear_complete(coil__op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;
	(void)flags;
}

/*
 * Registers the worker's table (its ring thread, after ring setup). Not
 * having one is not an error: every channel then uses its descriptor. The
 * registration is a raw IORING_REGISTER_FILES2, because liburing's
 * io_uring_register_files_sparse raises the process's RLIMIT_NOFILE when
 * the kernel says -EMFILE, which a library must not do.
 */
void coil__ftable_init(coil__worker *w)
{
	w->ftable = NULL;
	if ((w->loop->opts.flags & COIL_LOOP_NO_FIXED_FILES) ||
	    !coil__op_supported(w, IORING_OP_FILES_UPDATE))
		return;
	unsigned n = table_size();
	if (!n)
		return;
	struct coil__ftable *ft = coil__calloc(1, sizeof(*ft));
	if (!ft)
		return;
	ft->fds = coil__calloc(n, sizeof(*ft->fds));
	ft->free = coil__calloc(n, sizeof(*ft->free));
	if (!ft->fds || !ft->free)
		goto fail;
	struct io_uring_rsrc_register reg;
	memset(&reg, 0, sizeof(reg));
	reg.nr = n;
	reg.flags = IORING_RSRC_REGISTER_SPARSE;
	if (syscall(__NR_io_uring_register, w->ring->ring_fd,
		    IORING_REGISTER_FILES2, &reg, sizeof(reg)) < 0)
		goto fail;
	ft->nslots = n;
	ft->install_op.complete = install_complete;
	ft->clear_op.complete = clear_complete;
	w->ftable = ft;
	return;
fail:
	coil__free(ft->fds);
	coil__free(ft->free);
	coil__free(ft);
}

/* Before the ring exits: every slot's file reference goes now, not when the
 * kernel's ring teardown gets to it (asynchronously, after close). */
void coil__ftable_free(coil__worker *w)
{
	struct coil__ftable *ft = w->ftable;
	if (!ft)
		return;
	w->ftable = NULL;
	io_uring_unregister_files(w->ring);
	coil__free(ft->fds);
	coil__free(ft->free);
	coil__free(ft);
}

int coil__ftable_get(coil__worker *w, int fd)
{
	struct coil__ftable *ft = w->ftable;
	if (!ft || ft->broken || fd < 0 || w->stopping)
		return -1;
	unsigned slot;
	if (ft->nfree)
		slot = ft->free[--ft->nfree];
	else if (ft->used < ft->nslots)
		slot = ft->used++;
	else
		return -1; /* full: the descriptor is used */
	ft->fds[slot] = fd;
	if (coil__prep_files_update(w, &ft->install_op, &ft->fds[slot], slot)) {
		ft->fds[slot] = -1;
		ft->free[ft->nfree++] = slot;
		return -1;
	}
	ft->live++;
	ft->installs++;
	return (int)slot;
}

void coil__ftable_put(coil__worker *w, int slot)
{
	struct coil__ftable *ft = w->ftable;
	/* Off the worker (a free after it exited) the table is gone or going:
	 * its unregistration drops every reference. */
	if (!ft || !coil__on_worker(w) || slot < 0 || (unsigned)slot >= ft->nslots)
		return;
	ft->fds[slot] = -1;
	/* Stopping, the descriptor is closed at once (channel.c), so the slot
	 * is cleared at once too. */
	if (w->stopping ||
	    coil__prep_files_update(w, &ft->clear_op, (int *)&no_fd, (unsigned)slot)) {
		int fd = -1;
		int rc = io_uring_register_files_update(w->ring, (unsigned)slot,
							&fd, 1);
		if (rc < 0) {
			/* Cannot happen (clearing allocates nothing): keep the
			 * slot out of use; unregistration clears it. */
			ft->live--;
			return;
		}
	}
	ft->clears++;
	ft->live--;
	ft->free[ft->nfree++] = (unsigned)slot;
}

void coil__ftable_stats(const coil__worker *w, coil__ftable_stat *st)
{
	const struct coil__ftable *ft = w->ftable;
	memset(st, 0, sizeof(*st));
	if (!ft)
		return;
	st->slots = ft->nslots;
	st->live = ft->live;
	st->installs = ft->installs;
	st->clears = ft->clears;
	st->fails = ft->fails;
}
