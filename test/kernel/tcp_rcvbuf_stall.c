/* SPDX-License-Identifier: MIT */
/*
 * Kernel proof for apiseq F8 (not built by make; no coil, no io_uring):
 *
 *   cc -O2 -o tcp_rcvbuf_stall test/kernel/tcp_rcvbuf_stall.c -lpthread
 *   ./tcp_rcvbuf_stall 1   # SO_SNDBUF+SO_RCVBUF 4096 after accept: STALLED
 *   ./tcp_rcvbuf_stall 0   # only SO_SNDBUF 4096 after accept: completes
 *   ./tcp_rcvbuf_stall 2   # both set on the listener before the handshake
 *                          # (the accepted socket inherits them): completes
 *
 * Socket A (loopback TCP, accepted) sends 8 MB and never reads; its peer B
 * reads everything A sends and writes 256 KB of its own to A. With A's
 * receive buffer shrunk to 4096 on the established connection, A's sends
 * stop for good after some 20-170 KB although B has read all of them: the
 * kernel prunes A's overfull receive queue and drops B's segments,
 * acknowledgements included (nstat: TcpExtRcvPruned, TcpExtTCPRcvQDrop;
 * ss -tinm: both sides in RTO backoff, cwnd 1). A coil channel whose read
 * signal is paused by a busy write queue is such a socket (apiseq F8:
 * coil_socket_set_buffer_size(ch, 4096) after the handshake). Workaround:
 * set the sizes before connect/listen (mode 2), or keep reading.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int b_fd;
static volatile size_t b_got;
static volatile int stop;

/* B: reads what A sends, and writes its own stream to A, which A never
 * reads. */
static void *peer(void *arg)
{
	(void)arg;
	char in[1500], out[700];
	memset(out, 'b', sizeof(out));
	size_t sent = 0;
	while (!stop) {
		struct pollfd p = {b_fd, POLLIN | (sent < 262144 ? POLLOUT : 0), 0};
		if (poll(&p, 1, 100) <= 0)
			continue;
		if (p.revents & POLLOUT) {
			ssize_t k = send(b_fd, out, sizeof(out), MSG_DONTWAIT);
			if (k > 0)
				sent += (size_t)k;
		}
		if (p.revents & POLLIN) {
			ssize_t k = recv(b_fd, in, sizeof(in), MSG_DONTWAIT);
			if (k > 0)
				b_got += (size_t)k;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int shrink_rcv = argc > 1 ? atoi(argv[1]) : 1;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	int v = 4096;
	if (shrink_rcv == 2) {
		/* Before the handshake: the accepted socket inherits both. */
		setsockopt(l, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
		setsockopt(l, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
	}
	bind(l, (struct sockaddr *)&a, sizeof(a));
	listen(l, 1);
	getsockname(l, (struct sockaddr *)&a, &al);
	b_fd = socket(AF_INET, SOCK_STREAM, 0);
	connect(b_fd, (struct sockaddr *)&a, sizeof(a));
	int one = 1;
	setsockopt(b_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int A = accept(l, NULL, NULL);
	if (shrink_rcv != 2)
		setsockopt(A, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
	if (shrink_rcv == 1)
		setsockopt(A, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
	pthread_t t;
	pthread_create(&t, NULL, peer, NULL);
	/* A: sends 8 MB in 20-70 KB writes, never reads. */
	static char buf[71000];
	memset(buf, 'a', sizeof(buf));
	size_t total = 8u << 20, off = 0;
	time_t last = time(NULL);
	size_t last_off = 0;
	while (off < total) {
		struct pollfd p = {A, POLLOUT, 0};
		poll(&p, 1, 1000);
		size_t n = 20000 + (off * 7) % 51000;
		if (n > total - off)
			n = total - off;
		ssize_t k = send(A, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k > 0)
			off += (size_t)k;
		if (off != last_off) {
			last_off = off;
			last = time(NULL);
		} else if (time(NULL) - last >= 10) {
			printf("STALLED: A sent %zu of %zu bytes, nothing moved "
			       "for 10 s; B has read %zu (shrink SO_RCVBUF %d)\n",
			       off, total, (size_t)b_got, shrink_rcv);
			stop = 1;
			pthread_join(t, NULL);
			return 2;
		}
	}
	printf("A sent all %zu bytes (shrink SO_RCVBUF %d)\n", total,
	       shrink_rcv);
	stop = 1;
	pthread_join(t, NULL);
	return 0;
}
