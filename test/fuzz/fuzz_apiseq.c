/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the API-sequence oracle (issue 12): the input bytes
 * are decoded by test/apiseq.c into a configuration and a sequence of
 * channel operations (read, readline, read_exact, readinto, write, writev,
 * abort, timeout, close, release, steal, signal connect and disconnect,
 * loop free) made from the home worker, from callbacks and from two plain
 * threads over a socketpair and a TCP connection; after coil_loop_free the
 * byte-accounting oracle must hold (every byte taken once and in order or
 * reported not delivered, every handle settled once, no leak). A violation
 * prints its description and aborts, so libFuzzer keeps the input.
 * The known-bug gates of test/apiseq.c apply (COIL_APISEQ_GATES /
 * COIL_APISEQ_STRICT=1 change them, as for test_apiseq).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../apiseq.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int verbose = -1;
	char err[512];
	if (verbose < 0) {
		const char *v = getenv("COIL_APISEQ_VERBOSE");
		verbose = v ? atoi(v) : 0;
	}
	if (apiseq_run(data, size, verbose, err, sizeof(err))) {
		fprintf(stderr, "apiseq: oracle violated: %s (gates: %s)\n", err,
			apiseq_gates());
		abort();
	}
	return 0;
}
