/* SPDX-License-Identifier: MIT */
/* A small, strict, incremental HTTP/1.x request parser (no allocation). */
#include "httpreq.h"

#include <string.h>

static bool is_tchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return true;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool ieq(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);
	if (alen != blen)
		return false;
	for (size_t i = 0; i < alen; i++) {
		char x = a[i], y = b[i];
		if (x >= 'A' && x <= 'Z')
			x = (char)(x - 'A' + 'a');
		if (x != y)
			return false;
	}
	return true;
}

/* Whether the comma-separated list v contains token (case-insensitive). */
static bool has_token(const char *v, size_t n, const char *token)
{
	size_t i = 0;
	while (i < n) {
		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		size_t s = i;
		while (i < n && v[i] != ',')
			i++;
		size_t e = i;
		while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e > s && ieq(v + s, e - s, token))
			return true;
	}
	return false;
}

/* Finds the end of the head: an empty line. Returns its end offset or 0. */
static size_t find_head_end(const char *buf, size_t len, size_t *scan)
{
	size_t i = *scan;
	while (i < len) {
		const char *nl = memchr(buf + i, '\n', len - i);
		if (!nl)
			break;
		size_t p = (size_t)(nl - buf);
		/* The line after this newline is empty: "\n\n" or "\n\r\n". */
		if (p + 1 < len && buf[p + 1] == '\n')
			return p + 2;
		if (p + 2 < len && buf[p + 1] == '\r' && buf[p + 2] == '\n')
			return p + 3;
		if (p + 1 >= len || (p + 2 >= len && buf[p + 1] == '\r')) {
			*scan = p; /* decide when the next bytes come */
			return 0;
		}
		i = p + 1;
	}
	*scan = len;
	return 0;
}

/* The next line of the head: [*pos, end of line), without its CR LF. */
static bool next_line(const char *buf, size_t end, size_t *pos,
		      const char **line, size_t *n)
{
	if (*pos >= end)
		return false;
	const char *nl = memchr(buf + *pos, '\n', end - *pos);
	if (!nl)
		return false;
	size_t e = (size_t)(nl - buf);
	*line = buf + *pos;
	*n = e - *pos;
	if (*n && (*line)[*n - 1] == '\r')
		(*n)--;
	*pos = e + 1;
	return true;
}

static int parse_request_line(const char *l, size_t n, struct http_request *r)
{
	size_t i = 0;
	while (i < n && is_tchar((unsigned char)l[i]))
		i++;
	if (i == 0 || i >= n || l[i] != ' ')
		return -400;
	r->method = l;
	r->method_len = i;
	size_t t = ++i;
	while (i < n && l[i] != ' ') {
		unsigned char c = (unsigned char)l[i];
		if (c <= 0x20 || c == 0x7f)
			return -400;
		i++;
	}
	if (i == t || i >= n)
		return -400;
	r->target = l + t;
	r->target_len = i - t;
	i++;
	if (n - i != 8 || memcmp(l + i, "HTTP/", 5) || l[i + 6] != '.' ||
	    l[i + 5] < '0' || l[i + 5] > '9' || l[i + 7] < '0' || l[i + 7] > '9')
		return -400;
	if (l[i + 5] != '1')
		return -505;
	r->minor = l[i + 7] - '0';
	if (r->minor > 1)
		return -505;
	return 0;
}

int http_parse_head(const char *buf, size_t len, size_t *scan,
		    struct http_request *req, const struct http_limits *lim)
{
	size_t end = find_head_end(buf, len, scan);
	if (!end)
		return len > lim->max_head ? -431 : 0;
	if (end > lim->max_head)
		return -431;
	/* Leading empty lines before a request are tolerated (RFC 9112). */
	size_t pos = 0;
	while (pos < end && (buf[pos] == '\r' || buf[pos] == '\n'))
		pos++;
	memset(req, 0, sizeof(*req));
	req->content_length = -1;
	const char *line;
	size_t n;
	if (!next_line(buf, end, &pos, &line, &n))
		return -400;
	int rc = parse_request_line(line, n, req);
	if (rc)
		return rc;
	bool have_te = false, conn_close = false, conn_keep = false;
	size_t maxh = lim->max_headers < HTTP_MAX_HEADERS ? lim->max_headers
							  : HTTP_MAX_HEADERS;
	while (next_line(buf, end, &pos, &line, &n) && n) {
		if (line[0] == ' ' || line[0] == '\t')
			return -400; /* obs-fold: refused (RFC 9112 5.2) */
		size_t c = 0;
		while (c < n && is_tchar((unsigned char)line[c]))
			c++;
		if (c == 0 || c >= n || line[c] != ':')
			return -400;
		size_t v = c + 1;
		while (v < n && (line[v] == ' ' || line[v] == '\t'))
			v++;
		size_t ve = n;
		while (ve > v && (line[ve - 1] == ' ' || line[ve - 1] == '\t'))
			ve--;
		for (size_t k = v; k < ve; k++) {
			unsigned char ch = (unsigned char)line[k];
			if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
				return -400; /* bare CR, NUL, controls */
		}
		if (req->nheaders == maxh)
			return -431;
		struct http_header *h = &req->headers[req->nheaders++];
		h->name = line;
		h->name_len = c;
		h->value = line + v;
		h->value_len = ve - v;
		if (ieq(h->name, c, "content-length")) {
			if (!h->value_len)
				return -400;
			uint64_t cl = 0;
			for (size_t k = 0; k < h->value_len; k++) {
				char d = h->value[k];
				if (d < '0' || d > '9')
					return -400; /* also "5, 5" and "-1" */
				if (cl > (UINT64_MAX - 9) / 10)
					return -400;
				cl = cl * 10 + (uint64_t)(d - '0');
			}
			if (cl > INT64_MAX)
				return -400;
			/* Identical duplicates are harmless; differing ones
			 * are a smuggling attempt. */
			if (req->content_length >= 0 &&
			    (uint64_t)req->content_length != cl)
				return -400;
			req->content_length = (int64_t)cl;
		} else if (ieq(h->name, c, "transfer-encoding")) {
			if (have_te)
				return -400;
			have_te = true;
			/* Only "chunked", alone: other codings are not
			 * implemented. */
			if (!ieq(h->value, h->value_len, "chunked"))
				return -501;
			req->chunked = true;
		} else if (ieq(h->name, c, "connection")) {
			if (has_token(h->value, h->value_len, "close"))
				conn_close = true;
			if (has_token(h->value, h->value_len, "keep-alive"))
				conn_keep = true;
		} else if (ieq(h->name, c, "expect")) {
			if (ieq(h->value, h->value_len, "100-continue"))
				req->expect_continue = true;
		}
	}
	if (have_te && req->content_length >= 0)
		return -400; /* both framings: no smuggling */
	if (have_te && req->minor == 0)
		return -400;
	if (req->content_length >= 0 &&
	    (uint64_t)req->content_length > lim->max_body)
		return -413;
	if (req->minor == 1)
		req->keep_alive = !conn_close;
	else
		req->keep_alive = conn_keep && !conn_close;
	*scan = 0;
	return (int)end;
}

