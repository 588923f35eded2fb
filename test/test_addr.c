/* SPDX-License-Identifier: MIT */
/* Tests for lib/addr.c: the address grammar as a table, the private Unix
 * directory, formatting round trips, structured info, and the resolver. */
#include "helpers.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define L COIL_ADDR_LISTEN
#define V4 COIL_ADDR_IPV4
#define INET COIL_ADDR_INET
#define UNIX COIL_ADDR_UNIX

/*
 * One row of the grammar table. For rc == 0 every field is checked: kind,
 * host, service (as written), port, scope (as written), scope_id, numeric
 * and, when numeric, the family and port in ss. Unix rows check the path in
 * sun_path instead of host: "~/x" means the private directory plus "/x",
 * "@x" an abstract name. Failing rows only need a message in error.
 */
struct row {
	const char *text;
	int flags;
	int rc;
	int kind;
	const char *host;    /* INET: host; UNIX: expected path */
	const char *service;
	int port;
	const char *scope;
	int scope_id;
	int numeric;
	int family;          /* of ss when numeric */
};

/* A row that must fail with rc (and say why). */
#define BAD(text, flags, rc) {text, flags, rc, 0, NULL, NULL, 0, NULL, 0, 0, 0}

static const struct row rows[] = {
	/* connect: IPv4, IPv6 in brackets, names, services */
	{"127.0.0.1:80", 0, 0, INET, "127.0.0.1", "80", 80, "", 0, 1, AF_INET},
	{"1.2.3.4:0", 0, 0, INET, "1.2.3.4", "0", 0, "", 0, 1, AF_INET},
	{"1.2.3.4:65535", 0, 0, INET, "1.2.3.4", "65535", 65535, "", 0, 1,
	 AF_INET},
	{"1.2.3.4:00080", 0, 0, INET, "1.2.3.4", "00080", 80, "", 0, 1, AF_INET},
	{"[::1]:80", 0, 0, INET, "::1", "80", 80, "", 0, 1, AF_INET6},
	{"[2001:db8::1]:443", 0, 0, INET, "2001:db8::1", "443", 443, "", 0, 1,
	 AF_INET6},
	{"[::ffff:1.2.3.4]:80", 0, 0, INET, "::ffff:1.2.3.4", "80", 80, "", 0,
	 1, AF_INET6},
	{"localhost:80", 0, 0, INET, "localhost", "80", 80, "", 0, 0, 0},
	{"localhost:http", 0, 0, INET, "localhost", "http", 80, "", 0, 0, 0},
	{"example.invalid:8080", 0, 0, INET, "example.invalid", "8080", 8080,
	 "", 0, 0, 0},
	{"my-host_1.example:22", 0, 0, INET, "my-host_1.example", "22", 22, "",
	 0, 0, 0},
	/* scopes: by name and by index, inside or after the brackets */
	{"[fe80::1%lo]:80", 0, 0, INET, "fe80::1", "80", 80, "lo", 1, 1,
	 AF_INET6},
	{"[fe80::1]:80%lo", 0, 0, INET, "fe80::1", "80", 80, "lo", 1, 1,
	 AF_INET6},
	{"[fe80::1]:80%1", 0, 0, INET, "fe80::1", "80", 80, "1", 1, 1, AF_INET6},
	{"[fe80::1%1]:80", 0, 0, INET, "fe80::1", "80", 80, "1", 1, 1,
	 AF_INET6},
	{"[::1]:80%lo", 0, 0, INET, "::1", "80", 80, "lo", 1, 1, AF_INET6},
	{"localhost:80%lo", 0, 0, INET, "localhost", "80", 80, "lo", 1, 0, 0},
	/* listen: bare port, empty host, empty service */
	{"8080", L, 0, INET, "", "8080", 8080, "", 0, 1, AF_INET6},
	{"8080", L | V4, 0, INET, "", "8080", 8080, "", 0, 1, AF_INET},
	{"0", L, 0, INET, "", "0", 0, "", 0, 1, AF_INET6},
	{"65535", L, 0, INET, "", "65535", 65535, "", 0, 1, AF_INET6},
	{":8080", L, 0, INET, "", "8080", 8080, "", 0, 1, AF_INET6},
	{":8080", L | V4, 0, INET, "", "8080", 8080, "", 0, 1, AF_INET},
	{":http", L, 0, INET, "", "http", 80, "", 0, 1, AF_INET6},
	{":", L, 0, INET, "", "", 0, "", 0, 1, AF_INET6},
	{"1.2.3.4:", L, 0, INET, "1.2.3.4", "", 0, "", 0, 1, AF_INET},
	{"[::1]:", L, 0, INET, "::1", "", 0, "", 0, 1, AF_INET6},
	{"0.0.0.0:0", L, 0, INET, "0.0.0.0", "0", 0, "", 0, 1, AF_INET},
	{"[::]:0", L, 0, INET, "::", "0", 0, "", 0, 1, AF_INET6},
	{":80%lo", L, 0, INET, "", "80", 80, "lo", 1, 1, AF_INET6},
	{"localhost:", L, 0, INET, "localhost", "", 0, "", 0, 0, 0},
	{"[fe80::1%lo]:80", L, 0, INET, "fe80::1", "80", 80, "lo", 1, 1,
	 AF_INET6},
	/* Unix: absolute, relative (private directory), abstract */
	{"/tmp/x.sock", 0, 0, UNIX, "/tmp/x.sock", "", 0, "", 0, 1, AF_UNIX},
	{"/tmp/x.sock", L, 0, UNIX, "/tmp/x.sock", "", 0, "", 0, 1, AF_UNIX},
	{"rel.sock", 0, 0, UNIX, "~/rel.sock", "", 0, "", 0, 1, AF_UNIX},
	{"1.2.3.4", 0, 0, UNIX, "~/1.2.3.4", "", 0, "", 0, 1, AF_UNIX},
	{"@coil-abstract", 0, 0, UNIX, "@coil-abstract", "", 0, "", 0, 1,
	 AF_UNIX},
	/* invalid: empty, bare port for connect, missing host or service */
	BAD("", 0, -EINVAL),
	BAD("", L, -EINVAL),
	BAD("8080", 0, -EINVAL),
	BAD(":8080", 0, -EINVAL),
	BAD(":", 0, -EINVAL),
	BAD("1.2.3.4:", 0, -EINVAL),
	BAD("[::1]:", 0, -EINVAL),
	BAD("[::1]", 0, -EINVAL),
	BAD("[::1]", L, -EINVAL),
	/* ports */
	BAD("1.2.3.4:65536", 0, -EINVAL),
	BAD("65536", L, -EINVAL),
	BAD("1.2.3.4:99999999999999999999", 0, -EINVAL),
	BAD("1.2.3.4:-1", 0, -EINVAL),
	BAD("1.2.3.4:+80", 0, -EINVAL),
	/* trailing garbage */
	BAD("1.2.3.4:80x", 0, -EINVAL),
	BAD("1.2.3.4:80 ", 0, -EINVAL),
	BAD("[::1]x:80", 0, -EINVAL),
	BAD("[::1]%lo:80", 0, -EINVAL),
	BAD("host:80:90", 0, -EINVAL),
	/* IPv6 without brackets, bad bracket contents */
	BAD("::1:80", 0, -EINVAL),
	BAD("fe80::1", 0, -EINVAL),
	BAD("fe80::1:80", 0, -EINVAL),
	BAD("[::1:80", 0, -EINVAL),
	BAD("[1.2.3.4]:80", 0, -EINVAL),
	BAD("[]:80", 0, -EINVAL),
	BAD("[localhost]:80", 0, -EINVAL),
	/* link-local needs a scope; scopes must exist and be well formed */
	BAD("[fe80::1]:80", 0, -EINVAL),
	BAD("[fe80::1]:80", L, -EINVAL),
	BAD("[febf::1]:80", 0, -EINVAL),
	BAD("[fe80::1]:80%bogus0", 0, -ENODEV),
	BAD("[fe80::1%bogus0]:80", 0, -ENODEV),
	BAD("[fe80::1]:80%999999", 0, -ENODEV),
	BAD("[fe80::1]:80%0", 0, -EINVAL),
	BAD("[fe80::1]:80%", 0, -EINVAL),
	BAD("[fe80::1%]:80", 0, -EINVAL),
	BAD("[fe80::1%lo]:80%lo", 0, -EINVAL),
	BAD("1.2.3.4:80%lo", 0, -EINVAL),
	/* services */
	BAD("localhost:no-such-service-x", 0, -ENOENT),
	BAD("localhost:ht tp", 0, -EINVAL),
	BAD("localhost:_x", 0, -EINVAL),
	/* IPv4 must be a full dotted quad; host names are checked */
	BAD("1.2.3:80", 0, -EINVAL),
	BAD("127.1:80", 0, -EINVAL),
	BAD("0x7f.0.0.1:80", 0, -EINVAL),
	BAD("2130706433:80", 0, -EINVAL),
	BAD("1.2.3.256:80", 0, -EINVAL),
	BAD("bad host:80", 0, -EINVAL),
	BAD("a/b:80", 0, -EINVAL),
	/* forced IPv4 */
	BAD("[::1]:80", V4, -EAFNOSUPPORT),
	BAD("[::1]:", L | V4, -EAFNOSUPPORT),
	BAD(":80%lo", L | V4, -EINVAL),
	/* Unix names */
	BAD("sub/dir.sock", 0, -EINVAL),
	BAD("./x.sock", 0, -EINVAL),
	BAD("@", 0, -EINVAL),
	BAD(NULL, 0, 0),
};

