/* SPDX-License-Identifier: MIT */
/*
 * coil.h - the whole public API of coil: socket and channel I/O on io_uring,
 * spread over worker threads, with promise-like InProgress handles.
 *
 * Conventions used throughout (docs/concepts.md numbers them):
 *  - Functions return 0 (or a non-negative value) on success and -errno on
 *    failure. Failures inside an InProgress carry -errno plus a message.
 *  - Every object has a *home worker*; its callbacks run only there. Calls
 *    marked "any thread" may be made from any thread, including threads coil
 *    did not create; the library forwards them to the home worker.
 *  - Objects are library-allocated and opaque. InProgress handles (coil_ip_t)
 *    are reference counted: a function that returns one gives the caller one
 *    reference, which the caller gives back with coil_ip_unref() or hands on
 *    to a function documented as "consumes ip".
 *  - No user callback ever runs inside the call that started an operation,
 *    except a callback attached with coil_ip_then()/coil_ip_on_done() to an
 *    InProgress that has already settled: that one runs at once (kaa rule),
 *    up to COIL_IP_INLINE_DEPTH nested per worker, then from the ready
 *    queue.
 */
#ifndef COIL_H
#define COIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "coil/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define COIL_EXTERN __attribute__((visibility("default")))
#define COIL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define COIL_EXTERN
#define COIL_PRINTF(a, b)
#endif

/* ------------------------------------------------------------------------ */
/* Version of the library at run time                                       */
/* ------------------------------------------------------------------------ */

/* The version of the libcoil the program runs with, as "MAJOR.MINOR.PATCH"
 * (COIL_VERSION_STRING is the one it was compiled against). Static string,
 * never NULL. Any thread. */
COIL_EXTERN const char *coil_version(void);
/* The same as a number, (MAJOR << 16) | (MINOR << 8) | PATCH, to compare
 * with COIL_VERSION_HEX. Any thread. */
COIL_EXTERN unsigned coil_version_number(void);

/* ------------------------------------------------------------------------ */
/* Errors and memory                                                        */
/* ------------------------------------------------------------------------ */

/* End of stream reached before a read that needs more bytes could finish
 * (read_exact): Python's EOFError. Distinct from every -errno value. */
#define COIL_EOF (-4095)

/* Broken promise: a pending InProgress handle lost its last reference (its
 * producer dropped it without settling it), so nothing can ever settle it;
 * the handles and callbacks waiting on it fail with this instead of
 * hanging. Distinct from every -errno value and from COIL_EOF. */
#define COIL_BROKEN (-4094)

/* Text for a coil error code (negative errno or COIL_EOF). Never NULL; the
 * string is static. Any thread. */
COIL_EXTERN const char *coil_strerror(int err);

/* Frees memory that coil handed over to the caller (for example the bytes
 * returned by coil_ip_steal_bytes()). NULL is ignored. Any thread. */
COIL_EXTERN void coil_free(void *p);

/* ------------------------------------------------------------------------ */
/* Loop: N worker threads, one io_uring ring each                           */
/* ------------------------------------------------------------------------ */

typedef struct coil_loop_s coil_loop_t;

/* Flags for coil_loop_opts_t.flags: each turns off an optional kernel
 * feature, for tests of the fallbacks and for comparisons. */
#define COIL_LOOP_NO_DEFER_TASKRUN 0x1u /* do not try DEFER_TASKRUN */
#define COIL_LOOP_NO_COOP_TASKRUN 0x2u  /* do not try COOP_TASKRUN */
#define COIL_LOOP_NO_READ_MULTISHOT 0x4u /* single reads for pipes/ttys */
#define COIL_LOOP_NO_REGISTERED_RING 0x8u /* do not register the ring fd */
/* Do not register a fixed file table: socket channels' ring ops look their
 * descriptor up each time, as on kernels without one. */
#define COIL_LOOP_NO_FIXED_FILES 0x10u
/* Never use the kernel's min-wait (IORING_FEAT_MIN_TIMEOUT, Linux 6.12)
 * for batch_wait_us, as on kernels without it. */
#define COIL_LOOP_NO_MIN_WAIT 0x20u
/* Opt in to incremental consumption of provided buffers
 * (IOU_PBUF_RING_INC, Linux 6.12): receives of all connections of a worker
 * are packed into one buffer after another, so a 2 MiB pool serves what
 * takes 8 MiB otherwise. Experimental, off by default: no benchmark
 * showed it faster (docs/performance.md); the wrong byte once blamed on it
 * (docs/reliability.md F17) was a test oracle's ambiguity. Without the flag, or
 * on kernels without the feature, every receive takes a whole buffer. */
#define COIL_LOOP_PBUF_INC 0x40u
/* Do not cap multishot receives (sqe->len, Linux 6.16): without the cap a
 * receive that fills a buffer is followed at once by the next from the
 * same socket, up to 32 in a row; with it (buf_size bytes) a full receive
 * gives the other connections their turn first. */
#define COIL_LOOP_NO_RECV_CAP 0x80u

/* Loop options. The struct may grow at its end in later versions: always
 * fill it with coil_loop_opts_init(), which sets size, then change fields.
 * coil_loop_new() reads only the first `size` bytes (so a program built
 * against an older, smaller struct still works) and refuses a larger size
 * whose unknown trailing bytes are not zero. */
typedef struct coil_loop_opts_s {
	size_t size;         /* sizeof(coil_loop_opts_t), set by opts_init */
	unsigned workers;    /* worker threads; 0 = online CPUs */
	unsigned sq_entries; /* SQ size per ring; 0 = 256 */
	unsigned cq_entries; /* CQ size per ring; 0 = 16 * sq_entries */
	/* Receive buffers: one pool of buf_count buffers (a power of 2, at
	 * most 32768) of buf_size bytes per worker, which every socket
	 * receive of that worker fills. Each receive takes a whole buffer,
	 * and 0 means 256 x 32 KiB (8 MiB); with COIL_LOOP_PBUF_INC, where
	 * the kernel consumes them incrementally (Linux 6.12), receives of
	 * all connections are packed into one buffer after another, and 0
	 * means 64 x 32 KiB (2 MiB). A receive that finds the
	 * pool empty waits (retried at the end of the completion batch, no
	 * byte is lost); a bigger pool makes that rarer, a smaller one keeps
	 * the bytes in cache. */
	unsigned buf_count;  /* 0 = the default above */
	unsigned buf_size;   /* 0 = the default above; at most 16 MiB */
	unsigned flags;      /* COIL_LOOP_* */
	/* Batched waits: a worker with nothing to run that has just
	 * submitted k sends or writes waits for k + 1 completions, but at
	 * most batch_wait_us microseconds before it goes on with what has
	 * arrived (the kernel's min-wait, Linux 6.12; without it, with
	 * COIL_LOOP_NO_MIN_WAIT or under COIL_POLL_WAIT/valgrind the option
	 * does nothing). At one busy connection a send's completion and the
	 * next receive then come back in one io_uring_enter instead of two.
	 * The cost: a completion that arrives alone after such a turn (a
	 * write's, when no other event follows) is handled up to
	 * batch_wait_us later. Timers are not delayed (a ring timeout ends
	 * the wait), nor is a busy worker (it never waits). Below the
	 * kernel's tick (4 ms at HZ=250) each such wait arms a timer the
	 * CPU must be programmed for, which costs CPU on virtual machines
	 * (docs/api.md). 0 = off (the default); at most 1000000. */
	unsigned batch_wait_us;
} coil_loop_opts_t;

/* Fills *opts with the defaults (all zero) and sets opts->size. Any
 * thread. */
COIL_EXTERN void coil_loop_opts_init(coil_loop_opts_t *opts);

/* Creates a loop and starts its worker threads. opts may be NULL.
 * Returns 0 and sets *out, or: -EINVAL (bad option, or opts->size not set
 * by coil_loop_opts_init), -E2BIG (opts from a newer coil with non-zero
 * fields this one does not know), -ENOMEM, -ENOSYS (io_uring absent, or the
 * kernel lacks a feature coil needs: multishot recv/accept, provided buffer
 * rings, an opcode), -EPERM (seccomp, io_uring_disabled), or the error of
 * io_uring_queue_init / pthread_create. On failure coil_loop_last_error()
 * says why. Any thread. */
COIL_EXTERN int coil_loop_new(coil_loop_t **out, const coil_loop_opts_t *opts);

/* Text describing why the calling thread's last failed coil_loop_new()
 * failed (naming a missing kernel feature or the bad option), or "" after a
 * success. Thread-local storage owned by coil: valid until the thread's next
 * coil_loop_new(); never NULL. Any thread. */
COIL_EXTERN const char *coil_loop_last_error(void);

/* Stops the loop: every channel, socket, monitor and timer still open is
 * closed immediately (pending InProgress handles fail with -ECANCELED or
 * -EBADF), in-flight completions drain, the threads are joined and all loop
 * memory is freed. InProgress handles the caller still holds stay valid for
 * coil_ip_* getters and coil_ip_unref() only. Returns 0, or -EDEADLK when
 * called from one of the loop's own workers (nothing is done). */
