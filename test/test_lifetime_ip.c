/* SPDX-License-Identifier: MIT */
/* Channel items of issue 11 that rest on the InProgress core (contract 1's
 * abort veto, bounded re-entry): an abort of a started write is refused and
 * the write completes; a readline loop in callback style over 1,000,000
 * pipelined lines runs in bounded stack. */
#include "helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static coil_loop_t *L;

static coil_channel_t *pair(int *peer)
{
	int sv[2];
	CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct timeval tv = {.tv_sec = 10};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	coil_channel_t *ch = NULL;
	T_ASSERT_OK(coil_channel_wrap(L, sv[0], COIL_IO_READ | COIL_IO_WRITE, &ch));
	*peer = sv[1];
	return ch;
}

struct ab {
	coil_ip_t *w;
	int rc;
};

static void abort_on_home(void *arg)
{
	struct ab *a = arg;
	a->rc = coil_ip_abort(a->w);
}

/* kaa: "write() can be aborted only before it starts". Aborting a write
 * whose bytes went into a send failed its handle while the bytes were
 * still sent. The abort is refused with -EBUSY (on the home worker) and
 * the write completes normally; the peer gets every byte. */
static void test_abort_started_write_refused(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	int v = 4096;
	setsockopt(coil_channel_fileno(ch), SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
	size_t big = 256 * 1024;
	char *data = malloc(big);
	for (size_t i = 0; i < big; i++)
		data[i] = (char)(i * 7);
	coil_ip_t *w = coil_channel_write(ch, data, big);
	/* Once the peer has some bytes, the write has started. */
	char first[1024];
	T_ASSERT_OK(t_read_exact(peer, first, sizeof(first)));
	struct ab a = {w, 0};
	t_run_on(L, coil_channel_worker(ch), abort_on_home, &a);
	CU_ASSERT_EQUAL(a.rc, -EBUSY);
	CU_ASSERT_EQUAL(coil_ip_state(w), COIL_IP_PENDING);
	char *rest = malloc(big);
	memcpy(rest, first, sizeof(first));
	T_ASSERT_OK(t_read_exact(peer, rest + sizeof(first), big - sizeof(first)));
	CU_ASSERT(memcmp(rest, data, big) == 0);
	T_ASSERT_OK(t_wait(w));
	CU_ASSERT_EQUAL(coil_ip_error(w), 0);
	CU_ASSERT_EQUAL(coil_ip_int(w), (int64_t)big);
	coil_ip_unref(w);
	free(rest);
	free(data);
	coil_channel_release(ch);
	close(peer);
}

/* A readline callback that issues the next coil_channel_readline() and
 * attaches coil_ip_on_done() to it ran that callback inline when the line
 * was already buffered, one stack frame deeper per line: 70,000 pipelined
 * lines crashed the worker. 1,000,000 lines now, in callback style. */
struct rl {
	coil_channel_t *ch;
	size_t want;
	_Atomic size_t lines;
	_Atomic int bad;
	_Atomic int done;
};

static void on_line(coil_ip_t *ip, void *ud)
{
	struct rl *r = ud;
	size_t n = 0;
	const char *b = coil_ip_bytes(ip, &n);
	if (coil_ip_error(ip) || n != 2 || !b || b[0] != 'x' || b[1] != '\n') {
		atomic_store(&r->bad, 1);
		atomic_store(&r->done, 1);
		return;
	}
	if (atomic_fetch_add(&r->lines, 1) + 1 == r->want) {
		atomic_store(&r->done, 1);
		return;
	}
	coil_ip_t *next = coil_channel_readline(r->ch);
	if (!next || coil_ip_on_done(next, on_line, r)) {
		atomic_store(&r->bad, 1);
		atomic_store(&r->done, 1);
	}
	coil_ip_unref(next);
}

struct feeder {
	int fd;
	size_t lines;
};

static void *feed(void *p)
{
	struct feeder *f = p;
	char buf[65536];
	for (size_t i = 0; i < sizeof(buf); i += 2) {
		buf[i] = 'x';
		buf[i + 1] = '\n';
	}
	size_t left = f->lines * 2;
	while (left) {
		size_t n = left < sizeof(buf) ? left : sizeof(buf);
		if (t_write_all(f->fd, buf, n))
			break;
		left -= n;
	}
	return NULL;
}

static void test_readline_loop_million(void)
{
	int peer;
	coil_channel_t *ch = pair(&peer);
	struct rl r = {0};
	r.ch = ch;
	r.want = t_on_valgrind() ? 20000 : 1000000;
	struct feeder f = {peer, r.want};
	/* Pipelined: all lines are on their way before the first readline. */
	pthread_t th;
	pthread_create(&th, NULL, feed, &f);
	coil_ip_t *first = coil_channel_readline(ch);
	T_ASSERT_OK(coil_ip_on_done(first, on_line, &r));
	coil_ip_unref(first);
	for (int i = 0; i < 120000 && !atomic_load(&r.done); i++)
		usleep(1000);
	pthread_join(th, NULL);
	CU_ASSERT_EQUAL(atomic_load(&r.bad), 0);
	CU_ASSERT_EQUAL(atomic_load(&r.lines), r.want);
	coil_channel_release(ch);
	close(peer);
}

static const coil_test_t tests[] = {
	{"abort_started_write_refused", test_abort_started_write_refused},
	{"readline_loop_million", test_readline_loop_million},
	{NULL, NULL},
};

int main(int argc, char **argv)
{
	L = t_loop(2);
	int rc = coil_test_main("lifetime_ip", tests, argc, argv);
	coil_loop_free(L);
	return rc;
}
