/* SPDX-License-Identifier: MIT */
/* Tests for examples/common/http_parser: request heads and chunked bodies. */
#include "helpers.h"

#include <sys/mman.h>
#include <unistd.h>

#include "http_parser.h"

static const struct http_limits lim = HTTP_LIMITS_DEFAULT;

static int parse(const char *s, struct http_request *r)
{
	return http_parse_request(s, strlen(s), 0, r, &lim);
}

static int parse_lim(const char *s, struct http_request *r,
		     const struct http_limits *l)
{
	return http_parse_request(s, strlen(s), 0, r, l);
}

static bool view_is(const char *p, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

/*
 * A guard region: len bytes ending exactly where a PROT_NONE page begins,
 * so any read past the end of the data faults (picohttpparser's technique).
 */
struct guard {
	char *map, *p;
	size_t size;
};

static char *guard_place(struct guard *g, const char *s, size_t len)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	size_t pages = (len + pg - 1) / pg + 1;

	g->size = pages * pg;
	g->map = mmap(NULL, g->size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CU_ASSERT_FATAL(g->map != MAP_FAILED);
	CU_ASSERT_FATAL(mprotect(g->map + g->size - pg, pg, PROT_NONE) == 0);
	g->p = g->map + g->size - pg - len;
	memcpy(g->p, s, len);
	return g->p;
}

static void guard_free(struct guard *g)
{
	munmap(g->map, g->size);
}

/* Both requests parsed from their own buffers describe the same thing. */
static void assert_same(const struct http_request *a, const char *a0,
			const struct http_request *b, const char *b0)
{
	CU_ASSERT_EQUAL(a->method - a0, b->method - b0);
	CU_ASSERT_EQUAL(a->method_len, b->method_len);
	CU_ASSERT_EQUAL(a->target - a0, b->target - b0);
	CU_ASSERT_EQUAL(a->target_len, b->target_len);
	CU_ASSERT_EQUAL(a->minor, b->minor);
	CU_ASSERT_EQUAL_FATAL(a->num_headers, b->num_headers);
	for (size_t i = 0; i < a->num_headers; i++) {
		CU_ASSERT_EQUAL(a->headers[i].name - a0,
				b->headers[i].name - b0);
		CU_ASSERT_EQUAL(a->headers[i].value_len,
				b->headers[i].value_len);
	}
	CU_ASSERT_EQUAL(a->content_length, b->content_length);
	CU_ASSERT_EQUAL(a->chunked, b->chunked);
	CU_ASSERT_EQUAL(a->keep_alive, b->keep_alive);
}

/*
 * Feeds s one byte more per call, each prefix ending at a guard page,
 * resuming with last_len; returns the first answer that is not
 * HTTP_INCOMPLETE (or HTTP_INCOMPLETE) and checks it against the whole.
 */
static int parse_bytewise(const char *s, const struct http_limits *l)
{
	size_t len = strlen(s), last = 0;
	struct http_request whole, part;
	int rw = http_parse_request(s, len, 0, &whole, l);
	int rp = HTTP_INCOMPLETE;

	for (size_t k = 1; k <= len; k++) {
		struct guard g;
		char *p = guard_place(&g, s, k);

		rp = http_parse_request(p, k, last, &part, l);
		if (rp > 0)
			assert_same(&whole, s, &part, p);
		guard_free(&g);
		if (rp != HTTP_INCOMPLETE)
			break;
		last = k;
	}
	CU_ASSERT_EQUAL(rp, rw);
	return rp;
}

static void test_simple_get(void)
{
	struct http_request r;
	const char *s = "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n";

	CU_ASSERT_EQUAL(parse(s, &r), (int)strlen(s));
	CU_ASSERT(view_is(r.method, r.method_len, "GET"));
	CU_ASSERT(view_is(r.target, r.target_len, "/a?b=c"));
	CU_ASSERT_EQUAL(r.minor, 1);
	CU_ASSERT_EQUAL(r.num_headers, 1);
	CU_ASSERT(view_is(r.host, r.host_len, "example.com"));
	CU_ASSERT_EQUAL(r.content_length, -1);
	CU_ASSERT(!r.chunked);
	CU_ASSERT(r.keep_alive);
	CU_ASSERT(!r.expect_continue);
	/* Missing Host is accepted, even in 1.1 (documented choice). */
	CU_ASSERT(parse("GET / HTTP/1.1\r\n\r\n", &r) > 0);
	CU_ASSERT_PTR_NULL(r.host);
	CU_ASSERT_EQUAL(r.num_headers, 0);
}

static void test_header_views(void)
{
	struct http_request r;
	const char *s = "PUT /x HTTP/1.1\r\nHost: h\r\nX-Pad:  \t a b \t\r\n"
			"Empty:\r\nX-Obs: caf\xc3\xa9\r\nExpect: 100-Continue\r\n"
			"Content-Length: 0\r\n\r\n";

	CU_ASSERT_EQUAL_FATAL(parse(s, &r), (int)strlen(s));
	CU_ASSERT_EQUAL_FATAL(r.num_headers, 6);
	CU_ASSERT(view_is(r.headers[0].name, r.headers[0].name_len, "Host"));
	CU_ASSERT(view_is(r.headers[1].name, r.headers[1].name_len, "X-Pad"));
	/* OWS on both sides is trimmed, inner whitespace kept. */
	CU_ASSERT(view_is(r.headers[1].value, r.headers[1].value_len, "a b"));
	CU_ASSERT_EQUAL(r.headers[2].value_len, 0);
	CU_ASSERT(view_is(r.headers[3].value, r.headers[3].value_len,
			  "caf\xc3\xa9"));
	CU_ASSERT(r.expect_continue);
	CU_ASSERT_EQUAL(r.content_length, 0);
	/* The views point into the caller's buffer. */
	CU_ASSERT(r.headers[0].name == s + strlen("PUT /x HTTP/1.1\r\n"));
}

/* Every byte value at every offset of a 24-byte value is judged as the
 * rule says, on the one-pass first look (the request ends in LF): HTAB,
 * SP..0x7e and obs-text are value bytes, any other control byte or DEL is
 * 400; CR or LF inside breaks the line (400 too). Connection is matched
 * case-insensitively on the way. */
static void test_values_every_byte(void)
{
	struct http_request r;
	char s[128];
	int bad = 0;

	for (int b = 0; b < 256; b++) {
		for (int k = 1; k < 23; k++) {
			int n = snprintf(s, sizeof(s), "GET / HTTP/1.1\r\n"
				"cOnNeCtIoN: %.*s\r\nx: %s\r\n\r\n", k,
				"close", "aaaaaaaaaaaaaaaaaaaaaaaa");
			/* b goes in afterwards: printf would stop at a NUL. */
			strstr(s, "\nx: ")[4 + k] = (char)b;
			bool ok = b == '\t' || (b >= 0x20 && b != 0x7f);
			int rc = http_parse_request(s, (size_t)n, 0, &r, &lim);
			if (ok ? (rc != n || r.headers[1].value_len != 24 ||
				  r.headers[1].value[k] != (char)b ||
				  r.keep_alive != (k < 5))
			       : rc != HTTP_ERR_BAD)
				bad++;
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
}

/* A first look (last_len 0) at bytes ending in LF parses straight to the
 * first blank line; last_len 1 asks for the same bytes through the search
 * (it starts at the method's end either way). Every prefix of each input
 * (ending at a guard page: no read past it) gets the same answer and the
 * same request both ways: complete, pipelined, incomplete, malformed, too
 * large. */
static void test_first_look_equals_search(void)
{
	static const char *const in[] = {
		"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /a HTTP/1.0\nContent-Length: 3\nConnection: keep-alive\n\nabc\n",
		"\r\nGET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nBad Header: x\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
		"GET /a\nb HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\n X: folded\r\n\r\n",
		"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
	};
	struct http_limits small = {48, 2, 1u << 20};
	const struct http_limits *lims[] = {&lim, &small};
	int differ = 0;

	for (size_t l = 0; l < 2; l++) {
		for (size_t j = 0; j < sizeof(in) / sizeof(in[0]); j++) {
			size_t len = strlen(in[j]);
			for (size_t k = 1; k <= len; k++) {
				struct guard g;
				char *p = guard_place(&g, in[j], k);
				struct http_request a, b;
				int ra = http_parse_request(p, k, 0, &a, lims[l]);
				int rb = http_parse_request(p, k, 1, &b, lims[l]);
				if (ra != rb)
					differ++;
				else if (ra > 0)
					assert_same(&a, p, &b, p);
				guard_free(&g);
			}
		}
	}
	CU_ASSERT_EQUAL(differ, 0);
}

/* Header names are matched case-insensitively, exactly: "Host" and
 * "Content-Length" with each byte in turn replaced by every byte value are
 * recognised when it is the literal's byte in either case (a non-tchar
 * byte is 400, a colon makes a shorter name, an LF first ends the head),
 * never for another byte that differs from it by 0x20 only ('-' and CR,
 * '^' and '~'). */
static void test_header_names_exact(void)
{
	static const char *const names[] = {"host", "content-length"};
	char s[128];
	int bad = 0;

	for (int j = 0; j < 2; j++) {
		size_t n = strlen(names[j]);
		for (size_t i = 0; i < n; i++) {
			for (int b = 0; b < 256; b++) {
				char name[32];
				struct http_request r;
				memcpy(name, names[j], n + 1);
				int len = snprintf(s, sizeof(s),
						   "GET / HTTP/1.0\r\n%s: 0\r\n\r\n",
						   name);
				s[16 + i] = (char)b;
				int rc = http_parse_request(s, (size_t)len, 0, &r,
							    &lim);
				bool tok = (b >= 'a' && b <= 'z') ||
					   (b >= 'A' && b <= 'Z') ||
					   (b >= '0' && b <= '9') ||
					   (b && strchr("!#$%&'*+-.^_`|~", b));
				bool same = b == names[j][i] ||
					    b == names[j][i] - ('a' - 'A');
				bool hit = j == 0 ? rc > 0 && r.host != NULL
						  : rc > 0 && r.content_length == 0;
				if (b == ':' && i > 0) /* a shorter name */
					tok = true, same = false;
				if (b == '\n' && i == 0) /* the head's end */
					continue;
				if (!tok ? rc != HTTP_ERR_BAD
					 : rc != len || hit != same) {
					fprintf(stderr, "%s[%zu] = 0x%02x: %d\n",
						names[j], i, b, rc);
					bad++;
				}
			}
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
}

static void test_pipelined(void)
{
	const char *s = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
			"GET /b HTTP/1.1\r\n\r\n"
			"GET /c HTTP/1.0\r\n\r\n";
	size_t len = strlen(s), off;
	struct http_request r;
	int n;

	n = http_parse_request(s, len, 0, &r, &lim);
	CU_ASSERT_FATAL(n > 0);
	CU_ASSERT(view_is(r.target, r.target_len, "/a"));
	CU_ASSERT_EQUAL(r.content_length, 3);
	off = (size_t)n + 3;
	n = http_parse_request(s + off, len - off, 0, &r, &lim);
	CU_ASSERT_EQUAL_FATAL(n, (int)strlen("GET /b HTTP/1.1\r\n\r\n"));
	CU_ASSERT(view_is(r.target, r.target_len, "/b"));
	off += (size_t)n;
	n = http_parse_request(s + off, len - off, 0, &r, &lim);
	CU_ASSERT_EQUAL(off + (size_t)n, len);
	CU_ASSERT(view_is(r.target, r.target_len, "/c"));
	CU_ASSERT(!r.keep_alive);
	/* Up to 8 bytes of empty lines before a request are skipped. */
	n = parse("\r\n\r\nGET / HTTP/1.1\r\n\r\n", &r);
	CU_ASSERT_EQUAL(n, 22);
	CU_ASSERT(view_is(r.method, r.method_len, "GET"));
	CU_ASSERT_EQUAL(parse("\n\n\n\n\n\n\n\n\nGET / HTTP/1.1\r\n\r\n", &r),
			HTTP_ERR_BAD);
}

/* Every request of this table, fed a byte at a time against a guard page,
 * gives the whole-buffer answer, errors included. */
static const char *const bytewise_cases[] = {
	"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET / HTTP/1.0\nHost: h\n\n",
	"\r\nPOST /p HTTP/1.1\r\nContent-Length: 12\r\nConnection: close\r\n\r\n",
	"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
	"GET / HTTP/2.0\r\n\r\n",
	"G@T / HTTP/1.1\r\n\r\n",
	"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
	"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
	"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	"GET /\x01 HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\n\r\n",
	"GET / HTTP/1.1\r\n\n",
};

static void test_bytewise_equals_whole(void)
{
	struct http_limits small = {40, 2, 10};

	for (size_t i = 0; i < sizeof(bytewise_cases) / sizeof(*bytewise_cases);
	     i++) {
		parse_bytewise(bytewise_cases[i], &lim);
		parse_bytewise(bytewise_cases[i], &small);
	}
	CU_ASSERT(parse_bytewise(bytewise_cases[0], &lim) > 0);
	CU_ASSERT_EQUAL(parse_bytewise(bytewise_cases[4], &lim), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse_bytewise(bytewise_cases[2], &small),
			HTTP_ERR_HEADERS_TOO_LARGE);
}

/*
 * Every proper prefix of a request, placed so it ends at a PROT_NONE page,
 * is HTTP_INCOMPLETE both from scratch and when resumed; none reads past
 * its end. The same for a chunked body.
 */
static void test_truncated_at_guard_page(void)
{
	const char *s = "POST /upload?x=1 HTTP/1.1\r\nHost: example.org\r\n"
			"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
			"Connection: keep-alive\r\n\r\n";
	const char *body = "5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n";
	size_t len = strlen(s), blen = strlen(body);
	struct http_request r;

	for (size_t k = 0; k < len; k++) {
		struct guard g;
		char *p = guard_place(&g, s, k);

		CU_ASSERT_EQUAL(http_parse_request(p, k, 0, &r, &lim),
				HTTP_INCOMPLETE);
		CU_ASSERT_EQUAL(http_parse_request(p, k, k ? k - 1 : 0, &r,
						   &lim),
				HTTP_INCOMPLETE);
		guard_free(&g);
	}
	struct guard g;
	char *p = guard_place(&g, s, len);

	CU_ASSERT_EQUAL(http_parse_request(p, len, len - 1, &r, &lim),
			(int)len);
	CU_ASSERT(r.chunked);
	guard_free(&g);

	for (size_t k = 0; k <= blen; k++) {
		struct http_chunked c;
		size_t n = k;

		p = guard_place(&g, body, k);
		http_chunked_init(&c, &lim);
		CU_ASSERT_EQUAL(http_chunked_decode(&c, p, &n),
				k < blen ? HTTP_INCOMPLETE : 0);
		guard_free(&g);
	}
}

static void test_framing_conflicts(void)
{
	struct http_request r;

	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n"
			      "Transfer-Encoding: chunked\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
			      "Content-Length: 5\r\n\r\n", &r),
			HTTP_ERR_BAD);
	/* Differing duplicates are 400; equal values are accepted. */
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n"
			      "Content-Length: 6\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\n"
			"content-length: 5\r\n\r\n", &r) > 0);
	CU_ASSERT_EQUAL(r.content_length, 5);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
			      &r),
			HTTP_ERR_BAD);
	/* Transfer codings. */
	CU_ASSERT(parse("POST / HTTP/1.1\r\nTransfer-Encoding: , CHUNKED \r\n\r\n",
			&r) > 0);
	CU_ASSERT(r.chunked);
	CU_ASSERT_EQUAL(r.content_length, -1);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked"
			      "\r\n\r\n", &r),
			HTTP_ERR_NOT_IMPLEMENTED);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
			      "Transfer-Encoding: gzip\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, "
			      "chunked\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
			      &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n"
			      "\r\n", &r),
			HTTP_ERR_BAD);
	/* Two Host headers. */
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", &r),
			HTTP_ERR_BAD);
}