COIL_EXTERN int coil_loop_free(coil_loop_t *loop);

/* Number of workers. Any thread. */
COIL_EXTERN unsigned coil_loop_workers(const coil_loop_t *loop);

/* Index of the calling thread's worker in this loop, or -1 when the caller
 * is not one of its workers. Any thread. */
COIL_EXTERN int coil_loop_current_worker(const coil_loop_t *loop);

/* The io_uring setup flags worker `worker` runs with (IORING_SETUP_*), or
 * -EINVAL for a bad index. Any thread. */
COIL_EXTERN int coil_loop_ring_flags(const coil_loop_t *loop, unsigned worker);

typedef void (*coil_task_cb)(void *arg);

/* Runs fn(arg) on worker `worker` (or, with -1, on the calling worker when
 * the caller is one, else on the next worker round-robin). fn runs exactly
 * once unless the call fails. Returns 0, -EINVAL (bad index), -ENOMEM, or
 * -ESHUTDOWN once the loop is stopping. Any thread. */
COIL_EXTERN int coil_loop_post(coil_loop_t *loop, int worker, coil_task_cb fn,
			       void *arg);

/* ------------------------------------------------------------------------ */
/* InProgress: the promise                                                  */
/* ------------------------------------------------------------------------ */

/*
 * State machine: PENDING -> FINISHED (a value) | FAILED (-errno + message).
 * Aborting a pending handle fails it with -ECANCELED. A handle is freed when
 * its last reference is dropped; pending I/O holds its own reference, so
 * dropping yours never cancels anything (use coil_ip_abort for that). A
 * pending handle whose last reference goes while callbacks or other handles
 * wait on it fails with COIL_BROKEN, so they do not hang.
 *
 * Every callback of a handle runs on its home worker: the worker that created
 * it, or for handles created outside any worker, the worker given by
 * coil_ip_new's round-robin. Callbacks run exactly once.
 */
typedef struct coil_ip_s coil_ip_t;

enum coil_ip_state {
	COIL_IP_PENDING = 0,
	COIL_IP_FINISHED = 1,
	COIL_IP_FAILED = 2,
};

/* Creates a pending handle on `loop` (home: the calling worker if it is one
 * of loop's, else round-robin). Returns NULL on -ENOMEM. Any thread. */
COIL_EXTERN coil_ip_t *coil_ip_new(coil_loop_t *loop);

/* Creates an already finished / already failed handle (for callbacks that
 * return a plain value or an error into a chain). NULL on -ENOMEM. */
COIL_EXTERN coil_ip_t *coil_ip_new_int(coil_loop_t *loop, int64_t value);
COIL_EXTERN coil_ip_t *coil_ip_new_error(coil_loop_t *loop, int err,
					 const char *fmt, ...) COIL_PRINTF(3, 4);

/* Adds a reference (returns ip) / drops one. The last unref frees the handle,
 * its value (through the value's free function) and reports a failure that no
 * one observed (see coil_set_unobserved_handler). Any thread. */
COIL_EXTERN coil_ip_t *coil_ip_ref(coil_ip_t *ip);
COIL_EXTERN void coil_ip_unref(coil_ip_t *ip);

/* Settle a pending handle. finish_bytes/finish_ptr take ownership of data:
 * free_fn(data) runs when the handle is freed (free_fn may be NULL, and
 * coil_free is the right one for coil allocations). Return 0, or -EALREADY
 * if the handle already settled (or is being settled by another thread); the
 * value's ownership then stays with the caller. fail: err must be < 0
 * (-EINVAL otherwise); fmt may be NULL (the message is coil_strerror(err)).
 * Any thread: from a thread other than the home worker the callbacks are
 * forwarded and run there. */
COIL_EXTERN int coil_ip_finish_int(coil_ip_t *ip, int64_t value);
COIL_EXTERN int coil_ip_finish_ptr(coil_ip_t *ip, void *ptr,
				   void (*free_fn)(void *));
COIL_EXTERN int coil_ip_finish_bytes(coil_ip_t *ip, void *data, size_t len,
				     void (*free_fn)(void *));
COIL_EXTERN int coil_ip_fail(coil_ip_t *ip, int err, const char *fmt, ...)
	COIL_PRINTF(3, 4);
COIL_EXTERN int coil_ip_failv(coil_ip_t *ip, int err, const char *fmt,
			      va_list ap);

/* Abort hook: runs on the home worker when the handle is aborted while
 * pending. Return 0 to let the handle fail with -ECANCELED now; 1 when the
 * hook started an asynchronous cancel and will settle the handle itself (with
 * -ECANCELED or, if the cancel lost the race, the real result); a negative
 * errno to refuse (veto) the abort: the handle stays pending and
 * coil_ip_abort() on the home worker returns that error (e.g. -EBUSY for
 * work that can no longer be taken back). A handle settled from another
 * thread may still see its hook run while that settle is under way (the
 * settle of the loser then returns -EALREADY). Set it on the home worker,
 * or before anyone else sees ip; NULL removes it. */
typedef int (*coil_abort_cb)(coil_ip_t *ip, void *arg);
COIL_EXTERN void coil_ip_set_abort(coil_ip_t *ip, coil_abort_cb hook,
				   void *arg);

/* Aborts a pending handle. What it does depends on the handle:
 *  - with an abort hook (every coil I/O handle, sleeps, timeouts, all/any,
 *    or your own via coil_ip_set_abort): the hook decides (coil_abort_cb);
 *  - a chained handle (then/catch/finally): aborts what it currently waits
 *    on (its source, or the handle its callback returned), then fails with
 *    -ECANCELED every link of the chain up to it; no callback of those links
 *    that has not started runs. If what it waits on is not abortable the
 *    chain still stops waiting; if it refuses, the chain stays pending and
 *    the refusal is returned;
 *  - a coil_ip_new() handle without a hook: not abortable, -ENOTSUP, stays
 *    pending.
 * Returns 0 when the abort was done or started, -EALREADY when the handle
 * has settled, -ENOTSUP, or a hook's refusal. From a foreign thread the
 * abort is forwarded to the home worker and 0 means "requested" (a refusal
 * is then not reported): the handle then settles with -ECANCELED or, if
 * completion won the race, its real outcome. Any thread. */
COIL_EXTERN int coil_ip_abort(coil_ip_t *ip);

/* Getters. coil_ip_state is safe from any thread at any time; the value
 * getters are meaningful once the state is not PENDING (they return 0/NULL
 * before). Reading the error marks a failure as observed. */
COIL_EXTERN int coil_ip_state(const coil_ip_t *ip);
COIL_EXTERN int64_t coil_ip_int(const coil_ip_t *ip);
COIL_EXTERN void *coil_ip_ptr(const coil_ip_t *ip);
/* Byte view: valid while the caller holds a reference and has not stolen it.
 * *len may be NULL. */
COIL_EXTERN const void *coil_ip_bytes(const coil_ip_t *ip, size_t *len);
/* Takes ownership of the value (bytes or pointer): the handle forgets it and
 * will not free it; free bytes from coil with coil_free(). Home worker, or
 * any thread once coil_ip_wait() returned 0. */
COIL_EXTERN void *coil_ip_steal_bytes(coil_ip_t *ip, size_t *len);
COIL_EXTERN void *coil_ip_steal_ptr(coil_ip_t *ip);
/* 0 if not failed, else the -errno (marks the failure observed). */
COIL_EXTERN int coil_ip_error(coil_ip_t *ip);
/* The failure message ("" when not failed). Valid while ip is referenced. */
COIL_EXTERN const char *coil_ip_message(const coil_ip_t *ip);
/* The loop of the handle. */
COIL_EXTERN coil_loop_t *coil_ip_loop(const coil_ip_t *ip);

/*
 * Chaining. A then-callback receives the settled source handle (borrowed:
 * valid during the call) and returns either
 *   - NULL, or src itself (no reference needed, none is taken): the chained
 *     handle takes the source's outcome unchanged, or
 *   - the result of coil_ip_return_int()/coil_ip_return_error(): the chained
 *     handle finishes/fails with that plain outcome, or
 *   - a handle (ownership passes to the chain), which is adopted: the chained
 *     handle settles as that one does, when it does. Adoption collapses: a
 *     loop written as adoption (each callback returns the next iteration's
 *     chained handle) holds O(1) handles when its handles share a worker.
 * on_ok runs when the source finished, on_err when it failed; a NULL handler
 * passes that outcome through, so an error skips to the first on_err.
 *
 * A callback attached to an already settled handle runs at once, inside the
 * attaching call, on the home worker (kaa's rule), but only while fewer than
 * COIL_IP_INLINE_DEPTH such callbacks are nested on that worker; beyond, it
 * runs from the worker's ready queue, in order. So no program can grow the
 * stack by walking through settled handles.
 */
#define COIL_IP_INLINE_DEPTH 8
typedef coil_ip_t *(*coil_then_cb)(coil_ip_t *src, void *ud);
typedef void (*coil_done_cb)(coil_ip_t *src, void *ud);

