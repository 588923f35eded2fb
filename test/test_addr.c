/* SPDX-License-Identifier: MIT */
/* Tests for the address grammar, formatting, structured info and the
 * resolver (lib/addr.c). */
#include "helpers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct row {
	const char *text;
	int flags;
	int rc;           /* expected return */
	const char *host; /* expected host (when rc == 0) */
	int port;         /* expected port, -1: don't check */
	int numeric;
	int family;       /* of ss when numeric, 0: don't check */
};

#define L COIL_ADDR_LISTEN
#define V4 COIL_ADDR_IPV4

static const struct row rows[] = {
	/* valid connect forms */
	{"127.0.0.1:80", 0, 0, "127.0.0.1", 80, 1, AF_INET},
	{"1.2.3.4:0", 0, 0, "1.2.3.4", 0, 1, AF_INET},
	{"1.2.3.4:65535", 0, 0, "1.2.3.4", 65535, 1, AF_INET},
	{"[::1]:80", 0, 0, "::1", 80, 1, AF_INET6},
	{"[2001:db8::1]:443", 0, 0, "2001:db8::1", 443, 1, AF_INET6},
	{"localhost:80", 0, 0, "localhost", 80, 0, 0},
	{"example.invalid:8080", 0, 0, "example.invalid", 8080, 0, 0},
	{"localhost:http", 0, 0, "localhost", 80, 0, 0},
	{"[fe80::1%lo]:80", 0, 0, "fe80::1", 80, 1, AF_INET6},
	{"[fe80::1]:80%lo", 0, 0, "fe80::1", 80, 1, AF_INET6},
	{"[fe80::1]:80%1", 0, 0, "fe80::1", 80, 1, AF_INET6},
	{"[::ffff:1.2.3.4]:80", 0, 0, "::ffff:1.2.3.4", 80, 1, AF_INET6},
	/* valid listen forms */
	{"8080", L, 0, "", 8080, 1, AF_INET6},
	{"8080", L | V4, 0, "", 8080, 1, AF_INET},
	{":8080", L, 0, "", 8080, 1, AF_INET6},
	{":http", L, 0, "", 80, 1, AF_INET6},
	{"0.0.0.0:0", L, 0, "0.0.0.0", 0, 1, AF_INET},
	{"[::]:0", L, 0, "::", 0, 1, AF_INET6},
	/* invalid */
	{"", 0, -EINVAL, NULL, -1, 0, 0},
	{"8080", 0, -EINVAL, NULL, -1, 0, 0},
	{":8080", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:65536", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:99999999", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:-1", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:80x", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:80 ", 0, -EINVAL, NULL, -1, 0, 0},
	{"::1:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"fe80::1:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"[::1]", 0, -EINVAL, NULL, -1, 0, 0},
	{"[::1]x:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"[::1:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"[1.2.3.4]:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"[fe80::1]:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"[fe80::1]:80%bogus0", 0, -ENODEV, NULL, -1, 0, 0},
	{"[fe80::1]:80%", 0, -EINVAL, NULL, -1, 0, 0},
	{"[fe80::1%lo]:80%lo", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.4:80%lo", 0, -EINVAL, NULL, -1, 0, 0},
	{"localhost:no-such-service-x", 0, -ENOENT, NULL, -1, 0, 0},
	{"1.2.3:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"1.2.3.256:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"bad host:80", 0, -EINVAL, NULL, -1, 0, 0},
	{"[::1]:80", V4, -EAFNOSUPPORT, NULL, -1, 0, 0},
	{"host:80:90", 0, -EINVAL, NULL, -1, 0, 0},
	{NULL, 0, 0, NULL, 0, 0, 0},
};

static void test_grammar_table(void)
{
	for (const struct row *r = rows; r->text; r++) {
		coil_addr_t a;
		int rc = coil_addr_parse(r->text, r->flags, &a);
		if (rc != r->rc) {
			fprintf(stderr, "'%s' (flags %d): rc %d, want %d (%s)\n",
				r->text, r->flags, rc, r->rc, a.error);
			CU_FAIL("grammar row");
			continue;
		}
		if (rc) {
			if (!a.error[0]) {
				fprintf(stderr, "'%s': no error text\n", r->text);
				CU_FAIL("error text");
			}
			continue;
		}
		CU_ASSERT_EQUAL(a.kind, COIL_ADDR_INET);
		if (strcmp(a.host, r->host)) {
			fprintf(stderr, "'%s': host '%s'\n", r->text, a.host);
			CU_FAIL("host");
		}
		if (r->port >= 0 && a.port != r->port) {
			fprintf(stderr, "'%s': port %u\n", r->text, a.port);
			CU_FAIL("port");
		}
		CU_ASSERT_EQUAL(a.numeric, r->numeric);
		if (r->family && a.ss.ss_family != r->family) {
			fprintf(stderr, "'%s': family %d\n", r->text, a.ss.ss_family);
			CU_FAIL("family");
		}
	}
	CU_ASSERT_EQUAL(coil_addr_parse(NULL, 0, NULL), -EINVAL);
}

static void test_scope(void)
{
	coil_addr_t a;
	T_ASSERT_OK(coil_addr_parse("[fe80::1%lo]:80", 0, &a));
	CU_ASSERT_STRING_EQUAL(a.scope, "lo");
	CU_ASSERT_EQUAL(a.scope_id, 1);
	CU_ASSERT_EQUAL(((struct sockaddr_in6 *)&a.ss)->sin6_scope_id, 1);
	char buf[80];
	CU_ASSERT(coil_addr_format((struct sockaddr *)&a.ss, a.sslen, buf,
				   sizeof(buf)) > 0);
	CU_ASSERT_STRING_EQUAL(buf, "[fe80::1%lo]:80");
}

static void test_unix_paths(void)
{
	coil_addr_t a;
	T_ASSERT_OK(coil_addr_parse("/tmp/x.sock", 0, &a));
	CU_ASSERT_EQUAL(a.kind, COIL_ADDR_UNIX);
	CU_ASSERT_STRING_EQUAL(((struct sockaddr_un *)&a.ss)->sun_path,
			       "/tmp/x.sock");
	char longp[200];
	memset(longp, 'a', sizeof(longp));
	longp[0] = '/';
	longp[199] = 0;
	CU_ASSERT_EQUAL(coil_addr_parse(longp, 0, &a), -ENAMETOOLONG);
	/* Relative names go to a private 0700 directory under $TMPDIR. */
	char tmp[] = "/tmp/coil-addr-XXXXXX";
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmp));
	setenv("TMPDIR", tmp, 1);
	T_ASSERT_OK(coil_addr_parse("my.sock", 0, &a));
	char want[300];
	snprintf(want, sizeof(want), "%s/coil-%u/my.sock", tmp, (unsigned)geteuid());
	CU_ASSERT_STRING_EQUAL(((struct sockaddr_un *)&a.ss)->sun_path, want);
	struct stat st;
	snprintf(want, sizeof(want), "%s/coil-%u", tmp, (unsigned)geteuid());
	CU_ASSERT_EQUAL(stat(want, &st), 0);
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
	/* Open to others: refused. */
	chmod(want, 0755);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -EACCES);
	CU_ASSERT(strlen(a.error) > 0);
	/* A symlink in its place: refused. */
	rmdir(want);
	CU_ASSERT_EQUAL(symlink("/tmp", want), 0);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -ELOOP);
	unlink(want);
	rmdir(tmp);
	unsetenv("TMPDIR");
}

