#!/bin/sh
# SPDX-License-Identifier: MIT
# Generates the man pages (section 3) from include/coil.h, so they cannot
# drift from the header: one page per contract comment, named after the
# first function it documents, and a one-line ".so" page for every other
# function of that group (man coil_ip_catch shows coil_ip_then's page).
#
#   scripts/gen-man.sh [HEADER] OUT_DIR      (make man: build/man/man3)
#
# A group is a comment block (with any comment blocks right above it that
# are not followed by code) and the code after it up to the next comment:
# its COIL_EXTERN declarations, and the typedefs and structs among them,
# form the SYNOPSIS; the comment text is the DESCRIPTION; the header's
# section title ("Channel: buffered async I/O ...") names the group's
# neighbours in SEE ALSO. coil(3) lists every page by section, after the
# header's opening comment (its conventions). Plain POSIX awk (mawk is
# enough).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -ge 2 ]; then
	header=$1
	out=$2
else
	header=$root/include/coil.h
	out=${1:?usage: gen-man.sh [HEADER] OUT_DIR}
fi
vh=$(dirname "$header")/coil/version.h
version=$(sed -n 's/^#define COIL_VERSION_STRING "\(.*\)"/\1/p' "$vh")
# The date shown is the header's (or SOURCE_DATE_EPOCH's), so a rebuild of
# the same sources gives the same pages.
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
	date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
else
	date=$(date -u -r "$header" +%Y-%m-%d)