/* Returns the chained handle. CONSUMES the caller's reference to ip, so a
 * chain reads p = coil_ip_then(p, ...); ... Returns NULL (ip consumed, no
 * callback will run) on -ENOMEM or when ip is NULL, so a chain may be checked
 * once at its end. Any thread; callbacks run on ip's home worker. */
COIL_EXTERN coil_ip_t *coil_ip_then(coil_ip_t *ip, coil_then_cb on_ok,
				    coil_then_cb on_err, void *ud);
/* coil_ip_then(ip, NULL, on_err, ud). */
COIL_EXTERN coil_ip_t *coil_ip_catch(coil_ip_t *ip, coil_then_cb on_err,
				     void *ud);
/* cb runs on either outcome; the returned handle mirrors ip. Consumes ip. */
COIL_EXTERN coil_ip_t *coil_ip_finally(coil_ip_t *ip, coil_done_cb cb,
				       void *ud);
/* Plain callback on settle, no chain; does NOT consume ip. Marks a failure
 * observed. Returns 0 or -ENOMEM (then cb never runs). Any thread. */
COIL_EXTERN int coil_ip_on_done(coil_ip_t *ip, coil_done_cb cb, void *ud);

/* For a then-callback's return statement: `return coil_ip_return_int(src,
 * v);` finishes the chained handle with v, `return coil_ip_return_error(src,
 * -EPROTO, "bad %s", x);` fails it (err must be < 0, else -EINVAL; fmt may
 * be NULL). Inside a then-callback running for src on its worker nothing is
 * allocated (the result is a marker only that callback may return, at
 * once); called anywhere else they return a new settled handle, as
 * coil_ip_new_int()/coil_ip_new_error() (NULL on -ENOMEM). */
COIL_EXTERN coil_ip_t *coil_ip_return_int(coil_ip_t *src, int64_t value);
COIL_EXTERN coil_ip_t *coil_ip_return_error(coil_ip_t *src, int err,
					    const char *fmt, ...)
	COIL_PRINTF(3, 4);

/* A loop without writing the chaining: body(prev, ud) runs first with prev
 * = NULL, then each time the handle it returned settles, with prev = that
 * handle (borrowed, whatever its outcome: look at coil_ip_error(prev)). It
 * returns the next iteration's handle (its reference moves to the loop), or
 * NULL (or prev itself) to end the loop: the returned handle then takes
 * prev's outcome (finishes with 0 if body ended at once). body runs on the
 * home worker of the returned handle, never inside coil_ip_repeat(), and
 * one call at a time; an iteration that has settled already runs the next
 * at once within the depth rule (COIL_IP_INLINE_DEPTH), later ones from the
 * ready queue. Constant memory: nothing is allocated per iteration beyond
 * what body makes. Aborting the returned handle aborts the iteration in
 * flight and fails the loop with -ECANCELED; body is not called again (a
 * refusal of the iteration is returned and the loop goes on). NULL on
 * -ENOMEM or a NULL loop; a NULL body gives a handle failed with -EINVAL.
 * Any thread. */
typedef coil_ip_t *(*coil_repeat_cb)(coil_ip_t *prev, void *ud);
COIL_EXTERN coil_ip_t *coil_ip_repeat(coil_loop_t *loop, coil_repeat_cb body,
				      void *ud);

/* Returns a handle that mirrors ip, or fails with -ETIMEDOUT after `ms`
 * milliseconds; with abort_on_timeout, ip is aborted at expiry. Consumes ip.
 * Aborting the returned handle aborts ip (a refusal of ip is returned; if ip
 * is not abortable the timeout just fails with -ECANCELED). NULL on -ENOMEM.
 * Any thread. */
COIL_EXTERN coil_ip_t *coil_ip_timeout(coil_ip_t *ip, unsigned ms,
				       int abort_on_timeout);

/* kaa InProgressAll: finishes (never fails) with n once every member has
 * settled, failed members included. kaa InProgressAny: finishes (never
 * fails) when the first member settles, with coil_ip_int() = its index and
 * coil_ip_ptr() = the member (valid while the combinator is referenced),
 * which carries its own outcome: look at its error (the combinator does not
 * mark it observed). Members are borrowed (the combinator observes them
 * without keeping them alive for their producers). Aborting a combinator
 * aborts its pending members and fails it with -ECANCELED. n == 0: all
 * finishes at once with 0, any fails with -EINVAL; a NULL member fails it
 * with -EINVAL. Any thread. NULL on -ENOMEM. */
COIL_EXTERN coil_ip_t *coil_ip_all(coil_loop_t *loop, coil_ip_t *const *ips,
				   size_t n);
COIL_EXTERN coil_ip_t *coil_ip_any(coil_loop_t *loop, coil_ip_t *const *ips,
				   size_t n);

/* Blocks the calling (non-worker) thread until ip settles or timeout_ms pass
 * (-1: no limit). Returns 0 once settled (then read the outcome with the
 * getters), -ETIMEDOUT (ip stays pending), or -EDEADLK when called on a
 * worker thread of any coil loop. Any non-worker thread; many at once. */
COIL_EXTERN int coil_ip_wait(coil_ip_t *ip, int timeout_ms);

/* A handle that finishes with 0 after ms milliseconds (a ring timeout on the
 * home worker). Abortable: the ring timeout is removed and the handle fails
 * with -ECANCELED. NULL on -ENOMEM. Any thread. */
COIL_EXTERN coil_ip_t *coil_sleep(coil_loop_t *loop, unsigned ms);

/* Called when a failed handle is freed and no one ever looked at its error
 * (then/catch/on_done/coil_ip_error/wait). Not called for -ECANCELED
 * (aborts are deliberate) nor for writes failed with -EBADF because their
 * channel closed (the closed signal tells that). Default: one line on
 * stderr. NULL restores the default. Process-wide and thread-safe: reports
 * and the setter are serialised by one lock, so once the setter returns the
 * old handler is not running and will not run again. The handler runs on
 * the thread that drops the last reference (often a worker), inside that
 * coil_ip_unref(); it may drop references itself but must not block or
 * call coil_set_unobserved_handler() from another thread and wait for it.
 * Any thread. */
typedef void (*coil_unobserved_cb)(int err, const char *msg, void *ud);
COIL_EXTERN void coil_set_unobserved_handler(coil_unobserved_cb cb, void *ud);

/* ------------------------------------------------------------------------ */
/* Channel: buffered async I/O on any stream fd (kaa IOChannel)             */
/* ------------------------------------------------------------------------ */

/*
 * A socket is a channel with connect/listen on top: coil_socket_t is the
 * same type, so every coil_channel_* function applies to sockets.
 * Channel calls are safe from any thread: from a thread other than the home
 * worker they are forwarded there and their InProgress settles there.
 */
typedef struct coil_channel_s coil_channel_t;
typedef struct coil_channel_s coil_socket_t;

#define COIL_IO_READ 0x1
#define COIL_IO_WRITE 0x2

/* Wraps fd (taking ownership: closing the channel closes it). The fd is made
 * non-blocking and close-on-exec. mode: COIL_IO_READ | COIL_IO_WRITE. The
 * home worker is the calling worker, or round-robin. Returns 0 or -EBADF,
 * -EINVAL, -ENOMEM. Any thread. */
COIL_EXTERN int coil_channel_wrap(coil_loop_t *loop, int fd, int mode,
				  coil_channel_t **out);
/* A channel with no descriptor yet: writes queue until one is attached with
 * coil_channel_rewrap() (or, for sockets, until connect succeeds). */
COIL_EXTERN int coil_channel_new(coil_loop_t *loop, coil_channel_t **out);
/* kaa wrap(): closes the current descriptor, if any, then wraps fd. Queued
 * writes are kept and flushed to the new descriptor. */
COIL_EXTERN int coil_channel_rewrap(coil_channel_t *ch, int fd, int mode);
/* A pipe as two channels (read end, write end). */
COIL_EXTERN int coil_channel_pipe(coil_loop_t *loop, coil_channel_t **rd,
				  coil_channel_t **wr);
/* A connected socket pair (coro socketpair) as two sockets: domain
 * AF_UNIX, type SOCK_STREAM (SOCK_DGRAM pairs: use coil_socket_sendto /
 * recvfrom on them). */
COIL_EXTERN int coil_socketpair(coil_loop_t *loop, int domain, int type,
				coil_socket_t **a, coil_socket_t **b);
/* dup(2) of the descriptor as a new channel on the same home worker; the
 * new descriptor belongs to the new channel (closed on its home worker after
 * its release: a loop of dups and releases can run ahead of those closes and
 * fill RLIMIT_NOFILE). -EMFILE when the table is full, -EBADF once ch is
 * closed. Any thread. */
