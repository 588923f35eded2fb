/* SPDX-License-Identifier: MIT */
/* Addresses: kaa's grammar parsed strictly, formatting, structured info, and
 * (name resolution on the per-loop resolver thread is in resolver.c). */
#include "internal.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Longest address text we look at; anything longer cannot be valid (a host
 * is at most 255 bytes, a Unix path at most 107). */
#define MAX_TEXT 1024
/* sun_path holds 108 bytes: 107 of path plus the terminating NUL. */
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path))

/* Records why parsing failed (truncated to fit out->error) and returns err,
 * so every error path is one `return fail(...)`. */
static int fail(coil_addr_t *out, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fail(coil_addr_t *out, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(out->error, sizeof(out->error), fmt, ap);
	va_end(ap);
	return err;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool all_digits(const char *s)
{
	for (; *s; s++)
		if (!is_digit(*s))
			return false;
	return true;
}

/*
 * The service part: a decimal port (0..65535) or a service name looked up in
 * /etc/services with getservbyname_r (a file read, never DNS). An empty
 * service is port 0 for listen (kaa's "[host]:[service]": the kernel picks
 * a port) and an error for connect. Anything that starts with a digit must
 * be all digits, so "80x" is an error rather than a name to look up.
 */
static int parse_service(const char *svc, int flags, coil_addr_t *out)
{
	if (!*svc) {
		if (flags & COIL_ADDR_LISTEN)
			return 0;
		return fail(out, -EINVAL,
			    "missing port or service name after ':'");
	}
	if (strlen(svc) >= sizeof(out->service))
		return fail(out, -EINVAL, "service name too long: %.40s...", svc);
	memcpy(out->service, svc, strlen(svc) + 1);
	if (is_digit(*svc)) {
		unsigned long v = 0;
		for (const char *p = svc; *p; p++) {
			if (!is_digit(*p))
				return fail(out, -EINVAL,
					    "bad port '%s': trailing characters",
					    svc);
			v = v * 10 + (unsigned long)(*p - '0');
			if (v > 65535)
				return fail(out, -EINVAL,
					    "port %s out of range 0..65535", svc);
		}
		out->port = (uint16_t)v;
		return 0;
	}
	if (!is_alpha(*svc))
		return fail(out, -EINVAL, "bad port or service name '%s'", svc);
	for (const char *p = svc; *p; p++)
		if (!(is_alpha(*p) || is_digit(*p) || *p == '-' || *p == '_' ||
		      *p == '.'))
			return fail(out, -EINVAL, "bad service name '%s'", svc);
	struct servent se, *res = NULL;
	char buf[4096];
	const char *proto = (flags & COIL_ADDR_DGRAM) ? "udp" : "tcp";
	if (getservbyname_r(svc, proto, &se, buf, sizeof(buf), &res) || !res) {
		/* Without netbase there is no /etc/services and no name can
		 * be known: say so instead of blaming the name. */
		if (access("/etc/services", R_OK))
			return fail(out, -ENOENT,
				    "unknown service '%s' (no /etc/services: "
				    "give a port number)", svc);
		return fail(out, -ENOENT, "unknown service '%s' for %s", svc,
			    proto);
	}
	out->port = ntohs((uint16_t)res->s_port);
	return 0;
}

/*
 * The scope after '%': an interface name (if_nametoindex) or an interface
 * index. Both must name an interface that exists now, so a typo fails here
 * with -ENODEV rather than later as a puzzling connect error.
 */
static int parse_scope(const char *scope, coil_addr_t *out)
{
	if (!*scope)
		return fail(out, -EINVAL, "empty scope after '%%'");
	if (strlen(scope) >= sizeof(out->scope))
		return fail(out, -EINVAL, "scope too long: %.40s...", scope);
	memcpy(out->scope, scope, strlen(scope) + 1);
	if (is_digit(*scope)) {
		char name[IF_NAMESIZE];
		unsigned long idx = 0;
		for (const char *p = scope; *p; p++) {
			if (!is_digit(*p) || idx > UINT32_MAX / 10)
				return fail(out, -EINVAL, "bad scope index '%s'",
					    scope);
			idx = idx * 10 + (unsigned long)(*p - '0');
		}
		if (idx == 0 || idx > UINT32_MAX)
			return fail(out, -EINVAL, "bad scope index '%s'", scope);
		if (!if_indextoname((unsigned)idx, name))
			return fail(out, -ENODEV, "no interface with index %s",
				    scope);
		out->scope_id = (uint32_t)idx;
		return 0;
	}
	unsigned idx = strlen(scope) < IF_NAMESIZE ? if_nametoindex(scope) : 0;
	if (!idx)
		return fail(out, -ENODEV, "unknown interface '%s'", scope);
	out->scope_id = idx;
	return 0;
}

/*
 * The private directory for relative Unix socket names: $TMPDIR/coil-<euid>
 * (or /tmp/coil-<euid>), created mode 0700 when absent. An existing entry is
 * examined with lstat and refused unless it is a real directory owned by us
 * with no group or other permission bits: otherwise another user could
 * pre-create it (or a symlink in its place) and steer our sockets into a
 * directory they control. Fills dir and returns 0, or a -errno with
 * out->error set.
 */
static int private_dir(char *dir, size_t n, coil_addr_t *out)
{
	const char *tmp = getenv("TMPDIR");
	if (!tmp || !*tmp)
		tmp = "/tmp";
	if ((size_t)snprintf(dir, n, "%s/coil-%u", tmp, (unsigned)geteuid()) >=
	    n)
		return fail(out, -ENAMETOOLONG,
			    "TMPDIR too long for a Unix socket directory");
	if (mkdir(dir, 0700) && errno != EEXIST)
		return fail(out, -errno, "cannot create %.100s: %s", dir,
			    strerror(errno));
	struct stat st;
	if (lstat(dir, &st))
		return fail(out, -errno, "cannot stat %.100s: %s", dir,
			    strerror(errno));
	if (S_ISLNK(st.st_mode))
		return fail(out, -ELOOP,
			    "%.100s is a symlink; refusing to use it", dir);
	if (!S_ISDIR(st.st_mode))
		return fail(out, -EACCES, "%.100s is not a directory", dir);
	if (st.st_uid != geteuid())
		return fail(out, -EACCES, "%.100s belongs to uid %u, not us",
			    dir, (unsigned)st.st_uid);
	if (st.st_mode & 077)
		return fail(out, -EACCES,
			    "%.100s is open to other users (mode %03o, want 0700)",
			    dir, (unsigned)(st.st_mode & 0777));
	return 0;
}

/*
 * A Unix socket address: "/abs/path" as is, "@name" in Linux's abstract
 * namespace (the form coil_addr_format prints), anything else a plain file
 * name inside the private directory. Relative names may not contain '/', so
 * they can never climb out of that directory.
 */
static int parse_unix(const char *text, coil_addr_t *out)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&out->ss;
	char path[MAX_TEXT + 512];
	size_t len;

	out->kind = COIL_ADDR_UNIX;
	out->numeric = 1;
	sun->sun_family = AF_UNIX;
	if (text[0] == '@') {
		len = strlen(text + 1);
		if (!len)
			return fail(out, -EINVAL, "empty abstract socket name");
		if (len + 1 > SUN_PATH_MAX)
			return fail(out, -ENAMETOOLONG,
				    "abstract socket name longer than %zu bytes",
				    SUN_PATH_MAX - 1);
		/* No terminating NUL: the length alone delimits the name. */
		memcpy(sun->sun_path + 1, text + 1, len);
		out->sslen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
					 1 + len);
		return 0;
	}
	if (text[0] == '/') {
		snprintf(path, sizeof(path), "%s", text);
	} else {
		if (strchr(text, '/'))
			return fail(out, -EINVAL,
				    "relative Unix socket name '%.60s' may not "
				    "contain '/' (give an absolute path)", text);
		char dir[512];
		int rc = private_dir(dir, sizeof(dir), out);
		if (rc)
			return rc;
		snprintf(path, sizeof(path), "%s/%s", dir, text);
	}
	len = strlen(path);
	if (len + 1 > SUN_PATH_MAX)
		return fail(out, -ENAMETOOLONG,
			    "Unix socket path longer than %zu bytes: %.60s...",
			    SUN_PATH_MAX - 1, path);
	memcpy(sun->sun_path, path, len + 1);
	out->sslen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
				 1);
	return 0;
}