/* A fresh TMPDIR so the private directory of these tests is our own. */
static char tmpdir[64];

static void tmpdir_enter(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/coil-addr-XXXXXX");
	CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmpdir));
	setenv("TMPDIR", tmpdir, 1);
}

static void privdir(char *buf, size_t n)
{
	snprintf(buf, n, "%s/coil-%u", tmpdir, (unsigned)geteuid());
}

static void tmpdir_leave(void)
{
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	unsetenv("TMPDIR");
}

static int check_row(const struct row *r)
{
	coil_addr_t a;
	int bad = 0;
	int rc = coil_addr_parse(r->text, r->flags, &a);
#define ROW_FAIL(...)                                                   \
	do {                                                            \
		fprintf(stderr, "'%s' (flags %d): ", r->text, r->flags); \
		fprintf(stderr, __VA_ARGS__);                           \
		fprintf(stderr, "\n");                                  \
		bad = 1;                                                \
	} while (0)
	if (rc != r->rc) {
		ROW_FAIL("rc %d, want %d (%s)", rc, r->rc, a.error);
		return 1;
	}
	if (rc) {
		if (!a.error[0])
			ROW_FAIL("no error message");
		return bad;
	}
	if (a.error[0])
		ROW_FAIL("error set on success: %s", a.error);
	if (a.kind != r->kind)
		ROW_FAIL("kind %d", a.kind);
	if (a.numeric != r->numeric)
		ROW_FAIL("numeric %d", a.numeric);
	if (r->kind == UNIX) {
		const struct sockaddr_un *u = (const void *)&a.ss;
		char want[256];
		if (r->host[0] == '~') {
			privdir(want, sizeof(want));
			strcat(want, r->host + 1);
		} else {
			snprintf(want, sizeof(want), "%s", r->host);
		}
		size_t off = offsetof(struct sockaddr_un, sun_path);
		if (u->sun_family != AF_UNIX)
			ROW_FAIL("family %d", u->sun_family);
		if (want[0] == '@') {
			if (u->sun_path[0] || a.sslen != off + strlen(want) ||
			    memcmp(u->sun_path + 1, want + 1, strlen(want) - 1))
				ROW_FAIL("abstract name wrong (len %u)",
					 (unsigned)a.sslen);
		} else if (strcmp(u->sun_path, want) ||
			   a.sslen != off + strlen(want) + 1) {
			ROW_FAIL("path '%s' len %u, want '%s'", u->sun_path,
				 (unsigned)a.sslen, want);
		}
		return bad;
	}
	if (strcmp(a.host, r->host))
		ROW_FAIL("host '%s'", a.host);
	if (strcmp(a.service, r->service))
		ROW_FAIL("service '%s'", a.service);
	if (a.port != r->port)
		ROW_FAIL("port %u", a.port);
	if (strcmp(a.scope, r->scope))
		ROW_FAIL("scope '%s'", a.scope);
	if ((int)a.scope_id != r->scope_id)
		ROW_FAIL("scope_id %u", a.scope_id);
	if (!r->numeric)
		return bad;
	if (a.ss.ss_family != r->family)
		ROW_FAIL("family %d", a.ss.ss_family);
	if (r->family == AF_INET) {
		const struct sockaddr_in *v4 = (const void *)&a.ss;
		char h[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &v4->sin_addr, h, sizeof(h));
		if (a.sslen != sizeof(*v4) || ntohs(v4->sin_port) != r->port ||
		    strcmp(h, r->host[0] ? r->host : "0.0.0.0"))
			ROW_FAIL("sockaddr_in %s:%u", h, ntohs(v4->sin_port));
	} else if (r->family == AF_INET6) {
		const struct sockaddr_in6 *v6 = (const void *)&a.ss;
		struct in6_addr want;
		inet_pton(AF_INET6, r->host[0] ? r->host : "::", &want);
		if (a.sslen != sizeof(*v6) || ntohs(v6->sin6_port) != r->port ||
		    memcmp(&v6->sin6_addr, &want, sizeof(want)) ||
		    (int)v6->sin6_scope_id != r->scope_id)
			ROW_FAIL("sockaddr_in6 wrong");
	}
	return bad;
#undef ROW_FAIL
}