COIL_EXTERN int coil_channel_dup(coil_channel_t *ch, coil_channel_t **out);
/* kaa steal(): ch takes over other's descriptor (a dup of it) and every
 * byte other received and did not deliver, in order: its read queue, bytes
 * held back for its read signal, and what its receive still takes until
 * the cancel lands (ch reads nothing of its own before those). other is
 * left closed (its closed signal fires with expected = true). Synchronous:
 * both must share a home worker and the call must run there (-EXDEV
 * otherwise); -EBUSY while other has writes queued, is being stolen, or
 * inside other's readline callback or its read callback showing held-back
 * bytes (those bytes are a view into other's queues). */
COIL_EXTERN int coil_channel_steal(coil_channel_t *ch, coil_channel_t *other);

/* Drops the caller's handle. If the channel is still open it is closed as by
 * coil_channel_close(ch, 0). After the release takes effect no signal
 * callback of ch runs; InProgress handles already returned stay valid. From
 * a foreign thread, signal callbacks already running on the home worker may
 * still be finishing when this returns. Any thread. */
COIL_EXTERN void coil_channel_release(coil_channel_t *ch);
/* One more user reference to ch (returns ch), for a thread that keeps the
 * channel while another may release it: each reference is dropped with its
 * own coil_channel_release(), and only the last one releases the channel as
 * described above. The caller must already hold a reference (its own or one
 * passed to it). Invalid after coil_loop_free(), like every channel handle.
 * Any thread. */
COIL_EXTERN coil_channel_t *coil_channel_ref(coil_channel_t *ch);

/* Reads. Each returns a new InProgress (NULL on -ENOMEM). At end of stream
 * and after close (kaa), reads finish with what is buffered, then 0 bytes;
 * read_exact fails with COIL_EOF. A read error (-ECONNRESET...) fails the
 * reads that find nothing buffered. Bytes results are owned by the
 * InProgress (coil_ip_bytes; coil_ip_steal_bytes hands them over, to be
 * freed with coil_free, 0-byte results included). A read on a channel not
 * open for reading fails at once with -EBADF, on a listening socket with
 * -ENOTCONN. Aborting a read (or its timeout) takes no byte from the
 * stream. */
/* 1..chunk_size bytes as soon as any are available; 0 bytes = closed. */
COIL_EXTERN coil_ip_t *coil_channel_read(coil_channel_t *ch);
/* The next line including its delimiter; a line longer than queue_size is
 * delivered in pieces of queue_size bytes (no delimiter at the end), the
 * partial line at end of stream, then 0 bytes. -EBUSY while a readline
 * signal callback is connected. */
COIL_EXTERN coil_ip_t *coil_channel_readline(coil_channel_t *ch);
/* Exactly n bytes; at end of stream fails with COIL_EOF and the bytes that
 * did arrive (coil_ip_bytes works on that failed handle). n == 0 finishes at
 * once with 0 bytes; n > queue_size + chunk_size is -EMSGSIZE. */
COIL_EXTERN coil_ip_t *coil_channel_read_exact(coil_channel_t *ch, size_t n);
/* usocket readinto: fills buf with exactly n bytes (no short reads) and
 * finishes with n; at end of stream finishes with the count that arrived
 * (< n). buf must stay valid until the handle settles. Aborted or timed
 * out, it gives the bytes it had copied back to the front of the read
 * queue (the next read starts with them) and fails with no count. */
COIL_EXTERN coil_ip_t *coil_channel_readinto(coil_channel_t *ch, void *buf,
					     size_t n);
/* coro readv: reads sizes[0], sizes[1], ... bytes; finishes with a
 * coil_readv_t (coil_ip_ptr) holding the buffers reached: at end of stream
 * only those, the last possibly truncated. */
typedef struct coil_readv_s {
	size_t count;       /* buffers reached */
	struct iovec iov[]; /* count entries, pointing into this allocation */
} coil_readv_t;
COIL_EXTERN coil_ip_t *coil_channel_readv(coil_channel_t *ch,
					  const size_t *sizes, size_t n);

/* Writes. Bytes leave in call order; the handle finishes with the write's
 * length once its last byte went to the kernel, or fails with the send error
 * (later writes then fail with -EBADF and the channel closes with
 * expected = 0). A write that would push write_queue_used past queue_size
 * fails at once with -ENOBUFS and queues nothing (kaa: the queue never holds
 * more than queue_size; the message names queue_size). On a channel not
 * open for writing: -EBADF; on a listening socket: -ENOTCONN. Abortable
 * until its first byte went into a send (removed, nothing sent, later
 * writes keep their order); after that the abort is refused with -EBUSY
 * and the write completes. len == 0 finishes with 0.
 * Writes before a descriptor exists (or while a socket connects) queue.
 * coil_channel_write/writev copy the bytes. */
COIL_EXTERN coil_ip_t *coil_channel_write(coil_channel_t *ch, const void *data,
					  size_t len);
COIL_EXTERN coil_ip_t *coil_channel_writev(coil_channel_t *ch,
					   const struct iovec *iov, int iovcnt);
/* Zero-copy write: data is not copied. With free_fn, ownership passes to coil
 * and free_fn(data) runs once the bytes are no longer needed (also when the
 * call itself fails); with free_fn == NULL the caller keeps data valid until
 * the handle settles. */
COIL_EXTERN coil_ip_t *coil_channel_write_owned(coil_channel_t *ch, void *data,
						size_t len,
						void (*free_fn)(void *));

/* Zero-copy echo/relay: called inside a read-signal callback with bytes of
 * the chunk being shown (data within the callback's view), the bytes are
 * sent straight from the worker's receive buffer, which stays with the
 * write until they are sent. ch may be the channel being read (echo) or
 * another channel with the same home worker (relay). A worker lends at most
 * half its buffers this way; otherwise (other worker, bytes not from the
 * shown chunk, called anywhere else) the bytes are copied as by
 * coil_channel_write. Same results and errors as coil_channel_write. */
COIL_EXTERN coil_ip_t *coil_channel_write_view(coil_channel_t *ch,
					       const void *data, size_t len);

/* Handle-less writes, for a caller that would drop the handle (a server
 * answering requests): the same queue, order, queue_size rule and close
 * behaviour as coil_channel_write / coil_channel_write_owned, without an
 * InProgress to make, settle and free per write. Returns 0 once the write
 * is queued (len == 0: nothing to do), or the -errno a handle would have
 * failed with at once, nothing queued: -EINVAL (ch NULL, data NULL with
 * len), -EBADF (after close: from another thread once the close reached
 * the home worker, a send before that is dropped with the queued writes;
 * on the home worker also a channel not open for writing), -ENOTCONN (listening socket), -ENOBUFS (queue_size; the
 * drained signal is armed as for a write), -ENOMEM. A send error later
 * fails the writes and closes the channel (closed signal, expected = 0)
 * as with handles; writes after it fail with -EBADF. Not abortable. Off
 * the home worker the write is queued there; if the home worker then has
 * no memory for it, the channel closes at once (closed signal) rather than
 * leave a hole in the stream. send_owned: ownership of data passes to coil
 * whatever the result (free_fn(data) runs once the bytes are sent, or
 * before it returns an error); with free_fn NULL the caller keeps data
 * valid until the bytes are sent (write_queue_used falls, or the closed
 * signal). Callbacks never run inside these calls. Any thread. On the
 * home worker a send of up to 224 bytes while no other such send is queued
 * costs no allocation beyond the channel's write part (the copy goes into
 * the part itself). */
COIL_EXTERN int coil_channel_send(coil_channel_t *ch, const void *data,
				  size_t len);
COIL_EXTERN int coil_channel_send_owned(coil_channel_t *ch, void *data,
					size_t len, void (*free_fn)(void *));

/* kaa close(immediate). Not immediate: alive becomes false at once, queued
 * writes drain, then the descriptor closes. Immediate: queued writes fail with
 * -EBADF. Either way pending reads get what is buffered (or 0 bytes),
 * in-flight ring operations are cancelled, and the closed signal fires once
 * with expected = 1. A second close is a no-op (0). Any thread. */
COIL_EXTERN int coil_channel_close(coil_channel_t *ch, int immediate);

/* Linger, the drain deadline of a graceful close (nginx send_timeout): a
 * channel closing with writes queued that makes no write progress for `ms`
 * milliseconds (counted from the close, then from each send that moved
 * bytes) closes at once; its unsent writes fail with -ETIMEDOUT (the first)
 * and -EBADF. ms == 0: a graceful close is immediate. Default
 * COIL_CHANNEL_LINGER_DEFAULT_MS (30 s). Read when the close begins and at
 * each expiry. Returns 0, -EINVAL, or -ENOMEM (a time other than the
 * default lives in a part of the channel made on first use). Any thread. */
#define COIL_CHANNEL_LINGER_DEFAULT_MS 30000u
COIL_EXTERN int coil_channel_set_linger(coil_channel_t *ch, unsigned ms);
COIL_EXTERN unsigned coil_channel_linger(const coil_channel_t *ch);

