/* SPDX-License-Identifier: MIT */
/*
 * TLS channels (kaa's TLS socket: starttls_client / starttls_server) with
 * OpenSSL 3, as a stream filter of the channel (struct coil__filter_ops in
 * internal.h), so that every channel call keeps its meaning over the
 * encrypted stream.
 *
 * The record layer runs on the channel's home worker, inside the ring's
 * completions: a custom BIO reads straight from the provided buffer the
 * completion carries (no copy before decryption) and writes records into
 * the connection's output buffer, which the channel's single send in flight
 * carries. Nothing blocks and no thread is added.
 *
 * Output uses two buffers: `busy`, the bytes of the send in flight, frozen
 * until it completes, and `fill`, where OpenSSL appends (handshake
 * messages, alerts, session tickets, records of application data). A send
 * takes `fill` as `busy` when the previous one completed. Plaintext from
 * the write queue is encrypted only then, just before it is sent, so the
 * write queue keeps holding plaintext (queue_size, -ENOBUFS and the write
 * handles keep their meaning) and a write handle finishes once the records
 * carrying its last byte went to the kernel.
 *
 * Kernel TLS: the filter is the only place that touches records, so a
 * kTLS path would be a run-time probe (setsockopt TCP_ULP "tls") after the
 * handshake that, when it succeeds, hands the keys to the kernel and
 * removes the filter. This kernel has no tls ULP, so no such code is
 * shipped (docs/tls.md).
 */
#include "internal.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef COIL_HAVE_OPENSSL

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define SESS_CACHE_SLOTS 64
#define ENCRYPT_BUDGET (128u << 10) /* plaintext encrypted per send */
#define FILL_LIMIT (1u << 20)       /* own output a peer may make us hold */
#define OBUF_KEEP (32u << 10)       /* capacity kept between sends */

struct coil_tls_ctx_s {
	_Atomic int refs;
	SSL_CTX *ssl_ctx;
	int role;
	_Atomic bool frozen;       /* used once: configuration is read-only */
	bool ca_set;
	bool resume;
	unsigned handshake_ms;
	unsigned char *alpn;       /* wire format (length-prefixed names) */
	unsigned alpn_len;
	coil_tls_sni_cb sni_cb;
	void *sni_ud;
	pthread_mutex_t lock;      /* freeze and the client session cache */
	struct {
		char *host;
		SSL_SESSION *sess;
	} cache[SESS_CACHE_SLOTS];
	unsigned cache_next;
	char err[256];
};

typedef struct obuf {
	char *p;
	size_t len, cap;
} obuf;

typedef struct tls_conn {
	struct coil__filter f; /* first: ch->flt points here */
	coil_channel_t *ch;
	coil_tls_ctx_t *ctx;       /* reference */
	coil_tls_ctx_t *sni_ctx;   /* reference: the context SNI chose */
	SSL *ssl;
	const char *in;            /* the received chunk being decrypted */
	size_t in_len;
	obuf fill, busy;
	obuf held;                 /* records no one wanted yet (see hold) */
	coil__defer held_defer;    /* decrypts them once someone does */
	bool peer_closed;          /* the peer's close_notify was read */
	size_t busy_off;           /* bytes of busy already sent */
	size_t busy_plain;         /* plaintext that busy completes */
	coil_ip_t *hs_ip;          /* the handshake's handle (a reference) */
	char *host;                /* client: the name to verify, SNI */
	bool server;
	bool hs_done;
	bool closing;              /* close(0): close_notify is owed */
	bool shutdown_sent;
	bool wr_shut;              /* shutdown(SHUT_WR) sent close_notify */
	bool failed;               /* a fatal TLS error: send nothing more */
	int err;                   /* the error the stream ended with */
	char errmsg[320];
	_Atomic bool info_ready;
	coil_tls_info_t info;
} tls_conn;

static int conn_index = -1;
static BIO_METHOD *bio_meth;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* ---- errors ---- */

/* The most specific OpenSSL reason in the thread's error queue (emptied),
 * or fallback. */
static void ssl_reason(char *buf, size_t n, const char *fallback)
{
	unsigned long e, last = 0;
	while ((e = ERR_get_error()) != 0)
		last = e;
	if (!last) {
		snprintf(buf, n, "%s", fallback);
		return;
	}
	const char *r = ERR_reason_error_string(last);
	if (r)
		snprintf(buf, n, "%s", r);
	else
		ERR_error_string_n(last, buf, n);
}

static int ctx_fail(coil_tls_ctx_t *c, int err, const char *what)
{
	char r[200];
	ssl_reason(r, sizeof(r), coil_strerror(err));
	snprintf(c->err, sizeof(c->err), "%s: %s", what, r);
	return err;
}

/* ---- the BIO: reads the received chunk, writes into fill ---- */

static bool obuf_append(obuf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *np = coil__realloc(b->p, cap);
		if (!np)
			return false;
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return true;
}

static int bio_write(BIO *b, const char *data, int len)
{
	tls_conn *t = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (len <= 0)
		return 0;
	if (!obuf_append(&t->fill, data, (size_t)len))
		return -1; /* OpenSSL then fails the operation */
	return len;
}

static int bio_read(BIO *b, char *out, int len)
{
	tls_conn *t = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (!t->in_len) {
		BIO_set_retry_read(b);
		return -1;
	}
	size_t n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
	memcpy(out, t->in, n);
	t->in += n;
	t->in_len -= n;
	return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)b;
	(void)num;
	(void)ptr;
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void init_run(void)
{
	conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	bio_meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				"coil channel");
	if (bio_meth) {
		BIO_meth_set_write(bio_meth, bio_write);
		BIO_meth_set_read(bio_meth, bio_read);
		BIO_meth_set_ctrl(bio_meth, bio_ctrl);
		BIO_meth_set_create(bio_meth, bio_create);
	}
}

static bool tls_init(void)
{
	pthread_once(&init_once, init_run);
	return bio_meth && conn_index >= 0;
}

/* ---- context ---- */

static int new_session_cb(SSL *ssl, SSL_SESSION *sess);
static int servername_cb(SSL *ssl, int *alert, void *arg);
static int alpn_select_cb(SSL *ssl, const unsigned char **out,
			  unsigned char *outlen, const unsigned char *in,
			  unsigned inlen, void *arg);

