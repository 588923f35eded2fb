/* SPDX-License-Identifier: MIT */
/* Addresses: kaa's grammar, strict parsing, formatting, structured info,
 * and name resolution on a per-loop resolver thread. */
#include "internal.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Records why parsing failed (truncated to fit) and returns err. */
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

/* A port number (all digits, 0..65535) or a service name from
 * /etc/services. */
static int parse_service(const char *svc, int flags, coil_addr_t *out)
{
	if (!*svc)
		return fail(out, -EINVAL, "missing service or port%s", "");
	if (strlen(svc) >= sizeof(out->service))
		return fail(out, -EINVAL, "service name too long: %.40s", svc);
	snprintf(out->service, sizeof(out->service), "%s", svc);
	bool digits = true;
	for (const char *p = svc; *p; p++)
		if (*p < '0' || *p > '9')
			digits = false;
	if (digits) {
		if (strlen(svc) > 5 || atol(svc) > 65535)
			return fail(out, -EINVAL, "port out of range: %s", svc);
		out->port = (uint16_t)atol(svc);
		return 0;
	}
	/* Service names start with a letter: "80x" or "-1" are bad ports,
	 * not names to look up. */
	if (!((*svc >= 'a' && *svc <= 'z') || (*svc >= 'A' && *svc <= 'Z')))
		return fail(out, -EINVAL, "bad port: %s", svc);
	for (const char *p = svc; *p; p++)
		if (!(*p == '-' || *p == '_' || *p == '.' || (*p >= 'a' && *p <= 'z') ||
		      (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
			return fail(out, -EINVAL, "bad service name: %s", svc);
	struct servent se, *res = NULL;
	char buf[1024];
	const char *proto = (flags & COIL_ADDR_DGRAM) ? "udp" : "tcp";
	if (getservbyname_r(svc, proto, &se, buf, sizeof(buf), &res) || !res)
		return fail(out, -ENOENT, "unknown service: %s", svc);
	out->port = ntohs((uint16_t)res->s_port);
	return 0;
}

/* A scope: an interface name or a number (its index). */
static int parse_scope(const char *scope, coil_addr_t *out)
{
	if (!*scope)
		return fail(out, -EINVAL, "empty scope after '%%'%s", "");
	if (strlen(scope) >= sizeof(out->scope))
		return fail(out, -EINVAL, "scope too long: %.40s", scope);
	snprintf(out->scope, sizeof(out->scope), "%s", scope);
	char *end;
	unsigned long idx = strtoul(scope, &end, 10);
	if (*scope >= '0' && *scope <= '9' && !*end) {
		if (idx == 0 || idx > UINT32_MAX)
			return fail(out, -EINVAL, "bad scope index: %s", scope);
		out->scope_id = (uint32_t)idx;
		return 0;
	}
	unsigned i = if_nametoindex(scope);
	if (!i)
		return fail(out, -ENODEV, "unknown interface: %s", scope);
	out->scope_id = i;
	return 0;
}

/*
 * The private directory for relative Unix socket names: $TMPDIR/coil-<uid>
 * (or /tmp), mode 0700, ours, not a symlink. Anything else is refused, so a
 * name can never be steered into another user's directory.
 */
static int private_dir(char *dir, size_t n, coil_addr_t *out)
{
	const char *tmp = getenv("TMPDIR");
	if (!tmp || !*tmp)
		tmp = "/tmp";
	if ((size_t)snprintf(dir, n, "%s/coil-%u", tmp, (unsigned)geteuid()) >= n)
		return fail(out, -ENAMETOOLONG, "TMPDIR too long%s", "");
	if (mkdir(dir, 0700) && errno != EEXIST)
		return fail(out, -errno, "cannot create %s", dir);
	struct stat st;
	if (lstat(dir, &st))
		return fail(out, -errno, "cannot stat %s", dir);
	if (S_ISLNK(st.st_mode))
		return fail(out, -ELOOP, "%s is a symlink: refused", dir);
	if (!S_ISDIR(st.st_mode))
		return fail(out, -ENOTDIR, "%s is not a directory", dir);
	if (st.st_uid != geteuid())
		return fail(out, -EACCES, "%s belongs to another user", dir);
	if (st.st_mode & 077)
		return fail(out, -EACCES, "%s is open to other users", dir);
	return 0;
}

static int parse_unix(const char *text, coil_addr_t *out)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&out->ss;
	char path[512];
	out->kind = COIL_ADDR_UNIX;
	if (text[0] == '/') {
		if (strlen(text) >= sizeof(path))
			return fail(out, -ENAMETOOLONG, "Unix path too long%s", "");
		snprintf(path, sizeof(path), "%s", text);
	} else {
		char dir[400];
		int rc = private_dir(dir, sizeof(dir), out);
		if (rc)
			return rc;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, text) >=
		    sizeof(path))
			return fail(out, -ENAMETOOLONG, "Unix path too long%s", "");
	}
	if (strlen(path) >= sizeof(sun->sun_path))
		return fail(out, -ENAMETOOLONG,
			    "Unix path longer than 107 bytes: %.60s", path);
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, strlen(path) + 1);
	out->sslen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
				 strlen(path) + 1);
	out->numeric = 1;
	return 0;
}