static void test_format_and_info(void)
{
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons(80)};
	inet_pton(AF_INET, "1.2.3.4", &v4.sin_addr);
	char buf[80];
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, sizeof(v4), buf,
					 sizeof(buf)), 10);
	CU_ASSERT_STRING_EQUAL(buf, "1.2.3.4:80");
	/* Truncation keeps a terminated string. */
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, sizeof(v4), buf,
					 5), 4);
	CU_ASSERT_STRING_EQUAL(buf, "1.2.");
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons(8080),
				  .sin6_flowinfo = htonl(7)};
	inet_pton(AF_INET6, "::1", &v6.sin6_addr);
	coil_addr_format((struct sockaddr *)&v6, sizeof(v6), buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "[::1]:8080");
	coil_sockinfo_t si;
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&v6, sizeof(v6), &si));
	CU_ASSERT_EQUAL(si.family, AF_INET6);
	CU_ASSERT_STRING_EQUAL(si.host, "::1");
	CU_ASSERT_EQUAL(si.port, 8080);
	CU_ASSERT_EQUAL(si.flowinfo, 7);
	CU_ASSERT_STRING_EQUAL(si.scope, "");
	/* v4-mapped reads as the IPv4 text. */
	inet_pton(AF_INET6, "::ffff:10.0.0.1", &v6.sin6_addr);
	coil_sockinfo_from((struct sockaddr *)&v6, sizeof(v6), &si);
	CU_ASSERT_STRING_EQUAL(si.host, "10.0.0.1");
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	strcpy(un.sun_path, "/run/x.sock");
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&un, sizeof(un), &si));
	CU_ASSERT_STRING_EQUAL(si.path, "/run/x.sock");
	coil_addr_format((struct sockaddr *)&un, sizeof(un), buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "/run/x.sock");
	struct sockaddr bad = {.sa_family = AF_PACKET};
	CU_ASSERT_EQUAL(coil_addr_format(&bad, sizeof(bad), buf, sizeof(buf)),
			-EAFNOSUPPORT);
}