static void test_content_length_values(void)
{
	struct http_request r;
	struct http_limits big = {8192, 64, UINT64_MAX};
	static const char *const bad[] = {
		"-1", "+5", "abc", "5a", "0x10", "5 5", "", "1.0",
		"9223372036854775808", "99999999999999999999999",
	};
	char req[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		snprintf(req, sizeof(req),
			 "POST / HTTP/1.1\r\nContent-Length: %s\r\n\r\n", bad[i]);
		CU_ASSERT_EQUAL(parse_lim(req, &r, &big), HTTP_ERR_BAD);
	}
	CU_ASSERT(parse_lim("POST / HTTP/1.1\r\nContent-Length: "
			    "9223372036854775807\r\n\r\n", &r, &big) > 0);
	CU_ASSERT_EQUAL(r.content_length, INT64_MAX);
	CU_ASSERT(parse("POST / HTTP/1.1\r\nContent-Length: 007 \r\n\r\n", &r) >
		  0);
	CU_ASSERT_EQUAL(r.content_length, 7);
}

static void test_body_limit(void)
{
	struct http_request r;
	struct http_limits l = {8192, 64, 100};

	CU_ASSERT(parse_lim("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n", &r,
			    &l) > 0);
	CU_ASSERT_EQUAL(parse_lim("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
				  &r, &l),
			HTTP_ERR_BODY_TOO_LARGE);
	/* Oversized chunked bodies are the decoder's to catch. */
	CU_ASSERT(parse_lim("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
			    &r, &l) > 0);
}

