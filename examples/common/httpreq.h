/* SPDX-License-Identifier: MIT */
/* A small, strict, incremental HTTP/1.x request parser (no allocation). */
#ifndef COIL_EXAMPLES_HTTPREQ_H
#define COIL_EXAMPLES_HTTPREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HTTP_MAX_HEADERS 100

struct http_header {
	const char *name, *value; /* views into the parsed buffer */
	size_t name_len, value_len;
};

struct http_request {
	const char *method, *target;
	size_t method_len, target_len;
	int minor;                /* HTTP/1.<minor> */
	struct http_header headers[HTTP_MAX_HEADERS];
	size_t nheaders;
	int64_t content_length;   /* -1 when absent */
	bool chunked;             /* Transfer-Encoding: chunked */
	bool keep_alive;          /* after version and Connection rules */
	bool expect_continue;     /* Expect: 100-continue */
};

struct http_limits {
	size_t max_head;    /* request line + headers, bytes */
	size_t max_headers; /* at most HTTP_MAX_HEADERS */
	uint64_t max_body;  /* decoded body, bytes */
};

/*
 * Parses a request head at the start of buf[0..len). Returns the head's
 * length (> 0) when complete, 0 when more bytes are needed (*scan keeps the
 * place so the next call does not rescan), or a negative HTTP status:
 * -400 malformed (bad request line, header syntax, control bytes, obs-fold,
 * both Content-Length and Transfer-Encoding, differing duplicate
 * Content-Length, a Content-Length that is not plain digits or overflows),
 * -431 head longer than max_head or more than max_headers headers,
 * -413 Content-Length above max_body, -501 a transfer coding other than
 * chunked, -505 a version other than HTTP/1.0 or 1.1. Lines may end in CRLF
 * or a bare LF. The views in *req point into buf.
 */
int http_parse_head(const char *buf, size_t len, size_t *scan,
		    struct http_request *req, const struct http_limits *lim);

/* Incremental chunked-body decoder: feed raw bytes, get the decoded ones. */
struct http_chunked {
	int state;
	uint64_t left;     /* bytes left in the current chunk */
	uint64_t total;    /* decoded so far */
	unsigned digits;
	size_t line;       /* bytes of the current extension/trailer line */
};

/*
 * Decodes from in[0..len): appends the chunk data to out (which must have
 * room for len bytes) and sets *out_len to how many were appended, *used to
 * how many input bytes were consumed. Returns 1 when the body (trailers
 * included) is complete, 0 when more input is needed, -400 on a malformed
 * body, -413 when the decoded size passes max_body.
 */
int http_chunked_feed(struct http_chunked *c, const char *in, size_t len,
		      size_t *used, char *out, size_t *out_len,
		      uint64_t max_body);

#endif
