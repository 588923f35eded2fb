/* SPDX-License-Identifier: MIT */
/* Name resolution: getaddrinfo on a per-loop resolver thread. */
#include "internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool is_link_local(const struct in6_addr *a)
{
	return a->s6_addr[0] == 0xfe && (a->s6_addr[1] & 0xc0) == 0x80;
}

/* ---- resolution ---- */

/*
 * Names resolve with getaddrinfo on one thread per loop, started on first
 * use, so a slow DNS server never stalls a worker. Jobs queue on
 * loop->res_head/res_tail under res_lock; the job at the head stays queued
 * (marked running) while getaddrinfo runs, so coil__resolver_stop can fail
 * its handle at once instead of leaving it pending until DNS answers. The
 * thread settles handles itself: settling is documented safe from any thread.
 */
struct resolve_job {
	coil__task task;   /* queue link only: never posted to a worker */
	coil_ip_t *ip;     /* a reference, dropped when the job is freed */
	bool running;      /* getaddrinfo is under way (resolver thread) */
	int flags;
	uint32_t scope_id; /* from "%scope", given to link-local results */
	char host[256];
	char service[8];
	/* reverse lookup (coil_reverse_lookup): getnameinfo of sa */
	bool reverse;
	int ni_flags;
	struct sockaddr_storage sa;
	socklen_t salen;
};

static void job_free(struct resolve_job *j)
{
	coil_ip_unref(j->ip);
	coil__free(j);
}

/* getaddrinfo's EAI_* codes as coil errors. Called right after the failing
 * call so errno is still the one EAI_SYSTEM refers to. */
static int map_gai(int g, int err)
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
		return err ? -err : -EIO;
	default:
		return -EINVAL;
	}
}

static void list_add(coil_addrlist_t *l, const struct addrinfo *a,
		     uint32_t scope_id)
{
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&l->addrs[l->count].ss;
	size_t n = a->ai_addrlen;
	if (n > sizeof(l->addrs[0].ss))
		n = sizeof(l->addrs[0].ss);
	memcpy(&l->addrs[l->count].ss, a->ai_addr, n);
	l->addrs[l->count].len = (socklen_t)n;
	if (a->ai_family == AF_INET6 && !v6->sin6_scope_id &&
	    is_link_local(&v6->sin6_addr))
		v6->sin6_scope_id = scope_id;
	l->count++;
}

/*
 * The order in which connect should try the results: IPv6 and IPv4
 * alternating, IPv6 first (RFC 8305 section 4), each family keeping
 * getaddrinfo's own (RFC 6724) order. Other families are dropped.
 */
static coil_addrlist_t *order(const struct addrinfo *res, uint32_t scope_id)
{
	size_t total = 0;
	for (const struct addrinfo *r = res; r; r = r->ai_next)
		if (r->ai_family == AF_INET6 || r->ai_family == AF_INET)
			total++;
	coil_addrlist_t *l = coil__calloc(1, sizeof(*l) +
						     total * sizeof(l->addrs[0]));
	if (!l)
		return NULL;
	const struct addrinfo *a6 = res, *a4 = res;
	while (l->count < total) {
		while (a6 && a6->ai_family != AF_INET6)
			a6 = a6->ai_next;
		if (a6) {
			list_add(l, a6, scope_id);
			a6 = a6->ai_next;
		}
		while (a4 && a4->ai_family != AF_INET)
			a4 = a4->ai_next;
		if (a4) {
			list_add(l, a4, scope_id);
			a4 = a4->ai_next;
		}
	}
	return l;
}

/* Resolves one job and settles its handle (unless it settled meanwhile:
 * aborted, or cancelled by coil__resolver_stop; then the result is dropped). */
static void reverse_run(struct resolve_job *j)
{
	coil_nameinfo_t *ni = coil__calloc(1, sizeof(*ni));
	if (!ni) {
		coil_ip_fail(j->ip, -ENOMEM, "reverse lookup: out of memory");
		return;
	}
	errno = 0;
	int g = getnameinfo((struct sockaddr *)&j->sa, j->salen, ni->host,
			    sizeof(ni->host), ni->service, sizeof(ni->service),
			    j->ni_flags);
	if (g) {
		int err = map_gai(g, errno);
		char where[128];
		if (coil_addr_format((struct sockaddr *)&j->sa, j->salen, where,
				     sizeof(where)) < 0)
			snprintf(where, sizeof(where), "?");
		coil__free(ni);
		coil_ip_fail(j->ip, err, "reverse lookup of %s: %s", where,
			     g == EAI_SYSTEM && errno ? strerror(errno)
						      : gai_strerror(g));
		return;
	}
	if (coil_ip_finish_ptr(j->ip, ni, coil_free))
		coil__free(ni); /* settled meanwhile */
}