/* Drained signal (libuv/node "drain"): cb(ch, ud) runs on the home worker
 * when write_queue_used falls to the low-water mark or below after a write
 * took it above the mark, or after a write was refused with -ENOBUFS (retry
 * then). Not while the channel closes. NULL disconnects. The mark defaults
 * to queue_size / 4; coil_channel_set_low_water sets it (bytes; SIZE_MAX is
 * -EINVAL). Returns 0, -EINVAL or -ENOMEM. Any thread. */
typedef void (*coil_drain_cb)(coil_channel_t *ch, void *ud);
COIL_EXTERN int coil_channel_on_drain(coil_channel_t *ch, coil_drain_cb cb,
				      void *ud);
COIL_EXTERN int coil_channel_set_low_water(coil_channel_t *ch, size_t n);
COIL_EXTERN size_t coil_channel_low_water(const coil_channel_t *ch);

/*
 * Relay: every byte src reads is written to dst, in order, until src's
 * stream ends. src's reading pauses while dst's write queue is at half its
 * queue_size or more and resumes once it drained to dst's low-water mark, so
 * a slow reader behind dst holds at most dst's queue (no -ENOBUFS, no byte
 * lost). When both share a home worker the bytes go from src's receive
 * buffer to dst's send without a copy (coil_channel_write_view rules).
 * Uses src's read signal (-EBUSY if one is connected); dst may receive
 * other writes meanwhile (interleaved at chunk boundaries); one relay per
 * dst at a time (-EBUSY). The handle (home: src's worker) finishes with the
 * bytes dst handed to the kernel once src reached end of stream (or was
 * closed) and every relayed write completed; fails with the first write
 * error, -EPIPE when dst closed first, src's read error, or -ECANCELED when
 * aborted (the relay stops; bytes src already read and did not relay stay
 * in src's read queue). Neither channel is closed by the relay. Both ways:
 * two relays, e.g. coil_ip_all() of coil_channel_relay(a, b) and
 * coil_channel_relay(b, a). NULL on -ENOMEM. Any thread.
 */
COIL_EXTERN coil_ip_t *coil_channel_relay(coil_channel_t *src,
					  coil_channel_t *dst);

/* Signals. Connect with a callback, disconnect with NULL. The data passed to
 * read/readline callbacks is a view valid only during the call. read sees
 * every chunk without taking bytes from read()/readline(). readline is
 * exclusive with coil_channel_readline() (-EBUSY if one is pending). closed
 * fires once, with expected = 1 when close was asked for. Callbacks run on
 * the home worker. Any thread (forwarded). Returns 0 or -EBUSY/-EBADF. */
typedef void (*coil_read_cb)(coil_channel_t *ch, const void *data, size_t len,
			     void *ud);
typedef void (*coil_closed_cb)(coil_channel_t *ch, int expected, void *ud);
COIL_EXTERN int coil_channel_on_read(coil_channel_t *ch, coil_read_cb cb,
				     void *ud);
COIL_EXTERN int coil_channel_on_readline(coil_channel_t *ch, coil_read_cb cb,
					 void *ud);
COIL_EXTERN int coil_channel_on_closed(coil_channel_t *ch, coil_closed_cb cb,
				       void *ud);

/* Properties (kaa names). Getters are safe from any thread (a snapshot). */
COIL_EXTERN int coil_channel_fileno(const coil_channel_t *ch); /* -1: none */
COIL_EXTERN int coil_channel_alive(const coil_channel_t *ch);
COIL_EXTERN int coil_channel_readable(const coil_channel_t *ch);
COIL_EXTERN int coil_channel_writable(const coil_channel_t *ch);
COIL_EXTERN size_t coil_channel_read_queue_used(const coil_channel_t *ch);
COIL_EXTERN size_t coil_channel_write_queue_used(const coil_channel_t *ch);
COIL_EXTERN size_t coil_channel_queue_size(const coil_channel_t *ch);
COIL_EXTERN size_t coil_channel_chunk_size(const coil_channel_t *ch);
/* Setters: 0 or -EINVAL (0 is not a valid size). Any thread. */
COIL_EXTERN int coil_channel_set_queue_size(coil_channel_t *ch, size_t n);
COIL_EXTERN int coil_channel_set_chunk_size(coil_channel_t *ch, size_t n);
/* One delimiter (default "\n") or a set: the leftmost match wins, and of
 * matches starting at the same byte the one listed first. Delimiters are
 * 1..64 bytes; at most 16. Copied. Returns 0, -EINVAL, -ENOMEM. */
COIL_EXTERN int coil_channel_set_delimiter(coil_channel_t *ch,
					   const char *delim);
COIL_EXTERN int coil_channel_set_delimiters(coil_channel_t *ch,
					    const void *const *delims,
					    const size_t *lens, size_t n);
/* What end of stream does (kaa: the channel closes, expected = 0, after its
 * queued writes drain). With 0, the channel stays open for writing after the
 * peer's EOF (half-close: read to the end, then answer); pending and later
 * reads still see the end of stream. Default 1. Any thread. */
COIL_EXTERN int coil_channel_set_close_on_eof(coil_channel_t *ch, int on);
/* The loop and home worker index of ch. */
COIL_EXTERN coil_loop_t *coil_channel_loop(const coil_channel_t *ch);
COIL_EXTERN int coil_channel_worker(const coil_channel_t *ch);
/* User pointer, never touched by coil. */
COIL_EXTERN void coil_channel_set_data(coil_channel_t *ch, void *data);
COIL_EXTERN void *coil_channel_get_data(const coil_channel_t *ch);

/* Channel objects (sockets included) alive in the process, closed ones that
 * are still referenced included (coro get_live_sockets). Any thread. */
COIL_EXTERN size_t coil_live_channels(void);

/* ------------------------------------------------------------------------ */
/* Monitor: readiness of any fd (kaa IOMonitor)                             */
/* ------------------------------------------------------------------------ */

typedef struct coil_monitor_s coil_monitor_t;
/* events: COIL_IO_READ / COIL_IO_WRITE, or a negative errno if polling
 * failed (the monitor is then unregistered). */
typedef void (*coil_monitor_cb)(coil_monitor_t *m, int fd, int events,
				void *ud);

/* Creates an unregistered monitor whose callback runs on its home worker
 * (the calling worker, or round-robin). 0 or -ENOMEM. Any thread. */
COIL_EXTERN int coil_monitor_new(coil_loop_t *loop, coil_monitor_cb cb,
				 void *ud, coil_monitor_t **out);
/* Starts watching fd for condition (COIL_IO_READ and/or COIL_IO_WRITE); the
 * callback runs each time the fd is ready (level-triggered multishot poll).
 * The same fd and condition again: no-op (0). Another fd or condition while
 * registered: -EBUSY. The fd stays the caller's. Any thread. */
COIL_EXTERN int coil_monitor_register(coil_monitor_t *m, int fd,
				      int condition);
/* Stops watching (no callback starts after it takes effect). 0. */
COIL_EXTERN int coil_monitor_unregister(coil_monitor_t *m);
/* Whether registered (1) or not (0). */
COIL_EXTERN int coil_monitor_active(const coil_monitor_t *m);
/* Unregisters and frees once the ring has let go. Any thread. */
COIL_EXTERN void coil_monitor_free(coil_monitor_t *m);

/* ------------------------------------------------------------------------ */
/* Addresses                                                                */
/* ------------------------------------------------------------------------ */

#define COIL_ADDR_INET 1 /* host:service */
#define COIL_ADDR_UNIX 2 /* a Unix socket path */

/* Flags for parsing, connect and listen. */
#define COIL_ADDR_LISTEN 0x1 /* the host may be empty (all interfaces) */
#define COIL_ADDR_IPV4 0x2   /* kaa ipv6=False: never use IPv6 */
#define COIL_ADDR_DGRAM 0x4  /* resolve for SOCK_DGRAM */
/* listen: share the port (SO_REUSEPORT on every shard). Without it a port
 * is exclusive: a listen or bind on a port any socket binds fails with
 * -EADDRINUSE. With it, every socket of the same user that also sets
 * SO_REUSEPORT (another coil process, or any program) may bind the port
 * too and the kernel splits new connections between all of them: use it
 * only for your own processes (N processes serving one port). */
#define COIL_ADDR_REUSEPORT 0x8

/* A parsed address (kaa grammar: an integer port, host:service, :service,
 * [v6]:service, each with %scope, or a Unix path). Plain data: copy freely. */
typedef struct coil_addr_s {
	int kind;           /* COIL_ADDR_INET or COIL_ADDR_UNIX */
	char host[256];     /* without brackets; "" = all interfaces */
	char service[64];   /* as written ("" when absent in listen) */
	uint16_t port;      /* when the service is numeric or resolved */
	char scope[64];     /* as written after '%', "" if none */
	uint32_t scope_id;  /* interface index for the scope (0: none) */
	int numeric;        /* host is an IP literal (or empty): ss is filled */
	struct sockaddr_storage ss; /* numeric address, or sockaddr_un */
	socklen_t sslen;
	char error[160];    /* why parsing failed */
} coil_addr_t;