static bool is_link_local(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xfe && (a->s6_addr[1] & 0xc0) == 0x80;
}

static bool host_char(char c)
{
	return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_';
}

/* Copies src[0..n) into dst (size cap) as a string; false if it is too long. */
static bool copy_part(char *dst, size_t cap, const char *src, size_t n)
{
	if (n >= cap)
		return false;
	memcpy(dst, src, n);
	dst[n] = 0;
	return true;
}

/*
 * Splits "host:service[%scope]" or "[v6[%scope]]:service[%scope]" into its
 * parts without judging them, except for what only the split can see:
 * brackets, unbracketed IPv6, garbage after ']', two scopes.
 */
static int split_inet(const char *text, char *host, size_t hcap, char *svc,
		      size_t scap, char *scope, size_t sccap, coil_addr_t *out)
{
	const char *rest;
	if (text[0] == '[') {
		const char *close = strchr(text, ']');
		if (!close)
			return fail(out, -EINVAL, "missing ']' in '%.80s'", text);
		if (!copy_part(host, hcap, text + 1, (size_t)(close - text - 1)))
			return fail(out, -EINVAL, "host too long in '%.60s...'",
				    text);
		char *pct = strchr(host, '%');
		if (pct) {
			if (!copy_part(scope, sccap, pct + 1, strlen(pct + 1)))
				return fail(out, -EINVAL, "scope too long");
			if (!scope[0])
				return fail(out, -EINVAL,
					    "empty scope after '%%' in '%.80s'",
					    text);
			*pct = 0;
		}
		if (!close[1])
			return fail(out, -EINVAL,
				    "missing ':port' after ']' in '%.80s'", text);
		if (close[1] != ':')
			return fail(out, -EINVAL,
				    "unexpected '%c' after ']' in '%.80s'",
				    close[1], text);
		struct in6_addr a6;
		if (inet_pton(AF_INET6, host, &a6) != 1)
			return fail(out, -EINVAL,
				    "[%.60s] is not an IPv6 address", host);
		rest = close + 2;
	} else {
		const char *colon = strchr(text, ':');
		if (strchr(colon + 1, ':'))
			return fail(out, -EINVAL,
				    "'%.80s': IPv6 addresses must be written in "
				    "brackets, as in [::1]:80", text);
		if (!copy_part(host, hcap, text, (size_t)(colon - text)))
			return fail(out, -EINVAL, "host name too long");
		for (const char *p = host; *p; p++)
			if (!host_char(*p))
				return fail(out, -EINVAL,
					    "bad character '%c' in host '%.80s'",
					    *p, host);
		rest = colon + 1;
	}
	const char *pct = strchr(rest, '%');
	size_t sl = pct ? (size_t)(pct - rest) : strlen(rest);
	if (!copy_part(svc, scap, rest, sl))
		return fail(out, -EINVAL, "service too long in '%.60s...'", text);
	if (pct) {
		if (scope[0])
			return fail(out, -EINVAL, "two scopes in '%.80s'", text);
		if (!copy_part(scope, sccap, pct + 1, strlen(pct + 1)))
			return fail(out, -EINVAL, "scope too long");
		if (!scope[0])
			return fail(out, -EINVAL,
				    "empty scope after '%%' in '%.80s'", text);
	}
	return 0;
}

