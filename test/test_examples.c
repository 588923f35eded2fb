/* SPDX-License-Identifier: MIT */
/* Drives the examples with real clients the project did not write (curl,
 * socat) and with raw sockets for hostile HTTP input. */
#include "helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static char exdir[512]; /* build/<variant>/examples */

static unsigned short free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	socklen_t l = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &l);
	close(fd);
	return ntohs(sa.sin_port);
}

/* Starts an example; returns its PID. */
static pid_t start(const char *name, char *const args[])
{
	char path[600];
	snprintf(path, sizeof(path), "%s/%s", exdir, name);
	char *argv[16] = {path};
	for (int i = 0; args[i] && i < 14; i++)
		argv[i + 1] = args[i];
	pid_t pid = fork();
	if (pid == 0) {
		execv(path, argv);
		_exit(127);
	}
	return pid;
}

/* Starts an example with stdout and stderr going to files (either may be
 * NULL: inherited); returns its PID. */
static pid_t start_logged(const char *name, char *const args[],
			  const char *out_path, const char *err_path)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/%s", exdir, name);
	char *argv[24] = {path};
	for (int i = 0; args[i] && i < 22; i++)
		argv[i + 1] = args[i];
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		if (out_path && !freopen(out_path, "w", stdout))
			_exit(126);
		if (err_path && !freopen(err_path, "w", stderr))
			_exit(126);
		execv(path, argv);
		_exit(127);
	}
	return pid;
}

/* The contents of a file (malloc'ed, NUL-terminated; "" if unreadable). */
static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	size_t cap = 1 << 16, len = 0, n;
	char *b = calloc(1, cap + 1);
	while (f && (n = fread(b + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap) {
			b = realloc(b, 2 * cap + 1);
			cap *= 2;
		}
	}
	if (f)
		fclose(f);
	b[len] = 0;
	return b;
}

/* Waits (bounded, 5 s) for a line containing needle in a file, e.g. a
 * server's banner; returns the file's contents then, or NULL. */
static char *wait_for_text(const char *path, const char *needle)
{
	for (int i = 0; i < 500; i++) {
		char *t = slurp(path);
		if (strstr(t, needle))
			return t;
		free(t);
		usleep(10000);
	}
	return NULL;
}

/* Bounded wait for pid's exit; its status (exit code), or -1. */
static int reap(pid_t pid, int ms)
{
	for (int i = 0; i < ms / 10; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* Waits (bounded) until something accepts on 127.0.0.1:port. */
static int wait_port(unsigned short port)
{
	for (int i = 0; i < 500; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_port = htons(port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(fd);
		if (ok)
			return 0;
		usleep(10000);
	}
	return -1;
}

/* SIGTERM, then a bounded wait; returns the exit status or -1. */
static int stop(pid_t pid)
{
	kill(pid, SIGTERM);
	for (int i = 0; i < 500; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			if (!WIFEXITED(st) || WEXITSTATUS(st))
				fprintf(stderr, "pid %d: exit %d signal %d\n",
					(int)pid, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
					WIFSIGNALED(st) ? WTERMSIG(st) : 0);
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		}
		usleep(10000);
	}
	fprintf(stderr, "pid %d: did not stop in 5 s\n", (int)pid);

	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

/* Runs a shell command, returns its output (malloc'ed) and exit status. */
static char *run(const char *cmd, int *status)
{
	FILE *p = popen(cmd, "r");
	size_t cap = 1 << 20, len = 0;
	char *out = calloc(1, cap + 1);
	size_t n;
	while (p && (n = fread(out + len, 1, cap - len, p)) > 0)
		len += n;
	int st = p ? pclose(p) : -1;
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	return out;
}

static bool have(const char *tool)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return system(cmd) == 0;
}

static int raw_connect(unsigned short port)
{
	int fd = t_connect_tcp4(port);
	return fd;
}

/* Reads until the peer closes or 5 s pass; returns bytes read. */
static size_t read_all(int fd, char *buf, size_t cap)
{
	size_t len = 0;
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (len < cap) {
		/* At most 64 KiB a call: TSan's read() interceptor touches the
		 * whole range asked for, every call. */
		size_t want = cap - len < 65536 ? cap - len : 65536;
		ssize_t n = read(fd, buf + len, want);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len < cap ? len : cap - 1] = 0;
	return len;
}

static void test_http_echo_with_curl(void)
{
	if (!have("curl")) {
		fprintf(stderr, "(curl missing: skipped)\n");
		return;
	}
	unsigned short port = free_port();
	char ps[16];
	snprintf(ps, sizeof(ps), "%u", port);
	char *args[] = {"--port", ps, "--threads", "2", NULL};
	pid_t pid = start("http_echo", args);
	CU_ASSERT_EQUAL_FATAL(wait_port(port), 0);
	char cmd[512];
	int st;
	snprintf(cmd, sizeof(cmd), "curl -s http://127.0.0.1:%u/hello", port);
	char *out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	CU_ASSERT_STRING_EQUAL(out, "hello\n");
	free(out);
	/* Keep-alive: two requests, one connection (curl reports 1 new
	 * connect in total for the second URL: 0). */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -o /dev/null -o /dev/null -w '%%{num_connects} ' "
		 "http://127.0.0.1:%u/a http://127.0.0.1:%u/b", port, port);
	out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "1 0 ");
	free(out);
	/* A POST body comes back after the echoed head. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s --data-binary 'body bytes 123' http://127.0.0.1:%u/post",
		 port);
	out = run(cmd, &st);
	CU_ASSERT(strncmp(out, "POST /post HTTP/1.1\r\n", 21) == 0);
	size_t ol = strlen(out);
	CU_ASSERT(ol > 14 && !strcmp(out + ol - 14, "body bytes 123"));
	free(out);
	/* A 200 KB body (curl uses Expect: 100-continue) and chunked. */
	snprintf(cmd, sizeof(cmd),
		 "head -c 200000 /dev/urandom > /tmp/coil-body-%d && "
		 "curl -s --data-binary @/tmp/coil-body-%d http://127.0.0.1:%u/big "
		 "| tail -c 200000 | cmp -s - /tmp/coil-body-%d && echo same; "
		 "curl -s -H 'Transfer-Encoding: chunked' --data-binary "
		 "@/tmp/coil-body-%d http://127.0.0.1:%u/ch | tail -c 200000 | "
		 "cmp -s - /tmp/coil-body-%d && echo same; rm -f /tmp/coil-body-%d",
		 (int)getpid(), (int)getpid(), port, (int)getpid(), (int)getpid(),
		 port, (int)getpid(), (int)getpid());
	out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "same\nsame\n");
	free(out);
	/* HTTP/1.0 and Connection: close are answered, then closed. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -0 -o /dev/null -w '%%{http_code}' http://127.0.0.1:%u/x",
		 port);
	out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "200");
	free(out);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

struct hostile {
	const char *req;
	const char *status; /* expected status line prefix */
};

