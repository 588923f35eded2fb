/* SPDX-License-Identifier: MIT */
/* Line-based chat: every line a client sends goes to every other client,
 * whichever worker each of them lives on.
 *
 *   chat [--listen 127.0.0.1:7002] [--threads N]
 *
 * Clients are spread over the workers. The member list is shared, so it is
 * guarded by a mutex; writes to a channel owned by another worker are
 * forwarded to that worker by coil (coil_channel_write is callable from any
 * thread).
 */
#include <coil.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MEMBERS 1024

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static coil_socket_t *members[MAX_MEMBERS];

static void broadcast(coil_socket_t *from, const void *line, size_t len)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < MAX_MEMBERS; i++)
		if (members[i] && members[i] != from)
			coil_ip_unref(coil_channel_write(members[i], line, len));
	pthread_mutex_unlock(&lock);
}

static void on_line(coil_channel_t *ch, const void *line, size_t len, void *ud)
{
	broadcast(ch, line, len);
}

static void on_closed(coil_channel_t *ch, int expected, void *ud)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < MAX_MEMBERS; i++)
		if (members[i] == ch)
			members[i] = NULL;
	pthread_mutex_unlock(&lock);
	coil_channel_release(ch);
}

static void on_client(coil_socket_t *l, coil_socket_t *c, void *ud)
{
	int slot = -1;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < MAX_MEMBERS && slot < 0; i++)
		if (!members[i])
			members[slot = i] = c;
	pthread_mutex_unlock(&lock);
	if (slot < 0) {
		coil_ip_unref(coil_channel_write(c, "chat is full\n", 13));
		coil_channel_release(c);
		return;
	}
	coil_channel_on_closed(c, on_closed, NULL);
	coil_channel_on_readline(c, on_line, NULL);
}

int main(int argc, char **argv)
{
	const char *addr = "127.0.0.1:7002";
	unsigned threads = 0;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--listen"))
			addr = argv[i + 1];
		else if (!strcmp(argv[i], "--threads"))
			threads = (unsigned)atoi(argv[i + 1]);
	}
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);
	coil_loop_opts_t o;
	coil_loop_opts_init(&o);
	o.workers = threads;
	coil_loop_t *loop;
	if (coil_loop_new(&loop, &o))
		return 1;
	coil_socket_t *l;
	coil_socket_new(loop, &l);
	coil_socket_on_new_client(l, on_client, NULL);
	int rc = coil_socket_listen(l, addr, 0, 0);
	if (rc) {
		fprintf(stderr, "chat: listen %s: %s\n", addr, coil_strerror(rc));
		coil_loop_free(loop);
		return 1;
	}
	fprintf(stderr, "chat: on %s\n", addr);
	int sig;
	sigwait(&stop, &sig);
	coil_channel_release(l);
	coil_loop_free(loop);
	return 0;
}