/* Parses text. Returns 0, or -EINVAL (malformed, port out of range,
 * unbracketed IPv6, trailing garbage, link-local without scope, bad scope),
 * -ENAMETOOLONG (Unix path), -ENODEV (unknown interface), -ENOENT (unknown
 * service), -EACCES/-ELOOP (private Unix directory not ours or a symlink);
 * out->error then says why. Relative Unix names are placed in a private
 * per-user directory under $TMPDIR or /tmp (mode 0700). Does no DNS. Any
 * thread. */
COIL_EXTERN int coil_addr_parse(const char *text, int flags, coil_addr_t *out);

/* Formats a socket address: "1.2.3.4:80", "[::1]:80", "[fe80::1%eth0]:80"
 * or the Unix path. Returns the length written (truncated to n - 1) or
 * -EAFNOSUPPORT. Any thread. */
COIL_EXTERN int coil_addr_format(const struct sockaddr *sa, socklen_t len,
				 char *buf, size_t n);

/* kaa local/peer as a structure. */
typedef struct coil_sockinfo_s {
	int family;          /* AF_INET, AF_INET6, AF_UNIX */
	char host[64];       /* numeric host ("" for Unix) */
	uint16_t port;
	uint32_t flowinfo;
	uint32_t scope_id;
	char scope[64];      /* interface name for scope_id, "" if none */
	char path[108];      /* Unix path ("" otherwise) */
	char reqhost[256];   /* peer only: the host name connect() was given */
} coil_sockinfo_t;
COIL_EXTERN int coil_sockinfo_from(const struct sockaddr *sa, socklen_t len,
				   coil_sockinfo_t *out);

/* Resolves text off the worker threads (getaddrinfo on coil's resolver
 * thread). Finishes with a coil_addrlist_t (coil_ip_ptr, owned by the handle)
 * ordered as they should be tried; fails with -EINVAL (grammar), or the
 * resolver's error mapped to -ENOENT/-EAGAIN/-EAFNOSUPPORT with its text. */
typedef struct coil_addrlist_s {
	size_t count;
	struct {
		struct sockaddr_storage ss;
		socklen_t len;
	} addrs[];
} coil_addrlist_t;
COIL_EXTERN coil_ip_t *coil_resolve(coil_loop_t *loop, const char *text,
				    int flags);

/* Reverse lookup (getnameinfo; libuv uv_getnameinfo, CPython
 * socket.getnameinfo) on coil's resolver thread, never on a worker.
 * flags are getnameinfo's NI_* flags (NI_NUMERICHOST, NI_NAMEREQD,
 * NI_NUMERICSERV, NI_DGRAM...). Finishes with a coil_nameinfo_t (coil_ip_ptr,
 * owned by the handle); fails with -EINVAL (not an IPv4/IPv6 sockaddr),
 * -ENOENT (no name, with NI_NAMEREQD), -EAGAIN, -ECANCELED (loop freed),
 * with getnameinfo's text in the message. NULL only for a NULL loop or
 * -ENOMEM. Any thread. */
typedef struct coil_nameinfo_s {
	char host[1025];   /* NI_MAXHOST */
	char service[32];  /* NI_MAXSERV */
} coil_nameinfo_t;
COIL_EXTERN coil_ip_t *coil_reverse_lookup(coil_loop_t *loop,
					   const struct sockaddr *sa,
					   socklen_t len, int flags);

/* ------------------------------------------------------------------------ */
/* Socket: connect, listen, accept, datagrams (kaa Socket, coro sock)       */
/* ------------------------------------------------------------------------ */

/* A socket with no descriptor yet (created by connect or listen with the
 * family the address needs). 0 or -ENOMEM. Any thread. */
COIL_EXTERN int coil_socket_new(coil_loop_t *loop, coil_socket_t **out);
/* A datagram socket now: family AF_INET, AF_INET6 or AF_UNIX. */
COIL_EXTERN int coil_socket_new_dgram(coil_loop_t *loop, int family,
				      coil_socket_t **out);
/* kaa wrap / coro fd_sock: a socket channel around an existing socket fd
 * (ownership passes to coil). -ENOTSOCK if fd is not a socket. */
COIL_EXTERN int coil_socket_wrap(coil_loop_t *loop, int fd,
				 coil_socket_t **out);

/* Connects to addr (kaa grammar). On a datagram socket: connect(2) (at
 * once for numeric or Unix addresses, after resolving a name off the
 * worker: the first address of the socket's family) sets the default peer:
 * coil_channel_write sends one datagram per write, coil_channel_read and
 * recvfrom take what the peer sends, and ICMP errors (-ECONNREFUSED) fail
 * the next receive (a channel read's error ends its stream; recvfrom just
 * fails). Connecting again changes the peer. On a stream socket: finishes with 0 when connected; fails with
 * -EINVAL/-ENOENT... (address), the resolver's error, -ECONNREFUSED,
 * -ETIMEDOUT (socket timeout), or -EISCONN/-EALREADY when already
 * connected/connecting. Numeric addresses connect at once; names resolve off
 * the worker, IPv6 first unless COIL_ADDR_IPV4, racing the families Happy
 * Eyeballs style (250 ms head start). After a failure the socket may connect
 * again. Any thread. */
COIL_EXTERN coil_ip_t *coil_socket_connect(coil_socket_t *s, const char *addr,
					   int flags);

/* Binds and listens synchronously. The port is exclusive: one listening
 * socket, accepted on the home worker, clients handed out to the workers
 * round-robin. With COIL_ADDR_REUSEPORT in flags, one SO_REUSEPORT socket
 * and multishot accept per worker instead (the kernel spreads connections;
 * other processes may share the port, see COIL_ADDR_REUSEPORT). Unix
 * listeners accept on the home worker and hand clients out round-robin.
 * An accept error that concerns the listening socket itself (not one
 * connection, not a shortage: those are skipped or backed off from) stops
 * the listener: pending and later accepts fail with it ("accept failed")
 * and the listener closes (closed signal, expected = 0). Errors: -EADDRINUSE (also a live
 * Unix socket at the path), -EACCES, -EINVAL, address errors. backlog <= 0
 * means SOMAXCONN. Clients nobody takes (no new-client callback, no
 * accept()) queue up to backlog; newer ones are then turned away. Any
 * non-worker thread (blocks until bound), or the socket's home worker with
 * a numeric or Unix address; other workers get -EDEADLK. */
COIL_EXTERN int coil_socket_listen(coil_socket_t *s, const char *addr,
				   int backlog, int flags);

/* new-client signal: cb receives a new connected client socket, which it
 * owns (release it when done). The client lives on the worker that accepted
 * it, and cb runs there. Connecting a callback stops accept() hand-outs. */
typedef void (*coil_new_client_cb)(coil_socket_t *listener,
				   coil_socket_t *client, void *ud);
COIL_EXTERN int coil_socket_on_new_client(coil_socket_t *s,
					  coil_new_client_cb cb, void *ud);

/* The next client (coil_ip_ptr: a coil_socket_t the caller owns after
 * coil_ip_steal_ptr; if never stolen, it is released with the handle).
 * -EINVAL if not listening, -ETIMEDOUT after the socket timeout. */
COIL_EXTERN coil_ip_t *coil_socket_accept(coil_socket_t *s);
/* coro accept_many: waits for at least one client, then finishes with a
 * coil_clients_t (coil_ip_ptr) of up to max (0: all queued) clients. After
 * coil_ip_steal_ptr the caller releases each socket and coil_free()s the
 * array; if never stolen, the handle releases them all. */
typedef struct coil_clients_s {
	size_t count;
	coil_socket_t *sock[]; /* owned by whoever steals the pointer */
} coil_clients_t;
COIL_EXTERN coil_ip_t *coil_socket_accept_many(coil_socket_t *s, size_t max);

/* Datagrams. sendto: finishes with the bytes sent (copied first). recvfrom:
 * finishes with a coil_datagram_t (coil_ip_ptr) of up to max bytes.
 * Receives on one socket (recvfrom and recvfrom_many) are served in call
 * order (CPython/usocket): the first call gets the first datagram. */
typedef struct coil_datagram_s {
	size_t len;
	struct sockaddr_storage from;
	socklen_t fromlen;
	unsigned char data[];
} coil_datagram_t;
COIL_EXTERN coil_ip_t *coil_socket_sendto(coil_socket_t *s, const void *data,
					  size_t len, const char *addr);
COIL_EXTERN coil_ip_t *coil_socket_sendto_sa(coil_socket_t *s,
					     const void *data, size_t len,
					     const struct sockaddr *sa,
					     socklen_t salen);