fi
mkdir -p "$out"
rm -f "$out"/coil_*.3 "$out"/coil.3
awk -v out="$out" -v version="$version" -v date="$date" '
function esc(s) {
	gsub(/\\/, "\\e", s)
	if (s ~ /^[.\047]/)
		s = "\\&" s
	return s
}
function trim(s) {
	sub(/^[ \t]+/, "", s)
	sub(/[ \t]+$/, "", s)
	return s
}
# The first sentence of the description, for NAME (whatis).
function summary(text,    s, i) {
	s = text
	gsub(/\n/, " ", s)
	s = trim(s)
	i = index(s, ". ")
	if (i > 0)
		s = substr(s, 1, i - 1)
	sub(/\.$/, "", s)
	if (length(s) > 90)
		s = substr(s, 1, 87) "..."
	gsub(/\\/, "\\e", s)
	return s
}
# Keeps the group just read; END writes the pages (SEE ALSO needs the
# whole section).
function flush(    i, line) {
	if (nnames == 0) {
		# Types or constants without a function (the handle type before
		# the functions on it): carried into the page of the next group.
		if (ncode > 0) {
			carry_desc = carry_desc desc "\n"
			for (i = 1; i <= ncode; i++)
				carry_code = carry_code code[i] "\n"
		}
		ncode = 0
		desc = ""
		return
	}
	ng++
	g_page[ng] = names[1]
	line = names[1]
	for (i = 2; i <= nnames; i++)
		line = line ", " names[i]
	g_names[ng] = line
	g_summary[ng] = summary(lastc)
	g_desc[ng] = carry_desc desc
	line = carry_code
	for (i = 1; i <= ncode; i++)
		line = line code[i] "\n"
	g_code[ng] = line
	g_section[ng] = section
	nnames = 0
	ncode = 0
	desc = ""
	carry_desc = ""
	carry_code = ""
}
function write_page(k,    f, i, n, nl, lines, t, inlist, names, others) {
	f = out "/" g_page[k] ".3"
	printf ".TH %s 3 \"%s\" \"coil %s\" \"coil manual\"\n", toupper(g_page[k]), date, version > f
	printf ".nh\n.ad l\n.SH NAME\n" > f
	t = g_summary[k]
	if (t == "")
		t = "see the synopsis"
	printf "%s \\- %s\n", esc(g_names[k]), t > f
	printf ".SH SYNOPSIS\n.nf\n.B #include <coil.h>\n.PP\n" > f
	nl = split(g_code[k], lines, "\n")
	for (i = 1; i < nl; i++)
		printf "%s\n", esc(lines[i]) > f
	printf ".fi\n.PP\nLink with \\fI\\-lcoil\\fP (\\fIpkg\\-config \\-\\-cflags \\-\\-libs coil\\fP).\n" > f
	printf ".SH DESCRIPTION\n" > f
	nl = split(g_desc[k], lines, "\n")
	inlist = 0
	for (i = 1; i <= nl; i++) {
		t = trim(lines[i])
		if (t == "") {
			if (i > 1 && i < nl)
				printf ".PP\n" > f
			inlist = 0
			continue
		}
		if (t ~ /^- /) {
			printf ".IP \\(bu 2\n" > f
			t = substr(t, 3)
			inlist = 1
		} else if (inlist && lines[i] !~ /^   /) {
			printf ".PP\n" > f
			inlist = 0
		}
		printf "%s\n", esc(t) > f
	}
	printf ".SH SEE ALSO\n" > f
	others = ""
	for (i = 1; i <= ng; i++)
		if (i != k && g_section[i] == g_section[k])
			others = others (others == "" ? "" : ",\n") "\\fB" g_page[i] "\\fP(3)"
	if (others != "")
		printf "The rest of \\(lq%s\\(rq:\n%s.\n.PP\n", esc(g_section[k]), others > f
	printf "This page is generated from the contract comments of \\fIcoil.h\\fP;\n" > f
	printf "\\fIdocs/api.md\\fP and \\fIdocs/concepts.md\\fP in the coil sources say more.\n" > f
	close(f)
	n = split(g_names[k], names, ", ")
	for (i = 2; i <= n; i++) {
		f = out "/" names[i] ".3"
		printf ".so man3/%s.3\n", g_page[k] > f
		close(f)
	}
}
BEGIN { incomment = 0; nnames = 0; ncode = 0; desc = ""; pending = ""; section = ""; ng = 0; nsec = 0; overview = "" }
# Section titles: a one-line comment between two ruler comments.
/^\/\* ---------------------*-* \*\/$/ { ruler = 1; next }
ruler && /^\/\* .* \*\/$/ {
	t = $0
	sub(/^\/\* /, "", t)
	sub(/ *\*\/$/, "", t)
	flush()
	carry_desc = ""
	carry_code = ""
	section = t
	sec_title[++nsec] = t
	pending = ""
	ruler = 0
	next
}
{ ruler = 0 }
# A comment block starting at the beginning of a line.
!incomment && /^\/\*/ {
	if (nnames > 0 || ncode > 0) {
		flush()
		pending = ""
	}
	incomment = 1
	ctext = ""
}
incomment {
	t = $0
	done = (t ~ /\*\//)
	if (t ~ /^[ \t]*\*\/[ \t]*$/)
		t = ""
	sub(/^\/\*+ ?/, "", t)
	sub(/^ \* ?/, "", t)
	sub(/^ \*$/, "", t)
	sub(/ *\*\/.*$/, "", t)
	if (!(t == "" && ctext == ""))
		ctext = ctext t "\n"
	if (done) {
		incomment = 0
		# A comment right after another one (no code between): the
		# earlier one introduces it.
		pending = pending (pending != "" ? "\n" : "") ctext
		desc = pending
		lastc = ctext
		if (nsec == 0 && overview == "" && ctext !~ /SPDX-License/)
			overview = ctext
	}
	next
}
# Code after a comment: part of its group until the next comment.
desc != "" {
	if ($0 ~ /^#/ && $0 !~ /^#define/)
		next
	if (trim($0) == "" ) {
		if (ncode > 0 && code[ncode] != "")
			code[++ncode] = ""
		next
	}
	pending = ""
	t = $0
	gsub(/COIL_EXTERN /, "", t)
	gsub(/ COIL_PRINTF\([0-9], [0-9]\)/, "", t)
	gsub(/\t/, "        ", t)
	code[++ncode] = t
	if ($0 ~ /COIL_EXTERN/)
		indecl = 1
	if (indecl) {
		s = $0
		while (match(s, /coil_[a-z0-9_]+\(/)) {
			nm = substr(s, RSTART, RLENGTH - 1)
			names[++nnames] = nm
			break
		}
		if ($0 ~ /;/)
			indecl = 0
	}
	next
}
# coil(3): the opening comment of the header and every page, by section.
function write_index(    f, i, k, nl, lines, t, list) {
	f = out "/coil.3"
	printf ".TH COIL 3 \"%s\" \"coil %s\" \"coil manual\"\n.nh\n.ad l\n", date, version > f
	printf ".SH NAME\ncoil \\- socket and channel I/O on io_uring with promise-like handles\n" > f
	printf ".SH SYNOPSIS\n.nf\n.B #include <coil.h>\n.fi\n.PP\n" > f
	printf "Link with \\fI\\-lcoil\\fP (\\fIpkg\\-config \\-\\-cflags \\-\\-libs coil\\fP).\n" > f
	printf ".SH DESCRIPTION\n" > f
	nl = split(overview, lines, "\n")
	for (i = 1; i <= nl; i++) {
		t = trim(lines[i])
		if (t == "")
			continue
		if (t ~ /^- /) {
			printf ".IP \\(bu 2\n" > f
			t = substr(t, 3)
		}
		printf "%s\n", esc(t) > f
	}
	for (i = 1; i <= nsec; i++) {
		list = ""
		for (k = 1; k <= ng; k++)
			if (g_section[k] == sec_title[i])
				list = list (list == "" ? "" : ",\n") "\\fB" g_page[k] "\\fP(3)"
		if (list == "")
			continue
		printf ".SS %s\n%s.\n", esc(sec_title[i]), list > f
	}
	printf ".SH SEE ALSO\nEvery page is generated from the contract comments of \\fIcoil.h\\fP;\n" > f
	printf "\\fIREADME.md\\fP, \\fIdocs/guide.md\\fP and \\fIdocs/api.md\\fP in the coil sources.\n" > f
	close(f)
}
END {
	flush()
	for (k = 1; k <= ng; k++)
		write_page(k)
	write_index()
}' "$header"
n=$(ls "$out"/coil_*.3 "$out"/coil.3 2>/dev/null | wc -l)
echo "gen-man: $n pages in $out from $header"