static bool is_link_local(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xfe && (a->s6_addr[1] & 0xc0) == 0x80;
}

/*
 * Grammar (kaa): PORT | [HOST]:SERVICE[%SCOPE] | [V6]:SERVICE[%SCOPE] | PATH,
 * where V6 may also carry its scope inside the brackets. No ':' means a Unix
 * path, except an all-digits string with COIL_ADDR_LISTEN (a port on every
 * interface).
 */
int coil_addr_parse(const char *text, int flags, coil_addr_t *out)
{
	if (!out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	if (!text)
		return fail(out, -EINVAL, "no address%s", "");
	if (!*text)
		return fail(out, -EINVAL, "empty address%s", "");
	size_t tl = strlen(text);
	if (tl > 1024)
		return fail(out, -EINVAL, "address too long%s", "");
	bool all_digits = true;
	for (const char *p = text; *p; p++)
		if (*p < '0' || *p > '9')
			all_digits = false;
	char host[300] = "", svc[80] = "", scope[80] = "";
	if (all_digits) {
		if (!(flags & COIL_ADDR_LISTEN))
			return fail(out, -EINVAL,
				    "a bare port (%s) needs a host to connect to",
				    text);
		if (tl >= sizeof(svc))
			return fail(out, -EINVAL, "port out of range: %.20s", text);
		memcpy(svc, text, tl + 1);
	} else if (!strchr(text, ':')) {
		return parse_unix(text, out);
	} else if (text[0] == '[') {
		const char *close = strchr(text, ']');
		if (!close)
			return fail(out, -EINVAL, "missing ']' in %.80s", text);
		size_t hl = (size_t)(close - text - 1);
		if (hl >= sizeof(host))
			return fail(out, -EINVAL, "host too long%s", "");
		memcpy(host, text + 1, hl);
		host[hl] = 0;
		char *pct = strchr(host, '%');
		if (pct) {
			snprintf(scope, sizeof(scope), "%s", pct + 1);
			if (!scope[0])
				return fail(out, -EINVAL, "empty scope in %.80s", text);
			*pct = 0;
		}
		if (close[1] != ':')
			return fail(out, -EINVAL,
				    close[1] ? "garbage after ']' in %.80s"
					     : "missing ':service' in %.80s",
				    text);
		const char *s = close + 2;
		const char *pct2 = strchr(s, '%');
		size_t sl = pct2 ? (size_t)(pct2 - s) : strlen(s);
		if (sl >= sizeof(svc))
			return fail(out, -EINVAL, "service too long%s", "");
		memcpy(svc, s, sl);
		svc[sl] = 0;
		if (pct2) {
			if (scope[0])
				return fail(out, -EINVAL, "two scopes in %.80s", text);
			snprintf(scope, sizeof(scope), "%s", pct2 + 1);
			if (!scope[0])
				return fail(out, -EINVAL, "empty scope in %.80s", text);
		}
		struct in6_addr a6;
		if (inet_pton(AF_INET6, host, &a6) != 1)
			return fail(out, -EINVAL, "not an IPv6 address: [%.60s]",
				    host);
	} else {
		const char *colon = strchr(text, ':');
		if (strchr(colon + 1, ':'))
			return fail(out, -EINVAL,
				    "IPv6 addresses need brackets: %.80s", text);
		size_t hl = (size_t)(colon - text);
		if (hl >= sizeof(host))
			return fail(out, -EINVAL, "host too long%s", "");
		memcpy(host, text, hl);
		host[hl] = 0;
		const char *s = colon + 1;
		const char *pct = strchr(s, '%');
		size_t sl = pct ? (size_t)(pct - s) : strlen(s);
		if (sl >= sizeof(svc))
			return fail(out, -EINVAL, "service too long%s", "");
		memcpy(svc, s, sl);
		svc[sl] = 0;
		if (pct) {
			snprintf(scope, sizeof(scope), "%s", pct + 1);
			if (!scope[0])
				return fail(out, -EINVAL, "empty scope in %.80s", text);
		}
		for (const char *p = host; *p; p++)
			if (!(*p == '-' || *p == '.' || *p == '_' ||
			      (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			      (*p >= '0' && *p <= '9')))
				return fail(out, -EINVAL, "bad host name: %.80s",
					    host);
	}
	out->kind = COIL_ADDR_INET;
	snprintf(out->host, sizeof(out->host), "%s", host);
	if (!host[0] && !(flags & COIL_ADDR_LISTEN))
		return fail(out, -EINVAL, "missing host in %.80s", text);
	int rc = parse_service(svc, flags, out);
	if (rc)
		return rc;
	if (scope[0] && (rc = parse_scope(scope, out)))
		return rc;

	/* Numeric hosts: fill the socket address now. */
	struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
	if (!host[0]) {
		out->numeric = 1;
		if (flags & COIL_ADDR_IPV4) {
			v4->sin_family = AF_INET;
			v4->sin_port = htons(out->port);
			v4->sin_addr.s_addr = htonl(INADDR_ANY);
			out->sslen = sizeof(*v4);
		} else {
			v6->sin6_family = AF_INET6;
			v6->sin6_port = htons(out->port);
			v6->sin6_addr = in6addr_any;
			out->sslen = sizeof(*v6);
		}
		return 0;
	}
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		if (out->scope_id)
			return fail(out, -EINVAL, "a scope on an IPv4 address: %s",
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
				    "IPv6 address [%s] with IPv4 forced", host);
		if (is_link_local(&v6->sin6_addr) && !out->scope_id)
			return fail(out, -EINVAL,
				    "link-local [%s] needs a %%scope", host);
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons(out->port);
		v6->sin6_scope_id = out->scope_id;
		out->sslen = sizeof(*v6);
		out->numeric = 1;
		return 0;
	}
	/* A dotted string of digits that is no IPv4 address ("1.2.3",
	 * "1.2.3.256") is an error, not a host name to look up. */
	bool dotted_digits = true;
	for (const char *p = host; *p; p++)
		if (!(*p == '.' || (*p >= '0' && *p <= '9')))
			dotted_digits = false;
	if (dotted_digits)
		return fail(out, -EINVAL, "not an IPv4 address: %s", host);
	return 0; /* a host name: resolved later */
}

int coil_addr_format(const struct sockaddr *sa, socklen_t len, char *buf,
		     size_t n)
{
	if (!sa || !buf || !n)
		return -EINVAL;
	char h[INET6_ADDRSTRLEN], sc[IF_NAMESIZE + 12];
	int r;
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *v4 = (const void *)sa;
		inet_ntop(AF_INET, &v4->sin_addr, h, sizeof(h));
		r = snprintf(buf, n, "%s:%u", h, ntohs(v4->sin_port));
		break;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *v6 = (const void *)sa;
		inet_ntop(AF_INET6, &v6->sin6_addr, h, sizeof(h));
		sc[0] = 0;
		if (v6->sin6_scope_id) {
			char name[IF_NAMESIZE];
			if (if_indextoname(v6->sin6_scope_id, name))
				snprintf(sc, sizeof(sc), "%%%s", name);
			else
				snprintf(sc, sizeof(sc), "%%%u", v6->sin6_scope_id);
		}
		r = snprintf(buf, n, "[%s%s]:%u", h, sc, ntohs(v6->sin6_port));
		break;
	}
	case AF_UNIX: {
		const struct sockaddr_un *u = (const void *)sa;
		size_t plen = len > offsetof(struct sockaddr_un, sun_path)
				      ? len - offsetof(struct sockaddr_un, sun_path)
				      : 0;
		if (plen && u->sun_path[0] == 0) /* abstract */
			r = snprintf(buf, n, "@%.*s", (int)(plen - 1),
				     u->sun_path + 1);
		else
			r = snprintf(buf, n, "%.*s", (int)strnlen(u->sun_path,
								  plen),
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

int coil_sockinfo_from(const struct sockaddr *sa, socklen_t len,
		       coil_sockinfo_t *out)
{
	if (!sa || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->family = sa->sa_family;
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *v4 = (const void *)sa;
		inet_ntop(AF_INET, &v4->sin_addr, out->host, sizeof(out->host));
		out->port = ntohs(v4->sin_port);
		return 0;
	}
	case AF_INET6: {
		const struct sockaddr_in6 *v6 = (const void *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr))
			inet_ntop(AF_INET, &v6->sin6_addr.s6_addr[12], out->host,
				  sizeof(out->host));
		else
			inet_ntop(AF_INET6, &v6->sin6_addr, out->host,
				  sizeof(out->host));
		out->port = ntohs(v6->sin6_port);
		out->flowinfo = ntohl(v6->sin6_flowinfo);
		out->scope_id = v6->sin6_scope_id;
		if (v6->sin6_scope_id) {
			char name[IF_NAMESIZE];
			if (if_indextoname(v6->sin6_scope_id, name))
				snprintf(out->scope, sizeof(out->scope), "%s",
					 name);
		}
		return 0;
	}
	case AF_UNIX: {
		const struct sockaddr_un *u = (const void *)sa;
		size_t plen = len > offsetof(struct sockaddr_un, sun_path)
				      ? len - offsetof(struct sockaddr_un, sun_path)
				      : 0;
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

/* ---- resolution ---- */

/*
 * Names resolve with getaddrinfo on one thread per loop, started on first
 * use, so a slow DNS server never blocks a worker. The thread settles the
 * handle itself (settling is safe from any thread).
 */
struct resolve_job {
	coil__task task; /* queue link only: not posted to a worker */
	coil_ip_t *ip;   /* a reference */
	char host[256];
	char service[64];
	int flags;
};

static int map_gai(int g)
{
	switch (g) {
	case EAI_NONAME:
#ifdef EAI_NODATA
	case EAI_NODATA:
#endif
	case EAI_SERVICE:
		return -ENOENT;
	case EAI_AGAIN:
		return -EAGAIN;
	case EAI_FAMILY:
#ifdef EAI_ADDRFAMILY
	case EAI_ADDRFAMILY:
#endif
		return -EAFNOSUPPORT;
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_SYSTEM:
		return errno ? -errno : -EIO;
	default:
		return -EINVAL;
	}
}

/* Orders IPv6 and IPv4 results alternately, IPv6 first (RFC 8305). */
static coil_addrlist_t *order(struct addrinfo *res)
{
	size_t n6 = 0, n4 = 0;
	for (struct addrinfo *r = res; r; r = r->ai_next) {
		if (r->ai_family == AF_INET6)
			n6++;
		else if (r->ai_family == AF_INET)
			n4++;
	}
	coil_addrlist_t *l = coil__calloc(1, sizeof(*l) + (n6 + n4) *
							  sizeof(l->addrs[0]));
	if (!l)
		return NULL;
	struct addrinfo *a6 = res, *a4 = res;
	size_t i = 0;
	while (i < n6 + n4) {
		while (a6 && a6->ai_family != AF_INET6)
			a6 = a6->ai_next;
		if (a6) {
			memcpy(&l->addrs[i].ss, a6->ai_addr, a6->ai_addrlen);
			l->addrs[i++].len = a6->ai_addrlen;
			a6 = a6->ai_next;
		}
		while (a4 && a4->ai_family != AF_INET)
			a4 = a4->ai_next;
		if (a4) {
			memcpy(&l->addrs[i].ss, a4->ai_addr, a4->ai_addrlen);
			l->addrs[i++].len = a4->ai_addrlen;
			a4 = a4->ai_next;
		}
	}
	l->count = i;
	return l;
}

static void resolve_run(struct resolve_job *j)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = (j->flags & COIL_ADDR_DGRAM) ? SOCK_DGRAM
							 : SOCK_STREAM;
	hints.ai_family = (j->flags & COIL_ADDR_IPV4) ? AF_INET : AF_UNSPEC;
	hints.ai_flags = AI_NUMERICSERV;
	int g = getaddrinfo(j->host, j->service, &hints, &res);
	if (g) {
		coil_ip_fail(j->ip, map_gai(g), "resolve %s: %s", j->host,
			     gai_strerror(g));
		return;
	}
	coil_addrlist_t *l = order(res);
	freeaddrinfo(res);
	if (!l)
		coil__ip_fail_msg(j->ip, -ENOMEM, "resolve: out of memory");
	else if (!l->count) {
		coil_free(l);
		coil_ip_fail(j->ip, -ENOENT, "resolve %s: no address", j->host);
	} else if (coil_ip_finish_ptr(j->ip, l, coil_free)) {
		coil_free(l); /* aborted meanwhile */
	}
}

static void *resolver_main(void *arg)
{
	coil_loop_t *loop = arg;
	/* Like the workers, the resolver takes no asynchronous signals. */
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	pthread_mutex_lock(&loop->res_lock);
	for (;;) {
		while (!loop->res_head && !loop->res_stop)
			pthread_cond_wait(&loop->res_cond, &loop->res_lock);
		if (loop->res_stop)
			break;
		coil__task *t = loop->res_head;
		loop->res_head = t->next;
		if (!loop->res_head)
			loop->res_tail = NULL;
		pthread_mutex_unlock(&loop->res_lock);
		struct resolve_job *j = coil__container_of(t, struct resolve_job,
							   task);
		if (coil_ip_state(j->ip) == COIL_IP_PENDING)
			resolve_run(j);
		coil_ip_unref(j->ip);
		coil__free(j);
		pthread_mutex_lock(&loop->res_lock);
	}
	pthread_mutex_unlock(&loop->res_lock);
	return NULL;
}

void coil__resolver_init(coil_loop_t *loop)
{
	pthread_mutex_init(&loop->res_lock, NULL);
	pthread_cond_init(&loop->res_cond, NULL);
}

void coil__resolver_stop(coil_loop_t *loop)
{
	pthread_mutex_lock(&loop->res_lock);
	bool started = loop->res_started;
	loop->res_stop = true;
	coil__task *t = loop->res_head;
	loop->res_head = loop->res_tail = NULL;
	pthread_cond_broadcast(&loop->res_cond);
	pthread_mutex_unlock(&loop->res_lock);
	if (started) {
		pthread_join(loop->res_thread, NULL);
		loop->res_started = false;
	}
	while (t) {
		coil__task *next = t->next;
		struct resolve_job *j = coil__container_of(t, struct resolve_job,
							   task);
		coil__ip_fail_msg(j->ip, -ECANCELED, "loop stopped");
		coil_ip_unref(j->ip);
		coil__free(j);
		t = next;
	}
}

coil_ip_t *coil_resolve(coil_loop_t *loop, const char *text, int flags)
{
	if (!loop)
		return NULL;
	coil_ip_t *ip = coil_ip_new(loop);
	if (!ip)
		return NULL;
	coil_addr_t a;
	int rc = coil_addr_parse(text, flags, &a);
	if (rc) {
		coil__ip_fail_msg(ip, rc, a.error);
		return ip;
	}
	if (a.numeric) {
		coil_addrlist_t *l = coil__calloc(1, sizeof(*l) +
							     sizeof(l->addrs[0]));
		if (!l) {
			coil__ip_fail_msg(ip, -ENOMEM, NULL);
			return ip;
		}
		l->count = 1;
		memcpy(&l->addrs[0].ss, &a.ss, a.sslen);
		l->addrs[0].len = a.sslen;
		coil_ip_finish_ptr(ip, l, coil_free);
		return ip;
	}
	struct resolve_job *j = coil__calloc(1, sizeof(*j));
	if (!j) {
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
		return ip;
	}
	j->ip = coil_ip_ref(ip);
	j->flags = flags;
	snprintf(j->host, sizeof(j->host), "%s", a.host);
	snprintf(j->service, sizeof(j->service), "%u", a.port);
	pthread_mutex_lock(&loop->res_lock);
	if (loop->res_stop) {
		pthread_mutex_unlock(&loop->res_lock);
		coil_ip_unref(j->ip);
		coil__free(j);
		coil__ip_fail_msg(ip, -ESHUTDOWN, "loop stopping");
		return ip;
	}
	if (!loop->res_started) {
		rc = pthread_create(&loop->res_thread, NULL, resolver_main, loop);
		if (rc) {
			pthread_mutex_unlock(&loop->res_lock);
			coil_ip_unref(j->ip);
			coil__free(j);
			coil__ip_fail_msg(ip, -rc, "cannot start resolver thread");
			return ip;
		}
		loop->res_started = true;
	}
	j->task.next = NULL;
	if (loop->res_tail)
		loop->res_tail->next = &j->task;
	else
		loop->res_head = &j->task;
	loop->res_tail = &j->task;
	pthread_cond_signal(&loop->res_cond);
	pthread_mutex_unlock(&loop->res_lock);
	return ip;
}