COIL_EXTERN coil_ip_t *coil_socket_recvfrom(coil_socket_t *s, size_t max);
/* Batched datagrams (libuv UV_UDP_RECVMMSG, recvmmsg/sendmmsg). io_uring
 * has no batch opcode: a batch waits through the ring for its first
 * datagram (or for room), then moves the rest with one non-blocking
 * recvmmsg/sendmmsg on the home worker.
 * recvfrom_many: up to max_count (1..1024) datagrams of up to max_size
 * bytes each; waits for the first, then takes what is already there.
 * Finishes with a coil_datagrams_t (coil_ip_ptr; stealing it makes the
 * caller coil_free() each dg[i] and the struct). sendto_many: copies the n
 * (1..1024) datagrams (to NULL/tolen 0: the connected peer) and finishes
 * with how many were sent (fewer only on an error after the first; an
 * error before any fails the handle). Both abortable (aborted receives keep
 * what arrived for the next receive), honour non-blocking mode (-EAGAIN),
 * -EINVAL / -ENOTSOCK / -EBADF or the kernel's error. Any thread. */
typedef struct coil_datagrams_s {
	size_t count;
	coil_datagram_t *dg[];
} coil_datagrams_t;
typedef struct coil_dgram_out_s {
	const void *data;
	size_t len;
	const struct sockaddr *to;
	socklen_t tolen;
} coil_dgram_out_t;
COIL_EXTERN coil_ip_t *coil_socket_recvfrom_many(coil_socket_t *s,
						 size_t max_count,
						 size_t max_size);
COIL_EXTERN coil_ip_t *coil_socket_sendto_many(coil_socket_t *s,
					       const coil_dgram_out_t *msgs,
					       size_t n);

/* Descriptor passing over a Unix socket (SCM_RIGHTS; CPython
 * send_fds/recv_fds, libuv uv_write2 / uv_pipe_pending_*). send_fds sends
 * len >= 1 bytes of data with 1..COIL_FDMSG_MAX descriptors, which are
 * duplicated at the call (close yours whenever you like); it finishes with
 * the bytes sent. recv_fds receives up to max bytes and the descriptors
 * that came with them: a coil_fdmsg_t (coil_ip_ptr). The descriptors are
 * close-on-exec; stealing the value (coil_ip_steal_ptr) makes them the
 * caller's, otherwise the handle closes them when freed. Use them on a
 * socket whose stream reading is idle (no read signal, no pending
 * channel read): a channel read takes the bytes and the kernel then drops
 * the descriptors. Both are abortable (the ring op is cancelled). Errors:
 * -EOPNOTSUPP (not a Unix socket), -EINVAL, -EBADF (bad descriptor, or no
 * socket descriptor), the kernel's. Any thread. */
#define COIL_FDMSG_MAX 16
typedef struct coil_fdmsg_s {
	size_t len;                /* bytes in data */
	int nfds;                  /* descriptors in fds */
	int fds[COIL_FDMSG_MAX];
	unsigned char data[];
} coil_fdmsg_t;
COIL_EXTERN coil_ip_t *coil_socket_send_fds(coil_socket_t *s, const int *fds,
					    int nfds, const void *data,
					    size_t len);
COIL_EXTERN coil_ip_t *coil_socket_recv_fds(coil_socket_t *s, size_t max);

/* Binds a datagram socket, or a stream socket before it connects (libuv
 * uv_tcp_bind: each connect attempt binds there first; a bind failure or
 * an address of the other family fails the connect, saying "bind").
 * Listeners bind in coil_socket_listen. ":P" on an AF_INET socket is
 * IPv4's any address. The caller's coil_socket_set_reuseaddr is respected
 * (a port in use is -EADDRINUSE unless both sockets set it);
 * COIL_ADDR_REUSEPORT sets SO_REUSEPORT first (see its meaning above).
 * -EBADF for a datagram socket without a descriptor. */
COIL_EXTERN int coil_socket_bind(coil_socket_t *s, const char *addr,
				 int flags);

/* shutdown(2) after queued writes (SHUT_WR waits for the write queue). On
 * a TLS channel SHUT_WR/SHUT_RDWR send close_notify first (docs/tls.md). */
COIL_EXTERN coil_ip_t *coil_socket_shutdown(coil_socket_t *s, int how);

/* kaa buffer_size: SO_SNDBUF and SO_RCVBUF, applied now if live, else when
 * the descriptor is created. Getter returns the kernel's value (or the
 * pending one), -EBADF if none. Set small sizes before connect or listen
 * (accepted sockets inherit the listener's): on an established TCP
 * connection a receive buffer shrunk below the window already advertised
 * can stall a socket that stops reading while it writes (a paused read
 * signal) for good; the kernel then drops the peer's segments, their
 * acknowledgements included (docs/socket.md). */
COIL_EXTERN int coil_socket_set_buffer_size(coil_socket_t *s, int bytes);
COIL_EXTERN int coil_socket_buffer_size(const coil_socket_t *s);
COIL_EXTERN int coil_socket_set_nodelay(coil_socket_t *s, int on);
COIL_EXTERN int coil_socket_set_keepalive(coil_socket_t *s, int on);
COIL_EXTERN int coil_socket_set_reuseaddr(coil_socket_t *s, int on);
/* usocket settimeout: connect, accept and reads fail with -ETIMEDOUT after
 * ms (0: no timeout). */
COIL_EXTERN int coil_socket_set_timeout(coil_socket_t *s, unsigned ms);
/* usocket setblocking(False) / settimeout(0): with blocking = 0, an
 * operation that cannot complete now fails at once and leaves nothing
 * behind: accept/accept_many with -EAGAIN when no client is waiting,
 * recvfrom with -EAGAIN when no datagram is (sendto with -EAGAIN when the
 * send buffer is full), connect with -EINPROGRESS while the connect goes on
 * (coil_socket_connecting() is 1 until it ends, then coil_socket_connected()
 * tells how it ended). On a stream socket, channel reads too: the socket
 * keeps receiving ahead into its read queue (up to queue_size), and a read
 * that what is queued cannot serve now fails with -EAGAIN, taking nothing
 * (a partial line stays). 0 or -EINVAL /
 * -ENOTSOCK. Any thread. */
COIL_EXTERN int coil_socket_set_blocking(coil_socket_t *s, int blocking);
/* libuv uv_tcp_keepalive: SO_KEEPALIVE plus the idle seconds before the
 * first probe (TCP_KEEPIDLE, 1..32767), now or when the descriptor is made.
 * on = 0 turns keepalive off (delay ignored). Any thread. */
COIL_EXTERN int coil_socket_set_keepalive_delay(coil_socket_t *s, int on,
						unsigned delay_s);
/* libuv uv_tcp_close_reset: closes a TCP socket at once with a reset
 * (SO_LINGER 0: RST, unsent bytes dropped) instead of FIN; the closed
 * signal follows as for coil_channel_close(s, 1). -EOPNOTSUPP if not TCP.
 * The caller still releases s. Any thread. */
COIL_EXTERN int coil_socket_close_reset(coil_socket_t *s);
/* UDP options (libuv uv_udp_set_*), on the live descriptor (-EBADF
 * without one), any thread: SO_BROADCAST; IP_TTL / IPV6_UNICAST_HOPS
 * (1..255); IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS (0..255); multicast
 * loop; membership: join (join = 1) or leave a numeric multicast group,
 * iface being the interface's local IPv4 address or IPv6 interface name
 * (NULL: the kernel picks); the interface multicast is sent from. Errors:
 * -EINVAL (bad value or address), -ENODEV (no such interface),
 * -EOPNOTSUPP (not an IP socket), or the kernel's. */
COIL_EXTERN int coil_socket_set_broadcast(coil_socket_t *s, int on);
COIL_EXTERN int coil_socket_set_ttl(coil_socket_t *s, int ttl);
COIL_EXTERN int coil_socket_set_multicast_ttl(coil_socket_t *s, int ttl);
COIL_EXTERN int coil_socket_set_multicast_loop(coil_socket_t *s, int on);
COIL_EXTERN int coil_socket_set_membership(coil_socket_t *s, const char *group,
					   const char *iface, int join);
COIL_EXTERN int coil_socket_set_multicast_interface(coil_socket_t *s,
						    const char *iface);

/* libuv uv_try_write: sends what fits in the socket buffer now, with no
 * queueing, and returns the bytes sent (maybe fewer than len), or -EAGAIN
 * when nothing can go now (the buffer is full, writes are queued or in
 * flight, or the socket is still connecting: it never overtakes an earlier
 * write), -ENOTCONN (never connected), -EBADF (closed), -EPIPE /
 * -ECONNRESET..., -EOPNOTSUPP on a channel with a stream filter (TLS).
 * Writes made at the same time from other threads are not ordered with it.
 * Any thread. */
COIL_EXTERN int64_t coil_socket_try_write(coil_socket_t *s, const void *data,
					  size_t len);

/* kaa state properties and addresses. */
COIL_EXTERN int coil_socket_connecting(const coil_socket_t *s);
COIL_EXTERN int coil_socket_connected(const coil_socket_t *s);
COIL_EXTERN int coil_socket_listening(const coil_socket_t *s);
COIL_EXTERN int coil_socket_local(const coil_socket_t *s,
				  coil_sockinfo_t *out);
COIL_EXTERN int coil_socket_peer(const coil_socket_t *s, coil_sockinfo_t *out);