/* Fills out->ss for an empty listen host: the IPv6 wildcard (dual-stack),
 * or INADDR_ANY when IPv4 is forced. */
static int fill_wildcard(int flags, coil_addr_t *out)
{
	struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
	out->numeric = 1;
	if (flags & COIL_ADDR_IPV4) {
		if (out->scope_id)
			return fail(out, -EINVAL,
				    "a %%scope needs IPv6, but IPv4 is forced");
		v4->sin_family = AF_INET;
		v4->sin_port = htons(out->port);
		v4->sin_addr.s_addr = htonl(INADDR_ANY);
		out->sslen = sizeof(*v4);
	} else {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(out->port);
		v6->sin6_addr = in6addr_any;
		v6->sin6_scope_id = out->scope_id;
		out->sslen = sizeof(*v6);
	}
	return 0;
}

/*
 * Fills out->ss when out->host is an IP literal; leaves numeric = 0 for a
 * host name. IPv4 must be a full dotted quad (inet_pton): the short and hex
 * forms that inet_aton and getaddrinfo accept ("127.1", "0x7f.1", "2130706433")
 * are refused instead of being quietly reinterpreted.
 */
static int fill_numeric(int flags, coil_addr_t *out)
{
	struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
	const char *host = out->host;

	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		if (out->scope_id)
			return fail(out, -EINVAL,
				    "a %%scope applies to IPv6 only, not %s",
				    host);
		v4->sin_family = AF_INET;
		v4->sin_port = htons(out->port);
		out->sslen = sizeof(*v4);
		out->numeric = 1;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		if (flags & COIL_ADDR_IPV4)
			return fail(out, -EAFNOSUPPORT,
				    "IPv6 address [%s] but IPv4 is forced", host);
		if (is_link_local(&v6->sin6_addr) && !out->scope_id)
			return fail(out, -EINVAL,
				    "link-local address [%s] needs a %%scope "
				    "(interface), as in [%s%%eth0]:port",
				    host, host);
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(out->port);
		v6->sin6_scope_id = out->scope_id;
		out->sslen = sizeof(*v6);
		out->numeric = 1;
		return 0;
	}
	memset(&out->ss, 0, sizeof(out->ss));
	struct in_addr legacy;
	if (inet_aton(host, &legacy))
		return fail(out, -EINVAL,
			    "'%s' is not a dotted-quad IPv4 address", host);
	if (strspn(host, "0123456789.") == strlen(host))
		return fail(out, -EINVAL, "'%s' is not an IPv4 address", host);
	return 0; /* a host name: resolved later */
}