static void test_grammar_table(void)
{
	bool have_services = access("/etc/services", R_OK) == 0;
	int n = 0, failed = 0;

	/* The loopback interface is index 1 in every network namespace. */
	CU_ASSERT_EQUAL_FATAL(if_nametoindex("lo"), 1);
	tmpdir_enter();
	for (const struct row *r = rows; r->text; r++, n++) {
		if (!have_services && strstr(r->text, "http"))
			continue; /* netbase not installed */
		failed += check_row(r);
	}
	tmpdir_leave();
	CU_ASSERT(n >= 40);
	CU_ASSERT_EQUAL(failed, 0);
}

static void test_bad_arguments(void)
{
	coil_addr_t a;
	coil_sockinfo_t si;
	char buf[64];
	struct sockaddr_in v4 = {.sin_family = AF_INET};

	CU_ASSERT_EQUAL(coil_addr_parse(NULL, 0, NULL), -EINVAL);
	CU_ASSERT_EQUAL(coil_addr_parse("1.2.3.4:80", 0, NULL), -EINVAL);
	CU_ASSERT_EQUAL(coil_addr_parse(NULL, 0, &a), -EINVAL);
	CU_ASSERT(a.error[0] != 0);
	/* Longer than any address can be. */
	char big[2000];
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	big[5] = ':';
	CU_ASSERT_EQUAL(coil_addr_parse(big, 0, &a), -EINVAL);
	/* A host of 256 bytes, a service of 64. */
	memset(big, 'h', 256);
	strcpy(big + 256, ":80");
	CU_ASSERT_EQUAL(coil_addr_parse(big, 0, &a), -EINVAL);
	memset(big, 's', 70);
	big[0] = 'h';
	big[1] = ':';
	big[70] = 0;
	CU_ASSERT_EQUAL(coil_addr_parse(big, 0, &a), -EINVAL);

	CU_ASSERT_EQUAL(coil_addr_format(NULL, 16, buf, sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, sizeof(v4),
					 NULL, 10), -EINVAL);
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, sizeof(v4),
					 buf, 0), -EINVAL);
	/* Lengths shorter than the family's address are refused, not read. */
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, 4, buf,
					 sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, 1, buf,
					 sizeof(buf)), -EINVAL);
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v6,
					 sizeof(struct sockaddr_in), buf,
					 sizeof(buf)), -EINVAL);
	CU_ASSERT_EQUAL(coil_sockinfo_from(NULL, 16, &si), -EINVAL);
	CU_ASSERT_EQUAL(coil_sockinfo_from((struct sockaddr *)&v4, sizeof(v4),
					   NULL), -EINVAL);
	CU_ASSERT_EQUAL(coil_sockinfo_from((struct sockaddr *)&v6,
					   sizeof(struct sockaddr_in), &si),
			-EINVAL);
	struct sockaddr bad = {.sa_family = AF_PACKET};
	CU_ASSERT_EQUAL(coil_addr_format(&bad, sizeof(bad), buf, sizeof(buf)),
			-EAFNOSUPPORT);
	CU_ASSERT_EQUAL(coil_sockinfo_from(&bad, sizeof(bad), &si),
			-EAFNOSUPPORT);
}

