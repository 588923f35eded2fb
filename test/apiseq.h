/* SPDX-License-Identifier: MIT */
/*
 * apiseq: the API-sequence driver with a byte-accounting oracle (issue 12).
 * Shared by test/test_apiseq.c (seeded random sequences in `make test`) and
 * test/fuzz/fuzz_apiseq.c (libFuzzer: bytes -> operation sequence). Both
 * include apiseq.c directly (the Makefile links one source per test).
 *
 * One run decodes `data` into a configuration (transports, queue sizes, how
 * much the peer sends) and a list of operations, each with a context (posted
 * to the home worker, one of two plain threads, or inside a callback of that
 * channel), runs them over real socketpairs / TCP connections against a peer
 * thread that sends a known stream and records what it receives, frees the
 * loop and then checks the oracle (see docs/reliability.md):
 *  - reads: every byte the peer sent is taken exactly once, in stream order,
 *    by read results / readline signal / read signal (when it alone takes
 *    it), or is reported not delivered (a prefix only: nothing is taken after
 *    a hole); with a full drain the whole stream is taken;
 *  - the read signal sees the arrival stream in order, never a byte twice;
 *  - writes: each finished write reaches the peer once, whole, in its
 *    issuer's order; a failed or aborted one does not (except as the
 *    truncated last record of a stream cut by a close);
 *  - every handle settles and its callback runs exactly once, on its home
 *    worker; closed fires at most once;
 *  - nothing leaks: coil_live_channels() and (when the library has it)
 *    coil__alloc_live() return to their start values.
 */
#ifndef COIL_TEST_APISEQ_H
#define COIL_TEST_APISEQ_H

#include <stddef.h>
#include <stdint.h>

/* Runs one sequence. Returns 0 when the oracle holds, else 1 with a
 * description in err (NUL-terminated, truncated to errlen). verbose > 0
 * prints each operation to stderr. */
int apiseq_run(const uint8_t *data, size_t len, int verbose, char *err,
	       size_t errlen);

/* The known-bug gates in force (comma-separated names, "" for none), after
 * COIL_APISEQ_GATES / COIL_APISEQ_STRICT (docs/reliability.md). */
const char *apiseq_gates(void);

/* Fills buf with n pseudo-random bytes from seed (the seeded driver's
 * input; same seed, same bytes). */
void apiseq_bytes(uint64_t seed, uint8_t *buf, size_t n);

#endif
