/* SPDX-License-Identifier: MIT */
/* Incremental HTTP/1.x request parser for the examples (no allocation). */
#ifndef COIL_EXAMPLES_HTTP_PARSER_H
#define COIL_EXAMPLES_HTTP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Results. Every function returns either a non-negative success value,
 * HTTP_INCOMPLETE (feed more bytes), or one of the HTTP_ERR_* codes, which
 * are the negated HTTP status to answer with (-HTTP_ERR_BAD == 400). After
 * any error the connection should be closed once the status is sent: the
 * framing of what follows cannot be trusted.
 */
#define HTTP_INCOMPLETE (-1)
#define HTTP_ERR_BAD (-400)                /* malformed request */
#define HTTP_ERR_BODY_TOO_LARGE (-413)     /* body above max_body */
#define HTTP_ERR_URI_TOO_LONG (-414)       /* request line above max_head */
#define HTTP_ERR_HEADERS_TOO_LARGE (-431)  /* head / trailers too big */
#define HTTP_ERR_NOT_IMPLEMENTED (-501)    /* transfer coding, method */
#define HTTP_ERR_METHOD HTTP_ERR_NOT_IMPLEMENTED
#define HTTP_ERR_VERSION (-505)            /* HTTP/0.x, HTTP/2.x ... */

/* Capacity of http_request.headers; lim->max_headers is clamped to it. */
#define HTTP_MAX_HEADERS 64
/* Longest method accepted; longer tokens get HTTP_ERR_METHOD (501). No
 * registered method comes near it, and the bound keeps the early
 * request-line check of every call short. */
#define HTTP_MAX_METHOD 32
/* Longest chunk-size line (size, extensions and line end) in a chunked
 * body; longer lines are HTTP_ERR_BAD. */
#define HTTP_MAX_CHUNK_LINE 4096

struct http_limits {
	size_t max_head;    /* request line + headers + blank line, bytes;
			     * also bounds the chunked trailer section */
	size_t max_headers; /* header fields, at most HTTP_MAX_HEADERS */
	uint64_t max_body;  /* body bytes (Content-Length or decoded chunks) */
};

/* 8 KiB head, 64 headers, 1 MiB body: used when lim is NULL. */
#define HTTP_LIMITS_DEFAULT {8192, HTTP_MAX_HEADERS, 1u << 20}

/* A view into the caller's buffer; nothing is NUL-terminated. */
struct http_header {
	const char *name;
	size_t name_len;
	const char *value; /* leading and trailing SP/HTAB removed */
	size_t value_len;
};

struct http_request {
	const char *method, *target; /* views into buf */
	size_t method_len, target_len;
	int minor;              /* HTTP/1.<minor>: 0 or 1 (1.2+ reads as 1) */
	size_t num_headers;
	struct http_header headers[HTTP_MAX_HEADERS]; /* in arrival order */
	const char *host;       /* Host value view, NULL when absent */
	size_t host_len;
	int64_t content_length; /* -1 when the header is absent */
	bool chunked;           /* Transfer-Encoding: chunked */
	bool keep_alive;        /* version default, then Connection */
	bool expect_continue;   /* Expect: 100-continue */
};

