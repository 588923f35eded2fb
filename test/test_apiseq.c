/* SPDX-License-Identifier: MIT */
/*
 * The API-sequence test (issue 12): seeded random operation sequences over
 * socketpairs and TCP, from the home worker, from callbacks and from plain
 * threads, checked by the byte-accounting oracle of apiseq.c.
 *
 *   COIL_APISEQ_SEED=n     run only seed n (replay a failure), verbosely
 *                          with COIL_APISEQ_VERBOSE=1 (2: dump the reads)
 *   COIL_APISEQ_INPUT=f    run the input file f (a libFuzzer artifact of
 *                          fuzz_apiseq) instead
 *   COIL_APISEQ_ITERS=n    run n seeds (default 200; 12 under valgrind)
 *   COIL_APISEQ_SECONDS=s  run seeds for s seconds instead (long runs)
 *   COIL_APISEQ_FIRST=n    the first seed (default 1)
 *   COIL_APISEQ_TRACE=1    print each seed before it runs
 *   COIL_APISEQ_GATES=...  the known-bug gates (docs/reliability.md);
 *   COIL_APISEQ_STRICT=1   none (every operation and rule on)
 */
#include "apiseq.c"

#include "helpers.h"

#include <inttypes.h>

#define INPUT_LEN 8 + 3 * 96

static uint64_t env_u64(const char *name, uint64_t def)
{
	const char *v = getenv(name);
	return v && *v ? strtoull(v, NULL, 0) : def;
}

static int run_seed(uint64_t seed, int verbose)
{
	uint8_t in[INPUT_LEN];
	char err[512];
	apiseq_bytes(seed, in, sizeof(in));
	if (apiseq_run(in, sizeof(in), verbose, err, sizeof(err))) {
		fprintf(stderr,
			"apiseq: seed %" PRIu64 " FAILED: %s\n"
			"apiseq: replay with COIL_APISEQ_SEED=%" PRIu64
			" COIL_APISEQ_VERBOSE=1 (gates: %s)\n",
			seed, err, seed, apiseq_gates());
		return 1;
	}
	return 0;
}

static void test_sequences(void)
{
	const char *one = getenv("COIL_APISEQ_SEED");
	const char *file = getenv("COIL_APISEQ_INPUT");
	int verbose = (int)env_u64("COIL_APISEQ_VERBOSE", 0);
	if (file && *file) {
		static uint8_t in[1 << 16];
		char err[512];
		FILE *f = fopen(file, "rb");
		CU_ASSERT_PTR_NOT_NULL_FATAL(f);
		size_t n = fread(in, 1, sizeof(in), f);
		fclose(f);
		int rc = apiseq_run(in, n, verbose, err, sizeof(err));
		if (rc)
			fprintf(stderr, "apiseq: %s FAILED: %s\n", file, err);
		CU_ASSERT_EQUAL(rc, 0);
		return;
	}
	if (one && *one) {
		CU_ASSERT_EQUAL(run_seed(strtoull(one, NULL, 0), verbose), 0);
		return;
	}
	uint64_t first = env_u64("COIL_APISEQ_FIRST", 1);
	uint64_t iters = env_u64("COIL_APISEQ_ITERS", t_on_valgrind() ? 12 : 200);
	uint64_t secs = env_u64("COIL_APISEQ_SECONDS", 0);
	/* COIL_APISEQ_TRACE=1: name each seed before it runs (a sanitizer
	 * abort then says which one). */
	int trace = (int)env_u64("COIL_APISEQ_TRACE", 0);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint64_t n = 0, bad = 0;
	fprintf(stderr, "apiseq: gates %s\n", apiseq_gates()[0] ? apiseq_gates()
							   : "(none)");
	for (uint64_t s = first;; s++) {
		if (secs) {
			clock_gettime(CLOCK_MONOTONIC, &t1);
			if ((uint64_t)(t1.tv_sec - t0.tv_sec) >= secs)
				break;
		} else if (n >= iters) {
			break;
		}
		n++;
		if (trace)
			fprintf(stderr, "apiseq: seed %" PRIu64 "\n", s);
		if (run_seed(s, verbose)) {
			bad++;
			if (!secs)
				break;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	fprintf(stderr, "apiseq: %" PRIu64 " sequences, %" PRIu64
			" failed, %.1f s\n",
		n, bad,
		(double)(t1.tv_sec - t0.tv_sec) +
			(double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	CU_ASSERT_EQUAL(bad, 0);
}


/* F17 (docs/reliability.md): a read signal connected while bytes wait in
 * the read queue sees the next arrival, e.g. the stream's last byte alone,
 * and a readinto takes the queued bytes after it. The check must place
 * that 1-byte chunk at the end, not at the first offset whose byte is the
 * same (inside the readinto's bytes): the walk as it was reported the
 * readinto as "not the next bytes of the stream". Deterministic, no
 * sockets: the recorded events and reads are made up. */
static void test_short_chunk_placement(void)
{
	coil_loop_t *loop = t_loop(1);
	aq_run run;
	memset(&run, 0, sizeof(run));
	pthread_mutex_init(&run.mu, NULL);
	pthread_mutex_init(&run.logmu, NULL);
	char err[512] = "";
	run.err = err;
	run.errlen = sizeof(err);
	aq_conn c;
	memset(&c, 0, sizeof(c));
	c.run = &run;
	c.seed = 8000049;
	c.sent = 1537;
	unsigned char last = sbyte(c.seed, c.sent - 1);
	/* The case needs the last byte's value earlier in the stream. */
	uint64_t first = 0;
	while (first < c.sent - 1 && sbyte(c.seed, first) != last)
		first++;
	CU_ASSERT_FATAL(first < c.sent - 1);
	aq_event ev = {.type = EV_SIG, .gen = 1, .flag = F_CONSUMED,
		       .data = &last, .len = 1, .placed = -1};
	c.ev = &ev;
	c.nev = c.capev = 1;
	aq_req r;
	memset(&r, 0, sizeof(r));
	r.kind = K_INTO;
	r.n = (size_t)c.sent - 1;
	r.stamp = -1; /* settled after the chunk */
	unsigned char *buf = calloc(r.n + 1, 1);
	CU_ASSERT_FATAL(buf != NULL);
	for (size_t i = 0; i < r.n; i++)
		buf[i] = sbyte(c.seed, i);
	r.buf = buf;
	r.ip = coil_ip_new_int(loop, (int64_t)r.n);
	CU_ASSERT_FATAL(r.ip != NULL);
	c.reads[0] = &r;
	c.nreads = 1;
	CU_ASSERT_EQUAL(check_reads(&c), 0);
	CU_ASSERT_EQUAL(ev.placed, (long long)c.sent - 1);
	if (err[0])
		fprintf(stderr, "apiseq: %s\n", err);
	/* A byte that is nowhere further on is still caught. */
	unsigned char bad = 0; /* the stream has no 0 */
	ev.data = &bad;
	atomic_store(&run.failed, 0);
	CU_ASSERT_NOT_EQUAL(check_reads(&c), 0);
	coil_ip_unref(r.ip);
	free(buf);
	T_ASSERT_OK(coil_loop_free(loop));
}

int main(int argc, char **argv)
{
	static const coil_test_t tests[] = {
		{"sequences", test_sequences},
		{"short_chunk_placement", test_short_chunk_placement},
		{NULL, NULL},
	};
	return coil_test_main("apiseq", tests, argc, argv);
}
