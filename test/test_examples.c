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

static const coil_test_t tests[] = {
	{"http_echo_with_curl", test_http_echo_with_curl},
	{"http_echo_hostile", test_http_echo_hostile},
	{"http_echo_memory", test_http_echo_memory},
	{"echo_server_socat", test_echo_server_socat},
	{"udp_echo_socat", test_udp_echo_socat},
	{"chat_broadcast", test_chat_broadcast},
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
