/* SPDX-License-Identifier: MIT */
/* Shared helpers for the CUnit test programs. */
#include "helpers.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int coil_test_main(const char *suite, const coil_test_t *tests, int argc,
		   char **argv)
{
	const char *only = argc > 1 ? argv[1] : NULL;
	if (CU_initialize_registry() != CUE_SUCCESS)
		return 2;
	CU_pSuite s = CU_add_suite(suite, NULL, NULL);
	for (const coil_test_t *t = tests; t->name; t++) {
		if (only && strcmp(only, t->name))
			continue;
		CU_add_test(s, t->name, t->fn);
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	unsigned failed = CU_get_number_of_tests_failed();
	unsigned ran = CU_get_number_of_tests_run();
	CU_cleanup_registry();
	/* One machine-readable line per program, summed by `make test`. */
	printf("coil-test: %s %u passed, %u failed\n", suite, ran - failed,
	       failed);
	return failed ? 1 : 0;
}

coil_loop_t *t_loop_opts(const coil_loop_opts_t *o)
{
	coil_loop_t *loop = NULL;
	int rc = coil_loop_new(&loop, o);
	if (rc) {
		fprintf(stderr, "coil_loop_new: %s: %s\n", coil_strerror(rc),
			coil_loop_last_error());
		abort();
	}
	return loop;
}

coil_loop_t *t_loop(unsigned workers)
{
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = workers;
	return t_loop_opts(&o);
}

int t_wait(coil_ip_t *ip)
{
	return coil_ip_wait(ip, 10000);
}

int t_listen_tcp4(unsigned short *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 128))
		abort();
	socklen_t len = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &len);
	*port = ntohs(sa.sin_port);
	return fd;
}

static void set_timeouts(int fd)
{
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int t_connect_tcp4(unsigned short port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		abort();
	set_timeouts(fd);
	return fd;
}

int t_write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t r = write(fd, p, n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int t_read_exact(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EPIPE;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int t_on_valgrind(void)
{
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
	return RUNNING_ON_VALGRIND != 0;
#endif
#endif
	return 0;
}

long t_rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, rss = 0;
	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = -1;
	fclose(f);
	return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

struct on_worker {
	void (*fn)(void *);
	void *arg;
	_Atomic int done;
};

static void on_worker_run(void *p)
{
	struct on_worker *o = p;
	o->fn(o->arg);
	atomic_store(&o->done, 1);
}

void t_run_on(coil_loop_t *loop, int w, void (*fn)(void *), void *arg)
{
	struct on_worker o = {fn, arg, 0};
	T_ASSERT_OK(coil_loop_post(loop, w, on_worker_run, &o));
	for (int i = 0; i < 10000 && !atomic_load(&o.done); i++)
		usleep(1000);
	CU_ASSERT_FATAL(atomic_load(&o.done));
}