/*
 * Parses the request head at the start of buf[0..len).
 *
 * Returns the head length (> 0, blank line included; the body or the next
 * pipelined request starts at buf + the result) once the head is complete,
 * HTTP_INCOMPLETE when it needs more bytes, or an HTTP_ERR_* code. On
 * success *req describes the request and its views point into buf; on any
 * other result *req is unspecified.
 *
 * last_len makes it incremental: pass 0 on the first call and, after
 * HTTP_INCOMPLETE, the len of that call when calling again with the same
 * bytes extended, so the search for the end of the head resumes where it
 * stopped instead of rescanning. Passing 0 is always correct, only slower.
 * Results only depend on the bytes seen, so feeding the request in any
 * split gives the same answer as feeding it whole.
 *
 * lim may be NULL (HTTP_LIMITS_DEFAULT).
 *
 * Choices where the RFCs leave room (RFC 9110/9112):
 *  - Up to 8 bytes of empty lines before the request line are skipped;
 *    more is HTTP_ERR_BAD.
 *  - A bare LF ends a line like CRLF does (RFC 9112 2.2 allows it); a CR
 *    not followed by LF is HTTP_ERR_BAD anywhere.
 *  - The method is checked as bytes arrive, so garbage (a TLS hello, say)
 *    fails at once; everything else is checked when the blank line arrives.
 *    A head that has not ended within max_head bytes is 431, or 414 when
 *    not even the request line ended there (the target is too long).
 *  - Request line: exactly one SP between its three parts; the target is
 *    visible ASCII only. "HTTP/1.0" and "HTTP/1.1" are accepted, HTTP/1.x
 *    with x > 1 reads as 1.1, other majors are HTTP_ERR_VERSION (505), and
 *    anything not shaped like "HTTP/" DIGIT "." DIGIT is HTTP_ERR_BAD.
 *  - Headers: obs-fold (a line starting with SP/HTAB), whitespace before the
 *    colon, empty names and control bytes in values are HTTP_ERR_BAD.
 *    obs-text (bytes >= 0x80) is allowed in values.
 *  - More than max_headers headers, or a head over max_head bytes, is 431.
 *  - Host: a missing Host is accepted here, even in HTTP/1.1 (req->host is
 *    NULL; http_echo answers 400 to such a 1.1 request, RFC 9112 3.2); two
 *    Host headers are HTTP_ERR_BAD.
 *  - Content-Length must be plain digits (no sign, no list such as "5, 5",
 *    no whitespace inside) and below 2^63, else HTTP_ERR_BAD. Repeated
 *    Content-Length headers with the same numeric value are accepted;
 *    differing values are HTTP_ERR_BAD. Above max_body: 413.
 *  - Transfer-Encoding (all such headers, as one list): "chunked" must be
 *    present exactly once and be the last coding, else HTTP_ERR_BAD; any
 *    other coding before it (gzip, ...) is HTTP_ERR_NOT_IMPLEMENTED (501).
 *    Transfer-Encoding in an HTTP/1.0 request, or together with
 *    Content-Length, is HTTP_ERR_BAD (request smuggling defence).
 *  - keep_alive: HTTP/1.1 unless Connection lists "close"; HTTP/1.0 only if
 *    Connection lists "keep-alive" and not "close". Tokens are compared
 *    case-insensitively across all Connection headers.
 *  - Methods are not judged (the server decides about 501/405), except that
 *    a method longer than HTTP_MAX_METHOD is HTTP_ERR_METHOD.
 */
int http_parse_request(const char *buf, size_t len, size_t last_len,
		       struct http_request *req, const struct http_limits *lim);

/*
 * Chunked body decoder state (RFC 9112 7.1); set up with http_chunked_init.
 * Fields are private to http_parser.c.
 */
struct http_chunked {
	uint64_t max_body;  /* from the limits */
	size_t max_trailer; /* from the limits (max_head) */
	uint64_t total;     /* decoded bytes so far */
	uint64_t size;      /* size of the current chunk / bytes left of it */
	size_t line;        /* bytes of the current size line */
	size_t trailer;     /* bytes of the trailer section so far */
	int state;
};

/* Prepares *c for a new body. lim may be NULL (HTTP_LIMITS_DEFAULT). */
void http_chunked_init(struct http_chunked *c, const struct http_limits *lim);

/*
 * Decodes buf[0..*len) in place: the chunk data found in it is moved to the
 * front and *len is set to its length. The input may be split anywhere;
 * state carries over in *c. *len must be below INT_MAX.
 *
 * Returns:
 *  - >= 0 when the body ended (last chunk and trailer section seen): the
 *    count of bytes that followed the body in the input (the next pipelined
 *    request), moved to buf[*len .. *len + result). Later calls return at
 *    once with *len = 0 and all input left over.
 *  - HTTP_INCOMPLETE: all input consumed, the body goes on.
 *  - HTTP_ERR_BAD: bad hex, hex overflow (a size over 64 bits), bad
 *    line ends, control bytes in an extension, bad trailer syntax, a size line longer than
 *    HTTP_MAX_CHUNK_LINE.
 *  - HTTP_ERR_BODY_TOO_LARGE: the decoded size would pass max_body (checked
 *    when a chunk's size line ends, before its data arrives).
 *  - HTTP_ERR_HEADERS_TOO_LARGE: trailers longer than max_head.
 * After an error, *len is set to the bytes decoded before it and the state
 * stays failed (every further call returns the same error).
 * Chunk extensions are checked for control bytes and skipped; trailers are
 * syntax-checked (name ":" value, no obs-fold) and dropped. A bare LF ends
 * a line like CRLF, as in the head.
 */
int http_chunked_decode(struct http_chunked *c, char *buf, size_t *len);

#endif