static void test_resolve(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_ip_t *ip = coil_resolve(loop, "127.0.0.1:80", 0);
	/* Numeric: finished at once. */
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FINISHED);
	coil_addrlist_t *l = coil_ip_ptr(ip);
	CU_ASSERT_EQUAL(l->count, 1);
	coil_ip_unref(ip);
	ip = coil_resolve(loop, "localhost:80", 0);
	T_ASSERT_OK(t_wait(ip));
	T_ASSERT_OK(coil_ip_error(ip));
	l = coil_ip_ptr(ip);
	CU_ASSERT(l && l->count >= 1);
	/* IPv6 first when there is any. */
	int has6 = 0;
	for (size_t i = 0; l && i < l->count; i++)
		has6 |= l->addrs[i].ss.ss_family == AF_INET6;
	if (has6)
		CU_ASSERT_EQUAL(l->addrs[0].ss.ss_family, AF_INET6);
	coil_ip_unref(ip);
	ip = coil_resolve(loop, "localhost:80", COIL_ADDR_IPV4);
	T_ASSERT_OK(t_wait(ip));
	l = coil_ip_ptr(ip);
	for (size_t i = 0; l && i < l->count; i++)
		CU_ASSERT_EQUAL(l->addrs[i].ss.ss_family, AF_INET);
	coil_ip_unref(ip);
	/* .invalid never resolves (RFC 6761); no network is needed. */
	ip = coil_resolve(loop, "no-such-host.invalid:80", 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT(coil_ip_error(ip) == -ENOENT || coil_ip_error(ip) == -EAGAIN);
	CU_ASSERT(strstr(coil_ip_message(ip), "no-such-host.invalid") != NULL);
	coil_ip_unref(ip);
	ip = coil_resolve(loop, "::1:80", 0);
	T_ASSERT_OK(t_wait(ip));
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINVAL);
	coil_ip_unref(ip);
	/* A resolution still queued when the loop stops is cancelled. */
	ip = coil_resolve(loop, "localhost:1", 0);
	coil_loop_free(loop);
	CU_ASSERT(coil_ip_state(ip) != COIL_IP_PENDING);
	coil_ip_error(ip);
	coil_ip_unref(ip);
}

static const coil_test_t tests[] = {
	{"grammar_table", test_grammar_table},
	{"scope", test_scope},
	{"unix_paths", test_unix_paths},
	{"format_and_info", test_format_and_info},
	{"resolve", test_resolve},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("addr", tests, argc, argv);
}
