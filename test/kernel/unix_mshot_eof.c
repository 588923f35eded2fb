/* SPDX-License-Identifier: MIT */
/*
 * Kernel proof for apiseq F2 (not built by make; no coil):
 *
 *   cc -O2 -o unix_mshot_eof test/kernel/unix_mshot_eof.c -luring -lpthread
 *   ./unix_mshot_eof unix 500    # multishot recv, AF_UNIX: gets STUCK
 *   ./unix_mshot_eof tcp 500     # multishot recv, loopback TCP: never
 *   ./unix_mshot_eof unix1 500   # one-shot recv (re-armed), AF_UNIX: never
 *
 * A multishot recv with a provided-buffer ring (512-byte buffers, NBUF= and
 * BSZ= change them) on an AF_UNIX stream socket misses the end of stream:
 * a peer thread sends ~20-60 KB in pieces of 16..699 bytes and shuts its
 * side down; every byte arrives, but the 0-byte CQE never comes and the
 * recv stays armed (it is in the ring's PollList in /proc/PID/fdinfo).
 * Seen on Linux 6.18.44 within a few hundred iterations (with 32 KiB
 * buffers too, less often). AF_UNIX reports the bytes left since 6.17 and
 * io_uring's multishot recv stops retrying when that is 0; upstream's fix
 * for the back-to-back case (CVE-2026-23473, liburing issue 1549) is in
 * 6.18 stable, yet this still hangs. coil's workaround: one-shot recvs on
 * AF_UNIX stream sockets (lib/channel.c socket_kind).
 */
#include <liburing.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static int nbuf = 256, bsz = 512;
static int peer_fd;
static size_t total;

static void *peer(void *a)
{
	(void)a;
	char buf[700];
	memset(buf, 'x', sizeof(buf));
	size_t off = 0;
	unsigned s = 7;
	while (off < total) {
		s = s * 1103515245u + 12345u;
		size_t n = 16 + (s >> 8) % 684;
		if (n > total - off)
			n = total - off;
		ssize_t k = send(peer_fd, buf, n, MSG_NOSIGNAL);
		if (k <= 0)
			break;
		off += (size_t)k;
	}
	shutdown(peer_fd, SHUT_WR);
	return NULL;
}

static void pair(int tcp, int sv[2])
{
	if (!tcp) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
			exit(1);
		return;
	}
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof(a);
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &al))
		exit(1);
	sv[1] = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(sv[1], (struct sockaddr *)&a, sizeof(a)))
		exit(1);
	sv[0] = accept(l, NULL, NULL);
	close(l);
}

static void arm(struct io_uring *ring, int fd, int once)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (once)
		io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	else
		io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 1;
	io_uring_submit(ring);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "unix";
	int iters = argc > 2 ? atoi(argv[2]) : 500;
	if (getenv("NBUF"))
		nbuf = atoi(getenv("NBUF"));
	if (getenv("BSZ"))
		bsz = atoi(getenv("BSZ"));
	int tcp = !strcmp(mode, "tcp"), once = !strcmp(mode, "unix1");
	struct io_uring ring;
	struct io_uring_params p = {0};
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	if (io_uring_queue_init_params(64, &ring, &p) &&
	    io_uring_queue_init(64, &ring, 0))
		return 1;
	size_t rb = (size_t)nbuf * sizeof(struct io_uring_buf);
	struct io_uring_buf_ring *br = mmap(NULL, rb, PROT_READ | PROT_WRITE,
					    MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	char *bufs = malloc((size_t)nbuf * bsz);
	if (br == MAP_FAILED || !bufs)
		return 1;
	io_uring_buf_ring_init(br);
	struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br,
				       .ring_entries = (unsigned)nbuf,
				       .bgid = 1};
	if (io_uring_register_buf_ring(&ring, &reg, 0))
		return 1;
	int mask = io_uring_buf_ring_mask((unsigned)nbuf);
	for (int i = 0; i < nbuf; i++)
		io_uring_buf_ring_add(br, bufs + (size_t)i * bsz, bsz, i, mask, i);
	io_uring_buf_ring_advance(br, nbuf);

	for (int it = 0; it < iters; it++) {
		int sv[2];
		pair(tcp, sv);
		peer_fd = sv[1];
		total = 20000 + (size_t)(it * 7919) % 40000;
		arm(&ring, sv[0], once);
		pthread_t t;
		pthread_create(&t, NULL, peer, NULL);
		size_t got = 0;
		for (int eof = 0; !eof;) {
			struct io_uring_cqe *cqe;
			struct __kernel_timespec ts = {.tv_sec = 5};
			if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts)) {
				printf("%s: iteration %d STUCK: got %zu of %zu "
				       "bytes, the peer shut down, no EOF CQE "
				       "in 5 s\n",
				       mode, it, got, total);
				return 2;
			}
			int res = cqe->res;
			unsigned fl = cqe->flags;
			io_uring_cqe_seen(&ring, cqe);
			if (res > 0) {
				got += (size_t)res;
				unsigned bid = fl >> IORING_CQE_BUFFER_SHIFT;
				io_uring_buf_ring_add(br, bufs + (size_t)bid * bsz,
						      bsz, bid, mask, 0);
				io_uring_buf_ring_advance(br, 1);
			} else if (res == 0) {
				eof = 1;
			} else if (res != -ENOBUFS) {
				printf("%s: res %d\n", mode, res);
				return 1;
			}
			if (!eof && !(fl & IORING_CQE_F_MORE))
				arm(&ring, sv[0], once);
		}
		pthread_join(t, NULL);
		if (got != total)
			printf("%s: iteration %d got %zu of %zu\n", mode, it, got,
			       total);
		close(sv[0]);
		close(sv[1]);
	}
	printf("%s: %d iterations, every end of stream seen\n", mode, iters);
	return 0;
}