static void resolve_run(struct resolve_job *j)
{
	if (j->reverse) {
		reverse_run(j);
		return;
	}
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = (j->flags & COIL_ADDR_DGRAM) ? SOCK_DGRAM
							 : SOCK_STREAM;
	hints.ai_family = (j->flags & COIL_ADDR_IPV4) ? AF_INET : AF_UNSPEC;
	hints.ai_flags = AI_NUMERICSERV;
	if (j->flags & COIL_ADDR_LISTEN)
		hints.ai_flags |= AI_PASSIVE;
	errno = 0;
	int g = getaddrinfo(j->host, j->service, &hints, &res);
	if (g) {
		int err = map_gai(g, errno);
		coil_ip_fail(j->ip, err, "resolve %s: %s", j->host,
			     g == EAI_SYSTEM && errno ? strerror(errno)
						      : gai_strerror(g));
		return;
	}
	coil_addrlist_t *l = order(res, j->scope_id);
	freeaddrinfo(res);
	if (!l) {
		coil_ip_fail(j->ip, -ENOMEM, "resolve %s: out of memory",
			     j->host);
	} else if (!l->count) {
		coil__free(l);
		coil_ip_fail(j->ip, -ENOENT, "resolve %s: no IPv4 or IPv6 address",
			     j->host);
	} else if (coil_ip_finish_ptr(j->ip, l, coil_free)) {
		coil__free(l); /* settled meanwhile: the list stays ours */
	}
}

/*
 * The resolver thread: takes the head job, resolves it with the lock
 * dropped, then unlinks and frees it. It exits once res_stop is set; jobs
 * still queued then are coil__resolver_stop's to fail and free.
 */
static void *resolver_main(void *arg)
{
	coil_loop_t *loop = arg;
	pthread_mutex_lock(&loop->res_lock);
	for (;;) {
		while (!loop->res_head && !loop->res_stop)
			pthread_cond_wait(&loop->res_cond, &loop->res_lock);
		if (loop->res_stop)
			break;
		struct resolve_job *j = coil__container_of(loop->res_head,
							   struct resolve_job,
							   task);
		j->running = true;
		pthread_mutex_unlock(&loop->res_lock);
		if (coil_ip_state(j->ip) == COIL_IP_PENDING)
			resolve_run(j);
		pthread_mutex_lock(&loop->res_lock);
		/* Still the head: stop leaves a running job in place. */
		loop->res_head = j->task.next;
		if (!loop->res_head)
			loop->res_tail = NULL;
		/* The last reference may run user code (the unobserved
		 * failure handler): never under res_lock. */
		pthread_mutex_unlock(&loop->res_lock);
		job_free(j);
		pthread_mutex_lock(&loop->res_lock);
	}
	pthread_mutex_unlock(&loop->res_lock);
	return NULL;
}

/* Called once from coil_loop_new before anything can resolve. The thread
 * itself starts lazily in coil_resolve, so loops that never resolve a name
 * never pay for it. */
void coil__resolver_init(coil_loop_t *loop)
{
	pthread_mutex_init(&loop->res_lock, NULL);
	pthread_cond_init(&loop->res_cond, NULL);
	loop->res_head = loop->res_tail = NULL;
	loop->res_started = false;
	loop->res_stop = false;
}

/*
 * Stops the resolver for good (coil_loop_free, or a failed coil_loop_new):
 * every queued handle fails with -ECANCELED now, including the one whose
 * getaddrinfo is still running; then the thread is joined, which waits for
 * that getaddrinfo to return (it cannot be interrupted). Later calls to
 * coil_resolve fail with -ESHUTDOWN. The lock stays initialised because
 * workers may still call coil_resolve until they stop.
 */
void coil__resolver_stop(coil_loop_t *loop)
{
	coil__task *t, *keep = NULL, *drop = NULL, **dtail = &drop;

	pthread_mutex_lock(&loop->res_lock);
	loop->res_stop = true;
	t = loop->res_head;
	while (t) {
		coil__task *next = t->next;
		struct resolve_job *j = coil__container_of(t, struct resolve_job,
							   task);
		if (j->running) {
			/* Fail it now, while the job (and its reference) is
			 * surely alive; the resolver thread frees it. */
			coil__ip_fail_msg(j->ip, -ECANCELED,
					  "resolve cancelled: loop stopped");
			t->next = NULL;
			keep = t;
		} else {
			t->next = NULL;
			*dtail = t;
			dtail = &t->next;
		}
		t = next;
	}
	loop->res_head = loop->res_tail = keep;
	bool started = loop->res_started;
	pthread_cond_broadcast(&loop->res_cond);
	pthread_mutex_unlock(&loop->res_lock);
	/* Failing and unreferencing may run user code: outside the lock. */
	while (drop) {
		struct resolve_job *j = coil__container_of(drop,
							   struct resolve_job,
							   task);
		drop = drop->next;
		coil__ip_fail_msg(j->ip, -ECANCELED,
				  "resolve cancelled: loop stopped");
		job_free(j);
	}
	if (started) {
		pthread_join(loop->res_thread, NULL);
		pthread_mutex_lock(&loop->res_lock);
		loop->res_started = false;
		pthread_mutex_unlock(&loop->res_lock);
	}
}