/* Opens n connections that send the start of a head and no more. */
static void slow_open(unsigned short port, int *fds, int n)
{
	for (int i = 0; i < n; i++) {
		fds[i] = raw_connect(port);
		t_write_all(fds[i], "GET / HTTP/1.1\r\nX-", 18);
	}
}

/* Reads each slow connection to its end; returns how many got a 408 and
 * closes them. */
static int slow_timed_out(int *fds, int n)
{
	char buf[512];
	int timed_out = 0;
	for (int i = 0; i < n; i++) {
		read_all(fds[i], buf, sizeof(buf));
		timed_out += strncmp(buf, "HTTP/1.1 408", 12) == 0;
		close(fds[i]);
	}
	return timed_out;
}

struct flood {
	int fd;
	char *buf;
	size_t len;
};

static void *flood_writer(void *arg)
{
	struct flood *f = arg;
	t_write_all(f->fd, f->buf, f->len);
	return NULL;
}

static void test_http_echo_hostile(void)
{
	unsigned short port = free_port();
	char ps[16];
	snprintf(ps, sizeof(ps), "%u", port);
	char *args[] = {"--port", ps, "--threads", "2", "--header-timeout", "500",
			"--max-body", "100000", "--log-level", "error", NULL};
	pid_t pid = start("http_echo", args);
	CU_ASSERT_EQUAL_FATAL(wait_port(port), 0);
	char big[12000];
	snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: %09000d\r\n\r\n", 0);
	struct hostile t[] = {
		{"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
		 "HTTP/1.1 400"},
		{"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		 "HTTP/1.1 400"},
		{"\x16\x03\x01garbage\r\n\r\n", "HTTP/1.1 400"},
		{big, "HTTP/1.1 431"},
		{"POST / HTTP/1.1\r\nContent-Length: 100001\r\n\r\n", "HTTP/1.1 413"},
		{"GET / HTTP/3.0\r\n\r\n", "HTTP/1.1 505"},
		/* chunked must be the final coding of a request (RFC 9112). */
		{"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 400"},
		{"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		 "HTTP/1.1 501"},
	};
	char buf[4096];
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int fd = raw_connect(port);
		t_write_all(fd, t[i].req, strlen(t[i].req));
		read_all(fd, buf, sizeof(buf));
		if (strncmp(buf, t[i].status, strlen(t[i].status)))
			fprintf(stderr, "hostile case %zu: got '%.40s'\n", i, buf);
		CU_ASSERT_EQUAL(strncmp(buf, t[i].status, strlen(t[i].status)), 0);
		close(fd);
	}
	/* An endless chunked body is cut at max-body. */
	int fd = raw_connect(port);
	const char *h = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
	t_write_all(fd, h, strlen(h));
	char chunk[1100];
	memset(chunk, 'z', sizeof(chunk));
	memcpy(chunk, "400\r\n", 5);
	memcpy(chunk + 5 + 1024, "\r\n", 2);
	for (int i = 0; i < 200; i++)
		if (t_write_all(fd, chunk, 5 + 1024 + 2))
			break;
	read_all(fd, buf, sizeof(buf));
	CU_ASSERT_EQUAL(strncmp(buf, "HTTP/1.1 413", 12), 0);
	close(fd);
	/* Slowloris: heads dribbled byte by byte time out with 408, while
	 * other clients are served meanwhile. */
	int slow[20];
	slow_open(port, slow, 20);
	int ok = 0;
	for (int i = 0; i < 20; i++) {
		int c = raw_connect(port);
		const char *q = "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
		t_write_all(c, q, strlen(q));
		read_all(c, buf, sizeof(buf));
		ok += strstr(buf, "hello\n") != NULL;
		close(c);
	}
	CU_ASSERT_EQUAL(ok, 20);
	CU_ASSERT_EQUAL(slow_timed_out(slow, 20), 20); /* header timeout 0.5 s */
	/* A pipelined flood: 30,000 requests written at once by one thread
	 * while this one reads: 30,001 answers, in order, none dropped (the
	 * answers far exceed the server's write queue, so it must stop
	 * answering while they drain, and resume). */
	fd = raw_connect(port);
	size_t qlen = strlen("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
	enum { FLOOD = 30000 };
	struct flood fl = {fd, malloc(FLOOD * qlen + 64), 0};
	for (int i = 0; i < FLOOD; i++)
		memcpy(fl.buf + (size_t)i * qlen, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", qlen);
	strcpy(fl.buf + FLOOD * qlen,
	       "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
	fl.len = strlen(fl.buf);
	pthread_t wt;
	pthread_create(&wt, NULL, flood_writer, &fl);
	char *resp = malloc(8 << 20);
	size_t rl = read_all(fd, resp, 8 << 20);
	pthread_join(wt, NULL);
	int count = 0;
	/* A plain scan: TSan's strstr/memmem interceptors touch the whole
	 * rest of the buffer on every call (quadratic here). */
	for (size_t i = 0; i + 6 <= rl; i++)
		if (resp[i] == 'h' && !memcmp(resp + i, "hello\n", 6))
			count++;
	if (count != FLOOD + 1)
		fprintf(stderr, "flood: %d answers in %zu bytes\n", count, rl);
	CU_ASSERT_EQUAL(count, FLOOD + 1);
	CU_ASSERT(strstr(resp, "Connection: close") != NULL);
	free(resp);
	free(fl.buf);
	close(fd);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* ---- memory under hostile input: the server's peak RSS per case ---- */

/* Resets the peak RSS of pid (Linux >= 4.0) and returns 0, or -1. */
static int peak_reset(pid_t pid)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/%d/clear_refs", (int)pid);
	FILE *f = fopen(p, "w");
	if (!f)
		return -1;
	int rc = fputs("5", f) < 0 ? -1 : 0;
	return fclose(f) ? -1 : rc;
}

/* A field of /proc/<pid>/status in KiB (VmRSS, VmHWM), or -1. */
static long proc_kib(pid_t pid, const char *field)
{
	char p[64], line[256];
	snprintf(p, sizeof(p), "/proc/%d/status", (int)pid);
	FILE *f = fopen(p, "r");
	long v = -1;
	size_t fl = strlen(field);
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, field, fl) && line[fl] == ':')
			v = atol(line + fl + 1);
	if (f)
		fclose(f);
	return v;
}

/* Writes without blocking until n bytes are out or the peer has stopped
 * reading for 1 s (its queues are full); returns the bytes written. */
static size_t write_until_stalled(int fd, const char *unit, size_t ulen,
				  size_t n)
{
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	size_t done = 0, off = 0;
	int stalled_ms = 0;
	while (done < n && stalled_ms < 1000) {
		ssize_t w = write(fd, unit + off, ulen - off);
		if (w < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				break;
			usleep(10000);
			stalled_ms += 10;
			continue;
		}
		stalled_ms = 0;
		done += (size_t)w;
		off = (off + (size_t)w) % ulen;
	}
	fcntl(fd, F_SETFL, fl);
	return done;
}

struct mem_case {
	const char *name;
	long peak_kib;
	size_t sent; /* bytes the client got in before it was stopped */
};

/* One round of hostile cases against the server on port; fills cases[]
 * with the peak RSS of each (reset before each case). Returns the count. */
static int memory_round(pid_t pid, unsigned short port,
			struct mem_case *cases)
{
	int nc = 0;
	char *buf = malloc(1 << 20);
	char chunk[5 + 1024 + 2];
	memset(chunk, 'z', sizeof(chunk));
	memcpy(chunk, "400\r\n", 5);
	memcpy(chunk + 5 + 1024, "\r\n", 2);
	const char *h = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
	/* 1. A pipelined flood the client never reads: the server stops
	 * reading once its answers queue up (read-signal backpressure). */
	peak_reset(pid);
	int fd = raw_connect(port);
	const char *q = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
	size_t sent = write_until_stalled(fd, q, strlen(q), 256u << 20);
	CU_ASSERT(sent < (256u << 20)); /* it did push back */
	cases[nc++] = (struct mem_case){"pipelined flood, never read",
					proc_kib(pid, "VmHWM"), sent};
	close(fd);
	/* 2-4. A head, then a unit repeated without end: the status, then a
	 * close, whatever keeps coming. */
	char *junk = malloc(1 << 16);
	memset(junk, 'a', 1 << 16);
	char *garbage = malloc(1 << 16);
	for (int i = 0; i < (1 << 16); i++)
		garbage[i] = (char)(i * 7919 >> 3);
	const struct {
		const char *name, *head, *unit, *status;
		size_t ulen;
	} endless[] = {
		{"endless header", "GET / HTTP/1.1\r\nX: ", junk, "HTTP/1.1 431",
		 1 << 16},
		{"endless chunked body", h, chunk, "HTTP/1.1 413", sizeof(chunk)},
		{"garbage bytes", "", garbage, "HTTP/1.1 400", 1 << 16},
	};
	for (size_t i = 0; i < sizeof(endless) / sizeof(endless[0]); i++) {
		peak_reset(pid);
		fd = raw_connect(port);
		t_write_all(fd, endless[i].head, strlen(endless[i].head));
		sent = write_until_stalled(fd, endless[i].unit, endless[i].ulen,
					   64u << 20);
		read_all(fd, buf, 4096);
		CU_ASSERT_EQUAL(strncmp(buf, endless[i].status, 12), 0);
		cases[nc++] = (struct mem_case){endless[i].name,
						proc_kib(pid, "VmHWM"), sent};
		close(fd);
	}
	free(garbage);
	/* 5. 200 slowloris connections at once, all timed out. */
	peak_reset(pid);
	int slow[200];
	slow_open(port, slow, 200);
	CU_ASSERT_EQUAL(slow_timed_out(slow, 200), 200);
	cases[nc++] = (struct mem_case){"200 slowloris connections",
					proc_kib(pid, "VmHWM"), 0};
	/* 6. Smuggling attempts (CL+TE, duplicate CL), 1,000 times. */
	peak_reset(pid);
	for (int i = 0; i < 1000; i++) {
		fd = raw_connect(port);
		const char *s = i & 1
			? "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
			: "GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc";
		t_write_all(fd, s, strlen(s));
		read_all(fd, buf, 4096);
		CU_ASSERT_EQUAL(strncmp(buf, "HTTP/1.1 400", 12), 0);
		close(fd);
	}
	cases[nc++] = (struct mem_case){"1,000 smuggling attempts",
					proc_kib(pid, "VmHWM"), 0};
	free(junk);
	free(buf);
	return nc;
}

static void test_http_echo_memory(void)
{
	unsigned short port = free_port();
	char ps[16];
	snprintf(ps, sizeof(ps), "%u", port);
	char *args[] = {"--port", ps, "--threads", "2", "--header-timeout",
			"500", "--max-body", "100000", "--log-level", "error", NULL};
	pid_t pid = start("http_echo", args);
	CU_ASSERT_EQUAL_FATAL(wait_port(port), 0);
	if (peak_reset(pid)) {
		CU_PASS("no /proc/<pid>/clear_refs here: memory not measured");
		CU_ASSERT_EQUAL(stop(pid), 0);
		return;
	}
	/* Round one warms up: each worker's provided-buffer pool (256 x 32
	 * KiB) gets touched as receives cycle through it, and the
	 * allocator's caches fill. Round two is the figure. */
	struct mem_case cases[8];
	memory_round(pid, port, cases);
	long base = proc_kib(pid, "VmRSS");
	int nc = memory_round(pid, port, cases);
	/* Bounded: a release build stays within a few MiB of its idle RSS
	 * in every case (sanitizer builds keep freed memory in quarantine,
	 * so there the figures are printed, not judged). */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	bool judge = false; /* the examples are built like this test */
#else
	bool judge = true;
#endif
	for (int i = 0; i < nc; i++) {
		fprintf(stderr, "(http_echo memory: %-27s peak RSS %6ld KiB "
			"(idle %ld KiB); client got %zu bytes in)\n",
			cases[i].name, cases[i].peak_kib, base, cases[i].sent);
		if (judge)
			CU_ASSERT(cases[i].peak_kib - base < 16 * 1024);
	}
	CU_ASSERT_EQUAL(stop(pid), 0);
}

static void test_echo_server_socat(void)
{
	if (!have("socat")) {
		fprintf(stderr, "(socat missing: skipped)\n");
		return;
	}
	unsigned short port = free_port();
	char ps[16];
	snprintf(ps, sizeof(ps), "%u", port);
	char *args[] = {"--port", ps, "--threads", "2", NULL};
	pid_t pid = start("echo_server", args);
	CU_ASSERT_EQUAL_FATAL(wait_port(port), 0);
	/* 4 MB of random bytes through socat, byte-verified. socat half-
	 * closes after sending; the server drains its echo, then closes. */
	char cmd[600];
	int st;
	snprintf(cmd, sizeof(cmd),
		 "head -c 4000000 /dev/urandom > /tmp/coil-echo-%d && "
		 "timeout 30 socat -t 10 -T 10 - TCP:127.0.0.1:%u < /tmp/coil-echo-%d "
		 "| cmp -s - /tmp/coil-echo-%d && echo same; rm -f /tmp/coil-echo-%d",
		 (int)getpid(), port, (int)getpid(), (int)getpid(), (int)getpid());
	char *out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "same\n");
	free(out);
	/* The promise-chaining client and the blocking client against it. */
	snprintf(cmd, sizeof(cmd), "%s/chain_client 127.0.0.1:%u 'line one'",
		 exdir, port);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	CU_ASSERT_STRING_EQUAL(out, "line one\n");
	free(out);
	snprintf(cmd, sizeof(cmd), "%s/blocking_client 127.0.0.1:%u 200", exdir,
		 port);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	CU_ASSERT_STRING_EQUAL(out, "blocking_client: 200 lines echoed\n");
	free(out);
	CU_ASSERT_EQUAL(stop(pid), 0);
	/* The chain reports a refused connection through its error handler. */
	snprintf(cmd, sizeof(cmd), "%s/chain_client 127.0.0.1:%u x 2>&1", exdir,
		 port);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 1);
	CU_ASSERT(strstr(out, "refused") != NULL);
	free(out);
}