/*
 * Grammar (kaa): an integer alone is a port on all interfaces (listen only);
 * otherwise a string without ':' is a Unix socket, and one with ':' is
 * host:service[%scope], where host is a name, a dotted quad, an IPv6 literal
 * in brackets (which may carry the scope inside: [fe80::1%eth0]:80), or
 * empty for listen. Every malformed form fails with a sentence in
 * out->error; nothing is guessed. Does no DNS.
 */
int coil_addr_parse(const char *text, int flags, coil_addr_t *out)
{
	char host[sizeof(out->host)] = "", svc[sizeof(out->service)] = "";
	char scope[sizeof(out->scope)] = "";
	int rc;

	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (!text)
		return fail(out, -EINVAL, "no address given");
	if (!*text)
		return fail(out, -EINVAL, "empty address");
	if (strnlen(text, MAX_TEXT + 1) > MAX_TEXT)
		return fail(out, -EINVAL, "address longer than %d bytes",
			    MAX_TEXT);
	if (all_digits(text)) {
		if (!(flags & COIL_ADDR_LISTEN))
			return fail(out, -EINVAL,
				    "bare port %.20s: connect needs host:port",
				    text);
		out->kind = COIL_ADDR_INET;
		rc = parse_service(text, flags, out);
		return rc ? rc : fill_wildcard(flags, out);
	}
	if (!strchr(text, ':'))
		return parse_unix(text, out);

	out->kind = COIL_ADDR_INET;
	rc = split_inet(text, host, sizeof(host), svc, sizeof(svc), scope,
			sizeof(scope), out);
	if (rc)
		return rc;
	memcpy(out->host, host, sizeof(host));
	if (!host[0] && !(flags & COIL_ADDR_LISTEN))
		return fail(out, -EINVAL,
			    "missing host in '%.80s' (only listen may omit it)",
			    text);
	if ((rc = parse_service(svc, flags, out)))
		return rc;
	if (scope[0] && (rc = parse_scope(scope, out)))
		return rc;
	if (!host[0])
		return fill_wildcard(flags, out);
	return fill_numeric(flags, out);
}

/* Bytes of sun_path covered by len, clamped to the array. */
static size_t sun_len(socklen_t len)
{
	size_t off = offsetof(struct sockaddr_un, sun_path);
	size_t n = len > off ? len - off : 0;
	return n < SUN_PATH_MAX ? n : SUN_PATH_MAX;
}

/* The interface name for a scope id, or its number when the interface is
 * gone (or has no name we can read). */