static void test_unix_paths(void)
{
	coil_addr_t a;
	char path[200], dir[128];
	struct stat st;

	/* sun_path is 108 bytes with the NUL: 107 bytes fit, 108 do not. */
	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[107] = 0;
	T_ASSERT_OK(coil_addr_parse(path, 0, &a));
	CU_ASSERT_EQUAL(strlen(((struct sockaddr_un *)&a.ss)->sun_path), 107);
	path[107] = 'a';
	path[108] = 0;
	CU_ASSERT_EQUAL(coil_addr_parse(path, 0, &a), -ENAMETOOLONG);
	CU_ASSERT(strstr(a.error, "107") != NULL);
	/* Abstract names: 107 bytes after the '@' at most. */
	memset(path, 'b', sizeof(path));
	path[0] = '@';
	path[108] = 0;
	T_ASSERT_OK(coil_addr_parse(path, 0, &a));
	path[109] = 0;
	path[108] = 'b';
	CU_ASSERT_EQUAL(coil_addr_parse(path, 0, &a), -ENAMETOOLONG);

	/* Relative names: created 0700 in $TMPDIR/coil-<uid>. */
	tmpdir_enter();
	privdir(dir, sizeof(dir));
	CU_ASSERT_EQUAL(lstat(dir, &st), -1);
	T_ASSERT_OK(coil_addr_parse("my.sock", COIL_ADDR_LISTEN, &a));
	CU_ASSERT_EQUAL(a.kind, COIL_ADDR_UNIX);
	CU_ASSERT_EQUAL_FATAL(lstat(dir, &st), 0);
	CU_ASSERT(S_ISDIR(st.st_mode));
	CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
	CU_ASSERT_EQUAL(st.st_uid, geteuid());
	snprintf(path, sizeof(path), "%s/my.sock", dir);
	CU_ASSERT_STRING_EQUAL(((struct sockaddr_un *)&a.ss)->sun_path, path);
	/* Reused as is the second time. */
	T_ASSERT_OK(coil_addr_parse("other.sock", 0, &a));
	/* A relative name too long for sun_path once the directory is added. */
	memset(path, 'c', 100);
	path[100] = 0;
	CU_ASSERT_EQUAL(coil_addr_parse(path, 0, &a), -ENAMETOOLONG);
	/* Group or other bits: refused. */
	CU_ASSERT_EQUAL(chmod(dir, 0750), 0);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -EACCES);
	CU_ASSERT(strstr(a.error, dir) != NULL);
	CU_ASSERT_EQUAL(chmod(dir, 0701), 0);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -EACCES);
	/* Owned by someone else (only root can arrange that here). */
	if (geteuid() == 0) {
		CU_ASSERT_EQUAL(chmod(dir, 0700), 0);
		CU_ASSERT_EQUAL(chown(dir, 65534, 65534), 0);
		CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -EACCES);
		CU_ASSERT(strstr(a.error, "uid") != NULL);
	}
	CU_ASSERT_EQUAL(rmdir(dir), 0);
	/* A symlink to a directory we do own: still refused. */
	char target[128];
	snprintf(target, sizeof(target), "%s/elsewhere", tmpdir);
	CU_ASSERT_EQUAL(mkdir(target, 0700), 0);
	CU_ASSERT_EQUAL(symlink(target, dir), 0);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -ELOOP);
	CU_ASSERT(strstr(a.error, "symlink") != NULL);
	/* A dangling symlink is not followed by mkdir either. */
	CU_ASSERT_EQUAL(unlink(dir), 0);
	CU_ASSERT_EQUAL(symlink("/nonexistent-coil-target", dir), 0);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -ELOOP);
	CU_ASSERT_EQUAL(unlink(dir), 0);
	/* A plain file in its place. */
	FILE *f = fopen(dir, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fclose(f);
	CU_ASSERT_EQUAL(coil_addr_parse("my.sock", 0, &a), -EACCES);
	CU_ASSERT_EQUAL(unlink(dir), 0);
	tmpdir_leave();

	/* A TMPDIR too long for any socket path. */
	memset(path, 'd', 190);
	path[0] = '/';
	path[190] = 0;
	setenv("TMPDIR", path, 1);
	CU_ASSERT(coil_addr_parse("x.sock", 0, &a) < 0);
	CU_ASSERT(a.error[0] != 0);
	unsetenv("TMPDIR");
	/* Absolute paths never touch the private directory. */
	setenv("TMPDIR", "/nonexistent-coil-dir", 1);
	T_ASSERT_OK(coil_addr_parse("/run/coil.sock", 0, &a));
	CU_ASSERT(coil_addr_parse("x.sock", 0, &a) < 0);
	unsetenv("TMPDIR");
}