static void test_head_too_large(void)
{
	struct http_request r;
	struct http_limits l = {64, 64, 100};
	char big[200];

	/* Exactly max_head bytes is fine, one more is 431. */
	const char *ok = "GET /0123456789012345678901234567890 HTTP/1.1\r\n"
			 "A: bcdefghijk\r\n\r\n";
	CU_ASSERT_EQUAL_FATAL(strlen(ok), 64);
	CU_ASSERT_EQUAL(parse_lim(ok, &r, &l), 64);
	CU_ASSERT_EQUAL(parse_lim("GET /0123456789012345678901234567890 HTTP/1.1"
				  "\r\nA: bcdefghijkl\r\n\r\n", &r, &l),
			HTTP_ERR_HEADERS_TOO_LARGE);
	/* No line end within max_head bytes: the target is too long, 414,
	 * without waiting for the rest. */
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /", 5);
	CU_ASSERT_EQUAL(http_parse_request(big, 63, 0, &r, &l), HTTP_INCOMPLETE);
	CU_ASSERT_EQUAL(http_parse_request(big, 64, 63, &r, &l),
			HTTP_ERR_URI_TOO_LONG);
	CU_ASSERT_EQUAL(http_parse_request(big, sizeof(big), 0, &r, &l),
			HTTP_ERR_URI_TOO_LONG);
	/* The request line ended, the headers did not: 431 without waiting. */
	memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
	CU_ASSERT_EQUAL(http_parse_request(big, 63, 0, &r, &l), HTTP_INCOMPLETE);
	CU_ASSERT_EQUAL(http_parse_request(big, 64, 63, &r, &l),
			HTTP_ERR_HEADERS_TOO_LARGE);
	CU_ASSERT_EQUAL(http_parse_request(big, sizeof(big), 0, &r, &l),
			HTTP_ERR_HEADERS_TOO_LARGE);
}