/* ------------------------------------------------------------------------ */
/* TLS: starttls over a socket channel (kaa's TLS socket), OpenSSL 3        */
/* ------------------------------------------------------------------------ */

/*
 * After a successful starttls every channel call keeps its meaning over the
 * encrypted stream: reads and the read/readline signals see plaintext,
 * writes take plaintext (queue_size and -ENOBUFS count plaintext bytes; a
 * write finishes once the records carrying its last byte went to the
 * kernel), close(0) sends close_notify after the queued writes, close(1)
 * closes without it. The peer's close_notify is the end of stream; a
 * stream that ends without one (truncation) is a read error: -EPROTO.
 * A fatal TLS error (bad record, alert) ends the stream with -EPROTO and
 * OpenSSL's reason as the reads' message, and closes the channel. TLS 1.2
 * renegotiation is refused. Built with TLS=0 (no OpenSSL), every function
 * here fails with -ENOTSUP (coil_tls_available() says which).
 */
typedef struct coil_tls_ctx_s coil_tls_ctx_t;

#define COIL_TLS_CLIENT 0
#define COIL_TLS_SERVER 1

#define COIL_TLS_VERIFY_NONE 0    /* no certificate check */
#define COIL_TLS_VERIFY_PEER 1    /* client default; server: ask, check */
#define COIL_TLS_VERIFY_REQUIRE 2 /* server: a client certificate is needed */

#define COIL_TLS_1_2 0x0303
#define COIL_TLS_1_3 0x0304

/* 1 when coil was built with OpenSSL, else 0. Any thread. */
COIL_EXTERN int coil_tls_available(void);

/* A context: certificates, CA store, verification, ALPN, versions, session
 * resumption, shared by any number of connections on any workers. role is
 * COIL_TLS_CLIENT (verifies the server against the system CA store unless
 * coil_tls_ctx_set_ca* says otherwise; resumes sessions per host name) or
 * COIL_TLS_SERVER. Defaults: TLS 1.2 minimum, handshake timeout 10 s,
 * session resumption on. Returns 0 and *out (one reference), -EINVAL,
 * -ENOMEM, -ENOTSUP (TLS=0). The setters below may be called only until
 * the context is first used by starttls (-EBUSY after: it is then
 * read-only and safe from every thread); they are not thread-safe among
 * themselves. On failure coil_tls_ctx_error() has OpenSSL's reason. */
COIL_EXTERN int coil_tls_ctx_new(int role, coil_tls_ctx_t **out);
/* Adds a reference (returns c) / drops one; connections hold their own,
 * so a context may be freed while they run. NULL is ignored. Any thread. */
COIL_EXTERN coil_tls_ctx_t *coil_tls_ctx_ref(coil_tls_ctx_t *c);
COIL_EXTERN void coil_tls_ctx_free(coil_tls_ctx_t *c);
/* Why the last setter failed ("" if it did not). Valid until the next
 * setter call on c. */
COIL_EXTERN const char *coil_tls_ctx_error(const coil_tls_ctx_t *c);
/* Certificate chain (PEM: leaf first, then intermediates) and private key,
 * from files or from memory (copied). -EINVAL with the reason (unreadable,
 * malformed, key does not match). */
COIL_EXTERN int coil_tls_ctx_use_cert_file(coil_tls_ctx_t *c,
					   const char *chain_file,
					   const char *key_file);
COIL_EXTERN int coil_tls_ctx_use_cert_mem(coil_tls_ctx_t *c, const void *chain,
					  size_t chain_len, const void *key,
					  size_t key_len);
/* Trusted CAs: a PEM file and/or a hashed directory; both NULL = the
 * system's default store. _mem: PEM certificates in memory (copied). */
COIL_EXTERN int coil_tls_ctx_set_ca(coil_tls_ctx_t *c, const char *file,
				    const char *dir);
COIL_EXTERN int coil_tls_ctx_set_ca_mem(coil_tls_ctx_t *c, const void *pem,
					size_t len);
/* COIL_TLS_VERIFY_*. -EINVAL for another value. */
COIL_EXTERN int coil_tls_ctx_set_verify(coil_tls_ctx_t *c, int mode);
/* ALPN: a client offers protos in this order; a server picks the first of
 * its list the client offered (none in common: no ALPN, not an error).
 * Names of 1..255 bytes, copied; n == 0 clears. */
COIL_EXTERN int coil_tls_ctx_set_alpn(coil_tls_ctx_t *c,
				      const char *const *protos, size_t n);
/* Protocol versions: COIL_TLS_1_2 or COIL_TLS_1_3, 0 = no bound (the
 * minimum is never below TLS 1.2). */
COIL_EXTERN int coil_tls_ctx_set_versions(coil_tls_ctx_t *c, int min, int max);
/* OpenSSL cipher strings for TLS 1.2 and TLS 1.3 (NULL keeps one). */
COIL_EXTERN int coil_tls_ctx_set_ciphers(coil_tls_ctx_t *c, const char *tls12,
					 const char *tls13);
/* Session resumption (server: session cache and tickets; client: the last
 * session per host name is offered again). Default on. */
COIL_EXTERN int coil_tls_ctx_set_session_resumption(coil_tls_ctx_t *c, int on);
/* Handshakes started with c fail with -ETIMEDOUT (and close the channel)
 * after ms; 0 = no limit. Default 10000. */
COIL_EXTERN int coil_tls_ctx_set_handshake_timeout(coil_tls_ctx_t *c,
						   unsigned ms);
/* Server: cb(name, ud) runs during each handshake (on the connection's home
 * worker; name is the client's SNI or NULL) and returns the server context
 * to continue with (its certificate, ALPN list), or NULL to keep c. The
 * returned context must stay alive while cb may return it; the connection
 * takes its own reference. -EINVAL on a client context. */
typedef coil_tls_ctx_t *(*coil_tls_sni_cb)(const char *name, void *ud);
COIL_EXTERN int coil_tls_ctx_set_sni_cb(coil_tls_ctx_t *c, coil_tls_sni_cb cb,
					void *ud);

/* Starts TLS on a connected socket (or any open read-write stream
 * channel): the handshake runs on the channel's home worker and the handle
 * finishes with 0 once it is done (coil_tls_info is then valid). host (may
 * be NULL: no name check) is sent as SNI and verified against the
 * certificate (an IP literal is checked as an address). Fails with:
 * -EINVAL (no context, wrong role, bad host name), -ENOTCONN (not open),
 * -EBUSY (plaintext writes still queued: wait for them), -EALREADY (TLS
 * already), -EKEYREJECTED (certificate verification failed; the message
 * says why: "Hostname mismatch", "certificate has expired"...), -EPROTO
 * (handshake failure: OpenSSL's reason, the peer's alert), -ECONNRESET
 * (the peer closed), -ETIMEDOUT (the context's handshake timeout),
 * -ECANCELED (aborted). Any failure after the call was accepted closes the
 * channel. Bytes already read ahead are taken as the first TLS records.
 * Once TLS is on, coil_channel_dup/rewrap/steal fail with -EOPNOTSUPP on
 * the channel. Records that arrive while no one reads wait (undecrypted)
 * for a read or a signal, so a read signal connected in the handshake's
 * callback sees the peer's first bytes. Any thread. NULL only on -ENOMEM. */
COIL_EXTERN coil_ip_t *coil_socket_starttls_client(coil_socket_t *s,
						   coil_tls_ctx_t *c,
						   const char *host);
COIL_EXTERN coil_ip_t *coil_socket_starttls_server(coil_socket_t *s,
						   coil_tls_ctx_t *c);

/* What a finished handshake negotiated (a copy). */
typedef struct coil_tls_info_s {
	char version[16];        /* "TLSv1.2", "TLSv1.3" */
	char cipher[64];         /* OpenSSL's name of the cipher suite */
	char alpn[256];          /* the ALPN protocol, "" if none */
	char server_name[256];   /* the SNI name (client: the one sent) */
	char peer_subject[512];  /* "/CN=..." of the peer certificate, or "" */
	int session_reused;      /* 1 if the session was resumed */
	int server;              /* 1 on the server side */
} coil_tls_info_t;
/* 0 and *out, -ENOTCONN (no TLS on ch, or the handshake is not done),
 * -EINVAL, -ENOTSUP. Any thread once the starttls handle has finished. */
COIL_EXTERN int coil_tls_info(const coil_channel_t *ch, coil_tls_info_t *out);

/* A TLS listener: like coil_socket_on_new_client, but each accepted client
 * first completes a server handshake with c; cb receives only handshaken
 * clients (it owns them). Clients whose handshake fails or times out are
 * closed and never shown. cb == NULL disconnects. Returns 0, -EINVAL
 * (client context), -EDEADLK (called on another worker than the
 * listener's), -ENOMEM. Any non-worker thread or the listener's worker. */
COIL_EXTERN int coil_socket_on_new_tls_client(coil_socket_t *listener,
					      coil_tls_ctx_t *c,
					      coil_new_client_cb cb, void *ud);

#ifdef __cplusplus
}
#endif
#endif /* COIL_H */