static void test_udp_echo_socat(void)
{
	if (!have("socat")) {
		fprintf(stderr, "(socat missing: skipped)\n");
		return;
	}
	unsigned short port = free_port();
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	char *args[] = {"--bind", addr, "--count", "3", NULL};
	pid_t pid = start("udp_echo", args);
	usleep(200000);
	char cmd[300];
	int st;
	snprintf(cmd, sizeof(cmd),
		 "printf 'ping' | timeout 5 socat -t 2 - UDP:127.0.0.1:%u", port);
	char *out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "ping");
	free(out);
	stop(pid);
}

static void test_chat_broadcast(void)
{
	unsigned short port = free_port();
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	char *args[] = {"--listen", addr, "--threads", "2", NULL};
	pid_t pid = start("chat", args);
	CU_ASSERT_EQUAL_FATAL(wait_port(port), 0);
	int a = raw_connect(port), b = raw_connect(port), c = raw_connect(port);
	usleep(100000);
	t_write_all(a, "hi all\n", 7);
	char buf[16];
	CU_ASSERT_EQUAL(t_read_exact(b, buf, 7), 0);
	CU_ASSERT_EQUAL(memcmp(buf, "hi all\n", 7), 0);
	CU_ASSERT_EQUAL(t_read_exact(c, buf, 7), 0);
	CU_ASSERT_EQUAL(memcmp(buf, "hi all\n", 7), 0);
	close(a);
	close(b);
	close(c);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* ---- http_echo as the clients users try first see it ---- */

/* A scratch file name for this test program. */
static void tmp_path(char *buf, size_t n, const char *what)
{
	const char *t = getenv("TMPDIR");
	snprintf(buf, n, "%s/coil-ex-%d-%s", t && *t ? t : "/tmp", (int)getpid(),
		 what);
}

/* Starts http_echo on a free port with extra arguments; *port is set. */
static pid_t start_http(unsigned short *port, char *const extra[],
			const char *err_path)
{
	static char ps[16];
	*port = free_port();
	snprintf(ps, sizeof(ps), "%u", *port);
	char *args[24] = {"--port", ps, "--threads", "2"};
	int n = 4;
	for (int i = 0; extra && extra[i] && n < 23; i++)
		args[n++] = extra[i];
	args[n] = NULL;
	pid_t pid = start_logged("http_echo", args, NULL, err_path);
	if (wait_port(*port)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -1;
	}
	return pid;
}

/* The value of a header in a response head (case-insensitive name), copied
 * into out; false when absent. */
static bool header_value(const char *resp, const char *name, char *out,
			 size_t n)
{
	size_t nl = strlen(name);
	for (const char *p = strstr(resp, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
		const char *line = p + 2;
		if (!strncmp(line, "\r\n", 2))
			break; /* end of the head */
		if (!strncasecmp(line, name, nl) && line[nl] == ':') {
			const char *v = line + nl + 1;
			while (*v == ' ')
				v++;
			size_t l = strcspn(v, "\r\n");
			if (l >= n)
				l = n - 1;
			memcpy(out, v, l);
			out[l] = 0;
			return true;
		}
	}
	return false;
}

/* Dates as RFC 9110 5.6.7 IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT". */
static bool is_imf_fixdate(const char *d)
{
	char wd[4], mon[4], tz[4];
	int day, year, h, m, sec;
	if (strlen(d) != 29)
		return false;
	if (sscanf(d, "%3s, %2d %3s %4d %2d:%2d:%2d %3s", wd, &day, &mon[0],
		   &year, &h, &m, &sec, tz) != 8)
		return false;
	return strstr("MonTueWedThuFriSatSun", wd) && strstr(
		"JanFebMarAprMayJunJulAugSepOctNovDec", mon) &&
	       !strcmp(tz, "GMT") && year >= 2024;
}

/* One raw request on a new connection; the whole answer (until close). */
static char *raw_exchange(unsigned short port, const char *req)
{
	int fd = raw_connect(port);
	t_write_all(fd, req, strlen(req));
	char *buf = calloc(1, 65536);
	read_all(fd, buf, 65536);
	close(fd);
	return buf;
}

/* curl: HEAD has the headers and no body (and the next answer on the same
 * connection is intact), HTTP/1.0 keep-alive is confirmed, Expect:
 * 100-continue, a chunked upload, a slow upload that takes longer than
 * the head timeout but never pauses long, Date, 400 without Host, 414. */
static void test_http_echo_curl_protocol(void)
{
	if (!have("curl")) {
		CU_PASS("curl missing: skipped");
		return;
	}
	unsigned short port;
	char *extra[] = {"--header-timeout", "500", "--log-level", "error", NULL};
	pid_t pid = start_http(&port, extra, NULL);
	CU_ASSERT_FATAL(pid > 0);
	char cmd[8192];
	int st;
	/* HEAD then GET on one connection: the HEAD answer has
	 * Content-Length 6 and no body, so the GET's answer parses. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -i --head http://127.0.0.1:%u/hello -w '[%%{num_connects}]'"
		 " --next -s http://127.0.0.1:%u/hello -w '[%%{num_connects}]'",
		 port, port);
	char *out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 200 OK\r\n", 17), 0);
	char v[128];
	CU_ASSERT(header_value(out, "Content-Length", v, sizeof(v)) &&
		  !strcmp(v, "6"));
	CU_ASSERT(header_value(out, "Date", v, sizeof(v)) && is_imf_fixdate(v));
	if (!is_imf_fixdate(v))
		fprintf(stderr, "Date: '%s'\n", v);
	char *end = strstr(out, "\r\n\r\n");
	CU_ASSERT(end && !strcmp(end + 4, "[1]hello\n[0]"));
	if (!end || strcmp(end + 4, "[1]hello\n[0]"))
		fprintf(stderr, "HEAD then GET: '%s'\n", out);
	free(out);
	/* HEAD, raw and pipelined with a GET: the second answer starts
	 * right after the first head (a body there would be read as the
	 * next answer, curl's "Excess found"). */
	char *raw = raw_exchange(port, "HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n"
				       "GET /hello HTTP/1.1\r\nHost: t\r\n"
				       "Connection: close\r\n\r\n");
	char *h1 = strstr(raw, "\r\n\r\n");
	CU_ASSERT_EQUAL(strncmp(raw, "HTTP/1.1 200 OK\r\n", 17), 0);
	CU_ASSERT(h1 && !strncmp(h1 + 4, "HTTP/1.1 200 OK\r\n", 17));
	CU_ASSERT(h1 && strstr(h1 + 4, "\r\n\r\nhello\n") &&
		  !strcmp(strstr(h1 + 4, "\r\n\r\n"), "\r\n\r\nhello\n"));
	/* Its Content-Length is what the GET's echo would be: the echoed
	 * head "HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n" is 29 bytes. */
	CU_ASSERT(header_value(raw, "Content-Length", v, sizeof(v)) &&
		  !strcmp(v, "29"));
	if (!h1 || strncmp(h1 + 4, "HTTP/1.1 200 OK\r\n", 17))
		fprintf(stderr, "HEAD + GET: '%s'\n", raw);
	free(raw);
	/* HEAD of an echo: the length the GET body would have. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -o /dev/null -w '%%{size_download} %%{http_code}' --head "
		 "http://127.0.0.1:%u/x", port);
	out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "0 200");
	free(out);
	/* HTTP/1.0 with Connection: keep-alive: confirmed, then reused. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -0 -H 'Connection: keep-alive' -D - -o /dev/null "
		 "-w '[%%{num_connects}]' http://127.0.0.1:%u/hello "
		 "http://127.0.0.1:%u/hello", port, port);
	out = run(cmd, &st);
	CU_ASSERT(header_value(out, "Connection", v, sizeof(v)) &&
		  !strcmp(v, "keep-alive"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "[1]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "[0]"));
	free(out);
	/* Plain HTTP/1.0: answered, then closed (Connection: close). */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -0 -D - -o /dev/null http://127.0.0.1:%u/hello", port);
	out = run(cmd, &st);
	CU_ASSERT(header_value(out, "Connection", v, sizeof(v)) &&
		  !strcmp(v, "close"));
	free(out);
	/* Expect: 100-continue: the interim answer, then the echo. */
	snprintf(cmd, sizeof(cmd),
		 "curl -s -v -H 'Expect: 100-continue' --data-binary 'abc' "
		 "http://127.0.0.1:%u/e 2>&1", port);
	out = run(cmd, &st);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "< HTTP/1.1 100 Continue"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "< HTTP/1.1 200 OK"));
	size_t ol = strlen(out);
	CU_ASSERT(ol > 3 && !strcmp(out + ol - 3, "abc"));
	free(out);
	/* Chunked upload: decoded in the echo. */
	snprintf(cmd, sizeof(cmd),
		 "printf 'chunk me' | curl -s -H 'Transfer-Encoding: chunked' "
		 "--data-binary @- http://127.0.0.1:%u/c", port);
	out = run(cmd, &st);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "Transfer-Encoding: chunked\r\n"));
	ol = strlen(out);
	CU_ASSERT(ol > 8 && !strcmp(out + ol - 8, "chunk me"));
	free(out);
	/* A 60 KB upload at 30 KB/s: two seconds, four times the head
	 * timeout, but it never pauses long, so it is answered (it got 408
	 * when the head timeout also bounded the body). */
	char body[600];
	tmp_path(body, sizeof(body), "slow");
	snprintf(cmd, sizeof(cmd),
		 "head -c 60000 /dev/urandom > '%s' && curl -s --limit-rate 30k "
		 "--data-binary @'%s' -o '%s.out' -w '%%{http_code}' "
		 "http://127.0.0.1:%u/slow && tail -c 60000 '%s.out' | cmp -s - '%s'"
		 " && echo ' same'; rm -f '%s' '%s.out'",
		 body, body, body, port, body, body, body, body);
	out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "200 same\n");
	free(out);
	/* HTTP/1.1 without Host: 400; a 20 KB target: 414. */
	out = raw_exchange(port, "GET / HTTP/1.1\r\n\r\n");
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 400 ", 13), 0);
	CU_ASSERT(header_value(out, "Date", v, sizeof(v)) && is_imf_fixdate(v));
	free(out);
	out = raw_exchange(port, "GET / HTTP/1.0\r\n\r\n");
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 200 ", 13), 0); /* 1.0 needs none */
	free(out);
	char *big = malloc(20100);
	memcpy(big, "GET /", 5);
	memset(big + 5, 'u', 20000);
	strcpy(big + 20005, " HTTP/1.1\r\nHost: t\r\n\r\n");
	out = raw_exchange(port, big);
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 414 ", 13), 0);
	free(out);
	free(big);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* A stalled body is cut by --body-timeout, while a head timeout that has
 * passed does not matter once the head is in. */