/* text parses, formats as want, and want parses back to the same address. */
static void round_trip(const char *text, int flags, const char *want)
{
	coil_addr_t a, b;
	char buf[160];
	int rc = coil_addr_parse(text, flags, &a);
	if (rc) {
		fprintf(stderr, "'%s': %s\n", text, a.error);
		CU_FAIL("round trip parse");
		return;
	}
	int n = coil_addr_format((struct sockaddr *)&a.ss, a.sslen, buf,
				 sizeof(buf));
	CU_ASSERT_EQUAL(n, (int)strlen(want));
	if (strcmp(buf, want)) {
		fprintf(stderr, "'%s' formats as '%s', want '%s'\n", text, buf,
			want);
		CU_FAIL("round trip format");
		return;
	}
	T_ASSERT_OK(coil_addr_parse(buf, flags, &b));
	CU_ASSERT_EQUAL(a.sslen, b.sslen);
	CU_ASSERT(memcmp(&a.ss, &b.ss, a.sslen) == 0);
}

static void test_format_round_trips(void)
{
	round_trip("1.2.3.4:80", 0, "1.2.3.4:80");
	round_trip("1.2.3.4:00080", 0, "1.2.3.4:80");
	round_trip("[::1]:80", 0, "[::1]:80");
	round_trip("[2001:db8:0:0:0:0:0:1]:443", 0, "[2001:db8::1]:443");
	round_trip("[::ffff:1.2.3.4]:80", 0, "[::ffff:1.2.3.4]:80");
	round_trip("[fe80::1%lo]:80", 0, "[fe80::1%lo]:80");
	round_trip("[fe80::1]:80%1", 0, "[fe80::1%lo]:80");
	round_trip("8080", COIL_ADDR_LISTEN, "[::]:8080");
	round_trip("8080", COIL_ADDR_LISTEN | COIL_ADDR_IPV4, "0.0.0.0:8080");
	round_trip("/tmp/coil-x.sock", 0, "/tmp/coil-x.sock");
	round_trip("@coil-abstract", 0, "@coil-abstract");

	char buf[80];
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons(80)};
	inet_pton(AF_INET, "1.2.3.4", &v4.sin_addr);
	/* Truncation keeps a terminated string and says how much fits. */
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&v4, sizeof(v4), buf,
					 5), 4);
	CU_ASSERT_STRING_EQUAL(buf, "1.2.");
	/* A scope id with no interface prints as its number. */
	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6,
				  .sin6_port = htons(80),
				  .sin6_scope_id = 999999};
	inet_pton(AF_INET6, "fe80::1", &v6.sin6_addr);
	coil_addr_format((struct sockaddr *)&v6, sizeof(v6), buf, sizeof(buf));
	CU_ASSERT_STRING_EQUAL(buf, "[fe80::1%999999]:80");
	/* Unix: the length bounds the path; an unnamed socket is "". */
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	memset(un.sun_path, 'p', sizeof(un.sun_path)); /* no NUL at all */
	int n = coil_addr_format((struct sockaddr *)&un, sizeof(un), buf,
				 sizeof(buf));
	CU_ASSERT_EQUAL(n, (int)sizeof(buf) - 1);
	CU_ASSERT_EQUAL(coil_addr_format((struct sockaddr *)&un,
					 sizeof(sa_family_t), buf, sizeof(buf)),
			0);
	CU_ASSERT_STRING_EQUAL(buf, "");
}

