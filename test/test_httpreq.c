/* SPDX-License-Identifier: MIT */
/* Tests for the HTTP request parser of the examples (examples/common). */
#include "helpers.h"

#include <sys/mman.h>
#include <unistd.h>

#include "httpreq.h"

static const struct http_limits lim = {8192, HTTP_MAX_HEADERS, 1 << 20};

static int parse(const char *s, struct http_request *r)
{
	size_t scan = 0;
	return http_parse_head(s, strlen(s), &scan, r, &lim);
}

/*
 * Copies the request so that it ends exactly at a PROT_NONE page: any read
 * past the end crashes the test (picohttpparser's technique).
 */
static int parse_at_guard(const char *s, size_t len, size_t *scan,
			  struct http_request *r)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t pages = (len + (size_t)pg - 1) / (size_t)pg + 1;
	char *m = mmap(NULL, pages * (size_t)pg, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CU_ASSERT_FATAL(m != MAP_FAILED);
	mprotect(m + (pages - 1) * (size_t)pg, (size_t)pg, PROT_NONE);
	char *p = m + (pages - 1) * (size_t)pg - len;
	memcpy(p, s, len);
	int rc = http_parse_head(p, len, scan, r, &lim);
	munmap(m, pages * (size_t)pg);
	return rc;
}

static void test_simple_get(void)
{
	struct http_request r;
	const char *s = "GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Y:  v v \r\n\r\n";
	CU_ASSERT_EQUAL(parse(s, &r), (int)strlen(s));
	CU_ASSERT_EQUAL(r.method_len, 3);
	CU_ASSERT_EQUAL(memcmp(r.target, "/a?b=c", 6), 0);
	CU_ASSERT_EQUAL(r.minor, 1);
	CU_ASSERT_EQUAL(r.nheaders, 2);
	CU_ASSERT_EQUAL(r.headers[1].value_len, 3); /* "v v", trimmed */
	CU_ASSERT(r.keep_alive);
	CU_ASSERT_EQUAL(r.content_length, -1);
	/* Bare LF line endings are accepted. */
	CU_ASSERT(parse("GET / HTTP/1.0\nHost: x\n\n", &r) > 0);
	CU_ASSERT(!r.keep_alive);
}

static void test_incremental_byte_by_byte(void)
{
	const char *s = "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
			"Connection: keep-alive, Upgrade\r\n\r\nhello";
	size_t head = strlen(s) - 5;
	struct http_request whole, r;
	CU_ASSERT_EQUAL(parse(s, &whole), (int)head);
	size_t scan = 0;
	for (size_t n = 1; n <= strlen(s); n++) {
		int rc = parse_at_guard(s, n, &scan, &r);
		int want = n < head ? 0 : (int)head;
		CU_ASSERT_EQUAL(rc, want);
		if (rc > 0)
			scan = 0;
	}
	CU_ASSERT_EQUAL(r.content_length, 5);
	CU_ASSERT(r.keep_alive);
}

static void test_pipelined(void)
{
	const char *s = "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n";
	struct http_request r;
	size_t scan = 0;
	int n = http_parse_head(s, strlen(s), &scan, &r, &lim);
	CU_ASSERT_EQUAL(n, 19);
	CU_ASSERT_EQUAL(memcmp(r.target, "/1", 2), 0);
	n = http_parse_head(s + 19, strlen(s) - 19, &scan, &r, &lim);
	CU_ASSERT_EQUAL(n, 19);
	CU_ASSERT_EQUAL(memcmp(r.target, "/2", 2), 0);
}