static void test_http_echo_body_timeout(void)
{
	unsigned short port;
	char *extra[] = {"--header-timeout", "300", "--body-timeout", "1000",
			 "--log-level", "error", NULL};
	pid_t pid = start_http(&port, extra, NULL);
	CU_ASSERT_FATAL(pid > 0);
	int fd = raw_connect(port);
	const char *h = "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc";
	t_write_all(fd, h, strlen(h));
	char buf[4096];
	read_all(fd, buf, sizeof(buf)); /* 408 after about a second */
	CU_ASSERT_EQUAL(strncmp(buf, "HTTP/1.1 408 ", 13), 0);
	close(fd);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* ab -k: 50,000 keep-alive HTTP/1.0 requests over 50 connections, all
 * answered (it waited for the idle timeout on each connection when the
 * keep-alive was not confirmed). */
static void test_http_echo_ab(void)
{
	if (!have("ab")) {
		CU_PASS("ab (apache2-utils) missing: skipped");
		return;
	}
	unsigned short port;
	pid_t pid = start_http(&port, NULL, NULL);
	CU_ASSERT_FATAL(pid > 0);
	int n = t_on_valgrind() ? 2000 : 50000;
	char cmd[512];
	snprintf(cmd, sizeof(cmd),
		 "timeout 120 ab -q -k -n %d -c 50 http://127.0.0.1:%u/hello 2>&1",
		 n, port);
	int st;
	char *out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	char want[64];
	snprintf(want, sizeof(want), "Complete requests:      %d\n", n);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "Failed requests:        0\n"));
	snprintf(want, sizeof(want), "Keep-Alive requests:    %d\n", n);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
	CU_ASSERT_PTR_NULL(strstr(out, "Non-2xx"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "Document Length:        6 bytes"));
	if (!strstr(out, "Failed requests:        0\n"))
		fprintf(stderr, "%s\n", out);
	free(out);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* h2load --h1 and wrk: every request a 2xx, no socket errors. */