static void test_sockinfo(void)
{
	coil_sockinfo_t si;
	struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons(443)};
	inet_pton(AF_INET, "10.1.2.3", &v4.sin_addr);
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&v4, sizeof(v4), &si));
	CU_ASSERT_EQUAL(si.family, AF_INET);
	CU_ASSERT_STRING_EQUAL(si.host, "10.1.2.3");
	CU_ASSERT_EQUAL(si.port, 443);
	CU_ASSERT_EQUAL(si.scope_id, 0);
	CU_ASSERT_STRING_EQUAL(si.scope, "");
	CU_ASSERT_STRING_EQUAL(si.path, "");
	CU_ASSERT_STRING_EQUAL(si.reqhost, "");

	struct sockaddr_in6 v6 = {.sin6_family = AF_INET6,
				  .sin6_port = htons(8080),
				  .sin6_flowinfo = htonl(0x12345),
				  .sin6_scope_id = 1};
	inet_pton(AF_INET6, "fe80::abcd", &v6.sin6_addr);
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&v6, sizeof(v6), &si));
	CU_ASSERT_EQUAL(si.family, AF_INET6);
	CU_ASSERT_STRING_EQUAL(si.host, "fe80::abcd");
	CU_ASSERT_EQUAL(si.port, 8080);
	CU_ASSERT_EQUAL(si.flowinfo, 0x12345);
	CU_ASSERT_EQUAL(si.scope_id, 1);
	CU_ASSERT_STRING_EQUAL(si.scope, "lo");

	/* A v4 client on a dual-stack listener reads as its dotted quad. */
	v6.sin6_scope_id = 0;
	v6.sin6_flowinfo = 0;
	inet_pton(AF_INET6, "::ffff:192.0.2.7", &v6.sin6_addr);
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&v6, sizeof(v6), &si));
	CU_ASSERT_EQUAL(si.family, AF_INET6);
	CU_ASSERT_STRING_EQUAL(si.host, "192.0.2.7");
	CU_ASSERT_STRING_EQUAL(si.scope, "");

	struct sockaddr_un un = {.sun_family = AF_UNIX};
	strcpy(un.sun_path, "/run/x.sock");
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&un, sizeof(un), &si));
	CU_ASSERT_EQUAL(si.family, AF_UNIX);
	CU_ASSERT_STRING_EQUAL(si.path, "/run/x.sock");
	CU_ASSERT_STRING_EQUAL(si.host, "");
	/* Abstract, as the kernel reports it: length-delimited. */
	memset(un.sun_path, 0, sizeof(un.sun_path));
	memcpy(un.sun_path + 1, "abs", 3);
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&un,
				       offsetof(struct sockaddr_un, sun_path) + 4,
				       &si));
	CU_ASSERT_STRING_EQUAL(si.path, "@abs");
	/* Unnamed (a socketpair end). */
	T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&un,
				       sizeof(sa_family_t), &si));
	CU_ASSERT_STRING_EQUAL(si.path, "");
	/* From a real socket: getsockname of a bound abstract socket. */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CU_ASSERT_FATAL(fd >= 0);
	coil_addr_t a;
	T_ASSERT_OK(coil_addr_parse("@coil-test-sockinfo", 0, &a));
	if (bind(fd, (struct sockaddr *)&a.ss, a.sslen) == 0) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		CU_ASSERT_EQUAL(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
		T_ASSERT_OK(coil_sockinfo_from((struct sockaddr *)&ss, sl, &si));
		CU_ASSERT_STRING_EQUAL(si.path, "@coil-test-sockinfo");
	}
	close(fd);
}