/* Starts the resolver thread with every signal blocked (set before the
 * thread exists, so no signal can land on it even briefly). Under res_lock. */
static int resolver_start(coil_loop_t *loop)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&loop->res_thread, NULL, resolver_main, loop);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return -rc;
	loop->res_started = true;
	return 0;
}

/* A one-entry list for an address parsed without resolving. */
static coil_addrlist_t *single(const coil_addr_t *a)
{
	coil_addrlist_t *l = coil__calloc(1, sizeof(*l) + sizeof(l->addrs[0]));
	if (!l)
		return NULL;
	l->count = 1;
	memcpy(&l->addrs[0].ss, &a->ss, a->sslen);
	l->addrs[0].len = a->sslen;
	return l;
}

/* Queues j for the resolver thread (starting it), or fails its handle. */
static void job_queue(coil_loop_t *loop, struct resolve_job *j)
{
	pthread_mutex_lock(&loop->res_lock);
	int rc = loop->res_stop ? -ESHUTDOWN : 0;
	if (!rc && !loop->res_started)
		rc = resolver_start(loop);
	if (rc) {
		pthread_mutex_unlock(&loop->res_lock);
		coil_ip_fail(j->ip, rc, "resolve %s: %s", j->host,
			     rc == -ESHUTDOWN ? "loop is stopping"
					      : "cannot start resolver thread");
		job_free(j);
		return;
	}
	j->task.next = NULL;
	if (loop->res_tail)
		loop->res_tail->next = &j->task;
	else
		loop->res_head = &j->task;
	loop->res_tail = &j->task;
	pthread_cond_signal(&loop->res_cond);
	pthread_mutex_unlock(&loop->res_lock);
}

/*
 * Parses text and produces the addresses to try as a coil_addrlist_t. IP
 * literals and Unix paths finish the returned handle at once; host names are
 * queued for the resolver thread, which finishes or fails the handle later.
 * Returns NULL only when loop is NULL or no handle could be allocated; every
 * other failure is reported through the handle.
 */
coil_ip_t *coil_resolve(coil_loop_t *loop, const char *text, int flags)
{
	if (!loop)
		return NULL;
	/* coil's own handle: abortable without a hook (inprogress.c). */
	coil_ip_t *ip = coil__ip_new_on(coil__pick_worker(loop));
	if (!ip)
		return NULL;
	coil_addr_t a;
	int rc = coil_addr_parse(text, flags, &a);
	if (rc) {
		coil__ip_fail_msg(ip, rc, a.error);
		return ip;
	}
	if (a.numeric) {
		coil_addrlist_t *l = single(&a);
		if (!l || coil_ip_finish_ptr(ip, l, coil_free)) {
			coil__free(l);
			coil__ip_fail_msg(ip, -ENOMEM, NULL);
		}
		return ip;
	}
	struct resolve_job *j = coil__calloc(1, sizeof(*j));
	if (!j) {
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
		return ip;
	}
	j->ip = coil_ip_ref(ip);
	j->flags = flags;
	j->scope_id = a.scope_id;
	snprintf(j->host, sizeof(j->host), "%s", a.host);
	snprintf(j->service, sizeof(j->service), "%u", a.port);
	job_queue(loop, j);
	return ip;
}

/*
 * Reverse lookup (getnameinfo) on the resolver thread: a slow PTR query
 * never stalls a worker. Finishes with a coil_nameinfo_t.
 */
coil_ip_t *coil_reverse_lookup(coil_loop_t *loop, const struct sockaddr *sa,
			       socklen_t len, int flags)
{
	if (!loop)
		return NULL;
	coil_ip_t *ip = coil__ip_new_on(coil__pick_worker(loop));
	if (!ip)
		return NULL;
	if (!sa || len < sizeof(sa_family_t) ||
	    len > sizeof(struct sockaddr_storage) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) {
		coil__ip_fail_msg(ip, -EINVAL,
				  "reverse lookup: not an IPv4 or IPv6 address");
		return ip;
	}
	struct resolve_job *j = coil__calloc(1, sizeof(*j));
	if (!j) {
		coil__ip_fail_msg(ip, -ENOMEM, NULL);
		return ip;
	}
	j->ip = coil_ip_ref(ip);
	j->reverse = true;
	j->ni_flags = flags;
	memcpy(&j->sa, sa, len);
	j->salen = len;
	snprintf(j->host, sizeof(j->host), "(reverse lookup)");
	job_queue(loop, j);
	return ip;
}

/* The loop runs coil__resolver_init/stop for every loop (loop.c does not
 * know the resolver by name). */
static coil__loop_ext resolver_ext = {.init = coil__resolver_init,
				      .stop = coil__resolver_stop};
__attribute__((constructor)) static void resolver_ext_register(void)
{
	coil__loop_ext_register(&resolver_ext);
}