int coil_tls_ctx_new(int role, coil_tls_ctx_t **out)
{
	if (!out || (role != COIL_TLS_CLIENT && role != COIL_TLS_SERVER))
		return -EINVAL;
	if (!tls_init())
		return -ENOMEM;
	coil_tls_ctx_t *c = coil__calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	ERR_clear_error();
	c->ssl_ctx = SSL_CTX_new(TLS_method());
	if (!c->ssl_ctx) {
		coil__free(c);
		return -ENOMEM;
	}
	atomic_init(&c->refs, 1);
	c->role = role;
	c->resume = true;
	c->handshake_ms = 10000;
	pthread_mutex_init(&c->lock, NULL);
	SSL_CTX *s = c->ssl_ctx;
	SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
	/* Renegotiation is refused (TLS 1.2; TLS 1.3 has none). */
	SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION);
	/* Idle connections give their record buffers back. */
	SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
	if (role == COIL_TLS_CLIENT) {
		SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
		SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_CLIENT |
						       SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(s, new_session_cb);
	} else {
		SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
		SSL_CTX_set_tlsext_servername_callback(s, servername_cb);
		SSL_CTX_set_tlsext_servername_arg(s, c);
		SSL_CTX_set_alpn_select_cb(s, alpn_select_cb, c);
		static const unsigned char sid[] = "coil";
		SSL_CTX_set_session_id_context(s, sid, sizeof(sid) - 1);
	}
	*out = c;
	return 0;
}

coil_tls_ctx_t *coil_tls_ctx_ref(coil_tls_ctx_t *c)
{
	if (c)
		atomic_fetch_add(&c->refs, 1);
	return c;
}

void coil_tls_ctx_free(coil_tls_ctx_t *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	for (unsigned i = 0; i < SESS_CACHE_SLOTS; i++) {
		coil__free(c->cache[i].host);
		if (c->cache[i].sess)
			SSL_SESSION_free(c->cache[i].sess);
	}
	SSL_CTX_free(c->ssl_ctx);
	coil__free(c->alpn);
	pthread_mutex_destroy(&c->lock);
	coil__free(c);
}

const char *coil_tls_ctx_error(const coil_tls_ctx_t *c)
{
	return c ? c->err : "";
}

/* Configuration is allowed until the context is first used. */
static int ctx_check(coil_tls_ctx_t *c)
{
	if (!c)
		return -EINVAL;
	if (atomic_load(&c->frozen)) {
		snprintf(c->err, sizeof(c->err),
			 "the context is in use: configure it before the "
			 "first starttls");
		return -EBUSY;
	}
	c->err[0] = 0;
	ERR_clear_error();
	return 0;
}

int coil_tls_ctx_use_cert_file(coil_tls_ctx_t *c, const char *chain,
			       const char *key)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (!chain || !key)
		return -EINVAL;
	if (SSL_CTX_use_certificate_chain_file(c->ssl_ctx, chain) != 1)
		return ctx_fail(c, -EINVAL, chain);
	if (SSL_CTX_use_PrivateKey_file(c->ssl_ctx, key, SSL_FILETYPE_PEM) != 1)
		return ctx_fail(c, -EINVAL, key);
	if (SSL_CTX_check_private_key(c->ssl_ctx) != 1)
		return ctx_fail(c, -EINVAL, "key does not match certificate");
	return 0;
}

int coil_tls_ctx_use_cert_mem(coil_tls_ctx_t *c, const void *chain,
			      size_t chain_len, const void *key,
			      size_t key_len)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (!chain || !key || !chain_len || !key_len || chain_len > INT_MAX ||
	    key_len > INT_MAX)
		return -EINVAL;
	BIO *b = BIO_new_mem_buf(chain, (int)chain_len);
	if (!b)
		return -ENOMEM;
	X509 *x = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL);
	if (!x || SSL_CTX_use_certificate(c->ssl_ctx, x) != 1) {
		X509_free(x);
		BIO_free(b);
		return ctx_fail(c, -EINVAL, "certificate");
	}
	X509_free(x);
	SSL_CTX_clear_chain_certs(c->ssl_ctx);
	X509 *ca;
	while ((ca = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (SSL_CTX_add0_chain_cert(c->ssl_ctx, ca) != 1) {
			X509_free(ca);
			BIO_free(b);
			return ctx_fail(c, -EINVAL, "chain certificate");
		}
	}
	ERR_clear_error(); /* the end of the PEM data */
	BIO_free(b);
	b = BIO_new_mem_buf(key, (int)key_len);
	if (!b)
		return -ENOMEM;
	EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	if (!k || SSL_CTX_use_PrivateKey(c->ssl_ctx, k) != 1) {
		EVP_PKEY_free(k);
		return ctx_fail(c, -EINVAL, "private key");
	}
	EVP_PKEY_free(k);
	if (SSL_CTX_check_private_key(c->ssl_ctx) != 1)
		return ctx_fail(c, -EINVAL, "key does not match certificate");
	return 0;
}

int coil_tls_ctx_set_ca(coil_tls_ctx_t *c, const char *file, const char *dir)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (!file && !dir) {
		if (SSL_CTX_set_default_verify_paths(c->ssl_ctx) != 1)
			return ctx_fail(c, -EINVAL, "system CA store");
	} else if (SSL_CTX_load_verify_locations(c->ssl_ctx, file, dir) != 1) {
		return ctx_fail(c, -EINVAL, file ? file : dir);
	}
	c->ca_set = true;
	return 0;
}

int coil_tls_ctx_set_ca_mem(coil_tls_ctx_t *c, const void *pem, size_t len)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (!pem || !len || len > INT_MAX)
		return -EINVAL;
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	if (!b)
		return -ENOMEM;
	X509_STORE *st = SSL_CTX_get_cert_store(c->ssl_ctx);
	X509 *x;
	int n = 0;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		int ok = X509_STORE_add_cert(st, x);
		X509_free(x);
		if (ok != 1) {
			BIO_free(b);
			return ctx_fail(c, -EINVAL, "CA certificate");
		}
		n++;
	}
	BIO_free(b);
	if (!n)
		return ctx_fail(c, -EINVAL, "no CA certificate in the data");
	ERR_clear_error();
	c->ca_set = true;
	return 0;
}

int coil_tls_ctx_set_verify(coil_tls_ctx_t *c, int mode)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	int m;
	switch (mode) {
	case COIL_TLS_VERIFY_NONE:
		m = SSL_VERIFY_NONE;
		break;
	case COIL_TLS_VERIFY_PEER:
		m = SSL_VERIFY_PEER;
		break;
	case COIL_TLS_VERIFY_REQUIRE:
		m = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
		break;
	default:
		return -EINVAL;
	}
	SSL_CTX_set_verify(c->ssl_ctx, m, NULL);
	return 0;
}