/* The list a finished coil_resolve handle carries. */
static coil_addrlist_t *list_of(coil_ip_t *ip)
{
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FINISHED);
	if (coil_ip_state(ip) != COIL_IP_FINISHED) {
		fprintf(stderr, "resolve failed: %s\n", coil_ip_message(ip));
		return NULL;
	}
	return coil_ip_ptr(ip);
}

static void test_resolve_numeric(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_addrlist_t *l;

	/* Literals and Unix paths finish before coil_resolve returns. */
	coil_ip_t *ip = coil_resolve(loop, "127.0.0.1:80", 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(ip);
	l = list_of(ip);
	CU_ASSERT_FATAL(l != NULL);
	CU_ASSERT_EQUAL(l->count, 1);
	CU_ASSERT_EQUAL(l->addrs[0].ss.ss_family, AF_INET);
	CU_ASSERT_EQUAL(l->addrs[0].len, sizeof(struct sockaddr_in));
	CU_ASSERT_EQUAL(ntohs(((struct sockaddr_in *)&l->addrs[0].ss)->sin_port),
			80);
	coil_ip_unref(ip);

	ip = coil_resolve(loop, "[::1]:443", 0);
	l = list_of(ip);
	CU_ASSERT(l && l->count == 1 && l->addrs[0].ss.ss_family == AF_INET6);
	coil_ip_unref(ip);

	ip = coil_resolve(loop, ":80", COIL_ADDR_LISTEN);
	l = list_of(ip);
	CU_ASSERT(l && l->count == 1 && l->addrs[0].ss.ss_family == AF_INET6);
	if (l)
		CU_ASSERT(IN6_IS_ADDR_UNSPECIFIED(
			&((struct sockaddr_in6 *)&l->addrs[0].ss)->sin6_addr));
	coil_ip_unref(ip);

	ip = coil_resolve(loop, "/tmp/coil-resolve.sock", 0);
	l = list_of(ip);
	CU_ASSERT(l && l->count == 1 && l->addrs[0].ss.ss_family == AF_UNIX);
	coil_ip_unref(ip);

	/* Grammar errors fail at once with the parser's sentence. */
	ip = coil_resolve(loop, "::1:80", 0);
	CU_ASSERT_EQUAL(coil_ip_state(ip), COIL_IP_FAILED);
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINVAL);
	CU_ASSERT(strstr(coil_ip_message(ip), "brackets") != NULL);
	coil_ip_unref(ip);
	ip = coil_resolve(loop, NULL, 0);
	CU_ASSERT_EQUAL(coil_ip_error(ip), -EINVAL);
	coil_ip_unref(ip);
	ip = coil_resolve(loop, "[fe80::1]:80%bogus0", 0);
	CU_ASSERT_EQUAL(coil_ip_error(ip), -ENODEV);
	coil_ip_unref(ip);
	CU_ASSERT_PTR_NULL(coil_resolve(NULL, "127.0.0.1:80", 0));
	T_ASSERT_OK(coil_loop_free(loop));
}

