/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the example HTTP parser must agree with itself across splits. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parser.h"

/*
 * Two sets of limits per input: the defaults, and tight ones that make the
 * 431/413 paths reachable with short inputs.
 */
static const struct http_limits limits[] = {
	HTTP_LIMITS_DEFAULT,
	{96, 4, 16},
};

#define CHECK(cond)                                                        \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "fuzz_http: %s:%d: %s\n", __FILE__, \
				__LINE__, #cond);                          \
			abort();                                           \
		}                                                          \
	} while (0)

/* Views of b relative to base b0 must equal views of a relative to a0. */
static void same_request(const struct http_request *a, const char *a0,
			 const struct http_request *b, const char *b0)
{
	CHECK(a->method - a0 == b->method - b0);
	CHECK(a->method_len == b->method_len);
	CHECK(a->target - a0 == b->target - b0);
	CHECK(a->target_len == b->target_len);
	CHECK(a->minor == b->minor);
	CHECK(a->num_headers == b->num_headers);
	for (size_t i = 0; i < a->num_headers; i++) {
		CHECK(a->headers[i].name - a0 == b->headers[i].name - b0);
		CHECK(a->headers[i].name_len == b->headers[i].name_len);
		CHECK(a->headers[i].value - a0 == b->headers[i].value - b0);
		CHECK(a->headers[i].value_len == b->headers[i].value_len);
	}
	CHECK((a->host == NULL) == (b->host == NULL));
	CHECK(!a->host || a->host - a0 == b->host - b0);
	CHECK(a->content_length == b->content_length);
	CHECK(a->chunked == b->chunked);
	CHECK(a->keep_alive == b->keep_alive);
	CHECK(a->expect_continue == b->expect_continue);
}

/* Every view of a successful parse lies inside the head. */
static void views_inside(const struct http_request *r, const char *b, int head)
{
	const char *e = b + head;

	CHECK(r->method >= b && r->method + r->method_len <= e);
	CHECK(r->target >= b && r->target + r->target_len <= e);
	CHECK(r->minor == 0 || r->minor == 1);
	CHECK(r->num_headers <= HTTP_MAX_HEADERS);
	for (size_t i = 0; i < r->num_headers; i++) {
		CHECK(r->headers[i].name >= b &&
		      r->headers[i].name + r->headers[i].name_len <= e);
		CHECK(r->headers[i].value >= b &&
		      r->headers[i].value + r->headers[i].value_len <= e);
	}
	CHECK(!(r->chunked && r->content_length >= 0));
}

/*
 * Parses data whole, then every prefix in turn as bytes arriving one at a
 * time (resuming with last_len, and from scratch as a cross-check). Each
 * prefix sits at the end of an exact-size allocation so ASan sees any read
 * past it. The first definite answer must equal the whole-input answer.
 */
static int check_head(const uint8_t *data, size_t size,
		      const struct http_limits *lim, char *scratch)
{
	struct http_request whole, part, fresh;
	const char *d = (const char *)data;
	size_t last = 0;
	int rw, rp = HTTP_INCOMPLETE, rf;

	rw = http_parse_request(d, size, 0, &whole, lim);
	CHECK(rw > 0 || rw == HTTP_INCOMPLETE || rw == HTTP_ERR_BAD ||
	      rw == HTTP_ERR_HEADERS_TOO_LARGE || rw == HTTP_ERR_URI_TOO_LONG ||
	      rw == HTTP_ERR_BODY_TOO_LARGE ||
	      rw == HTTP_ERR_NOT_IMPLEMENTED || rw == HTTP_ERR_VERSION);
	if (rw > 0) {
		CHECK((size_t)rw <= size && (size_t)rw <= lim->max_head);
		views_inside(&whole, d, rw);
	}
	for (size_t k = 1; k <= size; k++) {
		char *p = scratch + size - k;

		memcpy(p, d, k);
		rp = http_parse_request(p, k, last, &part, lim);
		rf = http_parse_request(p, k, 0, &fresh, lim);
		CHECK(rp == rf);
		if (rp > 0)
			same_request(&part, p, &fresh, p);
		if (rp != HTTP_INCOMPLETE) {
			if (rp > 0)
				same_request(&whole, d, &part, p);
			break;
		}
		last = k;
	}
	CHECK(rp == rw);
	return rw;
}

/* Deterministic pseudo-random piece sizes, seeded from the input. */
static uint32_t next_rand(uint32_t *s)
{
	*s = *s * 1103515245u + 12345u;
	return *s >> 16;
}

/*
 * Decodes body[0..n) as a chunked body whole, then in pieces: sizes from
 * the generator when seed is nonzero, single bytes when it is zero. Each
 * piece is copied into its own exact-size allocation. Result, decoded
 * bytes and the count of bytes after the body must all agree.
 */
static void check_chunked(const char *body, size_t n,
			  const struct http_limits *lim, uint32_t seed)
{
	struct http_chunked cw, cp;
	char *whole = malloc(n + 1), *out = malloc(n + 1);
	size_t wlen = n, olen = 0, pos = 0;
	int rw, rp = HTTP_INCOMPLETE;

	CHECK(whole && out);
	memcpy(whole, body, n);
	http_chunked_init(&cw, lim);
	rw = http_chunked_decode(&cw, whole, &wlen);
	CHECK(wlen <= n);
	CHECK(rw == HTTP_INCOMPLETE || rw >= 0 || rw == HTTP_ERR_BAD ||
	      rw == HTTP_ERR_BODY_TOO_LARGE ||
	      rw == HTTP_ERR_HEADERS_TOO_LARGE);
	if (rw >= 0) {
		CHECK(wlen + (size_t)rw <= n);
		CHECK(memcmp(whole + wlen, body + n - rw, (size_t)rw) == 0);
	}

	http_chunked_init(&cp, lim);
	while (pos < n) {
		size_t m = seed ? 1 + next_rand(&seed) % 64 : 1, got;
		char *piece;

		if (m > n - pos)
			m = n - pos;
		piece = malloc(m);
		CHECK(piece);
		memcpy(piece, body + pos, m);
		got = m;
		rp = http_chunked_decode(&cp, piece, &got);
		CHECK(got <= m);
		memcpy(out + olen, piece, got);
		olen += got;
		pos += m;
		if (rp >= 0) {
			rp += (int)(n - pos); /* bytes after this piece */
			free(piece);
			break;
		}
		free(piece);
		if (rp != HTTP_INCOMPLETE)
			break;
	}
	CHECK(rp == rw);
	CHECK(olen == wlen);
	CHECK(memcmp(out, whole, wlen) == 0);
	free(whole);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *scratch;
	uint32_t seed = 2166136261u;

	if (size > 16384)
		return 0;
	scratch = malloc(size ? size : 1);
	CHECK(scratch);
	for (size_t i = 0; i < size; i++)
		seed = (seed ^ data[i]) * 16777619u;
	seed |= 1;
	for (size_t l = 0; l < sizeof(limits) / sizeof(limits[0]); l++) {
		int head = check_head(data, size, &limits[l], scratch);
		const char *body = (const char *)data;
		size_t n = size;

		/* The body after a parsed head, or the raw input. */
		if (head > 0) {
			body += head;
			n -= (size_t)head;
		}
		check_chunked(body, n, &limits[l], seed);
		check_chunked(body, n, &limits[l], 0);
	}
	free(scratch);
	return 0;
}