int coil_tls_ctx_set_alpn(coil_tls_ctx_t *c, const char *const *protos,
			  size_t n)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (n && !protos)
		return -EINVAL;
	size_t len = 0;
	for (size_t i = 0; i < n; i++) {
		size_t l = protos[i] ? strlen(protos[i]) : 0;
		if (!l || l > 255)
			return -EINVAL;
		len += 1 + l;
	}
	if (len > 65535)
		return -EINVAL;
	unsigned char *w = NULL;
	if (len) {
		w = coil__malloc(len);
		if (!w)
			return -ENOMEM;
		unsigned char *p = w;
		for (size_t i = 0; i < n; i++) {
			size_t l = strlen(protos[i]);
			*p++ = (unsigned char)l;
			memcpy(p, protos[i], l);
			p += l;
		}
	}
	if (c->role == COIL_TLS_CLIENT &&
	    SSL_CTX_set_alpn_protos(c->ssl_ctx, w, (unsigned)len) != 0) {
		coil__free(w);
		return ctx_fail(c, -ENOMEM, "ALPN");
	}
	coil__free(c->alpn);
	c->alpn = w;
	c->alpn_len = (unsigned)len;
	return 0;
}

static int proto_version(int v)
{
	switch (v) {
	case 0:
		return 0;
	case COIL_TLS_1_2:
		return TLS1_2_VERSION;
	case COIL_TLS_1_3:
		return TLS1_3_VERSION;
	default:
		return -1;
	}
}

int coil_tls_ctx_set_versions(coil_tls_ctx_t *c, int min, int max)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	int lo = proto_version(min), hi = proto_version(max);
	if (lo < 0 || hi < 0 || (lo && hi && lo > hi))
		return -EINVAL;
	if (SSL_CTX_set_min_proto_version(c->ssl_ctx, lo ? lo : TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(c->ssl_ctx, hi) != 1)
		return ctx_fail(c, -EINVAL, "protocol versions");
	return 0;
}

int coil_tls_ctx_set_ciphers(coil_tls_ctx_t *c, const char *tls12,
			     const char *tls13)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (tls12 && SSL_CTX_set_cipher_list(c->ssl_ctx, tls12) != 1)
		return ctx_fail(c, -EINVAL, tls12);
	if (tls13 && SSL_CTX_set_ciphersuites(c->ssl_ctx, tls13) != 1)
		return ctx_fail(c, -EINVAL, tls13);
	return 0;
}

int coil_tls_ctx_set_session_resumption(coil_tls_ctx_t *c, int on)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	c->resume = on != 0;
	if (c->role == COIL_TLS_SERVER) {
		SSL_CTX_set_session_cache_mode(c->ssl_ctx,
					       on ? SSL_SESS_CACHE_SERVER
						  : SSL_SESS_CACHE_OFF);
		if (on) {
			SSL_CTX_clear_options(c->ssl_ctx, SSL_OP_NO_TICKET);
			SSL_CTX_set_num_tickets(c->ssl_ctx, 2);
		} else {
			SSL_CTX_set_options(c->ssl_ctx, SSL_OP_NO_TICKET);
			SSL_CTX_set_num_tickets(c->ssl_ctx, 0);
		}
	}
	return 0;
}

int coil_tls_ctx_set_handshake_timeout(coil_tls_ctx_t *c, unsigned ms)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	c->handshake_ms = ms;
	return 0;
}

int coil_tls_ctx_set_sni_cb(coil_tls_ctx_t *c, coil_tls_sni_cb cb, void *ud)
{
	int rc = ctx_check(c);
	if (rc)
		return rc;
	if (c->role != COIL_TLS_SERVER)
		return -EINVAL;
	c->sni_cb = cb;
	c->sni_ud = ud;
	return 0;
}

