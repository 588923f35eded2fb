/* SPDX-License-Identifier: MIT */
/* HTTP/1.x request heads and chunked bodies, parsed strictly and in place. */
#include "http_parser.h"

#include <limits.h>
#include <string.h>

/* Up to this many bytes of empty lines may precede the request line. */
#define MAX_LEADING_EOL 8

static const struct http_limits default_limits = HTTP_LIMITS_DEFAULT;

/* tchar of RFC 9110 5.6.2: the bytes allowed in methods and field names.
 * A table: every byte of every method and field name goes through it. */
static const bool tchar[256] = {
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
	['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
	['`'] = 1, ['|'] = 1, ['~'] = 1,
	['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
	['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
	['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
	['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
	['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
	['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
	['Y'] = 1, ['Z'] = 1,
	['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
	['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
	['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
	['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
	['y'] = 1, ['z'] = 1,
};

static bool is_tchar(unsigned char c)
{
	return tchar[c];
}

/* field-vchar, SP or HTAB: what a field value (or trailer, extension) may
 * hold. obs-text (>= 0x80) is allowed, every other control byte is not. */
static bool is_field_char(unsigned char c)
{
	return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* is_field_char without CR and LF, which end a value: the value scan's
 * one test per byte. */
static const bool value_byte[256] = {
#define R16(x) x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x
	[0x09] = 1,
	[0x20] = R16(1), R16(1), R16(1), R16(1), R16(1),
	[0x70] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* not 0x7f */
	[0x80] = R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1),
	R16(1),
#undef R16
};

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
}

/* Case-insensitive comparison of a view with a lower-case literal. */
static bool ieq(const char *s, size_t n, const char *lit)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (lit[i] == '\0' || lower(s[i]) != lit[i])
			return false;
	return lit[i] == '\0';
}

/*
 * Splits a comma-separated list value (RFC 9110 5.6.1) into its elements,
 * OWS trimmed. *pos is the cursor into v[0..n); returns false at the end.
 * Empty elements are returned too (with *elen 0) so callers may skip them.
 */
static bool next_element(const char *v, size_t n, size_t *pos,
			 const char **elem, size_t *elen)
{
	size_t i = *pos, b, e;

	if (i > n)
		return false;
	while (i < n && is_ows(v[i]))
		i++;
	b = i;
	while (i < n && v[i] != ',')
		i++;
	e = i;
	while (e > b && is_ows(v[e - 1]))
		e--;
	*elem = v + b;
	*elen = e - b;
	*pos = i + 1; /* past the comma, or past n at the end */
	return true;
}

/*
 * A header name (tchar bytes only) against a literal of n lower-case letters
 * and '-', ieq's answer without its per-byte case test: on those bytes
 * setting bit 0x20 is lower(). The only tchar bytes it turns into a letter
 * are that letter in either case, and none into '-' but '-' (0x0d, CR, is
 * not a tchar).
 */
static bool name_eq(const char *s, const char *lit, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] | 0x20) != (unsigned char)lit[i])
			return false;
	return true;
}

/* A header name against a lower-case literal, the length first. */
#define NAME_IS(h, lit)                                                        \
	((h)->name_len == sizeof(lit) - 1 &&                                   \
	 name_eq((h)->name, lit, sizeof(lit) - 1))

static bool all_tchar(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)s[i]))
			return false;
	return n > 0;
}

/* Framing facts gathered while walking the headers, judged at the end. */
struct head_state {
	bool te_seen, te_chunked, te_other;
	bool conn_close, conn_keep_alive;
};

/*
 * Applies one header to the request: Content-Length, Transfer-Encoding,
 * Connection, Host and Expect carry meaning, the rest is only stored.
 * Returns 0 or an HTTP_ERR_* code.
 */
static int apply_header(struct http_request *req, struct head_state *st,
			const struct http_header *h)
{
	const char *v = h->value, *el;
	size_t n = h->value_len, pos = 0, elen;

	if (NAME_IS(h, "content-length")) {
		int64_t cl = 0;

		/* Plain digits only: "+5", "5 5", "5, 5" and "" are all 400. */
		if (n == 0)
			return HTTP_ERR_BAD;
		for (size_t i = 0; i < n; i++) {
			int d = v[i] - '0';

			if (d < 0 || d > 9 || cl > (INT64_MAX - d) / 10)
				return HTTP_ERR_BAD;
			cl = cl * 10 + d;
		}
		if (req->content_length >= 0 && req->content_length != cl)
			return HTTP_ERR_BAD;
		req->content_length = cl;
	} else if (NAME_IS(h, "transfer-encoding")) {
		st->te_seen = true;
		while (next_element(v, n, &pos, &el, &elen)) {
			if (elen == 0)
				continue;
			/* Nothing may follow chunked, not even chunked, and a
			 * coding with parameters is not one we know. */
			if (st->te_chunked || !all_tchar(el, elen))
				return HTTP_ERR_BAD;
			if (ieq(el, elen, "chunked"))
				st->te_chunked = true;
			else
				st->te_other = true;
		}
	} else if (NAME_IS(h, "connection")) {
		while (next_element(v, n, &pos, &el, &elen)) {
			if (ieq(el, elen, "close"))
				st->conn_close = true;
			else if (ieq(el, elen, "keep-alive"))
				st->conn_keep_alive = true;
		}
	} else if (NAME_IS(h, "host")) {
		if (req->host)
			return HTTP_ERR_BAD;
		req->host = v;
		req->host_len = n;
	} else if (NAME_IS(h, "expect")) {
		if (ieq(v, n, "100-continue"))
			req->expect_continue = true;
	}
	return 0;
}

/*
 * Consumes a line end at *p: CRLF or a bare LF. A CR without its LF, or any
 * other byte, is HTTP_ERR_BAD. The caller guarantees an LF lies ahead
 * before the end of the head, so p[1] is readable whenever *p is CR.
 */
static int eat_eol(const char **p)
{
	if (**p == '\n') {
		*p += 1;
		return 0;
	}
	if (**p == '\r' && (*p)[1] == '\n') {
		*p += 2;
		return 0;
	}
	return HTTP_ERR_BAD;
}

/*
 * Parses a complete head buf[0..end), whose request line (method already
 * checked, the space after it at buf + sp) starts at buf + start and whose
 * last line is the blank one, and
 * returns its length (end) or an HTTP_ERR_* code. Every line in it ends in
 * LF, which is what keeps the byte-wise scans below inside the buffer
 * without a length check per byte.
 *
 * open_end: the head's end is not known yet, only that buf[end - 1] is an
 * LF (which stops every scan as well): the head is taken to end with the
 * first blank line, and its length is returned if one is there and all
 * before it parses. Any other result (an error, HTTP_INCOMPLETE when the
 * bytes ran out first) means only that this shortcut did not apply.
 */
static int parse_head(const char *buf, size_t start, size_t sp, size_t end,
		      bool open_end, struct http_request *req,
		      const struct http_limits *lim)
{
	const char *p = buf + start, *e = buf + end, *ver;
	size_t max_headers = lim->max_headers;
	struct head_state st = {0};
	int rc;

	if (max_headers > HTTP_MAX_HEADERS)
		max_headers = HTTP_MAX_HEADERS;
	/* Every field but the headers array, which is filled up to
	 * num_headers (zeroing its 2 KiB cost more than the rest of a small
	 * request's parse). */
	req->method = req->target = NULL;
	req->method_len = req->target_len = 0;
	req->minor = 0;
	req->num_headers = 0;
	req->host = NULL;
	req->host_len = 0;
	req->content_length = -1;
	req->chunked = req->keep_alive = req->expect_continue = false;

	/* method SP target SP HTTP-version EOL, single spaces. */
	req->method = p;
	req->method_len = sp - start;
	p = buf + sp;
	req->target = ++p;
	while ((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
		p++;
	req->target_len = (size_t)(p - req->target);
	if (req->target_len == 0 || *p != ' ')
		return HTTP_ERR_BAD;
	ver = ++p;
	if (e - p < 9 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' ||
	    p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9')
		return HTTP_ERR_BAD;
	p += 8;
	if (eat_eol(&p))
		return HTTP_ERR_BAD;
	/* Well-formed but not 1.x: a version we do not speak. */
	if (ver[5] != '1')
		return HTTP_ERR_VERSION;
	req->minor = ver[7] == '0' ? 0 : 1;

	/* Header lines until the blank line. */
	for (;;) {
		struct http_header *h;
		const char *v;

		if (p == e) /* (open_end only: the bytes ended first) */
			return HTTP_INCOMPLETE;
		if (*p == '\r' || *p == '\n') {
			if (eat_eol(&p) || (p != e && !open_end))
				return HTTP_ERR_BAD;
			break;
		}
		/* obs-fold, or whitespace before a field name. */
		if (is_ows(*p))
			return HTTP_ERR_BAD;
		if (req->num_headers >= max_headers)
			return HTTP_ERR_HEADERS_TOO_LARGE;
		h = &req->headers[req->num_headers];
		h->name = p;
		while (is_tchar((unsigned char)*p))
			p++;
		h->name_len = (size_t)(p - h->name);
		if (h->name_len == 0 || *p != ':')
			return HTTP_ERR_BAD;
		p++;
		while (is_ows(*p))
			p++;
		v = p;
		while (value_byte[(unsigned char)*p])
			p++;
		if (*p != '\r' && *p != '\n')
			return HTTP_ERR_BAD; /* a control byte */
		h->value = v;
		h->value_len = (size_t)(p - v);
		while (h->value_len > 0 && is_ows(v[h->value_len - 1]))
			h->value_len--;
		if (eat_eol(&p))
			return HTTP_ERR_BAD;
		req->num_headers++;
		rc = apply_header(req, &st, h);
		if (rc)
			return rc;
	}

	/* Framing: exactly one way to find the end of the body. */
	if (st.te_seen) {
		if (req->content_length >= 0 || req->minor == 0 ||
		    !st.te_chunked)
			return HTTP_ERR_BAD;
		if (st.te_other)
			return HTTP_ERR_NOT_IMPLEMENTED;
		req->chunked = true;
	}
	if (req->content_length >= 0 &&
	    (uint64_t)req->content_length > lim->max_body)
		return HTTP_ERR_BODY_TOO_LARGE;
	if (req->minor)
		req->keep_alive = !st.conn_close;
	else
		req->keep_alive = st.conn_keep_alive && !st.conn_close;
	return (int)(p - buf);
}

/*
 * The parser looks at no more than the first max_head bytes (the window).
 * When the window is full and the head has not ended there, the head is too
 * large; otherwise more bytes are simply needed. Deciding on the window
 * alone is what makes every split of the input give the same answer.
 */
static int need_more(bool window_full)
{
	return window_full ? HTTP_ERR_HEADERS_TOO_LARGE : HTTP_INCOMPLETE;
}

/*
 * See http_parser.h. Three steps, all on the window: skip a few empty
 * lines, check the method (so a non-HTTP peer fails fast), then search for
 * the blank line from where the previous call stopped. Only when it is
 * found is the whole head parsed, once. On a first look at bytes ending in
 * LF the search is skipped when parsing up to the first blank line
 * succeeds (the same answer, one pass instead of two).
 */
int http_parse_request(const char *buf, size_t len, size_t last_len,
		       struct http_request *req, const struct http_limits *lim)
{
	size_t max_head, win, i = 0, m0, from;
	bool full;

	if (!lim)
		lim = &default_limits;
	max_head = lim->max_head < INT_MAX ? lim->max_head : INT_MAX;
	win = len < max_head ? len : max_head;
	full = len >= max_head;

	for (;;) {
		if (i > MAX_LEADING_EOL)
			return HTTP_ERR_BAD;
		if (i >= win)
			return need_more(full);
		if (buf[i] == '\n') {
			i++;
		} else if (buf[i] == '\r') {
			if (i + 1 >= win)
				return need_more(full);
			if (buf[i + 1] != '\n')
				return HTTP_ERR_BAD;
			i += 2;
		} else {
			break;
		}
	}

	m0 = i;
	while (i < win && is_tchar((unsigned char)buf[i])) {
		if (++i - m0 > HTTP_MAX_METHOD)
			return HTTP_ERR_METHOD;
	}
	if (i >= win)
		return need_more(full);
	if (buf[i] != ' ' || i == m0)
		return HTTP_ERR_BAD;

	/*
	 * First look at bytes that end in LF (a whole request in one read,
	 * the common case): parse straight to the first blank line, which is
	 * the one the search below would find, so a success is its answer;
	 * anything else, and every later look, takes the search.
	 */
	if (!last_len && buf[win - 1] == '\n') {
		int rc = parse_head(buf, m0, i, win, true, req, lim);

		if (rc > 0)
			return rc;
	}
	/*
	 * The blank line is an LF followed by LF or CRLF. A previous call that
	 * saw last_len bytes found none ending inside them, so a match can only
	 * start in its last two bytes or later. It cannot start before the
	 * space after the method either: no LF was there.
	 */
	if (last_len > len)
		last_len = len;
	from = last_len > 3 ? last_len - 3 : 0;
	if (from < i)
		from = i;
	while (from < win) {
		const char *lf = memchr(buf + from, '\n', win - from);
		size_t p;

		if (!lf)
			break;
		p = (size_t)(lf - buf);
		if (p + 1 < win && buf[p + 1] == '\n')
			return parse_head(buf, m0, i, p + 2, false, req, lim);
		if (p + 2 < win && buf[p + 1] == '\r' && buf[p + 2] == '\n')
			return parse_head(buf, m0, i, p + 3, false, req, lim);
		from = p + 1;
	}
	/* A full window without a line end holds only the request line: its
	 * target is what is too long (414), not the header section. */
	if (full && !memchr(buf + i, '\n', win - i))
		return HTTP_ERR_URI_TOO_LONG;
	return need_more(full);
}

/* Decoder states; a failed decoder keeps its (negative) error instead. */
enum {
	CH_SIZE0,    /* first hex digit of a chunk size */
	CH_SIZE,     /* more hex digits */
	CH_BWS,      /* whitespace after the size: only ';' may follow */
	CH_EXT,      /* chunk extension, skipped up to the line end */
	CH_SIZE_LF,  /* CR seen at the end of the size line */
	CH_DATA,     /* chunk data, c->size bytes left */
	CH_DATA_CR,  /* the line end after the data */
	CH_DATA_LF,
	CH_TR_START, /* start of a trailer line, or of the final blank one */
	CH_TR_NAME,
	CH_TR_VALUE,
	CH_TR_LF,    /* CR seen at the end of a trailer line */
	CH_END_LF,   /* CR seen on the final blank line */
	CH_DONE,
};

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void http_chunked_init(struct http_chunked *c, const struct http_limits *lim)
{
	if (!lim)
		lim = &default_limits;
	memset(c, 0, sizeof(*c));
	c->max_body = lim->max_body;
	c->max_trailer = lim->max_head;
	c->state = CH_SIZE0;
}

/*
 * The size line has ended: either the last chunk (trailers follow) or a
 * data chunk, whose size is charged against max_body before any of its data
 * arrives so an oversized body fails as early as possible.
 */
static int size_line_done(struct http_chunked *c)
{
	c->line = 0;
	if (c->size == 0)
		return CH_TR_START;
	if (c->size > c->max_body - c->total)
		return HTTP_ERR_BODY_TOO_LARGE;
	c->total += c->size;
	return CH_DATA;
}

/*
 * A byte after the chunk size's digits (bws: after whitespace already).
 * BWS is only allowed before a ';' that starts an extension.
 */
static int after_size(struct http_chunked *c, unsigned char ch, bool bws)
{
	if (is_ows((char)ch))
		return CH_BWS;
	if (ch == ';')
		return CH_EXT;
	if (bws)
		return HTTP_ERR_BAD;
	if (ch == '\r')
		return CH_SIZE_LF;
	if (ch == '\n')
		return size_line_done(c);
	return HTTP_ERR_BAD;
}

/*
 * One byte of framing (everything except chunk data) through the state
 * machine. Returns the next state or an HTTP_ERR_* code.
 */
static int chunk_step(struct http_chunked *c, unsigned char ch)
{
	int d;

	switch (c->state) {
	case CH_SIZE0:
	case CH_SIZE:
		d = hex_value(ch);
		if (d >= 0) {
			if (c->size > (UINT64_MAX >> 4))
				return HTTP_ERR_BAD; /* more than 64 bits */
			c->size = (c->size << 4) | (uint64_t)d;
			return CH_SIZE;
		}
		if (c->state == CH_SIZE0)
			return HTTP_ERR_BAD;
		return after_size(c, ch, false);
	case CH_BWS:
		return after_size(c, ch, true);
	case CH_EXT:
		if (ch == '\r')
			return CH_SIZE_LF;
		if (ch == '\n')
			return size_line_done(c);
		return is_field_char(ch) ? CH_EXT : HTTP_ERR_BAD;
	case CH_SIZE_LF:
		return ch == '\n' ? size_line_done(c) : HTTP_ERR_BAD;
	case CH_DATA_CR:
		if (ch == '\r')
			return CH_DATA_LF;
		return ch == '\n' ? CH_SIZE0 : HTTP_ERR_BAD;
	case CH_DATA_LF:
		return ch == '\n' ? CH_SIZE0 : HTTP_ERR_BAD;
	case CH_TR_START:
		if (ch == '\r')
			return CH_END_LF;
		if (ch == '\n')
			return CH_DONE;
		/* obs-fold and empty names are as bad here as in the head. */
		return is_tchar(ch) ? CH_TR_NAME : HTTP_ERR_BAD;
	case CH_TR_NAME:
		if (ch == ':')
			return CH_TR_VALUE;
		return is_tchar(ch) ? CH_TR_NAME : HTTP_ERR_BAD;
	case CH_TR_VALUE:
		if (ch == '\r')
			return CH_TR_LF;
		if (ch == '\n')
			return CH_TR_START;
		return is_field_char(ch) ? CH_TR_VALUE : HTTP_ERR_BAD;
	case CH_TR_LF:
		return ch == '\n' ? CH_TR_START : HTTP_ERR_BAD;
	case CH_END_LF:
		return ch == '\n' ? CH_DONE : HTTP_ERR_BAD;
	}
	return HTTP_ERR_BAD;
}

/*
 * See http_parser.h. Reads at index i and writes at index o <= i of the
 * same buffer: chunk data is moved down in runs with memmove, framing bytes
 * go one at a time through chunk_step. The size line and the trailer
 * section are bounded so a peer cannot keep us parsing framing forever.
 */
int http_chunked_decode(struct http_chunked *c, char *buf, size_t *len)
{
	size_t n = *len, i = 0, o = 0;
	int next;

	if (c->state < 0) {
		*len = 0;
		return c->state;
	}
	while (i < n && c->state != CH_DONE) {
		if (c->state == CH_DATA) {
			size_t run = n - i;

			if (run > c->size)
				run = (size_t)c->size;
			memmove(buf + o, buf + i, run);
			o += run;
			i += run;
			c->size -= run;
			if (c->size == 0)
				c->state = CH_DATA_CR;
			continue;
		}
		if (c->state <= CH_SIZE_LF && ++c->line > HTTP_MAX_CHUNK_LINE) {
			next = HTTP_ERR_BAD;
		} else if (c->state >= CH_TR_START && c->state <= CH_TR_LF &&
			   !(c->state == CH_TR_START &&
			     (buf[i] == '\r' || buf[i] == '\n')) &&
			   ++c->trailer > c->max_trailer) {
			next = HTTP_ERR_HEADERS_TOO_LARGE;
		} else {
			next = chunk_step(c, (unsigned char)buf[i]);
		}
		if (next < 0) {
			c->state = next;
			*len = o;
			return next;
		}
		if (next == CH_SIZE0)
			c->size = 0;
		c->state = next;
		i++;
	}
	*len = o;
	if (c->state != CH_DONE)
		return HTTP_INCOMPLETE;
	if (i < n)
		memmove(buf + o, buf + i, n - i);
	return (int)(n - i);
}