static void test_http_echo_h2load_wrk(void)
{
	unsigned short port;
	pid_t pid = start_http(&port, NULL, NULL);
	CU_ASSERT_FATAL(pid > 0);
	char cmd[2048];
	int st;
	int n = t_on_valgrind() ? 1000 : 20000;
	if (have("h2load")) {
		snprintf(cmd, sizeof(cmd),
			 "timeout 120 h2load --h1 -n %d -c 20 -m 4 "
			 "http://127.0.0.1:%u/hello 2>&1", n, port);
		char *out = run(cmd, &st);
		CU_ASSERT_EQUAL(st, 0);
		char want[160];
		snprintf(want, sizeof(want),
			 "requests: %d total, %d started, %d done, %d succeeded, 0 "
			 "failed, 0 errored", n, n, n, n);
		CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
		snprintf(want, sizeof(want), "status codes: %d 2xx, 0 3xx, 0 4xx, 0 5xx",
			 n);
		CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
		/* Bodies: "hello\n" each, nothing more (HEAD-style bodyless
		 * or doubled answers would show here). */
		snprintf(want, sizeof(want), "(%d) data", 6 * n);
		CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
		if (!strstr(out, want))
			fprintf(stderr, "%s\n", out);
		free(out);
	} else {
		fprintf(stderr, "(h2load missing: skipped)\n");
	}
	if (have("wrk")) {
		/* A Lua check of every answer: wrk counts a non-2xx status
		 * itself; the script also checks the body and Date. */
		char lua[600];
		tmp_path(lua, sizeof(lua), "check.lua");
		FILE *f = fopen(lua, "w");
		CU_ASSERT_PTR_NOT_NULL_FATAL(f);
		fputs("bad = 0\n"
		      "response = function(status, headers, body)\n"
		      "  if status ~= 200 or body ~= \"hello\\n\" or not headers[\"Date\"]"
		      " then bad = bad + 1 end\n"
		      "end\n"
		      "done = function(summary, latency, requests)\n"
		      "  io.write(string.format(\"checked: %d requests, %d bad\\n\","
		      " summary.requests, bad))\n"
		      "end\n", f);
		fclose(f);
		snprintf(cmd, sizeof(cmd),
			 "timeout 60 wrk -t 1 -c 20 -d 1s -s '%s' "
			 "http://127.0.0.1:%u/hello 2>&1; rm -f '%s'", lua, port, lua);
		char *out = run(cmd, &st);
		CU_ASSERT_PTR_NULL(strstr(out, "Non-2xx"));
		CU_ASSERT_PTR_NULL(strstr(out, "Socket errors"));
		/* done() runs per thread in wrk 4 with its own state: one
		 * thread here, so the count is the total. */
		CU_ASSERT_PTR_NOT_NULL(strstr(out, " bad\n"));
		CU_ASSERT_PTR_NOT_NULL(strstr(out, ", 0 bad\n"));
		unsigned long reqs = 0;
		const char *c = strstr(out, "checked: ");
		if (c)
			reqs = strtoul(c + 9, NULL, 10);
		CU_ASSERT(reqs > 0);
		if (!strstr(out, ", 0 bad\n") || strstr(out, "Socket errors"))
			fprintf(stderr, "%s\n", out);
		free(out);
	} else {
		fprintf(stderr, "(wrk missing: skipped)\n");
	}
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* Python's http.client: GET, HEAD, POST and a chunked POST on one kept-
 * alive connection, each checked for status, headers and body. */
static const char py_client[] =
	"import http.client, sys\n"
	"port = int(sys.argv[1])\n"
	"c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)\n"
	"def check(cond, what):\n"
	"    if not cond:\n"
	"        print('FAIL', what); sys.exit(1)\n"
	"c.request('GET', '/hello')\n"
	"r = c.getresponse(); b = r.read()\n"
	"check(r.status == 200 and b == b'hello\\n', 'GET /hello')\n"
	"check(r.getheader('Content-Type') == 'text/plain', 'type')\n"
	"check(r.getheader('Date', '').endswith(' GMT'), 'date')\n"
	"sock = c.sock\n"
	"c.request('HEAD', '/hello')\n"
	"r = c.getresponse(); b = r.read()\n"
	"check(r.status == 200 and b == b'' and r.getheader('Content-Length') == '6', 'HEAD')\n"
	"c.request('POST', '/p', body=b'x' * 5000, headers={'X-A': 'b'})\n"
	"r = c.getresponse(); b = r.read()\n"
	"check(r.status == 200 and b.startswith(b'POST /p HTTP/1.1\\r\\n'), 'POST line')\n"
	"check(b'X-A: b\\r\\n' in b and b.endswith(b'x' * 5000), 'POST echo')\n"
	"c.request('PUT', '/c', body=iter([b'ab', b'cd']), encode_chunked=True,\n"
	"          headers={'Transfer-Encoding': 'chunked'})\n"
	"r = c.getresponse(); b = r.read()\n"
	"check(r.status == 200 and b.endswith(b'\\r\\n\\r\\nabcd'), 'chunked PUT')\n"
	"check(c.sock is sock, 'one connection for all four')\n"
	"c.close()\n"
	"c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)\n"
	"c.putrequest('GET', '/', skip_host=True); c.endheaders()\n"
	"r = c.getresponse(); r.read()\n"
	"check(r.status == 400, 'no Host: 400')\n"
	"check(r.getheader('Connection') == 'close', 'closed after 400')\n"
	"print('python ok')\n";

static void test_http_echo_python(void)
{
	if (!have("python3")) {
		CU_PASS("python3 missing: skipped");
		return;
	}
	unsigned short port;
	char *extra[] = {"--log-level", "error", NULL};
	pid_t pid = start_http(&port, extra, NULL);
	CU_ASSERT_FATAL(pid > 0);
	char py[600], cmd[1400];
	tmp_path(py, sizeof(py), "client.py");
	FILE *f = fopen(py, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(py_client, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "timeout 60 python3 '%s' %u 2>&1; rm -f '%s'",
		 py, port, py);
	int st;
	char *out = run(cmd, &st);
	CU_ASSERT_STRING_EQUAL(out, "python ok\n");
	free(out);
	CU_ASSERT_EQUAL(stop(pid), 0);
}

/* --help on stdout with exit 0, every option with its default; --version;
 * a bad option is exit 2 with a pointer to --help. */
static void test_http_echo_help_version(void)
{
	char cmd[700];
	int st;
	snprintf(cmd, sizeof(cmd), "%s/http_echo --help 2>/dev/null", exdir);
	char *out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	static const char *const opts[] = {
		"--host HOST", "--port PORT", "--threads N", "--max-head BYTES",
		"--max-headers N", "--max-body BYTES", "--header-timeout MS",
		"--body-timeout MS", "--idle-timeout MS", "--access-log FILE",
		"--log-level LEVEL", "--help", "--version", NULL};
	for (int i = 0; opts[i]; i++) {
		if (!strstr(out, opts[i]))
			fprintf(stderr, "--help lacks %s\n", opts[i]);
		CU_ASSERT_PTR_NOT_NULL(strstr(out, opts[i]));
	}
	/* Defaults and limits as numbers. */
	static const char *const defs[] = {"(127.0.0.1", "(8080;", "(8192; 64..",
					   "(64; 1..64)", "(1048576;", "(10000;",
					   "(15000;", NULL};
	for (int i = 0; defs[i]; i++)
		CU_ASSERT_PTR_NOT_NULL(strstr(out, defs[i]));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s/http_echo --version", exdir);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 0);
	char want[64];
	snprintf(want, sizeof(want), "http_echo (coil %s)\n", COIL_VERSION_STRING);
	CU_ASSERT_STRING_EQUAL(out, want);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s/http_echo --bogus 1 2>&1", exdir);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 2);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown option '--bogus'"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "--help"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s/http_echo --port 70000 2>&1", exdir);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 2);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "--port wants a number from 0 to 65535"));
	free(out);
}

/* The banner comes after listen, with the bound address (--port 0 gets a
 * port from the kernel); every rejected client is one log line at the
 * default level and none at error; the access log has a line per request. */
static void test_http_echo_logs(void)
{
	char err[600], acc[600];
	tmp_path(err, sizeof(err), "err.log");
	tmp_path(acc, sizeof(acc), "access.log");
	char *args[] = {"--port", "0", "--threads", "1", "--access-log", acc,
			NULL};
	pid_t pid = start_logged("http_echo", args, NULL, err);
	char *log = wait_for_text(err, "listening on http://127.0.0.1:");
	CU_ASSERT_PTR_NOT_NULL_FATAL(log);
	unsigned port = 0;
	const char *p = strstr(log, "http://127.0.0.1:");
	if (p)
		port = (unsigned)strtoul(p + 17, NULL, 10);
	CU_ASSERT(port > 0 && port < 65536);
	free(log);
	char *out = raw_exchange((unsigned short)port,
				 "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "\r\n\r\nhello\n"));
	free(out);
	out = raw_exchange((unsigned short)port, "GET /nohost HTTP/1.1\r\n\r\n");
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 400", 12), 0);
	free(out);
	out = raw_exchange((unsigned short)port, "\x16\x03\x01 tls?\r\n\r\n");
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 400", 12), 0);
	free(out);
	CU_ASSERT_EQUAL(stop(pid), 0);
	log = slurp(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "400 Bad Request (HTTP/1.1 request "
					  "without Host) \"GET /nohost HTTP/1.1\""));
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "400 Bad Request (malformed request)"));
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "http_echo: stopping (SIGTERM)"));
	int rejects = 0;
	for (const char *q = log; (q = strstr(q, " 400 Bad Request")); q++)
		rejects++;
	CU_ASSERT_EQUAL(rejects, 2);
	free(log);
	log = slurp(acc);
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "\"GET /hello HTTP/1.1\" 200 6\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "\"GET /nohost HTTP/1.1\" 400 12\n"));
	int lines = 0;
	for (const char *q = log; *q; q++)
		lines += *q == '\n';
	CU_ASSERT_EQUAL(lines, 3);
	free(log);
	/* --log-level error: the same rejection, no line (and no banner or
	 * stop line either). */
	unsigned short qport = free_port();
	char qps[16];
	snprintf(qps, sizeof(qps), "%u", qport);
	char *quiet[] = {"--port", qps, "--threads", "1", "--log-level", "error",
			 NULL};
	pid = start_logged("http_echo", quiet, NULL, err);
	CU_ASSERT_EQUAL(wait_port(qport), 0);
	out = raw_exchange(qport, "GET /nohost HTTP/1.1\r\n\r\n");
	CU_ASSERT_EQUAL(strncmp(out, "HTTP/1.1 400", 12), 0);
	free(out);
	CU_ASSERT_EQUAL(stop(pid), 0);
	log = slurp(err);
	CU_ASSERT_STRING_EQUAL(log, "");
	free(log);
	unlink(err);
	unlink(acc);
}