enum {
	CH_SIZE,      /* hex digits */
	CH_EXT,       /* chunk extension up to LF */
	CH_DATA,
	CH_DATA_CR,   /* CR LF after the data */
	CH_DATA_LF,
	CH_TRAILER,   /* a trailer line (or the final empty line) */
	CH_TRAILER_LINE,
	CH_DONE,
};

int http_chunked_feed(struct http_chunked *c, const char *in, size_t len,
		      size_t *used, char *out, size_t *out_len,
		      uint64_t max_body)
{
	size_t i = 0, o = 0;
	while (i < len && c->state != CH_DONE) {
		char ch = in[i];
		switch (c->state) {
		case CH_SIZE: {
			int d = -1;
			if (ch >= '0' && ch <= '9')
				d = ch - '0';
			else if (ch >= 'a' && ch <= 'f')
				d = ch - 'a' + 10;
			else if (ch >= 'A' && ch <= 'F')
				d = ch - 'A' + 10;
			if (d >= 0) {
				if (++c->digits > 15)
					goto bad; /* far beyond any limit */
				c->left = c->left * 16 + (uint64_t)d;
				i++;
				break;
			}
			if (!c->digits)
				goto bad;
			if (c->total + c->left > max_body) {
				*used = i;
				*out_len = o;
				return -413;
			}
			c->state = CH_EXT;
			c->line = 0;
			break;
		}
		case CH_EXT:
			i++;
			if (ch == '\n') {
				c->digits = 0;
				c->state = c->left ? CH_DATA : CH_TRAILER;
				c->line = 0;
			} else if (++c->line > 4096 ||
				   ((unsigned char)ch < 0x20 && ch != '\r' &&
				    ch != '\t')) {
				goto bad;
			}
			break;
		case CH_DATA: {
			size_t n = len - i;
			if (n > c->left)
				n = (size_t)c->left;
			memcpy(out + o, in + i, n);
			o += n;
			i += n;
			c->left -= n;
			c->total += n;
			if (!c->left)
				c->state = CH_DATA_CR;
			break;
		}
		case CH_DATA_CR:
			i++;
			if (ch == '\r')
				c->state = CH_DATA_LF;
			else if (ch == '\n')
				c->state = CH_SIZE;
			else
				goto bad;
			break;
		case CH_DATA_LF:
			i++;
			if (ch != '\n')
				goto bad;
			c->state = CH_SIZE;
			break;
		case CH_TRAILER:
			/* Start of a line: empty (CR LF / LF) ends the body. */
			i++;
			if (ch == '\n') {
				c->state = CH_DONE;
			} else if (ch == '\r') {
				/* wait for the LF in this state */
				if (i < len && in[i] == '\n') {
					i++;
					c->state = CH_DONE;
				} else if (i < len) {
					goto bad;
				} else {
					i--; /* re-read CR with the next bytes */
					goto out;
				}
			} else {
				c->state = CH_TRAILER_LINE;
				c->line = 1;
			}
			break;
		case CH_TRAILER_LINE:
			i++;
			if (ch == '\n')
				c->state = CH_TRAILER;
			else if (++c->line > 8192)
				goto bad;
			break;
		}
	}
out:
	*used = i;
	*out_len = o;
	return c->state == CH_DONE ? 1 : 0;
bad:
	*used = i;
	*out_len = o;
	return -400;
}