static void test_too_many_headers(void)
{
	struct http_request r;
	struct http_limits l = {8192, 3, 100};
	const char *three = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
	const char *four = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
	char req[2048];
	size_t n;

	CU_ASSERT(parse_lim(three, &r, &l) > 0);
	CU_ASSERT_EQUAL(parse_lim(four, &r, &l), HTTP_ERR_HEADERS_TOO_LARGE);
	/* max_headers is clamped to the array. */
	l.max_headers = 1000;
	n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\n");
	for (int i = 0; i < HTTP_MAX_HEADERS; i++)
		n += (size_t)snprintf(req + n, sizeof(req) - n, "H%d: v\r\n", i);
	strcpy(req + n, "\r\n");
	CU_ASSERT(parse_lim(req, &r, &l) > 0);
	CU_ASSERT_EQUAL(r.num_headers, HTTP_MAX_HEADERS);
	strcpy(req + n, "X: y\r\n\r\n");
	CU_ASSERT_EQUAL(parse_lim(req, &r, &l), HTTP_ERR_HEADERS_TOO_LARGE);
}

static void test_line_ends(void)
{
	struct http_request r;

	/* Bare LF is a line end (documented tolerance), mixed with CRLF too. */
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\nHost: h\n\n", &r), 24);
	CU_ASSERT(view_is(r.host, r.host_len, "h"));
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nHost: h\n\r\n", &r), 26);
	/* A bare CR is never accepted. */
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\rHost: h\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nHost: h\r\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nHost: h\r\n\rX\n\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("\rGET / HTTP/1.1\r\n\r\n", &r), HTTP_ERR_BAD);
	/* obs-fold and other header syntax errors. */
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nA : b\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\n: b\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nA\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(http_parse_request("GET / HTTP/1.1\r\nA: \0\r\n\r\n", 24,
					   0, &r, &lim),
			HTTP_ERR_BAD);
}