/* Listening problems are reported in words and exit 1: a port taken by a
 * socket without SO_REUSEPORT, a second http_echo on the same port, a
 * host name that does not resolve. */
static void test_http_echo_listen_errors(void)
{
	char err[600], cmd[1400];
	tmp_path(err, sizeof(err), "listen.log");
	/* A plain listener (no SO_REUSEPORT) holds the port. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	CU_ASSERT_EQUAL_FATAL(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	CU_ASSERT_EQUAL_FATAL(listen(fd, 1), 0);
	socklen_t l = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &l);
	snprintf(cmd, sizeof(cmd), "timeout 10 %s/http_echo --port %u 2>&1", exdir,
		 ntohs(sa.sin_port));
	int st;
	char *out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "cannot listen on 127.0.0.1:"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "Address already in use"));
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "--port"));
	CU_ASSERT_PTR_NULL(strstr(out, "listening on"));
	free(out);
	close(fd);
	/* Two http_echo on one port: the second must not share it
	 * silently (coil's listeners are exclusive to their process). */
	unsigned short port;
	pid_t first = start_http(&port, NULL, NULL);
	CU_ASSERT_FATAL(first > 0);
	char ps[16];
	snprintf(ps, sizeof(ps), "%u", port);
	char *args[] = {"--port", ps, NULL};
	pid_t second = start_logged("http_echo", args, NULL, err);
	int rc = reap(second, 10000);
	char *log = slurp(err);
	CU_ASSERT_EQUAL(rc, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "Address already in use"));
	CU_ASSERT_PTR_NOT_NULL(strstr(log, "make run PORT="));
	CU_ASSERT_PTR_NULL(strstr(log, "listening on"));
	free(log);
	CU_ASSERT_EQUAL(stop(first), 0);
	/* A name that does not resolve: the resolver's words. */
	snprintf(cmd, sizeof(cmd),
		 "timeout 40 %s/http_echo --host no-such-host.invalid --port 1 2>&1",
		 exdir);
	out = run(cmd, &st);
	CU_ASSERT_EQUAL(st, 1);
	CU_ASSERT_PTR_NOT_NULL(strstr(out, "cannot listen on no-such-host.invalid:1:"));
	CU_ASSERT_PTR_NULL(strstr(out, "No such file or directory"));
	if (strstr(out, "No such file or directory"))
		fprintf(stderr, "%s", out);
	free(out);
	unlink(err);
}