/* RFC 8305 interleaving: a family repeats only once the other has run out. */
static void check_interleaved(const coil_addrlist_t *l)
{
	if (!l->count)
		return;
	bool has6 = false;
	for (size_t i = 0; i < l->count; i++)
		has6 |= l->addrs[i].ss.ss_family == AF_INET6;
	if (has6)
		CU_ASSERT_EQUAL(l->addrs[0].ss.ss_family, AF_INET6);
	for (size_t i = 1; i < l->count; i++) {
		int fam = l->addrs[i].ss.ss_family;
		CU_ASSERT(fam == AF_INET || fam == AF_INET6);
		if (fam != l->addrs[i - 1].ss.ss_family)
			continue;
		for (size_t k = i; k < l->count; k++)
			CU_ASSERT_EQUAL(l->addrs[k].ss.ss_family, fam);
	}
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >>
			       24 == 127;
	return ss->ss_family == AF_INET6 &&
	       IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static void test_resolve_names(void)
{
	coil_loop_t *loop = t_loop(1);
	coil_addrlist_t *l;

	/* localhost comes from /etc/hosts: ::1 and/or 127.0.0.1. */
	coil_ip_t *ip = coil_resolve(loop, "localhost:80", 0);
	T_ASSERT_OK(t_wait(ip));
	l = list_of(ip);
	CU_ASSERT_FATAL(l != NULL && l->count >= 1);
	for (size_t i = 0; i < l->count; i++) {
		CU_ASSERT(is_loopback(&l->addrs[i].ss));
		CU_ASSERT_EQUAL(port_of(&l->addrs[i].ss), 80);
	}
	check_interleaved(l);
	coil_ip_unref(ip);

	if (access("/etc/services", R_OK) == 0) {
		ip = coil_resolve(loop, "localhost:http", 0);
		T_ASSERT_OK(t_wait(ip));
		l = list_of(ip);
		CU_ASSERT(l && l->count >= 1 && port_of(&l->addrs[0].ss) == 80);
		coil_ip_unref(ip);
	}

	ip = coil_resolve(loop, "localhost:53", COIL_ADDR_IPV4 |
						COIL_ADDR_DGRAM);
	T_ASSERT_OK(t_wait(ip));
	l = list_of(ip);
	CU_ASSERT(l && l->count >= 1);
	for (size_t i = 0; l && i < l->count; i++)
		CU_ASSERT_EQUAL(l->addrs[i].ss.ss_family, AF_INET);
	coil_ip_unref(ip);

	/* .invalid never resolves (RFC 6761); no network is needed. */
	ip = coil_resolve(loop, "no-such-host.invalid:80", 0);
	T_ASSERT_OK(t_wait(ip));
	int err = coil_ip_error(ip);
	CU_ASSERT(err == -ENOENT || err == -EAGAIN);
	CU_ASSERT(strstr(coil_ip_message(ip), "resolve no-such-host.invalid")
		  != NULL);
	coil_ip_unref(ip);
	T_ASSERT_OK(coil_loop_free(loop));
}

static void test_resolve_many(void)
{
	enum { N = 32 };
	coil_loop_t *loop = t_loop(2);
	coil_ip_t *ips[N];

	for (int i = 0; i < N; i++)
		ips[i] = coil_resolve(loop, i % 3 ? "localhost:80"
						  : "no-such-host.invalid:1", 0);
	/* Aborting a queued resolution settles it; the thread then skips it
	 * or drops its result. */
	coil_ip_abort(ips[N - 1]);
	for (int i = 0; i < N; i++) {
		CU_ASSERT_PTR_NOT_NULL_FATAL(ips[i]);
		T_ASSERT_OK(t_wait(ips[i]));
		int err = coil_ip_error(ips[i]);
		if (i == N - 1) {
			CU_ASSERT(err == 0 || err == -ECANCELED);
		} else if (i % 3) {
			CU_ASSERT_EQUAL(err, 0);
		} else {
			CU_ASSERT(err == -ENOENT || err == -EAGAIN);
		}
		coil_ip_unref(ips[i]);
	}
	T_ASSERT_OK(coil_loop_free(loop));
}

static void test_resolve_stop(void)
{
	enum { N = 16 };
	coil_loop_t *loop = t_loop(1);
	coil_ip_t *ips[N];

	/* Resolutions still queued when the loop stops fail with
	 * -ECANCELED; none is left pending, none is freed under us. */
	for (int i = 0; i < N; i++)
		ips[i] = coil_resolve(loop, "localhost:1", 0);
	T_ASSERT_OK(coil_loop_free(loop));
	for (int i = 0; i < N; i++) {
		CU_ASSERT_NOT_EQUAL(coil_ip_state(ips[i]), COIL_IP_PENDING);
		int err = coil_ip_error(ips[i]);
		CU_ASSERT(err == 0 || err == -ECANCELED);
		if (err) {
			CU_ASSERT(strstr(coil_ip_message(ips[i]), "stopped") !=
				  NULL);
		}
		coil_ip_unref(ips[i]);
	}
	/* A loop that never resolved a name has no thread to stop. */
	T_ASSERT_OK(coil_loop_free(t_loop(1)));
}

static const coil_test_t tests[] = {
	{"grammar_table", test_grammar_table},
	{"bad_arguments", test_bad_arguments},
	{"unix_paths", test_unix_paths},
	{"format_round_trips", test_format_round_trips},
	{"sockinfo", test_sockinfo},
	{"resolve_numeric", test_resolve_numeric},
	{"resolve_names", test_resolve_names},
	{"resolve_many", test_resolve_many},
	{"resolve_stop", test_resolve_stop},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	return coil_test_main("addr", tests, argc, argv);
}