static void scope_text(uint32_t id, char *buf, size_t n)
{
	char name[IF_NAMESIZE];
	if (if_indextoname(id, name))
		snprintf(buf, n, "%s", name);
	else
		snprintf(buf, n, "%u", id);
}

/*
 * Formats an address the way the grammar writes it, so that the output of
 * coil_addr_format parses back to the same address. len is checked against
 * the family's size, so a short buffer is rejected rather than over-read.
 * Returns the length written (n - 1 when truncated), -EINVAL for bad
 * arguments, -EAFNOSUPPORT for families other than INET, INET6 and UNIX.
 */
int coil_addr_format(const struct sockaddr *sa, socklen_t len, char *buf,
		     size_t n)
{
	char h[INET6_ADDRSTRLEN], sc[IF_NAMESIZE + 12];
	int r;

	if (!sa || !buf || !n || len < sizeof(sa_family_t))
		return -EINVAL;
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *v4 = (const void *)sa;
		if (len < sizeof(*v4))
			return -EINVAL;
		inet_ntop(AF_INET, &v4->sin_addr, h, sizeof(h));
		r = snprintf(buf, n, "%s:%u", h, ntohs(v4->sin_port));
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *v6 = (const void *)sa;
		if (len < sizeof(*v6))
			return -EINVAL;
		inet_ntop(AF_INET6, &v6->sin6_addr, h, sizeof(h));
		sc[0] = 0;
		if (v6->sin6_scope_id) {
			sc[0] = '%';
			scope_text(v6->sin6_scope_id, sc + 1, sizeof(sc) - 1);
		}
		r = snprintf(buf, n, "[%s%s]:%u", h, sc, ntohs(v6->sin6_port));
		break;
	}
	case AF_UNIX: {
		const struct sockaddr_un *u = (const void *)sa;
		size_t plen = sun_len(len);
		if (plen && u->sun_path[0] == 0) /* abstract: "@name" */
			r = snprintf(buf, n, "@%.*s", (int)(plen - 1),
				     u->sun_path + 1);
		else
			r = snprintf(buf, n, "%.*s",
				     (int)strnlen(u->sun_path, plen),
				     u->sun_path);
		break;
	}
	default:
		return -EAFNOSUPPORT;
	}
	if (r < 0)
		return -EINVAL;
	return (size_t)r >= n ? (int)n - 1 : r;
}

/*
 * kaa's local/peer tuple as a structure. An IPv4-mapped IPv6 address (a v4
 * client on a dual-stack listener) reads as the plain dotted quad, as users
 * expect, while family stays AF_INET6 to say what the socket really is.
 * reqhost is left empty: only the socket knows what name connect was given.
 */
int coil_sockinfo_from(const struct sockaddr *sa, socklen_t len,
		       coil_sockinfo_t *out)
{
	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (!sa || len < sizeof(sa_family_t))
		return -EINVAL;
	out->family = sa->sa_family;
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *v4 = (const void *)sa;
		if (len < sizeof(*v4))
			return -EINVAL;
		inet_ntop(AF_INET, &v4->sin_addr, out->host, sizeof(out->host));
		out->port = ntohs(v4->sin_port);
		return 0;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *v6 = (const void *)sa;
		if (len < sizeof(*v6))
			return -EINVAL;
		if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr))
			inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], out->host,
				  sizeof(out->host));
		else
			inet_ntop(AF_INET6, &v6->sin6_addr, out->host,
				  sizeof(out->host));
		out->port = ntohs(v6->sin6_port);
		out->flowinfo = ntohl(v6->sin6_flowinfo);
		out->scope_id = v6->sin6_scope_id;
		if (v6->sin6_scope_id)
			scope_text(v6->sin6_scope_id, out->scope,
				   sizeof(out->scope));
		return 0;
	}
	case AF_UNIX: {
		const struct sockaddr_un *u = (const void *)sa;
		size_t plen = sun_len(len);
		if (plen > sizeof(out->path) - 1)
			plen = sizeof(out->path) - 1;
		if (plen && u->sun_path[0] == 0) {
			out->path[0] = '@';
			memcpy(out->path + 1, u->sun_path + 1, plen - 1);
		} else {
			memcpy(out->path, u->sun_path, strnlen(u->sun_path, plen));
		}
		return 0;
	}
	default:
		return -EAFNOSUPPORT;
	}
}