/* First use: a client without a CA store of its own gets the system's. */
static int ctx_freeze(coil_tls_ctx_t *c, char *msg, size_t n)
{
	if (atomic_load_explicit(&c->frozen, memory_order_acquire))
		return 0;
	int rc = 0;
	pthread_mutex_lock(&c->lock);
	if (!atomic_load(&c->frozen)) {
		if (c->role == COIL_TLS_CLIENT && !c->ca_set) {
			ERR_clear_error();
			if (SSL_CTX_set_default_verify_paths(c->ssl_ctx) != 1) {
				char r[200];
				ssl_reason(r, sizeof(r), "cannot load");
				snprintf(msg, n, "system CA store: %s", r);
				rc = -EINVAL;
			}
		}
		if (!rc)
			atomic_store_explicit(&c->frozen, true,
					      memory_order_release);
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* ---- client session cache (per context, keyed by host name) ---- */

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	tls_conn *t = SSL_get_ex_data(ssl, conn_index);
	if (!t || !t->host || !t->ctx->resume)
		return 0;
	coil_tls_ctx_t *c = t->ctx;
	char *h = coil__strdup(t->host);
	if (!h)
		return 0;
	pthread_mutex_lock(&c->lock);
	unsigned slot = c->cache_next;
	for (unsigned i = 0; i < SESS_CACHE_SLOTS; i++) {
		if (c->cache[i].host && !strcmp(c->cache[i].host, h)) {
			slot = i;
			break;
		}
	}
	if (slot == c->cache_next)
		c->cache_next = (c->cache_next + 1) % SESS_CACHE_SLOTS;
	coil__free(c->cache[slot].host);
	if (c->cache[slot].sess)
		SSL_SESSION_free(c->cache[slot].sess);
	c->cache[slot].host = h;
	c->cache[slot].sess = sess;
	pthread_mutex_unlock(&c->lock);
	return 1; /* we keep the reference */
}

static void session_lookup(tls_conn *t)
{
	coil_tls_ctx_t *c = t->ctx;
	if (!t->host || !c->resume)
		return;
	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < SESS_CACHE_SLOTS; i++) {
		if (c->cache[i].host && !strcmp(c->cache[i].host, t->host)) {
			SSL_set_session(t->ssl, c->cache[i].sess);
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
}

/* ---- server callbacks: SNI and ALPN ---- */

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
	coil_tls_ctx_t *c = arg;
	tls_conn *t = SSL_get_ex_data(ssl, conn_index);
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!c->sni_cb || !t)
		return SSL_TLSEXT_ERR_OK;
	coil_tls_ctx_t *pick = c->sni_cb(name, c->sni_ud);
	if (!pick || pick == c)
		return SSL_TLSEXT_ERR_OK;
	char msg[64];
	if (pick->role != COIL_TLS_SERVER || ctx_freeze(pick, msg, sizeof(msg))) {
		*alert = SSL_AD_INTERNAL_ERROR;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	if (!SSL_set_SSL_CTX(ssl, pick->ssl_ctx)) {
		*alert = SSL_AD_INTERNAL_ERROR;
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	}
	if (t->sni_ctx)
		coil_tls_ctx_free(t->sni_ctx);
	t->sni_ctx = coil_tls_ctx_ref(pick);
	return SSL_TLSEXT_ERR_OK;
}

static int alpn_select_cb(SSL *ssl, const unsigned char **out,
			  unsigned char *outlen, const unsigned char *in,
			  unsigned inlen, void *arg)
{
	coil_tls_ctx_t *c = arg;
	tls_conn *t = SSL_get_ex_data(ssl, conn_index);
	if (t && t->sni_ctx && t->sni_ctx->alpn)
		c = t->sni_ctx;
	if (!c->alpn)
		return SSL_TLSEXT_ERR_NOACK;
	unsigned char *sel;
	if (SSL_select_next_proto(&sel, outlen, c->alpn, c->alpn_len, in,
				  inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/* ---- the connection ---- */

static const struct coil__filter_ops tls_ops;

/* Home worker: the filter state of a channel whose filter is tls_ops. */
#define TC(ch) coil__container_of((ch)->flt, tls_conn, f)

/* Any thread: flt is published with a release store after its state. */
static inline tls_conn *conn_of(const coil_channel_t *ch)
{
	struct coil__filter *f = __atomic_load_n(&ch->flt, __ATOMIC_ACQUIRE);
	if (!f || f->ops != &tls_ops)
		return NULL;
	return coil__container_of(f, tls_conn, f);
}

static void publish(coil_channel_t *ch, struct coil__filter *f)
{
	__atomic_store_n(&ch->flt, f, __ATOMIC_RELEASE);
}

static void obuf_free(obuf *b)
{
	coil__free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static void fill_info(tls_conn *t)
{
	coil_tls_info_t *i = &t->info;
	snprintf(i->version, sizeof(i->version), "%s", SSL_get_version(t->ssl));
	const char *cn = SSL_get_cipher_name(t->ssl);
	snprintf(i->cipher, sizeof(i->cipher), "%s", cn ? cn : "");
	const unsigned char *a;
	unsigned alen;
	SSL_get0_alpn_selected(t->ssl, &a, &alen);
	if (alen >= sizeof(i->alpn))
		alen = sizeof(i->alpn) - 1;
	if (a && alen)
		memcpy(i->alpn, a, alen);
	i->alpn[alen] = 0;
	const char *sn = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
	snprintf(i->server_name, sizeof(i->server_name), "%s", sn ? sn : "");
	X509 *peer = SSL_get1_peer_certificate(t->ssl);
	if (peer) {
		X509_NAME_oneline(X509_get_subject_name(peer), i->peer_subject,
				  sizeof(i->peer_subject));
		X509_free(peer);
	}
	i->session_reused = SSL_session_reused(t->ssl);
	i->server = t->server;
	atomic_store_explicit(&t->info_ready, true, memory_order_release);
}

/* Before a fatal close: the alert OpenSSL queued goes out at once with one
 * non-blocking send(2), so that the peer learns why (best effort; skipped
 * while a send of ours is in flight, which must stay first). */
static void flush_alert(tls_conn *t)
{
	coil_channel_t *ch = t->ch;
	if (!t->fill.len || t->busy.len || ch->send_inflight || ch->fd < 0 ||
	    !(ch->mode & COIL_IO_WRITE))
		return;
	ssize_t r = ch->is_socket ? send(ch->fd, t->fill.p, t->fill.len,
					 MSG_DONTWAIT | MSG_NOSIGNAL)
				  : write(ch->fd, t->fill.p, t->fill.len);
	(void)r;
	t->fill.len = 0;
}

/* A fatal TLS error: the reason goes to the handshake's handle (if any)
 * and to the reads that find nothing; the stream ends with err. */
static void conn_fatal(tls_conn *t, int err, const char *fmt, ...)
	COIL_PRINTF(3, 4);
static void conn_fatal(tls_conn *t, int err, const char *fmt, ...)
{
	if (t->failed)
		return;
	t->failed = true;
	t->err = err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->errmsg, sizeof(t->errmsg), fmt, ap);
	va_end(ap);
	if (t->hs_ip) {
		coil_ip_t *ip = t->hs_ip;
		t->hs_ip = NULL;
		coil__ip_fail_msg(ip, err, t->errmsg);
		coil_ip_unref(ip);
	}
	flush_alert(t);
	coil__channel_end(t->ch, err);
}

/* After SSL_do_handshake / SSL_read failed with SSL_ERROR_SSL or
 * SSL_ERROR_SYSCALL: the reason, and the certificate's if it was that. */
static void conn_ssl_error(tls_conn *t, const char *stage)
{
	char r[200];
	ssl_reason(r, sizeof(r), "protocol error");
	long v = SSL_get_verify_result(t->ssl);
	if (!t->hs_done && v != X509_V_OK) {
		conn_fatal(t, -EKEYREJECTED,
			   "TLS %s%s%s: certificate verify failed: %s", stage,
			   t->host ? " with " : "", t->host ? t->host : "",
			   X509_verify_cert_error_string(v));
		return;
	}
	conn_fatal(t, -EPROTO, "TLS %s%s%s: %s", stage,
		   t->host ? " with " : "", t->host ? t->host : "", r);
}

static void handshake_step(tls_conn *t)
{
	ERR_clear_error();
	int r = SSL_do_handshake(t->ssl);
	if (r == 1) {
		t->hs_done = true;
		fill_info(t);
		if (t->hs_ip) {
			coil_ip_t *ip = t->hs_ip;
			t->hs_ip = NULL;
			coil_ip_finish_int(ip, 0);
			coil_ip_unref(ip);
		}
		return;
	}
	int e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return;
	conn_ssl_error(t, "handshake");
}

/* Decrypts what the BIO holds and hands the plaintext on. */
static void read_records(tls_conn *t)
{
	coil_channel_t *ch = t->ch;
	char buf[16384];
	while (!t->failed && atomic_load(&ch->st) == COIL__CH_OPEN && !ch->eof) {
		size_t got = 0;
		ERR_clear_error();
		int r = SSL_read_ex(t->ssl, buf, sizeof(buf), &got);
		if (r == 1) {
			coil__channel_deliver(ch, buf, got);
			continue;
		}
		int e = SSL_get_error(t->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
			break;
		if (e == SSL_ERROR_ZERO_RETURN) {
			/* close_notify: the end of the stream. */
			t->peer_closed = true;
			coil__channel_end(ch, 0);
			break;
		}
		conn_ssl_error(t, "read");
		break;
	}
}

static bool has_consumer(const coil_channel_t *ch)
{
	return coil__channel_has_consumer(ch);
}

/*
 * Records that arrive after the handshake while no one wants bytes (no
 * read, no signal: typically the first request, which travels with the
 * client's Finished, before the handshake's callback connected a read
 * signal) are held undecrypted, as a plain channel's bytes would wait in
 * the kernel, and decrypted at the end of the turn in which someone wants
 * them (the channel asks want_input whenever its interest changes). At
 * most what the reads already under way bring: reading stops meanwhile.
 */
static void decrypt(tls_conn *t, const char *p, size_t n, bool hold)
{
	coil_channel_t *ch = t->ch;
	t->in = p;
	t->in_len = n;
	if (!t->hs_done && !t->failed)
		handshake_step(t);
	if (t->hs_done && !t->failed && t->in_len && hold && !has_consumer(ch)) {
		if (!obuf_append(&t->held, t->in, t->in_len))
			conn_fatal(t, -ENOMEM, "TLS: out of memory");
		t->in_len = 0;
	}
	if (t->hs_done)
		read_records(t);
	/* What was not decrypted (the channel closed meanwhile) is dropped,
	 * with the rest of the stream. */
	t->in = NULL;
	t->in_len = 0;
}

/* Decrypts the held records (in order, before anything newer). */
static void release_held(tls_conn *t)
{
	obuf h = t->held;
	t->held = (obuf){0};
	if (h.len && !t->failed)
		decrypt(t, h.p, h.len, false);
	obuf_free(&h);
}

static void tls_input(coil_channel_t *ch, const char *p, size_t n)
{
	tls_conn *t = TC(ch);
	coil__channel_get(ch);
	if (t->held.len) {
		/* Behind the held ones, in order. */
		if (!obuf_append(&t->held, p, n))
			conn_fatal(t, -ENOMEM, "TLS: out of memory");
		if (has_consumer(ch))
			release_held(t);
	} else {
		decrypt(t, p, n, true);
	}
	if (!t->failed && t->fill.len > FILL_LIMIT)
		conn_fatal(t, -ENOBUFS,
			   "TLS: the peer makes us answer but does not read");
	coil__channel_kick(ch);
	coil__channel_put(ch);
}

static void held_run(coil__defer *d)
{
	tls_conn *t = coil__container_of(d, tls_conn, held_defer);
	coil_channel_t *ch = t->ch;
	if (!t->held.len || atomic_load(&ch->st) != COIL__CH_OPEN ||
	    !has_consumer(ch))
		return;
	coil__channel_get(ch);
	release_held(t);
	coil__channel_kick(ch);
	coil__channel_put(ch);
}

static int tls_eof(coil_channel_t *ch)
{
	tls_conn *t = TC(ch);
	/* Held records first: they may end with the close_notify. */
	if (t->held.len)
		release_held(t);
	if (t->peer_closed)
		return 0;
	if (t->failed)
		return t->err;
	t->failed = true;
	if (!t->hs_done) {
		t->err = -ECONNRESET;
		snprintf(t->errmsg, sizeof(t->errmsg),
			 "TLS handshake%s%s: the peer closed the connection",
			 t->host ? " with " : "", t->host ? t->host : "");
		if (t->hs_ip) {
			coil_ip_t *ip = t->hs_ip;
			t->hs_ip = NULL;
			coil__ip_fail_msg(ip, t->err, t->errmsg);
			coil_ip_unref(ip);
		}
		return t->err;
	}
	t->err = -EPROTO;
	snprintf(t->errmsg, sizeof(t->errmsg),
		 "TLS: stream truncated (the peer closed the connection "
		 "without close_notify)");
	return t->err;
}

/* Encrypts up to ENCRYPT_BUDGET bytes of iov; returns how many. Small
 * writes are gathered so that they share records. */
static size_t encrypt(tls_conn *t, const struct iovec *iov, int n)
{
	char gather[16384];
	size_t glen = 0, done = 0;
	for (int i = 0; i < n && done < ENCRYPT_BUDGET; i++) {
		const char *p = iov[i].iov_base;
		size_t len = iov[i].iov_len;
		if (len > ENCRYPT_BUDGET - done)
			len = ENCRYPT_BUDGET - done;
		while (len) {
			size_t w;
			if (!glen && len >= sizeof(gather)) {
				if (SSL_write_ex(t->ssl, p, len, &w) != 1)
					return 0;
			} else {
				w = sizeof(gather) - glen < len
					    ? sizeof(gather) - glen
					    : len;
				memcpy(gather + glen, p, w);
				glen += w;
				if (glen == sizeof(gather)) {
					size_t x;
					if (SSL_write_ex(t->ssl, gather, glen,
							 &x) != 1)
						return 0;
					glen = 0;
				}
			}
			p += w;
			len -= w;
			done += w;
		}
	}
	size_t x;
	if (glen && SSL_write_ex(t->ssl, gather, glen, &x) != 1)
		return 0;
	return done;
}

static int tls_prep_send(coil_channel_t *ch, int n)
{
	tls_conn *t = TC(ch);
	if (!t->busy.len) {
		if (t->hs_done && !t->failed && n && t->wr_shut) {
			/* A write after shutdown(SHUT_WR): like a plain
			 * socket's send then, it fails and closes. */
			conn_fatal(t, -EPIPE, "TLS write after shutdown(SHUT_WR) "
				   "(close_notify was sent)");
			/* (Closed already unless the stream had ended.) */
			coil__channel_close_local(ch, true, false);
			return 0;
		} else if (t->hs_done && !t->failed && n) {
			ERR_clear_error();
			size_t plain = encrypt(t, ch->iov, n);
			if (!plain) {
				char r[200];
				ssl_reason(r, sizeof(r), "cannot encrypt");
				conn_fatal(t, -EPROTO, "TLS write: %s", r);
				return 0;
			}
			t->busy_plain = plain;
		} else if (t->hs_done && !t->failed && t->closing &&
			   !t->shutdown_sent &&
			   atomic_load(&ch->st) == COIL__CH_CLOSING) {
			/* Every queued write is encrypted: close_notify. */
			t->shutdown_sent = true;
			ERR_clear_error();
			SSL_shutdown(t->ssl);
			ERR_clear_error();
		}
		obuf tmp = t->busy;
		t->busy = t->fill;
		t->fill = tmp;
		t->fill.len = 0;
		t->busy_off = 0;
		if (!t->busy.len)
			return 0;
	}
	ch->iov[0].iov_base = t->busy.p + t->busy_off;
	ch->iov[0].iov_len = t->busy.len - t->busy_off;
	return 1;
}

static size_t tls_sent(coil_channel_t *ch, size_t res)
{
	tls_conn *t = TC(ch);
	t->busy_off += res;
	if (t->busy_off < t->busy.len)
		return 0;
	t->busy.len = 0;
	t->busy_off = 0;
	if (t->busy.cap > OBUF_KEEP)
		obuf_free(&t->busy);
	size_t plain = t->busy_plain;
	t->busy_plain = 0;
	return plain;
}

static bool tls_pending(const coil_channel_t *ch)
{
	const tls_conn *t = TC(ch);
	return t->busy.len || t->fill.len ||
	       (t->closing && !t->shutdown_sent && t->hs_done && !t->failed);
}

static bool tls_want_input(const coil_channel_t *ch)
{
	tls_conn *t = TC(ch);
	if (t->held.len && has_consumer(ch))
		coil__defer_add(ch->w, &t->held_defer); /* see decrypt */
	return !t->hs_done && !t->failed;
}

static bool tls_closing(coil_channel_t *ch, bool immediate)
{
	tls_conn *t = TC(ch);
	/* A handshake cannot finish once reading stops: closing during it
	 * is immediate. After a fatal error nothing more is sent. */
	if (!t->hs_done || t->failed)
		return true;
	if (!immediate)
		t->closing = true;
	return immediate;
}

static void tls_closed(coil_channel_t *ch)
{
	tls_conn *t = TC(ch);
	if (t->hs_ip) {
		coil_ip_t *ip = t->hs_ip;
		t->hs_ip = NULL;
		coil__ip_fail_msg(ip, -ECONNRESET,
				  "channel closed during the TLS handshake");
		coil_ip_unref(ip);
	}
}

static const char *tls_errtext(const coil_channel_t *ch)
{
	const tls_conn *t = TC(ch);
	return t->err ? t->errmsg : NULL;
}

static void conn_free(tls_conn *t)
{
	if (t->hs_ip)
		coil_ip_unref(t->hs_ip);
	if (t->ssl)
		SSL_free(t->ssl);
	coil__defer_cancel(&t->held_defer);
	obuf_free(&t->fill);
	obuf_free(&t->busy);
	obuf_free(&t->held);
	coil__free(t->host);
	if (t->sni_ctx)
		coil_tls_ctx_free(t->sni_ctx);
	coil_tls_ctx_free(t->ctx);
	coil__free(t);
}

static void tls_free(coil_channel_t *ch)
{
	conn_free(TC(ch));
	ch->flt = NULL;
}

/* socket.c, home worker, once the write queue has drained for
 * shutdown(SHUT_WR or SHUT_RDWR): close_notify first (once), then report
 * whether its records are still on the way. The read side stays open: the
 * peer's data and its close_notify are still read. */
int coil__tls_shutdown_write(coil_channel_t *ch)
{
	tls_conn *t = conn_of(ch);
	if (!t || !t->hs_done || t->failed)
		return 0;
	if (!t->shutdown_sent) {
		t->shutdown_sent = true;
		t->wr_shut = true;
		ERR_clear_error();
		SSL_shutdown(t->ssl);
		ERR_clear_error();
		coil__channel_kick(ch);
	}
	return t->busy.len || t->fill.len || ch->send_inflight;
}

static const struct coil__filter_ops tls_ops = {
	.input = tls_input,
	.eof = tls_eof,
	.prep_send = tls_prep_send,
	.sent = tls_sent,
	.pending = tls_pending,
	.want_input = tls_want_input,
	.closing = tls_closing,
	.closed = tls_closed,
	.errtext = tls_errtext,
	.free = tls_free,
};

/* ---- starttls ---- */

typedef struct start_req {
	coil_channel_t *ch;
	tls_conn *t;
} start_req;

/* Aborting the handshake (a timeout, the user) closes the channel: a half
 * done TLS stream cannot be used. */
static int hs_abort(coil_ip_t *ip, void *arg)
{
	tls_conn *t = arg;
	if (t->hs_ip != ip)
		return 0;
	if (!t->failed) {
		t->failed = true;
		t->err = -ECANCELED;
		snprintf(t->errmsg, sizeof(t->errmsg),
			 "TLS handshake aborted");
	}
	/* Settled here, before our reference goes: the last one that is not
	 * an observer's (a timeout's) must not be dropped while pending. */
	t->hs_ip = NULL;
	coil__ip_fail_msg(ip, -ECANCELED, "TLS handshake aborted");
	coil_ip_unref(ip);
	coil__channel_close_local(t->ch, true, false);
	return 1; /* settled */
}

/* Home worker: installs the filter and starts the handshake. */
static void start_local(tls_conn *t)
{
	coil_channel_t *ch = t->ch;
	int st = atomic_load(&ch->st);
	const char *why = NULL;
	int err = 0;
	if (ch->flt) {
		err = -EALREADY;
		why = "starttls: the channel already has a TLS layer";
	} else if (st != COIL__CH_OPEN || ch->fd < 0 ||
		   atomic_load(&ch->close_req)) {
		err = -ENOTCONN;
		why = "starttls: the channel is not open and connected";
	} else if ((ch->mode & (COIL_IO_READ | COIL_IO_WRITE)) !=
		   (COIL_IO_READ | COIL_IO_WRITE)) {
		err = -EINVAL;
		why = "starttls: the channel must be readable and writable";
	} else if (coil__channel_writes_queued(ch) || ch->send_inflight) {
		err = -EBUSY;
		why = "starttls: plaintext writes are still queued (wait for "
		      "them first)";
	} else if (ch->eof) {
		err = -ENOTCONN;
		why = "starttls: the peer already ended the stream";
	}
	if (err) {
		coil__ip_fail_msg(t->hs_ip, err, why);
		coil_ip_unref(t->hs_ip);
		t->hs_ip = NULL;
		conn_free(t);
		return;
	}
	coil_ip_set_abort(t->hs_ip, hs_abort, t);
	publish(ch, &t->f);
	/* Bytes already read past the plaintext part of the protocol (a
	 * ClientHello pipelined behind STARTTLS) are the first records. */
	size_t have;
	char *early = coil__channel_take_queued(ch, &have);
	coil__channel_get(ch);
	handshake_step(t);
	if (early) {
		tls_input(ch, early, have);
		coil__free(early);
	} else if (have) {
		conn_fatal(t, -ENOMEM, "starttls: out of memory");
	}
	coil__channel_kick(ch);
	coil__channel_put(ch);
}

static void start_task(void *arg)
{
	tls_conn *t = arg;
	coil_channel_t *ch = t->ch;
	start_local(t);
	coil__channel_put(ch);
}

static coil_ip_t *starttls(coil_socket_t *s, coil_tls_ctx_t *c,
			   const char *host, bool server)
{
	if (!s)
		return NULL;
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (!ip)
		return NULL;
	if (!c || c->role != (server ? COIL_TLS_SERVER : COIL_TLS_CLIENT)) {
		coil__ip_fail_msg(ip, -EINVAL,
				  c ? "starttls: the context's role does not "
				      "match (client/server)"
				    : "starttls: no TLS context");
		return ip;
	}
	char msg[240];
	int rc = ctx_freeze(c, msg, sizeof(msg));
	if (rc) {
		coil__ip_fail_msg(ip, rc, msg);
		return ip;
	}
	tls_conn *t = coil__calloc(1, sizeof(*t));
	if (!t) {
		coil_ip_unref(ip);
		return NULL;
	}
	t->f.ops = &tls_ops;
	t->ch = s;
	coil__defer_init(&t->held_defer, held_run);
	t->ctx = coil_tls_ctx_ref(c);
	t->server = server;
	ERR_clear_error();
	t->ssl = SSL_new(c->ssl_ctx);
	BIO *bio = t->ssl ? BIO_new(bio_meth) : NULL;
	if (host && *host && !(t->host = coil__strdup(host))) {
		BIO_free(bio);
		bio = NULL;
	}
	if (!bio) {
		conn_free(t);
		coil_ip_unref(ip);
		return NULL;
	}
	BIO_set_data(bio, t);
	SSL_set_bio(t->ssl, bio, bio);
	SSL_set_ex_data(t->ssl, conn_index, t);
	if (server) {
		SSL_set_accept_state(t->ssl);
	} else {
		SSL_set_connect_state(t->ssl);
		if (t->host) {
			unsigned char a[16];
			bool literal = inet_pton(AF_INET, t->host, a) == 1 ||
				       inet_pton(AF_INET6, t->host, a) == 1;
			int ok;
			if (literal) {
				ok = X509_VERIFY_PARAM_set1_ip_asc(
					SSL_get0_param(t->ssl), t->host);
			} else {
				ok = SSL_set_tlsext_host_name(t->ssl, t->host) &&
				     SSL_set1_host(t->ssl, t->host);
			}
			if (ok != 1) {
				char r[200];
				ssl_reason(r, sizeof(r), "invalid");
				coil_ip_fail(ip, -EINVAL,
					      "starttls: host name %s: %s",
					      t->host, r);
				conn_free(t);
				return ip;
			}
		}
		session_lookup(t);
	}
	t->hs_ip = coil_ip_ref(ip);
	if (coil__on_worker(s->w)) {
		start_local(t);
	} else {
		coil__channel_get(s);
		if (coil__post_fn(s->w, start_task, t)) {
			coil__channel_put(s);
			coil_ip_unref(t->hs_ip);
			t->hs_ip = NULL;
			conn_free(t);
			coil__ip_fail_msg(ip, -ENOMEM, "starttls: out of memory");
			return ip;
		}
	}
	if (c->handshake_ms && coil_ip_state(ip) == COIL_IP_PENDING)
		ip = coil_ip_timeout(ip, c->handshake_ms, 1);
	return ip;
}

coil_ip_t *coil_socket_starttls_client(coil_socket_t *s, coil_tls_ctx_t *c,
				       const char *host)
{
	return starttls(s, c, host, false);
}

coil_ip_t *coil_socket_starttls_server(coil_socket_t *s, coil_tls_ctx_t *c)
{
	return starttls(s, c, NULL, true);
}

int coil_tls_info(const coil_channel_t *ch, coil_tls_info_t *out)
{
	if (!ch || !out)
		return -EINVAL;
	/* flt is set once on the home worker, before the handshake's handle
	 * can finish; a reader that saw it finish sees flt. */
	const tls_conn *t = conn_of(ch);
	if (!t || !atomic_load_explicit(&t->info_ready, memory_order_acquire))
		return -ENOTCONN;
	*out = t->info;
	return 0;
}

/* ---- the TLS listener: clients arrive handshaken ---- */

typedef struct tls_listen {
	struct coil__filter f; /* first: ch->flt points here */
	_Atomic int refs;
	coil_socket_t *listener;
	coil_tls_ctx_t *ctx;
	coil_new_client_cb cb;
	void *ud;
} tls_listen;

typedef struct tls_pending {
	tls_listen *l;
	coil_socket_t *client;
} tls_waiter;

static void listen_put(tls_listen *l)
{
	if (atomic_fetch_sub(&l->refs, 1) != 1)
		return;
	coil_tls_ctx_free(l->ctx);
	coil__free(l);
}

static void pending_done(coil_ip_t *ip, void *ud)
{
	tls_waiter *p = ud;
	tls_listen *l = p->l;
	coil_socket_t *lst = l->listener;
	bool open = atomic_load(&lst->st) == COIL__CH_OPEN &&
		    !atomic_load(&lst->close_req);
	if (coil_ip_error(ip) == 0 && open && l->cb)
		l->cb(lst, p->client, l->ud);
	else
		coil_channel_release(p->client);
	coil__channel_put(lst);
	listen_put(l);
	coil__free(p);
}

static void tls_new_client(coil_socket_t *lst, coil_socket_t *client,
			   void *ud)
{
	tls_listen *l = ud;
	tls_waiter *p = coil__malloc(sizeof(*p));
	coil_ip_t *ip = p ? coil_socket_starttls_server(client, l->ctx) : NULL;
	if (!ip) {
		coil__free(p);
		coil_channel_release(client);
		return;
	}
	p->l = l;
	p->client = client;
	atomic_fetch_add(&l->refs, 1);
	coil__channel_get(lst);
	if (coil_ip_on_done(ip, pending_done, p)) {
		/* The handshake goes on unobserved; the client is ours. */
		coil__channel_put(lst);
		listen_put(l);
		coil__free(p);
		coil_channel_release(client);
	}
	coil_ip_unref(ip);
}

/* The listener's binding is freed with the listener. */
static void lfilter_free(coil_channel_t *ch)
{
	listen_put(coil__container_of(ch->flt, tls_listen, f));
	ch->flt = NULL;
}
static bool lfilter_no(const coil_channel_t *ch) { return false; }
static bool lfilter_closing(coil_channel_t *ch, bool immediate)
{
	return immediate;
}
static void lfilter_closed(coil_channel_t *ch) {}
static const char *lfilter_errtext(const coil_channel_t *ch) { return NULL; }
static void lfilter_input(coil_channel_t *ch, const char *p, size_t n)
{
	coil__channel_deliver(ch, p, n);
}
static int lfilter_eof(coil_channel_t *ch) { return 0; }
static int lfilter_prep(coil_channel_t *ch, int n) { return n; }
static size_t lfilter_sent(coil_channel_t *ch, size_t res) { return res; }

/* A listener's "filter" only owns the binding: its bytes pass unchanged. */
static const struct coil__filter_ops listen_ops = {
	.input = lfilter_input,
	.eof = lfilter_eof,
	.prep_send = lfilter_prep,
	.sent = lfilter_sent,
	.pending = lfilter_no,
	.want_input = lfilter_no,
	.closing = lfilter_closing,
	.closed = lfilter_closed,
	.errtext = lfilter_errtext,
	.free = lfilter_free,
};

struct listen_req {
	coil_socket_t *s;
	tls_listen *l;
	int rc;
	coil_ip_t *done; /* from a plain thread: settles once bound */
};

static void bind_local(struct listen_req *r)
{
	coil_socket_t *s = r->s;
	if (s->flt && s->flt->ops != &listen_ops) {
		r->rc = -EALREADY;
		return;
	}
	if (s->flt)
		listen_put(coil__container_of(s->flt, tls_listen, f));
	publish(s, &r->l->f);
	r->rc = 0;
}

static void bind_task(void *arg)
{
	struct listen_req *r = arg;
	coil_socket_t *s = r->s;
	bind_local(r);
	coil_ip_finish_int(r->done, 0);
	coil__channel_put(s);
}

int coil_socket_on_new_tls_client(coil_socket_t *s, coil_tls_ctx_t *c,
				  coil_new_client_cb cb, void *ud)
{
	if (!s || !c || c->role != COIL_TLS_SERVER)
		return -EINVAL;
	if (!cb)
		return coil_socket_on_new_client(s, NULL, NULL);
	char msg[240];
	int rc = ctx_freeze(c, msg, sizeof(msg));
	if (rc)
		return rc;
	tls_listen *l = coil__calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->f.ops = &listen_ops;
	atomic_init(&l->refs, 1);
	l->listener = s;
	l->ctx = coil_tls_ctx_ref(c);
	l->cb = cb;
	l->ud = ud;
	/* Bound on the listener's home worker, synchronously: the filter
	 * fields are the home worker's. */
	struct listen_req r = {s, l, -EINPROGRESS, NULL};
	if (coil__on_worker(s->w)) {
		bind_local(&r);
	} else if (coil__tls_worker) {
		listen_put(l);
		return -EDEADLK; /* another worker: cannot wait for it here */
	} else {
		r.done = coil__ip_new_on(s->w);
		if (!r.done) {
			listen_put(l);
			return -ENOMEM;
		}
		coil__channel_get(s);
		if (coil__post_fn(s->w, bind_task, &r)) {
			coil__channel_put(s);
			coil_ip_unref(r.done);
			listen_put(l);
			return -ENOMEM;
		}
		coil_ip_wait(r.done, -1);
		coil_ip_unref(r.done);
	}
	if (r.rc) {
		listen_put(l);
		return r.rc;
	}
	return coil_socket_on_new_client(s, tls_new_client, l);
}

#else /* !COIL_HAVE_OPENSSL: built with TLS=0 */

int coil_tls_ctx_new(int role, coil_tls_ctx_t **out)
{
	(void)role;
	if (out)
		*out = NULL;
	return -ENOTSUP;
}
coil_tls_ctx_t *coil_tls_ctx_ref(coil_tls_ctx_t *c) { return c; }
void coil_tls_ctx_free(coil_tls_ctx_t *c) { (void)c; }
const char *coil_tls_ctx_error(const coil_tls_ctx_t *c)
{
	(void)c;
	return "coil was built without TLS (TLS=0)";
}
int coil_tls_ctx_use_cert_file(coil_tls_ctx_t *c, const char *chain,
			       const char *key)
{
	return -ENOTSUP;
}
int coil_tls_ctx_use_cert_mem(coil_tls_ctx_t *c, const void *chain,
			      size_t chain_len, const void *key, size_t key_len)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_ca(coil_tls_ctx_t *c, const char *file, const char *dir)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_ca_mem(coil_tls_ctx_t *c, const void *pem, size_t len)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_verify(coil_tls_ctx_t *c, int mode) { return -ENOTSUP; }
int coil_tls_ctx_set_alpn(coil_tls_ctx_t *c, const char *const *protos,
			  size_t n)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_versions(coil_tls_ctx_t *c, int min, int max)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_ciphers(coil_tls_ctx_t *c, const char *tls12,
			     const char *tls13)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_session_resumption(coil_tls_ctx_t *c, int on)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_handshake_timeout(coil_tls_ctx_t *c, unsigned ms)
{
	return -ENOTSUP;
}
int coil_tls_ctx_set_sni_cb(coil_tls_ctx_t *c, coil_tls_sni_cb cb, void *ud)
{
	return -ENOTSUP;
}
static coil_ip_t *no_tls(coil_socket_t *s)
{
	if (!s)
		return NULL;
	coil_ip_t *ip = coil__ip_new_on(s->w);
	if (ip)
		coil__ip_fail_msg(ip, -ENOTSUP,
				  "coil was built without TLS (TLS=0)");
	return ip;
}
coil_ip_t *coil_socket_starttls_client(coil_socket_t *s, coil_tls_ctx_t *c,
				       const char *host)
{
	return no_tls(s);
}
coil_ip_t *coil_socket_starttls_server(coil_socket_t *s, coil_tls_ctx_t *c)
{
	return no_tls(s);
}
int coil_tls_info(const coil_channel_t *ch, coil_tls_info_t *out)
{
	return -ENOTSUP;
}
int coil_socket_on_new_tls_client(coil_socket_t *s, coil_tls_ctx_t *c,
				  coil_new_client_cb cb, void *ud)
{
	return -ENOTSUP;
}
int coil__tls_shutdown_write(coil_channel_t *ch) { return 0; }

#endif /* COIL_HAVE_OPENSSL */

int coil_tls_available(void)
{
#ifdef COIL_HAVE_OPENSSL
	return 1;
#else
	return 0;
#endif
}