/* Every example stops cleanly on SIGINT and on SIGTERM: exit 0 (udp_echo
 * died with the signal), clients included, while they wait for a peer
 * that never answers. */
static void test_examples_stop_on_signals(void)
{
	static const int sigs[] = {SIGINT, SIGTERM};
	for (int k = 0; k < 2; k++) {
		unsigned short port = free_port();
		char ps[16], addr[64];
		snprintf(ps, sizeof(ps), "%u", port);
		snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
		struct {
			const char *name;
			char *args[8];
			bool tcp; /* wait until it accepts */
		} ex[] = {
			{"http_echo", {"--port", ps, "--log-level", "error"}, true},
			{"echo_server", {"--port", ps}, true},
			{"chat", {"--listen", addr}, true},
			{"udp_echo", {"--bind", addr}, false},
		};
		for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
			pid_t pid = start_logged(ex[i].name, ex[i].args, NULL,
						 "/dev/null");
			if (ex[i].tcp) {
				CU_ASSERT_EQUAL(wait_port(port), 0);
			} else {
				usleep(200000);
			}
			kill(pid, sigs[k]);
			int rc = reap(pid, 5000);
			if (rc != 0)
				fprintf(stderr, "%s: %s gave exit %d\n", ex[i].name,
					sigs[k] == SIGINT ? "SIGINT" : "SIGTERM", rc);
			CU_ASSERT_EQUAL(rc, 0);
		}
		/* The clients, blocked on a peer that accepts and is silent. */
		int lfd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_port = htons(port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		int one = 1;
		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		CU_ASSERT_EQUAL_FATAL(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		listen(lfd, 8);
		struct timeval tv = {.tv_sec = 10}; /* bounds accept() */
		setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		const char *clients[] = {"blocking_client", "chain_client"};
		for (int i = 0; i < 2; i++) {
			char *args[] = {addr, NULL};
			pid_t pid = start_logged(clients[i], args, "/dev/null",
						 "/dev/null");
			int c = accept(lfd, NULL, NULL); /* it connected */
			CU_ASSERT(c >= 0);
			usleep(100000); /* and waits for its echo */
			kill(pid, sigs[k]);
			int rc = reap(pid, 5000);
			if (rc != 0)
				fprintf(stderr, "%s: exit %d\n", clients[i], rc);
			CU_ASSERT_EQUAL(rc, 0);
			if (c >= 0)
				close(c);
		}
		close(lfd);
	}
}

static const coil_test_t tests[] = {
	{"http_echo_with_curl", test_http_echo_with_curl},
	{"http_echo_hostile", test_http_echo_hostile},
	{"http_echo_memory", test_http_echo_memory},
	{"echo_server_socat", test_echo_server_socat},
	{"udp_echo_socat", test_udp_echo_socat},
	{"chat_broadcast", test_chat_broadcast},
	{"http_echo_curl_protocol", test_http_echo_curl_protocol},
	{"http_echo_body_timeout", test_http_echo_body_timeout},
	{"http_echo_ab", test_http_echo_ab},
	{"http_echo_h2load_wrk", test_http_echo_h2load_wrk},
	{"http_echo_python", test_http_echo_python},
	{"http_echo_help_version", test_http_echo_help_version},
	{"http_echo_logs", test_http_echo_logs},
	{"http_echo_listen_errors", test_http_echo_listen_errors},
	{"examples_stop_on_signals", test_examples_stop_on_signals},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	/* build/<variant>/test/test_examples -> build/<variant>/examples */
	char self[512];
	snprintf(self, sizeof(self), "%s", argv[0]);
	snprintf(exdir, sizeof(exdir), "%s/../examples", dirname(self));
	signal(SIGPIPE, SIG_IGN); /* our raw test clients write to closed peers */
	return coil_test_main("examples", tests, argc, argv);
}