static void test_errors(void)
{
	struct http_request r;
	struct {
		const char *req;
		int want;
	} t[] = {
		{"GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", -413},
		{"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", -501},
		{"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
		{"GET / HTTP/2.0\r\n\r\n", -505},
		{"GET / HTTP/1.2\r\n\r\n", -505},
		{"GET / FTP/1.1\r\n\r\n", -400},
		{"G(T / HTTP/1.1\r\n\r\n", -400},
		{"GET  / HTTP/1.1\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", -400},
		{"GET / HTTP/1.1\r\n: empty\r\n\r\n", -400},
		{"\r\n\r\n", -400},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int rc = parse(t[i].req, &r);
		if (rc != t[i].want)
			fprintf(stderr, "case %zu: %d, want %d\n", i, rc, t[i].want);
		CU_ASSERT_EQUAL(rc, t[i].want);
	}
	/* Identical duplicate Content-Length: accepted. */
	CU_ASSERT(parse("GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
			&r) > 0);
	/* Oversize head and too many headers: 431. */
	char *big = malloc(10000);
	strcpy(big, "GET / HTTP/1.1\r\nX: ");
	memset(big + strlen(big), 'a', 9000);
	big[19 + 9000] = 0;
	CU_ASSERT_EQUAL(parse(big, &r), -431); /* no end yet, already too long */
	strcat(big, "\r\n\r\n");
	CU_ASSERT_EQUAL(parse(big, &r), -431);
	strcpy(big, "GET / HTTP/1.1\r\n");
	for (int i = 0; i < 101; i++)
		strcat(big, "A: b\r\n");
	strcat(big, "\r\n");
	CU_ASSERT_EQUAL(parse(big, &r), -431);
	free(big);
}

static void test_keep_alive_rules(void)
{
	struct http_request r;
	parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &r);
	CU_ASSERT(!r.keep_alive);
	parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r);
	CU_ASSERT(r.keep_alive);
	parse("GET / HTTP/1.0\r\n\r\n", &r);
	CU_ASSERT(!r.keep_alive);
	parse("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", &r);
	CU_ASSERT(r.expect_continue);
}

static int decode(const char *in, size_t step, char *out, size_t *outlen,
		  uint64_t max)
{
	struct http_chunked c = {0};
	size_t len = strlen(in), off = 0, pending = 0;
	*outlen = 0;
	int rc = 0;
	char buf[256];
	/* Feed `step` bytes at a time, re-feeding what was not consumed. */
	while (off < len || pending) {
		size_t n = step;
		if (n > len - off)
			n = len - off;
		memcpy(buf + pending, in + off, n);
		off += n;
		size_t have = pending + n, used, got;
		rc = http_chunked_feed(&c, buf, have, &used, out + *outlen, &got, max);
		*outlen += got;
		memmove(buf, buf + used, have - used);
		pending = have - used;
		if (rc)
			return rc;
		if (off == len && n == 0)
			break;
	}
	return rc;
}

static void test_chunked(void)
{
	const char *body = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
	char out[64];
	size_t n;
	for (size_t step = 1; step <= strlen(body); step++) {
		CU_ASSERT_EQUAL(decode(body, step, out, &n, 1000), 1);
		CU_ASSERT_EQUAL(n, 12);
		CU_ASSERT_EQUAL(memcmp(out, "hello, world", 12), 0);
	}
	CU_ASSERT_EQUAL(decode("0\r\n\r\n", 3, out, &n, 10), 1);
	CU_ASSERT_EQUAL(n, 0);
	CU_ASSERT_EQUAL(decode("zz\r\n", 4, out, &n, 10), -400);
	CU_ASSERT_EQUAL(decode("5\r\nhelloX\r\n", 20, out, &n, 10), -400);
	CU_ASSERT_EQUAL(decode("ffffffffffffffffff\r\n", 30, out, &n, 10), -400);
	CU_ASSERT_EQUAL(decode("b\r\nhello world\r\n0\r\n\r\n", 30, out, &n, 10), -413);
	CU_ASSERT_EQUAL(decode("\r\n", 2, out, &n, 10), -400);
}

static const coil_test_t tests[] = {
	{"simple_get", test_simple_get},
	{"incremental_byte_by_byte", test_incremental_byte_by_byte},
	{"pipelined", test_pipelined},
	{"errors", test_errors},
	{"keep_alive_rules", test_keep_alive_rules},
	{"chunked", test_chunked},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("httpreq", tests, argc, argv);
}