static void test_request_line(void)
{
	struct http_request r;

	CU_ASSERT_EQUAL(parse("G(T / HTTP/1.1\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse(" GET / HTTP/1.1\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET  / HTTP/1.1\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.1 \r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET /\xc3\xa9 HTTP/1.1\r\n\r\n", &r),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET /\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / http/1.1\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1\r\n\r\n", &r), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(parse("GET / HTTP/1.10\r\n\r\n", &r), HTTP_ERR_BAD);
	/* Bad method bytes fail before the head is complete. */
	CU_ASSERT_EQUAL(http_parse_request("GE\x16", 3, 0, &r, &lim),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(http_parse_request("\x16\x03\x01", 3, 0, &r, &lim),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(http_parse_request("GET", 3, 0, &r, &lim),
			HTTP_INCOMPLETE);
	/* Methods are tokens; an overlong one is 501. */
	CU_ASSERT(parse("M-SEARCH * HTTP/1.1\r\n\r\n", &r) > 0);
	CU_ASSERT(view_is(r.target, r.target_len, "*"));
	CU_ASSERT(parse("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345 / HTTP/1.1\r\n\r\n",
			&r) > 0);
	CU_ASSERT_EQUAL(parse("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456 / HTTP/1.1"
			      "\r\n\r\n", &r),
			HTTP_ERR_METHOD);
	/* Versions. */
	CU_ASSERT_EQUAL(parse("GET / HTTP/2.0\r\n\r\n", &r), HTTP_ERR_VERSION);
	CU_ASSERT_EQUAL(parse("GET / HTTP/0.9\r\n\r\n", &r), HTTP_ERR_VERSION);
	CU_ASSERT(parse("GET / HTTP/1.2\r\n\r\n", &r) > 0);
	CU_ASSERT_EQUAL(r.minor, 1);
	CU_ASSERT(parse("GET / HTTP/1.0\r\n\r\n", &r) > 0);
	CU_ASSERT_EQUAL(r.minor, 0);
}

static void test_keep_alive(void)
{
	struct http_request r;

	CU_ASSERT(parse("GET / HTTP/1.1\r\n\r\n", &r) > 0 && r.keep_alive);
	CU_ASSERT(parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", &r) > 0 &&
		  !r.keep_alive);
	CU_ASSERT(parse("GET / HTTP/1.1\r\nConnection: upgrade, close\r\n\r\n",
			&r) > 0 &&
		  !r.keep_alive);
	CU_ASSERT(parse("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", &r) > 0 &&
		  r.keep_alive);
	CU_ASSERT(parse("GET / HTTP/1.0\r\n\r\n", &r) > 0 && !r.keep_alive);
	CU_ASSERT(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r) >
			  0 &&
		  r.keep_alive);
	CU_ASSERT(parse("GET / HTTP/1.0\r\nConnection: te,keep-alive\r\n\r\n",
			&r) > 0 &&
		  r.keep_alive);
	/* close wins, across headers too. */
	CU_ASSERT(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n"
			"Connection: close\r\n\r\n", &r) > 0 &&
		  !r.keep_alive);
}

/* Decodes s whole; returns the result and copies the output to out. */
static int chunked_whole(const char *s, const struct http_limits *l,
			 char *out, size_t *out_len)
{
	struct http_chunked c;
	size_t n = strlen(s);
	int rc;

	memcpy(out, s, n);
	http_chunked_init(&c, l);
	rc = http_chunked_decode(&c, out, &n);
	*out_len = n;
	return rc;
}

/* Decodes s a byte at a time, each byte in its own guarded page. */
static int chunked_bytewise(const char *s, const struct http_limits *l,
			    char *out, size_t *out_len)
{
	struct http_chunked c;
	size_t len = strlen(s), o = 0;
	int rc = HTTP_INCOMPLETE;

	http_chunked_init(&c, l);
	for (size_t i = 0; i < len; i++) {
		struct guard g;
		char *p = guard_place(&g, s + i, 1);
		size_t n = 1;

		rc = http_chunked_decode(&c, p, &n);
		memcpy(out + o, p, n);
		o += n;
		guard_free(&g);
		if (rc >= 0) {
			rc += (int)(len - i - 1);
			break;
		}
		if (rc != HTTP_INCOMPLETE)
			break;
	}
	*out_len = o;
	return rc;
}

static void test_chunked_decode(void)
{
	const char *s = "5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
			"0\r\n\r\nGET";
	char out[128], out2[128];
	size_t n, n2;

	CU_ASSERT_EQUAL(chunked_whole(s, &lim, out, &n), 3);
	CU_ASSERT_EQUAL(n, 31);
	CU_ASSERT_EQUAL(memcmp(out, "helloabcdefghijklmnopqrstuvwxyz", 31), 0);
	/* The bytes after the body follow the decoded data. */
	CU_ASSERT_EQUAL(memcmp(out + n, "GET", 3), 0);
	CU_ASSERT_EQUAL(chunked_bytewise(s, &lim, out2, &n2), 3);
	CU_ASSERT_EQUAL(n2, n);
	CU_ASSERT_EQUAL(memcmp(out, out2, n), 0);
	/* Leading zeros and bare LF line ends. */
	CU_ASSERT_EQUAL(chunked_whole("0003\nabc\n0\n\n", &lim, out, &n), 0);
	CU_ASSERT_EQUAL(n, 3);
}

static void test_chunked_extensions_trailers(void)
{
	const char *s = "4;name=value;q=\"a b\"\r\nWiki\r\n5 ; x\r\npedia\r\n"
			"0;last\r\nX-Sum: 9\r\nX-Other:\tv w\r\n\r\n";
	char out[128], out2[128];
	size_t n, n2;
	struct http_chunked c;

	CU_ASSERT_EQUAL(chunked_whole(s, &lim, out, &n), 0);
	CU_ASSERT_EQUAL(n, 9);
	CU_ASSERT_EQUAL(memcmp(out, "Wikipedia", 9), 0);
	CU_ASSERT_EQUAL(chunked_bytewise(s, &lim, out2, &n2), 0);
	CU_ASSERT_EQUAL(n2, 9);
	CU_ASSERT_EQUAL(memcmp(out2, "Wikipedia", 9), 0);
	/* Bad extensions and trailers. */
	CU_ASSERT_EQUAL(chunked_whole("1;a\x01\r\nx\r\n0\r\n\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("1 \r\nx\r\n0\r\n\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("0\r\n folded\r\n\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("0\r\nNoColon\r\n\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("0\r\nA: b\rc\r\n\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	/* Trailers are bounded by max_head. */
	struct http_limits l = {16, 64, 100};
	CU_ASSERT_EQUAL(chunked_whole("0\r\nX: 0123456789\r\n\r\n", &l, out, &n),
			0);
	CU_ASSERT_EQUAL(chunked_whole("0\r\nX: 012345678901\r\n\r\n", &l, out, &n),
			HTTP_ERR_HEADERS_TOO_LARGE);
	/* After the end, input is left alone. */
	http_chunked_init(&c, &lim);
	memcpy(out, "0\r\n\r\n", 5);
	n = 5;
	CU_ASSERT_EQUAL(http_chunked_decode(&c, out, &n), 0);
	memcpy(out, "abc", 3);
	n = 3;
	CU_ASSERT_EQUAL(http_chunked_decode(&c, out, &n), 3);
	CU_ASSERT_EQUAL(n, 0);
	CU_ASSERT_EQUAL(memcmp(out, "abc", 3), 0);
}

static void test_chunked_errors(void)
{
	char out[256], line[HTTP_MAX_CHUNK_LINE + 16];
	struct http_limits l = {8192, 64, 10};
	struct http_chunked c;
	size_t n;

	CU_ASSERT_EQUAL(chunked_whole("g\r\n", &lim, out, &n), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("\r\n", &lim, out, &n), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("-1\r\n", &lim, out, &n), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("0x5\r\n", &lim, out, &n), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("3\r\nabcX\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(n, 3); /* what was decoded before the error */
	CU_ASSERT_EQUAL(chunked_whole("3\r\nabc\rX", &lim, out, &n),
			HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(chunked_whole("3\rX", &lim, out, &n), HTTP_ERR_BAD);
	/* Hex overflow: 17 digits. */
	CU_ASSERT_EQUAL(chunked_whole("10000000000000000\r\n", &lim, out, &n),
			HTTP_ERR_BAD);
	/* 16 digits fit in 64 bits but pass max_body: 413. */
	CU_ASSERT_EQUAL(chunked_whole("ffffffffffffffff\r\n", &lim, out, &n),
			HTTP_ERR_BODY_TOO_LARGE);
	/* max_body counts the sum of the chunks, checked at each size line. */
	CU_ASSERT_EQUAL(chunked_whole("a\r\n0123456789\r\n0\r\n\r\n", &l, out, &n),
			0);
	CU_ASSERT_EQUAL(chunked_whole("5\r\n01234\r\n6\r\n", &l, out, &n),
			HTTP_ERR_BODY_TOO_LARGE);
	CU_ASSERT_EQUAL(n, 5);
	CU_ASSERT_EQUAL(chunked_bytewise("5\r\n01234\r\n6\r\n", &l, out, &n),
			HTTP_ERR_BODY_TOO_LARGE);
	/* An endless extension is cut off. */
	memset(line, 'x', sizeof(line));
	memcpy(line, "1;", 2);
	http_chunked_init(&c, &lim);
	n = sizeof(line);
	CU_ASSERT_EQUAL(http_chunked_decode(&c, line, &n), HTTP_ERR_BAD);
	/* Errors stick. */
	memcpy(out, "0\r\n\r\n", 5);
	n = 5;
	CU_ASSERT_EQUAL(http_chunked_decode(&c, out, &n), HTTP_ERR_BAD);
	CU_ASSERT_EQUAL(n, 0);
}

static const coil_test_t tests[] = {
	{"simple_get", test_simple_get},
	{"header_views", test_header_views},
	{"values_every_byte", test_values_every_byte},
	{"first_look_equals_search", test_first_look_equals_search},
	{"header_names_exact", test_header_names_exact},
	{"pipelined", test_pipelined},
	{"bytewise_equals_whole", test_bytewise_equals_whole},
	{"truncated_at_guard_page", test_truncated_at_guard_page},
	{"framing_conflicts", test_framing_conflicts},
	{"content_length_values", test_content_length_values},
	{"body_limit", test_body_limit},
	{"head_too_large", test_head_too_large},
	{"too_many_headers", test_too_many_headers},
	{"line_ends", test_line_ends},
	{"request_line", test_request_line},
	{"keep_alive", test_keep_alive},
	{"chunked_decode", test_chunked_decode},
	{"chunked_extensions_trailers", test_chunked_extensions_trailers},
	{"chunked_errors", test_chunked_errors},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("http_parser", tests, argc, argv);
}
