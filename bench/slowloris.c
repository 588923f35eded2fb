/* SPDX-License-Identifier: MIT */
/* Slowloris load for the HTTP benchmarks: N connections that each send a
 * request head one byte at a time, every INTERVAL ms, for DURATION seconds,
 * and reconnect when the server hangs up (a timed-out slow client).
 *
 *   slowloris --port P [--conns 1000] [--interval 100] [--duration 10]
 *
 * Prints one line: conns=... sent_bytes=... closed_by_server=... */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char head[] = "GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ";

static int dial(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) && errno != EINPROGRESS) {
		close(fd);
		return -1;
	}
	return fd;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int port = 0, conns = 1000, interval = 100;
	double duration = 10;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--port"))
			port = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--conns"))
			conns = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--interval"))
			interval = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--duration"))
			duration = atof(argv[i + 1]);
	}
	if (!port || conns <= 0 || conns > 50000) {
		fprintf(stderr, "usage: %s --port P [--conns N] [--interval MS] "
			"[--duration S]\n", argv[0]);
		return 2;
	}
	struct rlimit r;
	getrlimit(RLIMIT_NOFILE, &r);
	r.rlim_cur = r.rlim_max;
	setrlimit(RLIMIT_NOFILE, &r);
	int *fd = calloc((size_t)conns, sizeof(int));
	size_t *pos = calloc((size_t)conns, sizeof(size_t));
	long sent = 0, closed = 0;
	for (int i = 0; i < conns; i++)
		fd[i] = dial(port);
	double end = now() + duration;
	char buf[4096];
	while (now() < end) {
		for (int i = 0; i < conns; i++) {
			if (fd[i] < 0) {
				fd[i] = dial(port);
				pos[i] = 0;
				continue;
			}
			/* A reply (408) or a hang-up means the server gave up on
			 * this one: count it and start again. */
			ssize_t n = read(fd[i], buf, sizeof(buf));
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != ENOTCONN) ||
			    n > 0) {
				closed++;
				close(fd[i]);
				fd[i] = dial(port);
				pos[i] = 0;
				continue;
			}
			char c = pos[i] < sizeof(head) - 1 ? head[pos[i]] : 'a';
			if (write(fd[i], &c, 1) == 1) {
				pos[i]++;
				sent++;
			}
		}
		poll(NULL, 0, interval);
	}
	printf("conns=%d sent_bytes=%ld closed_by_server=%ld\n", conns, sent,
	       closed);
	return 0;
}
